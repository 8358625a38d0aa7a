/**
 * The Open vSwitch harness, and the proof that VLAN isolation works on this machine: real packets
 * (ping between network namespaces) through a real ovs-vswitchd (userspace datapath), configured
 * with nothing but ovs-vsctl.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import { connectSwitches, OvsInstance, OvsNode, startOvs } from "./ovs";

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Positive case: a few tries, while ARP and MAC learning settle. */
async function reaches(from: OvsNode, to: OvsNode, tries = 3): Promise<boolean> {
  for (let i = 0; i < tries; i++) if (await from.ping(to.ip)) return true;
  return false;
}

/** Negative case: two echo requests (-c 2 -W 1), no reply at all. */
async function isolated(from: OvsNode, to: OvsNode): Promise<boolean> {
  return !(await from.ping(to.ip, { count: 2, timeoutSec: 1 }));
}

/** Pairs checked at once (each negative costs about a second). */
async function check(pairs: [OvsNode, OvsNode, "reaches" | "isolated"][]): Promise<string[]> {
  const results = await Promise.all(pairs.map(([a, b, want]) => (want === "reaches" ? reaches(a, b) : isolated(a, b))));
  return pairs.filter((_, i) => !results[i]).map(([a, b, want]) => `${a.name} -> ${b.name} should be ${want}`);
}

function netnsNames(): string[] {
  return fs.existsSync("/var/run/netns") ? fs.readdirSync("/var/run/netns") : [];
}

function hostVeths(): string[] {
  return execFileSync("ip", ["-o", "link", "show", "type", "veth"], { encoding: "utf8" })
    .split("\n")
    .filter(Boolean)
    .map((l) => l.split(":")[1].trim().split("@")[0])
    .sort();
}

function ovsdbListDbs(port: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    let buf = "";
    sock.setEncoding("utf8");
    sock.setTimeout(3000, () => sock.destroy(new Error("timeout")));
    sock.once("error", reject);
    sock.once("connect", () => sock.write(JSON.stringify({ id: 7, method: "list_dbs", params: [] })));
    sock.on("data", (d: string) => {
      buf += d;
      try {
        const msg = JSON.parse(buf);
        sock.destroy();
        resolve(msg);
      } catch {
        /* incomplete */
      }
    });
  });
}

describe("Open vSwitch harness (userspace datapath, netns nodes)", () => {
  const running: OvsInstance[] = [];
  const start = async (switches = 1) => {
    const ovs = await startOvs({ switches });
    running.push(ovs);
    return ovs;
  };

  afterEach(async () => {
    await Promise.all(running.splice(0).map((o) => o.stop()));
  });

  it("serves OVSDB on loopback TCP and switches untagged traffic between two nodes both ways", async () => {
    const ovs = await start();
    expect(ovs.ovsdbUrl).toBe(`tcp:127.0.0.1:${ovs.ovsdbPort}`);
    expect(await ovsdbListDbs(ovs.ovsdbPort)).toMatchObject({ id: 7, error: null, result: expect.arrayContaining(["Open_vSwitch"]) });
    expect(await ovs.vsctl(["get", "bridge", "br0", "datapath_type"])).toBe("netdev\n");

    const a = await ovs.addNode("a1", { bridge: "br0", ipv4: "10.77.1.11/24", mac: "02:00:0a:4d:01:0b" });
    const b = await ovs.addNode("a2", { bridge: "br0", ipv4: "10.77.1.12/24" });
    expect(a.mac).toBe("02:00:0a:4d:01:0b");
    expect((await ovs.vsctl(["list-ports", "br0"])).split("\n").filter(Boolean).sort()).toEqual(["a1", "a2"]);
    expect(await check([[a, b, "reaches"], [b, a, "reaches"]])).toEqual([]);
    // The switch really learnt both MACs on the ports of the veths.
    expect(await ovs.appctl(["fdb/show", "br0"])).toContain(a.mac);

    await b.remove();
    expect(netnsNames()).not.toContain(b.netns);
    expect(await ovs.vsctl(["list-ports", "br0"])).toBe("a1\n");
    await b.remove(); // idempotent
  });

  it("isolates access VLANs: 101 talks to 101, never to 102, and follows tag changes", async () => {
    const ovs = await start();
    const a1 = await ovs.addNode("a1", { bridge: "br0", ipv4: "10.77.1.11/24" });
    const a2 = await ovs.addNode("a2", { bridge: "br0", ipv4: "10.77.1.12/24" });
    const b1 = await ovs.addNode("b1", { bridge: "br0", ipv4: "10.77.1.21/24" });
    // One subnet on purpose: only the switch's VLANs keep them apart.
    await ovs.vsctl(["set", "port", a1.port, "tag=101", "--", "set", "port", a2.port, "tag=101", "--", "set", "port", b1.port, "tag=102"]);
    expect(await check([[a1, a2, "reaches"], [a2, a1, "reaches"], [a1, b1, "isolated"], [b1, a1, "isolated"], [b1, a2, "isolated"]])).toEqual([]);

    await ovs.vsctl(["set", "port", b1.port, "tag=101"]);
    expect(await check([[a1, b1, "reaches"], [b1, a1, "reaches"]])).toEqual([]);

    // Back to 102: A1 still has B1's MAC in its ARP cache, so this is unicast, and still dropped.
    await ovs.vsctl(["set", "port", b1.port, "tag=102"]);
    expect(await check([[a1, b1, "isolated"], [b1, a1, "isolated"], [a1, a2, "reaches"]])).toEqual([]);
  });

  it.each(["veth", "patch"] as const)("carries only the trunk's VLANs between two bridges (%s trunk)", async (kind) => {
    const ovs = await start(2);
    const a1 = await ovs.addNode("a1", { bridge: "br0", ipv4: "10.77.1.11/24" });
    const b1 = await ovs.addNode("b1", { bridge: "br0", ipv4: "10.77.1.21/24" });
    const a3 = await ovs.addNode("a3", { bridge: "br1", ipv4: "10.77.1.13/24" });
    const b3 = await ovs.addNode("b3", { bridge: "br1", ipv4: "10.77.1.23/24" });
    await ovs.vsctl([
      "set", "port", "a1", "tag=101", "--", "set", "port", "a3", "tag=101",
      "--", "set", "port", "b1", "tag=102", "--", "set", "port", "b3", "tag=102",
    ]);
    const trunk = await ovs.linkBridges("br0", "br1", { kind, trunks: [101] });
    expect(await ovs.vsctl(["get", "port", trunk.ports[0], "trunks"])).toBe("[101]\n");
    expect(await check([[a1, a3, "reaches"], [a3, a1, "reaches"], [b1, b3, "isolated"], [a1, b3, "isolated"]])).toEqual([]);

    await ovs.vsctl(["set", "port", trunk.ports[0], "trunks=101,102", "--", "set", "port", trunk.ports[1], "trunks=101,102"]);
    expect(await check([[b1, b3, "reaches"], [b3, b1, "reaches"], [a1, a3, "reaches"], [a1, b3, "isolated"]])).toEqual([]);

    await trunk.remove();
    expect(await check([[a1, a3, "isolated"]])).toEqual([]);
  });

  it("runs two instances side by side without interference, and stop() leaves nothing behind", async () => {
    const vethsBefore = hostVeths();
    const [one, two] = await Promise.all([start(), start()]);
    expect(one.ovsdbPort).not.toBe(two.ovsdbPort);
    expect(one.socket).not.toBe(two.socket);
    expect(one.netns).not.toBe(two.netns);
    // Same bridge, node and port names and the same addresses in both: nothing is shared.
    const nodes = await Promise.all(
      [one, two].map(async (ovs) => [
        await ovs.addNode("a1", { bridge: "br0", ipv4: "10.77.1.11/24" }),
        await ovs.addNode("a2", { bridge: "br0", ipv4: "10.77.1.12/24" }),
      ]),
    );
    const [[x1, x2], [y1, y2]] = nodes;
    expect(await check([[x1, x2, "reaches"], [y1, y2, "reaches"]])).toEqual([]);

    await one.vsctl(["set", "port", "a2", "tag=102"]);
    expect(await two.vsctl(["get", "port", "a2", "tag"])).toBe("[]\n");
    expect(await check([[x1, x2, "isolated"], [y1, y2, "reaches"]])).toEqual([]);
    expect(hostVeths()).toEqual(vethsBefore); // every veth end lives in a namespace of ours

    const ownNamespaces = netnsNames().filter((n) => n.startsWith(`${one.netns.replace(/-sw$/, "")}-`));
    expect(ownNamespaces.sort()).toEqual([one.netns, x1.netns, x2.netns].sort());
    const { ovsdbServer, vswitchd } = one.pids;
    expect(pidAlive(ovsdbServer) && pidAlive(vswitchd)).toBe(true);

    const t0 = Date.now();
    await one.stop();
    const stopMs = Date.now() - t0;
    expect(pidAlive(ovsdbServer)).toBe(false);
    expect(pidAlive(vswitchd)).toBe(false);
    expect(netnsNames().filter((n) => ownNamespaces.includes(n))).toEqual([]);
    expect(fs.existsSync(one.dir)).toBe(false);
    expect(stopMs).toBeLessThan(6000);
    await one.stop(); // idempotent

    // The other instance is untouched.
    expect(await check([[y1, y2, "reaches"], [y2, y1, "reaches"]])).toEqual([]);
    await two.stop();
    expect(pidAlive(two.pids.ovsdbServer) || pidAlive(two.pids.vswitchd)).toBe(false);
    expect(netnsNames().filter((n) => [two.netns, y1.netns, y2.netns].includes(n))).toEqual([]);
    expect(hostVeths()).toEqual(vethsBefore);
  });

  it("joins two instances (two switches) with a veth trunk that carries only VLAN 101", async () => {
    const [one, two] = await Promise.all([start(), start()]);
    const a1 = await one.addNode("a1", { bridge: "br0", ipv4: "10.77.1.11/24" });
    const b1 = await one.addNode("b1", { bridge: "br0", ipv4: "10.77.1.21/24" });
    const a3 = await two.addNode("a3", { bridge: "br0", ipv4: "10.77.1.13/24" });
    const b3 = await two.addNode("b3", { bridge: "br0", ipv4: "10.77.1.23/24" });
    await one.vsctl(["set", "port", "a1", "tag=101", "--", "set", "port", "b1", "tag=102"]);
    await two.vsctl(["set", "port", "a3", "tag=101", "--", "set", "port", "b3", "tag=102"]);
    const uplink = await connectSwitches(one, "br0", two, "br0", { trunks: [101] });
    expect(await check([[a1, a3, "reaches"], [a3, a1, "reaches"], [b1, b3, "isolated"]])).toEqual([]);
    await uplink.remove();
    expect(await check([[a1, a3, "isolated"]])).toEqual([]);
  });
});
