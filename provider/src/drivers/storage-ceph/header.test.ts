/**
 * LUKS2 header sessions on RBD volumes (header.ts), against a real Ceph 16 (test/harness/ceph.ts)
 * and real cryptsetup: cryptsetup formats and rotates keyslots on the local copy, the changes reach
 * the image through `rbd import-diff`, and the image is then checked by third parties: cryptsetup on
 * the image's first 16 MiB (`rbd export`), and qemu-io opening the image through librbd's own LUKS2
 * layer with the key. After every rotation checkpoint the IMAGE (not the copy) opens with exactly
 * the keys the checkpoint says.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { isBaremetalError } from "../../core/errors";
import { cephAvailable, type CephInstance, startCeph } from "../../../../test/harness/ceph";
import { describeWithPeer } from "../../../../test/harness/processes";
import { Luks } from "../luks";
import { CephStorageDriver } from "./driver";
import { changedRanges, diffStream } from "./header";
import { LUKS2_HEADER_BYTES, readHead } from "./luks";

const MiB = 1024 * 1024;
const avail = cephAvailable();
const haveTools = ["/usr/sbin/cryptsetup", "/sbin/cryptsetup"].some((p) => fs.existsSync(p)) && fs.existsSync("/usr/bin/qemu-io");
const why = !avail.ok ? avail.why : !haveTools ? "cryptsetup or qemu-io missing (Debian cryptsetup-bin, qemu-utils, qemu-block-extra)" : undefined;
const describeIt = describeWithPeer({ ok: !why, why }, "storage-ceph header.test.ts");

function run(file: string, args: string[], input?: Buffer): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { maxBuffer: 64 << 20, timeout: 120000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : -1) : 0, stdout: String(stdout), stderr: String(stderr) }),
    );
    child.stdin?.end(input ?? Buffer.alloc(0));
  });
}

describe("rbd diff streams and changed ranges", () => {
  test("a diff stream is the documented v1 layout: header, one w record per range, e", () => {
    const s = diffStream([{ offset: 4096, data: Buffer.from("abc") }]);
    expect(s.subarray(0, 12).toString("ascii")).toBe("rbd diff v1\n");
    expect(s[12]).toBe(0x77);
    expect(s.readBigUInt64LE(13)).toBe(4096n);
    expect(s.readBigUInt64LE(21)).toBe(3n);
    expect(s.subarray(29, 32).toString()).toBe("abc");
    expect(s.subarray(32).toString()).toBe("e");
  });

  test("changed ranges merge adjacent 4 KiB blocks and stop at unchanged ones", () => {
    const a = Buffer.alloc(6 * 4096);
    const b = Buffer.from(a);
    b[5] = 1;
    b[4096 + 7] = 1;
    b[4 * 4096] = 1;
    const r = changedRanges(a, b);
    expect(r.map((x) => [x.offset, x.data.length])).toEqual([
      [0, 8192],
      [4 * 4096, 4096],
    ]);
    expect(changedRanges(a, a)).toEqual([]);
  });
});

describeIt("LUKS2 header sessions on RBD volumes, checked by cryptsetup and qemu-io", () => {
  let ceph: CephInstance;
  let drv: CephStorageDriver;
  let work: string;
  const luks = new Luks();
  const oldKey = randomBytes(32);
  const newKey = randomBytes(32);
  const times: Record<string, number> = {};

  beforeAll(async () => {
    ceph = await startCeph({ mgr: false });
    drv = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey });
    work = fs.mkdtempSync(path.join(ceph.dir, "hdr-"));
  }, 180000);

  afterAll(async () => {
    await drv?.close();
    await ceph?.stop();
    if (ceph) process.stdout.write(`ceph header figures: ${Object.entries(times).map(([k, v]) => `${k} ${v} ms`).join("; ")}\n`);
  }, 60000);

  /** Which of the keys open the IMAGE now (cryptsetup on its first 16 MiB). */
  async function opensOnImage(volume: string, ...keys: Buffer[]): Promise<boolean[]> {
    const head = path.join(work, `${volume}.head`);
    await readHead(drv, volume, LUKS2_HEADER_BYTES, head);
    try {
      const out: boolean[] = [];
      for (const k of keys) out.push((await run("cryptsetup", ["open", "--test-passphrase", "--key-file=-", head], k)).code === 0);
      return out;
    } finally {
      fs.rmSync(head, { force: true });
    }
  }

  test("a fresh volume is formatted on the copy and the header reaches the image; a plaintext volume is never copied", async () => {
    await drv.createVolume({ name: "h1", sizeBytes: 64 * MiB });
    const t0 = Date.now();
    const s = await drv.luksHeader("h1");
    try {
      expect(s.isLuks).toBe(false);
      expect(fs.statSync(s.file).mode & 0o777).toBe(0o600);
      expect(fs.statSync(path.dirname(s.file)).mode & 0o777).toBe(0o700);
      await luks.format(s.file, oldKey, { pbkdf: "pbkdf2", forceIterations: 1000, label: "h1" });
      await s.commit();
      expect(s.isLuks).toBe(true);
    } finally {
      await s.close();
    }
    times["format + commit"] = Date.now() - t0;
    expect(fs.existsSync(path.dirname(s.file))).toBe(false);
    expect(await opensOnImage("h1", oldKey, newKey)).toEqual([true, false]);

    // A volume holding plaintext: the session copies nothing of it.
    await drv.createVolume({ name: "plain", sizeBytes: 32 * MiB });
    const qw = await run("qemu-io", ["--image-opts", `driver=rbd,pool=volumes,image=plain,conf=${drv.rbd.files().conf},user=baremetal`, "-c", `write -P 0x50 0 64k`]);
    expect(qw.code).toBe(0);
    const p = await drv.luksHeader("plain");
    try {
      expect(p.isLuks).toBe(false);
      expect(fs.readFileSync(p.file).includes(Buffer.alloc(64, 0x50))).toBe(false);
    } finally {
      await p.close();
    }
  }, 120000);

  test("a rotation on the copy, committed at each checkpoint, leaves the IMAGE openable by the keys the checkpoint says", async () => {
    const s = await drv.luksHeader("h1");
    const seen: { step: string; opens: boolean[]; expected: boolean[] }[] = [];
    const t0 = Date.now();
    try {
      await luks.rotateKeyslot(s.file, oldKey, newKey, {
        pbkdf: "pbkdf2",
        forceIterations: 1000,
        onCheckpoint: async (c) => {
          await s.commit({ headersFirst: c.step !== "added" });
          seen.push({ step: c.step, opens: await opensOnImage("h1", oldKey, newKey), expected: [c.opens.old, c.opens.new] });
        },
      });
    } finally {
      await s.close();
    }
    times["rotation with 3 commits and checks"] = Date.now() - t0;
    expect(seen.map((x) => x.step)).toEqual(["added", "removed", "verified"]);
    for (const x of seen) expect(x.opens).toEqual(x.expected);
    expect(await opensOnImage("h1", oldKey, newKey)).toEqual([false, true]);

    // qemu (librbd's LUKS2 layer) opens the image with the new key and writes ciphertext only.
    const keyFile = path.join(work, "k");
    fs.writeFileSync(keyFile, newKey, { mode: 0o600 });
    try {
      const opts = ["--object", `secret,id=sec0,file=${keyFile}`, "--image-opts", `driver=rbd,pool=volumes,image=h1,conf=${drv.rbd.files().conf},user=baremetal,encrypt.format=luks2,encrypt.key-secret=sec0`];
      const w = await run("qemu-io", [...opts, "-c", "write -P 0x43 0 256k", "-c", "read -P 0x43 0 256k"]);
      expect(w.code).toBe(0);
      expect(w.stdout).not.toMatch(/verification failed/i);
      fs.writeFileSync(keyFile, oldKey, { mode: 0o600 });
      const refused = await run("qemu-io", [...opts, "-c", "read 0 4k"]);
      expect(refused.code).not.toBe(0);
    } finally {
      fs.rmSync(keyFile, { force: true });
    }
    const full = path.join(work, "h1.full");
    await ceph.rbd(["export", "--no-progress", "volumes/h1", full]);
    expect(fs.readFileSync(full).includes(Buffer.alloc(64, 0x43))).toBe(false);
    fs.rmSync(full);
  }, 180000);

  test("a header changed by someone else during a session is not overwritten (conflict), and nothing is written", async () => {
    const a = await drv.luksHeader("h1");
    const b = await drv.luksHeader("h1");
    try {
      const third = randomBytes(32);
      await luks.addKey(a.file, newKey, third, { pbkdf: "pbkdf2", forceIterations: 1000 });
      await a.commit();
      const before = await readHead(drv, "h1", LUKS2_HEADER_BYTES);
      await luks.addKey(b.file, newKey, randomBytes(32), { pbkdf: "pbkdf2", forceIterations: 1000 });
      let err: unknown;
      await b.commit().catch((e) => (err = e));
      expect(isBaremetalError(err) && err.code).toBe("conflict");
      expect((err as Error).message).toMatch(/changed while it was being updated/);
      expect((await readHead(drv, "h1", LUKS2_HEADER_BYTES)).equals(before)).toBe(true);
      expect(await opensOnImage("h1", newKey, third)).toEqual([true, true]);
    } finally {
      await a.close();
      await b.close();
    }
  }, 120000);
});
