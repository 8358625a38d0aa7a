/**
 * API tokens of the tenant-facing service (issue 8, `baremetal serve`): bearer tokens of one
 * project with roles, an expiry, revocation, and a rate limit per token; and the answer to "what
 * may this token do".
 *
 * Token text: `bmt_<id>_<secret>`. The id (12 random bytes, hex) is public: it names the token in
 * listings, audit records and revocations. The secret (32 random bytes, base64url) is shown once,
 * at issue, and stored only as its SHA-256: it has 256 bits of entropy, so a slow password hash
 * adds nothing, and a copy of the token table authenticates nobody. Secrets are compared in
 * constant time.
 *
 * Failures are `auth` errors with HTTP status 401 (missing, malformed, unknown, wrong secret,
 * expired, revoked: one message for unknown and wrong, so the answer tells nothing about which
 * ids exist), and `transient` with 429 and a retry hint when the token's rate is exceeded.
 *
 * Rate limit: a token bucket per token id in this process (capacity = the per-minute rate,
 * refilled continuously). Several service instances each allow the rate: behind a load
 * balancer a token gets up to N times its rate (documented; a shared limiter would need the
 * database on every request).
 *
 * JWTs: with an OidcVerifier (oidc.ts, for sites with an identity provider), a bearer token of
 * three base64url parts is verified as a JWT of the configured issuer instead; it becomes the same
 * caller (tokenId `oidc:<sub>`), is limited per subject at the verifier's rate (default: this
 * service's default rate), and any verification failure is the one 401 `the token is not valid`.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { Caller } from "../core/auth";
import { BaremetalError } from "../core/errors";
import { OPERATIONS, type Policy, type PolicyTarget } from "../core/policy";
import type { ApiTokenRecord, Inventory } from "../inventory/types";
import { looksLikeJwt, type OidcVerifier } from "./oidc";

/** A token as stored (the inventory's record: the secret's SHA-256 only). */
export type TokenRecord = ApiTokenRecord;

/** Where token records live (the service's database; MemoryTokenStore for tests). */
export interface TokenStore {
  insert(r: TokenRecord): Promise<void>;
  get(id: string): Promise<TokenRecord | undefined>;
  update(id: string, patch: Partial<Pick<TokenRecord, "revokedAt">>): Promise<void>;
  list(projectId?: string): Promise<TokenRecord[]>;
}

export class MemoryTokenStore implements TokenStore {
  private readonly rows = new Map<string, TokenRecord>();
  async insert(r: TokenRecord): Promise<void> {
    if (this.rows.has(r.id)) throw new BaremetalError("conflict", `token ${r.id} exists`);
    this.rows.set(r.id, { ...r, roles: [...r.roles] });
  }
  async get(id: string): Promise<TokenRecord | undefined> {
    const r = this.rows.get(id);
    return r && { ...r, roles: [...r.roles] };
  }
  async update(id: string, patch: Partial<Pick<TokenRecord, "revokedAt">>): Promise<void> {
    const r = this.rows.get(id);
    if (!r) throw new BaremetalError("not-found", `no token ${id}`);
    this.rows.set(id, { ...r, ...patch });
  }
  async list(projectId?: string): Promise<TokenRecord[]> {
    return [...this.rows.values()].filter((r) => projectId === undefined || r.projectId === projectId).map((r) => ({ ...r, roles: [...r.roles] }));
  }
}

/** Tokens in the service's database (the inventory: SQLite or PostgreSQL), shared by every instance. */
export class InventoryTokenStore implements TokenStore {
  constructor(private readonly inventory: Inventory) {}
  insert(r: TokenRecord): Promise<void> {
    return this.inventory.insertToken(r);
  }
  get(id: string): Promise<TokenRecord | undefined> {
    return this.inventory.getToken(id);
  }
  async update(id: string, patch: Partial<Pick<TokenRecord, "revokedAt">>): Promise<void> {
    if (patch.revokedAt && !(await this.inventory.revokeToken(id, patch.revokedAt))) throw new BaremetalError("not-found", `no token ${id}`);
  }
  list(projectId?: string): Promise<TokenRecord[]> {
    return this.inventory.listTokens(projectId);
  }
}

export interface IssueRequest {
  name: string;
  projectId?: string;
  roles: string[];
  /** Lifetime; none = never expires. */
  ttlSeconds?: number;
  ratePerMinute?: number;
}

export interface AuthenticatedCaller extends Caller {
  tokenId: string;
  tokenName: string;
}

const TOKEN_RE = /^bmt_([0-9a-f]{24})_([A-Za-z0-9_-]{43})$/;
const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest();

const unauthorized = (message: string) => new BaremetalError("auth", message, { httpStatus: 401, messageId: "Unauthorized" });

export class TokenService {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly now: () => number;
  readonly defaultRatePerMinute: number;
  private readonly oidc?: OidcVerifier;

  constructor(
    private readonly store: TokenStore,
    opts: { now?: () => number; defaultRatePerMinute?: number; oidc?: OidcVerifier } = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.defaultRatePerMinute = opts.defaultRatePerMinute ?? 600;
    this.oidc = opts.oidc;
  }

  /** Issues a token; the returned text is the only copy of its secret. */
  async issue(req: IssueRequest): Promise<{ token: string; record: TokenRecord }> {
    if (!req.name || req.name.length > 200) throw new BaremetalError("validation", "a token needs a name of 1 to 200 characters", { property: "name" });
    if (req.ttlSeconds !== undefined && !(Number.isInteger(req.ttlSeconds) && req.ttlSeconds > 0)) throw new BaremetalError("validation", "ttlSeconds must be a whole number of seconds above 0", { property: "ttlSeconds" });
    const rate = req.ratePerMinute ?? this.defaultRatePerMinute;
    if (!(Number.isInteger(rate) && rate > 0)) throw new BaremetalError("validation", "ratePerMinute must be a whole number above 0", { property: "ratePerMinute" });
    const id = randomBytes(12).toString("hex");
    const secret = randomBytes(32).toString("base64url");
    const now = this.now();
    const record: TokenRecord = {
      id,
      name: req.name,
      ...(req.projectId ? { projectId: req.projectId } : {}),
      roles: [...req.roles],
      createdAt: new Date(now).toISOString(),
      ...(req.ttlSeconds ? { expiresAt: new Date(now + req.ttlSeconds * 1000).toISOString() } : {}),
      secretHash: sha256(secret).toString("hex"),
      ratePerMinute: rate,
    };
    await this.store.insert(record);
    return { token: `bmt_${id}_${secret}`, record };
  }

  /** The caller of an `Authorization` header value (`Bearer bmt_...`, or `Bearer <JWT>` with OIDC configured); throws 401 or 429. */
  async authenticate(authorization: string | undefined): Promise<AuthenticatedCaller> {
    if (!authorization) throw unauthorized("no token: send `Authorization: Bearer <token>`");
    const m = /^Bearer\s+(\S+)$/i.exec(authorization.trim());
    if (m && this.oidc && !m[1].startsWith("bmt_") && looksLikeJwt(m[1])) {
      const caller = await this.oidc.verify(m[1]);
      this.take(caller.tokenId, caller.tokenName, this.oidc.settings.ratePerMinute ?? this.defaultRatePerMinute);
      return caller;
    }
    const parsed = m ? TOKEN_RE.exec(m[1]) : null;
    if (!parsed) throw unauthorized(this.oidc ? "the Authorization header is not `Bearer <token>` with a baremetal token (bmt_...) or a JWT" : "the Authorization header is not `Bearer <token>` with a baremetal token (bmt_...)");
    const [, id, secret] = parsed;
    const record = await this.store.get(id);
    // Compare in constant time even when the id is unknown (against a hash that cannot match).
    const want = Buffer.from(record?.secretHash ?? "00".repeat(32), "hex");
    const ok = timingSafeEqual(want, sha256(secret)) && record !== undefined;
    if (!ok) throw unauthorized("the token is not valid");
    if (record.revokedAt) throw unauthorized(`token ${id} (${record.name}) was revoked at ${record.revokedAt}`);
    if (record.expiresAt && Date.parse(record.expiresAt) <= this.now()) throw unauthorized(`token ${id} (${record.name}) expired at ${record.expiresAt}; ask for a new one`);
    this.take(record.id, record.name, record.ratePerMinute);
    return { tokenId: id, tokenName: record.name, projectId: record.projectId, roles: [...record.roles], operator: !record.projectId };
  }

  /** Revokes a token (idempotent); requests with it fail from now on. */
  async revoke(id: string): Promise<void> {
    const r = await this.store.get(id);
    if (!r) throw new BaremetalError("not-found", `no token ${id}`);
    if (!r.revokedAt) await this.store.update(id, { revokedAt: new Date(this.now()).toISOString() });
    this.buckets.delete(id);
  }

  /**
   * What the caller may do: every policy operation, judged on objects of the caller's own project
   * (owner and lessee = the project), and on objects of another project.
   */
  capabilities(caller: Caller, policy: Policy): { projectId?: string; roles: string[]; operator: boolean; ownProject: string[]; otherProjects: string[] } {
    const judge = (target: PolicyTarget) => (caller.operator ? [...OPERATIONS] : OPERATIONS.filter((op) => policy.check(op, caller, target).allowed));
    const own = caller.projectId ?? "";
    const targetOf = (p: string): PolicyTarget => ({ "node.owner": p, "node.lessee": p, "allocation.owner": p, "key.owner": p, "network.owner": p, "volume.owner": p });
    return { projectId: caller.projectId, roles: caller.roles, operator: caller.operator, ownProject: judge(targetOf(own)), otherProjects: judge(targetOf(`${own}-other-project`)) };
  }

  /** One request of token (or OIDC subject) `id` at `ratePerMinute`; 429 when its bucket is empty. */
  private take(id: string, name: string, ratePerMinute: number): void {
    const now = this.now();
    const perMs = ratePerMinute / 60000;
    const b = this.buckets.get(id) ?? { tokens: ratePerMinute, at: now };
    b.tokens = Math.min(ratePerMinute, b.tokens + (now - b.at) * perMs);
    b.at = now;
    if (b.tokens < 1) {
      this.buckets.set(id, b);
      const wait = Math.ceil((1 - b.tokens) / perMs / 1000);
      throw new BaremetalError("transient", `token ${id} (${name}) is over its rate of ${ratePerMinute} requests per minute; retry in ${wait} s`, { httpStatus: 429, messageId: "TooManyRequests", retryAfterSeconds: wait });
    }
    b.tokens -= 1;
    this.buckets.set(id, b);
  }
}
