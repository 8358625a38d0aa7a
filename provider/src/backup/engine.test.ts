/**
 * The backup engine on a file backup target, with the FAKE in-memory storage driver (which reports
 * changes since a snapshot, like Ceph) and the real file storage driver (which does not: the
 * engine then dedups by content). Real Ceph and radosgw are in the e2e tests.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { BaremetalError, isBaremetalError } from "../core/errors";
import { FileBackupTarget } from "../drivers/backup-file/driver";
import type { BackupTargetDriver, PutOptions } from "../drivers/kinds/backup-target";
import { FakeStorageDriver } from "../drivers/storage-fake";
import { FileStorageDriver } from "../drivers/storage-file/driver";
import { CELL_BYTES, chunkKey, collectGarbage, deleteBackups, keyWrapper, listManifests, type Manifest, manifestKey, readManifest, restoreBackup, takeBackup } from "./engine";

const MiB = 1024 * 1024;

async function failure(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return { code: e.code, message: e.message };
  }
  throw new Error("expected a rejection");
}

async function keysUnder(target: FileBackupTarget, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of target.list(prefix)) out.push(o.key);
  return out;
}

describe("backup engine", () => {
  let dir: string;
  let target: FileBackupTarget;
  const prefix = "project-a/volumes/db/";
  const material = randomBytes(64);
  const wrapper = keyWrapper("local", "key-1", material);

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "backup-engine-"));
    fs.mkdirSync(path.join(dir, "target"));
    target = new FileBackupTarget({ address: `file://${dir}/target` });
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test("full then incremental (changes reported by the backend): only changed cells move; each backup restores bit for bit", async () => {
    const s = new FakeStorageDriver();
    await s.createVolume({ name: "db", sizeBytes: 64 * MiB });
    const a = randomBytes(10 * MiB);
    s.write("db", 0, a);
    s.write("db", 40 * MiB, Buffer.from("tail of the volume"));
    const at1 = s.read("db");
    const b1 = await takeBackup({ storage: s, backend: "fake", volume: "db", target, prefix, id: "b1", mode: "envelope", wrapper });
    expect(b1.cells.map((c) => c[0])).toEqual([0, 1, 2, 10]);
    expect(b1.stats.chunksStored).toBe(4);
    expect(b1.snapshot).toBe("backup-b1");

    // 4 KiB changed in cell 1, a new cell 5, cell 10 zeroed.
    s.write("db", 5 * MiB, Buffer.alloc(4096, 7));
    s.write("db", 21 * MiB, Buffer.alloc(MiB, 9));
    s.write("db", 40 * MiB, Buffer.alloc(64 * 1024));
    const at2 = s.read("db");
    const b2 = await takeBackup({ storage: s, backend: "fake", volume: "db", target, prefix, id: "b2", mode: "envelope", wrapper, parent: b1 });
    expect(b2.parent).toBe("b1");
    expect(b2.cells.map((c) => c[0])).toEqual([0, 1, 2, 5]);
    expect(b2.stats.chunksStored).toBe(2);
    expect(b2.stats.bytesRead).toBe(64 * 1024 + MiB + 64 * 1024); // the fake reports changes in 64 KiB blocks
    expect(b2.stats.bytesStored).toBeLessThan(2 * CELL_BYTES + 100);
    // The parent's snapshot went; this backup's stays for the next one.
    expect((await s.listSnapshots("db")).map((x) => x.name)).toEqual(["backup-b2"]);

    for (const [m, want] of [
      [b1, at1],
      [b2, at2],
    ] as const) {
      await s.createVolume({ name: `r-${m.id}`, sizeBytes: 64 * MiB });
      const r = await restoreBackup({ manifest: await readManifest(target, prefix, m.id), target, prefix, wrapper, storage: s, volume: `r-${m.id}` });
      expect(r.verified).toBe(true);
      expect(s.read(`r-${m.id}`).equals(want)).toBe(true);
    }
    // Nothing in the target is plaintext.
    for (const k of await keysUnder(target, `${prefix}chunks/`)) expect(fs.readFileSync(path.join(dir, "target", k)).includes(a.subarray(0, 64))).toBe(false);
  });

  test("a backend that cannot tell changes (file volumes): every cell is read, known chunks are not stored again", async () => {
    const vols = path.join(dir, "vols");
    fs.mkdirSync(vols);
    const s = new FileStorageDriver({ address: `file://${vols}` });
    await s.createVolume({ name: "db", sizeBytes: 32 * MiB });
    const file = path.join(vols, "db.img");
    const data = randomBytes(12 * MiB);
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, data, 0, data.length, 0);
    const b1 = await takeBackup({ storage: s, backend: "lab", volume: "db", target, prefix, id: "b1", mode: "envelope", wrapper });
    expect(b1.stats.chunksStored).toBe(3);
    fs.writeSync(fd, Buffer.alloc(100, 1), 0, 100, 4 * MiB + 10);
    fs.closeSync(fd);
    const at2 = fs.readFileSync(file);
    const b2 = await takeBackup({ storage: s, backend: "lab", volume: "db", target, prefix, id: "b2", mode: "envelope", wrapper, parent: b1 });
    expect(b2.stats.chunksStored).toBe(1);
    expect(b2.stats.chunksReused).toBe(2);
    expect(b2.stats.bytesRead).toBe(12 * MiB);
    await s.createVolume({ name: "r", sizeBytes: 32 * MiB });
    await restoreBackup({ manifest: b2, target, prefix, wrapper, storage: s, volume: "r" });
    expect(fs.readFileSync(path.join(vols, "r.img")).equals(at2)).toBe(true);
    await s.close();
  });

  test("source mode stores the (already encrypted) cells as they are; envelope refuses without a key", async () => {
    const s = new FakeStorageDriver();
    await s.createVolume({ name: "luks", sizeBytes: 8 * MiB });
    const cipher = randomBytes(MiB);
    s.write("luks", 0, cipher);
    const b = await takeBackup({ storage: s, backend: "fake", volume: "luks", target, prefix, id: "s1", mode: "source" });
    expect(b.encryption).toEqual({ mode: "source", chunkIds: "sha256" });
    expect(b.cells[0][1]).toBe(createHash("sha256").update(s.read("luks").subarray(0, CELL_BYTES)).digest("hex"));
    const stored = fs.readFileSync(path.join(dir, "target", chunkKey(prefix, b.cells[0][1])));
    expect(stored.subarray(0, MiB).equals(cipher)).toBe(true);
    const r = await failure(takeBackup({ storage: s, backend: "fake", volume: "luks", target, prefix, id: "s2", mode: "envelope" }));
    expect(r.code).toBe("validation");
    expect(r.message).toMatch(/give keyId/);
  });

  test("another key cannot restore (auth), a damaged chunk is caught, a forged manifest is caught", async () => {
    const s = new FakeStorageDriver();
    await s.createVolume({ name: "db", sizeBytes: 8 * MiB });
    s.write("db", 0, randomBytes(MiB));
    const b = await takeBackup({ storage: s, backend: "fake", volume: "db", target, prefix, id: "b1", mode: "envelope", wrapper });
    await s.createVolume({ name: "r", sizeBytes: 8 * MiB });
    const wrong = await failure(restoreBackup({ manifest: b, target, prefix, wrapper: keyWrapper("local", "key-2", randomBytes(64)), storage: s, volume: "r" }));
    expect(wrong.code).toBe("auth");
    expect(wrong.message).toMatch(/does not unwrap with key key-2/);

    const chunk = path.join(dir, "target", chunkKey(prefix, b.cells[0][1]));
    const body = fs.readFileSync(chunk);
    body[100] ^= 1;
    fs.chmodSync(chunk, 0o600);
    fs.writeFileSync(chunk, body);
    const damaged = await failure(restoreBackup({ manifest: b, target, prefix, wrapper, storage: s, volume: "r" }));
    expect(damaged.message).toMatch(/does not decrypt/);

    const mf = path.join(dir, "target", manifestKey(prefix, "b1"));
    const m = JSON.parse(fs.readFileSync(mf, "utf8"));
    m.cells[0][0] = 1;
    fs.writeFileSync(mf, JSON.stringify(m));
    expect((await failure(readManifest(target, prefix, "b1"))).message).toMatch(/does not match its digest/);
  });

  test("an interrupted backup leaves no manifest (nothing a restore could pick up) and garbage collection removes its chunks", async () => {
    const s = new FakeStorageDriver();
    await s.createVolume({ name: "db", sizeBytes: 32 * MiB });
    s.write("db", 0, randomBytes(20 * MiB));
    const r = await failure(
      takeBackup({
        storage: s,
        backend: "fake",
        volume: "db",
        target,
        prefix,
        id: "half",
        mode: "envelope",
        wrapper,
        concurrency: 1,
        afterChunk: (n) => {
          if (n === 2) throw new BaremetalError("transient", "the target went away");
        },
      }),
    );
    expect(r.message).toMatch(/went away/);
    expect(await listManifests(target, prefix)).toEqual([]);
    expect((await keysUnder(target, `${prefix}chunks/`)).length).toBeGreaterThan(0);
    expect((await s.listSnapshots("db")).length).toBe(0);
    expect((await collectGarbage(target, prefix)).chunksDeleted).toBeGreaterThan(0);
    expect(await keysUnder(target, `${prefix}chunks/`)).toEqual([]);
  });

  test("deleting a backup keeps the chunks later backups use; deleting all leaves nothing", async () => {
    const s = new FakeStorageDriver();
    await s.createVolume({ name: "db", sizeBytes: 16 * MiB });
    s.write("db", 0, randomBytes(8 * MiB));
    const b1 = await takeBackup({ storage: s, backend: "fake", volume: "db", target, prefix, id: "b1", mode: "envelope", wrapper });
    s.write("db", 0, randomBytes(MiB));
    const b2 = await takeBackup({ storage: s, backend: "fake", volume: "db", target, prefix, id: "b2", mode: "envelope", wrapper, parent: b1 });
    const want = s.read("db");
    expect((await deleteBackups(target, prefix, ["b1"])).chunksDeleted).toBe(1);
    await s.createVolume({ name: "r", sizeBytes: 16 * MiB });
    await restoreBackup({ manifest: b2, target, prefix, wrapper, storage: s, volume: "r" });
    expect(s.read("r").equals(want)).toBe(true);
    // b2 still carries b1's data key for the chunk it shares.
    expect(Object.keys((b2.encryption as { keys: Record<string, string> }).keys).sort()).toEqual(["b1", "b2"]);
    await deleteBackups(target, prefix, ["b2"]);
    expect(await keysUnder(target, prefix)).toEqual([]);
  });

  test("new chains take keyed aes-ghash ids (a LUKS2 volume too, when given a key); a restore needs that key; a chain keeps the ids it started with", async () => {
    const s = new FakeStorageDriver();
    await s.createVolume({ name: "db", sizeBytes: 16 * MiB });
    s.write("db", 0, randomBytes(6 * MiB));
    const base = { storage: s, backend: "fake", volume: "db", target, prefix } as const;

    // Envelope: aes-ghash, 128-bit ids.
    const e1 = await takeBackup({ ...base, id: "e1", mode: "envelope", wrapper });
    expect(e1.encryption).toMatchObject({ mode: "envelope", chunkIds: "aes-ghash", keyId: "key-1" });
    for (const c of e1.cells) expect(c[1]).toMatch(/^[0-9a-f]{32}$/);

    // Source with a key: aes-ghash under an id key wrapped by it; the ciphertext stored as it is.
    const prefixL = "project-a/volumes/luks/";
    const k1 = await takeBackup({ ...base, prefix: prefixL, id: "k1", mode: "source", wrapper });
    expect(k1.encryption).toMatchObject({ mode: "source", chunkIds: "aes-ghash", keyManager: "local", keyId: "key-1" });
    expect(typeof (k1.encryption as { idKey?: string }).idKey).toBe("string");
    expect(fs.readFileSync(path.join(dir, "target", chunkKey(prefixL, k1.cells[0][1]))).equals(s.read("db").subarray(0, CELL_BYTES))).toBe(true);
    // The same content under another chain's key: other ids (nothing links two sources' chunks).
    expect(k1.cells[0][1]).not.toBe(e1.cells[0][1]);
    await s.createVolume({ name: "r1", sizeBytes: 16 * MiB });
    const noKey = await failure(restoreBackup({ manifest: k1, target, prefix: prefixL, storage: s, volume: "r1" }));
    expect(noKey.code).toBe("validation");
    expect(noKey.message).toMatch(/its chunk ids are keyed with key key-1 of key manager local; give that key \(keyId\)/);
    const wrong = await failure(restoreBackup({ manifest: k1, target, prefix: prefixL, wrapper: keyWrapper("local", "key-2", randomBytes(64)), storage: s, volume: "r1" }));
    expect(wrong.code).toBe("auth");
    await restoreBackup({ manifest: k1, target, prefix: prefixL, wrapper, storage: s, volume: "r1" });
    expect(s.read("r1").equals(s.read("db"))).toBe(true);
    // An incremental on a keyed chain without the key: refused, naming it.
    const incNoKey = await failure(takeBackup({ ...base, prefix: prefixL, id: "k2", mode: "source", parent: k1 }));
    expect(incNoKey.code).toBe("validation");
    expect(incNoKey.message).toMatch(/its latest backup k1 has chunk ids keyed with key key-1 of key manager local: give that key \(keyId\) for an incremental backup, or take a full one \(incremental: false\)/);

    // A chain started with SHA-256 ids (no key, or before keyed ids) stays SHA-256 when a key is given: equal cells keep equal ids.
    const prefixS = "project-a/volumes/old/";
    const s1 = await takeBackup({ ...base, prefix: prefixS, id: "s1", mode: "source" });
    s.write("db", 5 * MiB, Buffer.alloc(4096, 3));
    const s2 = await takeBackup({ ...base, prefix: prefixS, id: "s2", mode: "source", wrapper, parent: s1 });
    expect(s2.encryption).toEqual({ mode: "source", chunkIds: "sha256" });
    expect(s2.stats.chunksStored).toBe(1);
    // An envelope chain with HMAC ids keeps them too.
    const prefixH = "project-a/volumes/hmac/";
    const h1 = await takeBackup({ ...base, prefix: prefixH, id: "h1", mode: "envelope", wrapper, chunkIds: "hmac-sha256" });
    s.write("db", 0, Buffer.alloc(4096, 4));
    const h2 = await takeBackup({ ...base, prefix: prefixH, id: "h2", mode: "envelope", wrapper, parent: h1 });
    expect(h2.encryption).toMatchObject({ chunkIds: "hmac-sha256" });
    expect(h2.stats.chunksStored).toBe(1);
    expect(h2.stats.chunksReused).toBe(1);
    for (const c of h2.cells) expect(c[1]).toMatch(/^[0-9a-f]{64}$/);
    // Keyed ids need a key; a scheme that does not fit the mode is refused.
    expect((await failure(takeBackup({ ...base, prefix: "p/x/", id: "x", mode: "source", chunkIds: "aes-ghash" }))).message).toMatch(/give keyId/);
    expect((await failure(takeBackup({ ...base, prefix: "p/x/", id: "x", mode: "source", wrapper, chunkIds: "hmac-sha256" }))).code).toBe("internal");
  });

  test("manifests written before chunk ids were recorded (no chunkIds: SHA-256 in source mode, HMAC in envelope mode) restore and continue", async () => {
    const s = new FakeStorageDriver();
    await s.createVolume({ name: "db", sizeBytes: 16 * MiB });
    s.write("db", 0, randomBytes(5 * MiB));
    const want = s.read("db");
    const strip = async (p: string, id: string): Promise<Manifest> => {
      const mf = path.join(dir, "target", manifestKey(p, id));
      const m = JSON.parse(fs.readFileSync(mf, "utf8"));
      delete m.encryption.chunkIds;
      fs.writeFileSync(mf, JSON.stringify(m));
      return readManifest(target, p, id);
    };
    const pS = "p/volumes/s/";
    await takeBackup({ storage: s, backend: "fake", volume: "db", target, prefix: pS, id: "old", mode: "source" });
    const pH = "p/volumes/h/";
    await takeBackup({ storage: s, backend: "fake", volume: "db", target, prefix: pH, id: "old", mode: "envelope", wrapper, chunkIds: "hmac-sha256" });
    for (const [p, w] of [
      [pS, undefined],
      [pH, wrapper],
    ] as const) {
      const old = await strip(p, "old");
      expect(old.encryption.chunkIds).toBeUndefined();
      await s.createVolume({ name: `r-${p.length}${w ? "h" : "s"}`, sizeBytes: 16 * MiB });
      const r = await restoreBackup({ manifest: old, target, prefix: p, wrapper: w, storage: s, volume: `r-${p.length}${w ? "h" : "s"}` });
      expect(r.verified).toBe(true);
      expect(s.read(`r-${p.length}${w ? "h" : "s"}`).equals(want)).toBe(true);
      const next = await takeBackup({ storage: s, backend: "fake", volume: "db", target, prefix: p, id: "next", mode: w ? "envelope" : "source", wrapper: w, parent: old });
      expect(next.encryption.chunkIds).toBe(w ? "hmac-sha256" : "sha256");
      expect(next.stats.chunksStored).toBe(0);
    }
  });

  test("a target that signs payloads gets each stored chunk's SHA-256 from the workers (and only stored chunks are hashed for it)", async () => {
    const puts: { key: string; body: Buffer; opts?: PutOptions }[] = [];
    const signing: BackupTargetDriver = Object.assign(Object.create(target) as BackupTargetDriver, {
      signsPayloads: true,
      put: (key: string, body: Buffer, opts?: PutOptions) => {
        puts.push({ key, body: Buffer.from(body), opts });
        return target.put(key, body, opts);
      },
    });
    const s = new FakeStorageDriver();
    await s.createVolume({ name: "db", sizeBytes: 16 * MiB });
    s.write("db", 0, randomBytes(9 * MiB));
    for (const mode of ["envelope", "source"] as const) {
      puts.length = 0;
      const p = `p/volumes/${mode}/`;
      const b1 = await takeBackup({ storage: s, backend: "fake", volume: "db", target: signing, prefix: p, id: "b1", mode, wrapper });
      const chunks = puts.filter((x) => x.key.includes("/chunks/"));
      expect(chunks.length).toBe(3);
      for (const c of chunks) expect(c.opts?.sha256).toBe(createHash("sha256").update(c.body).digest("hex"));
      // The manifest is small and hashed by the driver itself.
      expect(puts.find((x) => x.key.endsWith("b1.json"))?.opts?.sha256).toBeUndefined();
      await s.createVolume({ name: `r-${mode}`, sizeBytes: 16 * MiB });
      await restoreBackup({ manifest: b1, target, prefix: p, wrapper, storage: s, volume: `r-${mode}` });
      expect(s.read(`r-${mode}`).equals(s.read("db"))).toBe(true);
    }
  });
});
