/**
 * LUKS2 header sessions on RBD volumes: cryptsetup works on a local copy of the volume's first
 * 16 MiB (the LUKS2 header: two metadata copies and the keyslots area), and what it changed is
 * written back to the image in an order that keeps the volume openable at every instant.
 *
 * Why a copy: cryptsetup needs a file or block device, and here there is neither kernel RBD nor
 * NBD (see ../../../../../shared/PEERS.md); Ceph's own `rbd encryption format` can write a header
 * but not add or remove keyslots. The copy lives in a private 0700 directory (0600 file) and holds
 * only what is on the volume anyway (wrapped keyslots, never a key); it is removed on close.
 *
 * - open: a volume that starts with the LUKS magic is copied (`rbd export`, stopped after 16 MiB);
 *   any other volume is NOT copied (its first bytes may be plaintext data): the copy starts as
 *   zeros and `isLuks` is false. A header whose keyslots area ends past 16 MiB is refused.
 * - commit: the copy is compared with what was read (4 KiB blocks) and the changed ranges are
 *   written with `rbd import-diff` of a diff stream we make (Ceph's documented "rbd diff v1"
 *   format: a `w` record per range, then `e`). Three groups, each one import-diff (so a group is on
 *   the volume before the next starts): the keyslots area, the primary metadata copy, the
 *   secondary copy. Default order: area first (a new keyslot's material exists before any header
 *   names it); `headersFirst` for removals (no header names a keyslot whose material is gone).
 *   Each metadata copy is 16 KiB inside one 4 MiB RADOS object, so Ceph writes it atomically; and
 *   cryptsetup, like the kernel, uses whichever copy has a valid checksum and the higher seqid.
 *   Before writing, the volume's header is read again and must still be what was copied (someone
 *   else changed it meanwhile: a `conflict`, nothing written); after writing it is read back and
 *   must equal the copy (a `backend` error otherwise).
 *   When the volume held no LUKS header, the whole 16 MiB are written (a fresh format must wipe
 *   the keyslots area on the volume, not just where the copy differs from zeros).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { BaremetalError, isBaremetalError } from "../../core/errors";
import type { HeaderAccess } from "../kinds/storage";
import { readLuks2Header } from "../luks/userspace";
import type { CephStorageDriver } from "./driver";
import { LUKS2_HEADER_BYTES, readHead } from "./luks";

const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
const BLOCK = 4096;
/** The local copy is a little larger than the header, so cryptsetup sees room for data. */
const COPY_BYTES = LUKS2_HEADER_BYTES + 1024 * 1024;

export interface Range {
  offset: number;
  data: Buffer;
}

/** An "rbd diff v1" stream that writes `ranges` (and changes nothing else: no snapshots, no resize). */
export function diffStream(ranges: Range[]): Buffer {
  const parts: Buffer[] = [Buffer.from("rbd diff v1\n", "ascii")];
  for (const r of ranges) {
    const head = Buffer.alloc(17);
    head.write("w", 0, "ascii");
    head.writeBigUInt64LE(BigInt(r.offset), 1);
    head.writeBigUInt64LE(BigInt(r.data.length), 9);
    parts.push(head, r.data);
  }
  parts.push(Buffer.from("e", "ascii"));
  return Buffer.concat(parts);
}

/** The ranges where `now` differs from `before`, in blocks of 4 KiB, adjacent blocks merged. */
export function changedRanges(before: Buffer, now: Buffer, from = 0, to = now.length): Range[] {
  const out: Range[] = [];
  let start = -1;
  for (let off = from; off < to; off += BLOCK) {
    const end = Math.min(off + BLOCK, to);
    const differs = !now.subarray(off, end).equals(before.subarray(off, end));
    if (differs && start < 0) start = off;
    if (!differs && start >= 0) {
      out.push({ offset: start, data: now.subarray(start, off) });
      start = -1;
    }
  }
  if (start >= 0) out.push({ offset: start, data: now.subarray(start, to) });
  return out;
}

/** Writes `ranges` into the volume with one `rbd import-diff` (returns when rbd has). */
export async function writeRanges(driver: CephStorageDriver, volume: string, ranges: Range[]): Promise<void> {
  if (ranges.length === 0) return;
  const spec = `${driver.pool}/${volume}`;
  const what = `writing ${ranges.reduce((n, r) => n + r.data.length, 0)} bytes of the LUKS2 header of ${spec}`;
  const { child, stderr } = driver.rbd.spawn(["import-diff", "--no-progress", "-", spec], { stdin: true });
  const timer = setTimeout(() => child.kill("SIGKILL"), driver.rbd.commandTimeoutMs);
  try {
    await new Promise<void>((resolve, reject) => {
      child.once("error", reject);
      child.stdin!.on("error", () => undefined); // a failing rbd closes its stdin: the exit code tells
      child.once("close", (code) => (code === 0 ? resolve() : reject(driver.rbd.failed(code, stderr(), what))));
      child.stdin!.end(diffStream(ranges));
    });
  } catch (e) {
    throw isBaremetalError(e) ? e : new BaremetalError("internal", `${what}: ${(e as Error).message}`, { cause: e });
  } finally {
    clearTimeout(timer);
  }
}

/** Where the metadata and keyslots of a LUKS2 header end (its first data segment's offset). */
async function headerEnd(copy: Buffer, what: string): Promise<{ hdrSize: number; end: number }> {
  const read = async (offset: number, length: number) => copy.subarray(offset, offset + length);
  const h = await readLuks2Header(read);
  const segments = Object.values((h.metadata.segments ?? {}) as Record<string, { offset?: string }>);
  const offsets = segments.map((s) => Number(s.offset)).filter((n) => Number.isSafeInteger(n));
  const end = offsets.length ? Math.min(...offsets) : LUKS2_HEADER_BYTES;
  if (end > LUKS2_HEADER_BYTES) {
    throw new BaremetalError("conflict", `${what}: the LUKS2 header takes ${end} bytes; only headers up to ${LUKS2_HEADER_BYTES} bytes (cryptsetup's default) can be changed in place`);
  }
  return { hdrSize: h.hdrSize, end };
}

/** Opens a header session on `volume` (see the top of this file). */
export async function openHeader(driver: CephStorageDriver, volume: string): Promise<HeaderAccess> {
  const spec = `${driver.pool}/${volume}`;
  const what = `the LUKS2 header of ${spec}`;
  const magic = await readHead(driver, volume, LUKS_MAGIC.length);
  const isLuks = magic.equals(LUKS_MAGIC);
  let base: Buffer = Buffer.alloc(LUKS2_HEADER_BYTES);
  if (isLuks) {
    base = Buffer.alloc(LUKS2_HEADER_BYTES);
    (await readHead(driver, volume, LUKS2_HEADER_BYTES)).copy(base);
    await headerEnd(base, what);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "baremetal-luks-"));
  fs.chmodSync(dir, 0o700);
  const file = path.join(dir, "header");
  const fd = fs.openSync(file, "wx", 0o600);
  try {
    fs.writeSync(fd, base, 0, base.length, 0);
    fs.ftruncateSync(fd, COPY_BYTES);
  } finally {
    fs.closeSync(fd);
  }
  let closed = false;
  let wasLuks = isLuks;

  const current = (): Buffer => {
    const now = Buffer.alloc(LUKS2_HEADER_BYTES);
    const f = fs.openSync(file, "r");
    try {
      fs.readSync(f, now, 0, now.length, 0);
    } finally {
      fs.closeSync(f);
    }
    return now;
  };

  return {
    file,
    get isLuks() {
      return wasLuks;
    },
    async commit(opts: { headersFirst?: boolean } = {}) {
      if (closed) throw new BaremetalError("internal", `${what}: the header session is closed`);
      const now = current();
      if (now.equals(base)) return;
      if (!now.subarray(0, LUKS_MAGIC.length).equals(LUKS_MAGIC)) throw new BaremetalError("internal", `${what}: the local copy holds no LUKS header; nothing written`);
      const { hdrSize, end } = await headerEnd(now, what);
      // Someone else's change since we read it would be lost: refuse instead.
      const onVolume = await readHead(driver, volume, LUKS2_HEADER_BYTES);
      const expected = wasLuks ? base : undefined;
      if (expected ? !onVolume.equals(expected.subarray(0, onVolume.length)) : onVolume.subarray(0, LUKS_MAGIC.length).equals(LUKS_MAGIC)) {
        throw new BaremetalError("conflict", `${what} changed while it was being updated (another rotation or tool?); nothing was written: run the operation again`);
      }
      const groups = wasLuks
        ? { primary: changedRanges(base, now, 0, hdrSize), secondary: changedRanges(base, now, hdrSize, 2 * hdrSize), area: changedRanges(base, now, 2 * hdrSize, end) }
        : // A fresh header: everything, the keyslots area included (it must be wiped on the volume too).
          { primary: [{ offset: 0, data: now.subarray(0, hdrSize) }], secondary: [{ offset: hdrSize, data: now.subarray(hdrSize, 2 * hdrSize) }], area: [{ offset: 2 * hdrSize, data: now.subarray(2 * hdrSize, end) }] };
      const order = opts.headersFirst ? [groups.primary, groups.secondary, groups.area] : [groups.area, groups.primary, groups.secondary];
      for (const ranges of order) await writeRanges(driver, volume, ranges);
      const back = await readHead(driver, volume, LUKS2_HEADER_BYTES);
      if (!back.subarray(0, end).equals(now.subarray(0, end))) {
        throw new BaremetalError("backend", `${what}: read back after writing, it differs from what cryptsetup wrote; check the cluster (\`ceph -s\`) and run the operation again`);
      }
      base = now;
      wasLuks = true;
    },
    async close() {
      if (closed) return;
      closed = true;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
