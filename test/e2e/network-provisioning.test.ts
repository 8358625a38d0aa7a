/**
 * Provisioning networks and the order of isolation, through the real engine against real Open
 * vSwitch and the embedded lab, whose machines really boot their installers.
 *
 * Every change of the switch ports is recorded as it is committed, by an OVSDB `monitor` (RFC 7047)
 * on the switch's database, and compared with the BMC's side effects (power, media, installer,
 * disk erase) and the inventory's allocation release time, all on this process's clock:
 *   - deploying: the node is on the provisioning network (VLAN 998) before the BMC is touched and
 *     while its installer runs, and reaches its tenant network only once active;
 *   - undeploying: the node has left its tenant network before the first cleaning action on the
 *     BMC, and stays off it until cleaning is over;
 *   - the lease ending: the node is in quarantine before its allocation is released, and never
 *     in a tenant VLAN afterwards;
 *   - private mode: a tenant's node is deployed on a provisioning VLAN of the tenant's own.
 */
import { type Lab, startLab } from "../../provider/src/lab/lab";
import type { SideEffect } from "../../provider/src/lab/faults";
import { OvsdbClient } from "../../provider/src/drivers/ovsdb/client";
import { openInventory } from "../../provider/src/inventory";
import { type OvsInstance, type OvsNode, startOvs } from "../harness/ovs";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";

jest.setTimeout(600_000);

const IMAGE = "http://images.lab.example/installer.iso";
const QUARANTINE = 999;
const PROVISIONING = 998;

const OPERATOR = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const machines = config.requireObject<{ name: string; systemId: string; mac: string; switchPort: string }[]>("machines");
export const ports: Record<string, pulumi.Output<string>> = {};
export const nodes: Record<string, pulumi.Output<string>> = {};
for (const m of machines) {
  const node = new baremetal.compute.Node(m.name, { bmc: { address: config.require("bmcAddress"), systemId: m.systemId }, owner: "operator-proj", lessee: "tenant-a" });
  const port = new baremetal.network.Port(m.name + "-eth0", { nodeId: node.id, mac: m.mac, switchId: "tor1", switchPort: m.switchPort });
  nodes[m.name] = node.id;
  ports[m.name] = port.portId;
}
`;

const TENANT = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const machines = config.requireObject<{ name: string; nodeId: string; portId: string }[]>("machines");
const net = new baremetal.network.TenantNetwork("app", { subnets: [{ cidr: "10.89.0.0/24", gateway: "10.89.0.1" }, { cidr: "fd00:89::/64" }] });
export const vlan = net.vlanId;
export const addresses: Record<string, pulumi.Output<string[]>> = {};
export const allocations: Record<string, pulumi.Output<string>> = {};
for (const m of machines) {
  const alloc = new baremetal.compute.Allocation(m.name, { candidateNodes: [m.nodeId] });
  const att = new baremetal.network.NetworkAttachment(m.name, { portId: alloc.nodeId.apply(() => m.portId), networkId: net.networkId });
  addresses[m.name] = att.ipAddresses.apply((a) => (a ?? []).map((x) => x.address));
  allocations[m.name] = alloc.allocationId;
  if (m.name === "d1" && config.getBoolean("deploy")) {
    new baremetal.compute.Deployment("d1", { allocationId: alloc.allocationId, imageUrl: config.require("imageUrl"), bootInterface: "http", hostname: "d1" }, { customTimeouts: { create: "3m", delete: "3m" } });
  }
}
`;

interface TagChange {
  at: number;
  port: string;
  tag: number | undefined;
}

describe("provisioning networks and the order of isolation (real Open vSwitch, lab BMCs)", () => {
  let lab: Lab;
  let ovs: OvsInstance;
  let monitor: OvsdbClient;
  let operator: PulumiProject;
  let tenant: PulumiProject;
  const m: Record<string, OvsNode> = {};
  const history: TagChange[] = [];
  let inventoryUrl: string;
  let fabric: Record<string, unknown>;

  /** The port's tag at time `t` (the last change committed at or before it). */
  const tagAt = (port: string, t: number) => history.filter((h) => h.port === port && h.at <= t).pop()?.tag;
  const changesOf = (port: string, from: number) => history.filter((h) => h.port === port && h.at >= from).map((h) => h.tag);
  const effectsSince = (from: number, kinds: string[]): SideEffect[] =>
    lab.bmcs[0].sideEffects().filter((e) => e.at >= from && kinds.includes(e.kind) && e.target.includes(lab.info.nodes[0].systemId.split("/").pop()!));

  beforeAll(async () => {
    ovs = await startOvs({ switches: 1 });
    m.d1 = await ovs.addNode("d1", { bridge: "br0", ipv4: "10.89.0.201/24" });
    m.p1 = await ovs.addNode("p1", { bridge: "br0", ipv4: "10.89.0.202/24" });
    monitor = new OvsdbClient({
      url: ovs.ovsdbUrl,
      onNotification: (method, params) => {
        if (method !== "update") return;
        const rows = ((params as unknown[])[1] as { Port?: Record<string, { new?: { name: string; tag: unknown } }> }).Port ?? {};
        for (const row of Object.values(rows)) {
          if (row.new) history.push({ at: Date.now(), port: row.new.name, tag: typeof row.new.tag === "number" ? row.new.tag : undefined });
        }
      },
    });
    await monitor.request("monitor", ["Open_vSwitch", "ports", { Port: { columns: ["name", "tag"], select: { initial: false, insert: true, delete: false, modify: true } } }]);

    lab = await startLab({ flavor: "generic", systems: 2, bootSeconds: 1, installSeconds: 2 });
    operator = await newProject("prov-operator", OPERATOR);
    tenant = await newProject("prov-tenant", TENANT);
    inventoryUrl = `sqlite://${operator.dir}/inventory.db`;
    fabric = {
      vlanRanges: ["100-149"],
      quarantineVlan: QUARANTINE,
      provisioningVlan: PROVISIONING,
      provisioningMode: "shared",
      switches: { tor1: { driver: "ovsdb", address: ovs.ovsdbUrl, bridge: "br0" } },
    };
    for (const p of [operator, tenant]) {
      await p.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
      await p.setConfig("baremetal:fabrics", JSON.stringify({ lab: fabric }));
      for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    }
    await operator.setConfig("bmcAddress", lab.info.nodes[0].address);
    await operator.setConfig(
      "machines",
      JSON.stringify(["d1", "p1"].map((name, i) => ({ name, systemId: lab.info.nodes[i].systemId, mac: m[name].mac, switchPort: m[name].port }))),
    );
    await operator.pulumi(["up", "--yes", "--skip-preview"]);
    const { nodes, ports } = (await operator.outputs()) as { nodes: Record<string, string>; ports: Record<string, string> };
    await tenant.setConfig("baremetal:project", "tenant-a");
    await tenant.setConfig("baremetal:roles", JSON.stringify(["admin", "member"]));
    await tenant.setConfig("machines", JSON.stringify(["d1", "p1"].map((name) => ({ name, nodeId: nodes[name], portId: ports[name] }))));
    await tenant.setConfig("imageUrl", IMAGE);
    await tenant.setConfig("deploy", "false");
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
  });

  afterAll(async () => {
    for (const p of [tenant, operator]) await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of [tenant, operator]) p?.remove();
    await monitor?.close();
    await lab?.stop();
    await ovs?.stop();
  });

  it("deploying: on the provisioning network before the BMC is touched and while the installer runs; in the tenant network once active", async () => {
    const vlan = (await tenant.outputs()).vlan as number;
    expect(history.filter((h) => h.port === "d1").pop()?.tag).toBe(vlan);
    const start = Date.now();
    await tenant.setConfig("deploy", "true");
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    expect(changesOf("d1", start)).toEqual([PROVISIONING, vlan]);
    const effects = effectsSince(start, ["boot-override", "media-insert", "power-on", "power-restart", "installer-started"]);
    expect(effects.map((e) => e.kind)).toContain("installer-started");
    for (const e of effects) expect([e.kind, tagAt("d1", e.at)]).toEqual([e.kind, PROVISIONING]);
    expect(changesOf("p1", start)).toEqual([]); // the other node never moved
    expect(await m.d1.ping(m.p1.ip)).toBe(true);

    // The config drive tells the node the addresses IPAM gave its attachment (IPv4 with its route, IPv6).
    const { addresses } = (await tenant.outputs()) as { addresses: Record<string, string[]> };
    expect(addresses.d1).toEqual([expect.stringMatching(/^10\.89\.0\.\d+$/), expect.stringMatching(/^fd00:89::/)]);
    const drives = [...lab.imageStore.images.entries()].filter(([name]) => name.startsWith("configdrive-"));
    expect(drives).toHaveLength(1);
    const iso = drives[0][1].toString("latin1");
    const json = iso.slice(iso.indexOf('{"links"'), iso.indexOf('"services":[]}') + '"services":[]}'.length);
    const data = JSON.parse(json);
    expect(data.links).toEqual([{ id: `eth-${m.d1.mac.replace(/:/g, "")}`, type: "phy", ethernet_mac_address: m.d1.mac }]);
    expect(data.networks).toEqual([
      expect.objectContaining({ type: "ipv4", ip_address: addresses.d1[0], netmask: "255.255.255.0", routes: [{ network: "0.0.0.0", netmask: "0.0.0.0", gateway: "10.89.0.1" }] }),
      expect.objectContaining({ type: "ipv6", ip_address: addresses.d1[1], netmask: "ffff:ffff:ffff:ffff::", routes: [] }),
    ]);
  });

  it("undeploying: off the tenant network before the first cleaning action, back only when cleaning is over", async () => {
    const vlan = (await tenant.outputs()).vlan as number;
    const start = Date.now();
    await tenant.setConfig("deploy", "false");
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    expect(changesOf("d1", start)).toEqual([PROVISIONING, vlan]); // the lease goes on: back into its network
    const cleaning = effectsSince(start, ["power-off", "media-eject", "boot-override", "disk-erased"]);
    expect(cleaning.map((e) => e.kind)).toEqual(expect.arrayContaining(["power-off", "disk-erased"]));
    for (const e of cleaning) expect([e.kind, tagAt("d1", e.at)]).toEqual([e.kind, PROVISIONING]);
  });

  it("the lease ending: quarantined before the allocation is released, never in a tenant VLAN after", async () => {
    const vlan = (await tenant.outputs()).vlan as number;
    const { allocations } = (await tenant.outputs()) as { allocations: Record<string, string> };
    await tenant.pulumi(["destroy", "--yes", "--skip-preview"]);
    const inventory = await openInventory(inventoryUrl);
    try {
      for (const name of ["d1", "p1"]) {
        const released = await inventory.getAllocation(allocations[name]);
        expect(released?.state).toBe("released");
        const at = Date.parse(released!.releasedAt!);
        expect(tagAt(name, at)).toBe(QUARANTINE);
        expect(history.filter((h) => h.port === name && h.at >= at).map((h) => h.tag)).not.toContain(vlan);
      }
    } finally {
      await inventory.close();
    }
    expect(await m.d1.ping(m.p1.ip, { count: 2, timeoutSec: 1 })).toBe(true); // both quarantined on one switch: see the README's limits
  });

  it("private mode: the tenant's node is deployed on a provisioning VLAN of its own, from the pool", async () => {
    for (const p of [operator, tenant]) await p.setConfig("baremetal:fabrics", JSON.stringify({ lab: { ...fabric, provisioningMode: "private" } }));
    await tenant.setConfig("deploy", "true");
    const start = Date.now();
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    const vlan = (await tenant.outputs()).vlan as number;
    const inventory = await openInventory(inventoryUrl);
    let own: number;
    try {
      const network = await inventory.getNetwork("provisioning-lab-tenant-a");
      expect(network).toMatchObject({ owner: "tenant-a", fabric: "lab" });
      own = network!.vlan;
    } finally {
      await inventory.close();
    }
    expect(own).toBeGreaterThanOrEqual(100);
    expect(own).toBeLessThanOrEqual(149);
    expect(own).not.toBe(vlan);
    const d1 = changesOf("d1", start);
    expect(d1).toContain(own);
    expect(d1).not.toContain(PROVISIONING);
    const installer = effectsSince(start, ["installer-started"]);
    expect(installer).toHaveLength(1);
    expect(tagAt("d1", installer[0].at)).toBe(own);
    expect(d1[d1.length - 1]).toBe(vlan);
  });
});
