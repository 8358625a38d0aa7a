/**
 * OIDC/JWT verification (oidc.ts) against two issuers:
 *
 * - OUR test issuer: a loopback HTTP server in this test serving discovery and a JWK set, whose
 *   tokens are signed here with node:crypto keys (RSA, P-256, Ed25519). It proves the checks one by
 *   one: good tokens of each algorithm, wrong iss/aud, expired, not yet valid, an unknown kid then
 *   key rotation (one refetch, then no more than one per interval), Cache-Control max-age, alg none,
 *   HS256 signed with the public key, an algorithm of the wrong key type, a tampered payload, the
 *   project/roles claim mapping; the 401 is always the same and its detail goes to the log only.
 * - OpenBao (a third-party issuer, test/harness/openbao.ts): its identity secrets engine's OIDC
 *   tokens (a named key, a role whose template puts project_id and roles from the entity's metadata,
 *   an entity logged in with userpass), verified by oidc.ts and accepted by the running service:
 *   GET /v1/me answers the project and roles of the claims.
 */
import { createHmac, generateKeyPairSync, type KeyObject, randomBytes, sign as signData } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startVaultServer, type VaultServerInstance } from "../../../test/harness/openbao";
import { isBaremetalError } from "../core/errors";
import { ProviderHost } from "../core/host";
import { createService } from "./api";
import { type JwsAlgorithm, type OidcLogEntry, OidcVerifier, type OidcSettings, parseOidcSettings } from "./oidc";
import { InventoryTokenStore, MemoryTokenStore, TokenService } from "./tokens";

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

interface IssuerKey {
  kid: string;
  alg: JwsAlgorithm;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

function newKey(kid: string, alg: JwsAlgorithm): IssuerKey {
  const pair =
    alg === "ES256" ? generateKeyPairSync("ec", { namedCurve: "P-256" }) : alg === "EdDSA" ? generateKeyPairSync("ed25519") : generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { kid, alg, ...pair };
}

/** OUR test issuer: discovery and JWKS on loopback, and token signing with its keys. */
class TestIssuer {
  readonly server = http.createServer((req, res) => this.answer(req, res));
  url = "";
  published: IssuerKey[] = [];
  cacheControl = "max-age=300";
  jwksRequests = 0;

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/realms/test`;
  }

  stop(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }

  private answer(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/realms/test/.well-known/openid-configuration") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ issuer: this.url, jwks_uri: `${this.url}/keys`, id_token_signing_alg_values_supported: ["RS256", "ES256", "EdDSA"] }));
    } else if (path === "/realms/test/keys") {
      this.jwksRequests++;
      const keys = this.published.map((k) => ({ ...k.publicKey.export({ format: "jwk" }), kid: k.kid, alg: k.alg, use: "sig" }));
      res.writeHead(200, { "content-type": "application/json", "cache-control": this.cacheControl });
      res.end(JSON.stringify({ keys }));
    } else {
      res.writeHead(404).end();
    }
  }

  /** A signed JWT; `header` overrides the JOSE header. */
  sign(key: IssuerKey, claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
    const h = b64({ alg: key.alg, typ: "JWT", kid: key.kid, ...header });
    const p = b64(claims);
    const data = Buffer.from(`${h}.${p}`);
    const sig =
      key.alg === "ES256"
        ? signData("sha256", data, { key: key.privateKey, dsaEncoding: "ieee-p1363" })
        : key.alg === "EdDSA"
          ? signData(null, data, key.privateKey)
          : signData("sha256", data, key.privateKey);
    return `${h}.${p}.${sig.toString("base64url")}`;
  }
}

describe("OIDC/JWT verification against our test issuer", () => {
  const issuer = new TestIssuer();
  const rsa = newKey("rsa-1", "RS256");
  const ec = newKey("ec-1", "ES256");
  const ed = newKey("ed-1", "EdDSA");
  let now = Date.parse("2026-11-23T08:00:00Z");
  const logs: OidcLogEntry[] = [];
  let verifier: OidcVerifier;
  const settings = (): OidcSettings => ({ issuer: issuer.url, audience: "baremetal-service", jwksRefetchIntervalSeconds: 60 });
  const claims = (extra: Record<string, unknown> = {}) => ({
    iss: issuer.url,
    aud: "baremetal-service",
    sub: "user-1",
    preferred_username: "alice",
    iat: Math.floor(now / 1000),
    exp: Math.floor(now / 1000) + 300,
    project_id: "project-a",
    roles: ["member", "reader"],
    ...extra,
  });
  /** The refusal of `token`: the one 401, and the detail logged for it. */
  const refusal = async (token: string, v = verifier) => {
    const before = logs.length;
    const e = await v.verify(token).then(
      () => undefined,
      (x: unknown) => x,
    );
    if (!isBaremetalError(e)) throw new Error(`expected a refusal, got ${String(e)}`);
    expect([e.code, e.httpStatus, e.message]).toEqual(["auth", 401, "the token is not valid"]);
    const refused = logs.slice(before).filter((l) => l.event === "oidc-refused");
    expect(refused).toHaveLength(1);
    expect(JSON.stringify(refused)).not.toContain(token.split(".")[2] || token);
    return refused[0].detail;
  };

  beforeAll(async () => {
    await issuer.start();
    issuer.published = [rsa, ec, ed];
  });
  beforeEach(() => {
    verifier = new OidcVerifier(settings(), { now: () => now, log: (e) => logs.push(e) });
  });
  afterAll(() => issuer.stop());

  test("good tokens of RS256, ES256 and EdDSA become the caller of their claims", async () => {
    for (const key of [rsa, ec, ed]) {
      const caller = await verifier.verify(issuer.sign(key, claims({ sub: `user-${key.alg}` })));
      expect(caller).toEqual({ tokenId: `oidc:user-${key.alg}`, tokenName: "alice", projectId: "project-a", roles: ["member", "reader"], operator: false });
    }
    expect(verifier.fetches).toBe(1); // one key set for all three
    // aud may be a list naming the service among others.
    await verifier.verify(issuer.sign(ec, claims({ aud: ["other", "baremetal-service"] })));
  });

  test("wrong iss or aud, expired, not yet valid, issued in the future, no sub: refused", async () => {
    expect(await refusal(issuer.sign(rsa, claims({ iss: `${issuer.url}/other` })))).toMatch(/iss .* is not the configured issuer/);
    expect(await refusal(issuer.sign(rsa, claims({ aud: "someone-else" })))).toMatch(/aud "someone-else" does not name baremetal-service/);
    expect(await refusal(issuer.sign(rsa, claims({ aud: undefined })))).toMatch(/aud undefined/);
    const t = Math.floor(now / 1000);
    expect(await refusal(issuer.sign(ec, claims({ exp: t - 61 })))).toMatch(/expired at/);
    await verifier.verify(issuer.sign(ec, claims({ exp: t - 30 }))); // within the 60 s skew
    expect(await refusal(issuer.sign(ec, claims({ exp: undefined })))).toMatch(/no numeric exp/);
    expect(await refusal(issuer.sign(ed, claims({ nbf: t + 120 })))).toMatch(/not valid before/);
    expect(await refusal(issuer.sign(ed, claims({ iat: t + 120 })))).toMatch(/issued in the future/);
    expect(await refusal(issuer.sign(ed, claims({ sub: undefined })))).toMatch(/no sub/);
  });

  test("alg none, HS256 signed with the issuer's public key, a disallowed alg and a key of the wrong type are refused", async () => {
    const [h, p] = issuer.sign(rsa, claims()).split(".");
    const none = `${b64({ alg: "none", typ: "JWT" })}.${p}.`;
    expect(await refusal(none)).toMatch(/alg none is refused/);
    expect(await refusal(`${b64({ alg: "none", kid: "rsa-1" })}.${p}.${h}`)).toMatch(/alg none is refused/);
    // The classic confusion: HMAC keyed with the public key's PEM, which anyone can fetch.
    const hsHeader = b64({ alg: "HS256", typ: "JWT", kid: "rsa-1" });
    const pemKey = rsa.publicKey.export({ type: "spki", format: "pem" });
    const mac = createHmac("sha256", pemKey).update(`${hsHeader}.${p}`).digest("base64url");
    expect(await refusal(`${hsHeader}.${p}.${mac}`)).toMatch(/HS256 is refused/);
    // RS384 is supported but not allowed by default.
    expect(await refusal(issuer.sign(rsa, claims(), { alg: "RS384" }))).toMatch(/RS384 is not one of the allowed RS256, ES256, EdDSA/);
    // ES256 naming the RSA key: the key is not of the algorithm's type.
    expect(await refusal(issuer.sign(ec, claims(), { kid: "rsa-1" }))).toMatch(/no key rsa-1 of type EC for ES256/);
    expect(await refusal(issuer.sign(rsa, claims(), { crit: ["exp"] }))).toMatch(/crit/);
    expect(await refusal("not.a-jwt")).toMatch(/not a JWS compact serialization/);
  });

  test("a tampered payload or signature is refused", async () => {
    const token = issuer.sign(ec, claims());
    const [h, , s] = token.split(".");
    expect(await refusal(`${h}.${b64(claims({ project_id: "project-b" }))}.${s}`)).toMatch(/signature does not verify \(ES256, key ec-1\)/);
    const flipped = Buffer.from(s, "base64url");
    flipped[5] ^= 1;
    expect(await refusal(`${token.slice(0, token.lastIndexOf(".") + 1)}${flipped.toString("base64url")}`)).toMatch(/signature does not verify/);
    // Signed by a key of the right type the issuer never published, under a published kid.
    const impostor = { ...newKey("ec-1", "ES256") };
    expect(await refusal(issuer.sign(impostor, claims()))).toMatch(/signature does not verify/);
  });

  test("an unknown kid fetches the key set again (key rotation), at most once per interval; max-age is honoured", async () => {
    issuer.published = [rsa];
    issuer.cacheControl = "public, max-age=120";
    const requests = issuer.jwksRequests;
    await verifier.verify(issuer.sign(rsa, claims()));
    expect(issuer.jwksRequests).toBe(requests + 1);
    // Rotation: the issuer publishes a new key and signs with it; the service has not seen it yet.
    now += 61_000;
    const rotated = newKey("rsa-2", "RS256");
    issuer.published = [rsa, rotated];
    expect((await verifier.verify(issuer.sign(rotated, claims()))).tokenId).toBe("oidc:user-1");
    expect(issuer.jwksRequests).toBe(requests + 2);
    // A kid nobody published: refused, and no new fetch within the interval (no fetch storm).
    expect(await refusal(issuer.sign(newKey("rsa-9", "RS256"), claims()))).toMatch(/no key rsa-9/);
    expect(await refusal(issuer.sign(newKey("rsa-9", "RS256"), claims()))).toMatch(/no key rsa-9/);
    expect(issuer.jwksRequests).toBe(requests + 2);
    // Known kids within max-age: no fetch; past max-age: the set is fetched again (the old key retired).
    now += 60_000;
    await verifier.verify(issuer.sign(rsa, claims()));
    expect(issuer.jwksRequests).toBe(requests + 2);
    issuer.published = [rotated];
    now += 61_000; // 121 s since the last fetch
    expect(await refusal(issuer.sign(rsa, claims()))).toMatch(/no key rsa-1/);
    expect(issuer.jwksRequests).toBe(requests + 3);
    await verifier.verify(issuer.sign(rotated, claims()));
    issuer.published = [rsa, ec, ed];
    issuer.cacheControl = "max-age=300";
  });

  test("the issuer unreachable: a cached key set stays in use; without one, refused", async () => {
    const down = new TestIssuer();
    await down.start();
    down.published = [ed];
    const v = new OidcVerifier({ issuer: down.url, audience: "baremetal-service", jwksRefetchIntervalSeconds: 0 }, { now: () => now, log: (e) => logs.push(e) });
    const c = (extra = {}) => ({ ...claims(), iss: down.url, ...extra });
    await v.verify(down.sign(ed, c()));
    await down.stop();
    now += 301_000; // stale
    await v.verify(down.sign(ed, c()));
    expect(logs.some((l) => l.event === "oidc-jwks-failed")).toBe(true);
    const never = new OidcVerifier({ issuer: down.url, audience: "baremetal-service" }, { now: () => now, log: (e) => logs.push(e) });
    expect(await refusal(down.sign(ed, c()), never)).toMatch(/could not be fetched/);
  });

  test("project and roles claims: configurable names, nested claims, roles as a string; no project is refused", async () => {
    const v = new OidcVerifier({ ...settings(), projectClaim: "tenant", rolesClaim: "realm_access.roles" }, { now: () => now, log: (e) => logs.push(e) });
    expect(await v.verify(issuer.sign(rsa, claims({ tenant: "project-b", realm_access: { roles: ["manager"] } })))).toMatchObject({ projectId: "project-b", roles: ["manager"] });
    expect(await verifier.verify(issuer.sign(rsa, claims({ roles: "member reader,member" })))).toMatchObject({ roles: ["member", "reader"] });
    expect(await verifier.verify(issuer.sign(rsa, claims({ roles: undefined, preferred_username: undefined })))).toMatchObject({ roles: [], tokenName: "user-1" });
    // No project: never the operator.
    expect(await refusal(issuer.sign(rsa, claims({ project_id: undefined })))).toMatch(/claim project_id \(the project\) is missing/);
    expect(await refusal(issuer.sign(rsa, claims({ roles: { admin: true } })))).toMatch(/roles.*neither a string nor a list/);
  });

  test("the token service tells JWTs from bmt_ tokens; one rate limit per subject", async () => {
    const tokens = new TokenService(new MemoryTokenStore(), { now: () => now, defaultRatePerMinute: 100, oidc: new OidcVerifier({ ...settings(), ratePerMinute: 3 }, { now: () => now, log: () => undefined }) });
    const { token } = await tokens.issue({ name: "ci", projectId: "project-a", roles: ["member"] });
    expect((await tokens.authenticate(`Bearer ${token}`)).tokenName).toBe("ci");
    const jwt = issuer.sign(ec, claims({ sub: "busy" }));
    for (let i = 0; i < 3; i++) expect((await tokens.authenticate(`Bearer ${jwt}`)).tokenId).toBe("oidc:busy");
    const e = await tokens.authenticate(`Bearer ${issuer.sign(ed, claims({ sub: "busy" }))}`).catch((x: unknown) => x);
    expect(isBaremetalError(e) && [e.httpStatus, e.retryAfterSeconds]).toEqual([429, 20]);
    expect((await tokens.authenticate(`Bearer ${issuer.sign(ed, claims({ sub: "calm" }))}`)).tokenId).toBe("oidc:calm");
    const bad = await tokens.authenticate(`Bearer ${issuer.sign(ec, claims({ aud: "x" }))}`).catch((x: unknown) => x);
    expect(isBaremetalError(bad) && [bad.httpStatus, bad.message]).toEqual([401, "the token is not valid"]);
    // Without OIDC configured, a JWT is just not a baremetal token.
    const plain = new TokenService(new MemoryTokenStore());
    const no = await plain.authenticate(`Bearer ${jwt}`).catch((x: unknown) => x);
    expect(isBaremetalError(no) && no.httpStatus).toBe(401);
  });

  test("settings are checked, naming the setting", () => {
    const bad = (raw: unknown) => {
      try {
        parseOidcSettings(raw);
      } catch (e) {
        return (e as Error).message;
      }
      throw new Error("accepted");
    };
    expect(bad({ audience: "a" })).toMatch(/^service\.oidc\.issuer: required/);
    expect(bad({ issuer: "http://idp.example/x", audience: "a" })).toMatch(/^service\.oidc\.issuer: .* must be https \(http only to a loopback address\)/);
    expect(bad({ issuer: "https://idp.example/x" })).toMatch(/^service\.oidc\.audience: required/);
    expect(bad({ issuer: "https://idp.example/x", audience: "a", algorithms: ["RS256", "HS256"] })).toMatch(/^service\.oidc\.algorithms: "HS256" is not allowed/);
    expect(bad({ issuer: "https://idp.example/x", audience: "a", algorithms: ["none"] })).toMatch(/^service\.oidc\.algorithms: "none" is not allowed/);
    expect(bad({ issuer: "https://idp.example/x", audience: "a", clockSkewSeconds: -1 })).toMatch(/^service\.oidc\.clockSkewSeconds: must be a whole number/);
    expect(bad({ issuer: "https://idp.example/x", audience: "a", issuerr: 1 })).toMatch(/^service\.oidc\.issuerr: unknown setting/);
    expect(parseOidcSettings({ issuer: "https://idp.example/x", audience: "a", algorithms: ["ES256"] })).toEqual({ issuer: "https://idp.example/x", audience: "a", algorithms: ["ES256"] });
  });
});

describe("OIDC tokens of OpenBao's identity secrets engine", () => {
  let bao: VaultServerInstance;
  const dir = mkdtempSync(join(tmpdir(), "service-oidc-"));
  const host = new ProviderHost();

  beforeAll(async () => {
    bao = await startVaultServer({ projects: [] });
  }, 90_000);

  afterAll(async () => {
    await bao?.stop();
    await host.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A root call that must succeed. */
  const must = async (method: string, path: string, body?: unknown, token?: string) => {
    const a = await bao.api(method, path, body, token);
    if (a.status !== 200 && a.status !== 204) throw new Error(`${method} ${path}: HTTP ${a.status} ${JSON.stringify(a.json?.errors ?? "")}`);
    return a.json;
  };

  test("an entity's identity token (EdDSA key, claims from entity metadata) is verified and accepted by the service", async () => {
    // The issuer: OpenBao's identity OIDC at this server's address.
    await must("POST", "identity/oidc/config", { issuer: bao.url });
    await must("POST", "identity/oidc/key/baremetal", { algorithm: "EdDSA", allowed_client_ids: ["*"], rotation_period: "1h", verification_ttl: "2h" });
    // OpenBao's templates substitute JSON values (strings come quoted), so the placeholders stand bare.
    const template = '{"project_id": {{identity.entity.metadata.project_id}}, "roles": {{identity.entity.metadata.roles}}, "preferred_username": {{identity.entity.name}}}';
    await must("POST", "identity/oidc/role/tenant", { key: "baremetal", ttl: "15m", template });
    const clientId = (await must("GET", "identity/oidc/role/tenant"))?.data?.client_id as string;
    expect(clientId).toMatch(/\S/);
    // An entity of project-a, logged in through userpass, may read its identity token only.
    await must("PUT", "sys/policies/acl/tenant-oidc", { policy: 'path "identity/oidc/token/tenant" { capabilities = ["read"] }\n' });
    await must("POST", "sys/auth/userpass", { type: "userpass" });
    const accessor = (await must("GET", "sys/auth"))?.data?.["userpass/"]?.accessor as string;
    const entity = await must("POST", "identity/entity", { name: "alice", metadata: { project_id: "project-a", roles: "member,reader" }, policies: ["tenant-oidc"] });
    const entityId = entity?.data?.id as string;
    await must("POST", "identity/entity-alias", { name: "alice", canonical_id: entityId, mount_accessor: accessor });
    const password = randomBytes(18).toString("base64url");
    await must("POST", "auth/userpass/users/alice", { password });
    const login = await must("POST", "auth/userpass/login/alice", { password });
    const clientToken = login?.auth?.client_token as string;
    const jwt = (await must("GET", "identity/oidc/token/tenant", undefined, clientToken))?.data?.token as string;
    expect(jwt.split(".")).toHaveLength(3);
    expect(JSON.parse(Buffer.from(jwt.split(".")[0], "base64url").toString())).toMatchObject({ alg: "EdDSA" });

    const issuer = `${bao.url}/v1/identity/oidc`;
    const logs: OidcLogEntry[] = [];
    const verifier = new OidcVerifier({ issuer, audience: clientId }, { log: (e) => logs.push(e) });
    expect(await verifier.verify(jwt)).toEqual({ tokenId: `oidc:${entityId}`, tokenName: "alice", projectId: "project-a", roles: ["member", "reader"], operator: false });
    // Another audience: refused.
    const other = new OidcVerifier({ issuer, audience: "not-the-role" }, { log: (e) => logs.push(e) });
    await expect(other.verify(jwt)).rejects.toMatchObject({ httpStatus: 401 });

    // The running service with this issuer configured: /v1/me answers the claims' project and roles.
    host.configure({ inventoryUrl: `sqlite://${join(dir, "inventory.db")}` });
    const tokens = new TokenService(new InventoryTokenStore(await host.providerContext().inventory()), { oidc: verifier });
    const server = createService({ host, tokens, log: () => undefined });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const me = await fetch(`${base}/v1/me`, { headers: { authorization: `Bearer ${jwt}` } });
      expect(me.status).toBe(200);
      const body = (await me.json()) as Record<string, unknown>;
      expect(body).toMatchObject({ tokenId: `oidc:${entityId}`, tokenName: "alice", projectId: "project-a", roles: ["member", "reader"], operator: false });
      expect(body.ownProject).toContain("baremetal:key:create");
      const [h, p, s] = jwt.split(".");
      const forged = JSON.parse(Buffer.from(p, "base64url").toString()) as Record<string, unknown>;
      const tampered = await fetch(`${base}/v1/me`, { headers: { authorization: `Bearer ${h}.${b64({ ...forged, project_id: "project-b" })}.${s}` } });
      expect(tampered.status).toBe(401);
      expect(((await tampered.json()) as { message: string }).message).toBe("the token is not valid");
    } finally {
      await new Promise((r) => server.close(r));
    }
    expect(JSON.stringify(logs)).not.toContain(jwt.split(".")[2]);
  }, 60_000);
});
