/**
 * Test harness: a real Open vSwitch (Debian's `openvswitch-switch`, 3.1) as the top-of-rack switch
 * peer, with network-namespace "nodes" that send real packets through it.
 *
 *   const ovs = await startOvs({ switches: 1 });          // bridge "br0", datapath_type=netdev
 *   const a = await ovs.addNode("a1", { bridge: "br0", ipv4: "10.77.1.11/24" });
 *   const b = await ovs.addNode("b1", { bridge: "br0", ipv4: "10.77.1.12/24" });
 *   await ovs.vsctl(["set", "port", b.port, "tag=102"]);
 *   expect(await a.ping("10.77.1.12")).toBe(false);
 *   ... talk OVSDB JSON-RPC (RFC 7047) to ovs.ovsdbPort on 127.0.0.1 ...
 *   await ovs.stop();
 *
 * Layout of one instance (nothing shared with another instance, nothing in /var/run):
 * - A private temp directory holds the database, ovsdb-server's unix socket, both daemons' pidfiles,
 *   unixctl sockets and logs, and the bridges' OpenFlow management sockets (<bridge>.mgmt).
 *   OVS_RUNDIR, OVS_DBDIR, OVS_LOGDIR and OVS_SYSCONFDIR point there for every OVS tool we run, and
 *   the daemons get explicit --pidfile/--unixctl/--log-file, so ovs-vsctl, ovs-ofctl (br0 ->
 *   <dir>/br0.mgmt) and ovs-appctl reach this instance and no other.
 * - ovsdb-server runs in the host's network namespace and listens on its unix socket and on
 *   ptcp:<free port>:127.0.0.1 (loopback only), so a TypeScript OVSDB client can connect over TCP.
 *   Readiness: a token written through the unix socket (`ovs-vsctl --no-wait init -- set
 *   Open_vSwitch . external_ids:...`) is read back over TCP with a JSON-RPC `transact`, which
 *   proves the TCP port is this server's. ovsdb-server does not exit when its TCP port is taken (it
 *   logs "listen failed" and keeps retrying), so that log line counts as an early exit and the
 *   start is retried on another port (onFreePort).
 * - ovs-vswitchd runs inside a network namespace of its own (the "switch namespace", `netns`),
 *   started through `ip netns exec` (which execs, so the PID is the daemon's). Why: the userspace
 *   datapath creates real tap devices for its internals, `ovs-netdev` and one per bridge named like
 *   the bridge; in the host namespace two instances would fight over `ovs-netdev`/`br0`, and those
 *   taps outlive a SIGTERMed ovs-vswitchd (measured: they stay behind in the host namespace).
 *   In the switch namespace they die with it, and bridge/port names only need to be unique per
 *   instance.
 * - Userspace datapath only: every bridge is created with datapath_type=netdev. No kernel module
 *   is needed (there is none here: ovs-vswitchd logs "Generic Netlink family 'ovs_datapath' does not
 *   exist", an INFO line, and the netdev datapath works without it). Readiness of ovs-vswitchd:
 *   its unixctl answers `version`, then an ovs-vsctl write that waits for ovs-vswitchd to apply it.
 *
 * Nodes: `addNode` creates a network namespace (named `ovsh-<pid>-<instance>-<node>`, unique per test
 * process and instance) and a veth pair created directly with one end (`eth0`, the address) in the
 * node's namespace and the other end (the OVS port) in the switch namespace: no interface of ours
 * ever appears in the host's namespace, even for a moment. The switch end is an ordinary
 * `type=system` port of the netdev bridge: ovs-vswitchd reads and writes it through an AF_PACKET
 * socket. Measured on this kernel:
 * - veth as `type=system` port: ARP/ICMP pass at once; TCP does NOT until transmit checksum offload
 *   is turned off on the node's end (`ethtool -K eth0 tx off`, done here): the node's kernel leaves
 *   the checksum to "hardware", the userspace datapath of OVS 3.1 forwards the frame as read from
 *   AF_PACKET, and the receiving node drops it for its bad checksum (OVS's own system-userspace
 *   tests do the same `ethtool -K ... tx off`). With it off, 1 MB of TCP goes through.
 * - `type=internal` ports (taps) moved into the node's namespace also pass packets (ovs-vswitchd
 *   keeps the tap's fd), but ovs-vswitchd then manages them by a name that no longer exists in its
 *   namespace: link_state "down", mtu_request ignored, ethtool "No such device" warnings on every
 *   reconfiguration. Not used: a veth is also the honest model of a cable to a host's NIC.
 * - Bridge VLAN filtering and 802.1q sub-interfaces do not exist in this kernel, and none is needed:
 *   tagging is OVS's own (access `tag=`, `trunks=`), tagged frames cross veth trunks as plain frames.
 *
 * Trunks between switches: `linkBridges` joins two bridges of one instance, `connectSwitches` two
 * instances (two separate switches). Default kind "veth": a veth pair inside the switch
 * namespace(s), both ends `type=system` ports, so 802.1Q-tagged frames really cross a kernel link
 * as they would cross a cable between two top-of-rack switches, and it works between instances.
 * Kind "patch" (`type=patch`, `options:peer`): OVS's internal shortcut between bridges of one
 * ovs-vswitchd; no frame leaves the process. Both were measured to honour `trunks=`.
 *
 * Addresses: only private IPv4 (10/8, 172.16/12, 192.168/16), only inside namespaces created here;
 * ovsdb-server listens on 127.0.0.1 only. Cleanup: stop() kills both daemons by PID (SIGTERM, then
 * SIGKILL after a grace period), deletes every namespace of the instance (which destroys its veths
 * and taps) and the temp directory; it is idempotent. Namespaces are also deleted when the test
 * process exits (an exit hook; the daemons are killed by processes.ts's), and a later start deletes
 * `ovsh-<pid>-*` namespaces whose process no longer exists (a test process killed outright).
 *
 * Needs root (network namespaces) and the Debian packages openvswitch-switch, iproute2,
 * iputils-ping and ethtool (scripts/bootstrap.sh installs them). Node built-ins only.
 */
import { ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { EarlyExit, onFreePort, track, untrack, delay, describeExit, tail } from "./processes";

export interface OvsOptions {
  /** Bridges created at start, named br0, br1, ... (default 1; 0 for none). */
  switches?: number;
  /** Readiness timeout of each daemon in ms (default 30000). */
  startTimeoutMs?: number;
}

export interface OvsNodeOptions {
  /** The bridge the node's port is added to. */
  bridge: string;
  /** Name of the OVS port (the veth end in the switch namespace); default: the node's name. At most 15 characters. */
  port?: string;
  /** The node's address as CIDR, private only, e.g. 10.77.1.11/24. */
  ipv4: string;
  /** MAC of the node's eth0 (default: a random one from the kernel). */
  mac?: string;
}

export interface OvsNode {
  name: string;
  /** The node's network namespace (its interface is `eth0`). */
  netns: string;
  /** The OVS port name (the switch end of the veth pair). */
  port: string;
  bridge: string;
  /** As given, CIDR. */
  ipv4: string;
  /** The bare address (ipv4 without the prefix length). */
  ip: string;
  /** MAC of the node's eth0. */
  mac: string;
  /** `ping -c count -W timeoutSec` from inside the node's namespace; true when a reply came. */
  ping(targetIp: string, opts?: { count?: number; timeoutSec?: number }): Promise<boolean>;
  /** Runs a command inside the node's namespace (`ip netns exec`), returns its stdout. */
  exec(args: string[], opts?: { timeoutMs?: number }): Promise<string>;
  /** Removes the port from OVS and deletes the namespace (and so the veth pair). Idempotent. */
  remove(): Promise<void>;
}

export interface OvsLinkOptions {
  /** "veth" (default): a veth pair, both ends system ports. "patch": OVS patch ports (one instance only). */
  kind?: "veth" | "patch";
  /** VLANs the link carries (`trunks=` on both ports); default: every VLAN (OVS's default for an untagged port). */
  trunks?: number[];
  /** Port names on the two sides (default trunk<N>a / trunk<N>b). At most 15 characters. */
  names?: [string, string];
}

export interface OvsLink {
  kind: "veth" | "patch";
  /** Port names, on the first and the second bridge. */
  ports: [string, string];
  bridges: [string, string];
  /** Deletes both ports (and the veth pair). Idempotent; tolerates a stopped instance. */
  remove(): Promise<void>;
}

export interface OvsInstance {
  /** OVSDB remote for a TCP client: tcp:127.0.0.1:PORT. */
  ovsdbUrl: string;
  ovsdbPort: number;
  /** ovsdb-server's unix socket. */
  socket: string;
  /** The instance's temp directory; removed by stop(). */
  dir: string;
  /** The switch namespace, where ovs-vswitchd and every port (veth end, tap) lives. */
  netns: string;
  pids: { ovsdbServer: number; vswitchd: number };
  /** Bridges created by startOvs (`switches`). */
  bridges: string[];
  /** Runs ovs-vsctl against this instance (waits for ovs-vswitchd to apply writes); returns stdout. */
  vsctl(args: string[]): Promise<string>;
  /** Runs ovs-ofctl against this instance's bridges (<dir>/<bridge>.mgmt). */
  ofctl(args: string[]): Promise<string>;
  /** Runs ovs-appctl against this instance's ovs-vswitchd (e.g. ["fdb/show", "br0"]). */
  appctl(args: string[]): Promise<string>;
  /** Creates a bridge with datapath_type=netdev; returns its name. */
  addBridge(name: string): Promise<string>;
  /** A network-namespace node attached to `bridge` through a veth pair. */
  addNode(name: string, opts: OvsNodeOptions): Promise<OvsNode>;
  /** A trunk between two bridges of this instance. */
  linkBridges(bridgeA: string, bridgeB: string, opts?: OvsLinkOptions): Promise<OvsLink>;
  /** Both daemons' logs so far (for failure messages). */
  log(): string;
  /** SIGTERM both daemons, SIGKILL after a grace period, delete the namespaces and the temp dir. Idempotent. */
  stop(): Promise<void>;
}

const STOP_GRACE_MS = 5000;
const NETNS_PREFIX = "ovsh";
const NETNS_DIR = "/var/run/netns";
const IFNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;
const NODE_NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;

let instances = 0;
/** Every namespace and temp dir we created and did not delete yet: deleted at process exit. */
const liveNamespaces = new Set<string>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;

// ---- binaries ------------------------------------------------------------------------------

function findBinary(name: string): string {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
  for (const d of dirs) {
    if (!d) continue;
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  throw new Error(`${name} not found on PATH or in /usr/sbin: run scripts/bootstrap.sh (Debian packages openvswitch-switch iproute2 iputils-ping ethtool)`);
}

interface Tools {
  ovsdbTool: string;
  ovsdbServer: string;
  vswitchd: string;
  vsctl: string;
  ofctl: string;
  appctl: string;
  ip: string;
  ping: string;
  ethtool: string;
  schema: string;
}

let toolsCache: Tools | undefined;
function tools(): Tools {
  if (toolsCache) return toolsCache;
  const schemaDirs = [process.env.OVS_PKGDATADIR, "/usr/share/openvswitch", "/usr/local/share/openvswitch"];
  const schema = schemaDirs.filter((d): d is string => !!d).map((d) => path.join(d, "vswitch.ovsschema")).find((p) => fs.existsSync(p));
  if (!schema) throw new Error("vswitch.ovsschema not found (OVS_PKGDATADIR, /usr/share/openvswitch): run scripts/bootstrap.sh");
  toolsCache = {
    ovsdbTool: findBinary("ovsdb-tool"),
    ovsdbServer: findBinary("ovsdb-server"),
    vswitchd: findBinary("ovs-vswitchd"),
    vsctl: findBinary("ovs-vsctl"),
    ofctl: findBinary("ovs-ofctl"),
    appctl: findBinary("ovs-appctl"),
    ip: findBinary("ip"),
    ping: findBinary("ping"),
    ethtool: findBinary("ethtool"),
    schema,
  };
  return toolsCache;
}

// ---- namespaces ----------------------------------------------------------------------------

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    // The daemons are SIGKILLed by processes.ts's hook; a namespace whose ovs-vswitchd is still
    // dying is freed by the kernel as soon as it is gone (`ip netns del` only drops the name).
    for (const ns of liveNamespaces) {
      try {
        execFileSync(toolsCache?.ip ?? "ip", ["netns", "del", ns], { stdio: "ignore", timeout: 5000 });
      } catch {
        /* gone */
      }
    }
    for (const dir of liveDirs) fs.rmSync(dir, { recursive: true, force: true });
  });
}

async function addNetns(ns: string): Promise<void> {
  installExitHook();
  liveNamespaces.add(ns);
  await run(tools().ip, ["netns", "add", ns]);
  await run(tools().ip, ["-n", ns, "link", "set", "lo", "up"]);
}

async function delNetns(ns: string): Promise<void> {
  if (fs.existsSync(path.join(NETNS_DIR, ns))) {
    const r = await runStatus(tools().ip, ["netns", "del", ns]);
    if (r.code !== 0 && fs.existsSync(path.join(NETNS_DIR, ns))) {
      throw new Error(`ip netns del ${ns} failed: ${r.stderr.trim()}`);
    }
  }
  liveNamespaces.delete(ns);
}

/** Deletes ovsh-<pid>-* namespaces left by test processes that were killed outright. */
async function sweepStaleNamespaces(): Promise<void> {
  let names: string[];
  try {
    names = fs.readdirSync(NETNS_DIR);
  } catch {
    return;
  }
  const re = new RegExp(`^${NETNS_PREFIX}-(\\d+)-`);
  for (const ns of names) {
    const m = re.exec(ns);
    if (!m || Number(m[1]) === process.pid || pidAlive(Number(m[1]))) continue;
    await runStatus(tools().ip, ["netns", "del", ns]);
  }
}

// ---- start ---------------------------------------------------------------------------------

export async function startOvs(opts: OvsOptions = {}): Promise<OvsInstance> {
  const t = tools();
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    throw new Error("the Open vSwitch harness needs root (it creates network namespaces)");
  }
  const switches = opts.switches ?? 1;
  if (!Number.isInteger(switches) || switches < 0 || switches > 16) throw new Error(`switches must be 0..16, got ${switches}`);
  await sweepStaleNamespaces();

  const id = `${NETNS_PREFIX}-${process.pid}-${++instances}${randomBytes(2).toString("hex")}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ovs-"));
  installExitHook();
  liveDirs.add(dir);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    OVS_RUNDIR: dir,
    OVS_DBDIR: dir,
    OVS_LOGDIR: dir,
    OVS_SYSCONFDIR: dir,
    LANG: "C",
    LC_ALL: "C",
  };
  const db = path.join(dir, "conf.db");
  const socket = path.join(dir, "db.sock");
  const swNs = `${id}-sw`;
  const namespaces = new Set<string>();
  let ovsdb: Daemon | undefined;
  let vswitchd: Daemon | undefined;
  const timeout = opts.startTimeoutMs ?? 30000;

  const log = () =>
    ["ovsdb-server.log", "ovsdb-server.out", "ovs-vswitchd.log", "ovs-vswitchd.out"]
      .map((f) => {
        const text = readOr(path.join(dir, f));
        return text ? `== ${f} ==\n${tail(text)}` : "";
      })
      .filter(Boolean)
      .join("\n");

  const vsctl = (args: string[]) => run(t.vsctl, [`--db=unix:${socket}`, "--timeout=20", ...args], { env });
  const ofctl = (args: string[]) => run(t.ofctl, args, { env });
  const appctl = (args: string[]) => run(t.appctl, ["-t", path.join(dir, "ovs-vswitchd.ctl"), ...args], { env });

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      await Promise.all([vswitchd?.stop(), ovsdb?.stop()]);
      const problems: string[] = [];
      for (const ns of [...namespaces]) {
        try {
          await delNetns(ns);
          namespaces.delete(ns);
        } catch (err) {
          problems.push((err as Error).message);
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
      liveDirs.delete(dir);
      if (problems.length) throw new Error(`Open vSwitch harness cleanup: ${problems.join("; ")}`);
    })());

  try {
    await run(t.ovsdbTool, ["create", db, t.schema], { env });
    const token = randomBytes(8).toString("hex");
    const started = await onFreePort(async (port) => {
      const d = spawnDaemon("ovsdb-server", t.ovsdbServer, [
        db,
        `--remote=punix:${socket}`,
        `--remote=ptcp:${port}:127.0.0.1`,
        // As Debian's ovs-ctl does: managers configured in the database add remotes.
        "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
        `--pidfile=${path.join(dir, "ovsdb-server.pid")}`,
        `--unixctl=${path.join(dir, "ovsdb-server.ctl")}`,
        `--log-file=${path.join(dir, "ovsdb-server.log")}`,
        "-vconsole:off",
      ], dir, env);
      try {
        await ovsdbReady(d, port, socket, token, t, env, timeout, dir);
      } catch (err) {
        await d.stop();
        throw err;
      }
      return { d, port };
    });
    ovsdb = started.d;
    const port = started.port;

    namespaces.add(swNs); // first: a failure half-way still deletes it
    await addNetns(swNs);
    // `ip netns exec` execs ovs-vswitchd in the switch namespace: the PID is the daemon's.
    vswitchd = spawnDaemon("ovs-vswitchd", t.ip, [
      "netns", "exec", swNs, t.vswitchd, `unix:${socket}`,
      `--pidfile=${path.join(dir, "ovs-vswitchd.pid")}`,
      `--unixctl=${path.join(dir, "ovs-vswitchd.ctl")}`,
      `--log-file=${path.join(dir, "ovs-vswitchd.log")}`,
      "-vconsole:off",
    ], dir, env);
    await vswitchdReady(vswitchd, vsctl, appctl, timeout);

    const inst: OvsInstance = {
      ovsdbUrl: `tcp:127.0.0.1:${port}`,
      ovsdbPort: port,
      socket,
      dir,
      netns: swNs,
      pids: { ovsdbServer: ovsdb.pid, vswitchd: vswitchd.pid },
      bridges: [],
      vsctl,
      ofctl,
      appctl,
      log,
      stop,
      addBridge: async (name) => {
        checkIfName(name, "bridge name");
        await vsctl(["add-br", name, "--", "set", "bridge", name, "datapath_type=netdev"]);
        return name;
      },
      addNode: (name, nodeOpts) => addNode(inst, id, namespaces, name, nodeOpts),
      linkBridges: (a, b, linkOpts) => link(inst, a, inst, b, linkOpts ?? {}),
    };
    for (let i = 0; i < switches; i++) inst.bridges.push(await inst.addBridge(`br${i}`));
    return inst;
  } catch (err) {
    const logs = log();
    await stop().catch(() => undefined);
    if (err instanceof Error && logs) err.message += `\n${logs}`;
    throw err;
  }
}

/** A trunk between bridges of two instances (two switches): a veth pair across their switch namespaces. */
export function connectSwitches(a: OvsInstance, bridgeA: string, b: OvsInstance, bridgeB: string, opts: Omit<OvsLinkOptions, "kind"> = {}): Promise<OvsLink> {
  return link(a, bridgeA, b, bridgeB, { ...opts, kind: "veth" });
}

// ---- daemons -------------------------------------------------------------------------------

interface Daemon {
  name: string;
  pid: number;
  child: ChildProcess;
  exited(): boolean;
  exitedPromise: Promise<void>;
  stop(): Promise<void>;
}

function spawnDaemon(name: string, cmd: string, args: string[], dir: string, env: NodeJS.ProcessEnv): Daemon {
  const outFd = fs.openSync(path.join(dir, `${name}.out`), "a");
  let child: ChildProcess;
  try {
    child = spawn(cmd, args, { cwd: dir, env, stdio: ["ignore", outFd, outFd] });
  } finally {
    fs.closeSync(outFd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not spawn ${cmd}`);
  track(child);
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
  }).then(() => {
    exited = true;
    untrack(child);
  });
  child.once("error", () => undefined); // spawn errors surface as an early exit
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      if (exited) return;
      signal(pid, "SIGTERM");
      const graceful = await Promise.race([exitedPromise.then(() => true), delay(STOP_GRACE_MS).then(() => false)]);
      if (!graceful) {
        signal(pid, "SIGKILL");
        await exitedPromise;
      }
    })());
  return { name, pid, child, exited: () => exited, exitedPromise, stop };
}

async function ovsdbReady(
  d: Daemon,
  port: number,
  socket: string,
  token: string,
  t: Tools,
  env: NodeJS.ProcessEnv,
  timeout: number,
  dir: string,
): Promise<void> {
  const logFile = path.join(dir, "ovsdb-server.log");
  const deadline = Date.now() + timeout;
  let initialised = false;
  let lastProblem = "no answer yet";
  for (;;) {
    if (d.exited()) {
      throw new EarlyExit(`ovsdb-server exited before it was ready (${describeExit(d.child)})`);
    }
    // It keeps running when its TCP port is taken, retrying the listen: count that as dying early.
    if (readOr(logFile).includes(`ptcp:${port}:127.0.0.1: listen failed`)) {
      throw new EarlyExit(`ovsdb-server could not listen on 127.0.0.1:${port} (taken)`);
    }
    if (Date.now() > deadline) throw new Error(`ovsdb-server not ready after ${timeout} ms (${lastProblem})`);
    if (!initialised && fs.existsSync(socket)) {
      const r = await runStatus(t.vsctl, [
        `--db=unix:${socket}`, "--timeout=5", "--no-wait", "init",
        "--", "set", "Open_vSwitch", ".", `external_ids:baremetal-harness=${token}`,
      ], { env });
      if (r.code === 0) initialised = true;
      else lastProblem = `ovs-vsctl init: ${r.stderr.trim()}`;
    }
    if (initialised) {
      try {
        const reply = await jsonRpc(port, "transact", [
          "Open_vSwitch",
          { op: "select", table: "Open_vSwitch", where: [], columns: ["external_ids"] },
        ]);
        const rows = (reply as [{ rows?: { external_ids: unknown }[] }])[0]?.rows ?? [];
        const ids = rows[0]?.external_ids as ["map", [string, string][]] | undefined;
        if (ids?.[1].some(([k, v]) => k === "baremetal-harness" && v === token)) return;
        lastProblem = `127.0.0.1:${port} answers without our token: ${JSON.stringify(reply)}`;
      } catch (err) {
        lastProblem = `OVSDB over TCP: ${(err as Error).message}`;
      }
    }
    await delay(25);
  }
}

async function vswitchdReady(
  d: Daemon,
  vsctl: (args: string[]) => Promise<string>,
  appctl: (args: string[]) => Promise<string>,
  timeout: number,
): Promise<void> {
  const deadline = Date.now() + timeout;
  let lastProblem = "no answer yet";
  for (;;) {
    if (d.exited()) throw new Error(`ovs-vswitchd exited before it was ready (${describeExit(d.child)})`);
    if (Date.now() > deadline) throw new Error(`ovs-vswitchd not ready after ${timeout} ms (${lastProblem})`);
    try {
      await appctl(["version"]);
      break;
    } catch (err) {
      lastProblem = (err as Error).message;
    }
    await delay(25);
  }
  // A write without --no-wait returns once ovs-vswitchd has applied the configuration (cur_cfg).
  const applied = vsctl([`--timeout=${Math.max(1, Math.ceil((deadline - Date.now()) / 1000))}`, "set", "Open_vSwitch", ".", "external_ids:baremetal-harness-vswitchd=ready"]);
  const outcome = await Promise.race([applied.then(() => "ok" as const, (err: Error) => err), d.exitedPromise.then(() => "exited" as const)]);
  if (outcome === "exited") throw new Error(`ovs-vswitchd exited before it was ready (${describeExit(d.child)})`);
  if (outcome !== "ok") throw new Error(`ovs-vswitchd did not apply the configuration: ${outcome.message}`);
}

/** One JSON-RPC request to ovsdb-server over TCP, the way a client of ours will talk to it. */
function jsonRpc(port: number, method: string, params: unknown[], timeoutMs = 2000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    let buf = "";
    const done = (err: Error | undefined, value?: unknown) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => done(new Error(`no reply within ${timeoutMs} ms`)), timeoutMs);
    sock.setEncoding("utf8");
    sock.once("error", (err) => done(err));
    sock.once("connect", () => sock.write(JSON.stringify({ id: 1, method, params })));
    sock.on("data", (chunk: string) => {
      buf += chunk;
      let msg: { id?: unknown; result?: unknown; error?: unknown };
      try {
        msg = JSON.parse(buf);
      } catch {
        return; // incomplete
      }
      buf = "";
      if (msg.id !== 1) return;
      if (msg.error) done(new Error(`${method}: ${JSON.stringify(msg.error)}`));
      else done(undefined, msg.result);
    });
  });
}

// ---- nodes and links -----------------------------------------------------------------------

async function addNode(inst: OvsInstance, id: string, namespaces: Set<string>, name: string, opts: OvsNodeOptions): Promise<OvsNode> {
  const t = tools();
  if (!NODE_NAME.test(name)) throw new Error(`node name must match ${NODE_NAME}, got ${JSON.stringify(name)}`);
  const port = opts.port ?? name;
  checkIfName(port, "port name (the node's name unless `port` is given)");
  const ip = privateCidr(opts.ipv4);
  if (opts.mac !== undefined && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(opts.mac)) throw new Error(`mac must be aa:bb:cc:dd:ee:ff, got ${JSON.stringify(opts.mac)}`);
  const netns = `${id}-${name}`;
  if (namespaces.has(netns)) throw new Error(`node ${name} exists already`);

  namespaces.add(netns);
  let portAdded = false; // never delete a port of the same name that is not ours
  let removed: Promise<void> | undefined;
  const remove = (): Promise<void> =>
    (removed ??= (async () => {
      if (portAdded) await inst.vsctl(["--if-exists", "del-port", opts.bridge, port]).catch(() => undefined);
      await delNetns(netns); // destroys the veth pair, both ends
      namespaces.delete(netns);
    })());
  try {
    await addNetns(netns);
    // Created directly in the two namespaces: no name of ours ever exists in the host's namespace.
    await run(t.ip, [
      "link", "add", port, "netns", inst.netns, "type", "veth",
      "peer", "name", "eth0", ...(opts.mac ? ["address", opts.mac] : []), "netns", netns,
    ]);
    await run(t.ip, ["-n", netns, "addr", "add", opts.ipv4, "dev", "eth0"]);
    // See the header: the userspace datapath does not complete offloaded checksums.
    await run(t.ip, ["netns", "exec", netns, t.ethtool, "-K", "eth0", "tx", "off"]);
    await run(t.ip, ["-n", netns, "link", "set", "eth0", "up"]);
    await run(t.ip, ["-n", inst.netns, "link", "set", port, "up"]);
    portAdded = true;
    await inst.vsctl(["add-port", opts.bridge, port]);
    const info = JSON.parse(await run(t.ip, ["-n", netns, "-j", "link", "show", "eth0"])) as { address: string }[];
    const mac = info[0].address;
    return {
      name,
      netns,
      port,
      bridge: opts.bridge,
      ipv4: opts.ipv4,
      ip,
      mac,
      remove,
      exec: (args, o) => run(t.ip, ["netns", "exec", netns, ...args], { timeoutMs: o?.timeoutMs }),
      ping: async (target, o = {}) => {
        if (!net.isIP(target)) throw new Error(`ping target must be an IP address, got ${JSON.stringify(target)}`);
        const count = o.count ?? 1;
        const w = o.timeoutSec ?? 1;
        const r = await runStatus(t.ip, [
          "netns", "exec", netns, t.ping, "-n", "-q", "-c", String(count), "-W", String(w),
          ...(count > 1 ? ["-i", "0.2"] : []), target,
        ], { timeoutMs: (count * (w + 0.2) + 10) * 1000 });
        return r.code === 0;
      },
    };
  } catch (err) {
    await remove().catch(() => undefined);
    throw err;
  }
}

const linkCounters = new WeakMap<OvsInstance, number>();

async function link(a: OvsInstance, bridgeA: string, b: OvsInstance, bridgeB: string, opts: OvsLinkOptions): Promise<OvsLink> {
  const t = tools();
  const kind = opts.kind ?? "veth";
  if (kind === "patch" && a !== b) throw new Error("patch ports join bridges of one instance only; use a veth link between instances");
  if (opts.trunks !== undefined) {
    if (!opts.trunks.length) throw new Error("trunks must list at least one VLAN (leave it out for all VLANs)");
    for (const v of opts.trunks) if (!Number.isInteger(v) || v < 0 || v > 4095) throw new Error(`VLAN must be 0..4095, got ${v}`);
  }
  const n = (linkCounters.get(a) ?? 0) + 1;
  linkCounters.set(a, n);
  if (b !== a) linkCounters.set(b, Math.max(linkCounters.get(b) ?? 0, n));
  const [nameA, nameB] = opts.names ?? [`trunk${n}a`, `trunk${n}b`];
  checkIfName(nameA, "link port name");
  checkIfName(nameB, "link port name");
  const trunkArgs = (p: string) => (opts.trunks ? ["--", "set", "port", p, `trunks=${opts.trunks.join(",")}`] : []);

  // What this call created, so that a failure (a name already taken) never removes someone else's.
  let portsAdded = false;
  let vethAdded = false;
  let removed: Promise<void> | undefined;
  const remove = (): Promise<void> =>
    (removed ??= (async () => {
      if (portsAdded) {
        await a.vsctl(["--if-exists", "del-port", bridgeA, nameA]).catch(() => undefined);
        await b.vsctl(["--if-exists", "del-port", bridgeB, nameB]).catch(() => undefined);
      }
      if (vethAdded) await runStatus(t.ip, ["-n", a.netns, "link", "del", nameA]); // both ends go
    })());
  try {
    if (kind === "patch") {
      await a.vsctl([
        "add-port", bridgeA, nameA, "--", "set", "interface", nameA, "type=patch", `options:peer=${nameB}`, ...trunkArgs(nameA),
        "--", "add-port", bridgeB, nameB, "--", "set", "interface", nameB, "type=patch", `options:peer=${nameA}`, ...trunkArgs(nameB),
      ]);
      portsAdded = true; // one transaction: both or neither
    } else {
      await run(t.ip, ["link", "add", nameA, "netns", a.netns, "type", "veth", "peer", "name", nameB, "netns", b.netns]);
      vethAdded = true;
      await run(t.ip, ["-n", a.netns, "link", "set", nameA, "up"]);
      await run(t.ip, ["-n", b.netns, "link", "set", nameB, "up"]);
      portsAdded = true;
      await a.vsctl(["add-port", bridgeA, nameA, ...trunkArgs(nameA)]);
      await b.vsctl(["add-port", bridgeB, nameB, ...trunkArgs(nameB)]);
    }
  } catch (err) {
    await remove().catch(() => undefined);
    throw err;
  }
  return { kind, ports: [nameA, nameB], bridges: [bridgeA, bridgeB], remove };
}

// ---- helpers -------------------------------------------------------------------------------

function checkIfName(name: string, what: string): void {
  if (!IFNAME.test(name) || name === "lo" || name === "ovs-netdev") {
    throw new Error(`${what} must be an interface name (1-15 of [A-Za-z0-9_.-], not lo/ovs-netdev), got ${JSON.stringify(name)}`);
  }
}

/** Checks that `cidr` is a private IPv4 address with a prefix length; returns the bare address. */
function privateCidr(cidr: string): string {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  const o = m ? m.slice(1, 5).map(Number) : [];
  if (!m || o.some((x) => x > 255) || Number(m[5]) < 8 || Number(m[5]) > 30) {
    throw new Error(`ipv4 must be an IPv4 CIDR such as 10.77.1.11/24 (prefix /8../30), got ${JSON.stringify(cidr)}`);
  }
  const isPrivate = o[0] === 10 || (o[0] === 172 && o[1] >= 16 && o[1] <= 31) || (o[0] === 192 && o[1] === 168);
  if (!isPrivate) throw new Error(`ipv4 must be private (10/8, 172.16/12, 192.168/16), got ${cidr}`);
  return o.join(".");
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runStatus(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: o.env, timeout: o.timeoutMs ?? 30000, maxBuffer: 16 * 1024 * 1024, killSignal: "SIGKILL" }, (err, stdout, stderr) => {
      // err.code: the exit code, or a string (ENOENT, ...) when it did not run; null when killed.
      const code = !err ? 0 : typeof err.code === "number" ? err.code : null;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) || (code === null && err ? err.message : "") });
    });
  });
}

async function run(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<string> {
  const r = await runStatus(cmd, args, o);
  if (r.code !== 0) {
    throw new Error(`${path.basename(cmd)} ${args.join(" ")} failed (${r.code === null ? "killed or not started" : `exit code ${r.code}`}): ${r.stderr.trim()}`);
  }
  return r.stdout;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

/** Whether `from` reaches `to` by ping: a few tries, while ARP and MAC learning settle (the positive case). */
export async function reaches(from: OvsNode, to: OvsNode, tries = 4): Promise<boolean> {
  for (let i = 0; i < tries; i++) if (await from.ping(to.ip)) return true;
  return false;
}

/** Whether `from` does NOT reach `to` (two pings, one second each: the negative case). */
export const isolated = async (from: OvsNode, to: OvsNode): Promise<boolean> => !(await from.ping(to.ip, { count: 2, timeoutSec: 1 }));
