/**
 * FAKE storage driver, in memory, for unit tests only (not a configurable family): volumes are
 * sparse maps of 64 KiB blocks, snapshots are copies of the map, exports are records. It keeps the
 * interface's rules (names, growing only, conflicts for snapshots with clones and for a second
 * initiator) and can report changes since a snapshot (readsChangesOnly), block by block, so the
 * backup engine's incremental path can be tested without Ceph. Real behaviour is proven against
 * the file and ceph drivers.
 */
import { BaremetalError, validationError } from "../core/errors";
import type { ExportInfo, ExportRequest, Extent, ReadExtentsOptions, SnapshotInfo, StorageDriver, VolumeInfo } from "./kinds/storage";

const BLOCK = 64 * 1024;

interface FakeVolume {
  size: number;
  blocks: Map<number, Buffer>;
  parent?: string;
  snapshots: Map<string, { blocks: Map<number, Buffer>; protected: boolean }>;
}

export class FakeStorageDriver implements StorageDriver {
  readonly family = "fake";
  readonly readsChangesOnly: boolean;
  readonly volumes = new Map<string, FakeVolume>();
  readonly exports = new Map<string, ExportInfo>();

  constructor(opts: { readsChangesOnly?: boolean; pool?: string } = {}) {
    this.readsChangesOnly = opts.readsChangesOnly ?? true;
    this.pool = opts.pool ?? "fake";
  }
  readonly pool: string;

  private vol(name: string): FakeVolume {
    const v = this.volumes.get(name);
    if (!v) throw new BaremetalError("not-found", `volume ${this.pool}/${name} does not exist`);
    return v;
  }

  private info(name: string, v: FakeVolume): VolumeInfo {
    return { name, pool: this.pool, sizeBytes: v.size, ...(v.parent ? { parent: v.parent } : {}), usedBytes: v.blocks.size * BLOCK };
  }

  async createVolume(req: { name: string; sizeBytes: number }): Promise<VolumeInfo> {
    if (this.volumes.has(req.name)) throw new BaremetalError("conflict", `volume ${req.name} exists`);
    if (!Number.isSafeInteger(req.sizeBytes) || req.sizeBytes <= 0 || req.sizeBytes % 512) throw validationError("sizeBytes", "a positive multiple of 512");
    const v: FakeVolume = { size: req.sizeBytes, blocks: new Map(), snapshots: new Map() };
    this.volumes.set(req.name, v);
    return this.info(req.name, v);
  }

  async cloneVolume(req: { name: string; from: string; sizeBytes?: number }): Promise<VolumeInfo> {
    const m = /^[^/]+\/([^@]+)@(.+)$/.exec(req.from);
    const src = m ? this.volumes.get(m[1])?.snapshots.get(m[2]) : undefined;
    if (!m || !src) throw new BaremetalError("not-found", `snapshot ${req.from} does not exist`);
    src.protected = true;
    const v: FakeVolume = { size: req.sizeBytes ?? this.vol(m[1]).size, blocks: new Map([...src.blocks].map(([k, b]) => [k, Buffer.from(b)])), parent: req.from, snapshots: new Map() };
    this.volumes.set(req.name, v);
    return this.info(req.name, v);
  }

  async getVolume(name: string): Promise<VolumeInfo | undefined> {
    const v = this.volumes.get(name);
    return v ? this.info(name, v) : undefined;
  }

  async listVolumes(filter?: { namePrefix?: string }): Promise<VolumeInfo[]> {
    return [...this.volumes].filter(([n]) => !filter?.namePrefix || n.startsWith(filter.namePrefix)).map(([n, v]) => this.info(n, v));
  }

  async resizeVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    const v = this.vol(name);
    if (sizeBytes < v.size) throw validationError("sizeBytes", "volumes only grow");
    v.size = sizeBytes;
    return this.info(name, v);
  }

  async deleteVolume(name: string): Promise<void> {
    const v = this.volumes.get(name);
    if (!v) return;
    if (this.exports.has(name)) throw new BaremetalError("conflict", `volume ${name} is exported`);
    for (const [s] of v.snapshots) {
      const clones = [...this.volumes].filter(([, o]) => o.parent === `${this.pool}/${name}@${s}`);
      if (clones.length) throw new BaremetalError("conflict", `snapshot ${name}@${s} has clones: ${clones.map(([n]) => n).join(", ")}`);
    }
    this.volumes.delete(name);
  }

  async createSnapshot(volume: string, name: string, opts?: { protect?: boolean }): Promise<SnapshotInfo> {
    const v = this.vol(volume);
    if (v.snapshots.has(name)) throw new BaremetalError("conflict", `snapshot ${volume}@${name} exists`);
    v.snapshots.set(name, { blocks: new Map([...v.blocks].map(([k, b]) => [k, Buffer.from(b)])), protected: !!opts?.protect });
    return { volume, name, protected: !!opts?.protect, children: [] };
  }

  async listSnapshots(volume: string): Promise<SnapshotInfo[]> {
    return [...this.vol(volume).snapshots].map(([name, s]) => ({ volume, name, protected: s.protected, children: [] }));
  }

  async deleteSnapshot(volume: string, name: string): Promise<void> {
    this.volumes.get(volume)?.snapshots.delete(name);
  }

  async exportVolume(req: ExportRequest): Promise<ExportInfo> {
    this.vol(req.volume);
    const had = this.exports.get(req.volume);
    if (had && had.initiatorIqn !== req.initiatorIqn) throw new BaremetalError("conflict", `volume ${req.volume} is exported to ${had.initiatorIqn}`);
    const e: ExportInfo = { volume: req.volume, portal: "127.0.0.1:3260", targetIqn: `iqn.2026-11.fake:${req.volume}`, lun: 1, initiatorIqn: req.initiatorIqn, chapUser: req.chapUser };
    this.exports.set(req.volume, e);
    return e;
  }

  async listExports(volume?: string): Promise<ExportInfo[]> {
    return [...this.exports.values()].filter((e) => !volume || e.volume === volume);
  }

  async unexportVolume(volume: string): Promise<void> {
    this.exports.delete(volume);
  }

  async path(volume: string): Promise<string> {
    this.vol(volume);
    throw new BaremetalError("validation", "the fake storage driver has no local path");
  }

  /** Test helper: writes bytes at an offset (like a node would). */
  write(volume: string, offset: number, data: Buffer): void {
    const v = this.vol(volume);
    for (let done = 0; done < data.length; ) {
      const at = offset + done;
      const index = Math.floor(at / BLOCK);
      const within = at - index * BLOCK;
      const n = Math.min(BLOCK - within, data.length - done);
      const block = v.blocks.get(index) ?? Buffer.alloc(BLOCK);
      data.copy(block, within, done, done + n);
      v.blocks.set(index, block);
      done += n;
    }
  }

  /** Test helper: the whole content (zeros where nothing was written). */
  read(volume: string, snapshot?: string): Buffer {
    const v = this.vol(volume);
    const blocks = snapshot ? v.snapshots.get(snapshot)?.blocks : v.blocks;
    if (!blocks) throw new BaremetalError("not-found", `snapshot ${volume}@${snapshot} does not exist`);
    const out = Buffer.alloc(v.size);
    for (const [i, b] of blocks) b.copy(out, i * BLOCK, 0, Math.min(BLOCK, v.size - i * BLOCK));
    return out;
  }

  async *readExtents(volume: string, opts: ReadExtentsOptions = {}): AsyncIterable<Extent> {
    const v = this.vol(volume);
    const blocks = opts.snapshot ? v.snapshots.get(opts.snapshot)?.blocks : v.blocks;
    if (!blocks) throw new BaremetalError("not-found", `snapshot ${volume}@${opts.snapshot} does not exist`);
    const since = opts.since && this.readsChangesOnly ? v.snapshots.get(opts.since)?.blocks : undefined;
    if (opts.since && this.readsChangesOnly && !since) throw new BaremetalError("not-found", `snapshot ${volume}@${opts.since} does not exist`);
    const indexes = [...new Set([...blocks.keys(), ...(since?.keys() ?? [])])].sort((a, b) => a - b);
    for (const i of indexes) {
      const now = blocks.get(i);
      const before = since?.get(i);
      if (since && ((now && before && now.equals(before)) || (!now && !before))) continue;
      const length = Math.min(BLOCK, v.size - i * BLOCK);
      if (length <= 0) continue;
      if (!now) yield { offset: i * BLOCK, length, zero: true };
      else yield { offset: i * BLOCK, data: Buffer.from(now.subarray(0, length)) };
    }
  }

  async writeExtents(volume: string, extents: AsyncIterable<Extent>): Promise<{ bytesWritten: number }> {
    let bytesWritten = 0;
    for await (const e of extents) {
      if ("data" in e) {
        this.write(volume, e.offset, e.data);
        bytesWritten += e.data.length;
      } else this.write(volume, e.offset, Buffer.alloc(e.length));
    }
    return { bytesWritten };
  }

  async close(): Promise<void> {}
}
