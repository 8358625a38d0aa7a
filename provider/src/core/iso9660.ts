/**
 * A small, deterministic ISO 9660 (ECMA-119) image writer with Rock Ridge and Joliet names,
 * written from the public specifications (ECMA-119 2nd ed., SUSP 1.12 / RRIP 1.09 (IEEE
 * P1281/P1282 drafts), Microsoft's Joliet specification). Enough for config drives: regular
 * files and their implied directories, nothing else (no symlinks, boot records, multi-extent
 * files or sessions).
 *
 * Layout, in 2048-byte sectors:
 *   0-15   system area (zeros)
 *   16     primary volume descriptor (PVD): ECMA-119 names, plus Rock Ridge in System Use
 *   17     supplementary volume descriptor: Joliet (escape sequence %/E, UCS-2 level 3)
 *   18     volume descriptor set terminator
 *   19...  path tables: primary L (little-endian), primary M (big-endian), Joliet L, Joliet M
 *   ...    primary directories, in path table order (each a whole number of sectors; a
 *          record never crosses a sector boundary)
 *   ...    Joliet directories, in their path table order
 *   ...    one sector of SUSP continuation area holding the ER entry (too long for a record)
 *   ...    file data, one extent per file, in path order; both trees point at the same extents
 *
 * Primary names are ISO level 1 (8.3 d-characters, ";1" versions; collisions get a "_N"
 * suffix). The real names are carried twice: Rock Ridge NM entries (UTF-8, read by Linux,
 * xorriso, isoinfo -R) and Joliet identifiers (UCS-2 big-endian, up to 64 characters; the
 * Joliet volume identifier holds only the first 16 characters of the volume id).
 * Every timestamp is the one `date` given (default 2000-01-01T00:00:00Z), every owner is
 * 0:0, files are r--r--r-- and directories r-xr-xr-x, and files are laid out in sorted path
 * order, so the same input always yields the same bytes.
 */

export interface IsoFile {
  path: string;
  data: Buffer;
}

export interface BuildIsoOptions {
  /** Up to 32 of A-Z a-z 0-9 _ -. Written as given (see VOLUME_ID below). */
  volumeId: string;
  files: IsoFile[];
  /** Every timestamp in the image; default 2000-01-01T00:00:00Z. */
  date?: Date;
}

const SECTOR = 2048;
const FIRST_FREE = 19; // after the system area and the three volume descriptors
const MAX_LEVELS = 8; // ECMA-119 6.8.2.1: the root is level 1, no directory deeper than 8
const JOLIET_MAX = 64; // UCS-2 characters in a Joliet identifier (128 bytes)
// ECMA-119 asks d-characters (A-Z 0-9 _) of the volume identifier; lower case and "-" are a
// widespread extension (genisoimage -V config-2 writes them verbatim) that blkid reports as
// given, and config drives are found by LABEL=config-2, so the identifier is written as is.
const VOLUME_ID = /^[A-Za-z0-9_-]{1,32}$/;
// Joliet forbids * / : ; ? \ and control characters; "/" already separates path components.
const BAD_NAME_CHAR = /[\u0000-\u001f*:;?\\]/;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;

const RRIP_ID = "RRIP_1991A";
const RRIP_DESCRIPTOR = "THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SOURCE =
  "PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

interface Node {
  name: string; // the real name (Rock Ridge NM, Joliet)
  parent: Node | null; // null for the root only
  kids?: Node[]; // set for directories
  data?: Buffer; // set for files
  iso: string; // primary identifier: "NAME" for directories, "NAME.EXT;1" for files
  joliet: Buffer; // UCS-2 BE identifier
  extent: number; // file data (files only)
}

/** One of the two directory hierarchies (primary + Rock Ridge, or Joliet) over the same nodes. */
interface Tree {
  joliet: boolean;
  kids: Map<Node, Node[]>; // children of each directory in the order the spec requires
  dirs: Node[]; // path table order: by level, then parent number, then identifier
  extent: Map<Node, number>; // directory extents
  size: Map<Node, number>; // directory sizes in bytes
}

export function buildIso(opts: BuildIsoOptions): Buffer {
  const date = opts.date ?? new Date(Date.UTC(2000, 0, 1));
  if (!VOLUME_ID.test(opts.volumeId)) {
    throw new Error(`invalid ISO volume id ${JSON.stringify(opts.volumeId)}: use 1 to 32 of A-Z a-z 0-9 _ -`);
  }
  if (!(date instanceof Date) || !(date.getUTCFullYear() >= 1900 && date.getUTCFullYear() <= 2155)) {
    throw new Error(`invalid ISO date ${String(date)}: the year must be 1900 to 2155`);
  }
  const root = buildTree(opts.files);
  const files: Node[] = [];
  (function walk(n: Node) {
    if (n.kids) nameIsoKids(n.kids), n.kids.forEach(walk);
    else files.push(n);
  })(root);
  const primary = makeTree(root, false);
  const joliet = makeTree(root, true);
  if (primary.dirs.length > 0xffff) throw new Error(`too many directories for ISO 9660 path tables (${primary.dirs.length})`);
  const stamp = recordDate(date);
  const er = suspEntry("ER", [RRIP_ID.length, RRIP_DESCRIPTOR.length, RRIP_SOURCE.length, 1], RRIP_ID + RRIP_DESCRIPTOR + RRIP_SOURCE);

  // Sizes first (they do not depend on locations), then locations, then the bytes.
  const ptSize = (t: Tree) => pathTable(t, true).length;
  const ptSectors = (t: Tree) => sectors(ptSize(t));
  let next = FIRST_FREE;
  const [pl, pm, jl, jm] = [primary, primary, joliet, joliet].map((t) => {
    const at = next;
    next += ptSectors(t);
    return at;
  });
  for (const t of [primary, joliet]) {
    for (const d of t.dirs) t.size.set(d, directory(t, d, stamp, 0, er.length).length);
    for (const d of t.dirs) t.extent.set(d, next), (next += sectors(t.size.get(d)!));
  }
  const ceSector = next++;
  files.sort((a, b) => (pathOf(a) < pathOf(b) ? -1 : 1));
  for (const f of files) {
    f.extent = f.data!.length ? next : 0; // an empty file occupies no sector: location 0
    next += sectors(f.data!.length);
  }

  const out = Buffer.alloc(next * SECTOR);
  const put = (sector: number, b: Buffer) => b.copy(out, sector * SECTOR);
  put(16, volumeDescriptor(primary, opts.volumeId, date, stamp, next, ptSize(primary), pl, pm));
  put(17, volumeDescriptor(joliet, opts.volumeId, date, stamp, next, ptSize(joliet), jl, jm));
  put(18, Buffer.from([255, ...Buffer.from("CD001"), 1]));
  put(pl, pathTable(primary, true));
  put(pm, pathTable(primary, false));
  put(jl, pathTable(joliet, true));
  put(jm, pathTable(joliet, false));
  for (const t of [primary, joliet]) for (const d of t.dirs) put(t.extent.get(d)!, directory(t, d, stamp, ceSector, er.length));
  put(ceSector, er);
  for (const f of files) put(f.extent, f.data!);
  return out;
}

// ---- input -----------------------------------------------------------------------------

function buildTree(files: IsoFile[]): Node {
  const root: Node = { name: "", parent: null, kids: [], iso: "", joliet: Buffer.alloc(0), extent: 0 };
  const seen = new Set<string>();
  for (const f of files) {
    const where = `ISO file path ${JSON.stringify(f.path)}`;
    if (typeof f.path !== "string") throw new Error(`${where}: the path must be a string`);
    if (!Buffer.isBuffer(f.data)) throw new Error(`${where}: data must be a Buffer`);
    if (f.data.length > 0xffffffff) throw new Error(`${where}: larger than 4 GiB - 1, the ISO 9660 limit for one extent`);
    if (seen.has(f.path)) throw new Error(`${where}: duplicate path`);
    seen.add(f.path);
    const parts = f.path.split("/");
    if (parts.length > MAX_LEVELS) throw new Error(`${where}: deeper than the ${MAX_LEVELS} directory levels ISO 9660 allows`);
    let dir = root;
    parts.forEach((name, i) => {
      checkName(name, where);
      const isFile = i === parts.length - 1;
      let n = dir.kids!.find((k) => k.name === name);
      if (n && (isFile || !n.kids)) throw new Error(`${where}: "${parts.slice(0, i + 1).join("/")}" is both a file and a directory`);
      if (!n) {
        n = { name, parent: dir, iso: "", joliet: Buffer.from(name, "utf16le").swap16(), extent: 0 };
        if (isFile) n.data = f.data;
        else n.kids = [];
        dir.kids!.push(n);
      }
      dir = n;
    });
  }
  return root;
}

function checkName(name: string, where: string): void {
  if (name === "") throw new Error(`${where}: empty name (paths are relative, "/"-separated, without "//" or a trailing "/")`);
  if (name === "." || name === "..") throw new Error(`${where}: "${name}" is not allowed as a name`);
  if (BAD_NAME_CHAR.test(name)) throw new Error(`${where}: the name "${name}" has a character Joliet forbids (* : ; ? \\ or a control character)`);
  if (/[\ud800-\udfff]/.test(name)) throw new Error(`${where}: the name "${name}" has a character outside UCS-2, which Joliet cannot hold`);
  if (name.length > JOLIET_MAX) throw new Error(`${where}: the name "${name}" is ${name.length} characters, more than the ${JOLIET_MAX} Joliet allows`);
  // The longest directory record: 33 + 14 ("XXXXXXXX.XXX;1") + 1 pad + PX 36 + NM 5 + name <= 255.
  if (Buffer.byteLength(name) > 166) throw new Error(`${where}: the name "${name}" is longer than 166 UTF-8 bytes, too long for a Rock Ridge NM entry`);
}

/** Gives the children of one directory unique ISO level 1 identifiers (8.3 d-characters). */
function nameIsoKids(kids: Node[]): void {
  const used = new Set<string>();
  const dchars = (s: string) => s.toUpperCase().replace(/[^A-Z0-9_]/g, "_");
  for (const k of [...kids].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const dot = k.kids ? -1 : k.name.lastIndexOf(".");
    const base = dchars(dot > 0 ? k.name.slice(0, dot) : k.name).slice(0, 8);
    const ext = dot > 0 ? dchars(k.name.slice(dot + 1)).slice(0, 3) : "";
    const id = (stem: string) => (k.kids ? stem : `${stem}.${ext};1`);
    let stem = base;
    for (let n = 1; used.has(id(stem)); n++) stem = `${base.slice(0, 7 - String(n).length)}_${n}`;
    used.add((k.iso = id(stem)));
  }
}

function pathOf(n: Node): string {
  return n.parent ? `${pathOf(n.parent)}/${n.name}` : "";
}

// ---- the two trees ---------------------------------------------------------------------

/** ECMA-119 9.3: by name, then extension (the shorter padded with spaces), then version. */
function compareIso(a: Node, b: Node): number {
  const [an, ae = ""] = a.iso.replace(/;1$/, "").split(".");
  const [bn, be = ""] = b.iso.replace(/;1$/, "").split(".");
  const pad = (x: string, y: string) => [x.padEnd(y.length), y.padEnd(x.length)];
  const [x1, y1] = pad(an, bn);
  const [x2, y2] = pad(ae, be);
  return x1 < y1 ? -1 : x1 > y1 ? 1 : x2 < y2 ? -1 : x2 > y2 ? 1 : 0;
}

function makeTree(root: Node, joliet: boolean): Tree {
  const kids = new Map<Node, Node[]>();
  const dirs = [root];
  for (let i = 0; i < dirs.length; i++) {
    const sorted = [...dirs[i].kids!].sort(joliet ? (a, b) => Buffer.compare(a.joliet, b.joliet) : compareIso);
    kids.set(dirs[i], sorted);
    dirs.push(...sorted.filter((k) => k.kids));
  }
  return { joliet, kids, dirs, extent: new Map(), size: new Map() };
}

function identifier(t: Tree, n: Node): Buffer {
  return t.joliet ? n.joliet : Buffer.from(n.iso, "latin1");
}

/** The extent of directory `d`: ".", "..", then its children, packed into whole sectors. */
function directory(t: Tree, d: Node, stamp: Buffer, ceSector: number, erLength: number): Buffer {
  const parent = d.parent ?? d;
  const rr = !t.joliet;
  const dirPx = (n: Node) => px(S_IFDIR | 0o555, 2 + n.kids!.filter((k) => k.kids).length);
  const records = [
    // SUSP: the root's "." starts with SP, and points (CE) at the continuation area holding ER.
    record(Buffer.from([0]), t.extent.get(d) ?? 0, t.size.get(d) ?? 0, true, stamp,
      rr ? Buffer.concat([...(d === parent ? [sp(), ce(ceSector, erLength)] : []), dirPx(d)]) : undefined),
    record(Buffer.from([1]), t.extent.get(parent) ?? 0, t.size.get(parent) ?? 0, true, stamp, rr ? dirPx(parent) : undefined),
  ];
  for (const k of t.kids.get(d)!) {
    const su = rr ? Buffer.concat([k.kids ? dirPx(k) : px(S_IFREG | 0o444, 1), nm(k.name)]) : undefined;
    const [extent, size] = k.kids ? [t.extent.get(k) ?? 0, t.size.get(k) ?? 0] : [k.extent, k.data!.length];
    records.push(record(identifier(t, k), extent, size, !!k.kids, stamp, su));
  }
  const parts: Buffer[] = [];
  let used = 0; // bytes used in the current sector
  for (const r of records) {
    if (used + r.length > SECTOR) parts.push(Buffer.alloc(SECTOR - used)), (used = 0);
    parts.push(r);
    used += r.length;
  }
  parts.push(Buffer.alloc((SECTOR - used) % SECTOR));
  return Buffer.concat(parts);
}

/** ECMA-119 9.1: a directory record. */
function record(id: Buffer, extent: number, size: number, isDir: boolean, stamp: Buffer, su?: Buffer): Buffer {
  const pad = id.length % 2 === 0 ? 1 : 0; // keeps the System Use area at an even offset
  const bare = 33 + id.length + pad + (su?.length ?? 0);
  const r = Buffer.alloc(bare + (bare % 2));
  if (r.length > 255) throw new Error(`ISO directory record for ${id.toString("latin1")} is too long`);
  r[0] = r.length;
  both32(r, 2, extent);
  both32(r, 10, size);
  stamp.copy(r, 18);
  r[25] = isDir ? 2 : 0;
  both16(r, 28, 1); // volume sequence number
  r[32] = id.length;
  id.copy(r, 33);
  su?.copy(r, 33 + id.length + pad);
  return r;
}

/** ECMA-119 9.4: one path table, little-endian (L) or big-endian (M). */
function pathTable(t: Tree, little: boolean): Buffer {
  const number = new Map(t.dirs.map((d, i) => [d, i + 1]));
  return Buffer.concat(
    t.dirs.map((d) => {
      const id = d.parent ? identifier(t, d) : Buffer.from([0]);
      const r = Buffer.alloc(8 + id.length + (id.length % 2));
      r[0] = id.length;
      const extent = t.extent.get(d) ?? 0;
      const parent = number.get(d.parent ?? d)!;
      if (little) r.writeUInt32LE(extent, 2), r.writeUInt16LE(parent, 6);
      else r.writeUInt32BE(extent, 2), r.writeUInt16BE(parent, 6);
      id.copy(r, 8);
      return r;
    }),
  );
}

/** ECMA-119 8.4 (primary) or 8.5 with Joliet's escape sequence (supplementary). */
function volumeDescriptor(t: Tree, volumeId: string, date: Date, stamp: Buffer, total: number, ptSize: number, l: number, m: number): Buffer {
  const b = Buffer.alloc(SECTOR);
  const text = (s: string, at: number, len: number) => {
    if (!t.joliet) return void b.write(s.padEnd(len), at, len, "latin1");
    const chars = Math.floor(len / 2); // Joliet: UCS-2 BE, space padded (a 16-character volume id)
    Buffer.from(s.slice(0, chars).padEnd(chars), "utf16le").swap16().copy(b, at);
  };
  b[0] = t.joliet ? 2 : 1;
  b.write("CD001", 1, "latin1");
  b[6] = 1;
  text("", 8, 32); // system identifier
  text(volumeId, 40, 32);
  both32(b, 80, total);
  if (t.joliet) b.write("%/E", 88, "latin1"); // UCS-2 level 3
  both16(b, 120, 1); // volume set size
  both16(b, 124, 1); // volume sequence number
  both16(b, 128, SECTOR);
  both32(b, 132, ptSize);
  b.writeUInt32LE(l, 140);
  b.writeUInt32BE(m, 148);
  record(Buffer.from([0]), t.extent.get(t.dirs[0])!, t.size.get(t.dirs[0])!, true, stamp).copy(b, 156);
  for (const [at, len] of [[190, 128], [318, 128], [446, 128], [574, 128], [702, 37], [739, 37], [776, 37]]) text("", at, len);
  const digits = date.toISOString().replace(/\D/g, "").slice(0, 14) + "00"; // YYYYMMDDHHMMSS + hundredths
  b.write(digits, 813, "latin1"); // creation
  b.write(digits, 830, "latin1"); // modification
  b.write("0".repeat(16), 847, "latin1"); // expiration: none
  b.write(digits, 864, "latin1"); // effective
  b[881] = 1; // file structure version
  return b;
}

// ---- System Use Sharing Protocol and Rock Ridge entries --------------------------------

function suspEntry(sig: string, head: number[], tail: string | Buffer = Buffer.alloc(0)): Buffer {
  const body = Buffer.concat([Buffer.from(head), typeof tail === "string" ? Buffer.from(tail, "latin1") : tail]);
  return Buffer.concat([Buffer.from(sig, "latin1"), Buffer.from([4 + body.length, 1]), body]);
}

const sp = () => suspEntry("SP", [0xbe, 0xef, 0]);
const ce = (sector: number, length: number) => suspEntry("CE", [...both32(null, 0, sector), ...both32(null, 0, 0), ...both32(null, 0, length)]);
const px = (mode: number, links: number) => suspEntry("PX", [mode, links, 0, 0].flatMap((v) => [...both32(null, 0, v)]));
const nm = (name: string) => suspEntry("NM", [0], Buffer.from(name, "utf8"));

// ---- encodings -------------------------------------------------------------------------

function both32(b: Buffer | null, at: number, v: number): Buffer {
  const t = b ?? Buffer.alloc(8);
  t.writeUInt32LE(v, at);
  t.writeUInt32BE(v, at + 4);
  return t;
}

function both16(b: Buffer, at: number, v: number): void {
  b.writeUInt16LE(v, at);
  b.writeUInt16BE(v, at + 2);
}

/** ECMA-119 9.1.5: years since 1900, month, day, hour, minute, second, GMT offset. */
function recordDate(d: Date): Buffer {
  return Buffer.from([d.getUTCFullYear() - 1900, d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds(), 0]);
}

function sectors(bytes: number): number {
  return Math.ceil(bytes / SECTOR);
}
