/**
 * The lab's `local` key manager on a real directory: CRUD and the key life cycle, project
 * isolation, nothing plain at rest (the raw bytes of every file are searched for every key's
 * material), wrong or missing master key, atomic writes and the lock file under concurrent
 * writers in several processes.
 *
 * When LOCAL_KM_WORKER=1 this file is a child process creating keys in a shared store.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { BaremetalError, isBaremetalError } from "../../core/errors";
import type { KeyAuditEvent } from "../kinds/keymanager";
import { createLocalKeyManager, LocalKeyManager } from "./driver";

async function worker(): Promise<void> {
  const km = createLocalKeyManager({ address: process.env.KM_ADDRESS!, project: process.env.KM_PROJECT!, masterKey: process.env.KM_MASTER! });
  const ids = await Promise.all(Array.from({ length: Number(process.env.KM_COUNT) }, (_, i) => km.createKey({ name: `w${process.env.KM_WORKER}-${i}`, bits: 512 }).then((k) => k.id)));
  process.stdout.write(JSON.stringify(ids));
}

if (process.env.LOCAL_KM_WORKER === "1") {
  worker().catch((e) => {
    process.stderr.write(String(e instanceof Error ? e.message : e));
    process.exit(1);
  });
} else {
  const tsxCjs = (() => {
    try {
      return require.resolve("tsx/cjs");
    } catch {
      return path.resolve(__dirname, "../../../../node_modules/tsx/dist/cjs/index.cjs");
    }
  })();

  let dir: string;
  let address: string;
  const master = randomBytes(32).toString("base64");
  const audit: KeyAuditEvent[] = [];
  const materials: Buffer[] = [];
  const drivers: LocalKeyManager[] = [];
  const km = (project: string, masterKey = master, sub = "") => {
    const d = createLocalKeyManager({ address: address + sub, project, masterKey, onAudit: (e) => audit.push(e) });
    drivers.push(d);
    return d;
  };
  const refused = async (p: Promise<unknown>): Promise<BaremetalError> => {
    try {
      await p;
    } catch (e) {
      if (!isBaremetalError(e)) throw e;
      return e;
    }
    throw new Error("expected a refusal");
  };
  const get = async (d: LocalKeyManager, id: string) => {
    const m = await d.getKeyMaterial(id);
    materials.push(m);
    return m;
  };

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "km-local-test-"));
    address = pathToFileURL(path.join(dir, "store")).href;
  });
  afterAll(async () => {
    await Promise.all(drivers.map((d) => d.close()));
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  describe("local key manager (files, AES-256-GCM at rest)", () => {
    test("create, describe, get, list, rotate, retire, destroy: the life cycle of the interface", async () => {
      const a = km("tenant-a");
      const k512 = await a.createKey({ name: "vol-db", bits: 512, labels: { volume: "db" } });
      expect(k512).toMatchObject({ name: "vol-db", project: "tenant-a", algorithm: "AES", bits: 512, state: "active", version: 1 });
      expect(k512.id).toMatch(/^local:tenant-a:[0-9a-f-]{36}$/);
      const k256 = await a.createKey({ name: "other", bits: 256 });
      expect((await get(a, k512.id)).length).toBe(64);
      expect((await get(a, k256.id)).length).toBe(32);
      expect(await a.describeKey(k512.id)).toEqual(k512);
      expect(await a.describeKey("local:tenant-a:00000000-0000-0000-0000-000000000000")).toBeUndefined();
      expect((await a.listKeys()).map((k) => k.id)).toEqual([k512.id, k256.id]);
      expect((await a.listKeys({ namePrefix: "vol-" })).map((k) => k.id)).toEqual([k512.id]);

      // a second connection (another process would do the same) reads the same material
      expect((await km("tenant-a").getKeyMaterial(k512.id)).equals(await get(a, k512.id))).toBe(true);

      const r = await a.rotateKey(k512.id);
      expect(r).toMatchObject({ name: "vol-db", bits: 512, state: "active", version: 2, replaces: k512.id });
      expect(r.id).not.toBe(k512.id);
      expect((await get(a, r.id)).equals(await get(a, k512.id))).toBe(false);
      expect((await a.describeKey(k512.id))!.state).toBe("active"); // stays usable until retired

      await a.retireKey(k512.id);
      await a.retireKey(k512.id); // idempotent
      expect((await a.describeKey(k512.id))!.state).toBe("deactivated");
      expect((await get(a, k512.id)).length).toBe(64); // still readable for decryption
      const r2 = await a.rotateKey(r.id);
      expect(r2).toMatchObject({ version: 3, replaces: r.id });

      await a.destroyKey(k512.id);
      await a.destroyKey(k512.id); // idempotent
      await a.destroyKey("local:tenant-a:00000000-0000-0000-0000-000000000000"); // never existed: fine
      expect((await a.describeKey(k512.id))!.state).toBe("destroyed");
      const gone = await refused(a.getKeyMaterial(k512.id));
      expect(gone.code).toBe("conflict");
      expect(gone.message).toMatch(/destroyed/);
      expect((await refused(a.rotateKey(k512.id))).code).toBe("conflict");
      expect((await refused(a.retireKey("local:tenant-a:00000000-0000-0000-0000-000000000000"))).code).toBe("not-found");
      expect((await refused(a.getKeyMaterial("local:tenant-a:00000000-0000-0000-0000-000000000000"))).code).toBe("not-found");

      // bad input
      expect(await refused(a.createKey({ name: "", bits: 512 }))).toMatchObject({ code: "validation", property: "name" });
      expect(await refused(a.createKey({ name: "x", bits: 128 as 256 }))).toMatchObject({ code: "validation", property: "bits" });
      expect(await refused(a.describeKey("barbican-secret-ref"))).toMatchObject({ code: "validation", property: "id" });

      // the audit trail: every operation, ids, outcomes, no material
      const ops = audit.filter((e) => e.project === "tenant-a").map((e) => `${e.operation}:${e.outcome}`);
      expect(ops).toEqual(expect.arrayContaining(["create:ok", "get:ok", "describe:ok", "list:ok", "rotate:ok", "retire:ok", "destroy:ok", "get:failed", "create:failed"]));
      const createOk = audit.find((e) => e.operation === "create" && e.outcome === "ok")!;
      expect(createOk).toMatchObject({ keyId: k512.id, project: "tenant-a", backend: `local file://${path.join(dir, "store")}` });
      expect(Date.parse(createOk.at)).not.toBeNaN();
    });

    test("isolation: project B cannot describe, read, rotate, retire or destroy project A's keys (auth), nor see them in its list", async () => {
      const a = km("tenant-a");
      const b = km("tenant-b");
      const ka = await a.createKey({ name: "a-secret", bits: 512 });
      const kb = await b.createKey({ name: "b-secret", bits: 512 });
      for (const op of [() => b.describeKey(ka.id), () => b.getKeyMaterial(ka.id), () => b.rotateKey(ka.id), () => b.retireKey(ka.id), () => b.destroyKey(ka.id)]) {
        const e = await refused(op());
        expect(e.code).toBe("auth");
        expect(e.message).toMatch(/belongs to another project/);
      }
      expect((await b.listKeys()).map((k) => k.id)).toEqual([kb.id]);
      expect((await a.listKeys()).map((k) => k.id)).not.toContain(kb.id);
      expect((await a.describeKey(ka.id))!.state).toBe("active"); // B's attempts changed nothing
      const denied = audit.filter((e) => e.project === "tenant-b" && e.outcome === "denied");
      expect(denied.map((e) => e.operation).sort()).toEqual(["describe", "destroy", "get", "retire", "rotate"]);
      expect(denied.every((e) => e.keyId === ka.id)).toBe(true);
      // a project name cannot reach outside the directory
      expect(() => km("../tenant-a")).toThrow(expect.objectContaining({ code: "validation", property: "project" }));
      // A's file renamed to B's does not make it B's
      const other = path.join(dir, "swap");
      await fs.mkdir(other);
      await fs.copyFile(path.join(dir, "store", "tenant-a.keys.json"), path.join(other, "tenant-b.keys.json"));
      const e = await refused(km("tenant-b", master, "/../swap").listKeys());
      expect(e.code).toBe("backend");
      expect(e.message).toMatch(/is not project tenant-b's local key store/);
    });

    test("at rest: no key material in any file, in any encoding; files 0600; a sealed key moved to another entry does not open", async () => {
      const a = km("tenant-a");
      for (const k of await a.listKeys()) if (k.state !== "destroyed") await get(a, k.id);
      for (const k of await km("tenant-b").listKeys()) await get(km("tenant-b"), k.id);
      expect(materials.length).toBeGreaterThanOrEqual(6);
      const storeDir = path.join(dir, "store");
      const files = await fs.readdir(storeDir);
      expect(files.sort()).toEqual(["tenant-a.keys.json", "tenant-b.keys.json"]); // no temp or lock file left
      for (const f of files) {
        const raw = await fs.readFile(path.join(storeDir, f));
        expect(((await fs.stat(path.join(storeDir, f))).mode & 0o777).toString(8)).toBe("600");
        for (const m of materials) {
          expect(raw.includes(m)).toBe(false);
          expect(raw.includes(m.subarray(0, 8))).toBe(false);
          for (const form of [m.toString("hex"), m.toString("base64"), m.toString("base64url"), m.toString("hex").toUpperCase()]) {
            expect(raw.includes(Buffer.from(form))).toBe(false);
            expect(raw.includes(Buffer.from(form.slice(0, 12)))).toBe(false);
          }
        }
        expect(raw.includes(Buffer.from(master))).toBe(false);
      }
      // the audit trail carries no material either
      const auditText = Buffer.from(JSON.stringify(audit));
      for (const m of materials) expect(auditText.includes(Buffer.from(m.toString("base64")))).toBe(false);

      // tampering: the sealed bytes of one key pasted into another key's entry
      const file = path.join(storeDir, "tenant-a.keys.json");
      const store = JSON.parse(await fs.readFile(file, "utf8")) as { keys: Record<string, { material?: unknown; state: string }> };
      const live = Object.entries(store.keys).filter(([, k]) => k.material);
      expect(live.length).toBeGreaterThanOrEqual(2);
      const saved = await fs.readFile(file);
      live[1][1].material = live[0][1].material;
      await fs.writeFile(file, JSON.stringify(store));
      const e = await refused(a.getKeyMaterial(live[1][0]));
      expect(e.code).toBe("backend");
      expect(e.message).toMatch(/does not decrypt under the store's master key/);
      await fs.writeFile(file, saved);
    });

    test("master key: missing or malformed is a validation error; a wrong one is refused (auth) before anything is read or written", async () => {
      expect(() => createLocalKeyManager({ address, project: "tenant-a" })).toThrow(expect.objectContaining({ code: "validation", property: "masterKey" }));
      expect(() => createLocalKeyManager({ address, project: "tenant-a", masterKey: randomBytes(16).toString("base64") })).toThrow(
        expect.objectContaining({ code: "validation", property: "masterKey" }),
      );
      expect(() => createLocalKeyManager({ address, project: "tenant-a", masterKey: "not base64 at all!" })).toThrow(expect.objectContaining({ code: "validation" }));
      expect(() => createLocalKeyManager({ address: "https://example.invalid/x", project: "tenant-a", masterKey: master })).toThrow(
        expect.objectContaining({ code: "validation", property: "address" }),
      );
      const file = path.join(dir, "store", "tenant-a.keys.json");
      const before = await fs.readFile(file);
      const wrong = km("tenant-a", randomBytes(32).toString("base64"));
      const [someId] = (await km("tenant-a").listKeys()).map((k) => k.id);
      for (const op of [() => wrong.listKeys(), () => wrong.getKeyMaterial(someId), () => wrong.createKey({ name: "x", bits: 256 }), () => wrong.describeKey(someId)]) {
        const e = await refused(op());
        expect(e.code).toBe("auth");
        expect(e.message).toMatch(/the master key does not open the local key store of project tenant-a/);
      }
      expect((await fs.readFile(file)).equals(before)).toBe(true);
      // an empty project store is checked too (the check value, not only the keys)
      await km("tenant-c").listKeys(); // no file yet: nothing to check, nothing written
      await km("tenant-c").createKey({ name: "c", bits: 256 });
      const c = await refused(km("tenant-c", randomBytes(32).toString("base64")).listKeys());
      expect(c.code).toBe("auth");
    });

    test("concurrent writers: 3 processes x 15 creates plus 15 in this process on one store, every key kept; a lock left by a dead process is taken over", async () => {
      const sub = "/../conc";
      const conc = path.join(dir, "conc");
      const local = km("tenant-a", master, sub);
      const run = (i: number) =>
        new Promise<string[]>((resolve, reject) => {
          const p = spawn(process.execPath, ["--require", tsxCjs, __filename], {
            env: { ...process.env, LOCAL_KM_WORKER: "1", KM_ADDRESS: address + sub, KM_PROJECT: "tenant-a", KM_MASTER: master, KM_COUNT: "15", KM_WORKER: String(i) },
            stdio: ["ignore", "pipe", "pipe"],
          });
          let out = "";
          let err = "";
          p.stdout.on("data", (d) => (out += d));
          p.stderr.on("data", (d) => (err += d));
          p.on("close", (code) => (code === 0 ? resolve(JSON.parse(out) as string[]) : reject(new Error(`worker ${i} exited ${code}: ${err}`))));
        });
      const results = await Promise.all([run(1), run(2), run(3), Promise.all(Array.from({ length: 15 }, (_, i) => local.createKey({ name: `local-${i}`, bits: 256 }).then((k) => k.id)))]);
      const ids = results.flat();
      expect(new Set(ids).size).toBe(60);
      expect((await local.listKeys()).map((k) => k.id).sort()).toEqual([...ids].sort());
      expect((await fs.readdir(conc)).sort()).toEqual(["tenant-a.keys.json"]);

      // a lock file whose owner is gone (a PID of a process that has exited)
      const dead = await new Promise<number>((resolve) => {
        const p = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
        p.on("close", () => resolve(p.pid!));
      });
      await fs.writeFile(path.join(conc, "tenant-a.keys.json.lock"), String(dead));
      await local.createKey({ name: "after-stale-lock", bits: 256 });
      // a lock held by a live process (ours, as another writer would) makes a writer wait, then time out
      await fs.writeFile(path.join(conc, "tenant-a.keys.json.lock"), String(process.ppid));
      const impatient = createLocalKeyManager({ address: address + sub, project: "tenant-a", masterKey: master, requestTimeoutMs: 300 });
      const t = Date.now();
      const e = await refused(impatient.createKey({ name: "x", bits: 256 }));
      expect(e.code).toBe("timeout");
      expect(Date.now() - t).toBeGreaterThanOrEqual(300);
      expect(e.message).toMatch(/stayed locked by process/);
      await fs.rm(path.join(conc, "tenant-a.keys.json.lock"));
      expect((await impatient.createKey({ name: "x", bits: 256 })).state).toBe("active");
      await impatient.close();
      expect((await refused(impatient.listKeys())).code).toBe("internal");
    }, 60_000);
  });
}
