/**
 * The Pulumi package schema, derived from the field definitions. scripts/gen-schema.ts writes it to
 * schema.json (the input of `pulumi package gen-sdk`); GetSchema serves the same document.
 */
import { configFields } from "../../core/config";
import { describeField, type Field, type Fields, objectTypes } from "../../core/fields";
import type { FunctionDefinition, ResourceDefinition } from "../../core/resource";
import { functions, resources } from "../../resources";
import { PROVIDER_VERSION } from "./version";

type Spec = Record<string, unknown>;

function typeSpec(field: Field): Spec {
  switch (field.type) {
    case "string":
    case "integer":
    case "number":
    case "boolean":
      return { type: field.type };
    case "array":
      return { type: "array", items: typeSpec(field.items) };
    case "map":
      return { type: "object", additionalProperties: typeSpec(field.values) };
    case "object":
      return { $ref: `#/types/${field.typeToken}` };
  }
}

export function propertySpec(field: Field): Spec {
  const spec: Spec = { ...typeSpec(field), description: describeField(field) };
  if (field.secret) spec.secret = true;
  if (field.replaceOnChange) spec.replaceOnChanges = true;
  if (field.default !== undefined) spec.default = field.default;
  if (field.env?.length) spec.defaultInfo = { environment: [...field.env] };
  return spec;
}

function propertiesSpec(fields: Fields): Spec {
  return Object.fromEntries(Object.entries(fields).map(([n, f]) => [n, propertySpec(f)]));
}

const requiredOf = (fields: Fields) =>
  Object.entries(fields)
    .filter(([, f]) => f.required)
    .map(([n]) => n);

function resourceSpec(r: ResourceDefinition): Spec {
  const required = [...requiredOf(r.inputs), ...requiredOf(r.outputs)];
  return {
    description: r.description,
    properties: { ...propertiesSpec(r.inputs), ...propertiesSpec(r.outputs) },
    required,
    inputProperties: propertiesSpec(r.inputs),
    requiredInputs: requiredOf(r.inputs),
  };
}

function functionSpec(f: FunctionDefinition): Spec {
  return {
    description: f.description,
    inputs: { properties: propertiesSpec(f.inputs), required: requiredOf(f.inputs) },
    outputs: { properties: propertiesSpec(f.outputs), required: requiredOf(f.outputs) },
  };
}

export function packageSchema(defs: readonly ResourceDefinition[] = resources, fns: readonly FunctionDefinition[] = functions): Spec {
  const types = new Map<string, Spec>();
  for (const fields of [configFields, ...[...defs, ...fns].map((r) => ({ ...r.inputs, ...r.outputs }))]) {
    for (const [token, obj] of objectTypes(fields)) {
      types.set(token, { type: "object", description: obj.description, properties: propertiesSpec(obj.properties), required: requiredOf(obj.properties) });
    }
  }
  const byToken = (a: [string, unknown], b: [string, unknown]) => a[0].localeCompare(b[0]);
  return {
    name: "baremetal",
    displayName: "Bare Metal",
    version: PROVIDER_VERSION,
    description: "Declare a multi-tenant bare-metal cloud: nodes driven over their BMCs (Redfish), tenant networks, encrypted volumes, backups and key rotation.",
    keywords: ["pulumi", "baremetal", "redfish", "ironic", "category/infrastructure", "kind/native"],
    license: "Apache-2.0",
    publisher: "pulumi-baremetal",
    meta: { moduleFormat: "(.*)" },
    config: { variables: propertiesSpec(configFields) },
    provider: {
      description: "The baremetal provider. Every setting can also come from a `BAREMETAL_*` environment variable.",
      inputProperties: propertiesSpec(configFields),
    },
    types: Object.fromEntries([...types].sort(byToken)),
    resources: Object.fromEntries(defs.map((r) => [r.token, resourceSpec(r)] as [string, Spec]).sort(byToken)),
    functions: Object.fromEntries(fns.map((f) => [f.token, functionSpec(f)] as [string, Spec]).sort(byToken)),
    language: {
      nodejs: {
        packageName: "@pulumi-baremetal/sdk",
        packageDescription: "Pulumi SDK for the baremetal provider: bare-metal nodes over Redfish, tenant networks, encrypted volumes.",
        dependencies: { "@pulumi/pulumi": "^3.185.0" },
        respectSchemaVersion: true,
      },
    },
  };
}
