/**
 * baremetal:storage:VolumeAttachment — a volume exported to the node an allocation holds, over
 * iSCSI, to that node's initiator only, with CHAP credentials made for this attachment (secret
 * outputs). The connection info is what the node (its initiator, or its firmware for boot from
 * volume) needs; the volume's LUKS key is delivered separately and never to the storage host.
 */
import { createHash, randomBytes } from "node:crypto";
import { authorize } from "../../core/auth";
import { BaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { Props, ResourceDefinition } from "../../core/resource";
import type { ExportInfo } from "../../drivers/kinds/storage";
import { allocatedNode } from "../compute/allocation";
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
  connection: {
    type: "object",
    typeToken: VOLUME_CONNECTION_TYPE,
    required: true,
    secret: true,
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

export const volumeAttachmentResource: ResourceDefinition = {
  token: "baremetal:storage:VolumeAttachment",
  description:
    "A volume exported over iSCSI to the node an allocation holds: only that node's initiator, with CHAP credentials of its own (secret outputs).",
  inputs,
  outputs,
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
    const e = await withStorage(ctx, backendName(ctx, props), (s) => s.exportVolume({ volume: props.volumeId as string, initiatorIqn, chapUser, chapSecret }), ctx.signal);
    ctx.progress(`volume ${props.volumeId} exported as ${e.targetIqn} to ${initiatorIqn}`);
    return { id: `${props.volumeId}@${initiatorIqn}`, outputs: outputsOf({ ...props, initiatorIqn }, node.id, e, chapSecret) };
  },

  async read(ctx, id, stored, state) {
    const volumeId = (stored?.volumeId as string | undefined) ?? id.slice(0, id.indexOf("@"));
    requireOwnVolume(ctx, volumeId, "id");
    const exports = await withStorage(ctx, backendName(ctx, stored ?? {}), (s) => s.listExports(volumeId), ctx.signal);
    const initiator = (state?.initiatorIqn as string | undefined) ?? id.slice(id.indexOf("@") + 1);
    const e = exports.find((x) => x.initiatorIqn === initiator && (!state?.chapUser || x.chapUser === state.chapUser));
    if (!e) return undefined; // unexported (or re-keyed) behind our back: up exports again
    return { id, inputs: stored ?? { volumeId, allocationId: state?.allocationId ?? "", initiatorIqn: initiator }, outputs: withConnection({ ...(state ?? {}), portal: e.portal, targetIqn: e.targetIqn, lun: e.lun }) };
  },

  async update(_ctx, _id, _olds, news, oldState) {
    return { ...oldState, ...news };
  },

  async delete(ctx, id, props) {
    requireOwnVolume(ctx, props.volumeId as string);
    await withStorage(ctx, backendName(ctx, props), (s) => s.unexportVolume(props.volumeId as string), ctx.signal);
  },
};
