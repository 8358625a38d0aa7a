/**
 * Conversion of HTTP answers and socket/TLS failures of a BMC into `BaremetalError`s.
 *
 * Nothing here ever sees credentials: callers pass the endpoint without user info, and the
 * original library error is never attached as `cause` (an axios error carries the request
 * headers and body, i.e. the Basic auth header and the session login body).
 */
import { BaremetalError, ErrorCode } from "../../core/errors";
import type { RedfishErrorBody, RedfishMessage } from "./types";

/** What the client knows about a failed exchange. */
export interface HttpFailure {
  endpoint: string; // scheme://host:port, no credentials
  method: string;
  path: string;
  status: number;
  headers: Record<string, string | undefined>;
  body: unknown;
  username?: string;
}

export interface ParsedRedfishError {
  messageId?: string;
  message?: string;
  details: string[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describeMessage(m: RedfishMessage): string | undefined {
  const text = typeof m.Message === "string" && m.Message ? m.Message : undefined;
  const resolution = typeof m.Resolution === "string" && m.Resolution && m.Resolution !== "None" ? m.Resolution : undefined;
  if (!text) return resolution ? `${m.MessageId}: ${resolution}` : m.MessageId;
  return resolution ? `${text} (${resolution})` : text;
}

function messagesOf(v: unknown): RedfishMessage[] {
  if (!Array.isArray(v)) return [];
  return v.filter((m): m is RedfishMessage => isRecord(m) && typeof m.MessageId === "string");
}

/** Reads a Redfish error body `{error:{code,message,"@Message.ExtendedInfo":[...]}}`, tolerating junk. */
export function parseRedfishError(body: unknown): ParsedRedfishError {
  if (!isRecord(body)) return { details: [] };
  const err = body.error;
  // Some services put the messages at top level (e.g. on a 200 PATCH with property errors).
  const ext = isRecord(err) ? messagesOf(err["@Message.ExtendedInfo"]) : messagesOf(body["@Message.ExtendedInfo"]);
  const code = isRecord(err) && typeof err.code === "string" ? err.code : undefined;
  const message = isRecord(err) && typeof err.message === "string" ? err.message : undefined;
  const details = ext.map(describeMessage).filter((s): s is string => !!s);
  if (!details.length && message) details.push(message);
  return { messageId: ext[0]?.MessageId ?? code, message, details };
}

/** `Retry-After` is either delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const t = Date.parse(v);
  if (Number.isNaN(t)) return undefined;
  return Math.max(0, Math.ceil((t - now) / 1000));
}

/**
 * Maps a non-2xx answer to the error the core understands. The Redfish messages go to `details`
 * (not into `message`: `describeError` appends them).
 */
export function httpError(f: HttpFailure): BaremetalError {
  const parsed = parseRedfishError(f.body);
  const what = `${f.method} ${f.path}`;
  const opts = { httpStatus: f.status, messageId: parsed.messageId, details: parsed.details };
  let code: ErrorCode;
  let message: string;
  let retryAfterSeconds: number | undefined;
  switch (f.status) {
    case 401:
      code = "auth";
      message =
        `the BMC at ${f.endpoint} refused the credentials${f.username ? ` of user "${f.username}"` : " (none were given)"}` +
        ` (HTTP 401 on ${what}); check the username and password`;
      break;
    case 403:
      code = "auth";
      message =
        `the BMC at ${f.endpoint} refused ${what} for ${f.username ? `user "${f.username}"` : "an anonymous client"}` +
        ` (HTTP 403): the account lacks the privilege for it`;
      break;
    case 404:
      code = "not-found";
      message = `${what}: no such resource on the BMC at ${f.endpoint}`;
      break;
    case 409:
      code = "conflict";
      message = `the BMC at ${f.endpoint} refused ${what} in its current state (HTTP 409)`;
      break;
    case 412:
      code = "conflict";
      message = `the resource changed on the BMC at ${f.endpoint} while we were updating it (HTTP 412 on ${what}, ETag mismatch)`;
      break;
    case 429:
    case 503:
      code = "transient";
      retryAfterSeconds = parseRetryAfter(f.headers["retry-after"]);
      message =
        `the BMC at ${f.endpoint} is busy (HTTP ${f.status} on ${what})` +
        (retryAfterSeconds !== undefined ? `; it asks to retry after ${retryAfterSeconds}s` : "");
      break;
    default:
      code = "backend";
      if (f.status >= 300 && f.status < 400) {
        const to = f.headers["location"];
        message = `the BMC at ${f.endpoint} redirects ${what} (HTTP ${f.status})${to ? ` to ${stripUserInfo(to)}` : ""}; use the endpoint it redirects to`;
      } else {
        message = `the BMC at ${f.endpoint} answered HTTP ${f.status} to ${what}`;
      }
  }
  return new BaremetalError(code, message, { ...opts, retryAfterSeconds });
}

// ---------------------------------------------------------------------------------------------
// Network and TLS failures

const TLS_TRUST_CODES = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
]);
const TLS_VALIDITY_CODES = new Set(["CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID", "CRL_HAS_EXPIRED", "CERT_REVOKED"]);
const TLS_NAME_CODES = new Set(["ERR_TLS_CERT_ALTNAME_INVALID", "HOSTNAME_MISMATCH"]);

/** Failures before a connection existed: the BMC cannot have seen the request. */
const NOT_SENT_CODES = new Set(["ECONNREFUSED", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ENOTFOUND", "EAI_AGAIN", "EADDRNOTAVAIL"]);

const TRANSIENT_CODES: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  EPIPE: "connection closed while sending",
  EHOSTUNREACH: "host unreachable",
  EHOSTDOWN: "host down",
  ENETUNREACH: "network unreachable",
  ENETDOWN: "network down",
  ENOTFOUND: "host name does not resolve",
  EAI_AGAIN: "host name lookup failed temporarily",
  EADDRNOTAVAIL: "address not available",
  ECONNABORTED: "connection aborted",
  ERR_SOCKET_CLOSED: "socket closed",
  ERR_STREAM_PREMATURE_CLOSE: "connection closed before the answer was complete",
  ERR_BAD_RESPONSE: "malformed HTTP answer",
};

const TLS_FIX = "provide the BMC's certificate (or the CA that signed it) as caBundle (PEM), or set insecure: true (verifyTls: false) to skip verification";

/** Error code of an axios/node error, looking through `cause`. */
export function errorCodeOf(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let i = 0; i < 4 && isRecord(cur); i++) {
    if (typeof cur.code === "string" && cur.code !== "ERR_NETWORK" && cur.code !== "ERR_BAD_REQUEST") return cur.code;
    cur = cur.cause;
  }
  return isRecord(e) && typeof e.code === "string" ? e.code : undefined;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A cause that carries the library's code and message but none of its request config. */
function safeCause(code: string | undefined, e: unknown): Error {
  const c = new Error(code ? `${code}: ${stripUserInfo(messageOf(e))}` : stripUserInfo(messageOf(e)));
  return c;
}

/** Removes `user:password@` from any URL in a text. */
export function stripUserInfo(s: string): string {
  return s.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/gi, "$1");
}

/** Maps a failure below HTTP (socket, DNS, TLS) to the error the core understands. */
export function networkError(endpoint: string, method: string, path: string, e: unknown): BaremetalError {
  const code = errorCodeOf(e);
  const cause = safeCause(code, e);
  const what = `${method} ${path}`;
  if (code && TLS_TRUST_CODES.has(code)) {
    return new BaremetalError(
      "tls",
      `TLS verification of the BMC at ${endpoint} failed: its certificate is not trusted (${code}); ${TLS_FIX}`,
      { cause, details: [messageOf(e)] },
    );
  }
  if (code && TLS_VALIDITY_CODES.has(code)) {
    return new BaremetalError(
      "tls",
      `TLS verification of the BMC at ${endpoint} failed: its certificate is not valid now (${code}); renew the BMC certificate, or set insecure: true (verifyTls: false) to skip verification`,
      { cause, details: [messageOf(e)] },
    );
  }
  if (code && TLS_NAME_CODES.has(code)) {
    return new BaremetalError(
      "tls",
      `TLS verification of the BMC at ${endpoint} failed: its certificate does not name this host (${code}); connect with a name or address the certificate lists, install a certificate that lists it, or set insecure: true (verifyTls: false)`,
      { cause, details: [messageOf(e)] },
    );
  }
  if (code && (code === "EPROTO" || code.startsWith("ERR_SSL_") || code.startsWith("ERR_TLS_"))) {
    return new BaremetalError(
      "tls",
      `TLS handshake with the BMC at ${endpoint} failed (${code}): the BMC may only speak an old TLS version or cipher, or the endpoint is not HTTPS (try http://)`,
      { cause, details: [messageOf(e)] },
    );
  }
  if (code === "ETIMEDOUT" || code === "ESOCKETTIMEDOUT") {
    return new BaremetalError("timeout", `the BMC at ${endpoint} did not answer ${what} in time (${code})`, { cause });
  }
  const sentMutation = method !== "GET" && method !== "HEAD";
  if (code && TRANSIENT_CODES[code]) {
    const unsent = NOT_SENT_CODES.has(code);
    const message =
      !unsent && sentMutation
        ? `the BMC at ${endpoint} dropped the connection after ${what} was sent: ${TRANSIENT_CODES[code]} (${code}); whether it acted is unknown`
        : `cannot reach the BMC at ${endpoint}: ${TRANSIENT_CODES[code]} (${code}) on ${what}`;
    return new BaremetalError("transient", message, { cause, unsent });
  }
  if (/socket hang up/i.test(messageOf(e))) {
    const message = sentMutation
      ? `the BMC at ${endpoint} dropped the connection after ${what} was sent (socket hang up); whether it acted is unknown`
      : `cannot reach the BMC at ${endpoint}: connection reset (socket hang up) on ${what}`;
    return new BaremetalError("transient", message, { cause });
  }
  return new BaremetalError(
    "transient",
    `request ${what} to the BMC at ${endpoint} failed: ${stripUserInfo(messageOf(e))}${code ? ` (${code})` : ""}`,
    { cause },
  );
}

/** Is the value a Redfish error body? */
export function isRedfishErrorBody(v: unknown): v is RedfishErrorBody {
  return isRecord(v) && isRecord(v.error) && typeof v.error.code === "string";
}
