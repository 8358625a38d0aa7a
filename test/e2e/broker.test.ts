/**
 * Broker mode through the real Pulumi engine (issue 8): two tenants, each with its own token of
 * the tenant-facing service (`baremetal serve`, the built CLI, a child process), run `pulumi up`
 * with nothing but `endpoint` and `token` in their provider settings. The service holds the BMC
 * credentials, the key manager's master key and the storage backend, runs the same handlers as
 * the provider, and keeps the objects' state.
 *
 * Proven: each tenant allocates and deploys its own lab node, makes a key, a volume and a backup
 * of it (a file backup target of the service), and sees
 * only its own nodes (getNodes through the service) and objects (the API's lists); every
 * cross-tenant attempt (get, update, delete, deploy onto the other's allocation) is refused with
 * 403 and lands in the audit log; a second service instance on the same inventory serves the same
 * objects; no tenant state or CLI output holds a backend credential.
 *
 * What is EMULATED: the machines (our lab BMC, Redfish in process, and its installer). What is
 * REAL: the Pulumi engine, the provider plugin, the service binary, its SQLite inventory, the
 * lab's image store, the file storage backend and the local key manager.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { openInventory } from "../../provider/src/inventory";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { type IssuedToken, labServiceSettings, type ServiceInstance, startService } from "../harness/service";
import { operatorStack, type OperatorStack } from "../harness/storage-stack";

jest.setTimeout(900_000);

const MiB = 1024 * 1024;

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const imageUrl = config.require("imageUrl");
const allocation = new baremetal.compute.Allocation("a", { candidateNodes: [config.require("nodeId")] });
const d = new baremetal.compute.Deployment("d", { allocationId: allocation.allocationId, imageUrl }, { customTimeouts: { create: "3m", delete: "3m" } });
const key = new baremetal.keys.EncryptionKey("k");
const vol = new baremetal.storage.Volume("v", { sizeGib: 1 });
const backup = new baremetal.backup.Backup("bk", { volumeId: vol.volumeId, keyId: key.keyId });
export const backupId = backup.backupId;
export const allocationId = allocation.allocationId;
export const nodeId = d.nodeId;
export const keyId = key.keyId;
export const volumeId = vol.volumeId;
export const visible = baremetal.compute.getNodesOutput({}).apply((r) => r.nodes.map((n) => n.id));
const steal = config.get("steal");
if (steal) new baremetal.compute.Deployment("steal", { allocationId: steal, imageUrl }, { customTimeouts: { create: "1m" } });
`;

interface TenantOut {
  allocationId: string;
  nodeId: string;
  keyId: string;
  volumeId: string;
  backupId: string;
  visible: string[];
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("broker mode: two tenants through the service, each with its own token (lab emulated; engine, service, inventory real)", () => {
  let lab: Lab;
  let op: OperatorStack;
  let svc: ServiceInstance;
  let dir: string;
  const tokens: Record<string, IssuedToken> = {};
  const stacks: Record<string, PulumiProject> = {};
  const outs: Record<string, TenantOut> = {};
  const image = randomBytes(2 * MiB);
  const masterKey = randomBytes(32).toString("base64");

  const api = async (tenant: string, method: string, p: string, body?: unknown) => {
    const r = await fetch(`${svc.url}${p}`, { method, headers: { authorization: `Bearer ${tokens[tenant].token}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    return { status: r.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  };

  beforeAll(async () => {
    lab = await startLab({ systems: 2, bootSeconds: 1, installSeconds: 1 });
    lab.imageStore.images.set("installer.img", image);
    op = await operatorStack("broker-op", lab, { nodes: 2, lessee: ["project-a", "project-b"] });
    dir = path.dirname(op.inventoryUrl.replace(/^sqlite:\/\//, ""));
    svc = await startService(dir, labServiceSettings(lab, op.inventoryUrl, dir, masterKey));
    for (const t of ["a", "b"]) {
      tokens[t] = await svc.token(`tenant-${t}`, `project-${t}`, ["manager", "member"]);
      const p = await newProject(`broker-${t}`, PROGRAM);
      await p.setConfig("baremetal:endpoint", svc.url);
      await p.setConfig("baremetal:token", tokens[t].token, true);
      await p.setConfig("nodeId", op.nodeIds[t === "a" ? 0 : 1]);
      await p.setConfig("imageUrl", `${lab.info.imageStore.url}/installer.img#sha256=${sha(image)}`);
      stacks[t] = p;
    }
  }, 600_000);

  afterAll(async () => {
    for (const p of Object.values(stacks)) {
      await p.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      p.remove();
    }
    await svc?.stop();
    if (op) {
      await op.project.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
      op.project.remove();
    }
    await lab?.stop();
  });

  it("each tenant deploys its own node, makes a key and a volume, and sees only its own node, with nothing but endpoint and token", async () => {
    for (const t of ["a", "b"]) {
      const up = await stacks[t].pulumi(["up", "--yes", "--skip-preview"]);
      outs[t] = (await stacks[t].outputs()) as unknown as TenantOut;
      const secrets = [String(lab.info.providerConfig["baremetal:bmcPassword"]), masterKey, tokens[t].token, tokens.a.token.slice(29)];
      const state = JSON.stringify(await stacks[t].exportStack());
      for (const s of secrets) {
        expect(state).not.toContain(s);
        expect(up.stdout + up.stderr).not.toContain(s);
      }
    }
    expect(outs.a.nodeId).toBe(op.nodeIds[0]);
    expect(outs.b.nodeId).toBe(op.nodeIds[1]);
    expect(outs.a.visible).toEqual([op.nodeIds[0]]);
    expect(outs.b.visible).toEqual([op.nodeIds[1]]);
    expect(outs.a.volumeId).toMatch(/^project-a--/);
    expect(outs.b.volumeId).toMatch(/^project-b--/);
    for (const i of [1, 2]) expect(lab.bmcs[0].system(i).running).toMatch(/^os:/);

    // Each token lists only its own objects (allocations, keys, volumes, backups).
    expect(outs.a.backupId).toMatch(/^project-a--v/);
    for (const [t, other] of [["a", "b"], ["b", "a"]]) {
      for (const [type, key] of [["baremetal:compute:Allocation", "allocationId"], ["baremetal:keys:EncryptionKey", "keyId"], ["baremetal:storage:Volume", "volumeId"], ["baremetal:backup:Backup", "backupId"]] as const) {
        const listed = await api(t, "GET", `/v1/resources/${encodeURIComponent(type)}`);
        expect(listed.status).toBe(200);
        const ids = (listed.body.items as Array<{ id: string }>).map((i) => i.id);
        expect({ type, ids }).toEqual({ type, ids: [outs[t][key]] });
        expect(ids).not.toContain(outs[other][key]);
      }
    }
    await stacks.a.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
  });

  it("every cross-tenant attempt (get, refresh, rotate, delete, power, attach, rotation policy, restore, deploy) is refused with 403 and recorded in the audit log", async () => {
    const attempts: Array<[string, string, unknown?]> = [
      ["GET", `/v1/resources/${encodeURIComponent("baremetal:compute:Allocation")}/${encodeURIComponent(outs.a.allocationId)}`],
      ["GET", `/v1/resources/${encodeURIComponent("baremetal:storage:Volume")}/${encodeURIComponent(outs.a.volumeId)}?refresh=true`],
      ["PUT", `/v1/resources/${encodeURIComponent("baremetal:keys:EncryptionKey")}/${encodeURIComponent(outs.a.keyId)}`, { inputs: {} }],
      ["DELETE", `/v1/resources/${encodeURIComponent("baremetal:storage:Volume")}/${encodeURIComponent(outs.a.volumeId)}`],
      ["PUT", `/v1/nodes/${encodeURIComponent(outs.a.nodeId)}/power`, { state: "off" }],
      // attach A's volume to B's node, rotate A's key, restore from A's backups: refused before anything is made
      ["POST", `/v1/resources/${encodeURIComponent("baremetal:storage:VolumeAttachment")}`, { name: "steal-attach", inputs: { volumeId: outs.a.volumeId, allocationId: outs.b.allocationId } }],
      ["POST", `/v1/resources/${encodeURIComponent("baremetal:keys:KeyRotationPolicy")}`, { name: "steal-rotate", inputs: { cryptoperiod: "90d", volumes: [{ volumeId: outs.a.volumeId, keyId: outs.a.keyId }] } }],
      ["POST", `/v1/resources/${encodeURIComponent("baremetal:storage:Volume")}`, { name: "steal-restore", inputs: { sizeGib: 1, sourceBackup: { backupId: outs.a.backupId } } }],
      ["GET", `/v1/resources/${encodeURIComponent("baremetal:backup:Backup")}/${encodeURIComponent(outs.a.backupId)}`],
    ];
    for (const [method, p, body] of attempts) {
      const r = await api("b", method, p, body);
      expect({ method, p, status: r.status }).toEqual({ method, p, status: 403 });
      expect(r.body).toMatchObject({ errorCode: "PolicyNotAuthorized", requestId: expect.any(String), message: expect.stringMatching(/project/) });
    }
    // Deploying onto the other tenant's allocation through Pulumi: refused, nothing happens to A's machine.
    const before = lab.bmcs[0].system(1).running;
    await stacks.b.setConfig("steal", outs.a.allocationId);
    const r = await stacks.b.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/403|not allowed|PolicyNotAuthorized|another project|project-b/i);
    expect(lab.bmcs[0].system(1).running).toBe(before);
    await stacks.b.setConfig("steal", "");
    await stacks.b.pulumi(["up", "--yes", "--skip-preview"]);

    const inv = await openInventory(op.inventoryUrl);
    try {
      const audit = await inv.listAudit({ projectId: "project-b", limit: 1000 });
      const denied = audit.filter((e) => e.outcome === "denied");
      expect(denied.length).toBeGreaterThanOrEqual(attempts.length);
      expect(denied.every((e) => e.tokenId === tokens.b.id)).toBe(true);
      expect(audit.filter((e) => e.outcome === "done").length).toBeGreaterThan(0);
    } finally {
      await inv.close();
    }
  });

  it("a second service instance on the same inventory serves the same objects", async () => {
    const second = await svc.another();
    try {
      const r = await fetch(`${second.url}/v1/resources/${encodeURIComponent("baremetal:keys:EncryptionKey")}/${encodeURIComponent(outs.a.keyId)}`, { headers: { authorization: `Bearer ${tokens.a.token}` } });
      expect(r.status).toBe(200);
      const body = (await r.json()) as { id: string; etag: string };
      expect(body.id).toBe(outs.a.keyId);
      expect(r.headers.get("etag")).toBe(body.etag);
    } finally {
      await second.stop();
    }
  });

  it("destroy through the service undeploys and releases the nodes", async () => {
    for (const t of ["a", "b"]) await stacks[t].pulumi(["destroy", "--yes", "--skip-preview"]);
    const listed = await api("a", "GET", `/v1/resources/${encodeURIComponent("baremetal:compute:Allocation")}`);
    expect(listed.body.items).toEqual([]);
    for (const i of [1, 2]) expect(lab.bmcs[0].system(i).running ?? "").not.toMatch(/^os:/);
  });
});
