/**
 * `baremetal`: the project's command line (provider/bin/baremetal runs the built copy of this file).
 *
 *   baremetal lab start [--bmcs N] [--systems M] [--flavor F[,F...]] [--latency-ms L] [--boot-seconds B]
 *                       [--install-seconds S] [--fetch-images] [--port-base P] [--state-file FILE]
 *                       [--username U] [--password P] [--power-state on|off] [--tls]
 *       Starts N emulated Redfish BMCs with M systems each on 127.0.0.1, in the foreground. When
 *       every BMC listens it prints one line of JSON (URLs, system ids, credentials, provider
 *       config, tenants), then a summary for humans, and writes FILE (the same JSON, with the pid)
 *       if given. Ctrl-C (SIGINT) or SIGTERM stops it cleanly and removes FILE.
 *   baremetal lab stop --state-file FILE [--timeout-seconds S]
 *       Stops a lab started in the background with --state-file FILE: checks through the lab's
 *       admin endpoint that the pid in FILE is that lab, sends SIGTERM and waits until it is gone.
 *   baremetal lab wait --state-file FILE [--timeout-seconds S]
 *       Waits until FILE exists and every BMC in it answers its service root (readiness through
 *       the endpoints; for scripts that start the lab in the background).
 *   baremetal lab status --state-file FILE
 *       Prints the lab's JSON if it is running (exit 0), else exits 1.
 *
 *   baremetal serve / baremetal token ...
 *       The tenant-facing service and its tokens (see ../service/cli.ts).
 *
 * Exit codes: 0 success, 1 failure, 2 bad usage.
 */
import * as fs from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import { FLAVOR_NAMES, FlavorName } from "../lab/flavors";
import { LabInfo, LabOptions, startLab } from "../lab/lab";
import { SERVE_FLAGS, SERVICE_USAGE, serveCommand, TOKEN_FLAGS, tokenCommand } from "../service/cli";

const USAGE = `usage:
  baremetal lab start [--bmcs N] [--systems M] [--flavor F[,F...]] [--latency-ms L] [--boot-seconds B]
                      [--install-seconds S] [--fetch-images] [--port-base P] [--state-file FILE]
                      [--username U] [--password P] [--power-state on|off] [--tls]
  baremetal lab stop   --state-file FILE [--timeout-seconds S]
  baremetal lab wait   --state-file FILE [--timeout-seconds S]
  baremetal lab status --state-file FILE
${SERVICE_USAGE}
flavors: ${FLAVOR_NAMES.join(", ")}`;

class UsageError extends Error {}

type Flags = Record<string, string | true>;

const START_FLAGS = [
  "bmcs", "systems", "flavor", "latency-ms", "boot-seconds", "install-seconds", "fetch-images",
  "port-base", "state-file", "username", "password", "power-state", "tls",
];
const BOOLEAN_FLAGS = new Set(["tls", "fetch-images", "help"]);

function parseFlags(args: string[], allowed: string[]): Flags {
  const out: Flags = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "-h" || a === "--help") {
      out.help = true;
      continue;
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) throw new UsageError(`unexpected argument "${a}"`);
    const name = m[1];
    if (!allowed.includes(name)) throw new UsageError(`unknown option --${name}`);
    if (BOOLEAN_FLAGS.has(name)) {
      out[name] = true;
      continue;
    }
    const value = m[2] ?? args[++i];
    if (value === undefined) throw new UsageError(`--${name} needs a value`);
    out[name] = value;
  }
  return out;
}

function intFlag(f: Flags, name: string): number | undefined {
  const v = f[name];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !/^\d+$/.test(v)) throw new UsageError(`--${name} must be a whole number, got "${String(v)}"`);
  return Number(v);
}

function numberFlag(f: Flags, name: string): number | undefined {
  const v = f[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== "string" || !v.trim() || !Number.isFinite(n) || n < 0) throw new UsageError(`--${name} must be a number >= 0, got "${String(v)}"`);
  return n;
}

function stringFlag(f: Flags, name: string): string | undefined {
  const v = f[name];
  return typeof v === "string" ? v : undefined;
}

/** Writes a file atomically (temp file + rename), readable by the owner only. */
function writeStateFile(file: string, data: unknown): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  fs.writeFileSync(tmp, JSON.stringify(data, null, 2) + "\n", { mode: 0o600 });
  fs.renameSync(tmp, file);
}

function readStateFile(file: string): (LabInfo & { stateFile?: string }) | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  const v = JSON.parse(text) as LabInfo;
  if (typeof v?.pid !== "number" || typeof v.labId !== "string" || !Array.isArray(v.bmcs)) {
    throw new Error(`${file} is not a lab state file (no pid, labId or bmcs)`);
  }
  return v;
}

/** GET url as JSON (the lab's own certificate is trusted when `ca` is given); undefined when unreachable. */
function getJson(url: string, ca?: string, timeoutMs = 2000): Promise<{ status: number; body: unknown } | undefined> {
  return new Promise((resolve) => {
    const mod = url.startsWith("https:") ? https : http;
    const req = mod.get(url, { timeout: timeoutMs, ...(url.startsWith("https:") ? { ca } : {}), agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        let body: unknown;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch {
          body = undefined;
        }
        resolve({ status: res.statusCode ?? 0, body });
      });
      res.on("error", () => resolve(undefined));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(undefined));
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

function pause(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function summary(info: LabInfo, stateFile?: string): string {
  const lines: string[] = [];
  const flavors = [...new Set(info.flavors)].join(", ");
  lines.push(
    `Lab ${info.labId} (pid ${info.pid}): ${info.bmcs.length} BMC${info.bmcs.length === 1 ? "" : "s"} (${flavors}), ` +
      `${info.systemsPerBmc} system${info.systemsPerBmc === 1 ? "" : "s"} each, power-on ${info.bootSeconds} s, latency ${info.latencyMs} ms` +
      (info.tls ? ", HTTPS (self-signed)" : ""),
  );
  for (const b of info.bmcs) {
    lines.push(`  BMC ${b.index}  ${b.url}  (${b.flavor}, manager ${b.managerId})`);
    for (const n of info.nodes.filter((x) => x.bmcIndex === b.index)) {
      lines.push(`    ${n.systemId.padEnd(20)} ${n.name}  ${n.resourceClass}  owner ${n.owner}  ${n.macAddresses.join(" ")}`);
    }
  }
  lines.push(`Credentials: ${info.credentials.username} / ${info.credentials.password} (Administrator)`);
  for (const a of info.accounts.slice(1)) lines.push(`             ${a.userName} / ${a.password} (${a.roleId})`);
  lines.push("Provider config:");
  lines.push(`  pulumi config set baremetal:bmcUsername ${info.credentials.username}`);
  lines.push(`  pulumi config set --secret baremetal:bmcPassword ${info.credentials.password}`);
  if (info.providerConfig["baremetal:imageStoreUrl"]) lines.push(`  pulumi config set --secret baremetal:imageStoreUrl ${String(info.providerConfig["baremetal:imageStoreUrl"])}   # config drives`);
  if (info.tls) lines.push("  pulumi config set baremetal:bmcCaBundle -- \"$(cat ca.pem)\"   # the certificate is in the JSON line above");
  lines.push(`Lab-only admin endpoint (faults, request log, clock): ${info.bmcs[0].admin}`);
  lines.push(stateFile ? `Stop: Ctrl-C, or: baremetal lab stop --state-file ${stateFile}` : "Stop: Ctrl-C");
  return lines.join("\n");
}

async function labStart(args: string[]): Promise<number> {
  const f = parseFlags(args, START_FLAGS);
  if (f.help) {
    console.log(USAGE);
    return 0;
  }
  const flavor = stringFlag(f, "flavor");
  const flavors = flavor?.split(",").map((s) => s.trim()).filter(Boolean);
  for (const x of flavors ?? []) if (!FLAVOR_NAMES.includes(x as FlavorName)) throw new UsageError(`unknown flavor "${x}"; use ${FLAVOR_NAMES.join(", ")}`);
  const power = stringFlag(f, "power-state");
  if (power !== undefined && power !== "on" && power !== "off") throw new UsageError(`--power-state must be on or off, got "${power}"`);
  const opts: LabOptions = {
    bmcs: intFlag(f, "bmcs"),
    systems: intFlag(f, "systems"),
    flavor: flavors as FlavorName[] | undefined,
    latencyMs: numberFlag(f, "latency-ms"),
    bootSeconds: numberFlag(f, "boot-seconds"),
    installSeconds: numberFlag(f, "install-seconds"),
    fetchImages: f["fetch-images"] === true,
    portBase: intFlag(f, "port-base"),
    username: stringFlag(f, "username"),
    password: stringFlag(f, "password"),
    powerState: power === "on" ? "On" : power === "off" ? "Off" : undefined,
    tls: f.tls === true,
  };
  const stateFile = stringFlag(f, "state-file");
  if (stateFile) {
    const old = readStateFile(stateFile);
    if (old && alive(old.pid)) {
      const answer = await getJson(`${old.bmcs[0].url}/lab`, old.providerConfig["baremetal:bmcCaBundle"] as string | undefined);
      const body = answer?.body as { labId?: string } | undefined;
      if (body?.labId === old.labId) throw new Error(`a lab (pid ${old.pid}) already runs with the state file ${stateFile}; stop it first`);
    }
  }

  let lab;
  try {
    lab = await startLab(opts);
  } catch (e) {
    if (e instanceof RangeError) throw new UsageError(e.message);
    throw e;
  }
  const info = lab.info;
  const stateFileAbs = stateFile ? path.resolve(stateFile) : undefined;
  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await lab.stop();
    if (stateFileAbs) {
      try {
        if (readStateFile(stateFileAbs)?.labId === info.labId) fs.rmSync(stateFileAbs, { force: true });
      } catch {
        // a state file that is not ours any more is left alone
      }
    }
    console.error(`lab ${info.labId} stopped (${signal})`);
  };
  const done = new Promise<void>((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      process.on(sig, () => {
        void stop(sig).then(resolve);
      });
    }
  });
  if (stateFileAbs) writeStateFile(stateFileAbs, { ...info, stateFile: stateFileAbs });
  process.stdout.write(JSON.stringify(info) + "\n");
  process.stdout.write(summary(info, stateFile) + "\n");
  await done;
  return 0;
}

async function labWait(args: string[]): Promise<number> {
  const f = parseFlags(args, ["state-file", "timeout-seconds"]);
  const file = stringFlag(f, "state-file");
  if (!file) throw new UsageError("lab wait needs --state-file FILE");
  const deadline = Date.now() + (numberFlag(f, "timeout-seconds") ?? 30) * 1000;
  for (;;) {
    let info: LabInfo | undefined;
    try {
      info = readStateFile(file);
    } catch {
      info = undefined; // being written
    }
    if (info) {
      const ca = info.providerConfig["baremetal:bmcCaBundle"] as string | undefined;
      const answers = await Promise.all(info.bmcs.map((b) => getJson(`${b.url}/redfish/v1/`, ca)));
      if (answers.every((a) => a?.status === 200)) {
        process.stdout.write(JSON.stringify(info) + "\n");
        return 0;
      }
    }
    if (Date.now() >= deadline) {
      console.error(`the lab of ${file} was not ready within the timeout`);
      return 1;
    }
    await pause(100);
  }
}

async function labStatus(args: string[]): Promise<number> {
  const f = parseFlags(args, ["state-file"]);
  const file = stringFlag(f, "state-file");
  if (!file) throw new UsageError("lab status needs --state-file FILE");
  const info = readStateFile(file);
  if (!info) {
    console.error(`no lab: ${file} does not exist`);
    return 1;
  }
  const answer = await getJson(`${info.bmcs[0].url}/lab`, info.providerConfig["baremetal:bmcCaBundle"] as string | undefined);
  const body = answer?.body as { labId?: string } | undefined;
  if (body?.labId !== info.labId) {
    console.error(`the lab of ${file} (pid ${info.pid}) does not answer`);
    return 1;
  }
  process.stdout.write(JSON.stringify(info) + "\n");
  return 0;
}

async function labStop(args: string[]): Promise<number> {
  const f = parseFlags(args, ["state-file", "timeout-seconds"]);
  const file = stringFlag(f, "state-file");
  if (!file) throw new UsageError("lab stop needs --state-file FILE");
  const timeoutMs = (numberFlag(f, "timeout-seconds") ?? 10) * 1000;
  const info = readStateFile(file);
  if (!info) {
    console.error(`no lab to stop: ${file} does not exist`);
    return 0;
  }
  if (!alive(info.pid)) {
    fs.rmSync(file, { force: true });
    console.error(`lab ${info.labId} (pid ${info.pid}) was not running; removed the stale ${file}`);
    return 0;
  }
  // Only signal the pid if it is the lab of this file: its admin endpoint must say so.
  const answer = await getJson(`${info.bmcs[0].url}/lab`, info.providerConfig["baremetal:bmcCaBundle"] as string | undefined);
  const body = answer?.body as { labId?: string; pid?: number } | undefined;
  if (body?.labId !== info.labId || body.pid !== info.pid) {
    console.error(`pid ${info.pid} runs, but ${info.bmcs[0].url}/lab does not identify it as lab ${info.labId}; not stopping it`);
    return 1;
  }
  process.kill(info.pid, "SIGTERM");
  const deadline = Date.now() + timeoutMs;
  while (alive(info.pid)) {
    if (Date.now() >= deadline) {
      console.error(`lab ${info.labId} (pid ${info.pid}) did not stop within ${timeoutMs / 1000} s`);
      return 1;
    }
    await pause(50);
  }
  fs.rmSync(file, { force: true });
  console.error(`lab ${info.labId} (pid ${info.pid}) stopped`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [group, command, ...rest] = argv;
  try {
    if (group === undefined || group === "help" || group === "-h" || group === "--help") {
      console.log(USAGE);
      return group === undefined ? 2 : 0;
    }
    if (group === "serve") return await serveCommand(parseFlags([command, ...rest].filter((a) => a !== undefined), SERVE_FLAGS));
    if (group === "token") return await tokenCommand(command, parseFlags(rest, TOKEN_FLAGS));
    if (group !== "lab") throw new UsageError(`unknown command "${group}"`);
    switch (command) {
      case "start":
        return await labStart(rest);
      case "stop":
        return await labStop(rest);
      case "wait":
        return await labWait(rest);
      case "status":
        return await labStatus(rest);
      default:
        throw new UsageError(command ? `unknown lab command "${command}"` : "lab needs a command: start, stop, wait or status");
    }
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`baremetal: ${e.message}\n${USAGE}`);
      return 2;
    }
    console.error(`baremetal: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
