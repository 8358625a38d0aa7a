/**
 * The ssh-cli switch driver, ovs-vsctl dialect, against real peers: OpenSSH's sshd
 * (test/harness/sshd.ts) in front of a real Open vSwitch (test/harness/ovs.ts). The commands go
 * through SSH to ovs-vsctl, which talks to the harness's ovsdb-server (--db=tcp:127.0.0.1:PORT).
 * Proven here: every change kind read back (and as OVS and the ovsdb driver see it), a batch is
 * one ovs-vsctl invocation (counted on our side and in sshd's own log), drift, a concurrent change
 * between read and write (retry, then conflict), host key and password refusals with clear errors
 * that carry no secret, and real packets through ports configured by this driver.
 */
import { BaremetalError, isBaremetalError } from "../../core/errors";
import { startOvs, OvsInstance, OvsNode } from "../../../../test/harness/ovs";
import { startSshd, SshdInstance } from "../../../../test/harness/sshd";
import type { SwitchChange, SwitchConnection } from "../kinds/switch";
import { OvsdbSwitchDriver } from "../ovsdb/switch";
import { sshCliSwitchDriver, SshCliExtra, SshCliSwitchDriver } from "./switch";
import { ExecResult } from "./transport";

async function rejection(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return e;
  }
  throw new Error("expected a rejection");
}

describe("ssh-cli switch driver (ovs-vsctl dialect) against a real sshd and a real Open vSwitch", () => {
  let sshd: SshdInstance;
  let ovs: OvsInstance;
  const drivers: { close(): Promise<void> }[] = [];
  const conn = (o: Partial<SwitchConnection> = {}): SwitchConnection => ({
    address: `ssh://root@127.0.0.1:${sshd.port}`,
    dialect: "ovs-vsctl",
    bridge: "br0",
    owner: "stack-a",
    privateKey: sshd.privateKey,
    hostKey: sshd.hostKeyFingerprint,
    ...o,
  });
  const driver = (o: Partial<SwitchConnection> = {}, extra: SshCliExtra = {}): SshCliSwitchDriver => {
    const d = sshCliSwitchDriver(conn(o), { ovsdbRemote: ovs.ovsdbUrl, ...extra });
    drivers.push(d);
    return d;
  };
  const ovsdb = (bridge = "br0") => {
    const d = new OvsdbSwitchDriver({ url: ovs.ovsdbUrl, bridge, owner: "stack-a" });
    drivers.push(d);
    return d;
  };
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
    [sshd, ovs] = await Promise.all([startSshd({ passwordUser: true }), startOvs({ switches: 2 })]);
  });
  afterEach(async () => {
    await Promise.all(drivers.splice(0).map((d) => d.close()));
  });
  afterAll(async () => {
    await Promise.all([ovs?.stop(), sshd?.stop()]);
  });

  it("applies access, trunk, native, reset, trunk-add/remove and the VLAN registry; OVS and the ovsdb driver read the same", async () => {
    await addPorts("br0", ["s1", "s2", "s3", "s4"]);
    await ovs.vsctl(["set", "port", "s1", "external_ids:someone=else"]);
    const d = driver();
    expect(await d.listPorts()).toEqual(await ovsdb().listPorts());
    expect((await d.listPorts()).map((p) => p.port)).toEqual(["s1", "s2", "s3", "s4"]);

    const r = await d.apply([
      { kind: "ensure-vlan", vlan: 101, name: "tenant a's \"net\"" },
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
    expect(await d.listVlans()).toEqual([{ id: 101, name: 'tenant a\'s "net"' }]);
    // Stored exactly as the ovsdb driver stores it.
    expect(await vsctlPort("s1")).toEqual({ tag: 101, trunks: ["set", []], vlanMode: "access", ext: ["map", [["baremetal-owner", "stack-a"], ["someone", "else"]]] });
    expect(await vsctlPort("s4")).toMatchObject({ tag: 300, trunks: 4095, vlanMode: "native-tagged" });
    expect(await ovs.vsctl(["get", "bridge", "br0", "external_ids:baremetal-vlan-101"])).toBe('"tenant a\'s \\"net\\""\n');
    // ovs-vsctl waited for ovs-vswitchd (no --no-wait) before the write returned.
    const c = await cfg();
    expect(c.cur).toBeGreaterThanOrEqual(c.next);
    // Both families read each other's configuration identically.
    expect(await ovsdb().listPorts()).toEqual(await d.listPorts());
    expect(await ovsdb().listVlans()).toEqual(await d.listVlans());

    // Nothing to do: no write at all.
    expect(await d.apply([{ kind: "access", port: "s1", vlan: 101 }])).toEqual({ transactions: 0, retries: 0, changed: false });

    await d.apply([
      { kind: "trunk-add", port: "s2", vlans: [104] },
      { kind: "trunk-remove", port: "s2", vlans: [102, 999] },
      { kind: "reset", port: "s1", quarantineVlan: 4000 },
      { kind: "reset", port: "s3" },
      { kind: "delete-vlan", vlan: 101 },
      { kind: "ensure-vlan", vlan: 102, name: "tenant-b" },
    ]);
    expect(await d.getPort("s2")).toMatchObject({ mode: "trunk", trunkVlans: [103, 104], owner: "stack-a" });
    expect(await d.getPort("s1")).toEqual({ port: "s1", mode: "access", vlan: 4000, shutdown: true });
    expect(await d.getPort("s3")).toEqual({ port: "s3", mode: "none", shutdown: true });
    expect(await vsctlPort("s1")).toEqual({ tag: 4000, trunks: ["set", []], vlanMode: "access", ext: ["map", [["someone", "else"]]] }); // marker gone, theirs kept
    expect(await d.listVlans()).toEqual([{ id: 102, name: "tenant-b" }]);
    expect(await d.ensureVlan(102, "tenant-b")).toEqual({ changed: false });
    expect(await d.deleteVlan(102)).toEqual({ changed: true });
    expect(await d.deleteVlan(102)).toEqual({ changed: false });
    await d.apply([{ kind: "trunk-remove", port: "s2", vlans: [103, 104] }]);
    expect(await d.getPort("s2")).toMatchObject({ mode: "trunk", trunkVlans: [] });
    expect((await vsctlPort("s2")).trunks).toBe(4095);

    // What the ovsdb driver writes, ssh-cli reads the same, and the other way round.
    await ovsdb().apply([{ kind: "trunk", port: "s3", vlans: [7, 8], nativeVlan: 9, owner: "via-ovsdb" }]);
    expect(await d.getPort("s3")).toEqual({ port: "s3", mode: "trunk", vlan: 9, nativeUntagged: true, trunkVlans: [7, 8], owner: "via-ovsdb", shutdown: true });
    expect(await ovsdb().listPorts()).toEqual(await d.listPorts());
    expect(await d.getPort("nope")).toBeUndefined();
    expect(await d.getPort("br0")).toBeUndefined();
  });

  it("makes a batch of 30 changes with ONE ovs-vsctl invocation (one read, one write; next_cfg moves by one)", async () => {
    const names = Array.from({ length: 24 }, (_, i) => `b${i}`);
    await addPorts("br0", names);
    const d = driver();
    const commands: ExecResult[] = [];
    d.transport.onCommand = (r) => commands.push(r);
    await d.listPorts(); // connect first: sessions counted below are this batch's only
    commands.length = 0;
    const sessionsBefore = sshd.sessions();
    const before = await cfg();
    const changes: SwitchChange[] = [
      ...names.map((port, i): SwitchChange => (i % 2 ? { kind: "access", port, vlan: 500 + i } : { kind: "trunk", port, vlans: [600 + i, 700 + i] })),
      ...[1, 2, 3, 4, 5, 6].map((i): SwitchChange => ({ kind: "ensure-vlan", vlan: 500 + i, name: `batch-${i}` })),
    ];
    expect(await d.apply(changes)).toEqual({ transactions: 1, retries: 0, changed: true });
    // Our side: two commands, each one ovs-vsctl; the write is the ONE with the 30 changes.
    expect(commands.map((c) => c.command.split(" ")[0])).toEqual(["ovs-vsctl", "ovs-vsctl"]);
    expect(commands.every((c) => (c.command.match(/ovs-vsctl/g) ?? []).length === 1)).toBe(true);
    expect((commands[1].command.match(/ -- set Port [0-9a-f-]+ '?tag=/g) ?? []).length).toBe(24);
    expect((commands[1].command.match(/ -- wait-until Port /g) ?? []).length).toBe(24);
    // sshd's side: two sessions; OVS's side: next_cfg moved by one (one committed transaction).
    expect(sshd.sessions() - sessionsBefore).toBe(2);
    expect((await cfg()).next).toBe(before.next + 1);
    const all = new Map((await d.listPorts()).map((p) => [p.port, p]));
    names.forEach((port, i) => expect(all.get(port)).toMatchObject(i % 2 ? { mode: "access", vlan: 500 + i } : { mode: "trunk", trunkVlans: [600 + i, 700 + i] }));
    expect((await d.listVlans()).filter((v) => v.name.startsWith("batch-"))).toHaveLength(6);
  });

  it("reads a port reconfigured by hand as drift, and refuses a change whose expectation no longer holds", async () => {
    await addPorts("br0", ["e1", "e2"]);
    const d = driver();
    await d.apply([{ kind: "access", port: "e1", vlan: 101 }]);
    const mine = await d.getPort("e1");
    await ovs.vsctl(["set", "port", "e1", "tag=666"]); // by hand, behind our back
    expect(await d.getPort("e1")).toEqual({ port: "e1", mode: "access", vlan: 666, owner: "stack-a", shutdown: true });
    const e = await rejection(d.apply([{ kind: "reset", port: "e1" }], { expect: [mine!] }));
    expect(e).toMatchObject({ code: "conflict", property: "expect[0]" });
    expect(e.message).toMatch(/e1 .* is not as expected: vlan is 666, expected 101/);
    expect(await ovs.vsctl(["get", "port", "e1", "tag"])).toBe("666\n");
    const r = await d.apply([{ kind: "access", port: "e1", vlan: 101 }], { expect: [{ port: "e1", vlan: 666 }, { port: "e2", mode: "none", owner: undefined }] });
    expect(r.changed).toBe(true);
  });

  it("detects a change made between its read and its write (the ovs-vsctl compare-and-swap), retries and keeps both", async () => {
    await addPorts("br0", ["c1", "up1"]);
    const d = driver({}, {
      writeTimeoutSec: 1,
      hooks: { afterRead: async (attempt) => void (attempt === 0 && (await ovs.vsctl(["set", "port", "c1", "external_ids:lldp-peer=sw9"]))) },
    });
    const r = await d.apply([{ kind: "access", port: "c1", vlan: 101 }]);
    expect(r).toEqual({ transactions: 2, retries: 1, changed: true });
    expect(await vsctlPort("c1")).toEqual({ tag: 101, trunks: ["set", []], vlanMode: "access", ext: ["map", [["baremetal-owner", "stack-a"], ["lldp-peer", "sw9"]]] });

    // The ovsdb driver adds a VLAN to the uplink while ssh-cli is between read and write.
    await ovsdb().apply([{ kind: "trunk", port: "up1", vlans: [100] }]);
    const a = driver({}, { writeTimeoutSec: 1, hooks: { afterRead: async (n) => void (n === 0 && (await ovsdb().apply([{ kind: "trunk-add", port: "up1", vlans: [102] }]))) } });
    expect((await a.apply([{ kind: "trunk-add", port: "up1", vlans: [101] }])).retries).toBe(1);
    expect(await a.getPort("up1")).toMatchObject({ mode: "trunk", trunkVlans: [100, 101, 102] });
  });

  it("gives up with conflict after a bounded number of attempts, having written nothing", async () => {
    await addPorts("br0", ["busy"]);
    let n = 0;
    const d = driver({}, { writeTimeoutSec: 1, maxRetries: 1, hooks: { afterRead: async () => void (await ovs.vsctl(["set", "port", "busy", `tag=${3000 + ++n}`])) } });
    const e = await rejection(d.apply([{ kind: "access", port: "busy", vlan: 101 }]));
    expect(e.code).toBe("conflict");
    expect(e.message).toMatch(/switch ports busy on the ovs-vsctl switch root@127\.0\.0\.1:\d+ kept changing under us: .* 2 times in a row/);
    expect(n).toBe(2);
    expect(await vsctlPort("busy")).toMatchObject({ tag: 3002, ext: ["map", []] }); // theirs, untouched
  });

  it("names missing ports and bridges, and validates first", async () => {
    await addPorts("br0", ["n1"]);
    await addPorts("br1", ["elsewhere"]);
    const d = driver();
    const e = await rejection(d.apply([{ kind: "access", port: "n1", vlan: 101 }, { kind: "access", port: "ghost7", vlan: 101 }]));
    expect(e).toMatchObject({ code: "not-found", property: "changes[1].port" });
    expect(e.message).toBe(`switch port ghost7 does not exist on the ovs-vsctl switch root@127.0.0.1:${sshd.port}`);
    expect(await d.getPort("n1")).toMatchObject({ mode: "none" });
    expect((await rejection(d.apply([{ kind: "access", port: "elsewhere", vlan: 101 }]))).message).toMatch(/elsewhere is not a port of .* \(it belongs to another bridge\)/);
    expect(await rejection(driver({ bridge: "br7" }).listPorts())).toMatchObject({ code: "not-found", property: "bridge" });
    expect(await rejection(d.apply([{ kind: "access", port: "n1", vlan: 4095 }]))).toMatchObject({ code: "validation", property: "changes[0].vlan" });
    expect(() => driver({ dialect: "junos" })).toThrow(/dialect: one of ovs-vsctl, sonic, cumulus-nvue/);
  });

  it("refuses a wrong host key with a clear error naming the setting and showing the key seen", async () => {
    const other = "SHA256:" + "A".repeat(43);
    const e = await rejection(driver({ hostKey: other }).listPorts());
    expect(e).toMatchObject({ code: "tls", property: "hostKey" });
    expect(e.message).toContain(`presented host key ssh-ed25519 ${sshd.hostKeyFingerprint}`);
    expect(e.message).toContain(`not the one the hostKey setting expects (${other})`);
    // known_hosts text for another port: no key for this host.
    const wrongPort = sshd.knownHosts.replace(`]:${sshd.port} `, `]:${sshd.port + 1} `);
    expect(wrongPort).not.toBe(sshd.knownHosts);
    expect((await rejection(driver({ hostKey: wrongPort }).listPorts())).message).toMatch(/the hostKey setting has no key for \[127\.0\.0\.1\]:\d+/);
    // The right known_hosts line, and a bare public key line, are accepted.
    expect(await driver({ hostKey: `# ours\n${sshd.knownHosts}\n` }).getPort("zz")).toBeUndefined();
    expect(await driver({ hostKey: sshd.hostPublicKey }).getPort("zz")).toBeUndefined();
    // No hostKey: refused before connecting, unless verification is turned off explicitly.
    expect(() => driver({ hostKey: undefined })).toThrow(/needs its SSH host key to be verified/);
    expect(await driver({ hostKey: undefined, verifyTls: false }).getPort("zz")).toBeUndefined();
  });

  it("logs in with a password, and refuses a wrong one with an error that contains no secret", async () => {
    const login = sshd.passwordLogin!;
    const ok = driver({ address: `ssh://127.0.0.1:${sshd.port}`, username: login.user, password: login.password, privateKey: undefined, hostKey: sshd.knownHosts });
    await addPorts("br0", ["pw1"]);
    await ok.apply([{ kind: "access", port: "pw1", vlan: 77 }]);
    expect(await ovsdb().getPort("pw1")).toMatchObject({ mode: "access", vlan: 77, owner: "stack-a" });

    const wrong = `${login.password}-wrong`;
    const e = await rejection(driver({ address: `ssh://127.0.0.1:${sshd.port}`, username: login.user, password: wrong, privateKey: undefined }).listPorts());
    expect(e).toMatchObject({ code: "auth", property: "password" });
    expect(e.message).toBe(`the switch ${login.user}@127.0.0.1:${sshd.port} refused SSH authentication as ${login.user} (tried: password); check the username and the credentials`);
    const everything = JSON.stringify({ message: e.message, details: e.details, stack: e.stack });
    expect(everything).not.toContain(wrong);
    expect(everything).not.toContain(login.password);
    // root may log in with its key only: a password for root is refused the same way.
    const keyErr = await rejection(driver({ privateKey: undefined, password: "nope" }).listPorts());
    expect(keyErr.code).toBe("auth");
    expect(JSON.stringify({ m: keyErr.message, s: keyErr.stack })).not.toContain("nope");
  });
});

describe("VLAN isolation configured through the ssh-cli driver (real packets)", () => {
  let sshd: SshdInstance;
  let ovs: OvsInstance;
  let d: SshCliSwitchDriver;
  const reaches = async (from: OvsNode, to: OvsNode) => {
    for (let i = 0; i < 3; i++) if (await from.ping(to.ip)) return true;
    return false;
  };
  const isolated = async (from: OvsNode, to: OvsNode) => !(await from.ping(to.ip, { count: 2, timeoutSec: 1 }));

  beforeAll(async () => {
    [sshd, ovs] = await Promise.all([startSshd(), startOvs({ switches: 1 })]);
  });
  afterAll(async () => {
    await d?.close();
    await Promise.all([ovs?.stop(), sshd?.stop()]);
  });

  it("101 talks to 101, not to 102; moving a port over SSH moves its reachability", async () => {
    const [a1, a2, b1] = await Promise.all([
      ovs.addNode("a1", { bridge: "br0", ipv4: "10.78.1.11/24" }),
      ovs.addNode("a2", { bridge: "br0", ipv4: "10.78.1.12/24" }),
      ovs.addNode("b1", { bridge: "br0", ipv4: "10.78.1.21/24" }),
    ]);
    d = sshCliSwitchDriver(
      { address: `ssh://root@127.0.0.1:${sshd.port}`, dialect: "ovs-vsctl", bridge: "br0", owner: "packets", privateKey: sshd.privateKey, hostKey: sshd.hostKeyFingerprint },
      { ovsdbRemote: ovs.ovsdbUrl },
    );
    const r = await d.apply([
      { kind: "access", port: a1.port, vlan: 101 },
      { kind: "access", port: a2.port, vlan: 101 },
      { kind: "access", port: b1.port, vlan: 102 },
    ]);
    expect(r.transactions).toBe(1);
    expect([await reaches(a1, a2), await isolated(a1, b1), await isolated(b1, a2)]).toEqual([true, true, true]);
    await d.apply([{ kind: "access", port: b1.port, vlan: 101 }]);
    expect([await reaches(b1, a1), await reaches(a2, b1)]).toEqual([true, true]);
    await d.apply([{ kind: "reset", port: a2.port, quarantineVlan: 4000 }]);
    expect(await isolated(a1, a2)).toBe(true);
  });
});
