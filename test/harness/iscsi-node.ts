/**
 * Test harness: what a NODE does with a volume, in userspace only (no kernel iSCSI initiator or
 * device-mapper here). It reads and writes the LUN with qemu-io through libiscsi (tgt.ts's
 * `qemuIo`: the attachment's initiator name and CHAP secret, the secret in a 0600 file), reads the
 * storage host's backing file for comparison, scans a whole backing file for plaintext, and reads
 * the config drive a deployment hands the node (the ISO from the image store, extracted by
 * xorriso, a third-party ISO 9660 reader, and labelled as blkid reports it).
 *
 *   const node = iscsiNode(tgt, login, workDir);       // workDir: a private 0700 directory
 *   const header = await readLuks2Header(node.read);
 *   await node.write(offset, ciphertext);
 *   const scan = scanFile(file, [Buffer.from("secret sentence")]);
 *   const drive = readIso(await fetchImage(configDriveUrl));
 *
 * Nothing here starts a process that outlives its call (qemu-io, xorriso and blkid run to their
 * end); temp files holding data or ISO images are 0600 in directories this harness removes.
 */
import { execFileSync } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { ReadAt } from "../../provider/src/drivers/luks/userspace";
import type { IscsiLogin, TgtInstance } from "./tgt";

const MiB = 1024 * 1024;

/** Parses qemu-io's `read -v` dump ("%08x:  xx xx ... ascii") of `length` bytes read at `offset`. */
export function parseQemuIoDump(stdout: string, offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let got = 0;
  for (const line of stdout.split("\n")) {
    const m = /^([0-9a-f]{8,16}):\s+((?:[0-9a-f]{2} ){1,16})/.exec(line);
    if (!m) continue;
    const at = parseInt(m[1], 16) - offset;
    if (at !== got) throw new Error(`qemu-io dump: expected offset ${offset + got}, got line for ${offset + at}`);
    const want = Math.min(16, length - got);
    const bytes = m[2].trim().split(" ").slice(0, want);
    if (bytes.length !== want) throw new Error(`qemu-io dump: short line at ${offset + at}`);
    for (const h of bytes) out[got++] = parseInt(h, 16);
  }
  if (got !== length) throw new Error(`qemu-io dump: ${got} of ${length} bytes`);
  return out;
}

export interface IscsiStats {
  reads: number;
  readBytes: number;
  readMs: number;
  writes: number;
  writeBytes: number;
  writeMs: number;
}

/** A node's raw access to its LUN over iSCSI. */
export interface IscsiNodeView {
  read: ReadAt;
  write(offset: number, data: Buffer): Promise<void>;
  readonly stats: IscsiStats;
}

/**
 * The node's view of the LUN `login` names: qemu-io (libiscsi) with the attachment's initiator name
 * and CHAP. `workDir` (private, 0700) holds the data of each write for a moment, 0600.
 */
export function iscsiNode(tgt: TgtInstance, login: IscsiLogin, workDir: string, timeoutMs = 60_000): IscsiNodeView {
  const stats: IscsiStats = { reads: 0, readBytes: 0, readMs: 0, writes: 0, writeBytes: 0, writeMs: 0 };
  const read: ReadAt = async (offset, length) => {
    const t = Date.now();
    const r = await tgt.qemuIo(login, [`read -v ${offset} ${length}`], { timeoutMs });
    if (r.code !== 0 || !r.stdout.includes(`read ${length}/${length} bytes at offset ${offset}`)) {
      throw new Error(`iSCSI read of ${length} bytes at ${offset} failed (${r.code}): ${r.stderr.trim() || r.stdout.slice(-300)}`);
    }
    const b = parseQemuIoDump(r.stdout, offset, length);
    stats.reads++;
    stats.readBytes += length;
    stats.readMs += Date.now() - t;
    return b;
  };
  const write = async (offset: number, data: Buffer) => {
    const t = Date.now();
    const src = path.join(workDir, `write-${crypto.randomBytes(4).toString("hex")}`);
    fs.writeFileSync(src, data, { mode: 0o600 });
    try {
      const r = await tgt.qemuIo(login, [`write -s ${src} ${offset} ${data.length}`], { timeoutMs });
      if (r.code !== 0 || !r.stdout.includes(`wrote ${data.length}/${data.length} bytes at offset ${offset}`)) {
        throw new Error(`iSCSI write of ${data.length} bytes at ${offset} failed (${r.code}): ${r.stderr.trim() || r.stdout.slice(-300)}`);
      }
    } finally {
      fs.rmSync(src, { force: true });
    }
    stats.writes++;
    stats.writeBytes += data.length;
    stats.writeMs += Date.now() - t;
  };
  return { read, write, stats };
}

/** Reads of the storage host's own bytes (the backing file). */
export function fileReader(file: string): ReadAt {
  return async (offset, length) => {
    const fd = fs.openSync(file, "r");
    try {
      const b = Buffer.alloc(length);
      return b.subarray(0, fs.readSync(fd, b, 0, length, offset));
    } finally {
      fs.closeSync(fd);
    }
  };
}

export interface ScanResult {
  size: number;
  scanned: number;
  /** Chunks (of `chunk` bytes) holding anything but zeros. */
  nonZeroChunks: number;
  /** Each needle found: its first 20 characters and where. */
  hits: string[];
  ms: number;
}

/** Searches the whole file for each needle, at any alignment (chunks overlap by 4 KiB). */
export function scanFile(file: string, needles: Buffer[], chunk = 16 * MiB): ScanResult {
  const size = fs.statSync(file).size;
  const overlap = 4096;
  const zero = Buffer.alloc(chunk + overlap);
  const buf = Buffer.alloc(chunk + overlap);
  const fd = fs.openSync(file, "r");
  let scanned = 0;
  let nonZeroChunks = 0;
  const hits: string[] = [];
  const t0 = Date.now();
  try {
    for (let at = 0; at < size; at += chunk) {
      const n = fs.readSync(fd, buf, 0, Math.min(chunk + overlap, size - at), at);
      scanned += Math.min(chunk, n);
      const view = buf.subarray(0, n);
      if (view.equals(zero.subarray(0, n))) continue;
      nonZeroChunks++;
      for (const needle of needles) {
        const i = view.indexOf(needle);
        if (i >= 0) hits.push(`${JSON.stringify(needle.toString("latin1").slice(0, 20))} at ${at + i}`);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return { size, scanned, nonZeroChunks, hits, ms: Date.now() - t0 };
}

/** GET of an image URL (the config drive in the image store), as a BMC fetches it: no credentials. */
export async function fetchImage(url: string): Promise<Buffer> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`GET ${url.replace(/[^/]+$/, "<name>")}: HTTP ${r.status}`);
  return Buffer.from(await r.arrayBuffer());
}

export interface IsoContents {
  /** The volume label as blkid reports it (cloud-init finds config drives by LABEL=config-2). */
  label: string;
  /** Path (`openstack/latest/meta_data.json`) -> bytes. */
  files: Map<string, Buffer>;
}

/** The files of an ISO 9660 image, extracted by xorriso (Rock Ridge names), in a private temp dir. */
export function readIso(image: Buffer): IsoContents {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "iso-node-"));
  fs.chmodSync(dir, 0o700);
  try {
    const iso = path.join(dir, "d.iso");
    fs.writeFileSync(iso, image, { mode: 0o600 });
    const out = path.join(dir, "x");
    const env = { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` };
    execFileSync("xorriso", ["-osirrox", "on", "-indev", iso, "-extract", "/", out], { stdio: "pipe", env });
    const files = new Map<string, Buffer>();
    for (const rel of fs.readdirSync(out, { recursive: true, encoding: "utf8" })) {
      const p = path.join(out, rel);
      if (fs.statSync(p).isFile()) files.set(rel, fs.readFileSync(p));
    }
    const label = execFileSync("blkid", ["-p", "-o", "value", "-s", "LABEL", iso], { encoding: "utf8", env }).trim();
    return { label, files };
  } finally {
    // xorriso extracts read-only files and directories
    execFileSync("chmod", ["-R", "u+w", dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
