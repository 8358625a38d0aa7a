/**
 * ConsoleAccess under the multi-tenancy policy, through the real engine against the embedded
 * lab: the operator enrols a node owned by one project and leased to another; the lessee's
 * member may allocate it but not operate its console (Ironic: only a lessee's admins and
 * managers drive provisioning), which fails naming the rule, at preview once the allocation
 * exists; the lessee's manager gets the time-limited account, which destroy removes.
 */
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";

jest.setTimeout(300_000);

const OPERATOR = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const node = new baremetal.compute.Node("n0", {
  bmc: { address: config.require("bmcAddress"), systemId: config.require("systemId") },
  owner: "p-owner", lessee: "p-lessee", resourceClass: "console",
});
export const nodeId = node.id;
`;

const TENANT = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const allocation = new baremetal.compute.Allocation("a0", { resourceClass: "console" });
const console = new baremetal.compute.ConsoleAccess("c0", { allocationId: allocation.allocationId, validHours: 1 });
export const username = console.username;
`;

describe("console access by a lessee, under the policy", () => {
  let lab: Lab;
  let operator: PulumiProject;
  let tenant: PulumiProject;

  beforeAll(async () => {
    lab = await startLab({ flavor: "generic", systems: 1, bootSeconds: 0 });
    operator = await newProject("console-operator", OPERATOR);
    const inventoryUrl = `sqlite://${operator.dir}/inventory.db`;
    tenant = await newProject("console-tenant", TENANT);
    for (const p of [operator, tenant]) {
      await p.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
      for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    }
    await operator.setConfig("bmcAddress", lab.info.nodes[0].address);
    await operator.setConfig("systemId", lab.info.nodes[0].systemId);
    await operator.pulumi(["up", "--yes", "--skip-preview"]);
    await tenant.setConfig("baremetal:project", "p-lessee");
    await tenant.setConfig("baremetal:roles", JSON.stringify(["member"]));
  });

  afterAll(async () => {
    await tenant?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    await operator?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    tenant?.remove();
    operator?.remove();
    await lab?.stop();
  });

  it("the lessee's member allocates, but its console is denied naming the rule; at preview once the node is known", async () => {
    const before = lab.bmcs[0].accounts().length;
    const up = await tenant.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(up.code).not.toBe(0);
    const denial = /baremetal:node:set_provision_state denied for project p-lessee \(roles member\)/;
    expect(up.stdout + up.stderr).toMatch(denial);
    expect(lab.bmcs[0].accounts()).toHaveLength(before);
    // The allocation exists now, so the node is known and the preview itself refuses.
    const preview = await tenant.pulumi(["preview"], { allowFail: true });
    expect(preview.code).not.toBe(0);
    expect(preview.stdout + preview.stderr).toMatch(denial);
    expect(lab.bmcs[0].accounts()).toHaveLength(before);
  });

  it("the lessee's manager gets a time-limited console account; destroy removes it", async () => {
    const before = lab.bmcs[0].accounts().length;
    await tenant.setConfig("baremetal:roles", JSON.stringify(["manager"]));
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    const { username } = await tenant.outputs();
    expect(lab.bmcs[0].accounts().find((a) => a.userName === username)).toMatchObject({ enabled: true });
    await tenant.pulumi(["preview", "--expect-no-changes"]);
    await tenant.pulumi(["destroy", "--yes", "--skip-preview"]);
    expect(lab.bmcs[0].accounts()).toHaveLength(before);
    expect(lab.bmcs[0].accounts().some((a) => a.userName === username)).toBe(false);
  });
});
