/**
 * The backup-target driver kind: where backups are kept. An object store with flat keys
 * (`s3`: any S3-compatible store with SigV4, e.g. Ceph radosgw; `file`: a directory, for the lab).
 *
 * Model (what the backup engine relies on):
 * - Objects are immutable once written: `put` of an existing key replaces it whole, never partly;
 *   a reader sees the old object or the new one, never a torn one (S3 semantics; the file target
 *   writes a temporary file and renames it).
 * - `put` streams: the body is an async iterable of buffers of any size; the driver sends it in
 *   parts (S3 multipart upload above `partBytes`) and never holds more than a few parts in memory,
 *   whatever the object's size. An upload that fails or is cancelled leaves no object under the
 *   key (S3: the multipart upload is aborted).
 * - `get` streams the object back (or a byte range of it); `not-found` when absent.
 * - `list` pages through keys under a prefix in lexicographic order.
 * - Errors: `auth` for refused credentials (S3 403 / SignatureDoesNotMatch / InvalidAccessKeyId,
 *   the message naming the target and saying to check the access key and secret), `not-found`,
 *   `transient` (with `unsent` when nothing reached the store) for a store that cannot be reached,
 *   `backend` otherwise. Secrets never appear in messages.
 */

export interface ObjectInfo {
  key: string;
  sizeBytes: number;
  /** The store's entity tag or equivalent (changes when the object does). */
  etag?: string;
  modifiedAt?: string;
}

export interface PutOptions {
  /** Known size, when the caller has it (lets the driver choose single-part for small objects). */
  sizeBytes?: number;
  /**
   * Hex SHA-256 of the body when the caller has it already (a Buffer body): a driver that signs
   * payloads (S3) uses it instead of hashing the body again. It must be right: the store checks it.
   */
  sha256?: string;
  /** Small string metadata stored with the object (S3 user metadata). */
  metadata?: Record<string, string>;
  signal?: AbortSignal;
}

export interface GetOptions {
  /** Inclusive start and exclusive end byte offsets. */
  range?: { start: number; end: number };
  signal?: AbortSignal;
}

/** How to reach a backup target. */
export interface BackupTargetConnection {
  /** `s3://host:port/bucket[/prefix]?region=...&tls=true|false` or `file:///absolute/dir`. */
  address: string;
  /** S3 access key id and secret (secret config). */
  accessKeyId?: string;
  secretAccessKey?: string;
  verifyTls?: boolean;
  caBundle?: string;
  /** Size of multipart parts (default 16 MiB; S3 minimum 5 MiB). */
  partBytes?: number;
  /** Parts in flight at once (default 4). */
  concurrency?: number;
  requestTimeoutMs?: number;
  signal?: AbortSignal;
}

export interface BackupTargetDriver {
  readonly family: string;
  /**
   * The driver signs payloads (S3's `x-amz-content-sha256`): callers that can compute a body's
   * SHA-256 cheaply (the backup engine, in its worker threads) pass it as `PutOptions.sha256`.
   */
  readonly signsPayloads?: boolean;
  /** Human description without secrets (`s3://host:port/bucket/prefix`). */
  readonly description: string;
  put(key: string, body: AsyncIterable<Buffer> | Buffer, opts?: PutOptions): Promise<ObjectInfo>;
  get(key: string, opts?: GetOptions): Promise<AsyncIterable<Buffer>>;
  head(key: string, signal?: AbortSignal): Promise<ObjectInfo | undefined>;
  list(prefix: string, signal?: AbortSignal): AsyncIterable<ObjectInfo>;
  /** Idempotent: absent keys are fine. */
  delete(keys: string[], signal?: AbortSignal): Promise<void>;
  /** Checks that the target exists and the credentials are accepted (a cheap authenticated call). */
  check(signal?: AbortSignal): Promise<void>;
  close(): Promise<void>;
}
