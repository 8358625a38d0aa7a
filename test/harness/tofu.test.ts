/**
 * Smoke test of the OpenTofu that scripts/bootstrap.sh builds from the Go module proxy (step
 * `tofu`, pinned in scripts/env.sh): it runs, reports the pinned release version, and works
 * offline: `init` against a CLI configuration whose only provider source is an empty
 * filesystem mirror, then plan/apply/output/destroy with local state and the built-in
 * `terraform_data` resource, all inside a network namespace of its own (no route anywhere), so
 * any attempt to reach a registry or checkpoint service would fail the test rather than hang it.
 */
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describeWithPeer } from "./processes";

const tofu = process.env.BAREMETAL_TOFU ?? "tofu";
const wantVersion = process.env.BAREMETAL_TOFU_VERSION?.replace(/^v/, "");

function tofuPeer(): { ok: boolean; why?: string } {
  if (!process.env.BAREMETAL_TOFU) return { ok: false, why: "BAREMETAL_TOFU is not set (source scripts/env.sh)" };
  try {
    fs.accessSync(tofu, fs.constants.X_OK);
  } catch {
    return { ok: false, why: `${tofu} is missing` };
  }
  if (process.getuid?.() !== 0) return { ok: false, why: "the offline test needs root for `unshare --net`" };
  return { ok: true };
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describeWithPeer(tofuPeer(), "tofu.test.ts")("OpenTofu built by bootstrap.sh", () => {
  let dir: string;
  let mirror: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tofu-smoke-"));
    mirror = path.join(dir, "mirror");
    fs.mkdirSync(mirror);
    fs.writeFileSync(
      path.join(dir, "tofurc"),
      `provider_installation {\n  filesystem_mirror {\n    path    = ${JSON.stringify(mirror)}\n    include = ["*/*/*"]\n  }\n}\n`,
    );
    // The machine's environment may carry TF_* settings (a TF_CLI_CONFIG_FILE of its own, a plugin
    // cache): none of them reaches the child, only ours.
    env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TF_")));
    Object.assign(env, {
      TF_CLI_CONFIG_FILE: path.join(dir, "tofurc"),
      TF_IN_AUTOMATION: "1",
      TF_INPUT: "0",
      CHECKPOINT_DISABLE: "1",
      HOME: dir,
    });
  });

  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Runs tofu in `cwd`, inside a fresh network namespace (only a down loopback: no network at all). */
  function run(cwd: string, ...args: string[]): Promise<Run> {
    return new Promise((resolve) => {
      execFile(
        "unshare",
        ["--net", "--", tofu, ...args],
        { cwd, env, encoding: "utf8", timeout: 60_000, maxBuffer: 16 << 20 },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
          resolve({ code, stdout, stderr });
        },
      );
    });
  }

  function config(name: string, text: string): string {
    const cwd = path.join(dir, name);
    fs.mkdirSync(cwd);
    fs.writeFileSync(path.join(cwd, "main.tf"), text);
    return cwd;
  }

  const ok = (r: Run) => expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });

  test("`tofu version` reports the pinned release (no -dev marker)", async () => {
    const json = await run(dir, "version", "-json");
    ok(json);
    const v = JSON.parse(json.stdout) as { terraform_version: string; platform: string };
    expect(v.terraform_version).toMatch(/^\d+\.\d+\.\d+$/);
    if (wantVersion) expect(v.terraform_version).toBe(wantVersion);
    expect(v.platform).toBe("linux_amd64");
    const text = await run(dir, "version");
    ok(text);
    expect(text.stdout.split("\n")[0]).toBe(`OpenTofu v${v.terraform_version}`);
  });

  test("init, apply, output and destroy offline (empty filesystem mirror, no network)", async () => {
    const cwd = config(
      "empty",
      `terraform {\n  required_version = ">= 1.12.0"\n}\n\n` +
        `resource "terraform_data" "smoke" {\n  input = "hello"\n}\n\n` +
        `output "echo" {\n  value = terraform_data.smoke.output\n}\n`,
    );
    const init = await run(cwd, "init", "-no-color");
    ok(init);
    expect(init.stdout).toMatch(/OpenTofu has been successfully initialized/);

    ok(await run(cwd, "apply", "-auto-approve", "-no-color"));
    const out = await run(cwd, "output", "-json");
    ok(out);
    expect(JSON.parse(out.stdout)).toEqual({ echo: { sensitive: false, type: "string", value: "hello" } });

    const plan = await run(cwd, "plan", "-detailed-exitcode", "-no-color");
    expect(plan.code).toBe(0); // 0 = no changes (2 would mean a diff)

    ok(await run(cwd, "destroy", "-auto-approve", "-no-color"));
    const state = JSON.parse(fs.readFileSync(path.join(cwd, "terraform.tfstate"), "utf8")) as { resources: unknown[] };
    expect(state.resources).toEqual([]);
  });

  test("init looks for providers only in the mirror: a missing one fails at once, naming it", async () => {
    const cwd = config(
      "missing-provider",
      `terraform {\n  required_providers {\n    baremetal = {\n      source = "baremetal.invalid/pulumi-baremetal/baremetal"\n    }\n  }\n}\n`,
    );
    const t0 = Date.now();
    const init = await run(cwd, "init", "-no-color");
    expect(init.code).toBe(1);
    // (tofu wraps its messages at 78 columns)
    expect(init.stderr.replace(/\s+/g, " ")).toContain(
      "provider baremetal.invalid/pulumi-baremetal/baremetal was not found in any of the search locations",
    );
    expect(init.stderr).toContain(`- ${mirror}\n`);
    expect(Date.now() - t0).toBeLessThan(30_000);
  });
});
