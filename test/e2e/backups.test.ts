/**
 * Backups through the real engine, against a real Ceph 16 (RBD volumes, `rbd export-diff` between
 * snapshots) and its real S3 gateway (radosgw, which checks SigV4), with the local key manager.
 *
 * A tenant's member backs up a plain volume holding known data (written through librbd by
 * qemu-io, as a node would): a full backup, then 1% of the data changes and an incremental backup
 * moves only the changed cells (the test prints how many bytes moved). Each backup is restored into
 * a new volume and matches the volume at its point in time bit for bit. An encrypted volume's
 * backup is its ciphertext: no object in the bucket holds its plaintext. A wrong S3 secret fails
 * with a clear error that does not print it; a backup whose provider is killed half-way leaves no
 * backup a restore could take, and the next `up` takes it whole. Destroying the key that wraps a
 * backup's data key makes the backup unreadable (crypto-erase).
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { S3BackupTarget } from "../../provider/src/drivers/backup-s3/driver";
import type { KeyManagerDriver } from "../../provider/src/drivers/kinds/keymanager";
import { createLocalKeyManager } from "../../provider/src/drivers/keymanager-local";
import { type CephInstance, startCeph } from "../harness/ceph";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { type RadosgwInstance, startRadosgw } from "../harness/radosgw";

jest.setTimeout(900_000);

const MiB = 1024 * 1024;

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const key = new baremetal.keys.EncryptionKey("backup-key");
const db = new baremetal.storage.Volume("db", { sizeGib: 1 });
const secretKey = new baremetal.keys.EncryptionKey("volume-key");
const vault = new baremetal.storage.Volume("vault", { sizeGib: 1, encryption: { keyId: secretKey.keyId, unlockTimeMs: 200 } });
export const dbId = db.volumeId;
export const vaultId = vault.volumeId;
export const keyId = key.keyId;
export const vaultKeyId = secretKey.keyId;
for (const name of (config.get("backups") ?? "").split(",").filter(Boolean)) {
  // vault*: the LUKS2 volume (vaultk*: with a key, so keyed chunk ids, as a new chain); others the plain db.
  const args = name.startsWith("vaultk") ? { volumeId: vault.volumeId, keyId: key.keyId, incremental: false } : name.startsWith("vault") ? { volumeId: vault.volumeId } : { volumeId: db.volumeId, keyId: key.keyId };
  const b = new baremetal.backup.Backup(name, args);
  module.exports[name] = { backupId: b.backupId, bytesStored: b.bytesStored, bytesRead: b.bytesRead, chunksStored: b.chunksStored, chunksReused: b.chunksReused, checksum: b.checksum, parent: b.parent, encryption: b.encryption };
}
if (config.get("policy")) {
  const policy = new baremetal.backup.BackupPolicy("nightly", {
    schedule: config.require("policy"),
    retention: { last: 2 },
    volumes: [{ volumeId: db.volumeId, keyId: key.keyId }],
    backupNow: config.get("backupNow"),
    deleteBackupsOnDestroy: true,
  });
  module.exports.policyBackups = policy.backups;
  module.exports.lastPruned = policy.lastPruned;
  module.exports.nextBackupDue = policy.nextBackupDue;
}
for (const r of (config.get("restores") ?? "").split(",").filter(Boolean)) {
  const [name, backupId] = r.split("=");
  const v = new baremetal.storage.Volume(name, { sizeGib: 1, sourceBackup: { backupId } });
  module.exports[name] = v.volumeId;
}
`;

interface BackupOut {
  backupId: string;
  bytesStored: number;
  bytesRead: number;
  chunksStored: number;
  chunksReused: number;
  checksum: string;
  parent?: string;
  encryption: string;
}

function run(file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(file, args, { maxBuffer: 64 << 20, timeout: 300000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : -1) : 0, stdout: String(stdout), stderr: String(stderr) }),
    ),
  );
}

describe("backups of volumes to radosgw, incremental, encrypted, restorable, through the engine", () => {
  let ceph: CephInstance;
  let rgw: RadosgwInstance;
  let p: PulumiProject;
  let keys: KeyManagerDriver;
  let s3: S3BackupTarget;
  const masterKey = randomBytes(32).toString("base64");
  const hashes: Record<string, string> = {};
  const backups: Record<string, BackupOut> = {};
  let backupList: string[] = [];

  const conf = () => path.join(ceph.dir, "ceph.conf");
  /** qemu-io on an RBD image as client.admin (the node's writes). */
  const qemu = (image: string, cmds: string[]) => run("qemu-io", ["--image-opts", `driver=rbd,pool=${ceph.pool},image=${image},conf=${conf()}`, ...cmds.flatMap((c) => ["-c", c])]);
  /** SHA-256 of a whole image (rbd export to a sparse file). */
  async function sha(image: string): Promise<string> {
    const file = path.join(p.dir, `${image}.raw`);
    fs.rmSync(file, { force: true });
    await ceph.rbd(["export", "--no-progress", `${ceph.pool}/${image}`, file]);
    const h = createHash("sha256");
    const fd = fs.openSync(file, "r");
    const buf = Buffer.alloc(8 * MiB);
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
    fs.closeSync(fd);
    fs.rmSync(file);
    return h.digest("hex");
  }
  async function up(): Promise<Record<string, unknown>> {
    await p.setConfig("backups", backupList.join(","));
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    return (await p.outputs()) as Record<string, unknown>;
  }
  async function bucketObject(key: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const b of await s3.get(key)) parts.push(b);
    return Buffer.concat(parts);
  }
  async function bucketKeys(prefix = ""): Promise<string[]> {
    const out: string[] = [];
    for await (const o of s3.list(prefix)) out.push(o.key);
    return out;
  }

  beforeAll(async () => {
    ceph = await startCeph({ mgr: false });
    rgw = await startRadosgw(ceph);
    s3 = new S3BackupTarget({ address: rgw.address, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey });
    p = await newProject("backups", PROGRAM);
    const keyStore = `file://${p.dir}/keys`;
    keys = createLocalKeyManager({ address: keyStore, project: "project-a", masterKey });
    await p.setConfig("baremetal:inventoryUrl", `sqlite://${p.dir}/inventory.db`, true);
    await p.setConfig("baremetal:project", "project-a");
    await p.setConfig("baremetal:roles", JSON.stringify(["member"]));
    await p.setConfig("baremetal:keyManagers", JSON.stringify({ local: { driver: "local", address: keyStore } }));
    await p.setConfig("baremetal:keyManagerCredentials", JSON.stringify({ local: { masterKey } }), true);
    await p.setConfig("baremetal:storageBackends", JSON.stringify({ rbd: { driver: "ceph", address: ceph.address } }));
    await p.setConfig("baremetal:storageCredentials", JSON.stringify({ rbd: { key: ceph.clientKey } }), true);
    await p.setConfig("baremetal:backupTargets", JSON.stringify({ rgw: { address: rgw.address } }));
    await p.setConfig("baremetal:backupTargetCredentials", JSON.stringify({ rgw: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey } }), true);
  }, 300_000);

  afterAll(async () => {
    if (p) {
      delete p.env.BAREMETAL_FAULT_CRASH_AT;
      await p.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      p.remove();
    }
    await keys?.close();
    await s3?.close();
    await rgw?.stop();
    await ceph?.stop();
  });

  it("a full backup of a volume with known data, then an incremental one that moves only what changed", async () => {
    await up();
    // 64 MiB of known data in 16 cells (a node writing), then the full backup.
    // Each 4 MiB cell its own pattern (equal cells would be stored once: content addressing).
    const cells = [...Array(8).keys()].flatMap((i) => [`write -P ${0x41 + i} ${i * 4}M 4M`, `write -P ${0x61 + i} ${512 + i * 4}M 4M`]);
    const w = await qemu("project-a--db", cells);
    expect(w.code).toBe(0);
    hashes.b1 = await sha("project-a--db");
    backupList = ["b1"];
    backups.b1 = (await up()).b1 as BackupOut;
    expect(backups.b1).toMatchObject({ encryption: "envelope", chunksStored: 16, chunksReused: 0 });
    expect(backups.b1.bytesRead).toBe(64 * MiB);

    // 1% of the data changes (640 KiB in 3 places), and a new cell.
    expect((await qemu("project-a--db", ["write -P 0x11 4096 64k", "write -P 0x22 20M 512k", "write -P 0x33 530M 64k", "write -P 0x44 900M 4k"])).code).toBe(0);
    hashes.b2 = await sha("project-a--db");
    backupList = ["b1", "b2"];
    backups.b2 = (await up()).b2 as BackupOut;
    expect(backups.b2.parent).toBe(backups.b1.backupId);
    expect(backups.b2.chunksStored).toBe(4);
    expect(backups.b2.chunksReused).toBe(13);
    expect(backups.b2.bytesRead).toBeLessThan(2 * MiB);
    expect(backups.b2.bytesStored).toBeLessThanOrEqual(4 * (4 * MiB + 28));
    process.stdout.write(
      `backups: full moved ${backups.b1.bytesStored} bytes (read ${backups.b1.bytesRead}); incremental after 1% change moved ${backups.b2.bytesStored} bytes (read ${backups.b2.bytesRead}), ${backups.b2.chunksStored} chunks stored, ${backups.b2.chunksReused} reused\n`,
    );
    // Nothing in the bucket is the volume's plaintext.
    for (const k of await bucketKeys("project-a/volumes/project-a--db/chunks/")) {
      const body: Buffer[] = [];
      for await (const b of await s3.get(k)) body.push(b);
      expect(Buffer.concat(body).includes(Buffer.alloc(256, 0x41))).toBe(false);
    }
  });

  it("each backup restores into a new volume that matches its point in time bit for bit", async () => {
    await p.setConfig("restores", `r1=${backups.b1.backupId},r2=${backups.b2.backupId}`);
    const out = await up();
    expect(out.r1).toBe("project-a--r1");
    expect(await sha("project-a--r1")).toBe(hashes.b1);
    expect(await sha("project-a--r2")).toBe(hashes.b2);
    expect(hashes.b1).not.toBe(hashes.b2);
    await p.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
    await p.setConfig("restores", "");
    await up();
  });

  it("an encrypted volume's backup is its ciphertext: no object holds the plaintext written through LUKS", async () => {
    const out = await up();
    const keyFile = path.join(p.dir, "vk");
    fs.writeFileSync(keyFile, await keys.getKeyMaterial(out.vaultKeyId as string), { mode: 0o600 });
    // qemu-io writes plaintext through librbd's LUKS2 layer, the key as a secret object (a file, never argv).
    const w = await run("qemu-io", [
      "--object",
      `secret,id=sec0,file=${keyFile}`,
      "--image-opts",
      `driver=rbd,pool=${ceph.pool},image=project-a--vault,conf=${conf()},encrypt.format=luks2,encrypt.key-secret=sec0`,
      "-c",
      "write -P 0x77 0 8M",
    ]);
    fs.rmSync(keyFile);
    expect(w.code).toBe(0);
    backupList = ["b1", "b2", "vault1"];
    const v = (await up()).vault1 as BackupOut;
    expect(v.encryption).toBe("source");
    expect(v.chunksStored).toBeGreaterThanOrEqual(3); // the LUKS2 header's cells and 2 data cells
    for (const k of await bucketKeys("project-a/volumes/project-a--vault/")) {
      const body: Buffer[] = [];
      for await (const b of await s3.get(k)) body.push(b);
      expect(Buffer.concat(body).includes(Buffer.alloc(256, 0x77))).toBe(false);
    }
  });

  it("an encrypted volume backed up with a key: keyed chunk ids (aes-ghash), the ciphertext as it is, restored bit for bit; deleting it leaves the other chain whole", async () => {
    const vaultHash = await sha("project-a--vault");
    backupList = ["b1", "b2", "vault1", "vaultk1"];
    const out = await up();
    const k = out.vaultk1 as BackupOut;
    expect(k).toMatchObject({ encryption: "source", chunksReused: 0 });
    expect(k.parent).toBeUndefined(); // incremental: false starts the keyed chain
    const m = JSON.parse((await bucketObject(`project-a/volumes/project-a--vault/backups/${k.backupId.split("/")[1]}.json`)).toString("utf8"));
    expect(m.encryption).toMatchObject({ mode: "source", chunkIds: "aes-ghash", keyManager: "local", keyId: out.keyId });
    const v1 = JSON.parse((await bucketObject(`project-a/volumes/project-a--vault/backups/${(out.vault1 as BackupOut).backupId.split("/")[1]}.json`)).toString("utf8"));
    expect(v1.encryption.chunkIds).toBe("sha256");
    // Same cells, other ids: 128-bit keyed ids against SHA-256; the chunk bodies are the same ciphertext.
    expect(m.cells.map((c: [number, string]) => c[0])).toEqual(v1.cells.map((c: [number, string]) => c[0]));
    for (const [i, c] of (m.cells as [number, string][]).entries()) {
      expect(c[1]).toMatch(/^[0-9a-f]{32}$/);
      const body = await bucketObject(`project-a/volumes/project-a--vault/chunks/${c[1]}`);
      expect(createHash("sha256").update(body).digest("hex")).toBe(v1.cells[i][1]);
    }
    await p.setConfig("restores", `rk=${k.backupId}`);
    await up();
    expect(await sha("project-a--rk")).toBe(vaultHash);
    await p.setConfig("restores", "");
    backupList = ["b1", "b2", "vault1"];
    await up();
    // Its chunks went with it; vault1's stayed.
    const left = await bucketKeys("project-a/volumes/project-a--vault/chunks/");
    expect(left.sort()).toEqual(v1.cells.map((c: [number, string]) => `project-a/volumes/project-a--vault/chunks/${c[1]}`).sort());
  });

  it("a wrong S3 secret fails with a clear error naming the target, without printing the secret", async () => {
    const wrong = `${rgw.secretAccessKey.slice(0, -4)}abcd`;
    await p.setConfig("baremetal:backupTargetCredentials", JSON.stringify({ rgw: { accessKeyId: rgw.accessKeyId, secretAccessKey: wrong } }), true);
    await p.setConfig("backups", [...backupList, "b3"].join(","));
    const r = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(r.code).not.toBe(0);
    const text = r.stdout + r.stderr;
    expect(text).toMatch(/refused|SignatureDoesNotMatch|access key/i);
    expect(text).toContain("127.0.0.1");
    expect(text).not.toContain(wrong);
    expect(text).not.toContain(rgw.secretAccessKey);
    await p.setConfig("baremetal:backupTargetCredentials", JSON.stringify({ rgw: { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey } }), true);
  });

  it("a backup whose provider is killed half-way leaves no backup a restore could take; the next up takes it whole", async () => {
    const before = (await bucketKeys("project-a/volumes/project-a--db/backups/")).sort();
    expect((await qemu("project-a--db", ["write -P 0x71 100M 4M", "write -P 0x72 104M 4M", "write -P 0x73 108M 4M", "write -P 0x74 112M 4M"])).code).toBe(0);
    hashes.b3 = await sha("project-a--db");
    backupList = ["b1", "b2", "vault1", "b3"];
    await p.setConfig("backups", backupList.join(","));
    p.env.BAREMETAL_FAULT_CRASH_AT = "backup-chunk-2";
    const crashed = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    delete p.env.BAREMETAL_FAULT_CRASH_AT;
    expect(crashed.code).not.toBe(0);
    expect((await bucketKeys("project-a/volumes/project-a--db/backups/")).sort()).toEqual(before);
    const state = JSON.stringify(await p.exportStack());
    expect(state).not.toMatch(/"urn":"[^"]*Backup::b3"/);
    backups.b3 = (await up()).b3 as BackupOut;
    expect(backups.b3.parent).toBe(backups.b2.backupId);
    await p.setConfig("restores", `r3=${backups.b3.backupId}`);
    await up();
    expect(await sha("project-a--r3")).toBe(hashes.b3);
    await p.setConfig("restores", "");
    await up();
  });

  it("a BackupPolicy backs up when due, keeps what retention says (last 2) and prunes only its own backups", async () => {
    type PolicyOut = { policyBackups: { backupId: string; createdAt: string }[]; lastPruned: string[]; nextBackupDue: string };
    const manifests = async () => (await bucketKeys("project-a/volumes/project-a--db/backups/")).sort();
    const resourceBackups = await manifests(); // b1, b2, b3 of the Backup resources
    await p.setConfig("policy", "1h");
    const first = (await up()) as unknown as PolicyOut;
    expect(first.policyBackups).toHaveLength(1);
    await p.pulumi(["preview", "--expect-no-changes"]); // not due for an hour
    const seen = [first.policyBackups[0].backupId];
    for (const n of [1, 2, 3]) {
      await p.setConfig("backupNow", `run-${n}`);
      const out = (await up()) as unknown as PolicyOut;
      seen.push(out.policyBackups[out.policyBackups.length - 1].backupId);
      expect(out.policyBackups.map((b) => b.backupId)).toEqual(seen.slice(-2));
      expect(out.lastPruned).toEqual(n === 1 ? [] : [seen[n - 2]]);
    }
    // Exactly the resources' backups and the policy's last two remain in the bucket.
    const left = await manifests();
    expect(left).toEqual([...resourceBackups, ...seen.slice(-2).map((id) => `project-a/volumes/project-a--db/backups/${id.split("/")[1]}.json`)].sort());
    // A short schedule falls due: preview shows the backup change.
    await p.setConfig("policy", "5s");
    await up();
    await new Promise((r) => setTimeout(r, 6000));
    const preview = await p.pulumi(["preview", "--diff"]);
    expect(preview.stdout).toMatch(/backup/);
    await p.setConfig("policy", "");
    await up(); // destroys the policy: deleteBackupsOnDestroy
    expect(await manifests()).toEqual(resourceBackups);
  });

  it("destroying the key that wraps the backups' data keys makes them unreadable (crypto-erase)", async () => {
    const out = await up();
    await keys.destroyKey(out.keyId as string);
    await p.setConfig("restores", `r4=${backups.b1.backupId}`);
    const r = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/key local:project-a:\S+ was destroyed .*its material is gone/);
    const images = JSON.parse(await ceph.rbd(["ls", "--format", "json", ceph.pool])) as string[];
    expect(images).not.toContain("project-a--r4");
    await p.setConfig("restores", "");
  });
});
