/**
 * Fault injection and the request log of a lab BMC.
 *
 * A fault rule matches the next `count` requests with a method and a path and changes how the
 * BMC answers them. The rules are evaluated in the order they were added; the first rule that
 * matches (and applies to the request) is used and its count goes down by one.
 *
 * The same rules can be added over HTTP (lab-only admin endpoint, see bmc.ts): `POST /lab/faults`
 * with a JSON body `{ "method": "POST", "path": "/redfish/v1/Systems/*", "count": 2,
 * "kind": "unavailable", "retryAfterSeconds": 30 }` (`pathRegex` instead of `path` for a regular
 * expression).
 */

export type FaultAction =
  /** 503 + Retry-After with Base.ServiceTemporarilyUnavailable ("retry in N seconds"). */
  | { kind: "unavailable"; retryAfterSeconds?: number }
  /** 409 with Base.ResourceInUse. */
  | { kind: "conflict" }
  /** Any status, with Base.GeneralError (or the given message name of the Base registry). */
  | { kind: "status"; status: number; message?: string; retryAfterSeconds?: number }
  /**
   * Drop the connection without an answer (the client sees a reset). With `afterApply` the BMC
   * first carries the request out (a power change happens) and only then drops the answer: the
   * client cannot know whether it happened, and must not replay a non-idempotent request.
   */
  | { kind: "reset"; afterApply?: boolean }
  /** Answer normally after this many ms (real time). */
  | { kind: "delay"; ms: number }
  /** A task started by a matching request runs this much longer (lab time). Applies only to POSTs. */
  | { kind: "slow-task"; extraSeconds: number }
  /** A matching session login is refused as if the session limit were reached. Applies only to logins. */
  | { kind: "session-limit" };

export type FaultKind = FaultAction["kind"];
export const FAULT_KINDS: readonly FaultKind[] = ["unavailable", "conflict", "status", "reset", "delay", "slow-task", "session-limit"];

export interface FaultRule {
  /** HTTP method (any when unset). */
  method?: string;
  /**
   * Path: exact (trailing slashes ignored), a prefix when it ends with `*`, or a RegExp. Any when
   * unset. Paths are compared without the query string.
   */
  path?: string | RegExp;
  /** How many matching requests get the fault (default 1; `Infinity` for all). */
  count?: number;
  action: FaultAction;
}

export interface ActiveFault {
  id: number;
  method?: string;
  path?: string;
  pathRegex?: string;
  remaining: number;
  hits: number;
  action: FaultAction;
}

interface StoredFault {
  id: number;
  method?: string;
  path?: string | RegExp;
  remaining: number;
  hits: number;
  action: FaultAction;
}

function normalizePath(p: string): string {
  const out = p.replace(/\/+$/, "");
  return out === "" ? "/" : out;
}

function pathMatches(want: string | RegExp | undefined, p: string): boolean {
  if (want === undefined) return true;
  if (want instanceof RegExp) return want.test(p);
  if (want.endsWith("*")) return p.startsWith(want.slice(0, -1));
  return normalizePath(want) === normalizePath(p);
}

export class FaultSet {
  private readonly rules: StoredFault[] = [];
  private nextId = 1;

  add(rule: FaultRule): number {
    validateAction(rule.action);
    const count = rule.count ?? 1;
    if (!(count > 0) || (!Number.isInteger(count) && count !== Infinity)) {
      throw new RangeError(`a fault's count must be a positive integer or Infinity, got ${rule.count}`);
    }
    const id = this.nextId++;
    this.rules.push({ id, method: rule.method?.toUpperCase(), path: rule.path, remaining: count, hits: 0, action: { ...rule.action } });
    return id;
  }

  remove(id: number): boolean {
    const i = this.rules.findIndex((r) => r.id === id);
    if (i < 0) return false;
    this.rules.splice(i, 1);
    return true;
  }

  clear(): void {
    this.rules.length = 0;
  }

  /** Rules with requests left, and the spent ones (remaining 0) for inspection. */
  list(): ActiveFault[] {
    return this.rules.map((r) => {
      const out: ActiveFault = { id: r.id, remaining: r.remaining, hits: r.hits, action: { ...r.action } };
      if (r.method) out.method = r.method;
      if (r.path instanceof RegExp) out.pathRegex = r.path.source;
      else if (r.path !== undefined) out.path = r.path;
      return out;
    });
  }

  /**
   * Takes the first rule that matches and applies to this request (counting it), or undefined.
   * `applies` decides whether a kind is relevant to the request (e.g. session-limit only for logins).
   */
  take(method: string, path: string, applies: (kind: FaultKind) => boolean): FaultAction | undefined {
    for (const r of this.rules) {
      if (r.remaining <= 0) continue;
      if (r.method && r.method !== method.toUpperCase()) continue;
      if (!pathMatches(r.path, path)) continue;
      if (!applies(r.action.kind)) continue;
      r.remaining--;
      r.hits++;
      return r.action;
    }
    return undefined;
  }
}

function validateAction(a: FaultAction): void {
  if (!a || typeof a !== "object" || !FAULT_KINDS.includes(a.kind)) {
    throw new TypeError(`a fault needs an action with a kind among ${FAULT_KINDS.join(", ")}`);
  }
  if (a.kind === "status" && !(Number.isInteger(a.status) && a.status >= 100 && a.status <= 599)) {
    throw new RangeError(`a status fault needs an HTTP status between 100 and 599, got ${a.status}`);
  }
  if (a.kind === "delay" && !(a.ms >= 0 && Number.isFinite(a.ms))) throw new RangeError(`a delay fault needs ms >= 0, got ${a.ms}`);
  if (a.kind === "slow-task" && !(a.extraSeconds >= 0 && Number.isFinite(a.extraSeconds))) {
    throw new RangeError(`a slow-task fault needs extraSeconds >= 0, got ${a.extraSeconds}`);
  }
  if ((a.kind === "unavailable" || a.kind === "status") && a.retryAfterSeconds !== undefined && !(a.retryAfterSeconds >= 0)) {
    throw new RangeError(`retryAfterSeconds must be >= 0, got ${a.retryAfterSeconds}`);
  }
}

/** Reads a fault rule from the JSON of `POST /lab/faults`. Throws a TypeError/RangeError naming what is wrong. */
export function faultRuleFromJson(v: unknown): FaultRule {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new TypeError("a fault rule must be a JSON object");
  const o = v as Record<string, unknown>;
  const known = new Set(["method", "path", "pathRegex", "count", "kind", "retryAfterSeconds", "status", "message", "ms", "extraSeconds", "afterApply"]);
  for (const k of Object.keys(o)) if (!known.has(k)) throw new TypeError(`unknown fault property "${k}"; known: ${[...known].join(", ")}`);
  if (o.method !== undefined && typeof o.method !== "string") throw new TypeError("method must be a string");
  if (o.path !== undefined && typeof o.path !== "string") throw new TypeError("path must be a string");
  if (o.pathRegex !== undefined && typeof o.pathRegex !== "string") throw new TypeError("pathRegex must be a string");
  if (o.path !== undefined && o.pathRegex !== undefined) throw new TypeError("give path or pathRegex, not both");
  if (o.count !== undefined && o.count !== "Infinity" && typeof o.count !== "number") throw new TypeError('count must be a number or "Infinity"');
  const num = (k: string): number | undefined => {
    if (o[k] === undefined) return undefined;
    if (typeof o[k] !== "number") throw new TypeError(`${k} must be a number`);
    return o[k] as number;
  };
  let action: FaultAction;
  switch (o.kind) {
    case "unavailable":
      action = { kind: "unavailable", retryAfterSeconds: num("retryAfterSeconds") };
      break;
    case "conflict":
      action = { kind: "conflict" };
      break;
    case "status": {
      const status = num("status");
      if (status === undefined) throw new TypeError("a status fault needs status");
      if (o.message !== undefined && typeof o.message !== "string") throw new TypeError("message must be a string");
      action = { kind: "status", status, message: o.message as string | undefined, retryAfterSeconds: num("retryAfterSeconds") };
      break;
    }
    case "reset":
      if (o.afterApply !== undefined && typeof o.afterApply !== "boolean") throw new TypeError("afterApply must be a boolean");
      action = { kind: "reset", afterApply: o.afterApply === true };
      break;
    case "delay":
      action = { kind: "delay", ms: num("ms") ?? 0 };
      break;
    case "slow-task":
      action = { kind: "slow-task", extraSeconds: num("extraSeconds") ?? 0 };
      break;
    case "session-limit":
      action = { kind: "session-limit" };
      break;
    default:
      throw new TypeError(`kind must be one of ${FAULT_KINDS.join(", ")}`);
  }
  validateAction(action);
  const rule: FaultRule = { action };
  if (o.method) rule.method = o.method as string;
  if (o.path !== undefined) rule.path = o.path as string;
  if (o.pathRegex !== undefined) rule.path = new RegExp(o.pathRegex as string);
  if (o.count !== undefined) rule.count = o.count === "Infinity" ? Infinity : (o.count as number);
  return rule;
}

// ---------------------------------------------------------------------------------------------
// Request log and counters

export interface LabRequest {
  seq: number;
  /** Lab time (ms since the epoch). */
  at: number;
  method: string;
  path: string;
  /** HTTP status; 0 when the connection was dropped. */
  status: number;
  auth: "session" | "basic" | "none" | "bad";
  user?: string;
  ifMatch?: string;
  /** The fault kind applied, if any. */
  fault?: FaultKind;
  /** The JSON body of PATCH/POST requests, with every `Password` replaced by "***". */
  body?: unknown;
}

export type SideEffectKind =
  | "power-on"
  | "power-off"
  | "power-restart"
  | "nmi"
  | "boot-override"
  | "system-update"
  | "media-insert"
  | "media-eject"
  | "account-create"
  | "account-update"
  | "account-delete"
  | "session-create"
  | "session-delete"
  | "session-expire"
  | "service-update"
  | "manager-reset"
  /** A power-on ended: detail.running says what the machine runs (see bmc.ts "Boot"). */
  | "booted"
  /** The machine booted a deploy image from its virtual CD: the installer runs. */
  | "installer-started"
  /** The emulated disk got an image (detail.via: "installer" or "lab"). */
  | "disk-written"
  /** An install ended without writing the disk (detail.error). */
  | "install-failed"
  /** The machine booted a backup image: OUR EMULATOR's backup agent runs (backup-agent.ts). */
  | "backup-started"
  /** The backup agent wrote its backup (detail: backupId, prefix, bytesRead, bytesStored, ...) and powered off. */
  | "backup-written"
  /** The backup agent failed (detail.error; no manifest) and powered off. */
  | "backup-failed"
  /** A network device function's BootMode / iSCSIBoot changed (detail without secrets). */
  | "iscsi-boot-config"
  /** Our emulator's firmware logged in (or failed to) to the iSCSI target it boots from (detail.state, detail.error). */
  | "iscsi-login"
  /** The emulated disk was erased (detail.via: "Drive.SecureErase" or "lab"). */
  | "disk-erased";

/** A change the BMC actually applied (a refused or no-op request makes none). */
export interface SideEffect {
  seq: number;
  at: number;
  kind: SideEffectKind;
  /** The resource changed (system, virtual media, account, session URI). */
  target: string;
  /** What changed, e.g. { resetType: "On", from: "Off", to: "PoweringOn" }. */
  detail?: Record<string, unknown>;
}

export interface LabStats {
  requests: Record<string, number>;
  statuses: Record<string, number>;
  faults: Record<string, number>;
  sideEffects: Partial<Record<SideEffectKind, number>>;
}

export function redactPasswords(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(redactPasswords);
  if (typeof v !== "object" || v === null) return v;
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v)) out[k] = /password|secret/i.test(k) && val !== null ? "***" : redactPasswords(val);
  return out;
}
