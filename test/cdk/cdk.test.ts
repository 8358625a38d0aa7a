/**
 * The CDK bindings (issue 7, item 3) against the real CDK libraries and their provider generators:
 *
 * - scripts/gen-cdk.ts, run twice as a process of its own (the generators read the environment
 *   when they load), writes byte-identical trees for cdktf and CDK Terrain;
 * - the generated bindings type-check with tsc for both CDKs, and so do the examples against them;
 * - both examples synthesize with the real cdktf 0.21 / cdktn 0.24 `App.synth()` (no CLI), and the
 *   synthesized configuration uses our provider's source address and exactly the attribute names of
 *   our Terraform schema (snake_case, every required input given, no computed-only one set, nested
 *   attributes too), with no secret in it.
 *
 * - each synthesized stack is applied with real OpenTofu through our tfplugin6 provider against
 *   the embedded lab (init offline from the filesystem mirror), plans empty afterwards and is
 *   destroyed; the BMC password (a sensitive variable) is neither in tofu's output nor in the state.
 */
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PROVIDER_SOURCE, providersSchemaJson } from "../../provider/src/adapters/terraform/schema";
import { describeWithPeer, runTool, type ToolResult } from "../harness/processes";

const REPO = path.resolve(__dirname, "../..");
const BIN = path.join(REPO, "node_modules/.bin");
const FLAVOURS = ["cdktf", "cdktn"] as const;
type Flavour = (typeof FLAVOURS)[number];

const tofuPeer = (): { ok: boolean; why?: string } =>
  process.env.BAREMETAL_TOFU && fs.existsSync(process.env.BAREMETAL_TOFU)
    ? { ok: true }
    : { ok: false, why: "BAREMETAL_TOFU is not set or missing (source scripts/env.sh; the generators run `tofu version -json` when they load)" };

/** The environment of child processes: ours without the machine's TF_* settings. */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TF_") && !k.startsWith("CDKTF_")));
  return { ...env, CHECKPOINT_DISABLE: "1", ...extra };
}

function run(file: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; timeoutMs: number }): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: opts.cwd, env: opts.env, timeout: opts.timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Every file under `dir` with its bytes, keyed by relative path. */
function tree(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else out.set(r, fs.readFileSync(path.join(dir, r)));
    }
  };
  walk("");
  return out;
}

// ---- the schema the synthesized configuration is checked against ------------------------------

interface SchemaAttr {
  type?: unknown;
  nested_type?: { attributes: Record<string, SchemaAttr>; nesting_mode: "single" | "list" | "map" };
  required?: boolean;
  optional?: boolean;
  computed?: boolean;
  sensitive?: boolean;
}
interface SchemaBlock {
  block: { attributes: Record<string, SchemaAttr> };
}
const schemaDoc = providersSchemaJson() as {
  provider_schemas: Record<string, { provider: SchemaBlock; resource_schemas: Record<string, SchemaBlock>; data_source_schemas: Record<string, SchemaBlock> }>;
};
const ours = schemaDoc.provider_schemas[PROVIDER_SOURCE];

/** Terraform's meta-arguments of a resource block, and cdktf's metadata key. */
const RESOURCE_META = new Set(["//", "count", "depends_on", "for_each", "lifecycle", "provider", "provisioner", "connection"]);

/**
 * Checks one synthesized object against a block's attributes: every key an input attribute of
 * the schema (so snake_case as the schema spells it, never a computed-only one), every required
 * attribute present, nested attributes recursively. Returns the problems found.
 */
function checkAgainst(where: string, value: Record<string, unknown>, attrs: Record<string, SchemaAttr>, meta: Set<string>): string[] {
  const problems: string[] = [];
  for (const [key, v] of Object.entries(value)) {
    if (meta.has(key)) continue;
    const a = attrs[key];
    if (!a) {
      problems.push(`${where}.${key}: not an attribute of the schema`);
      continue;
    }
    if (!/^[a-z][a-z0-9_]*$/.test(key)) problems.push(`${where}.${key}: not snake_case`);
    if (!a.required && !a.optional) problems.push(`${where}.${key}: computed-only attribute set`);
    if (a.nested_type && typeof v === "object" && v !== null) {
      const members = a.nested_type.attributes;
      const items =
        a.nested_type.nesting_mode === "single"
          ? [[key, v]]
          : a.nested_type.nesting_mode === "list"
            ? (v as unknown[]).map((x, i) => [`${key}[${i}]`, x])
            : Object.entries(v).map(([k, x]) => [`${key}.${k}`, x]);
      for (const [w, item] of items as Array<[string, Record<string, unknown>]>) problems.push(...checkAgainst(`${where}.${w}`, item, members, new Set()));
    }
  }
  for (const [name, a] of Object.entries(attrs)) {
    if (a.required && !(name in value)) problems.push(`${where}.${name}: required attribute missing`);
  }
  return problems;
}

// ---- the tests --------------------------------------------------------------------------------

describe("the synthesized-configuration check itself", () => {
  it("flags a camelCase key, a computed-only attribute, a missing required one and a bad nested member", () => {
    const node = ours.resource_schemas.baremetal_node.block.attributes;
    expect(checkAgainst("n", { bmc: { address: "x" }, resource_class: "c" }, node, RESOURCE_META)).toEqual([]);
    expect(checkAgainst("n", { bmc: { address: "x", systemId: "s" }, resourceClass: "c", provision_state: "active" }, node, RESOURCE_META)).toEqual([
      "n.bmc.systemId: not an attribute of the schema",
      "n.resourceClass: not an attribute of the schema",
      "n.provision_state: computed-only attribute set",
    ]);
    expect(checkAgainst("n", {}, node, RESOURCE_META)).toEqual(["n.bmc: required attribute missing"]);
  });
});


describeWithPeer(tofuPeer(), "test/cdk/cdk.test.ts (generator)")("scripts/gen-cdk.ts", () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "gen-cdk-test-"));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("writes byte-identical bindings for cdktf and CDK Terrain on two runs, with the expected entry points", async () => {
    const runs: Array<Map<string, Buffer>> = [];
    for (const n of [1, 2]) {
      const out = path.join(dir, `run${n}`);
      const t0 = Date.now();
      const r = await runTool(path.join(BIN, "tsx"), [path.join(REPO, "scripts/gen-cdk.ts"), out], childEnv(), 120_000);
      expect({ code: r.code, stderr: r.code === 0 ? "" : r.stderr }).toEqual({ code: 0, stderr: "" });
      console.log(`gen-cdk run ${n}: ${Date.now() - t0} ms wall (process start and schema included)\n${r.stdout.trim()}`);
      runs.push(tree(out));
    }
    const [a, b] = runs;
    expect([...b.keys()]).toEqual([...a.keys()]);
    const differing = [...a.keys()].filter((k) => !a.get(k)!.equals(b.get(k)!));
    expect(differing).toEqual([]);

    for (const f of FLAVOURS) {
      const index = a.get(`${f}/index.ts`)!.toString("utf8");
      for (const ns of ["node", "allocation", "deployment", "volumeAttachment", "dataBaremetalNodes", "provider"]) {
        expect(index).toMatch(new RegExp(`^export \\* as ${ns} from `, "m"));
      }
      // Only TypeScript sources, importing only the CDK library of their own flavour and constructs.
      const files = [...a.keys()].filter((k) => k.startsWith(`${f}/`));
      expect(files.filter((k) => !k.endsWith(".ts"))).toEqual([]);
      const other = f === "cdktf" ? "cdktn" : "cdktf";
      const imports = new Set(files.flatMap((k) => [...a.get(k)!.toString("utf8").matchAll(/from '([^'.][^']*)'/g)].map((m) => m[1])));
      expect([...imports].sort()).toEqual([f, "constructs"].sort());
      expect(files.some((k) => a.get(k)!.includes(`from '${other}'`))).toBe(false);
      // Nothing of the machine or the moment in the output.
      for (const k of files) expect(a.get(k)!.toString("utf8")).not.toMatch(new RegExp(`${os.tmpdir()}|${REPO}|\\b20\\d\\d-\\d\\d-\\d\\d`));
      // VolumeAttachment's `connection` (a meta-argument's name) is the attribute `iscsi_connection` (its terraformName).
      const va = a.get(`${f}/volume-attachment/index.ts`)!.toString("utf8");
      expect(va).toContain("public get iscsiConnection() {");
      expect(va).not.toContain("public get connection() {");
      expect(va).toContain(`(this, "iscsi_connection")`);
    }
  }, 240_000);
});

describe("the generated bindings and the examples type-check", () => {
  it("tsc -p sdk/cdk (both entry points)", async () => {
    const r = await runTool(path.join(BIN, "tsc"), ["-p", path.join(REPO, "sdk/cdk/tsconfig.json")], childEnv(), 180_000);
    expect({ code: r.code, out: r.stdout + r.stderr }).toEqual({ code: 0, out: "" });
  }, 200_000);

  it.each(FLAVOURS)("tsc -p examples/%s-quickstart", async (f) => {
    const r = await runTool(path.join(BIN, "tsc"), ["-p", path.join(REPO, `examples/${f}-quickstart/tsconfig.json`)], childEnv(), 180_000);
    expect({ code: r.code, out: r.stdout + r.stderr }).toEqual({ code: 0, out: "" });
  }, 200_000);
});

describe.each(FLAVOURS)("examples/%s-quickstart synthesizes", (f: Flavour) => {
  let out: string;
  let config: Record<string, any>;

  beforeAll(async () => {
    out = fs.mkdtempSync(path.join(os.tmpdir(), `${f}-synth-`));
    // As a user runs it: `npx tsx main.ts` in the example's directory; only the output directory is ours.
    const t0 = Date.now();
    const r = await run(path.join(BIN, "tsx"), ["main.ts"], { cwd: path.join(REPO, `examples/${f}-quickstart`), env: childEnv({ CDKTF_OUTDIR: out }), timeoutMs: 120_000 });
    if (r.code !== 0) throw new Error(`main.ts exited with ${r.code}: ${r.stderr}`);
    console.log(`${f} synth: ${Date.now() - t0} ms`);
    config = JSON.parse(fs.readFileSync(path.join(out, "stacks/quickstart/cdk.tf.json"), "utf8"));
  }, 150_000);
  afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

  it("writes the manifest and one stack, synthesized by this CDK", () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(out, "manifest.json"), "utf8"));
    expect(Object.keys(manifest.stacks)).toEqual(["quickstart"]);
    expect(manifest.stacks.quickstart.synthesizedStackPath).toBe("stacks/quickstart/cdk.tf.json");
    const version = JSON.parse(fs.readFileSync(path.join(REPO, `node_modules/${f}/package.json`), "utf8")).version;
    expect(config["//"].metadata.version).toBe(version);
  });

  it("requires our provider by its source address, with state next to the configuration", () => {
    expect(config.terraform.required_providers).toEqual({ baremetal: { source: PROVIDER_SOURCE } });
    expect(config.terraform.backend).toEqual({ local: { path: "terraform.tfstate" } });
  });

  it("has the operator's and the tenant's provider configurations", () => {
    const providers = config.provider.baremetal as Array<Record<string, unknown>>;
    expect(providers.map((p) => p.alias)).toEqual(["operator", "tenant"]);
    const tenant = providers[1];
    expect(tenant).toMatchObject({ project: "lab-tenant-a", roles: ["manager"], bmc_password: "${var.bmc_password}", inventory_url: "${var.inventory_url}" });
    expect(providers[0].project).toBeUndefined();
    for (const [i, p] of providers.entries()) {
      expect(checkAgainst(`provider.baremetal[${i}]`, p, ours.provider.block.attributes, new Set(["alias"]))).toEqual([]);
    }
  });

  it("enrols a node, allocates it and deploys it, with the schema's attribute names", () => {
    expect(Object.keys(config.resource).sort()).toEqual(["baremetal_allocation", "baremetal_deployment", "baremetal_node"]);
    const n = config.resource.baremetal_node.rack1_node1;
    expect(n).toMatchObject({
      provider: "baremetal.operator",
      bmc: { address: "${var.bmc_address}", system_id: "${var.system_id}" },
      owner: "lab-tenant-a",
      resource_class: "baremetal-small",
      traits: ["CUSTOM_QUICKSTART"],
    });
    const a = config.resource.baremetal_allocation.web;
    expect(a).toMatchObject({ provider: "baremetal.tenant", resource_class: "baremetal-small", depends_on: ["baremetal_node.rack1_node1"] });
    const d = config.resource.baremetal_deployment.web_deployment;
    expect(d).toMatchObject({
      provider: "baremetal.tenant",
      allocation_id: "${baremetal_allocation.web.allocation_id}",
      image_url: "${var.image_url}",
      image_checksum: "${var.image_checksum}",
    });
    for (const [type, byName] of Object.entries(config.resource as Record<string, Record<string, Record<string, unknown>>>)) {
      for (const [name, body] of Object.entries(byName)) {
        expect(checkAgainst(`${type}.${name}`, body, ours.resource_schemas[type].block.attributes, RESOURCE_META)).toEqual([]);
      }
    }
    expect(config.output).toEqual({
      node_id: { value: "${baremetal_node.rack1_node1.id}" },
      node_name: { value: "${baremetal_allocation.web.node_name}" },
      provision_state: { value: "${baremetal_deployment.web_deployment.provision_state}" },
    });
  });

  it("takes secrets as sensitive variables: none in the configuration", () => {
    for (const v of ["bmc_password", "image_store_url", "inventory_url"]) expect(config.variable[v]).toMatchObject({ type: "string", sensitive: true });
    expect(config.variable.bmc_password.default).toBeUndefined();
    // Every provider attribute the schema marks sensitive is set only from a variable.
    for (const p of config.provider.baremetal as Array<Record<string, unknown>>) {
      for (const [k, v] of Object.entries(p)) if (ours.provider.block.attributes[k]?.sensitive) expect(v).toMatch(/^\$\{var\.[a-z_]+\}$/);
    }
  });
});

/**
 * OpenTofu applies the synthesized stacks against the embedded lab, offline (test/harness/tofu-project.ts:
 * our provider through a filesystem mirror, `tofu init` run by newTofuProject, secrets as TF_VAR_*).
 */
describe.each(FLAVOURS)("examples/%s-quickstart applies with OpenTofu", (f: Flavour) => {
  // Skipped: needs the tfplugin6 server, issue 7 (the provider's resources over the Terraform
  // plugin protocol are being written; until then the launcher has nothing to serve them with).
  it("init, apply, an empty second plan and destroy against the embedded lab", async () => {
    const { startLab } = require("../../provider/src/lab/lab");
    const { newTofuProject } = require("../harness/tofu-project");
    const out = fs.mkdtempSync(path.join(os.tmpdir(), `${f}-apply-`));
    const lab = await startLab({ bmcs: 1, systems: 2, powerState: "Off" });
    let project: { tofu(args: string[], o?: object): Promise<ToolResult>; state(): Promise<any>; remove(): void } | undefined;
    try {
      const r = await run(path.join(BIN, "tsx"), ["main.ts"], { cwd: path.join(REPO, `examples/${f}-quickstart`), env: childEnv({ CDKTF_OUTDIR: out }), timeoutMs: 120_000 });
      expect(r.code).toBe(0);
      const config = JSON.parse(fs.readFileSync(path.join(out, "stacks/quickstart/cdk.tf.json"), "utf8"));
      const { bmcAddress, systemIds } = lab.info.quickstart;
      const vars: Record<string, string> = {
        TF_VAR_bmc_address: bmcAddress,
        TF_VAR_system_id: systemIds[0],
        TF_VAR_bmc_username: lab.info.credentials.username,
        TF_VAR_bmc_password: lab.info.credentials.password,
        TF_VAR_image_store_url: lab.info.env.BAREMETAL_IMAGE_STORE_URL,
        TF_VAR_inventory_url: `sqlite://${path.join(out, "inventory.db")}`,
      };
      // Not in a network namespace of its own: the provider must reach the lab's BMC on loopback.
      project = await newTofuProject(`${f}-quickstart`, config, { env: vars, netns: false });
      const apply = await project!.tofu(["apply", "-auto-approve"]);
      expect(apply.stdout + apply.stderr).not.toContain(lab.info.credentials.password);
      const shown = await project!.state();
      const types = (shown.values?.root_module?.resources ?? []).map((x: { type: string }) => x.type).sort();
      expect(types).toEqual(["baremetal_allocation", "baremetal_deployment", "baremetal_node"]);
      expect(JSON.stringify(shown)).not.toContain(lab.info.credentials.password);
      const plan = await project!.tofu(["plan", "-detailed-exitcode"], { allowFail: true });
      expect(plan.code).toBe(0);
      await project!.tofu(["destroy", "-auto-approve"]);
      expect((await project!.state()).values?.root_module?.resources ?? []).toEqual([]);
    } finally {
      project?.remove();
      await lab.stop();
      fs.rmSync(out, { recursive: true, force: true });
    }
  });
});
