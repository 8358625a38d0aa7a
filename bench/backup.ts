/**
 * Backup throughput of the engine (provider/src/backup/engine.ts) against the raw read rate of the
 * same volume in the same run, for a sparse-but-written volume (default 10 GiB, 80% written with
 * random data in runs of 16 MiB with 4 MiB holes between them, so no two cells are equal and
 * nothing dedups):
 *   - raw read: `dd bs=64M iflag=direct` of the volume file (O_DIRECT, as the engine's file
 *     reader reads; the fastest raw read here), right before or right after each engine run
 *     (see rounds below), the volume's pages dropped first (`dd iflag=nocache count=0`, which
 *     touches only that file); once before the rounds, `dd bs=4M of=/dev/null` cold and cached
 *     (reported, with the engine's ratio to the cold one); for Ceph `rbd export-diff > /dev/null`
 *     of the same snapshot the engine reads;
 *   - full backup (envelope encryption, the mode of a plain volume: aes-ghash chunk ids +
 *     AES-256-GCM; or `--mode source`, a LUKS2 volume's ciphertext as it is, with aes-ghash ids
 *     (a key given) or `--ids sha256` (none given); `--ids hmac-sha256` is an envelope chain
 *     started before aes-ghash ids),
 *     to the real target (a file target in its own directory; radosgw for Ceph) and to a target
 *     that discards what it is given (the engine's own rate: read, hash, encrypt), and its ratio to
 *     the raw read (target >= 0.8x);
 *   - incremental backups after 1% of the written data changed, once in 1 MiB writes
 *     (clustered) and once in 4 KiB writes (scattered): bytes read, bytes moved, time;
 *   - restore of the first incremental into a new volume (writes, then the engine's read-back
 *     verification), throughput;
 *   - peak memory of each phase: RSS high-water mark (VmHWM, reset before each phase through
 *     /proc/self/clear_refs) and live ArrayBuffer/Buffer bytes (process.memoryUsage, sampled every
 *     20 ms);
 *   - the nightly window for 1 TB extrapolated at 10 and 25 Gbit/s, and what bounds it;
 *   - the crypto floor: one core's aes-ghash id, SHA-256, HMAC-SHA256 and AES-256-GCM rates, and the most any
 *     engine could reach on all cores against the raw read (what a 0.8x target needs of the CPU).
 *
 *   npx tsx bench/backup.ts [--backend file|ceph|both] [--size 10G] [--ceph-size 2G]
 *                           [--written 0.8] [--concurrency N] [--workers N] [--mode envelope|source]
 *                           [--ids aes-ghash|sha256|hmac-sha256] [--dir DIR] [--no-scattered] [--rounds 4]
 *
 * --size is the file volume's size, --ceph-size the RBD image's (default 2 GiB: the sandbox's
 * single OSD on a file writes a few hundred MB/s and must hold the volume, radosgw's copy and the
 * restore). --workers: the engine's worker threads (0: all on the main thread). --dir: where the file volumes and the file target live (default the OS temp dir; it
 * needs about 3.5x the written bytes free). The Ceph run starts a throwaway cluster and radosgw
 * (test/harness/ceph.ts, radosgw.ts) and stops them. Prints figures; asserts nothing about time.
 */
import { spawn } from "node:child_process";
import { createCipheriv, createHash, createHmac, randomBytes, randomFillSync } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { CHUNK_ID_SCHEMES, type ChunkIds, cellCrypto } from "../provider/src/backup/cell-crypto";
import { CELL_BYTES, keyWrapper, type Manifest, restoreBackup, takeBackup } from "../provider/src/backup/engine";
import { FileBackupTarget } from "../provider/src/drivers/backup-file/driver";
import { S3BackupTarget } from "../provider/src/drivers/backup-s3/driver";
import type { BackupTargetDriver, ObjectInfo } from "../provider/src/drivers/kinds/backup-target";
import type { Extent, StorageDriver } from "../provider/src/drivers/kinds/storage";
import { CephStorageDriver } from "../provider/src/drivers/storage-ceph/driver";
import { FileStorageDriver } from "../provider/src/drivers/storage-file/driver";
import { startCeph } from "../test/harness/ceph";
import { startRadosgw } from "../test/harness/radosgw";

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const RUN = 16 * MiB;

// ---- arguments ---------------------------------------------------------------------------------

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
function bytesArg(name: string, dflt: number): number {
  const v = arg(name);
  if (v === undefined) return dflt;
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(v.trim());
  if (!m) throw new Error(`--${name} ${v}: give a size such as 512M or 10G`);
  const n = Number(m[1]) * 1024 ** " kmgt".indexOf((m[2] || " ").toLowerCase());
  // Whole runs of 16 MiB (the data pattern's unit; also a multiple of the 4 MiB cell).
  return Math.max(RUN, Math.round(n / RUN) * RUN);
}
const backendArg = arg("backend") ?? "both";
const FILE_SIZE = bytesArg("size", 10 * GiB);
const CEPH_SIZE = bytesArg("ceph-size", 2 * GiB);
const WRITTEN = Number(arg("written") ?? 0.8);
const CONCURRENCY = arg("concurrency") ? Number(arg("concurrency")) : undefined;
const WORKERS = arg("workers") !== undefined ? Number(arg("workers")) : undefined;
const MODE = (arg("mode") ?? "envelope") as "envelope" | "source";
/** The chunk id scheme of the chain the bench starts (a full backup takes aes-ghash when given a key). */
const IDS = (arg("ids") ?? "aes-ghash") as ChunkIds;
if (!CHUNK_ID_SCHEMES.includes(IDS) || IDS === (MODE === "envelope" ? "sha256" : "hmac-sha256")) throw new Error(`--ids ${IDS}: aes-ghash, or sha256 (source mode only), or hmac-sha256 (envelope mode only)`);
const SCATTERED = !process.argv.includes("--no-scattered");
/** Pairs of (raw read, engine) measured back to back, in alternating order; the median pair's ratio is reported. */
const ROUNDS = Math.max(1, Number(arg("rounds") ?? 4));

// ---- measuring ---------------------------------------------------------------------------------

interface Phase {
  s: number;
  /** CPU seconds of this process (all its threads) and of its children that exited meanwhile (rbd, dd). */
  cpuS: number;
  childCpuS: number;
  /**
   * CPU seconds the hypervisor took from this machine's vCPUs meanwhile (steal, /proc/stat; all
   * vCPUs together): on a VM whose disk the host emulates, reading costs host CPU taken from ours.
   */
  stealS: number;
  peakRss: number;
  peakBuffers: number;
  rssBefore: number;
}

/** CPU seconds of the children this process has waited for (cutime + cstime of /proc/self/stat). */
function childCpu(): number {
  const stat = fs.readFileSync("/proc/self/stat", "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[13]) + Number(f[14])) / 100; // USER_HZ is 100 on Linux
}

/** Steal seconds of the whole machine so far (the 8th value of /proc/stat's cpu line). */
function stealSeconds(): number {
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/);
  return Number(f[8] ?? 0) / 100;
}

/** VmHWM (peak RSS) of this process, in bytes. */
function vmHwm(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Runs `fn` and measures wall time, CPU of this process, peak RSS and peak live Buffer bytes. */
async function measure<T>(fn: () => Promise<T>): Promise<{ value: T; p: Phase }> {
  globalThis.gc?.();
  try {
    fs.writeFileSync("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
  } catch {
    /* not Linux, or not allowed: the peak is then the process's */
  }
  const rssBefore = process.memoryUsage().rss;
  let peakBuffers = process.memoryUsage().arrayBuffers;
  const timer = setInterval(() => (peakBuffers = Math.max(peakBuffers, process.memoryUsage().arrayBuffers)), 20);
  const cpu0 = process.cpuUsage();
  const child0 = childCpu();
  const steal0 = stealSeconds();
  const t0 = process.hrtime.bigint();
  try {
    const value = await fn();
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    peakBuffers = Math.max(peakBuffers, process.memoryUsage().arrayBuffers);
    return { value, p: { s, cpuS: (cpu.user + cpu.system) / 1e6, childCpuS: childCpu() - child0, stealS: stealSeconds() - steal0, peakRss: Math.max(vmHwm(), process.memoryUsage().rss), peakBuffers, rssBefore } };
  } finally {
    clearInterval(timer);
  }
}

const mb = (bytes: number) => `${Math.round(bytes / MiB)} MiB`;
const rate = (bytes: number, s: number) => bytes / MiB / s; // MiB/s
const r0 = (x: number) => x.toFixed(0);
const memo = (p: Phase) =>
  `peak RSS ${mb(p.peakRss)} (before ${mb(p.rssBefore)}), peak live Buffers ${mb(p.peakBuffers)}; CPU ${p.cpuS.toFixed(1)} s ours (${((p.cpuS / p.s) * 100).toFixed(0)}% of one core)${p.childCpuS ? ` + ${p.childCpuS.toFixed(1)} s rbd` : ""}; host steal ${p.stealS.toFixed(1)} s (${((p.stealS / (p.s * os.cpus().length)) * 100).toFixed(0)}% of the vCPUs' time)`;
/** MiB per CPU-second (ours and the children's): what one core of this machine sustains, whatever the load. */
const perCpu = (bytes: number, p: Phase) => rate(bytes, p.cpuS + p.childCpuS);

function run(file: string, args: string[], stdout: "ignore" | number = "ignore"): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn(file, args, { stdio: ["ignore", stdout, "pipe"] });
    let err = "";
    c.stderr!.on("data", (b: Buffer) => (err = (err + b.toString()).slice(-4000)));
    c.once("error", reject);
    c.once("close", (code) => (code === 0 ? resolve() : reject(new Error(`${file} ${args.join(" ")}: exit ${code}: ${err.trim()}`))));
  });
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

/** Wall seconds and the CPU seconds of the children (dd, rbd) and of this process. */
async function timedCpu(fn: () => Promise<void>): Promise<{ s: number; cpuS: number }> {
  const c0 = childCpu();
  const u0 = process.cpuUsage();
  const s = await timed(fn);
  const u = process.cpuUsage(u0);
  return { s, cpuS: childCpu() - c0 + (u.user + u.system) / 1e6 };
}

// ---- the volume's content ----------------------------------------------------------------------

/** Runs of 16 MiB: written (random data) or a hole; `WRITTEN` of them written, spread evenly. */
function writtenRuns(size: number): number[] {
  const runs = size / RUN;
  const out: number[] = [];
  let acc = 0;
  for (let r = 0; r < runs; r++) {
    acc += WRITTEN;
    if (acc >= 1 - 1e-9) {
      acc -= 1;
      out.push(r);
    }
  }
  return out;
}

/** Fresh random 4 MiB extents over the written runs (fresh: rbd import-diff's pipe keeps them until written). */
async function* contentExtents(runs: number[]): AsyncGenerator<Extent> {
  for (const r of runs) {
    for (let at = r * RUN; at < (r + 1) * RUN; at += CELL_BYTES) yield { offset: at, data: randomFillSync(Buffer.allocUnsafe(CELL_BYTES)) };
  }
}

/** 1% of the written bytes, in writes of `block` bytes at random block-aligned places inside written runs. */
function changes(runs: number[], block: number): Extent[] {
  const total = Math.round((runs.length * RUN) / 100 / block) * block;
  const perRun = RUN / block;
  const picked = new Set<number>();
  const out: Extent[] = [];
  while (out.length * block < total) {
    const r = runs[Math.floor(Math.random() * runs.length)];
    const k = Math.floor(Math.random() * perRun);
    const offset = r * RUN + k * block;
    if (picked.has(offset)) continue;
    picked.add(offset);
    out.push({ offset, data: randomBytes(block) });
  }
  return out.sort((a, b) => a.offset - b.offset);
}

const cellsTouched = (ex: Extent[]) => new Set(ex.map((e) => Math.floor(e.offset / CELL_BYTES))).size;

// ---- targets -----------------------------------------------------------------------------------

/** A backup target that takes every object and keeps nothing: the engine's own rate. */
class DiscardTarget implements BackupTargetDriver {
  readonly family = "discard";
  readonly description = "a discarding target";
  bytes = 0;
  async put(key: string, body: AsyncIterable<Buffer> | Buffer): Promise<ObjectInfo> {
    let n = 0;
    if (Buffer.isBuffer(body)) n = body.length;
    else for await (const b of body) n += b.length;
    this.bytes += n;
    return { key, sizeBytes: n };
  }
  async get(key: string): Promise<AsyncIterable<Buffer>> {
    throw new Error(`the discarding target has no ${key}`);
  }
  async head(): Promise<undefined> {
    return undefined;
  }
  // eslint-disable-next-line require-yield
  async *list(): AsyncGenerator<ObjectInfo> {
    return;
  }
  async delete(): Promise<void> {}
  async check(): Promise<void> {}
  async close(): Promise<void> {}
}

// ---- one backend -------------------------------------------------------------------------------

interface Setup {
  name: string;
  storage: StorageDriver;
  backend: string;
  target: BackupTargetDriver;
  targetName: string;
  size: number;
  /**
   * Raw reads of the volume paired with each engine run (snapshot `snap` where the backend has
   * snapshots); the `reference` ones are what the engine is compared with.
   */
  rawReads(snap?: string): Promise<RawRead[]>;
  /** Other raw reads, once before the rounds (reported, not compared round by round). */
  preludeReads?(): Promise<RawRead[]>;
  /** Writes `extents` into the volume (a node writing). */
  write(extents: Extent[]): Promise<void>;
  /** Bytes the target holds under `prefix`. */
  stored(prefix: string): Promise<number>;
  /** Drops the volume's pages from the page cache (file backend). */
  dropCache?(): Promise<void>;
  /** Where this backend reads the rate of 1 TB from (note for the extrapolation). */
  cleanup(): Promise<void>;
}

/** One raw read of the whole volume; `reference`: a candidate for the rate the engine is compared with (the fastest of them is). */
interface RawRead {
  label: string;
  s: number;
  cpuS: number;
  reference?: boolean;
}

/** The fastest of the reference reads (the hardest figure to compare with). */
const referenceRead = (raws: RawRead[]): RawRead => raws.filter((r) => r.reference).reduce((a, b) => (b.s < a.s ? b : a));

interface Result {
  backend: string;
  written: number;
  rawLabel: string;
  rawRate: number;
  engineRate: number;
  /** MiB the engine reads, hashes and seals per CPU-second (ours + rbd's). */
  enginePerCpu: number;
  fullRate: number;
  incr: { label: string; changed: number; cells: number; read: number; stored: number; s: number }[];
  restoreRate: number;
  readsChangesOnly: boolean;
}

async function bench(st: Setup): Promise<Result> {
  const { storage, target, size } = st;
  const wrapper = IDS !== "sha256" ? keyWrapper("local", "bench-key", randomBytes(64)) : undefined;
  const vol = "bench-src";
  const runs = writtenRuns(size);
  const written = runs.length * RUN;
  console.log(`\n=== ${st.name}: volume of ${mb(size)}, ${mb(written)} written (${runs.length} runs of 16 MiB, random data), ${MODE} encryption, ${IDS} chunk ids, engine concurrency ${CONCURRENCY ?? "default (4)"}, workers ${WORKERS ?? "default (one per core)"}, target ${st.targetName}`);

  await storage.createVolume({ name: vol, sizeBytes: size });
  const ws = await timed(async () => {
    await storage.writeExtents!(vol, contentExtents(runs));
  });
  console.log(`setup: wrote ${mb(written)} in ${ws.toFixed(1)} s (${r0(rate(written, ws))} MiB/s; not counted)`);

  const req = (id: string, extra: Partial<Parameters<typeof takeBackup>[0]> = {}) => ({
    storage,
    backend: st.backend,
    volume: vol,
    target,
    prefix: "bench/",
    id,
    mode: MODE,
    wrapper,
    chunkIds: IDS,
    ...(CONCURRENCY ? { concurrency: CONCURRENCY } : {}),
    ...(WORKERS !== undefined ? { workers: WORKERS } : {}),
    ...extra,
  });

  // 1-2. The engine alone (a full backup to a target that discards: read + hash + encrypt) and the
  // raw read of the same volume, in ROUNDS pairs: this machine's disk rate swings from one run to
  // the next (500-3000 MiB/s measured: the VM's disk is a file the host caches), so each round
  // compares the two back to back, and the median round is what counts. The order alternates
  // (raw first in odd rounds, the engine first in even ones): whichever reads second may find
  // the volume in the host's cache, and neither side gets that every time.
  const prelude = (await st.preludeReads?.()) ?? [];
  const discard = new DiscardTarget();
  const rounds: { eng: Awaited<ReturnType<typeof measure<Manifest>>>; raws: RawRead[]; ratio: number; engineFirst: boolean }[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const engineFirst = i % 2 === 1;
    const engine = async () => {
      await st.dropCache?.();
      const eng = await measure(() => takeBackup(req(`engine-only-${i}`, { target: discard })));
      if (storage.readsChangesOnly) await storage.deleteSnapshot(vol, eng.value.snapshot!);
      return eng;
    };
    const rawRound = async () => {
      if (storage.readsChangesOnly) await storage.createSnapshot(vol, "raw");
      const raws = await st.rawReads(storage.readsChangesOnly ? "raw" : undefined);
      if (storage.readsChangesOnly) await storage.deleteSnapshot(vol, "raw");
      return raws;
    };
    const eng = engineFirst ? await engine() : undefined;
    const raws = await rawRound();
    const e = eng ?? (await engine());
    rounds.push({ eng: e, raws, engineFirst, ratio: rate(e.value.stats.bytesRead, e.p.s) / rate(written, referenceRead(raws).s) });
  }
  if (ROUNDS > 1) {
    console.log(`paired rounds (the raw reads and the engine, back to back, order alternating), ${ROUNDS}:`);
    for (const [i, r] of rounds.entries()) {
      const ref = referenceRead(r.raws);
      console.log(
        `  round ${i + 1} (${r.engineFirst ? "engine first" : "raw first"}): raw ${r.raws.map((x) => `${r0(rate(written, x.s))}${x === ref ? "*" : ""}`).join(" / ")} MiB/s, engine ${r0(rate(r.eng.value.stats.bytesRead, r.eng.p.s))} MiB/s (CPU ${r.eng.p.cpuS.toFixed(1)} s, host steal ${r.eng.p.stealS.toFixed(1)} s) = ${r.ratio.toFixed(2)}x the fastest raw read (*)`,
      );
    }
  }
  // The median round; of an even number, the lower of the two middle ones.
  const median = [...rounds].sort((a, b) => a.ratio - b.ratio)[Math.floor((rounds.length - 1) / 2)];
  const eng = median.eng;
  const raws = median.raws;
  const engineRate = rate(eng.value.stats.bytesRead, eng.p.s);

  // 3. The full backup to the real target.
  await st.dropCache?.();
  const full = await measure(() => takeBackup(req("b1")));
  const b1 = full.value;
  const fullRate = rate(b1.stats.bytesRead, full.p.s);
  const raw = referenceRead(raws);
  const rawRate = rate(written, raw.s);

  console.log(`raw read of the volume:`);
  for (const r of raws) console.log(`  ${r.label.padEnd(46)} ${r0(rate(written, r.s)).padStart(6)} MiB/s (${r.s.toFixed(2)} s; CPU ${r.cpuS.toFixed(1)} s)`);
  for (const r of prelude) console.log(`  ${r.label.padEnd(46)} ${r0(rate(written, r.s)).padStart(6)} MiB/s (${r.s.toFixed(2)} s; CPU ${r.cpuS.toFixed(1)} s; once, before the rounds; the engine's median round is ${(engineRate / rate(written, r.s)).toFixed(2)}x it)`);
  console.log(`full backup, ${mb(b1.stats.bytesRead)} read, ${b1.cells.length} cells:`);
  console.log(
    `  engine to a discarding target${ROUNDS > 1 ? " (median round)" : "               "}  ${r0(engineRate).padStart(6)} MiB/s (${eng.p.s.toFixed(2)} s) = ${(engineRate / rawRate).toFixed(2)}x ${raw.label}; ${r0(perCpu(eng.value.stats.bytesRead, eng.p))} MiB per CPU-second; ${memo(eng.p)}`,
  );
  console.log(
    `  to ${st.targetName.padEnd(43)} ${r0(fullRate).padStart(6)} MiB/s (${full.p.s.toFixed(2)} s) = ${(fullRate / rawRate).toFixed(2)}x ${raw.label}; stored ${mb(b1.stats.bytesStored)} in ${b1.stats.chunksStored} chunks; ${memo(full.p)}`,
  );

  // 4. Incrementals after 1% changed.
  const incr: Result["incr"] = [];
  let parent: Manifest = b1;
  let restoreFrom: Manifest | undefined;
  for (const [label, block] of [
    ["1% changed in 1 MiB writes", MiB],
    ...(SCATTERED ? ([["1% changed in 4 KiB writes", 4096]] as const) : []),
  ] as const) {
    const ex = changes(runs, block);
    const changed = ex.reduce((n, e) => n + ("data" in e ? e.data.length : 0), 0);
    await st.write(ex);
    await st.dropCache?.();
    const id = `b${incr.length + 2}`;
    const m = await measure(() => takeBackup(req(id, { parent })));
    const s = m.value.stats;
    incr.push({ label, changed, cells: cellsTouched(ex), read: s.bytesRead, stored: s.bytesStored, s: m.p.s });
    console.log(
      `incremental, ${label} (${mb(changed)} in ${ex.length} writes, ${cellsTouched(ex)} cells touched): ${m.p.s.toFixed(2)} s, read ${mb(s.bytesRead)} (${r0(rate(s.bytesRead, m.p.s))} MiB/s${s.bytesRead >= written ? ` = ${(rate(s.bytesRead, m.p.s) / rawRate).toFixed(2)}x the median round's raw read; measured once, after a write, not paired` : ""}), moved ${mb(s.bytesStored)} (${s.chunksStored} chunks stored, ${s.chunksReused} reused; ${(s.bytesStored / changed).toFixed(1)}x the changed bytes); ${memo(m.p)}`,
    );
    restoreFrom ??= m.value;
    parent = m.value;
  }

  // 5. Restore of the first incremental (its cells come from both backups).
  const m = restoreFrom!;
  await storage.createVolume({ name: "bench-restore", sizeBytes: size });
  let writtenAt = 0;
  const t0 = process.hrtime.bigint();
  const rs = await measure(() =>
    restoreBackup({
      manifest: m,
      target,
      prefix: "bench/",
      wrapper,
      storage,
      volume: "bench-restore",
      ...(CONCURRENCY ? { concurrency: CONCURRENCY } : {}),
      onProgress: (p) => {
        if (p.cellsDone === p.cells) writtenAt = Number(process.hrtime.bigint() - t0) / 1e9;
      },
    }),
  );
  const restoreBytes = m.cells.length * CELL_BYTES;
  const restoreRate = rate(restoreBytes, rs.p.s);
  console.log(
    `restore of ${m.id} (${m.cells.length} cells, ${mb(restoreBytes)}): ${rs.p.s.toFixed(2)} s = ${r0(restoreRate)} MiB/s with the read-back verification (verified: ${rs.value.verified}); fetch+decrypt+write ${writtenAt.toFixed(2)} s = ${r0(rate(restoreBytes, writtenAt))} MiB/s; ${memo(rs.p)}`,
  );
  console.log(`target holds ${mb(await st.stored("bench/"))} for ${1 + incr.length} backups`);
  await storage.deleteVolume("bench-restore");
  return { backend: st.name, written, rawLabel: raw.label, rawRate, engineRate, enginePerCpu: perCpu(eng.value.stats.bytesRead, eng.p), fullRate, incr, restoreRate, readsChangesOnly: storage.readsChangesOnly === true };
}

// ---- the file backend ----------------------------------------------------------------------------

async function fileSetup(base: string): Promise<Setup> {
  const dir = fs.mkdtempSync(path.join(base, "bench-backup-"));
  fs.mkdirSync(path.join(dir, "vols"), { mode: 0o700 });
  fs.mkdirSync(path.join(dir, "target"), { mode: 0o700 });
  const storage = new FileStorageDriver({ address: `file://${dir}/vols` });
  const target = new FileBackupTarget({ address: `file://${dir}/target` });
  const file = path.join(dir, "vols", "bench-src.img");
  const dropCache = () => run("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);
  const dd = () => timedCpu(() => run("dd", [`if=${file}`, "of=/dev/null", "bs=4M", "status=none"]));
  return {
    name: "file volume -> file target",
    storage,
    backend: "file",
    target,
    targetName: `the file target (same disk, fsync per chunk)`,
    size: FILE_SIZE,
    dropCache,
    /**
     * The read each engine run is paired with: `dd iflag=direct` (O_DIRECT, as the engine reads,
     * and the faster of the raw reads here: 1055-1933 MiB/s against 377-964 for a cold `dd`
     * through the page cache). Nothing else runs between it and the engine run: any other read
     * of the volume warms the host's cache for whichever reads next, and a write keeps the host's
     * disk busy (a cold dd and a 1 GiB fsync'd write used to run just before the direct read in
     * each round, which then always read a warm cache and the engine did not).
     */
    async rawReads() {
      await dropCache();
      const direct = await timedCpu(() => run("dd", [`if=${file}`, "of=/dev/null", "bs=64M", "iflag=direct", "status=none"]));
      return [{ label: "dd bs=64M iflag=direct (O_DIRECT, as the engine reads)", ...direct, reference: true }];
    },
    async preludeReads() {
      await dropCache();
      const cold = await dd();
      const cached = await dd();
      // What the target's disk takes (the file target fsyncs each chunk): a plain write of 1 GiB.
      const w = path.join(dir, "target", "ddwrite");
      const ws = await timed(() => run("dd", ["if=/dev/zero", `of=${w}`, "bs=4M", "count=256", "conv=fsync", "status=none"]));
      fs.rmSync(w);
      console.log(`(the target's disk: dd bs=4M conv=fsync of 1 GiB writes ${r0(rate(GiB, ws))} MiB/s)`);
      return [
        { label: "dd bs=4M, cold (the file's pages dropped)", ...cold },
        { label: "dd bs=4M, cached", ...cached },
      ];
    },
    async write(ex) {
      await storage.writeExtents(
        "bench-src",
        (async function* () {
          yield* ex;
        })(),
      );
    },
    async stored() {
      let n = 0;
      for await (const o of target.list("bench/")) n += o.sizeBytes ?? 0;
      return n;
    },
    async cleanup() {
      await storage.close();
      await target.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---- Ceph RBD + radosgw --------------------------------------------------------------------------

async function cephSetup(): Promise<Setup> {
  const written = writtenRuns(CEPH_SIZE).length * RUN;
  // The OSD holds the volume and its snapshots' changes, radosgw's copy, and the restore.
  const osdBytes = Math.max(8 * GiB, Math.ceil((4 * written + 4 * GiB) / GiB) * GiB);
  const t = Date.now();
  const ceph = await startCeph({ mgr: false, osdBytes });
  let rgw;
  try {
    rgw = await startRadosgw(ceph);
  } catch (e) {
    await ceph.stop();
    throw e;
  }
  console.log(`\n(Ceph 16, one OSD on a ${osdBytes / GiB} GiB BlueStore file, and radosgw: up in ${((Date.now() - t) / 1000).toFixed(0)} s)`);
  const storage = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey });
  const target = new S3BackupTarget({ address: rgw.address, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey });
  const exportDiff = (spec: string) =>
    timedCpu(async () => {
      const devnull = fs.openSync("/dev/null", "w");
      try {
        await run("rbd", ["-c", ceph.confPath, "export-diff", "--no-progress", spec, "-"], devnull);
      } finally {
        fs.closeSync(devnull);
      }
    });
  const r = rgw;
  return {
    name: "Ceph RBD -> radosgw (S3)",
    storage,
    backend: "ceph",
    target,
    targetName: "radosgw (S3, same OSD)",
    size: CEPH_SIZE,
    async rawReads(snap) {
      const spec = `${ceph.pool}/bench-src@${snap}`;
      const a = await exportDiff(spec);
      const b = await exportDiff(spec);
      // The same stream through a Node pipe, drained (what the engine's reader starts from).
      const c = await timedCpu(async () => {
        const { child } = storage.rbd.spawn(["export-diff", "--no-progress", spec, "-"]);
        const closed = new Promise<number | null>((res) => child.once("close", res));
        for await (const _ of child.stdout!) {
          /* drained */
        }
        if ((await closed) !== 0) throw new Error("rbd export-diff failed");
      });
      return [
        { label: "rbd export-diff > /dev/null (2nd run)", ...b, reference: true },
        { label: "rbd export-diff > /dev/null (1st run)", ...a },
        { label: "rbd export-diff through a Node pipe, drained", ...c },
      ];
    },
    async write(ex) {
      await storage.writeExtents(
        "bench-src",
        (async function* () {
          yield* ex;
        })(),
      );
    },
    async stored(prefix) {
      let n = 0;
      for await (const o of target.list(prefix)) n += o.sizeBytes ?? 0;
      return n;
    },
    async cleanup() {
      await target.close();
      await storage.close();
      await r.stop();
      await ceph.stop();
    },
  };
}

// ---- the nightly window --------------------------------------------------------------------------

function extrapolate(r: Result): void {
  const TB = 1e12;
  const hms = (x: number) => `${Math.floor(x / 3600)}h${String(Math.floor((x % 3600) / 60)).padStart(2, "0")}m${String(Math.round(x % 60)).padStart(2, "0")}s`;
  const cores = os.cpus().length;
  // What bounds a full backup: the network, the source's read rate, or the CPU the engine needs
  // (measured per CPU-second, so the figure holds whatever else the machine ran meanwhile).
  const cpu = r.enginePerCpu * MiB * cores;
  const source = r.rawRate * MiB;
  const clustered = r.incr[0];
  console.log(
    `\nnightly window for 1 TB (10^12 bytes) of used data, ${r.backend}: the engine needs 1 CPU-second per ${r0(r.enginePerCpu)} MiB (${MODE}), i.e. at most ${r0(cpu / MiB)} MiB/s on this machine's ${cores} cores; source read ${r0(r.rawRate)} MiB/s (${r.rawLabel}); measured here under the machine's load: ${r0(r.engineRate)} MiB/s`,
  );
  for (const gbit of [10, 25]) {
    const net = (gbit * 1e9) / 8;
    const limits: [string, number][] = [
      ["the network", net],
      [`our CPU (${cores} cores)`, cpu],
      ["the source's read rate", source],
    ];
    const [bound, fullRate] = limits.reduce((a, b) => (b[1] < a[1] ? b : a));
    const coresNeeded = net / (r.enginePerCpu * MiB);
    // Incremental: the changed share moves; a backend that cannot tell changes reads (and hashes) everything.
    const movedShare = clustered.stored / r.written;
    const readShare = r.readsChangesOnly ? clustered.read / r.written : 1;
    const readS = (readShare * TB) / Math.min(cpu, source);
    const netS = (movedShare * TB) / net;
    console.log(
      `  ${String(gbit).padStart(2)} Gbit/s (${r0(net / MiB)} MiB/s): full ${hms(TB / fullRate)}, bound by ${bound} (the network alone: ${hms(TB / net)}; the engine needs ${coresNeeded.toFixed(1)} cores of this CPU to fill the link); ` +
        `incremental after 1% changed in 1 MiB writes: ${hms(Math.max(readS, netS))} (moves ${((movedShare * TB) / 1e9).toFixed(0)} GB; ${readS > netS ? (r.readsChangesOnly ? "bound by reading and hashing the changed cells" : "bound by reading and hashing all of it again: the file backend cannot tell what changed") : "bound by the network"})`,
    );
  }
}

// ---- the crypto floor ----------------------------------------------------------------------------

/**
 * The most any engine in this process could do, whatever its design: one core's rate of the
 * primitives a cell needs (Node's OpenSSL on 4 MiB buffers, as the engine calls them), and what
 * that allows on all cores when the CPU did nothing else (no reading, copying or uploading).
 */
async function cryptoFloor(rawRate: number): Promise<void> {
  const cell = randomFillSync(Buffer.allocUnsafe(CELL_BYTES));
  const key = randomBytes(32);
  /** MiB per CPU-second of `fn` on one 4 MiB cell (awaited: the engine's own ops are async). */
  const rateOf = async (fn: () => unknown) => {
    for (let i = 0; i < 3; i++) await fn();
    const cpu0 = process.cpuUsage();
    const n = 32;
    for (let i = 0; i < n; i++) await fn();
    const c = process.cpuUsage(cpu0);
    return (n * CELL_BYTES) / MiB / ((c.user + c.system) / 1e6);
  };
  const sha = await rateOf(() => createHash("sha256").update(cell).digest());
  // An aes-ghash id, by the engine's own code (cell-crypto.ts) on the main thread.
  const ids = cellCrypto({ mode: "source", ids: "aes-ghash", dedup: key, deks: new Map() }, 0);
  const ghash = await rateOf(() => ids.cell(cell));
  await ids.close();
  const hmac = await rateOf(() => createHmac("sha256", key).update(cell).digest());
  const gcm = await rateOf(() => {
    const c = createCipheriv("aes-256-gcm", key, randomBytes(12));
    for (let i = 0; i < cell.length; i += 256 * 1024) c.update(cell.subarray(i, i + 256 * 1024));
    c.final();
  });
  const cores = os.cpus().length;
  const idRate = IDS === "aes-ghash" ? ghash : IDS === "sha256" ? sha : hmac;
  const floor = MODE === "envelope" ? cores / (1 / idRate + 1 / gcm) : cores * idRate;
  const perCore = floor / cores;
  console.log(
    `\ncrypto floor (per core, Node's OpenSSL, 4 MiB cells): aes-ghash id ${r0(ghash)} MiB/s, SHA-256 ${r0(sha)} MiB/s, HMAC-SHA256 ${r0(hmac)} MiB/s, AES-256-GCM ${r0(gcm)} MiB/s. ` +
      `With all ${cores} cores doing nothing but that, ${MODE} mode with ${IDS} ids (${MODE === "envelope" ? "id + GCM" : "id"}) reaches at most ${r0(floor)} MiB/s = ${(floor / rawRate).toFixed(2)}x the raw read; ` +
      `0.8x of the raw read needs ${((0.8 * rawRate) / perCore).toFixed(1)} cores for the crypto alone.`,
  );
}

// ---- main ----------------------------------------------------------------------------------------

async function main(): Promise<void> {
  console.log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "?"}, ${(os.totalmem() / GiB).toFixed(1)} GiB RAM, node ${process.version}; cell ${CELL_BYTES / MiB} MiB`);
  const base = arg("dir") ?? os.tmpdir();
  const results: Result[] = [];
  const which = backendArg === "both" ? ["file", "ceph"] : [backendArg];
  for (const b of which) {
    if (b !== "file" && b !== "ceph") throw new Error(`--backend ${b}: file, ceph or both`);
    const st = b === "file" ? await fileSetup(base) : await cephSetup();
    try {
      results.push(await bench(st));
    } finally {
      await st.cleanup();
    }
  }
  console.log("\nsummary:");
  for (const r of results) {
    console.log(
      `  ${r.backend}: ${mb(r.written)} written; raw read ${r0(r.rawRate)} MiB/s; engine ${r0(r.engineRate)} MiB/s (${(r.engineRate / r.rawRate).toFixed(2)}x); full backup to the target ${r0(r.fullRate)} MiB/s (${(r.fullRate / r.rawRate).toFixed(2)}x); ` +
        r.incr.map((i) => `${i.label}: moved ${mb(i.stored)} in ${i.s.toFixed(1)} s`).join("; ") +
        `; restore ${r0(r.restoreRate)} MiB/s`,
    );
  }
  for (const r of results) extrapolate(r);
  if (results.length) await cryptoFloor(Math.max(...results.map((r) => r.rawRate)));
}

main().catch((e) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : e);
  process.exitCode = 1;
});
