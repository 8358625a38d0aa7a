/**
 * Pulumi next to OpenTofu on the same stack, in one run: the provider's start-up time per process
 * (OpenTofu starts the provider anew for every phase) and a full apply (then a no-change plan, and
 * destroy) of N machines enrolled, allocated and deployed on the embedded lab, through the shared
 * scenario engines of test/scenarios (the real pulumi and tofu CLIs, each against a lab of its own).
 *
 *   npx tsx bench/engines.ts [--nodes 10] [--starts 10]
 *
 * Start-up: `--starts` spawns of the launcher (provider/bin/terraform-provider-baremetal) as a
 * plugin client would (magic cookie, AutoMTLS client certificate), timed from spawn to the
 * handshake line; plus what each provider process OpenTofu started during the applies recorded
 * (BAREMETAL_TF_STARTUP_LOG: time from process start to handshake). Prints figures; asserts nothing.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE } from "../provider/src/adapters/terraform/plugin";
import { makeServerCertificate } from "../provider/src/adapters/terraform/tls-cert";
import { startLab } from "../provider/src/lab/lab";
import { ENGINES } from "../test/scenarios/engines";
import { deployedMachines, labSettings, type StackSpec } from "../test/scenarios/stack";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const NODES = arg("nodes", 10);
const STARTS = arg("starts", 10);
const LAUNCHER = path.resolve(__dirname, "../provider/bin/terraform-provider-baremetal");
const IMAGE = "http://images.lab.example/installer.iso";

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (xs: number[]) => `median ${median(xs).toFixed(0)} ms, min ${Math.min(...xs).toFixed(0)}, max ${Math.max(...xs).toFixed(0)} (${xs.length} processes)`;

/** Spawns the launcher as a plugin client does; resolves with ms from spawn to the handshake line. */
function startOnce(clientCert: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(LAUNCHER, [], {
      env: { ...process.env, [MAGIC_COOKIE_KEY]: MAGIC_COOKIE_VALUE, PLUGIN_PROTOCOL_VERSIONS: "6", PLUGIN_MIN_PORT: "10000", PLUGIN_MAX_PORT: "25000", PLUGIN_CLIENT_CERT: clientCert },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
      if (out.includes("\n")) {
        const ms = performance.now() - t0;
        child.kill("SIGKILL");
        if (/^1\|6\|tcp\|/.test(out)) resolve(ms);
        else reject(new Error(`unexpected handshake: ${out.trim()}`));
      }
    });
    child.once("error", reject);
    child.once("exit", (code) => (out.includes("\n") ? undefined : reject(new Error(`the provider exited (${code}) before its handshake`))));
  });
}

async function timed<T>(fn: () => Promise<T>): Promise<number> {
  const t = performance.now();
  await fn();
  return (performance.now() - t) / 1000;
}

async function main(): Promise<void> {
  console.log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "?"}, load ${os.loadavg().map((x) => x.toFixed(1)).join(" ")}, node ${process.version}`);

  // ---- start-up --------------------------------------------------------------------------------
  // A client certificate as OpenTofu's go-plugin client makes one (any self-signed one will do).
  const clientCert = makeServerCertificate().certPem;
  await startOnce(clientCert); // warm the file cache
  const starts: number[] = [];
  for (let i = 0; i < STARTS; i++) starts.push(await startOnce(clientCert));
  console.log(`provider start-up, spawn to handshake line (AutoMTLS): ${fmt(starts)}`);

  // ---- a full apply on each engine -------------------------------------------------------------
  const log = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "engines-bench-")), "startup.jsonl");
  process.env.BAREMETAL_TF_STARTUP_LOG = log;
  const rows: string[] = [];
  for (const name of ["opentofu", "pulumi"] as const) {
    const lab = await startLab({ flavor: "generic", systems: NODES, bootSeconds: 1, installSeconds: 1 });
    const engine = await ENGINES[name](`bench-${name}-${randomBytes(3).toString("hex")}`, labSettings(lab.info));
    try {
      const stack: StackSpec = { resources: deployedMachines(lab.info.nodes.slice(0, NODES), IMAGE) };
      const apply = await timed(() => engine.apply(stack));
      const plan = await timed(async () => {
        const p = await engine.pendingChanges(stack);
        if (p.count) throw new Error(`${name}: the plan after apply is not empty (${p.count})`);
      });
      const destroy = await timed(() => engine.destroy());
      rows.push(`${name.padEnd(9)} apply ${apply.toFixed(1)} s, no-change plan ${plan.toFixed(1)} s, destroy ${destroy.toFixed(1)} s`);
    } finally {
      await engine.remove();
      await lab.stop();
    }
  }
  const underTofu = fs.existsSync(log)
    ? fs
        .readFileSync(log, "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l).handshakeMs as number)
    : [];
  fs.rmSync(path.dirname(log), { recursive: true, force: true });
  console.log(`\n${NODES} machines (${NODES * 3} resources: node, allocation, deployment each), lab boot 1 s + install 1 s per machine:`);
  for (const r of rows) console.log(`  ${r}`);
  if (underTofu.length) console.log(`provider processes OpenTofu started (apply, plan, destroy): ${underTofu.length}; in-process start-up to handshake: ${fmt(underTofu)}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
