/**
 * The `local` key manager: the embedded lab's key store, files on this machine. Address
 * `file:///absolute/dir`; one JSON file per project (`<dir>/<project>.keys.json`, mode 0600, the
 * directory 0700 when we create it).
 *
 * At rest, key material is never plain: each key's bytes are sealed with AES-256-GCM under a key
 * derived from the connection's `masterKey` (base64, 32 bytes, required) by HKDF-SHA256 with the
 * project in the info, and the GCM additional data binds the sealed bytes to their project, key
 * id and size (a sealed key copied into another entry or another project's file does not open).
 * Each file also holds a sealed check value, so a wrong master key is reported as such (`auth`)
 * even for a store without keys, before anything is written.
 *
 * Project isolation: a key id names its project (`local:<project>:<uuid>`), and a connection as
 * project B never opens project A's file: asking for A's key is refused (`auth`) up front. The
 * isolation is the driver's: any process holding the master key and read access to the directory
 * could derive every project's key. That is what a lab store is; Barbican / KMIP / Vault enforce
 * it server-side.
 *
 * Writes: the whole file is rewritten to a temporary file (0600, fsync) and renamed over the old
 * one (atomic on POSIX file systems), then the directory is fsynced. Read-modify-write cycles are
 * serialised within a process by a mutex per file and across processes by a lock file
 * (`<file>.lock`, created O_EXCL, holding the owner's PID; a lock whose owner is dead is taken over),
 * so several provider processes may share one store. Readers do not lock (they see either the old
 * or the new file, never a torn one).
 *
 * Life cycle, per the interface: active -> deactivated (retireKey; material still readable for
 * decryption) -> destroyed (destroyKey; the material is erased from the file, a tombstone with the
 * key's description stays so that describe/list/audit can still say what it was).
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, randomUUID } from "node:crypto";
import { promises as fs, constants as fsc } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import { KeyAudit } from "../key-audit";
import type {
  CreateKeyRequest,
  KeyManagerConnection,
  KeyManagerDriver,
  KeyOperation,
  KeyState,
  ManagedKey,
} from "../kinds/keymanager";

export const LOCAL_FAMILY = "local";
const FORMAT = "baremetal-local-keystore/1";
const CHECK_PLAINTEXT = Buffer.from("baremetal local key store check v1");

interface Sealed {
  iv: string;
  data: string;
  tag: string;
}

interface StoredKey {
  id: string;
  name: string;
  project: string;
  algorithm: "AES";
  bits: 256 | 512;
  state: KeyState;
  createdAt: string;
  version: number;
  replaces?: string;
  labels?: Record<string, string>;
  deactivatedAt?: string;
  destroyedAt?: string;
  /** Absent once destroyed. */
  material?: Sealed;
}

interface StoreFile {
  format: typeof FORMAT;
  project: string;
  check: Sealed;
  keys: Record<string, StoredKey>;
}

const PROJECT_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

function checkProject(project: unknown): string {
  if (typeof project !== "string" || !PROJECT_RE.test(project) || project.includes("..")) {
    throw validationError("project", "the project must be 1-128 characters: letters, digits, '_', '.', '-' (it names the store's file)");
  }
  return project;
}

/** `file:///dir` -> `/dir`. */
export function parseLocalAddress(address: string): string {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw validationError("address", `the local key store's address must be file:///absolute/directory, got ${JSON.stringify(address)}`);
  }
  if (url.protocol !== "file:" || (url.hostname && url.hostname !== "localhost") || url.search || url.hash) {
    throw validationError("address", `the local key store's address must be file:///absolute/directory, got ${JSON.stringify(address)}`);
  }
  return fileURLToPath(url);
}

function parseMasterKey(masterKey: unknown): Buffer {
  if (typeof masterKey !== "string" || !masterKey) {
    throw validationError("masterKey", "the local key store needs masterKey: 32 random bytes in base64 (e.g. `openssl rand -base64 32`), kept as a secret");
  }
  const b = Buffer.from(masterKey, "base64");
  if (b.length !== 32 || b.toString("base64").replace(/=+$/, "") !== masterKey.trim().replace(/=+$/, "")) {
    throw validationError("masterKey", "masterKey must be exactly 32 bytes in base64 (44 characters, e.g. `openssl rand -base64 32`)");
  }
  return b;
}

/** Mutexes per store file, shared by every driver of this process. */
const fileLocks = new Map<string, Promise<unknown>>();

export function createLocalKeyManager(conn: KeyManagerConnection): LocalKeyManager {
  return new LocalKeyManager(conn);
}

export class LocalKeyManager implements KeyManagerDriver {
  readonly family = LOCAL_FAMILY;
  readonly dir: string;
  private readonly project: string;
  private readonly file: string;
  private readonly projectKey: Buffer;
  private readonly timeoutMs: number;
  private closed = false;

  constructor(private readonly conn: KeyManagerConnection) {
    this.dir = parseLocalAddress(conn.address);
    this.project = checkProject(conn.project);
    const master = parseMasterKey(conn.masterKey);
    this.projectKey = Buffer.from(hkdfSync("sha256", master, Buffer.from(FORMAT), Buffer.from(`project:${this.project}`), 32));
    master.fill(0);
    this.file = path.join(this.dir, `${this.project}.keys.json`);
    if (conn.requestTimeoutMs !== undefined && !(Number.isFinite(conn.requestTimeoutMs) && conn.requestTimeoutMs > 0)) {
      throw validationError("requestTimeoutMs", "requestTimeoutMs must be a positive number of milliseconds");
    }
    this.timeoutMs = conn.requestTimeoutMs ?? 10_000;
  }

  private get backend(): string {
    return `${LOCAL_FAMILY} file://${this.dir}`;
  }

  // -------------------------------------------------------------------------------------------
  // KeyManagerDriver

  createKey(req: CreateKeyRequest): Promise<ManagedKey> {
    return this.audited("create", undefined, async () => {
      const name = req?.name;
      if (typeof name !== "string" || !name || name.length > 255) throw validationError("name", "the key's name must be 1-255 characters");
      if (req.bits !== 256 && req.bits !== 512) throw validationError("bits", `bits must be 256 or 512, got ${JSON.stringify(req.bits)}`);
      const labels = checkLabels(req.labels);
      return this.update((store) => {
        const k = this.newKey(name, req.bits, 1, labels);
        store.keys[k.id] = k;
        return describe(k);
      });
    }, (k) => k.id);
  }

  describeKey(id: string): Promise<ManagedKey | undefined> {
    return this.audited("describe", id, async () => {
      this.checkId(id);
      const store = await this.read();
      const k = store?.keys[id];
      return k ? describe(k) : undefined;
    });
  }

  getKeyMaterial(id: string): Promise<Buffer> {
    return this.audited("get", id, async () => {
      this.checkId(id);
      const store = await this.read();
      const k = store?.keys[id];
      if (!k) throw new BaremetalError("not-found", `key ${id} does not exist in project ${this.project}'s local key store`);
      if (k.state === "destroyed" || !k.material) throw new BaremetalError("conflict", `key ${id} was destroyed${k.destroyedAt ? ` on ${k.destroyedAt}` : ""}: its material is gone`);
      return this.open(k.material, aad(k), `key ${id}`);
    });
  }

  listKeys(filter?: { namePrefix?: string }): Promise<ManagedKey[]> {
    return this.audited("list", undefined, async () => {
      const prefix = filter?.namePrefix;
      if (prefix !== undefined && typeof prefix !== "string") throw validationError("namePrefix", "namePrefix must be a string");
      const store = await this.read();
      return Object.values(store?.keys ?? {})
        .filter((k) => prefix === undefined || k.name.startsWith(prefix))
        .sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))
        .map(describe);
    });
  }

  rotateKey(id: string): Promise<ManagedKey> {
    return this.audited("rotate", id, async () => {
      this.checkId(id);
      return this.update((store) => {
        const old = store.keys[id];
        if (!old) throw new BaremetalError("not-found", `key ${id} does not exist in project ${this.project}'s local key store`);
        if (old.state === "destroyed") throw new BaremetalError("conflict", `key ${id} was destroyed: create a new key instead of rotating it`);
        const k = this.newKey(old.name, old.bits, old.version + 1, old.labels, id);
        store.keys[k.id] = k;
        return describe(k);
      });
    });
  }

  retireKey(id: string): Promise<void> {
    return this.audited("retire", id, async () => {
      this.checkId(id);
      await this.update((store) => {
        const k = store.keys[id];
        if (!k) throw new BaremetalError("not-found", `key ${id} does not exist in project ${this.project}'s local key store`);
        if (k.state === "active") {
          k.state = "deactivated";
          k.deactivatedAt = new Date().toISOString();
        }
      });
    });
  }

  destroyKey(id: string): Promise<void> {
    return this.audited("destroy", id, async () => {
      this.checkId(id);
      await this.update((store) => {
        const k = store.keys[id];
        if (!k || k.state === "destroyed") return;
        k.state = "destroyed";
        k.destroyedAt = new Date().toISOString();
        delete k.material;
      });
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.projectKey.fill(0);
  }

  // -------------------------------------------------------------------------------------------
  // Keys

  private newKey(name: string, bits: 256 | 512, version: number, labels?: Record<string, string>, replaces?: string): StoredKey {
    const k: StoredKey = {
      id: `local:${this.project}:${randomUUID()}`,
      name,
      project: this.project,
      algorithm: "AES",
      bits,
      state: "active",
      createdAt: new Date().toISOString(),
      version,
    };
    if (replaces !== undefined) k.replaces = replaces;
    if (labels && Object.keys(labels).length) k.labels = { ...labels };
    const material = randomBytes(bits / 8);
    k.material = this.seal(material, aad(k));
    material.fill(0);
    return k;
  }

  /** Refuses ids of other projects (auth) and ids that are not ours at all (validation). */
  private checkId(id: string): void {
    const m = typeof id === "string" ? /^local:([^:]+):[0-9a-f-]{36}$/.exec(id) : null;
    if (!m) throw validationError("id", `${JSON.stringify(id)} is not a key id of the local key store (local:<project>:<uuid>)`);
    if (m[1] !== this.project) {
      throw new BaremetalError("auth", `key ${id} belongs to another project: project ${this.project} may not use it`);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Sealing

  private seal(plain: Buffer, ad: Buffer): Sealed {
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", this.projectKey, iv);
    c.setAAD(ad);
    const data = Buffer.concat([c.update(plain), c.final()]);
    return { iv: iv.toString("base64"), data: data.toString("base64"), tag: c.getAuthTag().toString("base64") };
  }

  private open(s: Sealed, ad: Buffer, what: string): Buffer {
    try {
      const d = createDecipheriv("aes-256-gcm", this.projectKey, Buffer.from(s.iv, "base64"));
      d.setAAD(ad);
      d.setAuthTag(Buffer.from(s.tag, "base64"));
      return Buffer.concat([d.update(Buffer.from(s.data, "base64")), d.final()]);
    } catch {
      throw new BaremetalError("backend", `${what} in ${this.file} does not decrypt under the store's master key: the file was altered or the entry moved`);
    }
  }

  // -------------------------------------------------------------------------------------------
  // The file

  /** The project's store, checked against the master key; undefined when there is no file yet. */
  private async read(): Promise<StoreFile | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") {
        await this.checkDir();
        return undefined;
      }
      throw new BaremetalError("backend", `cannot read the local key store ${this.file}: ${(e as Error).message}`, { cause: e });
    }
    let store: StoreFile;
    try {
      store = JSON.parse(text) as StoreFile;
    } catch {
      throw new BaremetalError("backend", `the local key store ${this.file} is not valid JSON: restore it from a backup`);
    }
    if (store?.format !== FORMAT || store.project !== this.project || typeof store.keys !== "object" || !store.check) {
      throw new BaremetalError("backend", `${this.file} is not project ${this.project}'s local key store (format ${FORMAT})`);
    }
    let check: Buffer | undefined;
    try {
      check = this.open(store.check, Buffer.from(`check:${this.project}`), "check");
    } catch {
      check = undefined;
    }
    if (!check || !check.equals(CHECK_PLAINTEXT)) {
      throw new BaremetalError("auth", `the master key does not open the local key store of project ${this.project} (${this.file}): use the masterKey it was created with`);
    }
    return store;
  }

  private async checkDir(): Promise<void> {
    try {
      const st = await fs.stat(this.dir);
      if (!st.isDirectory()) throw validationError("address", `${this.dir} is not a directory`);
    } catch (e) {
      if (isBaremetalError(e)) throw e;
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new BaremetalError("backend", `cannot use the local key store directory ${this.dir}: ${(e as Error).message}`);
    }
  }

  /** Read, change, write atomically, under the process mutex and the lock file. */
  private async update<T>(change: (store: StoreFile) => T): Promise<T> {
    const before = fileLocks.get(this.file) ?? Promise.resolve();
    const run = before.then(
      () => this.locked(change),
      () => this.locked(change),
    );
    const tail = run.catch(() => undefined);
    fileLocks.set(this.file, tail);
    try {
      return await run;
    } finally {
      if (fileLocks.get(this.file) === tail) fileLocks.delete(this.file);
    }
  }

  private async locked<T>(change: (store: StoreFile) => T): Promise<T> {
    await this.checkDir();
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const release = await this.lockFile();
    try {
      const store = (await this.read()) ?? { format: FORMAT, project: this.project, check: this.seal(CHECK_PLAINTEXT, Buffer.from(`check:${this.project}`)), keys: {} };
      const result = change(store);
      await this.write(store);
      return result;
    } finally {
      await release();
    }
  }

  private async lockFile(): Promise<() => Promise<void>> {
    const lock = `${this.file}.lock`;
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      try {
        const fh = await fs.open(lock, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
        await fh.writeFile(String(process.pid));
        await fh.close();
        return () => fs.rm(lock, { force: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new BaremetalError("backend", `cannot lock the local key store ${this.file}: ${(e as Error).message}`, { cause: e });
      }
      const owner = Number((await fs.readFile(lock, "utf8").catch(() => "")).trim());
      if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && !alive(owner)) {
        // its owner died holding it: take it over (rename is atomic: one taker wins)
        const stale = `${lock}.stale-${process.pid}-${randomBytes(4).toString("hex")}`;
        await fs.rename(lock, stale).then(() => fs.rm(stale, { force: true })).catch(() => undefined);
        continue;
      }
      if (Date.now() > deadline) {
        throw new BaremetalError("timeout", `the local key store ${this.file} stayed locked by process ${owner || "?"} for ${this.timeoutMs} ms: retry, or remove ${lock} if that process is gone`);
      }
      if (this.conn.signal?.aborted) throw new BaremetalError("cancelled", "cancelled while waiting for the local key store's lock");
      await new Promise((r) => setTimeout(r, 10 + Math.random() * 20));
    }
  }

  private async write(store: StoreFile): Promise<void> {
    const tmp = `${this.file}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    try {
      const fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        await fh.writeFile(`${JSON.stringify(store, null, 1)}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, this.file);
    } catch (e) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw new BaremetalError("backend", `cannot write the local key store ${this.file}: ${(e as Error).message}`, { cause: e });
    }
    const dh = await fs.open(this.dir, fsc.O_RDONLY).catch(() => undefined);
    if (dh) await dh.sync().catch(() => undefined).finally(() => dh.close());
  }

  // -------------------------------------------------------------------------------------------
  // Audit

  private auditLog?: KeyAudit;

  /** The connection's audit trail (shared reporting: ../key-audit.ts). */
  private get audit(): KeyAudit {
    return (this.auditLog ??= new KeyAudit(this.conn.onAudit, this.project, this.backend));
  }

  private audited<T>(operation: KeyOperation, keyId: string | undefined, fn: () => Promise<T>, idOf?: (r: T) => string): Promise<T> {
    return this.audit.run(
      operation,
      keyId,
      async () => {
        if (this.closed) throw new BaremetalError("internal", "this local key manager connection was closed");
        return fn();
      },
      idOf,
    );
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

function aad(k: StoredKey): Buffer {
  return Buffer.from(`key:${k.project}:${k.id}:${k.bits}`);
}

function describe(k: StoredKey): ManagedKey {
  const m: ManagedKey = { id: k.id, name: k.name, project: k.project, algorithm: "AES", bits: k.bits, state: k.state, createdAt: k.createdAt, version: k.version };
  if (k.replaces !== undefined) m.replaces = k.replaces;
  return m;
}

function checkLabels(labels: unknown): Record<string, string> | undefined {
  if (labels === undefined) return undefined;
  if (typeof labels !== "object" || labels === null || Array.isArray(labels)) throw validationError("labels", "labels must be a map of strings");
  for (const [k, v] of Object.entries(labels)) {
    if (typeof v !== "string") throw validationError(`labels.${k}`, "label values must be strings");
  }
  return labels as Record<string, string>;
}
