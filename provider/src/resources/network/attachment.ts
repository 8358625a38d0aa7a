/**
 * baremetal:network:NetworkAttachment — a node port in a tenant network (Ironic's VIF attach):
 * access (untagged, one network) or trunk (tagged, several networks, at most one native), with an
 * address from each of the network's subnets (or the ones requested).
 *
 * Rules, checked under the node's network lock so they hold across concurrent stacks:
 * - the node must be held by an active allocation, and the network must belong to the project
 *   that holds it: a tenant can never put its node into another tenant's network, whatever the
 *   policy file says;
 * - the policy: `baremetal:node:vif:attach` (or `vif:detach`) against the node's owner and lessee,
 *   and `baremetal:network:attach` against the network's owner.
 * Changing `networkId` moves the port in one switch transaction (never through another network).
 */
import { authorize } from "../../core/auth";
import { BaremetalError, isBaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { OperationContext, Props, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import { samePortConfig } from "../../drivers/kinds/switch";
import type { AddressRecord, AttachmentRecord, Inventory } from "../../inventory/types";
import { inCidr, parseCidr, parseIp } from "../../inventory/ip";
import { withSwitch } from "./fabric";
import { OPERATOR_PROJECT } from "./tenant-network";
import { applyPlans, planNodePorts, releaseAttachmentAddresses, withNetworkLock } from "./wiring";

const inputs = {
  portId: { type: "string", required: true, replaceOnChange: true, minLength: 1, description: "The node port to attach (a Port's `portId`)." },
  networkId: { type: "string", required: true, minLength: 1, description: "The tenant network (a TenantNetwork's `networkId`). Changing it moves the port." },
  mode: {
    type: "string",
    enum: ["access", "trunk"],
    default: "access",
    description: "`access`: the port carries this network untagged (and no other); `trunk`: tagged, alongside the port's other trunk attachments.",
  },
  native: { type: "boolean", default: false, description: "Trunk only: this network is the port's untagged (native) VLAN; at most one per port." },
  addresses: {
    type: "array",
    uniqueItems: true,
    items: { type: "string", minLength: 2, description: "An IPv4 or IPv6 address." },
    description: "Static addresses to take (each inside one of the network's subnets); subnets without one get the lowest free address.",
  },
} as const satisfies Fields;

const assigned = {
  address: { type: "string", required: true, description: "The address." },
  cidr: { type: "string", required: true, description: "Its subnet." },
  gateway: { type: "string", description: "The subnet's gateway." },
  ipVersion: { type: "integer", required: true, description: "4 or 6." },
  subnetId: { type: "string", required: true, description: "The subnet's id." },
} as const satisfies Fields;

const outputs = {
  attachmentId: { type: "string", required: true, stable: true, description: "The attachment's id in the inventory." },
  nodeId: { type: "string", required: true, stable: true, description: "The attached port's node." },
  mac: { type: "string", required: true, stable: true, description: "The attached port's MAC address." },
  vlanId: { type: "integer", required: true, description: "The network's VLAN id." },
  switchId: { type: "string", required: true, stable: true, description: "The switch of the port." },
  switchPort: { type: "string", required: true, stable: true, description: "The switch port." },
  ipAddresses: {
    type: "array",
    items: { type: "object", typeToken: "baremetal:network:AssignedAddress", description: "An address assigned to the attachment.", properties: assigned },
    description: "The addresses assigned, one per subnet of the network.",
  },
} as const satisfies Fields;

async function targets(inventory: Inventory, portId: unknown, networkId: unknown) {
  const port = typeof portId === "string" ? await inventory.getPort(portId) : undefined;
  const node = port ? await inventory.getNode(port.nodeId) : undefined;
  const network = typeof networkId === "string" ? await inventory.getNetwork(networkId) : undefined;
  return { port, node, network };
}

/** Checks the rules (see the header) and returns what the attachment needs. */
async function admitted(inventory: Inventory, props: Props) {
  const { port, node, network } = await targets(inventory, props.portId, props.networkId);
  if (!port) throw new BaremetalError("validation", `no port '${props.portId}'; pass a Port's portId`, { property: "portId" });
  if (!network) throw new BaremetalError("validation", `no network '${props.networkId}'; pass a TenantNetwork's networkId`, { property: "networkId" });
  if (!node?.allocationId) {
    throw new BaremetalError("validation", `node ${port.nodeId} of port ${port.id} is not allocated; attach ports of nodes your Allocation holds`, { property: "portId" });
  }
  const allocation = await inventory.getAllocation(node.allocationId);
  const holder = allocation?.owner ?? OPERATOR_PROJECT;
  if (network.owner !== holder) {
    throw new BaremetalError(
      "auth",
      `network ${network.name} belongs to project ${network.owner}, but node ${node.name} is held by ${holder === OPERATOR_PROJECT ? "the operator" : `project ${holder}`}: a node can only join networks of the project that holds it`,
      { property: "networkId", httpStatus: 403 },
    );
  }
  return { port, node, network };
}

function subnetContains(cidr: string, address: string): boolean {
  try {
    const c = parseCidr("cidr", cidr);
    const ip = parseIp("addresses", address);
    return ip.version === c.version && inCidr(c, ip);
  } catch {
    return false;
  }
}

function addressOutputs(records: { record: AddressRecord; cidr: string; gateway?: string }[]): Props[] {
  return records.map(({ record, cidr, gateway }) => ({ address: record.address, cidr, ...(gateway ? { gateway } : {}), ipVersion: record.ipVersion, subnetId: record.subnetId }));
}

/** One address per subnet of the network: the requested one that falls inside it, else the lowest free. */
async function allocateAddresses(inventory: Inventory, networkId: string, attachmentId: string, requested: string[]): Promise<Props[]> {
  const subnets = await inventory.listSubnets({ networkId });
  const unplaced = new Set(requested);
  const out = [];
  for (const subnet of subnets) {
    const wanted = requested.find((a) => subnetContains(subnet.cidr, a));
    if (wanted) unplaced.delete(wanted);
    try {
      const record = await inventory.allocateAddress({ subnetId: subnet.id, owner: attachmentId, ...(wanted ? { address: wanted } : {}) });
      out.push({ record, cidr: subnet.cidr, gateway: subnet.gateway });
    } catch (e) {
      if (isBaremetalError(e)) throw new BaremetalError(e.code, e.message, { property: wanted ? "addresses" : "networkId" });
      throw e;
    }
  }
  if (unplaced.size) {
    throw new BaremetalError("validation", `addresses ${[...unplaced].join(", ")} lie in no subnet of the network (${subnets.map((s) => s.cidr).join(", ") || "it has none"})`, {
      property: "addresses",
    });
  }
  return addressOutputs(out);
}

async function addressesOf(inventory: Inventory, networkId: string, owner: string): Promise<AddressRecord[]> {
  const out: AddressRecord[] = [];
  for (const s of await inventory.listSubnets({ networkId })) out.push(...(await inventory.listAddresses(s.id)).filter((r) => r.owner === owner));
  return out;
}

function outputsOf(props: Props, a: AttachmentRecord, ipAddresses: Props[]): Props {
  return { ...props, attachmentId: a.id, nodeId: a.nodeId, mac: a.mac, vlanId: a.vlan, switchId: a.switchId, switchPort: a.switchPort, ipAddresses };
}

async function attachAndSync(ctx: OperationContext, inventory: Inventory, id: string, props: Props): Promise<Props> {
  const { port } = await admitted(inventory, props);
  const attachment = await inventory.attach({ id, portId: port.id, networkId: props.networkId as string, mode: props.mode as "access" | "trunk", native: props.native as boolean });
  let ipAddresses: Props[];
  try {
    ipAddresses = await allocateAddresses(inventory, attachment.networkId, id, (props.addresses as string[] | undefined) ?? []);
  } catch (e) {
    await releaseAttachmentAddresses(inventory, attachment.networkId, id);
    await inventory.detach(id);
    throw e;
  }
  await applyPlans(ctx, await planNodePorts(ctx, inventory, port.nodeId));
  return outputsOf(props, attachment, ipAddresses);
}

export const networkAttachmentResource: ResourceDefinition = {
  token: "baremetal:network:NetworkAttachment",
  description:
    "A node port in a tenant network (access or trunk, with a native VLAN), with an address from each of the network's subnets. Only ports of nodes held by the network's project can be attached; changing the network moves the port in one switch transaction.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 120,

  check(props) {
    if (props.native === true && props.mode !== "trunk") return [{ property: "native", reason: "native applies to trunk attachments only; set mode to trunk or leave native out" }];
    return [];
  },

  async authorize(ctx, change, props, state) {
    if (ctx.caller.operator) return;
    const inventory = await ctx.inventory();
    const portId = state?.portId ?? props.portId;
    const { node, network } = await targets(inventory, portId, isUnknown(props.networkId) ? state?.networkId : props.networkId);
    // A port or network not known yet (a preview: it comes from another resource's output) is
    // judged when the change is made, with the value known; judging "no node" refused every preview.
    if (!isUnknown(portId)) {
      authorize(ctx.policy, ctx.caller, change === "delete" ? "baremetal:node:vif:detach" : "baremetal:node:vif:attach", { "node.owner": node?.owner, "node.lessee": node?.lessee });
    }
    if (network) authorize(ctx.policy, ctx.caller, "baremetal:network:attach", { "network.owner": network.owner });
  },

  async create(ctx, props) {
    const inventory = await ctx.inventory();
    const port = await inventory.getPort(props.portId as string);
    if (!port) throw new BaremetalError("validation", `no port '${props.portId}'; pass a Port's portId`, { property: "portId" });
    const id = `att-${ctx.urn.split("::").pop()}-${port.id}`.replace(/[^A-Za-z0-9_.:@-]/g, "_").slice(0, 200);
    const outputs = await withNetworkLock(ctx, inventory, port.nodeId, () => attachAndSync(ctx, inventory, id, props));
    return { id, outputs };
  },

  async read(ctx, id, stored, state) {
    const inventory = await ctx.inventory();
    const a = await inventory.getAttachment(id);
    if (!a) return undefined;
    const declared: Props = stored ?? { portId: a.portId, networkId: a.networkId, mode: a.mode, native: a.native };
    const inputs: Props = { ...declared, networkId: a.networkId, mode: a.mode, native: a.native };
    const plan = (await planNodePorts(ctx, inventory, a.nodeId)).find((p) => p.port.id === a.portId);
    if (plan?.role === "tenant") {
      const actual = await withSwitch(ctx, plan.sw, (d) => d.getPort(a.switchPort), ctx.signal);
      if (!actual || !samePortConfig(actual, plan.expected)) {
        const seen = actual ? `${actual.mode}${actual.vlan !== undefined ? ` VLAN ${actual.vlan}` : ""}${actual.trunkVlans ? ` trunks ${actual.trunkVlans.join(",")}` : ""}` : "missing";
        ctx.warn(`switch ${a.switchId} port ${a.switchPort} is ${seen}, expected ${plan.describe}; \`pulumi up\` puts it back`);
        // Shown as a change of networkId: `up` re-attaches (an update), which rewrites the port.
        inputs.networkId = `${a.networkId} (switch port found ${seen})`;
      }
    }
    const subnets = await inventory.listSubnets({ networkId: a.networkId });
    const addresses = [];
    for (const s of subnets) {
      const r = (await inventory.listAddresses(s.id)).find((x) => x.owner === id);
      if (r) addresses.push({ record: r, cidr: s.cidr, gateway: s.gateway });
    }
    return { id, inputs, outputs: { ...(state ?? {}), ...outputsOf(inputs, a, addressOutputs(addresses)) } };
  },

  async update(ctx, id, olds, news, oldState) {
    const inventory = await ctx.inventory();
    const port = await inventory.getPort(news.portId as string);
    if (!port) throw new BaremetalError("validation", `no port '${news.portId}'`, { property: "portId" });
    return withNetworkLock(ctx, inventory, port.nodeId, async () => {
      const current = await inventory.getAttachment(id);
      const same =
        current && current.networkId === news.networkId && current.mode === news.mode && current.native === news.native &&
        JSON.stringify(olds.addresses ?? []) === JSON.stringify(news.addresses ?? []);
      if (same) {
        // Drift repair: the inventory is right, the switch is not.
        await applyPlans(ctx, await planNodePorts(ctx, inventory, port.nodeId));
        return { ...oldState, ...news, networkId: current.networkId };
      }
      // A move: out of the old network and into the new one, then ONE sync writes the switch port.
      await admitted(inventory, news); // refused moves are refused before the old attachment is touched
      const oldAddresses = current ? await addressesOf(inventory, current.networkId, id) : [];
      if (current) {
        await releaseAttachmentAddresses(inventory, current.networkId, id);
        await inventory.detach(id);
      }
      try {
        return await attachAndSync(ctx, inventory, id, news);
      } catch (e) {
        // The move failed half-way (e.g. the requested address is taken): the old attachment and
        // its addresses are put back as they were, so nothing is lost and the switch is unchanged.
        if (current && !(await inventory.getAttachment(id))) {
          await inventory.attach({ id, portId: current.portId, networkId: current.networkId, mode: current.mode, native: current.native });
          for (const a of oldAddresses) await inventory.allocateAddress({ subnetId: a.subnetId, owner: id, address: a.address }).catch(() => undefined);
          await applyPlans(ctx, await planNodePorts(ctx, inventory, port.nodeId));
        }
        throw e;
      }
    });
  },

  async delete(ctx, id) {
    const inventory = await ctx.inventory();
    const a = await inventory.getAttachment(id);
    if (!a) return; // released with its allocation, or never made
    await withNetworkLock(ctx, inventory, a.nodeId, async () => {
      await releaseAttachmentAddresses(inventory, a.networkId, id);
      await inventory.detach(id);
      await applyPlans(ctx, await planNodePorts(ctx, inventory, a.nodeId));
    });
  },
};
