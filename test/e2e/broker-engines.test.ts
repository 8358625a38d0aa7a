/**
 * Broker mode through both engines (issue 8: "the same programs work unchanged in both modes"):
 * the shared scenario definitions (test/scenarios) run through the real Pulumi CLI and real
 * OpenTofu with nothing in the provider settings but the service's `endpoint` and a tenant's
 * `token`; the service (`baremetal serve`, the built CLI) holds the lab's BMC credentials, a local
 * key manager's master key and a file storage backend, and runs the handlers.
 *
 * Per engine: a tenant allocates and deploys the two nodes the operator leased to it and makes an
 * encryption key and a volume; the next plan is empty; growing the volume is an update through the
 * service; a key deleted behind the stack's back is seen gone by the refresh (through the
 * service) and made again by the next apply; destroy
 * undeploys (disks erased) and leaves no object in the service; no backend credential and no token
 * is in the state. What is EMULATED: the machines (our lab BMC). REAL: both engines, the provider
 * plugins, the service, its SQLite inventory, the local key manager, the file backend.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { describeWithPeer } from "../harness/processes";
import { labServiceSettings, type ServiceInstance, startService } from "../harness/service";
import { operatorStack, type OperatorStack } from "../harness/storage-stack";
import { ENGINES, type Engine } from "../scenarios/engines";
import { ref, type ResourceSpec, type StackSpec } from "../scenarios/stack";

jest.setTimeout(600_000);

const IMAGE = "http://images.lab.example/installer.iso";

function tenantStack(nodeIds: string[]): StackSpec {
  const resources: ResourceSpec[] = nodeIds.flatMap((id, i): ResourceSpec[] => [
    { token: "baremetal:compute:Allocation", name: `a${i}`, props: { candidateNodes: [id] } },
    { token: "baremetal:compute:Deployment", name: `d${i}`, props: { allocationId: ref(`a${i}`, "allocationId"), imageUrl: IMAGE } },
  ]);
  resources.push({ token: "baremetal:keys:EncryptionKey", name: "k", props: {} });
  resources.push({ token: "baremetal:storage:Volume", name: "v", props: { sizeGib: 1 } });
  return { resources, outputs: { state0: ref("d0", "provisionState"), state1: ref("d1", "provisionState"), keyId: ref("k", "keyId"), volumeId: ref("v", "volumeId") } };
}

const tofuReady = process.env.BAREMETAL_TOFU ? { ok: true } : { ok: false, why: "BAREMETAL_TOFU is not set (source scripts/env.sh)" };

for (const engineName of Object.keys(ENGINES) as (keyof typeof ENGINES)[]) {
  const describeEngine = engineName === "opentofu" ? describeWithPeer(tofuReady, "the OpenTofu broker scenario") : describe;

  describeEngine(`${engineName} in broker mode: a tenant's stack with only endpoint and token`, () => {
    let lab: Lab;
    let op: OperatorStack;
    let svc: ServiceInstance;
    let engine: Engine;
    let stack: StackSpec;
    let token: string;
    let volumesDir: string;
    const masterKey = randomBytes(32).toString("base64");

    beforeAll(async () => {
      lab = await startLab({ flavor: "generic", systems: 2, bootSeconds: 1, installSeconds: 1 });
      op = await operatorStack(`broker-${engineName}-op`, lab, { nodes: 2, lessee: "project-a" });
      const dir = path.dirname(op.inventoryUrl.replace(/^sqlite:\/\//, ""));
      volumesDir = path.join(dir, "volumes");
      svc = await startService(dir, labServiceSettings(lab, op.inventoryUrl, dir, masterKey));
      token = (await svc.token(`tenant-${engineName}`, "project-a", ["manager", "member"])).token;
      engine = await ENGINES[engineName](`broker-${engineName}`, { endpoint: { value: svc.url }, token: { value: token, secret: true } });
      stack = tenantStack(op.nodeIds);
    });

    afterAll(async () => {
      await engine?.destroy().catch(() => undefined);
      await engine?.remove();
      await svc?.stop();
      if (op) {
        await op.project.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
        op.project.remove();
      }
      await lab?.stop();
    });

    it("apply deploys both nodes and makes a key and a volume through the service; the next plan is empty; no credential or token in the state", async () => {
      await engine.apply(stack);
      const out = await engine.outputs();
      expect([out.state0, out.state1]).toEqual(["active", "active"]);
      expect(String(out.volumeId)).toMatch(/^project-a--/);
      for (const i of [1, 2]) expect(lab.bmcs[0].system(i).running).toBe(`os:${IMAGE}`);
      expect((await engine.pendingChanges(stack)).count).toBe(0);
      const state = await engine.stateText();
      for (const secret of [lab.info.credentials.password, masterKey, token.slice(29)]) expect(state).not.toContain(secret);
      // The service made and keeps the objects, as project-a's.
      const r = await fetch(`${svc.url}/v1/resources/${encodeURIComponent("baremetal:compute:Deployment")}`, { headers: { authorization: `Bearer ${token}` } });
      const items = ((await r.json()) as { items: Array<{ projectId: string }> }).items;
      expect(items.map((i) => i.projectId)).toEqual(["project-a", "project-a"]);
    });

    it("an update goes through the service (the volume grows in place); an object deleted behind the stack's back is recreated", async () => {
      const grown: StackSpec = { ...stack, resources: stack.resources.map((r) => (r.name === "v" ? { ...r, props: { sizeGib: 2 } } : r)) };
      const volumeId = String((await engine.outputs()).volumeId);
      await engine.apply(grown);
      expect(fs.statSync(path.join(volumesDir, `${volumeId}.img`)).size).toBe(2 * 1024 ** 3);
      expect(String((await engine.outputs()).volumeId)).toBe(volumeId); // the same volume, not a replacement
      expect((await engine.pendingChanges(grown)).count).toBe(0);
      // The key deleted through the API by the tenant: the refresh (through the service) sees it gone; apply makes a new one.
      const keyId = String((await engine.outputs()).keyId);
      const del = await fetch(`${svc.url}/v1/resources/${encodeURIComponent("baremetal:keys:EncryptionKey")}/${encodeURIComponent(keyId)}`, { method: "DELETE", headers: { authorization: `Bearer ${token}` } });
      expect(del.status).toBe(204);
      expect((await engine.pendingChanges(grown)).count).toBeGreaterThanOrEqual(1);
      await engine.apply(grown);
      expect(String((await engine.outputs()).keyId)).not.toBe(keyId);
      expect((await engine.pendingChanges(grown)).count).toBe(0);
      stack = grown;
    });

    it("destroy undeploys through the service (disks erased once each) and leaves no object there", async () => {
      await engine.destroy();
      for (const i of [1, 2]) expect(lab.bmcs[0].sideEffects("disk-erased").filter((e) => e.target.startsWith(lab.bmcs[0].system(i).uri))).toHaveLength(1);
      for (const type of ["baremetal:compute:Deployment", "baremetal:compute:Allocation", "baremetal:keys:EncryptionKey", "baremetal:storage:Volume"]) {
        const r = await fetch(`${svc.url}/v1/resources/${encodeURIComponent(type)}`, { headers: { authorization: `Bearer ${token}` } });
        expect({ type, items: ((await r.json()) as { items: unknown[] }).items }).toEqual({ type, items: [] });
      }
    });
  });
}
