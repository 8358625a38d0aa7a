/**
 * Volume content as extents (backups and restores) for the `ceph` backend, streamed through Ceph's
 * own tools in the "rbd diff v1" format (Ceph's doc/dev/rbd-diff.rst: the header `rbd diff v1\n`,
 * then records of a one-byte tag: `f`/`t` from/to snapshot (le32 length + name), `s` image size
 * (le64), `w` offset + length (le64 each) + the data, `z` offset + length (zeros), `e` the end).
 *
 * Reading: `rbd export-diff [--from-snap SINCE] POOL/VOLUME[@SNAPSHOT] -`. Without `since` it is
 * the whole allocated content (objects that do not exist are left out: they read as zeros); with
 * it, only what changed since that snapshot, discards included as zero extents. The parser
 * (`parseRbdDiff`) never holds a whole record: a `w` record is cut into extents of at most
 * `maxBytes` that never cross a multiple of `maxBytes`, each copied out of the pipe's chunks (or
 * handed on as a slice of one when it lies inside it; whole-size pieces come from a BufferPool, so a
 * consumer that calls the extent's `release()` lets the next piece reuse the buffer); `z` records
 * are cut the same way. A data piece that is all zeros (e.g. a discarded range inside an object, in
 * a full export) is given as a zero extent. Backpressure: the pipe is read only when the consumer asks for the next extent, so
 * a slow consumer stops rbd (its stdout pipe fills), and memory stays at one extent plus the
 * stream's buffer whatever the volume's size.
 *
 * Writing: `rbd import-diff - POOL/VOLUME` fed with `w` and `z` records (no `f`, `t` or `s`: no
 * snapshot is made and the size is left alone), waiting for the pipe to drain after each write.
 * import-diff writes `z` ranges as zeros (a partial-object discard included: checked in
 * extents.test.ts), so an incremental restore over a full one zeros what was discarded.
 *
 * Both: the command's exit code decides (driver.rbd.failed maps it to a BaremetalError); the
 * signal, an early return of the consumer, or an error of the extents' source kills rbd (SIGKILL)
 * and waits for it to exit. No overall deadline (a 1 TB volume takes hours): rbd is killed as a
 * `timeout` when it sends nothing (reading), or takes nothing (writing), for commandTimeoutMs.
 */
import type { ChildProcess } from "node:child_process";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import type { Extent, ReadExtentsOptions } from "../kinds/storage";
import { anySignal, BufferPool, checkExtent, checkMaxBytes, isAllZero, releaseExtent } from "../storage-file/extents";
import type { CephStorageDriver } from "./driver";

const NAME_RE = /^[a-z0-9](?:[a-z0-9.-]{0,62}[a-z0-9])?$/;
const HEADER = Buffer.from("rbd diff v1\n", "ascii");
const TAG = { from: 0x66, to: 0x74, size: 0x73, write: 0x77, zero: 0x7a, end: 0x65 } as const;

function checkName(property: string, value: unknown, what: string): string {
  if (typeof value !== "string" || !NAME_RE.test(value)) {
    throw validationError(property, `${JSON.stringify(value)} is not ${what}: use 1-64 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit`);
  }
  return value;
}

/** The stream ended or broke in a way the format does not allow. */
export class DiffFormatError extends Error {}

/** Reads bytes from an async sequence of chunks without concatenating them. */
class ChunkReader {
  private chunk: Buffer = Buffer.alloc(0);
  private pos = 0;
  /** Bytes consumed so far (for messages). */
  consumed = 0;
  constructor(private readonly it: AsyncIterator<Buffer>) {}

  private async fill(): Promise<boolean> {
    while (this.pos >= this.chunk.length) {
      const r = await this.it.next();
      if (r.done) return false;
      this.chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
      this.pos = 0;
    }
    return true;
  }

  /** Up to `n` (> 0) bytes: a slice of the current chunk (never empty). */
  async upTo(n: number, what: string): Promise<Buffer> {
    if (!(await this.fill())) throw new DiffFormatError(`the diff stream ended inside ${what} (after ${this.consumed} bytes)`);
    const b = this.chunk.subarray(this.pos, this.pos + n);
    this.pos += b.length;
    this.consumed += b.length;
    return b;
  }

  /** Exactly `n` bytes (a copy when they span chunks). */
  async exact(n: number, what: string): Promise<Buffer> {
    const first = await this.upTo(n, what);
    if (first.length === n) return first;
    const out = Buffer.allocUnsafe(n);
    first.copy(out);
    let have = first.length;
    while (have < n) {
      const b = await this.upTo(n - have, what);
      b.copy(out, have);
      have += b.length;
    }
    return out;
  }

  async u64(what: string): Promise<number> {
    const v = (await this.exact(8, what)).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DiffFormatError(`${what} is ${v}, beyond what is supported`);
    return Number(v);
  }
}

export interface DiffMeta {
  fromSnap?: string;
  toSnap?: string;
  size?: number;
}

/**
 * Parses an "rbd diff v1" stream into extents (see the top of this file). `meta` receives the
 * metadata records as they come. Throws DiffFormatError on a malformed or truncated stream.
 */
export async function* parseRbdDiff(source: AsyncIterable<Buffer>, opts: { maxBytes?: number; meta?: DiffMeta } = {}): AsyncGenerator<Extent> {
  const max = checkMaxBytes(opts.maxBytes);
  const meta = opts.meta ?? {};
  const pool = new BufferPool(max);
  const it = source[Symbol.asyncIterator]();
  const r = new ChunkReader(it);
  try {
    const head = await r.exact(HEADER.length, "the header");
    if (!head.equals(HEADER)) throw new DiffFormatError(`not an rbd diff v1 stream (it starts with ${JSON.stringify(head.toString("latin1"))})`);
    let lastEnd = 0;
    let dataSeen = false;
    for (;;) {
      const tag = (await r.exact(1, "a record tag"))[0];
      switch (tag) {
        case TAG.from:
        case TAG.to: {
          if (dataSeen) throw new DiffFormatError(`a snapshot record after data records`);
          const len = (await r.exact(4, "a snapshot name's length")).readUInt32LE(0);
          if (len > 4096) throw new DiffFormatError(`a snapshot name of ${len} bytes`);
          const name = len ? (await r.exact(len, "a snapshot name")).toString("utf8") : "";
          if (tag === TAG.from) meta.fromSnap = name;
          else meta.toSnap = name;
          break;
        }
        case TAG.size:
          meta.size = await r.u64("the image size");
          break;
        case TAG.write:
        case TAG.zero: {
          dataSeen = true;
          const kind = tag === TAG.write ? "a data record" : "a zero record";
          const offset = await r.u64(`the offset of ${kind}`);
          const length = await r.u64(`the length of ${kind}`);
          if (offset < lastEnd) throw new DiffFormatError(`${kind} at ${offset} goes back before ${lastEnd} (records out of order)`);
          if (meta.size !== undefined && offset + length > meta.size) throw new DiffFormatError(`${kind} at ${offset} of ${length} bytes ends past the image's ${meta.size} bytes`);
          lastEnd = offset + length;
          let at = offset;
          const end = offset + length;
          while (at < end) {
            const piece = Math.min(end - at, max - (at % max));
            if (tag === TAG.zero) {
              yield { offset: at, length: piece, zero: true };
            } else {
              const first = await r.upTo(piece, kind);
              if (first.length === piece) {
                // Inside one chunk of the pipe: a view of it.
                yield isAllZero(first) ? { offset: at, length: piece, zero: true } : { offset: at, data: first };
              } else {
                const out = piece === max ? pool.take() : Buffer.allocUnsafe(piece);
                first.copy(out);
                let have = first.length;
                while (have < piece) {
                  const b = await r.upTo(piece - have, kind);
                  b.copy(out, have);
                  have += b.length;
                }
                if (isAllZero(out)) {
                  pool.give(out);
                  yield { offset: at, length: piece, zero: true };
                } else {
                  yield pool.extent(at, out, out);
                }
              }
            }
            at += piece;
          }
          break;
        }
        case TAG.end:
          return;
        default:
          throw new DiffFormatError(`unknown record tag 0x${tag.toString(16).padStart(2, "0")} after ${r.consumed - 1} bytes`);
      }
    }
  } finally {
    await it.return?.();
  }
}

function spawnFailure(driver: CephStorageDriver, what: string, error: Error & { code?: unknown }): BaremetalError {
  if (error.code === "ENOENT") return new BaremetalError("internal", `${what}: the rbd command (${driver.rbd.rbdBin}) is not installed here: install Debian's ceph-common (scripts/bootstrap.sh)`, { cause: error });
  return new BaremetalError("internal", `${what}: could not run rbd (${error.message})`, { cause: error });
}

/** Kills `child` (SIGKILL) unless it exited, and waits until it has. */
async function reap(child: ChildProcess, closed: Promise<unknown>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    try {
      child.kill("SIGKILL");
    } catch {
      /* gone */
    }
  }
  await closed;
}

function exitOf(child: ChildProcess): Promise<{ code: number | null; error?: Error }> {
  return new Promise((resolve) => {
    child.once("error", (error) => resolve({ code: null, error }));
    child.once("close", (code) => resolve({ code }));
  });
}

/** driver.readExtents: see the top of this file. */
export async function* readCephExtents(driver: CephStorageDriver, volume: string, opts: ReadExtentsOptions = {}, driverSignal?: AbortSignal): AsyncGenerator<Extent> {
  checkName("volume", volume, "a volume name");
  if (opts.snapshot !== undefined) checkName("snapshot", opts.snapshot, "a snapshot name");
  if (opts.since !== undefined) checkName("since", opts.since, "a snapshot name");
  const maxBytes = checkMaxBytes(opts.maxBytes);
  const signal = anySignal(opts.signal, driverSignal);
  const spec = `${driver.pool}/${volume}${opts.snapshot !== undefined ? `@${opts.snapshot}` : ""}`;
  const what = `reading ${opts.since !== undefined ? `the changes of ${spec} since snapshot ${opts.since}` : spec}`;
  if (signal?.aborted) throw new BaremetalError("cancelled", `cancelled before ${what}`);

  const { child, stderr } = driver.rbd.spawn(["export-diff", "--no-progress", ...(opts.since !== undefined ? ["--from-snap", opts.since] : []), spec, "-"]);
  const closed = exitOf(child);
  const onAbort = () => child.kill("SIGKILL");
  signal?.addEventListener("abort", onAbort, { once: true });
  let timedOut = false;
  const idleMs = driver.rbd.commandTimeoutMs;
  // The pipe's chunks, with a deadline on each wait for rbd (not on the consumer).
  async function* chunks(): AsyncGenerator<Buffer> {
    const it = child.stdout![Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    try {
      for (;;) {
        const timer = setTimeout(() => {
          timedOut = true;
          child.kill("SIGKILL");
        }, idleMs);
        let r: IteratorResult<Buffer>;
        try {
          r = await it.next();
        } finally {
          clearTimeout(timer);
        }
        if (r.done) return;
        yield r.value;
      }
    } finally {
      await it.return?.();
    }
  }
  const failure = async (e?: unknown): Promise<BaremetalError> => {
    const { code, error } = await closed;
    if (signal?.aborted) return new BaremetalError("cancelled", `cancelled while ${what}`, { cause: e });
    if (timedOut) return new BaremetalError("timeout", `${what}: rbd sent nothing for ${idleMs} ms (Ceph at ${driver.rbd.address.monitors}); check \`ceph -s\` for inactive PGs or down OSDs`, { cause: e });
    if (error) return spawnFailure(driver, what, error);
    if (code !== 0) return driver.rbd.failed(code, stderr(), what, signal);
    if (isBaremetalError(e)) return e;
    return new BaremetalError("backend", `${what}: rbd export-diff wrote a stream we cannot read: ${(e as Error)?.message ?? String(e)}`, { cause: e });
  };
  let finished = false;
  try {
    try {
      yield* parseRbdDiff(chunks(), { maxBytes });
    } catch (e) {
      throw await failure(e);
    }
    const { code } = await closed;
    if (code !== 0 || signal?.aborted) throw await failure();
    finished = true;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!finished) await reap(child, closed);
  }
}

/** driver.writeExtents: see the top of this file. */
export async function writeCephExtents(driver: CephStorageDriver, volume: string, extents: AsyncIterable<Extent> | Iterable<Extent>, signal?: AbortSignal): Promise<{ bytesWritten: number }> {
  checkName("volume", volume, "a volume name");
  const spec = `${driver.pool}/${volume}`;
  const what = `writing extents into ${spec}`;
  if (signal?.aborted) throw new BaremetalError("cancelled", `cancelled before ${what}`);
  const { child, stderr } = driver.rbd.spawn(["import-diff", "--no-progress", "-", spec], { stdin: true });
  const closed = exitOf(child);
  let exited = false;
  void closed.then(() => (exited = true));
  const onAbort = () => child.kill("SIGKILL");
  signal?.addEventListener("abort", onAbort, { once: true });
  const stdin = child.stdin!;
  stdin.on("error", () => undefined); // a failing rbd closes its stdin: its exit code tells why
  let timedOut = false;
  const idleMs = driver.rbd.commandTimeoutMs;

  /** Writes `b`; when the pipe is full, waits until rbd takes it (or exits, or takes too long). */
  const put = async (b: Buffer, written?: () => void): Promise<void> => {
    if (exited || stdin.destroyed) throw new Error("rbd import-diff exited");
    if (stdin.write(b, written && ((err) => !err && written()))) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill("SIGKILL");
      }, idleMs);
      const done = (err?: Error) => {
        clearTimeout(timer);
        stdin.off("drain", onDrain);
        stdin.off("close", onClose);
        if (err) reject(err);
        else resolve();
      };
      const onDrain = () => done();
      const onClose = () => done(new Error("rbd import-diff exited"));
      stdin.on("drain", onDrain);
      stdin.on("close", onClose);
    });
  };
  const failure = async (e?: unknown): Promise<BaremetalError> => {
    if (isBaremetalError(e) && e.code === "validation") {
      await reap(child, closed);
      return e;
    }
    const { code, error } = await closed;
    if (signal?.aborted) return new BaremetalError("cancelled", `cancelled while ${what}; the volume holds part of the extents: delete it or write them all again`, { cause: e });
    if (timedOut) return new BaremetalError("timeout", `${what}: rbd took nothing for ${idleMs} ms (Ceph at ${driver.rbd.address.monitors}); check \`ceph -s\``, { cause: e });
    if (error) return spawnFailure(driver, what, error);
    if (code !== 0 && code !== null) return driver.rbd.failed(code, stderr(), what, signal);
    if (isBaremetalError(e)) return e;
    return new BaremetalError("internal", `${what}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
  };

  let bytesWritten = 0;
  let ok = false;
  try {
    try {
      await put(HEADER);
      let index = 0;
      for await (const raw of extents) {
        if (signal?.aborted) throw new BaremetalError("cancelled", `cancelled while ${what}`);
        const e = checkExtent(raw, index++);
        if (e.length === 0) continue;
        const head = Buffer.allocUnsafe(17);
        head[0] = e.data ? TAG.write : TAG.zero;
        head.writeBigUInt64LE(BigInt(e.offset), 1);
        head.writeBigUInt64LE(BigInt(e.length), 9);
        await put(head);
        // Its buffer goes back to whoever made it once the pipe has taken it.
        if (e.data) await put(e.data, () => releaseExtent(raw as Extent));
        bytesWritten += e.length;
      }
      await put(Buffer.from([TAG.end]));
      stdin.end();
    } catch (e) {
      // The source failed, or rbd did: rbd must not see a clean end of stream.
      child.kill("SIGKILL");
      throw await failure(e);
    }
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, idleMs);
    const { code } = await closed.finally(() => clearTimeout(timer));
    if (code !== 0 || signal?.aborted) throw await failure();
    ok = true;
    return { bytesWritten };
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!ok) await reap(child, closed);
  }
}
