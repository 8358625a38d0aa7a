/**
 * The file storage driver's volumes, snapshots and clones on a real filesystem (a temp directory),
 * without an iSCSI target (export.test.ts has the real tgtd). Allocation is read back with stat(2)
 * (st_blocks) and, for sharing and independence, by reading the files' bytes.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isBaremetalError } from "../../core/errors";
import { FileStorageDriver } from "./driver";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "resolved";
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return e.property ? `${e.code}:${e.property}` : e.code;
  }
}

async function messageOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("expected a rejection");
}

function writeAt(file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, "r+");
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

function readAt(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, "r");
  try {
    const b = Buffer.alloc(length);
    fs.readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

describe("file storage driver: volumes, snapshots, clones (real filesystem)", () => {
  let root: string;
  let dir: string;
  let drv: FileStorageDriver;

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), "file-pool-"));
    dir = path.join(root, "lab");
    drv = new FileStorageDriver({ address: `file://${dir}` });
  });
  afterEach(async () => {
    await drv.close();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it("creates a sparse volume of exactly its size (the directory on first use), reads it back, lists it", async () => {
    const v = await drv.createVolume({ name: "db0", sizeBytes: 10 * GiB });
    expect(v).toEqual({ name: "db0", pool: "lab", sizeBytes: 10 * GiB, usedBytes: 0 });
    const st = fs.statSync(path.join(dir, "db0.img"));
    expect(st.size).toBe(10 * GiB);
    expect(st.blocks).toBe(0);
    expect(st.mode & 0o777).toBe(0o600);
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    expect(await drv.path("db0")).toBe(path.join(dir, "db0.img"));

    writeAt(path.join(dir, "db0.img"), 5 * GiB, Buffer.alloc(MiB, 0x5a));
    const after = await drv.getVolume("db0");
    expect(after?.usedBytes).toBeGreaterThanOrEqual(MiB);
    expect(after?.usedBytes).toBeLessThan(2 * MiB);

    await drv.createVolume({ name: "db1", sizeBytes: MiB });
    await drv.createVolume({ name: "web0", sizeBytes: MiB });
    expect((await drv.listVolumes()).map((x) => x.name)).toEqual(["db0", "db1", "web0"]);
    expect((await drv.listVolumes({ namePrefix: "db" })).map((x) => x.name)).toEqual(["db0", "db1"]);
    expect(await drv.getVolume("nothere")).toBeUndefined();
    expect(await codeOf(drv.path("nothere"))).toBe("not-found");
    expect(await codeOf(drv.createVolume({ name: "db0", sizeBytes: MiB }))).toBe("conflict");
    expect(fs.readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  it("refuses bad names and sizes, naming the property", async () => {
    expect(await codeOf(drv.createVolume({ name: "../etc", sizeBytes: MiB }))).toBe("validation:name");
    expect(await codeOf(drv.createVolume({ name: "Upper", sizeBytes: MiB }))).toBe("validation:name");
    expect(await codeOf(drv.createVolume({ name: "a@b", sizeBytes: MiB }))).toBe("validation:name");
    expect(await codeOf(drv.createVolume({ name: "ok", sizeBytes: 1000 }))).toBe("validation:sizeBytes");
    expect(await codeOf(drv.createVolume({ name: "ok", sizeBytes: 0 }))).toBe("validation:sizeBytes");
    expect(await codeOf(drv.cloneVolume({ name: "c", from: "nosnap" }))).toBe("validation:from");
    expect(await codeOf(drv.cloneVolume({ name: "c", from: "otherpool/v@s" }))).toBe("validation:from");
    expect(() => new FileStorageDriver({ address: "file://relative/dir" })).toThrow(/absolute|file:/);
    expect(() => new FileStorageDriver({ address: "ceph://mon/pool" })).toThrow(/file:\/\//);
    expect(() => new FileStorageDriver({ address: "file:///a,b" })).toThrow(/','/);
    expect(() => new FileStorageDriver({ address: `file://${dir}`, iscsi: { portal: "127.0.0.1:3260", iqnPrefix: "NotAnIqn" } })).toThrow(/IQN prefix/);
  });

  it("grows a volume (never shrinks); the data stays", async () => {
    await drv.createVolume({ name: "v", sizeBytes: 4 * MiB });
    writeAt(path.join(dir, "v.img"), 0, Buffer.from("hello"));
    expect((await drv.resizeVolume("v", 8 * MiB)).sizeBytes).toBe(8 * MiB);
    expect(fs.statSync(path.join(dir, "v.img")).size).toBe(8 * MiB);
    expect(readAt(path.join(dir, "v.img"), 0, 5).toString()).toBe("hello");
    expect((await drv.resizeVolume("v", 8 * MiB)).sizeBytes).toBe(8 * MiB);
    expect(await codeOf(drv.resizeVolume("v", 4 * MiB))).toBe("validation:sizeBytes");
    expect(await codeOf(drv.resizeVolume("gone", 4 * MiB))).toBe("not-found");
  });

  it("snapshots are read-only sparse copies; clones share their content, record the parent, and are independent", async () => {
    await drv.createVolume({ name: "golden", sizeBytes: 64 * MiB });
    const g = path.join(dir, "golden.img");
    writeAt(g, 0, Buffer.alloc(4096, 0x11));
    writeAt(g, 32 * MiB, Buffer.alloc(4096, 0x22));

    const snap = await drv.createSnapshot("golden", "v1", { protect: true });
    expect(snap).toEqual({ volume: "golden", name: "v1", protected: true, children: [] });
    const s = path.join(dir, "golden@v1.img");
    expect(fs.statSync(s).mode & 0o777).toBe(0o444);
    expect(fs.statSync(s).size).toBe(64 * MiB);
    expect(fs.statSync(s).blocks * 512).toBeLessThan(MiB); // holes stayed holes
    expect(await codeOf(drv.createSnapshot("golden", "v1"))).toBe("conflict");
    expect(await codeOf(drv.createSnapshot("nothere", "v1"))).toBe("not-found");

    const c = await drv.cloneVolume({ name: "node1-root", from: "lab/golden@v1", sizeBytes: 128 * MiB });
    expect(c).toMatchObject({ name: "node1-root", pool: "lab", sizeBytes: 128 * MiB, parent: "lab/golden@v1" });
    expect(c.usedBytes).toBeLessThan(MiB);
    const c2 = await drv.cloneVolume({ name: "node2-root", from: "golden@v1" });
    expect(c2.sizeBytes).toBe(64 * MiB);
    const cf = path.join(dir, "node1-root.img");
    expect(readAt(cf, 0, 4096).equals(Buffer.alloc(4096, 0x11))).toBe(true);
    expect(readAt(cf, 32 * MiB, 4096).equals(Buffer.alloc(4096, 0x22))).toBe(true);
    expect(fs.statSync(cf).mode & 0o777).toBe(0o600);

    // independent: writes to the clone reach neither the snapshot nor the origin, and back
    writeAt(cf, 0, Buffer.alloc(4096, 0x33));
    writeAt(g, 32 * MiB, Buffer.alloc(4096, 0x44));
    expect(readAt(s, 0, 4096).equals(Buffer.alloc(4096, 0x11))).toBe(true);
    expect(readAt(s, 32 * MiB, 4096).equals(Buffer.alloc(4096, 0x22))).toBe(true);
    expect(readAt(cf, 32 * MiB, 4096).equals(Buffer.alloc(4096, 0x22))).toBe(true);
    expect(readAt(path.join(dir, "node2-root.img"), 0, 4096).equals(Buffer.alloc(4096, 0x11))).toBe(true);

    expect(await drv.listSnapshots("golden")).toEqual([
      { volume: "golden", name: "v1", protected: true, children: ["lab/node1-root", "lab/node2-root"] },
    ]);
    expect(await codeOf(drv.cloneVolume({ name: "node1-root", from: "golden@v1" }))).toBe("conflict");
    expect(await codeOf(drv.cloneVolume({ name: "x", from: "golden@nope" }))).toBe("not-found");
    expect(await codeOf(drv.cloneVolume({ name: "x", from: "golden@v1", sizeBytes: MiB }))).toBe("validation:sizeBytes");
  });

  it("a snapshot with clones, and its volume, cannot be deleted (conflict naming the clones); deletes are idempotent", async () => {
    await drv.createVolume({ name: "base", sizeBytes: MiB });
    await drv.createSnapshot("base", "s1");
    await drv.createSnapshot("base", "s2");
    await drv.cloneVolume({ name: "kid", from: "base@s1" });
    // cloning protects the snapshot
    expect((await drv.listSnapshots("base")).find((x) => x.name === "s1")?.protected).toBe(true);

    expect(await messageOf(drv.deleteSnapshot("base", "s1"))).toMatch(/clones \(lab\/kid\)/);
    expect(await codeOf(drv.deleteSnapshot("base", "s1"))).toBe("conflict");
    expect(await messageOf(drv.deleteVolume("base"))).toMatch(/base@s1 \(clones: lab\/kid\)/);

    await drv.deleteSnapshot("base", "s2");
    await drv.deleteSnapshot("base", "s2");
    await drv.deleteVolume("kid");
    await drv.deleteVolume("kid");
    await drv.deleteVolume("base"); // takes its remaining snapshot (no clones left) with it
    expect(fs.readdirSync(dir)).toEqual([]);
    expect(await drv.listSnapshots("base")).toEqual([]);
  });

  it("operations on one driver run one at a time; concurrent creators of one name: exactly one wins", async () => {
    const other = new FileStorageDriver({ address: `file://${dir}` });
    const results = await Promise.allSettled([
      drv.createVolume({ name: "race", sizeBytes: MiB }),
      other.createVolume({ name: "race", sizeBytes: 2 * MiB }),
      drv.createVolume({ name: "race", sizeBytes: 4 * MiB }),
    ]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    for (const r of results) if (r.status === "rejected") expect(isBaremetalError(r.reason) && r.reason.code).toBe("conflict");
    expect(fs.readdirSync(dir)).toEqual(["race.img"]);
    await other.close();
  });

  const asRoot = typeof process.getuid === "function" && process.getuid() === 0;
  // Mounting a small tmpfs needs root; the reason is in the test's name.
  (asRoot ? it : it.skip)("a full filesystem (a 4 MiB tmpfs, needs root): snapshot and clone fail with a clear error, nothing half-made stays", async () => {
    const mnt = path.join(root, "small");
    fs.mkdirSync(mnt);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mnt]);
    try {
      const small = new FileStorageDriver({ address: `file://${mnt}` });
      await small.createVolume({ name: "big", sizeBytes: 1024 * MiB }); // sparse: fits
      writeAt(path.join(mnt, "big.img"), 100 * MiB, Buffer.alloc(3 * MiB, 0x77));
      const err = await messageOf(small.createSnapshot("big", "s1"));
      expect(err).toMatch(/filesystem is full \(ENOSPC\)/);
      expect(await codeOf(small.createSnapshot("big", "s1"))).toBe("backend");
      expect(fs.readdirSync(mnt)).toEqual(["big.img"]);
      expect(await small.listSnapshots("big")).toEqual([]);
      expect(readAt(path.join(mnt, "big.img"), 100 * MiB, 16).equals(Buffer.alloc(16, 0x77))).toBe(true);
      await small.deleteVolume("big");
      await small.close();
    } finally {
      execFileSync("umount", [mnt]);
    }
  });

  it("without an iSCSI target configured, exports are a validation error on iscsi", async () => {
    await drv.createVolume({ name: "v", sizeBytes: MiB });
    expect(await codeOf(drv.listExports())).toBe("validation:iscsi");
    expect(
      await codeOf(Promise.resolve().then(() => drv.exportVolume({ volume: "v", initiatorIqn: "iqn.2025-01.lab:n1", chapUser: "n1", chapSecret: "0123456789abcdef" }))),
    ).toBe("validation:iscsi");
  });
});
