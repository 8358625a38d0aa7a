/**
 * The `ceph` storage driver: volumes are RBD images in one pool of a Ceph cluster, managed with
 * Ceph's own `rbd` CLI as one restricted cephx client (rbd.ts: the key stays in a 0600 file, every
 * read is `--format json`), and exported to nodes over iSCSI by a tgtd with its rbd backing store
 * (Debian's `tgt-rbd`: tgtd opens the image through librbd, no kernel RBD or NBD involved).
 *
 * Address: `ceph://MON_HOST[:PORT]/POOL?id=CLIENT` (rbd.ts); `key` is the client's cephx secret.
 * The client needs `mon 'profile rbd' osd 'profile rbd pool=POOL'` and nothing more.
 *
 * - Images are format 2 with layering, exclusive-lock, object-map, fast-diff and deep-flatten
 *   (`rbd du` is then quick, and clones are copy-on-write); sizes are exact byte counts, multiples
 *   of 512. usedBytes is what `rbd du` counts for the image and its snapshots together (a clone's
 *   shared parent data is not counted: a fresh clone uses 0).
 * - Golden images: a snapshot is protected before it is cloned (`rbd snap protect`), and a
 *   snapshot with clones cannot be removed (a `conflict` naming them, from `rbd children`).
 * - deleteVolume purges the volume's snapshots (unprotecting them) unless one has clones, refuses
 *   while tgtd exports it or anyone has it open (`rbd status` watchers), and is idempotent.
 * - Exports: one tgt target per volume, `<iqnPrefix>:<volume>` (default prefix
 *   `iqn.2025-01.lab.baremetal:ceph.<pool>`), LUN 1 with backing-store type rbd, path
 *   `POOL/VOLUME`, one ACL entry (the node's initiator name) and one incoming CHAP account, in the
 *   order the file driver uses (ACL bound last, unbound first). tgtd reads the cephx key from a
 *   conf+keyring written to a private directory for the one LUN creation and removed right after
 *   (bs_rbd connects to the cluster when the LUN is made and keeps the key in memory). CHAP
 *   secrets go over tgtd's management socket (../storage-file/tgt.ts), never a command line.
 * - path(): an `rbd:POOL/VOLUME:id=CLIENT:conf=FILE` spec (qemu-img/qemu-io understand it; the
 *   conf names the keyring), valid until close(). For LUKS2 at the source: luksHeader()
 *   (header.ts: cryptsetup on a local copy of the header, written back with `rbd import-diff`),
 *   and luks.ts (`rbd encryption format`, reading the header back for cryptsetup).
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import type { ExportInfo, ExportRequest, Extent, HeaderAccess, ReadExtentsOptions, SnapshotInfo, StorageConnection, StorageDriver, VolumeInfo } from "../kinds/storage";
import { anySignal } from "../storage-file/extents";
import { CHAP_SECRET_RE, CHAP_USER_RE, describeTgtExport, EXPORT_LUN, INITIATOR_RE, IQN_PREFIX_RE, Mode, Op, TgtErr, TgtError, type TgtExportInfo, TgtManagement, type TgtTarget } from "../storage-file/tgt";
import { readCephExtents, writeCephExtents } from "./extents";
import { openHeader } from "./header";
import { asBaremetal, checkCephKey, parseCephAddress, RbdRunner, type RbdRunnerOptions } from "./rbd";

const NAME_RE = /^[a-z0-9](?:[a-z0-9.-]{0,62}[a-z0-9])?$/;
const SECTOR = 512;
export const IMAGE_FEATURES = "layering,exclusive-lock,object-map,fast-diff,deep-flatten";

export interface CephStorageOptions extends RbdRunnerOptions {
  /** tgtd's management socket (default from iscsi.controlPort and $TGT_IPC_SOCKET, as tgtadm finds it). */
  tgtSocketPath?: string;
  tgtTimeoutMs?: number;
}

/** An export as tgtd has it now, with what differs from what this driver sets up. */
export type CephExportInfo = TgtExportInfo;

interface RbdInfo {
  name: string;
  size: number;
  features?: string[];
  parent?: { pool: string; pool_namespace?: string; image: string; snapshot: string };
}
interface RbdDu {
  images: { name: string; snapshot?: string; provisioned_size: number; used_size: number }[];
}
interface RbdLsEntry {
  image: string;
  size: number;
  snapshot?: string;
  parent?: { pool: string; pool_namespace?: string; image: string; snapshot: string };
}
interface RbdSnap {
  id: number;
  name: string;
  size: number;
  protected: string | boolean;
}
interface RbdChild {
  pool: string;
  pool_namespace?: string;
  image: string;
  trash?: boolean;
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

function tgtFailure(e: unknown): BaremetalError {
  if (isBaremetalError(e)) return e;
  if (e instanceof TgtError) return new BaremetalError("backend", e.message, { cause: e });
  return new BaremetalError("internal", (e as Error)?.message ?? String(e), { cause: e });
}

const isProtected = (s: RbdSnap) => s.protected === true || s.protected === "true";
const childName = (c: RbdChild) => `${c.pool}/${c.pool_namespace ? `${c.pool_namespace}/` : ""}${c.image}${c.trash ? " (in the trash)" : ""}`;

export class CephStorageDriver implements StorageDriver {
  readonly family = "ceph";
  readonly pool: string;
  readonly clientId: string;
  readonly iqnPrefix: string;
  readonly rbd: RbdRunner;
  private readonly portal?: string;
  private readonly tgt?: TgtManagement;
  private readonly signal?: AbortSignal;
  /** Exports run one at a time (tid choice, read-modify-write of tgt state). */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(conn: StorageConnection, opts: CephStorageOptions = {}) {
    const address = parseCephAddress(conn.address);
    const key = checkCephKey(conn.key);
    this.pool = address.pool;
    this.clientId = address.clientId;
    this.rbd = new RbdRunner(address, key, opts);
    this.signal = conn.signal;
    const defaultPrefix = `iqn.2025-01.lab.baremetal:ceph.${this.pool.toLowerCase().replace(/[^a-z0-9.-]/g, "-")}`;
    if (conn.iscsi) {
      const prefix = conn.iscsi.iqnPrefix ?? defaultPrefix;
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
      this.iqnPrefix = defaultPrefix;
    }
  }

  private spec(volume: string, snap?: string): string {
    return `${this.pool}/${volume}${snap !== undefined ? `@${snap}` : ""}`;
  }

  targetIqn(volume: string): string {
    return `${this.iqnPrefix}:${volume}`;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** `pool/volume@snapshot` or `volume@snapshot` (this pool). */
  private parseSnapshotRef(property: string, ref: unknown): { pool: string; volume: string; snap: string } {
    const m = typeof ref === "string" ? /^(?:([A-Za-z0-9_][A-Za-z0-9._-]{0,62})\/)?([^/@]+)@([^/@]+)$/.exec(ref) : null;
    if (!m) throw validationError(property, `${JSON.stringify(ref)} is not a snapshot: use pool/volume@snapshot`);
    return { pool: m[1] ?? this.pool, volume: checkName(property, m[2]), snap: checkName(property, m[3], "a snapshot name") };
  }

  // ---- volumes -------------------------------------------------------------------------------

  private async info(name: string): Promise<VolumeInfo | undefined> {
    let info: RbdInfo;
    try {
      info = await this.rbd.json<RbdInfo>(["info", this.spec(name)], `reading volume ${this.spec(name)}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") return undefined;
      throw e;
    }
    let used: number | undefined;
    try {
      const du = await this.rbd.json<RbdDu>(["du", this.spec(name)], `measuring volume ${this.spec(name)}`, this.signal);
      // `rbd du` reports each snapshot's share apart from the head's: the volume uses their sum.
      const mine = du.images.filter((i) => i.name === name);
      if (mine.length) used = mine.reduce((sum, i) => sum + i.used_size, 0);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") return undefined;
      throw e;
    }
    return {
      name,
      pool: this.pool,
      sizeBytes: info.size,
      ...(info.parent ? { parent: `${info.parent.pool}/${info.parent.image}@${info.parent.snapshot}` } : {}),
      ...(used !== undefined ? { usedBytes: used } : {}),
    };
  }

  async createVolume(req: { name: string; sizeBytes: number }): Promise<VolumeInfo> {
    const name = checkName("name", req.name);
    const size = checkSize("sizeBytes", req.sizeBytes);
    try {
      await this.rbd.run(["create", "--no-progress", "--size", `${size}B`, "--image-feature", IMAGE_FEATURES, this.spec(name)], `creating volume ${this.spec(name)}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "conflict") throw new BaremetalError("conflict", `volume ${this.spec(name)} already exists`, { cause: e });
      throw e;
    }
    const v = await this.info(name);
    if (!v) throw new BaremetalError("backend", `volume ${this.spec(name)} was created but is gone again (deleted meanwhile?)`);
    return v;
  }

  async cloneVolume(req: { name: string; from: string; sizeBytes?: number }): Promise<VolumeInfo> {
    const name = checkName("name", req.name);
    const src = this.parseSnapshotRef("from", req.from);
    const size = req.sizeBytes === undefined ? undefined : checkSize("sizeBytes", req.sizeBytes);
    const srcSpec = `${src.pool}/${src.volume}@${src.snap}`;
    const snaps = await this.rbd.json<RbdSnap[]>(["snap", "ls", `${src.pool}/${src.volume}`], `reading the snapshots of ${src.pool}/${src.volume}`, this.signal).catch((e) => {
      if (isBaremetalError(e) && e.code === "not-found") throw new BaremetalError("not-found", `volume ${src.pool}/${src.volume} does not exist (clone source ${srcSpec})`, { cause: e });
      throw e;
    });
    const snap = snaps.find((s) => s.name === src.snap);
    if (!snap) throw new BaremetalError("not-found", `snapshot ${srcSpec} does not exist`);
    if (size !== undefined && size < snap.size) {
      throw validationError("sizeBytes", `a clone cannot be smaller than its snapshot (${snap.size} bytes); give at least that or leave it out`);
    }
    // A golden image: protected before its first clone, so that it cannot be removed under them.
    if (!isProtected(snap)) {
      await this.rbd.run(["snap", "protect", srcSpec], `protecting snapshot ${srcSpec}`, this.signal).catch((e) => {
        if (isBaremetalError(e) && e.code === "conflict") return; // protected meanwhile
        throw e;
      });
    }
    try {
      await this.rbd.run(["clone", "--image-feature", IMAGE_FEATURES, srcSpec, this.spec(name)], `cloning ${srcSpec} to ${this.spec(name)}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "conflict") throw new BaremetalError("conflict", `volume ${this.spec(name)} already exists`, { cause: e });
      throw e;
    }
    if (size !== undefined && size > snap.size) {
      try {
        await this.rbd.run(["resize", "--no-progress", "--size", `${size}B`, this.spec(name)], `growing clone ${this.spec(name)}`, this.signal);
      } catch (e) {
        const undone = await this.rbd.run(["rm", "--no-progress", this.spec(name)], `removing the half-made clone ${this.spec(name)}`).then(
          () => true,
          () => false,
        );
        if (undone) throw e;
        throw new BaremetalError("partial-create", `clone ${this.spec(name)} was made but could not be grown to ${size} bytes (${asBaremetal(e, "resize").message}) nor removed`, { cause: e });
      }
    }
    const v = await this.info(name);
    if (!v) throw new BaremetalError("backend", `clone ${this.spec(name)} was created but is gone again (deleted meanwhile?)`);
    return v;
  }

  async getVolume(name: string): Promise<VolumeInfo | undefined> {
    return this.info(checkName("name", name));
  }

  async listVolumes(filter?: { namePrefix?: string }): Promise<VolumeInfo[]> {
    const [ls, du] = await Promise.all([
      this.rbd.json<RbdLsEntry[]>(["ls", "-l", this.pool], `listing pool ${this.pool}`, this.signal),
      this.rbd.json<RbdDu>(["du", "--pool", this.pool], `measuring pool ${this.pool}`, this.signal),
    ]);
    const used = new Map<string, number>();
    for (const i of du.images) used.set(i.name, (used.get(i.name) ?? 0) + i.used_size);
    return ls
      .filter((e) => e.snapshot === undefined && NAME_RE.test(e.image) && (!filter?.namePrefix || e.image.startsWith(filter.namePrefix)))
      .map((e) => ({
        name: e.image,
        pool: this.pool,
        sizeBytes: e.size,
        ...(e.parent ? { parent: `${e.parent.pool}/${e.parent.image}@${e.parent.snapshot}` } : {}),
        ...(used.has(e.image) ? { usedBytes: used.get(e.image)! } : {}),
      }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  async resizeVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    checkName("name", name);
    const size = checkSize("sizeBytes", sizeBytes);
    const v = await this.info(name);
    if (!v) throw new BaremetalError("not-found", `volume ${this.spec(name)} does not exist`);
    if (size < v.sizeBytes) throw validationError("sizeBytes", `volumes only grow: ${name} has ${v.sizeBytes} bytes, ${size} is smaller`);
    if (size === v.sizeBytes) return v;
    if (this.tgt) {
      const exp = await this.exportsOf(name);
      if (exp.length) {
        throw new BaremetalError("conflict", `volume ${this.spec(name)} is exported (target ${exp[0].name}); tgt keeps the size it read at export, so unexport it, resize, and export again`);
      }
    }
    await this.rbd.run(["resize", "--no-progress", "--size", `${size}B`, this.spec(name)], `growing volume ${this.spec(name)}`, this.signal);
    return (await this.info(name)) ?? { ...v, sizeBytes: size };
  }

  async deleteVolume(name: string): Promise<void> {
    checkName("name", name);
    if (this.tgt) {
      const exp = await this.exportsOf(name);
      if (exp.length) {
        const who = exp[0].acl.filter((a) => INITIATOR_RE.test(a)).join(", ") || "no initiator";
        throw new BaremetalError("conflict", `volume ${this.spec(name)} is exported to ${who} (target ${exp[0].name}); unexport it first`);
      }
    }
    let snaps: RbdSnap[];
    try {
      snaps = await this.rbd.json<RbdSnap[]>(["snap", "ls", this.spec(name)], `reading the snapshots of ${this.spec(name)}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") return;
      throw e;
    }
    const withClones: string[] = [];
    for (const s of snaps) {
      const c = await this.children(name, s.name);
      if (c.length) withClones.push(`${name}@${s.name} (clones: ${c.join(", ")})`);
    }
    if (withClones.length) throw new BaremetalError("conflict", `volume ${this.spec(name)} has snapshots with clones: ${withClones.join("; ")}; delete the clones first`);
    const watchers = await this.watchers(name);
    if (watchers.length) {
      throw new BaremetalError("conflict", `volume ${this.spec(name)} is open by ${watchers.join(", ")} (a node, a tgtd or a tool still uses it); close it there first`);
    }
    for (const s of snaps.filter(isProtected)) {
      await this.rbd.run(["snap", "unprotect", this.spec(name, s.name)], `unprotecting ${this.spec(name, s.name)}`, this.signal).catch((e) => {
        if (isBaremetalError(e) && e.code === "not-found") return;
        throw e;
      });
    }
    if (snaps.length) await this.rbd.run(["snap", "purge", "--no-progress", this.spec(name)], `removing the snapshots of ${this.spec(name)}`, this.signal);
    try {
      await this.rbd.run(["rm", "--no-progress", this.spec(name)], `deleting volume ${this.spec(name)}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") return;
      if (isBaremetalError(e) && e.code === "conflict") {
        const w = await this.watchers(name).catch(() => []);
        throw new BaremetalError("conflict", `volume ${this.spec(name)} cannot be deleted now: ${w.length ? `it is open by ${w.join(", ")}` : e.message}`, { cause: e });
      }
      throw e;
    }
  }

  /** Clients that have the image open now (`rbd status`). */
  private async watchers(name: string): Promise<string[]> {
    try {
      const st = await this.rbd.json<{ watchers?: { address: string; client: number }[] }>(["status", this.spec(name)], `reading who has ${this.spec(name)} open`, this.signal);
      return (st.watchers ?? []).map((w) => `client.${w.client} at ${w.address}`);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") return [];
      throw e;
    }
  }

  async path(volume: string): Promise<string> {
    checkName("volume", volume);
    if (!(await this.info(volume))) throw new BaremetalError("not-found", `volume ${this.spec(volume)} does not exist`);
    return `rbd:${this.spec(volume)}:id=${this.clientId}:conf=${this.rbd.files().conf}`;
  }

  /** A LUKS2 header session on the volume (header.ts). */
  async luksHeader(volume: string): Promise<HeaderAccess> {
    checkName("volume", volume);
    if (!(await this.info(volume))) throw new BaremetalError("not-found", `volume ${this.spec(volume)} does not exist`);
    return openHeader(this, volume);
  }

  /** Only what changed since `opts.since` (rbd export-diff --from-snap). */
  readonly readsChangesOnly = true;

  /** The volume's (or a snapshot's) content, or its changes since a snapshot, as extents (extents.ts). */
  readExtents(volume: string, opts?: ReadExtentsOptions): AsyncIterable<Extent> {
    return readCephExtents(this, volume, opts, this.signal);
  }

  /** Writes extents into an existing volume with rbd import-diff (extents.ts). */
  writeExtents(volume: string, extents: AsyncIterable<Extent>, signal?: AbortSignal): Promise<{ bytesWritten: number }> {
    return writeCephExtents(this, volume, extents, anySignal(signal, this.signal));
  }

  // ---- snapshots -----------------------------------------------------------------------------

  private async children(volume: string, snap: string): Promise<string[]> {
    try {
      const c = await this.rbd.json<RbdChild[]>(["children", this.spec(volume, snap)], `listing the clones of ${this.spec(volume, snap)}`, this.signal);
      return (c ?? []).map(childName);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") return [];
      throw e;
    }
  }

  async createSnapshot(volume: string, name: string, opts?: { protect?: boolean }): Promise<SnapshotInfo> {
    checkName("volume", volume);
    checkName("name", name, "a snapshot name");
    const spec = this.spec(volume, name);
    try {
      await this.rbd.run(["snap", "create", "--no-progress", spec], `snapshotting ${this.spec(volume)} as ${name}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "conflict") throw new BaremetalError("conflict", `snapshot ${spec} already exists`, { cause: e });
      if (isBaremetalError(e) && e.code === "not-found") throw new BaremetalError("not-found", `volume ${this.spec(volume)} does not exist`, { cause: e });
      throw e;
    }
    if (opts?.protect) await this.rbd.run(["snap", "protect", spec], `protecting snapshot ${spec}`, this.signal);
    return { volume, name, protected: !!opts?.protect, children: [] };
  }

  async listSnapshots(volume: string): Promise<SnapshotInfo[]> {
    checkName("volume", volume);
    let snaps: RbdSnap[];
    try {
      snaps = await this.rbd.json<RbdSnap[]>(["snap", "ls", this.spec(volume)], `reading the snapshots of ${this.spec(volume)}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") throw new BaremetalError("not-found", `volume ${this.spec(volume)} does not exist`, { cause: e });
      throw e;
    }
    return Promise.all(snaps.map(async (s) => ({ volume, name: s.name, protected: isProtected(s), children: await this.children(volume, s.name) })));
  }

  async deleteSnapshot(volume: string, name: string): Promise<void> {
    checkName("volume", volume);
    checkName("name", name, "a snapshot name");
    const spec = this.spec(volume, name);
    let snaps: RbdSnap[];
    try {
      snaps = await this.rbd.json<RbdSnap[]>(["snap", "ls", this.spec(volume)], `reading the snapshots of ${this.spec(volume)}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") return;
      throw e;
    }
    const snap = snaps.find((s) => s.name === name);
    if (!snap) return;
    const c = await this.children(volume, name);
    if (c.length) throw new BaremetalError("conflict", `snapshot ${spec} has clones (${c.join(", ")}); delete them first`);
    if (isProtected(snap)) {
      await this.rbd.run(["snap", "unprotect", spec], `unprotecting ${spec}`, this.signal).catch((e) => {
        if (isBaremetalError(e) && e.code === "conflict") {
          throw new BaremetalError("conflict", `snapshot ${spec} cannot be unprotected (${e.message}); a clone may have been made meanwhile`, { cause: e });
        }
        throw e;
      });
    }
    try {
      await this.rbd.run(["snap", "rm", "--no-progress", spec], `deleting snapshot ${spec}`, this.signal);
    } catch (e) {
      if (isBaremetalError(e) && e.code === "not-found") return;
      throw e;
    }
  }

  // ---- exports (tgt, rbd backing store) -------------------------------------------------------

  private requireTgt(): TgtManagement {
    if (!this.tgt) throw validationError("iscsi", "no iSCSI target is configured for this Ceph pool: set iscsi.portal (and iscsi.controlPort if tgtd runs with -C)");
    return this.tgt;
  }

  private async targets(): Promise<TgtTarget[]> {
    try {
      return await this.requireTgt().showTargets(this.signal);
    } catch (e) {
      throw tgtFailure(e);
    }
  }

  /** Targets serving this volume: a LUN backed by `pool/volume` through rbd, or our target name. */
  private async exportsOf(name: string, targets?: TgtTarget[]): Promise<TgtTarget[]> {
    const all = targets ?? (await this.targets());
    const spec = this.spec(name);
    const iqn = this.targetIqn(name);
    return all.filter((t) => t.luns.some((l) => l.backingStoreType === "rbd" && l.backingStorePath === spec) || t.name === iqn);
  }

  private async call(what: string, req: Omit<Parameters<TgtManagement["request"]>[0], "what">, tolerate: number[] = []): Promise<void> {
    try {
      await this.requireTgt().request({ ...req, what }, this.signal);
    } catch (e) {
      if (e instanceof TgtError && tolerate.includes(e.tgtErr)) return;
      throw tgtFailure(e);
    }
  }

  private async forgetAccounts(accounts: string[], targets: TgtTarget[], gone: Set<number>): Promise<void> {
    for (const a of accounts) {
      if (targets.some((t) => !gone.has(t.tid) && (t.incomingAccounts.includes(a) || t.outgoingAccount === a))) continue;
      await this.call(`deleting CHAP account ${a}`, { mode: Mode.Account, op: Op.Delete, params: [`user=${a}`] }, [TgtErr.NoUser]);
    }
  }

  /** LUN 1 of `tid`, backed by the image through tgtd's rbd backing store. */
  private async addLun(tid: number, name: string, iqn: string): Promise<void> {
    // tgtd reads the conf (and the keyring it names) while it makes the LUN: a copy of ours in a
    // directory of its own, removed as soon as the LUN exists.
    const dir = fs.mkdtempSync(path.join(this.rbd.files().dir, `tgt-${randomBytes(4).toString("hex")}-`));
    try {
      const { conf } = this.rbd.writeConf(dir);
      if (/[,;]/.test(conf)) throw new BaremetalError("internal", `the temp path ${conf} holds ',' or ';' which tgtd cannot take; set TMPDIR to a plain directory`);
      await this.call(`LUN ${EXPORT_LUN} of ${iqn} (rbd ${this.spec(name)})`, {
        mode: Mode.Device,
        op: Op.New,
        tid,
        lun: BigInt(EXPORT_LUN),
        params: [`path=${this.spec(name)}`, "bstype=rbd", `bsopts=conf=${conf};id=${this.clientId}`],
      });
    } catch (e) {
      if (isBaremetalError(e) && e.code === "backend" && /unknown parameter|driver|not supported|can't find/.test(e.message)) {
        throw new BaremetalError(
          "backend",
          `${e.message}: tgtd could not open ${this.spec(name)} through its rbd backing store; install Debian's tgt-rbd (bs_rbd.so) on the storage host and check that tgtd reaches the cluster`,
          { cause: e },
        );
      }
      throw e;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
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
      if (!(await this.info(name))) throw new BaremetalError("not-found", `volume ${this.spec(name)} does not exist`);
      const iqn = this.targetIqn(name);
      const targets = await this.targets();
      const mine = await this.exportsOf(name, targets);
      if (mine.length > 1) throw new BaremetalError("conflict", `volume ${this.spec(name)} is served by ${mine.length} targets (${mine.map((t) => t.name).join(", ")}); remove the extra ones with tgtadm`);
      let target = mine[0];
      if (target) {
        const others = target.acl.filter((a) => a !== initiatorIqn);
        if (others.length) {
          throw new BaremetalError("conflict", `volume ${this.spec(name)} is already exported to ${others.join(", ")} (target ${target.name}); unexport it before exporting it to ${initiatorIqn}`);
        }
      }
      const holder = targets.find((t) => t !== target && (t.incomingAccounts.includes(chapUser) || t.outgoingAccount === chapUser));
      if (holder) throw new BaremetalError("conflict", `CHAP user ${chapUser} is already used by target ${holder.name}; give each export its own CHAP user`);

      let created = false;
      let tid: number;
      try {
        if (!target) {
          tid = targets.reduce((m, t) => Math.max(m, t.tid), 0) + 1;
          await this.call(`a new target ${iqn}`, { mode: Mode.Target, op: Op.New, tid, params: [`targetname=${iqn}`] });
          created = true;
          await this.addLun(tid, name, iqn);
        } else {
          tid = target.tid;
          // Again for the same node (new secret, repair): no new logins while the account changes.
          for (const a of target.acl) {
            await this.call(`removing an ACL entry of ${iqn}`, { mode: Mode.Target, op: Op.Unbind, tid, params: [INITIATOR_RE.test(a) ? `initiator-name=${a}` : `initiator-address=${a}`] }, [
              TgtErr.AclNoExist,
              TgtErr.NoBinding,
            ]);
          }
          if (!target.luns.some((l) => l.lun === EXPORT_LUN)) await this.addLun(tid, name, iqn);
          for (const a of target.incomingAccounts) {
            await this.call(`unbinding an account from ${iqn}`, { mode: Mode.Account, op: Op.Unbind, tid, params: [`user=${a}`] }, [TgtErr.NoUser, TgtErr.NoBinding]);
          }
          await this.forgetAccounts(target.incomingAccounts.filter((a) => a !== chapUser), targets, new Set([tid]));
        }
        await this.call("removing a stale CHAP account", { mode: Mode.Account, op: Op.Delete, params: [`user=${chapUser}`] }, [TgtErr.NoUser]);
        await this.call(`a CHAP account for ${iqn}`, { mode: Mode.Account, op: Op.New, params: [`user=${chapUser}`, `password=${chapSecret}`] });
        await this.call(`binding the CHAP account to ${iqn}`, { mode: Mode.Account, op: Op.Bind, tid, acDir: 0, params: [`user=${chapUser}`] });
        // Last: until this entry exists tgtd lets no initiator in.
        await this.call(`the ACL entry of ${iqn}`, { mode: Mode.Target, op: Op.Bind, tid, params: [`initiator-name=${initiatorIqn}`] });
      } catch (e) {
        if (created) {
          await this.call(`undoing target ${iqn}`, { mode: Mode.Target, op: Op.Delete, tid: tid!, force: true }, [TgtErr.NoTarget]).catch(() => undefined);
          await this.call("undoing a half-made account", { mode: Mode.Account, op: Op.Delete, params: [`user=${chapUser}`] }, [TgtErr.NoUser]).catch(() => undefined);
        }
        throw e;
      }
      return { volume: name, portal: this.portal!, targetIqn: iqn, lun: EXPORT_LUN, initiatorIqn, chapUser };
    });
  }

  async listExports(volume?: string): Promise<CephExportInfo[]> {
    if (volume !== undefined) checkName("volume", volume);
    const targets = await this.targets();
    const out: CephExportInfo[] = [];
    for (const t of targets) {
      const lun = t.luns.find((l) => l.backingStoreType === "rbd" && l.backingStorePath?.startsWith(`${this.pool}/`));
      const name = lun ? lun.backingStorePath!.slice(this.pool.length + 1) : t.name.startsWith(`${this.iqnPrefix}:`) ? t.name.slice(this.iqnPrefix.length + 1) : undefined;
      if (name === undefined || (volume !== undefined && name !== volume)) continue;
      out.push(this.describe(name, t));
    }
    return out;
  }

  private describe(name: string, t: TgtTarget): CephExportInfo {
    return describeTgtExport(t, { volume: name, targetIqn: this.targetIqn(name), backingPath: this.spec(name), backingType: "rbd", portal: this.portal });
  }

  async unexportVolume(volume: string): Promise<void> {
    const name = checkName("volume", volume);
    this.requireTgt();
    return this.serial(async () => {
      const targets = await this.targets();
      const mine = await this.exportsOf(name, targets);
      const accounts = new Set<string>(mine.flatMap((t) => t.incomingAccounts));
      for (const t of mine) {
        // The whole target at once (ACL, LUN, account bindings); force: logged-in sessions are cut off.
        await this.call(`deleting target ${t.name}`, { mode: Mode.Target, op: Op.Delete, tid: t.tid, force: true }, [TgtErr.NoTarget]);
      }
      await this.forgetAccounts([...accounts], targets, new Set(mine.map((t) => t.tid)));
    });
  }

  async close(): Promise<void> {
    await this.chain.catch(() => undefined);
    this.rbd.dispose();
  }
}
