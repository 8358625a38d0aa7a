/**
 * baremetal:network:Port — a node's network interface and where it is cabled (Ironic's port with
 * its `local_link_connection`: switch id and switch port).
 *
 * Create records it in the inventory and takes the switch port over: its configuration as found
 * is kept in state (`originalConfig`), and the port goes where the node's state says (quarantine
 * for a node in no tenant network). Delete, refused while the port is attached to a network,
 * gives the switch port back its original configuration.
 */
import { checkFailureOf } from "../../core/validate";
import { authorize } from "../../core/auth";
import { BaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { Props, ProviderContext, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import { type SwitchPortChange, type SwitchPortConfig, samePortConfig, validatePortName } from "../../drivers/kinds/switch";
import type { PortRecord } from "../../inventory/types";
import { switchNamed, withSwitch } from "./fabric";
import { applyPlans, planNodePorts, syncNodePorts, withNetworkLock } from "./wiring";

const inputs = {
  nodeId: { type: "string", required: true, replaceOnChange: true, minLength: 1, description: "The node the interface belongs to (a Node resource's id)." },
  mac: {
    type: "string",
    required: true,
    replaceOnChange: true,
    pattern: "^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$",
    description: "The interface's MAC address (from inspection).",
    hint: "Write a MAC address as 52:54:00:12:34:56",
  },
  switchId: { type: "string", required: true, replaceOnChange: true, minLength: 1, description: "The switch the interface is cabled to: a switch id of the provider's `fabrics` setting." },
  switchPort: { type: "string", required: true, replaceOnChange: true, minLength: 1, description: "The switch port the interface is cabled to (e.g. `Ethernet12`, `swp3`, an OVS port name)." },
} as const satisfies Fields;

const outputs = {
  portId: { type: "string", required: true, stable: true, description: "The port's id in the inventory (what NetworkAttachment's `portId` takes)." },
  fabric: { type: "string", required: true, stable: true, description: "The fabric of the port's switch." },
  role: { type: "string", description: "Where the switch port is now: `quarantine`, `provisioning` or `tenant`." },
  originalConfig: { type: "string", stable: true, description: "The switch port's VLAN configuration before this resource took it over (JSON), restored on delete." },
} as const satisfies Fields;

const portIdOf = (mac: string) => `port-${mac.toLowerCase().replace(/-/g, ":")}`;

async function nodeTarget(ctx: ProviderContext, nodeId: unknown): Promise<Record<string, string | undefined>> {
  if (typeof nodeId !== "string") return {};
  const node = await (await ctx.inventory()).getNode(nodeId);
  return { "node.owner": node?.owner, "node.lessee": node?.lessee };
}

/** The change that gives a switch port back a configuration read earlier. */
export function restoreChange(c: SwitchPortConfig): SwitchPortChange {
  if (c.mode === "access") return { kind: "access", port: c.port, vlan: c.vlan!, ...(c.owner ? { owner: c.owner } : {}) };
  if (c.mode === "trunk" && c.trunkVlans !== undefined) {
    return { kind: "trunk", port: c.port, vlans: c.trunkVlans, ...(c.vlan !== undefined ? { nativeVlan: c.vlan, nativeUntagged: c.nativeUntagged ?? true } : {}), ...(c.owner ? { owner: c.owner } : {}) };
  }
  return { kind: "reset", port: c.port };
}

function outputsOf(props: Props, port: PortRecord, fabric: string, role: string | undefined, original: string | undefined): Props {
  return { ...props, portId: port.id, fabric, ...(role ? { role } : {}), ...(original ? { originalConfig: original } : {}) };
}

export const portResource: ResourceDefinition = {
  token: "baremetal:network:Port",
  description:
    "A node's network interface and the switch port it is cabled to. The switch port is taken over: quarantined while the node is in no tenant network, on the provisioning network while it is deployed or cleaned, in its tenant networks otherwise; destroy gives it back its original configuration.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 120,

  check(props, ctx) {
    if (isUnknown(props.switchId)) return [];
    try {
      switchNamed(ctx, props.switchId as string, "switchId");
      if (!isUnknown(props.switchPort)) validatePortName(props.switchPort, "switchPort");
    } catch (e) {
      if (e instanceof BaremetalError && e.property) return [checkFailureOf(e)];
      throw e;
    }
    return [];
  },

  async authorize(ctx, change, props, state) {
    const op = change === "create" ? "baremetal:port:create" : change === "delete" ? "baremetal:port:delete" : "baremetal:port:update";
    authorize(ctx.policy, ctx.caller, op, await nodeTarget(ctx, state?.nodeId ?? props.nodeId));
  },

  async create(ctx, props) {
    const inventory = await ctx.inventory();
    const sw = switchNamed(ctx, props.switchId as string, "switchId");
    const id = portIdOf(props.mac as string);
    if (!(await inventory.getNode(props.nodeId as string))) {
      throw new BaremetalError("validation", `no enrolled node '${props.nodeId}'; pass a Node resource's id`, { property: "nodeId" });
    }
    return withNetworkLock(ctx, inventory, props.nodeId as string, async () => {
      // What the switch port is like before we touch it (a retried create keeps the first reading).
      const known = await inventory.getPort(id);
      const found = await withSwitch(ctx, sw, (d) => d.getPort(props.switchPort as string), ctx.signal);
      if (!found) throw new BaremetalError("not-found", `switch ${sw.id} has no port '${props.switchPort}'`, { property: "switchPort" });
      // A retried create finds the port already ours: its first reading is in the failed create's state, if any.
      const original = known && found.owner?.startsWith("baremetal:") ? { port: found.port, mode: "none" as const } : found;
      const port = await inventory.upsertPort({ id, nodeId: props.nodeId as string, mac: props.mac as string, switchId: sw.id, switchPort: props.switchPort as string, physicalNetwork: sw.fabricName });
      const plans = await planNodePorts(ctx, inventory, port.nodeId);
      await applyPlans(ctx, plans);
      const role = plans.find((p) => p.port.id === id)?.role;
      return { id, outputs: outputsOf(props, port, sw.fabricName, role, JSON.stringify(original)) };
    });
  },

  async read(ctx, id, stored, state) {
    const inventory = await ctx.inventory();
    const port = await inventory.getPort(id);
    if (!port) return undefined;
    const declared: Props = { nodeId: port.nodeId, mac: port.mac, switchId: port.switchId, switchPort: port.switchPort };
    const plan = (await planNodePorts(ctx, inventory, port.nodeId)).find((p) => p.port.id === id);
    if (plan) {
      const actual = await withSwitch(ctx, plan.sw, (d) => d.getPort(port.switchPort), ctx.signal);
      if (!actual) ctx.warn(`switch ${port.switchId} no longer has port ${port.switchPort}`);
      else if (!samePortConfig(actual, plan.expected)) {
        ctx.warn(`switch ${port.switchId} port ${port.switchPort} is ${JSON.stringify(actual)}, expected ${plan.describe}; \`pulumi up\` puts it back`);
      }
    }
    return { id, inputs: { ...(stored ?? {}), ...declared }, outputs: { ...(state ?? {}), ...declared, portId: id, fabric: plan?.sw.fabricName ?? state?.fabric, role: plan?.role } };
  },

  async update(ctx, _id, _olds, news, oldState) {
    // Every input replaces; an update re-applies what the switch port must carry (drift repair).
    const inventory = await ctx.inventory();
    const plans = await syncNodePorts(ctx, inventory, news.nodeId as string);
    return { ...oldState, ...news, role: plans.find((p) => p.port.id === oldState.portId)?.role };
  },

  async delete(ctx, id, props, state) {
    const inventory = await ctx.inventory();
    const port = await inventory.getPort(id);
    if (port) {
      const attached = await inventory.listAttachments({ portId: id });
      if (attached.length) {
        throw new BaremetalError(
          "conflict",
          `port ${id} is attached to ${attached.map((a) => `network ${a.networkId}`).join(", ")}; delete its NetworkAttachments (or release the node's allocation) first`,
        );
      }
      await inventory.removePort(id);
    }
    const original = typeof state.originalConfig === "string" ? (JSON.parse(state.originalConfig) as SwitchPortConfig) : undefined;
    const sw = switchNamed(ctx, props.switchId as string, "switchId");
    const change: SwitchPortChange = original ? restoreChange(original) : { kind: "reset", port: props.switchPort as string };
    await withSwitch(ctx, sw, (d) => d.apply([change], { signal: ctx.signal }), ctx.signal);
    ctx.progress(`switch ${sw.id} port ${props.switchPort} restored`);
  },
};
