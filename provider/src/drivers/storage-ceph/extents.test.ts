/**
 * Extents of RBD volumes (extents.ts): the "rbd diff v1" parser on synthetic streams, then against
 * a real Ceph 16 (test/harness/ceph.ts): data written by qemu-io through librbd, snapshots, the
 * changes since a snapshot read with `rbd export-diff`, restores with `rbd import-diff` checked by
 * the sha256 of `rbd export`, cancellation and backpressure checked on the rbd process itself.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { isBaremetalError } from "../../core/errors";
import { cephAvailable, type CephInstance, startCeph } from "../../../../test/harness/ceph";
import { delay, describeWithPeer } from "../../../../test/harness/processes";
import type { Extent } from "../kinds/storage";
import { releaseExtent } from "../storage-file/extents";
import { CephStorageDriver } from "./driver";
import { DiffFormatError, parseRbdDiff } from "./extents";

const KiB = 1024;
const MiB = 1024 * KiB;
const avail = cephAvailable();
const haveQemu = fs.existsSync("/usr/bin/qemu-io");
const why = !avail.ok ? avail.why : !haveQemu ? "qemu-io missing (Debian qemu-utils, qemu-block-extra)" : undefined;
const describeCeph = describeWithPeer({ ok: !why, why }, "storage-ceph extents.test.ts");

const errCode = (e: unknown) => (isBaremetalError(e) ? e.code : `not a BaremetalError: ${String(e)}`);
async function failure(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error("expected a failure");
}
async function collect(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}
const lengthOf = (e: Extent) => ("data" in e ? e.data.length : e.length);
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// ---- the parser, on streams we make ---------------------------------------------------------

function rec(tag: string, ...fields: (number | Buffer | string)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(tag, "ascii")];
  for (const f of fields) {
    if (typeof f === "number") {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt(f));
      parts.push(b);
    } else if (typeof f === "string") {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(Buffer.byteLength(f));
      parts.push(b, Buffer.from(f));
    } else parts.push(f);
  }
  return Buffer.concat(parts);
}
const pattern = (n: number, seed: number) => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4096) b.fill(((i / 4096 + seed) % 250) + 1, i, Math.min(n, i + 4096));
  return b;
};

describe("rbd diff v1 parser", () => {
  test("a large w record is cut into pieces of at most maxBytes that never cross a multiple of it, yielded before the record is read whole", async () => {
    const big = pattern(9 * MiB + 1000, 3);
    const stream = Buffer.concat([
      Buffer.from("rbd diff v1\n"),
      rec("f", "s1"),
      rec("t", "s2"),
      rec("s", 64 * MiB),
      rec("w", MiB + 512, big.length, big),
      rec("z", 12 * MiB, 5 * MiB),
      rec("w", 20 * MiB, 4096, Buffer.alloc(4096)), // data that is zeros: a zero extent
      rec("e"),
    ]);
    let delivered = 0;
    async function* chunks(): AsyncGenerator<Buffer> {
      for (let at = 0; at < stream.length; at += 7777) {
        const c = stream.subarray(at, Math.min(stream.length, at + 7777));
        delivered += c.length;
        yield c;
      }
    }
    const meta: { fromSnap?: string; toSnap?: string; size?: number } = {};
    const out: Extent[] = [];
    let deliveredAtFirst = -1;
    for await (const e of parseRbdDiff(chunks(), { maxBytes: 2 * MiB, meta })) {
      if (deliveredAtFirst < 0) deliveredAtFirst = delivered;
      out.push(e);
    }
    expect(meta).toEqual({ fromSnap: "s1", toSnap: "s2", size: 64 * MiB });
    // The first piece (up to 2 MiB) came out after about 1 MiB of the record, not 9 MiB.
    expect(deliveredAtFirst).toBeLessThan(MiB + 512 + 100 + 7777);
    const data = out.filter((e): e is { offset: number; data: Buffer } => "data" in e);
    expect(data.map((e) => [e.offset, e.data.length])).toEqual([
      [MiB + 512, MiB - 512],
      [2 * MiB, 2 * MiB],
      [4 * MiB, 2 * MiB],
      [6 * MiB, 2 * MiB],
      [8 * MiB, 2 * MiB],
      [10 * MiB, 1000 + 512],
    ]);
    expect(Buffer.concat(data.map((e) => e.data)).equals(big)).toBe(true);
    const zeros = out.filter((e) => !("data" in e)).map((e) => [e.offset, lengthOf(e)]);
    expect(zeros).toEqual([
      [12 * MiB, 2 * MiB],
      [14 * MiB, 2 * MiB],
      [16 * MiB, MiB],
      [20 * MiB, 4096],
    ]);
    for (const e of out) expect(Math.floor(e.offset / (2 * MiB))).toBe(Math.floor((e.offset + lengthOf(e) - 1) / (2 * MiB)));
  });

  test("malformed streams are refused: another header, a cut record, no end, an unknown tag, records out of order", async () => {
    const run = (b: Buffer) =>
      collect(
        parseRbdDiff(
          (async function* () {
            yield b;
          })(),
        ),
      );
    const head = Buffer.from("rbd diff v1\n");
    await expect(run(Buffer.from("rbd diff v2\n"))).rejects.toThrow(DiffFormatError);
    await expect(run(Buffer.concat([head, rec("w", 0, 4096, Buffer.alloc(100, 1))]))).rejects.toThrow(/ended inside a data record/);
    await expect(run(Buffer.concat([head, rec("z", 0, 4096)]))).rejects.toThrow(/ended inside a record tag/);
    await expect(run(Buffer.concat([head, rec("q")]))).rejects.toThrow(/unknown record tag 0x71/);
    await expect(run(Buffer.concat([head, rec("z", 8192, 4096), rec("z", 0, 4096), rec("e")]))).rejects.toThrow(/out of order/);
    expect(await run(Buffer.concat([head, rec("e")]))).toEqual([]);
  });
});

// ---- against Ceph ---------------------------------------------------------------------------

describeCeph("RBD volume extents against Ceph 16 (export-diff / import-diff, qemu-io through librbd)", () => {
  let ceph: CephInstance;
  let drv: CephStorageDriver;
  const SIZE = 128 * MiB;
  /** The ranges changed between s1 and s2, each with its pattern byte. */
  const changed: { offset: number; length: number; byte: number }[] = [];
  const discarded = { offset: 40 * MiB + 128 * KiB, length: 64 * KiB };
  const zeroed = { offset: 90 * MiB, length: 8 * KiB };
  const figures: string[] = [];
  /** Bytes of the extents since s1 (data and zeros). */
  let incrementalBytes = -1;

  /** What s2 holds, byte for byte. */
  function s2Model(): Buffer {
    const m = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE / MiB; i++) if (i % 16 !== 15) m.fill((i % 200) + 17, i * MiB, (i + 1) * MiB);
    for (const c of changed) m.fill(c.byte, c.offset, c.offset + c.length);
    m.fill(0, discarded.offset, discarded.offset + discarded.length);
    m.fill(0, zeroed.offset, zeroed.offset + zeroed.length);
    return m;
  }

  const qemuIo = (image: string, cmds: string[]) =>
    new Promise<void>((resolve, reject) => {
      const args = ["--image-opts", `driver=rbd,pool=volumes,image=${image},conf=${drv.rbd.files().conf},user=baremetal`, ...cmds.flatMap((c) => ["-c", c])];
      execFile("qemu-io", args, { maxBuffer: 64 << 20, timeout: 300000 }, (err, stdout, stderr) => {
        if (err || /fail/i.test(stdout)) reject(new Error(`qemu-io failed: ${String(stderr).slice(-500)} ${String(stdout).slice(-500)}`));
        else resolve();
      });
    });

  /** sha256 of `rbd export SPEC -` (the image's every byte, holes as zeros). */
  const exportSha = (spec: string) =>
    new Promise<string>((resolve, reject) => {
      const child = spawn("rbd", ["-c", ceph.confPath, "export", "--no-progress", spec, "-"], { stdio: ["ignore", "pipe", "pipe"] });
      const h = createHash("sha256");
      let n = 0;
      let err = "";
      child.stdout.on("data", (d: Buffer) => {
        h.update(d);
        n += d.length;
      });
      child.stderr.on("data", (d: Buffer) => (err += d.toString()));
      child.once("close", (code) => (code === 0 && n === SIZE ? resolve(h.digest("hex")) : reject(new Error(`rbd export ${spec}: ${code} (${n} bytes) ${err.slice(-300)}`))));
    });

  /** Captures the rbd children the driver starts. */
  function spyChildren(): { children: ChildProcess[]; restore: () => void } {
    const children: ChildProcess[] = [];
    const orig = drv.rbd.spawn.bind(drv.rbd);
    const spy = jest.spyOn(drv.rbd, "spawn").mockImplementation((args, opts) => {
      const r = orig(args, opts);
      children.push(r.child);
      return r;
    });
    return { children, restore: () => spy.mockRestore() };
  }

  beforeAll(async () => {
    ceph = await startCeph({ mgr: false });
    drv = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey });
    await drv.createVolume({ name: "src", sizeBytes: SIZE });
    // Known data through librbd: each MiB its own pattern, every 16th MiB left unwritten.
    const cmds: string[] = [];
    for (let m = 0; m < SIZE / MiB; m++) if (m % 16 !== 15) cmds.push(`write -P ${(m % 200) + 17} ${m}M 1M`);
    await qemuIo("src", cmds);
    await drv.createSnapshot("src", "s1");
    // About 1% changed: 20 writes of 64 KiB spread over the volume (one across a 1 MiB boundary,
    // one into a never-written MiB), one discard and one write of zeros.
    for (let i = 0; i < 20; i++) changed.push({ offset: i * 6 * MiB + 256 * KiB, length: 64 * KiB, byte: 0xe0 + (i % 16) });
    changed[3] = { offset: 19 * MiB - 16 * KiB, length: 64 * KiB, byte: 0xd3 };
    changed[5] = { offset: 31 * MiB + 512 * KiB, length: 64 * KiB, byte: 0xd5 }; // MiB 31 was a hole
    await qemuIo("src", [...changed.map((c) => `write -P ${c.byte} ${c.offset} ${c.length}`), `discard ${discarded.offset} ${discarded.length}`, `write -z ${zeroed.offset} ${zeroed.length}`]);
    await drv.createSnapshot("src", "s2");
  }, 300000);

  afterAll(async () => {
    await drv?.close();
    await ceph?.stop();
    if (figures.length) process.stdout.write(`ceph extents figures: ${figures.join("; ")}\n`);
  }, 60000);

  test("the changes since s1 are exactly the changed ranges with their bytes, the discard and the zeroed range as zero extents (about 1% of the volume moves)", async () => {
    expect(drv.readsChangesOnly).toBe(true);
    const t0 = Date.now();
    const ext = await collect(drv.readExtents!("src", { snapshot: "s2", since: "s1" }));
    const ms = Date.now() - t0;
    const data = ext.filter((e): e is { offset: number; data: Buffer } => "data" in e);
    const zeros = ext.filter((e) => !("data" in e));
    // Every data extent holds what s2 holds there, and together they cover every changed range.
    const model = s2Model();
    for (const e of data) expect(e.data.equals(model.subarray(e.offset, e.offset + e.data.length))).toBe(true);
    const covered = (o: number) => data.some((e) => e.offset <= o && o < e.offset + e.data.length);
    for (const c of changed) for (let o = c.offset; o < c.offset + c.length; o += 4 * KiB) expect(covered(o)).toBe(true);
    // Nothing else, but for one case: the write into the never-written MiB 31 also brings the
    // zeros between the end of its RADOS object's old data (31 MiB) and the write (Ceph reports
    // the object's growth as changed).
    const extra = data.flatMap((e) => {
      const outside: number[] = [];
      for (let o = e.offset; o < e.offset + e.data.length; o += 4 * KiB) if (!changed.some((c) => c.offset <= o && o < c.offset + c.length)) outside.push(o);
      return outside;
    });
    expect(extra.every((o) => o >= 31 * MiB && o < changed[5].offset)).toBe(true);
    expect(zeros.map((e) => [e.offset, lengthOf(e)])).toEqual([
      [discarded.offset, discarded.length],
      [zeroed.offset, zeroed.length],
    ]);
    const moved = data.reduce((n, e) => n + e.data.length, 0);
    expect(moved).toBe(20 * 64 * KiB + extra.length * 4 * KiB);
    incrementalBytes = moved + discarded.length + zeroed.length;
    figures.push(`incremental since s1: ${moved} data bytes (${((moved / SIZE) * 100).toFixed(2)}% of ${SIZE / MiB} MiB; ${20 * 64} KiB written by qemu-io) + ${zeros.length} zero extents in ${ms} ms`);
  }, 120000);

  test("a full read of s1 restored, then the changes since s1 on top, equal s2 bit for bit (the discard zeroed over old data); a full read of s2 restores s2", async () => {
    const [shaS1, shaS2] = await Promise.all([exportSha("volumes/src@s1"), exportSha("volumes/src@s2")]);
    expect(shaS1).not.toBe(shaS2);
    await drv.createVolume({ name: "r1", sizeBytes: SIZE });
    let t0 = Date.now();
    const full = await drv.writeExtents!("r1", drv.readExtents!("src", { snapshot: "s1" }));
    const fullMs = Date.now() - t0;
    expect(await exportSha("volumes/r1")).toBe(shaS1);
    t0 = Date.now();
    const inc = await drv.writeExtents!("r1", drv.readExtents!("src", { snapshot: "s2", since: "s1" }));
    const incMs = Date.now() - t0;
    expect(inc.bytesWritten).toBe(incrementalBytes);
    expect(await exportSha("volumes/r1")).toBe(shaS2);
    // No snapshot was made on the target, and its size is unchanged.
    expect(await drv.listSnapshots("r1")).toEqual([]);
    expect((await drv.getVolume("r1"))?.sizeBytes).toBe(SIZE);

    await drv.createVolume({ name: "r2", sizeBytes: SIZE });
    const again = await drv.writeExtents!("r2", drv.readExtents!("src", { snapshot: "s2" }));
    expect(await exportSha("volumes/r2")).toBe(shaS2);
    figures.push(`full read+restore of s1: ${full.bytesWritten} bytes in ${fullMs} ms (${Math.round(full.bytesWritten / MiB / (fullMs / 1000))} MB/s); incremental restore ${inc.bytesWritten} bytes in ${incMs} ms; full s2 ${again.bytesWritten} bytes`);
  }, 300000);

  test("extents are at most maxBytes and never cross a multiple of it (4 MiB objects cut into 1 MiB pieces, a write across a 1 MiB boundary cut in two)", async () => {
    const full = await collect(drv.readExtents!("src", { snapshot: "s2", maxBytes: MiB }));
    for (const e of full) {
      expect(lengthOf(e)).toBeLessThanOrEqual(MiB);
      expect(Math.floor(e.offset / MiB)).toBe(Math.floor((e.offset + lengthOf(e) - 1) / MiB));
    }
    expect(full.filter((e) => "data" in e && e.data.length === MiB).length).toBeGreaterThan(100);
    const inc = await collect(drv.readExtents!("src", { snapshot: "s2", since: "s1", maxBytes: MiB }));
    expect(inc.filter((e) => e.offset >= 19 * MiB - 16 * KiB && e.offset < 19 * MiB + 48 * KiB).map((e) => [e.offset, lengthOf(e)])).toEqual([
      [19 * MiB - 16 * KiB, 16 * KiB],
      [19 * MiB, 48 * KiB],
    ]);
    // The default: at most 4 MiB, and 4 MiB data extents come from the pool (release() gives them back).
    const def = await collect(drv.readExtents!("src", { snapshot: "s1" }));
    expect(Math.max(...def.map(lengthOf))).toBe(4 * MiB);
    for (const e of def) releaseExtent(e);
  }, 120000);

  test("backpressure: while the consumer holds off, rbd is not read ahead; cancelling kills rbd (by PID), so do an early stop and a cancelled write", async () => {
    const spy = spyChildren();
    try {
      const ac = new AbortController();
      const it = drv.readExtents!("src", { snapshot: "s1", signal: ac.signal })[Symbol.asyncIterator]();
      const first = await it.next();
      expect(first.done).toBe(false);
      const child = spy.children[0];
      const pid = child.pid!;
      expect(alive(pid)).toBe(true);
      await delay(1500);
      // 128 MiB waiting in rbd; what reached us is one extent plus the pipe's buffer.
      const read = (child.stdout as unknown as { bytesRead: number }).bytesRead;
      expect(read).toBeLessThan(4 * MiB + 2 * MiB);
      figures.push(`read ahead while the consumer waited 1.5 s: ${read} bytes`);
      ac.abort();
      expect(errCode(await failure(it.next()))).toBe("cancelled");
      expect(alive(pid)).toBe(false);
      expect(child.signalCode).toBe("SIGKILL");

      // An early stop (break) kills rbd too.
      for await (const _ of drv.readExtents!("src", { snapshot: "s1" })) break;
      const c2 = spy.children[1];
      expect(c2.exitCode !== null || c2.signalCode !== null).toBe(true);
      expect(alive(c2.pid!)).toBe(false);

      // A write whose source is slow, cancelled halfway.
      await drv.createVolume({ name: "w1", sizeBytes: SIZE });
      const wc = new AbortController();
      async function* slow(): AsyncGenerator<Extent> {
        for (let i = 0; i < 100; i++) {
          yield { offset: i * MiB, data: pattern(MiB, i) };
          if (i === 3) wc.abort();
          await delay(50);
        }
      }
      const werr = await failure(drv.writeExtents!("w1", slow(), wc.signal));
      expect(errCode(werr)).toBe("cancelled");
      const c3 = spy.children[2];
      expect(alive(c3.pid!)).toBe(false);

      // A source that fails: import-diff is killed and never sees an end record.
      async function* broken(): AsyncGenerator<Extent> {
        yield { offset: 0, data: pattern(MiB, 1) };
        throw new Error("the backup target went away");
      }
      const berr = await failure(drv.writeExtents!("w1", broken()));
      expect((berr as Error).message).toMatch(/the backup target went away/);
      expect(alive(spy.children[3].pid!)).toBe(false);
    } finally {
      spy.restore();
    }
  }, 120000);

  test("read rate: a full read through the parser against rbd export-diff into /dev/null, same snapshot, same run", async () => {
    const raw = () =>
      new Promise<number>((resolve, reject) => {
        const t = process.hrtime.bigint();
        const child = spawn("rbd", ["-c", ceph.confPath, "export-diff", "--no-progress", "volumes/src@s2", "-"], { stdio: ["ignore", fs.openSync("/dev/null", "w"), "ignore"] });
        child.once("close", (code) => (code === 0 ? resolve(Number(process.hrtime.bigint() - t) / 1e9) : reject(new Error(`rbd export-diff: ${code}`))));
      });
    const ours = async () => {
      const t = process.hrtime.bigint();
      let n = 0;
      for await (const e of drv.readExtents!("src", { snapshot: "s2" })) {
        n += lengthOf(e);
        releaseExtent(e);
      }
      expect(n).toBeGreaterThan(100 * MiB);
      return Number(process.hrtime.bigint() - t) / 1e9;
    };
    await raw(); // warm both the OSD's cache and the client
    const r1 = await raw();
    const o1 = await ours();
    const r2 = await raw();
    const o2 = await ours();
    const rate = (s: number) => Math.round(SIZE / MiB / s);
    figures.push(`full read of ${SIZE / MiB} MiB: rbd export-diff > /dev/null ${rate(r1)}, ${rate(r2)} MB/s; readExtents ${rate(o1)}, ${rate(o2)} MB/s`);
    // Not yet at the raw rate: each 64 KiB chunk Node reads from the pipe is a fresh buffer, and
    // in a process with jest's large heap V8 pays a full GC per 64 MiB of them (about 0.25x here;
    // the same parser over a pipe in a small process: 536 MB/s against 603 MB/s for the bare
    // stream). This only catches a collapse; the figure is printed.
    expect((r1 + r2) / (o1 + o2)).toBeGreaterThan(0.1);
  }, 120000);

  test("errors: a missing volume, snapshot or since-snapshot is not-found; bad names and maxBytes are validation", async () => {
    expect(errCode(await failure(collect(drv.readExtents!("nope"))))).toBe("not-found");
    expect(errCode(await failure(collect(drv.readExtents!("src", { snapshot: "nope" }))))).toBe("not-found");
    expect(errCode(await failure(collect(drv.readExtents!("src", { snapshot: "s2", since: "nope" }))))).toBe("not-found");
    expect(errCode(await failure(drv.writeExtents!("nope", (async function* (): AsyncGenerator<Extent> {})())))).toBe("not-found");
    expect(errCode(await failure(collect(drv.readExtents!("Bad/Name"))))).toBe("validation");
    expect(errCode(await failure(collect(drv.readExtents!("src", { maxBytes: 100 }))))).toBe("validation");
  }, 60000);
});
