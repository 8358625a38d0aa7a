/**
 * The ceph storage driver's iSCSI exports: a real Ceph 16 (test/harness/ceph.ts) and a real tgtd
 * with its rbd backing store (test/harness/tgt.ts; Debian's tgt-rbd), checked from the initiator's
 * side by libiscsi's iscsi-readcapacity16 and by qemu-io through qemu's libiscsi driver. Proven:
 * tgtd serves the RBD image itself through librbd (data written over iSCSI is read back from Ceph
 * by the admin's `rbd export`), CHAP and the initiator binding are enforced, a per-node clone of a
 * golden image is served with the golden data, the export blocks delete and resize (conflicts
 * naming the node), and neither the cephx key nor the CHAP secret is left where tgtd can show it.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { isBaremetalError } from "../../core/errors";
import { cephAvailable, CephInstance, startCeph } from "../../../../test/harness/ceph";
import { IscsiLogin, startTgt, tgtAvailable, TgtInstance } from "../../../../test/harness/tgt";
import { CephStorageDriver } from "./driver";
import { describeWithPeer } from "../../../../test/harness/processes";

const MiB = 1024 * 1024;
const ceph0 = cephAvailable();
const tgt0 = tgtAvailable();
const bsRbd = fs.existsSync("/usr/lib/tgt/backing-store/bs_rbd.so");
const why = !ceph0.ok ? ceph0.why : !tgt0.ok ? tgt0.why : !bsRbd ? "tgt's rbd backing store (Debian tgt-rbd) is not installed" : undefined;
// Skipped only where the machine cannot run Ceph or tgtd with bs_rbd, and never under CI.
const describeIt = describeWithPeer({ ok: !why, why }, "storage-ceph export.test.ts");

const N1 = "iqn.2025-01.lab.baremetal:node1";
const N2 = "iqn.2025-01.lab.baremetal:node2";
const SECRET1 = "n1-chap-secret-0001";
const SECRET2 = "n2-chap-secret-0002";

async function failure(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return { code: e.property ? `${e.code}:${e.property}` : e.code, message: e.message };
  }
  throw new Error("expected a rejection");
}

describeIt("ceph storage driver exports RBD images through tgtd's rbd backing store", () => {
  let ceph: CephInstance;
  let tgt: TgtInstance;
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
  const login = (target: string, initiator: string, user?: string, secret?: string): IscsiLogin => ({ target, initiator, user, secret });
  /** Bytes of the image as Ceph has them (the admin's rbd export), not through tgt. */
  const cephBytes = async (image: string, offset: number, length: number) => {
    const file = path.join(ceph.dir, `export-${Date.now()}`);
    await ceph.rbd(["export", "--no-progress", `volumes/${image}`, file]);
    try {
      const fd = fs.openSync(file, "r");
      const b = Buffer.alloc(length);
      fs.readSync(fd, b, 0, length, offset);
      fs.closeSync(fd);
      return b;
    } finally {
      fs.rmSync(file, { force: true });
    }
  };

  beforeAll(async () => {
    [ceph, tgt] = await Promise.all([startCeph(), startTgt()]);
    drv = new CephStorageDriver(
      { address: ceph.address, key: ceph.clientKey, iscsi: { portal: tgt.portal, controlPort: tgt.controlPort } },
      { tgtSocketPath: tgt.socketPath },
    );
  }, 180000);

  afterAll(async () => {
    await drv?.close();
    await tgt?.stop();
    await ceph?.stop();
    if (ceph && tgt) {
      const ops = Object.entries(times)
        .map(([op, t]) => `${op} ${t.length > 1 ? `median ${[...t].sort((a, b) => a - b)[Math.floor(t.length / 2)].toFixed(0)} ms (n=${t.length})` : `${t[0].toFixed(0)} ms`}`)
        .join("; ");
      process.stdout.write(`ceph export figures: cluster ready in ${ceph.startMs} ms, tgtd in ${tgt.startMs} ms; ${ops}\n`);
    }
  }, 60000);

  test("an export serves the RBD image: exact size, CHAP and initiator enforced, data lands in Ceph", async () => {
    await drv.createVolume({ name: "vol1", sizeBytes: 96 * MiB });
    const info = await timed("exportVolume", () => drv.exportVolume({ volume: "vol1", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 }));
    expect(info).toEqual({ volume: "vol1", portal: tgt.portal, targetIqn: "iqn.2025-01.lab.baremetal:ceph.volumes:vol1", lun: 1, initiatorIqn: N1, chapUser: "node1" });
    const t = info.targetIqn;

    const cap = await tgt.readCapacity(login(t, N1, "node1", SECRET1));
    expect(cap).toEqual({ ok: true, bytes: 96 * MiB, blockSize: 512 });
    // Wrong secret, no CHAP, another node with the right secret: all refused by tgtd.
    expect((await tgt.readCapacity(login(t, N1, "node1", "wrong-secret-000"))).ok).toBe(false);
    expect((await tgt.readCapacity(login(t, N1))).ok).toBe(false);
    expect((await tgt.readCapacity(login(t, N2, "node1", SECRET1))).ok).toBe(false);

    // Data written over iSCSI is in the RBD image (read back by Ceph's own client).
    const w = await tgt.qemuIo(login(t, N1, "node1", SECRET1), ["write -P 0x5a 1M 64k"]);
    expect(w.code).toBe(0);
    const back = await cephBytes("vol1", MiB, 64 * 1024);
    expect(back.equals(Buffer.alloc(64 * 1024, 0x5a))).toBe(true);
    expect((await drv.getVolume("vol1"))!.usedBytes).toBeGreaterThan(0);
    // tgtd holds the image open through librbd: Ceph lists it as a watcher.
    const status = JSON.parse(await ceph.rbd(["status", "volumes/vol1", "--format", "json"])) as { watchers: unknown[] };
    expect(status.watchers).toHaveLength(1);
  });

  test("read back for drift: tgtd's view, no problems, no secret in it; the key file tgtd read is gone", async () => {
    const [e] = await timed("listExports", () => drv.listExports("vol1"));
    expect(e).toMatchObject({ volume: "vol1", initiatorIqn: N1, chapUser: "node1", lun: 1, problems: [] });
    expect(await drv.listExports()).toHaveLength(1);
    const shown = await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    expect(shown).toContain("Backing store type: rbd");
    expect(shown).toContain("Backing store path: volumes/vol1");
    expect(shown).not.toContain(SECRET1);
    expect(shown).not.toContain(ceph.clientKey);
    // The conf+keyring copy handed to tgtd for the LUN creation does not outlive it.
    const { dir } = drv.rbd.files();
    expect(fs.readdirSync(dir).filter((n) => n.startsWith("tgt-"))).toEqual([]);
  });

  test("while exported: another node is a conflict naming the first, delete and resize are conflicts", async () => {
    const other = await failure(drv.exportVolume({ volume: "vol1", initiatorIqn: N2, chapUser: "node2", chapSecret: SECRET2 }));
    expect(other.code).toBe("conflict");
    expect(other.message).toContain(N1);
    const del = await failure(drv.deleteVolume("vol1"));
    expect(del.code).toBe("conflict");
    expect(del.message).toContain(N1);
    expect((await failure(drv.resizeVolume("vol1", 128 * MiB))).code).toBe("conflict");
    // The same node again with a new secret: the old one stops working.
    await timed("exportVolume (again, new secret)", () => drv.exportVolume({ volume: "vol1", initiatorIqn: N1, chapUser: "node1", chapSecret: "n1-new-secret-0003" }));
    const t = drv.targetIqn("vol1");
    expect((await tgt.readCapacity(login(t, N1, "node1", SECRET1))).ok).toBe(false);
    expect((await tgt.readCapacity(login(t, N1, "node1", "n1-new-secret-0003"))).ok).toBe(true);
  });

  test("unexport: logins refused, idempotent, the volume can then be deleted", async () => {
    await timed("unexportVolume", () => drv.unexportVolume("vol1"));
    await drv.unexportVolume("vol1");
    expect((await tgt.readCapacity(login(drv.targetIqn("vol1"), N1, "node1", "n1-new-secret-0003"))).ok).toBe(false);
    expect(await drv.listExports()).toEqual([]);
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "account", "--op", "show"])).not.toContain("node1");
    // tgtd closed the image: no watcher is left, so the delete goes through at once.
    await drv.deleteVolume("vol1");
    expect(await drv.getVolume("vol1")).toBeUndefined();
  });

  test("a node's clone of a golden image is served with the golden data, and writes stay in the clone", async () => {
    await drv.createVolume({ name: "golden", sizeBytes: 32 * MiB });
    // The admin puts a recognisable pattern into the golden image through librbd (qemu-io rbd:).
    const { execFile } = await import("node:child_process");
    await new Promise<void>((resolve, reject) =>
      execFile("qemu-io", ["-f", "raw", `rbd:volumes/golden:conf=${ceph.confPath}`, "-c", "write -P 0x11 0 1M"], (err, _o, stderr) => (err ? reject(new Error(stderr)) : resolve())),
    );
    await drv.createSnapshot("golden", "v1", { protect: true });
    await drv.cloneVolume({ name: "node2-root", from: "volumes/golden@v1" });
    const e = await drv.exportVolume({ volume: "node2-root", initiatorIqn: N2, chapUser: "node2", chapSecret: SECRET2 });
    const l = login(e.targetIqn, N2, "node2", SECRET2);
    const r = await tgt.qemuIo(l, ["read -P 0x11 0 1M", "write -P 0x22 0 4k", "read -P 0x22 0 4k"]);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    expect((await cephBytes("golden", 0, 4096)).equals(Buffer.alloc(4096, 0x11))).toBe(true);
    expect((await cephBytes("node2-root", 0, 4096)).equals(Buffer.alloc(4096, 0x22))).toBe(true);
    await drv.unexportVolume("node2-root");
    await drv.deleteVolume("node2-root");
    await drv.deleteVolume("golden");
  });

  test("without iSCSI settings exports are a validation error naming iscsi", async () => {
    const plain = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey });
    try {
      expect((await failure(plain.exportVolume({ volume: "x", initiatorIqn: N1, chapUser: "n", chapSecret: SECRET1 }))).code).toBe("validation:iscsi");
      expect((await failure(drv.exportVolume({ volume: "x", initiatorIqn: N1, chapUser: "n", chapSecret: "short" }))).code).toBe("validation:chapSecret");
      expect((await failure(drv.exportVolume({ volume: "ghost", initiatorIqn: N1, chapUser: "n", chapSecret: SECRET1 }))).code).toBe("not-found");
    } finally {
      await plain.close();
    }
  });
});
