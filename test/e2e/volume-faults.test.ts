/**
 * Bad input and faults of encrypted volumes, through the real engine against real peers (Barbican,
 * OpenBao, tgt, cryptsetup, the `file` backend): a wrong key reference, a key manager down or hung,
 * a full filesystem, an export conflict. Each failing `up` must say what failed, naming the setting
 * or the backend, and what to do; afterwards the test looks at what exists: the stack's state
 * (`pulumi stack export`) and the backends' (files, tgtd's targets, the key managers), so that
 * nothing is half-made without being recorded. And the `vault` key manager (OpenBao) carries an
 * encrypted volume through the engine, with project isolation and a clean refresh.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { isBaremetalError } from "../../provider/src/core/errors";
import { createBarbicanDriver } from "../../provider/src/drivers/barbican";
import type { KeyManagerDriver } from "../../provider/src/drivers/kinds/keymanager";
import { Luks } from "../../provider/src/drivers/luks";
import { FileStorageDriver } from "../../provider/src/drivers/storage-file/driver";
import { createVaultDriver } from "../../provider/src/drivers/vault";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { type BarbicanInstance, startBarbican } from "../harness/barbican";
import { startVaultServer, type VaultServerInstance } from "../harness/openbao";
import { type PulumiProject, type RunResult, SDK_IMPORT } from "../harness/pulumi";
import { fileBackend, type OperatorStack, operatorStack, stateResources, tenantStack, type TenantOptions } from "../harness/storage-stack";
import { startTgt, type TgtInstance } from "../harness/tgt";

jest.setTimeout(900_000);

const MiB = 1024 * 1024;
const VOLUME = "baremetal:storage:Volume";
const UP = ["up", "--yes", "--skip-preview"];

/** One encrypted volume keyed by a key reference given as config (`keyRef`). */
const KEYREF_PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const volume = new baremetal.storage.Volume("db", { sizeGib: 1, encryption: { keyId: config.require("keyRef"), keyManager: config.get("keyManager"), unlockTimeMs: 200 } });
export const volumeId = volume.volumeId;
`;

/** A key, and encrypted volumes (config `volumes`: names) keyed by it. */
const KEYED_PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const keyManager = config.get("keyManager");
const key = new baremetal.keys.EncryptionKey("db-key", { keyManager, labels: { volume: "db" } });
export const keyId = key.keyId;
export const volumeIds = (config.getObject<string[]>("volumes") ?? []).map(
  (name) => new baremetal.storage.Volume(name, { sizeGib: 1, encryption: { keyId: key.keyId, keyManager, unlockTimeMs: 200 } }).volumeId,
);
`;

/** One plain volume attached to the node of each allocation (config `nodeIds`). */
const SHARED_PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const volume = new baremetal.storage.Volume("shared", { sizeGib: 1 });
export const volumeId = volume.volumeId;
export const attachments = config.requireObject<string[]>("nodeIds").map((nodeId, i) => {
  const allocation = new baremetal.compute.Allocation(\`a\${i}\`, { candidateNodes: [nodeId] });
  const att = new baremetal.storage.VolumeAttachment(\`shared-\${i}\`, { volumeId: volume.volumeId, allocationId: allocation.allocationId });
  return { nodeId: att.nodeId, targetIqn: att.targetIqn, lun: att.lun, initiatorIqn: att.initiatorIqn, chapUser: att.chapUser, chapSecret: att.chapSecret };
});
`;

const text = (r: RunResult) => r.stdout + r.stderr;
const asRoot = typeof process.getuid === "function" && process.getuid() === 0;

describe("encrypted volumes: bad input and faults through the engine (real Barbican, OpenBao, tgt, cryptsetup)", () => {
  let lab: Lab;
  let barbican: BarbicanInstance;
  let vault: VaultServerInstance;
  let tgt: TgtInstance;
  let op: OperatorStack;
  let root: string;
  const stacks: PulumiProject[] = [];
  const drivers: KeyManagerDriver[] = [];
  const luks = new Luks();
  const stopped = new Set<number>();

  /** A fresh volume directory of one stack. */
  const volumeDir = (name: string) => {
    const d = path.join(root, name);
    fs.mkdirSync(d, { mode: 0o700 });
    return d;
  };
  const barbicanAs = (project: string) => {
    const d = createBarbicanDriver({ address: barbican.url, project });
    drivers.push(d);
    return d;
  };
  const barbicanTenant = async (name: string, program: string, dir: string, extra: Partial<TenantOptions> = {}) => {
    const p = await tenantStack(`faults-${name}`, program, {
      project: "project-a",
      inventoryUrl: op.inventoryUrl,
      keyManagers: { barbican: { driver: "barbican", address: barbican.url } },
      storageBackends: { lab: fileBackend(dir, tgt) },
      ...extra,
    });
    stacks.push(p);
    return p;
  };

  beforeAll(async () => {
    [barbican, vault, tgt, lab] = await Promise.all([startBarbican(), startVaultServer(), startTgt(), startLab({ flavor: "generic", systems: 2, bootSeconds: 0 })]);
    root = fs.mkdtempSync("/tmp/volume-faults-");
    op = await operatorStack("faults-operator", lab, { nodes: 2, lessee: "project-a" });
  });

  afterAll(async () => {
    for (const pid of stopped) process.kill(pid, "SIGCONT");
    for (const p of [...stacks].reverse()) await p.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    await op?.project.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of [...stacks, op?.project]) p?.remove();
    await Promise.all(drivers.map((d) => d.close()));
    await Promise.all([barbican?.stop(), vault?.stop(), tgt?.stop(), lab?.stop()]);
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  describe("a wrong key reference", () => {
    let p: PulumiProject;
    let dir: string;
    let foreignKey: string;

    beforeAll(async () => {
      dir = volumeDir("wrong-key");
      p = await barbicanTenant("wrong-key", KEYREF_PROGRAM, dir);
      foreignKey = (await barbicanAs("project-b").createKey({ name: "b-key", bits: 512 })).id;
    });

    it("a key that does not exist, and another project's key: up fails naming the key and the project; no volume file, nothing in state", async () => {
      const missing = randomUUID();
      await p.setConfig("keyRef", missing);
      const r1 = await p.pulumi(UP, { allowFail: true });
      expect(r1.code).not.toBe(0);
      expect(text(r1)).toContain(`key ${missing} does not exist in Barbican for project project-a`);
      expect(text(r1)).toMatch(/destroyed, or never created/);

      await p.setConfig("keyRef", foreignKey);
      const r2 = await p.pulumi(UP, { allowFail: true });
      expect(r2.code).not.toBe(0);
      expect(text(r2)).toContain(`key ${foreignKey} is not accessible to project project-a`);
      expect(text(r2)).toMatch(/HTTP 403/);
      expect(text(r2)).toMatch(/belongs to another project/);

      expect(fs.readdirSync(dir)).toEqual([]); // refused before the storage backend was touched
      expect(await stateResources(p, VOLUME)).toEqual([]);
      // and the foreign key is untouched: its owner still reads it
      expect(await barbicanAs("project-b").describeKey(foreignKey)).toMatchObject({ project: "project-b", state: "active" });
    });

    // The key manager's refusal is attributed to the Volume's input, not the driver's parameter.
    it("a key manager's refusal names encryption.keyId", async () => {
      await p.setConfig("keyRef", randomUUID());
      const r = await p.pulumi(UP, { allowFail: true });
      expect(r.code).not.toBe(0);
      expect(text(r)).toMatch(/encryption\.keyId: key [0-9a-f-]{36} does not exist/);
      await p.setConfig("keyRef", foreignKey);
      const r2 = await p.pulumi(UP, { allowFail: true });
      expect(text(r2)).toMatch(/encryption\.keyId: key [0-9a-f-]{36} is not accessible to project project-a/);
    });
  });

  describe("the key manager down", () => {
    let p: PulumiProject;
    let dir: string;
    let keyId: string;

    beforeAll(async () => {
      dir = volumeDir("km-down");
      p = await barbicanTenant("km-down", KEYED_PROGRAM, dir);
      await p.pulumi(UP); // the key, no volume yet
      keyId = ((await p.outputs()) as { keyId: string }).keyId;
    });

    it("Barbican stopped (nothing listens at its address): the volume's up fails naming keyManagers.barbican.address; nothing made; back up, the same up succeeds", async () => {
      // A Barbican of its own, stopped by its PID: its address now refuses connections.
      const gone = await startBarbican();
      await gone.stop();
      await p.setConfig("baremetal:keyManagers", JSON.stringify({ barbican: { driver: "barbican", address: gone.url } }));
      await p.setConfig("volumes", JSON.stringify(["db"]));
      const t0 = Date.now();
      const r = await p.pulumi(UP, { allowFail: true });
      const failMs = Date.now() - t0;
      expect(r.code).not.toBe(0);
      expect(text(r)).toContain(`keyManagers.barbican.address: Barbican at ${gone.url} is unreachable (ECONNREFUSED: nothing listens there) to read the material of key ${keyId}`);
      expect(text(r)).toMatch(/check the address and that barbican-api is running/);
      expect(fs.readdirSync(dir)).toEqual([]);
      expect(await stateResources(p, VOLUME)).toEqual([]);
      const material = await barbicanAs("project-a").getKeyMaterial(keyId);
      expect(text(r)).not.toContain(material.toString("hex"));

      await p.setConfig("baremetal:keyManagers", JSON.stringify({ barbican: { driver: "barbican", address: barbican.url } }));
      await p.pulumi(UP);
      const file = path.join(dir, "project-a--db.img");
      expect(await luks.testKey(file, material)).toBe(true);
      expect(await stateResources(p, VOLUME)).toHaveLength(1);
      console.log(`key manager refusing connections: up failed in ${failMs} ms`);
    });

    it("Barbican hung (SIGSTOP by PID): up fails after the request timeout naming Barbican and its address; nothing made; SIGCONT, the same up succeeds", async () => {
      await p.setConfig("volumes", JSON.stringify(["db", "logs"]));
      process.kill(barbican.pid, "SIGSTOP");
      stopped.add(barbican.pid);
      let r: RunResult;
      const t0 = Date.now();
      try {
        r = await p.pulumi(UP, { allowFail: true });
      } finally {
        process.kill(barbican.pid, "SIGCONT");
        stopped.delete(barbican.pid);
      }
      const failMs = Date.now() - t0;
      expect(r.code).not.toBe(0);
      expect(text(r)).toContain(`Barbican at ${barbican.url} did not answer in time`);
      expect(text(r)).toContain(`to read the material of key ${keyId}`);
      expect(text(r)).toMatch(/check that it is up/);
      expect(fs.readdirSync(dir).sort()).toEqual(["project-a--db.img"]); // the earlier volume only
      expect((await stateResources(p, VOLUME)).map((v) => v.id)).toEqual(["project-a--db"]);

      await p.pulumi(UP);
      const material = await barbicanAs("project-a").getKeyMaterial(keyId);
      expect(await luks.testKey(path.join(dir, "project-a--logs.img"), material)).toBe(true);
      expect((await stateResources(p, VOLUME)).map((v) => v.id).sort()).toEqual(["project-a--db", "project-a--logs"]);
      await p.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
      console.log(`key manager hung: up failed after ${failMs} ms (the driver's 30 s request timeout)`);
    });
  });

  // Mounting a small tmpfs needs root (CI runs as root); the reason is in the test's name.
  (asRoot ? describe : describe.skip)("storage full (a 64 MiB tmpfs, needs root to mount it)", () => {
    let mnt: string;
    const filler = () => path.join(mnt, "filler");
    const fill = () => {
      const st = fs.statfsSync(mnt);
      const free = st.bavail * st.bsize;
      fs.writeFileSync(filler(), Buffer.alloc(free - 6 * MiB, 0x5a)); // 6 MiB left: less than a LUKS2 header
    };

    beforeAll(() => {
      mnt = volumeDir("small");
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", mnt]);
    });
    afterAll(() => {
      if (mnt) execFileSync("umount", [mnt]);
    });

    it("the LUKS2 format fails with a clear error; the volume made but not encrypted is in state as a partial create; destroy leaves nothing", async () => {
      fill();
      const p = await barbicanTenant("full", KEYED_PROGRAM, mnt, { storageBackends: { small: fileBackend(mnt) }, config: { volumes: JSON.stringify(["db"]) } });
      const r = await p.pulumi(UP, { allowFail: true });
      expect(r.code).not.toBe(0);
      expect(text(r)).toMatch(/volume project-a--db was made but not encrypted/);
      expect(text(r)).toMatch(/the filesystem holding the volume is full \([\d.]+ MiB free; a LUKS2 header writes 16 MiB\): free space on it or use another storage backend/);
      const file = path.join(mnt, "project-a--db.img");
      expect(fs.existsSync(file)).toBe(true);
      expect(await luks.isLuks(file)).toBe(false);
      const vols = await stateResources(p, VOLUME);
      expect(vols).toHaveLength(1);
      expect(vols[0].id).toBe("project-a--db");
      expect((vols[0].initErrors as string[]).join(" ")).toMatch(/was made but not encrypted.*filesystem holding the volume is full/);
      const [key] = await stateResources(p, "baremetal:keys:EncryptionKey"); // the up failed: no stack outputs
      const keyId = String(key.id);
      const material = await barbicanAs("project-a").getKeyMaterial(keyId);
      expect(text(r)).not.toContain(material.toString("hex"));

      await p.pulumi(["destroy", "--yes", "--skip-preview"]);
      expect(fs.readdirSync(mnt)).toEqual(["filler"]);
      expect(await barbicanAs("project-a").describeKey(keyId)).toBeUndefined();
      fs.rmSync(filler());
    });

    // The engine retries a resource with init errors as an UPDATE with unchanged inputs:
    // Volume.update finishes the encryption.
    it("after freeing space the next up encrypts the partially created volume; destroy leaves nothing", async () => {
      fill();
      const p = await barbicanTenant("full-retry", KEYED_PROGRAM, mnt, { storageBackends: { small: fileBackend(mnt) }, config: { volumes: JSON.stringify(["db"]) } });
      expect((await p.pulumi(UP, { allowFail: true })).code).not.toBe(0);
      fs.rmSync(filler()); // space freed
      await p.pulumi(UP);
      const file = path.join(mnt, "project-a--db.img");
      const { keyId } = (await p.outputs()) as { keyId: string };
      expect(await luks.testKey(file, await barbicanAs("project-a").getKeyMaterial(keyId))).toBe(true);
      const [vol] = await stateResources(p, VOLUME);
      expect(vol.initErrors ?? []).toEqual([]);
      expect((vol.outputs as { luksUuid?: string }).luksUuid).toBe((await luks.dump(file)).uuid);
      await p.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
      await p.pulumi(["destroy", "--yes", "--skip-preview"]);
      expect(fs.readdirSync(mnt)).toEqual([]);
    });
  });

  describe("an export conflict", () => {
    it("a second attachment of an attached volume to another node fails naming the first initiator; the first export is unchanged and still works", async () => {
      const dir = volumeDir("shared");
      const p = await barbicanTenant("shared", SHARED_PROGRAM, dir, { lab, config: { nodeIds: JSON.stringify(op.nodeIds.slice(0, 1)) } });
      await p.pulumi(UP);
      type Att = { nodeId: string; targetIqn: string; lun: number; initiatorIqn: string; chapUser: string; chapSecret: string };
      const { volumeId, attachments } = (await p.outputs()) as { volumeId: string; attachments: Att[] };
      const first = attachments[0];
      expect(first.nodeId).toBe(op.nodeIds[0]);
      const storage = new FileStorageDriver({ address: `file://${dir}`, iscsi: { portal: tgt.portal, controlPort: tgt.controlPort } }, { tgtSocketPath: tgt.socketPath });
      try {
        const before = await storage.listExports(volumeId);
        expect(before).toHaveLength(1);

        await p.setConfig("nodeIds", JSON.stringify(op.nodeIds.slice(0, 2)));
        const r = await p.pulumi(UP, { allowFail: true });
        expect(r.code).not.toBe(0);
        expect(text(r)).toContain(`volume ${path.basename(dir)}/${volumeId} is already exported to ${first.initiatorIqn}`);
        expect(text(r)).toMatch(/unexport it before exporting it to iqn\./);
        expect(text(r)).not.toContain(first.chapSecret);

        const atts = (await stateResources(p, "baremetal:storage:VolumeAttachment")).map((a) => String(a.urn).split("::").pop());
        expect(atts).toEqual(["shared-0"]);
        expect(await storage.listExports(volumeId)).toEqual(before);
        const login = { target: first.targetIqn, lun: first.lun, initiator: first.initiatorIqn, user: first.chapUser, secret: first.chapSecret };
        expect(await tgt.readCapacity(login)).toMatchObject({ ok: true, bytes: 1024 ** 3 });

        await p.setConfig("nodeIds", JSON.stringify(op.nodeIds.slice(0, 1)));
        await p.pulumi(UP); // back to one attachment: the second allocation goes, the export stays
        expect(await storage.listExports(volumeId)).toEqual(before);
        await p.pulumi(["destroy", "--yes", "--skip-preview"]);
        expect(await storage.listExports(volumeId)).toEqual([]);
        expect(fs.readdirSync(dir)).toEqual([]);
      } finally {
        await storage.close();
      }
    });
  });

  describe("the vault key manager (OpenBao) through the engine", () => {
    let a: PulumiProject;
    let dir: string;
    let out: { keyId: string; volumeIds: string[] };
    let vaultA: KeyManagerDriver;
    const vaultTenant = async (name: string, program: string, project: string, token: string, d: string, config: Record<string, string> = {}) => {
      const p = await tenantStack(`faults-${name}`, program, {
        project,
        inventoryUrl: op.inventoryUrl,
        keyManagers: { vault: { driver: "vault", address: vault.url } },
        keyManagerCredentials: { vault: { token } },
        storageBackends: { lab: fileBackend(d, tgt) },
        config,
      });
      stacks.push(p);
      return p;
    };

    beforeAll(async () => {
      dir = volumeDir("vault-a");
      a = await vaultTenant("vault-a", KEYED_PROGRAM, "project-a", vault.tokens["project-a"], dir, { volumes: JSON.stringify(["db"]) });
      vaultA = createVaultDriver({ address: vault.url, project: "project-a", token: vault.tokens["project-a"] });
      drivers.push(vaultA);
    });

    it("a member's key in OpenBao and a volume LUKS2-encrypted with it; refresh finds no change; no key material or token in state", async () => {
      await a.pulumi(UP);
      out = (await a.outputs()) as typeof out;
      expect(out.keyId).toMatch(/^db-key:\d+$/);
      expect(await vaultA.describeKey(out.keyId)).toMatchObject({ project: "project-a", bits: 512, state: "active" });
      const material = await vaultA.getKeyMaterial(out.keyId);
      expect(material.length).toBe(64);
      const file = path.join(dir, `${out.volumeIds[0]}.img`);
      expect(await luks.dump(file)).toMatchObject({ version: 2, cipher: "aes-xts-plain64", keyBits: 512 });
      expect(await luks.testKey(file, material)).toBe(true);
      // The key is kept wrapped in the project's KV: what OpenBao stores is no plaintext key.
      const record = await vault.api("GET", `baremetal/project-a/kv/data/keys/${out.keyId.replace(":", "/")}`);
      expect(record.status).toBe(200);
      expect(JSON.stringify(record.json)).not.toContain(material.toString("base64"));
      const state = JSON.stringify(await a.exportStack());
      for (const secret of [material.toString("hex"), material.toString("base64"), vault.tokens["project-a"], vault.rootToken]) expect(state).not.toContain(secret);
      await a.pulumi(["preview", "--expect-no-changes"]);
      await a.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
    });

    it("project-b's stack cannot use it: its id names nothing in project-b's keys, and claiming project-a with project-b's token is refused by OpenBao (403)", async () => {
      const dirB = volumeDir("vault-b");
      const b = await vaultTenant("vault-b", KEYREF_PROGRAM, "project-b", vault.tokens["project-b"], dirB, { keyRef: out.keyId });
      const r1 = await b.pulumi(UP, { allowFail: true });
      expect(r1.code).not.toBe(0);
      expect(text(r1)).toContain(`key ${out.keyId} does not exist in Vault at ${vault.url} for project project-b`);

      // A stack that claims project-a in its provider config but holds project-b's token.
      const dirX = volumeDir("vault-x");
      const x = await vaultTenant("vault-x", KEYREF_PROGRAM, "project-a", vault.tokens["project-b"], dirX, { keyRef: out.keyId });
      const r2 = await x.pulumi(UP, { allowFail: true });
      expect(r2.code).not.toBe(0);
      expect(text(r2)).toContain(`key ${out.keyId} is not accessible to project project-a: Vault at ${vault.url} refused`);
      expect(text(r2)).toMatch(/HTTP 403/);
      const imp = await x.pulumi(["import", "baremetal:keys:EncryptionKey", "stolen", out.keyId, "--yes", "--skip-preview"], { allowFail: true });
      expect(imp.code).not.toBe(0);
      expect(text(imp)).toMatch(new RegExp(`key ${out.keyId} is not accessible to project project-a`));

      for (const [p, d] of [[b, dirB], [x, dirX]] as const) {
        expect(fs.readdirSync(d)).toEqual([]);
        expect(await stateResources(p, VOLUME)).toEqual([]);
        expect(await stateResources(p, "baremetal:keys:EncryptionKey")).toEqual([]);
        const all = text(r1) + text(r2) + text(imp);
        expect(all).not.toContain(vault.tokens["project-a"]);
        expect(all).not.toContain(vault.tokens["project-b"]);
      }
      const thief = createVaultDriver({ address: vault.url, project: "project-a", token: vault.tokens["project-b"] });
      drivers.push(thief);
      const refused = await thief.getKeyMaterial(out.keyId).catch((e: unknown) => e);
      expect(isBaremetalError(refused) && refused.code).toBe("auth");
      // and the owner is unaffected
      expect((await vaultA.getKeyMaterial(out.keyId)).length).toBe(64);
    });

    it("destroy removes the volume and destroys the key in OpenBao", async () => {
      await a.pulumi(["destroy", "--yes", "--skip-preview"]);
      expect(fs.readdirSync(dir)).toEqual([]);
      const gone = await vaultA.getKeyMaterial(out.keyId).catch((e: unknown) => e);
      expect(isBaremetalError(gone) && gone.code).toBe("conflict");
      expect(String((gone as Error).message)).toMatch(/destroyed/);
    });
  });
});
