/**
 * Test harness: a throwaway PostgreSQL server (Debian's `postgresql` package) for the inventory's
 * tests.
 *
 *   const pg = await startPostgres();
 *   const url = await pg.database();      // a fresh, empty database on it
 *   ... openInventory(url) ...
 *   await pg.stop();
 *
 * - Binaries: `$BAREMETAL_PG_BIN` (scripts/env.sh), else the newest /usr/lib/postgresql/N/bin.
 * - Everything lives in one temp directory (data, unix socket, log), removed by stop().
 * - PostgreSQL refuses to run as root: when we are root, initdb and postgres run as the `postgres`
 *   system user the Debian package creates, through spawn's uid/gid (so `pid` is the postmaster
 *   itself, not a wrapper such as runuser, and signals reach it directly).
 * - It listens on 127.0.0.1 and a free port only, with a password (SCRAM) for TCP, so the URL
 *   carries real credentials; the unix socket sits in the temp directory (never /var/run).
 * - Durability is off (fsync, synchronous_commit, full_page_writes): a test server never survives
 *   a crash anyway, and this makes it several times faster. Locking semantics are unaffected.
 * - Ready means a real connection answers `SELECT 1`, not merely that the port is open.
 * - stop(): SIGTERM (smart shutdown), then SIGINT (fast shutdown: it disconnects clients that a
 *   test forgot to close, which smart shutdown would wait for forever), then SIGKILL; by PID.
 */
import { ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import { EarlyExit, onFreePort, track, untrack, delay, describeExit, tail } from "./processes";
import * as path from "node:path";
import { Client } from "pg";

export interface PostgresOptions {
  /** Readiness timeout in ms (default 60000). */
  startTimeoutMs?: number;
  /** max_connections (default 200: parallel test processes each keep a pool). */
  maxConnections?: number;
}

export interface PostgresInstance {
  /** postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres (the superuser, the default database). */
  url: string;
  port: number;
  /** The postmaster's PID. */
  pid: number;
  user: string;
  password: string;
  /** The temp directory (data/, sock/, postgres.log); removed by stop(). */
  dir: string;
  /** Creates a fresh database (default: a unique name) and returns its URL. */
  database(name?: string): Promise<string>;
  /** The server's log so far (for failure messages). */
  log(): string;
  /** SIGTERM, SIGINT, SIGKILL (each after a grace period), then removes the temp directory. Idempotent. */
  stop(): Promise<void>;
}

const GRACE_MS = 3000;
let databases = 0;

/** The directory of initdb/postgres: $BAREMETAL_PG_BIN, else the newest Debian install. */
export function postgresBinDir(): string {
  const fromEnv = process.env.BAREMETAL_PG_BIN;
  if (fromEnv && fs.existsSync(path.join(fromEnv, "postgres"))) return fromEnv;
  const root = "/usr/lib/postgresql";
  const versions = fs.existsSync(root)
    ? fs
        .readdirSync(root)
        .filter((v) => /^\d+$/.test(v) && fs.existsSync(path.join(root, v, "bin", "postgres")))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (!versions.length) {
    throw new Error(
      `PostgreSQL server binaries not found (BAREMETAL_PG_BIN=${fromEnv ?? "<unset>"}, nothing under ${root}): ` +
        "run scripts/bootstrap.sh (it installs Debian's postgresql) and source scripts/env.sh",
    );
  }
  return path.join(root, versions[0], "bin");
}

/** Whether a PostgreSQL server can be started here (for tests that skip otherwise). */
export function postgresAvailable(): boolean {
  try {
    postgresBinDir();
    return true;
  } catch {
    return false;
  }
}

/** uid/gid to run the server as: ourselves, or the `postgres` system user when we are root. */
function serverIdentity(): { uid?: number; gid?: number; user: string } {
  if (typeof process.getuid !== "function" || process.getuid() !== 0) return { user: os.userInfo().username };
  const line = fs
    .readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith("postgres:"));
  if (!line) {
    throw new Error("running as root and there is no `postgres` system user (PostgreSQL refuses to run as root): install Debian's postgresql package, which creates it");
  }
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid), user: "postgres" };
}

export async function startPostgres(opts: PostgresOptions = {}): Promise<PostgresInstance> {
  const bin = postgresBinDir();
  const who = serverIdentity();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pg-"));
  try {
    const data = path.join(dir, "data");
    const sock = path.join(dir, "sock");
    fs.mkdirSync(sock, { mode: 0o700 });
    const password = randomBytes(18).toString("base64url");
    const pwfile = path.join(dir, "pwfile");
    fs.writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
    if (who.uid !== undefined && who.gid !== undefined) {
      for (const p of [dir, sock, pwfile]) fs.chownSync(p, who.uid, who.gid);
    }
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C", LC_ALL: "C", HOME: dir, TZ: "UTC" };
    const logFile = path.join(dir, "postgres.log");
    await run(path.join(bin, "initdb"), [
      "-D", data, "-U", "postgres", `--pwfile=${pwfile}`, "--auth-local=trust", "--auth-host=scram-sha-256",
      "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
    ], { cwd: dir, env, uid: who.uid, gid: who.gid }, logFile);
    fs.rmSync(pwfile);

    // The port is picked free, then handed over: another process may take it in between, so try
    // again on a new port when the server dies before it is ready.
    return await onFreePort((port) => launch({ bin, dir, data, sock, port, password, env, who, logFile, opts }));
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}


interface LaunchArgs {
  bin: string;
  dir: string;
  data: string;
  sock: string;
  port: number;
  password: string;
  env: NodeJS.ProcessEnv;
  who: { uid?: number; gid?: number; user: string };
  logFile: string;
  opts: PostgresOptions;
}

async function launch(a: LaunchArgs): Promise<PostgresInstance> {
  const logFd = fs.openSync(a.logFile, "a");
  let child: ChildProcess;
  try {
    child = spawn(
      path.join(a.bin, "postgres"),
      [
        "-D", a.data, "-k", a.sock, "-h", "127.0.0.1", "-p", String(a.port),
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        "-c", `max_connections=${a.opts.maxConnections ?? 200}`, "-c", "shared_buffers=32MB",
        "-c", "logging_collector=off", "-c", "log_min_messages=warning",
      ],
      { cwd: a.dir, env: a.env, uid: a.who.uid, gid: a.who.gid, stdio: ["ignore", logFd, logFd] },
    );
  } finally {
    fs.closeSync(logFd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not spawn ${a.bin}/postgres`);
  track(child);
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
  }).then(() => {
    exited = true;
    untrack(child);
  });
  child.once("error", () => undefined); // spawn errors surface as an early exit below

  const log = () => {
    try {
      return fs.readFileSync(a.logFile, "utf8");
    } catch {
      return "";
    }
  };
  const urlOf = (db: string) => `postgres://postgres:${encodeURIComponent(a.password)}@127.0.0.1:${a.port}/${db}`;
  const url = urlOf("postgres");

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      for (const signal of ["SIGTERM", "SIGINT", "SIGKILL"] as const) {
        if (exited) break;
        try {
          process.kill(pid, signal);
        } catch {
          /* already gone */
        }
        if (signal === "SIGKILL") await exitedPromise;
        else await Promise.race([exitedPromise, delay(GRACE_MS)]);
      }
      fs.rmSync(a.dir, { recursive: true, force: true });
    })());

  const timeout = a.opts.startTimeoutMs ?? 60000;
  const deadline = Date.now() + timeout;
  let lastProblem = "no answer yet";
  for (;;) {
    if (exited) {
      throw new EarlyExit(`postgres exited before it was ready (${describeExit(child)}); its log:\n${tail(log())}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`postgres not ready after ${timeout} ms (${lastProblem}); log:\n${tail(log())}`);
    }
    const client = new Client({ connectionString: url, connectionTimeoutMillis: 2000 });
    client.on("error", () => undefined);
    try {
      await client.connect();
      await client.query("SELECT 1");
      await client.end();
      break;
    } catch (err) {
      lastProblem = (err as Error).message;
      await client.end().catch(() => undefined);
    }
    await delay(100);
  }

  const database = async (name?: string): Promise<string> => {
    const db = name ?? `t${process.pid}_${++databases}_${randomBytes(3).toString("hex")}`;
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(db)) throw new Error(`database name must match [a-z_][a-z0-9_]*, got ${JSON.stringify(db)}`);
    const client = new Client({ connectionString: url });
    client.on("error", () => undefined);
    await client.connect();
    try {
      await client.query(`CREATE DATABASE ${db}`);
    } finally {
      await client.end();
    }
    return urlOf(db);
  };

  return { url, port: a.port, pid, user: "postgres", password: a.password, dir: a.dir, database, log, stop };
}

function run(cmd: string, args: string[], o: { cwd: string; env: NodeJS.ProcessEnv; uid?: number; gid?: number }, logFile: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const logFd = fs.openSync(logFile, "a");
    const child = spawn(cmd, args, { ...o, stdio: ["ignore", logFd, logFd] });
    fs.closeSync(logFd);
    const timer = setTimeout(() => child.kill("SIGKILL"), 120000);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} could not start: ${err.message}`));
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve();
      let out = "";
      try {
        out = fs.readFileSync(logFile, "utf8");
      } catch {
        /* none */
      }
      reject(new Error(`${path.basename(cmd)} failed (${signal ? `signal ${signal}` : `exit code ${code}`}):\n${tail(out)}`));
    });
  });
}
