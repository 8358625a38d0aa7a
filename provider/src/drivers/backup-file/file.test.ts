import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isBaremetalError } from "../../core/errors";
import { backupTargetFor } from "../backup-targets";
import { FileBackupTarget } from "./driver";

let root: string;
let t: FileBackupTarget;

beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "backup-file-"));
  t = new FileBackupTarget({ address: `file://${root}` });
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of it) out.push(c);
  return Buffer.concat(out);
}

async function keys(prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const o of t.list(prefix)) out.push(o.key);
  return out;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (isBaremetalError(e)) return `${e.code}${e.property ? `:${e.property}` : ""}`;
    throw e;
  }
  return "ok";
}

function tempFiles(dir = root): string[] {
  const out: string[] = [];
  for (const d of fs.readdirSync(dir, { withFileTypes: true })) {
    if (d.isDirectory()) out.push(...tempFiles(path.join(dir, d.name)));
    else if (d.name.startsWith(".bm-tmp-")) out.push(d.name);
  }
  return out;
}

describe("file backup target", () => {
  test("put streams into a 0600 file under 0700 directories, get reads it back whole and by range", async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    async function* body() {
      for (let i = 0; i < data.length; i += 100_000) yield data.subarray(i, i + 100_000);
    }
    const info = await t.put("vol-1/full/0001", body(), { sizeBytes: data.length, metadata: { checksum: "abc", "chain-of": "none" } });
    expect(info.sizeBytes).toBe(data.length);
    const file = path.join(root, "vol-1/full/0001");
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(root, "vol-1")).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(root, "vol-1/full")).mode & 0o777).toBe(0o700);
    expect((await collect(await t.get("vol-1/full/0001"))).equals(data)).toBe(true);
    expect((await collect(await t.get("vol-1/full/0001", { range: { start: 1_000_000, end: 2_500_001 } }))).equals(data.subarray(1_000_000, 2_500_001))).toBe(true);
    expect((await collect(await t.get("vol-1/full/0001", { range: { start: 5, end: 5 } }))).length).toBe(0);
    const h = await t.head("vol-1/full/0001");
    expect(h).toMatchObject({ key: "vol-1/full/0001", sizeBytes: data.length, etag: info.etag, metadata: { checksum: "abc", "chain-of": "none" } });
    expect(tempFiles()).toEqual([]);
  });

  test("a put replaces an object whole (new etag); a failed or cancelled put leaves the old one and no temporary file", async () => {
    const first = await t.put("k", Buffer.from("old contents"));
    const second = await t.put("k", Buffer.from("new contents!"));
    expect(second.etag).not.toBe(first.etag);
    expect((await collect(await t.get("k"))).toString()).toBe("new contents!");

    // The body's producer fails midway.
    async function* failing() {
      yield Buffer.alloc(1000, 1);
      throw new Error("source disk read error");
    }
    await expect(t.put("k", failing())).rejects.toThrow("source disk read error");
    // Cancelled midway.
    const ac = new AbortController();
    async function* slow() {
      yield Buffer.alloc(1000, 2);
      ac.abort();
      yield Buffer.alloc(1000, 3);
    }
    expect(await codeOf(t.put("k", slow(), { signal: ac.signal }))).toBe("cancelled");
    // A size that does not match the body.
    expect(await codeOf(t.put("k", Buffer.alloc(10), { sizeBytes: 11 }))).toBe("validation:sizeBytes");
    // A new key that fails leaves no object at all.
    await expect(t.put("fresh", failing())).rejects.toThrow(/^source disk read error$/);
    expect(await t.head("fresh")).toBeUndefined();
    expect((await collect(await t.get("k"))).toString()).toBe("new contents!");
    expect(tempFiles()).toEqual([]);
    expect(await keys()).toEqual(["k"]);
  });

  test("keys stay inside the directory: '..', absolute keys, NUL, empty segments and reserved names are refused", async () => {
    for (const bad of ["../escape", "a/../../escape", "/etc/passwd", "a\0b", "a//b", "a/./b", "", "a/", ".bm-tmp-x", "x/.bm-meta.y", "line\nbreak"]) {
      expect(await codeOf(t.put(bad, Buffer.from("x")))).toBe("validation:key");
      expect(await codeOf(t.get(bad))).toBe("validation:key");
    }
    expect(await codeOf(t.delete(["ok", "../x"]))).toBe("validation:keys[1]");
    expect(fs.readdirSync(root)).toEqual([]);
    expect(fs.existsSync(path.join(path.dirname(root), "escape"))).toBe(false);
  });

  test("list pages keys in S3 byte order under a prefix, skipping temporaries; delete is idempotent and removes empty directories", async () => {
    const all = ["a-c", "a/b", "a/c/d", "a0", "b", "vol/0002", "vol/0010", "vol/0001", "ü/x", "Z"];
    for (const k of all) await t.put(k, Buffer.from(k));
    fs.writeFileSync(path.join(root, "a", ".bm-tmp-leftover"), "x");
    const sorted = [...all].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect(await keys()).toEqual(sorted);
    expect(sorted.indexOf("a-c")).toBeLessThan(sorted.indexOf("a/b")); // '-' < '/' as bytes
    expect(await keys("vol/")).toEqual(["vol/0001", "vol/0002", "vol/0010"]);
    expect(await keys("a")).toEqual(["a-c", "a/b", "a/c/d", "a0"]);
    expect(await keys("a/c")).toEqual(["a/c/d"]);
    expect(await keys("nothing")).toEqual([]);
    const info = [];
    for await (const o of t.list("vol/0001")) info.push(o);
    expect(info).toEqual([expect.objectContaining({ key: "vol/0001", sizeBytes: 8 })]);

    await t.delete(["a/c/d", "vol/0001", "vol/0002", "vol/0010", "never-existed", "a/c/d"]);
    expect(fs.existsSync(path.join(root, "a/c"))).toBe(false);
    expect(fs.existsSync(path.join(root, "vol"))).toBe(false);
    expect(await keys()).toEqual(["Z", "a-c", "a/b", "a0", "b", "ü/x"].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y))));
    expect(await t.head("vol/0001")).toBeUndefined();
    expect(await codeOf(t.get("vol/0001"))).toBe("not-found");
  });

  test("a key cannot be both an object and a prefix of other keys on a file target: conflict", async () => {
    await t.put("a/b", Buffer.from("1"));
    expect(await codeOf(t.put("a", Buffer.from("2")))).toBe("conflict");
    await t.put("c", Buffer.from("1"));
    expect(await codeOf(t.put("c/d", Buffer.from("2")))).toBe("conflict");
    expect(tempFiles()).toEqual([]);
  });

  test("check: a missing directory is not-found saying to create it; the registry picks the family by scheme and names properties", async () => {
    await t.check();
    const gone = new FileBackupTarget({ address: `file://${root}/missing` });
    const e = await gone.check().catch((x) => x);
    expect(e.code).toBe("not-found");
    expect(e.message).toContain("create it");
    expect(await codeOf(gone.put("k", Buffer.from("x")))).toBe("not-found");

    const d = backupTargetFor({ address: `file://${root}` }, undefined, "backupTargets.lab");
    expect(d.family).toBe("file");
    expect(d.description).toBe(`file://${root}`);
    const v = (f: () => unknown) => {
      try {
        f();
      } catch (x) {
        return isBaremetalError(x) ? `${x.property}: ${x.message}` : String(x);
      }
      return "ok";
    };
    expect(v(() => backupTargetFor({ address: "file://host/dir" }, undefined, "backupTargets.lab"))).toMatch(/^backupTargets.lab.address: .*three slashes/);
    expect(v(() => backupTargetFor({ address: "ftp://x/y" }, undefined, "backupTargets.lab"))).toMatch(/^backupTargets.lab.address: /);
    expect(v(() => backupTargetFor({ driver: "tape", address: "file:///x" }, undefined, "backupTargets.lab"))).toMatch(/^backupTargets.lab.driver: no backup target driver 'tape'; use one of file, s3/);
    expect(v(() => backupTargetFor({ driver: "s3", address: "file:///x" }, undefined, "t"))).toMatch(/^t.address: /);
    expect(v(() => backupTargetFor({ address: "s3://h/bucket" }, { accessKeyId: "AK" }, "t"))).toMatch(/^t.credentials.secretAccessKey: /);
    expect(v(() => backupTargetFor({ address: "s3://h/bucket", partBytes: 1024 }, { accessKeyId: "AK", secretAccessKey: "s" }, "t"))).toMatch(/^t.partBytes: .*5 MiB/);
    expect(v(() => backupTargetFor({ address: "s3://h/Bad_Bucket" }, { accessKeyId: "AK", secretAccessKey: "s" }, "t"))).toMatch(/^t.address: .*not a valid bucket name/);
    expect(v(() => backupTargetFor({ address: "s3://AK:secret@h/bucket" }, { accessKeyId: "AK", secretAccessKey: "s" }, "t"))).toMatch(/^t.address: credentials do not belong in the address/);
  });

  test("get streams in bounded chunks and stops when the signal aborts", async () => {
    const data = randomBytes(5 * 1024 * 1024);
    await t.put("big", data);
    let max = 0;
    const h = createHash("sha256");
    for await (const c of await t.get("big")) {
      max = Math.max(max, c.length);
      h.update(c);
    }
    expect(h.digest("hex")).toBe(createHash("sha256").update(data).digest("hex"));
    expect(max).toBeLessThanOrEqual(1 << 20);
    const ac = new AbortController();
    const it = await t.get("big", { signal: ac.signal });
    let n = 0;
    const e = await (async () => {
      for await (const c of it) {
        n += c.length;
        ac.abort();
      }
    })().catch((x) => x);
    expect(e.code).toBe("cancelled");
    expect(n).toBe(1 << 20);
  });
});
