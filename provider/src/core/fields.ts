/**
 * The field DSL: every resource and the provider configuration are described once, as fields.
 * From these definitions come the Pulumi schema (scripts/gen-schema.ts), the JSON Schema that ajv
 * validates against (core/validate.ts), the detailed diff with its replacements (core/diff.ts) and
 * the secret marking of outputs (adapters/pulumi). Nothing else describes a property.
 */

export type Field =
  | StringField
  | IntegerField
  | NumberField
  | BooleanField
  | ArrayField
  | MapField
  | ObjectField;

interface BaseField {
  description: string;
  /** A value the user must give (inputs) or that is always present (outputs). */
  required?: boolean;
  /** Kept secret in state and outputs; never logged. */
  secret?: boolean;
  /** Changing it replaces the resource (the old object is deleted and a new one created). */
  replaceOnChange?: boolean;
  /** Output only: does not change unless the resource is replaced (Pulumi "stables"). */
  stable?: boolean;
  /** Applied by Check when the user leaves the field out. */
  default?: unknown;
  /** Environment variables consulted (in order) when the field is not set; provider config only. */
  env?: string[];
  /**
   * The Terraform attribute's name when the snake_case of the property's cannot be used (a
   * Terraform meta-argument such as `connection` or `count`).
   */
  terraformName?: string;
  /** How to fix a wrong value; appended to every validation failure of this field. */
  hint?: string;
  /** Extra validation beyond JSON Schema; returns a message saying what is wrong, or undefined. */
  validate?: (value: never) => string | undefined;
}

export interface StringField extends BaseField {
  type: "string";
  enum?: readonly string[];
  pattern?: string;
  minLength?: number;
  maxLength?: number;
}
export interface IntegerField extends BaseField {
  type: "integer";
  minimum?: number;
  maximum?: number;
}
export interface NumberField extends BaseField {
  type: "number";
  minimum?: number;
  maximum?: number;
}
export interface BooleanField extends BaseField {
  type: "boolean";
}
export interface ArrayField extends BaseField {
  type: "array";
  items: Field;
  uniqueItems?: boolean;
}
export interface MapField extends BaseField {
  type: "map";
  values: Field;
}
export interface ObjectField extends BaseField {
  type: "object";
  /** Schema type token of the named object type, e.g. `baremetal:compute:Bmc`. */
  typeToken: string;
  properties: Fields;
}

export type Fields = Readonly<Record<string, Field>>;

/** A field's description as the schemas show it (an enum's values appended). */
export function describeField(field: Field): string {
  if (field.type === "string" && field.enum) return `${field.description} One of: ${field.enum.map((v) => `\`${v}\``).join(", ")}.`;
  return field.description;
}

/** Depth-first walk over every field, with its dotted path (`bmc.password`, `traits[]`). */
export function walkFields(fields: Fields, visit: (path: string, field: Field) => void, prefix = ""): void {
  for (const [name, field] of Object.entries(fields)) {
    const path = prefix ? `${prefix}.${name}` : name;
    visit(path, field);
    if (field.type === "object") walkFields(field.properties, visit, path);
    if (field.type === "array" && field.items.type === "object") walkFields(field.items.properties, visit, `${path}[]`);
  }
}

/** Every named object type reachable from the fields, keyed by token. */
export function objectTypes(fields: Fields, into = new Map<string, ObjectField>()): Map<string, ObjectField> {
  const collect = (field: Field): void => {
    if (field.type === "object") {
      into.set(field.typeToken, field);
      for (const f of Object.values(field.properties)) collect(f);
    }
    if (field.type === "array") collect(field.items);
    if (field.type === "map") collect(field.values);
  };
  for (const field of Object.values(fields)) collect(field);
  return into;
}

/** Fills in defaults (recursively into objects) for fields the user left out. */
export function applyDefaults(fields: Fields, value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...value };
  for (const [name, field] of Object.entries(fields)) {
    if (out[name] === undefined && field.default !== undefined) out[name] = structuredClone(field.default);
    const v = out[name];
    if (field.type === "object" && isPlainObject(v)) out[name] = applyDefaults(field.properties, v);
  }
  return out;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
