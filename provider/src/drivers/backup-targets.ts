/**
 * Backup-target families: which driver serves a backup target of the provider's configuration.
 *
 * - `s3`: any S3-compatible object store that checks SigV4 (Ceph radosgw, MinIO, AWS S3):
 *   `s3://HOST[:PORT]/BUCKET[/PREFIX]?region=R&tls=true|false`, an access key id and secret;
 * - `file`: a directory (`file:///absolute/dir`), for the embedded lab and small sites.
 *
 * The family is the settings' `driver`, or else the address's scheme.
 */
import { BaremetalError, isBaremetalError, validationError } from "../core/errors";
import { FileBackupTarget } from "./backup-file/driver";
import { S3BackupTarget } from "./backup-s3/driver";
import type { BackupTargetConnection, BackupTargetDriver } from "./kinds/backup-target";

/** One backup target as the provider's configuration gives it (plain settings). */
export interface BackupTargetSettings {
  /** `s3` or `file`; defaults to the address's scheme. */
  driver?: string;
  address: string;
  verifyTls?: boolean;
  /** PEM CA certificates the store's TLS certificate is checked against. */
  caBundle?: string;
  partBytes?: number;
  concurrency?: number;
  requestTimeoutMs?: number;
}

/** Its secret half. */
export interface BackupTargetCredentials {
  accessKeyId?: string;
  secretAccessKey?: string;
}

export type BackupTargetFactory = (conn: BackupTargetConnection) => BackupTargetDriver;

export const backupTargetFamilies: Record<string, BackupTargetFactory> = {
  file: (conn) => new FileBackupTarget(conn),
  s3: (conn) => new S3BackupTarget(conn),
};

/**
 * The driver of one target. `property` is where the settings sit in the caller's input
 * (`backupTargets.nightly`): validation errors name `<property>.address`, `<property>.partBytes`,
 * and the credentials' fields as `<property>.credentials.accessKeyId`.
 */
export function backupTargetFor(settings: BackupTargetSettings, credentials: BackupTargetCredentials | undefined, property = "backupTarget", signal?: AbortSignal): BackupTargetDriver {
  const scheme = /^([a-z0-9+.-]+):/i.exec(settings.address ?? "")?.[1]?.toLowerCase();
  const family = settings.driver ?? scheme ?? "";
  const factory = Object.prototype.hasOwnProperty.call(backupTargetFamilies, family) ? backupTargetFamilies[family] : undefined;
  const families = Object.keys(backupTargetFamilies).sort().join(", ");
  if (!factory) {
    if (settings.driver !== undefined) throw validationError(`${property}.driver`, `no backup target driver '${settings.driver}'; use one of ${families}`);
    throw validationError(`${property}.address`, `'${settings.address}' names no backup target family; write s3://HOST[:PORT]/BUCKET[/PREFIX] or file:///absolute/dir`);
  }
  if (scheme !== family) throw validationError(`${property}.address`, `a ${family} target's address starts with ${family}://, not '${settings.address}'`);
  try {
    return factory({
      address: settings.address,
      accessKeyId: credentials?.accessKeyId,
      secretAccessKey: credentials?.secretAccessKey,
      verifyTls: settings.verifyTls,
      caBundle: settings.caBundle,
      partBytes: settings.partBytes,
      concurrency: settings.concurrency,
      requestTimeoutMs: settings.requestTimeoutMs,
      signal,
    });
  } catch (e) {
    if (isBaremetalError(e) && e.code === "validation" && e.property) {
      const where = e.property === "accessKeyId" || e.property === "secretAccessKey" ? `${property}.credentials.${e.property}` : `${property}.${e.property}`;
      throw new BaremetalError("validation", e.message, { property: where, cause: e });
    }
    throw e;
  }
}
