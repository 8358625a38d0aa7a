/**
 * The OpenAPI 3.1 description of the service's API (api.ts), versioned: `info.version` follows
 * semver, and a released version's document is never changed incompatibly (issue 8 asks CI to
 * reject that; the compatibility check comes with the API's first release). Schemas of objects the
 * provider already describes come from the same field definitions (core/fields.ts).
 */
import { jsonSchemaOf, objectSchemaOf } from "../core/validate";
import type { Fields } from "../core/fields";
import { functions, resources } from "../resources";
import { getNodesFunction } from "../resources/compute/get-nodes";

export interface QueryParameter {
  name: string;
  in: "query";
  required?: boolean;
  description: string;
  schema: Record<string, unknown>;
}

const nodeSummary = (getNodesFunction.outputs.nodes as { items: Parameters<typeof jsonSchemaOf>[0] }).items;

const filters: QueryParameter[] = [
  { name: "owner", in: "query", description: "Only nodes owned by this project.", schema: { type: "string", minLength: 1 } },
  { name: "lessee", in: "query", description: "Only nodes leased to this project.", schema: { type: "string", minLength: 1 } },
  { name: "resourceClass", in: "query", description: "Only nodes of this resource class.", schema: { type: "string", minLength: 1 } },
  { name: "provisionState", in: "query", description: "Only nodes in this provision state.", schema: { type: "string", minLength: 1 } },
];

const paging: QueryParameter[] = [
  { name: "limit", in: "query", description: "Items per page (default 100).", schema: { type: "integer", minimum: 1, maximum: 1000 } },
  { name: "pageToken", in: "query", description: "The `nextPageToken` of the previous page, unchanged.", schema: { type: "string", minLength: 1, maxLength: 2048 } },
];

const errorResponse = (description: string) => ({ description, content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } } });
const errors = { "400": errorResponse("Invalid request."), "401": errorResponse("No valid token."), "403": errorResponse("The policy refuses the call."), "429": errorResponse("The token is over its rate.") };

/** A schema name of a resource token: `baremetal:storage:Volume` -> `StorageVolume`. */
const schemaName = (token: string) => token.split(":").slice(1).map((p) => p[0].toUpperCase() + p.slice(1)).join("").replace(/[^A-Za-z0-9]/g, "");

/** The inputs of a resource with every property optional (a preview's check may lack some). */
const loose = (fields: Fields) => ({ ...objectSchemaOf(fields), required: undefined });

/**
 * The generic resource endpoints (resources.ts), one set per resource type, each with the
 * type's own input schema (from its field definitions) and the object it answers.
 */
function resourcePaths(): Record<string, unknown> {
  const paths: Record<string, unknown> = {};
  const sel = { name: "sel", in: "path", required: true, description: "The object's UUID, its id (as Pulumi/Terraform state holds it, URL-encoded) or its name.", schema: { type: "string", minLength: 1 } };
  const timeout = { name: "x-timeout-seconds", in: "header", required: false, description: "How long the handler may take (default: the resource's).", schema: { type: "integer", minimum: 1, maximum: 604800 } };
  const ifMatch = { name: "if-match", in: "header", required: false, description: "The ETag the change is based on: 412 when the object changed since.", schema: { type: "string", minLength: 1 } };
  for (const def of resources) {
    const n = schemaName(def.token);
    const object = { description: `The ${def.token}.`, headers: { ETag: { schema: { type: "string" } } }, content: { "application/json": { schema: { $ref: `#/components/schemas/${n}Object` } } } };
    paths[`/v1/resources/${def.token}`] = {
      post: {
        operationId: `create${n}`,
        summary: `Creates a ${def.token} for the token's project (its handler runs with the service's backend credentials). ${def.description}`,
        parameters: [{ name: "idempotency-key", in: "header", required: false, description: "A retry with the same key answers the object the first attempt made.", schema: { type: "string", pattern: "^[A-Za-z0-9-]{8,64}$" } }, timeout],
        requestBody: {
          required: true,
          content: { "application/json": { schema: { type: "object", required: ["inputs", "name"], properties: { inputs: objectSchemaOf(def.inputs), name: { type: "string", pattern: "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" }, urn: { type: "string" } }, additionalProperties: false } } },
        },
        responses: {
          "201": object,
          ...errors,
          "404": errorResponse("An object the inputs name (a node, a volume, a key...) does not exist; the error's `property` says which input."),
          "409": errorResponse("A create with this Idempotency-Key is still running, or the object exists."),
        },
      },
      get: {
        operationId: `list${n}`,
        summary: `The token's project's ${def.token} objects (every project's for the operator), by UUID.`,
        parameters: paging,
        responses: { "200": { description: "A page.", content: { "application/json": { schema: { type: "object", required: ["items"], properties: { items: { type: "array", items: { $ref: `#/components/schemas/${n}Object` } }, nextPageToken: { type: "string" } } } } } }, ...errors },
      },
    };
    paths[`/v1/resources/${def.token}/check`] = {
      post: {
        operationId: `check${n}`,
        summary: `What a create of these inputs would be refused for (validation, the resource's checks, the policy): what a preview shows. Values not known yet are {"@unknown": true}.`,
        requestBody: {
          required: true,
          content: {
            "application/json": {
              schema: {
                type: "object",
                required: ["inputs"],
                // Any object: judging it is the point; what is wrong comes back as failures (200). The properties the type knows are listed.
                properties: { inputs: { ...loose(def.inputs), additionalProperties: true, properties: Object.fromEntries(Object.keys(def.inputs).map((k) => [k, {}])) }, name: { type: "string" } },
                additionalProperties: false,
              },
            },
          },
        },
        responses: { "200": { description: "The failures (none: fine).", content: { "application/json": { schema: { $ref: "#/components/schemas/CheckResult" } } } }, ...errors },
      },
    };
    paths[`/v1/resources/${def.token}/{sel}`] = {
      get: {
        operationId: `get${n}`,
        summary: `A ${def.token}; with refresh=true read again from its backend.`,
        parameters: [sel, { name: "refresh", in: "query", required: false, description: "Read the object from its backend first.", schema: { type: "boolean" } }, timeout],
        responses: { "200": object, ...errors, "404": errorResponse("No such object (or it is gone from its backend).") },
      },
      put: {
        operationId: `update${n}`,
        summary: `Changes a ${def.token} to these inputs.`,
        parameters: [sel, ifMatch, timeout],
        requestBody: { required: true, content: { "application/json": { schema: { type: "object", required: ["inputs"], properties: { inputs: objectSchemaOf(def.inputs) }, additionalProperties: false } } } },
        responses: { "200": object, ...errors, "404": errorResponse("No such object."), "412": errorResponse("The object changed since the ETag given.") },
      },
      delete: {
        operationId: `delete${n}`,
        summary: `Deletes a ${def.token} from its backend and the service.`,
        parameters: [sel, ifMatch, timeout],
        responses: { "204": { description: "Deleted." }, ...errors, "404": errorResponse("No such object."), "412": errorResponse("The object changed since the ETag given.") },
      },
    };
  }
  for (const fn of functions) {
    paths[`/v1/functions/${fn.token}`] = {
      post: {
        operationId: `call${schemaName(fn.token)}`,
        summary: fn.description,
        requestBody: { required: true, content: { "application/json": { schema: { type: "object", properties: { args: objectSchemaOf(fn.inputs) }, additionalProperties: false } } } },
        responses: { "200": { description: "The result.", content: { "application/json": { schema: objectSchemaOf(fn.outputs) } } }, ...errors },
      },
    };
  }
  return paths;
}

function resourceSchemas(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const def of resources) {
    out[`${schemaName(def.token)}Object`] = {
      type: "object",
      required: ["uuid", "id", "type", "inputs", "outputs", "etag", "createdAt", "updatedAt"],
      properties: {
        uuid: { type: "string", format: "uuid" },
        id: { type: "string", description: "The handler's id (what Pulumi/Terraform state holds)." },
        type: { const: def.token },
        name: { type: "string" },
        projectId: { type: "string" },
        inputs: { type: "object" },
        outputs: { ...objectSchemaOf({ ...def.inputs, ...def.outputs }), required: undefined, additionalProperties: true, description: "The state: inputs as stored plus outputs." },
        etag: { type: "string" },
        createdAt: { type: "string" },
        updatedAt: { type: "string" },
        partial: { type: "array", items: { type: "string" }, description: "A create that made the object but could not finish: why." },
      },
    };
  }
  return out;
}

const BASE = {
  openapi: "3.1.0",
  info: { title: "baremetal service", version: "0.3.1", description: "The tenant-facing API of a multi-tenant bare-metal installation: tenants act on their own nodes through it without holding any BMC, switch, storage or key-manager credential." },
  servers: [{ url: "/" }],
  security: [{ bearer: [] }],
  paths: {
    "/v1/me": {
      get: {
        operationId: "getMe",
        summary: "The token's project and roles, and the policy operations it may call.",
        parameters: [] as QueryParameter[],
        responses: { "200": { description: "The caller.", content: { "application/json": { schema: { $ref: "#/components/schemas/Me" } } } }, ...errors },
      },
    },
    "/v1/nodes": {
      get: {
        operationId: "listNodes",
        summary: "The nodes the caller may see: every node for operators, else those its project owns or leases.",
        parameters: [...filters, ...paging],
        responses: { "200": { description: "A page of nodes, by name then id.", content: { "application/json": { schema: { $ref: "#/components/schemas/NodePage" } } } }, ...errors },
      },
    },
    "/v1/nodes/{id}/power": {
      put: {
        operationId: "setNodePower",
        summary: "Powers a node on or off (policy `baremetal:node:set_power_state`), with the service's BMC credentials; recorded in the audit log.",
        parameters: [{ name: "id", in: "path", required: true, description: "The node's id (URL-encoded).", schema: { type: "string" } }],
        requestBody: {
          required: true,
          content: { "application/json": { schema: { type: "object", required: ["state"], properties: { state: { enum: ["on", "off"] } }, additionalProperties: false } } },
        },
        responses: {
          "200": {
            description: "Done.",
            content: { "application/json": { schema: { type: "object", required: ["id", "powerState", "changed"], properties: { id: { type: "string" }, powerState: { enum: ["on", "off"] }, changed: { type: "boolean" } } } } },
          },
          ...errors,
          "404": errorResponse("No such node."),
        },
      },
    },
  },
  components: {
    securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "A service token (`bmt_...`, from `baremetal token create`), or where the service is configured with an OIDC issuer (`service.oidc`) a JWT of that issuer carrying the project and roles claims." } },
    schemas: {
      Error: {
        type: "object",
        required: ["requestId", "errorCode", "message"],
        properties: {
          requestId: { type: "string", description: "This request's id (also the X-Request-Id header)." },
          errorCode: { type: "string", description: "A stable code, e.g. `Unauthorized`, `PolicyNotAuthorized`, `validation`." },
          message: { type: "string", description: "What went wrong and what to do." },
          property: { type: "string", description: "For a refused input: which (a dotted path)." },
        },
      },
      Me: {
        type: "object",
        required: ["tokenId", "tokenName", "roles", "operator", "ownProject", "otherProjects"],
        properties: {
          tokenId: { type: "string" },
          tokenName: { type: "string" },
          projectId: { type: "string" },
          roles: { type: "array", items: { type: "string" } },
          operator: { type: "boolean" },
          ownProject: { type: "array", items: { type: "string" }, description: "Policy operations allowed on the project's own objects." },
          otherProjects: { type: "array", items: { type: "string" }, description: "Policy operations allowed on another project's objects." },
        },
      },
      NodeSummary: jsonSchemaOf(nodeSummary),
      NodePage: {
        type: "object",
        required: ["items"],
        properties: { items: { type: "array", items: { $ref: "#/components/schemas/NodeSummary" } }, nextPageToken: { type: "string" } },
      },
      CheckResult: {
        type: "object",
        required: ["failures"],
        properties: { failures: { type: "array", items: { type: "object", required: ["property", "reason"], properties: { property: { type: "string" }, reason: { type: "string" } } } } },
      },
    },
  },
} as const;

/** The document the service serves at /v1/openapi.json (and scripts/openapi.ts releases and checks). */
export const OPENAPI = JSON.parse(
  JSON.stringify({
    ...BASE,
    paths: { ...BASE.paths, ...resourcePaths() },
    components: { ...BASE.components, schemas: { ...BASE.components.schemas, ...resourceSchemas() } },
  }),
) as typeof BASE & { paths: Record<string, unknown> };
