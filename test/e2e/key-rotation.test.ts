/**
 * KeyRotationPolicy through the real engine against a real Barbican and real cryptsetup (LUKS2 on
 * the `file` backend): an `up` after the cryptoperiod rotates (new key in Barbican, new keyslot
 * added before the old one goes, old key retired), cryptsetup confirms old key refused / new key
 * accepted; and the provider process is KILLED at each step of a rotation (fault injection), after
 * which the volume still opens with the old or the new key, and the next `up` finishes the
 * rotation exactly once.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { createBarbicanDriver } from "../../provider/src/drivers/barbican";
import type { KeyManagerDriver } from "../../provider/src/drivers/kinds/keymanager";
import { Luks } from "../../provider/src/drivers/luks";
import { type BarbicanInstance, startBarbican } from "../harness/barbican";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";

jest.setTimeout(900_000);

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const key = new baremetal.keys.EncryptionKey("data-key");
const volume = new baremetal.storage.Volume("data", { sizeGib: 1, encryption: { keyId: key.keyId, unlockTimeMs: 200 } });
const policy = new baremetal.keys.KeyRotationPolicy("pci", {
  cryptoperiod: config.require("cryptoperiod"),
  volumes: [{ volumeId: volume.volumeId, keyId: key.keyId }],
  rotateNow: config.get("rotateNow"),
  unlockTimeMs: 200,
});
export const volumeId = volume.volumeId;
export const firstKey = key.keyId;
export const currentKeys = policy.currentKeys;
export const keyVersions = policy.keyVersions;
export const nextRotationDue = policy.nextRotationDue;
export const auditTrail = policy.auditTrail;
`;

interface Out {
  volumeId: string;
  firstKey: string;
  currentKeys: Record<string, string>;
  keyVersions: Record<string, number>;
  nextRotationDue: string;
  auditTrail: { step: string; keyId?: string }[];
}

describe("key rotation on a cryptoperiod, and crash safety, through the engine (real Barbican, cryptsetup)", () => {
  let barbican: BarbicanInstance;
  let dir: string;
  let p: PulumiProject;
  let keys: KeyManagerDriver;
  const luks = new Luks();
  const file = (o: Out) => path.join(dir, `${o.volumeId}.img`);
  const material = (id: string) => keys.getKeyMaterial(id);

  beforeAll(async () => {
    barbican = await startBarbican();
    keys = createBarbicanDriver({ address: barbican.url, project: "project-a" });
    dir = fs.mkdtempSync("/tmp/rotation-e2e-");
    p = await newProject("key-rotation", PROGRAM);
    await p.setConfig("baremetal:inventoryUrl", `sqlite://${p.dir}/inventory.db`, true);
    await p.setConfig("baremetal:project", "project-a");
    await p.setConfig("baremetal:roles", JSON.stringify(["member"]));
    await p.setConfig("baremetal:keyManagers", JSON.stringify({ barbican: { driver: "barbican", address: barbican.url } }));
    await p.setConfig("baremetal:storageBackends", JSON.stringify({ lab: { driver: "file", address: `file://${dir}` } }));
    await p.setConfig("cryptoperiod", "25s");
  });

  afterAll(async () => {
    delete p?.env.BAREMETAL_FAULT_CRASH_AT;
    await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    p?.remove();
    await keys?.close();
    await barbican?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it("an up after the cryptoperiod rotates: new keyslot, old key refused, old key retired in Barbican", async () => {
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    const before = (await p.outputs()) as unknown as Out;
    expect(before.currentKeys[before.volumeId]).toBe(before.firstKey);
    await p.pulumi(["preview", "--expect-no-changes"]); // not due yet
    const wait = Date.parse(before.nextRotationDue) - Date.now() + 1000;
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const preview = await p.pulumi(["preview", "--diff"]);
    expect(preview.stdout).toMatch(/rotation/);
    await p.pulumi(["up", "--yes", "--skip-preview"]);
    const after = (await p.outputs()) as unknown as Out;
    const fresh = after.currentKeys[after.volumeId];
    expect(fresh).not.toBe(before.firstKey);
    expect(after.keyVersions[after.volumeId]).toBe(2);
    expect(await luks.testKey(file(after), await material(fresh))).toBe(true);
    expect(await luks.testKey(file(after), await material(before.firstKey))).toBe(false);
    expect((await luks.dump(file(after))).keyslots).toHaveLength(1);
    expect(await keys.describeKey(before.firstKey)).toMatchObject({ state: "deactivated" });
    expect(await keys.describeKey(fresh)).toMatchObject({ state: "active", replaces: before.firstKey });
    expect(after.auditTrail.map((e) => e.step)).toEqual(
      expect.arrayContaining(["baseline", "key-created", "keyslot-added", "keyslot-removed", "verified", "key-retired", "rotated"]),
    );
    expect(Date.parse(after.nextRotationDue)).toBeGreaterThan(Date.now());
    const state = JSON.stringify(await p.exportStack());
    for (const id of [before.firstKey, fresh]) expect(state).not.toContain((await material(id)).toString("hex"));
    await p.setConfig("cryptoperiod", "1h");
    await p.pulumi(["up", "--yes", "--skip-preview"]); // a longer period: no rotation
    expect(((await p.outputs()) as unknown as Out).keyVersions[after.volumeId]).toBe(2);
  });

  for (const step of ["key-created", "added", "removed", "key-retired"]) {
    it(`the provider killed at '${step}': the volume still opens, the next up finishes the rotation once`, async () => {
      const before = (await p.outputs()) as unknown as Out;
      const old = before.currentKeys[before.volumeId];
      const version = before.keyVersions[before.volumeId];
      await p.setConfig("rotateNow", `incident-${step}`);
      p.env.BAREMETAL_FAULT_CRASH_AT = step;
      const crashed = await p.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
      delete p.env.BAREMETAL_FAULT_CRASH_AT;
      expect(crashed.code).not.toBe(0);
      // Right after the crash: the old key, or its successor, opens the volume.
      const successor = (await keys.listKeys()).find((k) => k.replaces === old);
      const opensOld = await luks.testKey(file(before), await material(old));
      const opensNew = successor ? await luks.testKey(file(before), await material(successor.id)) : false;
      expect(opensOld || opensNew).toBe(true);
      if (step === "key-created" || step === "added") expect(opensOld).toBe(true);
      if (step === "removed" || step === "key-retired") expect([opensOld, opensNew]).toEqual([false, true]);
      // The next up finishes, reusing the successor (exactly one new key).
      await p.pulumi(["up", "--yes", "--skip-preview"]);
      const after = (await p.outputs()) as unknown as Out;
      const fresh = after.currentKeys[after.volumeId];
      expect(fresh).toBe(successor!.id);
      expect(after.keyVersions[after.volumeId]).toBe(version + 1);
      expect((await keys.listKeys()).filter((k) => k.replaces === old)).toHaveLength(1);
      expect(await luks.testKey(file(after), await material(fresh))).toBe(true);
      expect(await luks.testKey(file(after), await material(old))).toBe(false);
      expect((await luks.dump(file(after))).keyslots).toHaveLength(1);
      expect(await keys.describeKey(old)).toMatchObject({ state: "deactivated" });
    });
  }
});
