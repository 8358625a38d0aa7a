/**
 * baremetal:backup:BackupPolicy — backs up volumes of the caller's project on a schedule and
 * prunes by retention (../../backup/retention.ts).
 *
 * There is no daemon: a backup is taken when `up` runs and one is due (`pendingChanges` shows a
 * `backup` change once `nextBackupDue` has passed). Run `pulumi up` from a scheduled CI job (cron)
 * at least as often as the schedule; a late run takes one backup, not one per missed slot. The
 * first `up` takes the first backups. Each backup is incremental on the volume's latest backup in
 * the target. After a round of backups, the policy deletes those of ITS OWN backups (manifests
 * tagged with its id) that retention does not keep, then the chunks nothing uses any more.
 *
 * `refresh` reads the target: backups deleted behind the policy's back disappear from `backups`.
 * Destroying the policy keeps its backups unless `deleteBackupsOnDestroy`.
 */
import { authorize } from "../../core/auth";
import { BaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { OperationContext, Props, ProviderContext, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import { deleteBackups, listManifests, type Manifest } from "../../backup/engine";
import { nextDue, parseSchedule, type Retention, selectKept } from "../../backup/retention";
import { keyManagerName, projectOf } from "../keys/encryption-key";
import { backendName, requireOwnVolume } from "../storage/volume";
import { backupVolume, prefixOf, targetName, withTarget } from "./backup";

const volumeFields = {
  volumeId: { type: "string", required: true, minLength: 1, description: "A Volume (its `volumeId`) of the project." },
  backend: { type: "string", description: "Its storage backend (default: the only one)." },
  keyId: { type: "string", description: "For a volume not encrypted at the source: the EncryptionKey wrapping its backups' data keys." },
  keyManager: { type: "string", description: "The key manager holding keyId (default: the only one)." },
} as const satisfies Fields;

const inputs = {
  schedule: {
    type: "string",
    required: true,
    description: "When backups fall due: `hourly`, `daily`, `nightly` (02:00 UTC), `weekly` (Sundays 02:00 UTC), `daily@HH:MM` (UTC) or an interval such as `12h`. Run `pulumi up` on a timer (a CI schedule) at least that often.",
    validate: (v: string) => {
      try {
        parseSchedule(v);
        return undefined;
      } catch (e) {
        return (e as Error).message;
      }
    },
  },
  retention: {
    type: "object",
    typeToken: "baremetal:backup:Retention",
    description: "Which of the policy's backups to keep (default 7 daily + 4 weekly); the newest is always kept.",
    properties: {
      last: { type: "integer", minimum: 0, description: "The newest N backups." },
      daily: { type: "integer", minimum: 0, description: "The newest backup of each of the newest N days with backups (UTC)." },
      weekly: { type: "integer", minimum: 0, description: "... of each of the newest N ISO weeks." },
      monthly: { type: "integer", minimum: 0, description: "... of each of the newest N months." },
    },
  },
  volumes: {
    type: "array",
    required: true,
    items: { type: "object", typeToken: "baremetal:backup:BackedUpVolume", description: "A volume the policy backs up.", properties: volumeFields },
    description: "The volumes to back up.",
  },
  target: { type: "string", description: "Which of the provider's `backupTargets` (default: the only one)." },
  backupNow: { type: "string", description: "Changing this value takes a backup at the next `up`, whatever the schedule." },
  deleteBackupsOnDestroy: { type: "boolean", default: false, description: "Delete the policy's backups when it is destroyed (default: keep them)." },
} as const satisfies Fields;

const backupEntry = {
  backupId: { type: "string", required: true, description: "`<volumeId>/<id>` (restore with a Volume's sourceBackup)." },
  volumeId: { type: "string", required: true, description: "The volume." },
  createdAt: { type: "string", required: true, description: "When (ISO 8601)." },
  sizeBytes: { type: "number", required: true, description: "The volume's size." },
  bytesStored: { type: "number", required: true, description: "Bytes it added to the target." },
  checksum: { type: "string", required: true, description: "`sha256:<hex>` of its cell map." },
  encryption: { type: "string", required: true, description: "`source` or `envelope`." },
} as const satisfies Fields;

const outputs = {
  backups: {
    type: "array",
    required: true,
    items: { type: "object", typeToken: "baremetal:backup:PolicyBackup", description: "One kept backup.", properties: backupEntry },
    description: "The policy's backups kept by retention, oldest first.",
  },
  lastBackup: { type: "string", description: "When the last round of backups was taken." },
  nextBackupDue: { type: "string", required: true, description: "When the next round falls due." },
  lastPruned: { type: "array", items: { type: "string", description: "A backup id." }, description: "The backups the last round deleted by retention." },
} as const satisfies Fields;

interface VolumeRef {
  volumeId: string;
  backend?: string;
  keyId?: string;
  keyManager?: string;
}

const DEFAULT_RETENTION: Retention = { daily: 7, weekly: 4 };

function entry(m: Manifest): Props {
  return {
    backupId: `${m.source.id}/${m.id}`,
    volumeId: m.source.id,
    createdAt: m.createdAt,
    sizeBytes: m.sizeBytes,
    bytesStored: m.stats.bytesStored,
    checksum: `sha256:${m.digest}`,
    encryption: m.encryption.mode,
  };
}

/** The policy's own backups of each volume, from the target. */
async function ownBackups(ctx: ProviderContext, target: string, policyId: string, volumes: VolumeRef[], signal?: AbortSignal): Promise<Manifest[]> {
  return withTarget(
    ctx,
    target,
    async (t) => {
      const out: Manifest[] = [];
      for (const v of volumes) out.push(...(await listManifests(t, prefixOf(v.volumeId), signal)).filter((m) => m.takenBy === policyId));
      return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
    },
    signal,
  );
}

/** One round: a backup of each volume, then retention. Returns the new outputs. */
async function round(ctx: OperationContext, policyId: string, props: Props): Promise<Props> {
  const target = targetName(ctx, props);
  const volumes = props.volumes as VolumeRef[];
  for (const [i, v] of volumes.entries()) {
    requireOwnVolume(ctx, v.volumeId, `volumes[${i}].volumeId`);
    await backupVolume(ctx, {
      volumeId: v.volumeId,
      backend: backendName(ctx, { ...v }, `volumes[${i}].backend`),
      target,
      keyId: v.keyId,
      keyManager: v.keyManager,
      incremental: true,
      property: `volumes[${i}].`,
      takenBy: policyId,
    });
  }
  const lastBackup = new Date().toISOString();
  const rules = (props.retention as Retention | undefined) ?? DEFAULT_RETENTION;
  const pruned: string[] = [];
  const all = await ownBackups(ctx, target, policyId, volumes, ctx.signal);
  await withTarget(
    ctx,
    target,
    async (t) => {
      for (const v of volumes) {
        const mine = all.filter((m) => m.source.id === v.volumeId);
        const keep = selectKept(mine, rules);
        const doomed = mine.filter((m) => !keep.has(m.id)).map((m) => m.id);
        if (!doomed.length) continue;
        const r = await deleteBackups(t, prefixOf(v.volumeId), doomed, ctx.signal);
        pruned.push(...doomed.map((id) => `${v.volumeId}/${id}`));
        ctx.progress(`volume ${v.volumeId}: retention deleted ${doomed.length} backup(s) and ${r.chunksDeleted} chunk(s) nothing else used`);
      }
    },
    ctx.signal,
  );
  const kept = all.filter((m) => !pruned.includes(`${m.source.id}/${m.id}`));
  const schedule = parseSchedule(props.schedule);
  return { ...props, backups: kept.map(entry), lastBackup, nextBackupDue: nextDue(schedule, new Date(lastBackup)).toISOString(), lastPruned: pruned };
}

const isDue = (state: Props, now = Date.now()) => typeof state.nextBackupDue === "string" && Date.parse(state.nextBackupDue) <= now;

export const backupPolicyResource: ResourceDefinition = {
  token: "baremetal:backup:BackupPolicy",
  description:
    "Backs up volumes of the caller's project on a schedule (when `up` runs and a backup is due: run it from a scheduled CI job) and prunes the policy's backups by retention (7 daily + 4 weekly by default).",
  inputs,
  outputs,
  defaultTimeoutSeconds: 86400,

  check(props, ctx) {
    const failures: { property: string; reason: string }[] = [];
    try {
      if (!isUnknown(props.target)) targetName(ctx, props);
    } catch (e) {
      if (e instanceof BaremetalError && e.property) failures.push({ property: e.property, reason: e.message });
      else throw e;
    }
    if (Array.isArray(props.volumes)) {
      const seen = new Set<string>();
      (props.volumes as Props[]).forEach((v, i) => {
        if (isUnknown(v)) return;
        try {
          if (typeof v.volumeId === "string") {
            requireOwnVolume(ctx, v.volumeId, `volumes[${i}].volumeId`);
            if (seen.has(v.volumeId)) failures.push({ property: `volumes[${i}].volumeId`, reason: `volume ${v.volumeId} is listed twice` });
            seen.add(v.volumeId);
          }
          if (!isUnknown(v.backend)) backendName(ctx, v, `volumes[${i}].backend`);
          if (v.keyId !== undefined && !isUnknown(v.keyManager)) keyManagerName(ctx, v, `volumes[${i}].keyManager`);
        } catch (e) {
          if (e instanceof BaremetalError && e.property) failures.push({ property: e.property, reason: e.message });
          else throw e;
        }
      });
    }
    return failures;
  },

  authorize(ctx) {
    authorize(ctx.policy, ctx.caller, "baremetal:volume:backup", { "volume.owner": projectOf(ctx) });
  },

  pendingChanges(state) {
    return isDue(state) ? [{ path: "backup", reason: `a backup fell due on ${state.nextBackupDue}` }] : [];
  },

  async create(ctx, props) {
    const id = `backup-policy-${projectOf(ctx)}-${ctx.name}`;
    return { id, outputs: await round(ctx, id, props) };
  },

  async read(ctx, id, stored, state) {
    if (!state) return undefined;
    const declared = stored ?? {};
    const volumes = (declared.volumes as VolumeRef[] | undefined) ?? [];
    const kept = await ownBackups(ctx, targetName(ctx, declared), id, volumes, ctx.signal);
    return { id, inputs: declared, outputs: { ...state, backups: kept.map(entry) } };
  },

  async update(ctx, id, olds, news, oldState) {
    const forced = (news.backupNow ?? null) !== (olds.backupNow ?? null) && news.backupNow !== undefined;
    const volumesChanged = JSON.stringify((olds.volumes as VolumeRef[]).map((v) => v.volumeId).sort()) !== JSON.stringify((news.volumes as VolumeRef[]).map((v) => v.volumeId).sort());
    if (isDue(oldState) || forced || volumesChanged) return round(ctx, id, news);
    const last = typeof oldState.lastBackup === "string" ? new Date(oldState.lastBackup) : undefined;
    return { ...oldState, ...news, nextBackupDue: nextDue(parseSchedule(news.schedule), last).toISOString() };
  },

  async delete(ctx, id, props) {
    if (!props.deleteBackupsOnDestroy) return;
    const target = targetName(ctx, props);
    const volumes = props.volumes as VolumeRef[];
    const mine = await ownBackups(ctx, target, id, volumes, ctx.signal);
    await withTarget(
      ctx,
      target,
      async (t) => {
        for (const v of volumes) {
          const ids = mine.filter((m) => m.source.id === v.volumeId).map((m) => m.id);
          if (ids.length) await deleteBackups(t, prefixOf(v.volumeId), ids, ctx.signal);
        }
      },
      ctx.signal,
    );
  },
};
