/**
 * The provider's side of broker mode (issue 8): with the provider settings `endpoint` and `token`,
 * every resource and function goes through the tenant-facing service (`baremetal serve`) instead
 * of the backends. The service holds the backend credentials and the objects' handler state; the
 * provider holds a token. This client speaks the service's `/v1/resources` and `/v1/functions`
 * endpoints (../service/resources.ts) and turns the service's errors (`{requestId, errorCode,
 * message, property?}`) back into the core's errors, with the request id in the message so the
 * operator can find the call in the service's log.
 *
 * - TLS is verified (the system's roots plus `endpointCaBundle`); an `http://` endpoint is only
 *   accepted on loopback (tests, a service on the same machine).
 * - The token goes in the Authorization header only; it is never logged or put in a message.
 * - A create carries an `Idempotency-Key`: a retry after a lost answer gets the object the first
 *   attempt made, not a second one. Reads are retried on a connection failure or a 503.
 */
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as https from "node:https";
import * as tls from "node:tls";
import axios, { type AxiosInstance, type AxiosResponse } from "axios";
import { BaremetalError, type ErrorCode } from "../core/errors";
import type { Props } from "../core/resource";
import type { CheckFailure } from "../core/validate";
import { UNKNOWN, isUnknown } from "../core/values";

/** How a value not known yet (a preview) travels to the service's check: `{"@unknown": true}`. */
const UNKNOWN_WIRE = "@unknown";
export function unknownsToWire(v: unknown): unknown {
  if (isUnknown(v)) return { [UNKNOWN_WIRE]: true };
  if (Array.isArray(v)) return v.map(unknownsToWire);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, unknownsToWire(x)]));
  return v;
}
export function unknownsFromWire(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(unknownsFromWire);
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    if (Object.keys(o).length === 1 && o[UNKNOWN_WIRE] === true) return UNKNOWN;
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, unknownsFromWire(x)]));
  }
  return v;
}

export interface BrokerSettings {
  endpoint: string;
  token: string;
  /** PEM text or a path to a PEM file: trusted in addition to the system's roots. */
  caBundle?: string;
}

/** An object as the service returns it. */
export interface BrokeredObject {
  uuid: string;
  id: string;
  inputs: Props;
  outputs: Props;
  etag: string;
  /** A create that made the object but could not finish: why. */
  partial?: string[];
}

const CODES: Record<number, ErrorCode> = { 400: "validation", 401: "auth", 403: "auth", 404: "not-found", 409: "conflict", 412: "conflict", 429: "transient", 502: "backend", 503: "transient", 504: "timeout" };

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "[::1]" || /^127\./.test(host);
}

/** Checks the endpoint's form (a refusal names `endpoint`). */
export function checkEndpoint(endpoint: string): string | undefined {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    return `${JSON.stringify(endpoint)} is not a URL: give the service's address, such as https://baremetal.example.com`;
  }
  if (u.protocol === "https:") return undefined;
  if (u.protocol === "http:" && isLoopback(u.hostname)) return undefined;
  if (u.protocol === "http:") return `${endpoint}: the token would travel in clear text; use https:// (plain http is accepted on loopback only)`;
  return `${endpoint}: use an https:// URL`;
}

export class BrokerClient {
  private readonly http: AxiosInstance;

  constructor(readonly settings: BrokerSettings) {
    const bad = checkEndpoint(settings.endpoint);
    if (bad) throw new BaremetalError("validation", bad, { property: "endpoint" });
    const ca = settings.caBundle ? (settings.caBundle.includes("-----BEGIN") ? settings.caBundle : fs.readFileSync(settings.caBundle, "utf8")) : undefined;
    this.http = axios.create({
      baseURL: settings.endpoint.replace(/\/+$/, ""),
      // The system's roots and the bundle; verification is never turned off here.
      httpsAgent: new https.Agent({ keepAlive: true, ...(ca ? { ca: [...tlsRoots(), ca] } : {}) }),
      proxy: false,
      maxRedirects: 0,
      validateStatus: () => true,
      headers: { authorization: `Bearer ${settings.token}`, "content-type": "application/json" },
      transitional: { clarifyTimeoutError: true },
    });
  }

  private async call<T>(method: "GET" | "POST" | "PUT" | "DELETE", path: string, opts: { body?: unknown; timeoutSeconds?: number; headers?: Record<string, string>; retry?: boolean; signal?: AbortSignal } = {}): Promise<{ status: number; data: T }> {
    const attempts = opts.retry ? 4 : 1;
    for (let attempt = 1; ; attempt++) {
      let r: AxiosResponse;
      try {
        r = await this.http.request({
          method,
          url: path,
          data: opts.body === undefined ? undefined : JSON.stringify(opts.body),
          headers: { ...(opts.timeoutSeconds ? { "x-timeout-seconds": String(Math.ceil(opts.timeoutSeconds)) } : {}), ...opts.headers },
          timeout: opts.timeoutSeconds ? (opts.timeoutSeconds + 30) * 1000 : 0,
          signal: opts.signal,
        });
      } catch (e) {
        if (attempt < attempts && !opts.signal?.aborted) {
          await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
          continue;
        }
        const m = (e as Error).message;
        throw new BaremetalError("transient", `the baremetal service at ${this.settings.endpoint} did not answer (${m}); check endpoint and that the service runs`, { property: "endpoint", cause: e });
      }
      if (r.status === 503 && attempt < attempts) {
        await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
        continue;
      }
      if (r.status >= 200 && r.status < 300) return { status: r.status, data: r.data as T };
      throw errorOf(r, this.settings.endpoint);
    }
  }

  /** The service's check of a resource's inputs: field validation, the resource's own check and the policy, with the token's project. */
  async check(type: string, inputs: Props, name: string): Promise<CheckFailure[]> {
    const r = await this.call<{ failures: CheckFailure[] }>("POST", `/v1/resources/${encodeURIComponent(type)}/check`, { body: { inputs: unknownsToWire(inputs), name }, retry: true });
    return r.data.failures;
  }

  async create(type: string, body: { inputs: Props; name: string; urn: string }, timeoutSeconds: number, signal?: AbortSignal): Promise<BrokeredObject> {
    const key = randomUUID();
    // The same key on every attempt: a retry returns what the first attempt made.
    const r = await this.call<BrokeredObject>("POST", `/v1/resources/${encodeURIComponent(type)}`, { body, timeoutSeconds, headers: { "idempotency-key": key }, retry: true, signal });
    return r.data;
  }

  /** The object (refreshed from its backend when `refresh`); undefined when the service has no such object of the token's project. */
  async get(type: string, id: string, refresh: boolean, timeoutSeconds: number, signal?: AbortSignal): Promise<BrokeredObject | undefined> {
    try {
      const r = await this.call<BrokeredObject>("GET", `/v1/resources/${encodeURIComponent(type)}/${encodeURIComponent(id)}${refresh ? "?refresh=true" : ""}`, { timeoutSeconds, retry: true, signal });
      return r.data;
    } catch (e) {
      if (e instanceof BaremetalError && e.code === "not-found") return undefined;
      throw e;
    }
  }

  async update(type: string, id: string, inputs: Props, timeoutSeconds: number, signal?: AbortSignal, etag?: string): Promise<BrokeredObject> {
    const r = await this.call<BrokeredObject>("PUT", `/v1/resources/${encodeURIComponent(type)}/${encodeURIComponent(id)}`, { body: { inputs }, timeoutSeconds, signal, ...(etag ? { headers: { "if-match": etag } } : {}) });
    return r.data;
  }

  async delete(type: string, id: string, timeoutSeconds: number, signal?: AbortSignal): Promise<void> {
    await this.call("DELETE", `/v1/resources/${encodeURIComponent(type)}/${encodeURIComponent(id)}`, { timeoutSeconds, signal });
  }

  async invoke(token: string, args: Props): Promise<Props> {
    const r = await this.call<Props>("POST", `/v1/functions/${encodeURIComponent(token)}`, { body: { args }, retry: true });
    return r.data;
  }
}

const tlsRoots = (): string[] => [...tls.rootCertificates];

/** The core error for a service's error answer (its code, message, property, request id). */
function errorOf(r: AxiosResponse, endpoint: string): BaremetalError {
  const body = (r.data && typeof r.data === "object" ? r.data : {}) as { requestId?: string; errorCode?: string; message?: string; property?: string };
  const code = CODES[r.status] ?? (r.status >= 500 ? "backend" : "validation");
  const retryAfter = Number(r.headers["retry-after"]);
  const message = body.message ?? `the baremetal service at ${endpoint} answered HTTP ${r.status}`;
  return new BaremetalError(code, `${message} (service request ${body.requestId ?? r.headers["x-request-id"] ?? "?"})`, {
    ...(body.property ? { property: body.property } : {}),
    httpStatus: r.status,
    ...(body.errorCode ? { messageId: body.errorCode } : {}),
    ...(Number.isFinite(retryAfter) ? { retryAfterSeconds: retryAfter } : {}),
  });
}
