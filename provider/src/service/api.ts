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
 * (the nodes the caller may see: owner/lessee filtered, as the provider's getNodes), and the
 * first node action, `PUT /v1/nodes/{id}/power` (`baremetal:node:set_power_state`, done with the
 * service's BMC credentials). Every mutating call is recorded in the audit log (the inventory's
 * `audit_log`): who (token, project), what (operation, object), when, and the outcome (`done`,
 * `denied`, `not-found`, `failed`).
 */
import { randomUUID } from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import Ajv, { type ValidateFunction } from "ajv";
import { authorize } from "../core/auth";
import { BaremetalError, isBaremetalError } from "../core/errors";
import type { ProviderHost } from "../core/host";
import { summary, visibleNodes } from "../resources/compute/get-nodes";
import { withDriver } from "../resources/compute/node";
import { OPENAPI, type QueryParameter } from "./openapi";
import { attachConsole } from "./console";
import { notAllowed, ResourceEndpoints } from "./resources";
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
  /** For a failure of the service itself (5xx): what failed, for the operator (the caller gets the request id only). */
  error?: string;
}

export interface ServiceOptions {
  /** The configured provider core (backend credentials live here, never in a response). */
  host: ProviderHost;
  tokens: TokenService;
  /** One structured line per request (default: JSON to stdout). */
  log?: (e: LogEntry) => void;
  /** Serve HTTPS with this certificate and key (PEM); with clientCa, every client must present a certificate chaining to it (mutual TLS, refused in the handshake otherwise). */
  tls?: { cert: string | Buffer; key: string | Buffer; clientCa?: string | Buffer };
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
  if (e.code === "conflict" && e.messageId === "PreconditionFailed") return 412;
  if (e.code === "validation" && e.httpStatus === 405) return 405;
  return STATUS[e.code] ?? 500;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{8,128}$/;
/**
 * Request line and headers up to 256 KiB (Node's default is 16 KiB): a long query (a page token
 * pasted wrong) is then answered by the API's own validation, a 400 naming the parameter, not a
 * bare 431 from the HTTP parser.
 */
const MAX_HEADER_BYTES = 256 * 1024;

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

/** The first failure of an ajv validation, naming the property (or the extra one), else `what`. */
function invalid(validate: ValidateFunction, what: string): BaremetalError {
  const first = validate.errors?.[0];
  const property = first?.instancePath.replace(/^\//, "") || String((first?.params as { additionalProperty?: string })?.additionalProperty ?? what);
  return new BaremetalError("validation", `${property}: ${first?.message ?? "invalid"}`, { property });
}

type Route = (req: { caller: AuthenticatedCaller; query: Record<string, unknown> }) => Promise<unknown>;

/** A mutating call: authorised by the policy on its object, done, and recorded in the audit log. */
interface Action {
  method: string;
  pattern: RegExp;
  /** The request body's JSON Schema. */
  body: Record<string, unknown>;
  handle(req: { caller: AuthenticatedCaller; params: string[]; body: Record<string, unknown>; audit: (a: { operation: string; target: string }) => void }): Promise<unknown>;
}

/**
 * The request body, parsed as JSON (at most `max` bytes, 64 KiB by default). A larger body is
 * refused with 400 naming the limit: the rest of it is read and dropped, and the connection closes
 * after the answer (destroying the request instead reset the connection, and the client got no
 * answer at all: the fuzzer's one "network error").
 */
function readBody(req: http.IncomingMessage, res: http.ServerResponse, max = 65536): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    let over = false;
    req.on("data", (b: Buffer) => {
      if (over) return;
      n += b.length;
      if (n > max) {
        over = true;
        parts.length = 0;
        if (!res.headersSent) res.setHeader("connection", "close");
        reject(new BaremetalError("validation", `the request body is larger than ${max / 1024} KiB`, { property: "body" }));
        return;
      }
      parts.push(b);
    });
    req.on("end", () => {
      const text = Buffer.concat(parts).toString("utf8");
      try {
        resolve(text ? JSON.parse(text) : {});
      } catch {
        reject(new BaremetalError("validation", "the request body is not JSON", { property: "body" }));
      }
    });
    req.on("error", reject);
  });
}

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

  const bodyValidators = new Map<Action, ValidateFunction>();
  const bodyValidator = (a: Action): ValidateFunction => {
    let v = bodyValidators.get(a);
    if (!v) bodyValidators.set(a, (v = ajv.compile(a.body)));
    return v;
  };

  const resources = new ResourceEndpoints(opts.host);

  const routes: Record<string, Route> = {
    "/v1/me": async ({ caller }) => ({
      tokenId: caller.tokenId,
      tokenName: caller.tokenName,
      ...opts.tokens.capabilities(caller, opts.host.providerContext().policy),
    }),
    "/v1/nodes": async ({ caller, query }) => {
      const ctx = { ...opts.host.providerContext(), caller };
      // Keyset in the database: nodes after the page token's (name, id), one more than the page to know if another follows.
      const after = typeof query.pageToken === "string" ? pageToken.decode(query.pageToken) : undefined;
      const limit = (query.limit as number | undefined) ?? 100;
      const filter = visibleNodes(ctx, query);
      const rows = await (await ctx.inventory()).listNodes({ ...filter, ...(after ? { after: { name: after[0], id: after[1] ?? "" } } : {}), limit: limit + 1 });
      const items = rows.slice(0, limit).map(summary) as Array<{ id: string; name: string }>;
      const last = items[items.length - 1];
      return { items, ...(rows.length > limit && last ? { nextPageToken: pageToken.encode([last.name, last.id]) } : {}) };
    },
  };

  const actions: Action[] = [
    {
      // A tenant's node action: power, with the service's BMC credentials (never the tenant's).
      method: "PUT",
      pattern: /^\/v1\/nodes\/([^/]+)\/power$/,
      body: { type: "object", required: ["state"], properties: { state: { enum: ["on", "off"] } }, additionalProperties: false },
      async handle({ caller, params, body, audit }) {
        const id = params[0];
        audit({ operation: "baremetal:node:set_power_state", target: id });
        const ctx = { ...opts.host.providerContext(), caller };
        const node = await (await ctx.inventory()).getNode(id);
        if (!node) throw new BaremetalError("not-found", `no node ${id}`);
        authorize(ctx.policy, caller, "baremetal:node:set_power_state", { "node.owner": node.owner, "node.lessee": node.lessee });
        const uri = new URL(id);
        const systemId = decodeURIComponent(uri.pathname.split("/").filter(Boolean).pop() ?? "");
        // The provider's BMC session (closed after), with the service's credentials (no bmc.* of a tenant).
        const { changed } = await withDriver({ config: ctx.config, progress: () => undefined }, { address: uri.origin }, (driver) =>
          driver.setPower(systemId, body.state as "on" | "off"),
        );
        return { id, powerState: body.state, changed };
      },
    },
  ];

  const t = opts.tls;
  const createServer = (handler: http.RequestListener): http.Server =>
    t
      ? https.createServer({ cert: t.cert, key: t.key, maxHeaderSize: MAX_HEADER_BYTES, ...(t.clientCa ? { ca: t.clientCa, requestCert: true, rejectUnauthorized: true } : {}) }, handler)
      : http.createServer({ maxHeaderSize: MAX_HEADER_BYTES }, handler);
  const server = createServer((req, res) => {
    const started = performance.now();
    const inbound = req.headers["x-request-id"];
    const requestId = typeof inbound === "string" && REQUEST_ID.test(inbound) ? inbound : randomUUID();
    const url = new URL(req.url ?? "/", "http://service");
    let tokenId: string | undefined;
    const send = (status: number, body: unknown, errorCode?: string, error?: string) => {
      res.writeHead(status, { "content-type": "application/json", "x-request-id": requestId });
      res.end(JSON.stringify(body));
      log({ time: new Date().toISOString(), requestId, method: req.method ?? "", path: url.pathname, status, ms: Math.round((performance.now() - started) * 10) / 10, ...(tokenId ? { tokenId } : {}), ...(errorCode ? { errorCode } : {}), ...(error ? { error } : {}) });
    };
    const fail = (e: unknown) => {
      const status = statusOf(e);
      // Every refusal of the policy has one code, whichever check found it.
      const errorCode = isBaremetalError(e) ? (e.messageId ?? (status === 403 ? "PolicyNotAuthorized" : e.code)) : "internal";
      // Internal errors say no more than that: their text may hold what a tenant must not see.
      const message = isBaremetalError(e) && status < 500 ? e.message : `the service failed (request ${requestId}); the operator's log has the details`;
      if (isBaremetalError(e) && e.retryAfterSeconds !== undefined) res.setHeader("retry-after", String(e.retryAfterSeconds));
      if (status === 405 && isBaremetalError(e) && e.details.length) res.setHeader("allow", e.details.join(", "));
      const property = isBaremetalError(e) && status < 500 && e.property ? { property: e.property } : {};
      send(status, { requestId, errorCode, message, ...property }, errorCode, status >= 500 ? (e instanceof Error ? e.message : String(e)) : undefined);
    };
    let auditing: { operation: string; target: string; caller: AuthenticatedCaller } | undefined;
    const record = async (outcome: string, detail?: string) => {
      if (!auditing) return;
      const { operation, target, caller } = auditing;
      auditing = undefined;
      const inv = await opts.host.providerContext().inventory();
      await inv.appendAudit({ at: new Date().toISOString(), requestId, tokenId: caller.tokenId, projectId: caller.projectId, operation, target, outcome, ...(detail ? { detail } : {}) });
    };
    /** Records a failed mutation (denied, not-found or failed, with the error's code); never throws. */
    const recordFailure = async (e: unknown) => {
      const status = statusOf(e);
      await record(status === 403 ? "denied" : status === 404 ? "not-found" : "failed", isBaremetalError(e) ? (e.messageId ?? e.code) : "internal").catch(() => undefined);
    };
    (async () => {
      if (req.method === "GET" && url.pathname === "/v1/openapi.json") return send(200, OPENAPI);
      if (ResourceEndpoints.handles(url.pathname)) {
        const caller = await opts.tokens.authenticate(req.headers.authorization);
        tokenId = caller.tokenId;
        const body = req.method === "POST" || req.method === "PUT" ? await readBody(req, res, 1024 * 1024) : {};
        if (!body || typeof body !== "object" || Array.isArray(body)) throw new BaremetalError("validation", "the request body must be a JSON object", { property: "body" });
        try {
          const answer = await resources.handle({
            caller,
            method: req.method ?? "GET",
            segments: url.pathname.split("/").slice(2),
            query: url.searchParams,
            body: body as Record<string, unknown>,
            headers: req.headers,
            audit: (a) => (auditing = { ...a, caller }),
            requestId,
          });
          await record("done");
          for (const [k, v] of Object.entries(answer.headers ?? {})) res.setHeader(k, v);
          if (answer.status === 204) {
            res.writeHead(204, { "x-request-id": requestId });
            res.end();
            log({ time: new Date().toISOString(), requestId, method: req.method ?? "", path: url.pathname, status: 204, ms: Math.round((performance.now() - started) * 10) / 10, tokenId });
            return;
          }
          return send(answer.status, answer.body);
        } catch (e) {
          await recordFailure(e);
          throw e;
        }
      }
      const action = actions.find((a) => a.method === req.method && a.pattern.test(url.pathname));
      if (action) {
        const caller = await opts.tokens.authenticate(req.headers.authorization);
        tokenId = caller.tokenId;
        const body = (await readBody(req, res)) as Record<string, unknown>;
        const validate = bodyValidator(action);
        if (!validate(body)) {
          throw invalid(validate, "body");
        }
        const params = action.pattern.exec(url.pathname)!.slice(1).map(decodeURIComponent);
        try {
          const result = await action.handle({ caller, params, body, audit: (a) => (auditing = { ...a, caller }) });
          await record("done");
          return send(200, result);
        } catch (e) {
          await recordFailure(e);
          throw e;
        }
      }
      const route = routes[url.pathname];
      const other = actions.find((a) => a.pattern.test(url.pathname));
      if (other) throw notAllowed(url.pathname, [other.method]);
      if (!route) throw new BaremetalError("not-found", `no such endpoint: ${req.method} ${url.pathname} (the API is described at /v1/openapi.json)`);
      if (req.method !== "GET") throw notAllowed(url.pathname, ["GET"]);
      const caller = await opts.tokens.authenticate(req.headers.authorization);
      tokenId = caller.tokenId;
      const query: Record<string, unknown> = Object.fromEntries(url.searchParams);
      const validate = queryValidator(url.pathname);
      if (!validate(query)) {
        throw invalid(validate, "query");
      }
      send(200, await route({ caller, query }));
    })().catch(fail);
  });
  attachConsole(server, opts); // the browser console: GET /console and the websocket on /v1/nodes/{id}/console (console.ts)
  return server;
}
