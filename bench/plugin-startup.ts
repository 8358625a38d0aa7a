/**
 * Start-up time of the provider plugin: from spawning provider/bin/pulumi-resource-baremetal to
 * the port line on its stdout (what the engine waits for before its first call). Prints figures.
 *
 *   npx tsx bench/plugin-startup.ts [runs]
 */
import { spawn } from "node:child_process";
import { resolve } from "node:path";

const plugin = resolve(__dirname, "../provider/bin/pulumi-resource-baremetal");
const runs = Number(process.argv[2] ?? 10);

function once(): Promise<number> {
  return new Promise((ok, fail) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(plugin, ["127.0.0.1:1"], { stdio: ["ignore", "pipe", "inherit"] });
    child.stdout.once("data", () => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      child.kill("SIGKILL");
      ok(ms);
    });
    child.on("error", fail);
  });
}

async function main(): Promise<void> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) times.push(await once());
  times.sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)];
  console.log(`plugin start-up to port line over ${runs} runs: median ${median.toFixed(0)} ms, min ${times[0].toFixed(0)} ms, max ${times[times.length - 1].toFixed(0)} ms (node ${process.version})`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
