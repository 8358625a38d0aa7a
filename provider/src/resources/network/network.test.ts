/**
 * Tenant networks end to end inside one process: the resource handlers (Port, TenantNetwork,
 * NetworkAttachment) driven directly against fake switches and a private in-memory inventory.
 */
import { callerOf } from "../../core/auth";
import { toProviderConfig } from "../../core/config";
import { type FabricConfig, fabricProblems } from "../../core/fabric-config";
import { Policy } from "../../core/policy";
import type { OperationContext, Props } from "../../core/resource";
import { UNKNOWN } from "../../core/values";
import { type FakeSwitch, fakeSwitch, resetFakeSwitches } from "../../drivers/fake-switch";
import { type Inventory, openInventory } from "../../inventory";
import { allocationResource } from "../compute/allocation";
import { networkAttachmentResource as attachments } from "./attachment";
import { networkDataFor } from "./network-data";
import { portResource } from "./port";
import { tenantNetworkResource as networks } from "./tenant-network";
import { isolateForRelease, syncNodePorts } from "./wiring";

const policy = Policy.defaults();

const fabric = (over: Partial<FabricConfig> = {}): FabricConfig => ({
  vlanRanges: ["100-199"],
  quarantineVlan: 999,
  provisioningMode: "shared",
  provisioningVlan: 900,
  switches: {
    tor1: { driver: "fake", address: "fake://tor1", trunkPorts: ["uplink"] },
    tor2: { driver: "fake", address: "fake://tor2", trunkPorts: ["uplink"] },
  },
  ...over,
});

interface TestCtx extends OperationContext {
  warnings: string[];
  /** The same provider, running another resource (its name and URN). */
  as(name: string): TestCtx;
}

function makeCtx(inventory: Inventory, f: FabricConfig, who: { project?: string; roles?: string[] } = {}): TestCtx {
  const config = toProviderConfig({ fabrics: { rack1: f }, inventoryUrl: "sqlite::memory:", ...who });
  const warnings: string[] = [];
  const build = (name: string): TestCtx => ({
    config,
    caller: callerOf(config),
    policy,
    inventory: async () => inventory,
    name,
    urn: `urn:pulumi:test::network::baremetal:test::${name}`,
    signal: new AbortController().signal,
    deadline: Date.now() + 60_000,
    progress: () => undefined,
    warn: (m) => warnings.push(m),
    warnings,
    as: build,
  });
  return build("test");
}

const sw = (id: string): FakeSwitch => fakeSwitch(`fake://${id}`);
const portOf = (id: string, port: string) => sw(id).ports.get(port);
const MAC1 = "52:54:00:00:00:01";
const MAC2 = "52:54:00:00:00:02";
const TENANT_OP = "baremetal:tenant:operator";

let inventory: Inventory;
let ctx: TestCtx;

beforeEach(async () => {
  resetFakeSwitches();
  for (const id of ["tor1", "tor2"]) {
    fakeSwitch(`fake://${id}`, { ports: ["p1", "p2", "p3", "uplink", { port: "p4", mode: "trunk", trunkVlans: [5, 6] }] });
  }
  inventory = await openInventory("sqlite::memory:");
  ctx = makeCtx(inventory, fabric());
});

afterEach(async () => {
  await inventory.close();
});

async function enroll(nodeId: string, owner?: string) {
  await inventory.upsertNode({ id: nodeId, name: nodeId, provisionState: "available", ...(owner ? { owner } : {}) });
}

async function claim(nodeId: string, owner?: string): Promise<string> {
  const c = await inventory.claimNode({ allocationId: `alloc-${nodeId}`, name: nodeId, owner, candidates: [nodeId] });
  return c.allocation.id;
}

async function addPort(c: TestCtx, nodeId: string, mac: string, switchPort: string, switchId = "tor1") {
  const props = { nodeId, mac, switchId, switchPort };
  const r = await portResource.create(c.as(`port-${switchPort}`), props);
  return { id: r.id, props, state: r.outputs };
}

async function addNetwork(c: TestCtx, name: string, props: Props = {}) {
  const r = await networks.create(c.as(name), { name, ...props });
  return { id: r.id, props: { name, ...props }, state: r.outputs, vlan: r.outputs.vlanId as number };
}

async function attach(c: TestCtx, name: string, props: Props) {
  const full = { mode: "access", native: false, ...props };
  const r = await attachments.create(c.as(name), full);
  return { id: r.id, props: full, state: r.outputs };
}

/** A node allocated to the operator with one port on tor1 p1. */
async function allocatedNode(nodeId = "node-1", mac = MAC1, switchPort = "p1") {
  await enroll(nodeId);
  const allocationId = await claim(nodeId);
  const port = await addPort(ctx, nodeId, mac, switchPort);
  return { allocationId, port };
}

describe("fabricProblems", () => {
  const ovs = (over = {}) => ({ driver: "ovsdb", address: "tcp:10.0.0.1:6640", bridge: "br0", ...over });

  test("each problem names its path", () => {
    expect(fabricProblems({ a: { vlanRanges: ["100-199"], provisioningVlan: 900, switches: {} } })).toEqual([
      "fabrics.a.quarantineVlan is required in shared mode: the VLAN where ports in no tenant network sit",
    ]);
    expect(fabricProblems({ a: { vlanRanges: ["100-199"], quarantineVlan: 999, provisioningVlan: 150, switches: {} } })).toEqual([
      "fabrics.a.provisioningVlan 150 lies inside vlanRanges; choose a VLAN outside the tenant pool",
    ]);
    const twice = fabricProblems({
      a: { vlanRanges: ["100-199"], quarantineVlan: 999, provisioningVlan: 900, switches: { tor1: ovs() } },
      b: { vlanRanges: ["200-299"], quarantineVlan: 998, provisioningVlan: 901, switches: { tor1: ovs() } },
    });
    expect(twice).toEqual(["switch id 'tor1' is in fabrics a and b; switch ids must be unique across fabrics"]);
    expect(fabricProblems({ a: { vlanRanges: ["100-199"], quarantineVlan: 999, provisioningVlan: 900, switches: { s1: ovs({ bridge: undefined }) } } })).toEqual([
      "fabrics.a.switches.s1.bridge is required for an ovsdb switch: the bridge that is the switch (e.g. br0)",
    ]);
  });

  test("flat mode without a quarantine VLAN is fine, and so is the test fabric", () => {
    expect(fabricProblems({ a: { vlanRanges: ["100-199"], provisioningMode: "flat", provisioningVlan: 900, switches: { s1: ovs() } } })).toEqual([]);
    expect(fabricProblems({ rack1: fabric() })).toEqual([]);
    expect(fabricProblems({ rack1: fabric({ provisioningMode: "private", provisioningVlan: undefined }) })).toEqual([]);
  });
});

describe("Port", () => {
  test("create quarantines the switch port and keeps its original configuration; delete restores it", async () => {
    await enroll("node-1");
    const p = await addPort(ctx, "node-1", MAC1, "p4");
    expect(p.id).toBe(`port-${MAC1}`);
    expect(p.state).toMatchObject({ portId: p.id, fabric: "rack1", role: "quarantine" });
    expect(JSON.parse(p.state.originalConfig as string)).toEqual({ port: "p4", mode: "trunk", trunkVlans: [5, 6] });
    expect(portOf("tor1", "p4")).toEqual({ port: "p4", mode: "access", vlan: 999 });
    expect(portOf("tor2", "p4")).toEqual({ port: "p4", mode: "trunk", trunkVlans: [5, 6] }); // other switch untouched

    await portResource.delete(ctx, p.id, p.props, p.state);
    expect(portOf("tor1", "p4")).toEqual({ port: "p4", mode: "trunk", trunkVlans: [5, 6] });
    expect(await inventory.getPort(p.id)).toBeUndefined();
  });

  test("flat mode quarantines on the provisioning VLAN; a port of no configuration comes back as none", async () => {
    const flat = makeCtx(inventory, fabric({ provisioningMode: "flat", quarantineVlan: undefined }));
    await enroll("node-1");
    const p = await addPort(flat, "node-1", MAC1, "p2");
    expect(portOf("tor1", "p2")).toEqual({ port: "p2", mode: "access", vlan: 900 });
    expect(JSON.parse(p.state.originalConfig as string)).toEqual({ port: "p2", mode: "none" });
    await portResource.delete(flat, p.id, p.props, p.state);
    expect(portOf("tor1", "p2")).toEqual({ port: "p2", mode: "none" });
  });

  test("delete is refused while the port is attached, naming the network", async () => {
    const { port } = await allocatedNode();
    const net = await addNetwork(ctx, "net-a");
    await attach(ctx, "att", { portId: port.id, networkId: net.id });
    await expect(portResource.delete(ctx, port.id, port.props, port.state)).rejects.toMatchObject({
      code: "conflict",
      message: expect.stringContaining(`attached to network ${net.id}`),
    });
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 100, owner: TENANT_OP });
  });
});

describe("TenantNetwork", () => {
  test("VLANs from the pool, on every switch and trunk; deletes prune only their own VLAN", async () => {
    const a = await addNetwork(ctx, "net-a");
    expect(a.state).toMatchObject({ vlanId: 100, owner: "operator", fabricName: "rack1", subnetIds: [] });
    for (const id of ["tor1", "tor2"]) {
      expect(sw(id).vlans.get(100)).toBe("operator/net-a");
      expect(portOf(id, "uplink")).toEqual({ port: "uplink", mode: "trunk", trunkVlans: [100, 900] });
    }
    const b = await addNetwork(ctx, "net-b");
    expect(b.vlan).toBe(101);
    for (const id of ["tor1", "tor2"]) expect(portOf(id, "uplink")).toEqual({ port: "uplink", mode: "trunk", trunkVlans: [100, 101, 900] });

    await networks.delete(ctx, a.id, a.props, a.state);
    for (const id of ["tor1", "tor2"]) {
      expect([...sw(id).vlans.keys()]).toEqual([101]);
      expect(portOf(id, "uplink")).toEqual({ port: "uplink", mode: "trunk", trunkVlans: [101, 900] });
    }
    // The freed VLAN is the lowest free one again.
    const c = await addNetwork(ctx, "net-c");
    expect(c.vlan).toBe(100);
    await networks.delete(ctx, c.id, c.props, c.state);
    await networks.delete(ctx, b.id, b.props, b.state);
    for (const id of ["tor1", "tor2"]) {
      expect(sw(id).vlans.size).toBe(0);
      expect(portOf(id, "uplink")).toEqual({ port: "uplink", mode: "none" });
    }
    expect(await inventory.listNetworks()).toEqual([]);
  });

  test("check refuses the quarantine VLAN and an unknown fabric", async () => {
    expect(await networks.check!({ vlan: 999 }, ctx)).toEqual([{ property: "vlan", reason: expect.stringContaining("quarantine VLAN") }]);
    expect(await networks.check!({ vlan: 900 }, ctx)).toEqual([{ property: "vlan", reason: expect.stringContaining("provisioning VLAN") }]);
    expect(await networks.check!({ fabric: "rack9" }, ctx)).toEqual([{ property: "fabric", reason: expect.stringContaining("no fabric 'rack9'") }]);
    expect(await networks.check!({ vlan: 150 }, ctx)).toEqual([]);
  });
});

describe("NetworkAttachment", () => {
  const v4 = { cidr: "10.10.0.0/24", gateway: "10.10.0.1" };

  test("refused for a node that is not allocated, naming portId", async () => {
    await enroll("node-1");
    const port = await addPort(ctx, "node-1", MAC1, "p1");
    const net = await addNetwork(ctx, "net-a");
    await expect(attach(ctx, "att", { portId: port.id, networkId: net.id })).rejects.toMatchObject({
      code: "validation",
      property: "portId",
      message: expect.stringContaining("is not allocated"),
    });
    expect(await inventory.listAttachments()).toEqual([]);
  });

  test("refused when the network is another project's, even for the operator", async () => {
    const { port } = await allocatedNode();
    const foreign = await addNetwork(ctx, "net-p2", { project: "p2" });
    await expect(attach(ctx, "att", { portId: port.id, networkId: foreign.id })).rejects.toMatchObject({
      code: "auth",
      property: "networkId",
      message: expect.stringContaining("belongs to project p2, but node node-1 is held by the operator"),
    });
    // A tenant holding a node cannot reach into another tenant's network either.
    const p1 = makeCtx(inventory, fabric(), { project: "p1", roles: ["member"] });
    await enroll("node-2", "p1");
    await claim("node-2", "p1");
    const port2 = await addPort(ctx, "node-2", MAC2, "p2");
    await expect(attach(p1, "att2", { portId: port2.id, networkId: foreign.id })).rejects.toMatchObject({ code: "auth", property: "networkId" });
    expect(portOf("tor1", "p2")).toEqual({ port: "p2", mode: "access", vlan: 999 });
  });

  test("authorize: a port not known yet (a preview) is judged when the change is made; a known port of another project's node is refused", async () => {
    const p1 = makeCtx(inventory, fabric(), { project: "p1", roles: ["member"] });
    await enroll("node-1", "p1");
    await enroll("node-2", "p2");
    const mine = await addPort(ctx, "node-1", MAC1, "p1");
    const theirs = await addPort(ctx, "node-2", MAC2, "p2");
    const net = await addNetwork(p1, "net-p1");
    const foreign = await addNetwork(ctx, "net-p2", { project: "p2" });
    await expect(attachments.authorize!(p1, "create", { portId: UNKNOWN, networkId: UNKNOWN })).resolves.toBeUndefined();
    await expect(attachments.authorize!(p1, "create", { portId: UNKNOWN, networkId: net.id })).resolves.toBeUndefined();
    await expect(attachments.authorize!(p1, "create", { portId: mine.id, networkId: net.id })).resolves.toBeUndefined();
    await expect(attachments.authorize!(p1, "create", { portId: theirs.id, networkId: net.id })).rejects.toMatchObject({ code: "auth", message: expect.stringContaining("baremetal:node:vif:attach denied for project p1") });
    await expect(attachments.authorize!(p1, "create", { portId: UNKNOWN, networkId: foreign.id })).rejects.toMatchObject({ code: "auth", message: expect.stringContaining("baremetal:network:attach denied for project p1") });
  });

  test("access: the port joins the VLAN with an address of the subnet; delete quarantines and frees it", async () => {
    const { port } = await allocatedNode();
    const net = await addNetwork(ctx, "net-a", { subnets: [v4] });
    const att = await attach(ctx, "att", { portId: port.id, networkId: net.id });
    expect(att.state).toMatchObject({ vlanId: 100, nodeId: "node-1", mac: MAC1, switchId: "tor1", switchPort: "p1" });
    expect(att.state.ipAddresses).toEqual([{ address: "10.10.0.2", cidr: "10.10.0.0/24", gateway: "10.10.0.1", ipVersion: 4, subnetId: `${net.id}:10.10.0.0/24` }]);
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 100, owner: TENANT_OP });

    await attachments.delete(ctx, att.id, att.props, att.state);
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 999 });
    expect(await inventory.listAddresses(`${net.id}:10.10.0.0/24`)).toEqual([]);
    expect(await inventory.listAttachments()).toEqual([]);
  });

  test("two trunk attachments, one native, make a trunk with a native VLAN", async () => {
    const { port } = await allocatedNode();
    const a = await addNetwork(ctx, "net-a");
    const b = await addNetwork(ctx, "net-b");
    await attach(ctx, "att-a", { portId: port.id, networkId: a.id, mode: "trunk", native: true });
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "trunk", trunkVlans: [], vlan: 100, nativeUntagged: true, owner: TENANT_OP });
    await attach(ctx, "att-b", { portId: port.id, networkId: b.id, mode: "trunk" });
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "trunk", trunkVlans: [101], vlan: 100, nativeUntagged: true, owner: TENANT_OP });
  });

  test("changing networkId moves the port in one switch transaction and releases the old address", async () => {
    const { port } = await allocatedNode();
    const a = await addNetwork(ctx, "net-a", { subnets: [v4] });
    const b = await addNetwork(ctx, "net-b", { subnets: [{ cidr: "10.20.0.0/24" }] });
    const att = await attach(ctx, "att", { portId: port.id, networkId: a.id });
    const before = sw("tor1").transactions;
    const news = { ...att.props, networkId: b.id };
    const state = await attachments.update(ctx.as("att"), att.id, att.props, news, att.state);
    expect(sw("tor1").transactions - before).toBe(1);
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 101, owner: TENANT_OP });
    expect(state).toMatchObject({ networkId: b.id, vlanId: 101, ipAddresses: [expect.objectContaining({ address: "10.20.0.1", cidr: "10.20.0.0/24" })] });
    expect(await inventory.listAddresses(`${a.id}:10.10.0.0/24`)).toEqual([]);
    expect((await inventory.listAttachments({ nodeId: "node-1" })).map((x) => [x.id, x.networkId])).toEqual([[att.id, b.id]]);
  });

  test("a refused move leaves the attachment, its address and the switch port as they were", async () => {
    const { port } = await allocatedNode();
    const a = await addNetwork(ctx, "net-a", { subnets: [v4] });
    const foreign = await addNetwork(ctx, "net-p2", { project: "p2" });
    const att = await attach(ctx, "att", { portId: port.id, networkId: a.id });
    await expect(attachments.update(ctx.as("att"), att.id, att.props, { ...att.props, networkId: foreign.id }, att.state)).rejects.toMatchObject({
      code: "auth",
      property: "networkId",
    });
    expect((await inventory.listAttachments({ nodeId: "node-1" })).map((x) => x.networkId)).toEqual([a.id]);
    expect((await inventory.listAddresses(`${a.id}:10.10.0.0/24`)).map((r) => [r.address, r.owner])).toEqual([["10.10.0.2", att.id]]);
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 100, owner: TENANT_OP });
  });

  test("a move that fails half-way (the requested address is taken) puts the old attachment and address back", async () => {
    const { port } = await allocatedNode();
    const a = await addNetwork(ctx, "net-a", { subnets: [v4] });
    const b = await addNetwork(ctx, "net-b", { subnets: [{ cidr: "10.20.0.0/24" }] });
    const att = await attach(ctx, "att", { portId: port.id, networkId: a.id });
    await inventory.allocateAddress({ subnetId: `${b.id}:10.20.0.0/24`, owner: "someone-else", address: "10.20.0.7" });
    await expect(
      attachments.update(ctx.as("att"), att.id, att.props, { ...att.props, networkId: b.id, addresses: ["10.20.0.7"] }, att.state),
    ).rejects.toMatchObject({ code: "conflict" });
    expect((await inventory.listAttachments({ nodeId: "node-1" })).map((x) => x.networkId)).toEqual([a.id]);
    expect((await inventory.listAddresses(`${a.id}:10.10.0.0/24`)).map((r) => [r.address, r.owner])).toEqual([["10.10.0.2", att.id]]);
    expect((await inventory.listAddresses(`${b.id}:10.20.0.0/24`)).map((r) => r.owner)).toEqual(["someone-else"]);
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 100, owner: TENANT_OP });
  });
});

describe("node state drives the port", () => {
  test("cleaning puts it on the provisioning VLAN, available back in its tenant network", async () => {
    const { port } = await allocatedNode();
    const net = await addNetwork(ctx, "net-a");
    await attach(ctx, "att", { portId: port.id, networkId: net.id });
    await inventory.setProvisionState("node-1", "cleaning");
    const plans = await syncNodePorts(ctx, inventory, "node-1");
    expect(plans.map((p) => p.role)).toEqual(["provisioning"]);
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 900, owner: "baremetal:provisioning" });
    await inventory.setProvisionState("node-1", "available");
    await syncNodePorts(ctx, inventory, "node-1");
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 100, owner: TENANT_OP });
  });

  test("private mode: a per-project provisioning network with a pool VLAN", async () => {
    const priv = fabric({ provisioningMode: "private", provisioningVlan: undefined });
    const op = makeCtx(inventory, priv);
    const p1 = makeCtx(inventory, priv, { project: "p1", roles: ["member"] });
    await enroll("node-1", "p1");
    await claim("node-1", "p1");
    const port = await addPort(op, "node-1", MAC1, "p1");
    const net = await addNetwork(p1, "net-a");
    expect(net.state.owner).toBe("p1");
    await attach(p1, "att", { portId: port.id, networkId: net.id });
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 100, owner: "baremetal:tenant:p1" });

    await inventory.setProvisionState("node-1", "deploying");
    await syncNodePorts(p1, inventory, "node-1");
    const provisioning = await inventory.getNetwork("provisioning-rack1-p1");
    expect(provisioning).toMatchObject({ owner: "p1", fabric: "rack1", pool: "rack1", vlan: 101 });
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 101, owner: "baremetal:provisioning" });
    for (const id of ["tor1", "tor2"]) {
      expect(sw(id).vlans.get(101)).toBe("provisioning p1");
      expect(portOf(id, "uplink")).toEqual({ port: "uplink", mode: "trunk", trunkVlans: [100, 101] });
    }
    // Taken once: the next sync reuses it.
    await inventory.setProvisionState("node-1", "clean failed");
    await syncNodePorts(p1, inventory, "node-1");
    expect((await inventory.listNetworks({ owner: "p1" })).map((n) => n.vlan).sort()).toEqual([100, 101]);
  });
});

describe("isolateForRelease", () => {
  test("quarantines the port and drops attachments and addresses before the release runs", async () => {
    const { allocationId, port } = await allocatedNode();
    const a = await addNetwork(ctx, "net-a", { subnets: [{ cidr: "10.10.0.0/24" }] });
    const b = await addNetwork(ctx, "net-b");
    await attach(ctx, "att-a", { portId: port.id, networkId: a.id, mode: "trunk", native: true });
    await attach(ctx, "att-b", { portId: port.id, networkId: b.id, mode: "trunk" });
    const seen: unknown[] = [];
    const detached = await isolateForRelease(ctx, inventory, "node-1", async () => {
      seen.push(portOf("tor1", "p1"), (await inventory.getNode("node-1"))?.allocationId, (await inventory.listAttachments()).length);
      await inventory.releaseClaim(allocationId);
    });
    expect(detached).toBe(2);
    // At release time the switch port was already quarantined, the node still claimed, no attachment left.
    expect(seen).toEqual([{ port: "p1", mode: "access", vlan: 999 }, allocationId, 0]);
    expect(await inventory.listAddresses(`${a.id}:10.10.0.0/24`)).toEqual([]);
    expect((await inventory.getNode("node-1"))?.allocationId).toBeUndefined();
  });

  test("deleting an Allocation goes through it", async () => {
    const { allocationId, port } = await allocatedNode();
    const net = await addNetwork(ctx, "net-a");
    await attach(ctx, "att", { portId: port.id, networkId: net.id });
    await allocationResource.delete(ctx, allocationId, {}, {});
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 999 });
    expect(await inventory.listAttachments()).toEqual([]);
    expect((await inventory.getAllocation(allocationId))?.state).toBe("released");
  });
});

describe("drift", () => {
  test("an attached port moved by hand shows as a networkId change; update puts it back", async () => {
    const { port } = await allocatedNode();
    const net = await addNetwork(ctx, "net-a");
    const att = await attach(ctx, "att", { portId: port.id, networkId: net.id });
    const clean = await attachments.read(ctx, att.id, att.props, att.state);
    expect(clean?.inputs.networkId).toBe(net.id);
    expect(ctx.warnings).toEqual([]);

    sw("tor1").setPort({ port: "p1", mode: "access", vlan: 555 });
    const drifted = await attachments.read(ctx, att.id, att.props, att.state);
    expect(drifted?.inputs.networkId).not.toBe(net.id);
    expect(drifted?.inputs.networkId).toBe(`${net.id} (switch port found access VLAN 555)`);
    expect(ctx.warnings).toEqual([expect.stringContaining("switch tor1 port p1 is access VLAN 555, expected access VLAN 100")]);

    await attachments.update(ctx.as("att"), att.id, att.props, att.props, att.state);
    expect(portOf("tor1", "p1")).toEqual({ port: "p1", mode: "access", vlan: 100, owner: TENANT_OP });
    expect((await attachments.read(ctx, att.id, att.props, att.state))?.inputs.networkId).toBe(net.id);
  });

  test("a trunk port that lost the network's VLAN shows as a name change; update puts it back", async () => {
    const net = await addNetwork(ctx, "net-a");
    sw("tor2").setPort({ port: "uplink", mode: "trunk", trunkVlans: [900] });
    const drifted = await networks.read(ctx, net.id, net.props, net.state);
    expect(drifted?.inputs.name).toBe("net-a (switches out of sync: switch tor2 trunk port uplink does not carry VLAN 100)");
    expect(ctx.warnings).toEqual([expect.stringContaining("network net-a (VLAN 100): switch tor2 trunk port uplink does not carry VLAN 100")]);

    await networks.update(ctx.as("net-a"), net.id, net.props, net.props, net.state);
    expect(portOf("tor2", "uplink")).toEqual({ port: "uplink", mode: "trunk", trunkVlans: [100, 900] });
    expect((await networks.read(ctx, net.id, net.props, net.state))?.inputs.name).toBe("net-a");
  });
});

describe("networkDataFor", () => {
  test("phy and VLAN links, static addresses, default routes only with a gateway", async () => {
    const { port } = await allocatedNode();
    const port2 = await addPort(ctx, "node-1", MAC2, "p2");
    const a = await addNetwork(ctx, "net-a", { subnets: [{ cidr: "10.10.0.0/24", gateway: "10.10.0.1" }, { cidr: "2001:db8:10::/64" }] });
    const b = await addNetwork(ctx, "net-b", { subnets: [{ cidr: "10.20.0.0/25" }] });
    expect(await networkDataFor(inventory, "node-1")).toBeUndefined();
    await attach(ctx, "att-a", { portId: port.id, networkId: a.id });
    await attach(ctx, "att-b", { portId: port2.id, networkId: b.id, mode: "trunk" });
    expect(portOf("tor1", "p2")).toEqual({ port: "p2", mode: "trunk", trunkVlans: [101], owner: TENANT_OP });

    expect(await networkDataFor(inventory, "node-1")).toEqual({
      links: [
        { id: "eth-525400000001", type: "phy", ethernet_mac_address: MAC1 },
        { id: "eth-525400000002", type: "phy", ethernet_mac_address: MAC2 },
        { id: "eth-525400000002.101", type: "vlan", vlan_link: "eth-525400000002", vlan_id: 101, vlan_mac_address: MAC2 },
      ],
      networks: [
        {
          id: `${a.id}-ipv4`, type: "ipv4", link: "eth-525400000001", ip_address: "10.10.0.2", netmask: "255.255.255.0", network_id: a.id,
          routes: [{ network: "0.0.0.0", netmask: "0.0.0.0", gateway: "10.10.0.1" }],
        },
        { id: `${a.id}-ipv6`, type: "ipv6", link: "eth-525400000001", ip_address: "2001:db8:10::1", netmask: "ffff:ffff:ffff:ffff::", network_id: a.id, routes: [] },
        { id: `${b.id}-ipv4`, type: "ipv4", link: "eth-525400000002.101", ip_address: "10.20.0.1", netmask: "255.255.255.128", network_id: b.id, routes: [] },
      ],
      services: [],
    });
  });
});
