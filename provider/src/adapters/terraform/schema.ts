/**
 * The Terraform/OpenTofu view of the provider, derived from the same field definitions as the
 * Pulumi schema (core/fields.ts): nothing here describes a property of its own.
 *
 * Naming: resource `baremetal:<module>:<Name>` is the Terraform type `baremetal_<name>` (snake
 * case; the module is dropped, names are unique across modules), function `baremetal:<module>:get<Name>`
 * the data source `baremetal_<name>`, and property `camelCase` the attribute `snake_case`. Keys of
 * map values are data and keep their spelling.
 *
 * Attributes:
 * - inputs: `required` when required; otherwise `optional`, and also `computed` when the field
 *   has a default (the plan fills it in, so Terraform sees the value the provider uses);
 * - outputs: `computed`;
 * - `secret` -> `sensitive`;
 * - objects and lists/maps of objects are nested attributes (protocol v6 `nested_type`), so
 *   every member carries its own flags; scalars, lists and maps of scalars are plain cty types;
 * - every resource has a computed `id` (the id the core returns).
 * A property whose snake_case name is a Terraform meta-argument (`connection`...) carries its
 * Terraform name in the field (`terraformName`).
 * `replaceOnChange` is not part of the schema: PlanResourceChange answers `requires_replace`.
 *
 * Two renderings: the model the plugin server encodes (GetProviderSchema), and the JSON document
 * `tofu providers schema -json` prints, which the CDK binding generators read.
 */
import { configFields } from "../../core/config";
import { describeField, type Field, type Fields } from "../../core/fields";
import type { FunctionDefinition, ResourceDefinition } from "../../core/resource";
import { functions, resources } from "../../resources";

/** The provider's source address: a non-registry host, so nothing is ever fetched from a registry. */
export const PROVIDER_SOURCE = "baremetal.local/pulumi-baremetal/baremetal";
export const PROVIDER_TYPE = "baremetal";

/** A cty type in its JSON form: "string", "number", "bool", ["list", T], ["map", T], ["object", {..}]. */
export type CtyType = "string" | "number" | "bool" | ["list", CtyType] | ["set", CtyType] | ["map", CtyType] | ["object", Record<string, CtyType>];

export type Nesting = "single" | "list" | "map";

export interface TfAttribute {
  /** Terraform name (snake case). */
  name: string;
  /** The core's name (camel case). */
  coreName: string;
  field: Field;
  description: string;
  required: boolean;
  optional: boolean;
  computed: boolean;
  sensitive: boolean;
  /** The whole attribute's cty type (for nested attributes: the object, list or map of objects). */
  type: CtyType;
  /** Set for objects and lists/maps of objects. */
  nested?: { nesting: Nesting; attributes: TfAttribute[] };
}

export interface TfBlock {
  attributes: TfAttribute[];
  /** The block as one cty object type. */
  type: CtyType;
}

export interface TfResource {
  typeName: string;
  def: ResourceDefinition;
  /** State schema version (UpgradeResourceState). */
  version: number;
  block: TfBlock;
}

export interface TfDataSource {
  typeName: string;
  def: FunctionDefinition;
  block: TfBlock;
}

export interface TfSchema {
  provider: TfBlock;
  resources: TfResource[];
  dataSources: TfDataSource[];
}

/** `bmcAddress` -> `bmc_address`, `memoryGiB` -> `memory_gib`, `iSCSIBoot` -> `i_scsi_boot`. */
export function snake(name: string): string {
  return name
    .replace(/GiB/g, "Gib")
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1_$2")
    .toLowerCase();
}

/** `baremetal:compute:Node` -> `baremetal_node`; `baremetal:compute:getNodes` -> `baremetal_nodes`. */
export function typeNameOf(token: string): string {
  const name = token.split(":").pop() ?? token;
  return `${PROVIDER_TYPE}_${snake(name.replace(/^get(?=[A-Z])/, ""))}`;
}

function scalarType(field: Field): CtyType | undefined {
  switch (field.type) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "bool";
    default:
      return undefined;
  }
}

/** The cty type of a field's value. */
export function ctyTypeOf(field: Field): CtyType {
  const scalar = scalarType(field);
  if (scalar) return scalar;
  switch (field.type) {
    case "array":
      return ["list", ctyTypeOf(field.items)];
    case "map":
      return ["map", ctyTypeOf(field.values)];
    case "object":
      return ["object", Object.fromEntries(Object.entries(field.properties).map(([n, f]) => [snake(n), ctyTypeOf(f)]))];
    default:
      throw new Error(`no cty type for field type ${(field as Field).type}`);
  }
}

type Role = "input" | "output" | "config" | "argument";

function attribute(coreName: string, field: Field, role: Role): TfAttribute {
  const input = role !== "output";
  const required = input && role !== "config" && field.required === true;
  const a: TfAttribute = {
    name: field.terraformName ?? snake(coreName),
    coreName,
    field,
    description: describeField(field),
    required,
    optional: input && !required,
    computed: !input || (role === "input" && !required && field.default !== undefined),
    sensitive: field.secret === true,
    type: ctyTypeOf(field),
  };
  const nestedOf = (f: Field): Fields | undefined => (f.type === "object" ? f.properties : undefined);
  const members =
    field.type === "object"
      ? { nesting: "single" as const, fields: field.properties }
      : field.type === "array" && nestedOf(field.items)
        ? { nesting: "list" as const, fields: nestedOf(field.items)! }
        : field.type === "map" && nestedOf(field.values)
          ? { nesting: "map" as const, fields: nestedOf(field.values)! }
          : undefined;
  if (members) {
    // Members of an output are outputs; members of an input follow their own flags.
    a.nested = { nesting: members.nesting, attributes: Object.entries(members.fields).map(([n, f]) => attribute(n, f, role === "output" ? "output" : role)) };
  }
  return a;
}

function block(attrs: TfAttribute[]): TfBlock {
  return { attributes: attrs, type: ["object", Object.fromEntries(attrs.map((a) => [a.name, a.type]))] };
}

function resourceBlock(def: ResourceDefinition): TfBlock {
  // A property that is both an input and an output (the provider fills it in when the program
  // does not give it) is one optional + computed attribute.
  const inputs = Object.entries(def.inputs).map(([n, f]) => {
    const a = attribute(n, f, "input");
    const out = def.outputs[n];
    if (out && !a.required) a.computed = true;
    if (out?.secret) a.sensitive = true;
    return a;
  });
  const attrs = [
    attribute("id", { type: "string", description: "The object's id." }, "output"),
    ...inputs,
    ...Object.entries(def.outputs)
      .filter(([n]) => !(n in def.inputs))
      .map(([n, f]) => attribute(n, f, "output")),
  ];
  checkUnique(def.token, attrs);
  return block(attrs);
}

/** Names Terraform keeps for meta-arguments: a resource attribute cannot have them (give the field a terraformName). */
const META_ARGUMENTS = new Set(["connection", "count", "depends_on", "for_each", "lifecycle", "provider", "provisioner"]);

function checkUnique(what: string, attrs: TfAttribute[], top = true): void {
  const seen = new Map<string, string>();
  for (const a of attrs) {
    if (top && META_ARGUMENTS.has(a.name)) throw new Error(`${what}: property ${a.coreName} would be the Terraform attribute ${a.name}, a meta-argument; give the field a terraformName`);
    const other = seen.get(a.name);
    if (other !== undefined) throw new Error(`${what}: properties ${other} and ${a.coreName} are both the Terraform attribute ${a.name}`);
    seen.set(a.name, a.coreName);
    if (a.nested) checkUnique(`${what}.${a.coreName}`, a.nested.attributes, false);
  }
}

let cached: TfSchema | undefined;

/** The Terraform schema of the provider (built once per process). */
export function terraformSchema(defs: readonly ResourceDefinition[] = resources, fns: readonly FunctionDefinition[] = functions): TfSchema {
  if (cached && defs === resources && fns === functions) return cached;
  const seen = new Map<string, string>();
  const name = (token: string) => {
    const n = typeNameOf(token);
    if (seen.has(n)) throw new Error(`${token} and ${seen.get(n)} are both the Terraform type ${n}`);
    seen.set(n, token);
    return n;
  };
  const schema: TfSchema = {
    provider: block(Object.entries(configFields).map(([n, f]) => attribute(n, f, "config"))),
    resources: defs.map((def) => ({ typeName: name(def.token), def, version: 0, block: resourceBlock(def) })),
    dataSources: fns.map((def) => ({
      typeName: name(def.token),
      def,
      block: block([
        attribute("id", { type: "string", description: "A fixed id (data sources have no object of their own)." }, "output"),
        ...Object.entries(def.inputs).map(([n, f]) => attribute(n, f, "argument")),
        ...Object.entries(def.outputs).map(([n, f]) => attribute(n, f, "output")),
      ]),
    })),
  };
  if (defs === resources && fns === functions) cached = schema;
  return schema;
}

// ---- the `providers schema -json` document ------------------------------------------------------

type Json = Record<string, unknown>;

function attributeJson(a: TfAttribute): Json {
  const out: Json = {};
  if (a.nested) {
    out.nested_type = {
      attributes: Object.fromEntries(a.nested.attributes.map((m) => [m.name, attributeJson(m)])),
      nesting_mode: a.nested.nesting,
    };
  } else out.type = a.type;
  out.description = a.description;
  out.description_kind = "plain";
  if (a.required) out.required = true;
  if (a.optional) out.optional = true;
  if (a.computed) out.computed = true;
  if (a.sensitive) out.sensitive = true;
  return out;
}

function blockJson(b: TfBlock, description?: string): Json {
  return {
    attributes: Object.fromEntries(b.attributes.map((a) => [a.name, attributeJson(a)])),
    ...(description ? { description, description_kind: "plain" } : {}),
  };
}

/** What `tofu providers schema -json` prints for this provider (the CDK generators' input). */
export function providersSchemaJson(schema: TfSchema = terraformSchema()): Json {
  return {
    format_version: "1.0",
    provider_schemas: {
      [PROVIDER_SOURCE]: {
        provider: { version: 0, block: blockJson(schema.provider, "The baremetal provider. Every setting can also come from a `BAREMETAL_*` environment variable.") },
        resource_schemas: Object.fromEntries(schema.resources.map((r) => [r.typeName, { version: r.version, block: blockJson(r.block, r.def.description) }])),
        data_source_schemas: Object.fromEntries(schema.dataSources.map((d) => [d.typeName, { version: 0, block: blockJson(d.block, d.def.description) }])),
      },
    },
  };
}
