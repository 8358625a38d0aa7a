/**
 * Backups of a node's own disk, taken ON THE NODE: the provider boots the machine into a "backup
 * image" (an ISO in its virtual CD) that carries a job description; the agent on that image reads
 * the disk and streams it to the backup target in the engine's format (engine.ts), so a node
 * backup restores with the same code as a volume's (restoreBackup, a Volume's sourceBackup).
 *
 * Keys: the node has no access to the key manager, so the provider does the key work before the
 * boot. It draws the backup's data key (DEK) and takes the source's dedup key (the parent's,
 * unwrapped, so equal cells keep equal ids; else a new one), wraps both under the key-manager key
 * exactly as the engine does (HKDF-SHA256 KEK, AES-256-GCM, AAD `dek:<id>` / `dedup:<nodeId>`),
 * and puts the plaintext keys AND their wrapped forms in the job. The agent encrypts chunks with
 * the plaintext DEK, ids them with the dedup key, and writes into the manifest only the wrapped
 * forms it was given (plus the parent's wrapped DEKs of the chunks it reuses, copied as they are).
 * The job also holds the target's credentials. All of this is secret: the ISO is exposed like a
 * config drive's user data (whoever fetches its URL reads it), so the provider deletes it from the
 * image store as soon as the node has booted it and, at the latest, when the backup ends.
 *
 * Manifest last: the agent stores every chunk first and the manifest last, as the engine does; the
 * provider waits for the manifest of its backup id and then checks that it is its job's (the
 * wrapped keys it issued, the node as source, every chunk present). No manifest: no backup; the
 * orphan chunks of a failed run go with the next garbage collection.
 *
 * The job file: `baremetal-backup/job.json` on an ISO labelled `baremetal-bkp` (BACKUP_JOB_PATH,
 * BACKUP_IMAGE_LABEL). What boots it on a real machine is a small agent image of the site's
 * (Ironic's IPA-style ramdisk with this job runner); in the embedded lab our BMC emulator plays
 * that agent (provider/src/lab/backup-agent.ts).
 */
import { createCipheriv, createHmac, randomBytes } from "node:crypto";
import { buildIso } from "../core/iso9660";
import { BaremetalError, isBaremetalError } from "../core/errors";
import type { BackupTargetCredentials, BackupTargetSettings } from "../drivers/backup-targets";
import type { BackupTargetDriver } from "../drivers/kinds/backup-target";
import type { Extent } from "../drivers/kinds/storage";
import { type BackupStats, CELL_BYTES, type Cell, cellMapDigest, chunkIdsOf, chunkKey, type KeyWrapper, type Manifest, MANIFEST_FORMAT, manifestKey, readManifest } from "./engine";

export const BACKUP_JOB_PATH = "baremetal-backup/job.json";
export const BACKUP_IMAGE_LABEL = "baremetal-bkp";
export const BACKUP_JOB_FORMAT = "baremetal-backup-job/1";

/** What the node's agent is told to do (secret as a whole: keys and the target's credentials). */
export interface NodeBackupJob {
  format: typeof BACKUP_JOB_FORMAT;
  /** The backup's id (its manifest: `<prefix>backups/<id>.json`). */
  id: string;
  /** The node (the manifest's source id, and the dedup key's associated data). */
  nodeId: string;
  /** Where the node's backups live in the target, ending with `/`. */
  prefix: string;
  /** The backup target, as the provider's configuration gives it, and its credentials. */
  target: { name: string; settings: BackupTargetSettings; credentials?: BackupTargetCredentials };
  /** The backup this one is incremental on (the agent reads its manifest; cells whose chunk it has are not stored again). */
  parent?: string;
  takenBy?: string;
  /** Which disk: the first one the machine has (the only policy so far). */
  disk: "first";
  encryption: {
    keyManager: string;
    keyId: string;
    /** base64 of the plaintext DEK and dedup key. */
    dek: string;
    dedupKey: string;
    /** Their wrapped forms, as they go into the manifest. */
    wrappedDek: string;
    wrappedDedupKey: string;
  };
  issuedAt: string;
}

export interface NodeJobRequest {
  nodeId: string;
  prefix: string;
  id: string;
  target: NodeBackupJob["target"];
  wrapper: KeyWrapper;
  /** The backup to be incremental on (its dedup key is reused). */
  parent?: Manifest;
  takenBy?: string;
}

/** The job for a node's agent: keys drawn and wrapped here (see the top of the file). */
export function nodeBackupJob(req: NodeJobRequest): NodeBackupJob {
  const { wrapper, parent } = req;
  // The agent computes HMAC-SHA256 ids (a tool any backup image has can do it): a parent with other ids does not dedup.
  const usable = parent && parent.encryption.mode === "envelope" && chunkIdsOf(parent.encryption) === "hmac-sha256" && parent.source.id === req.nodeId ? parent : undefined;
  const dedup = usable && usable.encryption.mode === "envelope" ? wrapper.unwrap(usable.encryption.dedupKey, `dedup:${req.nodeId}`) : randomBytes(32);
  const dek = randomBytes(32);
  try {
    return {
      format: BACKUP_JOB_FORMAT,
      id: req.id,
      nodeId: req.nodeId,
      prefix: req.prefix,
      target: req.target,
      ...(usable ? { parent: usable.id } : {}),
      ...(req.takenBy ? { takenBy: req.takenBy } : {}),
      disk: "first",
      encryption: {
        keyManager: wrapper.keyManager,
        keyId: wrapper.keyId,
        dek: dek.toString("base64"),
        dedupKey: dedup.toString("base64"),
        wrappedDek: wrapper.wrap(dek, `dek:${req.id}`),
        wrappedDedupKey: wrapper.wrap(dedup, `dedup:${req.nodeId}`),
      },
      issuedAt: new Date().toISOString(),
    };
  } finally {
    dek.fill(0);
    dedup.fill(0);
  }
}

/** The backup image: an ISO holding the job (deterministic bytes for one job). */
export function buildBackupImage(job: NodeBackupJob): Buffer {
  const data = Buffer.from(JSON.stringify(job));
  try {
    return buildIso({ volumeId: BACKUP_IMAGE_LABEL, files: [{ path: BACKUP_JOB_PATH, data }] });
  } finally {
    data.fill(0);
  }
}

/** Reads and checks a job file (the agent's side); `validation` naming what is wrong. */
export function parseBackupJob(raw: Buffer | string): NodeBackupJob {
  let j: NodeBackupJob;
  try {
    j = JSON.parse(raw.toString()) as NodeBackupJob;
  } catch {
    throw new BaremetalError("validation", `${BACKUP_JOB_PATH} is not JSON`);
  }
  const bad = (what: string) => new BaremetalError("validation", `${BACKUP_JOB_PATH}: ${what}`);
  if (!j || j.format !== BACKUP_JOB_FORMAT) throw bad(`unknown format ${JSON.stringify(j?.format)} (want ${BACKUP_JOB_FORMAT})`);
  for (const k of ["id", "nodeId", "prefix"] as const) if (typeof j[k] !== "string" || !j[k]) throw bad(`${k} is missing`);
  if (!/^[A-Za-z0-9-]+$/.test(j.id)) throw bad("id is not a backup id");
  if (!j.prefix.endsWith("/")) throw bad("prefix must end with /");
  if (!j.target || typeof j.target.settings?.address !== "string") throw bad("target.settings.address is missing");
  const e = j.encryption;
  for (const k of ["keyManager", "keyId", "dek", "dedupKey", "wrappedDek", "wrappedDedupKey"] as const) if (typeof e?.[k] !== "string" || !e[k]) throw bad(`encryption.${k} is missing`);
  if (Buffer.from(e.dek, "base64").length !== 32 || Buffer.from(e.dedupKey, "base64").length !== 32) throw bad("encryption keys must be 32 bytes (base64)");
  return j;
}

/** The disk as the agent sees it: its size and its content as extents (zero extents may be left out). */
export interface DiskSource {
  sizeBytes: number;
  /** Extents in offset order, each within one cell of `cellBytes` (larger data extents are cut by the reader). */
  extents(cellBytes: number, signal?: AbortSignal): AsyncIterable<Extent>;
}

/**
 * The agent's work: reads the disk, stores each non-zero cell as an AES-256-GCM chunk under the
 * job's DEK (id = HMAC-SHA256 under the dedup key; cells the parent already has are not stored
 * again), and writes the manifest last. Byte-compatible with the engine's envelope mode (chunk =
 * nonce | ciphertext | tag, the chunk id as associated data), which restores it.
 */
export async function runNodeBackup(
  job: NodeBackupJob,
  disk: DiskSource,
  target: BackupTargetDriver,
  opts: { concurrency?: number; signal?: AbortSignal; onProgress?: (p: { bytesRead: number; bytesStored: number; cells: number }) => void; backend?: string } = {},
): Promise<Manifest> {
  const t0 = Date.now();
  const { signal } = opts;
  const what = `backup ${job.id} of node ${job.nodeId}`;
  const dek = Buffer.from(job.encryption.dek, "base64");
  const dedup = Buffer.from(job.encryption.dedupKey, "base64");
  try {
    let parent: Manifest | undefined;
    if (job.parent) {
      try {
        parent = await readManifest(target, job.prefix, job.parent, signal);
      } catch (e) {
        if (!(isBaremetalError(e) && e.code === "not-found")) throw e;
        // Pruned meanwhile: a full backup then.
      }
    }
    if (parent && (parent.encryption.mode !== "envelope" || parent.cellBytes !== CELL_BYTES)) parent = undefined;
    const known = new Map<string, Cell>((parent?.cells ?? []).map((c) => [c[1], c]));
    const map = new Map<number, Cell>();
    const stored = new Set<string>();
    const stats: BackupStats = { bytesRead: 0, bytesStored: 0, chunksStored: 0, chunksReused: 0, bytesUsed: 0, ms: 0 };
    const cellCount = Math.ceil(disk.sizeBytes / CELL_BYTES);
    const cellLength = (i: number) => Math.min(CELL_BYTES, disk.sizeBytes - i * CELL_BYTES);
    const limit = opts.concurrency ?? 4;
    const running = new Set<Promise<void>>();
    let failure: unknown;

    const store = async (index: number, cell: Buffer) => {
      if (isZero(cell)) return;
      const id = createHmac("sha256", dedup).update(cell).digest("hex");
      const had = known.get(id);
      if (had) {
        map.set(index, [index, id, had[2] ?? job.id]);
        return;
      }
      const entry: Cell = [index, id, job.id];
      known.set(id, entry);
      map.set(index, entry);
      stored.add(id);
      const body = seal(dek, id, cell);
      while (running.size >= limit) await Promise.race(running);
      if (failure) throw failure;
      const p: Promise<void> = target
        .put(chunkKey(job.prefix, id), body, { sizeBytes: body.length, signal })
        .then(() => {
          stats.bytesStored += body.length;
          stats.chunksStored++;
          opts.onProgress?.({ bytesRead: stats.bytesRead, bytesStored: stats.bytesStored, cells: map.size });
        })
        .catch((e) => {
          failure ??= e;
        })
        .finally(() => running.delete(p));
      running.add(p);
    };

    let current: { index: number; buf: Buffer } | undefined;
    try {
      for await (const e of disk.extents(CELL_BYTES, signal)) {
        if (failure) throw failure;
        if (!("data" in e)) continue;
        const index = Math.floor(e.offset / CELL_BYTES);
        if (index >= cellCount) continue;
        if (!current || current.index !== index) {
          if (current) await store(current.index, current.buf);
          current = { index, buf: Buffer.alloc(cellLength(index)) };
        }
        const at = e.offset - index * CELL_BYTES;
        e.data.copy(current.buf, at, 0, Math.min(e.data.length, current.buf.length - at));
        stats.bytesRead += e.data.length;
      }
      if (current) await store(current.index, current.buf);
    } finally {
      await Promise.all(running);
    }
    if (failure) throw failure;

    const cells = [...map.values()].sort((a, b) => a[0] - b[0]);
    const keys: Record<string, string> = {};
    for (const ref of new Set(cells.map((c) => c[2]!))) {
      if (ref === job.id) keys[ref] = job.encryption.wrappedDek;
      else if (parent?.encryption.mode === "envelope" && parent.encryption.keys[ref]) keys[ref] = parent.encryption.keys[ref];
      else throw new BaremetalError("backend", `${what}: the parent manifest has no wrapped data key for backup ${ref}`);
    }
    stats.bytesUsed = cells.reduce((n, c) => n + cellLength(c[0]), 0);
    stats.chunksReused = new Set(cells.filter((c) => !stored.has(c[1])).map((c) => c[1])).size;
    stats.ms = Date.now() - t0;
    const manifest = {
      format: MANIFEST_FORMAT,
      id: job.id,
      source: { kind: "node", id: job.nodeId, backend: opts.backend ?? "node-agent" },
      sizeBytes: disk.sizeBytes,
      cellBytes: CELL_BYTES,
      createdAt: new Date().toISOString(),
      ...(parent ? { parent: parent.id } : {}),
      ...(job.takenBy ? { takenBy: job.takenBy } : {}),
      encryption: { mode: "envelope", chunkIds: "hmac-sha256", keyManager: job.encryption.keyManager, keyId: job.encryption.keyId, dedupKey: job.encryption.wrappedDedupKey, keys },
      cells,
      digest: cellMapDigest(cells),
      stats,
    } as unknown as Manifest; // source.kind "node": the engine's type names volumes only; nothing reads the kind
    await target.put(manifestKey(job.prefix, job.id), Buffer.from(JSON.stringify(manifest)), { signal });
    return manifest;
  } finally {
    dek.fill(0);
    dedup.fill(0);
  }
}

/**
 * The provider's check of a manifest a node wrote: it is the job's (the source, the wrapped keys
 * the provider issued) and every chunk it names is in the target. Throws `backend` otherwise.
 */
export async function checkNodeManifest(m: Manifest, job: Pick<NodeBackupJob, "id" | "nodeId" | "prefix" | "encryption">, target: BackupTargetDriver, signal?: AbortSignal): Promise<void> {
  const what = `backup ${job.id} of node ${job.nodeId}`;
  const enc = m.encryption;
  if (m.id !== job.id || m.source.id !== job.nodeId || (m.source as { kind: string }).kind !== "node") throw new BaremetalError("backend", `${what}: the manifest in the target is not this job's (source ${m.source.kind} ${m.source.id})`);
  if (enc.mode !== "envelope" || enc.dedupKey !== job.encryption.wrappedDedupKey || (m.cells.some((c) => c[2] === job.id) && enc.keys[job.id] !== job.encryption.wrappedDek)) {
    throw new BaremetalError("backend", `${what}: the manifest does not carry the keys the provider issued for it`);
  }
  const want = new Set(m.cells.map((c) => c[1]));
  for await (const o of target.list(`${job.prefix}chunks/`, signal)) want.delete(o.key.slice(o.key.lastIndexOf("/") + 1));
  if (want.size) throw new BaremetalError("backend", `${what}: ${want.size} chunk(s) the manifest names are missing from the target`);
}

function seal(dek: Buffer, id: string, cell: Buffer): Buffer {
  const nonce = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", dek, nonce);
  c.setAAD(Buffer.from(id));
  const body = Buffer.concat([c.update(cell), c.final()]);
  return Buffer.concat([nonce, body, c.getAuthTag()]);
}

const ZERO = Buffer.alloc(CELL_BYTES);
function isZero(b: Buffer): boolean {
  return b.equals(ZERO.subarray(0, b.length));
}
