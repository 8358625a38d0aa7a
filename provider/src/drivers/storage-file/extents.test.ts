/**
 * Extents of file volumes (extents.ts through FileStorageDriver): what a backup reads and a
 * restore writes, on real sparse files (no peer needed), and the read rate against `dd` on the
 * same file in the same run.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { isBaremetalError } from "../../core/errors";
import type { Extent } from "../kinds/storage";
import { FileStorageDriver } from "./driver";
import { readFileExtents, releaseExtent } from "./extents";

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;

let dir: string;
let drv: FileStorageDriver;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "file-extents-"));
  drv = new FileStorageDriver({ address: `file://${dir}` });
});

afterAll(async () => {
  await drv?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function collect(it: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

function writeAt(file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, "r+");
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

const sha = (file: string) => createHash("sha256").update(fs.readFileSync(file)).digest("hex");
const filled = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => ((i * 31 + seed) % 251) + 1));
const errCode = (e: unknown) => (isBaremetalError(e) ? e.code : `not a BaremetalError: ${String(e)}`);

async function failure(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error("expected a failure");
}

describe("file volume extents", () => {
  test("a volume reads as its non-zero blocks of maxBytes, aligned; holes and written zeros are left out; the extents rebuild it", async () => {
    await drv.createVolume({ name: "v1", sizeBytes: 64 * MiB });
    const file = await drv.path("v1");
    writeAt(file, 100, filled(1000, 1)); // block 0
    writeAt(file, 5 * MiB - 10, filled(20, 2)); // straddles blocks 4 and 5
    writeAt(file, 10 * MiB, filled(MiB, 3)); // block 10, whole
    writeAt(file, 12 * MiB, Buffer.alloc(MiB)); // block 12: allocated, but zeros
    writeAt(file, 64 * MiB - 1, Buffer.from([9])); // the last byte
    const ext = await collect(drv.readExtents!("v1", { maxBytes: MiB }));
    expect(ext.map((e) => e.offset)).toEqual([0, 4 * MiB, 5 * MiB, 10 * MiB, 63 * MiB]);
    const whole = fs.readFileSync(file);
    const rebuilt = Buffer.alloc(whole.length);
    for (const e of ext) {
      if (!("data" in e)) throw new Error("a file read gives data extents only");
      expect(e.data.length).toBe(MiB);
      expect(e.offset % MiB).toBe(0);
      expect(e.data.equals(whole.subarray(e.offset, e.offset + MiB))).toBe(true);
      e.data.copy(rebuilt, e.offset);
    }
    expect(rebuilt.equals(whole)).toBe(true);
    expect(drv.readsChangesOnly).toBe(false);
    // The default block is 4 MiB.
    expect((await collect(drv.readExtents!("v1"))).map((e) => e.offset)).toEqual([0, 4 * MiB, 8 * MiB, 60 * MiB]);
  });

  test("a snapshot reads as the snapshot; since is ignored (everything comes back); a restore into a fresh volume is bit for bit and stays sparse", async () => {
    await drv.createVolume({ name: "v2", sizeBytes: 32 * MiB });
    const file = await drv.path("v2");
    for (let b = 0; b < 32; b += 3) writeAt(file, b * MiB + 7, filled(300 * 1024, b));
    await drv.createSnapshot("v2", "s1");
    writeAt(file, 3 * MiB, filled(4096, 99));
    await drv.createSnapshot("v2", "s2");
    writeAt(file, 0, filled(4096, 77)); // after s2: not in it

    const s2 = await collect(drv.readExtents!("v2", { snapshot: "s2", maxBytes: MiB }));
    const since = await collect(drv.readExtents!("v2", { snapshot: "s2", since: "s1", maxBytes: MiB }));
    expect(since.map((e) => e.offset)).toEqual(s2.map((e) => e.offset));
    expect(s2.length).toBe(11);

    await drv.createVolume({ name: "r2", sizeBytes: 32 * MiB });
    const r = await drv.writeExtents!("r2", drv.readExtents!("v2", { snapshot: "s2", maxBytes: MiB }));
    expect(r.bytesWritten).toBe(11 * MiB);
    const snapFile = path.join(dir, "v2@s2.img");
    expect(sha(await drv.path("r2"))).toBe(sha(snapFile));
    expect(sha(await drv.path("r2"))).not.toBe(sha(file));
    // Only the written blocks are allocated (11 MiB of 32).
    expect(fs.statSync(await drv.path("r2")).blocks * 512).toBeLessThanOrEqual(11 * MiB + 64 * 1024);
  });

  test("a zero extent zeros data under it, and leaves a hole a hole; data extents land at their offsets", async () => {
    await drv.createVolume({ name: "z1", sizeBytes: 8 * MiB });
    const file = await drv.path("z1");
    writeAt(file, 0, filled(2 * MiB, 5));
    const before = fs.statSync(file).blocks;
    async function* extents(): AsyncGenerator<Extent> {
      yield { offset: 1000, length: 5000, zero: true }; // inside data: zeroed
      yield { offset: 3 * MiB, data: filled(4096, 6) };
      yield { offset: 5 * MiB, length: 2 * MiB, zero: true }; // a hole: stays one
    }
    const r = await drv.writeExtents!("z1", extents());
    expect(r.bytesWritten).toBe(5000 + 4096 + 2 * MiB);
    const now = fs.readFileSync(file);
    const expected = Buffer.alloc(8 * MiB);
    filled(2 * MiB, 5).copy(expected, 0);
    expected.fill(0, 1000, 6000);
    filled(4096, 6).copy(expected, 3 * MiB);
    expect(now.equals(expected)).toBe(true);
    expect(fs.statSync(file).blocks - before).toBeLessThanOrEqual(4096 / 512);
  });

  test("errors: a missing volume or snapshot is not-found, an extent past the end and a bad maxBytes are validation, a cancelled read says cancelled and closes the file", async () => {
    expect(errCode(await failure(collect(drv.readExtents!("nope"))))).toBe("not-found");
    expect(errCode(await failure(collect(drv.readExtents!("v2", { snapshot: "nope" }))))).toBe("not-found");
    expect(errCode(await failure(collect(drv.readExtents!("v2", { maxBytes: 1000 }))))).toBe("validation");
    expect(errCode(await failure(collect(drv.readExtents!("../etc"))))).toBe("validation");
    expect(errCode(await failure(drv.writeExtents!("nope", (async function* (): AsyncGenerator<Extent> {})())))).toBe("not-found");
    const tooFar = await failure(drv.writeExtents!("z1", (async function* () { yield { offset: 8 * MiB - 10, data: Buffer.alloc(20, 1) } as Extent; })()));
    expect(errCode(tooFar)).toBe("validation");
    expect((tooFar as Error).message).toMatch(/ends past the end/);

    const fds = () => fs.readdirSync("/proc/self/fd").length;
    const open = fds();
    const ac = new AbortController();
    let seen = 0;
    const err = await failure(
      (async () => {
        for await (const _ of drv.readExtents!("v2", { maxBytes: MiB, signal: ac.signal })) {
          if (++seen === 2) ac.abort();
        }
      })(),
    );
    expect(errCode(err)).toBe("cancelled");
    expect(seen).toBe(2);
    // An early stop by the consumer closes the file too.
    for await (const _ of drv.readExtents!("v2", { maxBytes: MiB })) break;
    expect(fds()).toBe(open);
  });
});

describe("direct reads (O_DIRECT)", () => {
  const fincore = async (file: string) => Number((await execFileP("fincore", ["--bytes", "--noheadings", "--output", "RES", file])).stdout.trim());
  const fsType = async (p: string) => (await execFileP("stat", ["-f", "-c", "%T", p])).stdout.trim();

  test("give the same extents as reads through the page cache, leave the page cache alone, and cope with a leading hole, odd block sizes and a tail that is not a multiple of 4 KiB", async () => {
    // A hole first (a hole reads at any buffer address: the buffer's alignment is learnt wrong
    // there and must be found again on data), then data, a hole, and an odd-sized tail.
    const file = path.join(dir, "direct.img");
    const size = 21 * MiB + 1000;
    fs.writeFileSync(file, Buffer.alloc(0));
    fs.truncateSync(file, size);
    writeAt(file, 8 * MiB + 3, filled(3 * MiB, 7));
    writeAt(file, 16 * MiB, filled(MiB, 8));
    writeAt(file, size - 700, filled(700, 9));
    const whole = fs.readFileSync(file);
    await execFileP("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);

    for (const maxBytes of [4 * MiB, MiB, 3 * 512]) {
      const direct = await collect(readFileExtents({ file, what: "direct" }, { maxBytes }));
      const plain = await collect(readFileExtents({ file, what: "direct", direct: false }, { maxBytes }));
      expect(direct.map((e) => e.offset)).toEqual(plain.map((e) => e.offset));
      for (const [i, e] of direct.entries()) {
        if (!("data" in e) || !("data" in plain[i])) throw new Error("a file read gives data extents only");
        expect(e.data.equals(plain[i].data)).toBe(true);
        expect(e.data.equals(whole.subarray(e.offset, e.offset + e.data.length))).toBe(true);
        releaseExtent(e);
      }
      const last = direct[direct.length - 1] as { offset: number; data: Buffer };
      expect(last.offset + last.data.length).toBe(size);
    }

    // The page cache: what the direct reads left there (nothing, on a disk filesystem), against a
    // read through it. On tmpfs the page cache is where the file lives: nothing to tell apart.
    if ((await fsType(dir)) !== "tmpfs") {
      await execFileP("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);
      await collect(readFileExtents({ file, what: "direct" }));
      expect(await fincore(file)).toBe(0);
      await collect(readFileExtents({ file, what: "direct", direct: false }));
      expect(await fincore(file)).toBeGreaterThan(4 * MiB);
    }
    fs.rmSync(file);
  });
});
