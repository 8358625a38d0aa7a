/**
 * Test harness: a real OpenStack Barbican (Debian's `barbican-api`, Barbican 15) on loopback, the
 * peer of the `barbican` key-manager driver.
 *
 *   const bb = await startBarbican();
 *   // bb.url = http://127.0.0.1:PORT; every request names its project in `X-Project-Id`
 *   await bb.stop();
 *
 * What runs: Barbican's own WSGI application, loaded by paste.deploy from the package's paste
 * config with one change: `/v1` is served by the package's unauthenticated pipeline
 * (`barbican_api`: the project comes from the `X-Project-Id` header, the roles from `X-Roles`,
 * admin when absent) instead of the Keystone one. Everything else is the real code: the policy
 * (a secret of another project is refused with 403, whatever the roles), the sqlite registry
 * (created at start-up, `db_auto_create`), orders processed in the API process (no queue), and the
 * `simple_crypto` plugin encrypting every secret with a throwaway KEK generated here.
 *
 * Configuration: Barbican's modules parse their configuration as they are imported (oslo.config,
 * default files only), so the file must be where oslo.config looks first, before the app loads:
 * `$HOME/.barbican/barbican.conf`, with HOME set to the instance's private directory (the machine's
 * /etc/barbican/barbican.conf is never read; run.py checks that our settings are the ones in force).
 * The KEK sits in that file (0600), never on a command line.
 *
 * The server is the standard library's wsgiref, single-threaded (as Barbican's own
 * barbican-wsgi-api test server): one request at a time, so concurrent clients simply queue. It
 * listens on 127.0.0.1 and a free port only; stop() ends it by its PID (SIGTERM, then SIGKILL) and
 * removes the directory (config, sqlite file, log). Debian's Python packages import only under
 * /usr/bin/python3 (the `python3` on PATH may be another interpreter).
 */
import { ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";
import { delay, describeExit, EarlyExit, onFreePort, tail, track, untrack } from "./processes";

export interface BarbicanOptions {
  /** Readiness timeout in ms (default 60000; a cold start takes about 3 s here). */
  startTimeoutMs?: number;
}

export interface BarbicanInstance {
  /** http://127.0.0.1:PORT (the API root; the API itself is under /v1). */
  url: string;
  port: number;
  /** The Python process serving it. */
  pid: number;
  /** The private directory (home/.barbican/barbican.conf, paste.ini, barbican.sqlite, barbican.log). */
  dir: string;
  /** Barbican's own log (oslo.log and one wsgiref line per request). */
  log(): string;
  /** SIGTERM, SIGKILL after a grace period, by PID; then removes the directory. Idempotent. */
  stop(): Promise<void>;
}

const PYTHON = "/usr/bin/python3";
const BARBICAN_APP = "/usr/lib/python3/dist-packages/barbican/api/app.py";
const PASTE_INI = "/usr/share/barbican-common/barbican-api-paste.ini";
const GRACE_MS = 3000;

/** Whether Barbican is installed here (for tests that skip otherwise). */
export function barbicanAvailable(): boolean {
  return fs.existsSync(PYTHON) && fs.existsSync(BARBICAN_APP) && fs.existsSync(PASTE_INI);
}

// Loads the app and serves it. argv: paste.ini, port, expected sql_connection.
const RUN_PY = `import sys
sys.argv[0] = 'barbican-api'
from barbican.common import config  # parses $HOME/.barbican/barbican.conf on import
if config.CONF.sql_connection != sys.argv[3]:
    sys.stderr.write('harness: barbican did not read our configuration (sql_connection is %r)\\n' % config.CONF.sql_connection)
    sys.exit(3)
from paste import deploy
from wsgiref import simple_server
app = deploy.loadapp('config:' + sys.argv[1])
srv = simple_server.make_server('127.0.0.1', int(sys.argv[2]), app)
sys.stderr.write('harness: serving on 127.0.0.1:%s\\n' % sys.argv[2])
sys.stderr.flush()
srv.serve_forever()
`;

export async function startBarbican(opts: BarbicanOptions = {}): Promise<BarbicanInstance> {
  if (!barbicanAvailable()) {
    throw new Error(`Barbican is not installed (${BARBICAN_APP} or ${PASTE_INI} missing): run scripts/bootstrap.sh (it installs Debian's barbican-api)`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "barbican-"));
  try {
    const home = path.join(dir, "home");
    fs.mkdirSync(path.join(home, ".barbican"), { recursive: true, mode: 0o700 });
    fs.mkdirSync(path.join(dir, "policy.d"));
    const paste = fs.readFileSync(PASTE_INI, "utf8");
    const v1 = /^\/v1\s*[:=].*$/m;
    if (!v1.test(paste) || !/^\[pipeline:barbican_api\]/m.test(paste)) {
      throw new Error(`${PASTE_INI} has no '/v1:' route or no [pipeline:barbican_api]: the installed barbican-api is not the one this harness knows (Barbican 15)`);
    }
    fs.writeFileSync(path.join(dir, "paste.ini"), paste.replace(v1, "/v1: barbican_api"));
    fs.writeFileSync(path.join(dir, "run.py"), RUN_PY);
    return await onFreePort((port) => launch(dir, home, port, opts));
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

function writeConfig(dir: string, home: string, port: number): string {
  const sql = `sqlite:///${path.join(dir, "barbican.sqlite")}`;
  const kek = randomBytes(32).toString("base64");
  const conf = [
    "[DEFAULT]",
    `sql_connection = ${sql}`,
    "db_auto_create = True",
    `host_href = http://127.0.0.1:${port}`,
    "debug = False",
    "use_stderr = True",
    "[queue]",
    "enable = False",
    "[secretstore]",
    "enabled_secretstore_plugins = store_crypto",
    "[crypto]",
    "enabled_crypto_plugins = simple_crypto",
    "[simple_crypto_plugin]",
    `kek = ${kek}`,
    "[oslo_policy]",
    `policy_file = ${path.join(dir, "policy.yaml")}`,
    `policy_dirs = ${path.join(dir, "policy.d")}`,
    "",
  ].join("\n");
  fs.writeFileSync(path.join(home, ".barbican", "barbican.conf"), conf, { mode: 0o600 });
  return sql;
}

async function launch(dir: string, home: string, port: number, opts: BarbicanOptions): Promise<BarbicanInstance> {
  const sql = writeConfig(dir, home, port);
  const logFile = path.join(dir, "barbican.log");
  const logFd = fs.openSync(logFile, "a");
  let child: ChildProcess;
  try {
    child = spawn(PYTHON, [path.join(dir, "run.py"), path.join(dir, "paste.ini"), String(port), sql], {
      cwd: dir,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, LANG: "C.UTF-8", TZ: "UTC", PYTHONDONTWRITEBYTECODE: "1" },
      stdio: ["ignore", logFd, logFd],
    });
  } finally {
    fs.closeSync(logFd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not spawn ${PYTHON}`);
  track(child);
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
  }).then(() => {
    exited = true;
    untrack(child);
  });
  child.once("error", () => undefined); // surfaces as an early exit below

  const log = () => {
    try {
      return fs.readFileSync(logFile, "utf8");
    } catch {
      return "";
    }
  };
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      for (const signal of ["SIGTERM", "SIGKILL"] as const) {
        if (exited) break;
        try {
          process.kill(pid, signal);
        } catch {
          /* already gone */
        }
        if (signal === "SIGKILL") await exitedPromise;
        else await Promise.race([exitedPromise, delay(GRACE_MS)]);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    })());

  const url = `http://127.0.0.1:${port}`;
  const timeout = opts.startTimeoutMs ?? 60000;
  const deadline = Date.now() + timeout;
  let lastProblem = "no answer yet";
  for (;;) {
    if (exited) {
      const text = log();
      // Only a lost port race is worth another port; anything else is a real failure.
      if (/Address already in use/.test(text)) throw new EarlyExit(`barbican exited before it was ready (${describeExit(child)}): port ${port} taken`);
      throw new Error(`barbican exited before it was ready (${describeExit(child)}); its log:\n${tail(text)}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`barbican not ready after ${timeout} ms (${lastProblem}); log:\n${tail(log())}`);
    }
    // Ready = the v1 API answers a project's request (the app, its database and plugins loaded).
    const status = await probe(`${url}/v1/secrets?limit=1`).catch((e: Error) => {
      lastProblem = e.message;
      return 0;
    });
    if (status === 200) break;
    if (status) lastProblem = `GET /v1/secrets answered HTTP ${status}`;
    await delay(200);
  }
  return { url, port, pid, dir, log, stop };
}

function probe(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: { "X-Project-Id": "harness-probe" }, timeout: 2000 }, (res) => {
      res.resume();
      res.once("end", () => resolve(res.statusCode ?? 0));
    });
    req.once("timeout", () => req.destroy(new Error("no answer within 2 s")));
    req.once("error", reject);
  });
}
