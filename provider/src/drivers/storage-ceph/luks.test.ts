/**
 * LUKS2 at the source on RBD volumes, against a real Ceph 16 (test/harness/ceph.ts):
 * `rbd encryption format ... luks2` (Ceph's client-side encryption) writes the header, and
 * third-party tools check it: cryptsetup 2.6 reads the header from the first 16 MiB (readHead,
 * i.e. `rbd export --export-format 1 - | head -c`) and from a full `rbd export` to a file, accepts
 * the passphrase and refuses a wrong one; qemu-io, through librbd's own LUKS2 layer, writes
 * plaintext that never appears in the image while it reads back intact; and the ciphertext
 * decrypts, with the volume key cryptsetup unwraps from the header, exactly as dm-crypt would
 * (aes-xts-plain64, IV = 512-byte sector number), so a node's cryptsetup can open it.
 */
import { execFile } from "node:child_process";
import { createDecipheriv } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { isBaremetalError } from "../../core/errors";
import { cephAvailable, CephInstance, startCeph } from "../../../../test/harness/ceph";
import { CephStorageDriver } from "./driver";
import { formatLuks2, LUKS2_HEADER_BYTES, readHead } from "./luks";
import { describeWithPeer } from "../../../../test/harness/processes";

const MiB = 1024 * 1024;
const avail = cephAvailable();
const haveTools = ["/usr/sbin/cryptsetup", "/sbin/cryptsetup"].some((p) => fs.existsSync(p)) && fs.existsSync("/usr/bin/qemu-io");
const why = !avail.ok ? avail.why : !haveTools ? "cryptsetup or qemu-io missing (Debian cryptsetup-bin, qemu-utils, qemu-block-extra)" : undefined;
// Skipped only where Ceph, cryptsetup or qemu-io are not installed, and never under CI.
const describeIt = describeWithPeer({ ok: !why, why }, "storage-ceph luks.test.ts");

function run(file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(file, args, { maxBuffer: 64 << 20, timeout: 120000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : -1) : 0, stdout: String(stdout), stderr: String(stderr) }),
    ),
  );
}

async function failure(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return { code: e.property ? `${e.code}:${e.property}` : e.code, message: e.message };
  }
  throw new Error("expected a rejection");
}

describeIt("LUKS2 on RBD volumes: rbd encryption format, checked by cryptsetup and qemu-io", () => {
  let ceph: CephInstance;
  let drv: CephStorageDriver;
  let work: string;
  let pass: string;
  let wrong: string;
  const times: Record<string, number> = {};
  const PASSPHRASE = "tenant-a volume key 0001 (test only)";

  beforeAll(async () => {
    ceph = await startCeph({ mgr: false });
    drv = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey });
    work = fs.mkdtempSync(path.join(ceph.dir, "luks-"));
    pass = path.join(work, "pass");
    wrong = path.join(work, "wrong");
    fs.writeFileSync(pass, PASSPHRASE, { mode: 0o600 });
    fs.writeFileSync(wrong, "not the passphrase", { mode: 0o600 });
  }, 180000);

  afterAll(async () => {
    await drv?.close();
    await ceph?.stop();
    if (ceph) process.stdout.write(`ceph luks figures: cluster ready in ${ceph.startMs} ms; ${Object.entries(times).map(([k, v]) => `${k} ${v} ms`).join("; ")}\n`);
  }, 60000);

  test("formatLuks2 writes a LUKS2 header that cryptsetup reads from the first 16 MiB and from a full export", async () => {
    await drv.createVolume({ name: "enc1", sizeBytes: 64 * MiB });
    let t0 = Date.now();
    await formatLuks2(drv, "enc1", pass);
    times["formatLuks2 (argon2id benchmark included)"] = Date.now() - t0;

    const head = path.join(work, "enc1.head");
    t0 = Date.now();
    const bytes = await readHead(drv, "enc1", LUKS2_HEADER_BYTES, head);
    times["readHead 16 MiB"] = Date.now() - t0;
    expect(bytes.length).toBe(LUKS2_HEADER_BYTES);
    expect(fs.statSync(head).mode & 0o777).toBe(0o600);

    const dump = await run("cryptsetup", ["luksDump", "--dump-json-metadata", head]);
    expect(dump.code).toBe(0);
    const meta = JSON.parse(dump.stdout) as { keyslots: Record<string, { kdf: { type: string } }>; segments: Record<string, { encryption: string; offset: string; sector_size: number }> };
    expect(meta.segments["0"]).toMatchObject({ encryption: "aes-xts-plain64", offset: String(16 * MiB), sector_size: 4096 });
    expect(Object.keys(meta.keyslots)).toEqual(["0"]);
    expect((await run("cryptsetup", ["isLuks", "--type", "luks2", head])).code).toBe(0);
    t0 = Date.now();
    expect((await run("cryptsetup", ["open", "--test-passphrase", "--key-file", pass, head])).code).toBe(0);
    times["cryptsetup --test-passphrase"] = Date.now() - t0;
    expect((await run("cryptsetup", ["open", "--test-passphrase", "--key-file", wrong, head])).code).toBe(2);

    // The same from a whole-volume `rbd export` to a file.
    const full = path.join(work, "enc1.full");
    t0 = Date.now();
    await ceph.rbd(["export", "--no-progress", "volumes/enc1", full]);
    times["rbd export 64 MiB"] = Date.now() - t0;
    expect((await run("cryptsetup", ["open", "--test-passphrase", "--key-file", pass, full])).code).toBe(0);
    expect((await run("cryptsetup", ["open", "--test-passphrase", "--key-file", wrong, full])).code).toBe(2);
    fs.rmSync(full);
  }, 120000);

  test("plaintext through librbd's LUKS2 (qemu-io) never reaches Ceph, reads back intact, and decrypts as dm-crypt would", async () => {
    // qemu reads the passphrase from the file, never from its command line.
    const conf = drv.rbd.files().conf;
    const opts = (keyFile: string) => [
      "--object",
      `secret,id=sec0,file=${keyFile}`,
      "--image-opts",
      `driver=rbd,pool=volumes,image=enc1,conf=${conf},user=baremetal,encrypt.format=luks2,encrypt.key-secret=sec0`,
    ];
    const w = await run("qemu-io", [...opts(pass), "-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 1M 4k", "-c", "read -P 0x41 0 1M", "-c", "read -P 0x42 1M 4k"]);
    expect(w.code).toBe(0);
    expect(w.stdout).not.toMatch(/verification failed/i);
    const refused = await run("qemu-io", [...opts(wrong), "-c", "read 0 4k"]);
    expect(refused.code).not.toBe(0);
    expect(refused.stdout + refused.stderr).toMatch(/encryption load fail/);

    // What Ceph stores: the header, then ciphertext; no run of plaintext 'A's or 'B's anywhere.
    const full = path.join(work, "enc1.full");
    await ceph.rbd(["export", "--no-progress", "volumes/enc1", full]);
    const img = fs.readFileSync(full);
    expect(img.includes(Buffer.alloc(64, 0x41))).toBe(false);
    expect(img.includes(Buffer.alloc(64, 0x42))).toBe(false);

    // The volume key, unwrapped from the header by cryptsetup with the passphrase, decrypts the data
    // segment with aes-xts-plain64 and the 512-byte sector number as IV: dm-crypt's layout.
    const vk = path.join(work, "vk");
    const d = await run("cryptsetup", ["luksDump", "--batch-mode", "--dump-volume-key", "--volume-key-file", vk, "--key-file", pass, full]);
    expect(d.code).toBe(0);
    const key = fs.readFileSync(vk);
    fs.rmSync(vk);
    expect(key.length).toBe(64);
    const sector = (offset: number) => {
      const iv = Buffer.alloc(16);
      iv.writeBigUInt64LE(BigInt(offset / 512));
      const dec = createDecipheriv("aes-256-xts", key, iv);
      const at = 16 * MiB + offset;
      return Buffer.concat([dec.update(img.subarray(at, at + 4096)), dec.final()]);
    };
    expect(sector(0).equals(Buffer.alloc(4096, 0x41))).toBe(true);
    expect(sector(MiB - 4096).equals(Buffer.alloc(4096, 0x41))).toBe(true);
    expect(sector(MiB).equals(Buffer.alloc(4096, 0x42))).toBe(true);
    fs.rmSync(full);
  }, 120000);

  test("a volume that already holds LUKS is not formatted again; loose passphrase files are refused", async () => {
    const again = await failure(formatLuks2(drv, "enc1", pass));
    expect(again.code).toBe("conflict");
    expect(again.message).toMatch(/already holds a LUKS header/);
    await drv.createVolume({ name: "enc2", sizeBytes: 32 * MiB });
    const loose = path.join(work, "loose");
    fs.writeFileSync(loose, PASSPHRASE, { mode: 0o644 });
    fs.chmodSync(loose, 0o644);
    const r = await failure(formatLuks2(drv, "enc2", loose));
    expect(r.code).toBe("validation:keyFile");
    expect(r.message).not.toContain(PASSPHRASE);
    expect((await failure(formatLuks2(drv, "ghost", pass))).code).toBe("not-found");
    // Nothing was written on enc2.
    expect((await readHead(drv, "enc2", 6)).equals(Buffer.alloc(6))).toBe(true);
  });
});
