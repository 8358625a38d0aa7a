/**
 * The node's network configuration as OpenStack `network_data.json` (what cloud-init and Glean read
 * from a config drive), derived from its attachments: one `phy` link per attached port (by MAC),
 * a `vlan` link per tagged trunk network, and per assigned address a static `ipv4`/`ipv6` network
 * with its netmask and, where the subnet has a gateway, a default route.
 */
import { formatIp, hostMask, parseCidr } from "../../inventory/ip";
import type { Inventory } from "../../inventory/types";

type Json = Record<string, unknown>;

function netmask(version: 4 | 6, prefix: number): string {
  const bits = version === 4 ? 32 : 128;
  const all = (1n << BigInt(bits)) - 1n;
  return formatIp(version, all & ~hostMask(version, prefix));
}

/** The network data of a node's attachments, or undefined when it has none. */
export async function networkDataFor(inventory: Inventory, nodeId: string): Promise<Json | undefined> {
  const attachments = await inventory.listAttachments({ nodeId });
  if (attachments.length === 0) return undefined;
  const links: Json[] = [];
  const networks: Json[] = [];
  const phy = new Map<string, string>();
  for (const a of attachments) {
    let link = phy.get(a.portId);
    if (!link) {
      link = `eth-${a.mac.replace(/:/g, "")}`;
      phy.set(a.portId, link);
      links.push({ id: link, type: "phy", ethernet_mac_address: a.mac });
    }
    if (a.mode === "trunk" && !a.native) {
      const vlanLink = `${link}.${a.vlan}`;
      links.push({ id: vlanLink, type: "vlan", vlan_link: link, vlan_id: a.vlan, vlan_mac_address: a.mac });
      link = vlanLink;
    }
    for (const subnet of await inventory.listSubnets({ networkId: a.networkId })) {
      const address = (await inventory.listAddresses(subnet.id)).find((r) => r.owner === a.id);
      if (!address) continue;
      const cidr = parseCidr("cidr", subnet.cidr);
      networks.push({
        id: `${a.networkId}-ipv${cidr.version}`,
        type: `ipv${cidr.version}`,
        link,
        ip_address: address.address,
        netmask: netmask(cidr.version, cidr.prefix),
        network_id: a.networkId,
        routes: subnet.gateway
          ? [{ network: cidr.version === 4 ? "0.0.0.0" : "::", netmask: cidr.version === 4 ? "0.0.0.0" : "::", gateway: subnet.gateway }]
          : [],
      });
    }
  }
  return { links, networks, services: [] };
}
