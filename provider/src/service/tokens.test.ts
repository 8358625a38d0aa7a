/**
 * API tokens: issued once, stored hashed, checked in constant time; expiry, revocation and the
 * per-token rate limit answer 401/429 with messages that leak no secret; capabilities follow the
 * policy (a project member may manage its own keys, not another project's).
 */
import { createHash } from "node:crypto";
import { isBaremetalError } from "../core/errors";
import { Policy } from "../core/policy";
import { MemoryTokenStore, TokenService } from "./tokens";

async function failure(p: Promise<unknown>) {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  if (!isBaremetalError(e)) throw new Error(`expected a BaremetalError, got ${String(e)}`);
  return e;
}

describe("API tokens", () => {
  let now = Date.parse("2026-11-23T00:00:00Z");
  const store = new MemoryTokenStore();
  const tokens = new TokenService(store, { now: () => now, defaultRatePerMinute: 5 });

  test("issue: the secret is returned once and stored only as its SHA-256", async () => {
    const { token, record } = await tokens.issue({ name: "ci", projectId: "project-a", roles: ["member"], ttlSeconds: 3600 });
    expect(token).toMatch(/^bmt_[0-9a-f]{24}_[A-Za-z0-9_-]{43}$/);
    const secret = token.slice("bmt_".length + 24 + 1); // base64url may itself hold "_"
    const stored = await store.get(record.id);
    expect(JSON.stringify(stored)).not.toContain(secret);
    expect(stored?.secretHash).toBe(createHash("sha256").update(secret).digest("hex"));
    const caller = await tokens.authenticate(`Bearer ${token}`);
    expect(caller).toMatchObject({ tokenId: record.id, projectId: "project-a", roles: ["member"], operator: false });
  });

  test("missing, malformed, unknown and wrong tokens are 401; unknown and wrong say the same thing", async () => {
    const { token } = await tokens.issue({ name: "x", projectId: "project-a", roles: [] });
    for (const h of [undefined, "", "Basic abc", "Bearer nope"]) expect((await failure(tokens.authenticate(h))).httpStatus).toBe(401);
    const wrongSecret = token.slice(0, -4) + (token.endsWith("AAAA") ? "BBBB" : "AAAA");
    const unknownId = token.replace(/^bmt_[0-9a-f]{24}/, "bmt_" + "0".repeat(24));
    const a = await failure(tokens.authenticate(`Bearer ${wrongSecret}`));
    const b = await failure(tokens.authenticate(`Bearer ${unknownId}`));
    expect([a.code, a.httpStatus, a.message]).toEqual(["auth", 401, b.message]);
    expect(a.message).not.toContain(token.slice(29));
  });

  test("expiry and revocation", async () => {
    const { token, record } = await tokens.issue({ name: "short", projectId: "project-a", roles: [], ttlSeconds: 60 });
    await tokens.authenticate(`Bearer ${token}`);
    now += 61_000;
    expect((await failure(tokens.authenticate(`Bearer ${token}`))).message).toMatch(/expired at .*ask for a new one/);
    const long = await tokens.issue({ name: "long", projectId: "project-a", roles: [] });
    await tokens.revoke(long.record.id);
    await tokens.revoke(long.record.id); // idempotent
    expect((await failure(tokens.authenticate(`Bearer ${long.token}`))).message).toMatch(new RegExp(`token ${long.record.id} \\(long\\) was revoked`));
    expect(record.id).not.toBe(long.record.id);
  });

  test("rate limit: 5 per minute, then 429 with a retry hint; refilled with time", async () => {
    const { token } = await tokens.issue({ name: "busy", projectId: "project-a", roles: [] });
    for (let i = 0; i < 5; i++) await tokens.authenticate(`Bearer ${token}`);
    const e = await failure(tokens.authenticate(`Bearer ${token}`));
    expect([e.code, e.httpStatus, e.retryAfterSeconds]).toEqual(["transient", 429, 12]);
    now += 12_000;
    await tokens.authenticate(`Bearer ${token}`);
  });

  test("capabilities: a member manages its own project's keys, not another's; the operator everything", async () => {
    const policy = Policy.defaults();
    const member = await tokens.authenticate(`Bearer ${(await tokens.issue({ name: "m", projectId: "project-a", roles: ["member"], ratePerMinute: 100 })).token}`);
    const caps = tokens.capabilities(member, policy);
    expect(caps.ownProject).toContain("baremetal:key:create");
    expect(caps.otherProjects).not.toContain("baremetal:key:get");
    expect(caps.ownProject).not.toContain("baremetal:node:create");
    const op = await tokens.authenticate(`Bearer ${(await tokens.issue({ name: "op", roles: ["admin"], ratePerMinute: 100 })).token}`);
    expect(tokens.capabilities(op, policy).otherProjects).toContain("baremetal:node:create");
  });
});
