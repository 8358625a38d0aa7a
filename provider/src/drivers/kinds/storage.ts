/**
 * The block-storage driver kind: volumes on a storage backend (Ceph RBD, sparse files for the lab)
 * exported to one node at a time over iSCSI with per-node CHAP credentials.
 *
 * Model:
 * - A volume has a name unique in its pool, a size in bytes, and optionally a parent (a clone of
 *   a snapshot: golden images are protected snapshots, per-node volumes copy-on-write clones).
 * - Snapshots are named `<volume>@<snapshot>`; a snapshot with clones cannot be deleted (a
 *   `conflict` naming them).
 * - An export makes a volume reachable as one iSCSI target (one LUN) for exactly one initiator
 *   (the node's IQN), with CHAP (the node's user and secret): another initiator, or the right one
 *   with a wrong secret, is refused by the target. Exporting a volume already exported to another
 *   initiator is a `conflict` naming it (volumes are not shared between nodes).
 * - `path` gives the local access the encryption layer needs to write a LUKS2 header at the
 *   source (a file path, or a `rbd:` spec understood by the Ceph tools); nothing plaintext is
 *   ever written through it except the LUKS header's own metadata.
 * - Every read-back is for drift detection: what the backend has now, not what we asked for.
 */

export interface VolumeInfo {
  name: string;
  pool: string;
  sizeBytes: number;
  /** `pool/volume@snapshot` this volume is a clone of. */
  parent?: string;
  /** Bytes actually allocated where the backend says (sparse files, RBD du). */
  usedBytes?: number;
}

export interface SnapshotInfo {
  volume: string;
  name: string;
  protected: boolean;
  /** Clones made from it (`pool/volume`). */
  children: string[];
}

export interface ExportRequest {
  volume: string;
  /** The node's iSCSI initiator name (`iqn.YYYY-MM.domain:...`). */
  initiatorIqn: string;
  chapUser: string;
  chapSecret: string;
}

export interface ExportInfo {
  volume: string;
  /** `host:port` of the iSCSI portal. */
  portal: string;
  targetIqn: string;
  lun: number;
  initiatorIqn: string;
  chapUser: string;
}

/**
 * A LUKS2 header session on a volume the encryption layer cannot reach as a local file (RBD):
 * cryptsetup works on `file`, a local copy of the volume's header, and `commit` writes what changed
 * back to the volume in a crash-safe order (see storage-ceph/header.ts).
 */
export interface HeaderAccess {
  /** A local 0600 file, in a private directory, holding the header (zeros when `isLuks` is false). */
  readonly file: string;
  /** Whether the volume held a LUKS header when opened (or since the last commit). */
  readonly isLuks: boolean;
  /** Writes the changes made to `file` to the volume; `headersFirst` for a keyslot removal. */
  commit(opts?: { headersFirst?: boolean }): Promise<void>;
  /** Removes the local copy (uncommitted changes are dropped). */
  close(): Promise<void>;
}

/**
 * A piece of a volume's content (backups): `data` at `offset`, or `length` bytes that are zeros
 * (`zero`: a range discarded or zeroed, which a restore must zero too).
 */
export type Extent = { offset: number; data: Buffer } | { offset: number; length: number; zero: true };

export interface ReadExtentsOptions {
  /** Read this snapshot of the volume (default: the volume as it is now; consistent only when nobody writes to it). */
  snapshot?: string;
  /**
   * An earlier snapshot of the same volume: only what changed since it (Ceph: `rbd export-diff
   * --from-snap`). Backends that cannot tell what changed return everything (the engine then
   * skips what it already has by content).
   */
  since?: string;
  /** No extent longer than this (default 4 MiB); extents never cross a multiple of it either. */
  maxBytes?: number;
  signal?: AbortSignal;
}

/** How to reach a storage backend. */
export interface StorageConnection {
  /** Family-specific: `ceph://mon-host:6789/pool?id=client-name`, `file:///var/lib/baremetal/volumes`. */
  address: string;
  /** Ceph: the key of the client (secret); file: unused. */
  key?: string;
  /** Where the iSCSI target (tgt) is managed and listens. */
  iscsi?: { portal: string; controlPort?: number; iqnPrefix?: string };
  signal?: AbortSignal;
}

export interface StorageDriver {
  readonly family: string;
  createVolume(req: { name: string; sizeBytes: number }): Promise<VolumeInfo>;
  /** A copy-on-write clone of `pool/volume@snapshot` (the snapshot is protected first where needed). */
  cloneVolume(req: { name: string; from: string; sizeBytes?: number }): Promise<VolumeInfo>;
  getVolume(name: string): Promise<VolumeInfo | undefined>;
  listVolumes(filter?: { namePrefix?: string }): Promise<VolumeInfo[]>;
  /** Grows (never shrinks: a `validation` error) a volume. */
  resizeVolume(name: string, sizeBytes: number): Promise<VolumeInfo>;
  /** Idempotent; a `conflict` while exported or while it has snapshots with clones. */
  deleteVolume(name: string): Promise<void>;
  createSnapshot(volume: string, name: string, opts?: { protect?: boolean }): Promise<SnapshotInfo>;
  listSnapshots(volume: string): Promise<SnapshotInfo[]>;
  deleteSnapshot(volume: string, name: string): Promise<void>;
  exportVolume(req: ExportRequest): Promise<ExportInfo>;
  listExports(volume?: string): Promise<ExportInfo[]>;
  /** Idempotent. */
  unexportVolume(volume: string): Promise<void>;
  /** Local access for the encryption layer (see the header). */
  path(volume: string): Promise<string>;
  /**
   * Where `path` is no file cryptsetup can write (RBD): a header session instead. Backends whose
   * `path` is a local file do not implement it.
   */
  luksHeader?(volume: string): Promise<HeaderAccess>;
  /**
   * The content of a volume (or of a snapshot), as extents in increasing offset order, streamed
   * with backpressure (memory stays bounded whatever the size). Ranges never written (holes, RBD
   * objects that do not exist) may be left out: they read as zeros. A backend that honours
   * `since` says so in `readsChangesOnly`.
   */
  readExtents?(volume: string, opts?: ReadExtentsOptions): AsyncIterable<Extent>;
  /** Whether `readExtents` with `since` returns only the changes (true for Ceph). */
  readonly readsChangesOnly?: boolean;
  /**
   * Writes extents into an existing volume large enough for them (a restore); streams. Once an
   * extent's data is written (handed to the OS), its `release()` is called when it has one (see
   * storage-file/extents.ts BufferPool), so its maker may reuse the buffer.
   */
  writeExtents?(volume: string, extents: AsyncIterable<Extent>, signal?: AbortSignal): Promise<{ bytesWritten: number }>;
  close(): Promise<void>;
}
