/**
 * Our Redfish client: a small typed layer over axios for one BMC.
 *
 * - One dedicated http/https Agent per client (keep-alive; TLS trust from `verifyTls`/`caBundle`),
 *   no global axios defaults, no environment proxies, no redirects followed.
 * - Authentication: a Redfish session created lazily on the first request ("auto"/"session"), or
 *   HTTP Basic ("basic", or "auto" when the BMC has no usable SessionService).
 * - At most `maxConcurrency` requests in flight; a per-request deadline; an AbortSignal that
 *   cancels everything.
 * - Every failure is a `BaremetalError`; credentials never appear in messages or causes.
 * - Retries: only a single re-read after a 412 on PATCH and a single re-login after a 401 with a
 *   session. Nothing else is replayed.
 */
import { X509Certificate } from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import * as tls from "node:tls";
import axios, { AxiosInstance } from "axios";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import { httpError, networkError, parseRedfishError, parseRetryAfter, stripUserInfo } from "./errors";
import { createHash } from "node:crypto";
import { Limiter } from "./limiter";
import { type SessionPool, type SharedSession } from "./sessions";
import { DEFAULT_QUIRKS, DEFAULT_RETRY_POLICY, RetryPlanner, type RetryPolicy, type RetryQuirks } from "./retry";
import {
  ActionInfo,
  BOOT_OVERRIDE_ENABLED,
  BOOT_OVERRIDE_MODES,
  BOOT_SOURCES,
  Collection,
  ComputerSystem,
  Drive,
  EthernetInterface,
  Memory,
  Processor,
  RESET_TYPES,
  ResetAction,
  ServiceRoot,
  Storage,
  Manager,
  Session,
  Task,
  VirtualMedia,
} from "./types";

export interface RedfishClientOptions {
  /** e.g. "https://10.0.0.5" or "http://127.0.0.1:8000"; "/redfish/v1" is appended by the client. */
  endpoint: string;
  username?: string;
  password?: string;
  /** Verify the BMC's TLS certificate (default true). */
  verifyTls?: boolean;
  /** PEM text of extra trusted certificates (the BMC's own or its CA), added to the system roots. */
  caBundle?: string;
  /** Deadline of each request in ms (default 30000). */
  timeoutMs?: number;
  /** "auto" (default): a session when the BMC offers one, else Basic. */
  auth?: "session" | "basic" | "auto";
  /** Requests in flight to this BMC at a time (default 4). */
  maxConcurrency?: number;
  /**
   * A limiter shared by every client of the same BMC (see drivers/index.ts), so that the limit
   * holds across concurrent operations; `maxConcurrency` then only sizes the connection pool.
   */
  limiter?: Limiter;
  /**
   * Serialises changes: at most one mutating request (POST, PATCH, PUT, DELETE) to this BMC at a
   * time, shared like `limiter`. Many BMCs mishandle concurrent changes (lost updates, 409s).
   */
  mutationLimiter?: Limiter;
  /** A process-wide limit over all BMCs (shared by every client). */
  globalLimiter?: Limiter;
  /** Shares one session per BMC and credentials between clients (see sessions.ts). */
  sessionPool?: SessionPool;
  /** When and how often a failed request is tried again (default: DEFAULT_RETRY_POLICY). */
  retryPolicy?: RetryPolicy;
  /** Vendor behaviour that the retry planner needs (busy MessageIds). */
  quirks?: RetryQuirks;
  /** Told before each retry: what failed and how long we wait (progress for the user). */
  onRetry?: (e: { method: string; path: string; attempt: number; delayMs: number; reason: string }) => void;
  /** Called once per HTTP exchange (also failed ones: status undefined). */
  onRequest?: (e: { method: string; path: string; status: number | undefined; ms: number }) => void;
  /** Cancels everything in flight and everything after. */
  signal?: AbortSignal;
}

export interface SystemFacts {
  id: string;
  odataId: string;
  manufacturer?: string;
  model?: string;
  serialNumber?: string;
  sku?: string;
  uuid?: string;
  /** "On" | "Off" | "PoweringOn" | "PoweringOff" ... */
  powerState?: string;
  cpuCount?: number;
  cpuModel?: string;
  memoryGiB?: number;
  /** Lower-case, sorted, unique; the host-to-BMC interface (Links.HostInterface) is left out. */
  macAddresses: string[];
  /** Boot.BootSourceOverrideMode (UEFI/Legacy). */
  bootMode?: string;
  bootSourceOverrideTarget?: string;
  bootSourceOverrideEnabled?: string;
  /** Boot.BootSourceOverrideTarget@Redfish.AllowableValues; empty when the BMC does not say. */
  allowedBootTargets: string[];
  /** ResetType values of ComputerSystem.Reset (inline or from its ActionInfo); empty when the BMC does not say. */
  allowedResetTypes: string[];
}

interface RawResponse {
  status: number;
  headers: Record<string, string | undefined>;
  body: unknown;
}

type AuthState =
  | { kind: "none" }
  | { kind: "basic"; header: string }
  | { kind: "session"; token: string; location?: string; pooled?: boolean };

const ROOT_PATH = "/redfish/v1/";
const DEFAULT_SYSTEMS = "/redfish/v1/Systems";
const DEFAULT_SESSIONS = "/redfish/v1/SessionService/Sessions";
/** Answers to a session login that mean "no sessions here" (sushy-tools' emulator, minimal BMCs). */
const NO_SESSION_STATUSES = new Set([404, 405, 501]);
/** Seconds a state-setting action whose answer was lost is watched for before it is sent again. */
const CONVERGE_LOOKS = 10;
const MAX_PAGES = 100;

/** Message ids that, inside a 2xx PATCH answer, mean a property was not applied. */
const PROPERTY_REJECTED =
  /\.(PropertyValueNotInList|PropertyNotWritable|PropertyUnknown|PropertyValueTypeError|PropertyValueFormatError|PropertyValueIncorrect|PropertyValueError|PropertyValueOutOfRange|PropertyNotUpdated|ActionParameterNotSupported)$/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  if (isRecord(a) && isRecord(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => deepEqual(a[k], b[k]));
  }
  return false;
}

/** Does `current` already have every property that `desired` sets (recursing into objects)? */
export function alreadyApplied(current: unknown, desired: unknown): boolean {
  if (isRecord(desired)) {
    if (!isRecord(current)) return false;
    return Object.keys(desired).every((k) => alreadyApplied(current[k], desired[k]));
  }
  return deepEqual(current, desired);
}

function parseEndpoint(raw: string): { origin: string; prefix: string; username?: string; password?: string } {
  if (typeof raw !== "string" || !raw.trim()) {
    throw validationError("endpoint", "the BMC endpoint is required, e.g. https://10.0.0.5");
  }
  let s = raw.trim();
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) s = `https://${s}`;
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw validationError("endpoint", `"${stripUserInfo(raw)}" is not a URL; give e.g. https://10.0.0.5`);
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") {
    throw validationError("endpoint", `"${stripUserInfo(raw)}" must use https:// (or http://)`);
  }
  const prefix = u.pathname.replace(/\/+$/, "").replace(/\/redfish(\/v1)?$/i, "");
  return {
    origin: u.origin,
    prefix,
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
  };
}

function normalizeHeaders(h: unknown): Record<string, string | undefined> {
  const src = isRecord(h) && typeof h.toJSON === "function" ? (h.toJSON as () => unknown)() : h;
  const out: Record<string, string | undefined> = {};
  if (!isRecord(src)) return out;
  for (const [k, v] of Object.entries(src)) {
    if (v === undefined || v === null) continue;
    out[k.toLowerCase()] = Array.isArray(v) ? v.join(", ") : String(v);
  }
  return out;
}

function parseBody(data: unknown): unknown {
  if (typeof data !== "string") return data;
  if (!data.trim()) return undefined;
  try {
    return JSON.parse(data);
  } catch {
    return data; // not JSON (an HTML error page, ...): kept as text for error messages
  }
}

function normalizeMac(mac: string | undefined): string | undefined {
  if (typeof mac !== "string") return undefined;
  const m = mac.trim().toLowerCase().replace(/-/g, ":");
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(m) || m === "00:00:00:00:00:00") return undefined;
  return m;
}

function closeMatch(value: string, allowed: readonly string[]): string | undefined {
  return allowed.find((a) => a.toLowerCase() === value.toLowerCase());
}

const MUTATING = new Set(["POST", "PATCH", "PUT", "DELETE"]);
/** A BMC answered a session login with "no sessions here" (for the pool's login callback). */
class NoSessions extends Error {}

const TASK_DONE = new Set(["Completed", "Killed", "Exception", "Cancelled"]);

function abortableSleep(ms: number, signal: AbortSignal | undefined, cancelled: () => Error): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(cancelled());
    const onAbort = () => {
      clearTimeout(timer);
      reject(cancelled());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function notAllowed(property: string, what: string, value: string, allowed: readonly string[], whose: string): BaremetalError {
  const near = closeMatch(value, allowed);
  return new BaremetalError(
    "validation",
    `${what} "${value}" is not allowed by ${whose}${near ? ` (did you mean "${near}"?)` : ""}; allowed: ${allowed.join(", ")}`,
    { property },
  );
}

export class RedfishClient {
  private readonly origin: string;
  private readonly prefix: string;
  /** scheme://host:port(/prefix) — safe to show: never has credentials. */
  readonly endpoint: string;
  private readonly username?: string;
  /** Secrets live in #private fields: util.inspect(client) does not show them. */
  readonly #password?: string;
  private readonly authMode: "session" | "basic" | "auto";
  private readonly timeoutMs: number;
  private readonly onRequest?: RedfishClientOptions["onRequest"];
  private readonly onRetry?: RedfishClientOptions["onRetry"];
  private readonly retry: RetryPlanner;
  private readonly signal?: AbortSignal;
  private readonly limiter: Limiter;
  private readonly mutationLimiter: Limiter;
  private readonly globalLimiter?: Limiter;
  private readonly sessionPool?: SessionPool;
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  private readonly http: AxiosInstance;

  #auth?: AuthState;
  #loggingIn?: Promise<AuthState>;
  private root?: ServiceRoot;
  /** ETag of the last GET of each path, used by `patch` when the caller gives none. */
  /** Last ETag seen per path; "" = read, and the BMC sends no ETag (no need to read again before a PATCH). */
  private readonly etags = new Map<string, string>();
  private readonly inventory = new Map<string, Promise<[string[], string[], { count?: number; model?: string }, number | undefined]>>();

  constructor(opts: RedfishClientOptions) {
    if (!isRecord(opts)) throw validationError("endpoint", "RedfishClient needs options with an endpoint");
    const ep = parseEndpoint(opts.endpoint);
    this.origin = ep.origin;
    this.prefix = ep.prefix;
    this.endpoint = ep.origin + ep.prefix;
    this.username = opts.username ?? ep.username;
    this.#password = opts.password ?? (opts.username === undefined ? ep.password : undefined);
    this.authMode = opts.auth ?? "auto";
    if (!["session", "basic", "auto"].includes(this.authMode)) {
      throw validationError("auth", `auth must be "session", "basic" or "auto", got "${String(opts.auth)}"`);
    }
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    if (!(this.timeoutMs > 0) || !Number.isFinite(this.timeoutMs)) {
      throw validationError("timeoutMs", `timeoutMs must be a positive number of milliseconds, got ${opts.timeoutMs}`);
    }
    const maxConcurrency = opts.maxConcurrency ?? 4;
    if (!Number.isInteger(maxConcurrency) || maxConcurrency < 1) {
      throw validationError("maxConcurrency", `maxConcurrency must be a positive integer, got ${opts.maxConcurrency}`);
    }
    this.limiter = opts.limiter ?? new Limiter(maxConcurrency);
    this.mutationLimiter = opts.mutationLimiter ?? new Limiter(1);
    this.globalLimiter = opts.globalLimiter;
    this.sessionPool = opts.sessionPool;
    this.onRequest = opts.onRequest;
    this.onRetry = opts.onRetry;
    this.retry = new RetryPlanner(opts.retryPolicy ?? DEFAULT_RETRY_POLICY, opts.quirks ?? DEFAULT_QUIRKS);
    this.signal = opts.signal;

    const verifyTls = opts.verifyTls ?? true;
    let ca: string[] | undefined;
    if (opts.caBundle !== undefined && opts.caBundle.trim()) {
      const blocks = opts.caBundle.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
      if (!blocks.length) {
        throw validationError("caBundle", "caBundle must be PEM text with at least one -----BEGIN CERTIFICATE----- block");
      }
      for (const [i, pem] of blocks.entries()) {
        try {
          new X509Certificate(pem);
        } catch (e) {
          throw validationError("caBundle", `certificate ${i + 1} of caBundle is not valid (${e instanceof Error ? e.message : String(e)})`);
        }
      }
      // `ca` replaces the default trust store: keep the public roots and add the bundle.
      ca = [...tls.rootCertificates, opts.caBundle];
    }
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: maxConcurrency });
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets: maxConcurrency, rejectUnauthorized: verifyTls, ca });
    this.http = axios.create({
      baseURL: this.origin,
      httpAgent: this.httpAgent,
      httpsAgent: this.httpsAgent,
      proxy: false, // BMCs live on management networks; never send their credentials through an env proxy
      maxRedirects: 0, // a redirect is reported, never followed with our credentials
      validateStatus: () => true,
      responseType: "text",
      transformResponse: [(d: unknown) => d],
      maxContentLength: 64 * 1024 * 1024,
      headers: { Accept: "application/json", "OData-Version": "4.0", "User-Agent": "pulumi-baremetal-redfish" },
    });
  }

  // -------------------------------------------------------------------------------------------
  // Generic verbs

  async get<T>(path: string): Promise<{ body: T; etag?: string }> {
    const p = this.toPath(path);
    const res = await this.request("GET", p);
    if (!isRecord(res.body)) {
      throw new BaremetalError("backend", `the BMC at ${this.endpoint} answered GET ${p} without a JSON object`, {
        httpStatus: res.status,
      });
    }
    const etag = res.headers["etag"] ?? (typeof res.body["@odata.etag"] === "string" ? res.body["@odata.etag"] : undefined);
    this.etags.set(p, etag ?? "");
    return etag ? { body: res.body as T, etag } : { body: res.body as T };
  }

  async patch(path: string, body: object, etag?: string): Promise<void> {
    const p = this.toPath(path);
    let tag = etag ?? this.etags.get(p);
    if (tag === undefined) tag = (await this.get<unknown>(p)).etag;
    if (tag === "") tag = undefined;
    let res = await this.request("PATCH", p, { body, ifMatch: tag, accept: [412] });
    if (res.status === 202 && res.headers["location"]) res = await this.awaitTask(res.headers["location"], `PATCH ${p}`);
    if (res.status !== 412) return this.afterPatch(p, res);
    // Someone changed the resource since our read. Re-read once: if what we wanted is there
    // already, we are done; otherwise try once more against the new ETag (a second 412 fails).
    const fresh = await this.get<unknown>(p);
    if (alreadyApplied(fresh.body, body)) return;
    const again = await this.request("PATCH", p, { body, ifMatch: fresh.etag });
    return this.afterPatch(p, again);
  }

  /** DELETE; answers listed in `accept` (e.g. 404: already gone) are returned, not thrown. Returns the status. */
  async delete(path: string, opts: { accept?: number[] } = {}): Promise<number> {
    let res = await this.request("DELETE", this.toPath(path), { accept: opts.accept });
    if (res.status === 202 && res.headers["location"]) res = await this.awaitTask(res.headers["location"], `DELETE ${path}`);
    return res.status;
  }

  /**
   * POST; a long action that answers 202 with a task monitor is awaited until it is done (its
   * final answer replaces the 202). `awaitTask: false` returns the 202 as it is.
   */
  async post<T = unknown>(path: string, body: object, opts: { awaitTask?: boolean } = {}): Promise<{ status: number; body?: T; location?: string }> {
    let res = await this.request("POST", this.toPath(path), { body });
    if (res.status === 202 && res.headers["location"] && opts.awaitTask !== false) res = await this.awaitTask(res.headers["location"], `POST ${path}`);
    const out: { status: number; body?: T; location?: string } = { status: res.status };
    if (res.body !== undefined) out.body = res.body as T;
    if (res.headers["location"]) out.location = res.headers["location"];
    return out;
  }

  /**
   * Polls a task monitor until the long action behind it is done. While running, a monitor
   * answers 202 (with Retry-After, or we back off up to 5 s); when done it answers the action's
   * own result, or a Task whose TaskState says how it ended. Bounded by the client's signal (the
   * operation's deadline).
   */
  async awaitTask(monitor: string, what: string): Promise<RawResponse> {
    const path = this.toPath(monitor);
    for (let poll = 1; ; poll++) {
      const res = await this.request("GET", path, { accept: [202] });
      const task = isRecord(res.body) && typeof res.body.TaskState === "string" ? (res.body as unknown as Task) : undefined;
      const running = res.status === 202 || (task !== undefined && !TASK_DONE.has(task.TaskState!));
      if (!running) {
        if (task && task.TaskState !== "Completed") {
          const messages = (task.Messages ?? []).map((m) => m.Message ?? m.MessageId ?? "").filter(Boolean);
          throw new BaremetalError("backend", `${what} on the BMC at ${this.endpoint} ended as task state ${task.TaskState}${task.TaskStatus ? ` (${task.TaskStatus})` : ""}`, {
            messageId: task.Messages?.[0]?.MessageId,
            details: messages,
          });
        }
        return res;
      }
      const hinted = parseRetryAfter(res.headers["retry-after"]);
      const delayMs = hinted !== undefined ? Math.min(hinted, 60) * 1000 : Math.min(500 * poll, 5000);
      const pct = task?.PercentComplete !== undefined ? `, ${task.PercentComplete}% done` : "";
      this.onRetry?.({ method: "GET", path, attempt: poll, delayMs, reason: `${what} is running as a BMC task${pct}` });
      await abortableSleep(delayMs, this.signal, () => new BaremetalError("cancelled", `waiting for ${what} on the BMC at ${this.endpoint} was cancelled`));
    }
  }

  // -------------------------------------------------------------------------------------------
  // Service and systems

  async serviceRoot(): Promise<ServiceRoot> {
    if (this.root) return this.root;
    await this.ensureAuth(); // a session login reads the root on its way
    if (this.root) return this.root;
    this.root = (await this.get<ServiceRoot>(ROOT_PATH)).body;
    return this.root;
  }

  async listSystems(): Promise<string[]> {
    const root = await this.serviceRoot();
    return this.members(root.Systems?.["@odata.id"] ?? DEFAULT_SYSTEMS);
  }

  async getSystem(idOrPath: string): Promise<{ system: ComputerSystem; etag?: string }> {
    const { body, etag } = await this.get<ComputerSystem>(this.systemPath(idOrPath));
    return etag ? { system: body, etag } : { system: body };
  }

  async getSystemFacts(idOrPath: string): Promise<SystemFacts> {
    const p = this.systemPath(idOrPath);
    const { system } = await this.getSystem(p);
    // Inventory (NICs, CPUs, memory, allowed resets) does not change while one client lives
    // (one provider operation): read it once, and only the system itself on later calls.
    let inventory = this.inventory.get(p);
    if (!inventory) {
      inventory = Promise.all([this.macAddresses(system), this.allowedResetTypes(system), this.cpuFacts(system), this.memoryGiB(system)]);
      this.inventory.set(p, inventory);
      inventory.catch(() => this.inventory.delete(p));
    }
    const [macAddresses, allowedResetTypes, cpu, memoryGiB] = await inventory;
    const boot = system.Boot;
    return {
      id: system.Id ?? p.split("/").pop() ?? p,
      odataId: system["@odata.id"] ?? p,
      manufacturer: system.Manufacturer,
      model: system.Model,
      serialNumber: system.SerialNumber,
      sku: system.SKU,
      uuid: system.UUID,
      powerState: system.PowerState,
      cpuCount: cpu.count,
      cpuModel: cpu.model,
      memoryGiB,
      macAddresses,
      bootMode: boot?.BootSourceOverrideMode,
      bootSourceOverrideTarget: boot?.BootSourceOverrideTarget,
      bootSourceOverrideEnabled: boot?.BootSourceOverrideEnabled,
      allowedBootTargets: [...(boot?.["BootSourceOverrideTarget@Redfish.AllowableValues"] ?? [])],
      allowedResetTypes,
    };
  }

  async resetSystem(idOrPath: string, resetType: string): Promise<void> {
    const p = this.systemPath(idOrPath);
    const { system } = await this.getSystem(p);
    const action = this.resetAction(system, p);
    const allowed = await this.allowedResetTypes(system);
    const list: readonly string[] = allowed.length ? allowed : RESET_TYPES;
    if (typeof resetType !== "string" || !list.includes(resetType)) {
      throw notAllowed("resetType", "ResetType", String(resetType), list, `system ${system.Id ?? p}`);
    }
    await this.post(action.target, { ResetType: resetType });
  }

  async setPower(idOrPath: string, desired: "On" | "Off", opts?: { graceful?: boolean }): Promise<boolean> {
    if (desired !== "On" && desired !== "Off") {
      throw validationError("powerState", `desired power state must be "On" or "Off", got "${String(desired)}"`);
    }
    const p = this.systemPath(idOrPath);
    const { system } = await this.getSystem(p);
    const state = system.PowerState;
    if (desired === "On" && (state === "On" || state === "PoweringOn")) return false;
    if (desired === "Off" && (state === "Off" || state === "PoweringOff")) return false;
    const action = this.resetAction(system, p);
    const allowed = await this.allowedResetTypes(system);
    const candidates =
      desired === "On" ? ["On", "ForceOn", "PushPowerButton"] : opts?.graceful ? ["GracefulShutdown", "PushPowerButton"] : ["ForceOff"];
    const pick = allowed.length ? candidates.find((c) => allowed.includes(c)) : candidates[0];
    if (!pick) {
      throw new BaremetalError(
        "validation",
        `system ${system.Id ?? p} offers no ResetType to power ${desired === "On" ? "on" : opts?.graceful ? "off gracefully" : "off forcibly"}` +
          ` (wanted one of ${candidates.join(", ")}); it allows: ${allowed.join(", ")}`,
        { property: "powerState" },
      );
    }
    const towards = desired === "On" ? ["On", "PoweringOn"] : ["Off", "PoweringOff"];
    await this.converge(
      `power ${desired} of ${p}`,
      () => this.post(action.target, { ResetType: pick }),
      async () => towards.includes((await this.getSystem(p)).system.PowerState ?? ""),
    );
    return true;
  }

  /**
   * Clears the boot override: Enabled "Disabled" (with target None where the BMC lists it). A
   * BMC that keeps an override it cannot disable is left as it is (returns false).
   */
  async clearBootOverride(idOrPath: string): Promise<boolean> {
    const p = this.systemPath(idOrPath);
    const { system, etag } = await this.getSystem(p);
    const boot = system.Boot;
    if (!boot || boot.BootSourceOverrideEnabled === "Disabled") return false;
    const targets: readonly string[] = boot["BootSourceOverrideTarget@Redfish.AllowableValues"] ?? BOOT_SOURCES;
    const change: Record<string, string> = { BootSourceOverrideEnabled: "Disabled" };
    if (targets.includes("None") && boot.BootSourceOverrideTarget !== "None") change.BootSourceOverrideTarget = "None";
    await this.patch(p, { Boot: change }, etag);
    return true;
  }

  async setBootOverride(
    idOrPath: string,
    target: string,
    enabled: "Once" | "Continuous" | "Disabled",
    mode?: "UEFI" | "Legacy",
    httpBootUri?: string,
  ): Promise<boolean> {
    const p = this.systemPath(idOrPath);
    const { system, etag } = await this.getSystem(p);
    const whose = `system ${system.Id ?? p}`;
    const boot = system.Boot;
    if (!boot) {
      throw new BaremetalError("backend", `${whose} on the BMC at ${this.endpoint} has no Boot property: it does not support boot overrides`);
    }
    const targets: readonly string[] = boot["BootSourceOverrideTarget@Redfish.AllowableValues"] ?? BOOT_SOURCES;
    if (typeof target !== "string" || !targets.includes(target)) {
      throw notAllowed("bootSourceOverrideTarget", "boot target", String(target), targets, whose);
    }
    const enables: readonly string[] = boot["BootSourceOverrideEnabled@Redfish.AllowableValues"] ?? BOOT_OVERRIDE_ENABLED;
    if (typeof enabled !== "string" || !enables.includes(enabled)) {
      throw notAllowed("bootSourceOverrideEnabled", "boot override", String(enabled), enables, whose);
    }
    if (mode !== undefined) {
      const modes: readonly string[] = boot["BootSourceOverrideMode@Redfish.AllowableValues"] ?? BOOT_OVERRIDE_MODES;
      if (typeof mode !== "string" || !modes.includes(mode)) {
        throw notAllowed("bootMode", "boot mode", String(mode), modes, whose);
      }
    }
    if (httpBootUri !== undefined && !("HttpBootUri" in boot)) {
      throw new BaremetalError(
        "validation",
        `${whose} on the BMC at ${this.endpoint} has no Boot.HttpBootUri: it cannot boot a URL over HTTP; use bootInterface virtual-media (or pxe with the site's PXE service)`,
        { property: "bootInterface" },
      );
    }
    const change: Record<string, string> = {};
    if (httpBootUri !== undefined && boot.HttpBootUri !== httpBootUri) change.HttpBootUri = httpBootUri;
    if (boot.BootSourceOverrideTarget !== target) change.BootSourceOverrideTarget = target;
    if (boot.BootSourceOverrideEnabled !== enabled) change.BootSourceOverrideEnabled = enabled;
    if (mode !== undefined && boot.BootSourceOverrideMode !== mode) change.BootSourceOverrideMode = mode;
    if (!Object.keys(change).length) return false;
    await this.patch(p, { Boot: change }, etag);
    return true;
  }

  // -------------------------------------------------------------------------------------------
  // Virtual media

  /**
   * The system's virtual drive for `mediaType` (CD by default; DVD drives count as CD). Newer
   * BMCs list virtual media under the system, older ones (and some vendors, see the lab's
   * flavors) under the system's managers: both places are searched, the system first.
   */
  async findVirtualMedia(idOrPath: string, mediaType: "CD" | "USBStick" | "Floppy" = "CD"): Promise<{ path: string; media: VirtualMedia }> {
    const p = this.systemPath(idOrPath);
    const { system } = await this.getSystem(p);
    const wanted = mediaType === "CD" ? ["CD", "DVD"] : [mediaType];
    const places: string[] = [];
    if (system.VirtualMedia?.["@odata.id"]) places.push(system.VirtualMedia["@odata.id"]);
    for (const m of system.Links?.ManagedBy ?? []) {
      const manager = await this.optionalFacts(() => this.get<Manager>(m["@odata.id"]).then((r) => r.body), undefined);
      const vm = manager?.VirtualMedia?.["@odata.id"];
      if (vm && !places.includes(vm)) places.push(vm);
    }
    for (const place of places) {
      const members = await this.optionalFacts(() => this.expand<VirtualMedia>({ "@odata.id": place }), [] as VirtualMedia[]);
      const found = members.find((m) => (m.MediaTypes ?? []).some((t) => wanted.includes(t)));
      if (found?.["@odata.id"]) return { path: this.toPath(found["@odata.id"]), media: found };
    }
    throw new BaremetalError(
      "validation",
      `system ${system.Id ?? p} on the BMC at ${this.endpoint} offers no virtual ${mediaType} drive (searched ${places.length ? places.join(", ") : "no VirtualMedia collections"}); boot it over the network instead`,
      { property: "bootInterface" },
    );
  }

  /**
   * Inserts an image (by URL) into a virtual drive, write-protected. Idempotent: an image that is
   * already inserted is left alone (returns false). Uses the InsertMedia action where the BMC
   * has it, else PATCHes Image/Inserted as older BMCs expect.
   */
  async insertMedia(mediaPath: string, image: string): Promise<boolean> {
    const path = this.toPath(mediaPath);
    const media = (await this.get<VirtualMedia>(path)).body;
    if (media.Inserted && media.Image === image) return false;
    if (media.Inserted) await this.ejectMedia(path);
    const action = media.Actions?.["#VirtualMedia.InsertMedia"]?.target;
    if (action) {
      const inserted = async () => {
        const now = (await this.get<VirtualMedia>(path)).body;
        return now.Inserted === true && now.Image === image;
      };
      await this.converge(`inserting ${image} into ${path}`, () => this.post(action, { Image: image, Inserted: true, WriteProtected: true }), inserted);
    } else await this.patch(path, { Image: image, Inserted: true, WriteProtected: true });
    return true;
  }

  /** Ejects whatever is in a virtual drive. Idempotent: an empty drive is left alone (returns false). */
  async ejectMedia(mediaPath: string): Promise<boolean> {
    const path = this.toPath(mediaPath);
    const media = (await this.get<VirtualMedia>(path)).body;
    if (!media.Inserted && !media.Image) return false;
    const action = media.Actions?.["#VirtualMedia.EjectMedia"]?.target;
    if (action) {
      const ejected = async () => {
        const now = (await this.get<VirtualMedia>(path)).body;
        return !now.Inserted && !now.Image;
      };
      await this.converge(`ejecting ${path}`, () => this.post(action, {}), ejected);
    } else await this.patch(path, { Image: null, Inserted: false });
    return true;
  }

  /**
   * Runs an action that sets a state the BMC shows (power on/off, media in/out). When its answer
   * is lost after it was sent, its fate is unknown, and a blind replay is what this client never
   * does: it reads the state instead. Reached (or on its way): done. Not: the action did not
   * happen, and it is sent once more. Actions whose effect cannot be read back (a restart)
   * never come here.
   */
  private async converge(what: string, act: () => Promise<unknown>, reached: () => Promise<boolean>): Promise<void> {
    try {
      await act();
      return;
    } catch (e) {
      // Only a request without an answer (an HTTP error status is an answer: nothing happened).
      if (!(isBaremetalError(e) && e.code === "transient" && !e.unsent && e.httpStatus === undefined)) throw e;
      // The BMC may still be carrying it out (a task, a slow power change): watch a while.
      for (let look = 1; look <= CONVERGE_LOOKS; look++) {
        this.onRetry?.({ method: "GET", path: what, attempt: look, delayMs: 1000, reason: `${e.message}; reading the state back before anything is sent again` });
        await abortableSleep(1000, this.signal, () => new BaremetalError("cancelled", `${what} on the BMC at ${this.endpoint} was cancelled`));
        if (await reached()) return;
      }
    }
    await act();
  }

  // -------------------------------------------------------------------------------------------
  // Storage

  /** The system's drives (Storage collection, every Storage's Drives); none where the BMC shows no Storage. */
  async listDrives(idOrPath: string): Promise<Drive[]> {
    const { system } = await this.getSystem(this.systemPath(idOrPath));
    const storages = await this.optionalFacts(() => this.expand<Storage>(system.Storage), [] as Storage[]);
    const drives: Drive[] = [];
    for (const storage of storages) {
      for (const link of storage.Drives ?? []) {
        const drive = await this.optionalFacts(() => this.get<Drive>(link["@odata.id"]).then((r) => r.body), undefined);
        if (drive) drives.push(drive);
      }
    }
    return drives;
  }

  /**
   * Runs a drive's SecureErase action (a task on many BMCs: awaited). Not retried once sent: an
   * erase whose answer was lost has started, and the caller's next clean erases again.
   */
  async secureEraseDrive(drive: Drive): Promise<void> {
    const action = drive.Actions?.["#Drive.SecureErase"];
    if (!action?.target) throw new BaremetalError("validation", `drive ${drive["@odata.id"]} on the BMC at ${this.endpoint} has no SecureErase action`);
    const types = action["SanitizationType@Redfish.AllowableValues"];
    // Overwrite is the one sanitization every drive can do; BlockErase / CryptographicErase are faster where offered.
    const body = types?.length ? { SanitizationType: ["CryptographicErase", "BlockErase", "Overwrite"].find((t) => types.includes(t)) ?? types[0] } : {};
    await this.post(action.target, body);
  }

  async logout(): Promise<void> {
    if (this.#loggingIn) {
      try {
        await this.#loggingIn;
      } catch {
        // no session was made
      }
    }
    const auth = this.#auth;
    if (!auth || auth.kind !== "session") return;
    this.#auth = undefined; // from here on, logout is a no-op and a new request logs in again
    // A pooled session is logged out by its last user (the pool calls back).
    if (auth.pooled && this.sessionPool) return this.sessionPool.release(this.sessionKey(), (s) => this.deleteSession(s));
    await this.deleteSession(auth);
  }

  private async deleteSession(session: SharedSession): Promise<void> {
    if (!session.location) return;
    const path = this.toPath(session.location);
    const res = await this.send("DELETE", path, { "X-Auth-Token": session.token });
    if ((res.status >= 200 && res.status < 300) || res.status === 401 || res.status === 404 || res.status === 410) return;
    throw this.failure("DELETE", path, res);
  }

  /** Logs out and releases the sockets. The client can not be used afterwards. */
  async close(): Promise<void> {
    try {
      await this.logout();
    } finally {
      this.httpAgent.destroy();
      this.httpsAgent.destroy();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Helpers of the typed methods

  private systemPath(idOrPath: string): string {
    if (typeof idOrPath !== "string" || !idOrPath.trim()) {
      throw validationError("systemId", "a system id (e.g. 437XR1138R2) or its @odata.id is required");
    }
    const s = idOrPath.trim();
    if (s.startsWith("/") || /^https?:\/\//i.test(s)) return this.toPath(s);
    const collection = (this.root?.Systems?.["@odata.id"] ?? DEFAULT_SYSTEMS).replace(/\/+$/, "");
    return `${this.toPath(collection)}/${encodeURIComponent(s)}`;
  }

  private resetAction(system: ComputerSystem, p: string): ResetAction {
    const action = system.Actions?.["#ComputerSystem.Reset"];
    if (!action || typeof action.target !== "string") {
      throw new BaremetalError(
        "backend",
        `system ${system.Id ?? p} on the BMC at ${this.endpoint} offers no ComputerSystem.Reset action`,
      );
    }
    return action;
  }

  /** ResetType values the system allows: inline annotation, else its ActionInfo, else [] (unknown). */
  private async allowedResetTypes(system: ComputerSystem): Promise<string[]> {
    const action = system.Actions?.["#ComputerSystem.Reset"];
    if (!action) return [];
    const inline = action["ResetType@Redfish.AllowableValues"];
    if (Array.isArray(inline)) return inline.filter((v): v is string => typeof v === "string");
    const info = action["@Redfish.ActionInfo"];
    if (typeof info !== "string" || !info) return [];
    const { body } = await this.get<ActionInfo>(info);
    const param = body.Parameters?.find((x) => x.Name === "ResetType");
    return (param?.AllowableValues ?? []).filter((v): v is string => typeof v === "string");
  }

  private async members(collectionPath: string): Promise<string[]> {
    const out: string[] = [];
    let next: string | undefined = collectionPath;
    for (let page = 0; next && page < MAX_PAGES; page++) {
      const { body }: { body: Collection } = await this.get<Collection>(next);
      for (const m of Array.isArray(body.Members) ? body.Members : []) {
        if (isRecord(m) && typeof m["@odata.id"] === "string") out.push(m["@odata.id"]);
      }
      next = body["Members@odata.nextLink"];
    }
    return out;
  }

  /** GETs every member of a collection (in parallel, within maxConcurrency); members gone meanwhile are skipped. */
  private async expand<T>(collection: { "@odata.id": string } | undefined): Promise<T[]> {
    if (!collection?.["@odata.id"]) return [];
    const ids = await this.members(collection["@odata.id"]);
    const got = await Promise.all(
      ids.map(async (id) => {
        try {
          return (await this.get<T>(id)).body;
        } catch (e) {
          if (e instanceof BaremetalError && e.code === "not-found") return undefined;
          throw e;
        }
      }),
    );
    return got.filter((x): x is Awaited<T> => x !== undefined) as T[];
  }

  private async macAddresses(system: ComputerSystem): Promise<string[]> {
    const nics = await this.optionalFacts(() => this.expand<EthernetInterface>(system.EthernetInterfaces), []);
    const macs = new Set<string>();
    for (const nic of nics) {
      if (nic.Links?.HostInterface) continue; // the host-to-BMC link, not a data NIC
      const mac = normalizeMac(nic.MACAddress) ?? normalizeMac(nic.PermanentMACAddress);
      if (mac) macs.add(mac);
    }
    return [...macs].sort();
  }

  /**
   * Facts from sub-collections are optional: many BMCs answer 404, 500 or 501 for collections they
   * do not implement (sushy-tools' fake driver does for Processors and Memory). Such a fact is
   * simply unknown; credentials, TLS and connection failures still fail the read.
   */
  private async optionalFacts<T, D>(fetch: () => Promise<T>, fallback: D): Promise<T | D> {
    try {
      return await fetch();
    } catch (e) {
      if (isBaremetalError(e) && (e.code === "not-found" || e.code === "backend")) return fallback;
      throw e;
    }
  }

  private async cpuFacts(system: ComputerSystem): Promise<{ count?: number; model?: string }> {
    const summary = system.ProcessorSummary;
    if (typeof summary?.Count === "number") return { count: summary.Count, model: summary.Model };
    if (!system.Processors) return { model: summary?.Model };
    const cpus = (await this.optionalFacts(() => this.expand<Processor>(system.Processors), [])).filter(
      (p) => (p.ProcessorType === undefined || p.ProcessorType === "CPU") && p.Status?.State !== "Absent",
    );
    return { count: cpus.length, model: summary?.Model ?? cpus.find((c) => c.Model)?.Model };
  }

  private async memoryGiB(system: ComputerSystem): Promise<number | undefined> {
    const total = system.MemorySummary?.TotalSystemMemoryGiB;
    if (typeof total === "number") return total;
    if (!system.Memory) return undefined;
    const dimms = await this.optionalFacts(() => this.expand<Memory>(system.Memory), undefined);
    if (!dimms) return undefined;
    const mib = dimms
      .filter((d) => d.Status?.State !== "Absent" && typeof d.CapacityMiB === "number")
      .reduce((sum, d) => sum + (d.CapacityMiB ?? 0), 0);
    return mib / 1024;
  }

  private afterPatch(path: string, res: RawResponse): void {
    // After a change the old ETag is stale; without a new one, read again before the next PATCH.
    if (res.headers["etag"]) this.etags.set(path, res.headers["etag"]);
    else this.etags.delete(path);
    // A 200 may still report properties it did not apply, as message annotations.
    const rejected: string[] = [];
    let firstId: string | undefined;
    const walk = (v: unknown, depth: number): void => {
      if (depth > 4 || !isRecord(v)) return;
      for (const [k, val] of Object.entries(v)) {
        if (k.endsWith("@Message.ExtendedInfo") && Array.isArray(val)) {
          for (const m of val) {
            if (isRecord(m) && typeof m.MessageId === "string" && PROPERTY_REJECTED.test(m.MessageId)) {
              firstId ??= m.MessageId;
              rejected.push(typeof m.Message === "string" ? m.Message : m.MessageId);
            }
          }
        } else if (isRecord(val)) walk(val, depth + 1);
      }
    };
    walk(res.body, 0);
    if (rejected.length) {
      throw new BaremetalError(
        "backend",
        `the BMC at ${this.endpoint} accepted PATCH ${path} (HTTP ${res.status}) but did not apply all of it: ${rejected[0]}`,
        { httpStatus: res.status, messageId: firstId, details: rejected },
      );
    }
  }

  // -------------------------------------------------------------------------------------------
  // Authentication

  private authHeaders(auth: AuthState): Record<string, string> {
    if (auth.kind === "session") return { "X-Auth-Token": auth.token };
    if (auth.kind === "basic") return { Authorization: auth.header };
    return {};
  }

  private basic(): AuthState {
    const raw = `${this.username ?? ""}:${this.#password ?? ""}`;
    return { kind: "basic", header: `Basic ${Buffer.from(raw, "utf8").toString("base64")}` };
  }

  private ensureAuth(): Promise<AuthState> {
    if (this.#auth) return Promise.resolve(this.#auth);
    if (!this.#loggingIn) {
      this.#loggingIn = this.establishAuth().finally(() => {
        this.#loggingIn = undefined;
      });
    }
    return this.#loggingIn;
  }

  private async establishAuth(): Promise<AuthState> {
    if (this.username === undefined) return (this.#auth = { kind: "none" });
    if (this.authMode === "basic") return (this.#auth = this.basic());

    const root = await this.readRootForLogin();
    const sessions = root.Links?.Sessions?.["@odata.id"] ?? (root.SessionService ? DEFAULT_SESSIONS : undefined);
    if (!sessions) return this.noSessions("its service root links no SessionService");

    const path = this.toPath(sessions);
    let session: SharedSession | string;
    if (this.sessionPool) {
      // A "no sessions here" answer is not an error for the pool: it simply stays unused.
      const key = this.sessionKey();
      try {
        session = await this.sessionPool.acquire(key, () => this.login(path).then((s) => (typeof s === "string" ? Promise.reject(new NoSessions(s)) : s)));
      } catch (e) {
        if (e instanceof NoSessions) return this.noSessions(e.message);
        throw e;
      }
      return (this.#auth = { kind: "session", ...session, pooled: true });
    }
    session = await this.login(path);
    if (typeof session === "string") return this.noSessions(session);
    return (this.#auth = { kind: "session", ...session });
  }

  /** One session login: the session, or why this BMC has no sessions. */
  private async login(path: string): Promise<SharedSession | string> {
    const res = await this.send("POST", path, {}, { UserName: this.username, Password: this.#password ?? "" });
    if (res.status >= 200 && res.status < 300) {
      const token = res.headers["x-auth-token"];
      if (!token) return `its session login answered HTTP ${res.status} without an X-Auth-Token`;
      const body = isRecord(res.body) ? (res.body as Partial<Session>) : undefined;
      const location = res.headers["location"] ?? (typeof body?.["@odata.id"] === "string" ? body["@odata.id"] : undefined);
      return { token, location };
    }
    if (NO_SESSION_STATUSES.has(res.status)) return `its session login answered HTTP ${res.status}`;
    // A full session table (other tools hold every slot) is not fatal where Basic is allowed:
    // Basic takes no slot, and the work goes on (sushy's SessionOrBasicAuth does the same).
    if (this.authMode === "auto" && /SessionLimitExceeded$/.test(parseRedfishError(res.body).messageId ?? "")) {
      this.onRetry?.({ method: "POST", path, attempt: 1, delayMs: 0, reason: `the BMC's session table is full (HTTP ${res.status} SessionLimitExceeded); using HTTP Basic instead` });
      return `its session table is full (HTTP ${res.status})`;
    }
    throw this.failure("POST", path, res);
  }

  /** Which pooled session this client may share: same BMC, same user, same password. */
  private sessionKey(): string {
    const secret = createHash("sha256").update(this.#password ?? "").digest("hex");
    return `${this.endpoint}\n${this.username ?? ""}\n${secret}`;
  }

  private noSessions(why: string): AuthState {
    if (this.authMode === "session") {
      throw new BaremetalError(
        "validation",
        `the BMC at ${this.endpoint} offers no Redfish sessions (${why}); use auth "basic" or "auto"`,
        { property: "auth" },
      );
    }
    return (this.#auth = this.basic());
  }

  /** The service root, read without credentials as the spec allows (with Basic if the BMC insists). */
  private async readRootForLogin(): Promise<ServiceRoot> {
    if (this.root) return this.root;
    let res = await this.send("GET", ROOT_PATH, {});
    if (res.status === 401) res = await this.send("GET", ROOT_PATH, this.authHeaders(this.basic()));
    if (res.status < 200 || res.status >= 300) throw this.failure("GET", ROOT_PATH, res);
    if (!isRecord(res.body)) {
      throw new BaremetalError("backend", `the BMC at ${this.endpoint} answered GET ${ROOT_PATH} without a JSON object; is this a Redfish service?`, {
        httpStatus: res.status,
      });
    }
    this.root = res.body as unknown as ServiceRoot;
    return this.root;
  }

  // -------------------------------------------------------------------------------------------
  // Transport

  /** Absolute Redfish path ("/redfish/v1/...") of an absolute path, a full URL or a path relative to /redfish/v1. */
  private toPath(path: string): string {
    let p = String(path ?? "").trim();
    if (/^https?:\/\//i.test(p)) {
      const u = new URL(p);
      p = u.pathname + u.search;
    }
    if (this.prefix && p.startsWith(this.prefix + "/redfish")) p = p.slice(this.prefix.length);
    if (p === "/redfish" || p === "/redfish/v1" || p === "") return ROOT_PATH;
    if (p.startsWith("/redfish/")) return p;
    return ROOT_PATH + p.replace(/^\/+/, "");
  }

  /**
   * One authenticated request: a single re-login when a session was refused, and retries where
   * the retry planner says they are safe (see retry.ts), each reported through `onRetry`.
   */
  private async request(
    method: string,
    path: string,
    o: { body?: unknown; ifMatch?: string; accept?: number[] } = {},
  ): Promise<RawResponse> {
    const started = Date.now();
    for (let attempt = 1; ; attempt++) {
      let res: RawResponse | undefined;
      let error: unknown;
      try {
        res = await this.exchange(method, path, o);
        if ((res.status >= 200 && res.status < 300) || o.accept?.includes(res.status)) return res;
      } catch (e) {
        if (isBaremetalError(e) && e.code === "cancelled") throw e;
        error = e;
      }
      const failure = error ?? this.failure(method, path, res!);
      const decision = this.retry.decide({
        method,
        isAction: method === "POST" && path.includes("/Actions/"),
        attempt,
        elapsedMs: Date.now() - started,
        status: res?.status,
        retryAfterSeconds: isBaremetalError(failure) ? failure.retryAfterSeconds : undefined,
        messageId: isBaremetalError(failure) ? failure.messageId : undefined,
        error,
      });
      if (!decision.retry) throw failure;
      this.onRetry?.({ method, path, attempt, delayMs: decision.delayMs, reason: decision.reason });
      await abortableSleep(decision.delayMs, this.signal, () => new BaremetalError("cancelled", `${method} ${path} to the BMC at ${this.endpoint} was cancelled`));
    }
  }

  private async exchange(method: string, path: string, o: { body?: unknown; ifMatch?: string }): Promise<RawResponse> {
    const extra: Record<string, string> = o.ifMatch ? { "If-Match": o.ifMatch } : {};
    let auth = await this.ensureAuth();
    let res = await this.send(method, path, { ...this.authHeaders(auth), ...extra }, o.body);
    if (res.status === 401 && auth.kind === "session") {
      // The session expired or was deleted behind our back. A 401 means the BMC did nothing,
      // so log in again once and send the request again.
      if (auth.pooled && this.sessionPool) {
        const stale = auth;
        const fresh = await this.sessionPool.renew(this.sessionKey(), stale.token, () =>
          this.login(this.toPath(this.root?.Links?.Sessions?.["@odata.id"] ?? DEFAULT_SESSIONS)).then((r) => (typeof r === "string" ? Promise.reject(new NoSessions(r)) : r)),
        );
        if (this.#auth === stale) this.#auth = { kind: "session", ...fresh, pooled: true };
        auth = this.#auth ?? (await this.ensureAuth());
      } else {
        if (this.#auth === auth) this.#auth = undefined;
        auth = await this.ensureAuth();
      }
      res = await this.send(method, path, { ...this.authHeaders(auth), ...extra }, o.body);
    }
    return res;
  }

  private failure(method: string, path: string, res: RawResponse): BaremetalError {
    return httpError({
      endpoint: this.endpoint,
      method,
      path,
      status: res.status,
      headers: res.headers,
      body: res.body,
      username: this.username,
    });
  }

  /** One HTTP exchange within the concurrency limit and the deadline; never throws for an HTTP status. */
  private async send(method: string, path: string, headers: Record<string, string>, body?: unknown): Promise<RawResponse> {
    const cancelled = () =>
      new BaremetalError("cancelled", `${method} ${path} to the BMC at ${this.endpoint} was cancelled`);
    // Always in this order (changes, this BMC, all BMCs), so that waiting can never deadlock.
    const releaseMutation = MUTATING.has(method) ? await this.mutationLimiter.acquire(this.signal, cancelled) : () => undefined;
    let releaseBmc: () => void;
    let releaseGlobal: () => void;
    try {
      releaseBmc = await this.limiter.acquire(this.signal, cancelled);
      try {
        releaseGlobal = this.globalLimiter ? await this.globalLimiter.acquire(this.signal, cancelled) : () => undefined;
      } catch (e) {
        releaseBmc();
        throw e;
      }
    } catch (e) {
      releaseMutation();
      throw e;
    }
    const release = () => {
      releaseGlobal();
      releaseBmc();
      releaseMutation();
    };
    const ctl = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctl.abort();
    }, this.timeoutMs);
    const onAbort = () => ctl.abort();
    this.signal?.addEventListener("abort", onAbort, { once: true });
    if (this.signal?.aborted) ctl.abort();
    const started = performance.now();
    let status: number | undefined;
    try {
      const res = await this.http.request<string>({
        method,
        url: this.prefix + path,
        headers: body !== undefined ? { ...headers, "Content-Type": "application/json; charset=utf-8" } : headers,
        data: body !== undefined ? JSON.stringify(body) : undefined,
        signal: ctl.signal,
      });
      status = res.status;
      return { status: res.status, headers: normalizeHeaders(res.headers), body: parseBody(res.data) };
    } catch (e) {
      if (timedOut) {
        throw new BaremetalError("timeout", `the BMC at ${this.endpoint} did not answer ${method} ${path} within ${this.timeoutMs} ms`);
      }
      if (this.signal?.aborted) throw cancelled();
      if (axios.isAxiosError(e) || (e instanceof Error && "code" in e)) throw networkError(this.endpoint, method, path, e);
      throw new BaremetalError("internal", `${method} ${path} to the BMC at ${this.endpoint} failed unexpectedly: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      clearTimeout(timer);
      this.signal?.removeEventListener("abort", onAbort);
      release();
      if (this.onRequest) {
        try {
          this.onRequest({ method, path, status, ms: performance.now() - started });
        } catch {
          // an observer's bug must not break the request
        }
      }
    }
  }
}

