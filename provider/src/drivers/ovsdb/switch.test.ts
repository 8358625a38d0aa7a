/**
 * The ovsdb switch driver against a real Open vSwitch (the harness): what it writes is what OVS
 * shows (ovs-vsctl), batches are one transaction, the VLAN registry survives concurrent clients,
 * concurrent writers make the driver retry (never clobber), missing ports are named. The column
 * mapping is unit-tested first.
 */
import { BaremetalError, isBaremetalError } from "../../core/errors";
import { startOvs, OvsInstance } from "../../../../test/harness/ovs";
import type { SwitchChange } from "../kinds/switch";
import { NO_VLANS_TRUNK, OvsdbSwitchDriver, OvsdbSwitchOptions, portColumnsFor, portConfigFromColumns } from "./switch";

async function rejection(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return e;
  }
  throw new Error("expected a rejection");
}

describe("ovsdb switch driver: Port columns <-> port configuration", () => {
  it("writes each mode as OVS wants it and reads it back the same", () => {
    const configs = [
      { port: "p", mode: "access" as const, vlan: 101 },
      { port: "p", mode: "trunk" as const, trunkVlans: [101, 102] },
      { port: "p", mode: "trunk" as const, trunkVlans: [] },
      { port: "p", mode: "trunk" as const, trunkVlans: [7], vlan: 5, nativeUntagged: true },
      { port: "p", mode: "trunk" as const, trunkVlans: [7], vlan: 5, nativeUntagged: false },
      { port: "p", mode: "none" as const },
    ];
    expect(configs.map(portColumnsFor)).toEqual([
      { tag: 101, trunks: [], vlanMode: "access" },
      { trunks: [101, 102], vlanMode: "trunk" },
      { trunks: [NO_VLANS_TRUNK], vlanMode: "trunk" },
      { tag: 5, trunks: [7], vlanMode: "native-untagged" },
      { tag: 5, trunks: [7], vlanMode: "native-tagged" },
      { trunks: [] },
    ]);
    for (const c of configs) expect(portConfigFromColumns("p", portColumnsFor(c))).toEqual(c);
  });

  it("reads rows configured by others the way OVS interprets them", () => {
    expect(portConfigFromColumns("p", { tag: 7, trunks: [] })).toEqual({ port: "p", mode: "access", vlan: 7 }); // implicit access
    expect(portConfigFromColumns("p", { trunks: [3, 4] })).toEqual({ port: "p", mode: "trunk", trunkVlans: [3, 4] }); // implicit trunk
    expect(portConfigFromColumns("p", { trunks: [], vlanMode: "trunk" })).toEqual({ port: "p", mode: "trunk" }); // every VLAN
    expect(portConfigFromColumns("p", { tag: 9, trunks: [], vlanMode: "trunk" })).toEqual({ port: "p", mode: "trunk" }); // tag ignored
    expect(portConfigFromColumns("p", { tag: 9, trunks: [], vlanMode: "dot1q-tunnel" })).toEqual({ port: "p", mode: "access", vlan: 9 });
    expect(portConfigFromColumns("p", { trunks: [] }, { owner: "o", shutdown: true })).toEqual({ port: "p", mode: "none", owner: "o", shutdown: true });
  });
});

describe("ovsdb switch driver against a real Open vSwitch", () => {
  let ovs: OvsInstance;
  const drivers: OvsdbSwitchDriver[] = [];
  const driver = (o: Partial<OvsdbSwitchOptions> = {}) => {
    const d = new OvsdbSwitchDriver({ url: ovs.ovsdbUrl, bridge: "br0", owner: "stack-a", ...o });
    drivers.push(d);
    return d;
  };
  /** Plain ports (internal interfaces) on a bridge: ports that exist, no namespaces needed. */
  const addPorts = async (bridge: string, names: string[]) => {
    const args: string[] = [];
    for (const n of names) args.push("--", "add-port", bridge, n, "--", "set", "interface", n, "type=internal");
    await ovs.vsctl(args.slice(1));
  };
  const vsctlPort = async (port: string) => {
    const out = await ovs.vsctl(["--format=json", "--columns=tag,trunks,vlan_mode,external_ids", "list", "port", port]);
    const [tag, trunks, vlanMode, ext] = (JSON.parse(out) as { data: unknown[][] }).data[0];
    return { tag, trunks, vlanMode, ext };
  };
  const cfg = async () => {
    const [next, cur] = (await ovs.vsctl(["get", "Open_vSwitch", ".", "next_cfg", "cur_cfg"])).trim().split("\n").map(Number);
    return { next, cur };
  };

  beforeAll(async () => {
    ovs = await startOvs({ switches: 2 });
  });
  afterEach(async () => {
    await Promise.all(drivers.splice(0).map((d) => d.close()));
  });
  afterAll(async () => {
    await ovs?.stop();
  });

  it("applies access, trunk, native and reset, reads them back, and OVS itself sees the same", async () => {
    await addPorts("br0", ["s1", "s2", "s3", "s4"]);
    await ovs.vsctl(["set", "port", "s1", "external_ids:someone=else"]);
    const d = driver();
    const ports = await d.listPorts();
    expect(ports.map((p) => p.port)).toEqual(["s1", "s2", "s3", "s4"]); // sorted; the bridge's local port br0 is not a switch port
    expect(ports[0]).toEqual({ port: "s1", mode: "none", shutdown: true }); // an internal port that is not up

    const r = await d.apply([
      { kind: "access", port: "s1", vlan: 101 },
      { kind: "trunk", port: "s2", vlans: [103, 102, 102] },
      { kind: "trunk", port: "s3", vlans: [201], nativeVlan: 200 },
      { kind: "trunk", port: "s4", vlans: [], nativeVlan: 300, nativeUntagged: false, owner: "stack-b" },
    ]);
    expect(r).toEqual({ transactions: 1, retries: 0, changed: true });
    expect(await d.getPort("s1")).toEqual({ port: "s1", mode: "access", vlan: 101, owner: "stack-a", shutdown: true });
    expect(await d.getPort("s2")).toEqual({ port: "s2", mode: "trunk", trunkVlans: [102, 103], owner: "stack-a", shutdown: true });
    expect(await d.getPort("s3")).toEqual({ port: "s3", mode: "trunk", vlan: 200, nativeUntagged: true, trunkVlans: [201], owner: "stack-a", shutdown: true });
    expect(await d.getPort("s4")).toEqual({ port: "s4", mode: "trunk", vlan: 300, nativeUntagged: false, trunkVlans: [], owner: "stack-b", shutdown: true });
    // What OVS holds (ovs-vsctl's JSON: sets as ["set", [...]], single elements bare).
    expect(await vsctlPort("s1")).toEqual({ tag: 101, trunks: ["set", []], vlanMode: "access", ext: ["map", [["baremetal-owner", "stack-a"], ["someone", "else"]]] });
    expect(await vsctlPort("s2")).toEqual({ tag: ["set", []], trunks: ["set", [102, 103]], vlanMode: "trunk", ext: ["map", [["baremetal-owner", "stack-a"]]] });
    expect(await vsctlPort("s3")).toMatchObject({ tag: 200, trunks: 201, vlanMode: "native-untagged" });
    expect(await vsctlPort("s4")).toMatchObject({ tag: 300, trunks: 4095, vlanMode: "native-tagged" }); // no tagged VLAN: the 4095 sentinel
    // ovs-vswitchd applied it before apply returned.
    const c = await cfg();
    expect(c.cur).toBeGreaterThanOrEqual(c.next);

    // The same again: nothing to do, no write.
    expect(await d.apply([{ kind: "access", port: "s1", vlan: 101 }])).toEqual({ transactions: 0, retries: 0, changed: false });

    // Trunk edits on the existing trunk, and resets.
    await d.apply([
      { kind: "trunk-add", port: "s2", vlans: [104] },
      { kind: "trunk-remove", port: "s2", vlans: [102, 999] },
      { kind: "reset", port: "s1", quarantineVlan: 4000 },
      { kind: "reset", port: "s3" },
    ]);
    expect(await d.getPort("s2")).toMatchObject({ mode: "trunk", trunkVlans: [103, 104], owner: "stack-a" });
    expect(await d.getPort("s1")).toEqual({ port: "s1", mode: "access", vlan: 4000, shutdown: true });
    expect(await d.getPort("s3")).toEqual({ port: "s3", mode: "none", shutdown: true });
    expect(await vsctlPort("s1")).toEqual({ tag: 4000, trunks: ["set", []], vlanMode: "access", ext: ["map", [["someone", "else"]]] }); // marker gone, theirs kept
    expect(await vsctlPort("s3")).toEqual({ tag: ["set", []], trunks: ["set", []], vlanMode: ["set", []], ext: ["map", []] });
    // Removing the last VLANs leaves a trunk of none (not OVS's "every VLAN").
    await d.apply([{ kind: "trunk-remove", port: "s2", vlans: [103, 104] }]);
    expect(await d.getPort("s2")).toMatchObject({ mode: "trunk", trunkVlans: [] });
    expect((await vsctlPort("s2")).trunks).toBe(4095);
    // A row set by hand is read the way OVS reads it.
    await ovs.vsctl(["set", "port", "s3", "tag=55"]);
    expect(await d.getPort("s3")).toEqual({ port: "s3", mode: "access", vlan: 55, shutdown: true });
    expect(await d.getPort("nope")).toBeUndefined();
    expect(await d.getPort("br0")).toBeUndefined();
  });

  it("makes a batch of 30 changes in one write transaction (next_cfg moves by one)", async () => {
    const names = Array.from({ length: 24 }, (_, i) => `b${i}`);
    await addPorts("br0", names);
    const requests: string[] = [];
    const d = driver({ onRequest: (e) => requests.push(e.method) });
    const before = await cfg();
    const changes: SwitchChange[] = [
      ...names.map((port, i): SwitchChange => (i % 2 ? { kind: "access", port, vlan: 500 + i } : { kind: "trunk", port, vlans: [600 + i, 700 + i] })),
      ...[1, 2, 3, 4, 5, 6].map((i): SwitchChange => ({ kind: "ensure-vlan", vlan: 500 + i, name: `batch-${i}` })),
    ];
    const r = await d.apply(changes);
    expect(r).toEqual({ transactions: 1, retries: 0, changed: true });
    // One read, one write, one blocking wait for ovs-vswitchd: three requests in all.
    expect(requests).toEqual(["transact", "transact", "transact"]);
    expect(d.client.stats.transactions).toBe(3);
    const after = await cfg();
    expect(after.next).toBe(before.next + 1);
    const all = new Map((await d.listPorts()).map((p) => [p.port, p]));
    names.forEach((port, i) => {
      expect(all.get(port)).toMatchObject(i % 2 ? { mode: "access", vlan: 500 + i } : { mode: "trunk", trunkVlans: [600 + i, 700 + i] });
    });
    expect((await d.listVlans()).filter((v) => v.name.startsWith("batch-"))).toHaveLength(6);
    expect(await ovs.vsctl(["get", "port", "b1", "tag"])).toBe("501\n");
  });

  it("keeps the VLAN registry in the bridge and lets two clients add and delete different VLANs at once", async () => {
    await ovs.vsctl(["set", "bridge", "br1", "external_ids:keep=me"]);
    const a = driver({ bridge: "br1", owner: "stack-a" });
    const b = driver({ bridge: "br1", owner: "stack-b" });
    expect(await a.listVlans()).toEqual([]);
    expect(await a.ensureVlan(10, "old-name")).toEqual({ changed: true });
    expect(await a.ensureVlan(10, "old-name")).toEqual({ changed: false });
    expect(await a.ensureVlan(10, "tenant-x")).toEqual({ changed: true }); // renamed

    // Both read before either writes (a barrier in the hook between read and write).
    let arrived = 0;
    let release!: () => void;
    const bothRead = new Promise<void>((r) => (release = r));
    const barrier = async (attempt: number) => {
      if (attempt > 0) return;
      if (++arrived === 2) release();
      await bothRead;
    };
    const hooked = (owner: string) => driver({ bridge: "br1", owner, hooks: { afterRead: barrier } });
    const [ra, rb] = await Promise.all([
      hooked("stack-a").apply([{ kind: "ensure-vlan", vlan: 101, name: "tenant-a" }, { kind: "delete-vlan", vlan: 10 }]),
      hooked("stack-b").apply([{ kind: "ensure-vlan", vlan: 102, name: "tenant-b" }]),
    ]);
    // mutate (insert/delete of keys) needs no precondition: neither had to retry.
    expect([ra.retries, rb.retries]).toEqual([0, 0]);
    expect(await b.listVlans()).toEqual([
      { id: 101, name: "tenant-a" },
      { id: 102, name: "tenant-b" },
    ]);
    expect(await ovs.vsctl(["get", "bridge", "br1", "external_ids"])).toBe('{baremetal-vlan-101=tenant-a, baremetal-vlan-102=tenant-b, keep=me}\n');
    expect(await a.deleteVlan(101)).toEqual({ changed: true });
    expect(await a.deleteVlan(101)).toEqual({ changed: false });
    expect(await b.listVlans()).toEqual([{ id: 102, name: "tenant-b" }]);
  });

  it("retries when another client changes a port between its read and its write, and keeps both changes", async () => {
    await addPorts("br0", ["c1", "up1"]);
    // Someone else writes an unrelated key of the same port after our read: our wait fails.
    const d = driver({
      hooks: {
        afterRead: async (attempt) => {
          if (attempt === 0) await ovs.vsctl(["set", "port", "c1", "external_ids:lldp-peer=sw9"]);
        },
      },
    });
    const r = await d.apply([{ kind: "access", port: "c1", vlan: 101 }]);
    expect(r).toEqual({ transactions: 2, retries: 1, changed: true });
    expect(await vsctlPort("c1")).toEqual({ tag: 101, trunks: ["set", []], vlanMode: "access", ext: ["map", [["baremetal-owner", "stack-a"], ["lldp-peer", "sw9"]]] });

    // Two stacks adding different VLANs to the same uplink: B commits while A is between read and
    // write; A's precondition fails, A re-reads and adds its VLAN to B's.
    const b = driver({ owner: "stack-b" });
    await b.apply([{ kind: "trunk", port: "up1", vlans: [100] }]);
    const a = driver({
      hooks: {
        afterRead: async (attempt) => {
          if (attempt === 0) await b.apply([{ kind: "trunk-add", port: "up1", vlans: [102] }]);
        },
      },
    });
    const ra = await a.apply([{ kind: "trunk-add", port: "up1", vlans: [101] }]);
    expect(ra.retries).toBe(1);
    expect(await a.getPort("up1")).toMatchObject({ mode: "trunk", trunkVlans: [100, 101, 102], owner: "stack-b" });
  });

  it("gives up with conflict after a bounded number of attempts, having written nothing", async () => {
    await addPorts("br0", ["busy"]);
    let n = 0;
    const d = driver({
      maxRetries: 2,
      hooks: { afterRead: () => ovs.vsctl(["set", "port", "busy", `tag=${3000 + ++n}`]).then(() => undefined) },
    });
    const e = await rejection(d.apply([{ kind: "access", port: "busy", vlan: 101 }]));
    expect(e.code).toBe("conflict");
    expect(e.message).toMatch(/switch ports busy on bridge br0 .* kept changing under us: .* 3 times in a row/);
    expect(n).toBe(3);
    expect(await vsctlPort("busy")).toMatchObject({ tag: 3003, ext: ["map", []] }); // theirs, untouched
  });

  it("checks the caller's expectation atomically with the change", async () => {
    await addPorts("br0", ["e1", "e2"]);
    const d = driver();
    await d.apply([{ kind: "access", port: "e1", vlan: 101 }]);
    const mine = await d.getPort("e1");
    await ovs.vsctl(["set", "port", "e1", "tag=666"]); // drift made behind our back
    const e = await rejection(d.apply([{ kind: "reset", port: "e1" }], { expect: [mine!] }));
    expect(e).toMatchObject({ code: "conflict", property: "expect[0]" });
    expect(e.message).toMatch(/e1 .* is not as expected: vlan is 666, expected 101/);
    expect(await ovs.vsctl(["get", "port", "e1", "tag"])).toBe("666\n");
    // Expectations on a port left alone hold too; here it matches and the change goes through.
    const r = await d.apply([{ kind: "access", port: "e1", vlan: 101 }], { expect: [{ port: "e1", vlan: 666 }, { port: "e2", mode: "none", owner: undefined }] });
    expect(r.changed).toBe(true);
  });

  it("names a port that does not exist (and writes nothing of the batch)", async () => {
    await addPorts("br0", ["n1"]);
    await addPorts("br1", ["elsewhere"]);
    const d = driver();
    const e = await rejection(d.apply([{ kind: "access", port: "n1", vlan: 101 }, { kind: "access", port: "ghost7", vlan: 101 }]));
    expect(e).toMatchObject({ code: "not-found", property: "changes[1].port" });
    expect(e.message).toBe(`switch port ghost7 does not exist on bridge br0 of ovsdb-server at ${ovs.ovsdbUrl}`);
    expect(await d.getPort("n1")).toMatchObject({ mode: "none" });
    const other = await rejection(d.apply([{ kind: "access", port: "elsewhere", vlan: 101 }]));
    expect(other).toMatchObject({ code: "not-found", property: "changes[0].port" });
    expect(other.message).toMatch(/elsewhere is not on bridge br0 .* \(it belongs to another bridge\)/);
    const noBridge = await rejection(driver({ bridge: "br7" }).listPorts());
    expect(noBridge).toMatchObject({ code: "not-found", property: "bridge" });
    // Validation comes first, naming the property.
    const v = await rejection(d.apply([{ kind: "access", port: "n1", vlan: 4095 }]));
    expect(v).toMatchObject({ code: "validation", property: "changes[0].vlan" });
    const local = await rejection(d.apply([{ kind: "access", port: "br0", vlan: 5 }]));
    expect(local).toMatchObject({ code: "validation", property: "changes[0].port" });
    // A change that makes no sense on the port as it is.
    await d.apply([{ kind: "access", port: "n1", vlan: 101 }]);
    const c = await rejection(d.apply([{ kind: "trunk-add", port: "n1", vlans: [5] }]));
    expect(c).toMatchObject({ code: "conflict", property: "changes[0]" });
  });

  it("waits for ovs-vswitchd to apply the change, and says so when it does not in time", async () => {
    await addPorts("br0", ["w1"]);
    const d = driver({ appliedTimeoutMs: 300 });
    process.kill(ovs.pids.vswitchd, "SIGSTOP"); // frozen: it cannot catch up with next_cfg
    try {
      const e = await rejection(d.apply([{ kind: "access", port: "w1", vlan: 42 }]));
      expect(e.code).toBe("timeout");
      expect(e.message).toMatch(/is committed, but ovs-vswitchd did not apply it within 300 ms/);
    } finally {
      process.kill(ovs.pids.vswitchd, "SIGCONT");
    }
    expect(await d.getPort("w1")).toMatchObject({ mode: "access", vlan: 42 }); // committed all the same
  });
});
