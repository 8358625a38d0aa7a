/**
 * The main job, on the embedded lab (provider/src/lab: our own Redfish emulator, in this process,
 * no Python, no root): one BMC with two machines, powered off.
 *
 *  1. the operator stack (examples/quickstart/operator) enrols both machines into the shared
 *     inventory, one owned by tenant A, one by tenant B;
 *  2. tenant A's stack (examples/quickstart/tenant), configured with its project and role and
 *     the installation's inventory, allocates a node of its project and deploys an image on it;
 *  3. both previews afterwards must be empty; the nodes' facts and the deployment are printed;
 *  4. unless --keep, the tenant's stack is destroyed (the node is cleaned and returned to the
 *     pool), then the operator's, and the lab stops.
 *
 * State, stack configuration and PULUMI_HOME live under .lab/ in the clone. Run through
 * scripts/quickstart.sh, which installs and builds what this needs.
 */
import { spawn } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { startLab } from "../provider/src/lab/lab";
import { offlinePulumiEnv } from "../test/harness/pulumi";

const REPO = resolve(__dirname, "..");
const EXAMPLE = join(REPO, "examples/quickstart");
const LAB = join(REPO, ".lab/quickstart");
const keep = process.argv.includes("--keep");
const TENANT = "lab-tenant-a";

interface Stack {
  dir: string;
  env: NodeJS.ProcessEnv;
  /** The stack's configuration file: written by `stack init`/`config set`, removed after each run. */
  configFile: string;
}

function pulumi(stack: Stack, args: string[], input = ""): Promise<void> {
  return new Promise((ok, fail) => {
    console.log(`\n[${stack.dir.split("/").pop()}] $ pulumi ${args.join(" ")}`);
    const child = spawn("pulumi", [...args, "--non-interactive"], { cwd: stack.dir, env: stack.env, stdio: ["pipe", "inherit", "inherit"] });
    child.stdin.end(input);
    child.on("error", fail);
    child.on("close", (code) => (code === 0 ? ok() : fail(new Error(`pulumi ${args[0]} in ${stack.dir} exited with ${code}`))));
  });
}

/** Config keys set with --secret (the lab adds its own: passwords, the image store's writer URL). */
const secrets = new Set(["baremetal:inventoryUrl"]);

async function configure(stack: Stack, values: Record<string, string>): Promise<void> {
  await pulumi(stack, ["stack", "init", "lab"]);
  for (const [key, value] of Object.entries(values)) {
    await pulumi(stack, ["config", "set", ...(secrets.has(key) ? ["--secret"] : []), key], value);
  }
}

function stackOf(name: "operator" | "tenant"): Stack {
  const dir = join(EXAMPLE, name);
  mkdirSync(join(LAB, name, "state"), { recursive: true });
  return { dir, env: offlinePulumiEnv(join(LAB, name), `quickstart-${name}`), configFile: join(dir, "Pulumi.lab.yaml") };
}

async function main(): Promise<void> {
  rmSync(LAB, { recursive: true, force: true });
  const operator = stackOf("operator");
  const tenant = stackOf("tenant");
  for (const s of [operator, tenant]) rmSync(s.configFile, { force: true });

  const lab = await startLab({ bmcs: 1, systems: 2, powerState: "Off" });
  const { bmcAddress, systemIds } = lab.info.quickstart;
  console.log(`Embedded lab BMC (our Redfish emulator) at ${bmcAddress} with systems ${systemIds.join(", ")}`);
  for (const k of lab.info.secretConfig) secrets.add(k);
  const shared = { ...lab.info.providerConfig, "baremetal:inventoryUrl": `sqlite://${join(LAB, "inventory.db")}` } as Record<string, string>;
  try {
    await configure(operator, {
      ...shared,
      bmcAddress,
      systemIds: JSON.stringify(systemIds),
      owners: JSON.stringify(["lab-tenant-a", "lab-tenant-b"]),
      lessees: JSON.stringify([null, "lab-tenant-a"]),
    });
    await pulumi(operator, ["up", "--yes", "--skip-preview"]);
    await pulumi(operator, ["preview", "--expect-no-changes"]);

    // The tenant deploys without admin rights. (Until the tenant-facing service exists, a stack
    // that deploys talks to the BMCs itself and so holds their credentials.)
    await configure(tenant, {
      ...shared,
      "baremetal:project": TENANT,
      // manager (implies member): may deploy on nodes its project owns, and on nodes leased to it
      // (Ironic lets a lessee's members allocate, but only its admins and managers deploy).
      "baremetal:roles": JSON.stringify(["manager"]),
      imageUrl: "http://images.lab.example/ubuntu-24.04-deploy.iso",
      imageChecksum: `sha256:${"5a".repeat(32)}`,
    });
    await pulumi(tenant, ["up", "--yes", "--skip-preview"]);
    await pulumi(tenant, ["preview", "--expect-no-changes"]);
    await pulumi(operator, ["refresh", "--yes", "--skip-preview"]);
    await pulumi(operator, ["preview", "--expect-no-changes"]);

    await pulumi(operator, ["stack", "output", "facts", "--json"]);
    await pulumi(tenant, ["stack", "output", "--json"]);
    const running = systemIds.map((id) => `${id}: ${lab.bmcs[0].system(id).running ?? "off"}`);
    console.log(`\nWhat the lab's machines run now: ${running.join("; ")}`);

    if (keep) {
      console.log(`\nThe lab BMC keeps running at ${bmcAddress} (in this process, PID ${process.pid}); the stacks are in ${LAB}. Ctrl-C ends it.`);
      await new Promise<void>((r) => process.once("SIGINT", () => r()));
    }
    await pulumi(tenant, ["destroy", "--yes", "--skip-preview"]);
    await pulumi(operator, ["destroy", "--yes", "--skip-preview"]);
    console.log("\nquickstart: operator and tenant stacks came up, previewed empty and were destroyed");
  } finally {
    await lab.stop();
    for (const s of [operator, tenant]) rmSync(s.configFile, { force: true });
  }
}

main().catch((e) => {
  console.error(`quickstart: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
