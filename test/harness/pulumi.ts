/**
 * Runs the real `pulumi` CLI (built by scripts/bootstrap.sh) on a throwaway project: local file
 * backend, passphrase secrets, a private PULUMI_HOME, our provider plugin from provider/bin. The
 * project directory sits under test/e2e/.work so that the program resolves @pulumi/pulumi and
 * typescript from the repository's node_modules.
 */
import { spawn } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

export const REPO = resolve(__dirname, "../..");
const WORK = join(REPO, "test/e2e/.work");

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface PulumiProject {
  dir: string;
  env: NodeJS.ProcessEnv;
  /** Runs `pulumi <args>` in the project; rejects on a non-zero exit unless `allowFail`. */
  pulumi(args: string[], opts?: { allowFail?: boolean; input?: string }): Promise<RunResult>;
  /** Replaces the program (index.ts). */
  setProgram(source: string): void;
  setConfig(key: string, value: string, secret?: boolean): Promise<void>;
  /** `pulumi stack output --json --show-secrets`. */
  outputs(): Promise<Record<string, unknown>>;
  /** The stack's deployment (`pulumi stack export`): resources with inputs and outputs. */
  exportStack(): Promise<{ deployment: { resources?: Array<Record<string, unknown>> } }>;
  remove(): void;
}

/** Imports of the generated SDK (compiled by scripts/build-sdk.sh) for test programs. */
export const SDK_IMPORT = `import * as baremetal from ${JSON.stringify(join(REPO, "sdk/nodejs/bin"))};`;

/**
 * Environment for running pulumi offline on a project whose PULUMI_HOME and file backend live in
 * `dir` (home/, state/): no update checks, no plugin downloads, passphrase secrets.
 */
export function offlinePulumiEnv(dir: string, passphrase: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    PULUMI_HOME: join(dir, "home"),
    PULUMI_BACKEND_URL: `file://${join(dir, "state")}`,
    PULUMI_CONFIG_PASSPHRASE: passphrase,
    PULUMI_SKIP_UPDATE_CHECK: "true",
    PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION: "true",
  };
}

export async function newProject(name: string, program: string): Promise<PulumiProject> {
  const dir = join(WORK, `${name}-${process.pid}-${Date.now()}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, "state"), { recursive: true });
  mkdirSync(join(dir, "home"), { recursive: true });
  writeFileSync(
    join(dir, "Pulumi.yaml"),
    [
      `name: ${name}`,
      "runtime:",
      "  name: nodejs",
      "  options:",
      "    typescript: true",
      "plugins:",
      "  providers:",
      "    - name: baremetal",
      `      path: ${join(REPO, "provider/bin")}`,
      "",
    ].join("\n"),
  );
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name, main: "index.ts", private: true }, null, 2));
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({ compilerOptions: { strict: true, target: "es2022", module: "commonjs", moduleResolution: "node", skipLibCheck: true }, files: ["index.ts"] }, null, 2),
  );
  writeFileSync(join(dir, "index.ts"), program);
  const env: NodeJS.ProcessEnv = { ...offlinePulumiEnv(dir, "e2e-passphrase-not-a-secret"), PULUMI_SKIP_CONFIRMATIONS: "true", NO_COLOR: "1" };
  // Nothing of the caller's BAREMETAL_* settings leaks into a test stack.
  for (const k of Object.keys(env)) if (k.startsWith("BAREMETAL_") && k !== "BAREMETAL_NODE" && k !== "BAREMETAL_CACHE") delete env[k];

  const run = (args: string[], opts: { allowFail?: boolean; input?: string } = {}) =>
    new Promise<RunResult>((resolvePromise, reject) => {
      const child = spawn("pulumi", [...args, "--non-interactive", "--color", "never"], { cwd: dir, env, stdio: ["pipe", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d) => (stdout += d));
      child.stderr.on("data", (d) => (stderr += d));
      // A CLI that exits (or closes its stdin) before reading it makes the write fail with EPIPE:
      // its exit code says what happened, so that error is not the test's.
      child.stdin.on("error", () => undefined);
      child.stdin.end(opts.input ?? "");
      child.on("error", reject);
      child.on("close", (code) => {
        const result = { code: code ?? -1, stdout, stderr };
        if (code !== 0 && !opts.allowFail) reject(new Error(`pulumi ${args.join(" ")} exited ${code}\n${stdout}\n${stderr}`));
        else resolvePromise(result);
      });
    });

  await run(["login", `file://${join(dir, "state")}`]);
  await run(["stack", "init", "test"]);

  return {
    dir,
    env,
    pulumi: run,
    setProgram: (source) => writeFileSync(join(dir, "index.ts"), source),
    setConfig: async (key, value, secret = false) => {
      // The value goes in on stdin: never on a command line (secrets), and values may start with "-".
      await run(["config", "set", key, secret ? "--secret" : "--plaintext"], { input: value });
    },
    outputs: async () => JSON.parse((await run(["stack", "output", "--json", "--show-secrets"])).stdout) as Record<string, unknown>,
    exportStack: async () => JSON.parse((await run(["stack", "export"])).stdout),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
