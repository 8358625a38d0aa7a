/**
 * The backup engine: volumes to a backup target and back, incremental, encrypted, streaming.
 *
 * Layout under `<prefix>` (one source, e.g. `project-a/volumes/project-a--db/`):
 *   chunks/<id>            one cell of content (see below), immutable, shared by every backup that has it
 *   backups/<backupId>.json  a backup's manifest, written LAST: a backup exists only once its
 *                          manifest does, so an interrupted backup leaves at most orphan chunks
 *                          (removed by `collectGarbage`), never a half backup a restore could take
 *
 * Cells: the volume is cut in cells of `CELL_BYTES` (4 MiB, Ceph's default object size, so that
 * `rbd export-diff --whole-object` reports whole cells). A manifest maps every non-zero cell of
 * the volume at its point in time to a chunk: it is complete on its own (a restore reads one
 * manifest), and an incremental backup shares the unchanged cells' chunks with its parent, so only
 * changed cells move. Two ways of knowing what changed:
 *   - the storage backend tells (`readsChangesOnly`, Ceph: extents changed since the parent's
 *     snapshot): only those cells are read; a cell the backend reports only partly is completed
 *     from the parent's chunk;
 *   - otherwise every cell is read and a cell whose chunk id the parent already has is not stored
 *     again (content addressing).
 *
 * Encryption (`mode`):
 *   - `source`: the volume is LUKS2-encrypted at the source; cells are stored as they are
 *     (ciphertext end to end, nothing to add); chunk id = SHA-256 of the cell.
 *   - `envelope`: a plain volume. Each backup draws a random 256-bit data key (DEK); the chunks it
 *     stores are AES-256-GCM under it (random 96-bit nonce, the chunk id as associated data). The
 *     DEK is wrapped (AES-256-GCM) under a key-encryption key derived by HKDF-SHA256 from a key in
 *     the key manager, with the backup id as associated data, and the wrapped DEKs of every backup
 *     whose chunks a manifest uses travel in it. Chunk id = HMAC-SHA256 under a per-source dedup
 *     key (wrapped the same way, carried from backup to backup): equal cells dedup without the
 *     store learning anything from ids. Deleting the key-manager key makes every wrapped key, and
 *     so the backups, unreadable (crypto-erase).
 *
 * Integrity: a manifest's `digest` is SHA-256 over its cell map; every chunk is checked on restore
 * (its id recomputed; GCM's tag in envelope mode), and a restore is verified by reading the new
 * volume back and recomputing every cell's id against the manifest.
 *
 * Speed: the CPU work of a cell (its chunk id, SHA-256 or HMAC-SHA256, and in envelope mode
 * AES-256-GCM: about 4 + 5 ms per 4 MiB cell on one core here) runs in a small pool of worker
 * threads (`workers`, default one per core, at most 8), so reading the source, hashing and
 * sealing several cells, and uploading overlap and use every core. Cells are assembled in a few
 * reused buffers shared with the workers (SharedArrayBuffer: nothing is copied to them); the
 * source's extent buffers are released to their reader (`releaseExtent`) as soon as they are
 * copied, so the reader reuses them instead of allocating. `workers: 0` does it all on the main
 * thread.
 *
 * Memory: one cell being assembled, at most `concurrency` (default 4) + `workers` cells being
 * hashed or sealed and `concurrency` being uploaded, whatever the volume's size (4 MiB each:
 * 44 MiB with the defaults on two cores); the manifest's cell map (about 100 bytes per non-zero
 * cell: 26 MB for 1 TiB).
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes } from "node:crypto";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { BaremetalError, isBaremetalError } from "../core/errors";
import type { BackupTargetDriver } from "../drivers/kinds/backup-target";
import type { Extent, StorageDriver } from "../drivers/kinds/storage";
import { releaseExtent } from "../drivers/storage-file/extents";

export const CELL_BYTES = 4 * 1024 * 1024;
export const MANIFEST_FORMAT = "baremetal-backup/1";

/** A cell: [cell index, chunk id, backup id whose DEK encrypts the chunk (envelope only)]. */
export type Cell = [number, string] | [number, string, string];

export interface EnvelopeInfo {
  mode: "envelope";
  keyManager: string;
  keyId: string;
  /** The dedup key, wrapped (base64 of nonce | ciphertext | tag). */
  dedupKey: string;
  /** Wrapped DEKs by backup id (this backup's and its ancestors' whose chunks the map uses). */
  keys: Record<string, string>;
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  id: string;
  source: { kind: "volume"; id: string; backend: string };
  sizeBytes: number;
  cellBytes: number;
  createdAt: string;
  /** The backup this one was taken relative to. */
  parent?: string;
  /** Who took it (a BackupPolicy's id), for its retention to prune only its own backups. */
  takenBy?: string;
  /** The source's snapshot this backup was read from (kept for the next incremental, where the backend has snapshots). */
  snapshot?: string;
  encryption: { mode: "source" } | EnvelopeInfo;
  cells: Cell[];
  /** SHA-256 over the cell map (hex). */
  digest: string;
  stats: BackupStats;
}

export interface BackupStats {
  /** Bytes read from the source. */
  bytesRead: number;
  /** Bytes stored in the target by this backup (ciphertext, chunk bodies). */
  bytesStored: number;
  chunksStored: number;
  /** Distinct chunks its cells share with earlier backups. */
  chunksReused: number;
  /** Non-zero bytes the backup stands for (cells with content x their length). */
  bytesUsed: number;
  ms: number;
}

/** Wraps and unwraps small keys with a key-encryption key (from the key manager). */
export interface KeyWrapper {
  keyManager: string;
  keyId: string;
  wrap(plain: Buffer, aad: string): string;
  unwrap(wrapped: string, aad: string): Buffer;
}

/** A KeyWrapper over key material from the key manager (HKDF-SHA256 to an AES-256-GCM key). */
export function keyWrapper(keyManager: string, keyId: string, material: Buffer): KeyWrapper {
  const kek = Buffer.from(hkdfSync("sha256", material, Buffer.alloc(0), Buffer.from("baremetal-backup/1 key wrapping"), 32));
  return {
    keyManager,
    keyId,
    wrap(plain, aad) {
      const nonce = randomBytes(12);
      const c = createCipheriv("aes-256-gcm", kek, nonce);
      c.setAAD(Buffer.from(aad));
      const body = Buffer.concat([c.update(plain), c.final()]);
      return Buffer.concat([nonce, body, c.getAuthTag()]).toString("base64");
    },
    unwrap(wrapped, aad) {
      const raw = Buffer.from(wrapped, "base64");
      try {
        const d = createDecipheriv("aes-256-gcm", kek, raw.subarray(0, 12));
        d.setAAD(Buffer.from(aad));
        d.setAuthTag(raw.subarray(raw.length - 16));
        return Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]);
      } catch (e) {
        throw new BaremetalError("auth", `the backup's data key does not unwrap with key ${keyId} of key manager ${keyManager}: wrong key, or the backup was tampered with`, { cause: e });
      }
    },
  };
}

export const manifestKey = (prefix: string, id: string) => `${prefix}backups/${id}.json`;
export const chunkKey = (prefix: string, id: string) => `${prefix}chunks/${id}`;

export function cellMapDigest(cells: Cell[]): string {
  const h = createHash("sha256");
  for (const c of cells) h.update(`${c[0]} ${c[1]}\n`);
  return h.digest("hex");
}

async function collect(body: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of body) parts.push(b);
  return Buffer.concat(parts);
}

/** Reads a manifest; `not-found` when there is none. */
export async function readManifest(target: BackupTargetDriver, prefix: string, id: string, signal?: AbortSignal): Promise<Manifest> {
  let raw: Buffer;
  try {
    raw = await collect(await target.get(manifestKey(prefix, id), { signal }));
  } catch (e) {
    if (isBaremetalError(e) && e.code === "not-found") throw new BaremetalError("not-found", `no backup ${id} in ${target.description} (under ${prefix || "/"})`, { cause: e });
    throw e;
  }
  let m: Manifest;
  try {
    m = JSON.parse(raw.toString("utf8")) as Manifest;
  } catch (e) {
    throw new BaremetalError("backend", `backup ${id} in ${target.description}: its manifest is not JSON`, { cause: e });
  }
  if (m.format !== MANIFEST_FORMAT) throw new BaremetalError("backend", `backup ${id}: unknown manifest format ${JSON.stringify(m.format)}`);
  if (cellMapDigest(m.cells) !== m.digest) throw new BaremetalError("backend", `backup ${id}: its cell map does not match its digest (damaged or tampered with)`);
  return m;
}

/** The backups of a source, oldest first (by creation time, then id). */
export async function listManifests(target: BackupTargetDriver, prefix: string, signal?: AbortSignal): Promise<Manifest[]> {
  const out: Manifest[] = [];
  for await (const o of target.list(`${prefix}backups/`, signal)) {
    const m = /backups\/([^/]+)\.json$/.exec(o.key);
    if (m) out.push(await readManifest(target, prefix, m[1], signal));
  }
  return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
}

/** Runs at most `limit` tasks at once; `wait` resolves when all are done and rethrows the first failure. */
class Pool {
  private running = new Set<Promise<void>>();
  private failure: unknown;
  constructor(private readonly limit: number) {}
  async add(task: () => Promise<void>): Promise<void> {
    if (this.failure) throw this.failure;
    while (this.running.size >= this.limit) await Promise.race(this.running);
    if (this.failure) throw this.failure;
    const p: Promise<void> = task()
      .catch((e) => {
        this.failure ??= e;
      })
      .finally(() => this.running.delete(p));
    this.running.add(p);
  }
  async wait(): Promise<void> {
    await Promise.all(this.running);
    if (this.failure) throw this.failure;
  }
}

interface Keys {
  mode: "source" | "envelope";
  dedup?: Buffer;
  dek?: Buffer;
  /** DEKs by backup id (for reading chunks of earlier backups). */
  deks: Map<string, Buffer>;
}

function chunkId(keys: Keys, cell: Buffer): string {
  return keys.mode === "source" ? createHash("sha256").update(cell).digest("hex") : createHmac("sha256", keys.dedup!).update(cell).digest("hex");
}

function sealChunk(dek: Buffer, id: string, cell: Buffer): Buffer {
  const nonce = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", dek, nonce);
  c.setAAD(Buffer.from(id));
  const body = Buffer.concat([c.update(cell), c.final()]);
  return Buffer.concat([nonce, body, c.getAuthTag()]);
}

function openChunk(dek: Buffer, id: string, sealed: Buffer, what: string): Buffer {
  try {
    const d = createDecipheriv("aes-256-gcm", dek, sealed.subarray(0, 12));
    d.setAAD(Buffer.from(id));
    d.setAuthTag(sealed.subarray(sealed.length - 16));
    return Buffer.concat([d.update(sealed.subarray(12, sealed.length - 16)), d.final()]);
  } catch (e) {
    throw new BaremetalError("backend", `${what}: chunk ${id} does not decrypt (damaged or tampered with)`, { cause: e });
  }
}

/** The CPU work on cells, inline or in worker threads (see the top of the file). */
interface CellCrypto {
  /** The chunk id of a cell (chunkId). */
  id(cell: Buffer): Promise<string>;
  /** The cell sealed under this backup's DEK (sealChunk; envelope mode), written into `out` (at least 28 bytes longer). */
  seal(cell: Buffer, id: string, out: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

function inlineCrypto(keys: Keys): CellCrypto {
  return {
    id: async (cell) => chunkId(keys, cell),
    seal: async (cell, id, out) => {
      const sealed = sealChunk(keys.dek!, id, cell);
      sealed.copy(out);
      return out.subarray(0, sealed.length);
    },
    close: async () => undefined,
  };
}

/**
 * The worker threads' code (plain JavaScript, evaluated: it needs no module resolution). It
 * computes exactly what chunkId and sealChunk compute; a cell and the buffer its sealed chunk is
 * written into are views of shared memory (nothing is copied between threads, and the reused
 * buffers cost no fresh pages).
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { createCipheriv, createHash, createHmac, randomFillSync } = require("node:crypto");
const dedup = workerData.dedup ? Buffer.from(workerData.dedup) : undefined;
const dek = workerData.dek ? Buffer.from(workerData.dek) : undefined;
const PIECE = 256 * 1024;
parentPort.on("message", (m) => {
  try {
    const cell = Buffer.from(m.cell.buffer, m.cell.byteOffset, m.cell.byteLength);
    if (m.op === "id") {
      const h = dedup ? createHmac("sha256", dedup) : createHash("sha256");
      parentPort.postMessage({ n: m.n, id: h.update(cell).digest("hex") });
      return;
    }
    const out = Buffer.from(m.out.buffer, m.out.byteOffset, 12 + cell.length + 16);
    randomFillSync(out, 0, 12);
    const c = createCipheriv("aes-256-gcm", dek, out.subarray(0, 12));
    c.setAAD(Buffer.from(m.id));
    let at = 12;
    for (let i = 0; i < cell.length; i += PIECE) at += c.update(cell.subarray(i, i + PIECE)).copy(out, at);
    at += c.final().copy(out, at);
    c.getAuthTag().copy(out, at);
    parentPort.postMessage({ n: m.n });
  } catch (e) {
    parentPort.postMessage({ n: m.n, error: String((e && e.message) || e) });
  }
});
`;

interface WorkerReply {
  n: number;
  id?: string;
  error?: string;
}

/** `count` worker threads doing a cell's CPU work; a call goes to the least busy one. */
class WorkerCrypto implements CellCrypto {
  private readonly workers: { w: Worker; pending: Map<number, { resolve: (r: WorkerReply) => void; reject: (e: Error) => void }> }[] = [];
  private n = 0;
  private failure?: Error;

  constructor(count: number, keys: Keys) {
    const workerData = { dedup: keys.mode === "envelope" ? keys.dedup : undefined, dek: keys.dek };
    for (let i = 0; i < count; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData });
      const entry = { w, pending: new Map<number, { resolve: (r: WorkerReply) => void; reject: (e: Error) => void }>() };
      const failAll = (e: Error) => {
        this.failure ??= e;
        for (const p of entry.pending.values()) p.reject(e);
        entry.pending.clear();
      };
      w.on("message", (m: WorkerReply) => {
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

  private call(msg: Record<string, unknown>): Promise<WorkerReply> {
    if (this.failure) return Promise.reject(this.failure);
    let entry = this.workers[0];
    for (const e of this.workers) if (e.pending.size < entry.pending.size) entry = e;
    const n = ++this.n;
    return new Promise((resolve, reject) => {
      entry.pending.set(n, { resolve, reject });
      entry.w.postMessage({ ...msg, n });
    });
  }

  async id(cell: Buffer): Promise<string> {
    return (await this.call({ op: "id", cell })).id!;
  }

  async seal(cell: Buffer, id: string, out: Buffer): Promise<Buffer> {
    await this.call({ op: "seal", cell, id, out });
    return out.subarray(0, cell.length + 28);
  }

  async close(): Promise<void> {
    this.failure ??= new BaremetalError("internal", "the backup's worker threads were stopped");
    await Promise.all(this.workers.map((e) => e.w.terminate().catch(() => undefined)));
  }
}

/** Default number of worker threads: one per core, at most 8. */
function defaultWorkers(): number {
  return Math.max(1, Math.min(8, availableParallelism()));
}

/** Buffers of `size` bytes in shared memory (workers see them without a copy), reused. */
class SharedBuffers {
  private readonly free: Buffer[] = [];
  constructor(private readonly size: number) {}
  take(): Buffer {
    return this.free.pop() ?? Buffer.from(new SharedArrayBuffer(this.size));
  }
  give(b: Buffer): void {
    this.free.push(b);
  }
}

function unwrapKeys(enc: Manifest["encryption"], wrapper: KeyWrapper | undefined, sourceId: string, what: string): Keys {
  if (enc.mode === "source") return { mode: "source", deks: new Map() };
  if (!wrapper) throw new BaremetalError("validation", `${what}: the backup is encrypted with key ${enc.keyId} of key manager ${enc.keyManager}; give that key`, { property: "keyId" });
  const deks = new Map<string, Buffer>();
  for (const [id, w] of Object.entries(enc.keys)) deks.set(id, wrapper.unwrap(w, `dek:${id}`));
  return { mode: "envelope", dedup: wrapper.unwrap(enc.dedupKey, `dedup:${sourceId}`), deks };
}

/** Reads one chunk and checks it against its id; returns the cell's plaintext. */
async function fetchCell(target: BackupTargetDriver, prefix: string, keys: Keys, cell: Cell, what: string, signal?: AbortSignal): Promise<Buffer> {
  const [, id, keyRef] = cell;
  const body = await collect(await target.get(chunkKey(prefix, id), { signal }));
  let plain = body;
  if (keys.mode === "envelope") {
    const dek = keyRef ? keys.deks.get(keyRef) : undefined;
    if (!dek) throw new BaremetalError("backend", `${what}: the manifest has no data key for chunk ${id} (of backup ${keyRef})`);
    plain = openChunk(dek, id, body, what);
  }
  if (chunkId(keys, plain) !== id) throw new BaremetalError("backend", `${what}: chunk ${id} does not match its checksum (damaged or tampered with)`);
  return plain;
}

export interface BackupRequest {
  storage: StorageDriver;
  backend: string;
  volume: string;
  target: BackupTargetDriver;
  /** Where this source's backups live in the target, ending with `/`. */
  prefix: string;
  id: string;
  /** `source` for a LUKS2 volume (stored as is); `envelope` otherwise, with `wrapper`. */
  mode: "source" | "envelope";
  wrapper?: KeyWrapper;
  /** The backup to be incremental on (the latest, usually); none for a full backup. */
  parent?: Manifest;
  /** Uploads in flight (default 4). */
  concurrency?: number;
  /** Worker threads for hashing and sealing (default one per core, at most 8; 0: on the main thread). */
  workers?: number;
  onProgress?: (p: { bytesRead: number; bytesStored: number; cells: number }) => void;
  signal?: AbortSignal;
  /** Recorded in the manifest (see Manifest.takenBy). */
  takenBy?: string;
  /** Test-only: called after each stored chunk (fault injection). */
  afterChunk?: (n: number) => void;
}

const snapshotName = (backupId: string) => `backup-${backupId}`.toLowerCase().replace(/[^a-z0-9.-]/g, "-").slice(0, 64);

/** Takes one backup (see the top of the file); returns its manifest, written. */
export async function takeBackup(req: BackupRequest): Promise<Manifest> {
  const { storage, target, prefix, volume, signal } = req;
  const t0 = Date.now();
  const what = `backup ${req.id} of volume ${volume}`;
  if (!storage.readExtents) throw new BaremetalError("validation", `${what}: the ${storage.family} storage backend cannot be read for backups`, { property: "volumeId" });
  const info = await storage.getVolume(volume);
  if (!info) throw new BaremetalError("not-found", `${what}: the volume does not exist`, { property: "volumeId" });
  if (req.mode === "envelope" && !req.wrapper) throw new BaremetalError("validation", `${what}: a plain volume's backup is encrypted with a key of the key manager: give keyId`, { property: "keyId" });

  // Keys: the parent's dedup key carries over (so equal cells keep equal ids); a fresh DEK each time.
  const parent = req.parent && req.parent.encryption.mode === req.mode && req.parent.sizeBytes === info.sizeBytes ? req.parent : undefined;
  let keys: Keys;
  let encryption: Manifest["encryption"];
  if (req.mode === "source") {
    keys = { mode: "source", deks: new Map() };
    encryption = { mode: "source" };
  } else {
    const w = req.wrapper!;
    const inherited = parent ? unwrapKeys(parent.encryption, w, volume, what) : undefined;
    const dedup = inherited?.dedup ?? randomBytes(32);
    const dek = randomBytes(32);
    keys = { mode: "envelope", dedup, dek, deks: new Map(inherited?.deks ?? []) };
    keys.deks.set(req.id, dek);
    encryption = { mode: "envelope", keyManager: w.keyManager, keyId: w.keyId, dedupKey: w.wrap(dedup, `dedup:${volume}`), keys: {} };
  }

  // What to read: with a snapshot-capable backend, a new snapshot, and the changes since the parent's.
  const snapshots = storage.readsChangesOnly ? new Set((await storage.listSnapshots(volume)).map((s) => s.name)) : undefined;
  const snapshot = snapshots ? snapshotName(req.id) : undefined;
  if (snapshot && !snapshots!.has(snapshot)) await storage.createSnapshot(volume, snapshot);
  const since = snapshots && parent?.snapshot && snapshots.has(parent.snapshot) ? parent.snapshot : undefined;
  const changesOnly = since !== undefined;

  const map = new Map<number, Cell>(changesOnly ? parent!.cells.map((c) => [c[0], c]) : []);
  const known = new Map<string, Cell>((parent?.cells ?? []).map((c) => [c[1], c]));
  const stats: BackupStats = { bytesRead: 0, bytesStored: 0, chunksStored: 0, chunksReused: 0, bytesUsed: 0, ms: 0 };
  const concurrency = req.concurrency ?? 4;
  const workers = req.workers ?? defaultWorkers();
  const crypto: CellCrypto = workers > 0 ? new WorkerCrypto(workers, keys) : inlineCrypto(keys);
  /** Cells being hashed, sealed or uploaded; uploads among them at most `concurrency`. */
  const cellsInFlight = new Pool(concurrency + workers);
  const uploads = new Pool(concurrency);
  const buffers = new SharedBuffers(CELL_BYTES);
  /** Sealed chunks (nonce | ciphertext | tag) on their way to the target. */
  const sealedBuffers = new SharedBuffers(CELL_BYTES + 28);
  /** Chunk ids this backup stored (the others its cells use are shared with earlier backups). */
  const stored = new Set<string>();
  const cellCount = Math.ceil(info.sizeBytes / CELL_BYTES);
  const cellLength = (i: number) => Math.min(CELL_BYTES, info.sizeBytes - i * CELL_BYTES);
  const zero = Buffer.alloc(CELL_BYTES);
  const parentKeys = changesOnly ? keys : undefined;

  /**
   * Hashes a cell and, unless its chunk is known, seals it and starts its upload (resolves once
   * the upload has started); `buf` goes back to `buffers` once nothing needs it any more.
   */
  const storeCell = async (index: number, buf: Buffer, cell: Buffer) => {
    let held = true;
    const giveBack = () => {
      if (held) buffers.give(buf);
      held = false;
    };
    let sealed: Buffer | undefined;
    const giveSealed = () => {
      if (sealed) sealedBuffers.give(sealed);
      sealed = undefined;
    };
    let uploading = false;
    try {
      const id = await crypto.id(cell);
      // From here until the upload is queued nothing awaits: a cell of equal content hashed
      // later finds the id known (one upload per chunk), as when cells were stored one by one.
      const had = known.get(id);
      if (had) {
        map.set(index, keys.mode === "envelope" ? [index, id, had[2]!] : [index, id]);
        return;
      }
      stored.add(id);
      const cellEntry: Cell = keys.mode === "envelope" ? [index, id, req.id] : [index, id];
      known.set(id, cellEntry);
      map.set(index, cellEntry);
      let body = cell;
      if (keys.mode === "envelope") {
        sealed = sealedBuffers.take();
        body = await crypto.seal(cell, id, sealed);
        giveBack();
      }
      await uploads.add(async () => {
        uploading = true;
        try {
          await target.put(chunkKey(prefix, id), body, { sizeBytes: body.length, signal });
        } finally {
          giveBack();
          giveSealed();
        }
        stats.bytesStored += body.length;
        stats.chunksStored++;
        req.afterChunk?.(stats.chunksStored);
        req.onProgress?.({ bytesRead: stats.bytesRead, bytesStored: stats.bytesStored, cells: map.size });
      });
    } finally {
      if (!uploading) {
        giveBack();
        giveSealed();
      }
    }
  };

  let current: { index: number; buf: Buffer; cell: Buffer; covered: number; filled: boolean } | undefined;
  /** The ranges of each cell the backend reported (changed), cell-relative. */
  const masks = new Map<number, [number, number][]>();
  const finish = async () => {
    if (!current) return;
    const c = current;
    current = undefined;
    if (changesOnly && c.covered < c.cell.length) {
      // Only part of the cell changed: the rest is the parent's.
      const old = map.get(c.index);
      const base = old ? await fetchCell(target, prefix, parentKeys!, old, what, signal) : Buffer.alloc(c.cell.length);
      const merged = Buffer.from(base);
      for (const [from, to] of masks.get(c.index) ?? []) c.cell.copy(merged, from, from, to);
      merged.copy(c.cell);
    }
    masks.delete(c.index);
    if (c.cell.equals(zero.subarray(0, c.cell.length))) {
      map.delete(c.index);
      buffers.give(c.buf);
      return;
    }
    await cellsInFlight.add(() => storeCell(c.index, c.buf, c.cell));
  };

  try {
    try {
      for await (const e of storage.readExtents(volume, { snapshot, since, maxBytes: CELL_BYTES, signal })) {
        const index = Math.floor(e.offset / CELL_BYTES);
        if (index >= cellCount) {
          releaseExtent(e);
          continue;
        }
        if (!current || current.index !== index) {
          await finish();
          const buf = buffers.take();
          current = { index, buf, cell: buf.subarray(0, cellLength(index)), covered: 0, filled: false };
        }
        const at = e.offset - index * CELL_BYTES;
        const length = "data" in e ? e.data.length : e.length;
        // Ranges no extent covers are zeros: clear the (reused) buffer unless one extent fills the cell.
        if (!current.filled && !(at === 0 && length === current.cell.length && "data" in e)) current.cell.fill(0);
        current.filled = true;
        if ("data" in e) {
          e.data.copy(current.cell, at);
          stats.bytesRead += length;
        }
        releaseExtent(e);
        current.covered += length;
        const m = masks.get(index) ?? [];
        m.push([at, at + length]);
        masks.set(index, m);
      }
      await finish();
      await cellsInFlight.wait();
      await uploads.wait();
    } catch (e) {
      await cellsInFlight.wait().catch(() => undefined);
      await uploads.wait().catch(() => undefined);
      if (snapshot) await storage.deleteSnapshot(volume, snapshot).catch(() => undefined);
      throw e;
    }
  } finally {
    await crypto.close();
  }

  const cells = [...map.values()].sort((a, b) => a[0] - b[0]);
  if (encryption.mode === "envelope") {
    const used = new Set(cells.map((c) => c[2]!));
    for (const ref of used) encryption.keys[ref] = req.wrapper!.wrap(keys.deks.get(ref)!, `dek:${ref}`);
  }
  stats.bytesUsed = cells.reduce((n, c) => n + cellLength(c[0]), 0);
  stats.chunksReused = new Set(cells.filter((c) => !stored.has(c[1])).map((c) => c[1])).size;
  stats.ms = Date.now() - t0;
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    id: req.id,
    source: { kind: "volume", id: volume, backend: req.backend },
    sizeBytes: info.sizeBytes,
    cellBytes: CELL_BYTES,
    createdAt: new Date().toISOString(),
    ...(parent ? { parent: parent.id } : {}),
    ...(req.takenBy ? { takenBy: req.takenBy } : {}),
    ...(snapshot ? { snapshot } : {}),
    encryption,
    cells,
    digest: cellMapDigest(cells),
    stats,
  };
  try {
    await target.put(manifestKey(prefix, req.id), Buffer.from(JSON.stringify(manifest)), { signal });
  } catch (e) {
    if (snapshot) await storage.deleteSnapshot(volume, snapshot).catch(() => undefined);
    throw e;
  }
  // The parent's snapshot has done its job: the next incremental starts from this one.
  if (since && since !== snapshot) await storage.deleteSnapshot(volume, since).catch(() => undefined);
  return manifest;
}

export interface RestoreRequest {
  manifest: Manifest;
  target: BackupTargetDriver;
  prefix: string;
  wrapper?: KeyWrapper;
  storage: StorageDriver;
  /** An existing, empty volume at least `manifest.sizeBytes` large. */
  volume: string;
  concurrency?: number;
  /** Read the volume back and compare every cell with the manifest (default true). */
  verify?: boolean;
  onProgress?: (p: { cellsDone: number; cells: number }) => void;
  signal?: AbortSignal;
}

export interface RestoreResult {
  bytesWritten: number;
  cells: number;
  verified: boolean;
  ms: number;
}

/** Writes a backup into a fresh volume, and (by default) verifies it by reading it back. */
export async function restoreBackup(req: RestoreRequest): Promise<RestoreResult> {
  const { manifest: m, target, prefix, storage, volume, signal } = req;
  const t0 = Date.now();
  const what = `restoring backup ${m.id} into volume ${volume}`;
  if (!storage.writeExtents || !storage.readExtents) throw new BaremetalError("validation", `${what}: the ${storage.family} storage backend cannot be written from backups`);
  const keys = unwrapKeys(m.encryption, req.wrapper, m.source.id, what);
  const concurrency = req.concurrency ?? 4;
  // Fetch ahead, write in order: a window of `concurrency` cells.
  const pending: Promise<Buffer>[] = [];
  let next = 0;
  const pump = () => {
    while (pending.length < concurrency && next < m.cells.length) {
      const cell = m.cells[next++];
      const p = fetchCell(target, prefix, keys, cell, what, signal);
      p.catch(() => undefined);
      pending.push(p);
    }
  };
  let done = 0;
  async function* extents(): AsyncIterable<Extent> {
    pump();
    for (const cell of m.cells) {
      const data = await pending.shift()!;
      pump();
      yield { offset: cell[0] * m.cellBytes, data };
      done++;
      req.onProgress?.({ cellsDone: done, cells: m.cells.length });
    }
  }
  const { bytesWritten } = await storage.writeExtents(volume, extents(), signal);
  let verified = false;
  if (req.verify !== false) {
    await verifyVolume(storage, volume, m, keys, what, signal);
    verified = true;
  }
  return { bytesWritten, cells: m.cells.length, verified, ms: Date.now() - t0 };
}

/** Reads the volume and compares every cell's id with the manifest (zero cells must be zero). */
async function verifyVolume(storage: StorageDriver, volume: string, m: Manifest, keys: Keys, what: string, signal?: AbortSignal): Promise<void> {
  const expected = new Map(m.cells.map((c) => [c[0], c[1]]));
  const seen = new Set<number>();
  let current: { index: number; buf: Buffer } | undefined;
  const check = () => {
    if (!current) return;
    const { index, buf } = current;
    current = undefined;
    const want = expected.get(index);
    const isZero = buf.equals(Buffer.alloc(buf.length));
    if (want === undefined ? !isZero : chunkId(keys, buf) !== want) {
      throw new BaremetalError("backend", `${what}: verification failed: cell ${index} (bytes ${index * m.cellBytes}..) differs from the backup`);
    }
    seen.add(index);
  };
  for await (const e of storage.readExtents!(volume, { maxBytes: m.cellBytes, signal })) {
    const index = Math.floor(e.offset / m.cellBytes);
    if (index * m.cellBytes >= m.sizeBytes) {
      if ("data" in e && !e.data.equals(Buffer.alloc(e.data.length))) throw new BaremetalError("backend", `${what}: verification failed: data past the backup's size`);
      continue;
    }
    if (!current || current.index !== index) {
      check();
      current = { index, buf: Buffer.alloc(Math.min(m.cellBytes, m.sizeBytes - index * m.cellBytes)) };
    }
    if ("data" in e) e.data.copy(current.buf, e.offset - index * m.cellBytes);
  }
  check();
  for (const index of expected.keys()) {
    if (!seen.has(index)) throw new BaremetalError("backend", `${what}: verification failed: cell ${index} is missing from the restored volume`);
  }
}

/** Deletes backups (their manifests) and then every chunk no remaining manifest uses. */
export async function deleteBackups(target: BackupTargetDriver, prefix: string, ids: string[], signal?: AbortSignal): Promise<{ chunksDeleted: number }> {
  if (ids.length) await target.delete(ids.map((id) => manifestKey(prefix, id)), signal);
  return collectGarbage(target, prefix, { signal });
}

/**
 * Removes chunks that no manifest uses. Chunks younger than `graceMs` stay (a backup running
 * elsewhere may have stored them and not yet written its manifest).
 */
export async function collectGarbage(target: BackupTargetDriver, prefix: string, opts: { graceMs?: number; signal?: AbortSignal } = {}): Promise<{ chunksDeleted: number }> {
  const used = new Set<string>();
  for (const m of await listManifests(target, prefix, opts.signal)) for (const c of m.cells) used.add(c[1]);
  const cutoff = Date.now() - (opts.graceMs ?? 0);
  const doomed: string[] = [];
  for await (const o of target.list(`${prefix}chunks/`, opts.signal)) {
    const id = o.key.slice(o.key.lastIndexOf("/") + 1);
    if (used.has(id)) continue;
    if (o.modifiedAt && Date.parse(o.modifiedAt) > cutoff) continue;
    doomed.push(o.key);
  }
  for (let i = 0; i < doomed.length; i += 1000) await target.delete(doomed.slice(i, i + 1000), opts.signal);
  return { chunksDeleted: doomed.length };
}
