/**
 * The LUKS2 wrapper against the real cryptsetup (Debian cryptsetup-bin 2.6) on sparse files:
 * every header we write is read back by cryptsetup's luksDump, every key checked by
 * `open --test-passphrase`. Re-encryption is checked on the data itself: sectors encrypted by
 * Node's own AES-XTS (OpenSSL) under the volume key cryptsetup reports decrypt to the same
 * plaintext under the NEW volume key afterwards.
 *
 * Most volumes use pbkdf2 with a forced low cost (no 2 s benchmark per keyslot); one test keeps
 * cryptsetup's default argon2id.
 *
 * When LUKS_CRASH_WORKER=1 this file is a child process (see `crashWorker`): it rotates a key and
 * gets killed, by itself at a checkpoint or by the test at a random instant.
 */
import { ChildProcess, spawn } from "node:child_process";
import * as crypto from "node:crypto";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as readline from "node:readline";
import { BaremetalError, describeError, isBaremetalError } from "../../core/errors";
import { runCryptsetup, scrub } from "./cryptsetup";
import { Luks, PbkdfOptions, ReencryptResult, RotationStep } from "./luks";

const FAST: PbkdfOptions = { pbkdf: "pbkdf2", forceIterations: 1000 };
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

async function crashWorker(): Promise<void> {
  const lines = readline.createInterface({ input: process.stdin });
  const first = await new Promise<string>((r) => lines.once("line", r));
  lines.close();
  const job = JSON.parse(first) as { path: string; oldKey: string; newKey: string; killAt?: RotationStep };
  const luks = new Luks({ keyDir: process.env.LUKS_KEY_DIR });
  process.stdout.write(`${JSON.stringify({ started: true })}\n`);
  await luks.rotateKeyslot(job.path, Buffer.from(job.oldKey, "hex"), Buffer.from(job.newKey, "hex"), {
    ...FAST,
    onCheckpoint: (c) => {
      process.stdout.write(`${JSON.stringify({ checkpoint: c.step })}\n`);
      if (c.step === job.killAt) process.kill(process.pid, "SIGKILL");
    },
  });
  process.stdout.write(`${JSON.stringify({ done: true })}\n`);
}

if (process.env.LUKS_CRASH_WORKER === "1") {
  crashWorker().catch((e) => {
    process.stderr.write(`${describeError(e)}\n`);
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
  const luks = new Luks();
  const keys: Buffer[] = [];
  const errors: unknown[] = [];
  const key = (bytes: 32 | 64 = 64) => {
    const k = crypto.randomBytes(bytes);
    keys.push(k);
    return k;
  };
  let n = 0;
  const sparse = async (size: number) => {
    const f = path.join(dir, `vol${n++}.img`);
    const fh = await fs.open(f, "w");
    await fh.truncate(size);
    await fh.close();
    return f;
  };
  /** Awaits a rejection, keeps the error for the "no key bytes" check, returns it. */
  const refused = async (p: Promise<unknown>): Promise<BaremetalError> => {
    try {
      await p;
    } catch (e) {
      errors.push(e);
      if (!isBaremetalError(e)) throw e;
      return e;
    }
    throw new Error("expected a refusal");
  };
  const opens = async (f: string, k: Buffer) => luks.testKey(f, k);

  let keyDir: string;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "luks-test-"));
    keyDir = path.join(dir, "keys");
    await fs.mkdir(keyDir, { mode: 0o700 });
  });
  afterAll(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  describe("LUKS2 on files through cryptsetup", () => {
    test("format with the defaults (argon2id): luksDump shows LUKS2, aes-xts-plain64, a 512-bit key, the label; right key opens, wrong key does not", async () => {
      const f = await sparse(64 * MiB);
      const k = key();
      const d = await luks.format(f, k, { label: "db-volume" });
      expect(d.version).toBe(2);
      expect(d.cipher).toBe("aes-xts-plain64");
      expect(d.keyBits).toBe(512);
      expect(d.label).toBe("db-volume");
      expect(d.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      expect(d.keyslots).toHaveLength(1);
      expect(d.keyslots[0]).toMatchObject({ id: 0, type: "luks2", keyBits: 512, pbkdf: "argon2id" });
      expect(d.segments[0]).toMatchObject({ type: "crypt", cipher: "aes-xts-plain64", offset: 16 * MiB, size: "dynamic" });
      expect(d.reencryptInProgress).toBe(false);
      // cryptsetup's own text view agrees (the JSON area is parsed; the text is the independent check)
      const text = (await runCryptsetup({}, ["luksDump", f], { what: "dump" })).stdout;
      expect(text).toMatch(/^Version:\s+2$/m);
      expect(text).toContain(`UUID:          \t${d.uuid}`);
      expect(text).toMatch(/cipher: aes-xts-plain64/);
      expect(text).toMatch(/PBKDF:\s+argon2id/);
      expect(await opens(f, k)).toBe(true);
      expect(await opens(f, key())).toBe(false);
      // the file stays sparse: the header only
      const st = await fs.stat(f);
      expect(st.blocks * 512).toBeLessThan(17 * MiB);
    }, 120_000);

    test("bad input and wrong files: clear errors (validation, not-found, conflict, auth)", async () => {
      const plain = await sparse(20 * MiB);
      expect(await refused(luks.format(plain, Buffer.from("short passphrase")))).toMatchObject({ code: "validation", property: "key" });
      expect(await refused(luks.format(plain, key(), { keySize: 128 as 256 }))).toMatchObject({ code: "validation", property: "keySize" });
      expect(await refused(luks.format(path.join(dir, "missing.img"), key(), FAST))).toMatchObject({ code: "not-found" });
      // not a LUKS volume
      const notLuks = await refused(luks.testKey(plain, key()));
      expect(notLuks.code).toBe("conflict");
      expect(notLuks.message).toMatch(/no LUKS header: format the volume first/);
      expect(notLuks.messageId).toBe("cryptsetup exit 1 (wrong parameters)");
      expect((await refused(luks.dump(plain))).code).toBe("conflict");
      expect(await luks.isLuks(plain)).toBe(false);
      // too small for a LUKS2 header
      const tiny = await sparse(1 * MiB);
      const small = await refused(luks.format(tiny, key(), FAST));
      expect(small).toMatchObject({ code: "validation", property: "size" });
      expect(small.message).toMatch(/more than its 16 MiB header/);
      expect((await fs.stat(tiny)).size).toBe(1 * MiB); // untouched (cryptsetup itself would grow it and succeed)
      // formatting a LUKS volume again is refused unless asked for
      const k = key();
      await luks.format(plain, k, FAST);
      expect(await luks.isLuks(plain)).toBe(true);
      const again = await refused(luks.format(plain, key(), FAST));
      expect(again.code).toBe("conflict");
      expect(again.message).toMatch(/already holds a LUKS header/);
      expect(await opens(plain, k)).toBe(true);
      // adding a key with a wrong existing key: auth, exit code 2
      const wrong = await refused(luks.addKey(plain, key(), key(), FAST));
      expect(wrong).toMatchObject({ code: "auth", messageId: "cryptsetup exit 2 (no permission or bad passphrase)" });
      expect(describeError(wrong)).toMatch(/no keyslot of the volume opens with the key given/);
      // a LUKS1 volume (written by cryptsetup directly) is refused by dump
      const l1 = await sparse(20 * MiB);
      await runCryptsetup({}, ["luksFormat", "--batch-mode", "--type=luks1", "--pbkdf-force-iterations=1000", "--key-file=-", l1], { what: "luks1", stdinKey: k });
      const v1 = await refused(luks.dump(l1));
      expect(v1.code).toBe("conflict");
      expect(v1.message).toMatch(/not LUKS2/);
    }, 60_000);

    test("addKey, removeKey, killSlot; the last keyslot is never removed", async () => {
      const f = await sparse(32 * MiB);
      const [a, b, c] = [key(), key(32), key()];
      await luks.format(f, a, FAST);
      expect(await luks.addKey(f, a, b, FAST)).toBe(1);
      expect(await luks.addKey(f, b, c, { ...FAST, slot: 5 })).toBe(5);
      expect((await luks.dump(f)).keyslots.map((s) => s.id)).toEqual([0, 1, 5]);
      expect(await luks.findKeyslot(f, c)).toBe(5);
      expect(await luks.removeKey(f, a)).toEqual([0]);
      expect(await luks.removeKey(f, a)).toEqual([]); // idempotent
      expect(await opens(f, a)).toBe(false);
      // killSlot needs a key of ANOTHER keyslot: the one it removes does not count
      expect((await refused(luks.killSlot(f, 5, c))).code).toBe("auth");
      await luks.killSlot(f, 5, b);
      expect((await luks.dump(f)).keyslots.map((s) => s.id)).toEqual([1]);
      const last = await refused(luks.removeKey(f, b));
      expect(last.code).toBe("conflict");
      expect(last.message).toMatch(/last one/);
      expect(await opens(f, b)).toBe(true);
    }, 60_000);

    test("rotateKeyslot: new key added, old removed; old refused, new accepted; checkpoints added -> removed -> verified", async () => {
      const f = await sparse(32 * MiB);
      const [oldK, newK] = [key(), key()];
      const before = await luks.format(f, oldK, FAST);
      const seen: { step: string; old: boolean; new: boolean }[] = [];
      const r = await luks.rotateKeyslot(f, oldK, newK, {
        ...FAST,
        onCheckpoint: async (c) => {
          // what the checkpoint claims is what cryptsetup says at that instant
          seen.push({ step: c.step, old: await opens(f, oldK), new: await opens(f, newK) });
          expect(c.opens).toEqual({ old: seen.at(-1)!.old, new: seen.at(-1)!.new });
        },
      });
      expect(seen).toEqual([
        { step: "added", old: true, new: true },
        { step: "removed", old: false, new: true },
        { step: "verified", old: false, new: true },
      ]);
      expect(r).toMatchObject({ newSlot: 1, removedSlots: [0], resumed: false });
      expect(await opens(f, oldK)).toBe(false);
      expect(await opens(f, newK)).toBe(true);
      const after = await luks.dump(f);
      expect(after.keyslots.map((s) => s.id)).toEqual([1]);
      expect(after.uuid).toBe(before.uuid); // same volume, same volume key: only the keyslot changed
      expect(after.epoch).toBeGreaterThan(before.epoch!);
      // again with the same keys: nothing to do, reported as resumed
      const again = await luks.rotateKeyslot(f, oldK, newK, FAST);
      expect(again).toMatchObject({ newSlot: 1, removedSlots: [], resumed: true });
      // neither key: auth; same key twice: validation
      expect((await refused(luks.rotateKeyslot(f, key(), key(), FAST))).code).toBe("auth");
      expect((await refused(luks.rotateKeyslot(f, newK, newK, FAST))).code).toBe("validation");
    }, 60_000);

    test("rotateKeyslot stopped at each checkpoint (the caller throws): after 'added' both keys open, after 'removed' only the new; a second call finishes", async () => {
      for (const stopAt of ["added", "removed"] as const) {
        const f = await sparse(32 * MiB);
        const [oldK, newK] = [key(), key()];
        await luks.format(f, oldK, FAST);
        const e = await refused(
          luks.rotateKeyslot(f, oldK, newK, {
            ...FAST,
            onCheckpoint: (c) => {
              if (c.step === stopAt) throw new BaremetalError("cancelled", `stopped at ${stopAt}`);
            },
          }),
        );
        expect(e.message).toBe(`stopped at ${stopAt}`);
        expect({ stopAt, old: await opens(f, oldK), new: await opens(f, newK) }).toEqual({ stopAt, old: stopAt === "added", new: true });
        const r = await luks.rotateKeyslot(f, oldK, newK, FAST);
        expect(r.resumed).toBe(true);
        expect(r.removedSlots).toEqual(stopAt === "added" ? [0] : []);
        expect({ old: await opens(f, oldK), new: await opens(f, newK) }).toEqual({ old: false, new: true });
      }
    }, 60_000);

    describe("crashes: the rotating process is killed (SIGKILL)", () => {
      const children = new Set<ChildProcess>();
      afterEach(() => {
        for (const c of children) if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(-c.pid, "SIGKILL");
        children.clear();
      });

      /** Starts a worker rotating `f`; resolves with its checkpoints and how it ended. */
      const worker = (f: string, oldK: Buffer, newK: Buffer, killAt?: RotationStep, killAfterMs?: number) => {
        // its own process group, so that a kill reaches the cryptsetup it runs too
        const proc = spawn(process.execPath, ["--require", tsxCjs, __filename], {
          env: { ...process.env, LUKS_CRASH_WORKER: "1", LUKS_KEY_DIR: keyDir },
          stdio: ["pipe", "pipe", "pipe"],
          detached: true,
        });
        children.add(proc);
        proc.stdin!.end(`${JSON.stringify({ path: f, oldKey: oldK.toString("hex"), newKey: newK.toString("hex"), killAt })}\n`);
        let stderr = "";
        proc.stderr!.on("data", (d) => (stderr += d));
        const checkpoints: string[] = [];
        let done = false;
        let startedAt = 0;
        readline.createInterface({ input: proc.stdout! }).on("line", (l) => {
          const m = JSON.parse(l) as { started?: boolean; checkpoint?: string; done?: boolean };
          if (m.checkpoint) checkpoints.push(m.checkpoint);
          if (m.done) done = true;
          if (m.started) startedAt = Date.now();
          if (m.started && killAfterMs !== undefined) setTimeout(() => proc.exitCode === null && process.kill(-proc.pid!, "SIGKILL"), killAfterMs);
        });
        return new Promise<{ checkpoints: string[]; done: boolean; signal: string | null; stderr: string; ms: number }>((resolve) =>
          proc.once("close", (_code, signal) => resolve({ checkpoints, done, signal, stderr, ms: Date.now() - startedAt })),
        );
      };

      test("killed at each checkpoint: the volume opens with the old or the new key as documented, and a new rotation completes", async () => {
        const expected = { added: { old: true, new: true }, removed: { old: false, new: true }, verified: { old: false, new: true } };
        for (const killAt of ["added", "removed", "verified"] as const) {
          const f = await sparse(32 * MiB);
          const [oldK, newK] = [key(), key()];
          await luks.format(f, oldK, FAST);
          const w = await worker(f, oldK, newK, killAt);
          expect({ killAt, signal: w.signal, last: w.checkpoints.at(-1), done: w.done }).toEqual({ killAt, signal: "SIGKILL", last: killAt, done: false });
          expect({ killAt, old: await opens(f, oldK), new: await opens(f, newK) }).toEqual({ killAt, ...expected[killAt] });
          await luks.rotateKeyslot(f, oldK, newK, FAST);
          expect({ old: await opens(f, oldK), new: await opens(f, newK) }).toEqual({ old: false, new: true });
          expect((await luks.dump(f)).keyslots).toHaveLength(1);
        }
      }, 120_000);

      afterAll(async () => {
        // a worker killed during luksAddKey leaves its private key-file directory behind; the next
        // process to use the same directory removes it (its owner's PID is gone)
        await runCryptsetup({ keyDir }, ["--version"], { what: "sweep", fileKey: key(), timeoutMs: 10_000 }).catch(() => undefined);
        expect(await fs.readdir(keyDir)).toEqual([]);
      });

      test("killed at 8 instants spread over a rotation, cryptsetup included: never a volume that neither key opens", async () => {
        // how long a rotation takes in the worker, from its "started" line to its exit
        const f0 = await sparse(32 * MiB);
        const [o0, n0] = [key(), key()];
        await luks.format(f0, o0, FAST);
        const full = await worker(f0, o0, n0);
        expect(full.done).toBe(true);
        const span = Math.max(50, full.ms);
        const states = new Map<string, number>();
        for (let i = 0; i < 8; i++) {
          const f = await sparse(32 * MiB);
          const [oldK, newK] = [key(), key()];
          await luks.format(f, oldK, FAST);
          const w = await worker(f, oldK, newK, undefined, Math.round((span * i) / 8));
          const state = { old: await opens(f, oldK), new: await opens(f, newK) };
          expect({ i, ok: state.old || state.new }).toEqual({ i, ok: true });
          const label = `${w.done ? "finished" : `killed after ${w.checkpoints.at(-1) ?? "start"}`}: old ${state.old ? "opens" : "refused"}, new ${state.new ? "opens" : "refused"}`;
          states.set(label, (states.get(label) ?? 0) + 1);
          await luks.rotateKeyslot(f, oldK, newK, FAST);
          expect({ old: await opens(f, oldK), new: await opens(f, newK) }).toEqual({ old: false, new: true });
        }
        // the states seen, for the reader of the test output (no key material in them)
        console.log(`kills spread over ${span} ms:\n${[...states].map(([s, c]) => `  ${c} x ${s}`).join("\n")}`);
      }, 180_000);
    });

    test("reencrypt of a 32 MiB volume: progress events, a new volume key, the data intact (checked with Node's own AES-XTS), the key still opens", async () => {
      const f = await sparse(48 * MiB);
      const k = key();
      await luks.format(f, k, FAST);
      const d = await luks.dump(f);
      const dataBytes = 32 * MiB;
      // the volume key cryptsetup uses (test only: a 0600 file in the private temp dir)
      const volumeKey = async () => {
        const vk = path.join(dir, `vk-${n++}`);
        await runCryptsetup({}, ["luksDump", "--batch-mode", "--dump-volume-key", `--volume-key-file=${vk}`, "--key-file=-", f], { what: "volume key", stdinKey: k });
        const b = await fs.readFile(vk);
        await fs.rm(vk);
        return b;
      };
      // plain64 IVs count 512-byte sectors even with 4096-byte encryption sectors (LUKS2 without iv_large_sectors)
      const xts = (vk: Buffer, buf: Buffer, at: number, sector: number, enc: boolean) => {
        const out: Buffer[] = [];
        for (let o = 0; o < buf.length; o += sector) {
          const iv = Buffer.alloc(16);
          iv.writeBigUInt64LE(BigInt((at + o) / 512));
          const c = enc ? crypto.createCipheriv("aes-256-xts", vk, iv) : crypto.createDecipheriv("aes-256-xts", vk, iv);
          out.push(c.update(buf.subarray(o, o + sector)), c.final());
        }
        return Buffer.concat(out);
      };
      const sector = d.sectorSize ?? 512;
      const plain = crypto.randomBytes(dataBytes);
      const vk1 = await volumeKey();
      const fh = await fs.open(f, "r+");
      await fh.write(xts(vk1, plain, 0, sector, true), 0, dataBytes, d.segments[0].offset);
      await fh.close();
      const progress: { bytesDone: number; bytesTotal: number }[] = [];
      const r = await luks.reencrypt(f, k, { ...FAST, hotzoneMiB: 4, onProgress: (p) => progress.push(p) });
      expect(progress.length).toBeGreaterThanOrEqual(1);
      expect(r.progressEvents).toBe(progress.length);
      const lastP = progress.at(-1)!;
      expect(lastP.bytesDone).toBe(lastP.bytesTotal);
      expect(lastP.bytesTotal).toBe(48 * MiB - d.segments[0].offset);
      for (let i = 1; i < progress.length; i++) expect(progress[i].bytesDone).toBeGreaterThanOrEqual(progress[i - 1].bytesDone);
      expect(r.keyslot).not.toBe(0); // cryptsetup writes the key into a new keyslot bound to the new volume key
      expect(await opens(f, k)).toBe(true);
      const after = await luks.dump(f);
      expect(after).toMatchObject({ cipher: "aes-xts-plain64", keyBits: 512, reencryptInProgress: false, uuid: d.uuid });
      const vk2 = await volumeKey();
      expect(vk2.equals(vk1)).toBe(false);
      const raw = Buffer.alloc(dataBytes);
      const rh = await fs.open(f, "r");
      await rh.read(raw, 0, dataBytes, after.segments[0].offset);
      await rh.close();
      expect(xts(vk2, raw, 0, sector, false).equals(plain)).toBe(true);
      expect(xts(vk1, raw, 0, sector, false).equals(plain)).toBe(false);
    }, 120_000);

    test("reencrypt after a rotation: the rotated key is the only one, other keyslots are gone (cryptsetup's rule with a key file)", async () => {
      const f = await sparse(24 * MiB);
      const [a, b, c] = [key(), key(), key()];
      await luks.format(f, a, FAST);
      await luks.addKey(f, a, c, FAST);
      await luks.rotateKeyslot(f, a, b, FAST);
      expect((await refused(luks.reencrypt(f, a, FAST))).code).toBe("auth");
      const r = await luks.reencrypt(f, b, FAST);
      expect(r.removedSlots.length).toBeGreaterThanOrEqual(1);
      expect({ a: await opens(f, a), b: await opens(f, b), c: await opens(f, c) }).toEqual({ a: false, b: true, c: false });
      expect((await luks.dump(f)).keyslots).toHaveLength(1);
    }, 60_000);

    test("a cancelled reencrypt stops, leaves a resumable header, and the next call completes it", async () => {
      // cryptsetup reports progress first after about half a second: the volume is large enough
      // that most of it is still to do then. Should the abort still come too late (a loaded
      // machine; seen in CI with 256 MiB), the finished run is reported as finished, not as
      // cancelled, and the test tries again on a new volume.
      let f = "";
      let k = Buffer.alloc(0);
      let e: BaremetalError | undefined;
      for (let attempt = 1; !e && attempt <= 3; attempt++) {
        f = await sparse(GiB + 16 * MiB);
        k = key();
        await luks.format(f, k, FAST);
        const ac = new AbortController();
        let done: ReencryptResult | undefined;
        try {
          done = await luks.reencrypt(f, k, { ...FAST, hotzoneMiB: 16, signal: ac.signal, onProgress: (p) => p.bytesDone > 0 && p.bytesDone < p.bytesTotal && ac.abort() });
        } catch (x) {
          errors.push(x);
          e = x as BaremetalError;
        }
        if (done) {
          expect(ac.signal.aborted).toBe(true);
          expect({ inProgress: (await luks.dump(f)).reencryptInProgress, bytes: done.bytes, opens: await opens(f, k) }).toEqual({ inProgress: false, bytes: GiB, opens: true });
          await fs.unlink(f);
        }
      }
      expect(e?.code).toBe("cancelled");
      const mid = await luks.dump(f);
      expect(mid.reencryptInProgress).toBe(true);
      expect((await refused(luks.rotateKeyslot(f, k, key(), FAST))).code).toBe("conflict");
      const r = await luks.reencrypt(f, k, { ...FAST, hotzoneMiB: 16 });
      expect(r.resumed).toBe(true);
      expect((await luks.dump(f)).reencryptInProgress).toBe(false);
      expect(r.bytes).toBe(GiB);
      expect(await opens(f, k)).toBe(true);
    }, 180_000);

    test("an abort that reaches cryptsetup after its last step gets the finished re-encryption, not 'cancelled' (cryptsetup says 'Reencryption interrupted.' then)", async () => {
      const f = await sparse(80 * MiB);
      const k = key();
      await luks.format(f, k, FAST);
      // The header's digests of the volume key: a re-encryption's new key gets a new one.
      const digests = (d: { json: unknown }) => (d.json as { digests: unknown }).digests;
      const before = await luks.dump(f);
      const ac = new AbortController();
      const r = await luks.reencrypt(f, k, { ...FAST, hotzoneMiB: 16, signal: ac.signal, onProgress: (p) => p.bytesDone === p.bytesTotal && ac.abort() });
      expect(ac.signal.aborted).toBe(true);
      expect(r.bytes).toBe(64 * MiB);
      const after = await luks.dump(f);
      expect(after.reencryptInProgress).toBe(false);
      expect(digests(after)).not.toEqual(digests(before));
      expect(await opens(f, k)).toBe(true);
      // A stop before cryptsetup did anything stays a cancellation, the volume untouched.
      const early = new AbortController();
      early.abort();
      expect((await refused(luks.reencrypt(f, k, { ...FAST, signal: early.signal }))).code).toBe("cancelled");
      expect((await luks.dump(f)).json).toEqual(after.json);
    }, 60_000);

    test("no key bytes in any error (message, details, message id), and scrub removes every text form of a key", () => {
      expect(errors.length).toBeGreaterThan(10);
      for (const e of errors) {
        const text = isBaremetalError(e) ? [e.message, e.messageId ?? "", ...e.details, describeError(e)].join("\n") : String(e);
        for (const k of keys) {
          for (const form of [k.toString("hex"), k.toString("base64"), k.toString("hex").slice(0, 16)]) expect(text).not.toContain(form);
          expect(Buffer.from(text, "latin1").includes(k.subarray(0, 8))).toBe(false);
        }
      }
      const k = keys[0];
      const spaced = k.toString("hex").match(/../g)!.join(" ");
      const dirty = `a ${k.toString("hex")} b ${k.toString("base64")} c ${spaced} d`;
      expect(scrub(dirty, [k])).toBe("a [redacted] b [redacted] c [redacted] d");
    });
  });
}
