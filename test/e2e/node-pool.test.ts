/**
 * The pool through the real engine on the embedded lab: a node enrolled with `provide: false`
 * stays `manageable` (out of the pool), a node in maintenance is never allocated, each refusal
 * says why; a node cannot leave the pool while an allocation holds it; maintenance set behind
 * the stack's back (in the shared inventory) is drift that refresh shows and up puts back.
 */
import { openInventory } from "../../provider/src/inventory";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";

jest.setTimeout(300_000);

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const node = new baremetal.compute.Node("n0", {
  bmc: { address: config.require("bmcAddress"), systemId: config.require("systemId") },
  resourceClass: "pool",
  provide: config.getBoolean("provide"),
  maintenance: config.getBoolean("maintenance"),
  maintenanceReason: config.get("maintenanceReason"),
});
export const state = node.provisionState;
if (config.getBoolean("allocate")) {
  const a = new baremetal.compute.Allocation("a0", { candidateNodes: [node.id] });
  module.exports.allocationId = a.allocationId;
}
`;

describe("the pool: provide, maintenance, and their drift", () => {
  let lab: Lab;
  let p: PulumiProject;
  let inventoryUrl: string;

  beforeAll(async () => {
    lab = await startLab({ flavor: "generic", systems: 1, bootSeconds: 0 });
    p = await newProject("node-pool", PROGRAM);
    inventoryUrl = `sqlite://${p.dir}/inventory.db`;
    await p.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    await p.setConfig("bmcAddress", lab.info.nodes[0].address);
    await p.setConfig("systemId", lab.info.nodes[0].systemId);
  });

  afterAll(async () => {
    await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    p?.remove();
    await lab?.stop();
  });

  it("provide: false enrols the node as manageable, and an allocation is refused saying so", async () => {
    await p.setConfig("provide", "false");
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect((await p.outputs()).state).toBe("manageable");
    await p.setConfig("allocate", "true");
    const refused = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(refused.code).not.toBe(0);
    expect(refused.stdout + refused.stderr).toMatch(/not available|manageable/);
  });

  it("maintenance keeps a provided node out of allocations; leaving it, the allocation succeeds", async () => {
    await p.setConfig("provide", "true");
    await p.setConfig("maintenance", "true");
    await p.setConfig("maintenanceReason", "fan replacement");
    const refused = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(refused.code).not.toBe(0);
    expect(refused.stdout + refused.stderr).toMatch(/in maintenance/);
    await p.setConfig("maintenance", "false");
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect((await p.outputs()).allocationId).toMatch(/^alloc-/);
    await p.pulumi(["preview", "--expect-no-changes"]);
  });

  it("a node held by an allocation cannot leave the pool; the error names provide", async () => {
    await p.setConfig("provide", "false");
    const refused = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(refused.code).not.toBe(0);
    expect(refused.stdout + refused.stderr).toMatch(/provide.*held by allocation|held by allocation.*provide/s);
    await p.setConfig("provide", "true");
    await p.pulumi(["up", "--yes", "--skip-preview"]);
  });

  it("maintenance set in the inventory behind the stack's back is drift: refresh shows it, up puts it back", async () => {
    const inventory = await openInventory(inventoryUrl);
    try {
      const [node] = await inventory.listNodes();
      await inventory.upsertNode({ ...node, maintenance: true, maintenanceReason: "set by hand" });
      await p.pulumi(["refresh", "--yes", "--skip-preview"]);
      const preview = await p.pulumi(["preview", "--diff"]);
      expect(preview.stdout).toMatch(/maintenance\s*:\s*true => false/);
      await p.pulumi(["up", "--yes", "--skip-preview"]);
      expect((await inventory.getNode(node.id))?.maintenance).toBe(false);
      await p.pulumi(["preview", "--expect-no-changes"]);
    } finally {
      await inventory.close();
    }
  });
});
