/**
 * Tenant networks through the real Pulumi engine against real Open vSwitch (userspace datapath,
 * managed over OVSDB by our driver) and the embedded lab's BMCs.
 *
 * Two top-of-rack switches (br0, br1) joined by a trunk, of two driver families: tor1 is managed
 * over OVSDB (RFC 7047, our client), tor2 over SSH (a real OpenSSH sshd, our ssh-cli driver with
 * its ovs-vsctl dialect, key login, host key checked); six machines, each a network namespace
 * plugged into a switch port, all addressed inside ONE IPv4 subnet (10.88.0.0/24), so that only the
 * VLANs keep them apart. The operator's stack enrols the nodes and records their ports; two
 * tenants' stacks each allocate three nodes and create two networks, and attach the ports:
 *   tenant-a: m1 (br0) + m2 (br1) in a-one, m3 (br0) in a-two
 *   tenant-b: m4 (br0) + m5 (br1) in b-one, m6 (br1) in b-two
 * The namespaces take the addresses that IPAM assigned. Then ping decides: each network's nodes
 * reach each other (across the trunk too), nothing crosses networks or tenants; a moved attachment
 * moves reachability; a tenant cannot attach to another's network; a port moved by hand is seen by
 * refresh and put back by up; the trunk carries exactly the VLANs in use; destroy leaves both
 * switches exactly as they were.
 */
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { isolated, type OvsInstance, type OvsNode, reaches, startOvs } from "../harness/ovs";
import { type SshdInstance, startSshd } from "../harness/sshd";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";

jest.setTimeout(900_000);

const OPERATOR = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const machines = config.requireObject<{ name: string; systemId: string; lessee: string; mac: string; switchId: string; switchPort: string }[]>("machines");
export const ports: Record<string, pulumi.Output<string>> = {};
export const nodes: Record<string, pulumi.Output<string>> = {};
for (const m of machines) {
  const node = new baremetal.compute.Node(m.name, {
    bmc: { address: config.require("bmcAddress"), systemId: m.systemId },
    owner: "operator-proj", lessee: m.lessee, resourceClass: "net-test",
  });
  const port = new baremetal.network.Port(m.name + "-eth0", { nodeId: node.id, mac: m.mac, switchId: m.switchId, switchPort: m.switchPort });
  nodes[m.name] = node.id;
  ports[m.name] = port.portId;
}
`;

const TENANT = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const prefix = config.require("prefix");
const pools: Record<string, { start: string; end: string }> = config.requireObject("pools");
const machines = config.requireObject<{ name: string; nodeId: string; portId: string; network: string }[]>("machines");
const networks: Record<string, baremetal.network.TenantNetwork> = {};
for (const n of Object.keys(pools)) {
  networks[n] = new baremetal.network.TenantNetwork(prefix + "-" + n, {
    subnets: [{ cidr: "10.88.0.0/24", allocationPools: [pools[n]] }],
  });
}
export const addresses: Record<string, pulumi.Output<string>> = {};
export const vlans: Record<string, pulumi.Output<number>> = {};
export const networkIds: Record<string, pulumi.Output<string>> = {};
for (const [n, net] of Object.entries(networks)) { vlans[n] = net.vlanId; networkIds[n] = net.networkId; }
for (const m of machines) {
  const alloc = new baremetal.compute.Allocation(m.name, { candidateNodes: [m.nodeId] });
  const att = new baremetal.network.NetworkAttachment(m.name, { portId: alloc.nodeId.apply(() => m.portId), networkId: networks[m.network].networkId });
  addresses[m.name] = att.ipAddresses.apply((a) => (a && a.length ? a[0].address : ""));
}
const foreign = config.get("foreignNetworkId");
if (foreign) {
  const m = machines[0];
  new baremetal.network.NetworkAttachment("intruder", { portId: m.portId, networkId: foreign, mode: "trunk" });
}
`;


describe("tenant networks on real Open vSwitch, through the engine", () => {
  let lab: Lab;
  let ovs: OvsInstance;
  let sshd: SshdInstance;
  let operator: PulumiProject;
  let tenantA: PulumiProject;
  let tenantB: PulumiProject;
  const m: Record<string, OvsNode> = {};
  let trunk: [string, string];
  let before: string;

  /** Every Port row's VLAN columns and marker, and both bridges' registries: "as they were". */
  const switchState = async () =>
    (await ovs.vsctl(["--format=json", "--columns=name,tag,trunks,vlan_mode,external_ids", "list", "Port"])) +
    (await ovs.vsctl(["get", "Bridge", "br0", "external_ids"])) +
    (await ovs.vsctl(["get", "Bridge", "br1", "external_ids"]));
  const portCol = async (port: string, col: string) => (await ovs.vsctl(["get", "Port", port, col])).trim();
  const trunkVlans = async (port: string) => JSON.parse((await portCol(port, "trunks")).replace(/ /g, "")) as number[];

  /** The namespace takes the address IPAM gave its attachment (one subnet for all: only VLANs separate). */
  const readdress = async (name: string, address: string) => {
    const node = m[name];
    await node.exec(["ip", "addr", "flush", "dev", "eth0"]);
    await node.exec(["ip", "addr", "add", `${address}/24`, "dev", "eth0"]);
    (node as { ip: string }).ip = address;
  };
  const takeAddresses = async (p: PulumiProject) => {
    const { addresses } = (await p.outputs()) as { addresses: Record<string, string> };
    for (const [name, address] of Object.entries(addresses)) await readdress(name, address);
    return addresses;
  };

  beforeAll(async () => {
    [ovs, sshd] = await Promise.all([startOvs({ switches: 2 }), startSshd()]);
    const link = await ovs.linkBridges("br0", "br1", { kind: "veth", names: ["up0", "up1"] });
    trunk = link.ports;
    const layout: [string, string][] = [["m1", "br0"], ["m2", "br1"], ["m3", "br0"], ["m4", "br0"], ["m5", "br1"], ["m6", "br1"]];
    for (const [i, [name, bridge]] of layout.entries()) m[name] = await ovs.addNode(name, { bridge, ipv4: `10.88.0.${200 + i}/24` });
    before = await switchState();

    lab = await startLab({ flavor: "generic", systems: 6, bootSeconds: 0 });
    operator = await newProject("net-operator", OPERATOR);
    tenantA = await newProject("net-tenant-a", TENANT);
    tenantB = await newProject("net-tenant-b", TENANT);
    const fabrics = {
      lab: {
        vlanRanges: ["100-199"],
        quarantineVlan: 999,
        provisioningVlan: 998,
        provisioningMode: "shared",
        switches: {
          tor1: { driver: "ovsdb", address: ovs.ovsdbUrl, bridge: "br0", trunkPorts: [trunk[0]] },
          tor2: {
            driver: "ssh-cli",
            dialect: "ovs-vsctl",
            address: `ssh://127.0.0.1:${sshd.port}?db=${ovs.ovsdbUrl}`,
            hostKey: sshd.hostKeyFingerprint,
            bridge: "br1",
            trunkPorts: [trunk[1]],
          },
        },
      },
    };
    const inventoryUrl = `sqlite://${operator.dir}/inventory.db`;
    for (const p of [operator, tenantA, tenantB]) {
      await p.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
      await p.setConfig("baremetal:fabrics", JSON.stringify(fabrics));
      await p.setConfig("baremetal:switchCredentials", JSON.stringify({ tor2: { username: sshd.user, privateKey: sshd.privateKey } }), true);
      for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
    }
    const lessee = (name: string) => (["m1", "m2", "m3"].includes(name) ? "tenant-a" : "tenant-b");
    await operator.setConfig("bmcAddress", lab.info.nodes[0].address);
    await operator.setConfig(
      "machines",
      JSON.stringify(
        layout.map(([name, bridge], i) => ({
          name,
          systemId: lab.info.nodes[i].systemId,
          lessee: lessee(name),
          mac: m[name].mac,
          switchId: bridge === "br0" ? "tor1" : "tor2",
          switchPort: m[name].port,
        })),
      ),
    );
    for (const [p, project] of [[tenantA, "tenant-a"], [tenantB, "tenant-b"]] as const) {
      await p.setConfig("baremetal:project", project);
      await p.setConfig("baremetal:roles", JSON.stringify(["admin", "member"]));
      await p.setConfig("prefix", project);
    }
    await tenantA.setConfig("pools", JSON.stringify({ one: { start: "10.88.0.10", end: "10.88.0.19" }, two: { start: "10.88.0.20", end: "10.88.0.29" } }));
    await tenantB.setConfig("pools", JSON.stringify({ one: { start: "10.88.0.30", end: "10.88.0.39" }, two: { start: "10.88.0.40", end: "10.88.0.49" } }));
  });

  afterAll(async () => {
    for (const p of [tenantA, tenantB, operator]) await p?.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of [tenantA, tenantB, operator]) p?.remove();
    await lab?.stop();
    await sshd?.stop();
    await ovs?.stop();
  });

  it("the operator's ports are quarantined", async () => {
    await operator.pulumi(["up", "--yes", "--skip-preview"]);
    for (const name of Object.keys(m)) {
      expect(await portCol(m[name].port, "tag")).toBe("999");
      expect(await portCol(m[name].port, "vlan_mode")).toBe("access");
    }
  });

  it("two tenants, two networks each: each network's nodes reach each other, nothing crosses", async () => {
    const { nodes, ports } = (await operator.outputs()) as { nodes: Record<string, string>; ports: Record<string, string> };
    const machines = (names: string[], networks: string[]) => names.map((name, i) => ({ name, nodeId: nodes[name], portId: ports[name], network: networks[i] }));
    await tenantA.setConfig("machines", JSON.stringify(machines(["m1", "m2", "m3"], ["one", "one", "two"])));
    await tenantB.setConfig("machines", JSON.stringify(machines(["m4", "m5", "m6"], ["one", "one", "two"])));
    await Promise.all([tenantA.pulumi(["up", "--yes", "--skip-preview"]), tenantB.pulumi(["up", "--yes", "--skip-preview"])]);

    const a = await takeAddresses(tenantA);
    const b = await takeAddresses(tenantB);
    expect(a.m1).toMatch(/^10\.88\.0\.1\d$/);
    expect(a.m3).toMatch(/^10\.88\.0\.2\d$/);
    expect(b.m4).toMatch(/^10\.88\.0\.3\d$/);
    expect(b.m6).toMatch(/^10\.88\.0\.4\d$/);

    const va = (await tenantA.outputs()).vlans as Record<string, number>;
    const vb = (await tenantB.outputs()).vlans as Record<string, number>;
    const all = [va.one, va.two, vb.one, vb.two];
    expect(new Set(all).size).toBe(4);
    for (const v of all) expect(v).toBeGreaterThanOrEqual(100);
    expect(await portCol(m.m1.port, "tag")).toBe(String(va.one));
    // The trunk between the switches carries exactly the networks' VLANs (and the provisioning VLAN).
    for (const t of trunk) expect(await trunkVlans(t)).toEqual([...all, 998].sort((x, y) => x - y));

    expect(await reaches(m.m1, m.m2)).toBe(true); // across the trunk
    expect(await reaches(m.m4, m.m5)).toBe(true);
    const apart: [string, string][] = [["m1", "m3"], ["m2", "m3"], ["m1", "m4"], ["m1", "m5"], ["m2", "m5"], ["m3", "m6"], ["m4", "m6"], ["m5", "m6"], ["m3", "m4"]];
    const crossing = [];
    for (const [x, y] of apart) if (!(await isolated(m[x], m[y]))) crossing.push(`${x}->${y}`);
    expect(crossing).toEqual([]);
  });

  it("a tenant cannot attach its node to another tenant's network (refused at preview)", async () => {
    const { networkIds } = (await tenantA.outputs()) as { networkIds: Record<string, string> };
    await tenantB.setConfig("foreignNetworkId", networkIds.one);
    const preview = await tenantB.pulumi(["preview"], { allowFail: true });
    expect(preview.code).not.toBe(0);
    expect(preview.stdout + preview.stderr).toMatch(/baremetal:network:attach denied for project tenant-b/);
    const up = await tenantB.pulumi(["up", "--yes", "--skip-preview"], { allowFail: true });
    expect(up.code).not.toBe(0);
    expect(await isolated(m.m4, m.m1)).toBe(true);
    await tenantB.pulumi(["config", "rm", "foreignNetworkId"]);
    await tenantB.pulumi(["up", "--yes", "--skip-preview"]);
  });

  it("moving an attachment moves reachability", async () => {
    const { nodes, ports } = (await operator.outputs()) as { nodes: Record<string, string>; ports: Record<string, string> };
    await tenantA.setConfig("machines", JSON.stringify(["m1", "m2", "m3"].map((name) => ({ name, nodeId: nodes[name], portId: ports[name], network: "one" }))));
    await tenantA.pulumi(["up", "--yes", "--skip-preview"]);
    const a = await takeAddresses(tenantA);
    expect(a.m3).toMatch(/^10\.88\.0\.1\d$/); // an address of the new network
    expect(await reaches(m.m3, m.m1)).toBe(true);
    expect(await reaches(m.m3, m.m2)).toBe(true);
    expect(await isolated(m.m3, m.m4)).toBe(true);
    // a-two has no port left, but the network exists: its VLAN stays on the trunk.
    const va = (await tenantA.outputs()).vlans as Record<string, number>;
    expect(await trunkVlans(trunk[0])).toContain(va.two);
  });

  it("a port moved by hand to another VLAN: refresh shows it, up puts it back", async () => {
    const vb = (await tenantB.outputs()).vlans as Record<string, number>;
    await ovs.vsctl(["set", "Port", m.m1.port, `tag=${vb.one}`]); // into tenant-b's network!
    expect(await reaches(m.m1, m.m4)).toBe(true); // the breach is real
    const refresh = await tenantA.pulumi(["refresh", "--yes", "--skip-preview"]);
    expect(refresh.stdout + refresh.stderr).toMatch(new RegExp(`switch tor1 port m1 is access VLAN ${vb.one}, expected access VLAN`));
    const preview = await tenantA.pulumi(["preview", "--diff"]);
    expect(preview.stdout).toMatch(/networkId/);
    await tenantA.pulumi(["up", "--yes", "--skip-preview"]);
    const va = (await tenantA.outputs()).vlans as Record<string, number>;
    expect(await portCol(m.m1.port, "tag")).toBe(String(va.one));
    expect(await isolated(m.m1, m.m4)).toBe(true);
    expect(await reaches(m.m1, m.m2)).toBe(true);
    await tenantA.pulumi(["preview", "--expect-no-changes"]);

    // A tenant VLAN pruned from the trunk by hand (on the ssh-cli switch's side): the network's nodes
    // across the trunk lose each other; refresh names the port, up puts the VLAN back.
    await ovs.vsctl(["set", "Port", trunk[1], `trunks=${(await trunkVlans(trunk[1])).filter((v) => v !== va.one).join(",")}`]);
    expect(await isolated(m.m1, m.m2)).toBe(true);
    const again = await tenantA.pulumi(["refresh", "--yes", "--skip-preview"]);
    expect(again.stdout + again.stderr).toMatch(new RegExp(`switch tor2 trunk port ${trunk[1]} does not carry VLAN ${va.one}`));
    await tenantA.pulumi(["up", "--yes", "--skip-preview"]);
    expect(await trunkVlans(trunk[1])).toContain(va.one);
    expect(await reaches(m.m1, m.m2)).toBe(true);
    await tenantA.pulumi(["preview", "--expect-no-changes"]);
  });

  it("switch credentials stay secret: no private key in any stack's state", async () => {
    const key = sshd.privateKey.split("\n")[1];
    for (const p of [operator, tenantA, tenantB]) expect(JSON.stringify(await p.exportStack())).not.toContain(key);
  });

  it("destroy prunes the trunk and leaves the switches as they were", async () => {
    const va = (await tenantA.outputs()).vlans as Record<string, number>;
    await tenantB.pulumi(["destroy", "--yes", "--skip-preview"]);
    for (const t of trunk) expect(await trunkVlans(t)).toEqual([va.one, va.two, 998].sort((x, y) => x - y));
    for (const name of ["m4", "m5", "m6"]) expect(await portCol(m[name].port, "tag")).toBe("999");
    // Quarantined ports reach no tenant network.
    for (const [x, y] of [["m4", "m1"], ["m5", "m2"], ["m6", "m3"]]) expect(await isolated(m[x], m[y])).toBe(true);
    await tenantA.pulumi(["destroy", "--yes", "--skip-preview"]);
    for (const name of ["m1", "m2", "m3"]) expect(await portCol(m[name].port, "tag")).toBe("999");
    await operator.pulumi(["destroy", "--yes", "--skip-preview"]);
    expect(await switchState()).toBe(before);
  });
});
