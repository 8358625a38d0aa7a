/**
 * Key delivery to the node, end to end: "the node unlocks it with the key delivered to it (config
 * drive), never the storage host". Through the real engine a tenant's member (project-a) makes a
 * key in a real Barbican, a 1 GiB `file` volume LUKS2-formatted at the source under it, an
 * allocation, a VolumeAttachment that a real tgt exports over iSCSI with CHAP, and a Deployment
 * whose `volumes` takes the attachment's `connection` and the key's id; the lab's Redfish BMC boots
 * the installer over UEFI HTTP and holds the config drive (from the lab's image store) in its CD.
 *
 * Then this test acts as the NODE with nothing but what it was handed: it fetches the config drive
 * from `configDriveUrl` (as the BMC does), reads `vendor_data2.json` out of the ISO with xorriso,
 * logs in over iSCSI with the delivered initiator name and CHAP secret (qemu-io via libiscsi),
 * unlocks the LUKS2 header with the delivered key (our userspace LUKS2 reader), writes and reads
 * back plaintext; the storage host's backing file never holds it. A KeyRotationPolicy rotation
 * moves the deployment to the new key in place (config drive republished and swapped, no
 * redeploy), after which only the new key opens. Project-b cannot deliver project-a's key (refused
 * before its node is touched, naming `volumes[0].keyId`) nor name project-a's volume (refused at
 * preview), and the stack's state holds neither a CHAP secret nor a key in plain text.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isBaremetalError } from "../../provider/src/core/errors";
import { createBarbicanDriver } from "../../provider/src/drivers/barbican";
import { Luks } from "../../provider/src/drivers/luks";
import { type Luks2Volume, openLuks2 } from "../../provider/src/drivers/luks/userspace";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { type BarbicanInstance, startBarbican } from "../harness/barbican";
import { fetchImage, fileReader, type IscsiNodeView, iscsiNode, readIso, scanFile } from "../harness/iscsi-node";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { type IscsiLogin, startTgt, type TgtInstance } from "../harness/tgt";

jest.setTimeout(420_000);

const MiB = 1024 * 1024;
const IMAGE = "http://images.lab.example/db-installer.iso";
const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";

const OPERATOR = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const nodes = config.requireObject<{ address: string; systemId: string }[]>("nodes");
export const nodeA = new baremetal.compute.Node("na", { bmc: nodes[0], owner: "operator-proj", lessee: "project-a" }).id;
export const nodeB = new baremetal.compute.Node("nb", { bmc: nodes[1], owner: "operator-proj", lessee: "project-b" }).id;
`;

/** Project-a: key, encrypted volume, allocation, attachment, and the deployment that delivers them. */
const TENANT_A = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const key = new baremetal.keys.EncryptionKey("db-key", { labels: { volume: "db" } });
const volume = new baremetal.storage.Volume("db", { sizeGib: 1, encryption: { keyId: key.keyId, unlockTimeMs: 200 } });
const policy = new baremetal.keys.KeyRotationPolicy("pci", {
  cryptoperiod: "90d",
  volumes: [{ volumeId: volume.volumeId, keyId: key.keyId }],
  rotateNow: config.get("rotateNow"),
  unlockTimeMs: 200,
});
const allocation = new baremetal.compute.Allocation("a0", { candidateNodes: [config.require("nodeId")] });
const att = new baremetal.storage.VolumeAttachment("db", { volumeId: volume.volumeId, allocationId: allocation.allocationId });
// The key that opens the volume now: the policy's, so a rotation re-delivers the new key.
const currentKey = pulumi.all([policy.currentKeys, volume.volumeId]).apply(([keys, id]) => keys[id]);
const d = new baremetal.compute.Deployment("db-1", {
  allocationId: allocation.allocationId,
  imageUrl: ${JSON.stringify(IMAGE)},
  bootInterface: "http",
  hostname: "db-1",
  volumes: [{ connection: att.connection, keyId: currentKey }],
}, { customTimeouts: { create: "3m", update: "3m", delete: "3m" } });
export const keyId = key.keyId;
export const currentKeyId = currentKey;
export const volumeId = volume.volumeId;
export const luksUuid = volume.luksUuid;
export const chapSecret = att.chapSecret;
export const configDriveUrl = d.configDriveUrl;
export const provisionState = d.provisionState;
export const deployedAt = d.deployedAt;
`;

/** Project-b tries to hand project-a's key to its own node, with a volume and attachment of its own. */
const TENANT_B = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const volume = new baremetal.storage.Volume("b-data", { sizeGib: 1 });
const allocation = new baremetal.compute.Allocation("b0", { candidateNodes: [config.require("nodeId")] });
const att = new baremetal.storage.VolumeAttachment("b-data", { volumeId: volume.volumeId, allocationId: allocation.allocationId });
export const allocationId = allocation.allocationId;
if (config.get("deploy") === "stolen-key") {
  new baremetal.compute.Deployment("b-1", {
    allocationId: allocation.allocationId, imageUrl: ${JSON.stringify(IMAGE)}, bootInterface: "http",
    volumes: [{ connection: att.connection, keyId: config.require("stolenKeyId") }],
  });
}
if (config.get("deploy") === "stolen-volume") {
  // project-a's volume, named by hand (as if its connection had leaked)
  new baremetal.compute.Deployment("b-1", {
    allocationId: allocation.allocationId, imageUrl: ${JSON.stringify(IMAGE)}, bootInterface: "http",
    volumes: [{ connection: att.connection.apply((c) => ({ ...c, volumeId: config.require("stolenVolumeId") })) }],
  });
}
if (config.get("deploy") === "other-node") {
  // its own volume, but a connection claiming another node (project-a's)
  new baremetal.compute.Deployment("b-1", {
    allocationId: allocation.allocationId, imageUrl: ${JSON.stringify(IMAGE)}, bootInterface: "http",
    volumes: [{ connection: att.connection.apply((c) => ({ ...c, nodeId: config.require("otherNodeId") })) }],
  });
}
`;

interface DeliveredVolume {
  volumeId: string;
  portal: string;
  targetIqn: string;
  lun: number;
  initiatorIqn: string;
  chapUser: string;
  chapSecret: string;
  luks?: { keyId: string; keyManager: string; key: string };
}

/** What the node reads from its config drive: the ISO from the image store, vendor_data2.json in it. */
async function nodeReadsConfigDrive(url: string): Promise<{ label: string; volumes: DeliveredVolume[]; raw: Map<string, Buffer> }> {
  const { label, files } = readIso(await fetchImage(url));
  const latest = files.get("openstack/latest/vendor_data2.json");
  const dated = files.get("openstack/2012-08-10/vendor_data2.json");
  if (!latest || !dated) throw new Error(`no vendor_data2.json on the config drive: ${[...files.keys()].join(", ")}`);
  expect(dated.equals(latest)).toBe(true); // cloud-init reads the dated directory: the same file
  const vendor = JSON.parse(latest.toString("utf8")) as { baremetal: { volumes: DeliveredVolume[] } };
  return { label, volumes: vendor.baremetal.volumes, raw: files };
}

const loginOf = (v: DeliveredVolume): IscsiLogin => ({ target: v.targetIqn, lun: v.lun, initiator: v.initiatorIqn, user: v.chapUser, secret: v.chapSecret });

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

/** BMC side effects that change a machine (sessions do not count). */
const machineEffects = (lab: Lab) => lab.bmcs.flatMap((b) => b.sideEffects()).filter((e) => !e.kind.startsWith("session") && !e.kind.startsWith("account"));

describe("volume delivery: connection and LUKS key on the node's config drive (real Barbican, tgt, lab Redfish BMC and image store, through the engine)", () => {
  let lab: Lab;
  let barbican: BarbicanInstance;
  let tgt: TgtInstance;
  let dir: string;
  let work: string;
  let operator: PulumiProject;
  let tenant: PulumiProject;
  let other: PulumiProject;
  let nodes: { nodeA: string; nodeB: string };
  let out: { keyId: string; currentKeyId: string; volumeId: string; luksUuid: string; chapSecret: string; configDriveUrl: string; provisionState: string; deployedAt: string };
  let upOutput = "";
  let file: string;
  const handles: Luks2Volume[] = [];
  const secrets: Buffer[] = [];
  const luks = new Luks();

  const SENTENCE = "Delivered by config drive: the storage host must never see this sentence.";
  const plaintext = (() => {
    const b = Buffer.alloc(256 * 1024);
    b.write(SENTENCE, 0, "latin1");
    for (let at = 4096, i = 0; at < b.length; at += 4096, i++) b.write(`delivery-plaintext block ${i} `.padEnd(4096, "="), at, "latin1");
    return b;
  })();
  const WHERE = 200 * MiB + 4096; // in the data segment, 4096-aligned

  const setTenantConfig = async (p: PulumiProject, project: string, inventoryUrl: string) => {
    for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    await p.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    await p.setConfig("baremetal:project", project);
    await p.setConfig("baremetal:roles", JSON.stringify(["manager", "member"])); // the lessee's manager deploys (Ironic policy)
    await p.setConfig("baremetal:keyManagers", JSON.stringify({ barbican: { driver: "barbican", address: barbican.url } }));
    await p.setConfig(
      "baremetal:storageBackends",
      JSON.stringify({ lab: { driver: "file", address: `file://${dir}`, iscsi: { portal: tgt.portal, controlPort: tgt.controlPort, socketPath: tgt.socketPath } } }),
    );
  };

  const open = async (read: IscsiNodeView["read"], key: Buffer) => {
    const v = await openLuks2(read, key);
    handles.push(v);
    return v;
  };

  beforeAll(async () => {
    const t0 = Date.now();
    [barbican, tgt, lab] = await Promise.all([startBarbican(), startTgt(), startLab({ flavor: "generic", systems: 2, bootSeconds: 0, installSeconds: 1 })]);
    dir = fs.mkdtempSync("/tmp/delivery-e2e-");
    work = fs.mkdtempSync(path.join(os.tmpdir(), "delivery-node-"));
    fs.chmodSync(work, 0o700);
    operator = await newProject("vd-operator", OPERATOR);
    const inventoryUrl = `sqlite://${operator.dir}/inventory.db`;
    for (const [k, v] of Object.entries(lab.info.providerConfig)) await operator.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    await operator.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    await operator.setConfig("nodes", JSON.stringify(lab.info.nodes.map((n) => ({ address: n.address, systemId: n.systemId }))));
    await operator.pulumi(["up", "--yes", "--skip-preview"]);
    nodes = (await operator.outputs()) as typeof nodes;

    tenant = await newProject("vd-project-a", TENANT_A);
    await setTenantConfig(tenant, "project-a", inventoryUrl);
    await tenant.setConfig("nodeId", nodes.nodeA);
    const up = await tenant.pulumi(["up", "--yes"]); // with its preview: check and preview run too
    upOutput = up.stdout + up.stderr;
    out = (await tenant.outputs()) as typeof out;
    file = path.join(dir, `${out.volumeId}.img`);

    other = await newProject("vd-project-b", TENANT_B);
    await setTenantConfig(other, "project-b", inventoryUrl);
    await other.setConfig("nodeId", nodes.nodeB);
    await other.pulumi(["up", "--yes", "--skip-preview"]);
    console.log(`volume-delivery e2e set up in ${Date.now() - t0} ms (Barbican, tgt, lab, three stacks up)`);
  });

  afterAll(async () => {
    for (const h of handles) h.close();
    for (const s of secrets) s.fill(0);
    for (const p of [other, tenant, operator]) await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of [other, tenant, operator]) p?.remove();
    await Promise.all([barbican?.stop(), tgt?.stop(), lab?.stop()]);
    for (const d of [dir, work]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it("the node reads its volume from the config drive, logs in with the delivered CHAP secret, unlocks with the delivered key, and its plaintext never reaches the storage host", async () => {
    expect(out.provisionState).toBe("active");
    // the BMC holds the drive the image store serves
    expect(lab.bmcs[0].system(1).virtualMedia).toMatchObject({ inserted: true, image: out.configDriveUrl });
    const drive = await nodeReadsConfigDrive(out.configDriveUrl);
    expect(drive.label).toBe("config-2");
    expect(JSON.parse(drive.raw.get("openstack/latest/meta_data.json")!.toString())).toMatchObject({ hostname: "db-1" });
    expect(drive.volumes).toHaveLength(1);
    const [v] = drive.volumes;
    expect(v).toMatchObject({ volumeId: out.volumeId, portal: tgt.portal, lun: expect.any(Number), luks: { keyId: out.keyId, keyManager: "barbican" } });
    expect(v.chapSecret).toBe(out.chapSecret);
    const key = Buffer.from(v.luks!.key, "base64");
    secrets.push(key);
    expect(key.length).toBe(64); // the EncryptionKey's 512 bits
    // the very key Barbican holds for project-a (the oracle; the node never asks Barbican)
    const fromBarbican = await createBarbicanDriver({ address: barbican.url, project: "project-a" }).getKeyMaterial(out.keyId);
    secrets.push(fromBarbican);
    expect(key.equals(fromBarbican)).toBe(true);

    // iSCSI with exactly what was delivered; one wrong character of the CHAP secret is refused
    const login = loginOf(v);
    const cap = await tgt.readCapacity(login);
    expect(cap).toMatchObject({ ok: true, bytes: 1024 ** 3 });
    const wrong = await tgt.readCapacity({ ...login, secret: `${login.secret!.slice(0, -1)}${login.secret!.endsWith("A") ? "B" : "A"}` });
    expect(wrong.ok).toBe(false);

    const node = iscsiNode(tgt, login, work);
    const lv = await open(node.read, key);
    expect(lv.uuid).toBe(out.luksUuid);
    const cipher = lv.encryptSectors(WHERE, plaintext);
    await node.write(lv.segment.offset + WHERE, cipher);
    expect((await fileReader(file)(lv.segment.offset + WHERE, cipher.length)).equals(cipher)).toBe(true);
    const scan = scanFile(file, [Buffer.from(SENTENCE), Buffer.from("delivery-plaintext block "), Buffer.from("=".repeat(64))]);
    expect(scan.scanned).toBe(1024 ** 3);
    expect(scan.hits).toEqual([]);
    expect(scan.nonZeroChunks).toBeGreaterThanOrEqual(2); // the header and the write
    const fresh = await open(node.read, key);
    expect((await fresh.readPlaintext(WHERE, plaintext.length)).equals(plaintext)).toBe(true);
    // the storage host's cryptsetup agrees that this key opens the header
    expect(await luks.testKey(file, key)).toBe(true);
    console.log(
      `node: config drive ${drive.raw.size} files; unlock over iSCSI in ${lv.kdfMs} ms (KDF); ${node.stats.reads} iSCSI reads, ${node.stats.writes} write; backing file scanned in ${scan.ms} ms: no plaintext`,
    );
  });

  it("the stack's state and the CLI output hold neither the CHAP secret nor the key in plain text; volumes and connection are secrets", async () => {
    const key = secrets[0];
    const exported = await tenant.exportStack();
    const text = JSON.stringify(exported);
    for (const needle of [out.chapSecret, key.toString("base64"), key.toString("hex"), out.configDriveUrl]) {
      expect(text.includes(needle)).toBe(false);
      expect(upOutput.includes(needle)).toBe(false);
    }
    const resources = exported.deployment.resources ?? [];
    const deployment = resources.find((r) => r.type === "baremetal:compute:Deployment") as { inputs: Record<string, unknown>; outputs: Record<string, unknown> };
    const attachment = resources.find((r) => r.type === "baremetal:storage:VolumeAttachment") as { outputs: Record<string, unknown> };
    for (const v of [deployment.inputs.volumes, deployment.outputs.volumes, attachment.outputs.connection, attachment.outputs.chapSecret]) {
      expect(JSON.stringify(v)).toContain(SECRET_SIG);
    }
    const plainOutputs = await tenant.pulumi(["stack", "output", "--json"]);
    expect(plainOutputs.stdout.includes(out.chapSecret)).toBe(false);
    await tenant.pulumi(["preview", "--expect-no-changes"]);
  });

  it("a rotation re-delivers: the policy's new key goes onto a republished config drive swapped in place (no redeploy); only the new key opens, the data stays", async () => {
    const bmc = lab.bmcs[0];
    const installsBefore = bmc.sideEffects("installer-started").length;
    const oldName = out.configDriveUrl.slice(out.configDriveUrl.lastIndexOf("/") + 1);
    expect(lab.imageStore.images.has(oldName)).toBe(true);
    await tenant.setConfig("rotateNow", "incident-7");
    const t0 = Date.now();
    const up = await tenant.pulumi(["up", "--yes", "--skip-preview"]);
    const ms = Date.now() - t0;
    expect(up.stdout).toMatch(/~ 2 updated/); // the policy and the deployment, nothing replaced
    expect(up.stdout).not.toMatch(/replaced/);
    const after = (await tenant.outputs()) as typeof out;
    expect(after.currentKeyId).not.toBe(out.currentKeyId);
    expect(after.deployedAt).toBe(out.deployedAt);
    expect(after.configDriveUrl).not.toBe(out.configDriveUrl);
    // the old drive (old key, CHAP secret) is gone from the image store; the BMC holds the new one
    expect(lab.imageStore.images.has(oldName)).toBe(false);
    expect([...lab.imageStore.images.keys()].filter((n) => n.startsWith("configdrive-"))).toHaveLength(1);
    expect(bmc.system(1).virtualMedia).toMatchObject({ inserted: true, image: after.configDriveUrl });
    expect(bmc.sideEffects("installer-started")).toHaveLength(installsBefore);

    const drive = await nodeReadsConfigDrive(after.configDriveUrl);
    const [v] = drive.volumes;
    expect(v.luks!.keyId).toBe(after.currentKeyId);
    const newKey = Buffer.from(v.luks!.key, "base64");
    secrets.push(newKey);
    expect(newKey.equals(secrets[0])).toBe(false);
    const node = iscsiNode(tgt, loginOf(v), work);
    const lv = await open(node.read, newKey);
    expect((await lv.readPlaintext(WHERE, plaintext.length)).equals(plaintext)).toBe(true);
    const old = await refusal(openLuks2(node.read, secrets[0]));
    expect(isBaremetalError(old) && old.code).toBe("auth");
    expect(await luks.testKey(file, secrets[0])).toBe(false);
    console.log(`rotation + re-delivery (one up: new key, keyslot swap, config drive republished and swapped) in ${ms} ms`);
    await tenant.pulumi(["preview", "--expect-no-changes"]);
    out = after;
  });

  it("project-b cannot deliver project-a's key: refused by Barbican before its node is touched, naming volumes[0].keyId", async () => {
    const before = machineEffects(lab).length;
    const drivesBefore = lab.imageStore.images.size;
    await other.setConfig("deploy", "stolen-key");
    await other.setConfig("stolenKeyId", out.currentKeyId);
    const up = await other.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    const text = up.stdout + up.stderr;
    expect(up.code).not.toBe(0);
    expect(text).toMatch(/volumes\[0\]\.keyId: key manager barbican: .*not accessible to project project-b.*only a key of project project-b can be delivered/);
    expect(text).toMatch(/403/);
    console.log(`project-b's deploy refused: ${/error: (volumes\[0\]\.keyId: .*)/.exec(text)?.[1]}`);
    // nothing on the machine changed, no config drive was published, no deployment recorded
    expect(machineEffects(lab).length).toBe(before);
    expect(lab.imageStore.images.size).toBe(drivesBefore);
    const exported = await other.exportStack();
    expect((exported.deployment.resources ?? []).some((r) => r.type === "baremetal:compute:Deployment")).toBe(false);
  });

  it("project-b cannot name project-a's volume nor claim another node's connection: refused at preview, naming the property", async () => {
    const before = machineEffects(lab).length;
    await other.setConfig("deploy", "stolen-volume");
    await other.setConfig("stolenVolumeId", out.volumeId);
    const r = await other.pulumi(["preview"], { allowFail: true });
    const text = r.stdout + r.stderr;
    expect(r.code).not.toBe(0);
    expect(text).toMatch(/volumes\[0\]\.connection\.volumeId/);
    expect(text).toMatch(/volume project-a--\S+ belongs to project project-a, not to project-b/);
    console.log(`project-b's preview refused: ${text.split("\n").find((l) => l.includes("volumes[0].connection.volumeId"))?.trim()}`);
    await other.setConfig("deploy", "other-node");
    await other.setConfig("otherNodeId", nodes.nodeA);
    const wrongNode = await other.pulumi(["preview"], { allowFail: true });
    expect(wrongNode.code).not.toBe(0);
    expect(wrongNode.stdout + wrongNode.stderr).toMatch(/volumes\[0\] is exported to node \S+, not to this deployment's node/);
    expect(machineEffects(lab).length).toBe(before);
    await other.setConfig("deploy", "none");
  });
});
