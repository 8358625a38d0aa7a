/**
 * A small S3 REST client: path-style requests signed with SigV4 (sigv4.ts) over node's http/https,
 * keep-alive, S3 error documents mapped to BaremetalErrors, retries of what is safe to replay.
 *
 * - Address: `s3://HOST[:PORT]/BUCKET[/PREFIX]?region=R&tls=true|false` (tls defaults to true,
 *   region to us-east-1; port to 443 with TLS, 80 without). Path-style addressing
 *   (`/BUCKET/KEY`), which every S3-compatible store serves (radosgw, MinIO, ...).
 * - TLS is verified by default (system CAs, or `caBundle` PEM); `verifyTls: false` turns it off.
 * - Every payload is hashed and signed (`x-amz-content-sha256`), so the store checks the bytes it
 *   got are the bytes we signed. Bodies are Buffers (the driver uploads in parts), so a request can
 *   be replayed: network failures and 500/502/503/504/SlowDown are retried (3 attempts, backoff,
 *   Retry-After honoured) for idempotent requests, and for any request that never reached the store.
 * - Errors (see `s3Error`): refused credentials → `auth` naming the target and saying to check the
 *   access key and secret; a store that cannot be reached → `transient` with `unsent`; a missing
 *   bucket → `not-found` saying to create it; TLS failures → `tls`; the request timeout → `timeout`;
 *   the caller's signal → `cancelled`. The secret never appears in any of them.
 */
import * as http from "node:http";
import * as https from "node:https";
import { createHash } from "node:crypto";
import { BaremetalError, validationError } from "../../core/errors";
import { errorCode, messageOf, retryAfterMs, seconds, sleep } from "../http";
import { createSigner, EMPTY_SHA256, amzDate, sha256Hex, uriEncode, type Signer } from "./sigv4";
import { parseXml, text, type XmlNode } from "./xml";

export interface S3Endpoint {
  host: string;
  port: number;
  tls: boolean;
  bucket: string;
  /** Key prefix inside the bucket, without leading slash; ends with `/` when not empty. */
  prefix: string;
  region: string;
}

/** Bucket names as S3 allows them (3-63 chars, lower case, digits, dots, hyphens). */
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function parseS3Address(address: string, property = "address"): S3Endpoint {
  let u: URL;
  try {
    u = new URL(address);
  } catch {
    throw validationError(property, `'${address}' is not a URL; write s3://HOST[:PORT]/BUCKET[/PREFIX]?region=REGION&tls=true|false`);
  }
  if (u.protocol !== "s3:") throw validationError(property, `'${u.protocol}' is not s3:; write s3://HOST[:PORT]/BUCKET[/PREFIX]`);
  if (u.username || u.password) throw validationError(property, "credentials do not belong in the address: give accessKeyId and secretAccessKey as the target's (secret) credentials");
  if (!u.hostname) throw validationError(property, "no host: write s3://HOST[:PORT]/BUCKET[/PREFIX]");
  const parts = decodeURIComponent(u.pathname).split("/").filter((p) => p !== "");
  const bucket = parts[0];
  if (!bucket) throw validationError(property, "no bucket: write s3://HOST[:PORT]/BUCKET[/PREFIX]");
  if (!BUCKET_RE.test(bucket) || bucket.includes("..")) throw validationError(property, `'${bucket}' is not a valid bucket name (3-63 characters: lower-case letters, digits, dots and hyphens)`);
  for (const k of u.searchParams.keys()) if (k !== "region" && k !== "tls") throw validationError(property, `unknown address parameter '${k}'; known: region, tls`);
  const tlsParam = u.searchParams.get("tls");
  if (tlsParam !== null && tlsParam !== "true" && tlsParam !== "false") throw validationError(property, `tls=${tlsParam}: write tls=true or tls=false`);
  const tls = tlsParam !== "false";
  const region = u.searchParams.get("region") || "us-east-1";
  if (!/^[a-z0-9-]+$/i.test(region)) throw validationError(property, `'${region}' is not a region name`);
  const prefix = parts.slice(1).join("/");
  return {
    host: u.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: u.port ? Number(u.port) : tls ? 443 : 80,
    tls,
    bucket,
    prefix: prefix ? prefix + "/" : "",
    region,
  };
}

/** `s3://host:port/bucket/prefix` (no credentials, no query). */
export function describeEndpoint(e: S3Endpoint): string {
  const host = e.host.includes(":") ? `[${e.host}]` : e.host;
  return `s3://${host}:${e.port}/${e.bucket}${e.prefix ? "/" + e.prefix.replace(/\/$/, "") : ""}`;
}

export interface S3ClientOptions {
  endpoint: S3Endpoint;
  accessKeyId: string;
  secretAccessKey: string;
  verifyTls?: boolean;
  caBundle?: string;
  /** Idle time of one request before it fails with `timeout` (default 120000 ms). */
  requestTimeoutMs?: number;
  /** Sockets kept to the store (default 8). */
  maxSockets?: number;
  /** Attempts for a replayable request (default 3). */
  attempts?: number;
}

export interface S3Request {
  method: "GET" | "HEAD" | "PUT" | "POST" | "DELETE";
  /** Full object key inside the bucket (prefix included); absent for bucket requests. */
  key?: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: Buffer;
  /** Hex sha256 of the body, when the caller has it already. */
  bodySha256?: string;
  signal?: AbortSignal;
  /** What the request does, for messages ("upload of part 3 of backups/x"). */
  what: string;
  /** Safe to replay after it may have reached the store (default: GET/HEAD/PUT/DELETE yes, POST no). */
  idempotent?: boolean;
  /** Return the body as a stream instead of reading it (successful answers only). */
  stream?: boolean;
}

export interface S3Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** The body (absent when `stream`). */
  body: Buffer;
  stream?: http.IncomingMessage;
}

/** The store's error document: Code and Message. */
export interface S3ErrorBody {
  code?: string;
  message?: string;
}

const UNSENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL", "EADDRINUSE"]);
const TLS_CODES = /^(CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|ERR_TLS_|ERR_SSL_|HOSTNAME_MISMATCH)/;
const MAX_BODY = 64 << 20;

class Timeout extends Error {}

export class S3Client {
  readonly endpoint: S3Endpoint;
  readonly description: string;
  private readonly signer: Signer;
  private readonly agent: http.Agent;
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly hostHeader: string;

  constructor(opts: S3ClientOptions) {
    this.endpoint = opts.endpoint;
    this.description = describeEndpoint(opts.endpoint);
    this.signer = createSigner(opts.accessKeyId, opts.secretAccessKey, opts.endpoint.region);
    this.timeoutMs = opts.requestTimeoutMs ?? 120000;
    this.attempts = Math.max(1, opts.attempts ?? 3);
    const e = opts.endpoint;
    const hostName = e.host.includes(":") ? `[${e.host}]` : e.host;
    this.hostHeader = (e.tls && e.port === 443) || (!e.tls && e.port === 80) ? hostName : `${hostName}:${e.port}`;
    const agentOpts = { keepAlive: true, maxSockets: opts.maxSockets ?? 8, maxFreeSockets: opts.maxSockets ?? 8, scheduling: "lifo" as const };
    this.agent = e.tls
      ? new https.Agent({ ...agentOpts, rejectUnauthorized: opts.verifyTls !== false, ...(opts.caBundle ? { ca: opts.caBundle } : {}) })
      : new http.Agent(agentOpts);
  }

  close(): void {
    this.agent.destroy();
  }

  /** The path of a key (or of the bucket), encoded as sent and signed. */
  private path(key?: string): string {
    return "/" + uriEncode(this.endpoint.bucket) + (key === undefined ? "" : "/" + uriEncode(key, true));
  }

  async request(req: S3Request): Promise<S3Response> {
    const idempotent = req.idempotent ?? req.method !== "POST";
    for (let attempt = 1; ; attempt++) {
      const last = attempt >= this.attempts || req.signal?.aborted;
      let res: S3Response;
      try {
        res = await this.once(req);
      } catch (e) {
        const err = this.networkError(e, req);
        if (err.code === "transient" && !last && (idempotent || err.unsent)) {
          await sleep(backoff(attempt), req.signal, req.what);
          continue;
        }
        throw err;
      }
      if (res.status < 300) return res;
      const body = req.method !== "HEAD" ? parseErrorBody(res.body) : {};
      const err = this.s3Error(res.status, body, req, res.headers);
      // 503 / SlowDown: the store refused to start the work, so even a POST may go again.
      if (err.code === "transient" && !last && (idempotent || res.status === 503 || body.code === "SlowDown")) {
        await sleep(backoff(attempt, err.retryAfterSeconds), req.signal, req.what);
        continue;
      }
      throw err;
    }
  }

  private once(req: S3Request): Promise<S3Response> {
    const body = req.body ?? Buffer.alloc(0);
    const payloadSha256 = req.bodySha256 ?? (body.length ? sha256Hex(body) : EMPTY_SHA256);
    const query = req.query ?? {};
    const now = new Date();
    const headers: Record<string, string> = {
      host: this.hostHeader,
      "x-amz-content-sha256": payloadSha256,
      "x-amz-date": amzDate(now),
      ...lowerKeys(req.headers ?? {}),
    };
    if (req.method === "PUT" || req.method === "POST" || body.length) headers["content-length"] = String(body.length);
    const encodedPath = this.path(req.key);
    const authorization = this.signer.authorization({ method: req.method, encodedPath, query, headers, payloadSha256, date: now });
    const qs = Object.keys(query).length ? "?" + Object.entries(query).map(([k, v]) => (v === "" ? uriEncode(k) : `${uriEncode(k)}=${uriEncode(v)}`)).join("&") : "";
    const mod = this.endpoint.tls ? https : http;
    return new Promise<S3Response>((resolve, reject) => {
      if (req.signal?.aborted) return reject(abortError());
      const r = mod.request(
        {
          host: this.endpoint.host,
          port: this.endpoint.port,
          method: req.method,
          path: encodedPath + qs,
          headers: { ...headers, authorization },
          agent: this.agent,
          ...(req.signal ? { signal: req.signal } : {}),
        },
        (res) => {
          const status = res.statusCode ?? 0;
          if (req.stream && status < 300) {
            r.setTimeout(0);
            return resolve({ status, headers: res.headers, body: Buffer.alloc(0), stream: res });
          }
          const chunks: Buffer[] = [];
          let n = 0;
          res.on("data", (c: Buffer) => {
            n += c.length;
            if (n <= MAX_BODY) chunks.push(c);
          });
          res.once("end", () => resolve({ status, headers: res.headers, body: Buffer.concat(chunks) }));
          res.once("error", reject);
          res.once("aborted", () => reject(Object.assign(new Error("the store closed the connection mid-answer"), { code: "ECONNRESET" })));
        },
      );
      r.setTimeout(this.timeoutMs, () => r.destroy(new Timeout(`no answer within ${this.timeoutMs} ms`)));
      r.once("error", reject);
      r.end(body);
    });
  }

  /** Maps a failure that is not an HTTP answer (connection, TLS, timeout, abort). */
  private networkError(e: unknown, req: S3Request): BaremetalError {
    if (e instanceof BaremetalError) return e;
    if (req.signal?.aborted || (e as { name?: string })?.name === "AbortError") return new BaremetalError("cancelled", `cancelled during ${req.what} at ${this.description}`, { cause: e });
    if (e instanceof Timeout)
      return new BaremetalError(
        "timeout",
        `${req.what} at ${this.description}: ${e.message}; check the store's health or raise requestTimeoutMs${this.endpoint.tls ? " (a store that serves plain HTTP never finishes the TLS handshake: then add tls=false to the address)" : ""}`,
        { cause: e },
      );
    const code = errorCode(e) ?? "";
    if (TLS_CODES.test(code))
      return new BaremetalError("tls", `TLS with ${this.description} failed (${code}); give its CA as caBundle (PEM), connect by a name its certificate lists, or set verifyTls: false`, { property: "address", cause: e });
    if (/EPROTO|wrong version number|packet length too long/i.test(code + " " + messageOf(e)))
      return new BaremetalError("tls", `TLS with ${this.description} failed (${messageOf(e)}): if the store serves plain HTTP, add tls=false to the address`, { property: "address", cause: e });
    const unsent = UNSENT.has(code);
    return new BaremetalError("transient", `cannot reach the backup target ${this.description} (${code || messageOf(e)}) during ${req.what}: check that the store runs and the address is right`, { unsent, cause: e });
  }

  /** Maps an S3 error answer. */
  s3Error(status: number, body: S3ErrorBody, req: Pick<S3Request, "what" | "key" | "method">, headers: http.IncomingHttpHeaders = {}): BaremetalError {
    const code = body.code;
    const d = this.description;
    const opt = { httpStatus: status, ...(code ? { messageId: code } : {}) };
    const detail = body.message && body.message !== code ? `: ${body.message}` : "";
    if (code === "RequestTimeTooSkewed")
      return new BaremetalError("backend", `${d} refused ${req.what}: the clock of this machine differs from the store's by more than 15 minutes; fix the time (NTP)`, opt);
    if (code === "AuthorizationHeaderMalformed" || code === "PermanentRedirect" || status === 301)
      return new BaremetalError("validation", `${d} refused ${req.what} (${code ?? status})${detail}: the bucket lives in another region; set ?region=... in the address to the bucket's region`, { ...opt, property: "address" });
    if (status === 401 || (status === 403 && code !== "AccessDenied" && code !== "AllAccessDisabled")) {
      return new BaremetalError("auth", `the backup target ${d} refused the credentials (${code ?? `HTTP ${status}`}) for ${req.what}: check the access key id and secret access key of this target`, opt);
    }
    if (status === 403)
      return new BaremetalError("auth", `the backup target ${d} denied ${req.what} (${code}): check that the access key id and secret are this target's, and that its user may read and write bucket '${this.endpoint.bucket}'`, opt);
    if (code === "NoSuchBucket" || (status === 404 && req.key === undefined))
      return new BaremetalError("not-found", `bucket '${this.endpoint.bucket}' does not exist at ${d}: create it first (S3 CreateBucket, e.g. 'aws s3 mb' or 's3cmd mb'), or fix the address`, opt);
    if (code === "NoSuchUpload") return new BaremetalError("not-found", `${req.what} at ${d}: the multipart upload is gone (aborted or completed)`, opt);
    if (status === 404) return new BaremetalError("not-found", `no object '${req.key}' at ${d} (${req.what})`, opt);
    if (code === "InvalidRange" || status === 416) return new BaremetalError("validation", `${req.what}: the range is outside the object at ${d}${detail}`, { ...opt, property: "range" });
    if (status >= 500 || code === "SlowDown" || status === 429) {
      const ra = retryAfterMs(headers["retry-after"]);
      return new BaremetalError("transient", `${d} failed ${req.what} (${code ?? `HTTP ${status}`})${detail}; try again later`, { ...opt, retryAfterSeconds: seconds(ra) });
    }
    return new BaremetalError("backend", `${d} refused ${req.what} (${code ?? `HTTP ${status}`})${detail}`, opt);
  }

  /** Parses an XML answer, as a backend error when it is not XML. */
  xml(res: S3Response, what: string): XmlNode {
    try {
      return parseXml(res.body.toString("utf8"));
    } catch (e) {
      throw new BaremetalError("backend", `${this.description} answered ${what} with something that is not S3 XML (${messageOf(e)})`, { httpStatus: res.status });
    }
  }
}

export function parseErrorBody(body: Buffer): S3ErrorBody {
  if (!body.length) return {};
  try {
    const doc = parseXml(body.toString("utf8"));
    if (doc.name !== "Error") return {};
    return { code: text(doc, "Code"), message: text(doc, "Message") };
  } catch {
    return {};
  }
}

export function md5Base64(b: Buffer): string {
  return createHash("md5").update(b).digest("base64");
}

function lowerKeys(h: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) out[k.toLowerCase()] = v;
  return out;
}

function backoff(attempt: number, retryAfterSeconds?: number): number {
  if (retryAfterSeconds !== undefined) return Math.min(30000, retryAfterSeconds * 1000);
  return Math.min(5000, 200 * 4 ** (attempt - 1)) * (0.75 + Math.random() / 2);
}

function abortError(): Error {
  return Object.assign(new Error("aborted"), { name: "AbortError" });
}
