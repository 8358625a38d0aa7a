/**
 * The `vault` key-manager driver: keys held by a Vault-API server (OpenBao, HashiCorp Vault) through
 * its HTTP API, one project per connection, authenticated by the connection's token.
 *
 * Layout (provisioned by the Vault admin for each project P; test/harness/openbao.ts does the same):
 * - `<base>/P/transit`: a transit engine. One transit key per key NAME (`aes256-gcm96`, `derived`,
 *   never exportable): the key-encryption key of every key of that name, one transit version per key.
 * - `<base>/P/kv`: a KV version 2 engine holding one record per key at `keys/<name>/<version>`:
 *   the key's data key WRAPPED by the transit key (`vault:vN:...`), its size, labels, state and
 *   rotation link. The record holds no plaintext.
 * - `<base>` is the path of the connection's address (`https://vault:8200/tenants` -> `tenants`),
 *   `baremetal` when the address has none.
 * - The project's token carries a policy granting exactly these paths (see projectPolicy() in the
 *   harness). Isolation is Vault's ACL: another project's token gets 403 on every path under
 *   `<base>/P/`, which the driver reports as an `auth` error naming the key. One mount pair per
 *   project, not name prefixes in a shared mount: policy globs match string prefixes, so a prefix
 *   rule for project `a` would also cover a project `a-b`; a mount path segment cannot be crossed.
 *
 * Keys and ids (from the public Vault transit and KV v2 API documentation):
 * - A key's id is `<name>:<version>` (the transit key's name and the version that wraps it).
 * - Material: a random data key made by transit (`POST transit/datakey/wrapped/<name>` with
 *   `bits` 256 or 512, `key_version` = the key's version, `context` = the id). Only the wrapped form
 *   travels at creation; `getKeyMaterial` unwraps it with `POST transit/decrypt/<name>` (same
 *   context), which only a token allowed on the project's transit mount may do. Why data keys and
 *   not exported transit keys: LUKS2 needs raw 512-bit material (aes-xts with AES-256), which no
 *   transit key type offers for export; exportability is also irreversible per key and would let
 *   every future version out. The context (a `derived` key) binds each wrapped key to its own id: a
 *   record whose wrapped key is copied under another id does not decrypt.
 * - createKey: `POST transit/keys/<name>` (creates the key at version 1, or answers with the existing
 *   key as it is), then the data key under the latest version, then the record, written with
 *   check-and-set 0 (only if absent). The record is what claims a version: when that version is
 *   already some key's (the name was used before), the driver rotates and claims the new version.
 *   Nothing half-made needs keeping: until the record exists, a transit version wraps nothing
 *   (an unused version is harmless). Several keys may share a name (as in Barbican): each gets its
 *   own version, hence its own id; a destroyed key's tombstone keeps its version taken.
 * - rotateKey: `POST transit/keys/<name>/rotate` gives a new version (Vault serialises rotations, so
 *   two concurrent ones get different versions), then a new data key under it and a record with
 *   `replaces` = the old id (claimed the same way). The old key stays active and readable.
 * - retireKey: the record's state becomes `deactivated` (check-and-set on the record's KV version).
 *   The material stays readable: a KeyRotationPolicy interrupted right after retiring still needs
 *   the old key to finish. `min_decryption_version` is not raised here for that reason.
 * - destroyKey: every KV version of the record is deleted (`DELETE kv/metadata/...`: the only copy of
 *   the wrapped key is gone for good) and a tombstone record (state `destroyed`, no key) takes its
 *   place so that the id is never reused and reads answer `conflict: destroyed`. Then the transit
 *   key is shredded below the lowest version still in use: `min_decryption_version` and
 *   `min_encryption_version` are raised to it and `trim` deletes the older versions from Vault, so a
 *   backup of a destroyed key's wrapped data key can no longer be decrypted either. When every key
 *   of the name is destroyed, the transit key is rotated once (a version that wraps nothing) and
 *   trimmed to it. The transit key itself is not deleted: it keeps the name's version numbering, so
 *   an id can never come back with other material.
 * - describeKey / listKeys read the records (`LIST kv/metadata/keys/`, then each name's versions).
 *   createdAt is Vault's time of the record's creation.
 *
 * Concurrency: OpenBao 2.x commits each request as one storage transaction and answers 500
 * "transaction commit failed" when it lost to a concurrent one (seen here with parallel rotations
 * of one key); nothing of it was committed, so the driver sends it again (up to 8 times).
 *
 * Errors: 403 is `auth`: first the token itself is checked (`auth/token/lookup-self`, allowed by
 * Vault's default policy): a token Vault does not know is reported as such (property `token`);
 * otherwise the token's policy does not cover the path, reported naming the key and the project.
 * A missing mount is a `validation` error on `address` saying what the admin must mount. Sealed or
 * standby servers and unreachable ones are `transient`; no answer within requestTimeoutMs is
 * `timeout`. Vault's own error text is included (it never contains key material); the token never
 * appears in a message, a log line or an audit event.
 */
import * as http from "node:http";
import * as https from "node:https";
import axios, { type AxiosInstance } from "axios";
import { BaremetalError, validationError } from "../../core/errors";
import { KeyAudit } from "../key-audit";
import { errorCode, messageOf, retryAfterMs, seconds, sleep } from "../http";
import type {
  CreateKeyRequest,
  KeyManagerConnection,
  KeyManagerDriver,
  KeyOperation,
  KeyState,
  ManagedKey,
} from "../kinds/keymanager";

export const VAULT_FAMILY = "vault";

/** The record format marker, so that foreign KV entries are never taken for keys. */
const FORMAT = "baremetal-key/1";
const DEFAULT_BASE = "baremetal";
const DEFAULT_TIMEOUT_MS = 30_000;
const ATTEMPTS = 3;
/** Tries of a request refused for a storage transaction conflict (nothing committed). */
const COMMIT_ATTEMPTS = 8;
const LIST_CONCURRENCY = 4;
/** Transit key names: Vault's GenericNameRegex (`\w(([\w-.]+)?\w)?`), bounded. */
const NAME = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9_])?$/;
const SEGMENT = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9_])?$/;
const LABEL_KEY = /^[A-Za-z0-9_.-]{1,128}$/;

const NOT_SENT = new Set(["ECONNREFUSED", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ENOTFOUND", "EAI_AGAIN", "EADDRNOTAVAIL"]);
const RESET = new Set(["ECONNRESET", "EPIPE", "ERR_SOCKET_CLOSED", "ERR_STREAM_PREMATURE_CLOSE"]);

interface Answer {
  status: number;
  headers: Record<string, unknown>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
}

interface Request {
  method: "GET" | "POST" | "PUT" | "DELETE";
  /** Below /v1/, without a leading slash. */
  path: string;
  body?: unknown;
  /** Safe to send again after a failure where the request may have arrived. */
  idempotent: boolean;
  /** What we were doing, for messages ("read key db:3"). */
  what: string;
}

/** What the KV record of one key holds. */
interface KeyRecord {
  format: string;
  name: string;
  version: number;
  bits: 256 | 512;
  state: KeyState;
  /** The data key wrapped by the transit key (absent once destroyed). */
  ciphertext?: string;
  replaces?: string;
  labels?: Record<string, string>;
  createdAt?: string;
  retiredAt?: string;
  destroyedAt?: string;
}

interface ReadRecord {
  record: KeyRecord;
  /** The KV version of the record (for check-and-set). */
  kvVersion: number;
  /** When Vault wrote this KV version. */
  kvCreated?: string;
}

interface TransitKey {
  latest_version: number;
  min_decryption_version: number;
  min_encryption_version: number;
  min_available_version: number;
  derived: boolean;
  type: string;
}

/** Opens a connection to Vault as `conn.project`. Nothing is sent until the first call. */
export function createVaultDriver(conn: KeyManagerConnection): KeyManagerDriver {
  return new VaultDriver(conn);
}

export function parseKeyId(id: string): { name: string; version: number } {
  if (typeof id === "string") {
    const m = /^(.+):([1-9][0-9]{0,9})$/.exec(id);
    if (m && NAME.test(m[1])) return { name: m[1], version: Number(m[2]) };
  }
  throw validationError("id", `a Vault key id is <transit key name>:<version> (e.g. db-key:3), got ${JSON.stringify(String(id)).slice(0, 120)}`);
}

class VaultDriver implements KeyManagerDriver {
  readonly family = VAULT_FAMILY;
  private readonly root: string;
  private readonly base: string;
  private readonly project: string;
  private readonly transit: string;
  private readonly kv: string;
  private readonly http: AxiosInstance;
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  private readonly headers: Record<string, string>;
  /** Whether Vault accepted the token (lookup-self), once asked after a 403. */
  private tokenKnown: Promise<boolean> | undefined;

  constructor(private readonly conn: KeyManagerConnection) {
    const { root, base } = parseAddress(conn.address);
    this.root = root;
    this.base = base;
    this.project = parseProject(conn.project);
    this.transit = `${base}/${this.project}/transit`;
    this.kv = `${base}/${this.project}/kv`;
    if (typeof conn.token !== "string" || !conn.token || /[\s\0]/.test(conn.token)) {
      throw validationError("token", "token must be the project's Vault token (one word, no spaces); the vault key manager authenticates by token");
    }
    if ((conn.clientCertificate === undefined) !== (conn.clientKey === undefined)) {
      throw validationError(conn.clientCertificate === undefined ? "clientCertificate" : "clientKey", "clientCertificate and clientKey go together (PEM certificate and its private key)");
    }
    this.headers = { "X-Vault-Token": conn.token, "X-Vault-Request": "true", Accept: "application/json" };
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: LIST_CONCURRENCY });
    this.httpsAgent = new https.Agent({
      keepAlive: true,
      maxSockets: LIST_CONCURRENCY,
      rejectUnauthorized: conn.verifyTls !== false,
      ...(conn.caBundle ? { ca: conn.caBundle } : {}),
      ...(conn.clientCertificate ? { cert: conn.clientCertificate, key: conn.clientKey } : {}),
    });
    this.http = axios.create({
      timeout: conn.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS,
      validateStatus: () => true,
      responseType: "arraybuffer",
      transformResponse: (d: unknown) => d,
      maxRedirects: 0,
      httpAgent: this.httpAgent,
      httpsAgent: this.httpsAgent,
      proxy: false,
    });
  }

  // -------------------------------------------------------------------------------------------
  // KeyManagerDriver

  createKey(req: CreateKeyRequest): Promise<ManagedKey> {
    return this.audit.run(
      "create",
      undefined,
      async () => {
        const name = checkName(req.name);
        const bits = checkBits(req.bits);
        const labels = checkLabels(req.labels);
        return this.allocate(name, await this.ensureTransitKey(name), (v) => this.writeNewKey(name, v, bits, labels, undefined));
      },
      (k) => k.id,
    );
  }

  async describeKey(id: string): Promise<ManagedKey | undefined> {
    const { name, version } = this.idOrAudit("describe", id);
    const kid = `${name}:${version}`;
    return this.audit.run("describe", kid, async () => {
      const r = await this.readRecord(name, version, `read key ${kid}`, kid);
      return r ? this.toKey(r) : undefined;
    });
  }

  async getKeyMaterial(id: string): Promise<Buffer> {
    const { name, version } = this.idOrAudit("get", id);
    const kid = `${name}:${version}`;
    return this.audit.run("get", kid, async () => {
      const r = await this.readRecord(name, version, `read key ${kid}`, kid);
      if (!r) throw this.notFound(kid, "read its material");
      if (r.record.state === "destroyed" || !r.record.ciphertext) {
        throw new BaremetalError("conflict", `key ${kid} was destroyed${r.record.destroyedAt ? ` at ${r.record.destroyedAt}` : ""}; its material is gone for good`, { property: "id" });
      }
      const what = `unwrap the material of key ${kid}`;
      const a = await this.send({ method: "POST", path: `${this.transit}/decrypt/${name}`, body: { ciphertext: r.record.ciphertext, context: contextOf(kid) }, idempotent: true, what });
      if (a.status !== 200) {
        if (a.status === 400 && /too old|disallowed by policy|minimum/i.test(vaultErrors(a))) {
          throw new BaremetalError("conflict", `key ${kid} can no longer be decrypted: its transit version is below the key's min_decryption_version (shredded); it was destroyed or retired beyond reading`, { property: "id", httpStatus: 400 });
        }
        throw await this.failure(a, what, kid);
      }
      const b64 = a.json?.data?.plaintext;
      const key = typeof b64 === "string" ? Buffer.from(b64, "base64") : Buffer.alloc(0);
      if (key.length * 8 !== r.record.bits) {
        key.fill(0);
        throw new BaremetalError("backend", `Vault at ${this.root} unwrapped ${key.length} bytes for key ${kid}, expected ${r.record.bits / 8}: the record does not match its key`, { property: "id" });
      }
      return key;
    });
  }

  listKeys(filter: { namePrefix?: string } = {}): Promise<ManagedKey[]> {
    return this.audit.run("list", undefined, async () => {
      const prefix = filter.namePrefix ?? "";
      const names = (await this.list(`${this.kv}/metadata/keys/`, "list the project's keys")).filter((n) => n.endsWith("/") && n.slice(0, -1).startsWith(prefix)).map((n) => n.slice(0, -1));
      const ids: Array<{ name: string; version: number }> = [];
      for (const name of names) {
        if (!NAME.test(name)) continue;
        for (const v of await this.list(`${this.kv}/metadata/keys/${name}/`, `list the keys named ${name}`)) {
          if (/^[1-9][0-9]{0,9}$/.test(v)) ids.push({ name, version: Number(v) });
        }
      }
      const keys: ManagedKey[] = [];
      let next = 0;
      const worker = async () => {
        while (next < ids.length) {
          const { name, version } = ids[next++];
          const r = await this.readRecord(name, version, `read key ${name}:${version}`, `${name}:${version}`);
          if (r && r.record.state !== "destroyed") keys.push(this.toKey(r));
        }
      };
      await Promise.all(Array.from({ length: Math.min(LIST_CONCURRENCY, ids.length) }, worker));
      return keys.sort((a, b) => (a.createdAt ?? "").localeCompare(b.createdAt ?? "") || a.name.localeCompare(b.name) || (a.version ?? 0) - (b.version ?? 0));
    });
  }

  async rotateKey(id: string): Promise<ManagedKey> {
    const { name, version } = this.idOrAudit("rotate", id);
    const kid = `${name}:${version}`;
    return this.audit.run("rotate", kid, async () => {
      const r = await this.readRecord(name, version, `read key ${kid}`, kid);
      if (!r) throw this.notFound(kid, "rotate it");
      if (r.record.state !== "active") {
        throw new BaremetalError(
          "conflict",
          r.record.state === "destroyed" ? `key ${kid} was destroyed; it cannot be rotated` : `key ${kid} is retired (${r.record.state}); rotate the key that replaced it instead`,
          { property: "id" },
        );
      }
      // The new key gets its own `create` event; this one records the rotation of the old key.
      return this.audit.run(
        "create",
        undefined,
        async () => this.allocate(name, undefined, (v) => this.writeNewKey(name, v, r.record.bits, r.record.labels ?? {}, kid)),
        (k) => k.id,
      );
    });
  }

  async retireKey(id: string): Promise<void> {
    const { name, version } = this.idOrAudit("retire", id);
    const kid = `${name}:${version}`;
    return this.audit.run("retire", kid, async () => {
      for (let attempt = 1; ; attempt++) {
        const r = await this.readRecord(name, version, `read key ${kid}`, kid);
        if (!r) throw this.notFound(kid, "retire it");
        if (r.record.state === "deactivated") return;
        if (r.record.state === "destroyed") throw new BaremetalError("conflict", `key ${kid} was destroyed; there is nothing left to retire`, { property: "id" });
        const record: KeyRecord = { ...r.record, state: "deactivated", retiredAt: new Date().toISOString(), createdAt: r.record.createdAt ?? r.kvCreated };
        const a = await this.send({
          method: "POST",
          path: `${this.kv}/data/keys/${name}/${version}`,
          body: { options: { cas: r.kvVersion }, data: record },
          idempotent: true,
          what: `retire key ${kid}`,
        });
        if (a.status === 200 || a.status === 204) return;
        // Check-and-set lost to a concurrent writer: read again and decide again.
        if (a.status === 400 && /check-and-set/i.test(vaultErrors(a)) && attempt < ATTEMPTS) continue;
        throw await this.failure(a, `retire key ${kid}`, kid);
      }
    });
  }

  async destroyKey(id: string): Promise<void> {
    const { name, version } = this.idOrAudit("destroy", id);
    const kid = `${name}:${version}`;
    return this.audit.run("destroy", kid, async () => {
      const r = await this.readRecord(name, version, `read key ${kid}`, kid);
      if (r && r.record.state !== "destroyed") {
        // Every KV version of the record (each holds the wrapped key) goes, then the tombstone.
        const del = await this.send({ method: "DELETE", path: `${this.kv}/metadata/keys/${name}/${version}`, idempotent: true, what: `destroy key ${kid}` });
        if (del.status !== 204 && del.status !== 200 && del.status !== 404) throw await this.failure(del, `destroy key ${kid}`, kid);
        const tomb: KeyRecord = {
          format: FORMAT,
          name,
          version,
          bits: r.record.bits,
          state: "destroyed",
          createdAt: r.record.createdAt ?? r.kvCreated,
          destroyedAt: new Date().toISOString(),
          ...(r.record.replaces ? { replaces: r.record.replaces } : {}),
        };
        const put = await this.send({ method: "POST", path: `${this.kv}/data/keys/${name}/${version}`, body: { options: { cas: 0 }, data: tomb }, idempotent: true, what: `record the destruction of key ${kid}` });
        if (put.status !== 200 && put.status !== 204 && !(put.status === 400 && /check-and-set/i.test(vaultErrors(put)))) {
          throw await this.failure(put, `record the destruction of key ${kid}`, kid);
        }
      }
      // Also when the record was already gone: a destroy interrupted before this step completes here.
      await this.shred(name, kid);
    });
  }

  async close(): Promise<void> {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  // -------------------------------------------------------------------------------------------
  // Operations

  /**
   * Creates the transit key of `name` if there is none (Vault answers a create of an existing key
   * with the key as it is); returns its latest version, the first candidate for a new key.
   */
  private async ensureTransitKey(name: string): Promise<number> {
    const what = `create transit key ${name}`;
    const a = await this.send({ method: "POST", path: `${this.transit}/keys/${name}`, body: { type: "aes256-gcm96", derived: true, exportable: false }, idempotent: true, what });
    if (a.status !== 200 && a.status !== 204) throw await this.failure(a, what);
    const key = (a.json?.data as Partial<TransitKey> | undefined) ?? (await this.readTransitKey(name, what));
    if (key.type !== "aes256-gcm96" || key.derived !== true) {
      throw validationError("name", `transit key ${name} in ${this.transit} exists but is a ${key.type ?? "?"} key${key.derived ? "" : " without derivation"}, not one of this driver's (aes256-gcm96, derived); choose another name`);
    }
    return Number(key.latest_version) || 1;
  }

  /** A new transit version of `name` (Vault serialises rotations: each caller gets its own). */
  private async rotateTransitKey(name: string): Promise<number> {
    const what = `rotate transit key ${name}`;
    const a = await this.send({ method: "POST", path: `${this.transit}/keys/${name}/rotate`, idempotent: false, what });
    if (a.status !== 200 && a.status !== 204) throw await this.failure(a, what);
    const latest = a.json?.data?.latest_version;
    if (typeof latest === "number" && latest > 0) return latest;
    // Servers that answer a rotation with no body: read the key back (should another rotation
    // have happened in between, the check-and-set of the record sorts it out).
    return (await this.readTransitKey(name, what)).latest_version;
  }

  /**
   * Claims a transit version for a new key: `candidate` (the latest version, when creating), else
   * a fresh rotation; a version some other key already holds (the record's check-and-set refuses
   * it) is skipped by rotating again.
   */
  private async allocate(name: string, candidate: number | undefined, write: (version: number) => Promise<ManagedKey | undefined>): Promise<ManagedKey> {
    let version = candidate ?? (await this.rotateTransitKey(name));
    for (let attempt = 1; ; attempt++) {
      const key = await write(version);
      if (key) return key;
      if (attempt >= 4) {
        throw new BaremetalError("conflict", `could not claim a free version of transit key ${name} in ${this.transit} after ${attempt} tries (other writers keep taking them); try again`);
      }
      version = await this.rotateTransitKey(name);
    }
  }

  /** Makes the data key under `version` and writes the record; undefined when another key holds that version. */
  private async writeNewKey(name: string, version: number, bits: 256 | 512, labels: Record<string, string>, replaces: string | undefined): Promise<ManagedKey | undefined> {
    const kid = `${name}:${version}`;
    const what = `make the ${bits}-bit data key of ${kid}`;
    const dk = await this.send({ method: "POST", path: `${this.transit}/datakey/wrapped/${name}`, body: { bits, key_version: version, context: contextOf(kid) }, idempotent: false, what });
    if (dk.status !== 200) throw await this.failure(dk, what);
    const ciphertext = dk.json?.data?.ciphertext;
    if (typeof ciphertext !== "string" || !ciphertext.startsWith(`vault:v${version}:`)) {
      throw new BaremetalError("backend", `Vault at ${this.root} wrapped the data key of ${kid} under another version (${typeof ciphertext === "string" ? ciphertext.split(":").slice(0, 2).join(":") : "nothing"}); try again`);
    }
    const record: KeyRecord = { format: FORMAT, name, version, bits, state: "active", ciphertext, ...(replaces ? { replaces } : {}), ...(Object.keys(labels).length ? { labels } : {}) };
    const put = await this.send({ method: "POST", path: `${this.kv}/data/keys/${name}/${version}`, body: { options: { cas: 0 }, data: record }, idempotent: false, what: `record key ${kid}` });
    if (put.status === 400 && /check-and-set/i.test(vaultErrors(put))) return undefined; // version taken
    if (put.status !== 200 && put.status !== 204) throw await this.failure(put, `record key ${kid}`);
    const created = typeof put.json?.data?.created_time === "string" ? put.json.data.created_time : undefined;
    return this.toKey({ record, kvVersion: 1, kvCreated: created });
  }

  /**
   * Shreds the transit versions below the lowest one a live key uses (all of them, after one extra
   * rotation, when no key of the name is left): raises min_decryption/min_encryption and trims.
   */
  private async shred(name: string, kid: string): Promise<void> {
    const what = `shred the destroyed versions of transit key ${name}`;
    const t = await this.readTransitKey(name, what, true);
    if (!t) return; // never created, nothing to shred
    let lowestLive: number | undefined;
    let latestUsed = false;
    for (const v of await this.list(`${this.kv}/metadata/keys/${name}/`, `list the keys named ${name}`)) {
      if (!/^[1-9][0-9]{0,9}$/.test(v)) continue;
      const n = Number(v);
      if (n === t.latest_version) latestUsed = true;
      if (lowestLive !== undefined && n >= lowestLive) continue;
      const r = await this.readRecord(name, n, `read key ${name}:${n}`, `${name}:${n}`);
      if (r && r.record.state !== "destroyed") lowestLive = n;
    }
    let floor = lowestLive;
    if (floor === undefined) {
      if (!latestUsed && t.min_available_version === t.latest_version) return; // already done
      floor = latestUsed ? await this.rotateTransitKey(name) : t.latest_version;
    }
    if (floor <= t.min_available_version && floor <= t.min_decryption_version) return;
    const cfg = await this.send({
      method: "POST",
      path: `${this.transit}/keys/${name}/config`,
      body: { min_decryption_version: Math.max(floor, t.min_decryption_version), min_encryption_version: Math.max(floor, t.min_encryption_version) },
      idempotent: true,
      what,
    });
    if (cfg.status !== 200 && cfg.status !== 204) throw await this.failure(cfg, what, kid);
    if (floor > t.min_available_version) {
      const trim = await this.send({ method: "POST", path: `${this.transit}/keys/${name}/trim`, body: { min_available_version: floor }, idempotent: true, what });
      if (trim.status !== 200 && trim.status !== 204) throw await this.failure(trim, what, kid);
    }
  }

  private async readTransitKey(name: string, what: string): Promise<TransitKey>;
  private async readTransitKey(name: string, what: string, absentOk: true): Promise<TransitKey | undefined>;
  private async readTransitKey(name: string, what: string, absentOk = false): Promise<TransitKey | undefined> {
    const a = await this.send({ method: "GET", path: `${this.transit}/keys/${name}`, idempotent: true, what });
    if (a.status === 404 && !isNoHandler(a)) {
      if (absentOk) return undefined;
      throw new BaremetalError("not-found", `transit key ${name} does not exist in ${this.transit} at ${this.root}`, { httpStatus: 404 });
    }
    if (a.status !== 200) throw await this.failure(a, what);
    const d = a.json?.data ?? {};
    return {
      latest_version: Number(d.latest_version) || 0,
      min_decryption_version: Number(d.min_decryption_version) || 0,
      min_encryption_version: Number(d.min_encryption_version) || 0,
      min_available_version: Number(d.min_available_version) || 0,
      derived: d.derived === true,
      type: String(d.type ?? ""),
    };
  }

  /** The record of one key, or undefined when there is none (never created, or a foreign entry). */
  private async readRecord(name: string, version: number, what: string, kid: string): Promise<ReadRecord | undefined> {
    const a = await this.send({ method: "GET", path: `${this.kv}/data/keys/${name}/${version}`, idempotent: true, what });
    if (a.status === 404 && !isNoHandler(a)) return undefined;
    if (a.status !== 200) throw await this.failure(a, what, kid);
    const data = a.json?.data?.data;
    const meta = a.json?.data?.metadata ?? {};
    if (!data || data.format !== FORMAT || data.name !== name || data.version !== version || (data.bits !== 256 && data.bits !== 512)) {
      if (data == null && meta.deletion_time) return undefined; // soft-deleted by someone else
      throw validationError("id", `the entry ${this.kv}/data/keys/${name}/${version} is not a key record of this driver; give the id of a key it made`);
    }
    const state: KeyState = data.state === "deactivated" || data.state === "destroyed" ? data.state : "active";
    return { record: { ...data, state } as KeyRecord, kvVersion: Number(meta.version) || 1, kvCreated: Number(meta.version) === 1 && typeof meta.created_time === "string" ? meta.created_time : undefined };
  }

  /** The keys of a LIST, or none when the path holds nothing. */
  private async list(p: string, what: string): Promise<string[]> {
    const a = await this.send({ method: "GET", path: `${p}?list=true`, idempotent: true, what });
    if (a.status === 404 && !isNoHandler(a)) return [];
    if (a.status !== 200) throw await this.failure(a, what);
    const keys = a.json?.data?.keys;
    return Array.isArray(keys) ? keys.filter((k: unknown): k is string => typeof k === "string") : [];
  }

  private toKey(r: ReadRecord): ManagedKey {
    const rec = r.record;
    const key: ManagedKey = { id: `${rec.name}:${rec.version}`, name: rec.name, project: this.project, algorithm: "AES", bits: rec.bits, state: rec.state, version: rec.version };
    const created = isoTime(rec.createdAt ?? r.kvCreated);
    if (created) key.createdAt = created;
    if (rec.replaces) key.replaces = rec.replaces;
    return key;
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  private async send(r: Request): Promise<Answer> {
    const headers: Record<string, string> = { ...this.headers };
    if (r.body !== undefined) headers["Content-Type"] = "application/json";
    const data = r.body === undefined ? undefined : JSON.stringify(r.body);
    for (let attempt = 1; ; attempt++) {
      let res;
      try {
        res = await this.http.request<ArrayBuffer>({ method: r.method, url: `${this.root}/v1/${r.path}`, headers, data, signal: this.conn.signal });
      } catch (e) {
        const err = this.networkError(e, r);
        const again = err.code === "transient" && (r.idempotent || err.unsent) && attempt < ATTEMPTS && !this.conn.signal?.aborted;
        if (!again) throw err;
        await sleep(200 * attempt * attempt, this.conn.signal, "Vault");
        continue;
      }
      const body = Buffer.from(res.data ?? new ArrayBuffer(0));
      let json: unknown;
      if (body.length) {
        try {
          json = JSON.parse(body.toString("utf8"));
        } catch {
          json = undefined;
          if (res.status < 300) {
            throw new BaremetalError("backend", `${this.root} answered ${r.what} with something that is not JSON: is the address a Vault/OpenBao server?`, { property: "address", httpStatus: res.status });
          }
        }
      }
      const answer: Answer = { status: res.status, headers: res.headers as Record<string, unknown>, json };
      // OpenBao's transactional storage refuses a request whose transaction lost to a concurrent
      // one (two rotations of one key at once): nothing of it was committed, so any request may be
      // sent again.
      if (res.status === 500 && /transaction commit failed/i.test(vaultErrors(answer)) && attempt < COMMIT_ATTEMPTS) {
        await sleep(20 * attempt + Math.floor(Math.random() * 50), this.conn.signal, "Vault");
        continue;
      }
      if ((res.status === 503 || res.status === 502 || res.status === 429) && r.idempotent && attempt < ATTEMPTS) {
        await sleep(Math.min(retryAfterMs(answer.headers["retry-after"]) ?? 500 * attempt, 5000), this.conn.signal, "Vault");
        continue;
      }
      return answer;
    }
  }

  /** Whether Vault knows the token at all (asked once, after the first 403). */
  private tokenIsKnown(): Promise<boolean> {
    this.tokenKnown ??= this.send({ method: "GET", path: "auth/token/lookup-self", idempotent: true, what: "look the token up" })
      .then((a) => a.status !== 403 && a.status !== 401)
      .catch(() => true);
    return this.tokenKnown;
  }

  /** An HTTP answer that is not the expected one, as the core's error. */
  private async failure(a: Answer, what: string, keyId?: string): Promise<BaremetalError> {
    const detail = vaultErrors(a);
    const opts = { httpStatus: a.status, details: detail ? [detail] : [] };
    switch (a.status) {
      case 401:
      case 403:
        if (!(await this.tokenIsKnown())) {
          this.tokenKnown = undefined; // a token may be renewed/replaced between calls; ask again next time
          return new BaremetalError("auth", `Vault at ${this.root} does not accept the token of project ${this.project} (invalid, expired or revoked) to ${what} (HTTP ${a.status}); give a valid token of the project`, { ...opts, property: "token" });
        }
        return keyId
          ? new BaremetalError("auth", `key ${keyId} is not accessible to project ${this.project}: Vault at ${this.root} refused to ${what} (HTTP ${a.status}); the token's policy does not cover ${this.transit} and ${this.kv} (another project's key, or a policy without these paths)`, { ...opts, property: "id" })
          : new BaremetalError("auth", `Vault at ${this.root} refused project ${this.project} to ${what} (HTTP ${a.status}); the token's policy must allow the paths under ${this.base}/${this.project}/ (transit and kv)`, opts);
      case 404:
        if (isNoHandler(a)) {
          return new BaremetalError(
            "validation",
            `Vault at ${this.root} has no engine mounted for project ${this.project} (to ${what}); the Vault admin must mount transit at ${this.transit} and kv version 2 at ${this.kv}`,
            { ...opts, property: "address" },
          );
        }
        return keyId ? this.notFound(keyId, what, opts) : new BaremetalError("not-found", `Vault at ${this.root} found nothing to ${what} (HTTP 404)`, opts);
      case 400:
        return new BaremetalError("backend", `Vault at ${this.root} refused to ${what} (HTTP 400${detail ? `: ${detail}` : ""})`, opts);
      case 429:
      case 473:
      case 502:
      case 503:
        return new BaremetalError(
          "transient",
          /sealed/i.test(detail) ? `Vault at ${this.root} is sealed (to ${what}); unseal it, then try again` : `Vault at ${this.root} is unavailable or a standby (HTTP ${a.status}) to ${what}; try again later`,
          { ...opts, retryAfterSeconds: seconds(retryAfterMs(a.headers["retry-after"])) },
        );
      case 504:
        return new BaremetalError("timeout", `Vault at ${this.root} (or a proxy in front of it) timed out to ${what} (HTTP 504)`, opts);
      default:
        if (a.status >= 300 && a.status < 400) {
          return new BaremetalError("backend", `Vault at ${this.root} redirects ${what} (HTTP ${a.status}); give the address of the active node`, { ...opts, property: "address" });
        }
        return new BaremetalError("backend", `Vault at ${this.root} answered HTTP ${a.status} to ${what}${detail ? `: ${detail}` : ""}`, opts);
    }
  }

  private notFound(kid: string, what: string, opts: { httpStatus?: number; details?: string[] } = {}): BaremetalError {
    return new BaremetalError("not-found", `key ${kid} does not exist in Vault at ${this.root} for project ${this.project} (never created, or its record was removed) — cannot ${what}`, { ...opts, property: "id" });
  }

  private networkError(e: unknown, r: Request): BaremetalError {
    const code = errorCode(e);
    const cause = new Error(code ? `${code}: ${messageOf(e)}` : messageOf(e));
    if (this.conn.signal?.aborted || code === "ERR_CANCELED") return new BaremetalError("cancelled", `cancelled while trying to ${r.what}`, { cause });
    if (code === "ECONNABORTED" || code === "ETIMEDOUT" || /timeout/i.test(messageOf(e))) {
      return new BaremetalError("timeout", `Vault at ${this.root} did not answer in time (${this.conn.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS} ms) to ${r.what}; check that it is up, or raise requestTimeoutMs`, { cause });
    }
    if (code && (code.startsWith("ERR_TLS_") || code.startsWith("ERR_SSL_") || code === "EPROTO" || /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/.test(code))) {
      return new BaremetalError("tls", `TLS with Vault at ${this.root} failed (${code}); give its CA as caBundle (PEM), connect by a name its certificate lists, or set verifyTls: false`, { cause, property: "address" });
    }
    if (code && NOT_SENT.has(code)) {
      return new BaremetalError("transient", `Vault at ${this.root} is unreachable (${code}${code === "ECONNREFUSED" ? ": nothing listens there" : ""}) to ${r.what}; check the address and that the server is running`, { cause, unsent: true, property: "address" });
    }
    const unknownOutcome = r.method !== "GET" && (code === undefined || RESET.has(code) || /socket hang up/i.test(messageOf(e)));
    return new BaremetalError(
      "transient",
      unknownOutcome ? `Vault at ${this.root} dropped the connection after the request to ${r.what} was sent (${code ?? messageOf(e)}); whether it acted is unknown` : `the request to ${r.what} at Vault ${this.root} failed (${code ?? messageOf(e)})`,
      { cause },
    );
  }

  // -------------------------------------------------------------------------------------------
  // Audit

  private auditLog?: KeyAudit;

  /** The connection's audit trail (shared reporting: ../key-audit.ts). */
  private get audit(): KeyAudit {
    return (this.auditLog ??= new KeyAudit(this.conn.onAudit, this.project, `${VAULT_FAMILY} ${this.root}`));
  }

  private idOrAudit(operation: KeyOperation, id: string): { name: string; version: number } {
    try {
      return parseKeyId(id);
    } catch (e) {
      this.audit.event(operation, typeof id === "string" ? id.slice(0, 300) : undefined, "failed", (e as Error).message);
      throw e;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

function parseAddress(address: string): { root: string; base: string } {
  let u: URL;
  try {
    u = new URL(String(address ?? ""));
  } catch {
    throw validationError("address", `address must be the Vault/OpenBao URL (https://vault:8200), got ${JSON.stringify(String(address ?? "")).slice(0, 200)}`);
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") throw validationError("address", `address must be an https:// (or http://) URL, got ${u.protocol}`);
  if (u.username || u.password) throw validationError("address", "address must not carry credentials; give the Vault token as token");
  if (u.search || u.hash) throw validationError("address", "address must not have a query or fragment");
  const segments = u.pathname.split("/").filter(Boolean);
  if (segments[0] === "v1") segments.shift();
  for (const s of segments) {
    if (!SEGMENT.test(s)) throw validationError("address", `the address's path names where the projects' mounts live (e.g. https://vault:8200/baremetal); '${s}' is not a Vault path segment`);
  }
  return { root: u.origin, base: segments.length ? segments.join("/") : DEFAULT_BASE };
}

function parseProject(project: string): string {
  if (typeof project !== "string" || !SEGMENT.test(project)) {
    throw validationError("project", "project must be usable as a Vault path segment (letters, digits, '_', '-', '.', at most 128, not starting or ending with '-' or '.')");
  }
  return project;
}

function checkName(name: unknown): string {
  if (typeof name !== "string" || !NAME.test(name)) {
    throw validationError("name", "a Vault key name is 1-128 letters, digits, '_', '-' or '.', starting and ending with a letter, digit or '_' (a transit key name)");
  }
  return name;
}

function checkBits(bits: unknown): 256 | 512 {
  if (bits !== 256 && bits !== 512) throw validationError("bits", `bits must be 256 or 512 (512 for aes-xts-plain64 with AES-256), got ${JSON.stringify(bits)}`);
  return bits;
}

function checkLabels(labels: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels ?? {})) {
    if (!LABEL_KEY.test(k)) throw validationError(`labels.${k}`, "label names are 1-128 letters, digits, '_', '-' or '.'");
    if (typeof v !== "string" || v.length > 1024) throw validationError(`labels.${k}`, "label values are strings of at most 1024 characters");
    out[k] = v;
  }
  return out;
}

/** The derivation context that binds a wrapped data key to its id. */
function contextOf(kid: string): string {
  return Buffer.from(`baremetal-key:${kid}`, "utf8").toString("base64");
}

/** Vault's `errors` array, short; Vault's messages carry no key material. */
function vaultErrors(a: Answer): string {
  const errs = a.json?.errors;
  if (!Array.isArray(errs)) return "";
  return errs
    .filter((e: unknown): e is string => typeof e === "string" && e.length > 0)
    .map((e: string) => e.replace(/\s+/g, " ").trim())
    .join("; ")
    .slice(0, 300);
}

/** A 404 from Vault's router (no mount at that path), not from an engine (no such entry). */
function isNoHandler(a: Answer): boolean {
  return a.status === 404 && /no handler for route|unsupported path/i.test(vaultErrors(a));
}

function isoTime(t: string | undefined): string | undefined {
  if (!t) return undefined;
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

