/**
 * The main job: `pulumi up` of examples/quickstart against a BMC on loopback, then a preview that
 * must show no changes, the nodes' facts, and (unless --keep) destroy and stop.
 *
 * Until the embedded lab exists, the BMC is sushy-tools (OpenStack's Redfish emulator, fake
 * driver) with two systems and Basic auth. State and PULUMI_HOME live under .lab/ in the clone.
 * Run through scripts/quickstart.sh, which installs and builds what this needs.
 */
import { spawn } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { offlinePulumiEnv } from "../test/harness/pulumi";
import { startSushy } from "../test/harness/sushy";

const REPO = resolve(__dirname, "..");
const PROGRAM = join(REPO, "examples/quickstart");
const LAB = join(REPO, ".lab/quickstart");
const keep = process.argv.includes("--keep");
/** The lab stack's configuration, written by `pulumi stack init`/`config set`; removed after each run. */
const STACK_CONFIG = join(PROGRAM, "Pulumi.lab.yaml");

function pulumi(args: string[], env: NodeJS.ProcessEnv, input = ""): Promise<void> {
  return new Promise((ok, fail) => {
    console.log(`\n$ pulumi ${args.join(" ")}`);
    const child = spawn("pulumi", [...args, "--non-interactive"], { cwd: PROGRAM, env, stdio: ["pipe", "inherit", "inherit"] });
    child.stdin.end(input);
    child.on("error", fail);
    child.on("close", (code) => (code === 0 ? ok() : fail(new Error(`pulumi ${args[0]} exited with ${code}`))));
  });
}

async function main(): Promise<void> {
  rmSync(LAB, { recursive: true, force: true });
  rmSync(STACK_CONFIG, { force: true });
  mkdirSync(join(LAB, "state"), { recursive: true });
  const password = `qs-${Math.random().toString(36).slice(2)}`;
  const bmc = await startSushy({ systems: 2, username: "admin", password, powerState: "Off" });
  console.log(`BMC (sushy-tools, fake driver) at ${bmc.url} with systems ${bmc.systemIds.join(", ")}`);
  const env = offlinePulumiEnv(LAB, "quickstart");
  try {
    await pulumi(["stack", "init", "lab"], env);
    await pulumi(["config", "set", "baremetal:bmcUsername"], env, "admin");
    await pulumi(["config", "set", "--secret", "baremetal:bmcPassword"], env, password);
    await pulumi(["config", "set", "baremetal:inventoryUrl"], env, `sqlite://${join(LAB, "inventory.db")}`);
    await pulumi(["config", "set", "bmcAddress"], env, bmc.url);
    await pulumi(["config", "set", "systemIds"], env, JSON.stringify(bmc.systemIds));
    await pulumi(["up", "--yes", "--skip-preview"], env);
    await pulumi(["preview", "--expect-no-changes"], env);
    await pulumi(["stack", "output", "facts", "--json"], env);
    if (keep) {
      console.log(`\nThe BMC keeps running at ${bmc.url} (PID ${bmc.pid}); the stack is in ${LAB}. Ctrl-C stops the BMC.`);
      await new Promise<void>((r) => process.once("SIGINT", () => r()));
    }
    await pulumi(["destroy", "--yes", "--skip-preview"], env);
    console.log("\nquickstart: up, an empty preview and destroy all succeeded");
  } finally {
    await bmc.stop();
    rmSync(STACK_CONFIG, { force: true });
  }
}

main().catch((e) => {
  console.error(`quickstart: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
