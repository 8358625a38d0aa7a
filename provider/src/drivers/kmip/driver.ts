/**
 * The `kmip` key-manager driver: keys held by a KMIP server (KMIP 1.2 over mutual TLS, our own
 * client in client.ts), one project per connection.
 *
 * - Connection: `address` is `kmip://host[:port]` (port 5696 by default); `clientCertificate` and
 *   `clientKey` (PEM) are required: a KMIP server knows the caller only by that certificate. Its
 *   subject Common Name must equal `project` (PyKMIP takes the CN as the owner of every object the
 *   caller creates, and lets only the owner use them), so a certificate of another project is a
 *   `validation` error before anything is sent. The server's certificate is verified against
 *   `caBundle` (the system's roots when absent) unless `verifyTls: false`.
 * - A key is a KMIP Symmetric Key: Cryptographic Algorithm AES, Cryptographic Length 256 or 512,
 *   Cryptographic Usage Mask Encrypt|Decrypt, created then activated (two messages: PyKMIP 0.10
 *   cannot parse an Activate without Unique Identifier, so the KMIP batch Create + Activate on the
 *   ID placeholder is refused there). Its id is the server's Unique Identifier. It is in Object Group `baremetal` (listKeys finds ours by it) and carries
 *   Application Specific Information (namespace -> data): `baremetal.name` -> the key's name,
 *   `baremetal.version` -> 1, 2, ..., `baremetal.replaces` -> the predecessor's id,
 *   `baremetal.label` -> `key=value` for each label.
 * - Its KMIP Name is the name for version 1 and `<name>@v<n>` for later versions: KMIP wants a
 *   Name unique in the server's domain; `ManagedKey.name` stays the logical name.
 * - Rotation: KMIP's ReKey would be the natural operation, but PyKMIP 0.10 does not implement it
 *   (Operation Not Supported; its Query lists no ReKey) and has no Link attribute (Create refuses
 *   it). So rotation creates a new key of the same size and name, version n+1, linked by
 *   `baremetal.replaces`. The old key stays Active until retireKey. Rotating a retired key is a
 *   `conflict` (rotate its successor).
 * - retireKey = Revoke with Revocation Reason Code Superseded when a successor exists (Locate by
 *   `baremetal.replaces`), else Cessation of Operation: the key becomes Deactivated (KMIP: no
 *   new protection, still usable to process, i.e. decrypt); Get still returns its material.
 *   Already Deactivated/Compromised, or Pre-Active: nothing to do.
 * - destroyKey = Revoke (Cessation of Operation) when Active, then Destroy, in one message. A key
 *   already gone is fine. PyKMIP deletes a destroyed object outright, so afterwards the key reads
 *   as Item Not Found: getKeyMaterial says `not-found` (the interface's `conflict` for a destroyed
 *   key needs a server that keeps destroyed objects; one that does answers State Destroyed, mapped
 *   to `conflict`).
 * - Another project's key: the server answers Permission Denied; the driver says `auth`, naming the
 *   key and the project. (PyKMIP also answers Permission Denied to Destroy of an Active key of our
 *   own: the driver revokes first, so that never reaches the user as `auth`.)
 * - Audit: one event per public call (rotate also reports the `create` of the new key), without
 *   material.
 */
import { X509Certificate } from "node:crypto";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import { KeyAudit } from "../key-audit";
import type { CreateKeyRequest, KeyManagerConnection, KeyManagerDriver, KeyOperation, KeyState, ManagedKey } from "../kinds/keymanager";
import {
  AttributeName,
  CryptographicAlgorithm,
  decodeAttributes,
  isKmipOperationError,
  KmipAttributes,
  KmipClient,
  ObjectType,
  requests,
  ResultReason,
  RevocationReasonCode,
  State,
  UsageMask,
} from "./client";
import { ItemType, TtlvItem } from "./ttlv";

export const KMIP_FAMILY = "kmip";
export const KMIP_DEFAULT_PORT = 5696;
export const OBJECT_GROUP = "baremetal";
const NS_NAME = "baremetal.name";
const NS_VERSION = "baremetal.version";
const NS_REPLACES = "baremetal.replaces";
const NS_LABEL = "baremetal.label";

const DESCRIBE_ATTRIBUTES = [
  AttributeName.Name,
  AttributeName.ObjectType,
  AttributeName.CryptographicAlgorithm,
  AttributeName.CryptographicLength,
  AttributeName.State,
  AttributeName.InitialDate,
  AttributeName.ApplicationSpecificInformation,
];

/** Opens a connection to a KMIP server as `conn.project`. Nothing is sent until the first call. */
export function createKmipDriver(conn: KeyManagerConnection): KmipDriver {
  return new KmipDriver(conn);
}

interface Described {
  key: ManagedKey;
  kmipState: State;
  labels: Record<string, string>;
}

export class KmipDriver implements KeyManagerDriver {
  readonly family = KMIP_FAMILY;
  readonly address: string;
  private readonly client: KmipClient;
  private readonly project: string;

  constructor(private readonly conn: KeyManagerConnection) {
    const { host, port } = parseAddress(conn.address);
    this.address = `kmip://${host.includes(":") ? `[${host}]` : host}:${port}`;
    this.project = checkProject(conn.project);
    if (!conn.clientCertificate) throw validationError("clientCertificate", "a KMIP server identifies the project by its TLS client certificate: give clientCertificate (PEM) and clientKey");
    if (!conn.clientKey) throw validationError("clientKey", "give clientKey, the PEM private key of clientCertificate");
    let cn: string | undefined;
    try {
      cn = commonName(new X509Certificate(conn.clientCertificate));
    } catch {
      throw validationError("clientCertificate", "clientCertificate is not a PEM X.509 certificate");
    }
    if (cn !== this.project)
      throw validationError(
        "clientCertificate",
        `the client certificate's subject CN is ${cn === undefined ? "missing" : JSON.stringify(cn)} but project is ${JSON.stringify(this.project)}: the KMIP server owns keys by the certificate's CN, so use the certificate issued to this project`,
      );
    if (conn.requestTimeoutMs !== undefined && !(Number.isFinite(conn.requestTimeoutMs) && conn.requestTimeoutMs > 0))
      throw validationError("requestTimeoutMs", "requestTimeoutMs must be a positive number of milliseconds");
    this.client = new KmipClient({
      host,
      port,
      ca: conn.caBundle,
      cert: conn.clientCertificate,
      key: conn.clientKey,
      verify: conn.verifyTls !== false,
      requestTimeoutMs: conn.requestTimeoutMs,
      signal: conn.signal,
    });
  }

  // -------------------------------------------------------------------------------------------
  // KeyManagerDriver

  createKey(req: CreateKeyRequest): Promise<ManagedKey> {
    return this.audit.run(
      "create",
      undefined,
      () => this.create(checkName(req?.name), checkBits(req?.bits), checkLabels(req?.labels), undefined, 1),
      (k) => k.id,
    );
  }

  async describeKey(id: string): Promise<ManagedKey | undefined> {
    const uid = this.idOrAudit("describe", id);
    return this.audit.run("describe", uid, async () => (await this.read(uid, "describe"))?.key);
  }

  async getKeyMaterial(id: string): Promise<Buffer> {
    const uid = this.idOrAudit("get", id);
    return this.audit.run("get", uid, async () => {
      let key;
      try {
        key = await this.client.get(uid);
      } catch (e) {
        throw this.keyError(e, uid, "read the material of");
      }
      if (key.material.length !== 32 && key.material.length !== 64)
        throw new BaremetalError("backend", `the KMIP server at ${this.address} returned ${key.material.length * 8} bits for key ${uid}: not a 256- or 512-bit key this driver made`, { property: "id" });
      return key.material;
    });
  }

  listKeys(filter: { namePrefix?: string } = {}): Promise<ManagedKey[]> {
    return this.audit.run("list", undefined, async () => {
      const prefix = filter?.namePrefix ?? "";
      let uids: string[];
      try {
        uids = await this.client.locate({ objectType: ObjectType.SymmetricKey, objectGroups: [OBJECT_GROUP] });
      } catch (e) {
        throw this.keyError(e, undefined, "list the keys of");
      }
      const keys = await this.describeMany(uids);
      return keys.filter((k) => k.name.startsWith(prefix)).sort((a, b) => (a.createdAt ?? "").localeCompare(b.createdAt ?? "") || compareIds(a.id, b.id));
    });
  }

  /** Every version of the key named `name` (Locate by `baremetal.name`), oldest first. */
  findKeys(name: string): Promise<ManagedKey[]> {
    return this.audit.run("list", undefined, async () => {
      const n = checkName(name);
      let uids: string[];
      try {
        uids = await this.client.locate({ objectType: ObjectType.SymmetricKey, applicationSpecificInformation: [{ namespace: NS_NAME, data: n }] });
      } catch (e) {
        throw this.keyError(e, undefined, "locate keys of");
      }
      return (await this.describeMany(uids)).sort((a, b) => (a.version ?? 0) - (b.version ?? 0) || compareIds(a.id, b.id));
    });
  }

  async rotateKey(id: string): Promise<ManagedKey> {
    const uid = this.idOrAudit("rotate", id);
    return this.audit.run("rotate", uid, async () => {
      const found = await this.read(uid, "rotate");
      if (!found) throw notFound(uid, this.project, "rotate", this.address);
      if (found.key.state !== "active")
        throw new BaremetalError("conflict", `key ${uid} is ${found.key.state} (KMIP state ${State[found.kmipState]}); rotate the key that replaced it instead`, { property: "id" });
      const next = (found.key.version ?? 1) + 1;
      return this.audit.run("create", undefined, () => this.create(found.key.name, found.key.bits, found.labels, uid, next), (k) => k.id);
    });
  }

  async retireKey(id: string): Promise<void> {
    const uid = this.idOrAudit("retire", id);
    return this.audit.run("retire", uid, async () => {
      const found = await this.read(uid, "retire");
      if (!found) throw notFound(uid, this.project, "retire", this.address);
      if (found.kmipState !== State.Active) return; // Deactivated, Compromised, Pre-Active: no new use already
      let successors: string[];
      try {
        successors = await this.client.locate({ objectType: ObjectType.SymmetricKey, applicationSpecificInformation: [{ namespace: NS_REPLACES, data: uid }] });
      } catch (e) {
        throw this.keyError(e, uid, "look for the successor of");
      }
      const reason = successors.length ? RevocationReasonCode.Superseded : RevocationReasonCode.CessationOfOperation;
      try {
        await this.client.revoke(uid, reason, successors.length ? `superseded by ${successors.join(", ")}` : "retired");
      } catch (e) {
        // Retired meanwhile by someone else: that is what we wanted.
        if (isKmipOperationError(e) && e.reason === ResultReason.IllegalOperation) {
          const again = await this.read(uid, "retire");
          if (again && again.kmipState !== State.Active) return;
        }
        throw this.keyError(e, uid, "retire");
      }
    });
  }

  async destroyKey(id: string): Promise<void> {
    const uid = this.idOrAudit("destroy", id);
    return this.audit.run("destroy", uid, async () => {
      const found = await this.read(uid, "destroy");
      if (!found || found.key.state === "destroyed") return;
      const batch = found.kmipState === State.Active ? [requests.revoke(uid, RevocationReasonCode.CessationOfOperation, "destroyed"), requests.destroy(uid)] : [requests.destroy(uid)];
      try {
        await this.client.batch(batch);
      } catch (e) {
        if (isKmipOperationError(e) && e.reason === ResultReason.ItemNotFound) return; // destroyed meanwhile
        throw this.keyError(e, uid, "destroy");
      }
    });
  }

  async close(): Promise<void> {
    await this.client.close();
  }

  /** The KMIP client of this connection (for tests and diagnostics). */
  get kmip(): KmipClient {
    return this.client;
  }

  // -------------------------------------------------------------------------------------------
  // Operations

  private async create(name: string, bits: 256 | 512, labels: Record<string, string>, replaces: string | undefined, version: number): Promise<ManagedKey> {
    const attributes: KmipAttributes = {
      names: [version === 1 ? name : `${name}@v${version}`],
      cryptographicAlgorithm: CryptographicAlgorithm.AES,
      cryptographicLength: bits,
      cryptographicUsageMask: UsageMask.Encrypt | UsageMask.Decrypt,
      objectGroups: [OBJECT_GROUP],
      applicationSpecificInformation: [
        { namespace: NS_NAME, data: name },
        { namespace: NS_VERSION, data: String(version) },
        ...(replaces ? [{ namespace: NS_REPLACES, data: replaces }] : []),
        ...Object.entries(labels).map(([k, v]) => ({ namespace: NS_LABEL, data: `${k}=${v}` })),
      ],
    };
    let uid: string;
    try {
      uid = await this.client.create(attributes);
    } catch (e) {
      throw this.keyError(e, undefined, `create a ${bits}-bit key '${name}' in`);
    }
    // Two messages: PyKMIP 0.10 cannot parse an Activate without a Unique Identifier, so the
    // batch form (Create, then Activate on the ID placeholder) is refused as an Invalid Message.
    try {
      await this.client.activate(uid);
    } catch (e) {
      throw new BaremetalError(
        "partial-create",
        `key ${uid} ('${name}') was created on the KMIP server at ${this.address} but not activated (${isBaremetalError(e) ? e.message : String(e)}); keep ${uid} in state, then retry or destroy it`,
        { cause: e },
      );
    }
    const read = await this.read(uid, "create").catch(() => undefined);
    return (
      read?.key ?? {
        id: uid,
        name,
        project: this.project,
        algorithm: "AES",
        bits,
        state: "active",
        version,
        ...(replaces ? { replaces } : {}),
      }
    );
  }

  /** The key's description, or undefined when the server does not know it. */
  private async read(uid: string, what: KeyOperation): Promise<Described | undefined> {
    let a: KmipAttributes;
    try {
      a = await this.client.getAttributes(uid, DESCRIBE_ATTRIBUTES);
    } catch (e) {
      if (isKmipOperationError(e) && e.reason === ResultReason.ItemNotFound) return undefined;
      throw this.keyError(e, uid, what === "describe" ? "describe" : `read (to ${what})`);
    }
    return this.toKey(uid, a);
  }

  /** Get Attributes of many keys, in batches of one message each; keys gone meanwhile are left out. */
  private async describeMany(uids: string[]): Promise<ManagedKey[]> {
    const out: ManagedKey[] = [];
    for (let i = 0; i < uids.length; i += 50) {
      const chunk = uids.slice(i, i + 50);
      let results;
      try {
        // CONTINUE would be ideal; Stop is what every server supports, so a failure is retried one by one.
        results = await this.client.batchResults(chunk.map((u) => requests.getAttributes(u, DESCRIBE_ATTRIBUTES)));
      } catch (e) {
        throw this.keyError(e, undefined, "describe the keys of");
      }
      for (let j = 0; j < chunk.length; j++) {
        const r = results[j];
        if (r && r.status === 0) {
          const a = decodeAttributesOf(r.payload);
          const d = this.toKey(chunk[j], a);
          if (d) out.push(d.key);
        } else {
          const d = await this.read(chunk[j], "list");
          if (d) out.push(d.key);
        }
      }
    }
    return out;
  }

  private toKey(uid: string, a: KmipAttributes): Described | undefined {
    if (a.objectType !== undefined && a.objectType !== ObjectType.SymmetricKey)
      throw validationError("id", `KMIP object ${uid} is not a symmetric key (Object Type ${ObjectType[a.objectType] ?? a.objectType}); give the id of a key`);
    const bits = a.cryptographicLength;
    if (bits !== 256 && bits !== 512) throw validationError("id", `KMIP object ${uid} is a ${bits ?? "?"}-bit key, not one of 256 or 512 bits this driver makes; give the id of a key`);
    if (a.cryptographicAlgorithm !== undefined && a.cryptographicAlgorithm !== CryptographicAlgorithm.AES)
      throw validationError("id", `KMIP object ${uid} is not an AES key; give the id of a key`);
    const asi = a.applicationSpecificInformation ?? [];
    const get = (ns: string) => asi.find((i) => i.namespace === ns)?.data;
    const labels: Record<string, string> = {};
    for (const i of asi) {
      if (i.namespace !== NS_LABEL) continue;
      const eq = i.data.indexOf("=");
      if (eq > 0) labels[i.data.slice(0, eq)] = i.data.slice(eq + 1);
    }
    const kmipState = (a.state ?? State.Active) as State;
    const version = Number(get(NS_VERSION));
    const replaces = get(NS_REPLACES);
    const key: ManagedKey = {
      id: uid,
      name: get(NS_NAME) ?? a.names?.[0] ?? uid,
      project: this.project,
      algorithm: "AES",
      bits,
      state: keyState(kmipState),
      ...(a.initialDate ? { createdAt: a.initialDate.toISOString() } : {}),
      ...(replaces ? { replaces } : {}),
      ...(Number.isInteger(version) && version > 0 ? { version } : {}),
    };
    return { key, kmipState, labels };
  }

  /** A failure about key `uid` (or the project's keys), as the core's error naming them. */
  private keyError(e: unknown, uid: string | undefined, what: string): BaremetalError {
    if (!isBaremetalError(e)) return new BaremetalError("internal", `could not ${what} ${uid ? `key ${uid}` : `project ${this.project}`} at ${this.address}: ${String((e as Error)?.message ?? e)}`, { cause: e });
    if (!isKmipOperationError(e)) return e; // transport, TLS, timeout: already say where and what to do
    const details = e.details;
    const messageId = e.messageId;
    switch (e.reason) {
      case ResultReason.PermissionDenied:
        return uid
          ? new BaremetalError("auth", `key ${uid} is not accessible to project ${this.project}: the KMIP server at ${this.address} refused to ${what} it (Permission Denied); it belongs to another project`, {
              property: "id",
              details,
              messageId,
              cause: e,
            })
          : new BaremetalError("auth", `the KMIP server at ${this.address} refused project ${this.project} to ${what} it (Permission Denied)`, { details, messageId, cause: e });
      case ResultReason.AuthenticationNotSuccessful:
        return new BaremetalError(
          "auth",
          `the KMIP server at ${this.address} did not accept the client certificate of project ${this.project} (Authentication Not Successful): it must be signed by a CA the server trusts and allow client authentication (extendedKeyUsage clientAuth)`,
          { property: "clientCertificate", details, messageId, cause: e },
        );
      case ResultReason.ItemNotFound:
        return uid ? notFound(uid, this.project, what, this.address, e) : new BaremetalError("not-found", `the KMIP server at ${this.address} found nothing to ${what}`, { details, messageId, cause: e });
      default:
        return new BaremetalError(e.code, `could not ${what} ${uid ? `key ${uid}` : `project ${this.project}`} at ${this.address}: ${e.messageId}${details.length ? ` (${details.join("; ")})` : ""}`, {
          details,
          messageId,
          cause: e,
        });
    }
  }

  // -------------------------------------------------------------------------------------------
  // Audit

  private auditLog?: KeyAudit;

  /** The connection's audit trail (shared reporting: ../key-audit.ts). */
  private get audit(): KeyAudit {
    return (this.auditLog ??= new KeyAudit(this.conn.onAudit, this.project, `${KMIP_FAMILY} ${this.address}`));
  }

  private idOrAudit(operation: KeyOperation, id: string): string {
    if (typeof id === "string" && /^[\x21-\x7e]{1,255}$/.test(id)) return id;
    const e = validationError("id", `a KMIP key id is the server's Unique Identifier (1-255 printable characters), got ${JSON.stringify(String(id)).slice(0, 120)}`);
    this.audit.event(operation, typeof id === "string" ? id.slice(0, 300) : undefined, "failed", e.message);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

function keyState(s: State): KeyState {
  switch (s) {
    case State.Active:
      return "active";
    case State.Destroyed:
    case State.DestroyedCompromised:
      return "destroyed";
    default:
      // Pre-Active (created, never activated), Deactivated, Compromised: not for new use.
      return "deactivated";
  }
}

function notFound(uid: string, project: string, what: string, address: string, cause?: unknown): BaremetalError {
  return new BaremetalError("not-found", `key ${uid} does not exist on the KMIP server at ${address} (destroyed, or never created) for project ${project}: could not ${what} it`, {
    property: "id",
    cause,
  });
}

function decodeAttributesOf(payload: TtlvItem | undefined): KmipAttributes {
  return payload && payload.type === ItemType.Structure ? decodeAttributes(payload.value) : {};
}

function compareIds(a: string, b: string): number {
  const na = Number(a);
  const nb = Number(b);
  return Number.isFinite(na) && Number.isFinite(nb) ? na - nb : a.localeCompare(b);
}

function commonName(cert: X509Certificate): string | undefined {
  const cns = cert.subject
    .split("\n")
    .filter((l) => l.startsWith("CN="))
    .map((l) => l.slice(3));
  return cns.length === 1 ? cns[0] : undefined;
}

export function parseAddress(address: string): { host: string; port: number } {
  let u: URL;
  try {
    u = new URL(String(address ?? ""));
  } catch {
    throw validationError("address", `address must be the KMIP server as kmip://host[:port], got ${JSON.stringify(String(address ?? "")).slice(0, 200)}`);
  }
  if (u.protocol !== "kmip:") throw validationError("address", `address must be a kmip://host[:port] URL, got ${u.protocol}//`);
  if (u.username || u.password) throw validationError("address", "address must not carry credentials: the client certificate is the credential");
  if ((u.pathname && u.pathname !== "/") || u.search || u.hash) throw validationError("address", "address must be kmip://host[:port] only (no path, query or fragment)");
  const host = u.hostname.replace(/^\[(.*)\]$/, "$1");
  if (!host) throw validationError("address", "address must name the KMIP server's host: kmip://host[:port]");
  const port = u.port ? Number(u.port) : KMIP_DEFAULT_PORT;
  return { host, port };
}

function checkProject(project: string): string {
  if (typeof project !== "string" || !/^[\x21-\x7e]{1,255}$/.test(project))
    throw validationError("project", "project must be 1-255 printable characters without spaces (the Common Name of its KMIP client certificate)");
  return project;
}

function checkName(name: unknown): string {
  if (typeof name !== "string" || name.length < 1 || name.length > 200 || /[\0-\x1f\x7f]/.test(name))
    throw validationError("name", "a key name is 1-200 characters without control characters");
  return name;
}

function checkBits(bits: unknown): 256 | 512 {
  if (bits !== 256 && bits !== 512) throw validationError("bits", `bits must be 256 or 512 (512 for aes-xts-plain64 with AES-256), got ${JSON.stringify(bits)}`);
  return bits;
}

function checkLabels(labels: unknown): Record<string, string> {
  if (labels === undefined) return {};
  if (typeof labels !== "object" || labels === null || Array.isArray(labels)) throw validationError("labels", "labels must be a map of strings");
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) {
    if (!/^[A-Za-z0-9_.\-/]{1,100}$/.test(k)) throw validationError(`labels.${k}`, "a label key is 1-100 characters of letters, digits, '_', '.', '-', '/'");
    if (typeof v !== "string" || v.length > 1000 || /[\0-\x1f\x7f]/.test(v)) throw validationError(`labels.${k}`, "a label value is a string of at most 1000 characters without control characters");
    out[k] = v;
  }
  return out;
}
