/**
 * The tenant-facing service as an operator runs it: the built `baremetal serve` (a child process)
 * with a settings file of mode 0600 holding the backend settings and credentials, and tokens issued
 * with `baremetal token create`. Several instances may share one settings file (one inventory).
 *
 *   const svc = await startService(dir, { inventoryUrl, ...lab.info.providerConfig });
 *   const a = await svc.token("tenant-a", "project-a", ["manager", "member"]);
 *   // a broker-mode stack: baremetal:endpoint = svc.url, baremetal:token = a.token (secret)
 *   const second = await svc.another();   // a second instance on the same settings
 *   await svc.stop();
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describeExit, tail, track, untrack } from "./processes";

const CLI = path.resolve(__dirname, "../../provider/dist/src/cli/main.js");
const node = process.env.BAREMETAL_NODE ?? process.execPath;

export interface IssuedToken {
  id: string;
  token: string;
  projectId?: string;
}

export interface ServiceInstance {
  url: string;
  /** The `baremetal serve` process's PID. */
  pid: number;
  /** The settings file (0600). */
  config: string;
  /** The service's request log so far (one JSON object per line). */
  log(): Array<Record<string, unknown>>;
  token(name: string, project: string | undefined, roles: string[], opts?: { ratePerMinute?: number }): Promise<IssuedToken>;
  /** Another instance serving the same settings (and so the same inventory). */
  another(): Promise<ServiceInstance>;
  stop(): Promise<void>;
}

function cli(args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(node, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`baremetal ${args[0]} ${args[1] ?? ""} failed: ${tail(stderr, 10)}`)) : resolve(stdout))),
  );
}

async function serve(config: string): Promise<ServiceInstance> {
  const child: ChildProcess = spawn(node, [CLI, "serve", "--config", config, "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
  track(child);
  let out = "";
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const m = /\{"listening":"([^"]+)"\}/.exec(out);
      if (m) resolve(m[1]);
    });
    child.once("exit", () => reject(new Error(`baremetal serve ${describeExit(child)}: ${tail(err, 20)}`)));
  });
  return {
    url,
    pid: child.pid!,
    config,
    log: () =>
      out
        .split("\n")
        .filter((l) => l.startsWith("{") && !l.includes('"listening"'))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    async token(name, project, roles, opts = {}) {
      const args = ["token", "create", "--config", config, "--name", name, "--roles", roles.join(",")];
      if (project) args.push("--project", project);
      if (opts.ratePerMinute !== undefined) args.push("--rate-per-minute", String(opts.ratePerMinute));
      return JSON.parse(await cli(args)) as IssuedToken;
    },
    another: () => serve(config),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      untrack(child);
    },
  };
}

/**
 * The settings of a service for the embedded lab: the inventory, the lab's BMC settings (its
 * `providerConfig` without the `baremetal:` prefix), and with `masterKey` a local key manager
 * (`<dir>/keys`), a file storage backend (`<dir>/volumes`, made here) and a file backup target
 * (`<dir>/backups`).
 */
export function labServiceSettings(lab: { info: { providerConfig: Record<string, string | boolean> } }, inventoryUrl: string, dir: string, masterKey?: string): Record<string, unknown> {
  const settings: Record<string, unknown> = { inventoryUrl };
  for (const [k, v] of Object.entries(lab.info.providerConfig)) settings[k.replace(/^baremetal:/, "")] = v;
  if (masterKey !== undefined) {
    fs.mkdirSync(path.join(dir, "volumes"), { recursive: true });
    fs.mkdirSync(path.join(dir, "backups"), { recursive: true, mode: 0o700 });
    Object.assign(settings, {
      keyManagers: { local: { driver: "local", address: `file://${path.join(dir, "keys")}` } },
      keyManagerCredentials: { local: { masterKey } },
      storageBackends: { files: { driver: "file", address: `file://${path.join(dir, "volumes")}` } },
      backupTargets: { files: { address: `file://${path.join(dir, "backups")}` } },
    });
  }
  return settings;
}

/** Writes `settings` to `<dir>/service.json` (mode 0600) and starts one instance on it. */
export async function startService(dir: string, settings: Record<string, unknown>): Promise<ServiceInstance> {
  const config = path.join(dir, "service.json");
  fs.writeFileSync(config, JSON.stringify(settings), { mode: 0o600 });
  return serve(config);
}
