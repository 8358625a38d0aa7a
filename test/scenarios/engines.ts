/**
 * The engines a scenario runs through: the real Pulumi CLI (test/harness/pulumi.ts) and real
 * OpenTofu (test/harness/tofu-project.ts), behind one interface, each rendering the same
 * StackSpec (stack.ts). Scenarios are written once against `Engine`.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PROVIDER_SOURCE, typeNameOf } from "../../provider/src/adapters/terraform/schema";
import { PROVIDER_VERSION } from "../../provider/src/adapters/pulumi/version";
import { newProject, type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { newTofuProject } from "../harness/tofu-project";
import { configText, type ProviderSettings, pulumiProgram, type ResourceSpec, secretEnv, type StackSpec, tofuConfig } from "./stack";

export interface Engine {
  readonly name: "pulumi" | "opentofu";
  /** Creates or updates everything the stack declares (and deletes what it no longer does). */
  apply(stack: StackSpec): Promise<string>;
  /** The number of resources a plan/preview would change (after a refresh: drift shows). */
  pendingChanges(stack: StackSpec): Promise<{ count: number; text: string }>;
  outputs(): Promise<Record<string, unknown>>;
  /** Forgets a resource (the object stays) and imports it again by id. */
  reimport(stack: StackSpec, resource: ResourceSpec, id: string): Promise<void>;
  /** The stored state as text (to look for secrets). */
  stateText(): Promise<string>;
  destroy(): Promise<void>;
  remove(): Promise<void>;
}

/** Pulumi: a program rendered from the stack; settings as stack config (secrets encrypted). */
export async function pulumiEngine(name: string, settings: ProviderSettings): Promise<Engine> {
  const p: PulumiProject = await newProject(name, pulumiProgram({ resources: [] }, SDK_IMPORT));
  await p.setConfig("baremetal:inventoryUrl", `sqlite://${p.dir}/inventory.db`, true);
  for (const [k, s] of Object.entries(settings)) await p.setConfig(`baremetal:${k}`, configText(s.value), s.secret);
  const urnOf = async (resource: ResourceSpec) => {
    const st = await p.exportStack();
    const r = (st.deployment.resources ?? []).find((x) => String(x.urn).endsWith(`::${resource.name}`) && x.type === resource.token);
    return r?.urn as string | undefined;
  };
  return {
    name: "pulumi",
    async apply(stack) {
      p.setProgram(pulumiProgram(stack, SDK_IMPORT));
      // With a refresh, like OpenTofu's apply: a change made by hand is corrected, not just seen.
      return (await p.pulumi(["up", "--yes", "--skip-preview", "--refresh"])).stdout;
    },
    async pendingChanges(stack) {
      p.setProgram(pulumiProgram(stack, SDK_IMPORT));
      const r = await p.pulumi(["preview", "--refresh", "--json"]);
      const steps = (JSON.parse(r.stdout).steps ?? []) as Array<{ op: string; urn?: string }>;
      // The stack's own resource (pulumi:pulumi:Stack) is Pulumi's, not one of the stack's resources.
      const ours = steps.filter((s) => !s.urn?.includes("::pulumi:pulumi:Stack::"));
      return { count: ours.filter((s) => s.op !== "same" && s.op !== "read" && s.op !== "refresh").length, text: r.stdout };
    },
    outputs: () => p.outputs(),
    async reimport(stack, resource, id) {
      const urn = await urnOf(resource);
      if (urn) await p.pulumi(["state", "delete", urn, "--yes", "--force"]);
      await p.pulumi(["import", resource.token, resource.name, id, "--yes", "--skip-preview", "--generate-code=false"]);
      p.setProgram(pulumiProgram(stack, SDK_IMPORT));
    },
    stateText: async () => JSON.stringify(await p.exportStack()),
    async destroy() {
      await p.pulumi(["destroy", "--yes", "--skip-preview"]);
    },
    async remove() {
      p.remove();
    },
  };
}

/** OpenTofu: a main.tf.json rendered from the stack; secret settings only in the environment. */
export async function tofuEngine(name: string, settings: ProviderSettings): Promise<Engine> {
  const render = (stack: StackSpec) => tofuConfig(stack, settings, PROVIDER_SOURCE, PROVIDER_VERSION);
  // Not in a network namespace of its own: the provider must reach the lab's BMCs on loopback.
  const t = await newTofuProject(name, render({ resources: [] }), { netns: false });
  // OpenTofu's state encryption (what docs/terraform.md recommends): the state file holds no
  // sensitive value in plain text; the passphrase comes from the environment, like the secrets.
  const passphrase = randomBytes(24).toString("base64url");
  const encryption = [
    `key_provider "pbkdf2" "k" { passphrase = "${passphrase}" }`,
    `method "aes_gcm" "m" { keys = key_provider.pbkdf2.k }`,
    `state { method = method.aes_gcm.m }`,
    `plan { method = method.aes_gcm.m }`,
  ].join("\n");
  const env = { ...secretEnv(settings), BAREMETAL_INVENTORY_URL: `sqlite://${t.dir}/inventory.db`, TF_ENCRYPTION: encryption };
  const tofu = (args: string[], allowFail = false) => t.tofu(args, { env, allowFail });
  const write = (stack: StackSpec) => t.writeConfig(render(stack));
  return {
    name: "opentofu",
    async apply(stack) {
      write(stack);
      return (await tofu(["apply", "-auto-approve"])).stdout;
    },
    async pendingChanges(stack) {
      write(stack);
      // -detailed-exitcode: 0 no changes, 2 changes.
      const r = await tofu(["plan", "-detailed-exitcode", "-out", "tfplan"], true);
      if (r.code !== 0 && r.code !== 2) throw new Error(`tofu plan failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
      if (r.code === 0) return { count: 0, text: r.stdout };
      const plan = JSON.parse((await tofu(["show", "-json", "tfplan"])).stdout) as { resource_changes?: Array<{ change: { actions: string[] } }> };
      const count = (plan.resource_changes ?? []).filter((c) => !(c.change.actions.length === 1 && ["no-op", "read"].includes(c.change.actions[0]))).length;
      return { count, text: r.stdout };
    },
    async outputs() {
      const out = JSON.parse((await tofu(["output", "-json"])).stdout) as Record<string, { value: unknown }>;
      return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.value]));
    },
    async reimport(stack, resource, id) {
      write(stack);
      const address = `${typeNameOf(resource.token)}.${resource.name}`;
      await tofu(["state", "rm", address], true);
      await tofu(["import", address, id]);
    },
    stateText: async () => readFileSync(join(t.workDir, "terraform.tfstate"), "utf8"),
    async destroy() {
      await tofu(["destroy", "-auto-approve"]);
    },
    async remove() {
      t.remove();
    },
  };
}

export const ENGINES = { pulumi: pulumiEngine, opentofu: tofuEngine } as const;
