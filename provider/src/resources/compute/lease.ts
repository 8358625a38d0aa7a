/**
 * baremetal:compute:Lease — the owner of a node lends it to another project (the lessee) for a
 * time window: the MOC ESI model (esi-leap), on the inventory's leases.
 *
 * While the lease is `active` the node's lessee (inventory) is the lease's lessee, so Ironic's
 * lessee rules give that project the node exactly as an operator-set lessee does: it allocates it
 * (a restricted allocation), deploys it, opens its console, attaches it to its networks. A lease
 * whose start lies ahead is `pending` and becomes active at its start.
 *
 * The end (`endLease`, one function for all three ways a lease ends: its delete, the due update
 * of the next `up` after `endTime`, and the service's reaper, ../../service/leases.ts), run as the
 * operator: the node's lessee is cleared first (the lessee can start nothing new), then under the
 * node's lock the lessee's deployment is undeployed and cleaned (the Deployment's own teardown),
 * the console accounts made on the node's BMC for the lessee are removed (ConsoleAccess's own
 * delete), the node's ports leave the lessee's networks (NetworkAttachment's own delete) and the
 * lessee's allocation is released. Each step goes to the audit log (`baremetal:lease:end:<step>`,
 * target the node, outcome `done` or `failed`, the lease id in the detail). A step that fails is
 * recorded, the others still run, and the lease stays `ending` (retried by the reaper, or by
 * the next `up` / `destroy`); once every step succeeded it is `ended`. In broker mode the
 * service's records of the objects the teardown removed are deleted too, so the tenant's next
 * refresh sees them gone.
 *
 * Without a service nothing ends a lease on time: the next `up` after `endTime` does
 * (`pendingChanges`), as a BackupPolicy takes a due backup. Console accounts are known from the
 * service's records only: without a service, the lessee's ConsoleAccess removes its account at its
 * next refresh (its allocation has ended), and the BMC expires it at `validHours` anyway.
 *
 * Policy: `baremetal:lease:create` (default: the node's owner project's managers, and the system
 * admins, as esi-leap's `esi_leap:lease:create`) against the node's owner; ending early
 * `baremetal:lease:delete` against the lease's owner. All inputs replace: a changed window is a
 * new lease (the old one ends first, with its teardown).
 */
import { randomUUID } from "node:crypto";
import { authorize, type Caller } from "../../core/auth";
import { BaremetalError, describeError, isBaremetalError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { OperationContext, Props, ProviderContext, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import type { Inventory, LeaseRecord, NodeRecord, ServiceResourceRecord } from "../../inventory/types";
import { networkAttachmentResource } from "../network/attachment";
import { allocationResource } from "./allocation";
import { consoleAccessResource } from "./console";
import { deploymentResource, removeConfigDrive, undeployAndClean, withNodeLock } from "./deployment";

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const isoTime = (v: string) =>
  ISO_TIME.test(v) && !Number.isNaN(Date.parse(v)) ? undefined : `'${v}' is not an ISO 8601 time with a zone, such as 2026-11-23T18:00:00Z`;

const inputs = {
  nodeId: { type: "string", required: true, replaceOnChange: true, minLength: 1, description: "The node to lease (its Node resource id); the caller's project must own it." },
  lessee: { type: "string", required: true, replaceOnChange: true, minLength: 1, description: "The project the node is leased to." },
  startTime: {
    type: "string",
    replaceOnChange: true,
    validate: isoTime,
    description: "When the lease starts (ISO 8601 with a zone); default: when it is created.",
  },
  endTime: {
    type: "string",
    required: true,
    replaceOnChange: true,
    validate: isoTime,
    description:
      "When the lease ends (ISO 8601 with a zone, after startTime). Then the lessee's deployment of the node is undeployed and cleaned, its console accounts removed, its networks detached and its allocation released: by the service, or without one by the next `up`.",
  },
} as const satisfies Fields;

const outputs = {
  leaseId: { type: "string", required: true, stable: true, description: "The lease's id in the inventory." },
  state: { type: "string", required: true, description: "`pending` (before its start), `active`, `ending` (the teardown is being retried) or `ended`." },
  owner: { type: "string", stable: true, description: "The project that owned the node when it was leased." },
  startsAt: { type: "string", required: true, stable: true, description: "When the lease starts (ISO 8601, UTC)." },
  endsAt: { type: "string", required: true, stable: true, description: "When the lease ends (ISO 8601, UTC)." },
  endedAt: { type: "string", description: "When the lease ended (ISO 8601, UTC)." },
  endReason: { type: "string", description: "Why it ended: `expired` or `deleted`." },
} as const satisfies Fields;

/** The teardown runs as the operator (the service's or provider's own credentials), whoever triggered it. */
const OPERATOR: Caller = { roles: [], operator: true };

function outputsOf(lease: LeaseRecord): Props {
  return {
    leaseId: lease.id,
    state: lease.state,
    owner: lease.owner,
    startsAt: lease.startTime,
    endsAt: lease.endTime,
    endedAt: lease.endedAt,
    endReason: lease.endReason,
  };
}

async function audit(ctx: OperationContext, inventory: Inventory, requestId: string, lease: LeaseRecord, step: string, outcome: "done" | "failed", detail: string): Promise<void> {
  await inventory
    .appendAudit({
      at: new Date().toISOString(),
      requestId,
      ...(ctx.caller.projectId !== undefined ? { projectId: ctx.caller.projectId } : {}),
      operation: step ? `baremetal:lease:end:${step}` : "baremetal:lease:end",
      target: lease.nodeId,
      outcome,
      detail: `lease ${lease.id} (lessee ${lease.lessee}): ${detail}`,
    })
    .catch((e) => ctx.warn(`could not append to the audit log: ${describeError(e)}`));
}

/**
 * Sets the node's lessee to `lessee` when `when(current)` holds, against the version read (retried
 * when the node changed meanwhile). True when it changed something.
 */
async function setNodeLessee(inventory: Inventory, nodeId: string, lessee: string | undefined, when: (node: NodeRecord) => boolean): Promise<boolean> {
  for (let attempt = 0; ; attempt++) {
    const node = await inventory.getNode(nodeId);
    if (!node || node.lessee === lessee || !when(node)) return false;
    try {
      await inventory.upsertNode(
        { id: node.id, name: node.name, owner: node.owner, lessee, resourceClass: node.resourceClass, traits: node.traits, properties: node.properties },
        { expectedVersion: node.version },
      );
      return true;
    } catch (e) {
      if (!(isBaremetalError(e) && e.code === "conflict") || attempt >= 5) throw e;
    }
  }
}

/** An active lease's lessee on its node (also repairs a node whose lessee was reset meanwhile). */
export async function applyLessee(inventory: Inventory, lease: LeaseRecord): Promise<boolean> {
  if (lease.state !== "active") return false;
  return setNodeLessee(inventory, lease.nodeId, lease.lessee, () => true);
}

/** pending -> active (once, whoever else tries at the same time), then the node's lessee. */
export async function activateLease(ctx: OperationContext, lease: LeaseRecord): Promise<LeaseRecord> {
  const inventory = await ctx.inventory();
  const active = await inventory.changeLeaseState(lease.id, ["pending"], "active");
  if (!active) return (await inventory.getLease(lease.id)) ?? lease;
  await applyLessee(inventory, active);
  await inventory
    .appendAudit({
      at: new Date().toISOString(),
      requestId: `lease-${randomUUID()}`,
      ...(ctx.caller.projectId !== undefined ? { projectId: ctx.caller.projectId } : {}),
      operation: "baremetal:lease:activate",
      target: lease.nodeId,
      outcome: "done",
      detail: `lease ${lease.id}: node leased to ${lease.lessee} until ${lease.endTime}`,
    })
    .catch((e) => ctx.warn(`could not append to the audit log: ${describeError(e)}`));
  return active;
}

/** The handler state of a service record (without the service's own `@` keys). */
function recordState(r: ServiceResourceRecord): Props {
  return Object.fromEntries(Object.entries(r.state).filter(([k]) => !k.startsWith("@")));
}

/** The service's records (broker mode) of `type` belonging to `project`; none without a service. */
async function projectRecords(inventory: Inventory, project: string, type: string): Promise<ServiceResourceRecord[]> {
  const out: ServiceResourceRecord[] = [];
  for (let after: string | undefined; ; ) {
    const page = await inventory.listServiceResources({ type, projectId: project, limit: 500, ...(after ? { afterUuid: after } : {}) });
    out.push(...page);
    if (page.length < 500) return out;
    after = page[page.length - 1].uuid;
  }
}

/**
 * Ends the lease (see the header): idempotent, safe to run from several places at once (the
 * state change to `ending` and the node's lock let one do the work). Returns the lease as it is
 * after; throws when a step failed (the lease then stays `ending`, every step recorded).
 */
export async function endLease(ctx: OperationContext, lease: LeaseRecord, reason: string): Promise<LeaseRecord> {
  const inventory = await ctx.inventory();
  const requestId = `lease-end-${randomUUID()}`;
  let cur: LeaseRecord = (await inventory.getLease(lease.id)) ?? lease;
  if (cur.state === "ended") return cur;
  cur = (await inventory.changeLeaseState(cur.id, ["pending", "active"], "ending", { endReason: reason })) ?? (await inventory.getLease(cur.id)) ?? cur;
  if (cur.state === "ended") return cur;
  const op: OperationContext = { ...ctx, caller: OPERATOR };
  const failed: string[] = [];
  const step = async (name: string, work: () => Promise<string | undefined>) => {
    try {
      const did = await work();
      if (did !== undefined) await audit(ctx, inventory, requestId, cur, name, "done", did);
    } catch (e) {
      failed.push(`${name}: ${describeError(e)}`);
      await audit(ctx, inventory, requestId, cur, name, "failed", describeError(e));
    }
  };

  // First the lessee loses the node: nothing new can be started on it from now on.
  await step("lessee", async () => ((await setNodeLessee(inventory, cur.nodeId, undefined, (n) => n.lessee === cur.lessee)) ? `node's lessee ${cur.lessee} cleared` : undefined));

  return withNodeLock(op, inventory, cur.nodeId, "lease end", async () => {
    const now = await inventory.getLease(cur.id);
    if (!now || now.state === "ended") return now ?? cur;
    const node = await inventory.getNode(cur.nodeId);
    const allocation = node?.allocationId ? await inventory.getAllocation(node.allocationId) : undefined;
    const held = allocation?.state === "active" && allocation.owner === cur.lessee ? allocation : undefined;
    const forget = async (type: string, match: (r: ServiceResourceRecord) => boolean) => {
      for (const r of (await projectRecords(inventory, cur.lessee, type)).filter(match)) await inventory.deleteServiceResource(r.uuid);
    };

    await step("undeploy", async () => {
      const records = (await projectRecords(inventory, cur.lessee, deploymentResource.token)).filter((r) => r.resourceId === cur.nodeId);
      const deployed = node && held && ["active", "deploying", "deploy failed", "cleaning", "clean failed"].includes(node.provisionState);
      if (!deployed && !records.length) return undefined;
      if (deployed) await undeployAndClean(op, inventory, cur.nodeId);
      for (const r of records) {
        await removeConfigDrive(op, recordState(r)).catch((e) => ctx.warn(`the config drive of ${cur.nodeId} stays in the image store: ${describeError(e)}`));
        await inventory.deleteServiceResource(r.uuid);
      }
      return deployed ? `undeployed and cleaned (was ${node.provisionState})` : "the deployment's record removed";
    });

    await step("console", async () => {
      const records = (await projectRecords(inventory, cur.lessee, consoleAccessResource.token)).filter((r) => recordState(r).nodeId === cur.nodeId);
      if (!records.length) return undefined;
      const names: string[] = [];
      for (const r of records) {
        const state = recordState(r);
        await consoleAccessResource.delete(op, r.resourceId, r.inputs, state);
        await inventory.deleteServiceResource(r.uuid);
        names.push(String(state.username));
      }
      return `BMC console account(s) ${names.join(", ")} removed`;
    });

    await step("detach", async () => {
      const attachments = (await inventory.listAttachments({ nodeId: cur.nodeId })).filter((a) => a.owner === cur.lessee);
      if (!attachments.length) return undefined;
      for (const a of attachments) {
        await networkAttachmentResource.delete(op, a.id, {}, {});
        await forget(networkAttachmentResource.token, (r) => r.resourceId === a.id);
      }
      return `port(s) detached from ${attachments.map((a) => `network ${a.networkId} (VLAN ${a.vlan})`).join(", ")}`;
    });

    await step("release", async () => {
      if (!held) return undefined;
      await allocationResource.delete(op, held.id, {}, {});
      await forget(allocationResource.token, (r) => r.resourceId === held.id);
      return `allocation ${held.id} released`;
    });

    if (failed.length) {
      await audit(ctx, inventory, requestId, cur, "", "failed", `still ending (retried): ${failed.join("; ")}`);
      throw new BaremetalError("backend", `lease ${cur.id} of node ${cur.nodeId} is still ending: ${failed.join("; ")}; it is retried (by the service, or run again)`);
    }
    const ended = (await inventory.changeLeaseState(cur.id, ["ending"], "ended", { endedAt: new Date().toISOString(), endReason: reason })) ?? (await inventory.getLease(cur.id)) ?? cur;
    await audit(ctx, inventory, requestId, cur, "", "done", `ended (${ended.endReason ?? reason})`);
    return ended;
  });
}

async function leaseOf(ctx: ProviderContext, id: string): Promise<LeaseRecord | undefined> {
  return (await ctx.inventory()).getLease(id);
}

const passed = (time: unknown) => typeof time === "string" && Date.parse(time) <= Date.now();

export const leaseResource: ResourceDefinition = {
  token: "baremetal:compute:Lease",
  description:
    "A lease of a node to another project for a time window (the MOC ESI model): while it is active the lessee may allocate, deploy and use the node; at its end the lessee's deployment is undeployed and cleaned, its console accounts removed, its networks detached and its allocation released, every step in the audit log. Destroying it ends the lease early.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 1800,

  check(props) {
    const { startTime, endTime } = props;
    if (typeof startTime === "string" && typeof endTime === "string" && !isoTime(startTime) && !isoTime(endTime) && Date.parse(endTime) <= Date.parse(startTime)) {
      return [{ property: "endTime", reason: `endTime (${endTime}) must be after startTime (${startTime})` }];
    }
    return [];
  },

  async authorize(ctx, change, props, state) {
    if (ctx.caller.operator) return;
    if (change === "create") {
      if (isUnknown(props.nodeId) || typeof props.nodeId !== "string") return; // checked again when made
      const node = await (await ctx.inventory()).getNode(props.nodeId);
      authorize(ctx.policy, ctx.caller, "baremetal:lease:create", {
        "node.owner": node?.owner,
        "node.lessee": node?.lessee,
        "lease.owner": node?.owner,
        "lease.lessee": isUnknown(props.lessee) ? undefined : (props.lessee as string),
      });
      return;
    }
    authorize(ctx.policy, ctx.caller, "baremetal:lease:delete", { "lease.owner": state?.owner as string | undefined, "lease.lessee": (state?.lessee ?? props.lessee) as string | undefined });
  },

  pendingChanges(state) {
    const open = state.state === "pending" || state.state === "active" || state.state === "ending";
    if (open && passed(state.endsAt)) return [{ path: "endTime", reason: `the lease ended at ${state.endsAt as string}: its end (undeploy, clean, release) is due` }];
    if (state.state === "pending" && passed(state.startsAt)) return [{ path: "startTime", reason: `the lease started at ${state.startsAt as string}: the node goes to its lessee` }];
    return [];
  },

  async create(ctx, props) {
    const inventory = await ctx.inventory();
    const nodeId = props.nodeId as string;
    const lessee = props.lessee as string;
    const node = await inventory.getNode(nodeId);
    if (!node) throw validationError("nodeId", `no node '${nodeId}' is enrolled; pass a Node resource's id`);
    const now = Date.now();
    const startTime = (props.startTime as string | undefined) ?? new Date(now).toISOString();
    const endTime = props.endTime as string;
    if (Date.parse(endTime) <= now) throw validationError("endTime", `endTime ${endTime} has passed; a lease must end in the future`);
    if (Date.parse(endTime) <= Date.parse(startTime)) throw validationError("endTime", `endTime (${endTime}) must be after startTime (${startTime})`);
    if (node.owner !== undefined && lessee === node.owner) throw validationError("lessee", `project ${lessee} owns node ${node.name}: it needs no lease`);
    if (node.lessee !== undefined && node.lessee !== lessee) {
      const leased = await inventory.listLeases({ nodeId, state: ["active", "ending"] });
      if (!leased.some((l) => l.lessee === node.lessee)) {
        throw new BaremetalError("conflict", `node ${node.name} has lessee ${node.lessee} set on the node itself (not by a lease); clear the Node's lessee first`, { property: "nodeId" });
      }
    }
    let lease = await inventory.insertLease({ id: `lease-${randomUUID()}`, nodeId, owner: node.owner, lessee, startTime, endTime });
    ctx.progress(`lease ${lease.id}: node ${node.name} to project ${lessee} from ${lease.startTime} to ${lease.endTime}`);
    if (Date.parse(lease.startTime) <= Date.now()) lease = await activateLease(ctx, lease);
    return { id: lease.id, outputs: { ...props, ...outputsOf(lease) } };
  },

  async read(ctx, id, stored, state) {
    const lease = await leaseOf(ctx, id);
    if (!lease) return undefined;
    const declared: Props = stored ?? { nodeId: lease.nodeId, lessee: lease.lessee, startTime: lease.startTime, endTime: lease.endTime };
    return { id, inputs: declared, outputs: { ...(state ?? {}), ...declared, ...outputsOf(lease) } };
  },

  async update(ctx, id, _olds, news, oldState) {
    // Every input replaces: an update is a due change (pendingChanges), the start or the end.
    let lease = await leaseOf(ctx, id);
    if (!lease) throw new BaremetalError("not-found", `lease ${id} is gone from the inventory; run \`pulumi refresh\``);
    if (lease.state !== "ended" && passed(lease.endTime)) lease = await endLease(ctx, lease, "expired");
    else if (lease.state === "pending" && passed(lease.startTime)) lease = await activateLease(ctx, lease);
    return { ...oldState, ...news, ...outputsOf(lease) };
  },

  async delete(ctx, id) {
    const lease = await leaseOf(ctx, id);
    if (!lease || lease.state === "ended") return;
    const ended = await endLease(ctx, lease, passed(lease.endTime) ? "expired" : "deleted");
    ctx.progress(`lease ${id} ${ended.state}`);
  },
};
