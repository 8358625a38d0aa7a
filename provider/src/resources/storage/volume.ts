/**
 * baremetal:storage:Volume — a block volume of the caller's project on a storage backend, optionally
 * a copy-on-write clone of a golden image's snapshot, optionally encrypted AT THE SOURCE: the
 * provider writes a LUKS2 header (aes-xts-plain64, a random 512-bit volume key) whose keyslot is
 * unlocked by a key from the project's key manager (an EncryptionKey), so the backend only ever
 * holds ciphertext and the node unlocks the volume with the key delivered to it. On a file
 * backend cryptsetup works on the volume's file; on Ceph on a local copy of the header that is
 * written back to the RBD image (withLuksHeader, storage-ceph/header.ts). A clone of a plaintext
 * golden image is not encrypted (refused, the clone removed): its data would stay plaintext.
 *
 * Ownership: the backend name is `<project>--<name>`; a caller of another project can neither
 * read, resize, attach nor delete it (an `auth` error naming the volume), and can only encrypt
 * with keys its own project may read (the key manager refuses the others).
 */
import { checkFailureOf } from "../../core/validate";
import { authorize } from "../../core/auth";
import { pickNamed } from "../../core/named";
import { BaremetalError, describeError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { StorageBackendSettings } from "../../core/storage-config";
import { type OperationContext, PartialCreateError, type Props, type ProviderContext, type ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import type { StorageDriver, VolumeInfo } from "../../drivers/kinds/storage";
import { Luks } from "../../drivers/luks";
import { storageDriverFor } from "../../drivers/storages";
import { openBackup, parseBackupId } from "../backup/backup";
import { keyManagerName, projectOf, withKeyManager } from "../keys/encryption-key";

const GIB = 1024 ** 3;

const encryptionFields = {
  keyId: { type: "string", required: true, minLength: 1, description: "The EncryptionKey (its `keyId`) whose material unlocks the volume's LUKS2 keyslot." },
  keyManager: { type: "string", description: "The key manager holding it (default: the only one)." },
  cipher: { type: "string", default: "aes-xts-plain64", description: "The LUKS2 data cipher." },
  keySize: { type: "integer", default: 512, description: "Bits of the volume key (512: AES-256 in XTS mode).", validate: (v: number) => (v === 256 || v === 512 ? undefined : `keySize must be 256 or 512, got ${v}`) },
  unlockTimeMs: {
    type: "integer",
    minimum: 100,
    maximum: 60000,
    description: "Time the key derivation of a keyslot should take (cryptsetup --iter-time; default cryptsetup's, 2000).",
  },
} as const satisfies Fields;

const inputs = {
  backend: { type: "string", minLength: 1, replaceOnChange: true, description: "Which of the provider's `storageBackends` (default: the only one)." },
  name: {
    type: "string",
    pattern: "^[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?$",
    replaceOnChange: true,
    description: "The volume's name in the project (default: the resource name, lower-cased).",
    hint: "Use up to 32 lowercase letters, digits, '.' and '-'",
  },
  sizeGib: { type: "integer", required: true, minimum: 1, maximum: 1048576, description: "Size in GiB; growing it resizes the volume in place (shrinking is refused)." },
  sourceSnapshot: { type: "string", replaceOnChange: true, description: "A golden image to clone, as `pool/volume@snapshot` (copy-on-write where the backend can)." },
  sourceBackup: {
    type: "object",
    typeToken: "baremetal:storage:VolumeSourceBackup",
    replaceOnChange: true,
    description: "Restore a backup of one of the project's volumes into this new one (verified cell by cell against the backup's checksums).",
    properties: {
      backupId: { type: "string", required: true, minLength: 1, description: "A Backup's `backupId` (`<volumeId>/<id>`)." },
      target: { type: "string", description: "The backup target holding it (default: the only one)." },
      keyId: { type: "string", description: "The key its data key is wrapped with (backups of volumes not encrypted at the source)." },
      keyManager: { type: "string", description: "The key manager holding keyId (default: the only one)." },
    },
  },
  bootable: {
    type: "boolean",
    default: false,
    description:
      "The volume holds a bootable image (a partition table a machine's firmware boots over iSCSI); only bootable volumes can be attached with `boot: true`. A flag recorded in state, changed in place; a bootable volume cannot be encrypted at the source (firmware cannot unlock LUKS).",
  },
  encryption: {
    type: "object",
    typeToken: "baremetal:storage:VolumeEncryption",
    replaceOnChange: true,
    description: "Encrypt at the source with LUKS2, keyed by an EncryptionKey of the project.",
    properties: encryptionFields,
  },
} as const satisfies Fields;

const outputs = {
  volumeId: { type: "string", required: true, stable: true, description: "The volume's backend name (`<project>--<name>`)." },
  project: { type: "string", required: true, stable: true, description: "The project that owns the volume." },
  sizeBytes: { type: "number", required: true, description: "Its size, as the backend reports it." },
  parent: { type: "string", description: "The snapshot it is a clone of." },
  luksUuid: { type: "string", description: "The LUKS2 header's UUID (encrypted volumes)." },
  keyslots: { type: "integer", description: "LUKS2 keyslots in use (1 normally; 2 in the middle of a key rotation)." },
} as const satisfies Fields;

export function backendName(ctx: ProviderContext, props: Props, property = "backend"): string {
  return pickNamed(ctx.config.storageBackends, props.backend as string | undefined, property, ["storage backends", "storage backend"], "storageBackends");
}

export async function withStorage<T>(ctx: ProviderContext, name: string, use: (driver: StorageDriver, settings: StorageBackendSettings) => Promise<T>, signal?: AbortSignal): Promise<T> {
  const settings = ctx.config.storageBackends[name];
  const key = ctx.config.storageCredentials[name]?.key;
  const driver = storageDriverFor(settings, key, `storageBackends.${name}.driver`, signal);
  try {
    return await use(driver, settings);
  } finally {
    await driver.close().catch(() => undefined);
  }
}

/** The project a volume id belongs to; refuses (auth) when it is not the caller's. */
export function requireOwnVolume(ctx: ProviderContext, volumeId: string, property = "volumeId"): string {
  const owner = volumeId.includes("--") ? volumeId.slice(0, volumeId.indexOf("--")) : undefined;
  const mine = projectOf(ctx);
  if (owner !== mine && !ctx.caller.operator) {
    throw new BaremetalError("auth", `volume ${volumeId} belongs to project ${owner ?? "(none)"}, not to ${mine}`, { property, httpStatus: 403 });
  }
  return owner ?? mine;
}

const luks = new Luks();

/**
 * Runs `fn` on a file cryptsetup can work on for the volume's LUKS header, with `commit` to make
 * the changes made to it the volume's: the volume itself where the backend gives a local file
 * (commit does nothing), else a header session (RBD: storage-ceph/header.ts; uncommitted changes
 * are dropped).
 */
export async function withLuksHeader<T>(storage: StorageDriver, id: string, fn: (file: string, commit: (o?: { headersFirst?: boolean }) => Promise<void>) => Promise<T>): Promise<T> {
  if (!storage.luksHeader) return fn(await storage.path(id), async () => undefined);
  const session = await storage.luksHeader(id);
  try {
    return await fn(session.file, (o) => session.commit(o));
  } finally {
    await session.close();
  }
}

function outputsOf(props: Props, project: string, v: VolumeInfo, luksInfo?: { uuid: string; keyslots: number }): Props {
  return {
    ...props,
    volumeId: v.name,
    project,
    sizeBytes: v.sizeBytes,
    ...(v.parent ? { parent: v.parent } : {}),
    ...(luksInfo ? { luksUuid: luksInfo.uuid, keyslots: luksInfo.keyslots } : {}),
  };
}

async function keyMaterial(ctx: ProviderContext, enc: Props, signal?: AbortSignal): Promise<Buffer> {
  const km = keyManagerName(ctx, enc, "encryption.keyManager");
  return withKeyManager(ctx, km, (d) => d.getKeyMaterial(enc.keyId as string), signal, { keyProperty: "encryption.keyId" });
}

/**
 * Writes the LUKS2 header at the source (unless the volume already has one), and checks that
 * `key` opens it. Refuses a clone of a plaintext image (`plainClone` set: the caller removes what
 * it made). Used by create, and by update to finish a create that stopped before encrypting.
 */
async function encryptAtSource(
  ctx: OperationContext,
  storage: StorageDriver,
  id: string,
  props: Props,
  key: Buffer,
  flags: { plainClone?: boolean } = {},
): Promise<{ uuid: string; keyslots: number }> {
  const enc = props.encryption as Props;
  const dump = await withLuksHeader(storage, id, async (file, commit) => {
    if (await luks.isLuks(file)) return luks.dump(file);
    if (props.sourceSnapshot) {
      flags.plainClone = true;
      throw validationError(
        "sourceSnapshot",
        `${props.sourceSnapshot} holds no LUKS2 header: a clone of a plaintext image cannot be encrypted at the source (its data would stay plaintext on the backend and read as noise through LUKS); clone an encrypted golden image keyed by this key, or make an empty encrypted volume and write the image through it`,
      );
    }
    const d = await luks.format(file, key, {
      cipher: enc.cipher as string,
      keySize: enc.keySize as 256 | 512,
      ...(enc.unlockTimeMs !== undefined ? { iterTimeMs: enc.unlockTimeMs as number } : {}),
      label: id.slice(0, 47),
    });
    await commit();
    return d;
  });
  if (!(await withLuksHeader(storage, id, (file) => luks.testKey(file, key)))) {
    throw new BaremetalError("conflict", `volume ${id} holds a LUKS header the key ${enc.keyId} does not open`, { property: "encryption.keyId" });
  }
  ctx.progress(`volume ${id}: LUKS2 ${dump.cipher} (${dump.keyBits}-bit volume key) written at the source`);
  return { uuid: dump.uuid, keyslots: dump.keyslots.length };
}

export const volumeResource: ResourceDefinition = {
  token: "baremetal:storage:Volume",
  description:
    "A block volume of the caller's project, optionally cloned from a golden image's snapshot and encrypted at the source with LUKS2 keyed by an EncryptionKey: the storage backend only ever holds ciphertext.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 600,

  check(props, ctx) {
    try {
      const enc = props.encryption as Props | undefined;
      if (!isUnknown(props.backend)) backendName(ctx, props);
      if (props.sourceSnapshot !== undefined && props.sourceBackup !== undefined) {
        return [{ property: "sourceBackup", reason: "a volume is made from a snapshot or from a backup, not both: drop sourceSnapshot or sourceBackup" }];
      }
      if (props.bootable === true && enc !== undefined) {
        return [{ property: "bootable", reason: "a volume encrypted at the source cannot be booted over iSCSI: the node's firmware sees only the LUKS2 header and cannot unlock it; drop encryption or bootable" }];
      }
      const sb = props.sourceBackup as Props | undefined;
      if (sb && !isUnknown(sb) && typeof sb.backupId === "string") requireOwnVolume(ctx, parseBackupId(sb.backupId, "sourceBackup.backupId").volumeId, "sourceBackup.backupId");
      if (enc && !isUnknown(enc) && !isUnknown(enc.keyManager)) keyManagerName(ctx, enc, "encryption.keyManager");
    } catch (e) {
      if (e instanceof BaremetalError && e.property) return [checkFailureOf(e)];
      throw e;
    }
    return [];
  },

  authorize(ctx, change) {
    const op = change === "create" ? "baremetal:volume:create" : change === "delete" ? "baremetal:volume:delete" : "baremetal:volume:update";
    authorize(ctx.policy, ctx.caller, op, { "volume.owner": projectOf(ctx) });
  },

  async create(ctx: OperationContext, props) {
    const backend = backendName(ctx, props);
    const project = projectOf(ctx);
    const id = `${project}--${((props.name as string | undefined) ?? ctx.name).toLowerCase().replace(/[^a-z0-9.-]/g, "-")}`;
    const enc = props.encryption as Props | undefined;
    // The key first: a key this project may not read fails the create before anything is made.
    const key = enc ? await keyMaterial(ctx, enc, ctx.signal) : undefined;
    try {
      return await withStorage(
        ctx,
        backend,
        async (storage) => {
          const sizeBytes = (props.sizeGib as number) * GIB;
          const existing = await storage.getVolume(id);
          const restore = props.sourceBackup ? await openBackup(ctx, props.sourceBackup as Props, sizeBytes, !!enc) : undefined;
          const v =
            existing ??
            (props.sourceSnapshot
              ? await storage.cloneVolume({ name: id, from: props.sourceSnapshot as string, sizeBytes })
              : await storage.createVolume({ name: id, sizeBytes }));
          ctx.progress(`volume ${v.pool}/${v.name}: ${Math.round(v.sizeBytes / GIB)} GiB${v.parent ? ` cloned from ${v.parent}` : ""}`);
          if (restore) {
            try {
              await restore(storage, id);
            } catch (e) {
              // All or nothing: a volume half restored is no use to anyone.
              await storage.deleteVolume(id).catch(() => undefined);
              throw e;
            }
          }
          if (!key) return { id, outputs: outputsOf(props, project, v) };

          const flags: { plainClone?: boolean } = {};
          try {
            return { id, outputs: outputsOf(props, project, v, await encryptAtSource(ctx, storage, id, props, key, flags)) };
          } catch (e) {
            if (flags.plainClone && !existing) {
              // Nothing of ours is in it yet: the clone goes, and the create fails cleanly.
              await storage.deleteVolume(id);
              throw e;
            }
            throw new PartialCreateError(id, outputsOf(props, project, v), [`volume ${id} was made but not encrypted: ${describeError(e)}`]);
          }
        },
        ctx.signal,
      );
    } finally {
      key?.fill(0);
    }
  },

  async read(ctx, id, stored, state) {
    const project = requireOwnVolume(ctx, id, "id");
    const declared: Props = stored ?? {};
    const backend = backendName(ctx, declared);
    return withStorage(
      ctx,
      backend,
      async (storage) => {
        const v = await storage.getVolume(id);
        if (!v) return undefined;
        const inputs: Props = { ...declared, sizeGib: Math.ceil(v.sizeBytes / GIB) };
        let luksInfo: { uuid: string; keyslots: number } | undefined;
        if (declared.encryption || state?.luksUuid || !stored) {
          luksInfo = await withLuksHeader(storage, id, async (file) => {
            if (!(await luks.isLuks(file))) return undefined;
            const d = await luks.dump(file);
            return { uuid: d.uuid, keyslots: d.keyslots.length };
          });
          if (!luksInfo) ctx.warn(`volume ${id} is declared encrypted but holds no LUKS header`);
        }
        return { id, inputs, outputs: { ...(state ?? {}), ...outputsOf(inputs, project, v, luksInfo) } };
      },
      ctx.signal,
    );
  },

  async update(ctx, id, olds, news, oldState) {
    requireOwnVolume(ctx, id);
    if ((news.sizeGib as number) < (olds.sizeGib as number)) {
      throw validationError("sizeGib", `volumes only grow: ${olds.sizeGib} GiB cannot become ${news.sizeGib} GiB; make a new volume and copy the data`);
    }
    const backend = backendName(ctx, news);
    // A create that stopped before encrypting (a partial create) is retried as an update: finish it.
    const enc = news.encryption as Props | undefined;
    const key = enc && oldState.luksUuid === undefined ? await keyMaterial(ctx, enc, ctx.signal) : undefined;
    try {
      return await withStorage(
        ctx,
        backend,
        async (storage) => {
          const v = (news.sizeGib as number) !== (olds.sizeGib as number) ? await storage.resizeVolume(id, (news.sizeGib as number) * GIB) : await storage.getVolume(id);
          if (!v) throw new BaremetalError("not-found", `volume ${id} is gone from the backend; run \`pulumi refresh\``);
          const luksInfo = key ? await encryptAtSource(ctx, storage, id, news, key) : undefined;
          return { ...oldState, ...news, sizeBytes: v.sizeBytes, ...(luksInfo ? { luksUuid: luksInfo.uuid, keyslots: luksInfo.keyslots } : {}) };
        },
        ctx.signal,
      );
    } finally {
      key?.fill(0);
    }
  },

  async delete(ctx, id, props) {
    requireOwnVolume(ctx, id);
    await withStorage(ctx, backendName(ctx, props), (storage) => storage.deleteVolume(id), ctx.signal);
  },
};
