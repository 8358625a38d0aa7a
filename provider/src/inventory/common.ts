/**
 * What both SQL backends share: argument validation and normalisation, the matching rule of a
 * claim, the choice among matching nodes, the explanation of a claim that matched nothing, and the
 * translation of driver errors into `BaremetalError`s.
 *
 * Keeping these in one place is what makes the backends agree: the SQLite backend matches in
 * JavaScript with `matchesClaim`/`rankNodes` (it holds the database's write lock anyway), the
 * PostgreSQL backend expresses the same rule in one SQL statement (so that the row locks do the
 * arbitration), and the shared conformance suite checks that both pick the same node.
 */
import { createHash } from "crypto";
import { BaremetalError } from "../core/errors";
import {
  ApiTokenRecord,
  AuditRecord,
  AVAILABLE,
  ClaimRequest,
  ENROLL,
  LEASE_STATES,
  LeaseFilter,
  LeaseInput,
  LeaseRecord,
  LeaseState,
  LockHandle,
  NodeFilter,
  NodeInput,
  NodeRecord,
  ServiceResourceChange,
  ServiceResourceRecord,
} from "./types";

const MAX_ID = 1024; // Redfish system URIs with a BMC address in front
const MAX_TEXT = 255;
const MAX_TRAITS = 128;
const MAX_CANDIDATES = 10000;
/** Longest lease: a lock is for one operation; a day covers the slowest firmware update. */
export const MAX_LEASE_SECONDS = 86400;

function bad(property: string, message: string): BaremetalError {
  return new BaremetalError("validation", message, { property });
}

export function requireText(property: string, v: unknown, max = MAX_TEXT): string {
  if (typeof v !== "string" || v.length === 0) throw bad(property, `${property} must be a non-empty string`);
  if (v.length > max) throw bad(property, `${property} must be at most ${max} characters long`);
  // PostgreSQL text cannot hold NUL; refuse it on both backends so that they agree.
  if (v.includes("\u0000")) throw bad(property, `${property} must not contain NUL characters`);
  return v;
}

/** Optional text: undefined, null and "" all mean "unset" (Pulumi sends "" for cleared strings). */
export function optionalText(property: string, v: unknown, max = MAX_TEXT): string | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  return requireText(property, v, max);
}

export function requireId(property: string, v: unknown): string {
  return requireText(property, v, MAX_ID);
}

/** Traits: strings, sorted and deduplicated (so that equal sets compare equal everywhere). */
export function normaliseTraits(property: string, v: unknown): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw bad(property, `${property} must be a list of strings`);
  if (v.length > MAX_TRAITS) throw bad(property, `${property} may hold at most ${MAX_TRAITS} traits`);
  const out = new Set<string>();
  v.forEach((t, i) => out.add(requireText(`${property}[${i}]`, t)));
  return [...out].sort(byteOrder);
}

export function normaliseCandidates(property: string, v: unknown): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw bad(property, `${property} must be a list of node ids`);
  if (v.length > MAX_CANDIDATES) throw bad(property, `${property} may hold at most ${MAX_CANDIDATES} node ids`);
  const out = new Set<string>();
  v.forEach((t, i) => out.add(requireId(`${property}[${i}]`, t)));
  return [...out].sort(byteOrder);
}

/** Provision states are Ironic-style words ("available", "deploy failed", "clean wait"). */
export function requireState(property: string, v: unknown): string {
  const s = requireText(property, v, 64);
  if (!/^[a-z][a-z0-9 _-]*$/.test(s)) {
    throw bad(property, `${property} must be a lower-case provision state such as "available" or "deploy failed", got ${JSON.stringify(s)}`);
  }
  return s;
}

export function optionalVersion(property: string, v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    throw bad(property, `${property} must be a whole number >= 0 (0: the node must not exist yet)`);
  }
  return v;
}

export function requireLease(property: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || v > MAX_LEASE_SECONDS) {
    throw bad(property, `${property} must be a number of seconds above 0 and at most ${MAX_LEASE_SECONDS}`);
  }
  return v;
}

/** JSON with object keys sorted at every level: equal values give equal text on both backends. */
export function canonicalJson(v: unknown): string {
  return JSON.stringify(sortKeys(v));
}

export function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(o).sort(byteOrder)) if (o[k] !== undefined) out[k] = sortKeys(o[k]);
    return out;
  }
  return v;
}

export function normaliseProperties(property: string, v: unknown): Record<string, unknown> {
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v)) throw bad(property, `${property} must be an object`);
  let text: string;
  try {
    text = canonicalJson(v);
  } catch (err) {
    throw bad(property, `${property} must be plain JSON: ${(err as Error).message}`);
  }
  if (text.includes("\\u0000")) throw bad(property, `${property} must not contain NUL characters`);
  if (text.length > 1_000_000) throw bad(property, `${property} must be under 1 MB as JSON`);
  return JSON.parse(text) as Record<string, unknown>;
}

/** A validated, normalised `NodeInput`. */
export interface NodeValues {
  id: string;
  name: string;
  owner?: string;
  lessee?: string;
  resourceClass?: string;
  traits: string[];
  properties: Record<string, unknown>;
  provisionState?: string;
  maintenance?: boolean;
  maintenanceReason?: string;
}

export function normaliseNode(n: NodeInput): NodeValues {
  if (n === null || typeof n !== "object") throw bad("node", "node must be an object");
  if (n.maintenance !== undefined && typeof n.maintenance !== "boolean") throw bad("maintenance", "maintenance must be a boolean");
  return {
    id: requireId("id", n.id),
    name: requireText("name", n.name),
    owner: optionalText("owner", n.owner),
    lessee: optionalText("lessee", n.lessee),
    resourceClass: optionalText("resourceClass", n.resourceClass),
    traits: normaliseTraits("traits", n.traits),
    properties: normaliseProperties("properties", n.properties),
    provisionState: n.provisionState === undefined ? undefined : requireState("provisionState", n.provisionState),
    maintenance: n.maintenance,
    maintenanceReason: optionalText("maintenanceReason", n.maintenanceReason, 4096),
  };
}

export interface ClaimValues {
  allocationId: string;
  name: string;
  owner?: string;
  project?: string;
  resourceClass?: string;
  traits: string[];
  candidates?: string[];
}

export function normaliseClaim(r: ClaimRequest): ClaimValues {
  if (r === null || typeof r !== "object") throw bad("request", "the claim request must be an object");
  const project = optionalText("project", r.project);
  return {
    allocationId: requireId("allocationId", r.allocationId),
    name: requireText("name", r.name),
    owner: optionalText("owner", r.owner) ?? project,
    project,
    resourceClass: optionalText("resourceClass", r.resourceClass),
    traits: normaliseTraits("traits", r.traits),
    candidates: normaliseCandidates("candidates", r.candidates),
  };
}

export function normaliseFilter(f: NodeFilter | undefined): NodeFilter {
  if (f === undefined || f === null) return {};
  return {
    owner: optionalText("owner", f.owner),
    lessee: optionalText("lessee", f.lessee),
    visibleTo: optionalText("visibleTo", f.visibleTo),
    provisionState: f.provisionState === undefined ? undefined : requireState("provisionState", f.provisionState),
    resourceClass: optionalText("resourceClass", f.resourceClass),
    ...(f.after !== undefined ? { after: { name: requireText("after.name", f.after?.name), id: requireText("after.id", f.after?.id) } } : {}),
    ...(f.limit !== undefined ? { limit: positiveLimit(f.limit) } : {}),
  };
}

function positiveLimit(v: unknown): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) throw bad("limit", `${JSON.stringify(v)} is not a page size: give a whole number of at least 1`);
  return v;
}

/** Plain byte-wise (code unit) order, the same as SQLite's BINARY and PostgreSQL's "C" collation for ASCII. */
export function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The restrictions of a claim, without availability. */
export function matchesRestrictions(n: NodeRecord, c: ClaimValues): boolean {
  if (c.candidates && !c.candidates.includes(n.id)) return false;
  if (c.project !== undefined && n.owner !== c.project && n.lessee !== c.project) return false;
  if (c.resourceClass !== undefined && n.resourceClass !== c.resourceClass) return false;
  return c.traits.every((t) => n.traits.includes(t));
}

export function isClaimable(n: NodeRecord): boolean {
  return n.provisionState === AVAILABLE && !n.maintenance && n.allocationId === undefined;
}

export function matchesClaim(n: NodeRecord, c: ClaimValues): boolean {
  return isClaimable(n) && matchesRestrictions(n, c);
}

/**
 * The rendezvous ("highest random weight") key of a node for an allocation name. The node with the
 * lowest key wins; ties (never seen in practice) fall back to the node's name, then its id.
 * PostgreSQL computes the same value as `md5(name || '/' || id)`.
 */
export function rendezvousKey(allocationName: string, nodeId: string): string {
  return createHash("md5").update(`${allocationName}/${nodeId}`, "utf8").digest("hex");
}

/** Nodes in the order a claim named `allocationName` would try them. */
export function rankNodes<T extends { id: string; name: string }>(allocationName: string, nodes: T[]): T[] {
  return nodes
    .map((n) => ({ n, k: rendezvousKey(allocationName, n.id) }))
    .sort((a, b) => byteOrder(a.k, b.k) || byteOrder(a.n.name, b.n.name) || byteOrder(a.n.id, b.n.id))
    .map((x) => x.n);
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * The `conflict` of a claim that found no node: a funnel over the whole inventory (each
 * restriction in turn, then availability), so that the user sees which restriction emptied the
 * pool, or that matching nodes exist but are all claimed, in maintenance or not `available`.
 * Computed from a read after the failed claim, so under heavy concurrency the figures may be a
 * moment newer than the claim's view.
 */
export function noMatchError(c: ClaimValues, all: NodeRecord[], inventoryKind: string): BaremetalError {
  const details: string[] = [];
  let pool = all;
  details.push(`${plural(all.length, "node")} enrolled in the inventory`);
  const step = (label: string, keep: (n: NodeRecord) => boolean): void => {
    pool = pool.filter(keep);
    details.push(`${pool.length} of them ${label}`);
  };
  if (c.candidates) {
    const known = new Set(all.map((n) => n.id));
    const unknown = c.candidates.filter((id) => !known.has(id));
    step(`among the ${plural(c.candidates.length, "candidate")}`, (n) => c.candidates!.includes(n.id));
    if (unknown.length) details.push(`candidates not enrolled: ${unknown.slice(0, 10).join(", ")}${unknown.length > 10 ? ", ..." : ""}`);
  }
  if (c.project !== undefined) step(`owned by or leased to project "${c.project}"`, (n) => n.owner === c.project || n.lessee === c.project);
  if (c.resourceClass !== undefined) step(`of resource class "${c.resourceClass}"`, (n) => n.resourceClass === c.resourceClass);
  if (c.traits.length) step(`with every trait of [${c.traits.join(", ")}]`, (n) => c.traits.every((t) => n.traits.includes(t)));

  let reason: string;
  if (all.length === 0) {
    reason = "no node is enrolled";
  } else if (pool.length === 0) {
    reason = `none of the ${plural(all.length, "enrolled node")} passes the restrictions (${details.slice(1).join("; ")})`;
  } else {
    const claimed = pool.filter((n) => n.allocationId !== undefined);
    const maintenance = pool.filter((n) => n.allocationId === undefined && n.maintenance);
    const states = new Map<string, number>();
    for (const n of pool) {
      if (n.allocationId === undefined && !n.maintenance && n.provisionState !== AVAILABLE) {
        states.set(n.provisionState, (states.get(n.provisionState) ?? 0) + 1);
      }
    }
    const parts: string[] = [];
    if (claimed.length) parts.push(`${claimed.length} already claimed`);
    if (maintenance.length) parts.push(`${maintenance.length} in maintenance`);
    for (const [s, k] of [...states].sort((a, b) => byteOrder(a[0], b[0]))) parts.push(`${k} in provision state "${s}"`);
    const free = pool.filter(isClaimable).length;
    reason =
      free > 0
        ? `${plural(pool.length, "node matches", "nodes match")} but ${pool.length === 1 ? "it was" : "they were"} claimed concurrently; try again`
        : `${plural(pool.length, "node matches", "nodes match")} the restrictions but none is free: ${parts.join(", ")}`;
    details.push(...parts.map((p) => `of those, ${p}`));
  }
  const restrictions: string[] = [];
  if (c.project !== undefined) restrictions.push(`project "${c.project}"`);
  if (c.resourceClass !== undefined) restrictions.push(`resource class "${c.resourceClass}"`);
  if (c.traits.length) restrictions.push(`traits [${c.traits.join(", ")}]`);
  if (c.candidates) restrictions.push(plural(c.candidates.length, "candidate"));
  return new BaremetalError(
    "conflict",
    `no available node matches allocation "${c.name}"` +
      (restrictions.length ? ` (${restrictions.join(", ")})` : "") +
      `: ${reason} [${inventoryKind} inventory]`,
    { details, messageId: NO_MATCH },
  );
}

/** `messageId` of the claim that found no node, for callers that must tell it from other conflicts. */
export const NO_MATCH = "inventory.NoAvailableNode";

/** A `conflict` for a write against a stale version. */
export function versionConflict(what: string, expected: number, actual: number): BaremetalError {
  return new BaremetalError(
    "conflict",
    expected === 0
      ? `${what} already exists (version ${actual}); it was expected not to exist yet`
      : `${what} changed concurrently: expected version ${expected}, found ${actual}; read it again and retry`,
    { messageId: "inventory.VersionConflict" },
  );
}

export function nodeNotFound(id: string): BaremetalError {
  return new BaremetalError("not-found", `node ${JSON.stringify(id)} is not enrolled in the inventory`);
}

/** A `conflict` for removing a node that an active allocation holds. */
export function nodeClaimed(id: string, allocationId: string): BaremetalError {
  return new BaremetalError(
    "conflict",
    `node ${JSON.stringify(id)} is claimed by allocation ${JSON.stringify(allocationId)}; release that allocation before removing the node`,
    { messageId: "inventory.NodeClaimed" },
  );
}

export function closedError(kind: string): BaremetalError {
  return new BaremetalError("internal", `the ${kind} inventory is closed`);
}

export function lockHeld(nodeId: string, holder: string, operation: string, expiresAt: string): BaremetalError {
  return new BaremetalError(
    "conflict",
    `node ${JSON.stringify(nodeId)} is locked by ${JSON.stringify(holder)} for ${JSON.stringify(operation)} until ${expiresAt}; ` +
      "wait for that operation to finish (a crashed run's lock runs out at that time)",
    { messageId: "inventory.NodeLocked" },
  );
}

/** Hides the password of a database URL, for messages. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:]*):[^/@]*@/i, "$1:***@");
}

export function nowIso(): string {
  return new Date().toISOString();
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Checks the arguments of `acquireLock`; returns the lease in seconds. */
export function requireLockRequest(nodeId: string, holder: string, operation: string, leaseSeconds: number): number {
  requireId("nodeId", nodeId);
  requireText("holder", holder, 1024);
  requireText("operation", operation);
  return requireLease("leaseSeconds", leaseSeconds);
}

/**
 * The handle of an acquired lock, around the backend's statements: `renew` writes a lease of the
 * given seconds (the acquire's when the caller gives none) and returns the new expiry, or throws
 * (`lostLock`); `release` frees the lock if this acquisition still holds it.
 */
export function lockHandle(
  nodeId: string,
  holder: string,
  operation: string,
  lease: number,
  expiresAt: string,
  renew: (leaseSeconds: number) => Promise<string>,
  release: () => Promise<void>,
): LockHandle {
  let current = expiresAt;
  return {
    nodeId,
    holder,
    operation,
    get expiresAt() {
      return current;
    },
    async renew(seconds?: number): Promise<void> {
      current = await renew(seconds === undefined ? lease : requireLease("leaseSeconds", seconds));
    },
    release,
  };
}

/** A lock row as both backends read it back (times as ISO text). */
export interface LockRow {
  holder: string;
  operation: string;
  token: string;
  expires_at: string;
}

/** The `conflict` of a renew that came too late: expired, released, or taken over by another holder. */
export function lostLock(nodeId: string, operation: string, cur: LockRow | undefined, token: string, now: string): BaremetalError {
  const why =
    !cur || cur.token !== token
      ? cur
        ? `it was taken over by ${JSON.stringify(cur.holder)} for ${JSON.stringify(cur.operation)}`
        : "it was released or taken over and freed since"
      : `its lease ran out at ${cur.expires_at} (now ${now})`;
  return new BaremetalError(
    "conflict",
    `the lock of node ${JSON.stringify(nodeId)} for ${JSON.stringify(operation)} is lost: ${why}; stop the operation (renew the lease well before it runs out)`,
    { messageId: "inventory.LockLost" },
  );
}

/** The declared and operational columns of a node row, as written (JSON as canonical text). */
export interface NodeColumns {
  name: string;
  owner: string | null;
  lessee: string | null;
  resource_class: string | null;
  traits: string;
  properties: string;
  provision_state: string;
  maintenance: boolean;
  maintenance_reason: string | null;
}

/**
 * The columns `upsertNode` writes, the same on both backends: the declared fields replace the
 * row's; provision state and maintenance change only when given (new nodes: `enroll`, not in
 * maintenance); a maintenance reason is kept only while in maintenance.
 */
export function nodeColumns(cur: NodeRecord | undefined, v: NodeValues): NodeColumns {
  const maintenance = v.maintenance ?? cur?.maintenance ?? false;
  return {
    name: v.name,
    owner: v.owner ?? null,
    lessee: v.lessee ?? null,
    resource_class: v.resourceClass ?? null,
    traits: JSON.stringify(v.traits),
    properties: canonicalJson(v.properties),
    provision_state: v.provisionState ?? cur?.provisionState ?? ENROLL,
    maintenance,
    maintenance_reason:
      v.maintenance === undefined ? (cur?.maintenanceReason ?? null) : v.maintenance ? (v.maintenanceReason ?? null) : null,
  };
}

/** A node's current columns, to tell a no-op upsert (which keeps the row and its version). */
export function currentColumns(cur: NodeRecord): NodeColumns {
  return {
    name: cur.name,
    owner: cur.owner ?? null,
    lessee: cur.lessee ?? null,
    resource_class: cur.resourceClass ?? null,
    traits: JSON.stringify(cur.traits),
    properties: canonicalJson(cur.properties),
    provision_state: cur.provisionState,
    maintenance: cur.maintenance,
    maintenance_reason: cur.maintenanceReason ?? null,
  };
}

export function sameColumns(a: NodeColumns, b: NodeColumns): boolean {
  return (Object.keys(a) as (keyof NodeColumns)[]).every((k) => a[k] === b[k]);
}

export const NODE_COLUMNS: readonly (keyof NodeColumns)[] = [
  "name", "owner", "lessee", "resource_class", "traits", "properties", "provision_state", "maintenance", "maintenance_reason",
];

/** The record without its undefined fields (unset optional fields are absent, as in JSON). */
export function compact<T extends object>(o: T): T {
  for (const k of Object.keys(o) as (keyof T)[]) if (o[k] === undefined) delete o[k];
  return o;
}

/** A time column as ISO 8601 text: SQLite stores the text, PostgreSQL returns a Date. */
type TimeText = (v: unknown) => string;
const optionalTime = (v: unknown, time: TimeText) => (v === null || v === undefined ? undefined : time(v));
const optionalString = (v: unknown) => (v === null || v === undefined ? undefined : String(v));

/** An `api_tokens` row of either dialect (roles: JSON text in SQLite, jsonb in PostgreSQL). */
export function tokenFromRow(r: Record<string, unknown>, time: TimeText): ApiTokenRecord {
  return compact({
    id: String(r.id),
    name: String(r.name),
    projectId: optionalString(r.project_id),
    roles: (typeof r.roles === "string" ? JSON.parse(r.roles) : r.roles) as string[],
    createdAt: time(r.created_at),
    expiresAt: optionalTime(r.expires_at, time),
    revokedAt: optionalTime(r.revoked_at, time),
    secretHash: String(r.secret_hash),
    ratePerMinute: Number(r.rate_per_minute),
  });
}

/** An `audit_log` row of either dialect. */
export function auditFromRow(r: Record<string, unknown>, time: TimeText): AuditRecord {
  return compact({
    seq: Number(r.seq),
    at: time(r.at),
    requestId: String(r.request_id),
    tokenId: optionalString(r.token_id),
    projectId: optionalString(r.project_id),
    operation: String(r.operation),
    target: optionalString(r.target),
    outcome: String(r.outcome),
    detail: optionalString(r.detail),
  });
}

// ---- objects the service manages for tenants (broker mode, issue 8) ------------------------------

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

/** An ISO 8601 time with a zone, normalised to UTC with milliseconds (how both backends return it). */
export function requireTime(property: string, v: unknown): string {
  if (typeof v !== "string" || !ISO_TIME.test(v) || Number.isNaN(Date.parse(v))) {
    throw bad(property, `${property} must be an ISO 8601 time with a zone, such as 2026-11-23T00:00:00.000Z`);
  }
  return new Date(v).toISOString();
}

/** A lone UTF-16 surrogate: SQLite would keep it, PostgreSQL refuses it; refused on both. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function checkUnicode(property: string, v: unknown): void {
  if (typeof v === "string") {
    if (LONE_SURROGATE.test(v)) throw bad(property, `${property} must hold well-formed Unicode text (a lone surrogate was found)`);
  } else if (Array.isArray(v)) {
    v.forEach((x) => checkUnicode(property, x));
  } else if (v !== null && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) {
      checkUnicode(property, k);
      checkUnicode(property, x);
    }
  }
}

/** A plain JSON object (required), as stored: keys sorted, undefined members dropped. */
export function requireJsonObject(property: string, v: unknown): Record<string, unknown> {
  if (v === undefined || v === null || typeof v !== "object" || Array.isArray(v)) throw bad(property, `${property} must be a JSON object`);
  const out = normaliseProperties(property, v);
  checkUnicode(property, out);
  return out;
}

function requireBoolean(property: string, v: unknown): boolean {
  if (typeof v !== "boolean") throw bad(property, `${property} must be a boolean`);
  return v;
}

/** A validated, normalised service object (what `insertServiceResource` stores). */
export function normaliseServiceResource(r: ServiceResourceRecord): ServiceResourceRecord {
  if (r === null || typeof r !== "object") throw bad("record", "the service object must be an object");
  return compact({
    uuid: requireId("uuid", r.uuid),
    type: requireText("type", r.type),
    projectId: optionalText("projectId", r.projectId),
    name: optionalText("name", r.name),
    resourceId: requireId("resourceId", r.resourceId),
    inputs: requireJsonObject("inputs", r.inputs),
    state: requireJsonObject("state", r.state),
    etag: requireText("etag", r.etag),
    idempotencyKey: optionalText("idempotencyKey", r.idempotencyKey),
    partial: requireBoolean("partial", r.partial),
    createdAt: requireTime("createdAt", r.createdAt),
    updatedAt: requireTime("updatedAt", r.updatedAt),
  });
}

export function normaliseServiceChange(c: ServiceResourceChange): ServiceResourceChange {
  if (c === null || typeof c !== "object") throw bad("change", "the change must be an object");
  return {
    ...(c.resourceId !== undefined ? { resourceId: requireText("resourceId", c.resourceId) } : {}),
    inputs: requireJsonObject("inputs", c.inputs),
    state: requireJsonObject("state", c.state),
    etag: requireText("etag", c.etag),
    partial: requireBoolean("partial", c.partial),
    updatedAt: requireTime("updatedAt", c.updatedAt),
  };
}

/** The one selector of `findServiceResource`; `projectId` ("" or undefined: the operator) goes with a name only. */
export type ServiceSelector =
  | { by: "resourceId"; value: string }
  | { by: "name"; value: string; projectId?: string }
  | { by: "idempotencyKey"; value: string };

export function normaliseServiceSelector(by: { resourceId?: string; name?: string; projectId?: string; idempotencyKey?: string }): ServiceSelector {
  if (by === null || typeof by !== "object") throw bad("by", "the selector must be an object");
  const given = (["resourceId", "name", "idempotencyKey"] as const).filter((k) => by[k] !== undefined && by[k] !== null);
  if (given.length !== 1) {
    throw bad("by", `give exactly one of resourceId, name (with projectId) or idempotencyKey, got ${given.length ? given.join(", ") : "none"}`);
  }
  if (given[0] !== "name" && by.projectId !== undefined && by.projectId !== null) {
    throw bad("projectId", "projectId goes with a name only (resourceId and idempotencyKey are unique across projects)");
  }
  switch (given[0]) {
    case "resourceId":
      return { by: "resourceId", value: requireId("resourceId", by.resourceId) };
    case "name":
      return { by: "name", value: requireText("name", by.name), projectId: optionalText("projectId", by.projectId) };
    default:
      return { by: "idempotencyKey", value: requireText("idempotencyKey", by.idempotencyKey) };
  }
}

export interface ServiceListValues {
  type?: string;
  /** null: the operator's objects; undefined: any project. */
  projectId?: string | null;
  afterUuid?: string;
  limit: number;
}

export function normaliseServiceListFilter(f: { type?: string; projectId?: string | null; afterUuid?: string; limit?: number } | undefined): ServiceListValues {
  const filter = f ?? {};
  // An empty project id is refused rather than read as "any project": a tenant's filter must never widen.
  const projectId = filter.projectId === null ? null : filter.projectId === undefined ? undefined : requireText("projectId", filter.projectId);
  const limit = filter.limit ?? 100;
  if (typeof limit !== "number" || !Number.isSafeInteger(limit) || limit < 1) throw bad("limit", "limit must be a whole number >= 1");
  return {
    type: filter.type === undefined ? undefined : requireText("type", filter.type),
    projectId,
    afterUuid: filter.afterUuid === undefined ? undefined : requireId("afterUuid", filter.afterUuid),
    limit,
  };
}

/** A `service_resources` row of either dialect (JSON: text in SQLite, jsonb in PostgreSQL). */
export function serviceResourceFromRow(r: Record<string, unknown>, time: TimeText): ServiceResourceRecord {
  const json = (v: unknown) => (typeof v === "string" ? JSON.parse(v) : v) as Record<string, unknown>;
  return compact({
    uuid: String(r.uuid),
    type: String(r.type),
    projectId: optionalString(r.project_id),
    name: optionalString(r.name),
    resourceId: String(r.resource_id),
    inputs: json(r.inputs),
    state: json(r.state),
    etag: String(r.etag),
    idempotencyKey: optionalString(r.idempotency_key),
    partial: r.partial === true || Number(r.partial) === 1,
    createdAt: time(r.created_at),
    updatedAt: time(r.updated_at),
  });
}

/** `messageId` of an insert refused because the object, or one with the same name, resource id or idempotency key, exists. */
export const SERVICE_RESOURCE_EXISTS = "inventory.ServiceResourceExists";

/**
 * The `conflict` of an insert that a unique constraint refused, naming every stored object it
 * clashes with (`clashes`: read after the refusal). The idempotency key itself is not repeated.
 */
export function serviceResourceExists(v: ServiceResourceRecord, clashes: ServiceResourceRecord[]): BaremetalError {
  const reasons: string[] = [];
  const scope = (p: string | undefined) => (p === undefined ? "of the operator" : `in project ${JSON.stringify(p)}`);
  for (const c of clashes) {
    if (c.uuid === v.uuid) reasons.push(`uuid ${c.uuid} exists (${c.type})`);
    if (c.type === v.type && c.resourceId === v.resourceId) reasons.push(`${c.type} ${c.uuid} has resourceId ${JSON.stringify(c.resourceId)}`);
    if (v.name !== undefined && c.type === v.type && c.name === v.name && (c.projectId ?? "") === (v.projectId ?? "")) {
      reasons.push(`${c.type} ${c.uuid} is named ${JSON.stringify(c.name)} ${scope(c.projectId)}`);
    }
    if (v.idempotencyKey !== undefined && c.idempotencyKey === v.idempotencyKey) reasons.push(`${c.type} ${c.uuid} was created with the same idempotency key`);
  }
  if (!reasons.length) reasons.push("it clashed with an object that was deleted since; try again");
  return new BaremetalError("conflict", `${v.type} ${v.uuid} cannot be stored: ${reasons.join("; ")}`, { messageId: SERVICE_RESOURCE_EXISTS });
}

export function serviceResourceNotFound(uuid: string): BaremetalError {
  return new BaremetalError("not-found", `service object ${JSON.stringify(uuid)} does not exist`);
}

/** A `conflict` for a write against a stale etag: the same kind (and messageId) as `versionConflict`. */
export function etagConflict(uuid: string, expected: string, actual: string): BaremetalError {
  return new BaremetalError(
    "conflict",
    `service object ${JSON.stringify(uuid)} changed concurrently: expected etag ${JSON.stringify(expected)}, found ${JSON.stringify(actual)}; read it again and retry`,
    { messageId: "inventory.VersionConflict" },
  );
}

// ---- leases of nodes (issue 8) --------------------------------------------------------------------

/** `messageId` of a lease refused because its window overlaps another lease of the node (or its id exists). */
export const LEASE_OVERLAP = "inventory.LeaseOverlap";

function requireLeaseState(property: string, v: unknown): LeaseState {
  if (typeof v !== "string" || !(LEASE_STATES as readonly string[]).includes(v)) throw bad(property, `${property} must be one of ${LEASE_STATES.join(", ")}`);
  return v as LeaseState;
}

/** A validated lease to insert (times in UTC with milliseconds, so that text order is time order). */
export function normaliseLease(l: LeaseInput): Required<Pick<LeaseRecord, "id" | "nodeId" | "lessee" | "startTime" | "endTime" | "state" | "createdAt">> & { owner?: string } {
  if (l === null || typeof l !== "object") throw bad("lease", "the lease must be an object");
  const state = l.state === undefined ? "pending" : requireLeaseState("state", l.state);
  if (state !== "pending" && state !== "active") throw bad("state", "a new lease is pending or active");
  const startTime = requireTime("startTime", l.startTime);
  const endTime = requireTime("endTime", l.endTime);
  if (Date.parse(endTime) <= Date.parse(startTime)) throw bad("endTime", `endTime (${endTime}) must be after startTime (${startTime})`);
  return compact({
    id: requireId("id", l.id),
    nodeId: requireId("nodeId", l.nodeId),
    owner: optionalText("owner", l.owner),
    lessee: requireText("lessee", l.lessee),
    startTime,
    endTime,
    state,
    createdAt: l.createdAt === undefined ? new Date().toISOString() : requireTime("createdAt", l.createdAt),
  });
}

export interface LeaseFilterValues {
  nodeId?: string;
  states?: LeaseState[];
  lessee?: string;
  owner?: string;
  dueAt?: string;
}

export function normaliseLeaseFilter(f: LeaseFilter | undefined): LeaseFilterValues {
  const filter = f ?? {};
  const states = filter.state === undefined ? undefined : (Array.isArray(filter.state) ? filter.state : [filter.state]).map((s) => requireLeaseState("state", s));
  if (states && !states.length) throw bad("state", "give at least one state");
  return compact({
    nodeId: filter.nodeId === undefined ? undefined : requireId("nodeId", filter.nodeId),
    states,
    lessee: filter.lessee === undefined ? undefined : requireText("lessee", filter.lessee),
    owner: filter.owner === undefined ? undefined : requireText("owner", filter.owner),
    dueAt: filter.dueAt === undefined ? undefined : requireTime("dueAt", filter.dueAt),
  });
}

export function normaliseLeaseChange(from: readonly LeaseState[], to: LeaseState, detail: { endedAt?: string; endReason?: string } | undefined) {
  if (!Array.isArray(from) || !from.length) throw bad("from", "give the states the lease may change from");
  return {
    from: from.map((s) => requireLeaseState("from", s)),
    to: requireLeaseState("to", to),
    endedAt: detail?.endedAt === undefined ? undefined : requireTime("endedAt", detail.endedAt),
    endReason: optionalText("endReason", detail?.endReason),
  };
}

/** A `leases` row of either dialect. */
export function leaseFromRow(r: Record<string, unknown>, time: TimeText): LeaseRecord {
  return compact({
    id: String(r.id),
    nodeId: String(r.node_id),
    owner: optionalString(r.owner),
    lessee: String(r.lessee),
    startTime: time(r.start_time),
    endTime: time(r.end_time),
    state: String(r.state) as LeaseState,
    createdAt: time(r.created_at),
    endedAt: optionalTime(r.ended_at, time),
    endReason: optionalString(r.end_reason),
  });
}

/** The `conflict` of a lease whose window overlaps `other` (a lease of the same node that has not ended). */
export function leaseOverlap(v: { id: string; nodeId: string; startTime: string; endTime: string }, other: LeaseRecord): BaremetalError {
  return new BaremetalError(
    "conflict",
    `node ${v.nodeId} cannot be leased from ${v.startTime} to ${v.endTime}: lease ${other.id} (to project ${other.lessee}, ${other.state}) holds it from ${other.startTime} to ${other.endTime}; choose a window after its end, or end it first`,
    { messageId: LEASE_OVERLAP, property: "startTime" },
  );
}

export function leaseExists(id: string): BaremetalError {
  return new BaremetalError("conflict", `lease ${id} exists`, { messageId: LEASE_OVERLAP, property: "id" });
}

export function leaseNotFound(id: string): BaremetalError {
  return new BaremetalError("not-found", `lease ${JSON.stringify(id)} does not exist`);
}
