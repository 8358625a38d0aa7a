/**
 * The file storage driver's iSCSI exports against a real tgtd (test/harness/tgt.ts), checked from
 * the initiator's side by third-party userspace initiators: libiscsi's iscsi-readcapacity16 and
 * iscsi-inq, and qemu-io through qemu's libiscsi block driver (writes and reads data). What is
 * proven: tgt enforces the per-node binding (initiator name) and CHAP the driver configures; data
 * written over iSCSI lands in the sparse file; clones are independent; tgt's own configuration is
 * read back for drift; the CHAP secret is never visible in tgt's read-backs or in error messages.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isBaremetalError } from "../../core/errors";
import { startTgt, tgtAvailable, TgtInstance, IscsiLogin } from "../../../../test/harness/tgt";
import { FileStorageDriver } from "./driver";
import { describeWithPeer } from "../../../../test/harness/processes";

const MiB = 1024 * 1024;
const avail = tgtAvailable();
// Skipped only where the machine cannot run tgtd (not root, packages missing), and never under CI.
const describeTgt = describeWithPeer(avail, "storage-file export.test.ts");

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

describeTgt("file storage driver exports against a real tgtd (libiscsi and qemu-io as initiators)", () => {
  let tgt: TgtInstance;
  let root: string;
  let dir: string;
  let drv: FileStorageDriver;
  const exportMs: number[] = [];

  const login = (target: string, initiator: string, user?: string, secret?: string): IscsiLogin => ({ target, initiator, user, secret });
  const timedExport = async (req: Parameters<FileStorageDriver["exportVolume"]>[0]) => {
    const t0 = process.hrtime.bigint();
    const r = await drv.exportVolume(req);
    exportMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
    return r;
  };

  beforeAll(async () => {
    tgt = await startTgt();
    root = fs.mkdtempSync(path.join(os.tmpdir(), "file-pool-"));
    dir = path.join(root, "lab");
    drv = new FileStorageDriver(
      { address: `file://${dir}`, iscsi: { portal: tgt.portal, controlPort: tgt.controlPort, iqnPrefix: "iqn.2025-01.lab.baremetal.vol" } },
      { tgtSocketPath: tgt.socketPath },
    );
  });

  afterAll(async () => {
    await drv?.close();
    await tgt?.stop();
    if (root) fs.rmSync(root, { recursive: true, force: true });
    if (tgt && exportMs.length) {
      const sorted = [...exportMs].sort((a, b) => a - b);
      process.stdout.write(
        `tgt figures: tgtd start ${tgt.startMs} ms; export (volume check, portal check, target, LUN, account, ACL) ` +
          `median ${sorted[Math.floor(sorted.length / 2)].toFixed(1)} ms, max ${sorted[sorted.length - 1].toFixed(1)} ms over ${sorted.length}\n`,
      );
    }
  });

  it("the right initiator with the right secret reads capacity = volume size, writes and reads a block, and the data lands in the file", async () => {
    await drv.createVolume({ name: "data1", sizeBytes: 64 * MiB });
    const exp = await timedExport({ volume: "data1", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 });
    expect(exp).toEqual({ volume: "data1", portal: tgt.portal, targetIqn: "iqn.2025-01.lab.baremetal.vol:data1", lun: 1, initiatorIqn: N1, chapUser: "node1" });

    const me = login(exp.targetIqn, N1, "node1", SECRET1);
    const cap = await tgt.readCapacity(me);
    expect(cap).toEqual({ ok: true, bytes: 64 * MiB, blockSize: 512 });
    const inq = await tgt.iscsiTool("iscsi-inq", me);
    expect(inq.code).toBe(0);
    expect(inq.stdout).toMatch(/Peripheral Device Type:\s*0|DIRECT_ACCESS|Direct-access/i);

    const io = await tgt.qemuIo(me, ["write -P 0xa7 1M 64k", "read -P 0xa7 1M 64k"]);
    expect(io.stderr).toBe("");
    expect(io.stdout).toMatch(/wrote 65536\/65536 bytes at offset 1048576/);
    expect(io.stdout).toMatch(/read 65536\/65536 bytes at offset 1048576/);
    expect(io.code).toBe(0);

    const file = await drv.path("data1");
    expect(readAt(file, MiB, 65536).equals(Buffer.alloc(65536, 0xa7))).toBe(true);
    expect(readAt(file, MiB - 512, 512).equals(Buffer.alloc(512))).toBe(true);
    const v = await drv.getVolume("data1");
    expect(v?.usedBytes).toBeGreaterThanOrEqual(65536);
    expect(v?.usedBytes).toBeLessThan(MiB);

    // and the other way: bytes put into the file are what the initiator reads
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, Buffer.alloc(4096, 0x3c), 0, 4096, 8 * MiB);
    fs.closeSync(fd);
    expect((await tgt.qemuIo(me, ["read -P 0x3c 8M 4k"])).code).toBe(0);
  });

  it("a wrong secret, no credentials, and the wrong CHAP user are refused by tgt", async () => {
    const target = drv.targetIqn("data1");
    const wrong = await tgt.readCapacity(login(target, N1, "node1", "not-the-secret-000"));
    expect(wrong.ok).toBe(false);
    if (!wrong.ok) expect(wrong.result.stderr).toMatch(/Authentication failure/);
    const none = await tgt.readCapacity(login(target, N1));
    expect(none.ok).toBe(false);
    if (!none.ok) expect(none.result.stderr).toMatch(/Authentication failure/);
    const otherUser = await tgt.readCapacity(login(target, N1, "node2", SECRET1));
    expect(otherUser.ok).toBe(false);
    const io = await tgt.qemuIo(login(target, N1, "node1", "not-the-secret-000"), ["read 0 512"]);
    expect(io.code).not.toBe(0);
    expect(io.stderr).toMatch(/Authentication failure/);
  });

  it("another initiator name is refused, even with the right CHAP user and secret", async () => {
    const target = drv.targetIqn("data1");
    const r = await tgt.readCapacity(login(target, N2, "node1", SECRET1));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.result.stderr).toMatch(/Target not found|Authorization failure|not allowed/i);
    const io = await tgt.qemuIo(login(target, N2, "node1", SECRET1), ["read 0 512"]);
    expect(io.code).not.toBe(0);
  });

  it("tgt's configuration reads back as the export, with no problems and no secret anywhere", async () => {
    const list = await drv.listExports("data1");
    expect(list).toEqual([
      {
        volume: "data1",
        portal: tgt.portal,
        targetIqn: "iqn.2025-01.lab.baremetal.vol:data1",
        lun: 1,
        initiatorIqn: N1,
        chapUser: "node1",
        tid: expect.any(Number),
        sessions: [],
        problems: [],
      },
    ]);
    const shown = (await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])) + (await tgt.tgtadm(["--lld", "iscsi", "--mode", "account", "--op", "show"]));
    expect(shown).toContain("node1");
    expect(shown).toContain(N1);
    expect(shown).toContain(path.join(dir, "data1.img"));
    expect(shown).not.toContain(SECRET1);
    expect(tgt.log()).not.toContain(SECRET1);
    expect(fs.readFileSync(path.join(dir, "data1.json"), "utf8")).not.toContain(SECRET1);
  });

  it("exporting to another initiator is a conflict naming the first; the same node again gets the new secret (old refused)", async () => {
    const other = await failure(drv.exportVolume({ volume: "data1", initiatorIqn: N2, chapUser: "node2", chapSecret: SECRET2 }));
    expect(other.code).toBe("conflict");
    expect(other.message).toContain(N1);
    expect(other.message).not.toContain(SECRET2);
    // nothing of node2 was left in tgt
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "account", "--op", "show"])).not.toContain("node2");

    const rotated = "n1-chap-secret-0002";
    await timedExport({ volume: "data1", initiatorIqn: N1, chapUser: "node1", chapSecret: rotated });
    const target = drv.targetIqn("data1");
    expect((await tgt.readCapacity(login(target, N1, "node1", SECRET1))).ok).toBe(false);
    expect(await tgt.readCapacity(login(target, N1, "node1", rotated))).toMatchObject({ ok: true, bytes: 64 * MiB });
    expect((await drv.listExports("data1"))[0].problems).toEqual([]);
    await drv.exportVolume({ volume: "data1", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 });
  });

  it("a CHAP user already bound to another export is a conflict; a missing volume is not-found; bad input names the property", async () => {
    await drv.createVolume({ name: "data2", sizeBytes: 8 * MiB });
    const taken = await failure(drv.exportVolume({ volume: "data2", initiatorIqn: N2, chapUser: "node1", chapSecret: SECRET2 }));
    expect(taken.code).toBe("conflict");
    expect(taken.message).toContain("node1");
    expect(taken.message).not.toContain(SECRET2);
    expect((await failure(drv.exportVolume({ volume: "nothere", initiatorIqn: N2, chapUser: "node2", chapSecret: SECRET2 }))).code).toBe("not-found");
    const bad = [
      [{ initiatorIqn: "node2" }, "validation:initiatorIqn"],
      [{ initiatorIqn: "IQN.2025-01.LAB:N2" }, "validation:initiatorIqn"],
      [{ chapUser: "a,b" }, "validation:chapUser"],
      [{ chapSecret: "short" }, "validation:chapSecret"],
      [{ chapSecret: "has a space inside" }, "validation:chapSecret"],
    ] as const;
    for (const [patch, code] of bad) {
      const f = await failure(drv.exportVolume({ volume: "data2", initiatorIqn: N2, chapUser: "node2", chapSecret: SECRET2, ...patch }));
      expect(f.code).toBe(code);
      expect(f.message).not.toContain("has a space inside");
    }
    expect(await drv.listExports("data2")).toEqual([]);
  });

  it("delete and resize are refused while exported; after unexport nothing connects, and unexport and delete are idempotent", async () => {
    const del = await failure(drv.deleteVolume("data1"));
    expect(del.code).toBe("conflict");
    expect(del.message).toContain(N1);
    expect((await failure(drv.resizeVolume("data1", 128 * MiB))).code).toBe("conflict");

    await drv.unexportVolume("data1");
    const target = drv.targetIqn("data1");
    const r = await tgt.readCapacity(login(target, N1, "node1", SECRET1));
    expect(r.ok).toBe(false);
    const io = await tgt.qemuIo(login(target, N1, "node1", SECRET1), ["read 0 512"]);
    expect(io.code).not.toBe(0);
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).not.toContain(target);
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "account", "--op", "show"])).not.toContain("node1");
    expect(await drv.listExports("data1")).toEqual([]);
    expect(fs.existsSync(path.join(dir, "data1.json"))).toBe(false);

    await drv.unexportVolume("data1");
    await drv.unexportVolume("nothere");
    expect((await drv.resizeVolume("data1", 128 * MiB)).sizeBytes).toBe(128 * MiB);
    await drv.deleteVolume("data1");
    await drv.deleteVolume("data1");
    expect(await drv.getVolume("data1")).toBeUndefined();
  });

  it("a clone of a snapshot shares its content over iSCSI and is independent after writes", async () => {
    await drv.createVolume({ name: "golden", sizeBytes: 32 * MiB });
    let exp = await timedExport({ volume: "golden", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 });
    const g = login(exp.targetIqn, N1, "node1", SECRET1);
    expect((await tgt.qemuIo(g, ["write -P 0x61 0 64k", "write -P 0x62 16M 64k"])).code).toBe(0);
    await drv.unexportVolume("golden");
    await drv.createSnapshot("golden", "v1", { protect: true });
    await drv.cloneVolume({ name: "node2-root", from: "lab/golden@v1" });

    exp = await timedExport({ volume: "node2-root", initiatorIqn: N2, chapUser: "node2", chapSecret: SECRET2 });
    const c = login(exp.targetIqn, N2, "node2", SECRET2);
    const shared = await tgt.qemuIo(c, ["read -P 0x61 0 64k", "read -P 0x62 16M 64k"]);
    expect(shared.stdout).not.toMatch(/Pattern verification failed/);
    expect(shared.code).toBe(0);
    expect((await tgt.qemuIo(c, ["write -P 0x71 0 64k"])).code).toBe(0);

    // the origin, exported again, still has its own data; a write to it does not reach the clone
    exp = await timedExport({ volume: "golden", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 });
    expect((await tgt.qemuIo(g, ["read -P 0x61 0 64k", "write -P 0x63 16M 64k"])).code).toBe(0);
    const cl = await tgt.qemuIo(c, ["read -P 0x71 0 64k", "read -P 0x62 16M 64k"]);
    expect(cl.stdout).not.toMatch(/Pattern verification failed/);
    expect(cl.code).toBe(0);
    // the snapshot file is untouched
    const snap = path.join(dir, "golden@v1.img");
    expect(readAt(snap, 0, 65536).equals(Buffer.alloc(65536, 0x61))).toBe(true);
    expect(readAt(snap, 16 * MiB, 65536).equals(Buffer.alloc(65536, 0x62))).toBe(true);

    // a pattern check that must fail does fail (the checks above are not vacuous)
    const neg = await tgt.qemuIo(c, ["read -P 0x61 0 64k"]);
    expect(neg.stdout + neg.stderr).toMatch(/Pattern verification failed/);

    expect((await failure(drv.deleteSnapshot("golden", "v1"))).code).toBe("conflict");
    await drv.unexportVolume("node2-root");
    await drv.deleteVolume("node2-root");
    await drv.unexportVolume("golden");
    await drv.deleteVolume("golden");
    expect(fs.readdirSync(dir).filter((f) => f.startsWith("golden") || f.startsWith("node2"))).toEqual([]);
  });

  it("drift: a target removed by hand with tgtadm shows as missing; exporting again repairs it", async () => {
    await drv.createVolume({ name: "drift1", sizeBytes: 8 * MiB });
    const exp = await drv.exportVolume({ volume: "drift1", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 });
    const [before] = await drv.listExports("drift1");
    await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", String(before.tid)]);
    expect(await drv.listExports("drift1")).toEqual([]);
    expect((await drv.listExports()).map((e) => e.volume)).not.toContain("drift1");
    expect((await tgt.readCapacity(login(exp.targetIqn, N1, "node1", SECRET1))).ok).toBe(false);

    await drv.exportVolume({ volume: "drift1", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 });
    expect((await drv.listExports("drift1"))[0].problems).toEqual([]);
    expect(await tgt.readCapacity(login(exp.targetIqn, N1, "node1", SECRET1))).toMatchObject({ ok: true, bytes: 8 * MiB });
  });

  it("drift: an address ACL or an unbound CHAP account added or removed by hand is reported, and exporting again repairs it", async () => {
    const [e] = await drv.listExports("drift1");
    const tid = String(e.tid);
    await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", tid, "--initiator-address", "ALL"]);
    await tgt.tgtadm(["--lld", "iscsi", "--mode", "account", "--op", "unbind", "--tid", tid, "--user", "node1"]);
    const [drifted] = await drv.listExports("drift1");
    expect(drifted.problems).toEqual([
      "address ACL entries let initiators in by address: ALL",
      "no CHAP account bound: tgt accepts logins without CHAP",
    ]);
    // what the problems mean, seen from an initiator: anyone gets in without CHAP
    expect((await tgt.readCapacity(login(e.targetIqn, N2))).ok).toBe(true);

    await drv.exportVolume({ volume: "drift1", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 });
    expect((await drv.listExports("drift1"))[0].problems).toEqual([]);
    expect((await tgt.readCapacity(login(e.targetIqn, N2))).ok).toBe(false);
    expect((await tgt.readCapacity(login(e.targetIqn, N1))).ok).toBe(false);
    await drv.unexportVolume("drift1");
    await drv.deleteVolume("drift1");
  });

  it("an export cut off half-way (target and LUN, no account, no ACL) lets nobody in, reads back with its problems, and exporting again completes it", async () => {
    await drv.createVolume({ name: "half", sizeBytes: 4 * MiB });
    const iqn = drv.targetIqn("half");
    await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", "900", "--targetname", iqn]);
    await tgt.tgtadm(["--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "900", "--lun", "1", "--backing-store", await drv.path("half"), "--bstype", "rdwr"]);
    const [half] = await drv.listExports("half");
    expect(half.problems).toEqual(["no initiator allowed (ACL empty)", "no CHAP account bound: tgt accepts logins without CHAP"]);
    expect((await tgt.readCapacity(login(iqn, N1))).ok).toBe(false); // an empty ACL refuses every initiator
    await drv.exportVolume({ volume: "half", initiatorIqn: N1, chapUser: "node-half", chapSecret: SECRET1 });
    expect(await drv.listExports("half")).toMatchObject([{ tid: 900, initiatorIqn: N1, chapUser: "node-half", problems: [] }]);
    expect(await tgt.readCapacity(login(iqn, N1, "node-half", SECRET1))).toMatchObject({ ok: true, bytes: 4 * MiB });

    // the target vanishes behind our back (removed by hand, or tgtd restarted): delete still
    // removes the CHAP account the export left in tgtd
    await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "900"]);
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "account", "--op", "show"])).toContain("node-half");
    await drv.deleteVolume("half");
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "account", "--op", "show"])).not.toContain("node-half");
  });

  it("sessions logged in are listed, and unexport cuts them off", async () => {
    await drv.createVolume({ name: "live", sizeBytes: 8 * MiB });
    const exp = await drv.exportVolume({ volume: "live", initiatorIqn: N1, chapUser: "node1", chapSecret: SECRET1 });
    // qemu-io holds its session open while it sleeps between commands
    const running = tgt.qemuIo(login(exp.targetIqn, N1, "node1", SECRET1), ["read 0 512", "sleep 3000", "read 0 512"], { timeoutMs: 8000 });
    let sessions: string[] = [];
    for (let i = 0; i < 100 && !sessions.length; i++) {
      sessions = (await drv.listExports("live"))[0]?.sessions ?? [];
      if (!sessions.length) await new Promise((r) => setTimeout(r, 20));
    }
    expect(sessions).toEqual([N1]);
    await drv.unexportVolume("live");
    const r = await running;
    // its second read found no target: libiscsi retries the login until the harness kills it
    // (its stdout, block-buffered into a pipe, is lost with it)
    expect(r.code).not.toBe(0);
    expect(await drv.listExports("live")).toEqual([]);
    await drv.deleteVolume("live");
  });

  it("exports from two driver instances at once each get their own target (tid races are retried), and each node reaches only its own", async () => {
    const second = new FileStorageDriver(
      { address: `file://${dir}`, iscsi: { portal: tgt.portal, iqnPrefix: "iqn.2025-01.lab.baremetal.vol" } },
      { tgtSocketPath: tgt.socketPath },
    );
    const names = Array.from({ length: 8 }, (_, i) => `par${i}`);
    for (const n of names) await drv.createVolume({ name: n, sizeBytes: MiB * (names.indexOf(n) + 1) });
    const node = (i: number) => `iqn.2025-01.lab.baremetal:par-node${i}`;
    await Promise.all(
      names.map((n, i) => (i % 2 ? second : drv).exportVolume({ volume: n, initiatorIqn: node(i), chapUser: `par-user${i}`, chapSecret: `par-secret-${i}-xxxxxx` })),
    );
    const list = await drv.listExports();
    expect(list.filter((e) => e.volume.startsWith("par")).map((e) => [e.volume, e.initiatorIqn, e.problems.length])).toEqual(
      names.map((n, i) => [n, node(i), 0]),
    );
    expect(new Set(list.map((e) => e.tid)).size).toBe(list.length);
    for (const i of [0, 5]) {
      const t = drv.targetIqn(names[i]);
      expect(await tgt.readCapacity(login(t, node(i), `par-user${i}`, `par-secret-${i}-xxxxxx`))).toMatchObject({ ok: true, bytes: MiB * (i + 1) });
      expect((await tgt.readCapacity(login(t, node(i + 1), `par-user${i + 1}`, `par-secret-${i + 1}-xxxxxx`))).ok).toBe(false);
    }
    await Promise.all(names.map((n, i) => (i % 2 ? drv : second).unexportVolume(n)));
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "account", "--op", "show"])).not.toContain("par-user");
    for (const n of names) await drv.deleteVolume(n);
    await second.close();
  });

  it("tgtd unreachable: a transient error that says what to do; nothing is deleted blind", async () => {
    const down = new FileStorageDriver({ address: `file://${dir}`, iscsi: { portal: tgt.portal } }, { tgtSocketPath: path.join(root, "no-such-socket.0") });
    await down.createVolume({ name: "orphan", sizeBytes: MiB });
    const f = await failure(down.exportVolume({ volume: "orphan", initiatorIqn: N1, chapUser: "node9", chapSecret: SECRET1 }));
    expect(f.code).toBe("transient");
    expect(f.message).toMatch(/tgtd is not running or not reachable/);
    expect(f.message).not.toContain(SECRET1);
    expect((await failure(down.deleteVolume("orphan"))).code).toBe("transient");
    expect(await down.getVolume("orphan")).toBeDefined();
    await down.close();
    const wrongPortal = new FileStorageDriver({ address: `file://${dir}`, iscsi: { portal: "127.0.0.1:1" } }, { tgtSocketPath: tgt.socketPath });
    expect((await failure(wrongPortal.exportVolume({ volume: "orphan", initiatorIqn: N1, chapUser: "node9", chapSecret: SECRET1 }))).code).toBe("validation:iscsi.portal");
    await wrongPortal.close();
    await drv.deleteVolume("orphan");
  });
});
