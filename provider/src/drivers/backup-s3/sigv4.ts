/**
 * AWS Signature Version 4 for S3 (written from AWS's public description of the algorithm:
 * "Signature Calculations for the Authorization Header", S3 API reference).
 *
 *   canonical request = METHOD \n canonical URI \n canonical query \n canonical headers \n
 *                       signed header names \n hex(sha256(payload))
 *   string to sign    = "AWS4-HMAC-SHA256" \n amzDate \n date/region/s3/aws4_request \n hex(sha256(canonical request))
 *   signing key       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), "s3"), "aws4_request")
 *
 * S3 specifics: the path is URI-encoded once (not twice, unlike other services), `/` kept; the
 * payload hash also travels as `x-amz-content-sha256`. The secret is held in a closure of
 * `createSigner` (never a property that a log of the object would print); only the derived
 * per-day signing key is cached.
 */
import { createHash, createHmac } from "node:crypto";

export const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

export function sha256Hex(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** RFC 3986 percent-encoding of everything but the unreserved characters (A-Z a-z 0-9 - . _ ~). */
export function uriEncode(s: string, keepSlash = false): string {
  let out = "";
  for (const b of Buffer.from(s, "utf8")) {
    const c = String.fromCharCode(b);
    if ((b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || c === "-" || c === "." || c === "_" || c === "~" || (keepSlash && c === "/")) out += c;
    else out += "%" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

/** `20130524T000000Z` */
export function amzDate(d: Date): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
}

export interface SignInput {
  method: string;
  /** The path as sent, already encoded (see `uriEncode(path, true)`). */
  encodedPath: string;
  query: Record<string, string>;
  /** Headers to sign (host must be among them); names in any case. */
  headers: Record<string, string>;
  payloadSha256: string;
  date: Date;
}

export interface Signer {
  readonly accessKeyId: string;
  readonly region: string;
  /** The Authorization header value for a request. */
  authorization(req: SignInput): string;
}

export function canonicalQuery(query: Record<string, string>): string {
  return Object.keys(query)
    .map((k) => [uriEncode(k), uriEncode(query[k])] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join("&");
}

export function canonicalRequest(req: SignInput): { text: string; signedHeaders: string } {
  const hs = Object.entries(req.headers)
    .map(([k, v]) => [k.toLowerCase(), String(v).trim().replace(/ +/g, " ")] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const signedHeaders = hs.map(([k]) => k).join(";");
  const text = [req.method, req.encodedPath, canonicalQuery(req.query), hs.map(([k, v]) => `${k}:${v}\n`).join(""), signedHeaders, req.payloadSha256].join("\n");
  return { text, signedHeaders };
}

export function createSigner(accessKeyId: string, secretAccessKey: string, region: string, service = "s3"): Signer {
  let cached: { day: string; key: Buffer } | undefined;
  const signingKey = (day: string): Buffer => {
    if (cached?.day === day) return cached.key;
    const kDate = createHmac("sha256", "AWS4" + secretAccessKey).update(day).digest();
    const kRegion = createHmac("sha256", kDate).update(region).digest();
    const kService = createHmac("sha256", kRegion).update(service).digest();
    const key = createHmac("sha256", kService).update("aws4_request").digest();
    cached = { day, key };
    return key;
  };
  return {
    accessKeyId,
    region,
    authorization(req) {
      const stamp = amzDate(req.date);
      const day = stamp.slice(0, 8);
      const scope = `${day}/${region}/${service}/aws4_request`;
      const { text, signedHeaders } = canonicalRequest(req);
      const toSign = ["AWS4-HMAC-SHA256", stamp, scope, sha256Hex(text)].join("\n");
      const signature = createHmac("sha256", signingKey(day)).update(toSign).digest("hex");
      return `AWS4-HMAC-SHA256 Credential=${accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`;
    },
  };
}
