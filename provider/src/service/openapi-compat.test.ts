/**
 * The OpenAPI compatibility rules (openapi-compat.ts) on small documents, each change alone, and
 * the service's own document against its releases (what CI runs through scripts/openapi.ts).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { OPENAPI } from "./openapi";
import { compareVersions, incompatibilities } from "./openapi-compat";

type Doc = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const base = (): Doc => ({
  openapi: "3.1.0",
  info: { title: "t", version: "1.0.0" },
  paths: {
    "/v1/things": {
      get: {
        parameters: [{ name: "limit", in: "query", required: false, schema: { type: "integer", minimum: 1, maximum: 100 } }],
        responses: { "200": { description: "ok", content: { "application/json": { schema: { $ref: "#/components/schemas/Page" } } } } },
      },
      post: {
        requestBody: { required: true, content: { "application/json": { schema: { type: "object", required: ["name"], properties: { name: { type: "string", maxLength: 63 }, size: { type: "string", enum: ["s", "m"] } }, additionalProperties: false } } } },
        responses: { "201": { description: "made", content: { "application/json": { schema: { $ref: "#/components/schemas/Thing" } } } }, "400": { description: "bad" } },
      },
    },
  },
  components: {
    schemas: {
      Thing: { type: "object", required: ["id", "name"], properties: { id: { type: "string" }, name: { type: "string" } } },
      Page: { type: "object", required: ["items"], properties: { items: { type: "array", items: { $ref: "#/components/schemas/Thing" } } } },
    },
  },
});

const changed = (edit: (d: Doc) => void) => {
  const d = base();
  edit(d);
  return incompatibilities(base(), d);
};

describe("OpenAPI compatibility", () => {
  test("additions are compatible: a path, an optional input, a response property, a status, a wider enum or limit", () => {
    expect(
      changed((d) => {
        d.paths["/v1/others"] = { get: { responses: {} } };
        d.paths["/v1/things"].post.requestBody.content["application/json"].schema.properties.colour = { type: "string" };
        d.paths["/v1/things"].post.requestBody.content["application/json"].schema.properties.size.enum.push("l");
        d.paths["/v1/things"].get.parameters[0].schema.maximum = 1000;
        d.components.schemas.Thing.properties.createdAt = { type: "string" };
        d.components.schemas.Thing.required.push("createdAt");
        d.paths["/v1/things"].post.responses["409"] = { description: "exists" };
      }),
    ).toEqual([]);
  });

  test.each([
    ["a path removed", (d: Doc) => delete d.paths["/v1/things"], /\/v1\/things: removed/],
    ["an operation removed", (d: Doc) => delete d.paths["/v1/things"].post, /POST \/v1\/things: removed/],
    ["a parameter made required", (d: Doc) => (d.paths["/v1/things"].get.parameters[0].required = true), /query parameter limit is required now/],
    ["a new required header", (d: Doc) => (d.paths["/v1/things"].get.parameters = [...d.paths["/v1/things"].get.parameters, { name: "x-tenant", in: "header", required: true, schema: { type: "string" } }]), /header parameter x-tenant is required now/],
    ["a body property required", (d: Doc) => d.paths["/v1/things"].post.requestBody.content["application/json"].schema.required.push("size"), /body\.size: required now/],
    ["a body property dropped", (d: Doc) => delete d.paths["/v1/things"].post.requestBody.content["application/json"].schema.properties.size, /body\.size: no longer accepted/],
    ["an enum narrowed", (d: Doc) => (d.paths["/v1/things"].post.requestBody.content["application/json"].schema.properties.size.enum = ["s"]), /body\.size: no longer accepts "m"/],
    ["a limit tightened", (d: Doc) => (d.paths["/v1/things"].get.parameters[0].schema.maximum = 50), /maximum is 50, was 100/],
    ["a maxLength shortened", (d: Doc) => (d.paths["/v1/things"].post.requestBody.content["application/json"].schema.properties.name.maxLength = 10), /name: maxLength is 10, was 63/],
    ["a type changed", (d: Doc) => (d.paths["/v1/things"].post.requestBody.content["application/json"].schema.properties.name = { type: "integer" }), /name: the type is integer, was string/],
    ["a response status dropped", (d: Doc) => delete d.paths["/v1/things"].post.responses["400"], /response 400 no longer documented/],
    ["a required response property dropped (through \$ref)", (d: Doc) => (d.components.schemas.Thing.required = ["id"]), /201\.name: no longer always present/],
    ["a response property in a list item dropped", (d: Doc) => (d.components.schemas.Thing.required = ["name"]), /200\.items\[\]\.id: no longer always present/],
  ])("%s is refused", (_what, edit, expected) => {
    const problems = changed(edit as (d: Doc) => void);
    expect(problems.join("\n")).toMatch(expected);
  });

  test("versions compare numerically", () => {
    expect(compareVersions("0.10.0", "0.2.0")).toBeGreaterThan(0);
    expect(compareVersions("1.0.0", "1.0")).toBe(0);
  });

  test("the service's document is compatible with every released version (what CI checks)", () => {
    const dir = path.join(__dirname, "openapi-released");
    const files = fs.readdirSync(dir).filter((f) => f.endsWith(".json"));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect({ f, problems: incompatibilities(JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")), JSON.parse(JSON.stringify(OPENAPI))) }).toEqual({ f, problems: [] });
  });
});
