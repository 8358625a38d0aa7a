/**
 * Encryption at the source, proven on the data path. Through the real engine a tenant's member
 * makes a key in a real Barbican, a 1 GiB volume on the `file` backend that the provider
 * LUKS2-formats at the source under that key, and an attachment that a real tgt exports over iSCSI
 * with CHAP. Then this test acts as the NODE, with userspace tools only (no device-mapper here):
 * it fetches the key from Barbican as the owning project, reads the LUKS2 header over iSCSI
 * (qemu-io through libiscsi), unlocks it with our userspace LUKS2 reader, encrypts a known
 * plaintext locally and writes the ciphertext over iSCSI. The storage host's backing file never
 * contains the plaintext (searched in full), holds exactly the ciphertext sent, and a fresh view
 * over iSCSI reads the plaintext back intact. Wrong keys (another key of the project, a random one,
 * the right one with a bit flipped) cannot unlock, and the other project cannot even fetch the key.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isBaremetalError } from "../../provider/src/core/errors";
import { createBarbicanDriver } from "../../provider/src/drivers/barbican";
import { Luks } from "../../provider/src/drivers/luks";
import { runCryptsetup } from "../../provider/src/drivers/luks/cryptsetup";
import { type Luks2Volume, openLuks2, type ReadAt, readLuks2Header } from "../../provider/src/drivers/luks/userspace";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { type BarbicanInstance, startBarbican } from "../harness/barbican";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { fileReader, type IscsiNodeView, iscsiNode, scanFile } from "../harness/iscsi-node";
import { type IscsiLogin, startTgt, type TgtInstance } from "../harness/tgt";

jest.setTimeout(300_000);

const MiB = 1024 * 1024;

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
const key = new baremetal.keys.EncryptionKey("db-key", { labels: { volume: "db" } });
const otherKey = new baremetal.keys.EncryptionKey("other-key", { labels: { volume: "none" } });
const volume = new baremetal.storage.Volume("db", { sizeGib: 1, encryption: { keyId: key.keyId, unlockTimeMs: 200 } });
const allocation = new baremetal.compute.Allocation("a0", { candidateNodes: [config.require("nodeId")] });
const att = new baremetal.storage.VolumeAttachment("db", { volumeId: volume.volumeId, allocationId: allocation.allocationId });
export const keyId = key.keyId;
export const otherKeyId = otherKey.keyId;
export const volumeId = volume.volumeId;
export const luksUuid = volume.luksUuid;
export const { portal, targetIqn, lun, initiatorIqn, chapUser, chapSecret } = att;
`;

describe("data path: a node's userspace LUKS2 view over iSCSI (real Barbican, tgt, cryptsetup, through the engine)", () => {
  let lab: Lab;
  let barbican: BarbicanInstance;
  let tgt: TgtInstance;
  let dir: string;
  let work: string;
  let operator: PulumiProject;
  let tenant: PulumiProject;
  let out: { keyId: string; otherKeyId: string; volumeId: string; luksUuid: string; portal: string; targetIqn: string; lun: number; initiatorIqn: string; chapUser: string; chapSecret: string };
  let login: IscsiLogin;
  let file: string;
  let key: Buffer;
  const luks = new Luks();
  const handles: Luks2Volume[] = [];
  let node: IscsiNodeView;
  let fileRead: ReadAt;
  const iscsiRead: ReadAt = (offset, length) => node.read(offset, length);
  const iscsiWrite = (offset: number, data: Buffer) => node.write(offset, data);
  const open = async (read: ReadAt, k: Buffer) => {
    const v = await openLuks2(read, k);
    handles.push(v);
    return v;
  };

  // What the node writes: a sentence, then 1 MiB of numbered 4 KiB blocks, at two places of the volume.
  const SENTENCE = "Encrypted at the source: the storage host must never see this sentence.";
  const TAG = "datapath-plaintext block ";
  const plaintext = (() => {
    const b = Buffer.alloc(MiB + 4096);
    b.write(SENTENCE, 0, "latin1");
    for (let at = 4096, i = 0; at < b.length; at += 4096, i++) b.write(`${TAG}${i} `.padEnd(4096, "~"), at, "latin1");
    return b;
  })();
  const WHERE = [0, 300 * MiB + 8192]; // offsets in the data segment (4096-aligned)

  beforeAll(async () => {
    const t0 = Date.now();
    [barbican, tgt, lab] = await Promise.all([startBarbican(), startTgt(), startLab({ flavor: "generic", systems: 1, bootSeconds: 0 })]);
    dir = fs.mkdtempSync("/tmp/datapath-e2e-");
    work = fs.mkdtempSync(path.join(os.tmpdir(), "datapath-node-"));
    fs.chmodSync(work, 0o700);
    operator = await newProject("dp-operator", OPERATOR);
    const inventoryUrl = `sqlite://${operator.dir}/inventory.db`;
    for (const [k, v] of Object.entries(lab.info.providerConfig)) await operator.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    await operator.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    await operator.setConfig("bmcAddress", lab.info.nodes[0].address);
    await operator.setConfig("systemId", lab.info.nodes[0].systemId);
    await operator.pulumi(["up", "--yes", "--skip-preview"]);
    const { nodeId } = (await operator.outputs()) as { nodeId: string };
    tenant = await newProject("dp-project-a", TENANT);
    for (const [k, v] of Object.entries(lab.info.providerConfig)) await tenant.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    await tenant.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    await tenant.setConfig("baremetal:project", "project-a");
    await tenant.setConfig("baremetal:roles", JSON.stringify(["member"]));
    await tenant.setConfig("baremetal:keyManagers", JSON.stringify({ barbican: { driver: "barbican", address: barbican.url } }));
    await tenant.setConfig(
      "baremetal:storageBackends",
      JSON.stringify({ lab: { driver: "file", address: `file://${dir}`, iscsi: { portal: tgt.portal, controlPort: tgt.controlPort, socketPath: tgt.socketPath } } }),
    );
    await tenant.setConfig("nodeId", nodeId);
    await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    out = (await tenant.outputs()) as typeof out;
    login = { target: out.targetIqn, lun: out.lun, initiator: out.initiatorIqn, user: out.chapUser, secret: out.chapSecret };
    file = path.join(dir, `${out.volumeId}.img`);
    node = iscsiNode(tgt, login, work);
    fileRead = fileReader(file);
    // the key as the node receives it: fetched from Barbican as the owning project
    key = await createBarbicanDriver({ address: barbican.url, project: "project-a" }).getKeyMaterial(out.keyId);
    console.log(`data-path e2e set up in ${Date.now() - t0} ms (Barbican, tgt, lab, two stacks up)`);
  });

  afterAll(async () => {
    for (const h of handles) h.close();
    key?.fill(0);
    for (const p of [tenant, operator]) await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of [tenant, operator]) p?.remove();
    await Promise.all([barbican?.stop(), tgt?.stop(), lab?.stop()]);
    for (const d of [dir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it("the node reads the LUKS2 header over iSCSI (the storage host's own bytes) and unlocks it with the key Barbican gives project-a", async () => {
    const viaIscsi = await readLuks2Header(iscsiRead);
    const viaFile = await readLuks2Header(fileRead);
    expect(viaIscsi).toEqual(viaFile);
    expect(viaIscsi).toMatchObject({ uuid: out.luksUuid, label: out.volumeId, validCopies: ["primary", "secondary"] });
    const dump = await luks.dump(file);
    expect(viaIscsi.metadata).toEqual(dump.json);
    const slot = dump.keyslots[0];
    expect(slot.pbkdf).toBe("argon2id"); // the provider's default
    const v = await open(iscsiRead, key);
    expect(v.uuid).toBe(out.luksUuid);
    expect(v.keyslot).toBe(0);
    expect(v.segment).toMatchObject({ offset: 16 * MiB, size: "dynamic", cipher: "aes-xts-plain64" });
    // the strongest check: the volume key recovered over iSCSI is the one cryptsetup reads from the file
    const vkFile = path.join(work, "vk");
    await runCryptsetup({}, ["luksDump", "--batch-mode", "--dump-volume-key", `--volume-key-file=${vkFile}`, "--key-file=-", file], { what: "volume key", stdinKey: key });
    const vk = fs.readFileSync(vkFile);
    fs.rmSync(vkFile);
    expect(v.matchesVolumeKey(vk)).toBe(true);
    vk.fill(0);
    console.log(
      `unlock over iSCSI: keyslot ${v.keyslot} argon2id (time ${slot.iterations ?? slot.time}, ${slot.memoryKiB} KiB, ${slot.cpus} lanes) derived in ${v.kdfMs} ms; ` +
        `sector ${v.segment.sectorSize} bytes; ${node.stats.reads} iSCSI reads so far`,
    );
  });

  it("wrong keys cannot unlock: another key of the project, a random key, the right key with one bit flipped; project-b cannot fetch the key", async () => {
    const barbicanA = createBarbicanDriver({ address: barbican.url, project: "project-a" });
    const other = await barbicanA.getKeyMaterial(out.otherKeyId);
    const flipped = Buffer.from(key);
    flipped[17] ^= 0x04;
    for (const [what, wrong] of [
      ["other key of project-a", other],
      ["random key", crypto.randomBytes(64)],
      ["one bit flipped", flipped],
    ] as const) {
      const e = await openLuks2(iscsiRead, wrong).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect({ what, code: isBaremetalError(e) ? e.code : String(e) }).toEqual({ what, code: "auth" });
      expect(await luks.testKey(file, wrong)).toBe(false); // cryptsetup agrees
      wrong.fill(0);
    }
    const asB = await createBarbicanDriver({ address: barbican.url, project: "project-b" })
      .getKeyMaterial(out.keyId)
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(isBaremetalError(asB) && asB.code).toBe("auth");
  });

  it("plaintext written through the node's view never reaches the backing file; the ciphertext does; a fresh view over iSCSI reads it back intact", async () => {
    const v = await open(iscsiRead, key);
    const base = v.segment.offset;
    let encMs = 0;
    for (const off of WHERE) {
      const t = performance.now();
      const cipher = v.encryptSectors(off, plaintext);
      encMs += performance.now() - t;
      expect(cipher.includes(Buffer.from(SENTENCE))).toBe(false);
      await iscsiWrite(base + off, cipher);
      // what the storage host holds at that place is exactly the ciphertext the node sent
      expect((await fileRead(base + off, cipher.length)).equals(cipher)).toBe(true);
    }

    // The whole backing file, searched: no sentence, no block of the pattern, at any alignment.
    const needles = [Buffer.from(SENTENCE), Buffer.from(SENTENCE.slice(0, 24)), Buffer.from(TAG), Buffer.from("~".repeat(64))];
    const { size, scanned, nonZeroChunks, hits, ms: scanMs } = scanFile(file, needles);
    expect(size).toBe(1024 ** 3);
    expect(scanned).toBe(size);
    expect(hits).toEqual([]);
    expect(nonZeroChunks).toBeGreaterThanOrEqual(3); // the header and both writes were seen by the scan

    // the backing file's own bytes decrypt to the plaintext (the storage host holds its ciphertext)
    const fromFile = await open(fileRead, key);
    for (const off of WHERE) expect((await fromFile.readPlaintext(off, plaintext.length)).equals(plaintext)).toBe(true);

    // a fresh view over iSCSI (a new unlock, as after a node reboot) reads the plaintext back
    const fresh = await open(iscsiRead, key);
    for (const off of WHERE) {
      const raw = await iscsiRead(base + off, plaintext.length);
      const t = performance.now();
      const back = fresh.decryptSectors(off, raw);
      encMs += performance.now() - t;
      expect({ off, intact: back.equals(plaintext) }).toEqual({ off, intact: true });
    }
    // between the writes the volume reads as what LUKS makes of zeros (never written): not our plaintext
    const between = await fresh.readPlaintext(64 * MiB, 8192);
    expect(between.includes(Buffer.from(TAG))).toBe(false);
    // the header is unchanged: cryptsetup on the storage host still opens it with the key, only it
    expect(await luks.testKey(file, key)).toBe(true);
    expect((await luks.dump(file)).keyslots).toHaveLength(1);

    const mb = (b: number) => (b / MiB).toFixed(1);
    console.log(
      [
        `node wrote ${WHERE.length} x ${mb(plaintext.length)} MiB through the userspace LUKS2 view; userspace AES-XTS ${((4 * plaintext.length) / MiB / (encMs / 1000)).toFixed(0)} MiB/s (2 encryptions + 2 decryptions of 1 MiB, cold: the unit test measures 64 MiB)`,
        `iSCSI via qemu-io: ${node.stats.writes} writes ${mb(node.stats.writeBytes)} MiB in ${node.stats.writeMs} ms; ${node.stats.reads} reads ${mb(node.stats.readBytes)} MiB in ${node.stats.readMs} ms (hex dumps)`,
        `backing file scanned in full (${mb(size)} MiB, ${nonZeroChunks} non-zero 16 MiB chunks) in ${scanMs} ms: no plaintext`,
      ].join("\n"),
    );
  });
});
