/**
 * Node-disk backups: the job a backup image carries, the agent's work against a file backup
 * target (restored by the engine's own restoreBackup into the FAKE in-memory storage driver,
 * bit for bit), and the lab BMC playing the agent when an emulated machine boots the image from
 * its virtual CD (OUR EMULATOR; real S3 and a real boot are in test/e2e/node-backup.test.ts).
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isBaremetalError } from "../core/errors";
import { FileBackupTarget } from "../drivers/backup-file/driver";
import { FakeStorageDriver } from "../drivers/storage-fake";
import { LabBmc } from "../lab/bmc";
import { startImageStore } from "../lab/image-store";
import { readIsoFile } from "../lab/iso-read";
import { isBackupImage, runLabBackupAgent } from "../lab/backup-agent";
import { CELL_BYTES, chunkKey, keyWrapper, listManifests, readManifest, restoreBackup } from "./engine";
import { BACKUP_JOB_PATH, buildBackupImage, checkNodeManifest, type DiskSource, nodeBackupJob, parseBackupJob, runNodeBackup } from "./node-disk";

const MiB = 1024 * 1024;

function memoryDisk(bytes: Buffer): DiskSource {
  return {
    sizeBytes: bytes.length,
    async *extents(cellBytes: number) {
      for (let o = 0; o < bytes.length; o += cellBytes) {
        const d = bytes.subarray(o, Math.min(bytes.length, o + cellBytes));
        if (d.some((b) => b !== 0)) yield { offset: o, data: Buffer.from(d) };
      }
    },
  };
}

async function restoreToBuffer(target: FileBackupTarget, prefix: string, id: string, wrapper: ReturnType<typeof keyWrapper>): Promise<Buffer> {
  const m = await readManifest(target, prefix, id);
  const s = new FakeStorageDriver({ readsChangesOnly: false });
  await s.createVolume({ name: "r", sizeBytes: m.sizeBytes });
  const r = await restoreBackup({ manifest: m, target, prefix, wrapper, storage: s, volume: "r" });
  expect(r.verified).toBe(true);
  return s.read("r");
}

describe("node disk backups", () => {
  let dir: string;
  let target: FileBackupTarget;
  const prefix = "project-a/nodes/sys1-0123456789ab/";
  const nodeId = "http://127.0.0.1:1/redfish/v1/Systems/sys1";
  const wrapper = keyWrapper("local", "key-1", randomBytes(32));

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "node-disk-"));
    fs.mkdirSync(path.join(dir, "target"));
    target = new FileBackupTarget({ address: `file://${dir}/target` });
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const jobFor = (id: string, parent?: Parameters<typeof nodeBackupJob>[0]["parent"]) =>
    nodeBackupJob({ nodeId, prefix, id, target: { name: "t", settings: { address: `file://${dir}/target` } }, wrapper, parent });

  test("the backup image is an ISO whose job.json is the job; bad jobs are refused naming the field", () => {
    const job = jobFor("b1");
    const iso = buildBackupImage(job);
    expect(isBackupImage(iso)).toBe(true);
    expect(parseBackupJob(readIsoFile(iso, BACKUP_JOB_PATH)!)).toEqual(job);
    expect(Buffer.from(job.encryption.dek, "base64")).toHaveLength(32);
    // The wrapped forms unwrap with the key-manager key to the plaintext the node gets.
    expect(wrapper.unwrap(job.encryption.wrappedDek, "dek:b1")).toEqual(Buffer.from(job.encryption.dek, "base64"));
    expect(wrapper.unwrap(job.encryption.wrappedDedupKey, `dedup:${nodeId}`)).toEqual(Buffer.from(job.encryption.dedupKey, "base64"));
    expect(() => parseBackupJob(JSON.stringify({ ...job, prefix: "no-slash" }))).toThrow(/prefix must end with \//);
    expect(() => parseBackupJob(JSON.stringify({ ...job, encryption: { ...job.encryption, dek: "" } }))).toThrow(/encryption\.dek is missing/);
    expect(isBackupImage(Buffer.alloc(64 * 1024))).toBe(false);
  });

  test("the agent stores the disk as envelope chunks, manifest last; the engine restores it bit for bit; incremental reuses chunks", async () => {
    const disk = Buffer.alloc(24 * MiB);
    randomBytes(5 * MiB).copy(disk, 0);
    randomBytes(MiB).copy(disk, 16 * MiB + 4096);
    const job1 = jobFor("b1");
    const m1 = await runNodeBackup(job1, memoryDisk(disk), target);
    expect(m1.cells.map((c) => c[0])).toEqual([0, 1, 4]);
    expect(m1.stats).toMatchObject({ chunksStored: 3, chunksReused: 0, bytesRead: 3 * CELL_BYTES });
    await checkNodeManifest(await readManifest(target, prefix, "b1"), job1, target);
    expect((await restoreToBuffer(target, prefix, "b1", wrapper)).equals(disk)).toBe(true);
    // No plaintext in the target.
    for (const c of m1.cells) expect(fs.readFileSync(path.join(dir, "target", chunkKey(prefix, c[1]))).includes(disk.subarray(c[0] * CELL_BYTES, c[0] * CELL_BYTES + 64))).toBe(false);

    const before = Buffer.from(disk);
    disk.write("changed", 16 * MiB + 10);
    const job2 = jobFor("b2", m1);
    expect(job2.parent).toBe("b1");
    expect(job2.encryption.dedupKey).toBe(job1.encryption.dedupKey); // carried over: equal cells keep equal ids
    const m2 = await runNodeBackup(job2, memoryDisk(disk), target);
    expect(m2.parent).toBe("b1");
    expect(m2.stats).toMatchObject({ chunksStored: 1, chunksReused: 2 });
    expect(Object.keys((m2.encryption as { keys: object }).keys).sort()).toEqual(["b1", "b2"]);
    await checkNodeManifest(m2, job2, target);
    expect((await restoreToBuffer(target, prefix, "b2", wrapper)).equals(disk)).toBe(true);
    expect((await restoreToBuffer(target, prefix, "b1", wrapper)).equals(before)).toBe(true);
  });

  test("the provider refuses a manifest that is not its job's, or whose chunks are missing", async () => {
    const job = jobFor("b1");
    const m = await runNodeBackup(job, memoryDisk(randomBytes(2 * MiB)), target);
    const other = jobFor("b1"); // issued again: other keys
    const e1 = await checkNodeManifest(m, other, target).catch((e) => e);
    expect(isBaremetalError(e1) && e1.message).toMatch(/does not carry the keys the provider issued/);
    await target.delete([chunkKey(prefix, m.cells[0][1])]);
    const e2 = await checkNodeManifest(m, job, target).catch((e) => e);
    expect(isBaremetalError(e2) && e2.message).toMatch(/1 chunk\(s\) the manifest names are missing/);
  });

  test("a failing target leaves no manifest (no backup)", async () => {
    const job = jobFor("b1");
    let puts = 0;
    const flaky = Object.create(target) as FileBackupTarget;
    flaky.put = async (key, body, opts) => {
      if (++puts === 2) throw new Error("target down");
      return target.put(key, body, opts);
    };
    await expect(runNodeBackup(job, memoryDisk(randomBytes(12 * MiB)), flaky)).rejects.toThrow(/target down/);
    expect(await listManifests(target, prefix)).toEqual([]);
  });

  test("lab BMC (our emulator): a machine booting the backup image from its CD runs the agent on its disk file and powers itself off", async () => {
    const store = await startImageStore({ username: "w", password: "writer-password" });
    const bmc = await LabBmc.start({ diskDir: path.join(dir, "disks"), diskBytes: 16 * MiB, bootSeconds: 0, installSeconds: 0 });
    try {
      const s = bmc.system(1);
      expect(s.diskFile).toBeTruthy();
      const content = randomBytes(3 * MiB);
      const fd = fs.openSync(s.diskFile!, "r+");
      fs.writeSync(fd, content, 0, content.length, MiB);
      fs.closeSync(fd);
      const disk = fs.readFileSync(s.diskFile!);

      const job = nodeBackupJob({ nodeId, prefix, id: "lab1", target: { name: "t", settings: { address: `file://${dir}/target` } }, wrapper });
      store.images.set("backup-lab1.iso", buildBackupImage(job));
      const auth = `Basic ${Buffer.from(`${bmc.username}:${bmc.password}`).toString("base64")}`;
      const r = await fetch(`${bmc.url}${s.virtualMedia.uri}/Actions/VirtualMedia.InsertMedia`, {
        method: "POST",
        headers: { authorization: auth, "content-type": "application/json" },
        body: JSON.stringify({ Image: `${store.url}/backup-lab1.iso`, Inserted: true }),
      });
      expect(r.status).toBeLessThan(300);
      bmc.forceBoot(1, { target: "Cd", enabled: "Once" });
      bmc.forcePower(1, "On");
      await bmc.settled();
      const after = bmc.system(1);
      expect(after.powerState).toBe("Off");
      expect(after.lastBackup).toMatchObject({ state: "written", backupId: "lab1", prefix, bytesRead: 4 * MiB });
      expect(after.disk).toBe("empty"); // nothing written to the disk
      expect(bmc.sideEffects("backup-written")).toHaveLength(1);
      expect(fs.readFileSync(s.diskFile!).equals(disk)).toBe(true);
      const m = await readManifest(target, prefix, "lab1");
      await checkNodeManifest(m, job, target);
      expect((await restoreToBuffer(target, prefix, "lab1", wrapper)).equals(disk)).toBe(true);
    } finally {
      await bmc.close();
      await store.close();
    }
  });

  test("lab agent: a job whose target refuses fails without a manifest", async () => {
    const file = path.join(dir, "disk.img");
    fs.writeFileSync(file, randomBytes(MiB));
    const job = nodeBackupJob({ nodeId, prefix, id: "x1", target: { name: "t", settings: { address: "file://relative/not-allowed" } }, wrapper });
    await expect(runLabBackupAgent(buildBackupImage(job), file)).rejects.toThrow(/address|absolute/);
    expect(await listManifests(target, prefix)).toEqual([]);
  });
});
