/**
 * Test harness: runs OpenStack's Redfish emulator (sushy-tools, fake system driver) as a real
 * BMC peer for e2e tests.
 *
 *   const bmc = await startSushy({ systems: 2, username: "admin", password: "pw", tls: true });
 *   ... talk Redfish to bmc.url (trust bmc.ca when tls) ...
 *   await bmc.stop();
 *
 * The emulator binary comes from `process.env.BAREMETAL_SUSHY_EMULATOR` (set by
 * scripts/env.sh after scripts/bootstrap.sh installed it). Every instance gets its own temp
 * directory holding its config, state, credentials, certificate and log, so instances never
 * share state (sushy's fake driver otherwise persists systems in /tmp/sushy-emulator and
 * would carry power states over from earlier runs). Node built-ins + axios only.
 *
 * Behaviour of the fake driver worth knowing when writing tests:
 * - power changes land 0-11 s after the Reset action (random); poll, never sleep;
 * - the service root (/redfish/v1/) needs no credentials, everything else does;
 * - the htpasswd file must use bcrypt, and sushy checks it on every request, so the hash
 *   here uses bcrypt's cheapest cost to keep requests fast.
 */
import { ChildProcess, execFile, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as https from "node:https";
import * as os from "node:os";
import { EarlyExit, onFreePort, track, untrack, delay, describeExit, tail } from "./processes";
import * as path from "node:path";
import axios, { AxiosInstance } from "axios";

export interface SushyOptions {
  /** Number of fake systems (default 1). */
  systems?: number;
  /** Basic-auth user; when set (with `password`) every request but the service root needs it. */
  username?: string;
  password?: string;
  /** Serve HTTPS with a throwaway self-signed certificate (see `ca`). */
  tls?: boolean;
  /** Initial power state of every system (default "On"). */
  powerState?: "On" | "Off";
  /** Readiness timeout in ms (default 30000). */
  startTimeoutMs?: number;
}

export interface SushySystem {
  /** The Redfish Id (sushy uses the UUID), as in /redfish/v1/Systems/<id>. */
  id: string;
  name: string;
  mac: string;
}

export interface SushyInstance {
  /** Base URL, e.g. http://127.0.0.1:40123 (no trailing slash). */
  url: string;
  port: number;
  pid: number;
  /** Redfish ids of the systems, in creation order. */
  systemIds: string[];
  systems: SushySystem[];
  username?: string;
  password?: string;
  /** PEM of the self-signed certificate when `tls` (trust it as the CA). */
  ca?: string;
  /** An axios client for this BMC: base URL, credentials, CA, never throws on HTTP status. */
  http: AxiosInstance;
  /** The instance's temp directory (config, state, log); removed by stop(). */
  dir: string;
  /** The emulator's own log so far (for failure messages). */
  log(): string;
  /** SIGTERM, SIGKILL after a grace period, then remove the temp directory. Idempotent. */
  stop(): Promise<void>;
}

const STOP_GRACE_MS = 5000;

/** Start a sushy-tools emulator with the fake driver on 127.0.0.1 and a free port. */
export async function startSushy(opts: SushyOptions = {}): Promise<SushyInstance> {
  const emulator = process.env.BAREMETAL_SUSHY_EMULATOR;
  if (!emulator || !fs.existsSync(emulator)) {
    throw new Error(
      `sushy-emulator not found (BAREMETAL_SUSHY_EMULATOR=${emulator ?? "<unset>"}): ` +
        "run scripts/bootstrap.sh and source scripts/env.sh",
    );
  }
  const count = opts.systems ?? 1;
  if (!Number.isInteger(count) || count < 1 || count > 250) throw new Error(`systems must be 1..250, got ${count}`);
  if ((opts.username === undefined) !== (opts.password === undefined)) {
    throw new Error("username and password go together");
  }
  if (opts.username !== undefined && (opts.username === "" || /[:\s]/.test(opts.username))) {
    throw new Error("username must be non-empty without ':' or whitespace");
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sushy-"));
  try {
    const systems = fakeSystems(count);
    const config: Record<string, unknown> = {
      SUSHY_EMULATOR_LISTEN_IP: "127.0.0.1",
      SUSHY_EMULATOR_FAKE_DRIVER: true,
      SUSHY_EMULATOR_STATE_DIR: path.join(dir, "state"),
      SUSHY_EMULATOR_FAKE_SYSTEMS: systems.map((s) => ({
        uuid: s.id,
        name: s.name,
        power_state: opts.powerState ?? "On",
        external_notifier: false,
        nics: [{ mac: s.mac, ip: "127.0.0.1" }],
      })),
    };
    if (opts.username !== undefined && opts.password !== undefined) {
      const file = path.join(dir, "htpasswd");
      const hash = await bcryptHash(emulator, opts.password);
      fs.writeFileSync(file, `${opts.username}:${hash}\n`, { mode: 0o600 });
      config.SUSHY_EMULATOR_AUTH_FILE = file;
    }
    let ca: string | undefined;
    if (opts.tls) {
      const cert = path.join(dir, "cert.pem");
      const key = path.join(dir, "key.pem");
      await selfSignedCert(cert, key);
      config.SUSHY_EMULATOR_SSL_CERT = cert;
      config.SUSHY_EMULATOR_SSL_KEY = key;
      ca = fs.readFileSync(cert, "utf8");
    }

    // The port is picked free and then handed over, so another process may grab it in
    // between: try again on a new port when the emulator dies before it is ready.
    return await onFreePort((port) => launch(emulator, dir, { ...config, SUSHY_EMULATOR_LISTEN_PORT: port }, port, systems, opts, ca));
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}


async function launch(
  emulator: string,
  dir: string,
  config: Record<string, unknown>,
  port: number,
  systems: SushySystem[],
  opts: SushyOptions,
  ca: string | undefined,
): Promise<SushyInstance> {
  const configFile = path.join(dir, "sushy.conf");
  fs.writeFileSync(
    configFile,
    Object.entries(config)
      .map(([k, v]) => `${k} = ${py(v)}\n`)
      .join(""),
  );
  const logFile = path.join(dir, `sushy-${port}.log`);
  const logFd = fs.openSync(logFile, "a");
  const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: "1" };
  delete env.SUSHY_EMULATOR_CONFIG; // read at import time by sushy: only ours counts
  let child: ChildProcess;
  try {
    child = spawn(emulator, ["--config", configFile], { stdio: ["ignore", logFd, logFd], env });
  } finally {
    fs.closeSync(logFd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not spawn ${emulator}`);
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
      return fs.readFileSync(logFile, "utf8");
    } catch {
      return "";
    }
  };
  const scheme = opts.tls ? "https" : "http";
  const url = `${scheme}://127.0.0.1:${port}`;
  const http = axios.create({
    baseURL: url,
    timeout: 10000,
    validateStatus: () => true,
    auth: opts.username !== undefined ? { username: opts.username, password: opts.password ?? "" } : undefined,
    httpsAgent: ca ? new https.Agent({ ca, keepAlive: false }) : undefined,
  });

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (!exited) {
        try {
          process.kill(pid, "SIGTERM");
        } catch {
          /* already gone */
        }
        const graceful = await Promise.race([exitedPromise.then(() => true), delay(STOP_GRACE_MS).then(() => false)]);
        if (!graceful) {
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            /* already gone */
          }
          await exitedPromise;
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    })());

  // Readiness: the service root answers (it is served without credentials).
  const deadline = Date.now() + (opts.startTimeoutMs ?? 30000);
  let lastProblem = "no answer yet";
  for (;;) {
    if (exited) {
      throw new EarlyExit(`sushy-emulator exited before it was ready (${describeExit(child)}); its log:\n${tail(log())}`);
    }
    if (Date.now() > deadline) {
      await killNow(child, exitedPromise);
      throw new Error(`sushy-emulator not ready after ${opts.startTimeoutMs ?? 30000} ms (${lastProblem}); log:\n${tail(log())}`);
    }
    try {
      const res = await http.get("/redfish/v1/", { timeout: 2000 });
      if (res.status === 200 && res.data && typeof res.data === "object" && "Systems" in res.data) break;
      lastProblem = `GET /redfish/v1/ answered ${res.status}`;
    } catch (err) {
      lastProblem = (err as Error).message;
    }
    await delay(100);
  }

  try {
    const res = await http.get("/redfish/v1/Systems");
    if (res.status !== 200) throw new Error(`GET /redfish/v1/Systems answered ${res.status}: ${JSON.stringify(res.data)}`);
    const members: string[] = (res.data.Members ?? []).map((m: { "@odata.id": string }) =>
      m["@odata.id"].replace(/\/+$/, "").split("/").pop() as string,
    );
    const expected = systems.map((s) => s.id);
    if (members.length !== expected.length || !expected.every((id) => members.includes(id))) {
      throw new Error(`sushy lists systems ${JSON.stringify(members)}, expected ${JSON.stringify(expected)}`);
    }
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    url,
    port,
    pid,
    systemIds: systems.map((s) => s.id),
    systems,
    username: opts.username,
    password: opts.password,
    ca,
    http,
    dir,
    log,
    stop,
  };
}

/** Deterministic systems: UUIDs, names and MACs depend only on the index. */
function fakeSystems(count: number): SushySystem[] {
  return Array.from({ length: count }, (_, i) => {
    const n = i + 1;
    return {
      id: `5ca1ab1e-0000-4000-8000-${n.toString(16).padStart(12, "0")}`,
      name: `fake-node-${n}`,
      mac: `52:54:00:00:00:${n.toString(16).padStart(2, "0")}`,
    };
  });
}

/** A Python literal for the config file (sushy reads it with Flask's from_pyfile). */
function py(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return String(v);
  if (typeof v === "string") return JSON.stringify(v); // JSON strings are valid Python literals
  if (Array.isArray(v)) return `[${v.map(py).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v as Record<string, unknown>)
      .map(([k, x]) => `${JSON.stringify(k)}: ${py(x)}`)
      .join(", ")}}`;
  }
  throw new Error(`cannot write ${typeof v} as Python`);
}

/** bcrypt (the only digest sushy accepts) via the emulator venv's own python + bcrypt. */
function bcryptHash(emulator: string, password: string): Promise<string> {
  const python = path.join(path.dirname(emulator), "python");
  const script = "import bcrypt, sys; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())";
  return new Promise((resolve, reject) => {
    const child = execFile(python, ["-c", script], { timeout: 30000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`bcrypt hashing with ${python} failed: ${err.message} ${stderr}`));
      const hash = stdout.trim();
      if (!/^\$2[aby]\$/.test(hash)) return reject(new Error(`unexpected bcrypt output: ${hash}`));
      resolve(hash);
    });
    child.stdin?.end(password);
  });
}

function selfSignedCert(certFile: string, keyFile: string): Promise<void> {
  const args = [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", keyFile, "-out", certFile, "-days", "2", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
  ];
  return new Promise((resolve, reject) => {
    execFile("openssl", args, { timeout: 30000 }, (err, _stdout, stderr) =>
      err ? reject(new Error(`openssl req failed: ${err.message} ${stderr}`)) : resolve(),
    );
  });
}



async function killNow(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.pid !== undefined) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  await exited;
}
