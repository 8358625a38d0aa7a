/**
 * LUKS2 on volume files, through cryptsetup's userspace operations (no device-mapper needed:
 * luksFormat, luksAddKey, luksKillSlot/luksRemoveKey, `open --test-passphrase`, luksDump, and
 * offline `reencrypt --force-offline-reencrypt`). LUKS2 only: LUKS1 reencryption is not crash-safe.
 *
 * Keys are binary, 32 or 64 bytes (from the key manager), and are used as LUKS "key files" (no
 * newline handling). They reach cryptsetup through stdin or a private 0600 file (cryptsetup.ts),
 * never argv, never a log line, never an error message.
 *
 * Key rotation (rotateKeyslot) is add-new-then-remove-old, and each step is one LUKS2 metadata
 * update, which cryptsetup writes to both header copies with a sequence number (a torn write
 * leaves the older copy valid). So the volume is in one of these states at any instant:
 *
 *   S0 before step 1                     old key opens, new key refused
 *   S1 after step 1 (checkpoint "added") old key AND new key open (two keyslots, same volume key)
 *   S2 after step 2 (checkpoint "removed") new key opens, old key refused
 *
 * and a crash inside a step leaves the state before or after it: never a volume that neither key
 * opens. rotateKeyslot is idempotent: called again with the same keys after a crash it finds which
 * state the volume is in (which key opens which keyslot) and continues from there. A caller that
 * must not lose track (KeyRotationPolicy) records each checkpoint before retiring the old key in
 * the key manager: the old key may be retired only after "removed".
 *
 * Concurrency: operations on one volume path are serialised within this process; across processes
 * cryptsetup's own LUKS2 metadata lock (in /run/cryptsetup) serialises header writes, but a
 * rotation's read-decide-write sequence assumes a single writer per volume.
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import { CryptsetupSettings, runCryptsetup } from "./cryptsetup";
import { LuksDump, parseLuksDump } from "./dump";

export type { LuksDump, LuksKeyslot, LuksSegment } from "./dump";

export type Pbkdf = "argon2id" | "argon2i" | "pbkdf2";

/** Cost of the key derivation for a keyslot being created. Defaults: cryptsetup's (argon2id, 2 s). */
export interface PbkdfOptions {
  pbkdf?: Pbkdf;
  /** Target unlock time in ms (cryptsetup --iter-time); low values for tests and benches. */
  iterTimeMs?: number;
  /** Argon2 memory cost in KiB (cryptsetup --pbkdf-memory). */
  memoryKiB?: number;
  /** Argon2 threads (cryptsetup --pbkdf-parallel). */
  parallel?: number;
  /**
   * Fixed cost instead of a benchmark (cryptsetup --pbkdf-force-iterations): pbkdf2 iterations
   * (>= 1000) or argon2 time cost (>= 4). Skips cryptsetup's 1-2 s PBKDF benchmark: tests and
   * benches only; a real volume keeps the benchmarked default.
   */
  forceIterations?: number;
}

export interface FormatOptions extends PbkdfOptions {
  /** Default aes-xts-plain64. */
  cipher?: string;
  /** Bits of the volume key; default 512 (AES-256 in XTS mode). */
  keySize?: 256 | 512;
  label?: string;
  /** Encryption sector size (512 or 4096); default cryptsetup's choice. */
  sectorSize?: 512 | 4096;
  /** Format even when the file already holds a LUKS header (destroys its data). Default false. */
  overwrite?: boolean;
}

export type RotationStep = "added" | "removed" | "verified";

export interface RotationCheckpoint {
  step: RotationStep;
  path: string;
  /** The keyslot holding the new key. */
  newSlot: number;
  /** The keyslot(s) of the old key still present at this point. */
  oldSlots: number[];
  /** Which keys open the volume now. */
  opens: { old: boolean; new: boolean };
}

export interface RotateOptions extends PbkdfOptions {
  /** Called after each step; rotation continues when it resolves, stops (state safe) when it throws. */
  onCheckpoint?: (c: RotationCheckpoint) => void | Promise<void>;
  signal?: AbortSignal;
}

export interface RotationResult {
  newSlot: number;
  removedSlots: number[];
  /** True when the volume was found past step 1 (a rotation interrupted earlier was continued). */
  resumed: boolean;
  ms: number;
  /** Time of each step, ms. */
  steps: { step: string; ms: number }[];
}

export interface ReencryptProgress {
  bytesDone: number;
  bytesTotal: number;
  /** Bytes per second so far, per cryptsetup. */
  speed?: number;
  etaMs?: number;
  elapsedMs?: number;
}

export interface ReencryptOptions extends PbkdfOptions {
  /**
   * Size of each step (cryptsetup --hotzone-size), MiB. Default cryptsetup's, which on files takes
   * up to about 1 GiB per step (fastest, but progress only between steps); smaller steps give
   * finer progress and a shorter stop on cancel at some cost in throughput (see bench/luks-rotation.ts).
   */
  hotzoneMiB?: number;
  onProgress?: (p: ReencryptProgress) => void;
  signal?: AbortSignal;
  /** Default: none (it is a long operation); cancel with `signal`. */
  timeoutMs?: number;
}

export interface ReencryptResult {
  /** The keyslot holding the key after re-encryption (cryptsetup writes a new one). */
  keyslot: number;
  /** True when an interrupted re-encryption was continued. */
  resumed: boolean;
  /** Keyslots of other keys that cryptsetup removed (only the key given survives a re-encryption). */
  removedSlots: number[];
  bytes: number;
  ms: number;
  progressEvents: number;
}

export interface LuksOptions extends CryptsetupSettings {
  /** Timeout of each cryptsetup call but reencrypt, ms (default 300000: argon2 with a high cost is slow). */
  timeoutMs?: number;
}

/** cryptsetup's default LUKS2 header (2 x 16 KiB metadata + keyslots area) and so the data offset. */
const HEADER_BYTES = 16 * 1048576;

const slotRe = /Key slot (\d+) (?:unlocked|created)/;

function checkKey(key: unknown, property: string): Buffer {
  if (!Buffer.isBuffer(key)) throw validationError(property, "the key must be binary (a Buffer from the key manager)");
  if (key.length !== 32 && key.length !== 64) throw validationError(property, `the key must be 32 or 64 bytes (256 or 512 bits), got ${key.length} bytes`);
  return key;
}

function pbkdfArgs(o: PbkdfOptions, property = "pbkdf"): string[] {
  const a: string[] = [];
  if (o.pbkdf !== undefined) {
    if (!["argon2id", "argon2i", "pbkdf2"].includes(o.pbkdf)) throw validationError(property, `pbkdf must be argon2id, argon2i or pbkdf2, got ${JSON.stringify(o.pbkdf)}`);
    a.push(`--pbkdf=${o.pbkdf}`);
  }
  const int = (v: number | undefined, name: string, flag: string, min: number) => {
    if (v === undefined) return;
    if (!Number.isInteger(v) || v < min) throw validationError(name, `${name} must be an integer >= ${min}, got ${v}`);
    a.push(`${flag}=${v}`);
  };
  int(o.iterTimeMs, "iterTimeMs", "--iter-time", 1);
  int(o.memoryKiB, "memoryKiB", "--pbkdf-memory", 32);
  int(o.parallel, "parallel", "--pbkdf-parallel", 1);
  int(o.forceIterations, "forceIterations", "--pbkdf-force-iterations", o.pbkdf === "pbkdf2" ? 1000 : 4);
  return a;
}

/**
 * cryptsetup reports a full filesystem only as a failed write ("Device wipe error, offset N",
 * "Cannot wipe header on device"): when its write failed and the file's filesystem has less room
 * than the header needs, the error says so and what to do.
 */
async function whenFull(e: unknown, file: string, what: string): Promise<unknown> {
  if (!isBaremetalError(e) || e.code !== "backend" || !/wipe error|cannot wipe|write error|cannot write|no space left/i.test(e.details.join("\n"))) return e;
  let free: number;
  try {
    const st = await fs.statfs(path.dirname(file));
    free = st.bavail * st.bsize;
  } catch {
    return e;
  }
  if (free >= HEADER_BYTES) return e;
  return new BaremetalError(
    "backend",
    `${what}: the filesystem holding the volume is full (${(free / 1048576).toFixed(1)} MiB free; a LUKS2 header writes ${HEADER_BYTES / 1048576} MiB): free space on it or use another storage backend, then run again`,
    { messageId: e.messageId, details: e.details, cause: e },
  );
}

export class Luks {
  private readonly opts: LuksOptions;
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(opts: LuksOptions = {}) {
    this.opts = opts;
  }

  private get timeoutMs(): number {
    return this.opts.timeoutMs ?? 300_000;
  }

  /** Serialises operations on one volume within this process. */
  private async exclusive<T>(file: string, fn: () => Promise<T>): Promise<T> {
    const key = path.resolve(file);
    const before = this.locks.get(key) ?? Promise.resolve();
    const run = before.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.locks.set(key, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    }
  }

  private async checkFile(file: string, what: string): Promise<string> {
    if (typeof file !== "string" || !file) throw validationError("path", "the volume path must be a non-empty string");
    try {
      const st = await fs.stat(file);
      if (!st.isFile() && !st.isBlockDevice()) throw validationError("path", `${what}: ${file} is neither a file nor a block device`);
    } catch (e) {
      if (isBaremetalError(e)) throw e;
      throw new BaremetalError("not-found", `${what}: the volume ${file} does not exist (create it first)`, { cause: e });
    }
    return file;
  }

  /** True when the file starts with a LUKS header (any version). */
  async isLuks(file: string): Promise<boolean> {
    await this.checkFile(file, `isLuks ${file}`);
    try {
      await runCryptsetup(this.opts, ["isLuks", file], { what: `isLuks ${file}`, timeoutMs: this.timeoutMs });
      return true;
    } catch (e) {
      if (isBaremetalError(e) && e.messageId?.startsWith("cryptsetup exit 1")) return false;
      throw e;
    }
  }

  /** Writes a LUKS2 header whose keyslot 0 opens with `key`. Refuses a file that already is LUKS unless `overwrite`. */
  async format(file: string, key: Buffer, o: FormatOptions = {}): Promise<LuksDump> {
    const what = `format ${file}`;
    checkKey(key, "key");
    const cipher = o.cipher ?? "aes-xts-plain64";
    if (!/^[a-z0-9]+(-[a-z0-9]+)+$/.test(cipher)) throw validationError("cipher", `cipher must look like aes-xts-plain64, got ${JSON.stringify(cipher)}`);
    const keySize = o.keySize ?? 512;
    if (keySize !== 256 && keySize !== 512) throw validationError("keySize", `keySize must be 256 or 512, got ${keySize}`);
    if (o.label !== undefined && (typeof o.label !== "string" || o.label.length > 47 || /[\0\n]/.test(o.label))) {
      throw validationError("label", "the label must be at most 47 characters, no newline");
    }
    if (o.sectorSize !== undefined && o.sectorSize !== 512 && o.sectorSize !== 4096) throw validationError("sectorSize", "sectorSize must be 512 or 4096");
    const args = ["luksFormat", "--batch-mode", "--type=luks2", `--cipher=${cipher}`, `--key-size=${keySize}`, ...pbkdfArgs({ ...o, pbkdf: o.pbkdf ?? "argon2id" })];
    if (o.label !== undefined) args.push(`--label=${o.label}`);
    if (o.sectorSize !== undefined) args.push(`--sector-size=${o.sectorSize}`);
    args.push("--key-file=-", file);
    return this.exclusive(file, async () => {
      await this.checkFile(file, what);
      const st = await fs.stat(file);
      if (st.isFile() && st.size <= HEADER_BYTES) {
        // cryptsetup would grow the file to the header's size and leave no room for data (exit 0)
        throw validationError("size", `${what}: the volume is ${st.size} bytes; LUKS2 needs more than its ${HEADER_BYTES / 1048576} MiB header: make the volume larger`);
      }
      if (!o.overwrite && (await this.isLuks(file))) {
        throw new BaremetalError("conflict", `${what}: the file already holds a LUKS header; formatting again would destroy its data (pass overwrite to do so)`);
      }
      try {
        await runCryptsetup(this.opts, args, { what, stdinKey: key, timeoutMs: this.timeoutMs });
      } catch (e) {
        throw await whenFull(e, file, what);
      }
      return this.dumpUnlocked(file);
    });
  }

  /** The keyslot `key` opens, or undefined when none does (`slot` limits the test to one keyslot). */
  async findKeyslot(file: string, key: Buffer, slot?: number): Promise<number | undefined> {
    checkKey(key, "key");
    await this.checkFile(file, `test key on ${file}`);
    return this.findUnlocked(file, key, slot);
  }

  private async findUnlocked(file: string, key: Buffer, slot?: number, signal?: AbortSignal): Promise<number | undefined> {
    const args = ["open", "--test-passphrase", "--verbose", "--batch-mode", "--key-file=-"];
    if (slot !== undefined) args.push(`--key-slot=${slot}`);
    args.push(file);
    try {
      const r = await runCryptsetup(this.opts, args, { what: `test key on ${file}`, stdinKey: key, timeoutMs: this.timeoutMs, signal });
      const m = slotRe.exec(r.stdout) ?? slotRe.exec(r.stderr);
      if (!m) throw new BaremetalError("backend", `test key on ${file}: cryptsetup accepted the key but did not say which keyslot opened`);
      return Number(m[1]);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "auth") return undefined;
      throw e;
    }
  }

  /** Whether `key` opens the volume (cryptsetup open --test-passphrase). */
  async testKey(file: string, key: Buffer): Promise<boolean> {
    return (await this.findKeyslot(file, key)) !== undefined;
  }

  /** Adds a keyslot for `newKey`, authorised by `existingKey`; returns its number. */
  async addKey(file: string, existingKey: Buffer, newKey: Buffer, o: PbkdfOptions & { slot?: number } = {}): Promise<number> {
    checkKey(existingKey, "existingKey");
    checkKey(newKey, "newKey");
    return this.exclusive(file, async () => {
      await this.checkFile(file, `add key to ${file}`);
      return this.addUnlocked(file, existingKey, newKey, o);
    });
  }

  private async addUnlocked(file: string, existingKey: Buffer, newKey: Buffer, o: PbkdfOptions & { slot?: number }, signal?: AbortSignal): Promise<number> {
    const what = `add key to ${file}`;
    const args = ["luksAddKey", "--batch-mode", "--verbose", ...pbkdfArgs(o), "--key-file=-", "--new-keyfile={keyfile}"];
    if (o.slot !== undefined) args.push(`--new-key-slot=${o.slot}`);
    args.push(file);
    const before = await this.dumpUnlocked(file);
    const r = await runCryptsetup(this.opts, args, { what, stdinKey: existingKey, fileKey: newKey, timeoutMs: this.timeoutMs, signal });
    const m = /Key slot (\d+) created/.exec(r.stdout + "\n" + r.stderr);
    if (m) return Number(m[1]);
    const after = await this.dumpUnlocked(file);
    const added = after.keyslots.filter((k) => !before.keyslots.some((b) => b.id === k.id));
    if (added.length !== 1) throw new BaremetalError("backend", `${what}: cannot tell which keyslot cryptsetup created`);
    return added[0].id;
  }

  /**
   * Removes the keyslot(s) `key` opens (cryptsetup luksRemoveKey). Refuses (`conflict`) to remove
   * the last keyslot: the volume would be unreadable for good. Returns the slots removed; none
   * when the key opens nothing (already removed: idempotent).
   */
  async removeKey(file: string, key: Buffer): Promise<number[]> {
    checkKey(key, "key");
    return this.exclusive(file, async () => {
      await this.checkFile(file, `remove key from ${file}`);
      const removed: number[] = [];
      for (;;) {
        const slot = await this.findUnlocked(file, key);
        if (slot === undefined) return removed;
        const d = await this.dumpUnlocked(file);
        if (d.keyslots.length <= 1) {
          throw new BaremetalError("conflict", `remove key from ${file}: keyslot ${slot} is the volume's last one; removing it would make the data unreadable (add the new key first)`);
        }
        await runCryptsetup(this.opts, ["luksRemoveKey", "--batch-mode", "--key-file=-", file], { what: `remove key from ${file}`, stdinKey: key, timeoutMs: this.timeoutMs });
        removed.push(slot);
      }
    });
  }

  /**
   * Removes keyslot `slot`, authorised by `authKey`, which must open ANOTHER keyslot (cryptsetup
   * luksKillSlot checks that): proof that the volume still opens afterwards.
   */
  async killSlot(file: string, slot: number, authKey: Buffer): Promise<void> {
    checkKey(authKey, "authKey");
    if (!Number.isInteger(slot) || slot < 0 || slot > 31) throw validationError("slot", `slot must be an integer 0..31, got ${slot}`);
    return this.exclusive(file, async () => {
      await this.checkFile(file, `remove keyslot ${slot} from ${file}`);
      await this.killUnlocked(file, slot, authKey);
    });
  }

  private async killUnlocked(file: string, slot: number, authKey: Buffer, signal?: AbortSignal): Promise<void> {
    const d = await this.dumpUnlocked(file);
    if (!d.keyslots.some((k) => k.id === slot)) return;
    await runCryptsetup(this.opts, ["luksKillSlot", "--batch-mode", "--key-file=-", file, String(slot)], {
      what: `remove keyslot ${slot} from ${file}`,
      stdinKey: authKey,
      timeoutMs: this.timeoutMs,
      signal,
    });
  }

  /** The header: keyslots, segments, cipher, key size, UUID, label (no key material). */
  async dump(file: string): Promise<LuksDump> {
    await this.checkFile(file, `dump ${file}`);
    return this.dumpUnlocked(file);
  }

  private async dumpUnlocked(file: string): Promise<LuksDump> {
    const what = `dump ${file}`;
    const header = await runCryptsetup(this.opts, ["luksDump", file], { what, timeoutMs: this.timeoutMs });
    if (!/^Version:\s*2\s*$/m.test(header.stdout)) {
      throw new BaremetalError("conflict", `${what}: the volume is not LUKS2 (only LUKS2 is supported)`);
    }
    const json = await runCryptsetup(this.opts, ["luksDump", "--dump-json-metadata", file], { what, timeoutMs: this.timeoutMs });
    return parseLuksDump(json.stdout, header.stdout, what);
  }

  /**
   * Replaces the key `oldKey` by `newKey`: adds a keyslot for the new key, then removes the old
   * key's keyslot(s) (authorised by the new key), then verifies (old refused, new accepted), with
   * a checkpoint after each step. See the states at the top of this file. Idempotent.
   */
  async rotateKeyslot(file: string, oldKey: Buffer, newKey: Buffer, o: RotateOptions = {}): Promise<RotationResult> {
    checkKey(oldKey, "oldKey");
    checkKey(newKey, "newKey");
    if (oldKey.equals(newKey)) throw validationError("newKey", "the new key is the old key: rotation needs new key material");
    const what = `rotate key of ${file}`;
    return this.exclusive(file, async () => {
      await this.checkFile(file, what);
      const t0 = Date.now();
      const steps: { step: string; ms: number }[] = [];
      const timed = async <T>(step: string, fn: () => Promise<T>): Promise<T> => {
        const t = Date.now();
        const v = await fn();
        steps.push({ step, ms: Date.now() - t });
        return v;
      };
      const checkpoint = async (step: RotationStep, newSlot: number, oldSlots: number[], opens: { old: boolean; new: boolean }) => {
        if (o.onCheckpoint) await o.onCheckpoint({ step, path: file, newSlot, oldSlots, opens });
      };

      // Where are we? (S0, S1 or S2, see the top of the file)
      const before = await timed("inspect", () => this.dumpUnlocked(file));
      if (before.reencryptInProgress) throw new BaremetalError("conflict", `${what}: a re-encryption of the volume is unfinished: run reencrypt again to complete it first`);
      const oldSlot = await timed("test-old", () => this.findUnlocked(file, oldKey, undefined, o.signal));
      let newSlot: number | undefined;
      // With the old key in the only keyslot, the new key cannot open anything: skip that test.
      if (oldSlot === undefined || before.keyslots.length > 1) newSlot = await timed("test-new", () => this.findUnlocked(file, newKey, undefined, o.signal));
      if (oldSlot === undefined && newSlot === undefined) {
        throw new BaremetalError("auth", `${what}: neither the old nor the new key opens the volume: check the key references`);
      }
      const resumed = newSlot !== undefined;
      if (newSlot === undefined) {
        // S0 -> S1
        newSlot = await timed("add", () => this.addUnlocked(file, oldKey, newKey, o, o.signal));
        await checkpoint("added", newSlot, [oldSlot!], { old: true, new: true });
      } else if (oldSlot !== undefined) {
        await checkpoint("added", newSlot, [oldSlot], { old: true, new: true });
      }
      // S1 -> S2: every keyslot the old key opens goes (normally one).
      const removedSlots: number[] = [];
      let slot = oldSlot;
      while (slot !== undefined) {
        if (slot === newSlot) throw new BaremetalError("internal", `${what}: old and new key open the same keyslot`);
        const s = slot;
        await timed("remove", () => this.killUnlocked(file, s, newKey, o.signal));
        removedSlots.push(s);
        slot = await timed("verify-old-refused", () => this.findUnlocked(file, oldKey, undefined, o.signal));
        if (slot === undefined) await checkpoint("removed", newSlot, [], { old: false, new: true });
      }
      if (oldSlot === undefined) {
        // Found in S2 already: the old key was refused by the first test.
        await checkpoint("removed", newSlot, [], { old: false, new: true });
      }
      const check = await timed("verify-new", () => this.findUnlocked(file, newKey, newSlot, o.signal));
      if (check !== newSlot) throw new BaremetalError("backend", `${what}: the new key no longer opens keyslot ${newSlot}`);
      await checkpoint("verified", newSlot, [], { old: false, new: true });
      return { newSlot, removedSlots, resumed, ms: Date.now() - t0, steps };
    });
  }

  /**
   * Re-encrypts the whole volume under a new volume key, offline (cryptsetup reencrypt
   * --force-offline-reencrypt, LUKS2 resilience: an interrupted run is resumed by calling this
   * again). `key` must open the volume; afterwards it is the ONLY key that does (cryptsetup keeps
   * just the keyslot it was given), in a new keyslot. Progress comes from --progress-json.
   */
  async reencrypt(file: string, key: Buffer, o: ReencryptOptions = {}): Promise<ReencryptResult> {
    checkKey(key, "key");
    const what = `re-encrypt ${file}`;
    return this.exclusive(file, async () => {
      await this.checkFile(file, what);
      const t0 = Date.now();
      const before = await this.dumpUnlocked(file);
      const slot = await this.findUnlocked(file, key, undefined, o.signal);
      if (slot === undefined) throw new BaremetalError("auth", `${what}: the key does not open the volume: check the key reference`);
      let events = 0;
      let bytes = 0;
      // A fresh run names the key's keyslot (cryptsetup: with a key file, --key-slot or a single
      // keyslot); resuming an interrupted run takes the key alone (a keyslot number is refused then).
      const resume = before.reencryptInProgress;
      const args = ["reencrypt", "--batch-mode", "--force-offline-reencrypt", "--progress-json", ...(resume ? [] : [...pbkdfArgs(o), `--key-slot=${slot}`]), "--key-file=-", file];
      if (o.hotzoneMiB !== undefined) {
        if (!Number.isInteger(o.hotzoneMiB) || o.hotzoneMiB < 1) throw validationError("hotzoneMiB", `hotzoneMiB must be a positive integer, got ${o.hotzoneMiB}`);
        args.splice(args.length - 2, 0, `--hotzone-size=${o.hotzoneMiB}M`);
      }
      const run = runCryptsetup(this.opts, args, {
        what,
        stdinKey: key,
        signal: o.signal,
        timeoutMs: o.timeoutMs,
        onStdoutLine: (line) => {
          if (!line.startsWith("{")) return;
          let p: Record<string, string>;
          try {
            p = JSON.parse(line) as Record<string, string>;
          } catch {
            return;
          }
          const n = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined);
          const done = n(p.device_bytes);
          const total = n(p.device_size);
          if (done === undefined || total === undefined) return;
          bytes = done;
          events++;
          const ev: ReencryptProgress = { bytesDone: done, bytesTotal: total };
          if (n(p.speed) !== undefined) ev.speed = n(p.speed);
          if (n(p.eta_ms) !== undefined) ev.etaMs = n(p.eta_ms);
          if (n(p.time_ms) !== undefined) ev.elapsedMs = n(p.time_ms);
          try {
            o.onProgress?.(ev);
          } catch {
            // a progress listener's failure does not stop a re-encryption half-way
          }
        },
      });
      try {
        await run;
      } catch (e) {
        // A stop that reaches cryptsetup after its last step makes it say "Reencryption
        // interrupted." and fail although the volume is done; the header tells: a finished run has
        // no reencryption pending and (when it was not a resumption) a new volume key.
        if (!isBaremetalError(e) || e.code !== "cancelled") throw e;
        const now = await this.dumpUnlocked(file);
        if (now.reencryptInProgress || (!resume && volumeKeyDigest(now) === volumeKeyDigest(before))) throw e;
      }
      // The re-encryption is finished: an abort that came too late to stop it must not turn it into
      // "cancelled", so the checks below do not take the signal.
      const after = await this.dumpUnlocked(file);
      if (after.reencryptInProgress) throw new BaremetalError("backend", `${what}: cryptsetup ended but the header still shows a re-encryption in progress: run it again`);
      const newSlot = await this.findUnlocked(file, key);
      if (newSlot === undefined) throw new BaremetalError("backend", `${what}: after re-encryption the key no longer opens the volume`);
      const removedSlots = before.keyslots.map((k) => k.id).filter((id) => id !== slot && !after.keyslots.some((k) => k.id === id));
      return { keyslot: newSlot, resumed: resume, removedSlots, bytes, ms: Date.now() - t0, progressEvents: events };
    });
  }
}

/** The digest of the volume key that protects data segment 0 (it changes when the volume is re-encrypted). */
function volumeKeyDigest(d: LuksDump): string | undefined {
  const digests = (d.json as { digests?: Record<string, { segments?: string[]; digest?: string }> } | undefined)?.digests ?? {};
  return Object.values(digests).find((g) => g.segments?.includes("0"))?.digest;
}
