/**
 * baremetal:backup:Backup — one backup of a volume of the caller's project, in one of the
 * provider's backup targets (engine: ../../backup/engine.ts).
 *
 * - Incremental by default: on the volume's latest backup in the target (only changed cells move;
 *   on Ceph only the changes since that backup's snapshot are even read).
 * - Encrypted always: an encrypted volume (LUKS2 at the source) is stored as the ciphertext it is;
 *   a plain volume needs `keyId`, a key of the project's key manager that wraps the backup's data
 *   key (destroying that key makes the backup unreadable).
 * - A new backup: change `trigger` (a date, a CI run id), which replaces the resource: the new
 *   backup is taken (incremental on this one), then this one is deleted unless `retainOnDelete`.
 *   A BackupPolicy keeps several by schedule and retention.
 * - `backupId` (`<volumeId>/<id>`) is what a Volume's `sourceBackup` restores.
 */
import { randomBytes } from "node:crypto";
import { authorize } from "../../core/auth";
import { pickNamed } from "../../core/named";
import { BaremetalError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { OperationContext, Props, ProviderContext, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import { deleteBackups, keyWrapper, type KeyWrapper, listManifests, type Manifest, readManifest, restoreBackup, takeBackup } from "../../backup/engine";
import { backupTargetFor } from "../../drivers/backup-targets";
import type { BackupTargetDriver } from "../../drivers/kinds/backup-target";
import type { StorageDriver } from "../../drivers/kinds/storage";
import { Luks } from "../../drivers/luks";
import { keyManagerName, projectOf, withKeyManager } from "../keys/encryption-key";
import { backendName, requireOwnVolume, withLuksHeader, withStorage } from "../storage/volume";

const inputs = {
  volumeId: { type: "string", required: true, minLength: 1, replaceOnChange: true, description: "The volume to back up (a Volume's `volumeId`)." },
  backend: { type: "string", replaceOnChange: true, description: "The volume's storage backend (default: the only one)." },
  target: { type: "string", replaceOnChange: true, description: "Which of the provider's `backupTargets` (default: the only one)." },
  keyId: {
    type: "string",
    replaceOnChange: true,
    description: "For a volume not encrypted at the source: the EncryptionKey (`keyId`) that wraps the backup's data key. Not needed for a LUKS2 volume (its backup stays the ciphertext it is).",
  },
  keyManager: { type: "string", replaceOnChange: true, description: "The key manager holding keyId (default: the only one)." },
  incremental: { type: "boolean", default: true, replaceOnChange: true, description: "Take it relative to the volume's latest backup in the target (false: a full backup)." },
  trigger: { type: "string", replaceOnChange: true, description: "Changing this takes a new backup (replacing this one)." },
} as const satisfies Fields;

const outputs = {
  backupId: { type: "string", required: true, stable: true, description: "`<volumeId>/<id>`: what a Volume's sourceBackup restores." },
  project: { type: "string", required: true, stable: true, description: "The project that owns it." },
  createdAt: { type: "string", required: true, stable: true, description: "When it was taken (ISO 8601)." },
  sizeBytes: { type: "number", required: true, stable: true, description: "The volume's size at that time." },
  usedBytes: { type: "number", required: true, stable: true, description: "Bytes of non-zero content it stands for." },
  bytesRead: { type: "number", required: true, stable: true, description: "Bytes read from the volume to take it." },
  bytesStored: { type: "number", required: true, stable: true, description: "Bytes this backup added to the target (what moved)." },
  chunksStored: { type: "integer", required: true, stable: true, description: "Chunks it added." },
  chunksReused: { type: "integer", required: true, stable: true, description: "Chunks it shares with earlier backups." },
  checksum: { type: "string", required: true, stable: true, description: "SHA-256 of its cell map (each chunk is content-addressed): `sha256:<hex>`." },
  parent: { type: "string", stable: true, description: "The backup it is incremental on." },
  encryption: { type: "string", required: true, stable: true, description: "`source` (the volume's own LUKS2 ciphertext) or `envelope` (AES-256-GCM under a data key wrapped by keyId)." },
} as const satisfies Fields;

export function targetName(ctx: ProviderContext, props: Props, property = "target"): string {
  return pickNamed(ctx.config.backupTargets, props.target as string | undefined, property, ["backup targets", "backup target"], "backupTargets");
}

export async function withTarget<T>(ctx: ProviderContext, name: string, use: (t: BackupTargetDriver) => Promise<T>, signal?: AbortSignal): Promise<T> {
  const t = backupTargetFor(ctx.config.backupTargets[name], ctx.config.backupTargetCredentials[name], `backupTargets.${name}`, signal);
  try {
    return await use(t);
  } finally {
    await t.close().catch(() => undefined);
  }
}

/** Where a volume's backups live in a target. */
export const prefixOf = (volumeId: string) => `${volumeId.slice(0, volumeId.indexOf("--"))}/volumes/${volumeId}/`;

/** Splits `<volumeId>/<id>`. */
export function parseBackupId(backupId: string, property = "backupId"): { volumeId: string; id: string } {
  const m = /^([a-z0-9][a-z0-9._-]*--[a-z0-9.-]+)\/([A-Za-z0-9-]+)$/.exec(backupId);
  if (!m) throw validationError(property, `${JSON.stringify(backupId)} is not a backup id: use a Backup's backupId output, <volumeId>/<id>`);
  return { volumeId: m[1], id: m[2] };
}

/** A wrapper over the material of `keyId` (fetched as the caller's project), or undefined without keyId. */
export async function wrapperFor(ctx: OperationContext, props: { keyId?: unknown; keyManager?: unknown }, property: string, signal?: AbortSignal): Promise<KeyWrapper | undefined> {
  if (props.keyId === undefined) return undefined;
  const km = keyManagerName(ctx, { keyManager: props.keyManager }, `${property}keyManager`);
  const material = await withKeyManager(ctx, km, (d) => d.getKeyMaterial(props.keyId as string), signal, { keyProperty: `${property}keyId` });
  try {
    return keyWrapper(km, props.keyId as string, material);
  } finally {
    material.fill(0);
  }
}

const luks = new Luks();

function outputsOf(props: Props, project: string, volumeId: string, m: Manifest): Props {
  return {
    ...props,
    backupId: `${volumeId}/${m.id}`,
    project,
    createdAt: m.createdAt,
    sizeBytes: m.sizeBytes,
    usedBytes: m.stats.bytesUsed,
    bytesRead: m.stats.bytesRead,
    bytesStored: m.stats.bytesStored,
    chunksStored: m.stats.chunksStored,
    chunksReused: m.stats.chunksReused,
    checksum: `sha256:${m.digest}`,
    ...(m.parent ? { parent: `${volumeId}/${m.parent}` } : {}),
    encryption: m.encryption.mode,
  };
}

/** Takes a backup of `volumeId` into `target` (shared with BackupPolicy). */
export async function backupVolume(
  ctx: OperationContext,
  req: { volumeId: string; backend: string; target: string; keyId?: string; keyManager?: string; incremental: boolean; property?: string; takenBy?: string },
): Promise<Manifest> {
  const prefix = prefixOf(req.volumeId);
  const id = `${new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")}-${randomBytes(3).toString("hex")}`;
  const property = req.property ?? "";
  return withTarget(
    ctx,
    req.target,
    (target) =>
      withStorage(
        ctx,
        req.backend,
        async (storage) => {
          const encrypted = await withLuksHeader(storage, req.volumeId, (file) => luks.isLuks(file)).catch((e) => {
            if (e instanceof BaremetalError && e.code === "not-found") throw new BaremetalError("not-found", `volume ${req.volumeId} does not exist`, { property: `${property}volumeId` });
            throw e;
          });
          const wrapper = encrypted ? undefined : await wrapperFor(ctx, req, property, ctx.signal);
          if (!encrypted && !wrapper) {
            throw validationError(`${property}keyId`, `volume ${req.volumeId} is not encrypted at the source, so its backup is encrypted with a key of the key manager: give keyId (an EncryptionKey's keyId)`);
          }
          const parent = req.incremental ? (await listManifests(target, prefix, ctx.signal)).pop() : undefined;
          ctx.progress(`backing up volume ${req.volumeId} to ${target.description}${parent ? ` (incremental on ${parent.id})` : " (full)"}`);
          let last = 0;
          const m = await takeBackup({
            storage,
            backend: req.backend,
            volume: req.volumeId,
            target,
            prefix,
            id,
            mode: encrypted ? "source" : "envelope",
            wrapper,
            parent,
            ...(req.takenBy ? { takenBy: req.takenBy } : {}),
            signal: ctx.signal,
            // Test-only fault injection: the provider dies after storing the Nth chunk (proves an interrupted backup leaves nothing a restore could take).
            afterChunk: (n) => {
              if (process.env.BAREMETAL_FAULT_CRASH_AT === `backup-chunk-${n}`) process.kill(process.pid, "SIGKILL");
            },
            onProgress: (p) => {
              if (Date.now() - last < 2000) return;
              last = Date.now();
              ctx.progress(`volume ${req.volumeId}: ${Math.round(p.bytesRead / 1048576)} MiB read, ${Math.round(p.bytesStored / 1048576)} MiB stored`);
            },
          });
          ctx.progress(`backup ${req.volumeId}/${m.id}: ${m.stats.chunksStored} chunks stored (${m.stats.bytesStored} bytes), ${m.stats.chunksReused} reused, in ${m.stats.ms} ms`);
          return m;
        },
        ctx.signal,
      ),
    ctx.signal,
  );
}

/**
 * Finds a backup for a restore into a new volume of `sizeBytes` and returns the restore to run once
 * the volume exists. Refuses, before anything is made: another project's backup, a volume smaller
 * than the backup, and encrypting a restore of a plain volume's backup (formatting would destroy
 * the restored data).
 */
export async function openBackup(ctx: OperationContext, src: Props, sizeBytes: number, encrypt: boolean): Promise<(storage: StorageDriver, volume: string) => Promise<void>> {
  const { volumeId, id } = parseBackupId(src.backupId as string, "sourceBackup.backupId");
  requireOwnVolume(ctx, volumeId, "sourceBackup.backupId");
  const target = targetName(ctx, src, "sourceBackup.target");
  const m = await withTarget(ctx, target, (t) => readManifest(t, prefixOf(volumeId), id, ctx.signal), ctx.signal);
  if (m.sizeBytes > sizeBytes) {
    throw validationError("sizeGib", `backup ${src.backupId} is of a ${m.sizeBytes}-byte volume; make the new volume at least ${Math.ceil(m.sizeBytes / 1024 ** 3)} GiB`);
  }
  if (m.encryption.mode === "envelope" && encrypt) {
    throw validationError("encryption", `backup ${src.backupId} is of a volume not encrypted at the source: a restore of it cannot be encrypted in place (formatting would destroy the restored data); drop encryption`);
  }
  const wrapper = m.encryption.mode === "envelope" ? await wrapperFor(ctx, { keyId: src.keyId ?? m.encryption.keyId, keyManager: src.keyManager }, "sourceBackup.", ctx.signal) : undefined;
  return (storage, volume) =>
    withTarget(
      ctx,
      target,
      async (t) => {
        ctx.progress(`restoring backup ${src.backupId} (${m.cells.length} chunks) into ${volume}`);
        let last = 0;
        const r = await restoreBackup({
          manifest: m,
          target: t,
          prefix: prefixOf(volumeId),
          wrapper,
          storage,
          volume,
          signal: ctx.signal,
          onProgress: (p) => {
            if (Date.now() - last < 2000) return;
            last = Date.now();
            ctx.progress(`restoring into ${volume}: ${p.cellsDone}/${p.cells} chunks`);
          },
        });
        ctx.progress(`restored ${r.bytesWritten} bytes into ${volume} in ${r.ms} ms; verified against the backup's checksums`);
      },
      ctx.signal,
    );
}

export const backupResource: ResourceDefinition = {
  token: "baremetal:backup:Backup",
  description:
    "One backup of a volume of the caller's project in a backup target: incremental on the latest one, encrypted (a LUKS2 volume's ciphertext as is, or envelope encryption under a key-manager key), checksummed; restore it with a Volume's sourceBackup.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 86400,

  check(props, ctx) {
    try {
      if (!isUnknown(props.target)) targetName(ctx, props);
      if (!isUnknown(props.backend)) backendName(ctx, props);
      if (typeof props.volumeId === "string") requireOwnVolume(ctx, props.volumeId);
      if (props.keyId !== undefined && !isUnknown(props.keyManager)) keyManagerName(ctx, props, "keyManager");
    } catch (e) {
      if (e instanceof BaremetalError && e.property) return [{ property: e.property, reason: e.message }];
      throw e;
    }
    return [];
  },

  authorize(ctx, _change, props, state) {
    const volumeId = (state?.volumeId ?? props.volumeId) as unknown;
    if (typeof volumeId === "string") requireOwnVolume(ctx, volumeId);
    authorize(ctx.policy, ctx.caller, "baremetal:volume:backup", { "volume.owner": projectOf(ctx) });
  },

  async create(ctx, props) {
    const volumeId = props.volumeId as string;
    const project = requireOwnVolume(ctx, volumeId);
    const m = await backupVolume(ctx, {
      volumeId,
      backend: backendName(ctx, props),
      target: targetName(ctx, props),
      keyId: props.keyId as string | undefined,
      keyManager: props.keyManager as string | undefined,
      incremental: props.incremental !== false,
    });
    return { id: `${volumeId}/${m.id}`, outputs: outputsOf(props, project, volumeId, m) };
  },

  async read(ctx, id, stored, state) {
    const { volumeId, id: backup } = parseBackupId(id, "id");
    const project = requireOwnVolume(ctx, volumeId, "id");
    const declared: Props = stored ?? { volumeId };
    return withTarget(
      ctx,
      targetName(ctx, declared),
      async (target) => {
        let m: Manifest;
        try {
          m = await readManifest(target, prefixOf(volumeId), backup, ctx.signal);
        } catch (e) {
          if (e instanceof BaremetalError && e.code === "not-found") return undefined;
          throw e;
        }
        return { id, inputs: declared, outputs: { ...(state ?? {}), ...outputsOf(declared, project, volumeId, m) } };
      },
      ctx.signal,
    );
  },

  async update(_ctx, _id, _olds, news, oldState) {
    return { ...oldState, ...news };
  },

  async delete(ctx, id, props) {
    const { volumeId, id: backup } = parseBackupId(id, "id");
    requireOwnVolume(ctx, volumeId, "id");
    const r = await withTarget(ctx, targetName(ctx, props), (target) => deleteBackups(target, prefixOf(volumeId), [backup], ctx.signal), ctx.signal);
    ctx.progress(`backup ${id} deleted (${r.chunksDeleted} chunks no other backup used)`);
    // Its snapshot on the volume, if the backend keeps one.
    await withStorage(
      ctx,
      backendName(ctx, props),
      async (storage) => {
        if (!(await storage.getVolume(volumeId))) return;
        const name = `backup-${backup}`.toLowerCase();
        if ((await storage.listSnapshots(volumeId)).some((s) => s.name === name)) await storage.deleteSnapshot(volumeId, name);
      },
      ctx.signal,
    ).catch((e) => ctx.warn(`the snapshot of backup ${id} on volume ${volumeId} stays: ${(e as Error).message}`));
  },
};
