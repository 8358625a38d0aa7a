/**
 * baremetal:compute:getNodes — the nodes of the shared inventory the caller may see.
 *
 * As Ironic's node list: callers allowed `baremetal:node:list_all` see every node; others (who
 * need `baremetal:node:list`) see only the nodes their project owns or leases.
 */
import { authorize } from "../../core/auth";
import type { Fields } from "../../core/fields";
import type { FunctionDefinition, ProviderContext } from "../../core/resource";
import type { NodeFilter, NodeRecord } from "../../inventory/types";

const inputs = {
  owner: { type: "string", description: "Only nodes owned by this project." },
  lessee: { type: "string", description: "Only nodes leased to this project." },
  resourceClass: { type: "string", description: "Only nodes of this resource class." },
  provisionState: { type: "string", description: "Only nodes in this provision state, e.g. `available`." },
} as const satisfies Fields;

const nodeSummary = {
  id: { type: "string", required: true, description: "The node's id (its Node resource id, the Redfish system URI)." },
  name: { type: "string", required: true, description: "The node's name." },
  owner: { type: "string", description: "The owning project." },
  lessee: { type: "string", description: "The project the node is leased to." },
  resourceClass: { type: "string", description: "The node's resource class." },
  traits: { type: "array", required: true, items: { type: "string", description: "A trait." }, description: "The node's traits." },
  provisionState: { type: "string", required: true, description: "The provision state." },
  maintenance: { type: "boolean", required: true, description: "Whether the node is in maintenance." },
  allocationId: { type: "string", description: "The allocation holding the node, if any." },
} as const satisfies Fields;

const outputs = {
  nodes: {
    type: "array",
    required: true,
    items: { type: "object", typeToken: "baremetal:compute:NodeSummary", description: "A node as the inventory knows it.", properties: nodeSummary },
    description: "The nodes the caller may see that match the filters, by name.",
  },
} as const satisfies Fields;

export function summary(n: NodeRecord): Record<string, unknown> {
  return {
    id: n.id,
    name: n.name,
    owner: n.owner,
    lessee: n.lessee,
    resourceClass: n.resourceClass,
    traits: n.traits,
    provisionState: n.provisionState,
    maintenance: n.maintenance,
    allocationId: n.allocationId,
  };
}

export const getNodesFunction: FunctionDefinition = {
  token: "baremetal:compute:getNodes",
  description:
    "Lists the enrolled nodes of the shared inventory that the caller may see: all of them for callers allowed `baremetal:node:list_all` (operators), else those the caller's project owns or leases.",
  inputs,
  outputs,

  async invoke(ctx, args) {
    const nodes = await (await ctx.inventory()).listNodes(visibleNodes(ctx, args));
    return { nodes: nodes.map(summary) };
  },
};

/**
 * The inventory filter of the nodes the caller may list (the policy's `baremetal:node:list`, and
 * `list_all` or else owner/lessee), with `args`' filters; the service's paged listing uses it too.
 */
export function visibleNodes(ctx: Pick<ProviderContext, "caller" | "policy">, args: Record<string, unknown>): NodeFilter {
  const { caller, policy } = ctx;
  authorize(policy, caller, "baremetal:node:list", {});
  const seeAll = caller.operator || policy.check("baremetal:node:list_all", caller, {}).allowed;
  return {
    owner: args.owner as string | undefined,
    lessee: args.lessee as string | undefined,
    resourceClass: args.resourceClass as string | undefined,
    provisionState: args.provisionState as string | undefined,
    ...(seeAll ? {} : { visibleTo: caller.projectId }),
  };
}
