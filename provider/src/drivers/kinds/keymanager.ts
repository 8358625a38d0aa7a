/**
 * The key-manager driver kind: where volume encryption keys live (OpenStack Barbican, a KMIP
 * server, Vault/OpenBao transit, the lab's local store). Resources speak only this interface.
 *
 * Model:
 * - A key is symmetric key material (AES, 256 or 512 bits: LUKS2 with aes-xts-plain64 takes a
 *   512-bit key for AES-256) owned by one project. Every call is made AS a project (the
 *   connection's `project`); a key of another project is never returned: the backend itself
 *   refuses (Barbican: 403 by X-Project-Id / ACL; KMIP: the client certificate's identity; Vault: the
 *   token's policy), and the driver maps that refusal to an `auth` error naming the key, never
 *   to "not found" silently.
 * - Key ids are opaque strings chosen by the backend (a Barbican secret ref, a KMIP Unique
 *   Identifier, `transit-key-name:version` for Vault), stable for the key's life.
 * - Rotation produces NEW key material under a NEW id (Barbican secrets are immutable; KMIP
 *   ReKey makes a new object; Vault makes a new version) and links it to its predecessor
 *   (`replaces`). The old key stays readable until `retireKey`: a LUKS volume keeps working with
 *   the old keyslot until the new one is in place.
 * - States follow KMIP's life cycle, reduced: `active` (usable), `deactivated` (retired: still
 *   readable for decryption where the backend allows, never for new use), `destroyed`.
 * - Every operation is reported to `onAudit` (who, what, which key, when, outcome) so resources
 *   can keep an audit trail (PCI DSS 3.6.4 reviews); material never appears in an audit event,
 *   a log line or an error message.
 */

export type KeyState = "active" | "deactivated" | "destroyed";

export interface ManagedKey {
  /** The backend's id of this key (opaque). */
  id: string;
  name: string;
  /** The project that owns it. */
  project: string;
  algorithm: "AES";
  bits: 256 | 512;
  state: KeyState;
  /** ISO 8601, from the backend where it says. */
  createdAt?: string;
  /** The key this one replaced (rotation). */
  replaces?: string;
  /** Backend version where the backend numbers versions (Vault transit). */
  version?: number;
}

export interface CreateKeyRequest {
  name: string;
  bits: 256 | 512;
  /** Free-form labels kept with the key where the backend can (e.g. the volume it protects). */
  labels?: Record<string, string>;
}

export type KeyOperation = "create" | "get" | "describe" | "list" | "rotate" | "retire" | "destroy";

export interface KeyAuditEvent {
  at: string;
  operation: KeyOperation;
  /** The key concerned (absent for list, and for a create that failed). */
  keyId?: string;
  project: string;
  outcome: "ok" | "denied" | "failed";
  /** Why it was denied or failed (no secret). */
  reason?: string;
  /** The backend family and address, for the reviewer. */
  backend: string;
}

/** How to reach a key manager as one project. */
export interface KeyManagerConnection {
  /** Family-specific: `https://barbican:9311`, `kmip://host:5696`, `https://vault:8200`, `file:///path`. */
  address: string;
  /** The project every call is made as. */
  project: string;
  /** Barbican/Vault token, where the backend authenticates by token. */
  token?: string;
  verifyTls?: boolean;
  caBundle?: string;
  /** PEM client certificate and key (KMIP mutual TLS; Barbican behind client-cert auth). */
  clientCertificate?: string;
  clientKey?: string;
  /** Local store: the master key (base64) that encrypts keys at rest. */
  masterKey?: string;
  requestTimeoutMs?: number;
  signal?: AbortSignal;
  onAudit?: (e: KeyAuditEvent) => void;
}

export interface KeyManagerDriver {
  readonly family: string;
  createKey(req: CreateKeyRequest): Promise<ManagedKey>;
  /** The key's description, or undefined when it does not exist (an `auth` error when it is another project's). */
  describeKey(id: string): Promise<ManagedKey | undefined>;
  /** The key material. Refused (`auth`) for another project's key, (`conflict`) for a destroyed one. */
  getKeyMaterial(id: string): Promise<Buffer>;
  /** The project's keys, optionally only those whose name starts with `prefix`. */
  listKeys(filter?: { namePrefix?: string }): Promise<ManagedKey[]>;
  /** New material under a new id, linked to `id` (which stays active until retired). */
  rotateKey(id: string): Promise<ManagedKey>;
  /** No new use; kept for reading where the backend allows. Idempotent. */
  retireKey(id: string): Promise<void>;
  /** Gone for good. Idempotent (a key already gone is fine). */
  destroyKey(id: string): Promise<void>;
  close(): Promise<void>;
}
