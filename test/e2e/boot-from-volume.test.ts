/**
 * Boot from volume over iSCSI, through the real engine: a tenant's member (project-a) makes a
 * bootable `file` volume (its backing file given an MBR boot sector, as writing an image would),
 * an allocation of a node the operator enrolled, and a VolumeAttachment with `boot: true`. A real
 * tgt exports the volume with this attachment's CHAP; the lab's Redfish BMC then holds, on the
 * NetworkDeviceFunction of the node's first NIC, BootMode iSCSI with the target, LUN, initiator
 * name and CHAP user (the secret reads back null), and a continuous RemoteDrive boot override.
 *
 * At power-on OUR EMULATOR (a real BMC leaves this to the machine's firmware) logs in to the
 * configured target with the configured initiator name and CHAP credentials using libiscsi, and
 * records the outcome on the system: the login to the real tgtd succeeds. A wrong CHAP secret set
 * by hand on the BMC fails that login, and refresh cannot see it (the secret is write-only: it
 * reads back null, so drift on the secret is not detectable); a CHAP user changed by hand is seen
 * by refresh (bootDrift names it) and `up` sets everything again, the secret included, after which
 * the node logs in again. `boot: true` on a volume without a boot sector is refused naming `boot`
 * and the volumeId, before anything is exported; a second boot attachment of the same node is
 * refused naming the target it already boots from. Destroy puts BootMode and the boot override
 * back and unexports.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { RedfishDriver } from "../../provider/src/drivers/redfish/driver";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import type { LabBmc } from "../../provider/src/lab/bmc";
import { type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { fileBackend, type OperatorStack, operatorStack, stateResources, tenantStack } from "../harness/storage-stack";
import { startTgt, type TgtInstance } from "../harness/tgt";

jest.setTimeout(600_000);

const TENANT = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const root = new baremetal.storage.Volume("root", { sizeGib: 1, bootable: true });
const data = new baremetal.storage.Volume("data", { sizeGib: 1 });
export const rootId = root.volumeId;
export const dataId = data.volumeId;
export const rootBootable = root.bootable;
export let targetIqn: pulumi.Output<string> | undefined;
export let portal: pulumi.Output<string> | undefined;
export let lun: pulumi.Output<number> | undefined;
export let initiatorIqn: pulumi.Output<string> | undefined;
export let chapUser: pulumi.Output<string> | undefined;
export let chapSecret: pulumi.Output<string> | undefined;
export let bootFunction: pulumi.Output<string | undefined> | undefined;
export let bootTarget: pulumi.Output<string | undefined> | undefined;
export let bootDrift: pulumi.Output<string | undefined> | undefined;
if (config.getBoolean("attach")) {
  const allocation = new baremetal.compute.Allocation("a0", { candidateNodes: [config.require("nodeId")] });
  const att = new baremetal.storage.VolumeAttachment("root", { volumeId: root.volumeId, allocationId: allocation.allocationId, boot: true });
  ({ targetIqn, portal, lun, initiatorIqn, chapUser, chapSecret, bootFunction, bootTarget, bootDrift } = att);
  if (config.getBoolean("bootData")) {
    new baremetal.storage.VolumeAttachment("data", { volumeId: data.volumeId, allocationId: allocation.allocationId, boot: true });
  }
}
`;

/** A 512-byte MBR: one bootable Linux partition and the 55 AA boot signature (what an image begins with). */
function mbr(): Buffer {
  const b = Buffer.alloc(512);
  b[446] = 0x80; // active
  b[446 + 4] = 0x83; // Linux
  b.writeUInt32LE(2048, 446 + 8);
  b.writeUInt32LE(2 * 1024 * 1024 - 2048, 446 + 12);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

function writeAt(file: string, data: Buffer, offset: number): void {
  const fd = fs.openSync(file, "r+");
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

interface Out {
  rootId: string;
  dataId: string;
  rootBootable: boolean;
  targetIqn: string;
  portal: string;
  lun: number;
  initiatorIqn: string;
  chapUser: string;
  chapSecret: string;
  bootFunction: string;
  bootTarget: string;
  bootDrift?: string;
}

describe("boot from volume over iSCSI, through the engine (lab Redfish BMC, real tgt, libiscsi login at boot)", () => {
  let lab: Lab;
  let bmc: LabBmc;
  let tgt: TgtInstance;
  let dir: string;
  let operator: OperatorStack;
  let tenant: PulumiProject;
  let redfish: RedfishDriver;
  let systemId: string;

  const bootNode = async () => {
    await redfish.setPower(systemId, "off");
    await redfish.setPower(systemId, "on");
    await bmc.settled();
    return bmc.system(1);
  };

  beforeAll(async () => {
    [tgt, lab] = await Promise.all([startTgt(), startLab({ flavor: "generic", systems: 1, bootSeconds: 0 })]);
    bmc = lab.bmcs[0];
    systemId = bmc.system(1).id;
    redfish = new RedfishDriver({ address: bmc.url, username: lab.info.credentials.username, password: lab.info.credentials.password, verifyTls: false, requestTimeoutMs: 10_000, maxConcurrency: 2 });
    dir = fs.mkdtempSync("/tmp/bfv-e2e-");
    operator = await operatorStack("bfv-operator", lab, { nodes: 1, lessee: "project-a" });
    tenant = await tenantStack("bfv-project-a", TENANT, {
      project: "project-a",
      inventoryUrl: operator.inventoryUrl,
      lab,
      storageBackends: { lab: fileBackend(dir, tgt) },
      config: { nodeId: operator.nodeIds[0] },
    });
  });

  afterAll(async () => {
    for (const p of [tenant, operator?.project]) await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of [tenant, operator?.project]) p?.remove();
    await redfish?.close();
    await Promise.all([tgt?.stop(), lab?.stop()]);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it("a bootable volume, attached with boot: true, puts the target, LUN, initiator and CHAP user on the node's NetworkDeviceFunction", async () => {
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    const first = (await tenant.outputs()) as unknown as Out;
    expect(first.rootBootable).toBe(true);
    // The image: its boot sector written to the volume (the storage host's backing file).
    writeAt(path.join(dir, `${first.rootId}.img`), mbr(), 0);

    await tenant.setConfig("attach", "true");
    const t0 = Date.now();
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    const upMs = Date.now() - t0;
    const out = (await tenant.outputs()) as unknown as Out;
    expect(out.portal).toBe(tgt.portal);
    expect(out.bootTarget).toBe("RemoteDrive");
    const sys = bmc.system(1);
    expect(out.bootFunction).toMatch(/\/Chassis\/[^/]+\/NetworkAdapters\/NetworkAdapter1\/NetworkDeviceFunctions\/NIC1-1$/);
    expect(sys.boot).toMatchObject({ target: "RemoteDrive", enabled: "Continuous" });
    const [address, port] = [tgt.portal.split(":")[0], Number(tgt.portal.split(":")[1])];
    expect(sys.networkDeviceFunction).toMatchObject({
      mac: sys.macAddresses[0],
      bootMode: "iSCSI",
      chapSecretSet: true,
      iSCSIBoot: {
        InitiatorName: out.initiatorIqn,
        PrimaryTargetName: out.targetIqn,
        PrimaryTargetIPAddress: address,
        PrimaryTargetTCPPort: port,
        PrimaryLUN: out.lun,
        AuthenticationMethod: "CHAP",
        CHAPUsername: out.chapUser,
        CHAPSecret: null,
        TargetInfoViaDHCP: false,
      },
    });
    // Over Redfish the secret reads back null; nowhere in the BMC's log or the stack's state in clear.
    const fn = (await redfish.deviceFunctions(systemId))[0];
    expect(fn.iscsi?.PrimaryTargetName).toBe(out.targetIqn);
    expect(JSON.stringify(await redfish.client.get(out.bootFunction))).not.toContain(out.chapSecret);
    expect(JSON.stringify(bmc.requests())).not.toContain(out.chapSecret);
    expect(JSON.stringify(await tenant.exportStack())).not.toContain(out.chapSecret);
    const [att] = await stateResources(tenant, "baremetal:storage:VolumeAttachment");
    expect(JSON.parse((att.outputs as { bootOriginal: string }).bootOriginal)).toMatchObject({ bootMode: "Disabled", bootOverride: { target: "None", enabled: "Disabled" } });
    process.stdout.write(`boot-from-volume: up (allocation, export, BMC iSCSI boot wiring) ${upMs} ms\n`);
    await tenant.pulumi(["preview", "--expect-no-changes"]);
  });

  it("power-on: the emulated node logs in to the real tgt with the configured initiator and CHAP, and runs from the LUN", async () => {
    const out = (await tenant.outputs()) as unknown as Out;
    const t0 = Date.now();
    const sys = await bootNode();
    expect(sys.iscsiBoot).toMatchObject({ state: "logged-in", portal: out.portal, target: out.targetIqn, lun: out.lun, initiator: out.initiatorIqn, chapUser: out.chapUser, capacityBytes: 1024 ** 3 });
    expect(sys.running).toBe(`os:iscsi://${out.portal}/${out.targetIqn}/${out.lun}`);
    process.stdout.write(`boot-from-volume: power cycle + emulated firmware login (libiscsi against tgtd) ${Date.now() - t0} ms\n`);
    await tenant.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
  });

  it("a wrong CHAP secret set by hand fails the login, and refresh cannot see it (write-only); a CHAP user changed by hand is drift that up repairs, secret included", async () => {
    const out = (await tenant.outputs()) as unknown as Out;
    await redfish.client.patch(out.bootFunction, { iSCSIBoot: { CHAPSecret: "not-the-attachments-secret" } });
    const failed = await bootNode();
    expect(failed.iscsiBoot?.state).toBe("failed");
    expect(failed.running).toBe("nothing");
    // Not detectable over Redfish: the secret reads back null, so refresh finds nothing to change.
    await tenant.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);

    await redfish.client.patch(out.bootFunction, { iSCSIBoot: { CHAPUsername: "changed-by-hand" } });
    const refresh = await tenant.pulumi(["refresh", "--yes", "--skip-preview"]);
    expect(refresh.stdout + refresh.stderr).toMatch(/iSCSIBoot\.CHAPUsername \(BMC has "changed-by-hand", expected "c[0-9a-f]+"\)/);
    // Refresh updates the resource's state (the stack's own outputs stay as the last up left them).
    const [drifted] = await stateResources(tenant, "baremetal:storage:VolumeAttachment");
    expect((drifted.outputs as { bootDrift?: string }).bootDrift).toMatch(/^iSCSIBoot\.CHAPUsername \(BMC has "changed-by-hand"/);
    const preview = await tenant.pulumi(["preview", "--diff"]);
    expect(preview.stdout).toMatch(/VolumeAttachment|root/);
    expect(preview.stdout).not.toMatch(/replace/);

    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    const [repaired] = await stateResources(tenant, "baremetal:storage:VolumeAttachment");
    expect((repaired.outputs as { bootDrift?: string }).bootDrift).toBeUndefined();
    expect(bmc.system(1).networkDeviceFunction).toMatchObject({ iSCSIBoot: { CHAPUsername: out.chapUser } });
    const again = await bootNode();
    expect(again.iscsiBoot).toMatchObject({ state: "logged-in", chapUser: out.chapUser });
    await tenant.pulumi(["preview", "--expect-no-changes"]);
  });

  it("boot: true is refused for a volume without a boot sector (naming boot and the volumeId, nothing exported), and for a second boot volume of the node", async () => {
    const out = (await tenant.outputs()) as unknown as Out;
    await tenant.setConfig("bootData", "true");
    const up = await tenant.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(up.code).not.toBe(0);
    expect(up.stdout + up.stderr).toMatch(new RegExp(`boot: volume ${out.dataId} \\(volumeId\\) is not bootable: it holds no boot sector`));
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).not.toContain(out.dataId);
    expect(bmc.system(1).networkDeviceFunction).toMatchObject({ iSCSIBoot: { PrimaryTargetName: out.targetIqn } });

    writeAt(path.join(dir, `${out.dataId}.img`), mbr(), 0);
    const second = await tenant.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(second.code).not.toBe(0);
    expect(second.stdout + second.stderr).toMatch(new RegExp(`already boots over iSCSI from ${out.targetIqn.replace(/\./g, "\\.")}`));
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).not.toContain(out.dataId);
    expect(bmc.system(1).networkDeviceFunction).toMatchObject({ iSCSIBoot: { PrimaryTargetName: out.targetIqn } });

    await tenant.pulumi(["config", "rm", "bootData"]);
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
  });

  it("destroy puts BootMode and the boot override back and unexports", async () => {
    const out = (await tenant.outputs()) as unknown as Out;
    await tenant.pulumi(["destroy", "--yes", "--skip-preview"]);
    const sys = bmc.system(1);
    expect(sys.boot).toMatchObject({ target: "None", enabled: "Disabled" });
    expect(sys.networkDeviceFunction).toMatchObject({ bootMode: "Disabled", chapSecretSet: false, iSCSIBoot: { PrimaryTargetName: null, InitiatorName: null, CHAPUsername: null, AuthenticationMethod: "None" } });
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).not.toContain(out.rootId);
  });
});
