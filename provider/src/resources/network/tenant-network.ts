/**
 * baremetal:network:TenantNetwork — a project's layer-2 network on a fabric: a VLAN taken
 * atomically from the fabric's pool (or a requested one), created on every switch of the fabric
 * and carried by their trunk ports, with one or more IPv4/IPv6 subnets for address assignment.
 * Delete prunes the VLAN from the trunks and the switches' registries, then frees it.
 */
import { checkFailureOf } from "../../core/validate";
import { randomUUID } from "node:crypto";
import { authorize } from "../../core/auth";
import { BaremetalError, describeError, isBaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import { type OperationContext, PartialCreateError, type Props, type ProviderContext, type ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import type { Inventory, NetworkRecord, SubnetRecord } from "../../inventory/types";
import { defaultFabricName, ensureFabricPool, fabricNamed } from "./fabric";
import { ensureVlanOnFabric, fabricVlanDrift, releaseIdleTrunks, removeVlanFromFabric } from "./wiring";

/** The project of networks made by the standalone operator (a provider without `project`). */
export const OPERATOR_PROJECT = "operator";

const subnetFields = {
  cidr: {
    type: "string",
    required: true,
    pattern: "^[0-9A-Fa-f:.]+/\\d{1,3}$",
    description: "The subnet, e.g. `10.10.0.0/24` or `2001:db8:10::/64` (host bits zero).",
    hint: "Write a subnet as 10.10.0.0/24 or 2001:db8::/64",
  },
  gateway: { type: "string", description: "The gateway address (inside the subnet; never handed out)." },
  allocationPools: {
    type: "array",
    items: {
      type: "object",
      typeToken: "baremetal:network:AddressPool",
      description: "An inclusive range of addresses.",
      properties: {
        start: { type: "string", required: true, description: "First address." },
        end: { type: "string", required: true, description: "Last address." },
      },
    },
    description: "Where attachments get their addresses from (default: the whole subnet but the gateway, network and broadcast addresses).",
  },
} as const satisfies Fields;

const inputs = {
  name: { type: "string", minLength: 1, maxLength: 63, description: "The network's name (defaults to the resource name)." },
  project: {
    type: "string",
    minLength: 1,
    replaceOnChange: true,
    description: "The project that owns the network (default: the caller's). Only this project's nodes can be attached to it.",
  },
  fabric: { type: "string", minLength: 1, replaceOnChange: true, description: "The fabric the network spans (default: the only one configured)." },
  vlan: {
    type: "integer",
    minimum: 1,
    maximum: 4094,
    replaceOnChange: true,
    description: "A specific VLAN id (default: the lowest free one of the fabric's pool, chosen atomically across stacks).",
  },
  subnets: {
    type: "array",
    items: { type: "object", typeToken: "baremetal:network:Subnet", description: "An IPv4 or IPv6 subnet of the network.", properties: subnetFields },
    description: "The network's subnets: attachments get one address from each.",
  },
} as const satisfies Fields;

const outputs = {
  networkId: { type: "string", required: true, stable: true, description: "The network's id in the inventory (what NetworkAttachment's `networkId` takes)." },
  vlanId: { type: "integer", required: true, stable: true, description: "The network's VLAN id." },
  owner: { type: "string", required: true, stable: true, description: "The project that owns the network." },
  fabricName: { type: "string", required: true, stable: true, description: "The fabric the network spans." },
  subnetIds: { type: "array", items: { type: "string", description: "A subnet id." }, description: "The subnets' ids, in the order of `subnets`." },
} as const satisfies Fields;

interface SubnetInputProps {
  cidr: string;
  gateway?: string;
  allocationPools?: { start: string; end: string }[];
}

function ownerOf(ctx: ProviderContext, props: Props): string {
  return (props.project as string | undefined) ?? ctx.caller.projectId ?? OPERATOR_PROJECT;
}

const subnetId = (networkId: string, cidr: string) => `${networkId}:${cidr}`;

/** Makes the network's subnets those declared: adds new ones, removes the rest (refused while addresses are in use). */
async function syncSubnets(inventory: Inventory, networkId: string, declared: SubnetInputProps[]): Promise<string[]> {
  const have = await inventory.listSubnets({ networkId });
  const ids: string[] = [];
  const keep = new Set<string>();
  for (const [i, s] of declared.entries()) {
    const same = have.find((h) => h.id === subnetId(networkId, s.cidr) || h.cidr === s.cidr);
    if (same && sameSubnet(same, s)) {
      ids.push(same.id);
      keep.add(same.id);
      continue;
    }
    if (same) {
      await inventory.removeSubnet(same.id).catch((e) => {
        throw isBaremetalError(e) ? new BaremetalError(e.code, `changing subnet ${s.cidr} means replacing it: ${e.message}`, { property: `subnets[${i}]` }) : e;
      });
    }
    try {
      const added = await inventory.addSubnet({ id: subnetId(networkId, s.cidr), networkId, cidr: s.cidr, gateway: s.gateway, allocationPools: s.allocationPools });
      ids.push(added.id);
      keep.add(added.id);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "validation") throw new BaremetalError("validation", e.message, { property: `subnets[${i}]${e.property ? `.${e.property}` : ""}` });
      throw e;
    }
  }
  for (const h of have) if (!keep.has(h.id)) await inventory.removeSubnet(h.id);
  return ids;
}

function sameSubnet(h: SubnetRecord, s: SubnetInputProps): boolean {
  if ((h.gateway ?? "") !== (s.gateway ?? "")) return false;
  if (!s.allocationPools) return true; // default pools: whatever the inventory derived
  // Compared as text ranges: the engine may hand the objects over with their keys in another order.
  const ranges = (pools: { start: string; end: string }[]) => pools.map((p) => `${p.start}-${p.end}`).sort().join(",");
  return ranges(h.allocationPools) === ranges(s.allocationPools);
}

function outputsOf(props: Props, network: NetworkRecord, subnetIds: string[]): Props {
  return { ...props, networkId: network.id, vlanId: network.vlan, owner: network.owner, fabricName: network.fabric, subnetIds };
}

async function provision(ctx: OperationContext, network: NetworkRecord, props: Props): Promise<string[]> {
  const subnetIds = await syncSubnets(await ctx.inventory(), network.id, (props.subnets as SubnetInputProps[] | undefined) ?? []);
  ctx.progress(`VLAN ${network.vlan}: configuring the switches of fabric ${network.fabric}`);
  await ensureVlanOnFabric(ctx, network.fabric, network.vlan, `${network.owner}/${network.name}`.slice(0, 63), ctx.signal);
  return subnetIds;
}

export const tenantNetworkResource: ResourceDefinition = {
  token: "baremetal:network:TenantNetwork",
  description:
    "A project's isolated layer-2 network: a VLAN from the fabric's pool (atomic across stacks), configured on every switch of the fabric and carried by their trunk ports, with IPv4/IPv6 subnets from which attachments get addresses.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 300,

  check(props, ctx) {
    if (isUnknown(props.fabric)) return [];
    try {
      const name = (props.fabric as string | undefined) ?? defaultFabricName(ctx, "fabric");
      const fabric = fabricNamed(ctx, name, "fabric");
      const vlan = props.vlan;
      if (typeof vlan === "number" && [fabric.provisioningVlan, fabric.quarantineVlan].includes(vlan)) {
        return [{ property: "vlan", reason: `VLAN ${vlan} is fabric ${name}'s ${vlan === fabric.quarantineVlan ? "quarantine" : "provisioning"} VLAN; choose another or leave vlan out` }];
      }
    } catch (e) {
      if (e instanceof BaremetalError && e.property) return [checkFailureOf(e)];
      throw e;
    }
    return [];
  },

  authorize(ctx, change, props, state) {
    const op = change === "create" ? "baremetal:network:create" : change === "delete" ? "baremetal:network:delete" : "baremetal:network:update";
    const owner = (state?.owner as string | undefined) ?? (isUnknown(props.project) ? undefined : ownerOf(ctx, props));
    authorize(ctx.policy, ctx.caller, op, { "network.owner": owner });
  },

  async create(ctx, props) {
    const inventory = await ctx.inventory();
    const fabricName = (props.fabric as string | undefined) ?? defaultFabricName(ctx, "fabric");
    const fabric = fabricNamed(ctx, fabricName, "fabric");
    await ensureFabricPool(inventory, fabricName, fabric);
    const network = await inventory.createNetwork({
      id: `net-${randomUUID()}`,
      name: (props.name as string | undefined) ?? ctx.name,
      owner: ownerOf(ctx, props),
      fabric: fabricName,
      ...(props.vlan !== undefined ? { vlan: props.vlan as number } : { pool: fabricName }),
    });
    ctx.progress(`network ${network.name}: VLAN ${network.vlan}`);
    try {
      const subnetIds = await provision(ctx, network, props);
      return { id: network.id, outputs: outputsOf(props, network, subnetIds) };
    } catch (e) {
      // The VLAN is ours: keep it in state so the next `up` finishes the job (update) instead of taking another.
      throw new PartialCreateError(network.id, outputsOf(props, network, []), [describeError(e)]);
    }
  },

  async read(ctx, id, stored, state) {
    const inventory = await ctx.inventory();
    const network = await inventory.getNetwork(id);
    if (!network) return undefined;
    const subnets = await inventory.listSubnets({ networkId: id });
    const declared: Props = stored ?? {
      name: network.name,
      project: network.owner,
      fabric: network.fabric,
      vlan: network.vlan,
      ...(subnets.length ? { subnets: subnets.map((s) => ({ cidr: s.cidr, ...(s.gateway ? { gateway: s.gateway } : {}) })) } : {}),
    };
    const problems = await fabricVlanDrift(ctx, network.fabric, network.vlan);
    for (const p of problems) ctx.warn(`network ${network.name} (VLAN ${network.vlan}): ${p}; \`pulumi up\` puts it back`);
    const inputs: Props = { ...declared };
    // Drift on the switches shows as a change of the subnets-independent `name` input, which up re-applies.
    if (problems.length) inputs.name = `${(declared.name as string | undefined) ?? network.name} (switches out of sync: ${problems.join("; ")})`;
    return { id, inputs, outputs: { ...(state ?? {}), ...inputs, ...outputsOf({}, network, subnets.map((s) => s.id)) } };
  },

  async update(ctx, id, _olds, news, oldState) {
    const inventory = await ctx.inventory();
    const network = await inventory.getNetwork(id);
    if (!network) throw new BaremetalError("not-found", `network ${id} is no longer in the inventory; run \`pulumi refresh\` to forget it, then \`pulumi up\``);
    const subnetIds = await provision(ctx, network, news);
    return { ...oldState, ...outputsOf(news, network, subnetIds) };
  },

  async delete(ctx, id) {
    const inventory = await ctx.inventory();
    const network = await inventory.getNetwork(id);
    if (!network) return;
    const attached = await inventory.listAttachments({ networkId: id });
    if (attached.length) {
      throw new BaremetalError(
        "conflict",
        `network ${network.name} still has ${attached.length} attachment(s) (ports ${attached.map((a) => a.portId).join(", ")}); delete the NetworkAttachments first`,
      );
    }
    ctx.progress(`VLAN ${network.vlan}: pruning it from the switches of fabric ${network.fabric}`);
    await removeVlanFromFabric(ctx, network.fabric, network.vlan, ctx.signal);
    await inventory.deleteNetwork(id);
    await releaseIdleTrunks(ctx, inventory, network.fabric, ctx.signal);
  },
};
