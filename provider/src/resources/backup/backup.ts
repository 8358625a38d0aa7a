/**
 * baremetal:backup:Backup — one backup of a volume of the caller's project, in one of the
 * provider's backup targets (engine: ../../backup/engine.ts).
 *
 * - Incremental by default: on the volume's latest backup in the target (only changed cells move;
 *   on Ceph only the changes since that backup's snapshot are even read).
 * - Encrypted always: an encrypted volume (LUKS2 at the source) is stored as the ciphertext it is;
 *   a plain volume needs `keyId`, a key of the project's key manager that wraps the backup's data
 *   key (destroying that key makes the backup unreadable). For an encrypted volume `keyId` is
 *   optional: given, it wraps a key for the chunk ids (aes-ghash instead of SHA-256: the backup
 *   costs a fraction of the CPU; cell-crypto.ts), and a restore needs it.
 * - A new backup: change `trigger` (a date, a CI run id), which replaces the resource: the new
 *   backup is taken (incremental on this one), then this one is deleted unless `retainOnDelete`.
 *   A BackupPolicy keeps several by schedule and retention.
 * - `backupId` (`<volumeId>/<id>`) is what a Volume's `sourceBackup` restores.
 *
 * A node's own disk (`nodeId` instead of `volumeId`): the provider boots the machine into a backup
 * image that streams the disk to the target (../../backup/node-disk.ts): under the node's lock it
 * powers the machine off, inserts the image (an ISO carrying the job: target, credentials, the
 * backup's data and dedup keys, plain and wrapped under `keyId`) into the virtual CD, boots it
 * once, waits for the backup's manifest in the target (written last by the agent on the node) and
 * checks it; then, success or not, powers off, ejects, puts the boot override and the power state
 * back as they were, and deletes the image from the image store. No manifest: no backup (and a
 * manifest that appears after a failure is deleted). Envelope encryption always (`keyId`
 * required: the disk is plain as far as the provider knows). Only the project whose allocation
 * holds the node (its owner or lessee, Ironic's node rules) may back it up, while the node is
 * available, active or failed to deploy; the operator also backs up nodes no allocation holds
 * (available or manageable), never one a tenant's allocation holds. Prefix
 * `<project>/nodes/<nodeKey>/` (nodeKey: the system id and a hash of the node id, the node id
 * being a URL); `backupId` `<project>/nodes/<nodeKey>/<id>` restores into a new Volume through
 * its sourceBackup. A restore onto the node itself is not offered yet. In the embedded lab, our BMC
 * emulator plays the agent on the node (provider/src/lab/backup-agent.ts).
 */
import { checkFailureOf } from "../../core/validate";
import { createHash, randomBytes } from "node:crypto";
import { authorize } from "../../core/auth";
import { pickNamed } from "../../core/named";
import { BaremetalError, describeError, isBaremetalError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { OperationContext, Props, ProviderContext, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import { deleteBackups, keyOf, keyWrapper, type KeyWrapper, listManifests, type Manifest, manifestKey, readManifest, restoreBackup, takeBackup } from "../../backup/engine";
import { buildBackupImage, checkNodeManifest, nodeBackupJob } from "../../backup/node-disk";
import { imageStore } from "../../drivers/image-store";
import type { BmcDriver, BootDevice, BootMode } from "../../drivers/kinds/bmc";
import { AVAILABLE, type NodeRecord } from "../../inventory/types";
import { withNodeLock } from "../compute/deployment";
import { parseNodeId, rethrowAttributed, sleep, withDriver } from "../compute/node";
import { backupTargetFor } from "../../drivers/backup-targets";
import type { BackupTargetDriver } from "../../drivers/kinds/backup-target";
import type { StorageDriver } from "../../drivers/kinds/storage";
import { Luks } from "../../drivers/luks";
import { keyManagerName, projectOf, withKeyManager } from "../keys/encryption-key";
import { OPERATOR_PROJECT } from "../network/tenant-network";
import { backendName, requireOwnVolume, withLuksHeader, withStorage } from "../storage/volume";

const inputs = {
  volumeId: { type: "string", minLength: 1, replaceOnChange: true, description: "The volume to back up (a Volume's `volumeId`). Give this or nodeId." },
  nodeId: {
    type: "string",
    minLength: 1,
    replaceOnChange: true,
    description:
      "A node whose own disk to back up (a Node's id), instead of a volume: the node is booted once into a backup image (virtual CD) that streams its disk to the target, then put back in its power state. Needs keyId, the provider's imageStoreUrl, and the node held by the caller's allocation (or, for the operator, by none).",
  },
  backend: { type: "string", replaceOnChange: true, description: "The volume's storage backend (default: the only one)." },
  target: { type: "string", replaceOnChange: true, description: "Which of the provider's `backupTargets` (default: the only one)." },
  keyId: {
    type: "string",
    replaceOnChange: true,
    description:
      "The EncryptionKey (`keyId`) whose key manager key wraps the backup's keys. Needed for a volume not encrypted at the source (it wraps the backup's data key). Optional for a LUKS2 volume, whose backup stays the ciphertext it is: given, the chunk ids are keyed (AES over GHASH, several times cheaper than SHA-256, so backups run faster) and the key is needed to restore; a volume's chain of backups keeps the chunk ids it started with (set incremental: false to start a keyed chain).",
  },
  keyManager: { type: "string", replaceOnChange: true, description: "The key manager holding keyId (default: the only one)." },
  incremental: { type: "boolean", default: true, replaceOnChange: true, description: "Take it relative to the volume's latest backup in the target (false: a full backup)." },
  trigger: { type: "string", replaceOnChange: true, description: "Changing this takes a new backup (replacing this one)." },
} as const satisfies Fields;

const outputs = {
  backupId: { type: "string", required: true, stable: true, description: "`<volumeId>/<id>` (`<project>/nodes/<nodeKey>/<id>` for a node's disk): what a Volume's sourceBackup restores." },
  project: { type: "string", required: true, stable: true, description: "The project that owns it." },
  createdAt: { type: "string", required: true, stable: true, description: "When it was taken (ISO 8601)." },
  sizeBytes: { type: "number", required: true, stable: true, description: "The volume's (or node disk's) size at that time." },
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

/** The key of a node in prefixes: its system id (readable) and a hash of its id (a URL, unique). */
export function nodeKeyOf(nodeId: string): string {
  let system = "node";
  try {
    system = parseNodeId(nodeId).systemId;
  } catch {
    // not a system URI: the hash alone identifies it
  }
  const readable = system.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 40) || "node";
  return `${readable}-${createHash("sha256").update(nodeId).digest("hex").slice(0, 12)}`;
}

/** Where a node's disk backups taken by `project` live in a target. */
export const nodePrefixOf = (project: string, nodeId: string) => `${project}/nodes/${nodeKeyOf(nodeId)}/`;

/**
 * Splits a backup id: `<volumeId>/<id>`, or `<project>/nodes/<nodeKey>/<id>` for a node's disk.
 * `volumeId` is what ownership checks read (requireOwnVolume: the project before `--`); for a
 * node backup it is `<project>--nodes/<nodeKey>`, a tag, not a volume. `prefix` is where it lives.
 */
export function parseBackupId(backupId: string, property = "backupId"): { volumeId: string; id: string; prefix: string; node?: { project: string; key: string } } {
  const n = /^([a-z0-9][a-z0-9._-]*)\/nodes\/([A-Za-z0-9._-]+)\/([A-Za-z0-9-]+)$/.exec(backupId);
  if (n) return { volumeId: `${n[1]}--nodes/${n[2]}`, id: n[3], prefix: `${n[1]}/nodes/${n[2]}/`, node: { project: n[1], key: n[2] } };
  const m = /^([a-z0-9][a-z0-9._-]*--[a-z0-9.-]+)\/([A-Za-z0-9-]+)$/.exec(backupId);
  if (!m) throw validationError(property, `${JSON.stringify(backupId)} is not a backup id: use a Backup's backupId output, <volumeId>/<id> or <project>/nodes/<nodeKey>/<id>`);
  return { volumeId: m[1], id: m[2], prefix: prefixOf(m[1]) };
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

/** `base`: the volume id, or for a node the prefix without its last `/`. */
function outputsOf(props: Props, project: string, base: string, m: Manifest): Props {
  const volumeId = base;
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
          const wrapper = await wrapperFor(ctx, req, property, ctx.signal);
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
  const { volumeId, id, prefix } = parseBackupId(src.backupId as string, "sourceBackup.backupId");
  requireOwnVolume(ctx, volumeId, "sourceBackup.backupId");
  const target = targetName(ctx, src, "sourceBackup.target");
  const m = await withTarget(ctx, target, (t) => readManifest(t, prefix, id, ctx.signal), ctx.signal);
  if (m.sizeBytes > sizeBytes) {
    throw validationError("sizeGib", `backup ${src.backupId} is of a ${m.sizeBytes}-byte volume; make the new volume at least ${Math.ceil(m.sizeBytes / 1024 ** 3)} GiB`);
  }
  if (m.encryption.mode === "envelope" && encrypt) {
    throw validationError("encryption", `backup ${src.backupId} is of a volume not encrypted at the source: a restore of it cannot be encrypted in place (formatting would destroy the restored data); drop encryption`);
  }
  const key = keyOf(m.encryption);
  const wrapper = key ? await wrapperFor(ctx, { keyId: src.keyId ?? key.keyId, keyManager: src.keyManager }, "sourceBackup.", ctx.signal) : undefined;
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
          prefix,
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

/** The provision states in which the holder of a node may back its disk up (the machine is not mid-operation). */
const HOLDER_STATES = new Set([AVAILABLE, "active", "deploy failed"]);
/** ... and in which the operator may back up a node no allocation holds. */
const OPERATOR_STATES = new Set([AVAILABLE, "manageable"]);

/** Booting a node into the backup image is a provision-state change of it (Ironic's rule, on its owner and lessee); a refusal names nodeId. */
function authorizeNode(ctx: ProviderContext, node: NodeRecord, property: string): void {
  try {
    authorize(ctx.policy, ctx.caller, "baremetal:node:set_provision_state", { "node.owner": node.owner, "node.lessee": node.lessee });
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    throw new BaremetalError(e.code, `${property}nodeId: project ${projectOf(ctx)} may not boot node ${node.name} into a backup image: ${e.message}`, { property: `${property}nodeId`, httpStatus: 403, cause: e });
  }
}

/**
 * Who may back up a node's disk (see the top of the file); returns the project whose prefix the
 * backup goes under. Throws naming `<property>nodeId`.
 */
export async function requireNodeForBackup(ctx: ProviderContext, nodeId: string, property = ""): Promise<{ node: NodeRecord; project: string }> {
  const where = `${property}nodeId`;
  const inventory = await ctx.inventory();
  const node = await inventory.getNode(nodeId);
  if (!node) throw new BaremetalError("not-found", `node ${nodeId} is not enrolled; give a Node's id`, { property: where });
  const project = projectOf(ctx);
  authorizeNode(ctx, node, property);
  const allocation = node.allocationId ? await inventory.getAllocation(node.allocationId) : undefined;
  const holder = allocation && allocation.state === "active" ? (allocation.owner ?? OPERATOR_PROJECT) : undefined;
  if (holder !== undefined && holder !== project) {
    throw new BaremetalError("auth", `node ${node.name} is held by an allocation of project ${holder}: its disk is that project's data, only it may back the disk up`, { property: where, httpStatus: 403 });
  }
  if (holder === undefined) {
    if (!ctx.caller.operator) throw new BaremetalError("auth", `node ${node.name} is not held by an allocation of project ${project}: allocate it first (an Allocation), then back up its disk`, { property: where, httpStatus: 403 });
    if (!OPERATOR_STATES.has(node.provisionState)) throw new BaremetalError("conflict", `node ${node.name} is '${node.provisionState}': the operator backs up a node nobody holds while it is available or manageable`, { property: where });
  } else if (!HOLDER_STATES.has(node.provisionState)) {
    throw new BaremetalError("conflict", `node ${node.name} is '${node.provisionState}'; back its disk up once it is available, active or failed to deploy`, { property: where });
  }
  if (node.maintenance) throw new BaremetalError("conflict", `node ${node.name} is in maintenance (${node.maintenanceReason ?? "no reason given"}); back it up when it is out of maintenance`, { property: where });
  return { node, project };
}


async function powerIs(ctx: OperationContext, driver: BmcDriver, systemId: string, state: "on" | "off", what: string, limitMs: number): Promise<boolean> {
  const until = Math.min(ctx.deadline, Date.now() + limitMs);
  for (let attempt = 1; ; attempt++) {
    if ((await driver.facts(systemId)).powerState === state) return true;
    if (Date.now() > until) return false;
    if (attempt % 5 === 0) ctx.progress(`${what} (attempt ${attempt})`);
    await sleep(Math.min(500 * attempt, 3000), ctx.signal);
  }
}

/** Takes a backup of a node's own disk by booting it into a backup image (see the top of the file). */
export async function backupNode(
  ctx: OperationContext,
  req: { nodeId: string; target: string; keyId?: string; keyManager?: string; incremental: boolean; property?: string; takenBy?: string },
): Promise<{ manifest: Manifest; project: string; prefix: string }> {
  const property = req.property ?? "";
  const { node, project } = await requireNodeForBackup(ctx, req.nodeId, property);
  if (req.keyId === undefined) throw validationError(`${property}keyId`, `a node's disk is backed up with envelope encryption: give keyId (an EncryptionKey's keyId) to wrap its data key`);
  if (!ctx.config.imageStoreUrl) {
    throw validationError(`${property}nodeId`, "a node's disk backup boots the node into a backup image the BMC fetches from the image store: set the provider's imageStoreUrl (an http(s) server that accepts PUT)");
  }
  const wrapper = (await wrapperFor(ctx, req, property, ctx.signal))!;
  const prefix = nodePrefixOf(project, node.id);
  const id = `${new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")}-${randomBytes(3).toString("hex")}`;
  const { address, systemId } = parseNodeId(node.id);
  const store = imageStore(ctx.config.imageStoreUrl, { signal: ctx.signal });
  const name = `backup-${id}-${randomBytes(6).toString("hex")}.iso`.toLowerCase();
  const inventory = await ctx.inventory();

  return withTarget(
    ctx,
    req.target,
    (target) =>
      withNodeLock(ctx, inventory, node.id, "backup", async () => {
        const parent = req.incremental ? (await listManifests(target, prefix, ctx.signal)).pop() : undefined;
        const job = nodeBackupJob({
          nodeId: node.id,
          prefix,
          id,
          target: { name: req.target, settings: ctx.config.backupTargets[req.target], credentials: ctx.config.backupTargetCredentials[req.target] },
          wrapper,
          parent,
          takenBy: req.takenBy,
        });
        const image = buildBackupImage(job);
        job.encryption.dek = job.encryption.dedupKey = ""; // the provider keeps only the wrapped forms
        let url: string;
        try {
          ctx.progress(`publishing the backup image of node ${node.name} (${image.length} bytes) to the image store`);
          url = await store.put(name, image);
        } finally {
          image.fill(0); // it holds keys and the target's credentials
        }
        const removeImage = () => store.delete(name).catch((e) => ctx.warn(`the backup image ${name} stays in the image store (it holds the backup's keys; delete it): ${describeError(e)}`));
        try {
          return await withDriver(ctx, { address }, async (driver) => {
            const before = await driver.facts(systemId);
            const wasOn = before.powerState === "on" || before.powerState === "powering-on";
            let manifest: Manifest | undefined;
            let failure: unknown;
            try {
              if (before.powerState !== "off") {
                ctx.progress(`powering node ${node.name} off for its backup`);
                await driver.setPower(systemId, "off");
                if (!(await powerIs(ctx, driver, systemId, "off", "waiting for power off", ctx.deadline - Date.now()))) throw new BaremetalError("timeout", `node ${node.name} did not power off; raise the resource's customTimeouts`);
              }
              ctx.progress(`booting node ${node.name} once from the backup image in its virtual CD${parent ? ` (incremental on ${parent.id})` : " (full)"}`);
              await driver.insertVirtualMedia(systemId, url, "cd");
              await driver.setBoot(systemId, "cd", undefined, true);
              await driver.setPower(systemId, "on");
              const started = Date.now();
              let sawOn = false;
              for (let attempt = 1; ; attempt++) {
                if (await target.head(manifestKey(prefix, id), ctx.signal)) break;
                const power = (await driver.facts(systemId)).powerState;
                if (power === "on") sawOn = true;
                if (power === "off" && (sawOn || Date.now() - started > 60_000) && !(await target.head(manifestKey(prefix, id), ctx.signal))) {
                  throw new BaremetalError("backend", `node ${node.name} powered off without writing backup ${id}: the backup image failed on the machine (see its console); nothing was kept`);
                }
                if (Date.now() > ctx.deadline) throw new BaremetalError("timeout", `node ${node.name}: no backup ${id} in ${target.description} yet after ${Math.round((Date.now() - started) / 1000)} s; raise the resource's customTimeouts if the disk is large`);
                if (attempt % 10 === 0) ctx.progress(`waiting for node ${node.name}'s backup agent to write backup ${id} (${Math.round((Date.now() - started) / 1000)} s, power ${power})`);
                await sleep(Math.min(250 * attempt, 2000), ctx.signal);
              }
              const m = await readManifest(target, prefix, id, ctx.signal);
              try {
                await checkNodeManifest(m, job, target, ctx.signal);
              } catch (e) {
                await target.delete([manifestKey(prefix, id)], ctx.signal).catch(() => undefined);
                throw e;
              }
              manifest = m;
              // The agent powers the machine off when it is done.
              await powerIs(ctx, driver, systemId, "off", "waiting for the backup image to power the node off", 120_000);
            } catch (e) {
              failure = e;
            }
            // Success or not: off, eject, the boot override and power as they were.
            const restore: string[] = [];
            const step = async (what: string, fn: () => Promise<unknown>) => {
              try {
                await fn();
              } catch (e) {
                restore.push(`${what}: ${describeError(e)}`);
              }
            };
            await step("power off", async () => {
              await driver.setPower(systemId, "off");
              await powerIs(ctx, driver, systemId, "off", "waiting for power off", 120_000);
            });
            await step("eject", () => driver.ejectVirtualMedia(systemId, "cd"));
            await removeImage();
            if (!manifest) await target.delete([manifestKey(prefix, id)]).catch(() => undefined); // a late manifest of a failed run: no backup
            await step("boot override", () =>
              before.bootDevice === "none" || !before.bootDevice ? driver.setBoot(systemId, "none") : driver.setBoot(systemId, before.bootDevice as BootDevice, before.bootMode as BootMode | undefined, !before.bootPersistent),
            );
            if (wasOn) {
              await step("power on", async () => {
                ctx.progress(`powering node ${node.name} back on`);
                await driver.setPower(systemId, "on");
                if (!(await powerIs(ctx, driver, systemId, "on", "waiting for power on", 300_000))) throw new BaremetalError("timeout", "it did not come back on");
              });
            }
            if (failure) {
              if (restore.length) ctx.warn(`node ${node.name} was not put back as it was after the failed backup: ${restore.join("; ")}`);
              throw failure;
            }
            if (restore.length) ctx.warn(`backup ${id} of node ${node.name} is written, but the node was not put back as it was: ${restore.join("; ")}`);
            ctx.progress(`backup ${prefix}${id}: ${manifest!.stats.chunksStored} chunks stored (${manifest!.stats.bytesStored} bytes), ${manifest!.stats.chunksReused} reused`);
            return { manifest: manifest!, project, prefix };
          }).catch(rethrowAttributed);
        } finally {
          await removeImage();
        }
      }),
    ctx.signal,
  );
}

/** Where a backup resource's id points: its prefix and the ownership tag (see parseBackupId). */
function locate(ctx: ProviderContext, id: string): { volumeId: string; id: string; prefix: string; node?: { project: string; key: string }; project: string; base: string } {
  const p = parseBackupId(id, "id");
  const project = requireOwnVolume(ctx, p.volumeId, "id");
  return { ...p, project, base: p.node ? p.prefix.slice(0, -1) : p.volumeId };
}

export const backupResource: ResourceDefinition = {
  token: "baremetal:backup:Backup",
  description:
    "One backup of a volume of the caller's project, or of a node's own disk (booted once into a backup image), in a backup target: incremental on the latest one, encrypted (a LUKS2 volume's ciphertext as is, or envelope encryption under a key-manager key), checksummed; restore it with a Volume's sourceBackup.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 86400,

  check(props, ctx) {
    const hasVolume = props.volumeId !== undefined;
    const hasNode = props.nodeId !== undefined;
    if (hasVolume && hasNode) return [{ property: "nodeId", reason: "a backup is of a volume (volumeId) or of a node's disk (nodeId), not both: drop one" }];
    if (!hasVolume && !hasNode) return [{ property: "volumeId", reason: "give volumeId (a Volume's volumeId) or nodeId (a Node's id, to back up its own disk)" }];
    if (hasNode && props.keyId === undefined) return [{ property: "keyId", reason: "a node's disk is backed up with envelope encryption: give keyId (an EncryptionKey's keyId)" }];
    if (hasNode && props.backend !== undefined) return [{ property: "backend", reason: "backend names a volume's storage backend; a node's disk has none: drop backend" }];
    try {
      if (!isUnknown(props.target)) targetName(ctx, props);
      if (hasVolume && !isUnknown(props.backend)) backendName(ctx, props);
      if (typeof props.volumeId === "string") requireOwnVolume(ctx, props.volumeId);
      if (props.keyId !== undefined && !isUnknown(props.keyManager)) keyManagerName(ctx, props, "keyManager");
    } catch (e) {
      if (e instanceof BaremetalError && e.property) return [checkFailureOf(e)];
      throw e;
    }
    return [];
  },

  async authorize(ctx, _change, props, state) {
    const nodeId = (state?.nodeId ?? props.nodeId) as unknown;
    if (nodeId !== undefined) {
      // A node's disk: Ironic's node rules (owner or lessee) for booting it, checked again with the holder at create.
      if (typeof nodeId === "string" && !ctx.caller.operator) {
        const node = await (await ctx.inventory()).getNode(nodeId);
        if (node) authorizeNode(ctx, node, "");
      }
      return;
    }
    const volumeId = (state?.volumeId ?? props.volumeId) as unknown;
    if (typeof volumeId === "string") requireOwnVolume(ctx, volumeId);
    authorize(ctx.policy, ctx.caller, "baremetal:volume:backup", { "volume.owner": projectOf(ctx) });
  },

  async create(ctx, props) {
    if (props.nodeId !== undefined) {
      const { manifest, project, prefix } = await backupNode(ctx, {
        nodeId: props.nodeId as string,
        target: targetName(ctx, props),
        keyId: props.keyId as string | undefined,
        keyManager: props.keyManager as string | undefined,
        incremental: props.incremental !== false,
      });
      const base = prefix.slice(0, -1);
      return { id: `${base}/${manifest.id}`, outputs: outputsOf(props, project, base, manifest) };
    }
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
    const where = locate(ctx, id);
    return withTarget(
      ctx,
      targetName(ctx, stored ?? {}),
      async (target) => {
        let m: Manifest;
        try {
          m = await readManifest(target, where.prefix, where.id, ctx.signal);
        } catch (e) {
          if (e instanceof BaremetalError && e.code === "not-found") return undefined;
          throw e;
        }
        const keyId = keyOf(m.encryption)?.keyId;
        const declared: Props = stored ?? (where.node ? { nodeId: m.source.id, keyId } : { volumeId: where.volumeId, ...(keyId !== undefined ? { keyId } : {}) });
        return { id, inputs: declared, outputs: { ...(state ?? {}), ...outputsOf(declared, where.project, where.base, m) } };
      },
      ctx.signal,
    );
  },

  async update(_ctx, _id, _olds, news, oldState) {
    return { ...oldState, ...news };
  },

  async delete(ctx, id, props) {
    const where = locate(ctx, id);
    const r = await withTarget(ctx, targetName(ctx, props), (target) => deleteBackups(target, where.prefix, [where.id], ctx.signal), ctx.signal);
    ctx.progress(`backup ${id} deleted (${r.chunksDeleted} chunks no other backup used)`);
    if (where.node) return; // a node's disk keeps no snapshot
    const volumeId = where.volumeId;
    const backup = where.id;
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
