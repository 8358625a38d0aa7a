/**
 * Real packets through a real Open vSwitch configured by OUR driver only (never ovs-vsctl): nodes in
 * network namespaces ping each other across access ports, a native VLAN and a trunk between two
 * bridges, and the driver's changes decide who reaches whom, right after `apply` returns.
 */
import { startOvs, OvsInstance, OvsNode } from "../../../../test/harness/ovs";
import { OvsdbSwitchDriver } from "./switch";

/** Positive case: a few tries, while ARP and MAC learning settle. */
async function reaches(from: OvsNode, to: OvsNode, tries = 3): Promise<boolean> {
  for (let i = 0; i < tries; i++) if (await from.ping(to.ip)) return true;
  return false;
}

/** Negative case: two echo requests, no reply at all. */
async function isolated(from: OvsNode, to: OvsNode): Promise<boolean> {
  return !(await from.ping(to.ip, { count: 2, timeoutSec: 1 }));
}

/** Checks the pairs at once; returns the ones that are not as wanted. */
async function check(pairs: [OvsNode, OvsNode, "reaches" | "isolated"][]): Promise<string[]> {
  const ok = await Promise.all(pairs.map(([a, b, want]) => (want === "reaches" ? reaches(a, b) : isolated(a, b))));
  return pairs.filter((_, i) => !ok[i]).map(([a, b, want]) => `${a.name} -> ${b.name} should be ${want}`);
}

describe("VLAN isolation configured through the ovsdb switch driver (real packets)", () => {
  const running: OvsInstance[] = [];
  const drivers: OvsdbSwitchDriver[] = [];
  const start = async (switches: number) => {
    const ovs = await startOvs({ switches });
    running.push(ovs);
    return ovs;
  };
  const driver = (ovs: OvsInstance, bridge: string) => {
    const d = new OvsdbSwitchDriver({ url: ovs.ovsdbUrl, bridge, owner: "packets-test" });
    drivers.push(d);
    return d;
  };
  afterEach(async () => {
    await Promise.all(drivers.splice(0).map((d) => d.close()));
    await Promise.all(running.splice(0).map((o) => o.stop()));
  });

  it("access VLANs: 101 talks to 101, not to 102; moving a port moves its reachability; a native VLAN carries untagged frames", async () => {
    const ovs = await start(1);
    // One subnet on purpose: only the switch's VLANs keep them apart.
    const [a1, a2, b1, n1] = await Promise.all([
      ovs.addNode("a1", { bridge: "br0", ipv4: "10.77.1.11/24" }),
      ovs.addNode("a2", { bridge: "br0", ipv4: "10.77.1.12/24" }),
      ovs.addNode("b1", { bridge: "br0", ipv4: "10.77.1.21/24" }),
      ovs.addNode("n1", { bridge: "br0", ipv4: "10.77.1.31/24" }),
    ]);
    const sw = driver(ovs, "br0");
    const r = await sw.apply([
      { kind: "ensure-vlan", vlan: 101, name: "tenant-a" },
      { kind: "ensure-vlan", vlan: 102, name: "tenant-b" },
      { kind: "access", port: a1.port, vlan: 101 },
      { kind: "access", port: a2.port, vlan: 101 },
      { kind: "access", port: b1.port, vlan: 102 },
      // A host port that is a trunk with native VLAN 101 (untagged): the node's untagged frames are in 101.
      { kind: "trunk", port: n1.port, vlans: [103], nativeVlan: 101 },
    ]);
    expect(r.transactions).toBe(1);
    expect(
      await check([
        [a1, a2, "reaches"],
        [a2, a1, "reaches"],
        [n1, a1, "reaches"],
        [a1, b1, "isolated"],
        [b1, a1, "isolated"],
        [b1, a2, "isolated"],
      ]),
    ).toEqual([]);

    await sw.apply([{ kind: "access", port: b1.port, vlan: 101 }]);
    expect(await check([[a1, b1, "reaches"], [b1, a2, "reaches"]])).toEqual([]);

    // Back to 102 (a1 still has b1's MAC in its ARP cache: unicast, still dropped), and the native
    // VLAN tagged: the node's NIC now gets 802.1Q frames it does not understand.
    await sw.apply([
      { kind: "access", port: b1.port, vlan: 102 },
      { kind: "trunk", port: n1.port, vlans: [103], nativeVlan: 101, nativeUntagged: false },
    ]);
    expect(await check([[a1, b1, "isolated"], [b1, a1, "isolated"], [a1, a2, "reaches"], [n1, a1, "isolated"]])).toEqual([]);

    // Reset to a quarantine VLAN: cut off from the tenant.
    await sw.apply([{ kind: "reset", port: a2.port, quarantineVlan: 4000 }]);
    expect(await check([[a1, a2, "isolated"]])).toEqual([]);
    expect(await sw.getPort(a2.port)).toMatchObject({ mode: "access", vlan: 4000 });
    expect((await sw.getPort(a2.port))?.owner).toBeUndefined();
  });

  it("a trunk between two bridges carries exactly the VLANs set through the driver", async () => {
    const ovs = await start(2);
    const [a1, b1, a3, b3] = await Promise.all([
      ovs.addNode("a1", { bridge: "br0", ipv4: "10.77.1.11/24" }),
      ovs.addNode("b1", { bridge: "br0", ipv4: "10.77.1.21/24" }),
      ovs.addNode("a3", { bridge: "br1", ipv4: "10.77.1.13/24" }),
      ovs.addNode("b3", { bridge: "br1", ipv4: "10.77.1.23/24" }),
    ]);
    const trunk = await ovs.linkBridges("br0", "br1", { kind: "veth" }); // no trunks=: every VLAN until we say
    const [t0, t1] = trunk.ports;
    const sw0 = driver(ovs, "br0");
    const sw1 = driver(ovs, "br1");
    await Promise.all([
      sw0.apply([
        { kind: "access", port: a1.port, vlan: 101 },
        { kind: "access", port: b1.port, vlan: 102 },
        { kind: "trunk-add", port: t0, vlans: [101] },
      ]),
      sw1.apply([
        { kind: "access", port: a3.port, vlan: 101 },
        { kind: "access", port: b3.port, vlan: 102 },
        { kind: "trunk-add", port: t1, vlans: [101] },
      ]),
    ]);
    expect(await sw0.getPort(t0)).toMatchObject({ mode: "trunk", trunkVlans: [101] });
    expect(await check([[a1, a3, "reaches"], [a3, a1, "reaches"], [b1, b3, "isolated"], [a1, b3, "isolated"]])).toEqual([]);

    await Promise.all([sw0.apply([{ kind: "trunk-add", port: t0, vlans: [102] }]), sw1.apply([{ kind: "trunk-add", port: t1, vlans: [102] }])]);
    expect(await check([[b1, b3, "reaches"], [a1, a3, "reaches"], [a1, b3, "isolated"]])).toEqual([]);

    await Promise.all([sw0.apply([{ kind: "trunk-remove", port: t0, vlans: [101] }]), sw1.apply([{ kind: "trunk-remove", port: t1, vlans: [101] }])]);
    expect(await check([[a1, a3, "isolated"], [b1, b3, "reaches"]])).toEqual([]);

    // The last VLAN removed: a trunk of no VLAN carries nothing (OVS's empty trunks would carry all).
    await Promise.all([sw0.apply([{ kind: "trunk-remove", port: t0, vlans: [102] }]), sw1.apply([{ kind: "trunk-remove", port: t1, vlans: [102] }])]);
    expect(await sw1.getPort(t1)).toMatchObject({ mode: "trunk", trunkVlans: [] });
    expect(await check([[a1, a3, "isolated"], [b1, b3, "isolated"]])).toEqual([]);
  });
});
