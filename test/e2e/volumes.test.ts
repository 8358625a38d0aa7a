/**
 * Encrypted volumes through the real engine: a tenant's member creates a key in a real Barbican, a
 * volume on the `file` backend encrypted at the source with LUKS2 under that key (cryptsetup
 * verifies the header and that the key from Barbican, and only it, opens it), and exports it to
 * the node its allocation holds over a real tgt with per-attachment CHAP (libiscsi: the right
 * initiator and secret see the volume; a wrong secret or another initiator are refused). The other
 * tenant can neither encrypt with the first one's key (Barbican refuses) nor attach its volume.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { createBarbicanDriver } from "../../provider/src/drivers/barbican";
import { Luks } from "../../provider/src/drivers/luks";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { type BarbicanInstance, startBarbican } from "../harness/barbican";
import { type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { fileBackend, type OperatorStack, operatorStack, tenantStack } from "../harness/storage-stack";
import { startTgt, type TgtInstance } from "../harness/tgt";

jest.setTimeout(600_000);

const TENANT = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const foreignKey = config.get("foreignKeyId");
const foreignVolume = config.get("foreignVolumeId");
const key = new baremetal.keys.EncryptionKey("db-key", { labels: { volume: "db" } });
const volume = new baremetal.storage.Volume("db", { sizeGib: 1, encryption: { keyId: foreignKey ?? key.keyId, unlockTimeMs: 200 } });
export const keyId = key.keyId;
export const volumeId = volume.volumeId;
export const luksUuid = volume.luksUuid;
export let portal: pulumi.Output<string> | undefined;
export let targetIqn: pulumi.Output<string> | undefined;
export let initiatorIqn: pulumi.Output<string> | undefined;
export let chapUser: pulumi.Output<string> | undefined;
export let chapSecret: pulumi.Output<string> | undefined;
if (config.getBoolean("attach")) {
  const allocation = new baremetal.compute.Allocation("a0", { candidateNodes: [config.require("nodeId")] });
  const att = new baremetal.storage.VolumeAttachment("db", { volumeId: foreignVolume ?? volume.volumeId, allocationId: allocation.allocationId });
  ({ portal, targetIqn, initiatorIqn, chapUser, chapSecret } = att);
}
`;

describe("encrypted volumes exported over iSCSI, through the engine (real Barbican, cryptsetup, tgt)", () => {
  let lab: Lab;
  let barbican: BarbicanInstance;
  let tgt: TgtInstance;
  let dir: string;
  let operator: OperatorStack;
  const tenants: Record<string, PulumiProject> = {};
  const luks = new Luks();

  beforeAll(async () => {
    [barbican, tgt, lab] = await Promise.all([startBarbican(), startTgt(), startLab({ flavor: "generic", systems: 1, bootSeconds: 0 })]);
    dir = fs.mkdtempSync("/tmp/volumes-e2e-");
    operator = await operatorStack("vol-operator", lab, { nodes: 1, lessee: "project-a" });
    for (const project of ["project-a", "project-b"]) {
      tenants[project] = await tenantStack(`vol-${project}`, TENANT, {
        project,
        inventoryUrl: operator.inventoryUrl,
        lab,
        keyManagers: { barbican: { driver: "barbican", address: barbican.url } },
        storageBackends: { lab: fileBackend(dir, tgt) },
        config: { nodeId: operator.nodeIds[0] },
      });
    }
  });

  afterAll(async () => {
    for (const p of [...Object.values(tenants), operator?.project]) await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of [...Object.values(tenants), operator?.project]) p?.remove();
    await Promise.all([barbican?.stop(), tgt?.stop(), lab?.stop()]);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it("a member's volume is LUKS2 at the source, opened by its Barbican key and no other", async () => {
    const a = tenants["project-a"];
    await a.pulumi(["up", "--yes", "--skip-preview"]);
    const out = (await a.outputs()) as { keyId: string; volumeId: string; luksUuid: string };
    expect(out.volumeId).toBe("project-a--db");
    const file = path.join(dir, `${out.volumeId}.img`);
    const dump = await luks.dump(file);
    expect(dump).toMatchObject({ version: 2, uuid: out.luksUuid, cipher: "aes-xts-plain64", keyBits: 512 });
    expect(dump.keyslots).toHaveLength(1);
    const key = await createBarbicanDriver({ address: barbican.url, project: "project-a" }).getKeyMaterial(out.keyId);
    expect(await luks.testKey(file, key)).toBe(true);
    expect(await luks.testKey(file, Buffer.alloc(64, 7))).toBe(false);
    expect(fs.statSync(file).size).toBe(1024 ** 3);
    expect(fs.statSync(file).blocks * 512).toBeLessThan(64 * 1024 ** 2); // sparse: only the header is written
    const exported = JSON.stringify(await a.exportStack());
    expect(exported).not.toContain(key.toString("hex"));
    expect(exported).not.toContain(key.toString("base64"));
    await a.pulumi(["preview", "--expect-no-changes"]);
  });

  it("attached to the allocated node over iSCSI: its initiator with its CHAP secret only", async () => {
    const a = tenants["project-a"];
    await a.setConfig("attach", "true");
    await a.pulumi(["up", "--yes", "--skip-preview"]);
    const out = (await a.outputs()) as { targetIqn: string; initiatorIqn: string; chapUser: string; chapSecret: string; portal: string };
    expect(out.portal).toBe(tgt.portal);
    const login = { target: out.targetIqn, lun: 1, initiator: out.initiatorIqn, user: out.chapUser, secret: out.chapSecret };
    const ok = await tgt.readCapacity(login);
    expect(ok).toMatchObject({ ok: true, bytes: 1024 ** 3 });
    expect((await tgt.readCapacity({ ...login, secret: `${out.chapSecret}x` })).ok).toBe(false);
    expect((await tgt.readCapacity({ ...login, initiator: "iqn.2026-11.io.example:intruder" })).ok).toBe(false);
    expect(JSON.stringify(await a.exportStack())).not.toContain(out.chapSecret);
    await a.pulumi(["preview", "--expect-no-changes"]);
    await a.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]); // reading back finds what was made
  });

  it("another project can neither encrypt with the first one's key nor attach its volume", async () => {
    const { keyId, volumeId } = (await tenants["project-a"].outputs()) as { keyId: string; volumeId: string };
    const b = tenants["project-b"];
    await b.setConfig("foreignKeyId", keyId);
    const up = await b.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(up.code).not.toBe(0);
    expect(up.stdout + up.stderr).toContain(keyId);
    expect(up.stdout + up.stderr).toMatch(/project-b/);
    expect(fs.existsSync(path.join(dir, "project-b--db.img"))).toBe(false); // refused before anything was made
    await b.pulumi(["config", "rm", "foreignKeyId"]);
    await b.setConfig("attach", "true");
    await b.setConfig("foreignVolumeId", volumeId);
    const preview = await b.pulumi(["preview"], { allowFail: true });
    expect(preview.code).not.toBe(0);
    expect(preview.stdout + preview.stderr).toMatch(/volume project-a--db belongs to project project-a, not to project-b/);
  });

  it("destroy unexports and deletes the volume", async () => {
    await tenants["project-a"].pulumi(["destroy", "--yes", "--skip-preview"]);
    expect(fs.existsSync(path.join(dir, "project-a--db.img"))).toBe(false);
    expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).not.toContain("project-a--db");
  });
});
