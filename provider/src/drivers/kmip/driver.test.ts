/**
 * The kmip driver and our KMIP client against a real KMIP server: PyKMIP 0.10's pykmip-server
 * (Debian python3-pykmip) on loopback, mutual TLS from a throwaway CA, two client identities
 * (CN=project-a, CN=project-b). See test/harness/kmip.ts for what PyKMIP does.
 */
import { isBaremetalError } from "../../core/errors";
import type { KeyAuditEvent, KeyManagerConnection } from "../kinds/keymanager";
import { kmipServerAvailable, KmipServerInstance, startKmipServer } from "../../../../test/harness/kmip";
import * as net from "node:net";
import { freePort, describeWithPeer } from "../../../../test/harness/processes";
import { KeyFormatType, KmipClient, Operation, requests, ResultReason, State } from "./client";
import { createKmipDriver, KmipDriver } from "./driver";

const avail = kmipServerAvailable();
// Skipped only where pykmip-server or openssl is missing (scripts/bootstrap.sh installs both), never under CI.
const d = describeWithPeer(avail, "kmip driver tests");

jest.setTimeout(60000);

async function caught(p: Promise<unknown>): Promise<{ code?: string; message: string; property?: string }> {
  try {
    await p;
  } catch (e) {
    if (isBaremetalError(e)) return { code: e.code, message: e.message, property: e.property };
    return { message: String(e) };
  }
  throw new Error("expected a failure");
}

d("kmip driver against PyKMIP", () => {
  let kmip: KmipServerInstance;
  const audit: KeyAuditEvent[] = [];
  const drivers: KmipDriver[] = [];
  const conn = (project: string, extra: Partial<KeyManagerConnection> = {}): KeyManagerConnection => ({
    address: `kmip://127.0.0.1:${kmip.port}`,
    project,
    caBundle: kmip.ca,
    clientCertificate: kmip.clients[project]?.cert,
    clientKey: kmip.clients[project]?.key,
    onAudit: (e) => audit.push(e),
    ...extra,
  });
  const driver = (project: string, extra: Partial<KeyManagerConnection> = {}) => {
    const drv = createKmipDriver(conn(project, extra));
    drivers.push(drv);
    return drv;
  };
  let a: KmipDriver;
  let b: KmipDriver;
  let startMs = 0;

  beforeAll(async () => {
    const t = Date.now();
    kmip = await startKmipServer();
    startMs = Date.now() - t;
    a = driver("project-a");
    b = driver("project-b");
  });

  afterAll(async () => {
    for (const drv of drivers) await drv.close();
    const log = kmip?.log() ?? "";
    await kmip?.stop();
    // Key material never reaches the server's log (INFO level) nor ours.
    expect(log).not.toMatch(/Request encoding|Response encoding/);
    console.log(`pykmip-server ready in ${startMs} ms`);
  });

  test("create 256- and 512-bit keys: active, AES, material of 32 and 64 bytes", async () => {
    const t0 = Date.now();
    const k256 = await a.createKey({ name: "vol-a-256", bits: 256, labels: { volume: "db" } });
    const createMs = Date.now() - t0;
    const k512 = await a.createKey({ name: "vol-a-512", bits: 512 });
    expect(k256).toMatchObject({ name: "vol-a-256", project: "project-a", algorithm: "AES", bits: 256, state: "active", version: 1 });
    expect(k512).toMatchObject({ name: "vol-a-512", bits: 512, state: "active" });
    expect(k256.createdAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    const t1 = Date.now();
    const m256 = await a.getKeyMaterial(k256.id);
    const getMs = Date.now() - t1;
    const m512 = await a.getKeyMaterial(k512.id);
    expect(m256).toHaveLength(32);
    expect(m512).toHaveLength(64);
    expect(m256.equals(m512.subarray(0, 32))).toBe(false);
    // The server itself says Active, AES, 256, Encrypt|Decrypt.
    const attrs = await a.kmip.getAttributes(k256.id, ["State", "Cryptographic Algorithm", "Cryptographic Length", "Cryptographic Usage Mask", "Name", "Object Group"]);
    expect(attrs).toMatchObject({ state: State.Active, cryptographicAlgorithm: 3, cryptographicLength: 256, cryptographicUsageMask: 12, names: ["vol-a-256"], objectGroups: ["baremetal"] });
    console.log(`create+activate ${createMs} ms, get ${getMs} ms (one TLS connection, reused)`);
    // No material in any audit event.
    for (const e of audit) for (const m of [m256, m512]) expect(JSON.stringify(e)).not.toContain(m.toString("hex"));
  });

  test("locate by name: the KMIP Name and the driver's findKeys", async () => {
    const k = await a.createKey({ name: "locate-me", bits: 256 });
    expect(await a.kmip.locate({ names: ["locate-me"] })).toEqual([k.id]);
    expect((await a.findKeys("locate-me")).map((x) => x.id)).toEqual([k.id]);
    expect(await a.kmip.locate({ names: ["no-such-name"] })).toEqual([]);
    // project-b does not see project-a's key by name either.
    expect(await b.kmip.locate({ names: ["locate-me"] })).toEqual([]);
  });

  test("rotate: new material under a new id linked to the old; the old stays active until retired, then deactivated and still readable", async () => {
    const old = await a.createKey({ name: "vol-rot", bits: 512, labels: { volume: "rot" } });
    const oldMaterial = await a.getKeyMaterial(old.id);
    const next = await a.rotateKey(old.id);
    expect(next.id).not.toBe(old.id);
    expect(next).toMatchObject({ name: "vol-rot", bits: 512, state: "active", replaces: old.id, version: 2 });
    expect((await a.getKeyMaterial(next.id)).equals(oldMaterial)).toBe(false);
    expect((await a.describeKey(old.id))?.state).toBe("active");
    // The rotated key's KMIP Name is unique: name@v2.
    expect(await a.kmip.locate({ names: ["vol-rot@v2"] })).toEqual([next.id]);
    expect((await a.findKeys("vol-rot")).map((k) => [k.id, k.version])).toEqual([
      [old.id, 1],
      [next.id, 2],
    ]);

    await a.retireKey(old.id);
    expect((await a.describeKey(old.id))?.state).toBe("deactivated");
    expect((await a.kmip.getAttributes(old.id, ["State"])).state).toBe(State.Deactivated);
    await a.retireKey(old.id); // idempotent
    expect((await a.getKeyMaterial(old.id)).equals(oldMaterial)).toBe(true); // still readable for decryption
    expect(await caught(a.rotateKey(old.id))).toMatchObject({ code: "conflict", property: "id" });
    const third = await a.rotateKey(next.id);
    expect(third).toMatchObject({ replaces: next.id, version: 3 });
  });

  test("PyKMIP 0.10 supports no ReKey (so rotation is Create + link) and no Transparent Symmetric Key format", async () => {
    const k = await a.createKey({ name: "rekey-probe", bits: 256 });
    const results = await a.kmip.batchResults([requests.reKey(k.id)]);
    expect(results[0]).toMatchObject({ status: 1, reason: ResultReason.OperationNotSupported });
    const ops = await a.kmip.supportedOperations();
    expect(ops).toEqual(expect.arrayContaining([Operation.Create, Operation.Get, Operation.Locate, Operation.Activate, Operation.Revoke, Operation.Destroy]));
    expect(ops).not.toContain(Operation.ReKey);
    // PyKMIP keeps keys Raw and converts to no other format: Transparent Symmetric Key is refused.
    const transparent = await a.kmip.batchResults([requests.get(k.id, KeyFormatType.TransparentSymmetricKey)]);
    expect(transparent[0]).toMatchObject({ status: 1, reason: ResultReason.KeyFormatTypeNotSupported });
    expect((await a.kmip.get(k.id, KeyFormatType.Raw)).material).toHaveLength(32);
  });

  test("destroy: revoked then destroyed; afterwards get is refused (not-found) and destroy is idempotent", async () => {
    const k = await a.createKey({ name: "doomed", bits: 256 });
    await a.destroyKey(k.id);
    expect(await a.describeKey(k.id)).toBeUndefined();
    const refused = await caught(a.getKeyMaterial(k.id));
    expect(refused).toMatchObject({ code: "not-found", property: "id" });
    expect(refused.message).toContain(`key ${k.id}`);
    await a.destroyKey(k.id);
    // A retired key is destroyed without a second Revoke.
    const r = await a.createKey({ name: "doomed-2", bits: 512 });
    await a.retireKey(r.id);
    await a.destroyKey(r.id);
    expect(await a.describeKey(r.id)).toBeUndefined();
  });

  test("project isolation by certificate: project-b cannot get, describe, rotate, retire or destroy project-a's key", async () => {
    const k = await a.createKey({ name: "secret-of-a", bits: 256 });
    const before = audit.length;
    for (const [op, p] of [
      ["get", b.getKeyMaterial(k.id)],
      ["describe", b.describeKey(k.id)],
      ["rotate", b.rotateKey(k.id)],
      ["retire", b.retireKey(k.id)],
      ["destroy", b.destroyKey(k.id)],
    ] as const) {
      const e = await caught(p);
      expect({ op, ...e }).toMatchObject({ op, code: "auth", property: "id" });
      expect(e.message).toContain(`key ${k.id}`);
      expect(e.message).toContain("project-b");
    }
    const denied = audit.slice(before);
    expect(denied.map((e) => [e.operation, e.outcome, e.project, e.keyId])).toEqual(
      ["get", "describe", "rotate", "retire", "destroy"].map((op) => [op, "denied", "project-b", k.id]),
    );
    // The raw KMIP answer is Permission Denied.
    const raw = await b.kmip.batchResults([requests.get(k.id)]);
    expect(raw[0]).toMatchObject({ status: 1, reason: ResultReason.PermissionDenied });
    // project-b's list does not show it; project-a's key is untouched.
    expect((await b.listKeys()).map((x) => x.id)).not.toContain(k.id);
    expect((await a.describeKey(k.id))?.state).toBe("active");
    expect(await a.getKeyMaterial(k.id)).toHaveLength(32);
  });

  test("listKeys: the project's keys with their states, by name prefix", async () => {
    const k1 = await b.createKey({ name: "list-b-1", bits: 256 });
    const k2 = await b.createKey({ name: "list-b-2", bits: 512 });
    await b.retireKey(k2.id);
    const gone = await b.createKey({ name: "list-b-3", bits: 256 });
    await b.destroyKey(gone.id);
    const listed = await b.listKeys({ namePrefix: "list-b-" });
    expect(listed.map((k) => [k.id, k.name, k.bits, k.state, k.project])).toEqual([
      [k1.id, "list-b-1", 256, "active", "project-b"],
      [k2.id, "list-b-2", 512, "deactivated", "project-b"],
    ]);
    const all = await a.listKeys();
    expect(all.every((k) => k.project === "project-a")).toBe(true);
    expect(all.map((k) => k.id)).not.toContain(k1.id);
  });

  test("audit: one event per call, ids and outcomes, no material", async () => {
    const before = audit.length;
    const k = await a.createKey({ name: "audited", bits: 256 });
    const m = await a.getKeyMaterial(k.id);
    await a.describeKey(k.id);
    const n = await a.rotateKey(k.id);
    await a.retireKey(k.id);
    await a.destroyKey(k.id);
    await a.listKeys({ namePrefix: "audited" });
    const events = audit.slice(before);
    expect(events.map((e) => [e.operation, e.outcome, e.keyId])).toEqual([
      ["create", "ok", k.id],
      ["get", "ok", k.id],
      ["describe", "ok", k.id],
      ["create", "ok", n.id],
      ["rotate", "ok", k.id],
      ["retire", "ok", k.id],
      ["destroy", "ok", k.id],
      ["list", "ok", undefined],
    ]);
    for (const e of events) {
      expect(e.backend).toBe(`kmip kmip://127.0.0.1:${kmip.port}`);
      expect(JSON.stringify(e)).not.toContain(m.toString("hex"));
      expect(JSON.stringify(e)).not.toContain(m.toString("base64"));
    }
  });

  test("TLS: a server certificate from a CA we do not trust is refused (verification is on by default)", async () => {
    const drv = driver("project-a", { caBundle: kmip.untrusted.ca });
    const e = await caught(drv.listKeys());
    expect(e.code).toBe("tls");
    expect(e.message).toMatch(/certificate we do not trust/);
    const noCa = driver("project-a", { caBundle: undefined }); // the system's roots do not know our CA either
    expect((await caught(noCa.listKeys())).code).toBe("tls");
  });

  test("TLS: the server refuses client certificates from a CA it does not trust, without clientAuth, or without extendedKeyUsage", async () => {
    const as = (project: string, id: { cert: string; key: string }) => {
      const drv = createKmipDriver({ ...conn("project-a"), project, clientCertificate: id.cert, clientKey: id.key });
      drivers.push(drv);
      return drv;
    };
    // Another CA: the server's TLS ends the handshake (alert unknown CA).
    const e1 = await caught(as("intruder", kmip.untrusted).listKeys());
    expect(e1).toMatchObject({ code: "auth", property: "clientCertificate" });
    expect(e1.message).toMatch(/refused our client certificate \(ERR_SSL_TLSV1_ALERT_UNKNOWN_CA\)/);
    // extendedKeyUsage serverAuth only: OpenSSL on the server side refuses it (alert 43).
    const e2 = await caught(as("server-auth-only", kmip.serverAuthOnly).createKey({ name: "x", bits: 256 }));
    expect(e2).toMatchObject({ code: "auth", property: "clientCertificate" });
    expect(e2.message).toMatch(/UNSUPPORTED_CERTIFICATE/);
    // No extendedKeyUsage: TLS passes, PyKMIP answers Authentication Not Successful.
    const e3 = await caught(as("no-eku", kmip.noEku).createKey({ name: "x", bits: 256 }));
    expect(e3).toMatchObject({ code: "auth", property: "clientCertificate" });
    expect(e3.message).toMatch(/Authentication Not Successful/);
    for (const e of [e1, e2, e3]) expect(e.message).not.toMatch(/BEGIN|PRIVATE/);
  });

  test("bad input: a certificate of another project, a wrong address, bits", async () => {
    expect(() => createKmipDriver({ ...conn("project-a"), clientCertificate: kmip.clients["project-b"].cert })).toThrow(/subject CN is "project-b" but project is "project-a"/);
    expect(() => createKmipDriver({ ...conn("project-a"), address: "https://127.0.0.1:5696" })).toThrow(/kmip:\/\//);
    expect(() => createKmipDriver({ ...conn("project-a"), clientKey: undefined })).toThrow(/clientKey/);
    expect(await caught(a.createKey({ name: "x", bits: 128 as 256 }))).toMatchObject({ code: "validation", property: "bits" });
    expect(await caught(a.getKeyMaterial(""))).toMatchObject({ code: "validation", property: "id" });
    expect(await a.describeKey("999999")).toBeUndefined();
    expect(await caught(a.getKeyMaterial("999999"))).toMatchObject({ code: "not-found" });
  });

  test("server down: unavailable (transient, unsent) with a clear message", async () => {
    const port = await freePort();
    const down = driver("project-a", { address: `kmip://127.0.0.1:${port}` });
    const e = await caught(down.createKey({ name: "x", bits: 256 }));
    expect(e.code).toBe("transient");
    expect(e.message).toBe(`the KMIP server at 127.0.0.1:${port} is unavailable (connection refused): check that it runs and that the address is right`);
    const client = new KmipClient({ host: "127.0.0.1", port, ca: kmip.ca, cert: kmip.clients["project-a"].cert, key: kmip.clients["project-a"].key });
    const err = await client.locate({}).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(isBaremetalError(err) && err.code === "transient" && err.unsent).toBe(true);
    await client.close();
  });

  test("a server that accepts but never answers: timeout, and nothing left open", async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((sock) => sockets.push(sock));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      const drv = driver("project-a", { address: `kmip://127.0.0.1:${port}`, requestTimeoutMs: 400 });
      const t = Date.now();
      const e = await caught(drv.getKeyMaterial("1"));
      expect(Date.now() - t).toBeLessThan(3000);
      expect(e.code).toBe("timeout");
      expect(e.message).toBe(`the KMIP server at 127.0.0.1:${port} did not answer within 400 ms: check that it runs and is not overloaded`);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });

  test("cancelled by the connection's AbortSignal", async () => {
    const ac = new AbortController();
    const drv = driver("project-a", { signal: ac.signal });
    await drv.listKeys();
    ac.abort();
    expect((await caught(drv.listKeys())).code).toBe("cancelled");
  });

  test("parallel calls on one driver share its connection in order", async () => {
    const keys = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => a.createKey({ name: `par-${i}`, bits: i % 2 ? 512 : 256 })));
    const t = Date.now();
    const materials = await Promise.all(keys.flatMap((k) => [a.getKeyMaterial(k.id), a.getKeyMaterial(k.id)]));
    const ms = Date.now() - t;
    keys.forEach((k, i) => {
      expect(materials[2 * i]).toHaveLength(k.bits / 8);
      expect(materials[2 * i].equals(materials[2 * i + 1])).toBe(true);
    });
    console.log(`12 parallel gets on one connection: ${ms} ms`);
  });

  test("the server stopped between calls: the next call says unavailable", async () => {
    const other = await startKmipServer({ identities: ["project-c"] });
    const drv = createKmipDriver({
      address: `kmip://127.0.0.1:${other.port}`,
      project: "project-c",
      caBundle: other.ca,
      clientCertificate: other.clients["project-c"].cert,
      clientKey: other.clients["project-c"].key,
    });
    drivers.push(drv);
    try {
      const k = await drv.createKey({ name: "c", bits: 256 });
      const t = Date.now();
      await other.stop();
      const stopMs = Date.now() - t;
      const e = await caught(drv.getKeyMaterial(k.id));
      expect(e.code).toBe("transient");
      expect(e.message).toMatch(new RegExp(`KMIP server at 127\\.0\\.0\\.1:${other.port} (is unavailable \\(connection refused\\)|closed the connection)`));
      console.log(`pykmip-server stopped (SIGINT) in ${stopMs} ms`);
    } finally {
      await other.stop();
    }
  });
});
