/**
 * Node -> Allocation -> Deployment through the real engine against sushy-tools (OpenStack's
 * Redfish emulator). sushy's fake machines run nothing, so this test plays the deploy image's
 * part: once the installer has booted from the virtual CD, it powers the machine off, which is
 * how an agentless installer reports that the disk is written; for the PXE machine it also plays
 * the site's PXE service. Everything else is sushy's real Redfish: virtual media (it downloads
 * the deploy image and the config drive, which rides in its Floppy/USB drive), boot overrides
 * and power.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { type SushyInstance, startSushy } from "../harness/sushy";
import { type LabImageStore, startImageStore } from "../../provider/src/lab/image-store";

jest.setTimeout(300_000);

const USER = "deploy-admin";
const PASSWORD = "deploy-Bmc-Pa55";
const INSTALL_MS = 3000;

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const node = new baremetal.compute.Node("n0", { bmc: { address: config.require("bmcAddress"), systemId: config.require("systemId") }, resourceClass: "small" });
const allocation = new baremetal.compute.Allocation("a0", { candidateNodes: [node.id] });
const deployment = config.getBoolean("deploy") === false ? undefined : new baremetal.compute.Deployment("d0", {
  allocationId: allocation.allocationId,
  imageUrl: config.require("imageUrl"),
  imageChecksum: "sha256:" + "ab".repeat(32),
  userData: config.requireSecret("userData"),
  hostname: "sushy-0",
}, { customTimeouts: { create: "4m" } });
// The second machine network-boots its installer (PXE): the site's PXE service is the test here.
const node1 = new baremetal.compute.Node("n1", { bmc: { address: config.require("bmcAddress"), systemId: config.require("systemId1") }, resourceClass: "pxe" });
const allocation1 = new baremetal.compute.Allocation("a1", { candidateNodes: [node1.id] });
const pxe = config.getBoolean("deploy") === false ? undefined : new baremetal.compute.Deployment("d1", {
  allocationId: allocation1.allocationId,
  imageUrl: config.require("imageUrl"),
  bootInterface: "pxe",
}, { customTimeouts: { create: "4m" } });
export const nodeId = node.id;
export const state = deployment?.provisionState;
export const pxeState = pxe?.provisionState;
`;

describe("deployment over virtual media (with a config drive) and PXE against sushy-tools", () => {
  let bmc: SushyInstance;
  let images: Server;
  let store: LabImageStore;
  let imageUrl: string;
  let p: PulumiProject;
  let installerRuns = 0;
  const installerErrors: string[] = [];
  let stopInstaller = false;
  let installer: Promise<void>;

  /** Plays the installer: when the machine runs from the inserted CD (or from the network), it "writes the disk" and powers off. */
  async function emulateInstaller(systemId: string): Promise<void> {
    const sys = `/redfish/v1/Systems/${systemId}`;
    let wasRunningInstaller = false;
    while (!stopInstaller) {
      try {
        const [system, cd] = await Promise.all([bmc.http.get(sys), bmc.http.get(`${sys}/VirtualMedia/Cd`)]);
        const target = system.data.Boot?.BootSourceOverrideTarget;
        const runningFromCd = system.data.PowerState === "On" && ((cd.data.Inserted === true && target === "Cd") || target === "Pxe");
        if (runningFromCd && !wasRunningInstaller) {
          wasRunningInstaller = true;
          // "Writing the disk" takes a few seconds, as a small image would on a real machine.
          await new Promise((r) => setTimeout(r, INSTALL_MS));
          installerRuns++;
          await bmc.http.post(`${sys}/Actions/ComputerSystem.Reset`, { ResetType: "ForceOff" });
        }
        if (!runningFromCd) wasRunningInstaller = false;
      } catch (e) {
        // A failed poll (sushy restarting a request, a socket reset) must not end the installer.
        installerErrors.push(String(e));
      }
      await new Promise((r) => setTimeout(r, 300));
    }
  }

  beforeAll(async () => {
    bmc = await startSushy({ systems: 2, username: USER, password: PASSWORD, powerState: "Off" });
    images = createServer((_req, res) => res.end(Buffer.alloc(32 * 1024, 0x42)));
    await new Promise<void>((r) => images.listen(0, "127.0.0.1", () => r()));
    imageUrl = `http://127.0.0.1:${(images.address() as AddressInfo).port}/deploy.iso`;
    p = await newProject("deploy", PROGRAM);
    await p.setConfig("baremetal:inventoryUrl", `sqlite://${p.dir}/inventory.db`, true);
    await p.setConfig("baremetal:bmcUsername", USER);
    await p.setConfig("baremetal:bmcPassword", PASSWORD, true);
    await p.setConfig("bmcAddress", bmc.url);
    await p.setConfig("systemId", bmc.systemIds[0]);
    await p.setConfig("imageUrl", imageUrl);
    // The config drive goes through an image store (ours, in process) that sushy fetches from.
    store = await startImageStore({ username: "writer", password: "store-Pa55-word" });
    await p.setConfig("baremetal:imageStoreUrl", store.writerUrl, true);
    await p.setConfig("userData", "#cloud-config\nhostname: sushy-0", true);
    await p.setConfig("systemId1", bmc.systemIds[1]);
    installer = Promise.all(bmc.systemIds.map((id) => emulateInstaller(id))).then(() => undefined);
  });

  afterAll(async () => {
    stopInstaller = true;
    await installer?.catch(() => undefined);
    await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    p?.remove();
    await new Promise((r) => images?.close(r));
    await store?.close();
    await bmc?.stop();
  });

  const system = async () => (await bmc.http.get(`/redfish/v1/Systems/${bmc.systemIds[0]}`)).data;
  const cd = async () => (await bmc.http.get(`/redfish/v1/Systems/${bmc.systemIds[0]}/VirtualMedia/Cd`)).data;

  it("up enrols, allocates and deploys: the node boots the installer from the CD, then runs from disk", async () => {
    const up = await p.pulumi(["up", "--yes", "--skip-preview"]);
    expect(up.stdout).toMatch(/\+ 7 created/);
    expect((await p.outputs()).state).toBe("active");
    expect((await p.outputs()).pxeState).toBe("active");
    expect(installerRuns).toBe(2);
    // The PXE machine: no media, network boot used once, then its disk.
    const pxeSystem = (await bmc.http.get(`/redfish/v1/Systems/${bmc.systemIds[1]}`)).data;
    expect(pxeSystem.PowerState).toBe("On");
    expect(pxeSystem.Boot.BootSourceOverrideTarget).toBe("Hdd");
    expect((await bmc.http.get(`/redfish/v1/Systems/${bmc.systemIds[1]}/VirtualMedia/Cd`)).data.Inserted).toBe(false);
    const s = await system();
    expect(s.PowerState).toBe("On");
    expect(s.Boot.BootSourceOverrideTarget).toBe("Hdd");
    expect((await cd()).Inserted).toBe(false);
    // The config drive rides in sushy's second virtual drive (Floppy, which takes USB stick
    // images), and sushy downloaded it from the store.
    const [name] = [...store.images.keys()];
    const floppy = (await bmc.http.get(`/redfish/v1/Systems/${bmc.systemIds[0]}/VirtualMedia/Floppy`)).data;
    expect(floppy).toMatchObject({ Inserted: true, Image: `${store.url}/${name}` });
    expect(store.fetches.get(name)).toBeGreaterThanOrEqual(1);
    await p.pulumi(["preview", "--expect-no-changes"]);
  });

  it("refresh keeps an active deployment as it is", async () => {
    await p.pulumi(["refresh", "--yes", "--skip-preview"]);
    await p.pulumi(["preview", "--expect-no-changes"]);
  });

  it("destroying the deployment cleans the node (off, no media, no override) and keeps it allocated", async () => {
    await p.setConfig("deploy", "false");
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    const s = await system();
    expect(s.PowerState).toBe("Off");
    expect((await cd()).Inserted).toBe(false);
    expect((await bmc.http.get(`/redfish/v1/Systems/${bmc.systemIds[0]}/VirtualMedia/Floppy`)).data.Inserted).toBe(false);
    expect(store.images.size).toBe(0);
    const { deployment } = await p.exportStack();
    const node = (deployment.resources ?? []).find((r) => r.type === "baremetal:compute:Node") as { outputs: Record<string, unknown> };
    const allocation = (deployment.resources ?? []).find((r) => r.type === "baremetal:compute:Allocation");
    expect(allocation).toBeDefined();
    await p.pulumi(["refresh", "--yes", "--skip-preview"]);
    const refreshed = ((await p.exportStack()).deployment.resources ?? []).find((r) => r.type === "baremetal:compute:Node") as { outputs: Record<string, unknown> };
    expect(refreshed.outputs.provisionState).toBe("available");
    expect(refreshed.outputs.allocationId).toBe(node.outputs.allocationId ?? refreshed.outputs.allocationId);
  });
});
