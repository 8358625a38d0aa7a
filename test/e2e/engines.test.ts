/**
 * One behaviour for both engines: the same scenarios (test/scenarios) run through the real Pulumi
 * CLI and through real OpenTofu, each against its own embedded lab (our Redfish emulator) and its
 * own sushy-tools (OpenStack's Redfish emulator). A difference between the Pulumi adapter and the
 * Terraform adapter fails here.
 *
 * Per engine: nodes, allocations and deployments come up; a second plan/preview is empty; a
 * node (one nothing depends on) forgotten and imported by id converges with no change; a machine powered off by hand
 * shows as a pending change, and the next apply powers it back on; destroy cleans up (disks
 * erased, allocations gone). Against sushy-tools: a node is enrolled, plans empty, is destroyed.
 * Networks: a tenant network and a node's port attached to it on a real Open vSwitch (OVSDB):
 * the port carries the network's VLAN, the plan is empty, destroy hands the switch port back.
 * Volumes: an encrypted volume (local key manager, file backend exported by a real tgt) attached
 * to an allocated node: LUKS2 on disk, the iSCSI target in tgt, an empty plan, all gone on destroy.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readSync, closeSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { fileBackend } from "../harness/storage-stack";
import { startTgt, type TgtInstance, tgtAvailable } from "../harness/tgt";
import { type OvsInstance, type OvsNode, startOvs } from "../harness/ovs";
import { type SushyInstance, startSushy } from "../harness/sushy";
import { describeWithPeer } from "../harness/processes";
import { ENGINES, type Engine } from "../scenarios/engines";
import { deployedMachines, labSettings, ref, type StackSpec } from "../scenarios/stack";

jest.setTimeout(600_000);

const IMAGE = "http://images.lab.example/installer.iso";

/** Two machines enrolled, allocated and deployed. */
function labStack(lab: Lab): StackSpec {
  const resources = deployedMachines(lab.info.nodes.slice(0, 2), IMAGE, { powerState: "on" });
  // A third node on its own: nothing depends on it, so either engine may forget and import it.
  const spare = lab.info.nodes[2];
  resources.push({ token: "baremetal:compute:Node", name: "spare", props: { bmc: { address: spare.address, systemId: spare.systemId }, resourceClass: "small" } });
  return { resources, outputs: { state0: ref("d0", "provisionState"), state1: ref("d1", "provisionState"), spare: ref("spare") } };
}

const tofuReady = process.env.BAREMETAL_TOFU ? { ok: true } : { ok: false, why: "BAREMETAL_TOFU is not set (source scripts/env.sh)" };

for (const engineName of Object.keys(ENGINES) as (keyof typeof ENGINES)[]) {
  const describeEngine = engineName === "opentofu" ? describeWithPeer(tofuReady, "the OpenTofu scenarios") : describe;

  describeEngine(`${engineName}: the shared lab scenario`, () => {
    let lab: Lab;
    let engine: Engine;
    let stack: StackSpec;

    beforeAll(async () => {
      lab = await startLab({ flavor: "generic", systems: 3, bootSeconds: 1, installSeconds: 1 });
      engine = await ENGINES[engineName](`engines-${engineName}`, labSettings(lab.info));
      stack = labStack(lab);
    });

    afterAll(async () => {
      await engine?.destroy().catch(() => undefined);
      await engine?.remove();
      await lab?.stop();
    });

    it("apply brings up nodes, allocations and deployments; the next plan is empty", async () => {
      await engine.apply(stack);
      const out = await engine.outputs();
      expect([out.state0, out.state1]).toEqual(["active", "active"]);
      for (const i of [1, 2]) expect(lab.bmcs[0].system(i).running).toBe(`os:${IMAGE}`);
      expect((await engine.pendingChanges(stack)).count).toBe(0);
      // The BMC password (a provider setting, given as a secret) is nowhere in the state.
      expect(await engine.stateText()).not.toContain(lab.info.credentials.password);
    });

    it("a node forgotten and imported by id converges with no change", async () => {
      const id = String((await engine.outputs()).spare);
      await engine.reimport(stack, stack.resources.find((r) => r.name === "spare")!, id);
      await engine.apply(stack);
      expect((await engine.pendingChanges(stack)).count).toBe(0);
    });

    it("a machine powered off by hand shows as a pending change; apply powers it on again", async () => {
      lab.bmcs[0].forcePower(1, "Off");
      const pending = await engine.pendingChanges(stack);
      expect(pending.count).toBeGreaterThanOrEqual(1);
      await engine.apply(stack);
      expect(lab.bmcs[0].system(1).powerState).toBe("On");
      expect((await engine.pendingChanges(stack)).count).toBe(0);
    });

    it("destroy removes everything: disks erased once each, nothing left in the plan", async () => {
      await engine.destroy();
      for (const i of [1, 2]) expect(lab.bmcs[0].sideEffects("disk-erased").filter((e) => e.target.startsWith(lab.bmcs[0].system(i).uri))).toHaveLength(1);
      expect((await engine.pendingChanges({ resources: [] })).count).toBe(0);
    });
  });

  describeEngine(`${engineName}: a node on sushy-tools`, () => {
    let bmc: SushyInstance;
    let engine: Engine;

    beforeAll(async () => {
      bmc = await startSushy({ systems: 1, username: "tf-admin", password: "tf-sushy-password" });
      // No provider-level password: the node's own (a secret input) is what the state must keep safe.
      engine = await ENGINES[engineName](`engines-sushy-${engineName}`, { bmcUsername: { value: "tf-admin" } });
    });

    afterAll(async () => {
      await engine?.remove();
      await bmc?.stop();
    });

    it("enrols with the node's own BMC password (a secret input, not in the state's plain text), plans empty, and is destroyed", async () => {
      const stack: StackSpec = {
        resources: [{ token: "baremetal:compute:Node", name: "s0", props: { bmc: { address: bmc.url, systemId: bmc.systemIds[0], password: "tf-sushy-password" }, resourceClass: "vm" } }],
        outputs: { manufacturer: ref("s0", "manufacturer") },
      };
      await engine.apply(stack);
      expect(typeof (await engine.outputs()).manufacturer).toBe("string");
      expect((await engine.pendingChanges(stack)).count).toBe(0);
      const state = await engine.stateText();
      expect(state).not.toContain("tf-sushy-password");
      // OpenTofu: because the state is encrypted (Terraform itself would store it in plain text,
      // marked sensitive); Pulumi: because secret inputs are encrypted in the state.
      if (engineName === "opentofu") expect(JSON.parse(state)).toHaveProperty("encrypted_data");
      else expect(state).toContain("4dabf18193072939515e22adb298388d"); // Pulumi's secret signature
      await engine.destroy();
    });
  });

  const describeVolumes = engineName === "opentofu" ? describeWithPeer(tofuReady.ok ? tgtAvailable() : tofuReady, "the OpenTofu volume scenario") : describeWithPeer(tgtAvailable(), "the volume scenario");
  describeVolumes(`${engineName}: an encrypted volume exported to a node`, () => {
    let lab: Lab;
    let tgt: TgtInstance;
    let engine: Engine;
    const dir = mkdtempSync(join(tmpdir(), `engines-vol-${engineName}-`));

    beforeAll(async () => {
      [lab, tgt] = await Promise.all([startLab({ flavor: "generic", systems: 1, bootSeconds: 0 }), startTgt()]);
      engine = await ENGINES[engineName](`engines-vol-${engineName}`, {
        ...labSettings(lab.info),
        keyManagers: { value: { local: { driver: "local", address: `file://${join(dir, "keys")}` } } },
        keyManagerCredentials: { value: { local: { masterKey: randomBytes(32).toString("base64") } }, secret: true },
        storageBackends: { value: { lab: fileBackend(join(dir, "volumes"), tgt) } },
      });
    });

    afterAll(async () => {
      await engine?.destroy().catch(() => undefined);
      await engine?.remove();
      await tgt?.stop();
      await lab?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    it("apply: LUKS2 on the backing file, the target in tgt with CHAP; plan empty; destroy removes both", async () => {
      const n = lab.info.nodes[0];
      const stack: StackSpec = {
        resources: [
          { token: "baremetal:compute:Node", name: "n0", props: { bmc: { address: n.address, systemId: n.systemId } } },
          { token: "baremetal:compute:Allocation", name: "a0", props: { candidateNodes: [ref("n0")] } },
          { token: "baremetal:keys:EncryptionKey", name: "k0", props: {} },
          { token: "baremetal:storage:Volume", name: "v0", props: { name: "db", sizeGib: 1, encryption: { keyId: ref("k0", "keyId"), unlockTimeMs: 200 } } },
          { token: "baremetal:storage:VolumeAttachment", name: "va0", props: { volumeId: ref("v0", "volumeId"), allocationId: ref("a0", "allocationId") } },
        ],
        outputs: { volumeId: ref("v0", "volumeId"), luksUuid: ref("v0", "luksUuid"), targetIqn: ref("va0", "targetIqn"), chapSecret: ref("va0", "chapSecret") },
      };
      await engine.apply(stack);
      const out = await engine.outputs();
      expect(out.luksUuid).toMatch(/^[0-9a-f-]{36}$/);
      // The backing file starts with a LUKS2 header.
      const files = readdirSync(join(dir, "volumes"), { recursive: true }).map(String).filter((f) => f.includes("db"));
      expect(files.length).toBeGreaterThan(0);
      const fd = openSync(join(dir, "volumes", files[0]), "r");
      const magic = Buffer.alloc(6);
      readSync(fd, magic, 0, 6, 0);
      closeSync(fd);
      expect(magic.toString("latin1")).toBe("LUKS\xba\xbe");
      // tgt exports it, with the attachment's CHAP user.
      const targets = await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"]);
      expect(targets).toContain(String(out.targetIqn));
      expect(String(out.chapSecret).length).toBeGreaterThanOrEqual(12);
      expect((await engine.pendingChanges(stack)).count).toBe(0);
      expect(await engine.stateText()).not.toContain(String(out.chapSecret));

      await engine.destroy();
      expect(await tgt.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).not.toContain(String(out.targetIqn));
      expect(files.some((f) => existsSync(join(dir, "volumes", f)))).toBe(false);
    });
  });

  describeEngine(`${engineName}: a tenant network on Open vSwitch`, () => {
    let lab: Lab;
    let ovs: OvsInstance;
    let machine: OvsNode;
    let engine: Engine;

    beforeAll(async () => {
      [lab, ovs] = await Promise.all([startLab({ flavor: "generic", systems: 1, bootSeconds: 0 }), startOvs({ switches: 1 })]);
      machine = await ovs.addNode("m1", { bridge: "br0", ipv4: "10.88.0.200/24" });
      const fabrics = { lab: { vlanRanges: ["100-199"], quarantineVlan: 999, provisioningVlan: 998, provisioningMode: "shared", switches: { tor1: { driver: "ovsdb", address: ovs.ovsdbUrl, bridge: "br0" } } } };
      engine = await ENGINES[engineName](`engines-net-${engineName}`, { ...labSettings(lab.info), fabrics: { value: fabrics } });
    });

    afterAll(async () => {
      await engine?.destroy().catch(() => undefined);
      await engine?.remove();
      await ovs?.stop();
      await lab?.stop();
    });

    it("the attached port carries the network's VLAN; plan empty; destroy hands the switch port back as it was", async () => {
      const n = lab.info.nodes[0];
      const stack: StackSpec = {
        resources: [
          { token: "baremetal:compute:Node", name: "n0", props: { bmc: { address: n.address, systemId: n.systemId } } },
          { token: "baremetal:network:Port", name: "p0", props: { nodeId: ref("n0"), mac: machine.mac, switchId: "tor1", switchPort: machine.port } },
          { token: "baremetal:network:TenantNetwork", name: "net0", props: { name: "blue", subnets: [{ cidr: "10.88.0.0/24", allocationPools: [{ start: "10.88.0.10", end: "10.88.0.19" }] }] } },
          { token: "baremetal:compute:Allocation", name: "a0", props: { candidateNodes: [ref("n0")] } },
          { token: "baremetal:network:NetworkAttachment", name: "att0", props: { portId: ref("p0", "portId"), networkId: ref("net0", "networkId") } },
        ],
        outputs: { vlan: ref("net0", "vlanId"), addresses: ref("att0", "ipAddresses") },
      };
      const before = (await ovs.vsctl(["get", "Port", machine.port, "tag"])).trim();
      await engine.apply(stack);
      const out = await engine.outputs();
      expect(Number(out.vlan)).toBeGreaterThanOrEqual(100);
      expect(Number(out.vlan)).toBeLessThanOrEqual(199);
      expect((await ovs.vsctl(["get", "Port", machine.port, "tag"])).trim()).toBe(String(out.vlan));
      expect(JSON.stringify(out.addresses)).toMatch(/10\.88\.0\.1\d/);
      expect((await engine.pendingChanges(stack)).count).toBe(0);
      // The Port resource goes too: the switch port is handed back as it was before.
      await engine.destroy();
      expect((await ovs.vsctl(["get", "Port", machine.port, "tag"])).trim()).toBe(before);
    });
  });
}
