/**
 * Deployments through the real engine against the embedded lab (our Redfish emulator, in
 * process), where the machines do boot their installers: virtual media and UEFI HTTP boot, disk
 * erase on undeploy (Drive.SecureErase), and deploys that survive the BMC's faults (a full
 * session table, a power-on guard, 503s, lost answers after the BMC acted) with no duplicate
 * side effects on the emulator, or fail with a clear error that the next `up` recovers from.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import type { LabBmc } from "../../provider/src/lab/bmc";
import type { SideEffectKind } from "../../provider/src/lab/faults";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";

jest.setTimeout(300_000);

const IMAGE = "http://images.lab.example/installer.iso";
const USER_DATA = "#cloud-config\nusers:\n  - name: ops\nruncmd:\n  - echo lab-secret-token-5f1c > /root/token";
const NETWORK_DATA = JSON.stringify({ links: [{ id: "eth0", type: "phy", ethernet_mac_address: "52:54:00:00:01:02" }], networks: [{ id: "n0", link: "eth0", type: "ipv4_dhcp" }], services: [] });

/** The files of an ISO image, read by xorriso (a third-party reader): path -> text. */
function readIso(image: Buffer): Record<string, string> {
  const dir = mkdtempSync(join(tmpdir(), "configdrive-"));
  try {
    writeFileSync(join(dir, "d.iso"), image);
    execFileSync("xorriso", ["-osirrox", "on", "-indev", join(dir, "d.iso"), "-extract", "/", join(dir, "x")], { stdio: "pipe" });
    const out: Record<string, string> = {};
    const walk = (d: string, rel: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(d, e.name), `${rel}${e.name}/`);
        else out[`${rel}${e.name}`] = readFileSync(join(d, e.name), "utf8");
      }
    };
    walk(join(dir, "x"), "");
    const label = execFileSync("blkid", ["-p", "-o", "value", "-s", "LABEL", join(dir, "d.iso")], { encoding: "utf8" }).trim();
    out["<label>"] = label;
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One Node -> Allocation -> Deployment per entry of the `machines` config. */
const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const machines = config.requireObject<{ address: string; systemId: string; bootInterface: string; hostname?: string; networkData?: string }[]>("machines");
const userData = config.getSecret("userData");
export const states: pulumi.Output<string>[] = [];
machines.forEach((m, i) => {
  const node = new baremetal.compute.Node("n" + i, { bmc: { address: m.address, systemId: m.systemId }, resourceClass: "small" });
  const allocation = new baremetal.compute.Allocation("a" + i, { candidateNodes: [node.id] });
  if (config.getBoolean("deploy") === false) return;
  const drive = m.hostname ? { hostname: m.hostname, networkData: m.networkData, userData, sshPublicKeys: { ops: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForTests ops@lab" } } : {};
  const d = new baremetal.compute.Deployment("d" + i, { allocationId: allocation.allocationId, imageUrl: config.require("imageUrl"), bootInterface: m.bootInterface, ...drive },
    { customTimeouts: { create: "3m", delete: "3m" } });
  states.push(d.provisionState);
});
`;

async function project(lab: Lab, name: string, bootInterfaces: string[], drives: Array<{ hostname: string; networkData: string } | undefined> = []): Promise<PulumiProject> {
  const p = await newProject(name, PROGRAM);
  await p.setConfig("baremetal:inventoryUrl", `sqlite://${p.dir}/inventory.db`, true);
  for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
  const machines = bootInterfaces.map((bootInterface, i) => ({ address: lab.info.nodes[i].address, systemId: lab.info.nodes[i].systemId, bootInterface, ...drives[i] }));
  await p.setConfig("machines", JSON.stringify(machines));
  await p.setConfig("imageUrl", IMAGE);
  return p;
}

/** Side effects of one kind on one system (its URI, or anything under it such as its virtual CD). */
const effects = (bmc: LabBmc, kind: SideEffectKind, systemIndex: number) =>
  bmc.sideEffects(kind).filter((e) => e.target.startsWith(bmc.system(systemIndex).uri) || (e.kind.startsWith("media") && e.target.includes(`sys${systemIndex}`)));

describe("deploy and clean on a generic lab BMC: virtual media and UEFI HTTP boot", () => {
  let lab: Lab;
  let p: PulumiProject;

  beforeAll(async () => {
    lab = await startLab({ flavor: "generic", systems: 2, bootSeconds: 1, installSeconds: 2 });
    p = await project(lab, "deploy-lab", ["virtual-media", "http"], [undefined, { hostname: "web-1", networkData: NETWORK_DATA }]);
    await p.setConfig("userData", USER_DATA, true);
  });

  afterAll(async () => {
    await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    p?.remove();
    await lab?.stop();
  });

  it("up deploys both: one installer each, from the CD and from the URL, then the OS from disk; the config drive is in the store and the CD", async () => {
    const up = await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect(up.stdout).toMatch(/\+ 7 created/);
    expect((await p.outputs()).states).toEqual(["active", "active"]);
    const bmc = lab.bmcs[0];
    for (const i of [1, 2]) {
      const s = bmc.system(i);
      expect(s.disk).toMatchObject({ image: IMAGE });
      expect(s.running).toBe(`os:${IMAGE}`);
      expect(s.powerState).toBe("On");
      expect(effects(bmc, "installer-started", i)).toHaveLength(1);
    }
    // The CD carried the first machine's installer; the second booted the URL, its CD carries only its config drive.
    expect(effects(bmc, "media-insert", 1).map((e) => e.detail?.image)).toEqual([IMAGE]);
    expect(effects(bmc, "media-insert", 2).map((e) => e.detail?.image)).toEqual([expect.stringMatching(/\/configdrive-.*\.iso$/)]);
    expect(bmc.sideEffects("booted").filter((e) => String(e.detail?.running).startsWith("installer:")).map((e) => e.detail?.target).sort()).toEqual(["Cd", "UefiHttp"]);
    expect(bmc.system(2).boot.httpUri).toBe(IMAGE);

    // The HTTP-booted machine has its config drive in the (free) CD, fetched from the image store
    // without credentials; xorriso reads what cloud-init would: label config-2, the user data,
    // network data and meta data under openstack/latest and openstack/2012-08-10.
    const [name] = [...lab.imageStore.images.keys()];
    expect(name).toMatch(/^configdrive-[0-9a-f-]{36}-[0-9a-f]{16}\.iso$/);
    expect(bmc.system(2).virtualMedia).toMatchObject({ inserted: true, image: `${lab.info.imageStore.url}/${name}` });
    const files = readIso(lab.imageStore.images.get(name)!);
    expect(files["<label>"]).toBe("config-2");
    for (const v of ["latest", "2012-08-10"]) {
      expect(files[`openstack/${v}/user_data`]).toBe(USER_DATA);
      expect(JSON.parse(files[`openstack/${v}/network_data.json`])).toEqual(JSON.parse(NETWORK_DATA));
      expect(JSON.parse(files[`openstack/${v}/meta_data.json`])).toMatchObject({ hostname: "web-1", name: "web-1", public_keys: { ops: expect.stringMatching(/^ssh-ed25519 /) } });
    }
    // The user data is a secret: not in the state's plain text, not in the CLI's output; the
    // drive's URL (which reads it) is a secret output too.
    const exported = JSON.stringify(await p.exportStack());
    expect(exported).not.toContain("lab-secret-token-5f1c");
    expect(exported).not.toContain(name);
    expect(up.stdout + up.stderr).not.toContain("lab-secret-token-5f1c");
    await p.pulumi(["preview", "--expect-no-changes"]);
  });

  it("destroying the deployments powers off, ejects and erases each disk once through Drive.SecureErase", async () => {
    await p.setConfig("deploy", "false");
    const up = await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect(up.stdout).toMatch(/- 2 deleted/);
    const bmc = lab.bmcs[0];
    for (const i of [1, 2]) {
      const s = bmc.system(i);
      expect(s.powerState).toBe("Off");
      expect(s.disk).toBe("empty");
      expect(s.virtualMedia.inserted).toBe(false);
      expect(effects(bmc, "disk-erased", i).map((e) => e.detail?.via)).toEqual(["Drive.SecureErase"]);
    }
    // The config drive (and the user data in it) is gone from the image store.
    expect(lab.imageStore.images.size).toBe(0);
    await p.pulumi(["preview", "--expect-no-changes"]);
  });
});

describe("faults through the engine on an iDRAC-like lab BMC", () => {
  let lab: Lab;
  let p: PulumiProject;
  const held: string[] = [];

  beforeAll(async () => {
    // A full session table (other tools hold both slots) and a 6 s power-on guard after every power-off.
    lab = await startLab({ flavor: "idrac-like", systems: 1, bootSeconds: 1, installSeconds: 2, sessionLimit: 2, powerOnGuardSeconds: 6 });
    const { address } = lab.info.nodes[0];
    const user = String(lab.info.providerConfig["baremetal:bmcUsername"]);
    const password = String(lab.info.providerConfig["baremetal:bmcPassword"]);
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${address}/redfish/v1/SessionService/Sessions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ UserName: user, Password: password }) });
      expect(res.status).toBe(201);
      held.push(res.headers.get("location")!);
    }
    p = await project(lab, "deploy-faults", ["virtual-media"]);
  });

  afterAll(async () => {
    await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    p?.remove();
    await lab?.stop();
  });

  it("a deploy survives the full session table, the power-on guard, 503s on power and lost answers to a boot change, a media insert and a power-on, with one side effect each", async () => {
    const bmc = lab.bmcs[0];
    const reset = /ComputerSystem\.Reset$/;
    bmc.failNext(2, { kind: "unavailable", retryAfterSeconds: 1 }, { method: "POST", path: reset });
    bmc.failNext(1, { kind: "reset", afterApply: true }, { method: "PATCH", path: /\/Systems\/[^/]+$/ });
    bmc.failNext(1, { kind: "reset", afterApply: true }, { method: "POST", path: /VirtualMedia\.InsertMedia$/ });
    bmc.failNext(1, { kind: "reset", afterApply: true }, { method: "POST", path: reset });
    const up = await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect(up.stdout).toMatch(/\+ 4 created/);
    expect((await p.outputs()).states).toEqual(["active"]);
    const s = bmc.system(1);
    expect(s.running).toBe(`os:${IMAGE}`);
    // Basic took over from the full session table: none of ours were added.
    expect(bmc.sessions()).toHaveLength(2);
    expect(bmc.requests({ method: "POST", path: reset }).filter((r) => r.fault === "unavailable")).toHaveLength(2);
    expect(bmc.requests({ method: "POST" }).filter((r) => r.fault === "reset")).toHaveLength(2);
    expect(bmc.requests({ method: "POST", path: reset }).some((r) => r.status === 409)).toBe(true); // the guard answered, and was waited out
    // Exactly the side effects a clean run has: one installer power-on, one OS power-on, one
    // installer, one insert and one eject, whatever was retried.
    expect(bmc.sideEffects("power-on")).toHaveLength(2);
    expect(bmc.sideEffects("installer-started")).toHaveLength(1);
    expect(bmc.sideEffects("media-insert")).toHaveLength(1);
    expect(bmc.sideEffects("media-eject")).toHaveLength(1);
    await p.pulumi(["preview", "--expect-no-changes"]);
  });

  it("cleanEraseDisks=always refuses to clean a node whose BMC cannot erase, naming the setting; auto cleans with a warning", async () => {
    await p.setConfig("baremetal:cleanEraseDisks", "always");
    await p.setConfig("deploy", "false");
    const failed = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(failed.code).not.toBe(0);
    expect(failed.stdout + failed.stderr).toMatch(/cleaning could not erase the disks: the BMC cannot erase drive\(s\) .*no Drive\.SecureErase.*cleanEraseDisks/);
    await p.setConfig("baremetal:cleanEraseDisks", "auto");
    const up = await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect(up.stdout + up.stderr).toMatch(/cleaning left some disks as they are: the BMC cannot erase drive/);
    expect(lab.bmcs[0].system(1).powerState).toBe("Off");
    expect(lab.bmcs[0].sideEffects("disk-erased")).toHaveLength(0);
  });
});

describe("a deploy that outlasts the retry budget fails clearly and the next up deploys", () => {
  let lab: Lab;
  let p: PulumiProject;

  beforeAll(async () => {
    lab = await startLab({ flavor: "generic", systems: 1, bootSeconds: 1, installSeconds: 2 });
    p = await project(lab, "deploy-retry", ["virtual-media"]);
  });

  afterAll(async () => {
    await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    p?.remove();
    await lab?.stop();
  });

  it("a BMC that keeps answering 500 to the power action: deploy failed with the BMC's words; fixed, up again deploys", async () => {
    const bmc = lab.bmcs[0];
    const rule = bmc.addFault({ method: "POST", path: /ComputerSystem\.Reset$/, count: Infinity, action: { kind: "status", status: 500, message: "InternalError" } });
    const failed = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(failed.code).not.toBe(0);
    expect(failed.stdout + failed.stderr).toMatch(/ComputerSystem\.Reset.*HTTP 500|HTTP 500.*ComputerSystem\.Reset/);
    const d = ((await p.exportStack()).deployment.resources ?? []).find((r) => r.type === "baremetal:compute:Deployment") as { outputs: Record<string, unknown> } | undefined;
    expect(d?.outputs.provisionState).toBe("deploy failed");
    expect(String(d?.outputs.lastError)).toMatch(/HTTP 500/);
    // A non-idempotent POST that answered 500 is never replayed.
    expect(bmc.requests({ method: "POST", path: /ComputerSystem\.Reset$/ })).toHaveLength(1);
    bmc.removeFault(rule);
    const up = await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect(up.stdout).toMatch(/~ 1 updated/);
    expect((await p.outputs()).states).toEqual(["active"]);
    expect(bmc.sideEffects("installer-started")).toHaveLength(1);
    await p.pulumi(["preview", "--expect-no-changes"]);
  });

  it("config drive inputs are checked at preview: bad network data, and no image store, each named", async () => {
    const { address, systemId } = lab.info.nodes[0];
    const machine = { address, systemId, bootInterface: "http", hostname: "web-2" };
    await p.setConfig("machines", JSON.stringify([{ ...machine, networkData: "{not json" }]));
    const bad = await p.pulumi(["preview"], { allowFail: true });
    expect(bad.code).not.toBe(0);
    expect(bad.stdout + bad.stderr).toMatch(/networkData.*not JSON/);
    await p.setConfig("machines", JSON.stringify([{ ...machine, networkData: NETWORK_DATA }]));
    await p.pulumi(["config", "rm", "baremetal:imageStoreUrl"]);
    const noStore = await p.pulumi(["preview"], { allowFail: true });
    expect(noStore.code).not.toBe(0);
    expect(noStore.stdout + noStore.stderr).toMatch(/hostname.*needs an image store.*set the provider's imageStoreUrl/s);
  });
});
