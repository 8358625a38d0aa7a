/**
 * The provider's backup targets: where backups are kept. `backupTargets` is plain;
 * `backupTargetCredentials` (secret) holds the S3 access keys.
 */
import type { Field } from "./fields";

export const backupTargetsField = {
  type: "map",
  values: {
    type: "object",
    typeToken: "baremetal:backup:BackupTargetSettings",
    description: "One backup target.",
    properties: {
      driver: { type: "string", enum: ["s3", "file"], description: "`s3` (any S3-compatible store with SigV4: Ceph radosgw, MinIO, AWS) or `file` (a directory: the lab). Default: the address's scheme." },
      address: { type: "string", required: true, minLength: 1, description: "`s3://HOST[:PORT]/BUCKET[/PREFIX]?region=R&tls=true|false` or `file:///absolute/dir`." },
      verifyTls: { type: "boolean", description: "Check the store's TLS certificate (default true)." },
      caBundle: { type: "string", description: "PEM CA certificates to check the store's certificate against." },
      partBytes: { type: "integer", minimum: 5242880, description: "Multipart part size in bytes (default 16 MiB)." },
      concurrency: { type: "integer", minimum: 1, maximum: 64, description: "Requests in flight at once (default 4)." },
      requestTimeoutMs: { type: "integer", minimum: 1000, description: "Per-request timeout (default 60000)." },
    },
  },
  description: "The backup targets by name (JSON).",
} as const satisfies Field;

export const backupTargetCredentialsField = {
  type: "map",
  secret: true,
  values: {
    type: "object",
    typeToken: "baremetal:backup:BackupTargetCredentials",
    description: "How to log in to one backup target.",
    properties: {
      accessKeyId: { type: "string", description: "S3 access key id." },
      secretAccessKey: { type: "string", secret: true, description: "S3 secret access key." },
    },
  },
  description: "Credentials of the backup targets, by name (secret JSON).",
} as const satisfies Field;
