/**
 * OIDC/JWT bearer tokens for the tenant-facing service (issue 8): sites with an identity provider
 * give their tenants JWTs signed by that provider, and the service verifies them against the
 * provider's published keys instead of issuing `bmt_` tokens of its own.
 *
 * Setting (`service.oidc` of the serve config, see cli.ts): the issuer URL (exactly the `iss` of its
 * tokens), the audience the tokens must name (`aud`), the claim holding the project (default
 * `project_id`) and the one holding the roles (default `roles`: an array of strings, or one string
 * of roles separated by spaces or commas), the allowed algorithms (default RS256, ES256, EdDSA),
 * the clock skew tolerated on exp/nbf/iat (default 60 s), the per-subject rate limit, and the least
 * time between two key fetches (default 60 s).
 *
 * Keys: discovery (`<issuer>/.well-known/openid-configuration`, whose `issuer` must be the
 * configured one) names the `jwks_uri`; the key set is cached for the `max-age` of its
 * Cache-Control (default 5 minutes) and fetched again when it is stale or when a token names a
 * `kid` the cache does not hold (key rotation), at most once per `jwksRefetchIntervalSeconds`.
 * A stale set stays in use when the issuer cannot be reached. Only https, or http to a loopback
 * address, is fetched.
 *
 * Verification (JWS compact serialization, written here with node:crypto, no JWT library): three
 * base64url parts; the header's `alg` must be one of the allowed asymmetric algorithms (`none` and
 * HMAC algorithms are refused whatever the setting: an HMAC "verified" with a public key is the
 * classic forgery); no `crit` extensions; the key is chosen by `kid` and must be of the algorithm's
 * type (RSA of 2048 bits or more for RS and PS, the named curve for ES, an OKP key for EdDSA; a
 * key's own `alg`, `use` and `key_ops`, when given, must agree); then the claims: `iss` equal to
 * the issuer, `aud` naming the audience, `exp` in the future, `nbf` and `iat` not in the future
 * (each with the skew), a string `sub`, and a string project claim: a token without a project is
 * refused (operators use the service's own tokens; a JWT never makes its bearer the operator).
 *
 * A verified token becomes the caller tokens.ts returns for its own tokens: tokenId `oidc:<sub>`,
 * tokenName the `preferred_username` (else the subject), the project and roles of the claims. Every
 * failure is the same 401 (`the token is not valid`); what failed goes to the `log` callback only,
 * never the token.
 */
import { constants, createPublicKey, type JsonWebKey, type KeyObject, verify as verifySignature } from "node:crypto";
import { isIP } from "node:net";
import { BaremetalError } from "../core/errors";
import type { AuthenticatedCaller } from "./tokens";

export const SUPPORTED_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"] as const;
export type JwsAlgorithm = (typeof SUPPORTED_ALGORITHMS)[number];

export interface OidcSettings {
  /** The issuer URL, exactly as the tokens' `iss` (no trailing slash added or removed). */
  issuer: string;
  /** The audience every token must name in `aud` (the client id the provider gives the service). */
  audience: string;
  /** The claim holding the caller's project (default `project_id`; `a.b` reads a nested claim when no claim is named `a.b`). */
  projectClaim?: string;
  /** The claim holding the caller's roles (default `roles`). */
  rolesClaim?: string;
  /** Allowed JWS algorithms (default RS256, ES256, EdDSA). */
  algorithms?: JwsAlgorithm[];
  /** Tolerated clock difference in seconds on exp, nbf and iat (default 60). */
  clockSkewSeconds?: number;
  /** Requests per minute per subject (default: the token service's default rate). */
  ratePerMinute?: number;
  /** Least time between two fetches of the key set (default 60 s). */
  jwksRefetchIntervalSeconds?: number;
}

/** One line for the operator about a refused token (never the token itself). */
export interface OidcLogEntry {
  time: string;
  event: "oidc-refused" | "oidc-jwks-fetched" | "oidc-jwks-failed";
  detail: string;
  subject?: string;
  kid?: string;
}

const DEFAULT_ALGORITHMS: JwsAlgorithm[] = ["RS256", "ES256", "EdDSA"];
const DEFAULT_MAX_AGE_S = 300;
const MAX_MAX_AGE_S = 86400;
const MAX_TOKEN_LENGTH = 16384;
const MAX_DOCUMENT_BYTES = 1024 * 1024;
const FETCH_TIMEOUT_MS = 10_000;

/** Why a token is refused: the detail for the log; the caller gets the one 401. */
class Refused extends Error {
  constructor(
    message: string,
    readonly subject?: string,
    readonly kid?: string,
  ) {
    super(message);
  }
}

const unauthorized = () => new BaremetalError("auth", "the token is not valid", { httpStatus: 401, messageId: "Unauthorized" });

const invalid = (setting: string, message: string) => new BaremetalError("validation", `service.oidc.${setting}: ${message}`, { property: `service.oidc.${setting}` });

/** URLs fetched for keys: https, or http to a loopback host (an issuer on this machine, as in tests). */
function fetchable(u: URL): boolean {
  if (u.protocol === "https:") return true;
  if (u.protocol !== "http:") return false;
  const host = u.hostname.replace(/^\[|\]$/g, "");
  return host === "localhost" || (isIP(host) === 4 && host.startsWith("127.")) || host === "::1";
}

/** Checks the `service.oidc` setting (unknown names, types, ranges), naming the setting in each error. */
export function parseOidcSettings(raw: unknown): OidcSettings {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new BaremetalError("validation", "service.oidc: must be an object ({issuer, audience, ...})", { property: "service.oidc" });
  const r = raw as Record<string, unknown>;
  const known = ["issuer", "audience", "projectClaim", "rolesClaim", "algorithms", "clockSkewSeconds", "ratePerMinute", "jwksRefetchIntervalSeconds"];
  for (const k of Object.keys(r)) if (!known.includes(k)) throw invalid(k, `unknown setting (known: ${known.join(", ")})`);
  if (typeof r.issuer !== "string" || !r.issuer) throw invalid("issuer", "required: the identity provider's issuer URL (the `iss` of its tokens)");
  let url: URL;
  try {
    url = new URL(r.issuer);
  } catch {
    throw invalid("issuer", `${JSON.stringify(r.issuer)} is not a URL`);
  }
  if (!fetchable(url)) throw invalid("issuer", `${r.issuer} must be https (http only to a loopback address)`);
  if (url.search || url.hash) throw invalid("issuer", "must not have a query or fragment");
  if (typeof r.audience !== "string" || !r.audience) throw invalid("audience", "required: the client id the identity provider puts in `aud` of tokens for this service");
  for (const k of ["projectClaim", "rolesClaim"] as const) if (r[k] !== undefined && (typeof r[k] !== "string" || !r[k])) throw invalid(k, "must be a claim name");
  let algorithms: JwsAlgorithm[] | undefined;
  if (r.algorithms !== undefined) {
    if (!Array.isArray(r.algorithms) || r.algorithms.length === 0) throw invalid("algorithms", "must be a non-empty list");
    for (const a of r.algorithms) {
      if (!(SUPPORTED_ALGORITHMS as readonly unknown[]).includes(a)) {
        throw invalid("algorithms", `${JSON.stringify(a)} is not allowed (asymmetric JWS algorithms only: ${SUPPORTED_ALGORITHMS.join(", ")}; never none or HS*)`);
      }
    }
    algorithms = r.algorithms as JwsAlgorithm[];
  }
  const whole = (k: string, min: number, max: number): number | undefined => {
    const v = r[k];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) throw invalid(k, `must be a whole number from ${min} to ${max}`);
    return v;
  };
  return {
    issuer: r.issuer,
    audience: r.audience,
    ...(r.projectClaim ? { projectClaim: r.projectClaim as string } : {}),
    ...(r.rolesClaim ? { rolesClaim: r.rolesClaim as string } : {}),
    ...(algorithms ? { algorithms } : {}),
    ...(r.clockSkewSeconds !== undefined ? { clockSkewSeconds: whole("clockSkewSeconds", 0, 600) } : {}),
    ...(r.ratePerMinute !== undefined ? { ratePerMinute: whole("ratePerMinute", 1, 1_000_000) } : {}),
    ...(r.jwksRefetchIntervalSeconds !== undefined ? { jwksRefetchIntervalSeconds: whole("jwksRefetchIntervalSeconds", 0, 86400) } : {}),
  };
}

/** Whether a bearer token is a JWS compact serialization (three base64url parts) rather than a `bmt_` token. */
export function looksLikeJwt(token: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token);
}

function decodeJson(part: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch {
    throw new Refused(`the ${what} is not base64url JSON`);
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new Refused(`the ${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/** The key type an algorithm needs, and how node:crypto verifies it. */
function scheme(alg: JwsAlgorithm): { kty: string; crv?: string[]; hash: string | null; pss?: boolean; ecdsa?: boolean } {
  switch (alg) {
    case "RS256":
    case "RS384":
    case "RS512":
      return { kty: "RSA", hash: `sha${alg.slice(2)}` };
    case "PS256":
    case "PS384":
    case "PS512":
      return { kty: "RSA", hash: `sha${alg.slice(2)}`, pss: true };
    case "ES256":
      return { kty: "EC", crv: ["P-256"], hash: "sha256", ecdsa: true };
    case "ES384":
      return { kty: "EC", crv: ["P-384"], hash: "sha384", ecdsa: true };
    case "ES512":
      return { kty: "EC", crv: ["P-521"], hash: "sha512", ecdsa: true };
    case "EdDSA":
      return { kty: "OKP", crv: ["Ed25519", "Ed448"], hash: null };
  }
}

interface CachedKey {
  jwk: JsonWebKey & { kid?: string; use?: string; alg?: string; key_ops?: string[] };
  key?: KeyObject;
}

/** Reads `name` from the claims: the claim of that name, else the dotted path into nested objects. */
function claim(claims: Record<string, unknown>, name: string): unknown {
  if (name in claims) return claims[name];
  if (!name.includes(".")) return undefined;
  let v: unknown = claims;
  for (const part of name.split(".")) {
    if (!v || typeof v !== "object" || Array.isArray(v)) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

export class OidcVerifier {
  readonly settings: Required<Omit<OidcSettings, "ratePerMinute">> & { ratePerMinute?: number };
  private readonly now: () => number;
  private readonly log: (e: OidcLogEntry) => void;
  private jwksUri?: string;
  private keys: CachedKey[] = [];
  private fetchedAt = -Infinity;
  private expiresAt = -Infinity;
  private inflight?: Promise<void>;

  constructor(settings: OidcSettings, opts: { now?: () => number; log?: (e: OidcLogEntry) => void } = {}) {
    this.settings = {
      projectClaim: "project_id",
      rolesClaim: "roles",
      algorithms: DEFAULT_ALGORITHMS,
      clockSkewSeconds: 60,
      jwksRefetchIntervalSeconds: 60,
      ...parseOidcSettings(settings),
    };
    this.now = opts.now ?? Date.now;
    this.log = opts.log ?? ((e) => process.stderr.write(`${JSON.stringify(e)}\n`));
  }

  /** How many times the key set was fetched (for tests and the operator's curiosity). */
  fetches = 0;

  /** The caller of a JWT; any failure is the service's one 401, its reason logged. */
  async verify(token: string): Promise<AuthenticatedCaller> {
    try {
      return await this.check(token);
    } catch (e) {
      if (e instanceof Refused) {
        this.log({ time: new Date(this.now()).toISOString(), event: "oidc-refused", detail: e.message, ...(e.subject ? { subject: e.subject } : {}), ...(e.kid ? { kid: e.kid } : {}) });
        throw unauthorized();
      }
      throw e;
    }
  }

  private async check(token: string): Promise<AuthenticatedCaller> {
    if (token.length > MAX_TOKEN_LENGTH) throw new Refused(`the token is longer than ${MAX_TOKEN_LENGTH} characters`);
    if (!looksLikeJwt(token)) throw new Refused("the token is not a JWS compact serialization (three base64url parts)");
    const [h, p, s] = token.split(".");
    const header = decodeJson(h, "JOSE header");
    const alg = header.alg;
    const kid = typeof header.kid === "string" ? header.kid : undefined;
    if (typeof alg !== "string") throw new Refused("the header has no alg", undefined, kid);
    if (alg.toLowerCase() === "none") throw new Refused("alg none is refused (an unsigned token)", undefined, kid);
    if (/^HS/i.test(alg)) throw new Refused(`alg ${alg} is refused (HMAC: the service holds no shared secret with the issuer)`, undefined, kid);
    if (!(this.settings.algorithms as string[]).includes(alg)) throw new Refused(`alg ${alg} is not one of the allowed ${this.settings.algorithms.join(", ")}`, undefined, kid);
    if (header.crit !== undefined) throw new Refused("the header has crit extensions, which this service does not understand", undefined, kid);
    if (header.kid !== undefined && typeof header.kid !== "string") throw new Refused("the header's kid is not a string");
    if (!s) throw new Refused("the token has no signature", undefined, kid);
    const signature = Buffer.from(s, "base64url");
    const signed = Buffer.from(`${h}.${p}`, "ascii");
    const sch = scheme(alg as JwsAlgorithm);

    const keys = await this.keysFor(alg as JwsAlgorithm, kid);
    if (keys.length === 0) throw new Refused(kid ? `no key ${kid} of type ${sch.kty} for ${alg} in the issuer's key set` : `no key of type ${sch.kty} for ${alg} in the issuer's key set`, undefined, kid);
    const ok = keys.some((k) => {
      try {
        return verifySignature(
          sch.hash,
          signed,
          sch.pss ? { key: k, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST } : sch.ecdsa ? { key: k, dsaEncoding: "ieee-p1363" } : k,
          signature,
        );
      } catch {
        return false;
      }
    });
    if (!ok) throw new Refused(`the signature does not verify (${alg}${kid ? `, key ${kid}` : ""})`, undefined, kid);

    const claims = decodeJson(p, "payload");
    const sub = typeof claims.sub === "string" && claims.sub ? claims.sub : undefined;
    const refuse = (why: string) => new Refused(why, sub, kid);
    if (claims.iss !== this.settings.issuer) throw refuse(`iss ${JSON.stringify(claims.iss)} is not the configured issuer ${this.settings.issuer}`);
    const aud = claims.aud;
    const audiences = typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud : [];
    if (!audiences.includes(this.settings.audience)) throw refuse(`aud ${JSON.stringify(aud)} does not name ${this.settings.audience}`);
    const now = this.now() / 1000;
    const skew = this.settings.clockSkewSeconds;
    if (typeof claims.exp !== "number" || !Number.isFinite(claims.exp)) throw refuse("the token has no numeric exp");
    if (now >= claims.exp + skew) throw refuse(`the token expired at ${new Date(claims.exp * 1000).toISOString()}`);
    if (claims.nbf !== undefined) {
      if (typeof claims.nbf !== "number" || !Number.isFinite(claims.nbf)) throw refuse("nbf is not a number");
      if (now < claims.nbf - skew) throw refuse(`the token is not valid before ${new Date(claims.nbf * 1000).toISOString()}`);
    }
    if (claims.iat !== undefined) {
      if (typeof claims.iat !== "number" || !Number.isFinite(claims.iat)) throw refuse("iat is not a number");
      if (now < claims.iat - skew) throw refuse(`the token was issued in the future (${new Date(claims.iat * 1000).toISOString()})`);
    }
    if (!sub) throw refuse("the token has no sub");
    const project = claim(claims, this.settings.projectClaim);
    if (typeof project !== "string" || !project) throw refuse(`the claim ${this.settings.projectClaim} (the project) is missing or not a string`);
    const rawRoles = claim(claims, this.settings.rolesClaim);
    let roles: string[];
    if (rawRoles === undefined || rawRoles === null) roles = [];
    else if (typeof rawRoles === "string") roles = rawRoles.split(/[\s,]+/).filter(Boolean);
    else if (Array.isArray(rawRoles) && rawRoles.every((r) => typeof r === "string")) roles = rawRoles as string[];
    else throw refuse(`the claim ${this.settings.rolesClaim} (the roles) is neither a string nor a list of strings`);
    const name = typeof claims.preferred_username === "string" && claims.preferred_username ? claims.preferred_username : sub;
    return { tokenId: `oidc:${sub}`, tokenName: name, projectId: project, roles: [...new Set(roles)], operator: false };
  }

  /** The keys that may verify `alg` (by kid when given), fetching the set when stale or when the kid is unknown. */
  private async keysFor(alg: JwsAlgorithm, kid: string | undefined): Promise<KeyObject[]> {
    const now = this.now();
    const mayRefetch = now - this.fetchedAt >= this.settings.jwksRefetchIntervalSeconds * 1000;
    const known = () => this.keys.some((k) => kid === undefined || k.jwk.kid === kid);
    if ((now >= this.expiresAt || !known()) && mayRefetch) {
      try {
        await this.refresh();
      } catch (e) {
        // A stale set stays in use; without one, the token cannot be verified.
        this.log({ time: new Date(now).toISOString(), event: "oidc-jwks-failed", detail: (e as Error).message });
        if (this.keys.length === 0) throw new Refused(`the issuer's keys could not be fetched: ${(e as Error).message}`, undefined, kid);
      }
    }
    const sch = scheme(alg);
    const out: KeyObject[] = [];
    for (const k of this.keys) {
      const j = k.jwk;
      if (kid !== undefined && j.kid !== kid) continue;
      if (j.kty !== sch.kty) continue;
      if (sch.crv && !sch.crv.includes(String(j.crv))) continue;
      if (j.alg !== undefined && j.alg !== alg) continue;
      if (j.use !== undefined && j.use !== "sig") continue;
      if (j.key_ops !== undefined && !(Array.isArray(j.key_ops) && j.key_ops.includes("verify"))) continue;
      try {
        k.key ??= createPublicKey({ key: { kty: j.kty, n: j.n, e: j.e, crv: j.crv, x: j.x, y: j.y } as JsonWebKey, format: "jwk" });
      } catch {
        continue;
      }
      if (sch.kty === "RSA" && (k.key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) continue;
      out.push(k.key);
    }
    return out;
  }

  private refresh(): Promise<void> {
    this.inflight ??= this.fetchKeys().finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  private async fetchKeys(): Promise<void> {
    this.fetchedAt = this.now();
    if (!this.jwksUri) {
      const discovery = `${this.settings.issuer.replace(/\/+$/, "")}/.well-known/openid-configuration`;
      const { body } = await getJson(discovery);
      if (body.issuer !== this.settings.issuer) throw new Error(`${discovery} names the issuer ${JSON.stringify(body.issuer)}, not ${this.settings.issuer}`);
      if (typeof body.jwks_uri !== "string") throw new Error(`${discovery} has no jwks_uri`);
      let u: URL;
      try {
        u = new URL(body.jwks_uri);
      } catch {
        throw new Error(`${discovery}: jwks_uri ${JSON.stringify(body.jwks_uri)} is not a URL`);
      }
      if (!fetchable(u)) throw new Error(`${discovery}: jwks_uri ${u.href} is neither https nor loopback http`);
      this.jwksUri = u.href;
    }
    const { body, maxAge } = await getJson(this.jwksUri);
    if (!Array.isArray(body.keys)) throw new Error(`${this.jwksUri} is not a JWK set (no keys list)`);
    this.keys = (body.keys as unknown[]).filter((k): k is CachedKey["jwk"] => !!k && typeof k === "object" && typeof (k as { kty?: unknown }).kty === "string").map((jwk) => ({ jwk }));
    const age = Math.min(maxAge ?? DEFAULT_MAX_AGE_S, MAX_MAX_AGE_S);
    this.expiresAt = this.fetchedAt + age * 1000;
    this.fetches++;
    this.log({ time: new Date(this.now()).toISOString(), event: "oidc-jwks-fetched", detail: `${this.keys.length} keys from ${this.jwksUri}, fresh for ${age} s` });
  }
}

/** GET a JSON document (bounded in size and time; no redirects), with the Cache-Control max-age. */
async function getJson(url: string): Promise<{ body: Record<string, unknown>; maxAge?: number }> {
  const res = await fetch(url, { redirect: "error", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), headers: { accept: "application/json" } });
  if (res.status !== 200) throw new Error(`${url} answered HTTP ${res.status}`);
  const text = await res.text();
  if (text.length > MAX_DOCUMENT_BYTES) throw new Error(`${url} answered more than ${MAX_DOCUMENT_BYTES} bytes`);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${url} did not answer JSON`);
  }
  if (!body || typeof body !== "object" || Array.isArray(body)) throw new Error(`${url} did not answer a JSON object`);
  const cc = res.headers.get("cache-control") ?? "";
  const m = /(?:^|,)\s*max-age\s*=\s*"?(\d+)"?/i.exec(cc);
  const maxAge = /(?:^|,)\s*(?:no-store|no-cache)\b/i.test(cc) ? 0 : m ? Number(m[1]) : undefined;
  return { body: body as Record<string, unknown>, maxAge };
}
