/**
 * What each switch port of a node must carry, and making the switches say so.
 *
 * A node port's switch configuration is a function of the inventory alone (never of the order in
 * which stacks ran):
 *   - while the node is being deployed or cleaned (`deploying`, `deploy failed`, `cleaning`,
 *     `clean failed`): the provisioning network of the fabric's mode, as an access port;
 *   - while an allocation holds the node and the port has attachments: those tenant networks
 *     (access, or a trunk with an optional native VLAN);
 *   - otherwise: quarantine (the provisioning VLAN in flat mode).
 * Every change of those inputs (attach, detach, deploy, clean, release) re-derives the
 * configuration under the node's network lock and applies it, so the last writer always writes
 * what the inventory says now. Cutting a node off is therefore a matter of ordering the inventory
 * changes: cleaning sets `cleaning` and syncs BEFORE the disks are touched; an allocation's release
 * detaches every attachment and syncs BEFORE the claim is released (see `isolateForRelease`).
 */
import { randomUUID } from "node:crypto";
import { isBaremetalError } from "../../core/errors";
import type { FabricConfig } from "../../core/fabric-config";
import type { OperationContext, ProviderContext } from "../../core/resource";
import type { SwitchPortChange, SwitchPortConfig } from "../../drivers/kinds/switch";
import type { AttachmentRecord, Inventory, NetworkRecord, NodeRecord, PortRecord } from "../../inventory/types";
import { ensureFabricPool, fabricNamed, infrastructureVlans, type ResolvedSwitch, switchesOf, switchNamed, withSwitch } from "./fabric";

export const PROVISIONING_STATES: ReadonlySet<string> = new Set(["deploying", "deploy failed", "cleaning", "clean failed"]);

export type PortRole = "quarantine" | "provisioning" | "tenant";

export interface PortPlan {
  port: PortRecord;
  sw: ResolvedSwitch;
  role: PortRole;
  change: SwitchPortChange;
  /** The configuration the switch port must read back. */
  expected: SwitchPortConfig;
  /** For messages: "tenant access VLAN 101 (network net-a)". */
  describe: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `work` holding the node's network lock (separate from the node's operation lock, which a
 * deployment holds for minutes): short, waited for rather than refused.
 */
export async function withNetworkLock<T>(ctx: OperationContext, inventory: Inventory, nodeId: string, work: () => Promise<T>): Promise<T> {
  const holder = `${ctx.urn} ${randomUUID()}`;
  let lock;
  for (let attempt = 0; !lock; attempt++) {
    try {
      lock = await inventory.acquireLock(`network:${nodeId}`, holder, "network", 120);
    } catch (e) {
      if (!(isBaremetalError(e) && e.code === "conflict") || Date.now() > ctx.deadline || ctx.signal.aborted) throw e;
      await sleep(Math.min(50 * 2 ** Math.min(attempt, 4), 500));
    }
  }
  try {
    return await work();
  } finally {
    await lock.release().catch(() => undefined);
  }
}

/** The project's own provisioning network on a fabric (private mode), taken from the pool on first use. */
export async function privateProvisioningNetwork(ctx: ProviderContext, inventory: Inventory, fabricName: string, fabric: FabricConfig, project: string): Promise<NetworkRecord> {
  const id = `provisioning-${fabricName}-${project}`;
  const existing = await inventory.getNetwork(id);
  if (existing) return existing;
  await ensureFabricPool(inventory, fabricName, fabric);
  const network = await inventory.createNetwork({ id, name: `provisioning ${project}`, owner: project, fabric: fabricName, pool: fabricName });
  await ensureVlanOnFabric(ctx, fabricName, network.vlan, `provisioning ${project}`.slice(0, 63));
  return network;
}

function ownerMarker(role: PortRole, project?: string): string {
  return role === "tenant" ? `baremetal:tenant:${project ?? "-"}` : `baremetal:${role}`;
}

async function provisioningVlan(ctx: ProviderContext, inventory: Inventory, fabricName: string, fabric: FabricConfig, node: NodeRecord): Promise<number> {
  if ((fabric.provisioningMode ?? "shared") !== "private") return fabric.provisioningVlan!;
  const allocation = node.allocationId ? await inventory.getAllocation(node.allocationId) : undefined;
  const project = allocation?.owner ?? node.lessee ?? node.owner ?? "operator";
  return (await privateProvisioningNetwork(ctx, inventory, fabricName, fabric, project)).vlan;
}

/** What one port of a node must carry now, and why. */
export async function planPort(ctx: ProviderContext, inventory: Inventory, node: NodeRecord, port: PortRecord, attachments: AttachmentRecord[]): Promise<PortPlan> {
  const sw = switchNamed(ctx, port.switchId, "switchId");
  const fabric = sw.fabric;
  const quarantine = (fabric.provisioningMode ?? "shared") === "flat" ? fabric.provisioningVlan! : fabric.quarantineVlan!;
  if (PROVISIONING_STATES.has(node.provisionState)) {
    const vlan = await provisioningVlan(ctx, inventory, sw.fabricName, fabric, node);
    const owner = ownerMarker("provisioning");
    return {
      port, sw, role: "provisioning",
      change: { kind: "access", port: port.switchPort, vlan, owner },
      expected: { port: port.switchPort, mode: "access", vlan, owner },
      describe: `provisioning network (VLAN ${vlan}, ${fabric.provisioningMode ?? "shared"} mode) while ${node.provisionState}`,
    };
  }
  const mine = node.allocationId ? attachments.filter((a) => a.portId === port.id) : [];
  if (mine.length === 0) {
    return {
      port, sw, role: "quarantine",
      change: { kind: "reset", port: port.switchPort, quarantineVlan: quarantine },
      expected: { port: port.switchPort, mode: "access", vlan: quarantine },
      describe: `quarantine (VLAN ${quarantine})`,
    };
  }
  const owner = ownerMarker("tenant", mine[0].owner);
  const access = mine.find((a) => a.mode === "access");
  if (access) {
    return {
      port, sw, role: "tenant",
      change: { kind: "access", port: port.switchPort, vlan: access.vlan, owner },
      expected: { port: port.switchPort, mode: "access", vlan: access.vlan, owner },
      describe: `access VLAN ${access.vlan} (network ${access.networkId})`,
    };
  }
  const native = mine.find((a) => a.native);
  const tagged = mine.filter((a) => !a.native).map((a) => a.vlan).sort((a, b) => a - b);
  return {
    port, sw, role: "tenant",
    change: { kind: "trunk", port: port.switchPort, vlans: tagged, ...(native ? { nativeVlan: native.vlan, nativeUntagged: true } : {}), owner },
    expected: { port: port.switchPort, mode: "trunk", trunkVlans: tagged, ...(native ? { vlan: native.vlan, nativeUntagged: true } : {}), owner },
    describe: `trunk of VLANs ${tagged.join(",") || "(none)"}${native ? ` with native VLAN ${native.vlan}` : ""}`,
  };
}

export async function planNodePorts(ctx: ProviderContext, inventory: Inventory, nodeId: string): Promise<PortPlan[]> {
  const node = await inventory.getNode(nodeId);
  if (!node) return [];
  const ports = await inventory.listPorts({ nodeId });
  if (ports.length === 0) return [];
  const attachments = await inventory.listAttachments({ nodeId });
  const plans: PortPlan[] = [];
  for (const port of ports) plans.push(await planPort(ctx, inventory, node, port, attachments));
  return plans;
}

/** Applies plans: one transaction per switch. Returns the switch transactions made. */
export async function applyPlans(ctx: OperationContext, plans: PortPlan[]): Promise<number> {
  const bySwitch = new Map<string, PortPlan[]>();
  for (const p of plans) bySwitch.set(p.sw.id, [...(bySwitch.get(p.sw.id) ?? []), p]);
  let transactions = 0;
  for (const group of bySwitch.values()) {
    const result = await withSwitch(ctx, group[0].sw, (driver) => driver.apply(group.map((p) => p.change), { signal: ctx.signal }), ctx.signal);
    transactions += result.transactions;
    if (result.changed) for (const p of group) ctx.progress(`switch ${p.sw.id} port ${p.port.switchPort}: ${p.describe}`);
  }
  return transactions;
}

/** Re-derives and applies the switch configuration of every port of the node (under its network lock). */
export async function syncNodePorts(ctx: OperationContext, inventory: Inventory, nodeId: string): Promise<PortPlan[]> {
  return withNetworkLock(ctx, inventory, nodeId, async () => {
    const plans = await planNodePorts(ctx, inventory, nodeId);
    await applyPlans(ctx, plans);
    return plans;
  });
}

/**
 * Before an allocation's claim is released: under the node's network lock, every attachment of
 * the node is removed (with its addresses) and its ports are moved to quarantine; only then does
 * `release` run, still under the lock. No attachment can be made in between (attaching takes the
 * same lock and checks the claim), so the node never re-enters the pool reachable from a tenant
 * network, and the next tenant never inherits the last one's attachments.
 */
export async function isolateForRelease(ctx: OperationContext, inventory: Inventory, nodeId: string, release: () => Promise<void>): Promise<number> {
  return withNetworkLock(ctx, inventory, nodeId, async () => {
    const attachments = await inventory.listAttachments({ nodeId });
    for (const a of attachments) {
      await releaseAttachmentAddresses(inventory, a.networkId, a.id);
      await inventory.detach(a.id);
    }
    const plans = await planNodePorts(ctx, inventory, nodeId);
    // With no attachment left, a port is in quarantine (or provisioning while cleaning).
    await applyPlans(ctx, plans);
    await release();
    return attachments.length;
  });
}

export async function releaseAttachmentAddresses(inventory: Inventory, networkId: string, attachmentId: string): Promise<void> {
  for (const subnet of await inventory.listSubnets({ networkId })) await inventory.releaseAddress(subnet.id, attachmentId);
}

// ---- the fabric's trunks and VLAN registries ---------------------------------------------------

/** Creates the VLAN on every switch of the fabric and adds it (and the provisioning VLAN) to their trunk ports. */
export async function ensureVlanOnFabric(ctx: ProviderContext, fabricName: string, vlan: number, name: string, signal?: AbortSignal): Promise<void> {
  const fabric = fabricNamed(ctx, fabricName, "fabric");
  const carried = [vlan, ...(fabric.provisioningVlan !== undefined ? [fabric.provisioningVlan] : [])];
  for (const sw of switchesOf(ctx, fabricName)) {
    await withSwitch(ctx, sw, (d) => d.apply([{ kind: "ensure-vlan", vlan, name }, ...(sw.settings.trunkPorts ?? []).map((port) => ({ kind: "trunk-add" as const, port, vlans: carried }))], { signal }), signal);
  }
}

/** Prunes the VLAN from the fabric's trunk ports and the switches' registries. */
export async function removeVlanFromFabric(ctx: ProviderContext, fabricName: string, vlan: number, signal?: AbortSignal): Promise<void> {
  for (const sw of switchesOf(ctx, fabricName)) {
    const trunkPorts = sw.settings.trunkPorts ?? [];
    await withSwitch(
      ctx,
      sw,
      async (d) => {
        const current = new Map((await d.listPorts()).map((p) => [p.port, p]));
        const removals = trunkPorts
          .filter((port) => current.get(port)?.mode === "trunk" && current.get(port)?.trunkVlans?.includes(vlan))
          .map((port) => ({ kind: "trunk-remove" as const, port, vlans: [vlan] }));
        await d.apply([...removals, { kind: "delete-vlan", vlan }], { signal });
      },
      signal,
    );
  }
}

/**
 * Once the fabric has no network left (checked after the caller's own network is gone, so of
 * two networks deleted at once the later sees none), a trunk port carrying nothing but the
 * infrastructure VLANs goes back to the switch's default, as it was before any network. Guarded:
 * a network created meanwhile adds its VLAN, the guard fails, and the port stays as it is.
 */
export async function releaseIdleTrunks(ctx: ProviderContext, inventory: Inventory, fabricName: string, signal?: AbortSignal): Promise<void> {
  if ((await inventory.listNetworks({ fabric: fabricName })).length) return;
  const fabric = fabricNamed(ctx, fabricName, "fabric");
  const infra = new Set(infrastructureVlans(fabric));
  for (const sw of switchesOf(ctx, fabricName)) {
    await withSwitch(
      ctx,
      sw,
      async (d) => {
        for (const port of sw.settings.trunkPorts ?? []) {
          const now = await d.getPort(port);
          if (!now || now.mode !== "trunk" || now.trunkVlans === undefined || !now.trunkVlans.every((v) => infra.has(v))) continue;
          await d.apply([{ kind: "reset", port }], { signal, expect: [{ port, mode: "trunk", trunkVlans: now.trunkVlans }] }).catch((e) => {
            if (!(isBaremetalError(e) && e.code === "conflict")) throw e; // changed meanwhile: in use again
          });
        }
      },
      signal,
    );
  }
}

/** Which of the fabric's switches lack the VLAN in their registry or on a trunk port (for drift). */
export async function fabricVlanDrift(ctx: ProviderContext, fabricName: string, vlan: number): Promise<string[]> {
  const problems: string[] = [];
  for (const sw of switchesOf(ctx, fabricName)) {
    await withSwitch(ctx, sw, async (d) => {
      if (!(await d.listVlans()).some((v) => v.id === vlan)) problems.push(`switch ${sw.id} has no VLAN ${vlan}`);
      for (const port of sw.settings.trunkPorts ?? []) {
        const p = await d.getPort(port);
        if (!p) problems.push(`switch ${sw.id} has no trunk port ${port}`);
        else if (p.mode !== "trunk" || (p.trunkVlans !== undefined && !p.trunkVlans.includes(vlan))) problems.push(`switch ${sw.id} trunk port ${port} does not carry VLAN ${vlan}`);
      }
    });
  }
  return problems;
}
