/**
 * Validation of inputs against their field definitions, with ajv over a JSON Schema derived from
 * the same fields that produce schema.json, then the fields' own `validate` functions. Every
 * failure names the property (dotted path) and says how to fix it.
 */
import Ajv, { type ErrorObject, type ValidateFunction } from "ajv";
import { type Field, type Fields, isPlainObject } from "./fields";
import { isUnknown } from "./values";

export interface CheckFailure {
  property: string;
  reason: string;
  /** The kind of error the failure came from when it was not the input's form (`auth`: the policy refused). */
  code?: string;
}

/** A check failure from an error that names its property (keeps whether the policy refused). */
export function checkFailureOf(e: { property?: string; message: string; code?: string }): CheckFailure {
  return { property: e.property ?? "", reason: e.message, ...(e.code === "auth" ? { code: "auth" } : {}) };
}

type JsonSchema = Record<string, unknown>;

export function jsonSchemaOf(field: Field): JsonSchema {
  const s: JsonSchema = {};
  switch (field.type) {
    case "string":
      s.type = "string";
      if (field.enum) s.enum = [...field.enum];
      if (field.pattern) s.pattern = field.pattern;
      if (field.minLength !== undefined) s.minLength = field.minLength;
      if (field.maxLength !== undefined) s.maxLength = field.maxLength;
      break;
    case "integer":
    case "number":
      s.type = field.type;
      if (field.minimum !== undefined) s.minimum = field.minimum;
      if (field.maximum !== undefined) s.maximum = field.maximum;
      break;
    case "boolean":
      s.type = "boolean";
      break;
    case "array":
      s.type = "array";
      s.items = jsonSchemaOf(field.items);
      if (field.uniqueItems) s.uniqueItems = true;
      break;
    case "map":
      s.type = "object";
      s.additionalProperties = jsonSchemaOf(field.values);
      break;
    case "object":
      Object.assign(s, objectSchemaOf(field.properties));
      break;
  }
  return s;
}

export function objectSchemaOf(fields: Fields): JsonSchema {
  const required = Object.entries(fields)
    .filter(([, f]) => f.required)
    .map(([n]) => n);
  return {
    type: "object",
    properties: Object.fromEntries(Object.entries(fields).map(([n, f]) => [n, jsonSchemaOf(f)])),
    ...(required.length ? { required } : {}),
    additionalProperties: false,
  };
}

/** A compiled validator for one set of fields (a resource's inputs, the provider config). */
export class Validator {
  private readonly ajv = new Ajv({ allErrors: true, strict: true });
  private readonly compiled: ValidateFunction;
  private readonly byPath = new Map<string, Field>();

  constructor(private readonly fields: Fields) {
    this.compiled = this.ajv.compile(objectSchemaOf(fields));
    indexFields(fields, "", this.byPath);
  }

  /**
   * Validates `value`. Unknown values (preview) are not judged: a failure at or under an unknown
   * path is dropped, since the real value may well be right.
   */
  check(value: Record<string, unknown>): CheckFailure[] {
    const unknownPaths = new Set<string>();
    const known = stripUnknowns(value, "", unknownPaths) as Record<string, unknown>;
    const failures: CheckFailure[] = [];
    if (!this.compiled(known)) {
      for (const err of this.compiled.errors ?? []) {
        const failure = this.describe(err, known);
        if (!failure) continue;
        if ([...unknownPaths].some((u) => failure.property === u || failure.property.startsWith(`${u}.`))) continue;
        if (!failures.some((f) => f.property === failure.property && f.reason === failure.reason)) failures.push(failure);
      }
    }
    // Custom validators run only where the JSON Schema part passed for that property.
    for (const [path, field] of this.byPath) {
      if (!field.validate || failures.some((f) => f.property === path)) continue;
      const v = valueAt(known, path);
      if (v === undefined) continue;
      const problem = field.validate(v as never);
      if (problem) failures.push({ property: path, reason: withHint(problem, field) });
    }
    return failures;
  }

  private describe(err: ErrorObject, root: unknown): CheckFailure | undefined {
    const base = pointerToPath(err.instancePath);
    const field = this.byPath.get(base.replace(/\[\d+\]/g, "[]"));
    const got = (v: unknown) => (typeof v === "string" ? JSON.stringify(v) : JSON.stringify(v) ?? String(v));
    switch (err.keyword) {
      case "required": {
        const missing = (err.params as { missingProperty: string }).missingProperty;
        const property = base ? `${base}.${missing}` : missing;
        const f = this.byPath.get(property.replace(/\[\d+\]/g, "[]"));
        return { property, reason: withHint(`missing required property '${property}'`, f) };
      }
      case "additionalProperties": {
        const extra = (err.params as { additionalProperty: string }).additionalProperty;
        const property = base ? `${base}.${extra}` : extra;
        const parent = base ? this.byPath.get(base.replace(/\[\d+\]/g, "[]")) : undefined;
        const known = parent?.type === "object" ? Object.keys(parent.properties) : base ? [] : Object.keys(this.fields);
        return { property, reason: `'${property}' is not a known property; known properties here: ${known.join(", ")}` };
      }
      case "enum":
        return {
          property: base,
          reason: withHint(
            `'${base}' must be one of ${(err.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(", ")}; got ${got(valueAt(root, base))}`,
            field,
          ),
        };
      case "type":
        return {
          property: base,
          reason: withHint(`'${base}' must be of type ${(err.params as { type: string }).type}; got ${got(valueAt(root, base))}`, field),
        };
      case "pattern":
        return { property: base, reason: withHint(`'${base}' has the wrong form; got ${got(valueAt(root, base))}`, field) };
      default:
        return { property: base || "(root)", reason: withHint(`'${base}' ${err.message ?? "is invalid"}`, field) };
    }
  }
}

function withHint(message: string, field: Field | undefined): string {
  return field?.hint ? `${message}. ${field.hint}` : message;
}

function indexFields(fields: Fields, prefix: string, into: Map<string, Field>): void {
  for (const [name, field] of Object.entries(fields)) {
    const path = prefix ? `${prefix}.${name}` : name;
    into.set(path, field);
    if (field.type === "object") indexFields(field.properties, path, into);
    if (field.type === "array") {
      into.set(`${path}[]`, field.items);
      if (field.items.type === "object") indexFields(field.items.properties, `${path}[]`, into);
    }
  }
}

function pointerToPath(pointer: string): string {
  if (!pointer) return "";
  return pointer
    .slice(1)
    .split("/")
    .map((seg) => seg.replace(/~1/g, "/").replace(/~0/g, "~"))
    .reduce((acc, seg) => (/^\d+$/.test(seg) ? `${acc}[${seg}]` : acc ? `${acc}.${seg}` : seg), "");
}

function valueAt(root: unknown, path: string): unknown {
  if (!path) return root;
  let cur: unknown = root;
  for (const seg of path.split(".")) {
    const m = /^([^[]*)((?:\[\d+\])*)$/.exec(seg);
    if (!m) return undefined;
    if (m[1]) cur = isPlainObject(cur) ? cur[m[1]] : undefined;
    for (const idx of m[2].match(/\d+/g) ?? []) cur = Array.isArray(cur) ? cur[Number(idx)] : undefined;
  }
  return cur;
}

function stripUnknowns(v: unknown, path: string, unknownPaths: Set<string>): unknown {
  if (isUnknown(v)) {
    unknownPaths.add(path);
    return undefined;
  }
  if (Array.isArray(v)) return v.map((x, i) => stripUnknowns(x, `${path}[${i}]`, unknownPaths));
  if (isPlainObject(v)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      const s = stripUnknowns(x, path ? `${path}.${k}` : k, unknownPaths);
      if (s !== undefined) out[k] = s;
    }
    return out;
  }
  return v;
}
