/**
 * Our OVSDB client: JSON-RPC 1.0 over one TCP or TLS connection, as RFC 7047 section 4 describes.
 *
 * - Remotes `tcp:HOST:PORT` and `ssl:HOST:PORT` (IPv6 as `[addr]`). TLS verifies the server by
 *   default, against the system's roots plus an optional CA bundle; ovsdb-server's SSL remotes
 *   require a client certificate, given as `tls.cert`/`tls.key`.
 * - The connection is opened on the first request and again after it was lost; every request has an
 *   id of ours, a deadline and an optional AbortSignal (a `transact` given up is also `cancel`led).
 * - The server's `echo` requests (its inactivity probe) are answered at once; other notifications
 *   (`update`, `locked`, `stolen`) go to `onNotification` and are otherwise ignored.
 * - Every failure is a `BaremetalError`. A transaction whose operation failed throws an
 *   `OvsdbTransactionError` naming the operation (its index, what it is, OVSDB's error and details).
 */
import * as net from "node:net";
import * as tls from "node:tls";
import { BaremetalError, ErrorCode, isBaremetalError, validationError } from "../../core/errors";
import { decodeUuid, describeOperation, Operation, OperationResult } from "./data";
import { JsonStreamDecoder, OvsdbProtocolError } from "./framing";

export interface OvsdbTlsOptions {
  /** Verify the server's certificate (default true). */
  verify?: boolean;
  /** PEM: extra trusted certificates (the CA that signed the server's certificate). */
  ca?: string;
  /** PEM client certificate and private key (ovsdb-server's SSL remotes require one). */
  cert?: string;
  key?: string;
  /** Name to verify the certificate against (default: the host of the remote). */
  servername?: string;
}

export interface OvsdbClientOptions {
  /** `tcp:HOST:PORT` or `ssl:HOST:PORT`. */
  url: string;
  tls?: OvsdbTlsOptions;
  /** Deadline of each request in ms (default 30000). */
  requestTimeoutMs?: number;
  /** Deadline of connecting, TLS handshake included, in ms (default 10000). */
  connectTimeoutMs?: number;
  /** Cancels everything in flight and everything after. */
  signal?: AbortSignal;
  /** Called once per request answered or failed. */
  onRequest?: (e: { method: string; ms: number; ok: boolean }) => void;
  /** Notifications and requests of the server other than `echo`. */
  onNotification?: (method: string, params: unknown) => void;
  /** Property name used in validation errors about the URL (default "url"). */
  urlProperty?: string;
  maxMessageBytes?: number;
}

export interface OvsdbRemote {
  protocol: "tcp" | "ssl";
  host: string;
  port: number;
}

export interface RequestOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** Parses `tcp:HOST:PORT` / `ssl:HOST:PORT` (`[v6addr]` for IPv6). */
export function parseOvsdbUrl(url: string, property = "url"): OvsdbRemote {
  const m = /^(tcp|ssl):(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s]+)):(\d{1,5})$/.exec(url ?? "");
  if (!m) {
    throw validationError(property, `OVSDB remote must be tcp:HOST:PORT or ssl:HOST:PORT (e.g. ssl:10.0.0.2:6640), got ${JSON.stringify(url)}`);
  }
  const port = Number(m[4]);
  if (port < 1 || port > 65535) throw validationError(property, `OVSDB remote port must be 1..65535, got ${port}`);
  const host = m[2] ?? m[3];
  if (m[2] !== undefined && net.isIPv6(host) === false) throw validationError(property, `not an IPv6 address: [${host}]`);
  return { protocol: m[1] as "tcp" | "ssl", host, port };
}

/** A transaction whose operation (or commit) failed. */
export class OvsdbTransactionError extends BaremetalError {
  constructor(
    code: ErrorCode,
    message: string,
    /** Index of the failing operation; equal to the number of operations when the commit failed. */
    readonly index: number,
    /** The failing operation (undefined when the commit failed). */
    readonly operation: Operation | undefined,
    /** OVSDB's error string ("timed out", "constraint violation", ...). */
    readonly ovsdbError: string,
    readonly ovsdbDetails: string | undefined,
  ) {
    super(code, message, { messageId: ovsdbError, details: ovsdbDetails ? [ovsdbDetails] : [] });
  }
}

export function isOvsdbTransactionError(e: unknown): e is OvsdbTransactionError {
  return isBaremetalError(e) && typeof (e as OvsdbTransactionError).ovsdbError === "string" && typeof (e as OvsdbTransactionError).index === "number";
}

const TLS_CODES = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "INVALID_CA",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "EPROTO",
]);
const UNSENT_CODES = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "EADDRNOTAVAIL"]);

interface Pending {
  method: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

type Conn = { socket: net.Socket; decoder: JsonStreamDecoder; ready: Promise<void> };

export class OvsdbClient {
  readonly remote: OvsdbRemote;
  readonly url: string;
  /** Counters: requests sent, transactions sent, echo requests of the server answered, connections opened. */
  readonly stats = { requests: 0, transactions: 0, echoesAnswered: 0, notifications: 0, connections: 0 };
  private readonly opts: OvsdbClientOptions;
  private conn: Conn | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closed = false;

  constructor(opts: OvsdbClientOptions) {
    this.opts = opts;
    this.url = opts.url;
    this.remote = parseOvsdbUrl(opts.url, opts.urlProperty);
    if (this.remote.protocol === "ssl" && opts.tls?.ca !== undefined && !/-----BEGIN CERTIFICATE-----/.test(opts.tls.ca)) {
      throw validationError("tls.ca", "the CA bundle must be PEM text with at least one -----BEGIN CERTIFICATE----- block");
    }
    if ((opts.tls?.cert === undefined) !== (opts.tls?.key === undefined)) {
      throw validationError(opts.tls?.cert === undefined ? "tls.cert" : "tls.key", "a client certificate needs both tls.cert and tls.key");
    }
  }

  // ---- public requests ---------------------------------------------------------------------------

  listDbs(o?: RequestOptions): Promise<string[]> {
    return this.request("list_dbs", [], o) as Promise<string[]>;
  }

  getSchema(db: string, o?: RequestOptions): Promise<OvsdbSchema> {
    return this.request("get_schema", [db], o) as Promise<OvsdbSchema>;
  }

  echo(params: unknown[] = [], o?: RequestOptions): Promise<unknown[]> {
    return this.request("echo", params, o) as Promise<unknown[]>;
  }

  /**
   * Runs the operations as one transaction. Resolves with one result per operation; throws an
   * OvsdbTransactionError when an operation or the commit failed (nothing was changed then).
   */
  async transact(db: string, operations: Operation[], o?: RequestOptions): Promise<OperationResult[]> {
    this.stats.transactions++;
    const raw = await this.request("transact", [db, ...operations], o, true);
    if (!Array.isArray(raw)) throw new OvsdbProtocolError(`transact on ${this.url}: the result is not an array: ${JSON.stringify(raw)}`);
    for (let i = 0; i < raw.length; i++) {
      const r = raw[i] as { error?: unknown; details?: unknown } | null;
      if (r && typeof r === "object" && typeof r.error === "string") {
        throw transactionError(this.url, db, operations, i, r.error, typeof r.details === "string" ? r.details : undefined);
      }
    }
    return operations.map((_, i) => {
      const r = (raw[i] ?? {}) as Record<string, unknown>;
      const out: OperationResult = {};
      if (Array.isArray(r.rows)) out.rows = r.rows as Record<string, unknown>[];
      if (typeof r.count === "number") out.count = r.count;
      if (r.uuid !== undefined) out.uuid = decodeUuid(r.uuid);
      return out;
    });
  }

  /** Sends a request and waits for its answer; the answer's `error` becomes a BaremetalError. */
  async request(method: string, params: unknown[], o: RequestOptions = {}, cancellable = false): Promise<unknown> {
    const started = Date.now();
    const signals = [this.opts.signal, o.signal].filter((s): s is AbortSignal => !!s);
    const cancelled = () => new BaremetalError("cancelled", `${method} to ovsdb-server at ${this.url} was cancelled`);
    if (this.closed) throw new BaremetalError("internal", `the OVSDB client of ${this.url} is closed`);
    if (signals.some((s) => s.aborted)) throw cancelled();
    const timeoutMs = o.timeoutMs ?? this.opts.requestTimeoutMs ?? 30000;
    let ok = false;
    let id: number | undefined;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    let settled = false;
    try {
      const result = await new Promise<unknown>((resolve, reject) => {
        timer = setTimeout(() => reject(new BaremetalError("timeout", `ovsdb-server at ${this.url} did not answer ${method} within ${timeoutMs} ms`)), timeoutMs);
        onAbort = () => reject(cancelled());
        for (const s of signals) s.addEventListener("abort", onAbort, { once: true });
        this.connection().then(
          (conn) => {
            if (settled) return; // given up while connecting: never sent
            id = this.nextId++;
            this.pending.set(id, { method, resolve, reject });
            this.stats.requests++;
            this.send(conn, { id, method, params });
          },
          reject,
        );
      });
      settled = true;
      ok = true;
      return result;
    } catch (e) {
      settled = true;
      // Given up (timeout, cancelled): forget the id; a blocking transact is also cancelled on the server.
      if (id !== undefined && this.pending.delete(id) && cancellable && this.conn) {
        this.send(this.conn, { id: null, method: "cancel", params: [id] });
      }
      throw e;
    } finally {
      if (timer) clearTimeout(timer);
      if (onAbort) for (const s of signals) s.removeEventListener("abort", onAbort);
      this.opts.onRequest?.({ method, ms: Date.now() - started, ok });
    }
  }

  /** Closes the connection; requests in flight fail. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const conn = this.conn;
    this.conn = undefined;
    this.failAll(new BaremetalError("cancelled", `the OVSDB client of ${this.url} was closed`));
    if (conn) {
      await new Promise<void>((resolve) => {
        if (conn.socket.destroyed) return resolve();
        conn.socket.once("close", () => resolve());
        conn.socket.end();
        setTimeout(() => conn.socket.destroy(), 1000).unref();
      });
    }
  }

  // ---- connection ----------------------------------------------------------------------------------

  private connection(): Promise<Conn> {
    const existing = this.conn;
    if (existing && !existing.socket.destroyed) return existing.ready.then(() => existing);
    const { host, port, protocol } = this.remote;
    const decoder = new JsonStreamDecoder({ maxMessageBytes: this.opts.maxMessageBytes });
    const connectTimeoutMs = this.opts.connectTimeoutMs ?? 10000;
    let socket: net.Socket;
    if (protocol === "ssl") {
      const t = this.opts.tls ?? {};
      socket = tls.connect({
        host,
        port,
        servername: t.servername ?? (net.isIP(host) ? undefined : host),
        rejectUnauthorized: t.verify ?? true,
        ca: t.ca !== undefined ? [...tls.rootCertificates, t.ca] : undefined,
        cert: t.cert,
        key: t.key,
      });
    } else {
      socket = net.connect({ host, port });
    }
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30000);
    this.stats.connections++;
    const conn: Conn = {
      socket,
      decoder,
      ready: new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          socket.destroy();
          reject(new BaremetalError("timeout", `connecting to ovsdb-server at ${this.url} took longer than ${connectTimeoutMs} ms`, { unsent: true }));
        }, connectTimeoutMs);
        socket.once(protocol === "ssl" ? "secureConnect" : "connect", () => {
          clearTimeout(timer);
          resolve();
        });
        socket.once("error", (e) => {
          clearTimeout(timer);
          reject(this.socketError(e, true));
        });
      }),
    };
    conn.ready.catch(() => undefined);
    socket.on("data", (chunk: Buffer) => {
      let messages: unknown[];
      try {
        messages = decoder.push(chunk);
      } catch (e) {
        this.drop(conn, isBaremetalError(e) ? e : new OvsdbProtocolError(String(e)));
        return;
      }
      for (const m of messages) this.dispatch(conn, m);
    });
    socket.on("error", (e) => this.drop(conn, this.socketError(e, false)));
    socket.on("close", () =>
      this.drop(conn, new BaremetalError("transient", `ovsdb-server at ${this.url} closed the connection; whether a transaction in flight was applied is unknown`)),
    );
    this.conn = conn;
    return conn.ready.then(() => conn);
  }

  private send(conn: Conn, msg: unknown): void {
    if (!conn.socket.destroyed) conn.socket.write(JSON.stringify(msg));
  }

  private dispatch(conn: Conn, raw: unknown): void {
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      this.drop(conn, new OvsdbProtocolError(`ovsdb-server at ${this.url} sent a message that is not an object: ${JSON.stringify(raw)}`));
      return;
    }
    const msg = raw as { id?: unknown; method?: unknown; params?: unknown; result?: unknown; error?: unknown };
    if (typeof msg.method === "string") {
      if (msg.method === "echo" && msg.id !== undefined && msg.id !== null) {
        this.stats.echoesAnswered++;
        this.send(conn, { id: msg.id, result: msg.params ?? [], error: null });
      } else {
        this.stats.notifications++;
        this.opts.onNotification?.(msg.method, msg.params);
        // A request we do not serve still gets an answer, so that the server does not wait forever.
        if (msg.id !== undefined && msg.id !== null) this.send(conn, { id: msg.id, result: null, error: { error: "not supported", details: `method ${msg.method}` } });
      }
      return;
    }
    if (typeof msg.id !== "number") return; // not an answer to us
    const p = this.pending.get(msg.id);
    if (!p) return; // an answer to a request we gave up
    this.pending.delete(msg.id);
    if (msg.error !== null && msg.error !== undefined) p.reject(rpcError(this.url, p.method, msg.error));
    else p.resolve(msg.result);
  }

  /** The connection is unusable: fail what waits on it; the next request opens a new one. */
  private drop(conn: Conn, err: BaremetalError): void {
    if (this.conn === conn) this.conn = undefined;
    if (!conn.socket.destroyed) conn.socket.destroy();
    this.failAll(err);
  }

  private failAll(err: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(err);
  }

  private socketError(e: unknown, connecting: boolean): BaremetalError {
    const code = (e as NodeJS.ErrnoException)?.code;
    const message = (e instanceof Error ? e.message : String(e)).trim();
    const cause = new Error(code ? `${code}: ${message}` : message);
    if (this.remote.protocol === "ssl" && code && (TLS_CODES.has(code) || code.startsWith("ERR_SSL_") || code.startsWith("ERR_TLS_"))) {
      const fix = code === "ERR_TLS_CERT_ALTNAME_INVALID"
        ? "connect with a name or address the certificate lists"
        : /ALERT|EPROTO/.test(code)
          ? "the server refused the handshake: check that the client certificate (tls.cert/tls.key) is signed by a CA the server trusts"
          : "give the CA that signed the server's certificate as the CA bundle (tls.ca), or turn verification off";
      return new BaremetalError("tls", `TLS with ovsdb-server at ${this.url} failed (${code}): ${message}; ${fix}`, { cause, details: [message] });
    }
    if (code === "ETIMEDOUT") return new BaremetalError("timeout", `ovsdb-server at ${this.url} did not answer in time (${code})`, { cause, unsent: connecting });
    const unsent = connecting || (code !== undefined && UNSENT_CODES.has(code));
    return new BaremetalError(
      "transient",
      connecting ? `cannot connect to ovsdb-server at ${this.url}: ${message}` : `connection to ovsdb-server at ${this.url} failed: ${message}`,
      { cause, unsent },
    );
  }
}

export interface OvsdbSchema {
  name: string;
  version: string;
  cksum?: string;
  tables: Record<string, { columns: Record<string, { type: unknown; ephemeral?: boolean; mutable?: boolean }>; maxRows?: number; isRoot?: boolean; indexes?: string[][] }>;
}

function rpcError(url: string, method: string, error: unknown): BaremetalError {
  const e = (typeof error === "object" && error !== null ? error : { error: String(error) }) as { error?: unknown; details?: unknown };
  const name = typeof e.error === "string" ? e.error : JSON.stringify(error);
  const details = typeof e.details === "string" ? e.details : undefined;
  const code: ErrorCode = name === "unknown database" ? "not-found" : name === "canceled" ? "cancelled" : "backend";
  return new BaremetalError(code, `ovsdb-server at ${url} refused ${method}: ${name}${details ? ` (${details})` : ""}`, {
    messageId: name,
    details: details ? [details] : [],
  });
}

const TRANSACTION_CODES: Record<string, ErrorCode> = {
  "not owner": "auth",
  "permission error": "auth",
  "resources exhausted": "transient",
  "I/O error": "transient",
  "timed out": "timeout",
  canceled: "cancelled",
};

function transactionError(url: string, db: string, operations: Operation[], index: number, error: string, details: string | undefined): OvsdbTransactionError {
  const op = index < operations.length ? operations[index] : undefined;
  // A failed `wait` is a failed precondition: the rows are not what the caller expected.
  const code: ErrorCode = op?.op === "wait" && error === "timed out" ? "conflict" : (TRANSACTION_CODES[error] ?? "backend");
  const where = op
    ? `operation ${index + 1} of ${operations.length} (${describeOperation(op)})`
    : `the commit of ${operations.length} operations`;
  const message = `transaction on ${db} at ${url} failed: ${where}: ${error}${details ? `: ${details}` : ""}`;
  return new OvsdbTransactionError(code, message, index, op, error, details);
}
