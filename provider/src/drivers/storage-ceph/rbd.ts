/**
 * Running Ceph's `rbd` CLI as one restricted cephx client, and turning its failures into
 * BaremetalErrors.
 *
 * Address: `ceph://MON[,MON...]/POOL?id=CLIENT[&msgr=v1|v2]`, MON = `host[:port]` (IPv6 in
 * brackets). Port 3300 is msgr v2, 6789 msgr v1, no port both defaults; any other port is taken as
 * msgr v2 unless `msgr=v1`. The monitor address is always given with its protocol (`v2:host:port`):
 * a bare `host:port` makes the client try both protocols, and then a refused key looks like a
 * timeout instead of an immediate refusal.
 *
 * The key never reaches a command line: each client gets a private directory (0700, under the
 * system temp dir) holding `keyring` (0600) and a `ceph.conf` that names the monitors, the keyring,
 * the timeouts and no admin socket or log file; `rbd` runs with `-c <conf> --id <client>
 * --keyring <file>`. The directory goes with `dispose()` (and at process exit).
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";

/** Ceph pool names we accept (Ceph itself allows more; these are safe in specs, tgt options and IQNs). */
export const POOL_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}$/;
/** cephx client ids. */
export const CLIENT_ID_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}$/;
/** A cephx secret: base64 of a 28-byte (12-byte header + AES-128 key) blob. */
const KEY_RE = /^[A-Za-z0-9+/]{38}==$/;

export interface CephAddress {
  /** The monitors as Ceph's `mon_host` wants them: `[v2:127.0.0.1:3300,v1:...]`. */
  monHost: string;
  /** The monitors as given (for messages). */
  monitors: string;
  pool: string;
  clientId: string;
}

export function parseCephAddress(address: unknown): CephAddress {
  if (typeof address !== "string") throw validationError("address", "give the Ceph address as ceph://MON_HOST[:PORT]/POOL?id=CLIENT");
  const m = /^ceph:\/\/([^/?#]+)\/([^/?#]+)(?:\?([^#]*))?$/.exec(address);
  if (!m) throw validationError("address", `${JSON.stringify(address)} is not a Ceph address: use ceph://MON_HOST[:PORT][,MON_HOST[:PORT]...]/POOL?id=CLIENT`);
  const [, hosts, poolRaw, query] = m;
  const params = new URLSearchParams(query ?? "");
  for (const k of params.keys()) {
    if (k !== "id" && k !== "msgr") throw validationError("address", `unknown parameter ${JSON.stringify(k)} in the Ceph address: only id and msgr`);
  }
  const pool = decodeURIComponent(poolRaw);
  if (!POOL_RE.test(pool)) throw validationError("address", `pool name ${JSON.stringify(pool)}: use letters, digits, '.', '_' and '-'`);
  const clientId = (params.get("id") ?? "").replace(/^client\./, "");
  if (!CLIENT_ID_RE.test(clientId)) {
    throw validationError("address", `give the cephx client in the address (?id=NAME, without "client."): ${JSON.stringify(params.get("id") ?? "")} is not one`);
  }
  const msgr = params.get("msgr");
  if (msgr !== null && msgr !== "v1" && msgr !== "v2") throw validationError("address", `msgr must be v1 or v2, not ${JSON.stringify(msgr)}`);
  const addrs: string[] = [];
  for (const h of hosts.split(",")) {
    const hm = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(h);
    if (!hm || (hm[2] !== undefined && (Number(hm[2]) < 1 || Number(hm[2]) > 65535))) {
      throw validationError("address", `${JSON.stringify(h)} is not a monitor address: use host, host:port or [ipv6]:port`);
    }
    const [, host, port] = hm;
    if (port === undefined) {
      if (msgr === "v1") addrs.push(`v1:${host}:6789`);
      else if (msgr === "v2") addrs.push(`v2:${host}:3300`);
      else addrs.push(`v2:${host}:3300`, `v1:${host}:6789`);
    } else {
      const proto = msgr ?? (port === "6789" ? "v1" : "v2");
      addrs.push(`${proto}:${host}:${port}`);
    }
  }
  return { monHost: `[${addrs.join(",")}]`, monitors: hosts, pool, clientId };
}

export function checkCephKey(key: unknown): string {
  if (typeof key !== "string" || !KEY_RE.test(key.trim())) {
    throw validationError("key", "the Ceph key must be the client's cephx secret as `ceph auth get-key client.NAME` prints it (40 base64 characters)");
  }
  return key.trim();
}

export interface RbdRunnerOptions {
  /** The `rbd` binary (default: `rbd` on PATH). */
  rbdBin?: string;
  /** How long the client waits for the monitors (connect and authenticate); default 10 s. */
  connectTimeoutMs?: number;
  /** Deadline of one command, connection included; default 120 s. */
  commandTimeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

const liveDirs = new Set<string>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const d of liveDirs) {
      try {
        fs.rmSync(d, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  });
}

/** The errno and text of the last `(N) Message` in rbd's stderr. */
export function lastErrno(stderr: string): { errno?: number; text: string } {
  const lines = stderr
    .split("\n")
    .map((l) => l.replace(/^\d{4}-\d\d-\d\dT[\d:.]+\+\d{4} [0-9a-f]+ +-?\d+ /, "").trim())
    .filter((l) => l && !/% complete/.test(l) && !/^warning: fast-diff map is not enabled/.test(l));
  const text = lines.filter((l) => l.startsWith("rbd:")).slice(-1)[0] ?? lines.slice(-1)[0] ?? "";
  let errno: number | undefined;
  for (const l of lines) {
    const m = /\((\d+)\) [A-Za-z]/.exec(l);
    if (m) errno = Number(m[1]);
  }
  return { errno, text: text.slice(0, 400) };
}

export class RbdRunner {
  readonly address: CephAddress;
  readonly rbdBin: string;
  readonly connectTimeoutMs: number;
  readonly commandTimeoutMs: number;
  private dir?: string;
  private readonly key: string;

  constructor(address: CephAddress, key: string, opts: RbdRunnerOptions = {}) {
    this.address = address;
    this.key = key;
    this.rbdBin = opts.rbdBin ?? "rbd";
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10000;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 120000;
  }

  get client(): string {
    return `client.${this.address.clientId}`;
  }

  /** The private directory with `ceph.conf` and `keyring`, made on first use. */
  files(): { dir: string; conf: string; keyring: string } {
    if (!this.dir) {
      installExitHook();
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "baremetal-rbd-"));
      liveDirs.add(dir);
      fs.chmodSync(dir, 0o700);
      this.writeConf(dir);
      this.dir = dir;
    }
    return { dir: this.dir, conf: path.join(this.dir, "ceph.conf"), keyring: path.join(this.dir, "keyring") };
  }

  /** Writes `ceph.conf` and `keyring` into `dir` (also used for the copies handed to tgtd). */
  writeConf(dir: string): { conf: string; keyring: string } {
    const keyring = path.join(dir, "keyring");
    const conf = path.join(dir, "ceph.conf");
    fs.writeFileSync(keyring, `[${this.client}]\n\tkey = ${this.key}\n`, { mode: 0o600 });
    const secs = Math.max(1, Math.ceil(this.connectTimeoutMs / 1000));
    fs.writeFileSync(
      conf,
      [
        "[global]",
        `mon_host = ${this.address.monHost}`,
        `keyring = ${keyring}`,
        `client_mount_timeout = ${secs}`,
        `rados_mon_op_timeout = ${Math.max(secs, 30)}`,
        "admin_socket =",
        "log_file =",
        "log_to_stderr = false",
        "err_to_stderr = true",
        "",
      ].join("\n"),
      { mode: 0o600 },
    );
    return { conf, keyring };
  }

  /** Runs `rbd ARGS` as the client; rejects with a BaremetalError describing `what`. */
  run(args: string[], what: string, signal?: AbortSignal): Promise<RunResult> {
    if (signal?.aborted) return Promise.reject(new BaremetalError("cancelled", `cancelled before ${what}`));
    const f = this.files();
    const argv = ["-c", f.conf, "--id", this.address.clientId, "--keyring", f.keyring, ...args];
    return new Promise((resolve, reject) => {
      execFile(
        this.rbdBin,
        argv,
        { env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C", LC_ALL: "C", HOME: f.dir }, timeout: this.commandTimeoutMs, killSignal: "SIGKILL", maxBuffer: 64 << 20, signal },
        (err, stdout, stderr) => {
          const out = String(stdout);
          const errText = String(stderr);
          if (!err) return resolve({ stdout: out, stderr: errText });
          reject(this.failure(err as Error & { killed?: boolean; code?: unknown; signal?: string | null }, errText, what, signal));
        },
      );
    });
  }

  /**
   * Starts `rbd ARGS` as the client with its stdout as a stream (e.g. `export ... -`), and its
   * stdin as one when `stdin` (e.g. `import-diff - ...`); stderr is collected.
   */
  spawn(args: string[], opts: { stdin?: boolean } = {}): { child: ChildProcess; stderr: () => string } {
    const f = this.files();
    const child = spawn(this.rbdBin, ["-c", f.conf, "--id", this.address.clientId, "--keyring", f.keyring, ...args], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C", LC_ALL: "C", HOME: f.dir },
      stdio: [opts.stdin ? "pipe" : "ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr?.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-16384)));
    return { child, stderr: () => err };
  }

  /** The BaremetalError for a failed command (exit code `code`, its stderr). */
  failed(code: number | null, stderr: string, what: string, signal?: AbortSignal): BaremetalError {
    return this.failure(Object.assign(new Error(what), { code: code ?? undefined, killed: code === null }), stderr, what, signal);
  }

  /** Runs and parses JSON output (`--format json` is added). */
  async json<T>(args: string[], what: string, signal?: AbortSignal): Promise<T> {
    const r = await this.run([...args, "--format", "json"], what, signal);
    try {
      return JSON.parse(r.stdout || "null") as T;
    } catch (e) {
      throw new BaremetalError("backend", `rbd answered ${what} with something that is not JSON: ${r.stdout.slice(0, 200)}`, { cause: e });
    }
  }

  private failure(err: Error & { killed?: boolean; code?: unknown; signal?: string | null }, stderr: string, what: string, signal?: AbortSignal): BaremetalError {
    if (signal?.aborted || err.name === "AbortError") return new BaremetalError("cancelled", `cancelled while ${what}`, { cause: err });
    if (err.code === "ENOENT") {
      return new BaremetalError("internal", `the rbd command (${this.rbdBin}) is not installed here: install Debian's ceph-common (scripts/bootstrap.sh)`, { cause: err });
    }
    // rbd exits with the errno of what failed (EACCES 13, ENOENT 2, ETIMEDOUT 110, ...); not every
    // message carries it (`rbd du` says only "couldn't connect to the cluster!").
    const parsed = lastErrno(stderr);
    const text = parsed.text;
    const errno = typeof err.code === "number" && err.code > 0 ? err.code : parsed.errno;
    const mons = this.address.monitors;
    if (err.killed || (typeof err.code !== "number" && err.signal)) {
      return new BaremetalError("timeout", `rbd did not finish ${what} within ${this.commandTimeoutMs} ms (Ceph at ${mons}); the cluster may be unhealthy (PGs inactive, OSDs down): check \`ceph -s\``, { cause: err });
    }
    const atConnect = /couldn't connect to the cluster/.test(stderr);
    if (atConnect) {
      if (errno === 13 || errno === 1) {
        return new BaremetalError("auth", `the Ceph monitors at ${mons} refused ${this.client} (cephx): check the key and that the client exists (\`ceph auth get ${this.client}\`)`, { cause: err, unsent: true });
      }
      if (errno === 110) {
        return new BaremetalError(
          "transient",
          `no Ceph monitor at ${mons} answered within ${this.connectTimeoutMs} ms while ${what}: check that the cluster is up and the address (host, port, msgr version) is right`,
          { cause: err, unsent: true },
        );
      }
      return new BaremetalError("transient", `could not connect to the Ceph monitors at ${mons} while ${what}: ${text}`, { cause: err, unsent: true });
    }
    switch (errno) {
      case 1:
      case 13:
        return new BaremetalError("auth", `Ceph refused ${this.client} ${what} (${text}): its caps must allow it on pool ${this.address.pool} (e.g. mon 'profile rbd' osd 'profile rbd pool=${this.address.pool}')`, { cause: err });
      case 2:
        return new BaremetalError("not-found", `${what}: not found (${text})`, { cause: err });
      case 16:
      case 17:
      case 39:
        return new BaremetalError("conflict", `${what}: ${text}`, { cause: err });
      case 28:
      case 122:
        return new BaremetalError("backend", `${what}: the Ceph cluster is full (${text}); free space or add OSDs`, { cause: err });
      case 110:
        return new BaremetalError("timeout", `${what}: timed out in Ceph (${text}); check \`ceph -s\` for inactive PGs or down OSDs`, { cause: err });
      case 108:
        return new BaremetalError("transient", `${what}: this client was blocklisted by the cluster (${text}); retry`, { cause: err });
      case 22:
        return new BaremetalError("backend", `${what}: Ceph said the request is invalid (${text})`, { cause: err });
    }
    return new BaremetalError("backend", `${what}: rbd failed (${text || `exit code ${String(err.code)}`})`, { cause: err });
  }

  dispose(): void {
    if (!this.dir) return;
    fs.rmSync(this.dir, { recursive: true, force: true });
    liveDirs.delete(this.dir);
    this.dir = undefined;
  }
}

export function asBaremetal(e: unknown, what: string): BaremetalError {
  if (isBaremetalError(e)) return e;
  return new BaremetalError("internal", `${what}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
}
