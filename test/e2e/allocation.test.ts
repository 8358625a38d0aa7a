/**
 * Multi-tenancy through the real engine: an operator stack enrols nodes with owner/lessee into a
 * shared inventory (SQLite file) against sushy-tools; tenant stacks, configured with their own
 * project and roles and holding no BMC credentials, allocate from that pool. The policy (Ironic's
 * default rules) decides at preview time.
 */
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { type SushyInstance, startSushy } from "../harness/sushy";

jest.setTimeout(300_000);

const USER = "alloc-admin";
const PASSWORD = "alloc-Bmc-Pa55";

const OPERATOR = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const address = config.require("bmcAddress");
const systems = config.requireObject<string[]>("systems");
// sys0: alpha's (with the CUSTOM_A trait); sys1: alpha's, leased to beta; sys2: gamma's; sys3: nobody's.
const owners = [["p-alpha", undefined, ["CUSTOM_A"]], ["p-alpha", "p-beta", []], ["p-gamma", undefined, []], [undefined, undefined, []]] as const;
const nodes = systems.map((systemId, i) => new baremetal.compute.Node("node" + i, {
  bmc: { address, systemId },
  owner: owners[i][0], lessee: owners[i][1], traits: [...owners[i][2]],
  resourceClass: "small",
}));
export const ids = nodes.map((n) => n.id);
export const states = nodes.map((n) => n.provisionState);
export const allocations = nodes.map((n) => n.allocationId);
`;

const TENANT = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const a = new baremetal.compute.Allocation("web", {
  resourceClass: "small",
  traits: config.getObject<string[]>("traits"),
  project: config.get("restrictTo"),
});
export const nodeId = a.nodeId;
export const allocationId = a.allocationId;
export const restrictedTo = a.restrictedTo;
if (config.getBoolean("deploy")) {
  new baremetal.compute.Deployment("os", { allocationId: a.allocationId, imageUrl: "http://images.example.net/os.iso" });
}
`;

const VIEWER = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
export const visible = baremetal.compute.getNodesOutput({}).nodes.apply((ns) => ns.map((n) => n.id));
`;

describe("allocations from a shared pool, by tenants, under the policy", () => {
  let bmc: SushyInstance;
  let operator: PulumiProject;
  const tenants: PulumiProject[] = [];
  let inventoryUrl: string;
  let ids: string[];

  /** The operator's view after a refresh: resource outputs from the state (stack outputs only change on up). */
  async function operatorNodes(): Promise<Array<{ id: string; allocationId?: string; provisionState: string }>> {
    const { deployment } = await operator.exportStack();
    return (deployment.resources ?? [])
      .filter((r) => r.type === "baremetal:compute:Node")
      .sort((a, b) => String(a.urn).localeCompare(String(b.urn)))
      .map((r) => ({ id: String(r.id), ...(r.outputs as { allocationId?: string; provisionState: string }) }));
  }

  async function tenant(project: string, roles: string[], config: Record<string, string> = {}): Promise<PulumiProject> {
    const t = await newProject(`tenant-${project}`, TENANT);
    tenants.push(t);
    await t.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    await t.setConfig("baremetal:project", project);
    await t.setConfig("baremetal:roles", JSON.stringify(roles));
    for (const [k, v] of Object.entries(config)) await t.setConfig(k, v);
    return t;
  }

  beforeAll(async () => {
    bmc = await startSushy({ systems: 4, username: USER, password: PASSWORD });
    operator = await newProject("operator", OPERATOR);
    inventoryUrl = `sqlite://${operator.dir}/inventory.db`;
    await operator.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    await operator.setConfig("baremetal:bmcUsername", USER);
    await operator.setConfig("baremetal:bmcPassword", PASSWORD, true);
    await operator.setConfig("bmcAddress", bmc.url);
    await operator.setConfig("systems", JSON.stringify(bmc.systemIds));
    await operator.pulumi(["up", "--yes", "--skip-preview"]);
    const out = await operator.outputs();
    ids = out.ids as string[];
    expect(out.states).toEqual(["available", "available", "available", "available"]);
  });

  afterAll(async () => {
    for (const t of tenants) {
      await t.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      t.remove();
    }
    await operator?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    operator?.remove();
    await bmc?.stop();
  });

  it("a tenant member allocates only among its project's nodes, without BMC credentials", async () => {
    const alpha = await tenant("p-alpha", ["member"], { traits: JSON.stringify(["CUSTOM_A"]) });
    await alpha.pulumi(["up", "--yes", "--skip-preview"]);
    const out = await alpha.outputs();
    expect(out.nodeId).toBe(ids[0]);
    expect(out.restrictedTo).toBe("p-alpha");
    await alpha.pulumi(["preview", "--expect-no-changes"]);
    expect(JSON.stringify(await alpha.exportStack())).not.toContain(PASSWORD);
  });

  it("a lessee gets the node leased to it, even when other nodes are free", async () => {
    const beta = await tenant("p-beta", ["member"]);
    await beta.pulumi(["up", "--yes", "--skip-preview"]);
    expect((await beta.outputs()).nodeId).toBe(ids[1]);
    await beta.pulumi(["preview", "--expect-no-changes"]);
  });

  it("a lessee's member may allocate but not deploy: the preview fails with the rule", async () => {
    const beta = tenants[1];
    await beta.setConfig("deploy", "true");
    const preview = await beta.pulumi(["preview"], { allowFail: true });
    expect(preview.code).not.toBe(0);
    expect(preview.stdout).toMatch(/baremetal:node:set_provision_state denied for project p-beta \(roles member\): rule/);
    await beta.pulumi(["config", "rm", "deploy"]);
    await beta.pulumi(["preview", "--expect-no-changes"]);
  });

  it("the operator sees the claims, and cannot un-enrol an allocated node", async () => {
    await operator.pulumi(["refresh", "--yes", "--skip-preview"]);
    const nodes = await operatorNodes();
    expect(nodes.map((n) => (n.allocationId ? "held" : "free"))).toEqual(["held", "held", "free", "free"]);
    expect(nodes.map((n) => n.provisionState)).toEqual(["available", "available", "available", "available"]);
    await operator.pulumi(["preview", "--expect-no-changes"]);

    const destroy = await operator.pulumi(["destroy", "--yes", "--skip-preview", "--target", "urn:pulumi:test::operator::baremetal:compute:Node::node1"], {
      allowFail: true,
    });
    expect(destroy.code).not.toBe(0);
    expect(destroy.stdout).toMatch(/the node is held by allocation alloc-[0-9a-f-]+; destroy that allocation/);
    expect((await operatorNodes())[1].id).toBe(ids[1]);
  });

  it("getNodes lists what the caller may see: its project's nodes, or all of them for the operator", async () => {
    const seen = async (project: string | undefined, roles: string[]) => {
      const v = await newProject("viewer", VIEWER);
      tenants.push(v);
      await v.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
      if (project) {
        await v.setConfig("baremetal:project", project);
        await v.setConfig("baremetal:roles", JSON.stringify(roles));
      }
      await v.pulumi(["up", "--yes", "--skip-preview"]);
      return ((await v.outputs()).visible as string[]).slice().sort();
    };
    expect(await seen("p-beta", ["reader"])).toEqual([ids[1]]);
    expect(await seen("p-alpha", ["member"])).toEqual([ids[0], ids[1]].sort());
    expect(await seen("system", ["admin"])).toEqual([...ids].sort());
    expect(await seen(undefined, [])).toEqual([...ids].sort());
  });

  it("a pool with nothing left for the project fails with the reason", async () => {
    const beta2 = await tenant("p-beta", ["member"]);
    const up = await beta2.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(up.code).not.toBe(0);
    expect(up.stdout).toMatch(/no available node/i);
    expect(up.stdout).toMatch(/p-beta/);
  });

  it("a reader is denied at preview, with the rule that denied it", async () => {
    const reader = await tenant("p-gamma", ["reader"]);
    const preview = await reader.pulumi(["preview"], { allowFail: true });
    expect(preview.code).not.toBe(0);
    expect(preview.stdout).toMatch(/baremetal:allocation:create denied for project p-gamma \(roles reader\): rule/);
  });

  it("a member asking for another project's nodes is denied at preview (create_restricted)", async () => {
    const sneaky = await tenant("p-beta", ["member"], { restrictTo: "p-gamma" });
    const preview = await sneaky.pulumi(["preview"], { allowFail: true });
    expect(preview.code).not.toBe(0);
    expect(preview.stdout).toMatch(/baremetal:allocation:create_restricted denied for project p-beta/);
  });

  it("destroying an allocation returns its node to the pool; the node stays enrolled", async () => {
    const [alpha] = tenants;
    await alpha.pulumi(["destroy", "--yes", "--skip-preview"]);
    await operator.pulumi(["refresh", "--yes", "--skip-preview"]);
    const [node0] = await operatorNodes();
    expect(node0.allocationId).toBeUndefined();
    expect(node0.id).toBe(ids[0]);
  });
});
