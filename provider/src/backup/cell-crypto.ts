/**
 * The CPU work of the backup engine on cells (engine.ts): chunk ids, sealing and opening chunks,
 * zero checks, payload hashes. One implementation, run either in a pool of worker threads or on the
 * main thread (`workers: 0`).
 *
 * - Chunk id (`Keys.ids`, recorded in the manifest; a chain of backups keeps the scheme it started
 *   with, so that equal cells keep equal ids):
 *   - `aes-ghash` (new chains): a keyed 128-bit id, AES-256 of the cell's GHASH (32 hex digits).
 *     Two keys are derived from the source's id key with HKDF-SHA256: K1, whose GCM computes
 *     GHASH under H = AES(K1, 0) (the cell as GCM's associated data, nothing encrypted; the tag is
 *     GHASH(cell) xor a constant), and K2, which encrypts that tag as one AES block. This is the
 *     construction of AES-GCM-SIV's tag (RFC 8452: a polynomial hash, then AES), and a pseudorandom
 *     function of the cell: the GHASH value never leaves the worker, only its encryption, so the
 *     store learns nothing of H and cannot make two cells collide. Two different cells of at most
 *     4 MiB get the same id with probability at most 2^-110 (GHASH is almost universal; AES is a
 *     permutation, so ids collide only when the hashes do). Its point is speed: OpenSSL's GHASH
 *     (carry-less multiplication) runs at 8-13 GB/s per core, SHA-256 at 1.2-1.6 GB/s.
 *   - `sha256`: SHA-256 of the cell (earlier chains of LUKS2 volumes, and any without a key).
 *   - `hmac-sha256`: HMAC-SHA256 under the id key (earlier envelope chains, node disks).
 * - Sealed chunk (envelope mode): nonce (12 random bytes) | AES-256-GCM ciphertext | tag (16),
 *   with the chunk id as associated data, under the DEK of the backup that stored it.
 * - Payload hash: a target that signs payloads (S3's `x-amz-content-sha256`) needs the SHA-256 of
 *   what it stores; it is computed here, in the same trip as the sealing, and only for chunks
 *   that are stored (with `sha256` ids it is the id itself).
 * - Opening checks both the GCM tag and the id recomputed over the plaintext.
 *
 * Threads: nothing is copied between threads.
 * - Cells are views of SharedArrayBuffers (a cell in ordinary memory is copied once by
 *   postMessage). Storage readers hand out shared buffers (storage-file/extents.ts BufferPool), so
 *   a whole cell read from the volume goes to a worker as it is.
 * - Sealed chunks are written into ordinary ArrayBuffers of a pool kept here, which travel to the
 *   worker and back by transfer (a move, not a copy). Not shared memory: V8 copies into a
 *   SharedArrayBuffer with relaxed atomic moves, and sealing into one cost 10-15% of the engine's
 *   throughput in envelope mode (bench/backup.ts).
 * - Opened cells are written into the caller's shared buffer.
 * A call goes to the least busy worker.
 *
 * The code run on the cells is plain JavaScript in a string: the worker evaluates it without
 * module resolution (it runs the same under tsx, jest and the compiled provider), and the main
 * thread builds its inline implementation from the same string.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { BaremetalError } from "../core/errors";

/** How chunk ids are computed (see the top of the file). */
export type ChunkIds = "sha256" | "hmac-sha256" | "aes-ghash";
export const CHUNK_ID_SCHEMES: readonly ChunkIds[] = ["sha256", "hmac-sha256", "aes-ghash"];

export interface Keys {
  mode: "source" | "envelope";
  ids: ChunkIds;
  /** The chunk ids' key (hmac-sha256, aes-ghash): the source's dedup key. */
  dedup?: Buffer;
  /** This backup's DEK (sealing). */
  dek?: Buffer;
  /** DEKs by backup id (for opening chunks of earlier backups). */
  deks: Map<string, Buffer>;
}

/** What the cell operations return (a plain object: it crosses threads). */
interface OpResult {
  zero?: boolean;
  /** The sealing buffer, back from the worker. */
  sealInto?: Uint8Array;
  id?: string;
  sealed?: number;
  /** Hex SHA-256 of the chunk's body (when the target signs payloads). */
  sha256?: string;
  length?: number;
  bad?: "decrypt" | "checksum" | "key";
  error?: string;
}

/** Defines `makeOps(keys)`: the operations on cells (see the top of the file). */
const OPS_SOURCE = `
const { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomFillSync } = require("node:crypto");
/** Pieces for AES-GCM (its output is allocated per call: 256 KiB measured fastest) and zero checks. */
const PIECE = 256 * 1024;
const ZERO = Buffer.alloc(PIECE);
const view = (u) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
function isZero(b) {
  for (let i = 0; i < b.length; i += PIECE) {
    const p = b.subarray(i, i + PIECE);
    if (!p.equals(ZERO.subarray(0, p.length))) return false;
  }
  return true;
}
const sha256 = (b) => createHash("sha256").update(b).digest("hex");
/** aes-ghash ids: AES-256(K2, GHASH_H(cell) xor AES(K1, J0)) with H = AES(K1, 0); see the top of cell-crypto.ts. */
function aesGhash(key) {
  const derive = (info) => Buffer.from(hkdfSync("sha256", key, Buffer.alloc(0), Buffer.from("baremetal-backup/1 chunk id " + info), 32));
  const k1 = derive("ghash"), k2 = derive("aes");
  const nonce = Buffer.alloc(12);
  return (cell) => {
    const g = createCipheriv("aes-256-gcm", k1, nonce);
    g.setAAD(cell);
    g.final();
    const e = createCipheriv("aes-256-ecb", k2, null);
    e.setAutoPadding(false);
    return Buffer.concat([e.update(g.getAuthTag()), e.final()]).toString("hex");
  };
}
function idFunction(ids, key) {
  if (ids === "sha256") return sha256;
  if (!key) throw new Error(ids + " chunk ids need a key");
  if (ids === "hmac-sha256") return (cell) => createHmac("sha256", key).update(cell).digest("hex");
  if (ids === "aes-ghash") return aesGhash(key);
  throw new Error("unknown chunk id scheme " + ids);
}
function makeOps(keys) {
  const dedup = keys.dedup ? view(keys.dedup) : undefined;
  const dek = keys.dek ? view(keys.dek) : undefined;
  const deks = new Map(Object.entries(keys.deks || {}).map(([k, v]) => [k, view(v)]));
  const idOf = idFunction(keys.ids, dedup);
  function seal(id, cell, out) {
    randomFillSync(out, 0, 12);
    const c = createCipheriv("aes-256-gcm", dek, out.subarray(0, 12));
    c.setAAD(Buffer.from(id));
    let at = 12;
    for (let i = 0; i < cell.length; i += PIECE) at += c.update(cell.subarray(i, i + PIECE)).copy(out, at);
    at += c.final().copy(out, at);
    c.getAuthTag().copy(out, at);
    return at + 16;
  }
  /** What storing a cell needs: sealed into sealInto (envelope), and the body's SHA-256 when the target signs payloads. */
  function body(id, cell, sealInto) {
    const r = {};
    let stored = cell;
    if (sealInto) {
      const out = view(sealInto);
      r.sealed = seal(id, cell, out);
      stored = out.subarray(0, r.sealed);
    }
    if (keys.signs) r.sha256 = keys.ids === "sha256" && !sealInto ? id : sha256(stored);
    return r;
  }
  return {
    /** {cell, zero?, store?, sealInto?} -> {zero: true} when asked and all zeros; else {id}, and with store what body() gives. */
    cell(m) {
      const cell = view(m.cell);
      if (m.zero && isZero(cell)) return { zero: true };
      const id = idOf(cell);
      return m.store ? { id, ...body(id, cell, m.sealInto) } : { id };
    },
    /** {cell, id, sealInto?} -> what body() gives */
    store(m) {
      return body(m.id, view(m.cell), m.sealInto);
    },
    /** {body, id, ref?, out?} -> {length} of the plaintext (in out when decrypted, else body itself), or {bad}. */
    open(m) {
      const body = view(m.body);
      let plain = body;
      if (m.ref !== undefined) {
        const key = deks.get(m.ref);
        if (!key) return { bad: "key" };
        if (body.length < 28) return { bad: "decrypt" };
        const out = view(m.out);
        const end = body.length - 16;
        let at = 0;
        try {
          const d = createDecipheriv("aes-256-gcm", key, body.subarray(0, 12));
          d.setAAD(Buffer.from(m.id));
          d.setAuthTag(body.subarray(end));
          for (let i = 12; i < end; i += PIECE) at += d.update(body.subarray(i, Math.min(end, i + PIECE))).copy(out, at);
          at += d.final().copy(out, at);
        } catch (e) {
          return { bad: "decrypt" };
        }
        plain = out.subarray(0, at);
      }
      return idOf(plain) === m.id ? { length: plain.length } : { bad: "checksum" };
    },
  };
}
`;

const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
${OPS_SOURCE}
const ops = makeOps(workerData);
parentPort.on("message", (m) => {
  let r;
  try {
    r = ops[m.op](m);
  } catch (e) {
    r = { error: String((e && e.message) || e) };
  }
  r.n = m.n;
  // A sealing buffer of the caller's pool goes back to it (moved, as it came).
  const moved = m.sealInto && !(m.sealInto.buffer instanceof SharedArrayBuffer);
  if (m.sealInto) r.sealInto = m.sealInto;
  parentPort.postMessage(r, moved ? [m.sealInto.buffer] : []);
});
`;

type Ops = Record<"cell" | "store" | "open", (m: Record<string, unknown>) => OpResult>;

/** Key material as plain bytes of its own (a Buffer from Node's pool would take the whole pool across), and the options. */
function keyData(keys: Keys, signs: boolean): Record<string, unknown> {
  const own = (b?: Buffer) => (b ? Uint8Array.from(b) : undefined);
  return {
    ids: keys.ids,
    signs,
    dedup: keys.ids !== "sha256" ? own(keys.dedup) : undefined,
    dek: own(keys.dek),
    deks: Object.fromEntries([...keys.deks].map(([k, v]) => [k, own(v)])),
  };
}

/** A buffer of `size` bytes in shared memory. */
export const sharedBuffer = (size: number) => Buffer.from(new SharedArrayBuffer(size));

/** Whether `b` lives in shared memory (goes to a worker without a copy). */
export const isShared = (b: Buffer) => b.buffer instanceof SharedArrayBuffer;

/**
 * Buffers of `size` bytes in shared memory, reused (at most `keep` kept). Reuse matters: V8 does
 * not count fresh SharedArrayBuffers towards collecting garbage soon, so a buffer per cell lets
 * memory grow by gigabytes before they are freed (measured on a restore: 2 GB).
 */
export class SharedBuffers {
  private readonly free: Buffer[] = [];
  constructor(
    private readonly size: number,
    private readonly keep = 16,
  ) {}
  take(): Buffer {
    return this.free.pop() ?? sharedBuffer(this.size);
  }
  /** Gives `b` back (once: a second give of the same buffer is ignored). */
  give(b: Buffer): void {
    if (b.length === this.size && this.free.length < this.keep && !this.free.includes(b)) this.free.push(b);
  }
}

/**
 * Ordinary ArrayBuffers for sealed chunks, reused (at most `keep` kept): they go to a worker and
 * back by transfer, so a buffer in use is detached here and only its returned self is given back.
 * Reuse matters for the reason SharedBuffers gives (fresh 4 MiB buffers make V8 collect often).
 */
class TransferBuffers {
  private readonly free: ArrayBuffer[] = [];
  constructor(private readonly keep = 16) {}
  /** A buffer of at least `size` bytes. */
  take(size: number): ArrayBuffer {
    const i = this.free.findIndex((b) => b.byteLength >= size);
    return i >= 0 ? this.free.splice(i, 1)[0] : new ArrayBuffer(size);
  }
  give(b: ArrayBuffer): void {
    if (b.byteLength > 0 && this.free.length < this.keep && !this.free.includes(b)) this.free.push(b);
  }
}

/** `f`, run at most once. */
function once(f: () => void): () => void {
  let done = false;
  return () => {
    if (!done) f();
    done = true;
  };
}

/**
 * What to store for a cell: `body` (the sealed chunk in a buffer of the CellCrypto's pool in
 * envelope mode, the cell itself in source mode), its SHA-256 when the target signs payloads, and
 * `release()`, which gives a sealing buffer back once the body is stored.
 */
export interface Stored {
  body: Buffer;
  sha256?: string;
  release: () => void;
}

export interface CellCryptoOptions {
  /** The target signs payloads (S3): compute the SHA-256 of every chunk stored. */
  payloadSha256?: boolean;
}

export interface CellCrypto {
  /**
   * A cell's chunk id; null when `zero` is asked and the cell is all zeros. With `store`, what to
   * store for it too (see Stored), in the same trip to a worker.
   */
  cell(cell: Buffer, opts?: { zero?: boolean; store?: boolean }): Promise<({ id: string; stored?: Stored }) | null>;
  /** What to store for a cell whose id is known. */
  store(cell: Buffer, id: string): Promise<Stored>;
  /**
   * A stored chunk's cell: decrypted into `out` with the DEK of backup `ref` (envelope mode) or
   * the body itself (source mode), and checked against `id`. `what` starts the error's message.
   */
  open(body: Buffer, id: string, ref: string | undefined, out: Buffer | undefined, what: string): Promise<Buffer>;
  close(): Promise<void>;
}

/** Default number of worker threads: one per core, at most 8. */
export function defaultWorkers(): number {
  return Math.max(1, Math.min(8, availableParallelism()));
}

function openFailure(r: OpResult, id: string, ref: string | undefined, what: string): BaremetalError {
  if (r.bad === "key") return new BaremetalError("backend", `${what}: the manifest has no data key for chunk ${id} (of backup ${ref})`);
  if (r.bad === "decrypt") return new BaremetalError("backend", `${what}: chunk ${id} does not decrypt (damaged or tampered with)`);
  return new BaremetalError("backend", `${what}: chunk ${id} does not match its checksum (damaged or tampered with)`);
}

/** The cell operations for `keys`, in `workers` worker threads (0: on the main thread). */
export function cellCrypto(keys: Keys, workers = defaultWorkers(), opts: CellCryptoOptions = {}): CellCrypto {
  const signs = opts.payloadSha256 === true;
  const data = keyData(keys, signs);
  const pool = workers > 0 ? new WorkerPool(workers, data) : undefined;
  const run = pool ? pool.call : inlineRunner(data);
  const outs = new TransferBuffers();
  const sealing = keys.mode === "envelope";
  /** Source mode without payload hashes: a cell whose id is known is stored as it is, without a trip to a worker. */
  const asIs = !sealing && !signs;
  /** Runs an op that produces what to store; envelope mode seals into a buffer of the pool, which travels and comes back. */
  const storing = async (msg: Record<string, unknown>, cell: Buffer): Promise<{ r: OpResult; stored?: Stored }> => {
    if (!sealing) {
      const r = await run(msg);
      return { r, stored: r.zero ? undefined : { body: cell, sha256: r.sha256, release: () => undefined } };
    }
    const r = await run({ ...msg, sealInto: new Uint8Array(outs.take(cell.length + 28)) });
    const back = r.sealInto!.buffer as ArrayBuffer;
    if (r.sealed === undefined) {
      outs.give(back);
      return { r };
    }
    return { r, stored: { body: Buffer.from(back, 0, r.sealed), sha256: r.sha256, release: once(() => outs.give(back)) } };
  };
  return {
    async cell(cell, o = {}) {
      const msg = { op: "cell", cell, zero: o.zero ?? false };
      if (!o.store) {
        const r = await run(msg);
        return r.zero ? null : { id: r.id! };
      }
      const { r, stored } = await storing({ ...msg, store: true }, cell);
      return r.zero ? null : { id: r.id!, stored };
    },
    async store(cell, id) {
      if (asIs) return { body: cell, release: () => undefined };
      return (await storing({ op: "store", cell, id }, cell)).stored!;
    },
    async open(body, id, ref, out, what) {
      const r = await run({ op: "open", body, id, ref: keys.mode === "envelope" ? (ref ?? "") : undefined, out });
      if (r.bad) throw openFailure(r, id, ref, what);
      return keys.mode === "envelope" ? out!.subarray(0, r.length!) : body;
    },
    close: async () => pool?.close(),
  };
}

function inlineRunner(data: Record<string, unknown>): (m: Record<string, unknown>) => Promise<OpResult> {
  const makeOps = new Function("require", `${OPS_SOURCE}\nreturn makeOps;`)(require) as (k: Record<string, unknown>) => Ops;
  const ops = makeOps(data);
  return async (m) => ({ ...ops[m.op as keyof Ops](m), sealInto: m.sealInto as Uint8Array | undefined });
}

type Pending = Map<number, { resolve: (r: OpResult) => void; reject: (e: Error) => void }>;

/** `count` worker threads running the cell operations. */
class WorkerPool {
  private readonly workers: { w: Worker; pending: Pending }[] = [];
  private n = 0;
  private failure?: Error;

  constructor(count: number, workerData: Record<string, unknown>) {
    for (let i = 0; i < count; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData });
      const entry = { w, pending: new Map() as Pending };
      const failAll = (e: Error) => {
        this.failure ??= e;
        for (const p of entry.pending.values()) p.reject(e);
        entry.pending.clear();
      };
      w.on("message", (m: OpResult & { n: number }) => {
        const p = entry.pending.get(m.n);
        if (!p) return;
        entry.pending.delete(m.n);
        if (m.error !== undefined) p.reject(new BaremetalError("internal", `a backup worker thread failed: ${m.error}`));
        else p.resolve(m);
      });
      w.on("error", (e) => failAll(new BaremetalError("internal", `a backup worker thread failed: ${e.message}`, { cause: e })));
      w.on("exit", (code) => failAll(new BaremetalError("internal", `a backup worker thread exited (code ${code})`)));
      this.workers.push(entry);
    }
  }

  readonly call = (msg: Record<string, unknown>): Promise<OpResult> => {
    if (this.failure) return Promise.reject(this.failure);
    let entry = this.workers[0];
    for (const e of this.workers) if (e.pending.size < entry.pending.size) entry = e;
    const n = ++this.n;
    const into = msg.sealInto as Uint8Array | undefined;
    return new Promise((resolve, reject) => {
      entry.pending.set(n, { resolve, reject });
      entry.w.postMessage({ ...msg, n }, into && !(into.buffer instanceof SharedArrayBuffer) ? [into.buffer as ArrayBuffer] : []);
    });
  };

  async close(): Promise<void> {
    this.failure ??= new BaremetalError("internal", "the backup's worker threads were stopped");
    await Promise.all(this.workers.map((e) => e.w.terminate().catch(() => undefined)));
  }
}
