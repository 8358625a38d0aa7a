/**
 * Engine-neutral stack definitions for the scenarios every engine runs (engines.ts): resources by
 * their core token and core (camelCase) property names, references to other resources' outputs,
 * and provider settings. Each engine renders the same definition in its own language (a Pulumi
 * TypeScript program, an OpenTofu main.tf.json), so a difference between the adapters shows up
 * as a failing scenario, not as two tests that drifted apart.
 */
import { resourcesByToken } from "../../provider/src/resources";
import { terraformSchema, type TfAttribute, typeNameOf } from "../../provider/src/adapters/terraform/schema";

/** The output `output` (core name) of the resource named `resource` in the same stack. */
export class Ref {
  constructor(
    readonly resource: string,
    readonly output: string,
  ) {}
}
export const ref = (resource: string, output = "id") => new Ref(resource, output);

export type Value = null | boolean | number | string | Ref | Value[] | { [k: string]: Value };

export interface ResourceSpec {
  /** Core token, e.g. `baremetal:compute:Node`. */
  token: string;
  /** The resource's name in the program (unique in the stack). */
  name: string;
  props: Record<string, Value>;
}

export interface StackSpec {
  resources: ResourceSpec[];
  /** Stack outputs: name -> a resource's output. */
  outputs?: Record<string, Ref>;
}

/**
 * Provider settings by core name, values as the field types them (objects for JSON settings);
 * `secret` ones never go into a program or configuration file.
 */
export type ProviderSettings = Record<string, { value: unknown; secret?: boolean }>;

/** A setting as Pulumi stack configuration text. */
export const configText = (v: unknown) => (typeof v === "string" ? v : JSON.stringify(v));

/** Settings of the embedded lab (`lab.info.providerConfig` / `secretConfig`) as ProviderSettings. */
export function labSettings(info: { providerConfig: Record<string, string | boolean>; secretConfig: string[] }): ProviderSettings {
  const out: ProviderSettings = {};
  for (const [k, v] of Object.entries(info.providerConfig)) out[k.replace(/^baremetal:/, "")] = { value: v, secret: info.secretConfig.includes(k) };
  return out;
}

/**
 * Machines enrolled (`n<i>`), allocated (`a<i>`) and deployed with `imageUrl` (`d<i>`): the stack
 * of the shared lab scenario and of bench/engines.ts. `node` adds properties to each Node.
 */
export function deployedMachines(nodes: ReadonlyArray<{ address: string; systemId: string }>, imageUrl: string, node: Record<string, Value> = {}): ResourceSpec[] {
  return nodes.flatMap((n, i): ResourceSpec[] => [
    { token: "baremetal:compute:Node", name: `n${i}`, props: { bmc: { address: n.address, systemId: n.systemId }, resourceClass: "small", ...node } },
    { token: "baremetal:compute:Allocation", name: `a${i}`, props: { candidateNodes: [ref(`n${i}`)] } },
    { token: "baremetal:compute:Deployment", name: `d${i}`, props: { allocationId: ref(`a${i}`, "allocationId"), imageUrl } },
  ]);
}

// ---- Pulumi --------------------------------------------------------------------------------------

const ident = (name: string) => `r_${name.replace(/[^A-Za-z0-9_]/g, "_")}`;

function pulumiValue(v: Value): string {
  if (v instanceof Ref) return `${ident(v.resource)}.${v.output}`;
  if (Array.isArray(v)) return `[${v.map(pulumiValue).join(", ")}]`;
  if (v && typeof v === "object") return `{ ${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${pulumiValue(x)}`).join(", ")} }`;
  return JSON.stringify(v);
}

/** The stack as a Pulumi TypeScript program importing the SDK with `sdkImport`. */
export function pulumiProgram(stack: StackSpec, sdkImport: string): string {
  const lines = [sdkImport];
  for (const r of stack.resources) {
    const [, mod, cls] = r.token.split(":");
    lines.push(`const ${ident(r.name)} = new baremetal.${mod}.${cls}(${JSON.stringify(r.name)}, ${pulumiValue(r.props)});`);
  }
  for (const [name, o] of Object.entries(stack.outputs ?? {})) lines.push(`export const ${name} = ${pulumiValue(o)};`);
  return `${lines.join("\n")}\n`;
}

// ---- OpenTofu ------------------------------------------------------------------------------------

function tfRef(stack: StackSpec, r: Ref, attrsOf: (token: string) => TfAttribute[]): string {
  const target = stack.resources.find((x) => x.name === r.resource);
  if (!target) throw new Error(`reference to unknown resource ${r.resource}`);
  const attr = attrsOf(target.token).find((a) => a.coreName === r.output);
  if (!attr) throw new Error(`${target.token} has no output ${r.output}`);
  return `\${${typeNameOf(target.token)}.${r.resource}.${attr.name}}`;
}

function tfValue(v: Value, attrs: TfAttribute[] | undefined, resolve: (r: Ref) => string): unknown {
  if (v instanceof Ref) return resolve(v);
  if (Array.isArray(v)) return v.map((x) => tfValue(x, attrs, resolve));
  if (v && typeof v === "object") {
    // With attributes: an object of the schema (snake_case names); without: map data (keys as they are).
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      const a = attrs?.find((m) => m.coreName === k);
      if (attrs && !a) throw new Error(`no attribute ${k} here (have ${attrs.map((m) => m.coreName).join(", ")})`);
      const inner = a?.nested ? (a.nested.nesting === "single" ? a.nested.attributes : undefined) : undefined;
      if (a?.nested && a.nested.nesting !== "single") {
        // A list or map of objects: each element is an object of the nested attributes.
        const each = (el: Value) => tfValue(el, a.nested!.attributes, resolve);
        out[a.name] = Array.isArray(x) ? x.map(each) : x && typeof x === "object" && !(x instanceof Ref) ? Object.fromEntries(Object.entries(x).map(([mk, mv]) => [mk, each(mv)])) : tfValue(x, undefined, resolve);
      } else out[a ? a.name : k] = tfValue(x, inner, resolve);
    }
    return out;
  }
  return v;
}

/**
 * The stack as an OpenTofu JSON configuration (main.tf.json) for provider `source`/`version`.
 * Non-secret provider settings go into the provider block; secret ones must come from the
 * environment (settingEnv), which the caller passes to tofu.
 */
export function tofuConfig(stack: StackSpec, settings: ProviderSettings, source: string, version: string): Record<string, unknown> {
  const schema = terraformSchema();
  const attrsOf = (token: string) => {
    const r = schema.resources.find((x) => x.def === resourcesByToken.get(token));
    if (!r) throw new Error(`unknown resource ${token}`);
    return r.block.attributes;
  };
  const resolve = (r: Ref) => tfRef(stack, r, attrsOf);
  const provider: Record<string, unknown> = {};
  const variable: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(settings)) {
    const a = schema.provider.attributes.find((x) => x.coreName === k);
    if (!a) throw new Error(`unknown provider setting ${k}`);
    if (s.secret) {
      // A sensitive variable, set from the environment (secretEnv): never in the file.
      // Strings as they are; anything else parsed by tofu as an expression (JSON is one).
      variable[a.name] = { type: a.type === "string" ? "string" : "any", sensitive: true };
      provider[a.name] = `\${var.${a.name}}`;
    } else Object.assign(provider, tfValue({ [k]: s.value as Value }, schema.provider.attributes, resolve));
  }
  const resource: Record<string, Record<string, unknown>> = {};
  for (const r of stack.resources) {
    const type = typeNameOf(r.token);
    resource[type] ??= {};
    resource[type][r.name] = tfValue(r.props, attrsOf(r.token), resolve);
  }
  const sensitive = (o: Ref) => attrsOf(stack.resources.find((x) => x.name === o.resource)!.token).find((a) => a.coreName === o.output)?.sensitive === true;
  const output = Object.fromEntries(Object.entries(stack.outputs ?? {}).map(([n, o]) => [n, { value: resolve(o), ...(sensitive(o) ? { sensitive: true } : {}) }]));
  return {
    terraform: { required_providers: { baremetal: { source, version } } },
    ...(Object.keys(variable).length ? { variable } : {}),
    provider: { baremetal: provider },
    ...(Object.keys(resource).length ? { resource } : {}),
    ...(Object.keys(output).length ? { output } : {}),
  };
}

/** Secret provider settings as the environment of tofu: the TF_VAR_ of each one's sensitive variable. */
export function secretEnv(settings: ProviderSettings): Record<string, string> {
  const schema = terraformSchema();
  return Object.fromEntries(
    Object.entries(settings)
      .filter(([, s]) => s.secret)
      .map(([k, s]) => {
        const a = schema.provider.attributes.find((x) => x.coreName === k)!;
        // Objects as JSON with snake_case attribute names (tofu parses the variable's text as an expression).
        const value = typeof s.value === "string" ? s.value : JSON.stringify((tfValue({ [k]: s.value as Value }, schema.provider.attributes, () => "") as Record<string, unknown>)[a.name]);
        return [`TF_VAR_${a.name}`, value];
      }),
  );
}
