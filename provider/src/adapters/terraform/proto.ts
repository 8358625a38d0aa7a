/**
 * The wire definitions the Terraform adapter speaks, written here as a protobufjs JSON descriptor
 * (no .proto file, no generated code):
 *
 * - `tfplugin6`: the Terraform plugin protocol 6 (minor version 6.10, the one OpenTofu 1.12
 *   speaks): every message of the RPCs OpenTofu 1.12 calls on a provider (it never calls the
 *   list-resource, action and state-store RPCs of 6.10, so those are left out: grpc-js answers
 *   UNIMPLEMENTED for them);
 * - `plugin`: hashicorp/go-plugin's own services (GRPCController, GRPCStdio, GRPCBroker);
 * - `grpc.health.v1`: the standard gRPC health check go-plugin's Ping uses.
 *
 * Field names are the camelCase forms protobufjs uses (`type_name` -> `typeName`); field numbers,
 * types and enum values are the protocol's. Messages go to and from handlers as protobufjs plain
 * objects (see `decodeMessage` / `encodeMessage`): bytes are Buffers, enums numbers, 64-bit
 * integers numbers, and an unset message field is `undefined`.
 */
import * as protobuf from "protobufjs/light";

type FieldJson = { type: string; id: number; rule?: "repeated"; keyType?: string; options?: Record<string, unknown> };
type MessageJson = { fields: Record<string, FieldJson>; nested?: Record<string, MessageJson | EnumJson>; oneofs?: Record<string, { oneof: string[] }> };
type EnumJson = { values: Record<string, number> };

const f = (type: string, id: number): FieldJson => ({ type, id });
const rep = (type: string, id: number): FieldJson => ({ rule: "repeated", type, id });
const map = (type: string, id: number): FieldJson => ({ keyType: "string", type, id });
/** A proto3 `optional` field (explicit presence): a synthetic oneof of its own. */
const opt = (type: string, id: number): FieldJson => ({ type, id, options: { proto3_optional: true } });
const msg = (fields: Record<string, FieldJson> = {}, nested?: Record<string, MessageJson | EnumJson>): MessageJson =>
  nested ? { fields, nested } : { fields };
/** A message with the usual `Request` / `Response` pair nested in it. */
const rpcPair = (request: Record<string, FieldJson>, response: Record<string, FieldJson>, more: Record<string, MessageJson | EnumJson> = {}): MessageJson =>
  msg({}, { Request: msg(request), Response: msg(response), ...more });
/** Adds the synthetic oneofs protobufjs needs for proto3 `optional` fields. */
function withOptionals(m: MessageJson): MessageJson {
  const oneofs: Record<string, { oneof: string[] }> = {};
  for (const [name, field] of Object.entries(m.fields)) if (field.options?.proto3_optional) oneofs[`_${name}`] = { oneof: [name] };
  const nested = m.nested
    ? Object.fromEntries(Object.entries(m.nested).map(([n, v]) => [n, "fields" in v ? withOptionals(v) : v]))
    : undefined;
  return { ...m, ...(Object.keys(oneofs).length ? { oneofs } : {}), ...(nested ? { nested } : {}) };
}

const diagnostics = (id: number) => rep("Diagnostic", id);
const DV = "DynamicValue";
const CC = "ClientCapabilities";
const RID = "ResourceIdentityData";

const tfplugin6: Record<string, MessageJson | EnumJson | { methods: Record<string, { requestType: string; responseType: string; responseStream?: boolean }> }> = {
  DynamicValue: msg({ msgpack: f("bytes", 1), json: f("bytes", 2) }),
  Diagnostic: msg(
    { severity: f("Severity", 1), summary: f("string", 2), detail: f("string", 3), attribute: f("AttributePath", 4) },
    { Severity: { values: { INVALID: 0, ERROR: 1, WARNING: 2 } } },
  ),
  FunctionError: msg({ text: f("string", 1), functionArgument: opt("int64", 2) }),
  AttributePath: msg(
    { steps: rep("Step", 1) },
    {
      Step: {
        fields: { attributeName: f("string", 1), elementKeyString: f("string", 2), elementKeyInt: f("int64", 3) },
        oneofs: { selector: { oneof: ["attributeName", "elementKeyString", "elementKeyInt"] } },
      },
    },
  ),
  StopProvider: rpcPair({}, { Error: f("string", 1) }),
  RawState: msg({ json: f("bytes", 1), flatmap: map("string", 2) }),
  StringKind: { values: { PLAIN: 0, MARKDOWN: 1 } },
  ResourceIdentitySchema: msg(
    { version: f("int64", 1), identityAttributes: rep("IdentityAttribute", 2) },
    {
      IdentityAttribute: msg({
        name: f("string", 1),
        type: f("bytes", 2),
        requiredForImport: f("bool", 3),
        optionalForImport: f("bool", 4),
        description: f("string", 5),
      }),
    },
  ),
  ResourceIdentityData: msg({ identityData: f(DV, 1) }),
  Schema: msg(
    { version: f("int64", 1), block: f("Block", 2) },
    {
      Block: msg({
        version: f("int64", 1),
        attributes: rep("Attribute", 2),
        blockTypes: rep("NestedBlock", 3),
        description: f("string", 4),
        descriptionKind: f("StringKind", 5),
        deprecated: f("bool", 6),
        deprecationMessage: f("string", 7),
      }),
      Attribute: msg({
        name: f("string", 1),
        type: f("bytes", 2),
        nestedType: f("Object", 10),
        description: f("string", 3),
        required: f("bool", 4),
        optional: f("bool", 5),
        computed: f("bool", 6),
        sensitive: f("bool", 7),
        descriptionKind: f("StringKind", 8),
        deprecated: f("bool", 9),
        writeOnly: f("bool", 11),
        deprecationMessage: f("string", 12),
      }),
      NestedBlock: msg(
        { typeName: f("string", 1), block: f("Block", 2), nesting: f("NestingMode", 3), minItems: f("int64", 4), maxItems: f("int64", 5) },
        { NestingMode: { values: { INVALID: 0, SINGLE: 1, LIST: 2, SET: 3, MAP: 4, GROUP: 5 } } },
      ),
      Object: msg(
        { attributes: rep("Attribute", 1), nesting: f("NestingMode", 3), minItems: f("int64", 4), maxItems: f("int64", 5) },
        { NestingMode: { values: { INVALID: 0, SINGLE: 1, LIST: 2, SET: 3, MAP: 4 } } },
      ),
    },
  ),
  Function: msg(
    {
      parameters: rep("Parameter", 1),
      variadicParameter: f("Parameter", 2),
      return: f("Return", 3),
      summary: f("string", 4),
      description: f("string", 5),
      descriptionKind: f("StringKind", 6),
      deprecationMessage: f("string", 7),
    },
    {
      Parameter: msg({
        name: f("string", 1),
        type: f("bytes", 2),
        allowNullValue: f("bool", 3),
        allowUnknownValues: f("bool", 4),
        description: f("string", 5),
        descriptionKind: f("StringKind", 6),
      }),
      Return: msg({ type: f("bytes", 1) }),
    },
  ),
  ServerCapabilities: msg({
    planDestroy: f("bool", 1),
    getProviderSchemaOptional: f("bool", 2),
    moveResourceState: f("bool", 3),
    generateResourceConfig: f("bool", 4),
  }),
  ClientCapabilities: msg({ deferralAllowed: f("bool", 1), writeOnlyAttributesAllowed: f("bool", 2) }),
  Deferred: msg(
    { reason: f("Reason", 1) },
    { Reason: { values: { UNKNOWN: 0, RESOURCE_CONFIG_UNKNOWN: 1, PROVIDER_CONFIG_UNKNOWN: 2, ABSENT_PREREQ: 3 } } },
  ),

  GetMetadata: rpcPair(
    {},
    {
      serverCapabilities: f("ServerCapabilities", 1),
      diagnostics: diagnostics(2),
      dataSources: rep("TypeNameMetadata", 3),
      resources: rep("TypeNameMetadata", 4),
      functions: rep("FunctionMetadata", 5),
      ephemeralResources: rep("TypeNameMetadata", 6),
    },
    // (6.10 has one message per kind, all of this shape: { type_name = 1 })
    { TypeNameMetadata: msg({ typeName: f("string", 1) }), FunctionMetadata: msg({ name: f("string", 1) }) },
  ),
  GetProviderSchema: rpcPair(
    {},
    {
      provider: f("Schema", 1),
      resourceSchemas: map("Schema", 2),
      dataSourceSchemas: map("Schema", 3),
      functions: map("Function", 7),
      ephemeralResourceSchemas: map("Schema", 8),
      diagnostics: diagnostics(4),
      providerMeta: f("Schema", 5),
      serverCapabilities: f("ServerCapabilities", 6),
    },
  ),
  ValidateProviderConfig: rpcPair({ config: f(DV, 1) }, { diagnostics: diagnostics(2) }),
  UpgradeResourceState: rpcPair(
    { typeName: f("string", 1), version: f("int64", 2), rawState: f("RawState", 3) },
    { upgradedState: f(DV, 1), diagnostics: diagnostics(2) },
  ),
  GetResourceIdentitySchemas: rpcPair({}, { identitySchemas: map("ResourceIdentitySchema", 1), diagnostics: diagnostics(2) }),
  UpgradeResourceIdentity: rpcPair(
    { typeName: f("string", 1), version: f("int64", 2), rawIdentity: f("RawState", 3) },
    { upgradedIdentity: f(RID, 1), diagnostics: diagnostics(2) },
  ),
  ValidateResourceConfig: rpcPair({ typeName: f("string", 1), config: f(DV, 2), clientCapabilities: f(CC, 3) }, { diagnostics: diagnostics(1) }),
  ValidateDataResourceConfig: rpcPair({ typeName: f("string", 1), config: f(DV, 2) }, { diagnostics: diagnostics(1) }),
  ValidateEphemeralResourceConfig: rpcPair({ typeName: f("string", 1), config: f(DV, 2) }, { diagnostics: diagnostics(1) }),
  ConfigureProvider: rpcPair({ terraformVersion: f("string", 1), config: f(DV, 2), clientCapabilities: f(CC, 3) }, { diagnostics: diagnostics(1) }),
  ReadResource: rpcPair(
    {
      typeName: f("string", 1),
      currentState: f(DV, 2),
      private: f("bytes", 3),
      providerMeta: f(DV, 4),
      clientCapabilities: f(CC, 5),
      currentIdentity: f(RID, 6),
    },
    { newState: f(DV, 1), diagnostics: diagnostics(2), private: f("bytes", 3), deferred: f("Deferred", 4), newIdentity: f(RID, 5) },
  ),
  PlanResourceChange: rpcPair(
    {
      typeName: f("string", 1),
      priorState: f(DV, 2),
      proposedNewState: f(DV, 3),
      config: f(DV, 4),
      priorPrivate: f("bytes", 5),
      providerMeta: f(DV, 6),
      clientCapabilities: f(CC, 7),
      priorIdentity: f(RID, 8),
    },
    {
      plannedState: f(DV, 1),
      requiresReplace: rep("AttributePath", 2),
      plannedPrivate: f("bytes", 3),
      diagnostics: diagnostics(4),
      legacyTypeSystem: f("bool", 5),
      deferred: f("Deferred", 6),
      plannedIdentity: f(RID, 7),
    },
  ),
  ApplyResourceChange: rpcPair(
    {
      typeName: f("string", 1),
      priorState: f(DV, 2),
      plannedState: f(DV, 3),
      config: f(DV, 4),
      plannedPrivate: f("bytes", 5),
      providerMeta: f(DV, 6),
      plannedIdentity: f(RID, 7),
    },
    { newState: f(DV, 1), private: f("bytes", 2), diagnostics: diagnostics(3), legacyTypeSystem: f("bool", 4), newIdentity: f(RID, 5) },
  ),
  ImportResourceState: rpcPair(
    { typeName: f("string", 1), id: f("string", 2), clientCapabilities: f(CC, 3), identity: f(RID, 4) },
    { importedResources: rep("ImportedResource", 1), diagnostics: diagnostics(2), deferred: f("Deferred", 3) },
    { ImportedResource: msg({ typeName: f("string", 1), state: f(DV, 2), private: f("bytes", 3), identity: f(RID, 4) }) },
  ),
  MoveResourceState: rpcPair(
    {
      sourceProviderAddress: f("string", 1),
      sourceTypeName: f("string", 2),
      sourceSchemaVersion: f("int64", 3),
      sourceState: f("RawState", 4),
      targetTypeName: f("string", 5),
      sourcePrivate: f("bytes", 6),
      sourceIdentity: f("RawState", 7),
      sourceIdentitySchemaVersion: f("int64", 8),
    },
    { targetState: f(DV, 1), diagnostics: diagnostics(2), targetPrivate: f("bytes", 3), targetIdentity: f(RID, 4) },
  ),
  ReadDataSource: rpcPair(
    { typeName: f("string", 1), config: f(DV, 2), providerMeta: f(DV, 3), clientCapabilities: f(CC, 4) },
    { state: f(DV, 1), diagnostics: diagnostics(2), deferred: f("Deferred", 3) },
  ),
  OpenEphemeralResource: rpcPair(
    { typeName: f("string", 1), config: f(DV, 2), clientCapabilities: f(CC, 3) },
    { diagnostics: diagnostics(1), renewAt: opt("Timestamp", 2), result: f(DV, 3), private: opt("bytes", 4), deferred: f("Deferred", 5) },
  ),
  RenewEphemeralResource: rpcPair(
    { typeName: f("string", 1), private: opt("bytes", 2) },
    { diagnostics: diagnostics(1), renewAt: opt("Timestamp", 2), private: opt("bytes", 3) },
  ),
  CloseEphemeralResource: rpcPair({ typeName: f("string", 1), private: opt("bytes", 2) }, { diagnostics: diagnostics(1) }),
  GetFunctions: rpcPair({}, { functions: map("Function", 1), diagnostics: diagnostics(2) }),
  CallFunction: rpcPair({ name: f("string", 1), arguments: rep(DV, 2) }, { result: f(DV, 1), error: f("FunctionError", 2) }),
  /** google.protobuf.Timestamp, by its wire shape (the ephemeral-resource RPCs' renew_at). */
  Timestamp: msg({ seconds: f("int64", 1), nanos: f("int32", 2) }),
};

/**
 * The RPCs of service tfplugin6.Provider that OpenTofu 1.12 calls (internal/plugin6), plus
 * GetMetadata (part of the service; OpenTofu does not call it today).
 */
export const PROVIDER_RPCS = [
  "GetMetadata",
  "GetProviderSchema",
  "ValidateProviderConfig",
  "ValidateResourceConfig",
  "ValidateDataResourceConfig",
  "UpgradeResourceState",
  "GetResourceIdentitySchemas",
  "UpgradeResourceIdentity",
  "ConfigureProvider",
  "ReadResource",
  "PlanResourceChange",
  "ApplyResourceChange",
  "ImportResourceState",
  "MoveResourceState",
  "ReadDataSource",
  "ValidateEphemeralResourceConfig",
  "OpenEphemeralResource",
  "RenewEphemeralResource",
  "CloseEphemeralResource",
  "GetFunctions",
  "CallFunction",
  "StopProvider",
] as const;
export type RpcName = (typeof PROVIDER_RPCS)[number];

/** The request and response message of an RPC: `<Rpc>.Request` / `<Rpc>.Response`. */
export function rpcTypes(rpc: RpcName): { request: string; response: string } {
  return { request: `tfplugin6.${rpc}.Request`, response: `tfplugin6.${rpc}.Response` };
}

const tfplugin6WithOptionals = Object.fromEntries(
  Object.entries(tfplugin6).map(([n, v]) => [n, "fields" in v ? withOptionals(v as MessageJson) : v]),
);

const descriptor = {
  nested: {
    tfplugin6: {
      nested: {
        ...tfplugin6WithOptionals,
        Provider: {
          methods: Object.fromEntries(PROVIDER_RPCS.map((rpc) => [rpc, { requestType: `${rpc}.Request`, responseType: `${rpc}.Response` }])),
        },
      },
    },
    plugin: {
      nested: {
        // go-plugin's internal/plugin: grpc_controller, grpc_stdio, grpc_broker
        Empty: msg(),
        StdioData: msg({ channel: f("Channel", 1), data: f("bytes", 2) }, { Channel: { values: { INVALID: 0, STDOUT: 1, STDERR: 2 } } }),
        ConnInfo: msg(
          { serviceId: f("uint32", 1), network: f("string", 2), address: f("string", 3), knock: f("Knock", 4) },
          { Knock: msg({ knock: f("bool", 1), ack: f("bool", 2), error: f("string", 3) }) },
        ),
      },
    },
    grpc: {
      nested: {
        health: {
          nested: {
            v1: {
              nested: {
                HealthCheckRequest: msg({ service: f("string", 1) }),
                HealthCheckResponse: msg(
                  { status: f("ServingStatus", 1) },
                  { ServingStatus: { values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } } },
                ),
              },
            },
          },
        },
      },
    },
  },
};

export const root: protobuf.Root = protobuf.Root.fromJSON(descriptor as protobuf.INamespace);
root.resolveAll();

const typeCache = new Map<string, protobuf.Type>();
export function messageType(fullName: string): protobuf.Type {
  let t = typeCache.get(fullName);
  if (!t) {
    t = root.lookupType(fullName);
    typeCache.set(fullName, t);
  }
  return t;
}

const toObjectOptions: protobuf.IConversionOptions = { longs: Number, enums: Number, defaults: true, arrays: true, objects: true };

/** Unset message fields come out of toObject as null: the handler contract says undefined. */
function dropNulls(value: unknown): unknown {
  if (Array.isArray(value)) {
    for (const v of value) dropNulls(v);
  } else if (value !== null && typeof value === "object" && !Buffer.isBuffer(value)) {
    const o = value as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (o[k] === null) delete o[k];
      else dropNulls(o[k]);
    }
  }
  return value;
}

/**
 * Wire bytes -> plain object: camelCase fields, scalars with their proto3 defaults when absent
 * ("" / 0 / false / empty Buffer / [] / {}), unset messages and unset oneof or `optional` fields
 * undefined, bytes as Buffer, enums and 64-bit integers as numbers.
 */
export function decodeMessage(fullName: string, bytes: Uint8Array): any {
  const t = messageType(fullName);
  return dropNulls(t.toObject(t.decode(bytes), toObjectOptions));
}

/** Plain object -> wire bytes (enums by number or name; bytes as Buffer/Uint8Array or base64). */
export function encodeMessage(fullName: string, value: unknown): Buffer {
  const t = messageType(fullName);
  const m = t.fromObject((value ?? {}) as Record<string, unknown>);
  const out = t.encode(m).finish();
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
}

/** Whether the message has a field of that (camelCase) name. */
export function hasField(fullName: string, field: string): boolean {
  return messageType(fullName).fields[field] !== undefined;
}

// ---------------------------------------------------------------------------------------------
// The shapes handlers see and return, for the messages the adapter works with (all optional on
// the way out: an omitted field is its proto3 default).

export const Severity = { INVALID: 0, ERROR: 1, WARNING: 2 } as const;
export const StringKind = { PLAIN: 0, MARKDOWN: 1 } as const;
export const ObjectNesting = { INVALID: 0, SINGLE: 1, LIST: 2, SET: 3, MAP: 4 } as const;
export const BlockNesting = { INVALID: 0, SINGLE: 1, LIST: 2, SET: 3, MAP: 4, GROUP: 5 } as const;
export const DeferredReason = { UNKNOWN: 0, RESOURCE_CONFIG_UNKNOWN: 1, PROVIDER_CONFIG_UNKNOWN: 2, ABSENT_PREREQ: 3 } as const;

/** One cty value: msgpack (what OpenTofu sends, and what we answer), or JSON (only in RawState-like places). */
export interface DynamicValue {
  msgpack?: Buffer;
  json?: Buffer;
}
/** Exactly one selector per step. */
export type AttributePathStep = { attributeName: string } | { elementKeyString: string } | { elementKeyInt: number };
export interface AttributePath {
  steps: AttributePathStep[];
}
export interface Diagnostic {
  severity: number;
  summary: string;
  detail?: string;
  attribute?: AttributePath;
}
export interface SchemaAttribute {
  name: string;
  /** JSON of the cty type (e.g. Buffer.from('["list","string"]')); empty when nestedType is set. */
  type?: Buffer;
  nestedType?: { attributes: SchemaAttribute[]; nesting: number };
  description?: string;
  descriptionKind?: number;
  required?: boolean;
  optional?: boolean;
  computed?: boolean;
  sensitive?: boolean;
  writeOnly?: boolean;
  deprecated?: boolean;
  deprecationMessage?: string;
}
export interface SchemaBlock {
  version?: number;
  attributes?: SchemaAttribute[];
  blockTypes?: { typeName: string; block: SchemaBlock; nesting: number; minItems?: number; maxItems?: number }[];
  description?: string;
  descriptionKind?: number;
  deprecated?: boolean;
  deprecationMessage?: string;
}
export interface Schema {
  version?: number;
  block: SchemaBlock;
}
export interface ServerCapabilities {
  planDestroy?: boolean;
  getProviderSchemaOptional?: boolean;
  moveResourceState?: boolean;
  generateResourceConfig?: boolean;
}
export interface ClientCapabilities {
  deferralAllowed: boolean;
  writeOnlyAttributesAllowed: boolean;
}
export interface RawState {
  json: Buffer;
  flatmap: Record<string, string>;
}
