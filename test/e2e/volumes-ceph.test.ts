/**
 * Ceph volumes through the real engine: a tenant's member clones a golden image (a protected RBD
 * snapshot made by the operator) into a volume of its own, copy-on-write, and exports it over iSCSI
 * (tgt's rbd backing store) to the node its allocation holds: the node's initiator with the
 * attachment's CHAP secret sees the volume; a wrong secret is refused. An encrypted RBD volume gets
 * its LUKS2 header at the source (checked on the IMAGE by cryptsetup with the key from the key
 * manager), and a KeyRotationPolicy rotates its keyslot in place, also with the provider killed
 * half-way. Encrypting a clone of a plaintext golden image is refused and leaves no clone. Destroy
 * removes the exports and the volumes and leaves the golden image.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { KeyManagerDriver } from "../../provider/src/drivers/kinds/keymanager";
import { createLocalKeyManager } from "../../provider/src/drivers/keymanager-local";
import { Luks } from "../../provider/src/drivers/luks";
import { CephStorageDriver } from "../../provider/src/drivers/storage-ceph/driver";
import { LUKS2_HEADER_BYTES, readHead } from "../../provider/src/drivers/storage-ceph/luks";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { type CephInstance, startCeph } from "../harness/ceph";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { startTgt, type TgtInstance } from "../harness/tgt";

jest.setTimeout(600_000);

const OPERATOR = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
export const nodeId = new baremetal.compute.Node("n0", { bmc: { address: config.require("bmcAddress"), systemId: config.require("systemId") }, owner: "operator-proj", lessee: "project-a" }).id;
`;

const TENANT = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const volume = new baremetal.storage.Volume("root", { sizeGib: 1, sourceSnapshot: config.require("golden") });
const allocation = new baremetal.compute.Allocation("a0", { candidateNodes: [config.require("nodeId")] });
const att = new baremetal.storage.VolumeAttachment("root", { volumeId: volume.volumeId, allocationId: allocation.allocationId });
const key = new baremetal.keys.EncryptionKey("data-key");
const data = new baremetal.storage.Volume("data", { sizeGib: 1, encryption: { keyId: key.keyId, unlockTimeMs: 200 } });
new baremetal.storage.VolumeAttachment("data", { volumeId: data.volumeId, allocationId: allocation.allocationId });
const policy = new baremetal.keys.KeyRotationPolicy("pci", {
  cryptoperiod: "90d",
  volumes: [{ volumeId: data.volumeId, keyId: key.keyId }],
  rotateNow: config.get("rotateNow"),
  reencrypt: config.getBoolean("reencrypt"),
  unlockTimeMs: 200,
});
if (config.getBoolean("badClone")) {
  new baremetal.storage.Volume("enc-clone", { sizeGib: 1, sourceSnapshot: config.require("golden"), encryption: { keyId: key.keyId, unlockTimeMs: 200 } });
}
export const dataId = data.volumeId;
export const luksUuid = data.luksUuid;
export const firstKey = key.keyId;
export const currentKeys = policy.currentKeys;
export const keyVersions = policy.keyVersions;
export const volumeId = volume.volumeId;
export const parent = volume.parent;
export const targetIqn = att.targetIqn;
export const initiatorIqn = att.initiatorIqn;
export const chapUser = att.chapUser;
export const chapSecret = att.chapSecret;
`;

describe("ceph volumes cloned from a golden image, encrypted at the source, exported over iSCSI, through the engine", () => {
  let ceph: CephInstance;
  let tgt: TgtInstance;
  let lab: Lab;
  let operator: PulumiProject;
  let tenant: PulumiProject;
  let keys: KeyManagerDriver;
  let rbd: CephStorageDriver;
  const luks = new Luks();
  const masterKey = randomBytes(32).toString("base64");

  /** Which keys open the data volume's IMAGE now (cryptsetup on its first 16 MiB, read from Ceph). */
  async function opens(volumeId: string, ...keyIds: string[]): Promise<boolean[]> {
    const head = path.join(tenant.dir, "head");
    await readHead(rbd, volumeId, LUKS2_HEADER_BYTES, head);
    try {
      const out: boolean[] = [];
      for (const id of keyIds) out.push(await luks.testKey(head, await keys.getKeyMaterial(id)));
      return out;
    } finally {
      fs.rmSync(head, { force: true });
    }
  }

  beforeAll(async () => {
    [ceph, tgt, lab] = await Promise.all([startCeph(), startTgt(), startLab({ flavor: "generic", systems: 1, bootSeconds: 0 })]);
    // The operator's golden image, snapshotted and protected.
    await ceph.rbd(["create", "--size", "8M", `${ceph.pool}/golden`]);
    await ceph.rbd(["snap", "create", `${ceph.pool}/golden@v1`]);
    await ceph.rbd(["snap", "protect", `${ceph.pool}/golden@v1`]);
    rbd = new CephStorageDriver({ address: ceph.address, key: ceph.clientKey });

    operator = await newProject("ceph-operator", OPERATOR);
    tenant = await newProject("ceph-tenant", TENANT);
    const inventoryUrl = `sqlite://${operator.dir}/inventory.db`;
    for (const p of [operator, tenant]) {
      for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
      await p.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    }
    await operator.setConfig("bmcAddress", lab.info.nodes[0].address);
    await operator.setConfig("systemId", lab.info.nodes[0].systemId);
    await operator.pulumi(["up", "--yes", "--skip-preview"]);
    const { nodeId } = (await operator.outputs()) as { nodeId: string };
    const keyStore = `file://${tenant.dir}/keys`;
    keys = createLocalKeyManager({ address: keyStore, project: "project-a", masterKey });
    await tenant.setConfig("baremetal:project", "project-a");
    await tenant.setConfig("baremetal:roles", JSON.stringify(["member"]));
    await tenant.setConfig("baremetal:keyManagers", JSON.stringify({ local: { driver: "local", address: keyStore } }));
    await tenant.setConfig("baremetal:keyManagerCredentials", JSON.stringify({ local: { masterKey } }), true);
    await tenant.setConfig(
      "baremetal:storageBackends",
      JSON.stringify({ rbd: { driver: "ceph", address: ceph.address, iscsi: { portal: tgt.portal, controlPort: tgt.controlPort, socketPath: tgt.socketPath } } }),
    );
    await tenant.setConfig("baremetal:storageCredentials", JSON.stringify({ rbd: { key: ceph.clientKey } }), true);
    await tenant.setConfig("nodeId", nodeId);
    await tenant.setConfig("golden", `${ceph.pool}/golden@v1`);
  });

  afterAll(async () => {
    for (const p of [tenant, operator]) await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of [tenant, operator]) p?.remove();
    await keys?.close();
    await rbd?.close();
    await Promise.all([tgt?.stop(), lab?.stop()]);
    await ceph?.stop();
  });

  it("a member's clone of the golden image, exported to its node only; its encrypted volume has a LUKS2 header on the image", async () => {
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    const out = (await tenant.outputs()) as { volumeId: string; parent: string; targetIqn: string; initiatorIqn: string; chapUser: string; chapSecret: string; dataId: string; luksUuid: string; firstKey: string };
    expect(out.volumeId).toBe("project-a--root");
    expect(out.parent).toBe(`${ceph.pool}/golden@v1`);
    const info = JSON.parse(await ceph.rbd(["info", "--format", "json", `${ceph.pool}/project-a--root`])) as { size: number; parent?: { image: string; snapshot: string } };
    expect(info.size).toBe(1024 ** 3);
    expect(info.parent).toMatchObject({ image: "golden", snapshot: "v1" });
    const login = { target: out.targetIqn, lun: 1, initiator: out.initiatorIqn, user: out.chapUser, secret: out.chapSecret };
    expect(await tgt.readCapacity(login)).toMatchObject({ ok: true, bytes: 1024 ** 3 });
    expect((await tgt.readCapacity({ ...login, secret: `${out.chapSecret}x` })).ok).toBe(false);

    // The encrypted volume: cryptsetup reads the header from the image and opens it with the key.
    expect(out.dataId).toBe("project-a--data");
    const head = path.join(tenant.dir, "head");
    await readHead(rbd, out.dataId, LUKS2_HEADER_BYTES, head);
    const dump = await luks.dump(head);
    fs.rmSync(head);
    expect(dump).toMatchObject({ uuid: out.luksUuid, cipher: "aes-xts-plain64", keyBits: 512 });
    expect(dump.keyslots).toHaveLength(1);
    expect(await opens(out.dataId, out.firstKey)).toEqual([true]);

    const state = JSON.stringify(await tenant.exportStack());
    expect(state).not.toContain(ceph.clientKey);
    expect(state).not.toContain((await keys.getKeyMaterial(out.firstKey)).toString("hex"));
    expect(state).not.toContain((await keys.getKeyMaterial(out.firstKey)).toString("base64"));
    await tenant.pulumi(["preview", "--expect-no-changes"]);
    await tenant.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]); // reading back finds what was made
  });

  it("the policy rotates the RBD volume's keyslot in place: the image opens with the new key only", async () => {
    const before = (await tenant.outputs()) as { dataId: string; firstKey: string; luksUuid: string };
    // Full re-encryption rewrites the data: not in place on RBD, refused at preview naming reencrypt.
    await tenant.setConfig("reencrypt", "true");
    const refused = await tenant.pulumi(["preview"], { allowFail: true });
    expect(refused.code).not.toBe(0);
    expect(refused.stdout + refused.stderr).toMatch(/reencrypt[\s\S]*ceph backend, where only keyslots can be rotated in place/);
    await tenant.setConfig("reencrypt", "false");
    await tenant.setConfig("rotateNow", "incident-1");
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    const after = (await tenant.outputs()) as { currentKeys: Record<string, string>; keyVersions: Record<string, number>; luksUuid: string };
    const fresh = after.currentKeys[before.dataId];
    expect(fresh).not.toBe(before.firstKey);
    expect(after.keyVersions[before.dataId]).toBe(2);
    expect(await opens(before.dataId, before.firstKey, fresh)).toEqual([false, true]);
    expect(await keys.describeKey(before.firstKey)).toMatchObject({ state: "deactivated" });
    await tenant.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
    expect(((await tenant.outputs()) as { luksUuid: string }).luksUuid).toBe(before.luksUuid); // same volume key: a keyslot rotation
  });

  for (const step of ["added", "removed"]) {
    it(`the provider killed at '${step}' of an RBD rotation: the image still opens, the next up finishes`, async () => {
      const before = (await tenant.outputs()) as { dataId: string; currentKeys: Record<string, string>; keyVersions: Record<string, number> };
      const old = before.currentKeys[before.dataId];
      await tenant.setConfig("rotateNow", `crash-${step}`);
      tenant.env.BAREMETAL_FAULT_CRASH_AT = step;
      const crashed = await tenant.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
      delete tenant.env.BAREMETAL_FAULT_CRASH_AT;
      expect(crashed.code).not.toBe(0);
      const successor = (await keys.listKeys()).find((k) => k.replaces === old)!;
      expect(successor).toBeDefined();
      expect(await opens(before.dataId, old, successor.id)).toEqual(step === "added" ? [true, true] : [false, true]);
      await tenant.pulumi(["up", "--yes", "--skip-preview"]);
      const after = (await tenant.outputs()) as { currentKeys: Record<string, string>; keyVersions: Record<string, number> };
      expect(after.currentKeys[before.dataId]).toBe(successor.id);
      expect(after.keyVersions[before.dataId]).toBe(before.keyVersions[before.dataId] + 1);
      expect(await opens(before.dataId, old, successor.id)).toEqual([false, true]);
    });
  }

  it("encrypting a clone of a plaintext golden image is refused naming sourceSnapshot, and no clone stays", async () => {
    await tenant.setConfig("badClone", "true");
    const r = await tenant.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/sourceSnapshot.*holds no LUKS2 header|holds no LUKS2 header.*clone of a plaintext image/s);
    const images = JSON.parse(await ceph.rbd(["ls", "--format", "json", ceph.pool])) as string[];
    expect(images).not.toContain("project-a--enc-clone");
    expect(JSON.stringify(await tenant.exportStack())).not.toContain("project-a--enc-clone");
    await tenant.setConfig("badClone", "false");
  });

  it("destroy removes the exports and the volumes, and leaves the golden image", async () => {
    await tenant.pulumi(["destroy", "--yes", "--skip-preview"]);
    const images = JSON.parse(await ceph.rbd(["ls", "--format", "json", ceph.pool])) as string[];
    expect(images).toContain("golden");
    expect(images).not.toContain("project-a--root");
    expect(images).not.toContain("project-a--data");
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).not.toContain("project-a--");
  });
});
