/**
 * baremetal:storage:VolumeAttachment — a volume exported to the node an allocation holds, over
 * iSCSI, to that node's initiator only, with CHAP credentials made for this attachment (secret
 * outputs). The connection info is what the node (its initiator, or its firmware for boot from
 * volume) needs; the volume's LUKS key is delivered separately and never to the storage host.
 *
 * Boot from volume (`boot: true`): after the export, the node's BMC is told to boot the machine
 * from this target with its firmware's own iSCSI initiator (Redfish NetworkDeviceFunction
 * `BootMode: iSCSI` + `iSCSIBoot`, with this attachment's initiator name and CHAP credentials, and
 * a continuous boot override; drivers/redfish/iscsi-boot.ts). Refused before anything is exported
 * when the volume holds no boot sector (no MBR boot signature, no GPT header: nothing a firmware
 * can boot; a LUKS2 header is named as such), and when the node's BMC already boots another iSCSI
 * target (another attachment with boot). What the function and the boot override were is kept
 * in state (`bootOriginal`) and put back on delete, before the unexport. Refresh compares the
 * BMC's iSCSI boot settings with ours, property by property (`bootDrift`; `up` sets them again);
 * the CHAP secret is write-only on a BMC (reads null), so a secret changed by hand there is NOT
 * detectable: only the node failing to log in shows it.
 */
import { createHash, randomBytes } from "node:crypto";
import { authorize } from "../../core/auth";
import { BaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { Props, ResourceDefinition } from "../../core/resource";
import type { ExportInfo, StorageDriver } from "../../drivers/kinds/storage";
import type { BmcDriver } from "../../drivers/kinds/bmc";
import { RedfishDriver } from "../../drivers/redfish/driver";
import type { IscsiBootOriginal } from "../../drivers/redfish/iscsi-boot";
import type { OperationContext, ProviderContext } from "../../core/resource";
import { allocatedNode } from "../compute/allocation";
import { parseNodeId, rethrowAttributed, withDriver } from "../compute/node";
import { projectOf } from "../keys/encryption-key";
import { backendName, requireOwnVolume, withStorage } from "./volume";

const inputs = {
  volumeId: { type: "string", required: true, replaceOnChange: true, minLength: 1, description: "The volume (a Volume's `volumeId`)." },
  allocationId: { type: "string", required: true, replaceOnChange: true, pattern: "^alloc-", description: "The allocation whose node gets the volume.", hint: "Pass an Allocation's allocationId output" },
  backend: { type: "string", replaceOnChange: true, description: "The volume's storage backend (default: the only one)." },
  initiatorIqn: {
    type: "string",
    replaceOnChange: true,
    pattern: "^(iqn\\.\\d{4}-\\d{2}\\.[a-z0-9.-]+(:[a-z0-9.:_-]+)?|eui\\.[0-9A-F]{16})$",
    description: "The node's iSCSI initiator name (default: one derived from the node's id).",
  },
  boot: {
    type: "boolean",
    default: false,
    replaceOnChange: true,
    description:
      "The node boots from this volume: after the export, its BMC is set to boot the machine over iSCSI from this target (the firmware's initiator, with this attachment's initiator name and CHAP credentials), continuously; destroy puts the BMC's previous boot settings back. Only a volume holding a bootable image (a boot sector: MBR or GPT) qualifies, and one attachment per node.",
  },
} as const satisfies Fields;

/**
 * What a node needs to log in to its volume, as one object: handed to a Deployment's `volumes`
 * (which writes it, with the LUKS key, onto the node's config drive). Exported for deployment.ts.
 * The object is secret as a whole (it holds the CHAP secret); its members are not marked one by
 * one, so the engine never sees a secret nested in a secret.
 */
export const volumeConnectionFields = {
  volumeId: { type: "string", required: true, minLength: 1, description: "The volume (a Volume's `volumeId`)." },
  nodeId: { type: "string", required: true, minLength: 1, description: "The node the volume is exported to (only its initiator may log in)." },
  portal: { type: "string", required: true, minLength: 1, description: "The iSCSI portal (`host:port`)." },
  targetIqn: { type: "string", required: true, minLength: 1, description: "The iSCSI target." },
  lun: { type: "integer", required: true, minimum: 0, description: "The LUN." },
  initiatorIqn: { type: "string", required: true, minLength: 1, description: "The initiator name the node must log in with." },
  chapUser: { type: "string", required: true, minLength: 1, description: "CHAP user." },
  chapSecret: { type: "string", required: true, minLength: 1, description: "CHAP secret (the whole connection object is secret)." },
} as const satisfies Fields;

export const VOLUME_CONNECTION_TYPE = "baremetal:storage:VolumeConnection";

const outputs = {
  nodeId: { type: "string", required: true, stable: true, description: "The node the volume is exported to." },
  portal: { type: "string", required: true, description: "The iSCSI portal (`host:port`)." },
  targetIqn: { type: "string", required: true, description: "The iSCSI target." },
  lun: { type: "integer", required: true, description: "The LUN." },
  initiatorIqn: { type: "string", required: true, stable: true, description: "The only initiator the target accepts." },
  chapUser: { type: "string", required: true, stable: true, description: "CHAP user of this attachment." },
  chapSecret: { type: "string", required: true, secret: true, stable: true, description: "CHAP secret of this attachment (secret)." },
  bootFunction: { type: "string", description: "boot: the BMC's NetworkDeviceFunction that boots the node from the volume (its Redfish URI)." },
  bootTarget: { type: "string", description: "boot: the boot override set on the node (RemoteDrive, or Pxe where the BMC offers no RemoteDrive: the NIC's network boot, which boots iSCSI)." },
  bootOriginal: {
    type: "string",
    stable: true,
    description: "boot: the NetworkDeviceFunction's BootMode and iSCSI settings and the system's boot override before this attachment took them over (JSON), restored on delete.",
  },
  bootDrift: {
    type: "string",
    description: "boot: what the BMC's iSCSI boot settings differ in from this attachment's, as found by the last refresh (`up` sets them again). The CHAP secret cannot be compared: a BMC never reads it back.",
  },
  connection: {
    type: "object",
    typeToken: VOLUME_CONNECTION_TYPE,
    required: true,
    secret: true,
    terraformName: "iscsi_connection",
    description:
      "Everything the node needs to log in to the volume, as one object (secret: it holds the CHAP secret): pass it to a Deployment's `volumes`, which delivers it, with the volume's LUKS key, on the node's config drive.",
    properties: volumeConnectionFields,
  },
} as const satisfies Fields;

const defaultInitiator = (nodeId: string) => `iqn.2026-11.io.pulumi-baremetal:node-${createHash("sha256").update(nodeId).digest("hex").slice(0, 16)}`;

function outputsOf(props: Props, nodeId: string, e: ExportInfo, secret: string): Props {
  return withConnection({ ...props, nodeId, portal: e.portal, targetIqn: e.targetIqn, lun: e.lun, initiatorIqn: e.initiatorIqn, chapUser: e.chapUser, chapSecret: secret });
}

/** The flat outputs gathered into `connection` (left out while the CHAP secret is unknown, e.g. on import). */
function withConnection(o: Props): Props {
  const out: Props = { ...o };
  delete out.connection;
  if (typeof o.chapSecret !== "string" || typeof o.volumeId !== "string") return out;
  out.connection = {
    volumeId: o.volumeId,
    nodeId: o.nodeId,
    portal: o.portal,
    targetIqn: o.targetIqn,
    lun: o.lun,
    initiatorIqn: o.initiatorIqn,
    chapUser: o.chapUser,
    chapSecret: o.chapSecret,
  };
  return out;
}

const GPT_SIGNATURE = Buffer.from("EFI PART", "latin1");
const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);

/** The volume's first 8 KiB (zeros past what the backend returns): a local file, else its first extent. */
async function headOf(storage: StorageDriver, volume: string): Promise<Buffer> {
  const head = Buffer.alloc(8192);
  if (!storage.luksHeader) {
    const fs = await import("node:fs/promises");
    const fh = await fs.open(await storage.path(volume), "r");
    try {
      await fh.read(head, 0, head.length, 0);
    } finally {
      await fh.close();
    }
    return head;
  }
  if (!storage.readExtents) {
    throw new BaremetalError("validation", `the ${storage.family} backend cannot read volume ${volume}'s first sectors, so its boot sector cannot be checked; attach it without boot`, { property: "boot" });
  }
  for await (const x of storage.readExtents(volume, { maxBytes: 65536 })) {
    if ("data" in x && x.offset < head.length) x.data.copy(head, x.offset, 0, Math.min(x.data.length, head.length - x.offset));
    if (x.offset >= head.length || ("data" in x && x.offset + x.data.length >= head.length)) break;
  }
  return head;
}

/** Why the volume is not firmware-bootable, or undefined when it has an MBR boot signature or a GPT header. */
export function notBootable(head: Buffer): string | undefined {
  if (head.subarray(0, 6).equals(LUKS_MAGIC)) return "it begins with a LUKS header: a machine's firmware cannot unlock it";
  const mbr = head[510] === 0x55 && head[511] === 0xaa;
  const gpt = head.subarray(512, 520).equals(GPT_SIGNATURE) || head.subarray(4096, 4104).equals(GPT_SIGNATURE);
  if (mbr || gpt) return undefined;
  return "it holds no boot sector (no MBR boot signature 55 AA at byte 510, no GPT header): write a bootable image to it first (a Volume with bootable: true, cloned from a golden image or restored from a backup)";
}

interface BootState {
  functionPath: string;
  bootTarget: string;
  original: IscsiBootOriginal;
}

/** The node's Redfish driver, or a validation error naming the node (iSCSI boot is Redfish's). */
function redfishOf(driver: BmcDriver, nodeId: string): RedfishDriver {
  if (driver instanceof RedfishDriver) return driver;
  throw new BaremetalError("validation", `node ${nodeId}: its BMC is not managed over Redfish, and iSCSI boot is configured over Redfish only; attach the volume without boot`, { property: "boot" });
}

/** The node's MACs to prefer for the boot function: its cabled ports (inventory), else the BMC's. */
async function nodeMacs(ctx: ProviderContext, driver: RedfishDriver, nodeId: string, systemId: string): Promise<string[]> {
  const ports = await (await ctx.inventory()).listPorts({ nodeId }).catch(() => []);
  if (ports.length) return ports.map((p) => p.mac);
  return (await driver.facts(systemId)).macAddresses;
}

/** Refuses when a function of the node already boots over iSCSI from a target that is not `ours`. */
async function refuseOtherBoot(driver: RedfishDriver, nodeId: string, systemId: string, ours: string | undefined): Promise<void> {
  for (const f of await driver.deviceFunctions(systemId)) {
    const target = f.iscsi?.PrimaryTargetName;
    if (f.bootMode === "iSCSI" && typeof target === "string" && target && target.toLowerCase() !== ours?.toLowerCase()) {
      throw new BaremetalError(
        "conflict",
        `node ${nodeId} already boots over iSCSI from ${target} (its BMC's ${f.path}): one boot volume per node; destroy the other VolumeAttachment with boot first (or set boot: false here)`,
        { property: "boot" },
      );
    }
  }
}

/** Sets the node's BMC to boot from the export (keeping `original` when given: a re-apply). */
async function wireBoot(ctx: OperationContext, nodeId: string, e: { portal: string; targetIqn: string; lun: number; initiatorIqn: string; chapUser: string }, secret: string, original?: IscsiBootOriginal): Promise<BootState> {
  const { address, systemId } = parseNodeId(nodeId);
  return withDriver(ctx, { address }, async (d) => {
    const driver = redfishOf(d, nodeId);
    const done = await driver.configureIscsiBoot(
      systemId,
      { initiatorName: e.initiatorIqn, targetName: e.targetIqn, portal: e.portal, lun: e.lun, chapUsername: e.chapUser, chapSecret: secret },
      { macs: await nodeMacs(ctx, driver, nodeId, systemId), whose: `node ${nodeId}` },
    );
    ctx.progress(`node ${nodeId} boots over iSCSI from ${e.targetIqn} (LUN ${e.lun}) via ${done.functionPath}, boot override ${done.bootTarget}`);
    return { functionPath: done.functionPath, bootTarget: done.bootTarget, original: original ?? cleanOriginal(done.original, e.targetIqn, done.bootTarget) };
  }).catch(rethrowAttributed);
}

/**
 * What to restore when the function already booted from this very target before this create (a
 * create retried after a failure): not what was there before us, which is unknown by then, but a
 * function that boots nothing and no boot override.
 */
function cleanOriginal(o: IscsiBootOriginal, targetIqn: string, bootTarget: string): IscsiBootOriginal {
  const t = o.iscsi.PrimaryTargetName;
  if (o.bootMode !== "iSCSI" || typeof t !== "string" || t.toLowerCase() !== targetIqn.toLowerCase()) return o;
  const iscsi: IscsiBootOriginal["iscsi"] = Object.fromEntries(Object.keys(o.iscsi).map((k) => [k, null]));
  Object.assign(iscsi, { IPAddressType: o.iscsi.IPAddressType ?? "IPv4", TargetInfoViaDHCP: false, AuthenticationMethod: "None" });
  const override = o.bootOverride.target === bootTarget ? { target: "None", enabled: "Disabled" } : o.bootOverride;
  return { functionPath: o.functionPath, bootMode: "Disabled", iscsi, bootOverride: override };
}

function bootOutputs(b: BootState): Props {
  return { bootFunction: b.functionPath, bootTarget: b.bootTarget, bootOriginal: JSON.stringify(b.original) };
}

export const volumeAttachmentResource: ResourceDefinition = {
  token: "baremetal:storage:VolumeAttachment",
  description:
    "A volume exported over iSCSI to the node an allocation holds: only that node's initiator, with CHAP credentials of its own (secret outputs).",
  inputs,
  outputs,
  // One export per volume, and one boot configuration per node: the old goes before the new comes.
  deleteBeforeReplace: true,
  defaultTimeoutSeconds: 120,

  async authorize(ctx, change, props, state) {
    const volumeId = (state?.volumeId ?? props.volumeId) as unknown;
    if (typeof volumeId === "string") requireOwnVolume(ctx, volumeId);
    authorize(ctx.policy, ctx.caller, change === "delete" ? "baremetal:volume:detach" : "baremetal:volume:attach", { "volume.owner": projectOf(ctx) });
  },

  async create(ctx, props) {
    requireOwnVolume(ctx, props.volumeId as string);
    const inventory = await ctx.inventory();
    const node = await allocatedNode(inventory, props.allocationId as string);
    const allocation = await inventory.getAllocation(props.allocationId as string);
    if (!ctx.caller.operator && allocation?.owner !== ctx.caller.projectId) {
      throw new BaremetalError("auth", `allocation ${props.allocationId} is held by project ${allocation?.owner ?? "(operator)"}, not ${ctx.caller.projectId}`, { property: "allocationId", httpStatus: 403 });
    }
    const initiatorIqn = (props.initiatorIqn as string | undefined) ?? defaultInitiator(node.id);
    const chapUser = `c${randomBytes(6).toString("hex")}`;
    const chapSecret = randomBytes(18).toString("base64url");
    const backend = backendName(ctx, props);
    const volumeId = props.volumeId as string;
    if (props.boot === true) {
      // Before anything is exported: the volume must be bootable, and the node boot from no other.
      const { head, exported } = await withStorage(ctx, backend, async (s) => ({ head: await headOf(s, volumeId), exported: await s.listExports(volumeId) }), ctx.signal);
      const why = notBootable(head);
      if (why) throw new BaremetalError("validation", `boot: volume ${volumeId} (volumeId) is not bootable: ${why}`, { property: "boot" });
      const { address, systemId } = parseNodeId(node.id);
      await withDriver(ctx, { address }, async (d) => refuseOtherBoot(redfishOf(d, node.id), node.id, systemId, exported[0]?.targetIqn)).catch(rethrowAttributed);
    }
    const e = await withStorage(ctx, backend, (s) => s.exportVolume({ volume: volumeId, initiatorIqn, chapUser, chapSecret }), ctx.signal);
    ctx.progress(`volume ${props.volumeId} exported as ${e.targetIqn} to ${initiatorIqn}`);
    let boot: Props = {};
    if (props.boot === true) {
      try {
        boot = bootOutputs(await wireBoot(ctx, node.id, e, chapSecret));
      } catch (err) {
        // Nothing half-made: the export goes again when the node cannot be set to boot from it.
        await withStorage(ctx, backend, (s) => s.unexportVolume(volumeId), ctx.signal).catch(() => undefined);
        throw err;
      }
    }
    return { id: `${props.volumeId}@${initiatorIqn}`, outputs: { ...outputsOf({ ...props, initiatorIqn }, node.id, e, chapSecret), ...boot } };
  },

  pendingChanges(state) {
    return typeof state.bootDrift === "string" && state.bootDrift
      ? [{ path: "bootDrift", reason: `the node's BMC no longer has this attachment's iSCSI boot settings: ${state.bootDrift}` }]
      : [];
  },

  async read(ctx, id, stored, state) {
    const volumeId = (stored?.volumeId as string | undefined) ?? id.slice(0, id.indexOf("@"));
    requireOwnVolume(ctx, volumeId, "id");
    const exports = await withStorage(ctx, backendName(ctx, stored ?? {}), (s) => s.listExports(volumeId), ctx.signal);
    const initiator = (state?.initiatorIqn as string | undefined) ?? id.slice(id.indexOf("@") + 1);
    const e = exports.find((x) => x.initiatorIqn === initiator && (!state?.chapUser || x.chapUser === state.chapUser));
    if (!e) return undefined; // unexported (or re-keyed) behind our back: up exports again
    const outputs = withConnection({ ...(state ?? {}), portal: e.portal, targetIqn: e.targetIqn, lun: e.lun });
    delete outputs.bootDrift;
    if (state?.boot === true && typeof state.bootFunction === "string" && typeof state.nodeId === "string") {
      const nodeId = state.nodeId;
      const { address } = parseNodeId(nodeId);
      const drift = await withDriver(ctx, { address }, (d) =>
        redfishOf(d, nodeId).iscsiBootDrift(state.bootFunction as string, { initiatorName: e.initiatorIqn, targetName: e.targetIqn, portal: e.portal, lun: e.lun, chapUsername: e.chapUser }),
      ).catch(rethrowAttributed);
      if (drift.length) {
        outputs.bootDrift = drift.join("; ");
        ctx.warn(`node ${nodeId}: its BMC's iSCSI boot settings differ from this attachment's: ${outputs.bootDrift}; \`pulumi up\` sets them again`);
      }
    }
    return { id, inputs: stored ?? { volumeId, allocationId: state?.allocationId ?? "", initiatorIqn: initiator }, outputs };
  },

  async update(ctx, _id, _olds, news, oldState) {
    const out: Props = { ...oldState, ...news };
    if (news.boot === true && typeof oldState.nodeId === "string" && typeof oldState.chapSecret === "string" && typeof oldState.targetIqn === "string") {
      // Drift repair: the same settings again (the original found at create is kept).
      const original = typeof oldState.bootOriginal === "string" ? (JSON.parse(oldState.bootOriginal) as IscsiBootOriginal) : undefined;
      const e = { portal: oldState.portal as string, targetIqn: oldState.targetIqn, lun: oldState.lun as number, initiatorIqn: oldState.initiatorIqn as string, chapUser: oldState.chapUser as string };
      Object.assign(out, bootOutputs(await wireBoot(ctx, oldState.nodeId, e, oldState.chapSecret, original)));
    }
    delete out.bootDrift;
    return out;
  },

  async delete(ctx, id, props, state) {
    requireOwnVolume(ctx, props.volumeId as string);
    if (state?.boot === true && typeof state.bootOriginal === "string" && typeof state.nodeId === "string") {
      // The BMC's boot settings go back first: a node must not keep booting from a target that goes.
      const original = JSON.parse(state.bootOriginal) as IscsiBootOriginal;
      const nodeId = state.nodeId;
      const { address, systemId } = parseNodeId(nodeId);
      const r = await withDriver(ctx, { address }, (d) =>
        redfishOf(d, nodeId).restoreIscsiBoot(systemId, original, { targetName: state.targetIqn as string, bootTarget: state.bootTarget as string }),
      ).catch(rethrowAttributed);
      if (r.restored) ctx.progress(`node ${nodeId}: BootMode ${original.bootMode ?? "Disabled"} and its boot override put back`);
      else ctx.warn(`node ${nodeId}: its iSCSI boot settings were not put back: ${r.why}`);
    }
    await withStorage(ctx, backendName(ctx, props), (s) => s.unexportVolume(props.volumeId as string), ctx.signal);
  },
};
