/**
 * The browser console of the tenant-facing service (issue 8, item 5): a page at GET /console
 * (console-page.ts, with xterm.js's browser build and CSS from node_modules, read at start-up:
 * no CDN, no bundler) and a websocket at /v1/nodes/{id}/console that carries the node's serial
 * console both ways.
 *
 * - Authentication: the bearer token (tokens.ts), from the `Sec-WebSocket-Protocol` header, since
 *   a browser cannot set Authorization on a websocket: the client offers `baremetal.console` and
 *   `bearer.<token>`, and the service selects `baremetal.console` (the token is never echoed,
 *   logged or audited). An `Authorization: Bearer` header works too (non-browser clients).
 * - Authorization: the policy's `baremetal:node:get_console` on the node's owner and lessee
 *   (by default system members, the owner's members and the lessee's admins and managers). A refusal answers the upgrade request with the service's error shape
 *   (`{requestId, errorCode, message}`, 401/403/404) and no websocket.
 * - Audit: every open, allowed or not, is an audit record (`baremetal:node:get_console`, the node,
 *   outcome `done`, `denied`, `unauthenticated`, `not-found` or `failed`).
 * - The BMC side: the node's BMC (the origin of its id) says over Redfish where the system's serial
 *   console is (ComputerSystem.SerialConsole.SSH: Port and ConsoleEntryCommand; else the manager's
 *   SSH endpoint, consoles.ts); the service logs in there over SSH with ITS BMC credentials
 *   (provider config bmcUsername/bmcPassword, as withDriver; the tenant never sees them), runs the
 *   entry command with a pty, and pipes bytes both ways. Either side's close closes the other.
 */
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import type * as http from "node:http";
import * as path from "node:path";
import type { Duplex } from "node:stream";
import { Client as SshClient, type ClientChannel } from "ssh2";
import { parseHostKeySetting } from "../drivers/ssh-cli/hostkeys";
import { type WebSocket, WebSocketServer } from "ws";
import { authorize } from "../core/auth";
import { BaremetalError, isBaremetalError } from "../core/errors";
import { consoleEndpoints } from "../drivers/redfish/consoles";
import { RedfishDriver } from "../drivers/redfish/driver";
import { withDriver } from "../resources/compute/node";
import type { ServiceOptions } from "./api";
import { CONSOLE_HTML, CONSOLE_JS } from "./console-page";
import type { AuthenticatedCaller } from "./tokens";

export const CONSOLE_OPERATION = "baremetal:node:get_console";
export const CONSOLE_SUBPROTOCOL = "baremetal.console";
const CONSOLE_PATH = /^\/v1\/nodes\/([^/]+)\/console$/;

interface Asset {
  type: string;
  body: Buffer;
}

/** The page and xterm.js's browser build and CSS (from the installed @xterm/xterm). */
function loadAssets(): Map<string, Asset> {
  const root = path.dirname(require.resolve("@xterm/xterm/package.json"));
  return new Map<string, Asset>([
    ["/console", { type: "text/html; charset=utf-8", body: Buffer.from(CONSOLE_HTML, "utf8") }],
    ["/console/console.js", { type: "text/javascript; charset=utf-8", body: Buffer.from(CONSOLE_JS, "utf8") }],
    ["/console/xterm.js", { type: "text/javascript; charset=utf-8", body: fs.readFileSync(path.join(root, "lib", "xterm.js")) }],
    ["/console/xterm.css", { type: "text/css; charset=utf-8", body: fs.readFileSync(path.join(root, "css", "xterm.css")) }],
  ]);
}

const PAGE_HEADERS = {
  // xterm.js sets inline styles; no inline script, nothing from elsewhere.
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
  "referrer-policy": "no-referrer",
  "x-content-type-options": "nosniff",
  "cache-control": "no-store",
};

/** The bearer token of an upgrade request: `bearer.<token>` among the offered subprotocols, else the Authorization header. */
function bearerOf(req: http.IncomingMessage): string | undefined {
  const offered = (req.headers["sec-websocket-protocol"] ?? "").split(",").map((p) => p.trim());
  const sub = offered.find((p) => p.startsWith("bearer."));
  if (sub) return `Bearer ${sub.slice("bearer.".length)}`;
  return req.headers.authorization;
}

const STATUS_TEXT: Record<number, string> = { 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable" };

function statusOf(e: unknown): number {
  if (!isBaremetalError(e)) return 500;
  if (e.code === "auth") return e.httpStatus === 401 ? 401 : 403;
  if (e.code === "not-found") return 404;
  if (e.code === "validation") return 400;
  if (e.code === "transient") return e.httpStatus === 429 ? 429 : 503;
  return 502;
}

/** Where the node's BMC serves its serial console over SSH, found over Redfish with the service's credentials. */
async function locateConsole(opts: ServiceOptions, nodeId: string): Promise<{ host: string; port: number; command?: string }> {
  const ctx = opts.host.providerContext();
  const uri = new URL(nodeId);
  const systemId = decodeURIComponent(uri.pathname.split("/").filter(Boolean).pop() ?? "");
  return withDriver({ config: ctx.config, progress: () => undefined }, { address: uri.origin }, async (driver) => {
    if (!(driver instanceof RedfishDriver)) throw new BaremetalError("validation", "this node's BMC is not a Redfish BMC: its serial console is not reachable from the browser");
    const { body: system } = await driver.client.get<{ SerialConsole?: { SSH?: { ServiceEnabled?: boolean; Port?: number; ConsoleEntryCommand?: string | null } } }>(uri.pathname);
    const ssh = system.SerialConsole?.SSH;
    if (ssh && ssh.ServiceEnabled !== false && typeof ssh.Port === "number" && ssh.Port > 0) {
      return { host: uri.hostname, port: ssh.Port, ...(ssh.ConsoleEntryCommand ? { command: ssh.ConsoleEntryCommand } : {}) };
    }
    const endpoints = await consoleEndpoints(driver.client, systemId);
    const e = endpoints.serial.find((x) => x.protocol === "SSH" && x.port);
    if (!e?.port) throw new BaremetalError("validation", "this node's BMC offers no serial console over SSH");
    return { host: endpoints.host, port: e.port };
  });
}

/** Logs in to the BMC's serial console and selects the system; resolves with the session's channel. */
function openBmcConsole(opts: ServiceOptions, where: { host: string; port: number; command?: string }): Promise<{ ssh: SshClient; channel: ClientChannel }> {
  const cfg = opts.host.providerContext().config;
  // The BMC's host key is checked before the BMC credentials are sent (as its TLS certificate is
  // on the Redfish side): against bmcSshHostKeys, or not at all when bmcVerifyTls is off.
  if (!cfg.bmcSshHostKeys && cfg.bmcVerifyTls) {
    return Promise.reject(
      new BaremetalError("backend", "the service has no bmcSshHostKeys setting, so it cannot check the BMC's SSH host key and will not send it the BMC credentials: set bmcSshHostKeys (known_hosts lines of the BMCs' serial consoles), or bmcVerifyTls false for lab BMCs"),
    );
  }
  const policy = cfg.bmcSshHostKeys ? parseHostKeySetting(cfg.bmcSshHostKeys, "bmcSshHostKeys", "BMC", "bmcSshHostKeys") : undefined;
  return new Promise((resolve, reject) => {
    const ssh = new SshClient();
    let refusal: string | undefined;
    const fail = (e: Error) => {
      ssh.end();
      // Never the BMC's answer verbatim to a tenant (statusOf makes it a 502 with a generic text).
      reject(new BaremetalError("backend", `the BMC's serial console did not open: ${refusal ?? e.message}`));
    };
    ssh.once("error", fail);
    ssh.once("ready", () => {
      const pty = { term: "xterm-256color", cols: 100, rows: 30 };
      const done = (err: Error | undefined, channel: ClientChannel) => {
        if (err) return fail(err);
        ssh.off("error", fail);
        resolve({ ssh, channel });
      };
      if (where.command) ssh.exec(where.command, { pty }, done);
      else ssh.shell(pty, done);
    });
    ssh.connect({
      host: where.host,
      port: where.port,
      username: cfg.bmcUsername ?? "",
      password: cfg.bmcPassword ?? "",
      readyTimeout: 10_000,
      hostVerifier: (key: Buffer) => {
        refusal = policy?.check(where.host, where.port, key);
        return refusal === undefined;
      },
    });
  });
}

/** Serves GET /console (+ assets) and the websocket upgrade on /v1/nodes/{id}/console. */
export function attachConsole(server: http.Server, opts: ServiceOptions): void {
  const assets = loadAssets();
  const log = opts.log ?? ((e) => process.stdout.write(`${JSON.stringify(e)}\n`));
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 64 * 1024,
    handleProtocols: (protocols) => (protocols.has(CONSOLE_SUBPROTOCOL) ? CONSOLE_SUBPROTOCOL : false),
  });

  // The page: answered before the API's own handler (which would say 404).
  const apiHandlers = server.listeners("request") as Array<(req: http.IncomingMessage, res: http.ServerResponse) => void>;
  server.removeAllListeners("request");
  server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const pathname = new URL(req.url ?? "/", "http://service").pathname;
    const asset = req.method === "GET" || req.method === "HEAD" ? assets.get(pathname) : undefined;
    if (!asset) {
      for (const h of apiHandlers) h.call(server, req, res);
      return;
    }
    const started = performance.now();
    const requestId = randomUUID();
    res.writeHead(200, { "content-type": asset.type, "content-length": asset.body.length, "x-request-id": requestId, ...PAGE_HEADERS });
    res.end(req.method === "HEAD" ? undefined : asset.body);
    log({ time: new Date().toISOString(), requestId, method: req.method ?? "", path: pathname, status: 200, ms: Math.round((performance.now() - started) * 10) / 10 });
  });

  const sessions = new Set<{ ws: WebSocket; ssh: SshClient }>();
  server.on("close", () => {
    for (const s of sessions) {
      s.ssh.end();
      s.ws.terminate();
    }
  });

  server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    const started = performance.now();
    const requestId = randomUUID();
    const pathname = new URL(req.url ?? "/", "http://service").pathname;
    const m = CONSOLE_PATH.exec(pathname);
    let caller: AuthenticatedCaller | undefined;
    const line = (status: number, errorCode?: string, error?: string) =>
      log({ time: new Date().toISOString(), requestId, method: req.method ?? "GET", path: pathname, status, ms: Math.round((performance.now() - started) * 10) / 10, ...(caller ? { tokenId: caller.tokenId } : {}), ...(errorCode ? { errorCode } : {}), ...(error ? { error } : {}) });
    const refuse = (e: unknown) => {
      const status = statusOf(e);
      const errorCode = isBaremetalError(e) ? (e.messageId ?? e.code) : "internal";
      const message = isBaremetalError(e) && status < 500 ? e.message : `the service failed (request ${requestId}); the operator's log has the details`;
      const body = JSON.stringify({ requestId, errorCode, message });
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
      );
      line(status, errorCode, status >= 500 ? (e instanceof Error ? e.message : String(e)) : undefined);
    };
    socket.on("error", () => undefined);
    if (!m) return refuse(new BaremetalError("not-found", `no websocket endpoint at ${pathname} (the console is /v1/nodes/{id}/console)`));
    let nodeId: string;
    try {
      nodeId = decodeURIComponent(m[1]);
    } catch {
      return refuse(new BaremetalError("validation", "the node id in the path is not valid percent-encoding", { property: "id" }));
    }

    const audit = async (outcome: string, detail?: string) => {
      const inv = await opts.host.providerContext().inventory();
      await inv.appendAudit({ at: new Date().toISOString(), requestId, ...(caller ? { tokenId: caller.tokenId, projectId: caller.projectId } : {}), operation: CONSOLE_OPERATION, target: nodeId, outcome, ...(detail ? { detail } : {}) });
    };

    (async () => {
      try {
        caller = await opts.tokens.authenticate(bearerOf(req));
      } catch (e) {
        await audit("unauthenticated", isBaremetalError(e) ? (e.messageId ?? e.code) : "internal").catch(() => undefined);
        return refuse(e);
      }
      let bmc: { ssh: SshClient; channel: ClientChannel };
      try {
        const ctx = { ...opts.host.providerContext(), caller };
        const node = await (await ctx.inventory()).getNode(nodeId);
        if (!node) throw new BaremetalError("not-found", `no node ${nodeId}`);
        authorize(ctx.policy, caller, CONSOLE_OPERATION, { "node.owner": node.owner, "node.lessee": node.lessee });
        bmc = await openBmcConsole(opts, await locateConsole(opts, nodeId));
      } catch (e) {
        const status = statusOf(e);
        await audit(status === 403 ? "denied" : status === 404 ? "not-found" : "failed", isBaremetalError(e) ? (e.messageId ?? e.code) : "internal").catch(() => undefined);
        return refuse(e);
      }
      if (socket.destroyed) {
        bmc.ssh.end();
        await audit("failed", "the browser went away").catch(() => undefined);
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        const session = { ws, ssh: bmc.ssh };
        sessions.add(session);
        line(101);
        void audit("done").catch(() => undefined);
        const { channel, ssh } = bmc;
        let closed = false;
        const closeBoth = (code: number, reason: string) => {
          if (closed) return;
          closed = true;
          sessions.delete(session);
          ssh.end();
          if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(code, reason);
        };
        channel.on("data", (b: Buffer) => ws.readyState === ws.OPEN && ws.send(b, { binary: true }));
        channel.stderr.on("data", (b: Buffer) => ws.readyState === ws.OPEN && ws.send(b, { binary: true }));
        channel.on("close", () => closeBoth(1000, "the BMC closed the console"));
        ssh.on("error", () => closeBoth(1011, "the BMC connection failed"));
        ssh.on("close", () => closeBoth(1000, "the BMC closed the console"));
        ws.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => {
          const b = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
          channel.write(b);
        });
        ws.on("close", () => closeBoth(1000, "closed"));
        ws.on("error", () => closeBoth(1011, "websocket error"));
      });
    })().catch((e: unknown) => refuse(e));
  });
}
