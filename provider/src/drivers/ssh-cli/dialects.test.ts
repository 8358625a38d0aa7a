/**
 * The ssh-cli dialects' pure parts, and the driver over a scripted transport: the sonic and
 * cumulus-nvue dialects against transcripts WRITTEN FROM THE VENDORS' DOCUMENTATION (fixtures/,
 * not captured from devices: these two dialects are unproven on real switches), host key
 * settings, addresses and shell quoting. The ovs-vsctl dialect is proven against real peers in
 * ssh-cli.test.ts.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createHmac, randomBytes } from "node:crypto";
import { BaremetalError, isBaremetalError } from "../../core/errors";
import type { SwitchChange } from "../kinds/switch";
import { CumulusNvueDialect, NVUE_SEPARATOR, parseVlanSet, vlanRanges } from "./cumulus-nvue";
import { parseHostKeySetting, sha256Fingerprint } from "./hostkeys";
import { vsctlValue } from "./ovs-vsctl";
import { SonicDialect } from "./sonic";
import { SshCliSwitchDriver } from "./switch";
import { ExecResult, parseSshAddress, shellQuote, SshTransport } from "./transport";

const fixture = (name: string) => fs.readFileSync(path.join(__dirname, "fixtures", name), "utf8");
const ok = (command: string, stdout: string): ExecResult => ({ command, code: 0, stdout, stderr: "", ms: 1 });

async function rejection(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return e;
  }
  throw new Error("expected a rejection");
}

/** A transport that answers reads from a transcript the test can change, and records writes. */
class ScriptedTransport {
  readonly where = "admin@tor1:22";
  readonly writes: string[] = [];
  readonly commands: string[] = [];
  constructor(
    public read: string,
    private readonly isRead: (cmd: string) => boolean,
    private readonly onWrite: (cmd: string) => ExecResult | void = () => undefined,
  ) {}
  async exec(command: string): Promise<ExecResult> {
    this.commands.push(command);
    if (this.isRead(command)) return ok(command, this.read);
    this.writes.push(command);
    return this.onWrite(command) ?? ok(command, "");
  }
  async close(): Promise<void> {}
}

describe("sonic dialect (transcripts written from SONiC's documented formats)", () => {
  const dialect = new SonicDialect();
  const running = fixture("sonic-runningconfiguration.json");

  it("reads ports, port channels, memberships, owners and the VLAN registry from CONFIG_DB", () => {
    const snap = dialect.parseRead(ok(dialect.readCommand(), running), undefined);
    expect(dialect.readCommand()).toBe("show runningconfiguration all");
    expect([...snap.ports.values()]).toEqual([
      { port: "Ethernet0", mode: "access", vlan: 101, owner: "stack-a", shutdown: false },
      { port: "Ethernet4", mode: "trunk", vlan: 1000, nativeUntagged: true, trunkVlans: [101, 102], shutdown: false },
      { port: "Ethernet8", mode: "none", shutdown: true },
      { port: "Ethernet12", mode: "none", shutdown: false },
      { port: "PortChannel01", mode: "trunk", trunkVlans: [102], shutdown: false },
    ]);
    expect([...snap.registry]).toEqual([
      [101, "tenant-a"],
      [102, "Vlan102"],
      [1000, "Vlan1000"],
    ]);
    expect(() => dialect.parseRead({ ...ok("x", "not json"), code: 0 }, undefined)).toThrow(/not JSON/);
    expect(() => dialect.parseRead({ ...ok("x", ""), code: 127, stderr: "show: command not found" }, undefined)).toThrow(/exit code 127\): show: command not found/);
  });

  it("writes a batch as one && chain (memberships, descriptions, config save) and verifies it by reading back", async () => {
    // The switch after the batch, as SONiC would show it (edited by hand from the fixture).
    const after = JSON.parse(running);
    after.VLAN.Vlan200 = { vlanid: "200", description: "tenant-c" };
    after.VLAN.Vlan103 = { vlanid: "103" };
    delete after.VLAN_MEMBER["Vlan101|Ethernet0"];
    delete after.PORT.Ethernet0.description;
    after.VLAN_MEMBER["Vlan200|Ethernet8"] = { tagging_mode: "untagged" };
    after.PORT.Ethernet8.description = "baremetal-owner=stack-x";
    after.VLAN_MEMBER["Vlan101|Ethernet12"] = { tagging_mode: "tagged" };
    after.VLAN_MEMBER["Vlan102|Ethernet12"] = { tagging_mode: "tagged" };
    after.VLAN_MEMBER["Vlan103|Ethernet12"] = { tagging_mode: "untagged" };
    after.PORT.Ethernet12.description = "baremetal-owner=stack-x";
    const t = new ScriptedTransport(running, (c) => c === "show runningconfiguration all", () => void (t.read = JSON.stringify(after)));
    const d = new SshCliSwitchDriver({ transport: t as unknown as SshTransport, dialect, owner: "stack-x" });
    const changes: SwitchChange[] = [
      { kind: "ensure-vlan", vlan: 200, name: "tenant-c" },
      { kind: "access", port: "Ethernet8", vlan: 200 },
      { kind: "trunk", port: "Ethernet12", vlans: [101, 102], nativeVlan: 103 },
      { kind: "reset", port: "Ethernet0" },
    ];
    expect(await d.apply(changes)).toEqual({ transactions: 1, retries: 0, changed: true });
    expect(t.writes).toHaveLength(1);
    expect(t.writes[0].split(" && ")).toEqual([
      "config vlan add 200",
      "sonic-db-cli CONFIG_DB hset 'VLAN|Vlan200' description tenant-c",
      "config vlan add 103",
      "config vlan member del 101 Ethernet0",
      "config vlan member add -u 200 Ethernet8",
      "sonic-db-cli CONFIG_DB hset 'PORT|Ethernet8' description baremetal-owner=stack-x",
      "config vlan member add 101 Ethernet12",
      "config vlan member add 102 Ethernet12",
      "config vlan member add -u 103 Ethernet12",
      "sonic-db-cli CONFIG_DB hset 'PORT|Ethernet12' description baremetal-owner=stack-x",
      "sonic-db-cli CONFIG_DB hdel 'PORT|Ethernet0' description",
      "config save -y",
    ]);
    // read, write, verifying read
    expect(t.commands).toEqual(["show runningconfiguration all", t.writes[0], "show runningconfiguration all"]);
    expect(await d.apply(changes)).toEqual({ transactions: 0, retries: 0, changed: false });
  });

  it("reports a conflict when the switch does not show what was written, and refuses what SONiC cannot express", async () => {
    const t = new ScriptedTransport(running, (c) => c.startsWith("show "));
    const d = new SshCliSwitchDriver({ transport: t as unknown as SshTransport, dialect });
    const e = await rejection(d.apply([{ kind: "access", port: "Ethernet8", vlan: 101 }]));
    expect(e.code).toBe("conflict");
    expect(e.message).toMatch(/does not show what we wrote .*: Ethernet8 reads .*"mode":"none".*, we wrote .*"mode":"access","vlan":101/);
    expect(await rejection(d.apply([{ kind: "delete-vlan", vlan: 102 }]))).toMatchObject({ code: "conflict", message: expect.stringMatching(/cannot delete VLAN 102 while ports are members of it \(Ethernet4, PortChannel01\)/) });
    expect((await rejection(d.apply([{ kind: "trunk", port: "Ethernet8", vlans: [5], nativeVlan: 6, nativeUntagged: false }]))).message).toMatch(/cannot send the native VLAN 6 of port Ethernet8 tagged/);
    expect(await rejection(d.apply([{ kind: "access", port: "Ethernet99", vlan: 5 }]))).toMatchObject({ code: "not-found", property: "changes[0].port" });
    // A failing command is the switch's refusal, named.
    const failing = new ScriptedTransport(running, (c) => c.startsWith("show "), (c) => ({ command: c, code: 1, stdout: "", stderr: "Error: Vlan200 doesn't exist", ms: 1 }));
    const f = await rejection(new SshCliSwitchDriver({ transport: failing as unknown as SshTransport, dialect }).apply([{ kind: "access", port: "Ethernet8", vlan: 101 }]));
    expect(f).toMatchObject({ code: "backend" });
    expect(f.message).toMatch(/SONiC refused the change \(exit code 1; commands before the failing one stay applied\): Error: Vlan200/);
  });
});

describe("cumulus-nvue dialect (transcripts written from NVIDIA's NVUE documentation)", () => {
  const dialect = new CumulusNvueDialect();
  const both = `${fixture("nvue-show-interface.json")}${NVUE_SEPARATOR}\n${fixture("nvue-config-show.json")}`;

  it("reads switch ports, their bridge domain settings, owners and the bridge's VLANs", () => {
    expect(dialect.readCommand()).toBe(`nv show interface -o json && echo '${NVUE_SEPARATOR}' && nv config show -o json`);
    const snap = dialect.parseRead(ok("nv", both), undefined);
    expect([...snap.ports.values()]).toEqual([
      { port: "swp1", mode: "access", vlan: 101, owner: "stack-a", shutdown: false },
      { port: "swp2", mode: "trunk", vlan: 10, nativeUntagged: true, trunkVlans: [101, 102, 103], shutdown: false },
      { port: "swp3", mode: "none", shutdown: true },
      { port: "swp4", mode: "trunk", shutdown: false }, // in the bridge without a VLAN list: every VLAN
      { port: "swp51", mode: "trunk", trunkVlans: [10], shutdown: false }, // untagged none
    ]);
    expect([...snap.registry]).toEqual([
      [10, "vlan10"],
      [101, "vlan101"],
      [102, "vlan102"],
      [103, "vlan103"],
    ]);
    expect(parseVlanSet({ "5": {}, "7-9": {} })).toEqual([5, 7, 8, 9]);
    expect(parseVlanSet("1,3-4")).toEqual([1, 3, 4]);
    expect(vlanRanges([22, 10, 20, 21, 4094])).toBe("10,20-22,4094");
  });

  it("stages the batch with nv set/unset and applies it with one nv config apply", async () => {
    const t = new ScriptedTransport(both, (c) => c.startsWith("nv show"));
    const d = new SshCliSwitchDriver({ transport: t as unknown as SshTransport, dialect, owner: "stack-x" });
    // The verifying read sees nothing changed: conflict, but the command is what we check here.
    await rejection(
      d.apply([
        { kind: "ensure-vlan", vlan: 300, name: "ignored-by-nvue" },
        { kind: "access", port: "swp3", vlan: 102 },
        { kind: "trunk", port: "swp4", vlans: [10, 20, 21, 22], nativeVlan: 101 },
        { kind: "reset", port: "swp1" },
      ]),
    );
    expect(t.writes[0].split(" && ")).toEqual([
      "nv set bridge domain br_default vlan 300",
      "nv set interface swp3 bridge domain br_default access 102",
      "nv set interface swp3 description baremetal-owner=stack-x",
      "nv unset interface swp4 bridge domain br_default",
      "nv set bridge domain br_default vlan 20",
      "nv set bridge domain br_default vlan 21",
      "nv set bridge domain br_default vlan 22",
      "nv set interface swp4 bridge domain br_default vlan 10,20-22",
      "nv set interface swp4 bridge domain br_default untagged 101",
      "nv set interface swp4 description baremetal-owner=stack-x",
      "nv unset interface swp1 bridge domain br_default",
      "nv unset interface swp1 description",
      "nv config apply -y",
    ]);
    // NVUE keeps no VLAN names: a rename has nothing to write.
    const t2 = new ScriptedTransport(both, (c) => c.startsWith("nv show"));
    expect(await new SshCliSwitchDriver({ transport: t2 as unknown as SshTransport, dialect }).apply([{ kind: "ensure-vlan", vlan: 10, name: "x" }])).toEqual({
      transactions: 0,
      retries: 0,
      changed: false,
    });
    expect((await rejection(d.apply([{ kind: "trunk", port: "swp3", vlans: [5], nativeVlan: 6, nativeUntagged: false }]))).message).toMatch(/NVUE cannot send the native VLAN 6/);
  });
});

describe("ovs-vsctl value syntax", () => {
  it("renders OVSDB wire values the way ovs-vsctl parses them", () => {
    expect(vsctlValue(101)).toBe("101");
    expect(vsctlValue(["set", []])).toBe("[]");
    expect(vsctlValue(["set", [1, 2]])).toBe("[1,2]");
    expect(vsctlValue("native-untagged")).toBe('"native-untagged"');
    expect(vsctlValue(["map", [["a b", 'q"x']]])).toBe('{"a b"="q\\"x"}');
  });
});

describe("SSH settings", () => {
  it("parses addresses and quotes arguments for the remote shell", () => {
    expect(parseSshAddress("ssh://admin@tor1:2222")).toMatchObject({ user: "admin", host: "tor1", port: 2222 });
    expect(parseSshAddress("10.0.0.1")).toMatchObject({ host: "10.0.0.1", port: 22 });
    expect(parseSshAddress("ssh://[fd00::1]:22?db=tcp:127.0.0.1:6640").query.get("db")).toBe("tcp:127.0.0.1:6640");
    expect(() => parseSshAddress("ssh://u:secret@h")).toThrow(/no password/);
    expect(() => parseSshAddress("ssh://u:secret@h")).not.toThrow(/secret/);
    expect(shellQuote("Ethernet1/1")).toBe("Ethernet1/1");
    expect(shellQuote("it's; rm -rf /")).toBe(`'it'\\''s; rm -rf /'`);
    expect(shellQuote("$(x)")).toBe("'$(x)'");
  });

  it("checks host keys by fingerprint, known_hosts (plain, wildcard, hashed, @revoked) and public key lines", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "hostkeys-"));
    try {
      execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "k")]);
      const pub = fs.readFileSync(path.join(dir, "k.pub"), "utf8").trim();
      const [type, b64] = pub.split(" ");
      const blob = Buffer.from(b64, "base64");
      const fp = execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", path.join(dir, "k.pub")], { encoding: "utf8" }).split(" ")[1];
      expect(sha256Fingerprint(blob)).toBe(fp); // the same text as OpenSSH
      expect(parseHostKeySetting(fp, "hostKey").check("h", 22, blob)).toBeUndefined();
      expect(parseHostKeySetting(`SHA256:${"B".repeat(43)}, ${fp}`, "hostKey").check("h", 22, blob)).toBeUndefined();
      expect(parseHostKeySetting(pub, "hostKey").check("anything", 2222, blob)).toBeUndefined();
      expect(parseHostKeySetting(`tor*.lab,!tor9.lab ${type} ${b64}`, "hostKey").check("tor1.lab", 22, blob)).toBeUndefined();
      expect(parseHostKeySetting(`tor*.lab,!tor9.lab ${type} ${b64}`, "hostKey").check("tor9.lab", 22, blob)).toMatch(/has no key for tor9.lab/);
      expect(parseHostKeySetting(`[tor1]:2222 ${type} ${b64}`, "hostKey").check("tor1", 2222, blob)).toBeUndefined();
      const salt = randomBytes(20);
      const hashed = `|1|${salt.toString("base64")}|${createHmac("sha1", salt).update("[tor1]:2222").digest("base64")}`;
      expect(parseHostKeySetting(`${hashed} ${type} ${b64}`, "hostKey").check("tor1", 2222, blob)).toBeUndefined();
      expect(parseHostKeySetting(`${hashed} ${type} ${b64}`, "hostKey").check("tor1", 22, blob)).toMatch(/no key for tor1/);
      expect(parseHostKeySetting(`@revoked * ${type} ${b64}\n* ${type} ${b64}`, "hostKey").check("tor1", 22, blob)).toMatch(/is marked @revoked/);
      expect(() => parseHostKeySetting("SHA256:short", "fabrics.f.switches.s.hostKey")).toThrow(/SHA256: and 43 base64 characters/);
      expect(() => parseHostKeySetting("tor1 ssh-ed25519", "hostKey")).toThrow(/not a known_hosts line/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
