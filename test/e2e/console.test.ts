/**
 * ConsoleAccess through the real engine against the embedded lab (in process): Node ->
 * Allocation -> ConsoleAccess creates a time-limited BMC account for the lessee and reports the
 * BMC's console endpoints; destroy removes the account. A BMC without an AccountService
 * (sushy-like) fails with a clear error.
 */
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";

jest.setTimeout(300_000);

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const node = new baremetal.compute.Node("n0", { bmc: { address: config.require("bmcAddress"), systemId: config.require("systemId") }, resourceClass: "small" });
const allocation = new baremetal.compute.Allocation("a0", { candidateNodes: [node.id] });
const console = new baremetal.compute.ConsoleAccess("c0", { allocationId: allocation.allocationId, validHours: 2 });
export const username = console.username;
export const password = console.password;
export const expiresAt = console.expiresAt;
export const serial = console.serial;
export const graphical = console.graphical;
export const bmcHost = console.bmcHost;
`;

async function project(lab: Lab, name: string): Promise<PulumiProject> {
  const p = await newProject(name, PROGRAM);
  await p.setConfig("baremetal:inventoryUrl", `sqlite://${p.dir}/inventory.db`, true);
  for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
  await p.setConfig("bmcAddress", lab.info.nodes[0].address);
  await p.setConfig("systemId", lab.info.nodes[0].systemId);
  return p;
}

describe("console access on a generic lab BMC", () => {
  let lab: Lab;
  let p: PulumiProject;

  beforeAll(async () => {
    lab = await startLab({ flavor: "generic", systems: 1, bootSeconds: 0 });
    p = await project(lab, "console");
  });

  afterAll(async () => {
    await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    p?.remove();
    await lab?.stop();
  });

  it("up creates a time-limited BMC account with the role, endpoints and a secret password", async () => {
    const before = lab.bmcs[0].accounts().length;
    const up = await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect(up.stdout).toMatch(/\+ 4 created/);
    const out = await p.outputs();
    expect(out.username).toMatch(/^c-[0-9a-f]{8}$/);
    expect(String(out.password)).toMatch(/^[A-Za-z0-9_-]{20}$/);
    expect(out.bmcHost).toBe("127.0.0.1");
    const hours = (Date.parse(String(out.expiresAt)) - Date.now()) / 3600_000;
    expect(hours).toBeGreaterThan(1.9);
    expect(hours).toBeLessThanOrEqual(2);
    expect(out.serial).toEqual(expect.arrayContaining([expect.objectContaining({ protocol: "SSH", url: "ssh://127.0.0.1:22" }), expect.objectContaining({ protocol: "IPMI", url: "ipmi-sol://127.0.0.1:623" })]));
    expect(out.graphical).toEqual([expect.objectContaining({ protocol: "KVMIP" })]);

    const accounts = lab.bmcs[0].accounts();
    expect(accounts).toHaveLength(before + 1);
    const mine = accounts.find((a) => a.userName === out.username);
    expect(mine).toMatchObject({ roleId: "Operator", enabled: true });
    expect(mine?.expiresAt).toBe(Date.parse(String(out.expiresAt)));

    // The password is a secret: never in the state's plain text, nor in the CLI's output.
    const exported = JSON.stringify(await p.exportStack());
    expect(exported).not.toContain(String(out.password));
    expect(up.stdout + up.stderr).not.toContain(String(out.password));
    const plain = await p.pulumi(["stack", "output", "--json"]);
    expect(plain.stdout).not.toContain(String(out.password));

    await p.pulumi(["preview", "--expect-no-changes"]);
  });

  it("refresh keeps a valid account; one removed on the BMC is recreated by up", async () => {
    const { username } = await p.outputs();
    await p.pulumi(["refresh", "--yes", "--skip-preview"]);
    await p.pulumi(["preview", "--expect-no-changes"]);
    // Someone deletes the account on the BMC: refresh reports it gone, up makes new credentials.
    const admin = lab.info.credentials;
    const bmc = lab.bmcs[0];
    const id = bmc.accounts().find((a) => a.userName === username)!.id;
    const res = await fetch(`${bmc.url}/redfish/v1/AccountService/Accounts/${id}`, {
      method: "DELETE",
      headers: { Authorization: `Basic ${Buffer.from(`${admin.username}:${admin.password}`).toString("base64")}` },
    });
    expect(res.status).toBe(204);
    await p.pulumi(["up", "--yes", "--skip-preview", "--refresh"]);
    const again = await p.outputs();
    expect(again.username).not.toBe(username);
    expect(bmc.accounts().some((a) => a.userName === again.username)).toBe(true);
  });

  it("destroy removes the account from the BMC", async () => {
    const { username } = await p.outputs();
    const before = lab.bmcs[0].accounts().length;
    await p.pulumi(["destroy", "--yes", "--skip-preview"]);
    expect(lab.bmcs[0].accounts().some((a) => a.userName === username)).toBe(false);
    expect(lab.bmcs[0].accounts()).toHaveLength(before - 1);
  });
});

describe("console access on a sushy-like lab BMC (no AccountService)", () => {
  let lab: Lab;
  let p: PulumiProject;

  beforeAll(async () => {
    lab = await startLab({ flavor: "sushy-like", systems: 1, bootSeconds: 0 });
    p = await project(lab, "console-sushy");
  });

  afterAll(async () => {
    await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    p?.remove();
    await lab?.stop();
  });

  it("up fails saying console credentials are not available on this BMC", async () => {
    const up = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(up.code).not.toBe(0);
    expect(up.stdout + up.stderr).toMatch(/console credentials are not available on this BMC/);
    expect(up.stdout + up.stderr).toMatch(/no AccountService/);
  });
});
