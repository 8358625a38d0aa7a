/**
 * Entry point of the `pulumi-resource-baremetal` plugin: serve on loopback and print the port on
 * stdout (the engine reads that line); the engine's address comes as the last argument.
 */
import { writeFileSync } from "node:fs";
import { serve } from "./server";

/**
 * BAREMETAL_STATS_FILE (benchmarks only): after every resource call, the process's CPU time, peak
 * memory and the calls so far are written there as JSON.
 */
function statsRecorder(file: string | undefined): ((rpc: string, ms: number) => void) | undefined {
  if (!file) return undefined;
  const calls: Record<string, { count: number; ms: number }> = {};
  return (rpc, ms) => {
    const c = (calls[rpc] ??= { count: 0, ms: 0 });
    c.count++;
    c.ms += ms;
    const usage = process.resourceUsage();
    writeFileSync(file, JSON.stringify({ pid: process.pid, cpuUserMs: usage.userCPUTime / 1000, cpuSystemMs: usage.systemCPUTime / 1000, maxRssKb: usage.maxRSS, calls }));
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => !a.startsWith("-"));
  const engineAddress = args[args.length - 1];
  const { port } = await serve(engineAddress, 0, statsRecorder(process.env.BAREMETAL_STATS_FILE));
  process.stdout.write(`${port}\n`);
}

main().catch((e) => {
  process.stderr.write(`pulumi-resource-baremetal: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
