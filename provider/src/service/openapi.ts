/**
 * The OpenAPI 3.1 description of the service's API (api.ts), versioned: `info.version` follows
 * semver, and a released version's document is never changed incompatibly (issue 8 asks CI to
 * reject that; the compatibility check comes with the API's first release). Schemas of objects the
 * provider already describes come from the same field definitions (core/fields.ts).
 */
import { jsonSchemaOf } from "../core/validate";
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

export const OPENAPI = {
  openapi: "3.1.0",
  info: { title: "baremetal service", version: "0.1.0", description: "The tenant-facing API of a multi-tenant bare-metal installation: tenants act on their own nodes through it without holding any BMC, switch, storage or key-manager credential." },
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
    securitySchemes: { bearer: { type: "http", scheme: "bearer", description: "A service token (`bmt_...`)." } },
    schemas: {
      Error: {
        type: "object",
        required: ["requestId", "errorCode", "message"],
        properties: {
          requestId: { type: "string", description: "This request's id (also the X-Request-Id header)." },
          errorCode: { type: "string", description: "A stable code, e.g. `Unauthorized`, `PolicyNotAuthorized`, `validation`." },
          message: { type: "string", description: "What went wrong and what to do." },
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
    },
  },
} as const;
