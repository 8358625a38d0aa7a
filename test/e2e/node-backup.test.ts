/**
 * A node's own disk backed up through the real engine into a real S3 (Ceph radosgw, which checks
 * SigV4), and restored into a new Volume bit for bit.
 *
 * What is EMULATED: the machine. The node is a system of our embedded lab BMC (provider/src/lab,
 * Redfish in process); its disk is a file of the lab (diskBytes), written by the lab's installer
 * with the deploy image's bytes; and when it boots the backup image from its virtual CD, OUR
 * EMULATOR plays the backup agent a real machine would boot (provider/src/lab/backup-agent.ts):
 * it reads the job from the ISO and streams the disk file to radosgw with the job's credentials.
 * What is REAL: the provider's whole flow through the Pulumi engine (node lock, power, virtual
 * media, boot once, waiting for the manifest, putting the node back, the image store), the agent's
 * code (the same one a real image would run), radosgw, the key manager wrapping the data key, and
 * the restore into a file volume.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { S3BackupTarget } from "../../provider/src/drivers/backup-s3/driver";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { type CephInstance, startCeph } from "../harness/ceph";
import type { PulumiProject } from "../harness/pulumi";
import { SDK_IMPORT } from "../harness/pulumi";
import { type RadosgwInstance, startRadosgw } from "../harness/radosgw";
import { fileBackend, operatorStack, type OperatorStack, tenantStack } from "../harness/storage-stack";

jest.setTimeout(900_000);

const MiB = 1024 * 1024;
const DISK_BYTES = 32 * MiB;

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const allocation = new baremetal.compute.Allocation("a", { candidateNodes: [config.require("nodeId")] });
const d = new baremetal.compute.Deployment("d", { allocationId: allocation.allocationId, imageUrl: config.require("imageUrl") }, { customTimeouts: { create: "3m", delete: "3m" } });
const key = new baremetal.keys.EncryptionKey("backup-key");
export const nodeId = d.nodeId;
if (config.getBoolean("backup")) {
  const b = new baremetal.backup.Backup("nb", { nodeId: d.nodeId, keyId: key.keyId, trigger: config.get("trigger") }, { customTimeouts: { create: "5m" } });
  module.exports.nb = { backupId: b.backupId, bytesRead: b.bytesRead, bytesStored: b.bytesStored, chunksStored: b.chunksStored, chunksReused: b.chunksReused, parent: b.parent, encryption: b.encryption, sizeBytes: b.sizeBytes, checksum: b.checksum };
}
const policy = config.get("policy");
if (policy) {
  const pol = new baremetal.backup.BackupPolicy("nodes", { schedule: "daily", retention: { last: 1 }, nodes: [{ nodeId, keyId: key.keyId }], backupNow: policy }, { customTimeouts: { create: "5m", update: "5m" } });
  module.exports.policy = { backups: pol.backups, lastPruned: pol.lastPruned };
}
const restore = config.get("restore");
if (restore) module.exports.restored = new baremetal.storage.Volume("r1", { sizeGib: 1, sourceBackup: { backupId: restore } }).volumeId;
`;

interface NodeBackupOut {
  backupId: string;
  bytesRead: number;
  bytesStored: number;
  chunksStored: number;
  chunksReused: number;
  parent?: string;
  encryption: string;
  sizeBytes: number;
  checksum: string;
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("a node's disk backed up by booting it into a backup image (lab node emulated; radosgw real)", () => {
  let ceph: CephInstance;
  let rgw: RadosgwInstance;
  let lab: Lab;
  let op: OperatorStack;
  let p: PulumiProject;
  let s3: S3BackupTarget;
  let volumes: string;
  const image = Buffer.concat([randomBytes(5 * MiB), Buffer.alloc(3 * MiB), randomBytes(MiB + 12345)]);
  let first: NodeBackupOut;

  const bmc = () => lab.bmcs[0];
  const diskFile = () => bmc().system(1).diskFile!;

  beforeAll(async () => {
    ceph = await startCeph({ mgr: false });
    rgw = await startRadosgw(ceph);
    s3 = new S3BackupTarget({ address: rgw.address, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey });
    lab = await startLab({ systems: 1, bootSeconds: 1, installSeconds: 1, diskBytes: DISK_BYTES });
    lab.imageStore.images.set("installer.img", image);
    op = await operatorStack("node-backup-op", lab, { nodes: 1, lessee: "project-a" });
    const masterKey = randomBytes(32).toString("base64");
    p = await tenantStack("node-backup-a", PROGRAM, {
      project: "project-a",
      roles: ["manager", "member"], // the lessee's manager deploys (Ironic policy)
      inventoryUrl: op.inventoryUrl,
      lab,
      keyManagers: { local: { driver: "local", address: "file://KEYS" } },
      keyManagerCredentials: { local: { masterKey } },
    });
    volumes = path.join(p.dir, "volumes");
    fs.mkdirSync(volumes);
    await p.setConfig("baremetal:keyManagers", JSON.stringify({ local: { driver: "local", address: `file://${p.dir}/keys` } }));
    await p.setConfig("baremetal:storageBackends", JSON.stringify({ files: fileBackend(volumes) }));
    await p.setConfig("baremetal:backupTargets", JSON.stringify({ rgw: { address: rgw.address } }));
    await p.setConfig("baremetal:backupTargetCredentials", JSON.stringify({ rgw: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey } }), true);
    await p.setConfig("nodeId", op.nodeIds[0]);
    await p.setConfig("imageUrl", `${lab.info.imageStore.url}/installer.img#sha256=${sha(image)}`);
  }, 600_000);

  afterAll(async () => {
    if (p) {
      await p.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      p.remove();
    }
    if (op) {
      await op.project.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      op.project.remove();
    }
    await lab?.stop();
    await s3?.close();
    await rgw?.stop();
    await ceph?.stop();
  });

  it("a deployed node's disk goes to radosgw through the backup image: media in then out, power and boot put back, the image deleted, no secret in state", async () => {
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    const deployed = bmc().system(1);
    expect(deployed.powerState).toBe("On");
    expect(deployed.running).toMatch(/^os:/);
    const disk = fs.readFileSync(diskFile());
    expect(disk.subarray(0, image.length).equals(image)).toBe(true); // the installer wrote the image's bytes
    const bootBefore = deployed.boot;
    bmc().clearLog();

    await p.setConfig("backup", "true");
    const up = await p.pulumi(["up", "--yes", "--skip-preview"]);
    first = (await p.outputs()).nb as NodeBackupOut;
    expect(first.backupId).toMatch(/^project-a\/nodes\/[A-Za-z0-9._-]+-[0-9a-f]{12}\/\d{8}T\d{6}Z-[0-9a-f]{6}$/);
    expect(first).toMatchObject({ encryption: "envelope", sizeBytes: DISK_BYTES, chunksReused: 0 });
    expect(first.bytesRead).toBe(3 * 4 * MiB); // cells 0, 1 and 2 hold data; the rest of the disk is zero
    expect(first.chunksStored).toBe(3);

    // The BMC saw: power off, the backup image inserted, a boot from the CD, our emulator's agent
    // writing the backup, the eject, the boot override back, power on again (the OS from disk).
    const s = bmc().system(1);
    const kinds = bmc().sideEffects().map((e) => e.kind);
    const inserted = bmc().sideEffects("media-insert").map((e) => String(e.detail?.image));
    expect(inserted).toEqual([expect.stringMatching(new RegExp(`^${lab.info.imageStore.url}/backup-[0-9a-z-]+-[0-9a-f]{12}\\.iso$`))]);
    expect(kinds.indexOf("media-insert")).toBeLessThan(kinds.indexOf("backup-started"));
    expect(kinds.indexOf("backup-written")).toBeLessThan(kinds.lastIndexOf("media-eject"));
    expect(bmc().sideEffects("backup-failed")).toHaveLength(0);
    expect(s.lastBackup).toMatchObject({ state: "written", backupId: first.backupId.split("/").pop() });
    expect(s.virtualMedia.inserted).toBe(false);
    expect(s.boot).toEqual(bootBefore);
    expect(s.powerState).toBe("On");
    expect(s.running).toMatch(/^os:/);
    expect(fs.readFileSync(diskFile()).equals(disk)).toBe(true); // a backup writes nothing to the disk

    // The image (keys, S3 credentials) was fetched by the BMC and is gone from the store.
    const name = inserted[0].split("/").pop()!;
    expect(lab.imageStore.fetches.get(name)).toBeGreaterThanOrEqual(1);
    expect(lab.imageStore.images.has(name)).toBe(false);

    // In the bucket: the chunks and the manifest under the node's prefix, no plaintext.
    const keys: string[] = [];
    for await (const o of s3.list("project-a/nodes/")) keys.push(o.key);
    expect(keys.filter((k) => k.includes("/backups/"))).toHaveLength(1);
    expect(keys.filter((k) => k.includes("/chunks/"))).toHaveLength(3);
    for (const k of keys.filter((k) => k.includes("/chunks/"))) {
      const body: Buffer[] = [];
      for await (const b of await s3.get(k)) body.push(b);
      expect(Buffer.concat(body).includes(image.subarray(0, 64))).toBe(false);
    }
    // No S3 secret in the state or the CLI's output.
    const exported = JSON.stringify(await p.exportStack());
    expect(exported).not.toContain(rgw.secretAccessKey);
    expect(up.stdout + up.stderr).not.toContain(rgw.secretAccessKey);
    await p.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
    process.stdout.write(`node backup: ${first.bytesRead} bytes read, ${first.bytesStored} bytes stored in ${first.chunksStored} chunks\n`);
  });

  it("the backup restores into a new Volume bit for bit; a second backup is incremental and moves nothing new", async () => {
    const disk = fs.readFileSync(diskFile());
    await p.setConfig("restore", first.backupId);
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    const restored = fs.readFileSync(path.join(volumes, "project-a--r1.img"));
    expect(restored.length).toBe(1024 * MiB);
    expect(restored.subarray(0, DISK_BYTES).equals(disk)).toBe(true);
    expect(restored.subarray(DISK_BYTES).equals(Buffer.alloc(restored.length - DISK_BYTES))).toBe(true);
    await p.setConfig("restore", "");

    await p.setConfig("trigger", "2");
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    const second = (await p.outputs()).nb as NodeBackupOut;
    expect(second.parent).toBe(first.backupId);
    expect(second).toMatchObject({ chunksStored: 0, chunksReused: 3, bytesStored: 0 });
    expect(second.checksum).toBe(first.checksum); // the same disk: the same cell map
    expect(bmc().system(1).powerState).toBe("On");
  });

  it("another project cannot back up the node: refused naming nodeId, the node untouched", async () => {
    const other = await tenantStack("node-backup-b", PROGRAM.replace(/const allocation[\s\S]*?export const nodeId = d.nodeId;/, "const key = new baremetal.keys.EncryptionKey(\"backup-key\");\nexport const nodeId = config.require(\"nodeId\");").replace("d.nodeId, keyId", "config.require(\"nodeId\"), keyId"), {
      project: "project-b",
      roles: ["manager", "member"],
      inventoryUrl: op.inventoryUrl,
      lab,
    });
    try {
      await other.setConfig("baremetal:keyManagers", JSON.stringify({ local: { driver: "local", address: `file://${other.dir}/keys` } }));
      await other.setConfig("baremetal:keyManagerCredentials", JSON.stringify({ local: { masterKey: randomBytes(32).toString("base64") } }), true);
      await other.setConfig("baremetal:backupTargets", JSON.stringify({ rgw: { address: rgw.address } }));
      await other.setConfig("baremetal:backupTargetCredentials", JSON.stringify({ rgw: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey } }), true);
      await other.setConfig("nodeId", op.nodeIds[0]);
      await other.setConfig("backup", "true");
      bmc().clearLog();
      const r = await other.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
      expect(r.code).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(/nodeId/);
      expect(r.stdout + r.stderr).toMatch(/not allowed|project|held by/i);
      expect(bmc().sideEffects("media-insert")).toHaveLength(0);
      expect(bmc().sideEffects("power-off")).toHaveLength(0);
    } finally {
      await other.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      other.remove();
    }
  });

  it("a BackupPolicy backs the node's disk up each round (incremental on the newest) and retention prunes exactly the older one", async () => {
    await p.setConfig("backup", "false");
    await p.setConfig("policy", "1");
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    type PolicyOut = { backups: { backupId: string; nodeId?: string; volumeId?: string; sizeBytes: number; checksum: string; encryption: string }[]; lastPruned: string[] };
    const one = (await p.outputs()).policy as PolicyOut;
    expect(one.backups).toHaveLength(1);
    expect(one.backups[0]).toMatchObject({ nodeId: op.nodeIds[0], sizeBytes: DISK_BYTES, encryption: "envelope", checksum: first.checksum });
    expect(one.backups[0].volumeId).toBeUndefined();
    expect(one.backups[0].backupId).toMatch(/^project-a\/nodes\/[A-Za-z0-9._-]+\/\d{8}T\d{6}Z-[0-9a-f]{6}$/);
    expect(one.lastPruned).toEqual([]);
    // The Backup resources' backups (not the policy's) stay: retention counts only the policy's own.
    const manifests = async () => {
      const keys: string[] = [];
      for await (const o of s3.list("project-a/nodes/")) if (o.key.includes("/backups/")) keys.push(o.key);
      return keys.sort();
    };
    const before = await manifests();
    expect(before.some((k) => k.endsWith(`${one.backups[0].backupId.split("/").pop()}.json`) || k.includes(one.backups[0].backupId.split("/").pop()!))).toBe(true);

    bmc().clearLog();
    await p.setConfig("policy", "2"); // backupNow: a round whatever the schedule
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    const two = (await p.outputs()).policy as PolicyOut;
    expect(two.backups).toHaveLength(1);
    expect(two.backups[0].backupId).not.toBe(one.backups[0].backupId);
    expect(two.lastPruned).toEqual([one.backups[0].backupId]);
    expect(bmc().sideEffects("media-insert")).toHaveLength(1); // one boot into the backup image per round
    const after = await manifests();
    expect(after.length).toBe(before.length); // one added, one pruned
    expect(after.some((k) => k.includes(one.backups[0].backupId.split("/").pop()!))).toBe(false);
    expect(after.some((k) => k.includes(two.backups[0].backupId.split("/").pop()!))).toBe(true);
    expect(bmc().system(1).powerState).toBe("On");
    await p.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
    await p.setConfig("policy", "");
  });
});
