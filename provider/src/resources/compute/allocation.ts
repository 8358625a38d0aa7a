/**
 * baremetal:compute:Allocation — a claim on one node of the shared pool.
 *
 * The machine (Node, the operator's) and its use (Allocation, then Deployment, the tenant's) are
 * separate resources: destroying an allocation returns the node to the pool and never un-enrols
 * it. The claim is atomic in the shared inventory, so two stacks allocating at once never get the
 * same node. A caller that may not allocate for other projects (Ironic's
 * `baremetal:allocation:create_restricted`) only ever gets nodes its project owns or leases.
 */
import { randomUUID } from "node:crypto";
import { authorize, type Caller } from "../../core/auth";
import { BaremetalError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { Policy } from "../../core/policy";
import type { Props, ProviderContext, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import type { AllocationRecord, Inventory, NodeRecord } from "../../inventory/types";
import { isolateForRelease } from "../network/wiring";

const inputs = {
  resourceClass: {
    type: "string",
    replaceOnChange: true,
    description: "Only nodes of this resource class, e.g. `baremetal-large`.",
  },
  traits: {
    type: "array",
    uniqueItems: true,
    replaceOnChange: true,
    items: {
      type: "string",
      pattern: "^[A-Z][A-Z0-9_]*$",
      description: "A trait name.",
      hint: "Traits are upper-case names such as HW_CPU_X86_AVX2 or CUSTOM_GPU",
    },
    description: "Only nodes that have every one of these traits.",
  },
  candidateNodes: {
    type: "array",
    uniqueItems: true,
    replaceOnChange: true,
    items: { type: "string", minLength: 1, description: "A node id (the Node resource's id)." },
    description: "Only these nodes (Node resource ids).",
  },
  project: {
    type: "string",
    replaceOnChange: true,
    minLength: 1,
    description:
      "Only nodes whose owner or lessee is this project (a restricted allocation). Callers that may not allocate for other projects are always restricted to their own project.",
  },
  name: {
    type: "string",
    minLength: 1,
    description: "The allocation's name (defaults to the resource name); allocations with the same name prefer the same node.",
  },
} as const satisfies Fields;

const outputs = {
  allocationId: { type: "string", required: true, stable: true, description: "The allocation's id in the inventory." },
  nodeId: { type: "string", required: true, stable: true, description: "The claimed node: the id of its Node resource (its Redfish system URI)." },
  nodeName: { type: "string", required: true, stable: true, description: "The claimed node's name." },
  owner: { type: "string", stable: true, description: "The project that owns the allocation (the caller's)." },
  restrictedTo: { type: "string", stable: true, description: "The project the choice was restricted to, if any." },
  state: { type: "string", required: true, description: "`active` while the claim holds." },
} as const satisfies Fields;

const CREATE_RESTRICTED = "baremetal:allocation:create_restricted";

function allowed(policy: Policy, caller: Caller, operation: string, target: Record<string, string | undefined>): boolean {
  return caller.operator || policy.check(operation, caller, target).allowed;
}

/**
 * Which project the node choice is restricted to: the one asked for; for callers who may not
 * allocate unrestricted, always their own (asking for another project is denied, naming the rule).
 */
function restriction(ctx: ProviderContext, props: Props): string | undefined {
  const { caller, policy } = ctx;
  const asked = props.project as string | undefined;
  if (caller.operator) return asked;
  const mayCrossProjects = allowed(policy, caller, CREATE_RESTRICTED, { "allocation.owner": caller.projectId });
  if (asked !== undefined && asked !== caller.projectId && !mayCrossProjects) {
    authorize(policy, caller, CREATE_RESTRICTED, { "allocation.owner": asked }); // throws, naming the rule
  }
  return asked ?? (mayCrossProjects ? undefined : caller.projectId);
}

/**
 * A fresh id per create. (An id derived from the URN would make a create retried after a crash
 * find its own claim, but two stacks of the same project and stack names sharing one inventory
 * would then share allocations. The claim is one transaction answered at once, so the window in
 * which a crash could orphan it is that of a single response; an orphan shows in the operator's
 * view as a node held by an allocation no stack has.)
 */
function newAllocationId(): string {
  return `alloc-${randomUUID()}`;
}

function outputsOf(allocation: AllocationRecord, node: Pick<NodeRecord, "id" | "name"> | undefined): Props {
  return {
    allocationId: allocation.id,
    nodeId: allocation.nodeId,
    nodeName: node?.name ?? allocation.nodeId,
    owner: allocation.owner,
    restrictedTo: allocation.project,
    state: allocation.state,
  };
}

export const allocationResource: ResourceDefinition = {
  token: "baremetal:compute:Allocation",
  description:
    "A claim on one available node of the shared pool, matched by resource class, traits and an optional candidate list. The claim is atomic across stacks. Destroying it returns the node to the pool; it never un-enrols the node.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 120,

  check(props) {
    const candidates = props.candidateNodes;
    if (Array.isArray(candidates) && candidates.length === 0) {
      return [{ property: "candidateNodes", reason: "'candidateNodes' is empty, so no node could match; leave it out to allow any node" }];
    }
    return [];
  },

  authorize(ctx, change, props, state) {
    if (change === "create") {
      authorize(ctx.policy, ctx.caller, "baremetal:allocation:create", { "allocation.owner": ctx.caller.projectId });
      if (!isUnknown(props.project)) restriction(ctx, props);
    } else {
      const owner = (state?.owner as string | undefined) ?? ctx.caller.projectId;
      authorize(ctx.policy, ctx.caller, change === "delete" ? "baremetal:allocation:delete" : "baremetal:allocation:update", { "allocation.owner": owner });
    }
  },

  async create(ctx, props) {
    const inventory = await ctx.inventory();
    const project = restriction(ctx, props);
    const allocationId = newAllocationId();
    ctx.progress(`claiming a node${project ? ` of project ${project}` : ""}`);
    const claim = await inventory.claimNode({
      allocationId,
      name: (props.name as string | undefined) ?? ctx.name,
      owner: ctx.caller.projectId,
      project,
      resourceClass: props.resourceClass as string | undefined,
      traits: props.traits as string[] | undefined,
      candidates: props.candidateNodes as string[] | undefined,
    });
    return { id: allocationId, outputs: { ...props, ...outputsOf(claim.allocation, claim.node) } };
  },

  async read(ctx, id, stored) {
    const inventory = await ctx.inventory();
    const allocation = await inventory.getAllocation(id);
    if (!allocation || allocation.state !== "active") return undefined;
    const node = await inventory.getNode(allocation.nodeId);
    const declared: Props = stored ?? {
      ...(allocation.resourceClass ? { resourceClass: allocation.resourceClass } : {}),
      ...(allocation.traits.length ? { traits: allocation.traits } : {}),
      ...(allocation.candidateNodes ? { candidateNodes: allocation.candidateNodes } : {}),
      ...(allocation.project ? { project: allocation.project } : {}),
      name: allocation.name,
    };
    return { id, inputs: declared, outputs: { ...declared, ...outputsOf(allocation, node) } };
  },

  async update(_ctx, _id, _olds, news, oldState) {
    // Only `name` can change in place; it matters for the choice of a node, which is made.
    return { ...oldState, ...news };
  },

  async delete(ctx, id) {
    const inventory = await ctx.inventory();
    const allocation = await inventory.getAllocation(id);
    if (!allocation || allocation.state !== "active") {
      ctx.progress("the allocation was already released");
      return;
    }
    // Cut off from every tenant network first (under the node's network lock), then released.
    const detached = await isolateForRelease(ctx, inventory, allocation.nodeId, async () => {
      await inventory.releaseClaim(id);
    });
    ctx.progress(`node ${allocation.nodeId} returned to the pool${detached ? ` after leaving ${detached} network attachment(s)` : ""}`);
  },
};

/**
 * Checks `operations` against the owner and lessee of the node an allocation holds, as Ironic
 * checks node operations. Skipped for the standalone operator, and at preview for an allocation
 * that does not exist yet (its node is unknown until it is made).
 */
export async function authorizeOnAllocatedNode(ctx: ProviderContext, allocationId: unknown, operations: readonly string[]): Promise<void> {
  if (ctx.caller.operator || typeof allocationId !== "string") return;
  const inventory = await ctx.inventory();
  const allocation = await inventory.getAllocation(allocationId);
  const node = allocation ? await inventory.getNode(allocation.nodeId) : undefined;
  const target = { "node.owner": node?.owner, "node.lessee": node?.lessee };
  for (const operation of operations) authorize(ctx.policy, ctx.caller, operation, target);
}

/** The node an active allocation holds, checked: what Deployment and ConsoleAccess act on. */
export async function allocatedNode(inventory: Inventory, allocationId: string): Promise<NodeRecord> {
  const allocation = await inventory.getAllocation(allocationId);
  if (!allocation || allocation.state !== "active") {
    throw validationError("allocationId", `no active allocation '${allocationId}'; create the Allocation first (or it was released)`);
  }
  const node = await inventory.getNode(allocation.nodeId);
  if (!node) throw new BaremetalError("conflict", `allocation ${allocationId} holds node ${allocation.nodeId}, which is no longer enrolled`);
  return node;
}
