/**
 * The tenant-facing service's HTTP API (issue 8, `baremetal serve`): the first slice.
 *
 * - Every request gets a request id (the caller's `X-Request-Id` when it is a plausible one, else a
 *   fresh UUID), echoed in the response and in the one JSON log line per request.
 * - Every error has one shape: `{ requestId, errorCode, message }`, with the HTTP status of the
 *   core's error (400 validation, 401/403 auth, 404, 409, 429, 503...).
 * - Callers authenticate with a bearer token (tokens.ts); what a call may do is the policy's
 *   answer for the token's project and roles, as in the provider.
 * - Lists use keyset pagination: `limit` and an opaque `pageToken` (the last item's key, base64url);
 *   an item inserted or removed meanwhile never shifts a page.
 * - Query parameters are validated (ajv) against the operation's parameters in the OpenAPI
 *   document (openapi.ts), which the service serves at `/v1/openapi.json`.
 *
 * Endpoints of this slice: `GET /v1/me` (who the token is and what it may do), `GET /v1/nodes`
 * (the nodes the caller may see: owner/lessee filtered, as the provider's getNodes).
 */
import { randomUUID } from "node:crypto";
import * as http from "node:http";
import Ajv, { type ValidateFunction } from "ajv";
import { BaremetalError, isBaremetalError } from "../core/errors";
import type { ProviderHost } from "../core/host";
import { getNodesFunction } from "../resources/compute/get-nodes";
import { OPENAPI, type QueryParameter } from "./openapi";
import type { AuthenticatedCaller, TokenService } from "./tokens";

export interface LogEntry {
  time: string;
  requestId: string;
  method: string;
  path: string;
  status: number;
  ms: number;
  tokenId?: string;
  errorCode?: string;
}

export interface ServiceOptions {
  /** The configured provider core (backend credentials live here, never in a response). */
  host: ProviderHost;
  tokens: TokenService;
  /** One structured line per request (default: JSON to stdout). */
  log?: (e: LogEntry) => void;
}

const STATUS: Record<string, number> = {
  validation: 400,
  "not-found": 404,
  conflict: 409,
  transient: 503,
  timeout: 504,
  cancelled: 499,
  backend: 502,
  tls: 502,
  "partial-create": 500,
  internal: 500,
};

function statusOf(e: unknown): number {
  if (!isBaremetalError(e)) return 500;
  if (e.code === "auth") return e.httpStatus === 401 ? 401 : 403;
  if (e.code === "transient" && e.httpStatus === 429) return 429;
  return STATUS[e.code] ?? 500;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{8,128}$/;

/** Keyset page tokens: the last item's sort key, opaque to the caller. */
export const pageToken = {
  encode: (key: string[]) => Buffer.from(JSON.stringify(key), "utf8").toString("base64url"),
  decode(token: string): string[] {
    try {
      const key = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as unknown;
      if (Array.isArray(key) && key.every((k) => typeof k === "string")) return key as string[];
    } catch {
      /* below */
    }
    throw new BaremetalError("validation", "pageToken is not one this service gave out: pass the nextPageToken of the previous page, unchanged", { property: "pageToken" });
  },
};

type Route = (req: { caller: AuthenticatedCaller; query: Record<string, unknown> }) => Promise<unknown>;

export function createService(opts: ServiceOptions): http.Server {
  const log = opts.log ?? ((e: LogEntry) => process.stdout.write(`${JSON.stringify(e)}\n`));
  const ajv = new Ajv({ allErrors: true, coerceTypes: true, strict: false });
  const validators = new Map<string, ValidateFunction>();
  const queryValidator = (path: string): ValidateFunction => {
    let v = validators.get(path);
    if (!v) {
      const params = ((OPENAPI.paths as unknown as Record<string, { get?: { parameters?: readonly QueryParameter[] } }>)[path]?.get?.parameters ?? []).filter((p) => p.in === "query");
      v = ajv.compile({
        type: "object",
        properties: Object.fromEntries(params.map((p) => [p.name, p.schema])),
        required: params.filter((p) => p.required).map((p) => p.name),
        additionalProperties: false,
      });
      validators.set(path, v);
    }
    return v;
  };

  const routes: Record<string, Route> = {
    "/v1/me": async ({ caller }) => ({
      tokenId: caller.tokenId,
      tokenName: caller.tokenName,
      ...opts.tokens.capabilities(caller, opts.host.providerContext().policy),
    }),
    "/v1/nodes": async ({ caller, query }) => {
      const ctx = { ...opts.host.providerContext(), caller };
      const { nodes } = (await getNodesFunction.invoke(ctx, {
        owner: query.owner,
        lessee: query.lessee,
        resourceClass: query.resourceClass,
        provisionState: query.provisionState,
      })) as { nodes: Array<{ id: string; name: string }> };
      // Keyset: items after the page token's (name, id), in (name, id) order.
      const after = typeof query.pageToken === "string" ? pageToken.decode(query.pageToken) : undefined;
      const sorted = nodes.sort((a, b) => (a.name === b.name ? (a.id < b.id ? -1 : 1) : a.name < b.name ? -1 : 1));
      const rest = after ? sorted.filter((n) => n.name > after[0] || (n.name === after[0] && n.id > after[1])) : sorted;
      const limit = (query.limit as number | undefined) ?? 100;
      const items = rest.slice(0, limit);
      const last = items[items.length - 1];
      return { items, ...(rest.length > limit && last ? { nextPageToken: pageToken.encode([last.name, last.id]) } : {}) };
    },
  };

  return http.createServer((req, res) => {
    const started = performance.now();
    const inbound = req.headers["x-request-id"];
    const requestId = typeof inbound === "string" && REQUEST_ID.test(inbound) ? inbound : randomUUID();
    const url = new URL(req.url ?? "/", "http://service");
    let tokenId: string | undefined;
    const send = (status: number, body: unknown, errorCode?: string) => {
      res.writeHead(status, { "content-type": "application/json", "x-request-id": requestId });
      res.end(JSON.stringify(body));
      log({ time: new Date().toISOString(), requestId, method: req.method ?? "", path: url.pathname, status, ms: Math.round((performance.now() - started) * 10) / 10, ...(tokenId ? { tokenId } : {}), ...(errorCode ? { errorCode } : {}) });
    };
    const fail = (e: unknown) => {
      const status = statusOf(e);
      const errorCode = isBaremetalError(e) ? (e.messageId ?? e.code) : "internal";
      // Internal errors say no more than that: their text may hold what a tenant must not see.
      const message = isBaremetalError(e) && status < 500 ? e.message : `the service failed (request ${requestId}); the operator's log has the details`;
      if (isBaremetalError(e) && e.retryAfterSeconds !== undefined) res.setHeader("retry-after", String(e.retryAfterSeconds));
      send(status, { requestId, errorCode, message }, errorCode);
    };
    (async () => {
      if (req.method === "GET" && url.pathname === "/v1/openapi.json") return send(200, OPENAPI);
      const route = routes[url.pathname];
      if (!route) throw new BaremetalError("not-found", `no such endpoint: ${req.method} ${url.pathname} (the API is described at /v1/openapi.json)`);
      if (req.method !== "GET") throw new BaremetalError("validation", `${url.pathname} takes GET`, { httpStatus: 405 });
      const caller = await opts.tokens.authenticate(req.headers.authorization);
      tokenId = caller.tokenId;
      const query: Record<string, unknown> = Object.fromEntries(url.searchParams);
      const validate = queryValidator(url.pathname);
      if (!validate(query)) {
        const first = validate.errors?.[0];
        const property = first?.instancePath.replace(/^\//, "") || String((first?.params as { additionalProperty?: string })?.additionalProperty ?? "query");
        throw new BaremetalError("validation", `${property}: ${first?.message ?? "invalid"}`, { property });
      }
      send(200, await route({ caller, query }));
    })().catch(fail);
  });
}
