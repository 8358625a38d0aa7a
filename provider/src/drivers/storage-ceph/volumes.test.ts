/**
 * The ceph storage driver against a real Ceph 16 cluster (test/harness/ceph.ts: mon, mgr, one
 * BlueStore OSD on a file, cephx on), as the restricted client.baremetal (`mon 'profile rbd' osd
 * 'profile rbd pool=volumes'`). Proven here: volumes of exact sizes, read back by Ceph's own
 * `rbd info` / `rbd du` (as the admin, not through the driver); grow-only resize; idempotent delete;
 * golden images (protected snapshot) with copy-on-write clones that show their parent and use
 * almost nothing; a snapshot with clones cannot go (conflict naming them); the restricted client is
 * refused another pool (`auth`); a wrong key is `auth` and never shows up in a message; monitors that
 * do not answer are a `transient` error within the connect timeout. Every operation is timed.
 */
import { isBaremetalError } from "../../core/errors";
import { cephAvailable, CephInstance, startCeph } from "../../../../test/harness/ceph";
import { freePort, describeWithPeer } from "../../../../test/harness/processes";
import { CephStorageDriver } from "./driver";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const avail = cephAvailable();
// Skipped only where the machine has no Ceph binaries, and never under CI.
const describeCeph = describeWithPeer(avail, "storage-ceph volumes.test.ts");

async function failure(p: Promise<unknown>): Promise<{ code: string; message: string; unsent: boolean }> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return { code: e.property ? `${e.code}:${e.property}` : e.code, message: e.message, unsent: e.unsent };
  }
  throw new Error("expected a rejection");
}

describeCeph("ceph storage driver against a real Ceph 16 (rbd CLI, restricted cephx client)", () => {
  let ceph: CephInstance;
  let drv: CephStorageDriver;
  const times: Record<string, number[]> = {};
  async function timed<T>(op: string, p: () => Promise<T>): Promise<T> {
    const t0 = process.hrtime.bigint();
    try {
      return await p();
    } finally {
      (times[op] ??= []).push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  }
  const adminJson = async <T>(args: string[]) => JSON.parse(await ceph.rbd([...args, "--format", "json"])) as T;

  beforeAll(async () => {
    ceph = await startCeph({ extraPools: ["other"] });
    drv = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey });
  }, 180000);

  afterAll(async () => {
    await drv?.close();
    await ceph?.stop();
    if (ceph) {
      const ops = Object.entries(times)
        .map(([op, t]) => `${op} ${t.length > 1 ? `median ${[...t].sort((a, b) => a - b)[Math.floor(t.length / 2)].toFixed(0)} ms (n=${t.length})` : `${t[0].toFixed(0)} ms`}`)
        .join("; ");
      process.stdout.write(`ceph figures: cluster ready in ${ceph.startMs} ms (${JSON.stringify(ceph.timings)}); ${ops}\n`);
    }
  }, 60000);

  test("create: exact size, format 2 with layering, read back by Ceph itself; duplicate is a conflict", async () => {
    const v = await timed("createVolume", () => drv.createVolume({ name: "data1", sizeBytes: GiB + 512 }));
    expect(v).toEqual({ name: "data1", pool: "volumes", sizeBytes: GiB + 512, usedBytes: 0 });
    const info = await adminJson<{ size: number; format: number; features: string[] }>(["info", "volumes/data1"]);
    expect(info.size).toBe(GiB + 512);
    expect(info.format).toBe(2);
    expect(info.features).toEqual(expect.arrayContaining(["layering", "exclusive-lock", "object-map", "fast-diff"]));
    expect((await failure(drv.createVolume({ name: "data1", sizeBytes: MiB }))).code).toBe("conflict");
    expect((await failure(drv.createVolume({ name: "data2", sizeBytes: 1000 }))).code).toBe("validation:sizeBytes");
    expect((await failure(drv.createVolume({ name: "Bad_Name", sizeBytes: MiB }))).code).toBe("validation:name");
  });

  test("get and list read what Ceph has, including data written behind the driver's back", async () => {
    await drv.createVolume({ name: "data2", sizeBytes: 64 * MiB });
    // The admin writes 8 MiB into it (librbd, not through the driver): `rbd du` must see it.
    await ceph.rbd(["bench", "--io-type", "write", "--io-size", "4M", "--io-total", "8M", "--io-pattern", "seq", "volumes/data2"]);
    const got = await timed("getVolume", () => drv.getVolume("data2"));
    expect(got).toEqual({ name: "data2", pool: "volumes", sizeBytes: 64 * MiB, usedBytes: 8 * MiB });
    expect(await timed("getVolume (missing)", () => drv.getVolume("nope"))).toBeUndefined();
    const all = await timed("listVolumes", () => drv.listVolumes());
    expect(all.map((v) => v.name)).toEqual(expect.arrayContaining(["data1", "data2"]));
    expect(all.find((v) => v.name === "data2")).toEqual(got);
    expect((await drv.listVolumes({ namePrefix: "data1" })).map((v) => v.name)).toEqual(["data1"]);
  });

  test("resize grows only; same size is a no-op", async () => {
    const v = await timed("resizeVolume", () => drv.resizeVolume("data1", 2 * GiB));
    expect(v.sizeBytes).toBe(2 * GiB);
    expect((await adminJson<{ size: number }>(["info", "volumes/data1"])).size).toBe(2 * GiB);
    const shrink = await failure(drv.resizeVolume("data1", GiB));
    expect(shrink.code).toBe("validation:sizeBytes");
    expect(shrink.message).toMatch(/only grow/);
    expect((await drv.resizeVolume("data1", 2 * GiB)).sizeBytes).toBe(2 * GiB);
    expect((await failure(drv.resizeVolume("ghost", GiB))).code).toBe("not-found");
  });

  test("golden image: protected snapshot, two copy-on-write clones showing their parent and using little", async () => {
    await drv.createVolume({ name: "golden", sizeBytes: 256 * MiB });
    await ceph.rbd(["bench", "--io-type", "write", "--io-size", "4M", "--io-total", "32M", "--io-pattern", "seq", "volumes/golden"]);
    const snap = await timed("createSnapshot (protected)", () => drv.createSnapshot("golden", "v1", { protect: true }));
    expect(snap).toEqual({ volume: "golden", name: "v1", protected: true, children: [] });
    const c1 = await timed("cloneVolume", () => drv.cloneVolume({ name: "node1-root", from: "volumes/golden@v1" }));
    const c2 = await timed("cloneVolume", () => drv.cloneVolume({ name: "node2-root", from: "golden@v1", sizeBytes: 512 * MiB }));
    expect(c1).toEqual({ name: "node1-root", pool: "volumes", sizeBytes: 256 * MiB, parent: "volumes/golden@v1", usedBytes: 0 });
    expect(c2).toMatchObject({ name: "node2-root", sizeBytes: 512 * MiB, parent: "volumes/golden@v1" });
    // Ceph's own view: the clones' parent, and the space each uses.
    const info = await adminJson<{ parent?: { pool: string; image: string; snapshot: string } }>(["info", "volumes/node1-root"]);
    expect(info.parent).toMatchObject({ pool: "volumes", image: "golden", snapshot: "v1" });
    const du = await adminJson<{ images: { name: string; snapshot?: string; used_size: number }[] }>(["du", "--pool", "volumes"]);
    const used = (n: string) => du.images.filter((i) => i.name === n).reduce((s, i) => s + i.used_size, 0);
    // The golden image's data belongs to its snapshot now (rbd du counts it there).
    expect(du.images.find((i) => i.name === "golden" && i.snapshot === "v1")!.used_size).toBe(32 * MiB);
    expect(used("golden")).toBe(32 * MiB);
    expect(used("node1-root")).toBe(0);
    expect(used("node2-root")).toBe(0);
    // A write to one clone copies up only what it touches, and the other clone and the golden image are unchanged.
    await ceph.rbd(["bench", "--io-type", "write", "--io-size", "4096", "--io-total", "4096", "volumes/node1-root"]);
    const [g, n1, n2] = await Promise.all(["golden", "node1-root", "node2-root"].map((n) => drv.getVolume(n)));
    expect(n1!.usedBytes).toBeLessThanOrEqual(4 * MiB);
    expect(n1!.usedBytes).toBeGreaterThan(0);
    expect(n2!.usedBytes).toBe(0);
    expect(g!.usedBytes).toBe(32 * MiB);

    const snaps = await timed("listSnapshots", () => drv.listSnapshots("golden"));
    expect(snaps).toEqual([{ volume: "golden", name: "v1", protected: true, children: ["volumes/node1-root", "volumes/node2-root"] }]);
    expect((await failure(drv.cloneVolume({ name: "node3-root", from: "volumes/golden@v1", sizeBytes: MiB }))).code).toBe("validation:sizeBytes");
    expect((await failure(drv.cloneVolume({ name: "node3-root", from: "volumes/golden@nope" }))).code).toBe("not-found");
    expect((await failure(drv.cloneVolume({ name: "node1-root", from: "volumes/golden@v1" }))).code).toBe("conflict");
  });

  test("an unprotected snapshot is protected before its first clone", async () => {
    await drv.createVolume({ name: "golden2", sizeBytes: 16 * MiB });
    expect((await drv.createSnapshot("golden2", "base")).protected).toBe(false);
    await drv.cloneVolume({ name: "golden2-child", from: "volumes/golden2@base" });
    const snaps = await adminJson<{ name: string; protected: string }[]>(["snap", "ls", "volumes/golden2"]);
    expect(snaps).toEqual([expect.objectContaining({ name: "base", protected: "true" })]);
  });

  test("a snapshot with clones cannot be deleted, nor its volume: conflicts name the clones", async () => {
    const snapDel = await timed("deleteSnapshot (refused)", () => failure(drv.deleteSnapshot("golden", "v1")));
    expect(snapDel.code).toBe("conflict");
    expect(snapDel.message).toContain("volumes/node1-root");
    expect(snapDel.message).toContain("volumes/node2-root");
    const volDel = await failure(drv.deleteVolume("golden"));
    expect(volDel.code).toBe("conflict");
    expect(volDel.message).toMatch(/golden@v1 \(clones: volumes\/node1-root, volumes\/node2-root\)/);
    // Still all there.
    expect(await drv.getVolume("golden")).toBeDefined();
    expect((await drv.listSnapshots("golden"))[0].children).toHaveLength(2);
  });

  test("deleting the clones frees the golden image; delete is idempotent and purges unprotected snapshots", async () => {
    await timed("deleteVolume", () => drv.deleteVolume("node1-root"));
    await drv.deleteVolume("node2-root");
    await drv.deleteVolume("node2-root"); // again: nothing to do
    expect(await drv.listSnapshots("golden")).toEqual([{ volume: "golden", name: "v1", protected: true, children: [] }]);
    await timed("deleteSnapshot", () => drv.deleteSnapshot("golden", "v1"));
    await drv.deleteSnapshot("golden", "v1"); // idempotent
    expect(await drv.listSnapshots("golden")).toEqual([]);
    // A volume with a protected snapshot without clones goes with its snapshots.
    await drv.createSnapshot("golden", "v2", { protect: true });
    await drv.deleteVolume("golden");
    expect(await drv.getVolume("golden")).toBeUndefined();
    expect(JSON.parse(await ceph.rbd(["ls", "volumes", "--format", "json"]))).not.toContain("golden");
  });

  test("a volume someone has open (a watcher) is not deleted: conflict naming the client", async () => {
    await drv.createVolume({ name: "busy", sizeBytes: 16 * MiB });
    // `rbd watch` keeps the image open as client.admin until killed.
    const { spawn } = await import("node:child_process");
    // (its stdin stays open: it stops at end of input)
    const watcher = spawn("rbd", ["-c", ceph.confPath, "watch", "volumes/busy"], { stdio: ["pipe", "pipe", "pipe"] });
    try {
      await new Promise<void>((resolve) => watcher.stdout!.once("data", () => resolve()));
      const r = await failure(drv.deleteVolume("busy"));
      expect(r.code).toBe("conflict");
      expect(r.message).toMatch(/is open by client\.\d+ at 127\.0\.0\.1/);
    } finally {
      // Enter ends `rbd watch` cleanly (it unwatches; a killed watcher would hold on for 30 s).
      watcher.stdin!.end("\n");
    }
    await new Promise((r) => watcher.once("exit", r));
    await drv.deleteVolume("busy");
    expect(await drv.getVolume("busy")).toBeUndefined();
  }, 60000);

  test("path() is an rbd: spec that a third-party client (qemu-img) opens as the restricted client", async () => {
    const p = await timed("path", () => drv.path("data2"));
    expect(p).toMatch(/^rbd:volumes\/data2:id=baremetal:conf=\/.+\/ceph\.conf$/);
    const { execFile } = await import("node:child_process");
    const out = await new Promise<string>((resolve, reject) =>
      execFile("qemu-img", ["info", "--output=json", p], (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout))),
    );
    expect(JSON.parse(out)["virtual-size"]).toBe(64 * MiB);
    expect(p).not.toContain(ceph.clientKey);
    expect((await failure(drv.path("ghost"))).code).toBe("not-found");
  });

  test("the restricted client cannot touch another pool: Ceph's refusal is an auth error", async () => {
    await ceph.rbd(["create", "--size", "16M", "other/secret-volume"]);
    const other = new CephStorageDriver({ address: ceph.address.replace("/volumes?", "/other?"), key: ceph.clientKey });
    try {
      const list = await timed("refused (other pool)", () => failure(other.listVolumes()));
      expect(list.code).toBe("auth");
      expect(list.message).toMatch(/client\.baremetal/);
      expect(list.message).toMatch(/profile rbd pool=other/);
      expect((await failure(other.createVolume({ name: "x", sizeBytes: MiB }))).code).toBe("auth");
      expect((await failure(other.getVolume("secret-volume"))).code).toBe("auth");
      expect((await failure(other.deleteVolume("secret-volume"))).code).toBe("auth");
    } finally {
      await other.close();
    }
    expect(JSON.parse(await ceph.rbd(["ls", "other", "--format", "json"]))).toEqual(["secret-volume"]);
  });

  test("a wrong key is an auth error at once, and no key appears in the message", async () => {
    const wrongKey = (await ceph.tool("ceph-authtool", ["--gen-print-key"])).stdout.trim();
    const bad = new CephStorageDriver({ address: ceph.address, key: wrongKey });
    try {
      const t0 = Date.now();
      const r = await timed("refused (wrong key)", () => failure(bad.listVolumes()));
      expect(r.code).toBe("auth");
      expect(r.unsent).toBe(true);
      expect(r.message).toMatch(/refused client\.baremetal \(cephx\)/);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(r.message).not.toContain(wrongKey);
      expect(r.message).not.toContain(ceph.clientKey);
    } finally {
      await bad.close();
    }
    // A client that does not exist is refused the same way.
    const ghost = new CephStorageDriver({ address: ceph.address.replace("id=baremetal", "id=ghost"), key: ceph.clientKey });
    try {
      const r = await failure(ghost.listVolumes());
      expect(r.code).toBe("auth");
      expect(r.message).not.toContain(ceph.clientKey);
    } finally {
      await ghost.close();
    }
    const malformed = await failure(Promise.resolve().then(() => new CephStorageDriver({ address: ceph.address, key: "not a key" })));
    expect(malformed.code).toBe("validation:key");
    expect(malformed.message).not.toContain("not a key");
  });

  test("monitors that do not answer: transient within the connect timeout (nothing listening, and a hung monitor)", async () => {
    const port = await freePort();
    const down = new CephStorageDriver({ address: `ceph://127.0.0.1:${port}/volumes?id=baremetal`, key: ceph.clientKey }, { connectTimeoutMs: 3000 });
    try {
      const t0 = Date.now();
      const r = await timed("cluster down (nothing listening)", () => failure(down.listVolumes()));
      expect(r.code).toBe("transient");
      expect(r.unsent).toBe(true);
      expect(r.message).toMatch(new RegExp(`no Ceph monitor at 127\\.0\\.0\\.1:${port} answered within 3000 ms`));
      expect(Date.now() - t0).toBeLessThan(10000);
    } finally {
      await down.close();
    }
    // The real monitor, stopped (SIGSTOP): TCP connects, nothing answers.
    const hung = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey }, { connectTimeoutMs: 3000 });
    ceph.pause("mon");
    try {
      const r = await timed("cluster down (monitor hung)", () => failure(hung.getVolume("data1")));
      expect(r.code).toBe("transient");
      expect(r.message).toMatch(/answered within 3000 ms/);
    } finally {
      ceph.resume("mon");
      await hung.close();
    }
    // And it serves again once the monitor is back.
    expect((await drv.getVolume("data1"))?.sizeBytes).toBe(2 * GiB);
  }, 60000);

  test("addresses: monitors with their protocol, validation names the property", async () => {
    const { parseCephAddress } = await import("./rbd");
    expect(parseCephAddress("ceph://10.0.0.1/rbd?id=a").monHost).toBe("[v2:10.0.0.1:3300,v1:10.0.0.1:6789]");
    expect(parseCephAddress("ceph://10.0.0.1:6789,10.0.0.2:3300/rbd?id=client.a")).toEqual({
      monHost: "[v1:10.0.0.1:6789,v2:10.0.0.2:3300]",
      monitors: "10.0.0.1:6789,10.0.0.2:3300",
      pool: "rbd",
      clientId: "a",
    });
    expect(parseCephAddress("ceph://[::1]:4000/rbd?id=a&msgr=v1").monHost).toBe("[v1:[::1]:4000]");
    for (const bad of ["rbd://x/p?id=a", "ceph://x/p", "ceph://x/p?id=a&user=b", "ceph://x:99999/p?id=a", "ceph://x/p/q?id=a"]) {
      expect((await failure(Promise.resolve().then(() => parseCephAddress(bad)))).code).toBe("validation:address");
    }
    // The v1 port of the harness's monitor works too.
    const v1 = new CephStorageDriver({ address: `ceph://127.0.0.1:${ceph.v1Port}/volumes?id=baremetal&msgr=v1`, key: ceph.clientKey });
    try {
      expect((await v1.getVolume("data1"))?.sizeBytes).toBe(2 * GiB);
    } finally {
      await v1.close();
    }
  });

  test("close() removes the private keyring", async () => {
    const d = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey });
    await d.listVolumes();
    const { dir, keyring } = d.rbd.files();
    const fs = await import("node:fs");
    expect(fs.statSync(keyring).mode & 0o777).toBe(0o600);
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    await d.close();
    expect(fs.existsSync(dir)).toBe(false);
  });
});
