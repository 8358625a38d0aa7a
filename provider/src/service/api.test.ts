/**
 * The service's first slice over HTTP on loopback, with a real SQLite inventory (which also holds
 * the tokens, hashed): each tenant's
 * token lists only the nodes its project owns or leases; keyset pages; one error shape with the
 * request id; 401 without a token; validation of query parameters; one log line per request
 * carrying no secret.
 */
import { mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Ajv from "ajv";
import { ProviderHost } from "../core/host";
import { startLab } from "../lab/lab";
import { createService, type LogEntry } from "./api";
import { OPENAPI } from "./openapi";
import { InventoryTokenStore, TokenService } from "./tokens";

describe("the service API (first slice)", () => {
  const dir = mkdtempSync(join(tmpdir(), "service-api-"));
  const host = new ProviderHost();
  let tokens: TokenService;
  const logs: LogEntry[] = [];
  let base: string;
  let server: ReturnType<typeof createService>;
  const tok: Record<string, string> = {};

  const get = async (path: string, token?: string, headers: Record<string, string> = {}) => {
    const res = await fetch(`${base}${path}`, { headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers } });
    return { status: res.status, requestId: res.headers.get("x-request-id"), body: (await res.json()) as Record<string, any> }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };

  beforeAll(async () => {
    host.configure({ inventoryUrl: `sqlite://${join(dir, "inventory.db")}` });
    const inv = await host.providerContext().inventory();
    // Tokens in the service's database, as `baremetal serve` keeps them.
    tokens = new TokenService(new InventoryTokenStore(inv), { defaultRatePerMinute: 1000 });
    for (let i = 0; i < 5; i++) await inv.upsertNode({ id: `https://bmc/redfish/v1/Systems/a${i}`, name: `a-${i}`, owner: "project-a" });
    await inv.upsertNode({ id: "https://bmc/redfish/v1/Systems/l0", name: "leased-0", owner: "project-b", lessee: "project-a" });
    for (let i = 0; i < 3; i++) await inv.upsertNode({ id: `https://bmc/redfish/v1/Systems/b${i}`, name: `b-${i}`, owner: "project-b" });
    tok.a = (await tokens.issue({ name: "tenant-a", projectId: "project-a", roles: ["member", "reader"] })).token;
    tok.b = (await tokens.issue({ name: "tenant-b", projectId: "project-b", roles: ["member", "reader"] })).token;
    tok.op = (await tokens.issue({ name: "operator", roles: ["admin"] })).token;
    server = createService({ host, tokens, log: (e) => logs.push(e) });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
    await host.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("each tenant sees only what its project owns or leases; the operator sees all", async () => {
    const a = await get("/v1/nodes", tok.a);
    expect(a.status).toBe(200);
    expect(a.body.items.map((n: { name: string }) => n.name)).toEqual(["a-0", "a-1", "a-2", "a-3", "a-4", "leased-0"]);
    const b = await get("/v1/nodes", tok.b);
    expect(b.body.items.map((n: { name: string }) => n.name)).toEqual(["b-0", "b-1", "b-2", "leased-0"]);
    expect((await get("/v1/nodes", tok.op)).body.items).toHaveLength(9);
    // A filter naming another project does not widen the view.
    expect((await get("/v1/nodes?owner=project-b", tok.a)).body.items.map((n: { name: string }) => n.name)).toEqual(["leased-0"]);
  });

  test("keyset pages: limit and the opaque nextPageToken walk the list once, in order", async () => {
    const names: string[] = [];
    let path = "/v1/nodes?limit=2";
    for (let pages = 0; pages < 10; pages++) {
      const r = await get(path, tok.a);
      names.push(...r.body.items.map((n: { name: string }) => n.name));
      if (!r.body.nextPageToken) break;
      path = `/v1/nodes?limit=2&pageToken=${encodeURIComponent(r.body.nextPageToken)}`;
    }
    expect(names).toEqual(["a-0", "a-1", "a-2", "a-3", "a-4", "leased-0"]);
    const bad = await get("/v1/nodes?pageToken=nonsense", tok.a);
    expect([bad.status, bad.body.errorCode]).toEqual([400, "validation"]);
    expect(bad.body.message).toMatch(/pageToken is not one this service gave out/);
  });

  test("errors: one shape with the request id; 401 without a token; bad parameters are 400 naming them", async () => {
    const none = await get("/v1/nodes", undefined, { "x-request-id": "req-test-0001" });
    expect(none.status).toBe(401);
    expect(none.body).toEqual({ requestId: "req-test-0001", errorCode: "Unauthorized", message: expect.stringMatching(/Bearer/) });
    expect(none.requestId).toBe("req-test-0001");
    const limit = await get("/v1/nodes?limit=0", tok.a);
    expect([limit.status, limit.body.errorCode]).toEqual([400, "validation"]);
    expect(limit.body.message).toMatch(/^limit: must be >= 1/);
    const extra = await get("/v1/nodes?colour=blue", tok.a);
    expect(extra.body.message).toMatch(/^colour: must NOT have additional properties/);
    const nowhere = await get("/v1/nothing", tok.a);
    expect([nowhere.status, nowhere.body.errorCode]).toEqual([404, "not-found"]);
    expect(nowhere.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  test("/v1/me says who the token is and what it may do", async () => {
    const me = await get("/v1/me", tok.a);
    expect(me.body).toMatchObject({ tokenName: "tenant-a", projectId: "project-a", operator: false });
    expect(me.body.ownProject).toContain("baremetal:node:list");
    expect(me.body.otherProjects).not.toContain("baremetal:node:get");
  });

  test("the OpenAPI document is served, compiles, and every response body matches its schema", async () => {
    const doc = await get("/v1/openapi.json");
    expect(doc.body.openapi).toBe("3.1.0");
    const ajv = new Ajv({ strict: false });
    ajv.addSchema({ $id: "api", components: OPENAPI.components } as object);
    const page = ajv.compile({ $ref: "api#/components/schemas/NodePage" });
    expect(page((await get("/v1/nodes?limit=3", tok.b)).body)).toBe(true);
    const err = ajv.compile({ $ref: "api#/components/schemas/Error" });
    expect(err((await get("/v1/nodes")).body)).toBe(true);
    const me = ajv.compile({ $ref: "api#/components/schemas/Me" });
    expect(me((await get("/v1/me", tok.op)).body)).toBe(true);
  });

  test("one log line per request, with its id and token id, never the token", () => {
    expect(logs.length).toBeGreaterThan(10);
    for (const e of logs) expect(Object.keys(e).sort()).toEqual(expect.arrayContaining(["method", "ms", "path", "requestId", "status", "time"]));
    const text = JSON.stringify(logs);
    for (const t of Object.values(tok)) expect(text).not.toContain(t.slice(29));
    expect(logs.find((e) => e.requestId === "req-test-0001")).toMatchObject({ status: 401, errorCode: "Unauthorized" });
  });
});

describe("the service's first node action: power, against the lab BMC", () => {
  const dir = mkdtempSync(join(tmpdir(), "service-power-"));
  const host = new ProviderHost();
  let lab: Awaited<ReturnType<typeof startLab>>;
  let tokens: TokenService;
  let server: ReturnType<typeof createService>;
  let base: string;
  const tok: Record<string, string> = {};
  /** A node resource's id: its Redfish system URI, absolute. */
  const nodeId = (i: number) => new URL(lab.info.nodes[i].systemUri, lab.info.nodes[i].address).href;
  const put = async (id: string, body: unknown, token?: string) => {
    const res = await fetch(`${base}/v1/nodes/${encodeURIComponent(id)}/power`, { method: "PUT", body: JSON.stringify(body), headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) } });
    return { status: res.status, body: (await res.json()) as Record<string, any> }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };

  beforeAll(async () => {
    lab = await startLab({ flavor: "generic", systems: 2, bootSeconds: 0, powerState: "Off" });
    host.configure({ inventoryUrl: `sqlite://${join(dir, "inventory.db")}`, bmcUsername: lab.info.credentials.username, bmcPassword: lab.info.credentials.password });
    const inv = await host.providerContext().inventory();
    await inv.upsertNode({ id: nodeId(0), name: "a-0", owner: "project-a" });
    await inv.upsertNode({ id: nodeId(1), name: "b-0", owner: "project-b" });
    tokens = new TokenService(new InventoryTokenStore(inv));
    tok.a = (await tokens.issue({ name: "tenant-a", projectId: "project-a", roles: ["member"] })).token;
    server = createService({ host, tokens, log: () => undefined });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
    await host.close();
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a tenant powers its own node through the service; another project's node is refused with 403; both are in the audit log", async () => {
    const own = await put(nodeId(0), { state: "on" }, tok.a);
    expect(own).toMatchObject({ status: 200, body: { powerState: "on", changed: true } });
    expect(lab.bmcs[0].system(1).powerState).toBe("On");

    const foreign = await put(nodeId(1), { state: "on" }, tok.a);
    expect([foreign.status, foreign.body.errorCode]).toEqual([403, "PolicyNotAuthorized"]);
    expect(lab.bmcs[0].system(2).powerState).toBe("Off");
    // The BMC's credentials are in no answer.
    expect(JSON.stringify([own.body, foreign.body])).not.toContain(lab.info.credentials.password);

    expect((await put("http://nowhere/redfish/v1/Systems/x", { state: "on" }, tok.a)).status).toBe(404);
    expect((await put(nodeId(0), { state: "sideways" }, tok.a)).body.message).toMatch(/^state: must be equal to one of the allowed values/);
    expect((await put(nodeId(0), { state: "on" })).status).toBe(401);

    const audit = await (await host.providerContext().inventory()).listAudit();
    expect(audit.map((e) => [e.operation, e.target, e.projectId, e.outcome])).toEqual([
      ["baremetal:node:set_power_state", nodeId(0), "project-a", "done"],
      ["baremetal:node:set_power_state", nodeId(1), "project-a", "denied"],
      ["baremetal:node:set_power_state", "http://nowhere/redfish/v1/Systems/x", "project-a", "not-found"],
    ]);
    expect(audit[1].detail).toBe("PolicyNotAuthorized");

    // A body over the limit (64 KiB for actions) is answered 400 naming the limit, not with a reset
    // connection; the service goes on answering.
    const big = await put(nodeId(0), { state: "on", pad: "x".repeat(200 * 1024) }, tok.a);
    expect([big.status, big.body.property, big.body.message]).toEqual([400, "body", "the request body is larger than 64 KiB"]);
    expect((await put(nodeId(0), { state: "on" }, tok.a)).status).toBe(200);
  });
});
