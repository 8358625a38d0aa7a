/**
 * The main job: `pulumi up` of examples/quickstart against a BMC on loopback, then a preview that
 * must show no changes, the nodes' facts, and (unless --keep) destroy and stop.
 *
 * The BMC is the embedded lab's (provider/src/lab: our own Redfish emulator, in this process,
 * no Python, no root): one BMC with two systems, powered off. State and PULUMI_HOME live under
 * .lab/ in the clone.
 * Run through scripts/quickstart.sh, which installs and builds what this needs.
 */
import { spawn } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { offlinePulumiEnv } from "../test/harness/pulumi";
import { startLab } from "../provider/src/lab/lab";

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
  const lab = await startLab({ bmcs: 1, systems: 2, powerState: "Off" });
  const { bmcAddress, systemIds } = lab.info.quickstart;
  console.log(`Embedded lab BMC (our Redfish emulator) at ${bmcAddress} with systems ${systemIds.join(", ")}`);
  const env = offlinePulumiEnv(LAB, "quickstart");
  try {
    await pulumi(["stack", "init", "lab"], env);
    for (const [key, value] of Object.entries(lab.info.providerConfig)) {
      const secret = /password/i.test(key) ? ["--secret"] : [];
      await pulumi(["config", "set", ...secret, key], env, String(value));
    }
    await pulumi(["config", "set", "baremetal:inventoryUrl"], env, `sqlite://${join(LAB, "inventory.db")}`);
    await pulumi(["config", "set", "bmcAddress"], env, bmcAddress);
    await pulumi(["config", "set", "systemIds"], env, JSON.stringify(systemIds));
    await pulumi(["up", "--yes", "--skip-preview"], env);
    await pulumi(["preview", "--expect-no-changes"], env);
    await pulumi(["stack", "output", "facts", "--json"], env);
    if (keep) {
      console.log(`\nThe lab BMC keeps running at ${bmcAddress} (in this process, PID ${process.pid}); the stack is in ${LAB}. Ctrl-C stops it.`);
      await new Promise<void>((r) => process.once("SIGINT", () => r()));
    }
    await pulumi(["destroy", "--yes", "--skip-preview"], env);
    console.log("\nquickstart: up, an empty preview and destroy all succeeded");
  } finally {
    await lab.stop();
    rmSync(STACK_CONFIG, { force: true });
  }
}

main().catch((e) => {
  console.error(`quickstart: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
