/**
 * The ISO 9660 writer, checked by third-party readers: xorriso (libisofs; Rock Ridge, Joliet
 * and plain ECMA-119 trees, extraction), isoinfo / isovfy (genisoimage) and blkid
 * (util-linux). They are Debian packages that scripts/bootstrap.sh installs; a missing one
 * fails the tests with that advice instead of skipping them.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { buildIso, type IsoFile } from "./iso9660";

const TOOLS = ["xorriso", "isoinfo", "isovfy", "blkid"];
const ENV = { ...process.env, LANG: "C.UTF-8", LC_ALL: "C.UTF-8", PATH: `${process.env.PATH}:/usr/sbin:/sbin` };

function requireTools(): void {
  for (const tool of TOOLS) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`], { env: ENV }).status !== 0) {
      throw new Error(`${tool} is not installed: run scripts/bootstrap.sh (it installs the Debian packages xorriso and genisoimage)`);
    }
  }
}

/** Runs a tool; its output as latin1 text (isoinfo prints Joliet names in ISO-8859-1). */
function run(cmd: string, args: string[], encoding: BufferEncoding = "utf8"): { stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { env: ENV, maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  const out = { stdout: r.stdout.toString(encoding), stderr: r.stderr.toString(encoding) };
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}:\n${out.stderr}${out.stdout}`);
  return out;
}

/** Paths of the files and directories xorriso sees, and whether it complained while loading. */
function xorrisoTree(iso: string, readFs: "any" | "norock" | "ecma119"): { files: Map<string, number>; dirs: Set<string>; modes: Set<string>; complaints: string[] } {
  const { stdout, stderr } = run("xorriso", ["-read_fs", readFs, "-ecma119_map", "unmapped", "-indev", iso, "-find", "/", "-exec", "lsdl"]);
  const files = new Map<string, number>();
  const dirs = new Set<string>();
  const modes = new Set<string>();
  for (const line of stdout.split("\n")) {
    const m = /^([d-][rwx-]{9})\s+\d+\s+\d+\s+\d+\s+(\d+) .* '\/(.*)'$/.exec(line);
    if (!m || m[3] === "") continue;
    modes.add(m[1]);
    if (m[1].startsWith("d")) dirs.add(m[3]);
    else files.set(m[3], Number(m[2]));
  }
  return { files, dirs, modes, complaints: (stdout + stderr).split("\n").filter((l) => /WARNING|SORRY|FAILURE|FATAL/.test(l)) };
}

interface Listed {
  dir: boolean;
  size: number;
  extent: number;
}

/** `isoinfo -l` (with -R, -J or neither): every entry by path, "." entries by their directory. */
function isoinfoTree(iso: string, flag: "-R" | "-J" | null): { entries: Map<string, Listed>; dirExtents: Map<string, number> } {
  // Rock Ridge names are printed as recorded (UTF-8), Joliet ones converted to ISO-8859-1.
  const { stdout } = run("isoinfo", [...(flag ? [flag] : []), "-l", "-i", iso], flag === "-R" ? "utf8" : "latin1");
  const entries = new Map<string, Listed>();
  const dirExtents = new Map<string, number>();
  let dir = "";
  for (const line of stdout.split("\n")) {
    const h = /^Directory listing of \/(.*)$/.exec(line);
    if (h) dir = h[1];
    const m = /^([d-])\S{9}\s+\d+\s+\d+\s+\d+\s+(\d+) \w{3}\s+\d+ \d{4} \[\s*(\d+) \d+\]  (.*) $/.exec(line);
    if (!m) continue;
    const item = { dir: m[1] === "d", size: Number(m[2]), extent: Number(m[3]) };
    if (m[4] === ".") dirExtents.set(dir.replace(/\/$/, ""), item.extent);
    else if (m[4] !== "..") entries.set(dir + m[4], item);
  }
  return { entries, dirExtents };
}

/** The directories a set of file paths implies. */
function impliedDirs(paths: string[]): Set<string> {
  const dirs = new Set<string>();
  for (const p of paths) p.split("/").slice(0, -1).forEach((_, i, a) => dirs.add(a.slice(0, i + 1).join("/")));
  return dirs;
}

function walkFiles(root: string): string[] {
  return readdirSync(root, { recursive: true, encoding: "utf8" })
    .filter((p) => statSync(join(root, p)).isFile())
    .map((p) => relative(root, join(root, p)));
}

const LONG = "a-rather-long-file-name-that-needs-rock-ridge-or-joliet";
const FILES: IsoFile[] = [
  { path: "openstack/latest/meta_data.json", data: Buffer.from('{"uuid":"x"}') },
  { path: "openstack/2012-08-10/meta_data.json", data: Buffer.from('{"uuid":"x"}') },
  { path: "a/b/c/d/e/f/g/deepest.txt", data: Buffer.from("eight levels\n") }, // the ECMA-119 maximum
  { path: "empty", data: Buffer.alloc(0) },
  { path: "big.bin", data: randomBytes(100 * 1024) },
  { path: "README.md", data: Buffer.from("upper\n") }, // the same primary name as readme.MD
  { path: "readme.MD", data: Buffer.from("lower\n") },
  { path: "Mixed Case With Spaces.tar.gz", data: Buffer.from("spaces\n") },
  { path: "dïr/héllo wörld €.txt", data: Buffer.from("unicode\n") },
  { path: "x".repeat(64), data: Buffer.from("64 characters, the Joliet maximum\n") },
  ...Array.from({ length: 60 }, (_, i) => ({ path: `many/${LONG}-${String(i).padStart(2, "0")}.txt`, data: Buffer.from(`file ${i}\n`) })),
];
const PATHS = FILES.map((f) => f.path);

describe("buildIso, read back by xorriso, isoinfo, isovfy and blkid", () => {
  let dir: string;
  let iso: string;
  let image: Buffer;

  beforeAll(() => {
    requireTools();
    dir = mkdtempSync(join(tmpdir(), "iso9660-test-"));
    iso = join(dir, "test.iso");
    image = buildIso({ volumeId: "test-Vol_1", files: FILES });
    writeFileSync(iso, image);
  });
  afterAll(() => {
    if (dir) execFileSync("chmod", ["-R", "u+w", dir]), rmSync(dir, { recursive: true, force: true });
  });

  it("is whole 2048-byte sectors, and isovfy finds no error in its directory records", () => {
    expect(image.length % 2048).toBe(0);
    expect(run("isovfy", [iso]).stdout).toContain("No errors found");
  });

  it("has the volume id as given, both name extensions and the size it says (isoinfo -d)", () => {
    const d = run("isoinfo", ["-d", "-i", iso]).stdout;
    expect(d).toMatch(/^Volume id: test-Vol_1$/m);
    expect(d).toMatch(/^Logical block size is: 2048$/m);
    expect(d).toMatch(new RegExp(`^Volume size is: ${image.length / 2048}$`, "m"));
    expect(d).toContain("Joliet with UCS level 3 found");
    expect(d).toContain("Rock Ridge signatures version 1 found");
  });

  it("is an iso9660 filesystem with that label and the fixed date to blkid", () => {
    const out = run("blkid", ["-p", "-o", "export", iso]).stdout.split("\n");
    expect(out).toEqual(expect.arrayContaining(["TYPE=iso9660", "LABEL=test-Vol_1", "UUID=2000-01-01-00-00-00-00"]));
  });

  it("shows xorriso the real names, sizes and modes through Rock Ridge, without a complaint", () => {
    const t = xorrisoTree(iso, "any");
    expect(t.complaints).toEqual([]);
    expect(new Map([...t.files].sort())).toEqual(new Map(FILES.map((f) => [f.path, f.data.length] as const).sort()));
    expect([...t.dirs].sort()).toEqual([...impliedDirs(PATHS)].sort());
    expect([...t.modes].sort()).toEqual(["-r--r--r--", "dr-xr-xr-x"]);
  });

  it("gives back every file byte for byte when xorriso extracts the Rock Ridge tree", () => {
    const out = join(dir, "extracted");
    run("xorriso", ["-osirrox", "on", "-indev", iso, "-extract", "/", out]);
    expect(walkFiles(out).sort()).toEqual([...PATHS].sort());
    for (const f of FILES) expect(readFileSync(join(out, f.path)).equals(f.data)).toBe(true);
  });

  it("shows xorriso the same names through Joliet alone", () => {
    const t = xorrisoTree(iso, "norock");
    expect(t.complaints).toEqual([]);
    expect([...t.files.keys()].sort()).toEqual([...PATHS].sort());
    expect([...t.dirs].sort()).toEqual([...impliedDirs(PATHS)].sort());
  });

  it("lists the Rock Ridge names with isoinfo -R, a multi-sector directory included", () => {
    const { entries } = isoinfoTree(iso, "-R");
    expect([...entries.keys()].filter((p) => !entries.get(p)!.dir).sort()).toEqual([...PATHS].sort());
    for (const f of FILES) expect(entries.get(f.path)!.size).toBe(f.data.length);
    // 60 records of ~150 bytes: more than one sector, always whole sectors.
    expect(entries.get("many")!.size).toBeGreaterThan(2048);
    expect(entries.get("many")!.size % 2048).toBe(0);
    expect(entries.get("empty")).toEqual({ dir: false, size: 0, extent: 0 });
  });

  it("lists the Joliet names with isoinfo -J and extracts every file through them", () => {
    const { entries } = isoinfoTree(iso, "-J");
    const latin1 = (s: string) => s.replace(/[^\u0000-\u00ff]/g, "_"); // isoinfo's rendering
    expect([...entries.keys()].filter((p) => !entries.get(p)!.dir).sort()).toEqual(PATHS.map(latin1).sort());
    for (const f of FILES.filter((f) => latin1(f.path) === f.path)) {
      const r = spawnSync("isoinfo", ["-J", "-i", iso, "-x", `/${f.path}`], { env: ENV, maxBuffer: 1 << 20 });
      expect(r.status).toBe(0);
      expect(r.stdout.equals(f.data)).toBe(true);
    }
  });

  it("has ISO level 1 names (8.3 d-characters, ;1) in the primary tree (isoinfo -f)", () => {
    const names = run("isoinfo", ["-f", "-i", iso]).stdout.trim().split("\n");
    expect(names).toHaveLength(PATHS.length + impliedDirs(PATHS).size);
    expect(new Set(names).size).toBe(names.length);
    for (const n of names) expect(n).toMatch(/^(\/[A-Z0-9_]{1,8})*\/(([A-Z0-9_]{1,8})|([A-Z0-9_]{0,8}\.[A-Z0-9_]{0,3};1))$/);
    expect(names).toEqual(expect.arrayContaining(["/README.MD;1", "/README_1.MD;1", "/EMPTY.;1", "/A/B/C/D/E/F/G/DEEPEST.TXT;1"]));
    // ...and xorriso reads that plain tree without a complaint.
    expect(xorrisoTree(iso, "ecma119").complaints).toEqual([]);
  });

  it("has path tables that agree with the directories, in both trees (isoinfo -p and -l)", () => {
    for (const flag of [null, "-J"] as const) {
      const p = run("isoinfo", [...(flag ? [flag] : []), "-p", "-i", iso]).stdout;
      const fromTable = [...p.matchAll(/^\s*\d+:\s+\d+\s+([0-9a-f]+) /gm)].map((m) => parseInt(m[1], 16)).sort((a, b) => a - b);
      const fromDirs = [...isoinfoTree(iso, flag).dirExtents.values()].sort((a, b) => a - b);
      expect(fromTable).toEqual(fromDirs);
      expect(fromTable).toHaveLength(impliedDirs(PATHS).size + 1);
    }
  });

  it("has M path tables that mirror the L ones (big-endian numbers, same order)", () => {
    for (const vd of [16, 17]) {
      const at = vd * 2048;
      const size = image.readUInt32LE(at + 132);
      const l = image.subarray(image.readUInt32LE(at + 140) * 2048).subarray(0, size);
      const m = image.subarray(image.readUInt32BE(at + 148) * 2048).subarray(0, size);
      for (let i = 0; i < size; i += 8 + l[i] + (l[i] % 2)) {
        expect([m[i], m.readUInt32BE(i + 2), m.readUInt16BE(i + 6)]).toEqual([l[i], l.readUInt32LE(i + 2), l.readUInt16LE(i + 6)]);
        expect(m.subarray(i + 8, i + 8 + m[i]).equals(l.subarray(i + 8, i + 8 + l[i]))).toBe(true);
      }
    }
  });

  it("gives the same bytes for the same files in any order, and other bytes for another date", () => {
    expect(buildIso({ volumeId: "test-Vol_1", files: [...FILES].reverse() }).equals(image)).toBe(true);
    const other = buildIso({ volumeId: "test-Vol_1", files: FILES, date: new Date("2024-05-06T07:08:09Z") });
    expect(other.equals(image)).toBe(false);
    const otherIso = join(dir, "other.iso");
    writeFileSync(otherIso, other);
    expect(run("blkid", ["-p", "-o", "export", otherIso]).stdout).toContain("UUID=2024-05-06-07-08-09-00");
  });

  it("writes an image with no files at all", () => {
    const empty = join(dir, "empty.iso");
    writeFileSync(empty, buildIso({ volumeId: "EMPTY", files: [] }));
    expect(run("isovfy", [empty]).stdout).toContain("No errors found");
    const t = xorrisoTree(empty, "any");
    expect([t.files.size, t.dirs.size, t.complaints]).toEqual([0, 0, []]);
  });
});

describe("buildIso input checks", () => {
  const file = (path: string): IsoFile => ({ path, data: Buffer.from("x") });
  const build = (files: IsoFile[], volumeId = "V") => () => buildIso({ volumeId, files });

  it.each(["", "has space", "x".repeat(33), "ümlaut", "dot.ted"])("rejects the volume id %j", (volumeId) => {
    expect(build([], volumeId)).toThrow(/invalid ISO volume id .*A-Z a-z 0-9 _ -/);
  });

  it("accepts the lower-case volume id config drives need, and 32 characters", () => {
    expect(build([], "config-2")).not.toThrow();
    expect(build([], "x".repeat(32))).not.toThrow();
  });

  it.each([
    [["a/b", "a/b"], /"a\/b": duplicate path/],
    [["a//b"], /"a\/\/b": empty name/],
    [["/abs"], /"\/abs": empty name/],
    [["dir/"], /"dir\/": empty name/],
    [[""], /"": empty name/],
    [["a/../b"], /"a\/..\/b": ".." is not allowed/],
    [["./b"], /"\.\/b": "\." is not allowed/],
    [[`d/${"n".repeat(65)}`], /"d\/n{65}": the name "n{65}" is 65 characters, more than the 64 Joliet allows/],
    [["a", "a/b"], /"a\/b": "a" is both a file and a directory/],
    [["a/b", "a"], /"a": "a" is both a file and a directory/],
    [["what?"], /"what\?": the name "what\?" has a character Joliet forbids/],
    [["ver;1"], /"ver;1": .* Joliet forbids/],
    [["a/b/c/d/e/f/g/h/i"], /"a\/b\/c\/d\/e\/f\/g\/h\/i": deeper than the 8 directory levels/],
    [["emoji-\u{1f600}"], /"emoji-.*": the name .* outside UCS-2/],
  ])("rejects the paths %j with an error naming the path", (paths, why) => {
    expect(build(paths.map(file))).toThrow(why);
  });

  it("rejects data that is not a Buffer", () => {
    expect(build([{ path: "s", data: "text" as unknown as Buffer }])).toThrow(/"s": data must be a Buffer/);
  });

  it("rejects a date a directory record cannot hold", () => {
    expect(() => buildIso({ volumeId: "V", files: [], date: new Date("1899-12-31T00:00:00Z") })).toThrow(/year must be 1900 to 2155/);
    expect(() => buildIso({ volumeId: "V", files: [], date: new Date("nonsense") })).toThrow(/invalid ISO date/);
  });
});
