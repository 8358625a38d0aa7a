/**
 * The `file` backup target: a directory (`file:///absolute/dir`), for the embedded lab and small
 * sites. Keys map to paths under the directory (`a/b/c` → DIR/a/b/c); the key rules of keys.ts keep
 * every path inside it (no `..`, no absolute keys, no NUL).
 *
 * - put streams the body into a temporary file beside the final one (`.bm-tmp-*`, 0600, created
 *   exclusively), fsyncs it, renames it over the key and fsyncs the directory: a reader sees the old
 *   object or the new one, never a torn one, and a crash leaves at most a temporary file (list never
 *   shows one; `sweepTemporaries` removes old ones). A failed or cancelled put removes its
 *   temporary file and leaves the key as it was. Metadata goes into a sidecar `.bm-meta.NAME`
 *   (renamed into place before the object, removed with it).
 * - Directories are made 0700, files 0600. The target directory itself must exist (`not-found`
 *   says to create it).
 * - get streams the file (or a byte range); list walks the tree in the byte order of the keys
 *   (the order S3 lists in), lazily, directory by directory.
 * - A key cannot be both an object and a "directory" of other keys (`a` and `a/b`), which S3
 *   allows: such a put fails with `conflict`.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import type { BackupTargetConnection, BackupTargetDriver, GetOptions, ObjectInfo, PutOptions } from "../kinds/backup-target";
import { checkKey, checkMetadata, checkPrefix, RESERVED_SEGMENT_PREFIX } from "./keys";

export const FILE_FAMILY = "file";
const TMP = `${RESERVED_SEGMENT_PREFIX}tmp-`;
const META = `${RESERVED_SEGMENT_PREFIX}meta.`;

export type FileObjectInfo = ObjectInfo & { metadata: Record<string, string> };

export function parseFileAddress(address: string, property = "address"): string {
  let u: URL;
  try {
    u = new URL(address);
  } catch {
    throw validationError(property, `'${address}' is not a URL; write file:///absolute/directory`);
  }
  if (u.protocol !== "file:") throw validationError(property, `'${u.protocol}' is not file:; write file:///absolute/directory`);
  if (u.host) throw validationError(property, `file://${u.host}/...: a file target is local; write file:///absolute/directory (three slashes)`);
  if (u.search || u.hash) throw validationError(property, "a file target address takes no query or fragment");
  const dir = decodeURIComponent(u.pathname);
  if (dir.includes("\0")) throw validationError(property, "the directory contains NUL");
  const norm = path.resolve(dir);
  if (norm === "/") throw validationError(property, "the root directory cannot be a backup target; give a directory of its own");
  return norm;
}

export class FileBackupTarget implements BackupTargetDriver {
  readonly family = FILE_FAMILY;
  readonly description: string;
  readonly root: string;
  private readonly signal?: AbortSignal;

  constructor(conn: BackupTargetConnection) {
    this.root = parseFileAddress(conn.address);
    this.description = `file://${this.root}`;
    this.signal = conn.signal;
  }

  private sig(s?: AbortSignal): AbortSignal | undefined {
    if (s && this.signal) return AbortSignal.any([s, this.signal]);
    return s ?? this.signal;
  }

  private pathOf(key: string, property = "key"): string {
    return path.join(this.root, ...checkKey(key, property).split("/"));
  }

  private cancelled(what: string): BaremetalError {
    return new BaremetalError("cancelled", `${what} at ${this.description} cancelled`);
  }

  /** Maps a file-system error. */
  private fsError(e: unknown, what: string, key?: string): BaremetalError {
    if (isBaremetalError(e)) return e;
    const code = (e as NodeJS.ErrnoException)?.code;
    const msg = (e as Error)?.message ?? String(e);
    if (code === "ENOENT" && key === undefined) return new BaremetalError("not-found", `the backup directory ${this.root} does not exist: create it (mkdir -m 0700 ${this.root}) or fix the address`, { cause: e });
    if (code === "ENOENT") return new BaremetalError("not-found", `no object '${key}' at ${this.description} (${what})`, { cause: e });
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") return new BaremetalError("auth", `${what} at ${this.description} refused (${code}): give the provider's user write access to ${this.root}`, { cause: e });
    if (code === "ENOTDIR" || code === "EISDIR" || code === "ENOTEMPTY" || code === "EEXIST")
      return new BaremetalError("conflict", `${what} at ${this.description}: '${key}' clashes with another key that is a prefix of it or has it as prefix (a file target cannot hold both 'a' and 'a/b')`, { cause: e });
    if (code === "ENOSPC" || code === "EDQUOT") return new BaremetalError("backend", `${what} at ${this.description}: no space left (${code}); free space or prune old backups`, { cause: e });
    return new BaremetalError("backend", `${what} at ${this.description} failed: ${msg}`, { cause: e });
  }

  private async rootExists(): Promise<void> {
    let st: fs.Stats;
    try {
      st = await fsp.stat(this.root);
    } catch (e) {
      throw this.fsError(e, "check");
    }
    if (!st.isDirectory()) throw new BaremetalError("validation", `${this.root} is not a directory`, { property: "address" });
  }

  private async mkdirs(dir: string, what: string, key: string): Promise<void> {
    if (dir === this.root) return;
    try {
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw this.fsError(e, what, key);
    }
  }

  async put(key: string, body: AsyncIterable<Buffer> | Buffer, opts: PutOptions = {}): Promise<ObjectInfo> {
    const file = this.pathOf(key);
    const metadata = checkMetadata(opts.metadata);
    if (opts.sizeBytes !== undefined && !(Number.isInteger(opts.sizeBytes) && opts.sizeBytes >= 0)) throw validationError("sizeBytes", "sizeBytes must be a whole number of bytes");
    const signal = this.sig(opts.signal);
    const what = `put of '${key}'`;
    if (signal?.aborted) throw this.cancelled(what);
    await this.rootExists();
    const dir = path.dirname(file);
    await this.mkdirs(dir, what, key);
    const tmp = path.join(dir, `${TMP}${randomBytes(6).toString("hex")}-${path.basename(file)}`.slice(0, 255));
    const metaFile = path.join(dir, META + path.basename(file));
    let fh: fsp.FileHandle | undefined;
    let total = 0;
    const temporaries = [tmp];
    try {
      fh = await fsp.open(tmp, "wx", 0o600);
      const chunks: AsyncIterable<Buffer> | Iterable<Buffer> = Buffer.isBuffer(body) ? [body] : body;
      for await (const chunk of chunks) {
        if (signal?.aborted) throw this.cancelled(what);
        const c = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
        let off = 0;
        while (off < c.length) off += (await fh.write(c, off, c.length - off)).bytesWritten;
        total += c.length;
      }
      if (signal?.aborted) throw this.cancelled(what);
      if (opts.sizeBytes !== undefined && total !== opts.sizeBytes) throw validationError("sizeBytes", `${what}: the body had ${total} bytes, sizeBytes said ${opts.sizeBytes}`);
      await fh.sync();
      const st = await fh.stat({ bigint: true });
      await fh.close();
      fh = undefined;
      // Metadata first: an object never shows without the metadata it was written with.
      if (Object.keys(metadata).length) {
        const mtmp = path.join(dir, `${TMP}${randomBytes(6).toString("hex")}-meta`);
        temporaries.push(mtmp);
        await fsp.writeFile(mtmp, JSON.stringify(metadata), { mode: 0o600, flag: "wx" });
        const mh = await fsp.open(mtmp, "r");
        await mh.sync().finally(() => mh.close());
        await fsp.rename(mtmp, metaFile);
      } else {
        await fsp.rm(metaFile, { force: true });
      }
      await fsp.rename(tmp, file);
      await syncDir(dir);
      return { key, sizeBytes: total, etag: etagOf(st), modifiedAt: new Date(Number(st.mtimeMs)).toISOString() };
    } catch (e) {
      await fh?.close().catch(() => undefined);
      for (const t of temporaries) await fsp.rm(t, { force: true }).catch(() => undefined);
      if (signal?.aborted && !(isBaremetalError(e) && e.code === "cancelled")) throw this.cancelled(what);
      // The body's own failure reaches the caller as it was.
      if (typeof (e as NodeJS.ErrnoException)?.code !== "string" && !isBaremetalError(e)) throw e;
      throw this.fsError(e, what, key);
    }
  }

  async get(key: string, opts: GetOptions = {}): Promise<AsyncIterable<Buffer>> {
    const file = this.pathOf(key);
    const signal = this.sig(opts.signal);
    const what = `download of '${key}'`;
    const r = opts.range;
    if (r && !(Number.isInteger(r.start) && Number.isInteger(r.end) && r.start >= 0 && r.end >= r.start))
      throw validationError("range", `range ${JSON.stringify(r)}: start and end are byte offsets with 0 <= start <= end (end exclusive)`);
    if (signal?.aborted) throw this.cancelled(what);
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, "r");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") await this.rootExists();
      throw this.fsError(e, what, key);
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw new BaremetalError("not-found", `no object '${key}' at ${this.description}`);
    }
    if (r && r.start > st.size) {
      await fh.close();
      throw new BaremetalError("validation", `${what}: the range starts at ${r.start}, past the object's end (${st.size} bytes)`, { property: "range" });
    }
    const start = r?.start ?? 0;
    const end = Math.min(r?.end ?? st.size, st.size);
    const cancelled = () => this.cancelled(what);
    const fsError = (e: unknown) => this.fsError(e, what, key);
    return (async function* () {
      const buf = Buffer.allocUnsafe(Math.min(1 << 20, Math.max(1, end - start)));
      let pos = start;
      try {
        while (pos < end) {
          if (signal?.aborted) throw cancelled();
          let n: number;
          try {
            ({ bytesRead: n } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos));
          } catch (e) {
            throw fsError(e);
          }
          if (n === 0) break;
          pos += n;
          // A copy: the caller may keep chunks while we read on.
          yield Buffer.from(buf.subarray(0, n));
        }
      } finally {
        await fh.close().catch(() => undefined);
      }
    })();
  }

  async head(key: string, signal?: AbortSignal): Promise<FileObjectInfo | undefined> {
    const file = this.pathOf(key);
    if (this.sig(signal)?.aborted) throw this.cancelled(`lookup of '${key}'`);
    let st: fs.BigIntStats;
    try {
      st = await fsp.stat(file, { bigint: true });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") {
        await this.rootExists();
        return undefined;
      }
      throw this.fsError(e, `lookup of '${key}'`, key);
    }
    if (!st.isFile()) return undefined;
    let metadata: Record<string, string> = {};
    try {
      metadata = JSON.parse(await fsp.readFile(path.join(path.dirname(file), META + path.basename(file)), "utf8")) as Record<string, string>;
    } catch {
      /* none */
    }
    return { key, sizeBytes: Number(st.size), etag: etagOf(st), modifiedAt: new Date(Number(st.mtimeMs)).toISOString(), metadata };
  }

  async *list(prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo> {
    const p = checkPrefix(prefix);
    const s = this.sig(signal);
    await this.rootExists();
    const self = this;
    // Depth first, entries ordered by the byte order of their key (a directory as `name/`), so the
    // keys come out in the order S3 lists them in.
    async function* walk(dir: string, rel: string): AsyncGenerator<ObjectInfo> {
      if (s?.aborted) throw self.cancelled(`listing of '${prefix}'`);
      let entries: fs.Dirent[];
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "ENOTDIR") return;
        throw self.fsError(e, `listing of '${prefix}'`);
      }
      const items = entries
        .filter((d) => !d.name.startsWith(RESERVED_SEGMENT_PREFIX) && (d.isFile() || d.isDirectory()))
        .map((d) => ({ d, sortKey: Buffer.from(rel + d.name + (d.isDirectory() ? "/" : ""), "utf8") }))
        .sort((a, b) => Buffer.compare(a.sortKey, b.sortKey));
      for (const { d } of items) {
        const key = rel + d.name;
        if (d.isDirectory()) {
          const k = key + "/";
          if (k.startsWith(p) || p.startsWith(k)) yield* walk(path.join(dir, d.name), k);
        } else if (key.startsWith(p)) {
          let st: fs.BigIntStats;
          try {
            st = await fsp.stat(path.join(dir, d.name), { bigint: true });
          } catch {
            continue; // deleted meanwhile
          }
          yield { key, sizeBytes: Number(st.size), etag: etagOf(st), modifiedAt: new Date(Number(st.mtimeMs)).toISOString() };
        }
      }
    }
    yield* walk(this.root, "");
  }

  async delete(keys: string[], signal?: AbortSignal): Promise<void> {
    const files = keys.map((k, i) => [k, this.pathOf(k, `keys[${i}]`)] as const);
    const s = this.sig(signal);
    await this.rootExists();
    for (const [key, file] of files) {
      if (s?.aborted) throw this.cancelled("deletion");
      try {
        const st = await fsp.lstat(file).catch(() => undefined);
        if (st && !st.isFile()) continue; // a "directory" of other keys: no object by this key
        await fsp.rm(file, { force: true });
        await fsp.rm(path.join(path.dirname(file), META + path.basename(file)), { force: true });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "ENOTDIR") continue;
        throw this.fsError(e, `deletion of '${key}'`, key);
      }
      // Empty directories go with their last object (S3 has no directories).
      for (let d = path.dirname(file); d !== this.root && d.startsWith(this.root + path.sep); d = path.dirname(d)) {
        try {
          await fsp.rmdir(d);
        } catch {
          break;
        }
      }
    }
  }

  async check(signal?: AbortSignal): Promise<void> {
    if (this.sig(signal)?.aborted) throw this.cancelled("check");
    await this.rootExists();
    try {
      await fsp.access(this.root, fs.constants.W_OK | fs.constants.X_OK);
    } catch (e) {
      throw this.fsError(e, "check");
    }
  }

  /** Removes temporary files older than `olderThanMs` (left by a crash mid-put); returns how many. */
  async sweepTemporaries(olderThanMs = 24 * 3600 * 1000): Promise<number> {
    let n = 0;
    const now = Date.now();
    const walk = async (dir: string): Promise<void> => {
      for (const d of await fsp.readdir(dir, { withFileTypes: true }).catch(() => [] as fs.Dirent[])) {
        const p = path.join(dir, d.name);
        if (d.isDirectory()) await walk(p);
        else if (d.name.startsWith(TMP)) {
          const st = await fsp.stat(p).catch(() => undefined);
          if (st && now - st.mtimeMs > olderThanMs) {
            await fsp.rm(p, { force: true });
            n++;
          }
        }
      }
    };
    await walk(this.root);
    return n;
  }

  async close(): Promise<void> {}
}

function etagOf(st: fs.BigIntStats): string {
  return `${st.ino.toString(16)}-${st.size.toString(16)}-${st.mtimeNs.toString(16)}`;
}

async function syncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, "r");
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}
