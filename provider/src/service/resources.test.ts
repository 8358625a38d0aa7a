/**
 * The service's resource endpoints over HTTP on loopback (what broker mode calls), with a real
 * SQLite inventory and the real EncryptionKey handlers on the local key manager (no machine
 * needed): idempotent create, selectors (UUID, handler id), ETag / If-Match (412), another
 * project's object (403, audited), keyset paging, the check with values not known yet, the error
 * shape naming the property, delete.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ProviderHost } from "../core/host";
import { createService, type LogEntry } from "./api";
import { InventoryTokenStore, TokenService } from "./tokens";

const KEY = encodeURIComponent("baremetal:keys:EncryptionKey");

describe("the service's resource endpoints", () => {
  const dir = mkdtempSync(join(tmpdir(), "service-resources-"));
  const host = new ProviderHost();
  const logs: LogEntry[] = [];
  let base: string;
  let server: ReturnType<typeof createService>;
  const tok: Record<string, { id: string; token: string }> = {};

  const call = async (who: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${tok[who].token}`, "content-type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, etag: res.headers.get("etag"), body: (text ? JSON.parse(text) : {}) as Record<string, any> }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };

  beforeAll(async () => {
    host.configure({
      inventoryUrl: `sqlite://${join(dir, "inventory.db")}`,
      keyManagers: { local: { driver: "local", address: `file://${join(dir, "keys")}` } },
      keyManagerCredentials: { local: { masterKey: randomBytes(32).toString("base64") } },
    });
    const tokens = new TokenService(new InventoryTokenStore(await host.providerContext().inventory()), { defaultRatePerMinute: 1000 });
    for (const [who, projectId, roles] of [["a", "project-a", ["member"]], ["b", "project-b", ["member"]], ["op", undefined, ["admin"]]] as const) {
      const { token, record } = await tokens.issue({ name: who, projectId, roles: [...roles] });
      tok[who] = { id: record.id, token };
    }
    server = createService({ host, tokens, log: (e) => logs.push(e) });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
    await host.close();
    rmSync(dir, { recursive: true, force: true });
  });

  let first: Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

  test("a create returns everything the IaC resource needs; the same Idempotency-Key gives the same object, not a second one", async () => {
    const key = randomUUID();
    const made = await call("a", "POST", `/v1/resources/${KEY}`, { inputs: {}, name: "disk-key" }, { "idempotency-key": key });
    expect(made.status).toBe(201);
    expect(made.body).toMatchObject({ uuid: expect.stringMatching(/^[0-9a-f-]{36}$/), id: expect.any(String), projectId: "project-a", inputs: { bits: 512 }, outputs: { keyId: made.body.id, project: "project-a", family: "local", state: "active" } });
    expect(made.etag).toBe(made.body.etag);
    expect(JSON.stringify(made.body)).not.toContain("@origin");
    const again = await call("a", "POST", `/v1/resources/${KEY}`, { inputs: {}, name: "disk-key" }, { "idempotency-key": key });
    expect(again.status).toBe(201);
    expect(again.body.uuid).toBe(made.body.uuid);
    const listed = await call("a", "GET", `/v1/resources/${KEY}`);
    expect(listed.body.items.map((i: { uuid: string }) => i.uuid)).toEqual([made.body.uuid]);
    first = made.body;
  });

  test("selectors: the UUID, the handler id and the name find the object; refresh reads it from the key manager; a name is unique in the project", async () => {
    const byName = await call("a", "GET", `/v1/resources/${KEY}/disk-key`);
    expect(byName.body).toMatchObject({ uuid: first.uuid, name: "disk-key" });
    const taken = await call("a", "POST", `/v1/resources/${KEY}`, { inputs: {}, name: "disk-key" });
    expect(taken.status).toBe(409);
    const theirs = await call("b", "POST", `/v1/resources/${KEY}`, { inputs: {}, name: "disk-key" });
    expect(theirs.status).toBe(201); // another project's namespace
    expect((await call("b", "DELETE", `/v1/resources/${KEY}/${theirs.body.uuid}`)).status).toBe(204);
    const byUuid = await call("a", "GET", `/v1/resources/${KEY}/${first.uuid}`);
    const byId = await call("a", "GET", `/v1/resources/${KEY}/${encodeURIComponent(first.id)}?refresh=true`);
    expect(byUuid.body.id).toBe(first.id);
    expect(byId.status).toBe(200);
    expect(byId.body.uuid).toBe(first.uuid);
    expect(byId.body.outputs.state).toBe("active");
  });

  test("objects made by Pulumi/Terraform (a urn given) get a unique name too: theirs with a suffix of the UUID, which selects them", async () => {
    const urn = "urn:pulumi:dev::proj::baremetal:keys:EncryptionKey::k";
    const one = await call("a", "POST", `/v1/resources/${KEY}`, { inputs: {}, name: "k", urn });
    const two = await call("a", "POST", `/v1/resources/${KEY}`, { inputs: {}, name: "k", urn }); // a replacement, or another stack
    expect([one.status, two.status]).toEqual([201, 201]);
    expect(one.body.name).toBe(`k-${one.body.uuid.slice(0, 8)}`);
    expect(two.body.name).not.toBe(one.body.name);
    expect((await call("a", "GET", `/v1/resources/${KEY}/${one.body.name}`)).body.uuid).toBe(one.body.uuid);
    for (const o of [one, two]) expect((await call("a", "DELETE", `/v1/resources/${KEY}/${o.body.uuid}`)).status).toBe(204);
  });

  test("an update with a stale If-Match is refused with 412 and changes nothing; with the current ETag it goes through", async () => {
    const stale = await call("a", "PUT", `/v1/resources/${KEY}/${first.uuid}`, { inputs: {} }, { "if-match": "not-the-etag" });
    expect(stale.status).toBe(412);
    expect(stale.body).toMatchObject({ errorCode: "PreconditionFailed", requestId: expect.any(String) });
    const now = await call("a", "GET", `/v1/resources/${KEY}/${first.uuid}`);
    const ok = await call("a", "PUT", `/v1/resources/${KEY}/${first.uuid}`, { inputs: {} }, { "if-match": now.etag! });
    expect(ok.status).toBe(200);
    expect(ok.etag).not.toBe(now.etag);
    expect(ok.body.outputs.keyId).toBe(first.id);
  });

  test("another project's object: 403 for get, update and delete, each in the audit log; its list does not show it; the operator reaches it", async () => {
    for (const [method, body] of [["GET"], ["PUT", { inputs: {} }], ["DELETE"]] as const) {
      const r = await call("b", method, `/v1/resources/${KEY}/${encodeURIComponent(first.id)}`, body);
      expect({ method, status: r.status, code: r.body.errorCode }).toEqual({ method, status: 403, code: "PolicyNotAuthorized" });
    }
    expect((await call("b", "GET", `/v1/resources/${KEY}`)).body.items).toEqual([]);
    expect((await call("op", "GET", `/v1/resources/${KEY}/${first.uuid}`)).status).toBe(200);
    const audit = await (await host.providerContext().inventory()).listAudit({ projectId: "project-b" });
    expect(audit.filter((e) => e.outcome === "denied").map((e) => e.operation)).toEqual(["baremetal:keys:EncryptionKey:get", "baremetal:keys:EncryptionKey:update", "baremetal:keys:EncryptionKey:delete"]);
    expect(audit.filter((e) => e.outcome === "denied").every((e) => e.tokenId === tok.b.id && e.target === `baremetal:keys:EncryptionKey/${first.uuid}`)).toBe(true);
    expect((await call("a", "GET", `/v1/resources/${KEY}/${first.uuid}`)).body.outputs.state).toBe("active"); // untouched
  });

  test("keyset pages: every object once, in order, however small the page", async () => {
    for (const n of ["k2", "k3"]) expect((await call("a", "POST", `/v1/resources/${KEY}`, { inputs: {}, name: n })).status).toBe(201);
    const seen: string[] = [];
    let page: string | undefined;
    do {
      const r = await call("a", "GET", `/v1/resources/${KEY}?limit=1${page ? `&pageToken=${page}` : ""}`);
      expect(r.body.items).toHaveLength(1);
      seen.push(r.body.items[0].uuid);
      page = r.body.nextPageToken;
    } while (page);
    expect(seen).toHaveLength(3);
    expect([...seen].sort()).toEqual(seen);
  });

  test("the check judges inputs like the provider (values not known yet are not judged); bad input names its property", async () => {
    const unknown = await call("a", "POST", `/v1/resources/${KEY}/check`, { inputs: { bits: { "@unknown": true } } });
    expect(unknown).toMatchObject({ status: 200, body: { failures: [] } });
    const bad = await call("a", "POST", `/v1/resources/${KEY}/check`, { inputs: { bits: 300 } });
    expect(bad.body.failures).toEqual([expect.objectContaining({ property: "bits" })]);
    const refused = await call("a", "POST", `/v1/resources/${KEY}`, { inputs: { bits: 300 }, name: "bad" });
    expect(refused.status).toBe(400);
    expect(refused.body).toMatchObject({ errorCode: "validation", property: "bits" });
    expect((await call("a", "POST", `/v1/resources/${encodeURIComponent("baremetal:nope:Thing")}`, { inputs: {}, name: "x" })).status).toBe(404);
  });

  test("delete: 204, then the object is gone (404); the log lines carry no token", async () => {
    const del = await call("a", "DELETE", `/v1/resources/${KEY}/${first.uuid}`);
    expect(del.status).toBe(204);
    expect((await call("a", "GET", `/v1/resources/${KEY}/${first.uuid}`)).status).toBe(404);
    const text = JSON.stringify(logs);
    for (const t of Object.values(tok)) expect(text).not.toContain(t.token.slice(29));
  });
});
