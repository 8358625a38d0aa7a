/**
 * Leases through the real Pulumi engine in broker mode (issue 8, the MOC ESI model): the operator
 * enrolls a lab node owned by project-o (no lessee); project-o's stack (its own token) leases it to
 * project-a for about 45 s; project-a's stack (its own token) allocates and deploys the node and
 * opens a console account on its BMC. When the end passes, the service's reaper (nobody runs
 * `up`) undeploys and cleans the node, removes the console account from the BMC, releases the
 * allocation, clears the node's lessee and audits each step; project-a's `pulumi refresh` then
 * drops the deployment from its state. project-b may not lease project-o's node (403).
 *
 * EMULATED: the machines (the lab BMC and its installer). REAL: the Pulumi engine, the provider
 * plugin in broker mode, the `baremetal serve` binary with its reaper, its SQLite inventory.
 */
import { createHash, randomBytes } from "node:crypto";
import * as path from "node:path";
import { openInventory } from "../../provider/src/inventory";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { type IssuedToken, labServiceSettings, type ServiceInstance, startService } from "../harness/service";
import { setLabConfig } from "../harness/storage-stack";

jest.setTimeout(900_000);

const OPERATOR = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const n = config.requireObject<{ address: string; systemId: string }>("node");
export const nodeId = new baremetal.compute.Node("n", { bmc: { address: n.address, systemId: n.systemId }, owner: "project-o" }).id;
`;

const OWNER = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const lease = new baremetal.compute.Lease("l", { nodeId: config.require("nodeId"), lessee: "project-a", endTime: config.require("endTime") });
export const leaseId = lease.leaseId;
export const state = lease.state;
`;

const LESSEE = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const a = new baremetal.compute.Allocation("a", { candidateNodes: [config.require("nodeId")] });
const d = new baremetal.compute.Deployment("d", { allocationId: a.allocationId, imageUrl: config.require("imageUrl") }, { customTimeouts: { create: "3m", delete: "3m" } });
const c = new baremetal.compute.ConsoleAccess("c", { allocationId: a.allocationId, validHours: 1 }, { dependsOn: [d] });
export const allocationId = a.allocationId;
export const deployedOn = d.nodeId;
export const consoleUser = c.username;
`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("leases in broker mode: the owner leases its node, the service's reaper ends the lease (lab emulated; engine, service, inventory real)", () => {
  let lab: Lab;
  let svc: ServiceInstance;
  let op: PulumiProject;
  let inventoryUrl: string;
  let nodeId: string;
  const tokens: Record<string, IssuedToken> = {};
  const stacks: Record<string, PulumiProject> = {};
  const image = randomBytes(1024 * 1024);
  const previousInterval = process.env.BAREMETAL_LEASE_INTERVAL_SECONDS;

  beforeAll(async () => {
    lab = await startLab({ systems: 1, bootSeconds: 1, installSeconds: 1 });
    lab.imageStore.images.set("installer.img", image);
    op = await newProject("lease-op", OPERATOR);
    inventoryUrl = `sqlite://${op.dir}/inventory.db`;
    await setLabConfig(op, lab);
    await op.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    await op.setConfig("node", JSON.stringify({ address: lab.info.nodes[0].address, systemId: lab.info.nodes[0].systemId }));
    await op.pulumi(["up", "--yes", "--skip-preview"]);
    nodeId = ((await op.outputs()) as { nodeId: string }).nodeId;

    process.env.BAREMETAL_LEASE_INTERVAL_SECONDS = "1"; // the service (a child process) inherits it
    const dir = path.dirname(inventoryUrl.replace(/^sqlite:\/\//, ""));
    svc = await startService(dir, labServiceSettings(lab, inventoryUrl, dir));
    for (const [t, program] of [["o", OWNER], ["a", LESSEE], ["b", OWNER]] as const) {
      tokens[t] = await svc.token(`tenant-${t}`, `project-${t}`, ["manager", "member"]);
      const p = await newProject(`lease-${t}`, program);
      await p.setConfig("baremetal:endpoint", svc.url);
      await p.setConfig("baremetal:token", tokens[t].token, true);
      await p.setConfig("nodeId", nodeId);
      await p.setConfig("imageUrl", `${lab.info.imageStore.url}/installer.img#sha256=${createHash("sha256").update(image).digest("hex")}`);
      stacks[t] = p;
    }
  }, 600_000);

  afterAll(async () => {
    for (const p of Object.values(stacks)) {
      await p.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      p.remove();
    }
    await svc?.stop();
    if (previousInterval === undefined) delete process.env.BAREMETAL_LEASE_INTERVAL_SECONDS;
    else process.env.BAREMETAL_LEASE_INTERVAL_SECONDS = previousInterval;
    if (op) {
      await op.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      op.remove();
    }
    await lab?.stop();
  });

  it("project-b may not lease project-o's node (403, audited)", async () => {
    const r = await fetch(`${svc.url}/v1/resources/${encodeURIComponent("baremetal:compute:Lease")}`, {
      method: "POST",
      headers: { authorization: `Bearer ${tokens.b.token}`, "content-type": "application/json" },
      body: JSON.stringify({ name: "steal", inputs: { nodeId, lessee: "project-b", endTime: new Date(Date.now() + 600_000).toISOString() } }),
    });
    expect(r.status).toBe(403);
    expect(await r.json()).toMatchObject({ errorCode: "PolicyNotAuthorized", message: expect.stringMatching(/baremetal:lease:create/) });
    await stacks.b.setConfig("endTime", new Date(Date.now() + 600_000).toISOString());
    const up = await stacks.b.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(up.code).not.toBe(0);
    expect(up.stdout + up.stderr).toMatch(/403|PolicyNotAuthorized|baremetal:lease:create/);
    const inv = await openInventory(inventoryUrl);
    try {
      expect((await inv.listAudit({ projectId: "project-b", limit: 1000 })).filter((e) => e.outcome === "denied").length).toBeGreaterThan(0);
      expect(await inv.listLeases({ nodeId })).toEqual([]);
    } finally {
      await inv.close();
    }
  });

  it("the owner leases the node to project-a, which deploys it and opens a console; at the end the reaper undeploys, revokes, releases and audits", async () => {
    const endTime = new Date(Date.now() + 45_000).toISOString();
    await stacks.o.setConfig("endTime", endTime);
    await stacks.o.pulumi(["up", "--yes", "--skip-preview"]);
    const lease = (await stacks.o.outputs()) as { leaseId: string; state: string };
    expect(lease.state).toBe("active");

    await stacks.a.pulumi(["up", "--yes", "--skip-preview"]);
    const a = (await stacks.a.outputs()) as { allocationId: string; deployedOn: string; consoleUser: string };
    expect(a.deployedOn).toBe(nodeId);
    expect(Date.now()).toBeLessThan(Date.parse(endTime)); // deployed inside the window
    const bmc = lab.bmcs[0];
    expect(bmc.system(1).running).toMatch(/^os:/);
    expect(bmc.accounts().map((x) => x.userName)).toContain(a.consoleUser);

    // Nobody runs `up`: the service's reaper ends the lease.
    const inv = await openInventory(inventoryUrl);
    try {
      for (const t = Date.now(); (await inv.getLease(lease.leaseId))?.state !== "ended"; await sleep(1000)) {
        if (Date.now() - t > 240_000) throw new Error(`the lease did not end: ${JSON.stringify(await inv.getLease(lease.leaseId))}; service log: ${JSON.stringify(svc.log().slice(-20))}`);
      }
      const ended = (await inv.getLease(lease.leaseId))!;
      expect(Date.parse(ended.endedAt!)).toBeGreaterThanOrEqual(Date.parse(endTime));
      expect(ended.endReason).toBe("expired");
      expect(bmc.system(1).running ?? "").not.toMatch(/^os:/);
      expect(bmc.accounts().map((x) => x.userName)).not.toContain(a.consoleUser);
      const node = (await inv.getNode(nodeId))!;
      expect(node.lessee).toBeUndefined();
      expect(node.allocationId).toBeUndefined();
      expect(node.provisionState).toBe("available");
      expect((await inv.getAllocation(a.allocationId))?.state).toBe("released");
      const steps = (await inv.listAudit({ limit: 10_000 })).filter((e) => e.operation.startsWith("baremetal:lease:end") && e.detail?.includes(lease.leaseId));
      expect(steps.map((e) => `${e.operation} ${e.outcome}`)).toEqual([
        "baremetal:lease:end:lessee done",
        "baremetal:lease:end:undeploy done",
        "baremetal:lease:end:console done",
        "baremetal:lease:end:release done",
        "baremetal:lease:end done",
      ]);
      expect(steps.every((e) => e.target === nodeId)).toBe(true);
      // The service's records of what the teardown removed are gone.
      for (const type of ["baremetal:compute:Deployment", "baremetal:compute:ConsoleAccess", "baremetal:compute:Allocation"]) {
        expect(await inv.listServiceResources({ type, projectId: "project-a" })).toEqual([]);
      }
    } finally {
      await inv.close();
    }

    // project-a's refresh: its deployment (and allocation and console) are gone from its state.
    await stacks.a.pulumi(["refresh", "--yes", "--skip-preview"]);
    const types = ((await stacks.a.exportStack()) as { deployment: { resources?: Array<{ type: string }> } }).deployment.resources?.map((r) => r.type) ?? [];
    expect(types).not.toContain("baremetal:compute:Deployment");
    expect(types).not.toContain("baremetal:compute:ConsoleAccess");
    expect(types).not.toContain("baremetal:compute:Allocation");
    // project-o's refresh keeps the lease, ended; nothing is pending.
    await stacks.o.pulumi(["refresh", "--yes", "--skip-preview"]);
    const leases = ((await stacks.o.exportStack()) as { deployment: { resources?: Array<{ type: string; outputs?: { state?: string } }> } }).deployment.resources?.filter((r) => r.type === "baremetal:compute:Lease") ?? [];
    expect(leases.map((r) => r.outputs?.state)).toEqual(["ended"]);
  });
});
