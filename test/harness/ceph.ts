/**
 * Test harness: a throwaway single-node Ceph 16 cluster (Debian's `ceph` package): one monitor, one
 * manager, one OSD whose BlueStore lives in a sparse file, one pool `volumes` with the rbd
 * application, cephx on, and a restricted client `client.baremetal` for the storage driver.
 *
 *   const ceph = await startCeph();            // about 5 s here: start it once per test file
 *   // ceph.address = "ceph://127.0.0.1:PORT/volumes?id=baremetal", ceph.clientKey its key
 *   await ceph.admin(["osd", "pool", "ls"]);    // the `ceph` CLI as client.admin
 *   await ceph.stop();
 *
 * - Everything lives in one private temp directory (0700): ceph.conf with a fresh fsid, the
 *   keyrings (0600), the mon/mgr/osd data, the BlueStore file (beside the OSD's data directory,
 *   not inside it), admin sockets, logs. stop() removes it.
 * - The monitor listens on 127.0.0.1 only: msgr v2 on `port` and msgr v1 on `v1Port`, both picked
 *   free. Clients may use either (`v2:127.0.0.1:PORT` / `v1:127.0.0.1:V1PORT`).
 * - Keys are made before the monitor exists (ceph-authtool) and handed to `ceph-mon --mkfs` in its
 *   initial keyring, caps included: client.admin, mgr.x, osd.0 and client.baremetal
 *   (`mon 'profile rbd' osd 'profile rbd pool=volumes'`, so it can reach no other pool). That
 *   saves a round of `ceph auth` commands at start-up.
 * - Start-up order, with what can overlap overlapping: keyrings, monmap, mon mkfs; the monitor
 *   starts while the OSD's BlueStore is made (`--no-mon-config`: it needs no monitor); `ceph osd
 *   new`; OSD and manager start; the pool is created and `rbd pool init` returns once the OSD
 *   serves it (that is readiness: an RBD client can create images). The manager is not waited
 *   for (nothing RBD needs waits for it); `waitForMgr` does.
 * - Small-machine settings: one replica (`osd_pool_default_size = 1`, `mon_allow_pool_size_one`),
 *   no pg autoscaler (mode off, no warnings), 8 PGs per pool, osd_memory_target at its minimum,
 *   the manager without the modules it can do without (dashboard, prometheus, ...).
 * - stop(): SIGTERM to each daemon by PID (OSD, manager, monitor), SIGKILL after a grace period,
 *   then the directory goes. `pause(daemon)` / `resume(daemon)` send SIGSTOP / SIGCONT to one
 *   daemon by PID (a monitor that hangs, for timeout tests).
 * Secrets: keys live in the 0600 keyrings; `clientKey` is handed to the test in memory only.
 */
import { ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { binariesAvailable, delay, describeExit, findBin as processesFindBin, freePort, runTool, tail, type ToolResult, track, trackDir, untrack, untrackDir } from "./processes";

export interface CephOptions {
  /** Pools to create besides `volumes` (for tests of the restricted client). */
  extraPools?: string[];
  /** Readiness timeout in ms (default 120000). */
  startTimeoutMs?: number;
  /** Also wait until the manager is active (default false). */
  waitForMgr?: boolean;
  /** Size of the OSD's sparse BlueStore file (default 8 GiB). */
  osdBytes?: number;
  /** Start a manager at all (default true). */
  mgr?: boolean;
}

export type CephDaemon = "mon" | "mgr" | "osd";

export type { ToolResult };

export interface CephInstance {
  dir: string;
  fsid: string;
  /** The monitor's msgr v2 port (127.0.0.1). */
  port: number;
  /** The monitor's msgr v1 port (127.0.0.1). */
  v1Port: number;
  /** `[v2:127.0.0.1:PORT,v1:127.0.0.1:V1PORT]`. */
  monHost: string;
  /** The pool the driver uses (`volumes`). */
  pool: string;
  /** `ceph://127.0.0.1:PORT/volumes?id=baremetal`. */
  address: string;
  /** `baremetal`. */
  clientId: string;
  /** client.baremetal's cephx key (a secret: never log it). */
  clientKey: string;
  /** The admin's ceph.conf (its keyring is the admin's). */
  confPath: string;
  pids: Partial<Record<CephDaemon, number>>;
  /** Milliseconds from the first step to ready, and per step. */
  startMs: number;
  timings: Record<string, number>;
  /** Runs `ceph ARGS` as client.admin; throws on failure. JSON output when `--format json` is given. */
  admin(args: string[]): Promise<string>;
  /** Runs `rbd ARGS` as client.admin; throws on failure. */
  rbd(args: string[]): Promise<string>;
  /** Runs a ceph tool as client.admin and returns what happened. */
  tool(bin: string, args: string[], opts?: { timeoutMs?: number }): Promise<ToolResult>;
  /** Creates a client with the given caps (`["mon", "profile rbd", "osd", "..."]`) and returns its key. */
  createClient(id: string, caps: string[]): Promise<string>;
  createPool(name: string): Promise<void>;
  pause(daemon: CephDaemon): void;
  resume(daemon: CephDaemon): void;
  log(daemon: CephDaemon): string;
  stop(): Promise<void>;
}

const GRACE_MS = 5000;
const INSTALL = "Debian package ceph";
const findBin = (name: string) => processesFindBin(name, INSTALL);
const run = (file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60000) => runTool(file, args, env, timeoutMs, 64 << 20);
const BINARIES = ["ceph-mon", "ceph-osd", "ceph-mgr", "ceph", "rbd", "ceph-authtool", "monmaptool"];


/** Whether this machine can run the harness (for tests that skip otherwise). */
export function cephAvailable(): { ok: boolean; why?: string } {
  return binariesAvailable(BINARIES, INSTALL);
}


async function must(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs?: number): Promise<string> {
  const r = await run(file, args, env, timeoutMs);
  if (r.code !== 0) throw new Error(`${path.basename(file)} ${args.join(" ")} failed (${r.code}): ${tail(r.stderr.trim(), 15)}`);
  return r.stdout;
}


function conf(dir: string, fsid: string, monHost: string): string {
  return `[global]
fsid = ${fsid}
mon_host = ${monHost}
public_network = 127.0.0.0/8
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = ${dir}/admin.keyring
run_dir = ${dir}/run
admin_socket = ${dir}/run/$name.$pid.asok
log_file = ${dir}/log/$name.log
log_to_stderr = false
err_to_stderr = false
mon_cluster_log_file = ${dir}/log/cluster.log
crash_dir = ${dir}/crash
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
mon_max_pg_per_osd = 1000
client_mount_timeout = 30

[client]
# An RBD client started before the OSD is up notices it at its next tick (5 s by default).
objecter_tick_interval = 0.2

[mon]
keyring = ${dir}/mon/$id/keyring
mon_data = ${dir}/mon/$id
mon_osd_min_down_reporters = 1
paxos_propose_interval = 0.05
paxos_min_wait = 0.01

[mgr]
keyring = ${dir}/mgr/$id/keyring
mgr_data = ${dir}/mgr/$id
mgr_initial_modules = status
mgr_disabled_modules = alerts cephadm dashboard diskprediction_local influx insights iostat k8sevents localpool mds_autoscaler mirroring nfs osd_perf_query osd_support prometheus restful rook selftest snap_schedule stats telegraf test_orchestrator zabbix

[osd]
keyring = ${dir}/osd/$id/keyring
osd_data = ${dir}/osd/$id
osd_objectstore = bluestore
bluestore_block_path = ${dir}/osd-$id.block
bluestore_block_create = true
bluestore_block_db_create = false
bluestore_block_wal_create = false
bluestore_fsck_on_mount = false
bluestore_fsck_on_umount = false
osd_memory_target = 939524096
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2
`;
}

export async function startCeph(opts: CephOptions = {}): Promise<CephInstance> {
  const avail = cephAvailable();
  if (!avail.ok) throw new Error(`the ceph harness cannot run: ${avail.why}`);
  const bin = Object.fromEntries(BINARIES.map((b) => [b, findBin(b)])) as Record<string, string>;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ceph-"));
  fs.chmodSync(dir, 0o700);
  trackDir(dir);
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir, LANG: "C", LC_ALL: "C", TZ: "UTC" };
  const confPath = path.join(dir, "ceph.conf");
  const children: Partial<Record<CephDaemon, { child: ChildProcess; exited: Promise<void>; done: () => boolean }>> = {};
  const pids: Partial<Record<CephDaemon, number>> = {};
  const timings: Record<string, number> = {};
  const t0 = Date.now();
  const mark = (step: string) => (timings[step] = Date.now() - t0);

  const logOf = (d: CephDaemon) => {
    const id = { mon: "mon.a", mgr: "mgr.x", osd: "osd.0" }[d];
    try {
      return fs.readFileSync(path.join(dir, "log", `${id}.log`), "utf8");
    } catch {
      return "";
    }
  };

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      for (const d of ["osd", "mgr", "mon"] as const) {
        const c = children[d];
        if (!c || c.done() || c.child.pid === undefined) continue;
        try {
          process.kill(c.child.pid, "SIGCONT");
          process.kill(c.child.pid, "SIGTERM");
        } catch {
          /* gone */
        }
        await Promise.race([c.exited, delay(GRACE_MS)]);
        if (!c.done()) {
          try {
            process.kill(c.child.pid, "SIGKILL");
          } catch {
            /* gone */
          }
          await c.exited;
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
      untrackDir(dir);
    })());

  const daemon = (d: CephDaemon, file: string, args: string[]) => {
    const child = spawn(file, ["-f", "-c", confPath, ...args], { cwd: dir, env, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr?.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-8192)));
    child.once("error", () => undefined);
    track(child);
    let done = false;
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once("exit", () => resolve());
    }).then(() => {
      done = true;
      untrack(child);
    });
    children[d] = { child, exited, done: () => done };
    if (child.pid !== undefined) pids[d] = child.pid;
    return { child, stderr: () => stderr };
  };
  const checkAlive = () => {
    for (const d of ["mon", "osd", "mgr"] as const) {
      const c = children[d];
      if (c?.done()) throw new Error(`ceph-${d} exited during start-up (${describeExit(c.child)}); its log:\n${tail(logOf(d), 30)}`);
    }
  };
  const admin = (args: string[], timeoutMs?: number) => must(bin.ceph, ["-c", confPath, ...args], env, timeoutMs);

  try {
    for (const sub of ["run", "log", "crash", "mon", "mon/a", "mgr", "mgr/x", "osd", "osd/0"]) fs.mkdirSync(path.join(dir, sub), { recursive: true, mode: 0o700 });
    const fsid = randomUUID();
    const osdUuid = randomUUID();
    const port = await freePort();
    let v1Port = await freePort();
    while (v1Port === port) v1Port = await freePort();
    const monHost = `[v2:127.0.0.1:${port},v1:127.0.0.1:${v1Port}]`;
    fs.writeFileSync(confPath, conf(dir, fsid, monHost), { mode: 0o600 });

    // Keys: generated by ceph-authtool, gathered into the monitor's initial keyring with their caps.
    const genKey = async () => (await must(bin["ceph-authtool"], ["--gen-print-key"], env)).trim();
    const [monKey, adminKey, osdKey, mgrKey, clientKey] = await Promise.all([genKey(), genKey(), genKey(), genKey(), genKey()]);
    const entry = (name: string, key: string, caps: Record<string, string>) =>
      `[${name}]\n\tkey = ${key}\n` + Object.entries(caps).map(([k, v]) => `\tcaps ${k} = "${v}"\n`).join("");
    const adminEntry = entry("client.admin", adminKey, { mds: "allow *", mgr: "allow *", mon: "allow *", osd: "allow *" });
    const clientId = "baremetal";
    const pool = "volumes";
    const monKeyring = path.join(dir, "mon-initial.keyring");
    fs.writeFileSync(
      monKeyring,
      entry("mon.", monKey, { mon: "allow *" }) +
        adminEntry +
        entry("osd.0", osdKey, { mgr: "allow profile osd", mon: "allow profile osd", osd: "allow *" }) +
        entry("mgr.x", mgrKey, { mds: "allow *", mon: "allow profile mgr", osd: "allow *" }) +
        entry(`client.${clientId}`, clientKey, { mon: "profile rbd", osd: `profile rbd pool=${pool}` }),
      { mode: 0o600 },
    );
    fs.writeFileSync(path.join(dir, "admin.keyring"), adminEntry, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, "osd/0/keyring"), entry("osd.0", osdKey, {}), { mode: 0o600 });
    fs.writeFileSync(path.join(dir, "mgr/x/keyring"), entry("mgr.x", mgrKey, {}), { mode: 0o600 });
    mark("keys");

    const monmap = path.join(dir, "monmap");
    await must(bin.monmaptool, ["--create", "--fsid", fsid, "--addv", "a", monHost, monmap], env);
    await must(bin["ceph-mon"], ["-c", confPath, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", monKeyring], env);
    fs.rmSync(monKeyring);
    mark("mon-mkfs");

    // The monitor starts while the OSD's BlueStore is made (that needs no monitor).
    daemon("mon", bin["ceph-mon"], ["-i", "a"]);
    const osdBytes = opts.osdBytes ?? 8 * 1024 ** 3;
    const osdMkfs = must(
      bin["ceph-osd"],
      ["-c", confPath, "--no-mon-config", "-i", "0", "--mkfs", "--osd-uuid", osdUuid, "--bluestore_block_size", String(osdBytes)],
      env,
      120000,
    ).then(() => mark("osd-mkfs"));
    const deadline = t0 + (opts.startTimeoutMs ?? 120000);
    const remaining = () => Math.max(1000, deadline - Date.now());
    await admin(["osd", "new", osdUuid, "0"], remaining());
    mark("mon-up+osd-new");
    // Pools are a monitor matter: made while the BlueStore is still being made.
    const pools = [pool, ...(opts.extraPools ?? [])];
    for (const p of pools) await admin(["osd", "pool", "create", p, "8", "8"], remaining());
    mark("pools");
    await osdMkfs;
    daemon("osd", bin["ceph-osd"], ["-i", "0"]);
    if (opts.mgr !== false) daemon("mgr", bin["ceph-mgr"], ["-i", "x"]);
    checkAlive();
    // `rbd pool init` tags the pool for rbd and writes to it: it returns once the OSD serves it.
    await Promise.all(pools.map((p) => must(bin.rbd, ["-c", confPath, "pool", "init", p], env, remaining())));
    checkAlive();
    mark("ready");
    if (opts.waitForMgr && opts.mgr !== false) {
      for (;;) {
        const s = JSON.parse(await admin(["mgr", "stat", "--format", "json"], remaining())) as { available?: boolean };
        if (s.available) break;
        checkAlive();
        if (Date.now() > deadline) throw new Error("ceph-mgr not active in time");
        await delay(250);
      }
      mark("mgr");
    }
    const startMs = Date.now() - t0;

    const tool = (file: string, args: string[], o: { timeoutMs?: number } = {}) =>
      run(file.includes("/") ? file : findBin(file), ["-c", confPath, ...args], env, o.timeoutMs);

    return {
      dir,
      fsid,
      port,
      v1Port,
      monHost,
      pool,
      address: `ceph://127.0.0.1:${port}/${pool}?id=${clientId}`,
      clientId,
      clientKey,
      confPath,
      pids,
      startMs,
      timings,
      admin: (args) => admin(args),
      rbd: (args) => must(bin.rbd, ["-c", confPath, ...args], env),
      tool,
      async createClient(id, caps) {
        return (await admin(["auth", "get-or-create-key", `client.${id}`, ...caps])).trim();
      },
      async createPool(name) {
        await admin(["osd", "pool", "create", name, "8", "8"]);
        await must(bin.rbd, ["-c", confPath, "pool", "init", name], env);
      },
      pause(d) {
        const pid = pids[d];
        if (pid !== undefined) process.kill(pid, "SIGSTOP");
      },
      resume(d) {
        const pid = pids[d];
        if (pid !== undefined) process.kill(pid, "SIGCONT");
      },
      log: logOf,
      stop,
    };
  } catch (err) {
    const logs = (["mon", "osd", "mgr"] as const).map((d) => `--- ${d}:\n${tail(logOf(d), 15)}`).join("\n");
    await stop().catch(() => undefined);
    throw new Error(`${(err as Error).message}\n${logs}`);
  }
}
