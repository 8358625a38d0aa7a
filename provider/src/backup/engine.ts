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
 *     (ciphertext end to end, nothing to add). Chunk ids keyed (aes-ghash, below) under a
 *     per-source id key wrapped by a key-manager key when one is given (`wrapper`), else SHA-256.
 *   - `envelope`: a plain volume. Each backup draws a random 256-bit data key (DEK); the chunks it
 *     stores are AES-256-GCM under it (random 96-bit nonce, the chunk id as associated data). The
 *     DEK is wrapped (AES-256-GCM) under a key-encryption key derived by HKDF-SHA256 from a key in
 *     the key manager, with the backup id as associated data, and the wrapped DEKs of every backup
 *     whose chunks a manifest uses travel in it. Chunk ids keyed under a per-source dedup key
 *     (wrapped the same way, carried from backup to backup): equal cells dedup without the store
 *     learning anything from ids. Deleting the key-manager key makes every wrapped key, and so the
 *     backups, unreadable (crypto-erase).
 *
 * Chunk ids (cell-crypto.ts; the manifest's `encryption.chunkIds`): a new chain takes `aes-ghash`
 * (AES over GHASH, keyed, 128 bits) when it has a key, `sha256` when it has none (a LUKS2 volume
 * backed up without keyId); a chain keeps the scheme it started with, so equal cells keep equal
 * ids (chains begun with SHA-256, or with HMAC-SHA256 in envelope mode before aes-ghash, go on so;
 * manifests of then carry no `chunkIds`). Node disks' agents compute HMAC-SHA256 (node-disk.ts).
 *
 * Integrity: a manifest's `digest` is SHA-256 over its cell map; every chunk is checked on restore
 * (its id recomputed; GCM's tag in envelope mode), and a restore is verified by reading the new
 * volume back and recomputing every cell's id against the manifest.
 *
 * Speed: the CPU work of a cell (its chunk id: aes-ghash about 0.4 ms per 4 MiB cell on one core
 * here, SHA-256 about 3 ms; in envelope mode AES-256-GCM, about 2 ms; for a target that signs
 * payloads the SHA-256 of each chunk stored) runs in a small pool of worker
 * threads (`workers`, default one per core, at most 8; cell-crypto.ts), so reading the source,
 * hashing and sealing several cells, and uploading overlap and use every core. A cell the reader
 * hands out whole (the usual case) goes to a worker as it is: the storage readers read into
 * shared memory, and the buffer goes back to them (`releaseExtent`) once the cell is sealed or
 * stored. A full backup (or the changes a backend reported) seals each cell (and hashes its
 * payload) in the same trip to the worker as its id. Restores open (decrypt, check) chunks and verify the written volume in
 * the same workers. `workers: 0` does it all on the main thread.
 *
 * Memory: one cell being assembled, at most `concurrency` (default 4) + `workers` cells being
 * hashed or sealed and `concurrency` being uploaded, whatever the volume's size (4 MiB each:
 * 44 MiB with the defaults on two cores); the manifest's cell map (about 100 bytes per non-zero
 * cell: 26 MB for 1 TiB). The file backend's reader reads 16 MiB at a time, and a cell held here
 * keeps its whole read's buffer: up to 4x the cells' own size, still bounded (peak RSS below
 * 600 MiB in every phase of bench/backup.ts on 10 GiB).
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from "node:crypto";
import { BaremetalError, isBaremetalError } from "../core/errors";
import type { BackupTargetDriver } from "../drivers/kinds/backup-target";
import type { Extent, StorageDriver } from "../drivers/kinds/storage";
import { isAllZero, releaseExtent } from "../drivers/storage-file/extents";
import { type CellCrypto, cellCrypto, type ChunkIds, defaultWorkers, isShared, type Keys, SharedBuffers, sharedBuffer } from "./cell-crypto";

export const CELL_BYTES = 4 * 1024 * 1024;
export const MANIFEST_FORMAT = "baremetal-backup/1";

/** A cell: [cell index, chunk id, backup id whose DEK encrypts the chunk (envelope only)]. */
export type Cell = [number, string] | [number, string, string];

export interface EnvelopeInfo {
  mode: "envelope";
  /** How chunk ids are computed (cell-crypto.ts); absent in manifests written before it was recorded: hmac-sha256. */
  chunkIds?: "hmac-sha256" | "aes-ghash";
  keyManager: string;
  keyId: string;
  /** The dedup key (the chunk ids' key), wrapped (base64 of nonce | ciphertext | tag). */
  dedupKey: string;
  /** Wrapped DEKs by backup id (this backup's and its ancestors' whose chunks the map uses). */
  keys: Record<string, string>;
}

/** A LUKS2 volume's backup: its ciphertext as it is; chunk ids keyed when a key was given. */
export interface SourceInfo {
  mode: "source";
  /** Absent in manifests written before it was recorded: sha256. */
  chunkIds?: "sha256" | "aes-ghash";
  /** With aes-ghash ids: the key manager's key that wraps the id key, and the id key wrapped. */
  keyManager?: string;
  keyId?: string;
  idKey?: string;
}

/** The chunk id scheme of a manifest's encryption. */
export const chunkIdsOf = (enc: SourceInfo | EnvelopeInfo): ChunkIds => enc.chunkIds ?? (enc.mode === "source" ? "sha256" : "hmac-sha256");

/** The key-manager key a backup needs to be restored (and its chain continued), if any. */
export const keyOf = (enc: SourceInfo | EnvelopeInfo): { keyManager: string; keyId: string } | undefined =>
  enc.keyId !== undefined && enc.keyManager !== undefined ? { keyManager: enc.keyManager, keyId: enc.keyId } : undefined;

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
  encryption: SourceInfo | EnvelopeInfo;
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

function unwrapKeys(enc: Manifest["encryption"], wrapper: KeyWrapper | undefined, sourceId: string, what: string): Keys {
  const ids = chunkIdsOf(enc);
  if (enc.mode === "source" && ids === "sha256") return { mode: "source", ids, deks: new Map() };
  if (!wrapper) {
    const how = enc.mode === "source" ? "its chunk ids are keyed with" : "it is encrypted with";
    throw new BaremetalError("validation", `${what}: ${how} key ${enc.keyId} of key manager ${enc.keyManager}; give that key (keyId)`, { property: "keyId" });
  }
  if (enc.mode === "source") {
    if (enc.idKey === undefined) throw new BaremetalError("backend", `${what}: the manifest names ${ids} chunk ids but carries no id key (damaged or tampered with)`);
    return { mode: "source", ids, dedup: wrapper.unwrap(enc.idKey, `idkey:${sourceId}`), deks: new Map() };
  }
  const deks = new Map<string, Buffer>();
  for (const [id, w] of Object.entries(enc.keys)) deks.set(id, wrapper.unwrap(w, `dek:${id}`));
  return { mode: "envelope", ids, dedup: wrapper.unwrap(enc.dedupKey, `dedup:${sourceId}`), deks };
}

/**
 * An object's bytes gathered into a buffer taken from `pool` (a fresh one when it is larger);
 * returns the data and the buffer to give back.
 */
async function collectShared(body: AsyncIterable<Buffer>, pool: SharedBuffers): Promise<{ data: Buffer; buf: Buffer }> {
  let buf = pool.take();
  let n = 0;
  for await (const b of body) {
    if (n + b.length > buf.length) {
      const bigger = sharedBuffer(Math.max(buf.length * 2, n + b.length));
      buf.copy(bigger, 0, 0, n);
      pool.give(buf);
      buf = bigger;
    }
    b.copy(buf, n);
    n += b.length;
  }
  return { data: buf.subarray(0, n), buf };
}

/** Buffers for fetching chunks: bodies as stored, and cells decrypted from them. */
interface FetchBuffers {
  bodies: SharedBuffers;
  cells: SharedBuffers;
}

const fetchBuffers = (cellBytes: number): FetchBuffers => ({ bodies: new SharedBuffers(cellBytes + 28), cells: new SharedBuffers(cellBytes) });

/**
 * Reads one chunk and checks it against its id; returns the cell's plaintext (in shared memory)
 * and `release`, which gives its buffer back once the caller is done with it.
 */
async function fetchCell(target: BackupTargetDriver, prefix: string, crypto: CellCrypto, keys: Keys, bufs: FetchBuffers, cell: Cell, what: string, signal?: AbortSignal): Promise<{ data: Buffer; release: () => void }> {
  const [, id, ref] = cell;
  const body = await collectShared(await target.get(chunkKey(prefix, id), { signal }), bufs.bodies);
  if (keys.mode !== "envelope") {
    try {
      return { data: await crypto.open(body.data, id, ref, undefined, what), release: () => bufs.bodies.give(body.buf) };
    } catch (e) {
      bufs.bodies.give(body.buf);
      throw e;
    }
  }
  const out = bufs.cells.take();
  try {
    return { data: await crypto.open(body.data, id, ref, out, what), release: () => bufs.cells.give(out) };
  } catch (e) {
    bufs.cells.give(out);
    throw e;
  } finally {
    bufs.bodies.give(body.buf);
  }
}

/** A cell of a volume, assembled from its reader's extents (assembleCells). */
interface AssembledCell {
  index: number;
  cell: Buffer;
  /** Gives the cell's buffer back (to the reader when `whole`, else to the pool); once nothing needs it. */
  release: () => void;
  /** One data extent that is the whole cell, in shared memory: the reader's buffer as it is. */
  whole: boolean;
  /** The cell-relative ranges the extents reported (data or zeros), in order. */
  ranges: [number, number][];
  /** Bytes of data the extents carried. */
  bytesRead: number;
}

/**
 * The cells of `size` bytes of a volume, from its extents (ordered, no extent across a cell
 * boundary: read with maxBytes = cellBytes). A cell that one data extent fills, in shared memory,
 * is handed on as it is (it goes to the worker threads without a copy); any other is assembled in
 * a buffer of `buffers`, zeros where no extent says anything. An extent past `size` goes to
 * `past` (which may throw), then back to its reader. A cell not yet handed on when the consumer
 * stops is given back here; one handed on is the consumer's to release.
 */
async function* assembleCells(extents: AsyncIterable<Extent>, cellBytes: number, size: number, buffers: SharedBuffers, past: (e: Extent) => void = () => undefined): AsyncGenerator<AssembledCell> {
  const cellLength = (i: number) => Math.min(cellBytes, size - i * cellBytes);
  const own = (index: number) => {
    const buf = buffers.take();
    return { cell: buf.subarray(0, cellLength(index)), release: () => buffers.give(buf) };
  };
  let current: (AssembledCell & { filled: boolean }) | undefined;
  try {
    for await (const e of extents) {
      const index = Math.floor(e.offset / cellBytes);
      if (index * cellBytes >= size) {
        try {
          past(e);
        } finally {
          releaseExtent(e);
        }
        continue;
      }
      const at = e.offset - index * cellBytes;
      const length = "data" in e ? e.data.length : e.length;
      if (!current || current.index !== index) {
        if (current) {
          const done = current;
          current = undefined;
          yield done;
        }
        if ("data" in e && at === 0 && length === cellLength(index) && isShared(e.data)) {
          current = { index, cell: e.data, release: () => releaseExtent(e), whole: true, ranges: [[0, length]], bytesRead: length, filled: true };
          continue;
        }
        current = { index, ...own(index), whole: false, ranges: [], bytesRead: 0, filled: false };
      } else if (current.whole) {
        // More for a cell read whole (overlapping extents): assemble it in a buffer of ours.
        const mine = own(index);
        current.cell.copy(mine.cell);
        current.release();
        Object.assign(current, mine, { whole: false });
      }
      // Ranges no extent covers are zeros: clear the (reused) buffer unless one extent fills the cell.
      if (!current.filled && !(at === 0 && length === current.cell.length && "data" in e)) current.cell.fill(0);
      current.filled = true;
      if ("data" in e) {
        e.data.copy(current.cell, at);
        current.bytesRead += length;
      }
      releaseExtent(e);
      current.ranges.push([at, at + length]);
    }
    if (current) {
      const done = current;
      current = undefined;
      yield done;
    }
  } finally {
    current?.release();
  }
}

export interface BackupRequest {
  storage: StorageDriver;
  backend: string;
  volume: string;
  target: BackupTargetDriver;
  /** Where this source's backups live in the target, ending with `/`. */
  prefix: string;
  id: string;
  /**
   * `source` for a LUKS2 volume (stored as is; with `wrapper`, chunk ids keyed: aes-ghash, much
   * cheaper than SHA-256); `envelope` otherwise, with `wrapper`.
   */
  mode: "source" | "envelope";
  wrapper?: KeyWrapper;
  /**
   * The chunk ids of a new chain (a full backup); an incremental one keeps its parent's. Default:
   * aes-ghash with `wrapper`, sha256 without. Others only to compare (bench) and test chains
   * started before aes-ghash ids.
   */
  chunkIds?: ChunkIds;
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

  // Keys: the parent's chunk id scheme and dedup key carry over (so equal cells keep equal ids;
  // a new chain takes aes-ghash ids when there is a key); a fresh DEK each time.
  const parent = req.parent && req.parent.encryption.mode === req.mode && req.parent.sizeBytes === info.sizeBytes ? req.parent : undefined;
  const w = req.wrapper;
  const parentKey = parent ? keyOf(parent.encryption) : undefined;
  if (parentKey && !w) {
    throw new BaremetalError(
      "validation",
      `${what}: its latest backup ${parent!.id} has chunk ids keyed with key ${parentKey.keyId} of key manager ${parentKey.keyManager}: give that key (keyId) for an incremental backup, or take a full one (incremental: false)`,
      { property: "keyId" },
    );
  }
  const inherited = parent ? unwrapKeys(parent.encryption, w, volume, `${what} (incremental on ${parent.id})`) : undefined;
  const ids: ChunkIds = inherited?.ids ?? req.chunkIds ?? (w ? "aes-ghash" : "sha256");
  if (ids !== "sha256" && !w) throw new BaremetalError("validation", `${what}: ${ids} chunk ids are keyed: give keyId`, { property: "keyId" });
  if (req.mode === "source" ? ids === "hmac-sha256" : ids === "sha256") {
    throw new BaremetalError("internal", `${what}: ${ids} chunk ids do not go with ${req.mode} encryption`);
  }
  const dedup = ids === "sha256" ? undefined : (inherited?.dedup ?? randomBytes(32));
  let keys: Keys;
  let encryption: Manifest["encryption"];
  if (req.mode === "source") {
    keys = { mode: "source", ids, dedup, deks: new Map() };
    encryption = ids === "sha256" ? { mode: "source", chunkIds: "sha256" } : { mode: "source", chunkIds: "aes-ghash", keyManager: w!.keyManager, keyId: w!.keyId, idKey: w!.wrap(dedup!, `idkey:${volume}`) };
  } else {
    const dek = randomBytes(32);
    keys = { mode: "envelope", ids, dedup, dek, deks: new Map(inherited?.deks ?? []) };
    keys.deks.set(req.id, dek);
    encryption = { mode: "envelope", chunkIds: ids as "hmac-sha256" | "aes-ghash", keyManager: w!.keyManager, keyId: w!.keyId, dedupKey: w!.wrap(dedup!, `dedup:${volume}`), keys: {} };
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
  const crypto = cellCrypto(keys, workers, { payloadSha256: target.signsPayloads === true });
  /** Cells being hashed, sealed or uploaded; uploads among them at most `concurrency`. */
  const cellsInFlight = new Pool(concurrency + workers);
  const uploads = new Pool(concurrency);
  /** Cells assembled from several extents (a cell read whole is the reader's buffer itself). */
  const buffers = new SharedBuffers(CELL_BYTES);
  /** Chunk ids this backup stored (the others its cells use are shared with earlier backups). */
  const stored = new Set<string>();
  const cellLength = (i: number) => Math.min(CELL_BYTES, info.sizeBytes - i * CELL_BYTES);
  /**
   * Seal (and hash the payload, for a target that signs payloads) while computing the id, in one
   * trip to a worker, when most cells read are new: a full backup, or the changes a backend
   * reported. Otherwise (a backend that cannot tell what changed) most cells are known and only
   * the unknown ones are sealed, after their id is.
   */
  const storeEarly = !parent || changesOnly;
  const parentBuffers = fetchBuffers(CELL_BYTES);

  /**
   * Hashes a cell and, unless its chunk is known, seals it and starts its upload (resolves once
   * the upload has started); `release` gives the cell's buffer back once nothing needs it. `zero`:
   * whether the cell may be all zeros (readers leave out zero blocks, so a cell read whole is not).
   */
  const storeCell = async (index: number, cell: Buffer, release: () => void, zero: boolean) => {
    let held = true;
    const giveBack = () => {
      if (held) release();
      held = false;
    };
    let giveStored = () => {};
    let uploading = false;
    try {
      const r = await crypto.cell(cell, { zero, store: storeEarly });
      if (r?.stored) giveStored = r.stored.release;
      if (!r) {
        map.delete(index);
        return;
      }
      const id = r.id;
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
      const s = r.stored ?? (await crypto.store(cell, id));
      giveStored = s.release;
      // A sealed body is a buffer of its own: the cell is not needed any more.
      if (s.body !== cell) giveBack();
      await uploads.add(async () => {
        uploading = true;
        try {
          await target.put(chunkKey(prefix, id), s.body, { sizeBytes: s.body.length, signal, ...(s.sha256 ? { sha256: s.sha256 } : {}) });
        } finally {
          giveBack();
          giveStored();
        }
        stats.bytesStored += s.body.length;
        stats.chunksStored++;
        req.afterChunk?.(stats.chunksStored);
        req.onProgress?.({ bytesRead: stats.bytesRead, bytesStored: stats.bytesStored, cells: map.size });
      });
    } finally {
      if (!uploading) {
        giveBack();
        giveStored();
      }
    }
  };

  try {
    try {
      const extents = storage.readExtents(volume, { snapshot, since, maxBytes: CELL_BYTES, signal });
      for await (const c of assembleCells(extents, CELL_BYTES, info.sizeBytes, buffers)) {
        stats.bytesRead += c.bytesRead;
        if (changesOnly && c.ranges.reduce((n, [from, to]) => n + to - from, 0) < c.cell.length) {
          // Only part of the cell changed: the rest is the parent's.
          const old = map.get(c.index);
          const base = old ? await fetchCell(target, prefix, crypto, keys, parentBuffers, old, what, signal) : undefined;
          const merged = Buffer.from(base?.data ?? Buffer.alloc(c.cell.length));
          base?.release();
          for (const [from, to] of c.ranges) c.cell.copy(merged, from, from, to);
          merged.copy(c.cell);
        }
        await cellsInFlight.add(() => storeCell(c.index, c.cell, c.release, !c.whole));
      }
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
  /** Worker threads for opening chunks and verifying (default one per core, at most 8; 0: on the main thread). */
  workers?: number;
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

/**
 * Writes a backup into a fresh volume, and (by default) verifies it by reading it back. Chunks
 * are fetched `concurrency` ahead and opened (decrypted, checked) in the worker threads; cells are
 * written in order.
 */
export async function restoreBackup(req: RestoreRequest): Promise<RestoreResult> {
  const { manifest: m, target, prefix, storage, volume, signal } = req;
  const t0 = Date.now();
  const what = `restoring backup ${m.id} into volume ${volume}`;
  if (!storage.writeExtents || !storage.readExtents) throw new BaremetalError("validation", `${what}: the ${storage.family} storage backend cannot be written from backups`);
  const keys = unwrapKeys(m.encryption, req.wrapper, m.source.id, what);
  const concurrency = req.concurrency ?? 4;
  const crypto = cellCrypto(keys, req.workers ?? defaultWorkers());
  try {
    // Fetch ahead, write in order: a window of `concurrency` cells.
    const pending: Promise<{ data: Buffer; release: () => void }>[] = [];
    const bufs = fetchBuffers(m.cellBytes);
    let next = 0;
    const pump = () => {
      while (pending.length < concurrency && next < m.cells.length) {
        const cell = m.cells[next++];
        const p = fetchCell(target, prefix, crypto, keys, bufs, cell, what, signal);
        p.catch(() => undefined);
        pending.push(p);
      }
    };
    let done = 0;
    async function* extents(): AsyncIterable<Extent> {
      pump();
      for (const cell of m.cells) {
        const { data, release } = await pending.shift()!;
        pump();
        // The writer calls release() once the data is written (StorageDriver.writeExtents).
        const e: Extent = { offset: cell[0] * m.cellBytes, data };
        Object.defineProperty(e, "release", { enumerable: false, value: release });
        yield e;
        done++;
        req.onProgress?.({ cellsDone: done, cells: m.cells.length });
      }
    }
    const { bytesWritten } = await storage.writeExtents(volume, extents(), signal);
    let verified = false;
    if (req.verify !== false) {
      await verifyVolume(storage, volume, m, crypto, concurrency, what, signal);
      verified = true;
    }
    return { bytesWritten, cells: m.cells.length, verified, ms: Date.now() - t0 };
  } finally {
    await crypto.close();
  }
}

/** Reads the volume and compares every cell's id with the manifest (zero cells must be zero). */
async function verifyVolume(storage: StorageDriver, volume: string, m: Manifest, crypto: CellCrypto, concurrency: number, what: string, signal?: AbortSignal): Promise<void> {
  const expected = new Map(m.cells.map((c) => [c[0], c[1]]));
  const seen = new Set<number>();
  const checks = new Pool(concurrency);
  const past = (e: Extent) => {
    if ("data" in e && !isAllZero(e.data)) throw new BaremetalError("backend", `${what}: verification failed: data past the backup's size`);
  };
  try {
    for await (const c of assembleCells(storage.readExtents!(volume, { maxBytes: m.cellBytes, signal }), m.cellBytes, m.sizeBytes, new SharedBuffers(m.cellBytes), past)) {
      seen.add(c.index);
      await checks.add(async () => {
        try {
          const want = expected.get(c.index);
          const got = await crypto.cell(c.cell, { zero: true });
          if (want === undefined ? got !== null : got?.id !== want) {
            throw new BaremetalError("backend", `${what}: verification failed: cell ${c.index} (bytes ${c.index * m.cellBytes}..) differs from the backup`);
          }
        } finally {
          c.release();
        }
      });
    }
    await checks.wait();
  } catch (e) {
    await checks.wait().catch(() => undefined);
    throw e;
  }
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
