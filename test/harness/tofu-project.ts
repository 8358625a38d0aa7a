/**
 * A throwaway OpenTofu working directory that uses our provider offline.
 *
 * newTofuProject(name, config) makes a temp dir holding:
 * - mirror/<host>/<namespace>/<type>/<version>/linux_amd64/terraform-provider-<type>: a symlink
 *   to the launcher (provider/bin/terraform-provider-baremetal, or opts.launcher), the
 *   "unpacked" filesystem-mirror layout, with the source address and type of schema.ts and the
 *   version of the Pulumi adapter;
 * - tofurc: a CLI configuration whose only provider installation method is that mirror for our
 *   host (`tofu init` never asks a registry), given to tofu as TF_CLI_CONFIG_FILE;
 * - work/main.tf.json: `config`, with terraform.required_providers.baremetal added when missing;
 * and runs `tofu init`. Every tofu run gets -input=false and -no-color, CHECKPOINT_DISABLE=1,
 * TF_IN_AUTOMATION=1, none of the machine's TF_* variables, and the caller's extra env (secrets
 * go there as TF_VAR_*, never on the command line). As root, tofu runs in a network namespace of
 * its own with only loopback up (the provider listens there), so any reach for the network fails.
 * The dir is removed by remove(), or at process exit.
 */
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PROVIDER_VERSION } from "../../provider/src/adapters/pulumi/version";
import { PROVIDER_SOURCE, PROVIDER_TYPE } from "../../provider/src/adapters/terraform/schema";
import { tail, trackDir, untrackDir, type ToolResult } from "./processes";

export const REPO = path.resolve(__dirname, "../..");
export const DEFAULT_LAUNCHER = path.join(REPO, "provider/bin/terraform-provider-baremetal");

export interface TofuRunOptions {
  /** Resolve with a non-zero code instead of rejecting. */
  allowFail?: boolean;
  env?: Record<string, string>;
  timeoutMs?: number;
}

export interface TofuProject {
  /** The project's root temp dir (work/ is the configuration's directory). */
  dir: string;
  workDir: string;
  mirror: string;
  /** What `tofu init` printed. */
  init: ToolResult;
  tofu(args: string[], opts?: TofuRunOptions): Promise<ToolResult>;
  /** `tofu show -json` of the current state. */
  state(): Promise<any>;
  /** Replaces main.tf.json. */
  writeConfig(config: object): void;
  remove(): void;
}

export interface TofuProjectOptions {
  /** The provider executable the mirror points at (default: provider/bin/terraform-provider-baremetal). */
  launcher?: string;
  /** Run tofu in a network namespace (default: when root). */
  netns?: boolean;
  /** Env for `tofu init` and every later run. */
  env?: Record<string, string>;
}

export function tofuBinary(): string {
  return process.env.BAREMETAL_TOFU ?? "tofu";
}

/** Whether the tofu tests can run here (for describeWithPeer). */
export function tofuAvailable(): { ok: boolean; why?: string } {
  if (!process.env.BAREMETAL_TOFU) return { ok: false, why: "BAREMETAL_TOFU is not set (source scripts/env.sh)" };
  try {
    fs.accessSync(process.env.BAREMETAL_TOFU, fs.constants.X_OK);
  } catch {
    return { ok: false, why: `${process.env.BAREMETAL_TOFU} is missing` };
  }
  return { ok: true };
}

/** Subcommands that take -input=false. */
const INPUT_COMMANDS = new Set(["init", "plan", "apply", "destroy", "import", "refresh", "console"]);
/** Subcommands that take -no-color. */
const COLOR_COMMANDS = new Set([...INPUT_COMMANDS, "show", "output", "validate", "taint", "untaint", "get", "test"]);

function withRequiredProvider(config: object): object {
  const c = structuredClone(config) as { terraform?: { required_providers?: Record<string, unknown> } };
  c.terraform ??= {};
  c.terraform.required_providers ??= {};
  c.terraform.required_providers[PROVIDER_TYPE] ??= { source: PROVIDER_SOURCE, version: PROVIDER_VERSION };
  return c;
}

export async function newTofuProject(name: string, config: object, opts: TofuProjectOptions = {}): Promise<TofuProject> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tofu-${name}-`));
  trackDir(dir);
  const workDir = path.join(dir, "work");
  const home = path.join(dir, "home");
  const mirror = path.join(dir, "mirror");
  fs.mkdirSync(workDir);
  fs.mkdirSync(home);

  const [host, namespace, type] = PROVIDER_SOURCE.split("/");
  const pkgDir = path.join(mirror, host, namespace, type, PROVIDER_VERSION, "linux_amd64");
  fs.mkdirSync(pkgDir, { recursive: true });
  fs.symlinkSync(path.resolve(opts.launcher ?? DEFAULT_LAUNCHER), path.join(pkgDir, `terraform-provider-${PROVIDER_TYPE}`));

  const rc = path.join(dir, "tofurc");
  fs.writeFileSync(
    rc,
    `provider_installation {\n  filesystem_mirror {\n    path    = ${JSON.stringify(mirror)}\n    include = [${JSON.stringify(`${host}/*/*`)}]\n  }\n}\n`,
  );

  const baseEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TF_")));
  Object.assign(baseEnv, {
    TF_CLI_CONFIG_FILE: rc,
    TF_IN_AUTOMATION: "1",
    CHECKPOINT_DISABLE: "1",
    HOME: home,
    ...opts.env,
  });
  const netns = opts.netns ?? process.getuid?.() === 0;
  const tofuBin = tofuBinary();

  const writeConfig = (c: object) => fs.writeFileSync(path.join(workDir, "main.tf.json"), `${JSON.stringify(withRequiredProvider(c), null, 2)}\n`);
  writeConfig(config);

  function tofu(args: string[], runOpts: TofuRunOptions = {}): Promise<ToolResult> {
    const [cmd, ...rest] = args;
    const flags = [...(INPUT_COMMANDS.has(cmd) ? ["-input=false"] : []), ...(COLOR_COMMANDS.has(cmd) ? ["-no-color"] : [])];
    const full = cmd === undefined ? [] : [cmd, ...flags, ...rest];
    const env = { ...baseEnv, ...runOpts.env };
    // In the namespace, loopback starts down: bring it up (the provider listens on 127.0.0.1), then exec tofu.
    const [file, argv] = netns
      ? ["unshare", ["--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', tofuBin, ...full]]
      : [tofuBin, full];
    return new Promise((resolve, reject) => {
      execFile(file, argv, { cwd: workDir, env, encoding: "utf8", timeout: runOpts.timeoutMs ?? 120_000, maxBuffer: 32 << 20 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : -1) : 0;
        const result = { code, stdout: String(stdout), stderr: String(stderr) };
        if (code !== 0 && !runOpts.allowFail) {
          reject(new Error(`tofu ${cmd} failed (${code}):\n${tail(result.stderr)}\n${tail(result.stdout, 20)}`));
        } else resolve(result);
      });
    });
  }

  const project: TofuProject = {
    dir,
    workDir,
    mirror,
    init: { code: -1, stdout: "", stderr: "" },
    tofu,
    async state() {
      const r = await tofu(["show", "-json"]);
      return JSON.parse(r.stdout);
    },
    writeConfig,
    remove() {
      fs.rmSync(dir, { recursive: true, force: true });
      untrackDir(dir);
    },
  };
  try {
    project.init = await tofu(["init"]);
  } catch (err) {
    project.remove();
    throw err;
  }
  return project;
}
