/**
 * The `file` storage driver (the embedded lab): volumes are sparse files in one directory,
 * exported to nodes over iSCSI by a tgtd (the Linux SCSI target framework's userspace daemon).
 *
 * Address: `file:///var/lib/baremetal/volumes` (optionally `?pool=name`; the pool's name defaults to
 * the directory's last component). One driver = one directory = one pool.
 *
 * Layout of the directory (names are checked: lowercase letters, digits, '.', '-'):
 *   <volume>.img              the volume: a sparse file of exactly its size (mode 0600)
 *   <volume>.json             sidecar, when there is something to record: the parent snapshot of a
 *                             clone (`pool/volume@snapshot`) and the export in progress or in place
 *                             (initiator, CHAP user, target name; never the secret)
 *   <volume>@<snap>.img       a snapshot: a sparse copy made read-only (mode 0444)
 *   <volume>@<snap>.json      its sidecar ({ protected })
 *   .<name>.<random>.tmp      work files; a volume, snapshot or clone appears under its final name
 *                             only complete (link(2) of a finished file, which also refuses to
 *                             overwrite, so two creators cannot both win)
 * Snapshots and clones are copies (`cp --reflink=auto --sparse=always`): copy-on-write where the
 * filesystem can reflink (btrfs, XFS), otherwise a sparse copy (holes stay holes). A snapshot of a
 * volume that a node is writing to is not crash-consistent with the node's writes: the lab takes
 * golden-image snapshots of volumes nobody has exported.
 *
 * Exports: one tgt target per volume, named `<iqnPrefix>:<volume>`, LUN 1 backed by the file
 * (backing-store type rdwr), with exactly one ACL entry, the node's initiator name (tgt checks it
 * against the name the initiator logs in with; no address ACL), and one incoming CHAP account
 * (tgt accounts are global and bound to targets; the account's name is the node's CHAP user). tgt
 * lets a target without a bound account accept logins without CHAP, and refuses every initiator
 * while a target has no ACL entry, so the ACL entry is always bound last and unbound first. The
 * CHAP secret goes to tgtd over its management socket (tgt.ts), never through a command line.
 * tgtd keeps its configuration in memory only: listExports reads it back (drift, tgtd restarts).
 * Pools that share one tgtd need distinct iqnPrefix values (tgt target names are global).
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { promisify } from "node:util";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import type { ExportInfo, ExportRequest, Extent, ReadExtentsOptions, SnapshotInfo, StorageConnection, StorageDriver, VolumeInfo } from "../kinds/storage";
import { anySignal, readFileExtents, writeFileExtents } from "./extents";
import { CHAP_SECRET_RE, CHAP_USER_RE, describeTgtExport, EXPORT_LUN, INITIATOR_RE, IQN_PREFIX_RE, Mode, Op, TgtErr, TgtError, type TgtExportInfo, TgtManagement, TgtTarget } from "./tgt";

const execFileP = promisify(execFile);

const NAME_RE = /^[a-z0-9](?:[a-z0-9.-]{0,62}[a-z0-9])?$/;
const POOL_RE = /^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,62})$/;
const SECTOR = 512;
const DEFAULT_IQN_PREFIX = "iqn.2025-01.lab.baremetal";

interface VolumeMeta {
  parent?: string;
  export?: { initiatorIqn: string; chapUser: string; targetIqn: string };
}

interface SnapshotMeta {
  protected?: boolean;
}

/** An export as tgtd has it now, with what differs from what this driver sets up. */
export type FileExportInfo = TgtExportInfo;

export interface FileStorageOptions {
  /** tgtd's management socket; default: iscsi.controlPort and $TGT_IPC_SOCKET, as tgtadm finds it. */
  tgtSocketPath?: string;
  /** Timeout of one tgtd request (default 15 s). */
  tgtTimeoutMs?: number;
}

function notFound(what: string): BaremetalError {
  return new BaremetalError("not-found", what);
}

function fsError(e: unknown, doing: string): BaremetalError {
  if (isBaremetalError(e)) return e;
  const err = e as NodeJS.ErrnoException;
  if (err.code === "ENOSPC" || err.code === "EDQUOT") {
    return new BaremetalError("backend", `${doing}: the volume directory's filesystem is full (${err.code}); free space or use another pool`, { cause: e });
  }
  if (err.code === "EFBIG") {
    return new BaremetalError("validation", `${doing}: larger than a file of the volume directory's filesystem can be (EFBIG); ask for a smaller size`, { property: "sizeGib", cause: e });
  }
  if (err.code === "EACCES" || err.code === "EPERM" || err.code === "EROFS") {
    return new BaremetalError("auth", `${doing}: not permitted (${err.code}); the provider needs write access to the volume directory`, { cause: e });
  }
  return new BaremetalError("backend", `${doing}: ${err.code ?? err.message}`, { cause: e });
}

function tgtFailure(e: unknown): BaremetalError {
  if (isBaremetalError(e)) return e;
  if (e instanceof TgtError) return new BaremetalError("backend", e.message, { cause: e });
  return new BaremetalError("internal", (e as Error)?.message ?? String(e), { cause: e });
}

function checkName(property: string, value: unknown, what = "a volume name"): string {
  if (typeof value !== "string" || !NAME_RE.test(value)) {
    throw validationError(property, `${JSON.stringify(value)} is not ${what}: use 1-64 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit`);
  }
  return value;
}

function checkSize(property: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0 || value % SECTOR !== 0) {
    throw validationError(property, `${JSON.stringify(value)} is not a volume size: give a positive whole number of bytes, a multiple of ${SECTOR} (iSCSI blocks)`);
  }
  return value;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.promises.lstat(p);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw e;
  }
}

async function readJson<T>(p: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.promises.readFile(p, "utf8")) as T;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    if (e instanceof SyntaxError) throw new BaremetalError("backend", `${p} is not valid JSON (edited by hand?): fix or remove it`);
    throw e;
  }
}

async function unlinkIfThere(p: string): Promise<void> {
  await fs.promises.unlink(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== "ENOENT") throw e;
  });
}

export class FileStorageDriver implements StorageDriver {
  readonly family = "file";
  readonly dir: string;
  readonly pool: string;
  readonly iqnPrefix: string;
  private readonly portal?: string;
  private readonly tgt?: TgtManagement;
  private readonly signal?: AbortSignal;
  /** Mutations of this driver run one at a time (tid choice, read-modify-write of tgt state). */
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(conn: StorageConnection, opts: FileStorageOptions = {}) {
    let url: URL;
    try {
      url = new URL(conn.address);
    } catch {
      throw validationError("address", `${JSON.stringify(conn.address)} is not a URL: use file:///absolute/directory`);
    }
    if (url.protocol !== "file:" || (url.host && url.host !== "localhost")) {
      throw validationError("address", `the file storage driver serves file:///absolute/directory addresses, not ${JSON.stringify(conn.address)}`);
    }
    const dir = decodeURIComponent(url.pathname).replace(/\/+$/, "");
    if (!dir.startsWith("/") || dir.includes(",") || dir.split("/").includes("..")) {
      throw validationError("address", `${JSON.stringify(dir)} must be an absolute directory path without ',' or '..' (tgtd takes it in a comma-separated list)`);
    }
    this.dir = dir;
    this.pool = url.searchParams.get("pool") ?? path.basename(dir);
    if (!POOL_RE.test(this.pool)) throw validationError("address", `pool name ${JSON.stringify(this.pool)}: use letters, digits, '.', '_' and '-' (set ?pool=name)`);
    this.signal = conn.signal;
    if (conn.iscsi) {
      const prefix = conn.iscsi.iqnPrefix ?? DEFAULT_IQN_PREFIX;
      if (!IQN_PREFIX_RE.test(prefix)) {
        throw validationError("iscsi.iqnPrefix", `${JSON.stringify(prefix)} is not an IQN prefix: use iqn.YYYY-MM.reversed.domain[:name], lowercase`);
      }
      if (!/^(?:[^\s:]+|\[[0-9a-fA-F:.]+\]):\d{1,5}$/.test(conn.iscsi.portal)) {
        throw validationError("iscsi.portal", `${JSON.stringify(conn.iscsi.portal)} is not host:port`);
      }
      this.portal = conn.iscsi.portal;
      this.iqnPrefix = prefix;
      this.tgt = new TgtManagement({ socketPath: opts.tgtSocketPath, controlPort: conn.iscsi.controlPort, timeoutMs: opts.tgtTimeoutMs });
    } else {
      this.iqnPrefix = DEFAULT_IQN_PREFIX;
    }
  }

  // ---- files ---------------------------------------------------------------------------------

  private volFile(name: string): string {
    return path.join(this.dir, `${name}.img`);
  }
  private volMeta(name: string): string {
    return path.join(this.dir, `${name}.json`);
  }
  private snapFile(volume: string, snap: string): string {
    return path.join(this.dir, `${volume}@${snap}.img`);
  }
  private snapMeta(volume: string, snap: string): string {
    return path.join(this.dir, `${volume}@${snap}.json`);
  }
  private tmpFile(name: string): string {
    return path.join(this.dir, `.${name}.${randomBytes(6).toString("hex")}.tmp`);
  }
  targetIqn(volume: string): string {
    return `${this.iqnPrefix}:${volume}`;
  }

  private async writeJson(file: string, value: object): Promise<void> {
    const tmp = this.tmpFile(path.basename(file));
    await fs.promises.writeFile(tmp, `${JSON.stringify(value)}\n`, { mode: 0o600 });
    await fs.promises.rename(tmp, file);
  }

  private async ensureDir(): Promise<void> {
    await fs.promises.mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  /** Publishes a finished work file under its final name; `conflict` when the name is taken. */
  private async publish(tmp: string, final: string, what: string): Promise<void> {
    try {
      await fs.promises.link(tmp, final);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST") throw new BaremetalError("conflict", `${what} already exists`);
      throw e;
    } finally {
      await unlinkIfThere(tmp);
    }
  }

  /** A sparse (or reflinked) copy of `src` at a new work file; returns the work file. */
  private async copy(src: string, name: string): Promise<string> {
    const tmp = this.tmpFile(name);
    try {
      await execFileP("cp", ["--reflink=auto", "--sparse=always", "--", src, tmp], { signal: this.signal });
    } catch (e) {
      await unlinkIfThere(tmp);
      const stderr = String((e as { stderr?: string }).stderr ?? "");
      if (/No space left/.test(stderr)) throw fsError(Object.assign(new Error(stderr), { code: "ENOSPC" }), `copying ${path.basename(src)}`);
      throw new BaremetalError("backend", `copying ${path.basename(src)} failed: ${stderr.trim() || (e as Error).message}`, { cause: e });
    }
    return tmp;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new BaremetalError("internal", "the file storage driver was closed"));
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async info(name: string): Promise<VolumeInfo | undefined> {
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(this.volFile(name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw fsError(e, `reading volume ${name}`);
    }
    const meta = (await readJson<VolumeMeta>(this.volMeta(name))) ?? {};
    return {
      name,
      pool: this.pool,
      sizeBytes: st.size,
      ...(meta.parent ? { parent: meta.parent } : {}),
      usedBytes: st.blocks * 512,
    };
  }

  /** `pool/volume@snapshot` or `volume@snapshot` (this pool). */
  private parseSnapshotRef(property: string, ref: unknown): { volume: string; snap: string } {
    const m = typeof ref === "string" ? /^(?:([^/@]+)\/)?([^/@]+)@([^/@]+)$/.exec(ref) : null;
    if (!m) throw validationError(property, `${JSON.stringify(ref)} is not a snapshot reference: use pool/volume@snapshot`);
    if (m[1] !== undefined && m[1] !== this.pool) {
      throw validationError(property, `snapshot ${ref} is in pool ${m[1]}, but this file pool is ${this.pool}: clone within the pool`);
    }
    return { volume: checkName(property, m[2]), snap: checkName(property, m[3], "a snapshot name") };
  }

  /** Volumes whose parent is this snapshot, as `pool/volume`. */
  private async children(volume: string, snap: string): Promise<string[]> {
    const ref = `${this.pool}/${volume}@${snap}`;
    const out: string[] = [];
    for (const v of await this.volumeNames()) {
      const meta = await readJson<VolumeMeta>(this.volMeta(v));
      if (meta?.parent === ref) out.push(`${this.pool}/${v}`);
    }
    return out.sort();
  }

  private async entries(): Promise<string[]> {
    try {
      return await fs.promises.readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw fsError(e, `listing ${this.dir}`);
    }
  }

  private async volumeNames(): Promise<string[]> {
    const out: string[] = [];
    for (const f of await this.entries()) {
      const m = /^([^@.][^@]*)\.img$/.exec(f);
      if (m && NAME_RE.test(m[1])) out.push(m[1]);
    }
    return out.sort();
  }

  private async snapshotNames(volume: string): Promise<string[]> {
    const out: string[] = [];
    for (const f of await this.entries()) {
      if (!f.startsWith(`${volume}@`) || !f.endsWith(".img")) continue;
      const snap = f.slice(volume.length + 1, -4);
      if (NAME_RE.test(snap)) out.push(snap);
    }
    return out.sort();
  }

  // ---- volumes -------------------------------------------------------------------------------

  async createVolume(req: { name: string; sizeBytes: number }): Promise<VolumeInfo> {
    const name = checkName("name", req.name);
    const size = checkSize("sizeBytes", req.sizeBytes);
    return this.serial(async () => {
      try {
        await this.ensureDir();
        if (await exists(this.volFile(name))) throw new BaremetalError("conflict", `volume ${this.pool}/${name} already exists`);
        const tmp = this.tmpFile(name);
        const fh = await fs.promises.open(tmp, "wx", 0o600);
        try {
          await fh.truncate(size);
        } finally {
          await fh.close();
        }
        await unlinkIfThere(this.volMeta(name)); // a sidecar left by an earlier volume of that name
        await this.publish(tmp, this.volFile(name), `volume ${this.pool}/${name}`);
        return (await this.info(name))!;
      } catch (e) {
        throw fsError(e, `creating volume ${name}`);
      }
    });
  }

  async cloneVolume(req: { name: string; from: string; sizeBytes?: number }): Promise<VolumeInfo> {
    const name = checkName("name", req.name);
    const src = this.parseSnapshotRef("from", req.from);
    const size = req.sizeBytes === undefined ? undefined : checkSize("sizeBytes", req.sizeBytes);
    return this.serial(async () => {
      try {
        const snapFile = this.snapFile(src.volume, src.snap);
        let snapSize: number;
        try {
          snapSize = (await fs.promises.stat(snapFile)).size;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === "ENOENT") throw notFound(`snapshot ${this.pool}/${src.volume}@${src.snap} does not exist`);
          throw e;
        }
        if (size !== undefined && size < snapSize) {
          throw validationError("sizeBytes", `a clone cannot be smaller than its snapshot (${snapSize} bytes); give at least that or leave it out`);
        }
        if (await exists(this.volFile(name))) throw new BaremetalError("conflict", `volume ${this.pool}/${name} already exists`);
        // A snapshot with clones is protected: deleteSnapshot refuses while it has clones.
        const sm = (await readJson<SnapshotMeta>(this.snapMeta(src.volume, src.snap))) ?? {};
        if (!sm.protected) await this.writeJson(this.snapMeta(src.volume, src.snap), { ...sm, protected: true });
        const tmp = await this.copy(snapFile, name);
        try {
          await fs.promises.chmod(tmp, 0o600);
          if (size !== undefined && size > snapSize) await fs.promises.truncate(tmp, size);
          await this.writeJson(this.volMeta(name), { parent: `${this.pool}/${src.volume}@${src.snap}` } satisfies VolumeMeta);
          await this.publish(tmp, this.volFile(name), `volume ${this.pool}/${name}`);
        } catch (e) {
          await unlinkIfThere(tmp);
          throw e;
        }
        return (await this.info(name))!;
      } catch (e) {
        throw fsError(e, `cloning ${req.from} to ${name}`);
      }
    });
  }

  async getVolume(name: string): Promise<VolumeInfo | undefined> {
    return this.info(checkName("name", name));
  }

  async listVolumes(filter?: { namePrefix?: string }): Promise<VolumeInfo[]> {
    const out: VolumeInfo[] = [];
    for (const n of await this.volumeNames()) {
      if (filter?.namePrefix && !n.startsWith(filter.namePrefix)) continue;
      const v = await this.info(n);
      if (v) out.push(v);
    }
    return out;
  }

  async resizeVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    checkName("name", name);
    const size = checkSize("sizeBytes", sizeBytes);
    return this.serial(async () => {
      const v = await this.info(name);
      if (!v) throw notFound(`volume ${this.pool}/${name} does not exist`);
      if (size < v.sizeBytes) throw validationError("sizeBytes", `volumes only grow: ${name} has ${v.sizeBytes} bytes, ${size} is smaller`);
      if (size === v.sizeBytes) return v;
      const exp = await this.exportsOf(name, { required: false });
      if (exp.length) {
        throw new BaremetalError(
          "conflict",
          `volume ${this.pool}/${name} is exported (target ${exp[0].name}); tgt keeps the size it read at export, so unexport it, resize, and export again`,
        );
      }
      try {
        await fs.promises.truncate(this.volFile(name), size);
      } catch (e) {
        throw fsError(e, `resizing volume ${name}`);
      }
      return (await this.info(name))!;
    });
  }

  async deleteVolume(name: string): Promise<void> {
    checkName("name", name);
    return this.serial(async () => {
      const exp = await this.exportsOf(name, { required: false });
      if (exp.length) {
        const who = exp[0].acl.filter((a) => INITIATOR_RE.test(a)).join(", ") || "no initiator";
        throw new BaremetalError("conflict", `volume ${this.pool}/${name} is exported to ${who} (target ${exp[0].name}); unexport it first`);
      }
      const meta = await readJson<VolumeMeta>(this.volMeta(name));
      if (!this.tgt) {
        if (meta?.export) {
          throw new BaremetalError(
            "conflict",
            `volume ${this.pool}/${name} was exported to ${meta.export.initiatorIqn} and no iSCSI target is configured to check or undo it; configure iscsi and unexport it first`,
          );
        }
      }
      const snaps = await this.snapshotNames(name);
      const busy: string[] = [];
      for (const s of snaps) {
        const c = await this.children(name, s);
        if (c.length) busy.push(`${name}@${s} (clones: ${c.join(", ")})`);
      }
      if (busy.length) throw new BaremetalError("conflict", `volume ${this.pool}/${name} has snapshots with clones: ${busy.join("; ")}; delete the clones first`);
      // Recorded as exported but tgtd has no target for it (removed by hand, tgtd restarted): the
      // CHAP account may still be there.
      if (this.tgt && meta?.export) await this.forgetAccounts([meta.export.chapUser], await this.targets(), new Set());
      try {
        for (const s of snaps) {
          await unlinkIfThere(this.snapFile(name, s));
          await unlinkIfThere(this.snapMeta(name, s));
        }
        await unlinkIfThere(this.volFile(name));
        await unlinkIfThere(this.volMeta(name));
      } catch (e) {
        throw fsError(e, `deleting volume ${name}`);
      }
    });
  }

  async path(volume: string): Promise<string> {
    checkName("volume", volume);
    const p = this.volFile(volume);
    if (!(await exists(p))) throw notFound(`volume ${this.pool}/${volume} does not exist`);
    return p;
  }

  // ---- extents (backups) ---------------------------------------------------------------------

  /** A sparse file has no record of changes: `since` is ignored (extents.ts). */
  readonly readsChangesOnly = false;

  /** The volume's (or a snapshot's) non-zero blocks as extents (extents.ts). */
  async *readExtents(volume: string, opts: ReadExtentsOptions = {}): AsyncGenerator<Extent> {
    checkName("volume", volume);
    if (opts.snapshot !== undefined) checkName("snapshot", opts.snapshot, "a snapshot name");
    const file = opts.snapshot !== undefined ? this.snapFile(volume, opts.snapshot) : this.volFile(volume);
    const what = `${opts.snapshot !== undefined ? "snapshot" : "volume"} ${this.pool}/${volume}${opts.snapshot !== undefined ? `@${opts.snapshot}` : ""}`;
    yield* readFileExtents({ file, what }, { ...opts, signal: anySignal(opts.signal, this.signal) });
  }

  /** Writes extents into an existing volume at their offsets, then fsync (extents.ts). */
  async writeExtents(volume: string, extents: AsyncIterable<Extent>, signal?: AbortSignal): Promise<{ bytesWritten: number }> {
    checkName("volume", volume);
    return writeFileExtents({ file: this.volFile(volume), what: `volume ${this.pool}/${volume}` }, extents, anySignal(signal, this.signal));
  }

  // ---- snapshots -----------------------------------------------------------------------------

  async createSnapshot(volume: string, name: string, opts?: { protect?: boolean }): Promise<SnapshotInfo> {
    checkName("volume", volume);
    checkName("name", name, "a snapshot name");
    return this.serial(async () => {
      try {
        if (!(await exists(this.volFile(volume)))) throw notFound(`volume ${this.pool}/${volume} does not exist`);
        if (await exists(this.snapFile(volume, name))) throw new BaremetalError("conflict", `snapshot ${this.pool}/${volume}@${name} already exists`);
        const tmp = await this.copy(this.volFile(volume), `${volume}@${name}`);
        try {
          await fs.promises.chmod(tmp, 0o444);
          await this.writeJson(this.snapMeta(volume, name), { protected: !!opts?.protect } satisfies SnapshotMeta);
          await this.publish(tmp, this.snapFile(volume, name), `snapshot ${this.pool}/${volume}@${name}`);
        } catch (e) {
          await unlinkIfThere(tmp);
          throw e;
        }
        return { volume, name, protected: !!opts?.protect, children: [] };
      } catch (e) {
        throw fsError(e, `snapshotting ${volume}`);
      }
    });
  }

  async listSnapshots(volume: string): Promise<SnapshotInfo[]> {
    checkName("volume", volume);
    const out: SnapshotInfo[] = [];
    for (const s of await this.snapshotNames(volume)) {
      const meta = (await readJson<SnapshotMeta>(this.snapMeta(volume, s))) ?? {};
      out.push({ volume, name: s, protected: !!meta.protected, children: await this.children(volume, s) });
    }
    return out;
  }

  async deleteSnapshot(volume: string, name: string): Promise<void> {
    checkName("volume", volume);
    checkName("name", name, "a snapshot name");
    return this.serial(async () => {
      const c = await this.children(volume, name);
      if (c.length) throw new BaremetalError("conflict", `snapshot ${this.pool}/${volume}@${name} has clones (${c.join(", ")}); delete them first`);
      try {
        await unlinkIfThere(this.snapFile(volume, name));
        await unlinkIfThere(this.snapMeta(volume, name));
      } catch (e) {
        throw fsError(e, `deleting snapshot ${volume}@${name}`);
      }
    });
  }

  // ---- exports -------------------------------------------------------------------------------

  private requireTgt(): TgtManagement {
    if (!this.tgt) throw validationError("iscsi", "no iSCSI target is configured for this file pool: set iscsi.portal (and iscsi.controlPort if tgtd runs with -C)");
    return this.tgt;
  }

  private async targets(): Promise<TgtTarget[]> {
    try {
      return await this.requireTgt().showTargets(this.signal);
    } catch (e) {
      throw tgtFailure(e);
    }
  }

  /** Targets that serve this volume: by backing file, or by our name for it with no other file. */
  private async exportsOf(name: string, opts: { required: boolean; targets?: TgtTarget[] }): Promise<TgtTarget[]> {
    if (!this.tgt && !opts.required) return [];
    const file = this.volFile(name);
    const iqn = this.targetIqn(name);
    return (opts.targets ?? (await this.targets())).filter(
      (t) => t.luns.some((l) => l.backingStorePath === file) || (t.name === iqn && !t.luns.some((l) => l.backingStorePath && l.backingStorePath !== file)),
    );
  }

  private async call(what: string, req: Omit<Parameters<TgtManagement["request"]>[0], "what">, tolerate: number[] = []): Promise<void> {
    try {
      await this.requireTgt().request({ ...req, what }, this.signal);
    } catch (e) {
      if (e instanceof TgtError && tolerate.includes(e.tgtErr)) return;
      throw tgtFailure(e);
    }
  }

  /** Is the configured portal one tgtd listens on? (Catches a wrong port or a tgtd without the iscsi portal.) */
  private async checkPortal(): Promise<void> {
    let portals: string[];
    try {
      portals = await this.requireTgt().showPortals(this.signal);
    } catch (e) {
      throw tgtFailure(e);
    }
    const want = this.portal!;
    const port = want.slice(want.lastIndexOf(":") + 1);
    const host = want.slice(0, want.lastIndexOf(":"));
    const literal = /^[\d.]+$|^\[/.test(host);
    const ok = portals.some((p) => {
      const pPort = p.slice(p.lastIndexOf(":") + 1);
      const pHost = p.slice(0, p.lastIndexOf(":"));
      if (pPort !== port) return false;
      return !literal || pHost === host || pHost === "0.0.0.0" || pHost === "[::]" || pHost === "::";
    });
    if (!ok) {
      throw validationError("iscsi.portal", `tgtd does not listen on ${want} (its portals: ${portals.join(", ") || "none"}); fix iscsi.portal or tgtd's --iscsi portal=`);
    }
  }

  async exportVolume(req: ExportRequest): Promise<ExportInfo> {
    const name = checkName("volume", req.volume);
    if (typeof req.initiatorIqn !== "string" || !INITIATOR_RE.test(req.initiatorIqn)) {
      throw validationError("initiatorIqn", `${JSON.stringify(req.initiatorIqn)} is not an iSCSI initiator name: use iqn.YYYY-MM.reversed.domain:name (lowercase), eui.<16 hex> or naa.<16 or 32 hex>`);
    }
    if (typeof req.chapUser !== "string" || !CHAP_USER_RE.test(req.chapUser)) {
      throw validationError("chapUser", `${JSON.stringify(req.chapUser)} is not a CHAP user name: 1-64 letters, digits, '.', '_', ':', '@', '-'`);
    }
    if (typeof req.chapSecret !== "string" || !CHAP_SECRET_RE.test(req.chapSecret)) {
      throw validationError("chapSecret", "the CHAP secret must be 12 to 255 printable ASCII characters without spaces or commas (RFC 7143 asks for at least 96 bits)");
    }
    const { initiatorIqn, chapUser, chapSecret } = req;
    this.requireTgt();
    return this.serial(async () => {
      if (!(await exists(this.volFile(name)))) throw notFound(`volume ${this.pool}/${name} does not exist`);
      await this.checkPortal();
      const iqn = this.targetIqn(name);
      let targets = await this.targets();
      const mine = await this.exportsOf(name, { required: true, targets });
      if (mine.length > 1) throw new BaremetalError("conflict", `volume ${this.pool}/${name} is served by ${mine.length} targets (${mine.map((t) => t.name).join(", ")}); remove the extra ones with tgtadm`);
      let target = mine[0];
      if (target) {
        const others = target.acl.filter((a) => INITIATOR_RE.test(a) && a !== initiatorIqn);
        if (others.length) {
          throw new BaremetalError("conflict", `volume ${this.pool}/${name} is already exported to ${others.join(", ")} (target ${target.name}); unexport it before exporting it to ${initiatorIqn}`);
        }
        if (target.name !== iqn) {
          throw new BaremetalError("conflict", `volume ${this.pool}/${name} is served by target ${target.name}, not by ${iqn} (made by hand?); remove it with tgtadm first`);
        }
      } else {
        const sameName = targets.find((t) => t.name === iqn);
        if (sameName) {
          throw new BaremetalError("conflict", `target name ${iqn} is taken by tid ${sameName.tid} serving another file; give pools that share a tgtd distinct iscsi.iqnPrefix values`);
        }
      }
      // The CHAP user: an account of that name bound to another target belongs to another export.
      const holder = targets.find((t) => t !== target && (t.incomingAccounts.includes(chapUser) || t.outgoingAccount === chapUser));
      if (holder) throw new BaremetalError("conflict", `CHAP user ${chapUser} is already used by target ${holder.name}; give each export its own CHAP user`);

      // Recorded before tgtd is touched, so that an interrupted export can be found and undone.
      const metaFile = this.volMeta(name);
      const meta = (await readJson<VolumeMeta>(metaFile)) ?? {};
      const previousUser = meta.export?.chapUser;
      await this.writeJson(metaFile, { ...meta, export: { initiatorIqn, chapUser, targetIqn: iqn } } satisfies VolumeMeta);

      let createdTid: number | undefined;
      try {
        if (!target) {
          for (let attempt = 0; ; attempt++) {
            const tid = Math.max(0, ...targets.map((t) => t.tid)) + 1;
            try {
              await this.requireTgt().request({ mode: Mode.Target, op: Op.New, tid, params: [`targetname=${iqn}`], what: `a new target ${iqn}` }, this.signal);
              createdTid = tid;
              break;
            } catch (e) {
              // Another tgtadm took that tid (or our name) meanwhile: look again.
              if (!(e instanceof TgtError && e.tgtErr === TgtErr.TargetExist) || attempt >= 4) throw tgtFailure(e);
              targets = await this.targets();
              if (targets.some((t) => t.name === iqn)) throw new BaremetalError("conflict", `target ${iqn} was created by someone else meanwhile; retry`);
            }
          }
          await this.call(`LUN ${EXPORT_LUN} of ${iqn}`, {
            mode: Mode.Device,
            op: Op.New,
            tid: createdTid,
            lun: BigInt(EXPORT_LUN),
            params: [`path=${this.volFile(name)}`, "bstype=rdwr"],
          });
          target = (await this.targets()).find((t) => t.tid === createdTid)!;
        } else {
          // Re-export to the same node (new secret, repair): no new logins while the account changes.
          for (const a of target.acl) {
            await this.call(`removing an ACL entry of ${iqn}`, { mode: Mode.Target, op: Op.Unbind, tid: target.tid, params: [INITIATOR_RE.test(a) ? `initiator-name=${a}` : `initiator-address=${a}`] }, [TgtErr.AclNoExist, TgtErr.NoBinding]);
          }
          if (!target.luns.some((l) => l.lun === EXPORT_LUN && l.backingStorePath === this.volFile(name))) {
            await this.call(`LUN ${EXPORT_LUN} of ${iqn}`, { mode: Mode.Device, op: Op.New, tid: target.tid, lun: BigInt(EXPORT_LUN), params: [`path=${this.volFile(name)}`, "bstype=rdwr"] });
          }
          for (const a of target.incomingAccounts) {
            await this.call(`unbinding an account from ${iqn}`, { mode: Mode.Account, op: Op.Unbind, tid: target.tid, params: [`user=${a}`] }, [TgtErr.NoUser, TgtErr.NoBinding]);
          }
        }
        const tid = target.tid;
        // A fresh account with this secret (tgt cannot change a password in place).
        await this.call(`removing a stale CHAP account`, { mode: Mode.Account, op: Op.Delete, params: [`user=${chapUser}`] }, [TgtErr.NoUser]);
        if (previousUser && previousUser !== chapUser && !targets.some((t) => t.tid !== tid && t.incomingAccounts.includes(previousUser))) {
          await this.call(`removing the previous CHAP account`, { mode: Mode.Account, op: Op.Delete, params: [`user=${previousUser}`] }, [TgtErr.NoUser]);
        }
        await this.call(`a CHAP account for ${iqn}`, { mode: Mode.Account, op: Op.New, params: [`user=${chapUser}`, `password=${chapSecret}`] });
        await this.call(`binding the CHAP account to ${iqn}`, { mode: Mode.Account, op: Op.Bind, tid, acDir: 0, params: [`user=${chapUser}`] });
        // Last: until now the ACL was empty, and tgt refuses every initiator of a target without one.
        await this.call(`the ACL entry of ${iqn}`, { mode: Mode.Target, op: Op.Bind, tid, params: [`initiator-name=${initiatorIqn}`] });
      } catch (e) {
        if (createdTid !== undefined) {
          await this.call("undoing a half-made target", { mode: Mode.Target, op: Op.Delete, tid: createdTid, force: true }, [TgtErr.NoTarget]).catch(() => undefined);
          await this.call("undoing a half-made account", { mode: Mode.Account, op: Op.Delete, params: [`user=${chapUser}`] }, [TgtErr.NoUser]).catch(() => undefined);
          await this.writeJson(metaFile, { ...meta, export: undefined }).catch(() => undefined);
        }
        throw e;
      }
      return { volume: name, portal: this.portal!, targetIqn: iqn, lun: EXPORT_LUN, initiatorIqn, chapUser };
    });
  }

  async listExports(volume?: string): Promise<FileExportInfo[]> {
    if (volume !== undefined) checkName("volume", volume);
    const targets = await this.targets();
    const names = volume !== undefined ? [volume] : await this.volumeNames();
    const out: FileExportInfo[] = [];
    for (const name of names) {
      for (const t of await this.exportsOf(name, { required: true, targets })) {
        out.push(this.describe(name, t));
      }
    }
    return out;
  }

  private describe(name: string, t: TgtTarget): FileExportInfo {
    return describeTgtExport(t, { volume: name, targetIqn: this.targetIqn(name), backingPath: this.volFile(name), backingType: "rdwr", portal: this.portal });
  }

  /** Deletes CHAP accounts, but never one that a target other than `gone` still uses. */
  private async forgetAccounts(accounts: string[], targets: TgtTarget[], gone: Set<number>): Promise<void> {
    for (const a of accounts) {
      if (targets.some((t) => !gone.has(t.tid) && (t.incomingAccounts.includes(a) || t.outgoingAccount === a))) continue;
      await this.call(`deleting CHAP account ${a}`, { mode: Mode.Account, op: Op.Delete, params: [`user=${a}`] }, [TgtErr.NoUser]);
    }
  }

  async unexportVolume(volume: string): Promise<void> {
    const name = checkName("volume", volume);
    this.requireTgt();
    return this.serial(async () => {
      const targets = await this.targets();
      const mine = await this.exportsOf(name, { required: true, targets });
      const meta = (await readJson<VolumeMeta>(this.volMeta(name))) ?? {};
      const accounts = new Set<string>(mine.flatMap((t) => t.incomingAccounts));
      if (meta.export?.chapUser) accounts.add(meta.export.chapUser);
      for (const t of mine) {
        // Whole target at once (ACL, LUNs, account bindings); force: sessions logged in are cut off.
        await this.call(`deleting target ${t.name}`, { mode: Mode.Target, op: Op.Delete, tid: t.tid, force: true }, [TgtErr.NoTarget]);
      }
      await this.forgetAccounts([...accounts], targets, new Set(mine.map((t) => t.tid)));
      if (meta.export) {
        const { export: _done, ...rest } = meta;
        if (Object.keys(rest).length) await this.writeJson(this.volMeta(name), rest);
        else await unlinkIfThere(this.volMeta(name));
      }
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.chain.catch(() => undefined);
  }
}
