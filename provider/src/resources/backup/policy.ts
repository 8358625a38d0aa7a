/**
 * baremetal:backup:BackupPolicy — backs up volumes of the caller's project, and the disks of nodes
 * it holds, on a schedule and prunes by retention (../../backup/retention.ts).
 *
 * There is no daemon: a backup is taken when `up` runs and one is due (`pendingChanges` shows a
 * `backup` change once `nextBackupDue` has passed). Run `pulumi up` from a scheduled CI job (cron)
 * at least as often as the schedule; a late run takes one backup, not one per missed slot. The
 * first `up` takes the first backups. Each backup is incremental on the volume's latest backup in
 * the target. After a round of backups, the policy deletes those of ITS OWN backups (manifests
 * tagged with its id) that retention does not keep, then the chunks nothing uses any more.
 * Retention counts each source (volume or node) on its own.
 *
 * A node's disk is backed up like a Backup with `nodeId` (./backup.ts backupNode): the node is
 * booted once into the backup image, under its lock, while the caller's allocation holds it.
 *
 * `refresh` reads the target: backups deleted behind the policy's back disappear from `backups`.
 * Destroying the policy keeps its backups unless `deleteBackupsOnDestroy`.
 */
import { type CheckFailure, checkFailureOf } from "../../core/validate";
import { authorize } from "../../core/auth";
import { BaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { OperationContext, Props, ProviderContext, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import { deleteBackups, listManifests, type Manifest } from "../../backup/engine";
import { nextDue, parseSchedule, type Retention, selectKept } from "../../backup/retention";
import { keyManagerName, projectOf } from "../keys/encryption-key";
import { backendName, requireOwnVolume } from "../storage/volume";
import { backupNode, backupVolume, nodePrefixOf, prefixOf, targetName, withTarget } from "./backup";

const volumeFields = {
  volumeId: { type: "string", required: true, minLength: 1, description: "A Volume (its `volumeId`) of the project." },
  backend: { type: "string", description: "Its storage backend (default: the only one)." },
  keyId: { type: "string", description: "The EncryptionKey wrapping its backups' keys: needed for a volume not encrypted at the source (data keys); optional for a LUKS2 volume (keyed chunk ids, faster; see Backup.keyId)." },
  keyManager: { type: "string", description: "The key manager holding keyId (default: the only one)." },
} as const satisfies Fields;

const nodeFields = {
  nodeId: { type: "string", required: true, minLength: 1, description: "A Node (its id) held by an allocation of the project (for the operator: one no allocation holds)." },
  keyId: { type: "string", required: true, minLength: 1, description: "The EncryptionKey wrapping the data keys of the disk's backups." },
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
    items: { type: "object", typeToken: "baremetal:backup:BackedUpVolume", description: "A volume the policy backs up.", properties: volumeFields },
    description: "The volumes to back up (give volumes, nodes or both).",
  },
  nodes: {
    type: "array",
    items: { type: "object", typeToken: "baremetal:backup:BackedUpNode", description: "A node whose own disk the policy backs up.", properties: nodeFields },
    description: "Nodes whose own disks to back up: each is booted once into the backup image per round (see Backup's nodeId), so schedule it when the machines may reboot.",
  },
  target: { type: "string", description: "Which of the provider's `backupTargets` (default: the only one)." },
  backupNow: { type: "string", description: "Changing this value takes a backup at the next `up`, whatever the schedule." },
  deleteBackupsOnDestroy: { type: "boolean", default: false, description: "Delete the policy's backups when it is destroyed (default: keep them)." },
} as const satisfies Fields;

const backupEntry = {
  backupId: { type: "string", required: true, description: "`<volumeId>/<id>`, or `<project>/nodes/<nodeKey>/<id>` for a node's disk (restore with a Volume's sourceBackup)." },
  volumeId: { type: "string", description: "The volume (for a volume's backup)." },
  nodeId: { type: "string", description: "The node (for a backup of a node's disk)." },
  createdAt: { type: "string", required: true, description: "When (ISO 8601)." },
  sizeBytes: { type: "number", required: true, description: "The volume's (or node disk's) size." },
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
interface NodeRef {
  nodeId: string;
  keyId: string;
  keyManager?: string;
}

/** What a policy backs up: a volume or a node's disk, where its backups live, how its ids start. */
interface Source {
  kind: "volume" | "node";
  id: string;
  prefix: string;
  /** backupId = `<base>/<manifest id>` */
  base: string;
}

function sourcesOf(ctx: ProviderContext, props: Props): Source[] {
  const volumes = ((props.volumes as VolumeRef[] | undefined) ?? []).map((v): Source => ({ kind: "volume", id: v.volumeId, prefix: prefixOf(v.volumeId), base: v.volumeId }));
  const nodes = ((props.nodes as NodeRef[] | undefined) ?? []).map((n): Source => {
    const prefix = nodePrefixOf(projectOf(ctx), n.nodeId);
    return { kind: "node", id: n.nodeId, prefix, base: prefix.slice(0, -1) };
  });
  return [...volumes, ...nodes];
}

const DEFAULT_RETENTION: Retention = { daily: 7, weekly: 4 };

function entry(m: Manifest, src: Source): Props {
  return {
    backupId: `${src.base}/${m.id}`,
    ...(src.kind === "volume" ? { volumeId: src.id } : { nodeId: src.id }),
    createdAt: m.createdAt,
    sizeBytes: m.sizeBytes,
    bytesStored: m.stats.bytesStored,
    checksum: `sha256:${m.digest}`,
    encryption: m.encryption.mode,
  };
}

interface Owned {
  m: Manifest;
  src: Source;
}

/** The policy's own backups of each source, from the target, oldest first. */
async function ownBackups(ctx: ProviderContext, target: string, policyId: string, sources: Source[], signal?: AbortSignal): Promise<Owned[]> {
  return withTarget(
    ctx,
    target,
    async (t) => {
      const out: Owned[] = [];
      for (const src of sources) out.push(...(await listManifests(t, src.prefix, signal)).filter((m) => m.takenBy === policyId).map((m) => ({ m, src })));
      return out.sort((a, b) => a.m.createdAt.localeCompare(b.m.createdAt) || a.m.id.localeCompare(b.m.id));
    },
    signal,
  );
}

/** One round: a backup of each volume and node, then retention. Returns the new outputs. */
async function round(ctx: OperationContext, policyId: string, props: Props): Promise<Props> {
  const target = targetName(ctx, props);
  const volumes = (props.volumes as VolumeRef[] | undefined) ?? [];
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
  for (const [i, n] of ((props.nodes as NodeRef[] | undefined) ?? []).entries()) {
    await backupNode(ctx, { nodeId: n.nodeId, target, keyId: n.keyId, keyManager: n.keyManager, incremental: true, property: `nodes[${i}].`, takenBy: policyId });
  }
  const lastBackup = new Date().toISOString();
  const rules = (props.retention as Retention | undefined) ?? DEFAULT_RETENTION;
  const sources = sourcesOf(ctx, props);
  const all = await ownBackups(ctx, target, policyId, sources, ctx.signal);
  const pruned = new Set<string>();
  await withTarget(
    ctx,
    target,
    async (t) => {
      for (const src of sources) {
        const mine = all.filter((o) => o.src === src).map((o) => o.m);
        const keep = selectKept(mine, rules);
        const doomed = mine.filter((m) => !keep.has(m.id)).map((m) => m.id);
        if (!doomed.length) continue;
        const r = await deleteBackups(t, src.prefix, doomed, ctx.signal);
        for (const id of doomed) pruned.add(`${src.base}/${id}`);
        ctx.progress(`${src.kind} ${src.id}: retention deleted ${doomed.length} backup(s) and ${r.chunksDeleted} chunk(s) nothing else used`);
      }
    },
    ctx.signal,
  );
  const kept = all.map((o) => entry(o.m, o.src)).filter((e) => !pruned.has(e.backupId as string));
  const schedule = parseSchedule(props.schedule);
  return { ...props, backups: kept, lastBackup, nextBackupDue: nextDue(schedule, new Date(lastBackup)).toISOString(), lastPruned: [...pruned] };
}

const isDue = (state: Props, now = Date.now()) => typeof state.nextBackupDue === "string" && Date.parse(state.nextBackupDue) <= now;

export const backupPolicyResource: ResourceDefinition = {
  token: "baremetal:backup:BackupPolicy",
  description:
    "Backs up volumes of the caller's project and the disks of nodes it holds on a schedule (when `up` runs and a backup is due: run it from a scheduled CI job) and prunes the policy's backups by retention (7 daily + 4 weekly by default).",
  inputs,
  outputs,
  defaultTimeoutSeconds: 86400,

  check(props, ctx) {
    const failures: CheckFailure[] = [];
    /** Runs a check that throws; an error naming its property becomes a failure. */
    const attribute = (fn: () => void) => {
      try {
        fn();
      } catch (e) {
        if (e instanceof BaremetalError && e.property) failures.push(checkFailureOf(e));
        else throw e;
      }
    };
    if (!isUnknown(props.target)) attribute(() => targetName(ctx, props));
    const volumes = isUnknown(props.volumes) ? undefined : (props.volumes as Props[] | undefined);
    const nodes = isUnknown(props.nodes) ? undefined : (props.nodes as Props[] | undefined);
    if (volumes !== undefined && nodes !== undefined && !volumes.length && !nodes.length) {
      failures.push({ property: "volumes", reason: "the policy backs nothing up: list volumes, nodes or both" });
    } else if (props.volumes === undefined && props.nodes === undefined) {
      failures.push({ property: "volumes", reason: "the policy backs nothing up: give volumes (Volumes' volumeId) or nodes (Nodes' id)" });
    }
    if (Array.isArray(volumes)) {
      const seen = new Set<string>();
      volumes.forEach((v, i) => {
        if (isUnknown(v)) return;
        attribute(() => {
          if (typeof v.volumeId === "string") {
            requireOwnVolume(ctx, v.volumeId, `volumes[${i}].volumeId`);
            if (seen.has(v.volumeId)) failures.push({ property: `volumes[${i}].volumeId`, reason: `volume ${v.volumeId} is listed twice` });
            seen.add(v.volumeId);
          }
          if (!isUnknown(v.backend)) backendName(ctx, v, `volumes[${i}].backend`);
          if (v.keyId !== undefined && !isUnknown(v.keyManager)) keyManagerName(ctx, v, `volumes[${i}].keyManager`);
        });
      });
    }
    if (Array.isArray(nodes)) {
      const seen = new Set<string>();
      nodes.forEach((n, i) => {
        if (isUnknown(n)) return;
        attribute(() => {
          if (typeof n.nodeId === "string") {
            if (seen.has(n.nodeId)) failures.push({ property: `nodes[${i}].nodeId`, reason: `node ${n.nodeId} is listed twice` });
            seen.add(n.nodeId);
          }
          if (!isUnknown(n.keyManager)) keyManagerName(ctx, n, `nodes[${i}].keyManager`);
        });
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
    const kept = await ownBackups(ctx, targetName(ctx, declared), id, sourcesOf(ctx, declared), ctx.signal);
    return { id, inputs: declared, outputs: { ...state, backups: kept.map((o) => entry(o.m, o.src)) } };
  },

  async update(ctx, id, olds, news, oldState) {
    const forced = (news.backupNow ?? null) !== (olds.backupNow ?? null) && news.backupNow !== undefined;
    const ids = (p: Props) => JSON.stringify(sourcesOf(ctx, p).map((s) => `${s.kind}:${s.id}`).sort());
    if (isDue(oldState) || forced || ids(olds) !== ids(news)) return round(ctx, id, news);
    const last = typeof oldState.lastBackup === "string" ? new Date(oldState.lastBackup) : undefined;
    return { ...oldState, ...news, nextBackupDue: nextDue(parseSchedule(news.schedule), last).toISOString() };
  },

  async delete(ctx, id, props) {
    if (!props.deleteBackupsOnDestroy) return;
    const target = targetName(ctx, props);
    const sources = sourcesOf(ctx, props);
    const mine = await ownBackups(ctx, target, id, sources, ctx.signal);
    await withTarget(
      ctx,
      target,
      async (t) => {
        for (const src of sources) {
          const ids = mine.filter((o) => o.src === src).map((o) => o.m.id);
          if (ids.length) await deleteBackups(t, src.prefix, ids, ctx.signal);
        }
      },
      ctx.signal,
    );
  },
};
