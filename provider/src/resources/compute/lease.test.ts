/**
 * Leases without a service (in process, a real SQLite inventory, the lab's BMC and installer): the
 * owner leases its node, the lessee allocates and deploys it under Ironic's lessee rules, and
 * once the end passed `pendingChanges` reports it and the update (what the next `up` runs) ends
 * the lease: undeployed and cleaned, allocation released, lessee cleared, every step audited.
 * Also: who may lease (the owner's managers; not another project), overlapping windows refused,
 * and the reaper of ../../service/leases.ts: a pending lease activated at its start, and two
 * reapers on one database ending a lease once.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Caller } from "../../core/auth";
import { ProviderHost } from "../../core/host";
import type { OperationContext, Props, ResourceDefinition } from "../../core/resource";
import type { Inventory } from "../../inventory/types";
import { type Lab, startLab } from "../../lab/lab";
import { startLeaseReaper } from "../../service/leases";
import { allocationResource } from "./allocation";
import { deploymentResource } from "./deployment";
import { leaseResource } from "./lease";
import { nodeResource } from "./node";

jest.setTimeout(120_000);

const who = (projectId: string | undefined, roles: string[] = ["manager", "member"]): Caller => ({ projectId, roles, operator: projectId === undefined });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("Lease without a service (lab BMC, SQLite inventory)", () => {
  const dir = mkdtempSync(join(tmpdir(), "lease-test-"));
  let lab: Lab;
  let host: ProviderHost;
  let inv: Inventory;
  let nodeIds: string[];
  let imageUrl: string;

  const ctx = (def: ResourceDefinition, caller: Caller, name = "r"): { c: OperationContext; done: () => void } => {
    const op = (h: ProviderHost) => h.operation(def, `urn:pulumi:test::lease::${def.token}::${name}`, name, 0, { progress: () => undefined, warn: () => undefined });
    const { ctx: c, done } = op(host);
    return { c: { ...c, caller }, done };
  };
  const run = async <T>(def: ResourceDefinition, caller: Caller, f: (c: OperationContext) => Promise<T>, name?: string): Promise<T> => {
    const { c, done } = ctx(def, caller, name);
    try {
      return await f(c);
    } finally {
      done();
    }
  };
  const authorize = (def: ResourceDefinition, caller: Caller, change: "create" | "update" | "delete", inputs: Props, state?: Props) =>
    def.authorize!({ ...host.providerContext(), caller }, change, inputs, state);

  beforeAll(async () => {
    lab = await startLab({ systems: 3, bootSeconds: 0, installSeconds: 1 });
    const image = randomBytes(64 * 1024);
    lab.imageStore.images.set("installer.img", image);
    imageUrl = `${lab.info.imageStore.url}/installer.img#sha256=${createHash("sha256").update(image).digest("hex")}`;
    const settings: Record<string, unknown> = { inventoryUrl: `sqlite://${join(dir, "inventory.db")}` };
    for (const [k, v] of Object.entries(lab.info.providerConfig)) settings[k.replace(/^baremetal:/, "")] = v;
    host = new ProviderHost();
    host.configure(settings);
    inv = await host.providerContext().inventory();
    nodeIds = [];
    for (const n of lab.info.nodes.slice(0, 3)) {
      const id = new URL(n.systemUri, n.address).href;
      await inv.upsertNode({ id, name: n.name, owner: "project-o", provisionState: "available" });
      nodeIds.push(id);
    }
  });

  afterAll(async () => {
    await host?.close();
    await lab?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the owner leases its node; the lessee deploys it; after the end the due update undeploys, releases, clears the lessee and audits each step", async () => {
    const owner = who("project-o");
    const lessee = who("project-a");
    const nodeId = nodeIds[0];
    const endTime = new Date(Date.now() + 8000).toISOString();
    const props: Props = { nodeId, lessee: "project-a", endTime };

    // Only the node's owner (its managers) and the system admins may lease it.
    await expect(authorize(leaseResource, who("project-b"), "create", props)).rejects.toMatchObject({ code: "auth", httpStatus: 403 });
    await expect(authorize(leaseResource, who("project-o", ["member"]), "create", props)).rejects.toMatchObject({ code: "auth" });
    await authorize(leaseResource, who("system", ["admin"]), "create", props);
    await authorize(leaseResource, owner, "create", props);
    // Before the lease the lessee cannot get the node.
    await expect(run(allocationResource, lessee, (c) => allocationResource.create(c, { candidateNodes: [nodeId] }), "early")).rejects.toMatchObject({ code: "conflict" });

    const made = await run(leaseResource, owner, (c) => leaseResource.create(c, props));
    expect(made.outputs).toMatchObject({ leaseId: made.id, state: "active", owner: "project-o", endsAt: endTime });
    expect((await inv.getNode(nodeId))?.lessee).toBe("project-a");
    expect(leaseResource.pendingChanges!(made.outputs, props)).toEqual([]);
    // Another lease of the node in the same window: refused.
    await expect(run(leaseResource, owner, (c) => leaseResource.create(c, { nodeId, lessee: "project-b", endTime: new Date(Date.now() + 60_000).toISOString() }))).rejects.toMatchObject({
      code: "conflict",
      messageId: "inventory.LeaseOverlap",
    });

    // The lessee, by Ironic's lessee rules: allocate (restricted to its own nodes) and deploy.
    const alloc = await run(allocationResource, lessee, async (c) => {
      await authorize(allocationResource, lessee, "create", { candidateNodes: [nodeId] });
      return allocationResource.create(c, { candidateNodes: [nodeId] });
    }, "a");
    expect(alloc.outputs).toMatchObject({ nodeId, owner: "project-a" });
    const deployInputs = { allocationId: alloc.id, imageUrl, bootInterface: "virtual-media" };
    await authorize(deploymentResource, lessee, "create", deployInputs);
    await run(deploymentResource, lessee, (c) => deploymentResource.create(c, deployInputs), "d");
    expect(lab.bmcs[0].system(1).running).toMatch(/^os:/);

    // The end passes: the next `up` sees a due change and runs the update.
    while (Date.now() < Date.parse(endTime)) await sleep(250);
    expect(leaseResource.pendingChanges!(made.outputs, props)).toEqual([{ path: "endTime", reason: expect.stringMatching(/the lease ended at/) }]);
    const since = (await inv.listAudit({ limit: 10_000 })).length;
    await authorize(leaseResource, owner, "update", props, made.outputs);
    const after = await run(leaseResource, owner, (c) => leaseResource.update(c, made.id, props, props, made.outputs));
    expect(after).toMatchObject({ state: "ended", endReason: "expired", endedAt: expect.any(String) });
    expect(leaseResource.pendingChanges!(after, props)).toEqual([]);

    expect(lab.bmcs[0].system(1).running ?? "").not.toMatch(/^os:/);
    const node = await inv.getNode(nodeId);
    expect(node).toMatchObject({ provisionState: "available" });
    expect(node?.lessee).toBeUndefined();
    expect(node?.allocationId).toBeUndefined();
    expect((await inv.getAllocation(alloc.id))?.state).toBe("released");
    // The lessee's refresh: its deployment and allocation are gone.
    expect(await run(deploymentResource, lessee, (c) => deploymentResource.read(c, nodeId, deployInputs, {}))).toBeUndefined();
    expect(await run(allocationResource, lessee, (c) => allocationResource.read(c, alloc.id, { candidateNodes: [nodeId] }, alloc.outputs))).toBeUndefined();

    const steps = (await inv.listAudit({ afterSeq: 0, limit: 10_000 })).slice(since).filter((e) => e.operation.startsWith("baremetal:lease:end"));
    expect(steps.map((e) => [e.operation, e.outcome])).toEqual([
      ["baremetal:lease:end:lessee", "done"],
      ["baremetal:lease:end:undeploy", "done"],
      ["baremetal:lease:end:release", "done"],
      ["baremetal:lease:end", "done"],
    ]);
    for (const e of steps) {
      expect(e.target).toBe(nodeId);
      expect(e.detail).toContain(made.id);
    }
    // Ended: a refresh keeps it (state ended), a delete does nothing more, the window is free.
    const read = await run(leaseResource, owner, (c) => leaseResource.read(c, made.id, props, after));
    expect(read?.outputs.state).toBe("ended");
    await run(leaseResource, owner, (c) => leaseResource.delete(c, made.id, props, after));
    expect((await inv.listAudit({ limit: 10_000 })).filter((e) => e.operation === "baremetal:lease:end" && e.detail?.includes(made.id))).toHaveLength(1);
  });

  test("the operator's run of the leased node's Node resource keeps the lease's lessee (the declared one applies after the lease)", async () => {
    const nodeId = nodeIds[1];
    const lab0 = lab.info.nodes[1];
    const owner = who("project-o");
    const leaseProps: Props = { nodeId, lessee: "project-c", endTime: new Date(Date.now() + 60_000).toISOString() };
    const made = await run(leaseResource, owner, (c) => leaseResource.create(c, leaseProps), "keep");
    const warnings: string[] = [];
    const op = host.operation(nodeResource, "urn:pulumi:test::lease::baremetal:compute:Node::n1", "n1", 0, { progress: () => undefined, warn: (m) => warnings.push(m) });
    const c = { ...op.ctx, caller: who(undefined, ["admin"]) };
    try {
      await nodeResource.create(c, { bmc: { address: lab0.address, systemId: lab0.systemId }, owner: "project-o", lessee: "project-d" });
    } finally {
      op.done();
    }
    expect((await inv.getNode(nodeId))?.lessee).toBe("project-c");
    expect(warnings.join("\n")).toMatch(/leased to project-c until .* the declared lessee \(project-d\) applies after/);
    await run(leaseResource, owner, (x) => leaseResource.delete(x, made.id, leaseProps, made.outputs), "keep");
  });

  test("delete ends a lease early; a lease whose end has passed cannot be made", async () => {
    const owner = who("project-o");
    const nodeId = nodeIds[1];
    const props = { nodeId, lessee: "project-a", endTime: new Date(Date.now() + 3600_000).toISOString() };
    const made = await run(leaseResource, owner, (c) => leaseResource.create(c, props));
    expect((await inv.getNode(nodeId))?.lessee).toBe("project-a");
    await authorize(leaseResource, owner, "delete", props, made.outputs);
    await expect(authorize(leaseResource, who("project-b"), "delete", props, made.outputs)).rejects.toMatchObject({ code: "auth" });
    await run(leaseResource, owner, (c) => leaseResource.delete(c, made.id, props, made.outputs));
    expect(await inv.getLease(made.id)).toMatchObject({ state: "ended", endReason: "deleted" });
    expect((await inv.getNode(nodeId))?.lessee).toBeUndefined();
    await expect(run(leaseResource, owner, (c) => leaseResource.create(c, { ...props, endTime: new Date(Date.now() - 1000).toISOString() }))).rejects.toMatchObject({
      code: "validation",
      property: "endTime",
    });
    expect(leaseResource.check!({ ...props, startTime: "2030-01-02T00:00:00Z", endTime: "2030-01-01T00:00:00Z" }, host.providerContext())).toEqual([
      { property: "endTime", reason: expect.stringMatching(/must be after startTime/) },
    ]);
  });

  test("the reaper activates a pending lease at its start and ends it at its end; two reapers on one database end it once", async () => {
    const nodeId = nodeIds[2];
    const startTime = new Date(Date.now() + 1500).toISOString();
    const endTime = new Date(Date.now() + 4000).toISOString();
    const made = await run(leaseResource, who("project-o"), (c) => leaseResource.create(c, { nodeId, lessee: "project-b", startTime, endTime }));
    expect(made.outputs.state).toBe("pending");
    expect((await inv.getNode(nodeId))?.lessee).toBeUndefined();

    const second = new ProviderHost();
    second.configure({ ...host.config, inventoryUrl: host.config.inventoryUrl });
    const logs: Record<string, unknown>[] = [];
    const reapers = [startLeaseReaper(host, undefined, { intervalMs: 200, log: (e) => logs.push(e) }), startLeaseReaper(second, undefined, { intervalMs: 200, log: (e) => logs.push(e) })];
    try {
      const until = async (what: () => Promise<boolean>) => {
        for (const t = Date.now(); !(await what()); ) {
          if (Date.now() - t > 20_000) throw new Error(`timed out; reaper log: ${JSON.stringify(logs)}`);
          await sleep(100);
        }
      };
      await until(async () => (await inv.getLease(made.id))?.state === "active");
      expect(Date.now()).toBeGreaterThanOrEqual(Date.parse(startTime));
      await until(async () => (await inv.getNode(nodeId))?.lessee === "project-b");
      await until(async () => (await inv.getLease(made.id))?.state === "ended");
      expect((await inv.getNode(nodeId))?.lessee).toBeUndefined();
      const audit = (await inv.listAudit({ limit: 10_000 })).filter((e) => e.detail?.includes(made.id));
      expect(audit.filter((e) => e.operation === "baremetal:lease:activate")).toHaveLength(1);
      expect(audit.filter((e) => e.operation === "baremetal:lease:end")).toEqual([expect.objectContaining({ outcome: "done" })]);
      expect(audit.filter((e) => e.operation === "baremetal:lease:end:lessee")).toHaveLength(1);
    } finally {
      for (const r of reapers) await r.stop();
      await second.close();
    }
  });
});
