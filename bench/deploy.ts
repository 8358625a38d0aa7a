/**
 * bench/deploy: N nodes enrolled, allocated and deployed by one `pulumi up` on the embedded lab,
 * with latency L per Redfish request and boot time B. Prints wall time, a lower bound (the
 * critical path of one node times the rounds the engine's parallelism forces), their ratio,
 * Redfish requests per deployed node (total and mutating, counted by the lab), the provider's
 * CPU time per resource operation and its peak memory. Prints figures; asserts nothing.
 *
 *   npx tsx bench/deploy.ts --nodes 10 --latency-ms 20 --boot-seconds 2 [--install-seconds 5] [--parallel 16]
 *
 * Run after scripts/bootstrap.sh, `npm run build` and scripts/build-sdk.sh, with scripts/env.sh sourced.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { startLab } from "../provider/src/lab/lab";
import { offlinePulumiEnv } from "../test/harness/pulumi";

const REPO = resolve(__dirname, "..");

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const N = option("nodes", 10);
const L = option("latency-ms", 20);
const B = option("boot-seconds", 2);
const INSTALL = option("install-seconds", 5);
const PARALLEL = option("parallel", 16);
const SYSTEMS_PER_BMC = 8;

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
import * as baremetal from ${JSON.stringify(join(REPO, "sdk/nodejs/bin"))};
const config = new pulumi.Config();
const nodes = config.requireObject<Array<{ address: string; systemId: string }>>("nodes");
export const states = nodes.map((n, i) => {
  const node = new baremetal.compute.Node("node" + i, { bmc: { address: n.address, systemId: n.systemId }, resourceClass: "bench" });
  const allocation = new baremetal.compute.Allocation("alloc" + i, { candidateNodes: [node.id] });
  return new baremetal.compute.Deployment("deploy" + i, {
    allocationId: allocation.allocationId,
    imageUrl: "http://images.lab.example/bench.iso",
  }, { customTimeouts: { create: "60m" } }).provisionState;
});
`;

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, input = ""): Promise<{ code: number; out: string }> {
  return new Promise((ok, fail) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.stdin.end(input);
    child.on("error", fail);
    child.on("close", (code) => ok({ code: code ?? -1, out }));
  });
}

async function main(): Promise<void> {
  const dir = join(REPO, `.lab/bench-deploy-${N}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, "state"), { recursive: true });
  writeFileSync(join(dir, "Pulumi.yaml"), `name: bench-deploy\nruntime:\n  name: nodejs\n  options:\n    typescript: true\nplugins:\n  providers:\n    - name: baremetal\n      path: ${join(REPO, "provider/bin")}\n`);
  writeFileSync(join(dir, "index.ts"), PROGRAM);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "bench-deploy", private: true }));
  const statsFile = join(dir, "provider-stats.json");

  const lab = await startLab({ bmcs: Math.ceil(N / SYSTEMS_PER_BMC), systems: SYSTEMS_PER_BMC, latencyMs: L, bootSeconds: B, installSeconds: INSTALL, powerState: "Off" });
  const nodes = lab.info.nodes.slice(0, N).map((n) => ({ address: n.address, systemId: n.systemId }));
  const env = { ...offlinePulumiEnv(dir, "bench"), BAREMETAL_STATS_FILE: statsFile };
  const pulumi = (args: string[], input = "") => run("pulumi", [...args, "--non-interactive"], dir, env, input);
  try {
    await pulumi(["stack", "init", "bench"]);
    for (const [k, v] of Object.entries({ ...lab.info.providerConfig, "baremetal:inventoryUrl": `sqlite://${join(dir, "inventory.db")}`, nodes: JSON.stringify(nodes) })) {
      await pulumi(["config", "set", ...(lab.info.secretConfig.includes(k) ? ["--secret"] : []), k], String(v));
    }
    for (const b of lab.bmcs) b.clearLog();
    const t0 = Date.now();
    const up = await pulumi(["up", "--yes", "--skip-preview", "--parallel", String(PARALLEL)]);
    const wallS = (Date.now() - t0) / 1000;
    if (up.code !== 0) throw new Error(`pulumi up failed:\n${up.out.slice(-3000)}`);

    const counters = lab.bmcs.map((b) => b.counters());
    const total = counters.reduce((sum, c) => sum + Object.values(c.requests).reduce((a, n) => a + n, 0), 0);
    const mutating = counters.reduce((sum, c) => sum + Object.entries(c.requests).filter(([m]) => m !== "GET").reduce((a, [, n]) => a + n, 0), 0);
    const stats = existsSync(statsFile) ? JSON.parse(readFileSync(statsFile, "utf8")) : undefined;
    const ops = stats ? Object.entries(stats.calls as Record<string, { count: number }>).filter(([rpc]) => ["create", "update", "delete", "read"].includes(rpc)).reduce((a, [, c]) => a + c.count, 0) : 0;
    const cpuMs = stats ? stats.cpuUserMs + stats.cpuSystemMs : NaN;

    // Critical path of one node: enrol (a few requests), claim (none), deploy: boot the installer,
    // install, boot the disk (B + INSTALL + B lab seconds), plus its Redfish requests at L each.
    const requestsPerNode = total / N;
    const criticalS = 2 * B + INSTALL + (requestsPerNode * L) / 1000;
    const rounds = Math.ceil(N / PARALLEL);
    const lowerBoundS = criticalS * rounds;
    console.log(
      [
        `N=${N} L=${L}ms B=${B}s install=${INSTALL}s parallel=${PARALLEL} (${lab.bmcs.length} lab BMCs x ${SYSTEMS_PER_BMC} systems)`,
        `wall ${wallS.toFixed(1)} s; lower bound ${lowerBoundS.toFixed(1)} s (critical path ${criticalS.toFixed(1)} s x ${rounds} rounds); ratio ${(wallS / lowerBoundS).toFixed(2)}`,
        `Redfish requests per deployed node: ${requestsPerNode.toFixed(1)} total, ${(mutating / N).toFixed(1)} mutating (counted by the lab)`,
        `provider: ${ops} resource operations, CPU ${cpuMs.toFixed(0)} ms (${(cpuMs / Math.max(ops, 1)).toFixed(1)} ms per operation), peak RSS ${stats ? (stats.maxRssKb / 1024).toFixed(0) : "?"} MiB`,
      ].join("\n"),
    );
  } finally {
    await pulumi(["destroy", "--yes", "--skip-preview", "--parallel", String(PARALLEL)]).catch(() => undefined);
    await lab.stop();
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
