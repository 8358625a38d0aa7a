/**
 * The userspace LUKS2 reader against headers and data made by the real cryptsetup 2.6 (Debian
 * cryptsetup-bin), on sparse files:
 * - the header copies and JSON area read here are what cryptsetup's luksDump reports;
 * - the volume key recovered from a keyslot (pbkdf2, argon2id, argon2i; 32- and 64-byte keys; any
 *   keyslot number) is the one cryptsetup's `luksDump --dump-volume-key` prints; a wrong key is
 *   refused;
 * - data: what cryptsetup encrypts (`reencrypt --encrypt`) we decrypt, what we encrypt cryptsetup
 *   decrypts (`reencrypt --decrypt`, detached header) and re-encrypts (`reencrypt`), for 512- and
 *   4096-byte sectors; our XTS equals OpenSSL's own aes-xts sector by sector.
 * Keys reach cryptsetup by stdin only (runCryptsetup / Luks); volume keys it dumps go to 0600 files
 * in this test's private directory.
 */
import * as crypto from "node:crypto";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as util from "node:util";
import { BaremetalError, isBaremetalError } from "../../core/errors";
import { runCryptsetup } from "./cryptsetup";
import { Luks, PbkdfOptions } from "./luks";
import { Luks2Volume, openLuks2, readLuks2Header, ReadAt, xtsPerSector } from "./userspace";

const MiB = 1024 * 1024;
const FAST: PbkdfOptions = { pbkdf: "pbkdf2", forceIterations: 1000 };
const FAST_CS = ["--pbkdf=pbkdf2", "--pbkdf-force-iterations=1000"];

let dir: string;
let n = 0;
const luks = new Luks();
const keys: Buffer[] = [];
const key = (bytes: 32 | 64 = 64) => {
  const k = crypto.randomBytes(bytes);
  keys.push(k);
  return k;
};

const sparse = async (size: number) => {
  const f = path.join(dir, `vol${n++}.img`);
  const fh = await fs.open(f, "w");
  await fh.truncate(size);
  await fh.close();
  return f;
};

/** A ReadAt over a file; counts the bytes read below `limit` (to show what was not read). */
const fileReader = (file: string, seen?: { below: number; limit: number }): ReadAt => async (offset, length) => {
  if (seen && offset < seen.limit) seen.below += Math.min(length, seen.limit - offset);
  const fh = await fs.open(file, "r");
  try {
    const b = Buffer.alloc(length);
    const { bytesRead } = await fh.read(b, 0, length, offset);
    return b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
};

const readAt = async (file: string, offset: number, length: number) => fileReader(file)(offset, length);
const writeAt = async (file: string, offset: number, data: Buffer) => {
  const fh = await fs.open(file, "r+");
  try {
    await fh.write(data, 0, data.length, offset);
  } finally {
    await fh.close();
  }
};

/** cryptsetup's volume key (luksDump --dump-volume-key to a 0600 file here, key by stdin). */
const cryptsetupVolumeKey = async (file: string, k: Buffer, header?: string) => {
  const vk = path.join(dir, `vk-${n++}`);
  await runCryptsetup({}, ["luksDump", "--batch-mode", "--dump-volume-key", `--volume-key-file=${vk}`, ...(header ? [`--header=${header}`] : []), "--key-file=-", file], {
    what: "dump volume key",
    stdinKey: k,
  });
  try {
    return await fs.readFile(vk);
  } finally {
    await fs.rm(vk);
  }
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

/** Recognisable plaintext: a sentence, then 4 KiB blocks numbered in ASCII. */
const pattern = (bytes: number, tag: string) => {
  const b = Buffer.alloc(bytes);
  for (let at = 0, i = 0; at < bytes; at += 4096, i++) b.write(`${tag} block ${i} `.padEnd(4096, "#"), at, "latin1");
  b.write(`The quick brown fox of ${tag} jumps over the lazy storage host.`, 0);
  return b;
};

const handles: Luks2Volume[] = [];
const open = async (read: ReadAt, k: Buffer, o?: Parameters<typeof openLuks2>[2]) => {
  const v = await openLuks2(read, k, o);
  handles.push(v);
  return v;
};

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), "luks-userspace-"));
  await fs.chmod(dir, 0o700);
});

afterAll(async () => {
  for (const h of handles) h.close();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

describe("userspace LUKS2 against cryptsetup-made headers", () => {
  test("the header: both copies valid, the JSON area equals cryptsetup's --dump-json-metadata, UUID and label equal luksDump's", async () => {
    const f = await sparse(32 * MiB);
    const k = key();
    const d = await luks.format(f, k, { ...FAST, label: "userspace-test" });
    const h = await readLuks2Header(fileReader(f));
    expect(h).toMatchObject({ version: 2, copy: "primary", validCopies: ["primary", "secondary"], hdrSize: 16384, csumAlg: "sha256", uuid: d.uuid, label: "userspace-test" });
    expect(h.seqid).toBe(d.epoch);
    expect(h.metadata).toEqual(d.json);
  });

  test("pbkdf2 keyslot: the right key recovers cryptsetup's volume key; a wrong key, a truncated key and another volume's key are refused (auth)", async () => {
    const f = await sparse(32 * MiB);
    const other = await sparse(32 * MiB);
    const [k, k2] = [key(), key()];
    await luks.format(f, k, FAST);
    await luks.format(other, k2, FAST);
    const v = await open(fileReader(f), k);
    expect(v.keyslot).toBe(0);
    expect(v.segment).toMatchObject({ offset: 16 * MiB, size: "dynamic", cipher: "aes-xts-plain64", ivTweak: 0n });
    expect(v.matchesVolumeKey(await cryptsetupVolumeKey(f, k))).toBe(true);
    expect(v.matchesVolumeKey(await cryptsetupVolumeKey(other, k2))).toBe(false);
    for (const wrong of [key(), k2, k.subarray(0, 63), Buffer.concat([k, Buffer.from([0])])]) {
      const e = await refused(openLuks2(fileReader(f), wrong));
      expect(e.code).toBe("auth");
      expect(e.message).toMatch(/no keyslot of the volume opens with the key given/);
    }
  });

  test("a 256-bit volume key (aes-xts-plain64 with AES-128): recovered as cryptsetup has it, data in aes-128-xts as OpenSSL computes it", async () => {
    const f = await sparse(24 * MiB);
    const k = key();
    const d = await luks.format(f, k, { ...FAST, keySize: 256 });
    expect(d.keyBits).toBe(256);
    const v = await open(fileReader(f), k);
    const vk = await cryptsetupVolumeKey(f, k);
    expect(vk.length).toBe(32);
    expect(v.matchesVolumeKey(vk)).toBe(true);
    const plain = crypto.randomBytes(64 * 1024);
    const ss = v.segment.sectorSize;
    expect(v.encryptSectors(8 * ss, plain).equals(xtsPerSector("aes-128-xts", vk, plain, ss, BigInt((8 * ss) / 512), BigInt(ss / 512), true))).toBe(true);
  });

  test("argon2id (low memory) and argon2i keyslots, a 32-byte key in keyslot 5: each recovers the same volume key", async () => {
    const f = await sparse(32 * MiB);
    const [a, b, c] = [key(), key(32), key()];
    await luks.format(f, a, { pbkdf: "argon2id", memoryKiB: 8192, parallel: 2, forceIterations: 4 });
    await luks.addKey(f, a, b, { pbkdf: "argon2i", memoryKiB: 4096, parallel: 1, forceIterations: 4, slot: 5 });
    await luks.addKey(f, a, c, FAST);
    const dump = await luks.dump(f);
    expect(dump.keyslots.map((s) => [s.id, s.pbkdf, s.memoryKiB])).toEqual([
      [0, "argon2id", 8192],
      [1, "pbkdf2", undefined],
      [5, "argon2i", 4096],
    ]);
    const vk = await cryptsetupVolumeKey(f, a);
    const opened = await Promise.all([a, b, c].map((x) => open(fileReader(f), x)));
    expect(opened.map((v) => v.keyslot)).toEqual([0, 5, 1]);
    for (const v of opened) expect(v.matchesVolumeKey(vk)).toBe(true);
    // a keyslot asked for by number: only it is tried
    expect((await refused(openLuks2(fileReader(f), a, { keyslot: 5 }))).code).toBe("auth");
    expect((await refused(openLuks2(fileReader(f), a, { keyslot: 7 }))).code).toBe("validation");
    // argon2 memory above the caller's ceiling is refused before it is allocated
    const big = await refused(openLuks2(fileReader(f), a, { keyslot: 0, maxArgonMemoryKiB: 4096 }));
    expect(big.code).toBe("conflict");
    expect(big.message).toMatch(/8192 KiB of memory/);
  }, 60_000);

  test("after a rotation (rotateKeyslot) the old key is refused and the new one recovers the same volume key", async () => {
    const f = await sparse(32 * MiB);
    const [oldK, newK] = [key(), key()];
    await luks.format(f, oldK, FAST);
    const before = await open(fileReader(f), oldK);
    await luks.rotateKeyslot(f, oldK, newK, FAST);
    expect((await refused(openLuks2(fileReader(f), oldK))).code).toBe("auth");
    const after = await open(fileReader(f), newK);
    expect(after.keyslot).toBe(1);
    expect(after.matchesVolumeKey(await cryptsetupVolumeKey(f, newK))).toBe(true);
    const probe = crypto.randomBytes(8192);
    expect(after.encryptSectors(4096, probe).equals(before.encryptSectors(4096, probe))).toBe(true);
  });

  test("the metadata may come from our dump (cryptsetup's JSON): no header byte is read then", async () => {
    const f = await sparse(32 * MiB);
    const k = key();
    const d = await luks.format(f, k, FAST);
    const seen = { below: 0, limit: 32768 };
    const v = await open(fileReader(f, seen), k, { metadata: d.json });
    expect(seen.below).toBe(0);
    expect(v.uuid).toBeUndefined();
    expect(v.matchesVolumeKey(await cryptsetupVolumeKey(f, k))).toBe(true);
  });

  test("damaged headers: a bad primary falls back to the secondary copy; both bad, LUKS1, no header, unfinished re-encryption: conflict", async () => {
    const f = await sparse(32 * MiB);
    const k = key();
    const d = await luks.format(f, k, FAST);
    const json = Buffer.from(await readAt(f, 4096, 16));
    // one byte of the primary JSON area changed: its checksum no longer holds
    await writeAt(f, 4100, Buffer.from([json[4] ^ 0x20]));
    const h = await readLuks2Header(fileReader(f));
    expect({ copy: h.copy, valid: h.validCopies }).toEqual({ copy: "secondary", valid: ["secondary"] });
    expect(h.metadata).toEqual(d.json);
    expect((await open(fileReader(f), k)).matchesVolumeKey(await cryptsetupVolumeKey(f, k))).toBe(true);
    // cryptsetup read the secondary as well, and repaired the primary from it on the way
    expect((await readLuks2Header(fileReader(f))).validCopies).toEqual(["primary", "secondary"]);
    // both checksums broken
    await writeAt(f, 4100, Buffer.from([json[4] ^ 0x20]));
    await writeAt(f, 16384 + 4100, Buffer.from([json[4] ^ 0x20]));
    const both = await refused(readLuks2Header(fileReader(f)));
    expect(both.code).toBe("conflict");
    expect(both.message).toMatch(/no valid LUKS2 header/);
    expect(both.details.join("; ")).toMatch(/primary: checksum mismatch; secondary at 16384: checksum mismatch/);
    // no header at all
    expect((await refused(openLuks2(fileReader(await sparse(20 * MiB)), k))).code).toBe("conflict");
    // LUKS1
    const l1 = await sparse(20 * MiB);
    await runCryptsetup({}, ["luksFormat", "--batch-mode", "--type=luks1", "--pbkdf-force-iterations=1000", "--key-file=-", l1], { what: "luks1", stdinKey: k });
    const e1 = await refused(openLuks2(fileReader(l1), k));
    expect(e1.code).toBe("conflict");
    expect(e1.message).toMatch(/LUKS1 header; only LUKS2/);
    // a re-encryption in progress (LUKS2 requirement flag): refused rather than half-decrypted data
    const mid = { ...(d.json as Record<string, unknown>), config: { ...((d.json as { config: object }).config ?? {}), requirements: { mandatory: ["online-reencrypt-v2"] } } };
    const e2 = await refused(openLuks2(fileReader(f), k, { metadata: mid }));
    expect(e2.code).toBe("conflict");
    expect(e2.message).toMatch(/online-reencrypt-v2.*finish the re-encryption/);
    // a short read (device smaller than a header)
    expect((await refused(openLuks2(async () => Buffer.alloc(10), k))).code).toBe("conflict");
  });

  test("two valid copies of different age (a torn metadata update): the higher seqid wins, as in cryptsetup", async () => {
    const f = await sparse(32 * MiB);
    const [a, b] = [key(), key()];
    await luks.format(f, a, FAST);
    const old = await readAt(f, 0, 32768);
    await luks.addKey(f, a, b, FAST);
    const fresh = await readAt(f, 0, 32768);
    // the primary updated, the secondary not yet
    await writeAt(f, 16384, old.subarray(16384));
    let h = await readLuks2Header(fileReader(f));
    expect({ copy: h.copy, valid: h.validCopies }).toEqual({ copy: "primary", valid: ["primary", "secondary"] });
    expect((await open(fileReader(f), b)).keyslot).toBe(1);
    // the other way round: the secondary is the newer copy
    await writeAt(f, 0, Buffer.concat([old.subarray(0, 16384), fresh.subarray(16384)]));
    h = await readLuks2Header(fileReader(f));
    expect({ copy: h.copy, valid: h.validCopies }).toEqual({ copy: "secondary", valid: ["secondary", "primary"] });
    expect((await open(fileReader(f), b)).keyslot).toBe(1);
    expect(await luks.testKey(f, b)).toBe(true); // cryptsetup agrees
  });

  test("our XTS equals OpenSSL's aes-xts sector by sector (512 and 4096, IVs in 512-byte units, an iv_tweak); argument checks; close zeroes", async () => {
    const f = await sparse(24 * MiB);
    const k = key();
    await luks.format(f, k, FAST);
    const vk = await cryptsetupVolumeKey(f, k);
    const d = await luks.dump(f);
    for (const sectorSize of [512, 4096]) {
      for (const ivTweak of ["0", "123456789012"]) {
        const json = structuredClone(d.json) as { segments: Record<string, Record<string, unknown>> };
        json.segments["0"].sector_size = sectorSize;
        json.segments["0"].iv_tweak = ivTweak;
        const v = await open(fileReader(f), k, { metadata: json });
        for (const [offset, bytes] of [
          [0, sectorSize],
          [sectorSize * 3, 5 * sectorSize],
          [MiB, 300 * 1024 - ((300 * 1024) % sectorSize)],
        ]) {
          const plain = crypto.randomBytes(bytes);
          const ours = v.encryptSectors(offset, plain);
          const reference = xtsPerSector("aes-256-xts", vk, plain, sectorSize, BigInt(ivTweak) + BigInt(offset / 512), BigInt(sectorSize / 512), true);
          expect({ sectorSize, ivTweak, offset, same: ours.equals(reference) }).toEqual({ sectorSize, ivTweak, offset, same: true });
          expect(v.decryptSectors(offset, ours).equals(plain)).toBe(true);
          expect(ours.equals(plain)).toBe(false);
        }
        expect((() => { try { v.encryptSectors(100, Buffer.alloc(sectorSize)); } catch (e) { return (e as BaremetalError).property; } })()).toBe("offset");
        expect((() => { try { v.decryptSectors(0, Buffer.alloc(sectorSize + 16)); } catch (e) { return (e as BaremetalError).property; } })()).toBe("data");
      }
    }
    const v = await open(fileReader(f), k);
    // no key material in what a log line or a JSON dump of the handle would show
    const shown = `${util.inspect(v, { depth: 5, showHidden: true })}${JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? String(x) : x))}`;
    expect(shown).not.toContain(vk.toString("hex"));
    expect(shown).not.toContain(vk.toString("base64"));
    v.close();
    expect(v.closed).toBe(true);
    expect(v.matchesVolumeKey(vk)).toBe(false);
    expect(() => v.encryptSectors(0, Buffer.alloc(4096))).toThrow(/closed/);
  }, 60_000);

  test.each([512, 4096])("cryptsetup encrypts (reencrypt --encrypt, %i-byte sectors, data shifted behind a new header); we decrypt the plaintext intact", async (sectorSize) => {
    const f = path.join(dir, `enc${n++}.img`);
    const plain = pattern(8 * MiB, `cryptsetup-${sectorSize}`);
    await fs.writeFile(f, Buffer.concat([plain, Buffer.alloc(40 * MiB)]));
    const k = key();
    await runCryptsetup(
      {},
      ["reencrypt", "--encrypt", "--type=luks2", "--force-offline-reencrypt", "--batch-mode", ...FAST_CS, `--sector-size=${sectorSize}`, "--reduce-device-size=32M", "--key-file=-", f],
      { what: "encrypt", stdinKey: k },
    );
    const raw = await fs.readFile(f);
    expect(raw.includes(plain.subarray(0, 60))).toBe(false); // cryptsetup left no plaintext
    const v = await open(fileReader(f), k);
    expect(v.segment).toMatchObject({ offset: 16 * MiB, sectorSize });
    expect((await v.readPlaintext(0, plain.length)).equals(plain)).toBe(true);
  }, 60_000);

  test.each([512, 4096])("we encrypt (%i-byte sectors); cryptsetup decrypts it (reencrypt --decrypt, detached header) to our plaintext, byte for byte", async (sectorSize) => {
    const data = await sparse(8 * MiB);
    const header = path.join(dir, `hdr${n++}.img`);
    const k = key();
    await runCryptsetup({}, ["luksFormat", "--batch-mode", "--type=luks2", ...FAST_CS, `--sector-size=${sectorSize}`, `--header=${header}`, "--key-file=-", data], {
      what: "format detached",
      stdinKey: k,
    });
    const v = await open(fileReader(header), k);
    expect(v.segment).toMatchObject({ offset: 0, sectorSize });
    const plain = pattern(8 * MiB, `ours-${sectorSize}`);
    await writeAt(data, 0, v.encryptSectors(0, plain));
    expect((await fs.readFile(data)).includes(plain.subarray(0, 60))).toBe(false);
    await runCryptsetup({}, ["reencrypt", "--decrypt", "--force-offline-reencrypt", "--batch-mode", `--header=${header}`, "--key-file=-", data], { what: "decrypt", stdinKey: k });
    expect((await fs.readFile(data)).equals(plain)).toBe(true);
  }, 60_000);

  test("we encrypt; cryptsetup re-encrypts under a new volume key (it decrypts ours and encrypts its own); we read the plaintext back under the new key", async () => {
    const f = await sparse(48 * MiB);
    const k = key();
    await luks.format(f, k, FAST);
    const before = await open(fileReader(f), k);
    const plain = pattern(16 * MiB, "reencrypted");
    await writeAt(f, before.segment.offset, before.encryptSectors(0, plain));
    await luks.reencrypt(f, k, { ...FAST, hotzoneMiB: 8 });
    const after = await open(fileReader(f), k);
    expect(after.matchesVolumeKey(await cryptsetupVolumeKey(f, k))).toBe(true);
    expect(after.encryptSectors(0, plain.subarray(0, 4096)).equals(before.encryptSectors(0, plain.subarray(0, 4096)))).toBe(false); // a new volume key
    expect((await after.readPlaintext(0, plain.length)).equals(plain)).toBe(true);
  }, 60_000);

  test("throughput of the userspace AES-XTS (64 MiB, both sector sizes) and of one OpenSSL context per sector, for the record", async () => {
    const f = await sparse(24 * MiB);
    const k = key();
    const d = await luks.format(f, k, FAST);
    const vk = await cryptsetupVolumeKey(f, k);
    const data = crypto.randomBytes(64 * MiB);
    const rows: string[] = [];
    const rate = (ms: number, bytes: number) => (bytes / MiB / (ms / 1000)).toFixed(0);
    for (const sectorSize of [512, 4096]) {
      const json = structuredClone(d.json) as { segments: Record<string, Record<string, unknown>> };
      json.segments["0"].sector_size = sectorSize;
      const v = await open(fileReader(f), k, { metadata: json });
      let t = performance.now();
      const c = v.encryptSectors(0, data);
      const encMs = performance.now() - t;
      t = performance.now();
      const p = v.decryptSectors(0, c);
      const decMs = performance.now() - t;
      expect(p.equals(data)).toBe(true);
      const slice = data.subarray(0, 8 * MiB);
      t = performance.now();
      xtsPerSector("aes-256-xts", vk, slice, sectorSize, 0n, BigInt(sectorSize / 512), true);
      const refMs = performance.now() - t;
      rows.push(`  ${sectorSize}-byte sectors: encrypt ${rate(encMs, data.length)} MiB/s, decrypt ${rate(decMs, data.length)} MiB/s (one OpenSSL aes-xts context per sector: ${rate(refMs, slice.length)} MiB/s)`);
      expect(encMs).toBeLessThan(10_000);
    }
    console.log(`userspace LUKS2 data path, 64 MiB, this machine (${os.cpus()[0]?.model ?? "?"}):\n${rows.join("\n")}`);
  }, 120_000);
});
