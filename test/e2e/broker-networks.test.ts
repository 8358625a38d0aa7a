/**
 * Tenant networks in broker mode, end to end (issue 8): two tenants, each with its own token of the
 * tenant-facing service (`baremetal serve`, the built CLI, a child process), run `pulumi up` of a
 * program with an Allocation, a TenantNetwork and NetworkAttachments, with nothing but `endpoint`
 * and a secret `token` in their provider settings. The service holds the fabric (one top-of-rack
 * switch, an Open vSwitch bridge managed over OVSDB by our driver), the switch's credentials (a
 * client certificate and key: the driver is handed them, though over `tcp:` it does not use them,
 * so they stand here for any switch secret the service holds) and the lab's BMC settings.
 *
 * The operator's stack (direct mode, operator credentials) enrolls two lab nodes and their Ports:
 * node 0 (leased to project-a) has two ports, a1 and a2; node 1 (leased to project-b) one, b1.
 * Each port is a network namespace plugged into a switch port, all in ONE IPv4 subnet, so that
 * only the VLANs keep them apart.
 *
 * Proven: both `up`s give each network a VLAN and tag each node's switch ports with it; a1 reaches
 * a2 (one tenant network), b1 reaches neither (another tenant's); each token lists only its own
 * networks and attachments; every cross-tenant attempt on networks and attachments (get, update,
 * delete, attach, move, a network made in the other's name, and a Pulumi program attaching to the
 * other's network) is refused with 403 PolicyNotAuthorized and lands in the audit log as denied;
 * no tenant state or CLI output holds the switch key, the BMC password or the other's token;
 * destroy leaves the switch's Port rows as they were and the service holds nothing of theirs.
 *
 * What is EMULATED: the machines (our lab BMC, Redfish in process). What is REAL: the Pulumi
 * engine, the provider plugin, the service binary and its SQLite inventory, Open vSwitch
 * (ovsdb-server and ovs-vswitchd, userspace datapath) with namespaces sending real packets.
 */
import { randomBytes } from "node:crypto";
import * as path from "node:path";
import { openInventory } from "../../provider/src/inventory";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { isolated, type OvsInstance, type OvsNode, reaches, startOvs } from "../harness/ovs";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { type IssuedToken, labServiceSettings, type ServiceInstance, startService } from "../harness/service";

jest.setTimeout(900_000);

const OPERATOR = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const nodes = config.requireObject<{ name: string; address: string; systemId: string; lessee: string }[]>("nodes");
const ports = config.requireObject<{ name: string; node: string; mac: string; switchPort: string }[]>("ports");
const made: Record<string, baremetal.compute.Node> = {};
export const nodeIds: Record<string, pulumi.Output<string>> = {};
export const portIds: Record<string, pulumi.Output<string>> = {};
for (const n of nodes) {
  made[n.name] = new baremetal.compute.Node(n.name, { bmc: { address: n.address, systemId: n.systemId }, owner: "operator-proj", lessee: n.lessee });
  nodeIds[n.name] = made[n.name].id;
}
for (const p of ports) portIds[p.name] = new baremetal.network.Port(p.name, { nodeId: made[p.node].id, mac: p.mac, switchId: "tor1", switchPort: p.switchPort }).portId;
`;

const TENANT = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const ports = config.requireObject<{ portId: string; address: string }[]>("ports");
const allocation = new baremetal.compute.Allocation("a", { candidateNodes: [config.require("nodeId")] });
const net = new baremetal.network.TenantNetwork("net", { subnets: [{ cidr: "10.89.0.0/24" }] });
const atts = ports.map((p, i) => new baremetal.network.NetworkAttachment("att" + i, { portId: allocation.nodeId.apply(() => p.portId), networkId: net.networkId, addresses: [p.address] }));
export const allocationId = allocation.allocationId;
export const networkId = net.networkId;
export const vlanId = net.vlanId;
export const attachmentIds = atts.map((a) => a.attachmentId);
export const addresses = atts.map((a) => a.ipAddresses.apply((x) => (x ?? []).map((y) => y.address)));
const foreign = config.get("foreignNetworkId");
if (foreign) new baremetal.network.NetworkAttachment("intruder", { portId: ports[0].portId, networkId: foreign, mode: "trunk" });
`;

interface TenantOut {
  allocationId: string;
  networkId: string;
  vlanId: number;
  attachmentIds: string[];
  addresses: string[][];
}

const NET = "baremetal:network:TenantNetwork";
const ATT = "baremetal:network:NetworkAttachment";
const res = (type: string, id?: string) => `/v1/resources/${encodeURIComponent(type)}${id === undefined ? "" : `/${encodeURIComponent(id)}`}`;


describe("tenant networks in broker mode: two tenants through the service on real Open vSwitch (lab emulated; engine, service, OVS real)", () => {
  let lab: Lab;
  let ovs: OvsInstance;
  let operator: PulumiProject;
  let svc: ServiceInstance;
  const m: Record<string, OvsNode> = {};
  const tokens: Record<string, IssuedToken> = {};
  const stacks: Record<string, PulumiProject> = {};
  const outs: Record<string, TenantOut> = {};
  let portIds: Record<string, string> = {};
  let inventoryUrl: string;
  let pristine: string;
  let quarantined: string;
  // The switch's credentials, held by the service only (random: found nowhere else by chance).
  const switchKey = randomBytes(48).toString("base64");
  const switchCredentials = {
    tor1: {
      clientCertificate: "-----BEGIN CERTIFICATE-----\nbm90LXVzZWQtb3Zlci10Y3A=\n-----END CERTIFICATE-----\n",
      clientKey: `-----BEGIN PRIVATE KEY-----\n${switchKey}\n-----END PRIVATE KEY-----\n`,
    },
  };

  /** Every Port row's VLAN columns and marker, and the bridge's registry: "as they were". */
  const switchState = async () =>
    (await ovs.vsctl(["--format=json", "--columns=name,tag,trunks,vlan_mode,external_ids", "list", "Port"])) + (await ovs.vsctl(["get", "Bridge", "br0", "external_ids"]));
  const tag = async (port: string) => (await ovs.vsctl(["get", "Port", port, "tag"])).trim();

  const api = async (tenant: string, method: string, p: string, body?: unknown) => {
    const r = await fetch(`${svc.url}${p}`, { method, headers: { authorization: `Bearer ${tokens[tenant].token}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    return { status: r.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
  };
  const listIds = async (tenant: string, type: string) => {
    const r = await api(tenant, "GET", res(type));
    expect(r.status).toBe(200);
    return (r.body.items as Array<{ id: string }>).map((i) => i.id).sort();
  };
  const secretsOf = (t: string) => [String(lab.info.providerConfig["baremetal:bmcPassword"]), switchKey, tokens[t].token, tokens[t === "a" ? "b" : "a"].token.slice(29)];

  beforeAll(async () => {
    [ovs, lab] = await Promise.all([startOvs({ switches: 1 }), startLab({ flavor: "generic", systems: 2, bootSeconds: 0 })]);
    const layout: [string, string][] = [["a1", "n0"], ["a2", "n0"], ["b1", "n1"]];
    for (const [i, [name]] of layout.entries()) m[name] = await ovs.addNode(name, { bridge: "br0", ipv4: `10.89.0.${11 + i}/24` });
    pristine = await switchState();

    const fabrics = {
      lab: { vlanRanges: ["100-199"], quarantineVlan: 999, provisioningVlan: 998, provisioningMode: "shared", switches: { tor1: { driver: "ovsdb", address: ovs.ovsdbUrl, bridge: "br0" } } },
    };
    operator = await newProject("brknet-operator", OPERATOR);
    inventoryUrl = `sqlite://${operator.dir}/inventory.db`;
    await operator.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
    await operator.setConfig("baremetal:fabrics", JSON.stringify(fabrics));
    await operator.setConfig("baremetal:switchCredentials", JSON.stringify(switchCredentials), true);
    for (const [k, v] of Object.entries(lab.info.providerConfig)) await operator.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    await operator.setConfig(
      "nodes",
      JSON.stringify([0, 1].map((i) => ({ name: `n${i}`, address: lab.info.nodes[i].address, systemId: lab.info.nodes[i].systemId, lessee: i === 0 ? "project-a" : "project-b" }))),
    );
    await operator.setConfig("ports", JSON.stringify(layout.map(([name, node]) => ({ name, node, mac: m[name].mac, switchPort: m[name].port }))));
    await operator.pulumi(["up", "--yes", "--skip-preview"]);
    const opOut = (await operator.outputs()) as { nodeIds: Record<string, string>; portIds: Record<string, string> };
    portIds = opOut.portIds;
    quarantined = await switchState();

    // The service: the inventory, the lab's BMC settings, the fabric and the switch's credentials.
    const dir = path.dirname(inventoryUrl.replace(/^sqlite:\/\//, ""));
    svc = await startService(dir, { ...labServiceSettings(lab, inventoryUrl, dir), fabrics, switchCredentials });
    for (const t of ["a", "b"]) {
      tokens[t] = await svc.token(`tenant-${t}`, `project-${t}`, ["manager", "member"]);
      const p = await newProject(`brknet-${t}`, TENANT);
      await p.setConfig("baremetal:endpoint", svc.url);
      await p.setConfig("baremetal:token", tokens[t].token, true);
      await p.setConfig("nodeId", opOut.nodeIds[t === "a" ? "n0" : "n1"]);
      const mine = t === "a" ? ["a1", "a2"] : ["b1"];
      await p.setConfig("ports", JSON.stringify(mine.map((name) => ({ portId: portIds[name], address: m[name].ip }))));
      stacks[t] = p;
    }
  }, 600_000);

  afterAll(async () => {
    for (const p of Object.values(stacks)) await p.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    await svc?.stop();
    await operator?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of Object.values(stacks)) p.remove();
    operator?.remove();
    await lab?.stop();
    await ovs?.stop();
  });

  it("the operator's ports are quarantined", async () => {
    for (const name of Object.keys(m)) expect(await tag(m[name].port)).toBe("999");
  });

  it("each tenant makes its network and attaches its node's ports with nothing but endpoint and token: VLANs on the switch, ping across tenants fails", async () => {
    // With a preview first: the attachments' ports are not known then (they wait on the Allocation).
    const ups = await Promise.all(["a", "b"].map((t) => stacks[t].pulumi(["up", "--yes"])));
    for (const [i, t] of ["a", "b"].entries()) {
      outs[t] = (await stacks[t].outputs()) as unknown as TenantOut;
      const state = JSON.stringify(await stacks[t].exportStack());
      for (const s of secretsOf(t)) {
        expect(state).not.toContain(s);
        expect(ups[i].stdout + ups[i].stderr).not.toContain(s);
      }
    }
    expect(outs.a.vlanId).toBeGreaterThanOrEqual(100);
    expect(outs.b.vlanId).toBeGreaterThanOrEqual(100);
    expect(outs.a.vlanId).not.toBe(outs.b.vlanId);
    expect(outs.a.addresses).toEqual([[m.a1.ip], [m.a2.ip]]);
    expect(outs.b.addresses).toEqual([[m.b1.ip]]);
    expect(await tag(m.a1.port)).toBe(String(outs.a.vlanId));
    expect(await tag(m.a2.port)).toBe(String(outs.a.vlanId));
    expect(await tag(m.b1.port)).toBe(String(outs.b.vlanId));

    expect(await reaches(m.a1, m.a2)).toBe(true); // one tenant network
    expect(await isolated(m.b1, m.a1)).toBe(true); // another tenant's
    expect(await isolated(m.b1, m.a2)).toBe(true);

    // Each token lists only its own networks and attachments.
    expect(await listIds("a", NET)).toEqual([outs.a.networkId]);
    expect(await listIds("b", NET)).toEqual([outs.b.networkId]);
    expect(await listIds("a", ATT)).toEqual([...outs.a.attachmentIds].sort());
    expect(await listIds("b", ATT)).toEqual([...outs.b.attachmentIds].sort());
    // A refresh reads the network and the switch ports through the service: nothing drifted.
    await stacks.a.pulumi(["refresh", "--yes", "--skip-preview", "--expect-no-changes"]);
  });

  it("every cross-tenant attempt on networks and attachments is refused with 403 and recorded in the audit log; the switch is untouched", async () => {
    const before = await switchState();
    const [aNet, bNet, aAtt] = [outs.a.networkId, outs.b.networkId, outs.a.attachmentIds[0]];
    const attempts: Array<[string, string, unknown?]> = [
      ["GET", res(NET, aNet)],
      ["GET", `${res(NET, aNet)}?refresh=true`],
      ["PUT", res(NET, aNet), { inputs: { subnets: [{ cidr: "10.89.0.0/24" }] } }],
      ["DELETE", res(NET, aNet)],
      // a network made in A's name
      ["POST", res(NET), { name: "in-a-name", inputs: { project: "project-a" } }],
      ["GET", res(ATT, aAtt)],
      // A's port moved into B's network, A's port detached
      ["PUT", res(ATT, aAtt), { inputs: { portId: portIds.a1, networkId: bNet, mode: "access", native: false, addresses: [m.a1.ip] } }],
      ["DELETE", res(ATT, aAtt)],
      // B's port into A's network; A's port into B's network
      ["POST", res(ATT), { name: "steal-b1", inputs: { portId: portIds.b1, networkId: aNet, mode: "trunk" } }],
      ["POST", res(ATT), { name: "steal-a2", inputs: { portId: portIds.a2, networkId: bNet } }],
    ];
    for (const [method, p, body] of attempts) {
      const r = await api("b", method, p, body);
      expect({ method, p, status: r.status }).toEqual({ method, p, status: 403 });
      expect(r.body).toMatchObject({ errorCode: "PolicyNotAuthorized", requestId: expect.any(String), message: expect.stringMatching(/project/) });
    }

    // B's Pulumi program attaching B's port to A's network: refused by the service, the CLI says so.
    await stacks.b.setConfig("foreignNetworkId", aNet);
    const r = await stacks.b.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(r.code).not.toBe(0);
    const out = r.stdout + r.stderr;
    for (const s of secretsOf("b")) expect(out).not.toContain(s);
    // The policy's refusal reaches the tenant's CLI (as in direct mode), with the service's request id.
    expect(out).toMatch(/baremetal:network:attach denied for project project-b/);
    const requestId = /service request ([0-9a-f-]{36})/.exec(out)?.[1];
    expect(requestId).toBeDefined();
    expect(svc.log().find((l) => l.requestId === requestId)).toMatchObject({ status: 403, errorCode: "PolicyNotAuthorized" });
    await stacks.b.pulumi(["config", "rm", "foreignNetworkId"]);
    await stacks.b.pulumi(["up", "--yes", "--skip-preview"]);

    expect(await switchState()).toBe(before);
    expect(await reaches(m.a1, m.a2)).toBe(true);
    expect(await isolated(m.b1, m.a1)).toBe(true);
    expect(await listIds("a", NET)).toEqual([aNet]);
    expect(await listIds("a", ATT)).toEqual([...outs.a.attachmentIds].sort());

    const inv = await openInventory(inventoryUrl);
    try {
      const audit = await inv.listAudit({ projectId: "project-b", limit: 1000 });
      const denied = audit.filter((e) => e.outcome === "denied");
      expect(denied.length).toBeGreaterThanOrEqual(attempts.length + 1);
      expect(denied.every((e) => e.tokenId === tokens.b.id)).toBe(true);
      expect(denied.some((e) => e.requestId === requestId)).toBe(true);
      const ops = new Set(denied.map((e) => e.operation));
      for (const op of [`${NET}:get`, `${NET}:update`, `${NET}:delete`, `${NET}:create`, `${ATT}:get`, `${ATT}:update`, `${ATT}:delete`, `${ATT}:create`]) expect({ op, denied: ops.has(op) }).toEqual({ op, denied: true });
    } finally {
      await inv.close();
    }
  });

  it("destroy of both tenants leaves the switch's ports as they were and nothing of theirs in the service", async () => {
    const downs = await Promise.all(["a", "b"].map((t) => stacks[t].pulumi(["destroy", "--yes", "--skip-preview"])));
    for (const [i, t] of ["a", "b"].entries()) for (const s of secretsOf(t)) expect(downs[i].stdout + downs[i].stderr).not.toContain(s);
    expect(await switchState()).toBe(quarantined);
    for (const t of ["a", "b"]) {
      expect(await listIds(t, NET)).toEqual([]);
      expect(await listIds(t, ATT)).toEqual([]);
    }
    await operator.pulumi(["destroy", "--yes", "--skip-preview"]);
    expect(await switchState()).toBe(pristine);
  });
});
