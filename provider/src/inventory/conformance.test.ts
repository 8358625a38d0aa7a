/**
 * ONE conformance suite, run against every backend: SQLite (a temp file, so that re-opening sees
 * the same database) and PostgreSQL (a throwaway server from test/harness/postgres.ts, a fresh
 * database per test). A later HttpInventory joins by adding a Backend below.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { DatabaseSync } from "node:sqlite";
import { Client } from "pg";
import { BaremetalError, isBaremetalError } from "../core/errors";
import { startPostgres, PostgresInstance } from "../../../test/harness/postgres";
import { Inventory, Migration, MIGRATIONS, NO_MATCH, NodeInput, openInventory, rankNodes, SCHEMA_VERSION, sqliteUrl } from "./index";

interface Fresh {
  url: string;
  /** Runs SQL on the database directly (behind the inventory's back). */
  exec(sql: string): Promise<void>;
  query(sql: string): Promise<Record<string, unknown>[]>;
}

interface Backend {
  name: string;
  setup(): Promise<void>;
  teardown(): Promise<void>;
  fresh(): Promise<Fresh>;
  /** SQL of a harmless extra migration (a table) for this dialect. */
  extraTable: string;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "inventory-conformance-"));
let files = 0;

const sqliteBackend: Backend = {
  name: "sqlite",
  async setup() {},
  async teardown() {
    fs.rmSync(tmp, { recursive: true, force: true });
  },
  async fresh() {
    const file = path.join(tmp, `inv-${++files}.db`);
    const withDb = <T>(fn: (db: DatabaseSync) => T): T => {
      const db = new DatabaseSync(file, { timeout: 5000 });
      try {
        return fn(db);
      } finally {
        db.close();
      }
    };
    return {
      url: sqliteUrl(file),
      exec: async (sql) => withDb((db) => db.exec(sql)),
      query: async (sql) => withDb((db) => db.prepare(sql).all() as Record<string, unknown>[]),
    };
  },
  extraTable: "CREATE TABLE extra (x INTEGER)",
};

let pg: PostgresInstance | undefined;
const postgresBackend: Backend = {
  name: "postgres",
  async setup() {
    pg = await startPostgres();
  },
  async teardown() {
    await pg?.stop();
  },
  async fresh() {
    const url = await pg!.database();
    const withClient = async <T>(fn: (c: Client) => Promise<T>): Promise<T> => {
      const c = new Client({ connectionString: url });
      await c.connect();
      try {
        return await fn(c);
      } finally {
        await c.end();
      }
    };
    return {
      url,
      exec: (sql) => withClient(async (c) => void (await c.query(sql))),
      query: (sql) => withClient(async (c) => (await c.query(sql)).rows),
    };
  },
  extraTable: "CREATE TABLE extra (x integer)",
};

/** The BaremetalError a promise rejects with (fails the test when it resolves). */
async function failure(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (err) {
    if (isBaremetalError(err)) return err;
    throw new Error(`expected a BaremetalError, got ${String(err)}`);
  }
  throw new Error("expected a failure, but the call succeeded");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function node(id: string, extra: Partial<NodeInput> = {}): NodeInput {
  return { id: `https://bmc.example/redfish/v1/Systems/${id}`, name: id, provisionState: "available", ...extra };
}

describe.each([sqliteBackend, postgresBackend])("inventory conformance: $name", (backend) => {
  let db: Fresh;
  let inv: Inventory;
  const opened: Inventory[] = [];
  const open = async (migrations?: readonly Migration[]) => {
    const i = await openInventory(db.url, migrations ? { migrations } : {});
    opened.push(i);
    return i;
  };

  beforeAll(() => backend.setup(), 60000);
  afterAll(() => backend.teardown(), 30000);
  beforeEach(async () => {
    db = await backend.fresh();
    inv = await open();
  });
  afterEach(async () => {
    for (const i of opened.splice(0)) await i.close();
  });

  // ---- nodes --------------------------------------------------------------------------------

  test("enrols, reads, updates and removes nodes", async () => {
    expect(inv.kind).toBe(backend.name);
    const created = await inv.upsertNode({
      id: "https://10.0.0.5/redfish/v1/Systems/1",
      name: "rack1-node1",
      owner: "ops",
      resourceClass: "baremetal-large",
      traits: ["CUSTOM_GPU", "CUSTOM_A", "CUSTOM_GPU"],
      properties: { memoryGiB: 256, cpu: { model: "x", count: 2 } },
    });
    expect(created).toMatchObject({
      id: "https://10.0.0.5/redfish/v1/Systems/1",
      name: "rack1-node1",
      owner: "ops",
      resourceClass: "baremetal-large",
      traits: ["CUSTOM_A", "CUSTOM_GPU"],
      properties: { cpu: { count: 2, model: "x" }, memoryGiB: 256 },
      provisionState: "enroll",
      maintenance: false,
      version: 1,
    });
    expect(created).not.toHaveProperty("lessee");
    expect(created).not.toHaveProperty("allocationId");
    expect(Date.parse(created.createdAt)).not.toBeNaN();
    expect(await inv.getNode(created.id)).toEqual(created);

    // The same declaration again changes nothing, not even the version.
    const same = await inv.upsertNode({
      id: created.id, name: "rack1-node1", owner: "ops", resourceClass: "baremetal-large",
      traits: ["CUSTOM_A", "CUSTOM_GPU"], properties: { cpu: { count: 2, model: "x" }, memoryGiB: 256 },
    });
    expect(same).toEqual(created);

    await inv.setProvisionState(created.id, "available");
    const updated = await inv.upsertNode({ id: created.id, name: "rack1-node1", lessee: "tenant-a", traits: [] });
    expect(updated).toMatchObject({ lessee: "tenant-a", traits: [], properties: {}, provisionState: "available", version: 3 });
    expect(updated).not.toHaveProperty("owner"); // declared fields are replaced, not merged
    expect(updated.createdAt).toBe(created.createdAt);

    expect(await inv.removeNode(created.id)).toBe(true);
    expect(await inv.getNode(created.id)).toBeUndefined();
    expect(await inv.removeNode(created.id)).toBe(false);
  });

  test("refuses malformed input with the property named", async () => {
    expect(await failure(inv.upsertNode({ id: "", name: "x" }))).toMatchObject({ code: "validation", property: "id" });
    expect(await failure(inv.upsertNode({ id: "a", name: "x", traits: "GPU" as unknown as string[] }))).toMatchObject({ code: "validation", property: "traits" });
    expect(await failure(inv.upsertNode({ id: "a", name: "x", provisionState: "Available!" }))).toMatchObject({ code: "validation", property: "provisionState" });
    expect(await failure(inv.upsertNode({ id: "a", name: "x", properties: [] as unknown as Record<string, unknown> }))).toMatchObject({ property: "properties" });
    expect(await failure(inv.claimNode({ allocationId: "", name: "x" }))).toMatchObject({ code: "validation", property: "allocationId" });
    expect(await failure(inv.acquireLock("a", "me", "deploy", 0))).toMatchObject({ code: "validation", property: "leaseSeconds" });
  });

  test("lists nodes by owner, lessee, visibility, class and state, ordered by name", async () => {
    await inv.upsertNode(node("c", { owner: "p1" }));
    await inv.upsertNode(node("a", { owner: "p2", lessee: "p1", resourceClass: "gpu" }));
    await inv.upsertNode(node("b", { owner: "p2", resourceClass: "gpu", provisionState: "manageable" }));
    await inv.upsertNode(node("d"));
    const names = async (f?: Parameters<Inventory["listNodes"]>[0]) => (await inv.listNodes(f)).map((n) => n.name);
    expect(await names()).toEqual(["a", "b", "c", "d"]);
    expect(await names({ owner: "p2" })).toEqual(["a", "b"]);
    expect(await names({ lessee: "p1" })).toEqual(["a"]);
    expect(await names({ visibleTo: "p1" })).toEqual(["a", "c"]);
    expect(await names({ visibleTo: "p2" })).toEqual(["a", "b"]);
    expect(await names({ visibleTo: "nobody" })).toEqual([]);
    expect(await names({ resourceClass: "gpu", provisionState: "available" })).toEqual(["a"]);
    expect(await names({ owner: "p2", visibleTo: "p1" })).toEqual(["a"]);
  });

  test("sets provision state and last error; not-found for unknown nodes", async () => {
    const n = await inv.upsertNode(node("n1", { provisionState: undefined }));
    const failed = await inv.setProvisionState(n.id, "deploy failed", "BMC said no");
    expect(failed).toMatchObject({ provisionState: "deploy failed", lastError: "BMC said no", version: 2 });
    const ok = await inv.setProvisionState(n.id, "available");
    expect(ok).toMatchObject({ provisionState: "available", version: 3 });
    expect(ok).not.toHaveProperty("lastError");
    expect(await failure(inv.setProvisionState("nope", "available"))).toMatchObject({ code: "not-found" });
    const m = await inv.setMaintenance(n.id, true, "fan broken");
    expect(m).toMatchObject({ maintenance: true, maintenanceReason: "fan broken" });
    const back = await inv.setMaintenance(n.id, false);
    expect(back.maintenance).toBe(false);
    expect(back).not.toHaveProperty("maintenanceReason");
  });

  test("optimistic concurrency: a stale version is a conflict", async () => {
    const v1 = await inv.upsertNode(node("n1"), { expectedVersion: 0 });
    expect(v1.version).toBe(1);
    // Create-only on an existing node.
    expect(await failure(inv.upsertNode(node("n1"), { expectedVersion: 0 }))).toMatchObject({ code: "conflict", messageId: "inventory.VersionConflict" });
    // Two writers read version 1; the first wins, the second is refused.
    const v2 = await inv.upsertNode(node("n1", { owner: "a" }), { expectedVersion: 1 });
    expect(v2.version).toBe(2);
    const stale = await failure(inv.upsertNode(node("n1", { owner: "b" }), { expectedVersion: 1 }));
    expect(stale).toMatchObject({ code: "conflict", messageId: "inventory.VersionConflict" });
    expect(stale.message).toMatch(/expected version 1, found 2/);
    expect((await inv.getNode(v1.id))!.owner).toBe("a");
    expect(await failure(inv.setProvisionState(v1.id, "manageable", undefined, 1))).toMatchObject({ code: "conflict" });
    expect((await inv.setProvisionState(v1.id, "manageable", undefined, 2)).version).toBe(3);
    expect(await failure(inv.setMaintenance(v1.id, true, "x", 2))).toMatchObject({ code: "conflict" });
    expect(await failure(inv.removeNode(v1.id, { expectedVersion: 2 }))).toMatchObject({ code: "conflict" });
    expect(await failure(inv.upsertNode(node("ghost"), { expectedVersion: 3 }))).toMatchObject({ code: "not-found" });
    expect(await inv.removeNode(v1.id, { expectedVersion: 3 })).toBe(true);
  });

  // ---- claims -------------------------------------------------------------------------------

  test("claims a node matching resource class, every trait and the candidates", async () => {
    await inv.upsertNode(node("small-1", { resourceClass: "small", traits: ["CUSTOM_GPU"] }));
    await inv.upsertNode(node("large-1", { resourceClass: "large", traits: ["CUSTOM_GPU"] }));
    await inv.upsertNode(node("large-2", { resourceClass: "large", traits: ["CUSTOM_GPU", "CUSTOM_NVME"] }));
    await inv.upsertNode(node("large-3", { resourceClass: "large", traits: ["CUSTOM_NVME"] }));
    const byName = async (name: string) => (await inv.listNodes()).find((n) => n.name === name)!;

    const both = await inv.claimNode({ allocationId: "a1", name: "db", resourceClass: "large", traits: ["CUSTOM_NVME", "CUSTOM_GPU"] });
    expect(both.node.name).toBe("large-2");
    expect(both.node.allocationId).toBe("a1");
    expect(both.allocation).toMatchObject({
      id: "a1", name: "db", nodeId: both.node.id, resourceClass: "large", traits: ["CUSTOM_GPU", "CUSTOM_NVME"], state: "active",
    });

    const cand = await inv.claimNode({ allocationId: "a2", name: "web", candidates: [(await byName("small-1")).id, (await byName("large-3")).id], traits: ["CUSTOM_NVME"] });
    expect(cand.node.name).toBe("large-3");
    expect(cand.allocation.candidateNodes).toEqual([(await byName("large-3")).id, (await byName("small-1")).id].sort());

    const gpu = await inv.claimNode({ allocationId: "a3", name: "ml", resourceClass: "large", traits: ["CUSTOM_GPU"] });
    expect(gpu.node.name).toBe("large-1");
  });

  test("chooses among matches by rendezvous hash of the allocation name: deterministic, spread, same on every backend", async () => {
    for (let i = 0; i < 12; i++) await inv.upsertNode(node(`n${String(i).padStart(2, "0")}`, { resourceClass: "std" }));
    const chosen: string[] = [];
    for (const name of ["alpha", "beta", "gamma", "delta", "epsilon"]) {
      const free = (await inv.listNodes()).filter((n) => n.allocationId === undefined);
      const expected = rankNodes(name, free)[0];
      const c = await inv.claimNode({ allocationId: `id-${name}`, name });
      chosen.push(c.node.id);
      expect(c.node.id).toBe(expected.id);
      // The same name, released and claimed again, gets the same machine back.
      await inv.releaseClaim(`id-${name}`);
      expect((await inv.claimNode({ allocationId: `id2-${name}`, name })).node.id).toBe(c.node.id);
    }
    // Different names spread over the pool instead of all taking its first node.
    expect(new Set(chosen).size).toBeGreaterThan(2);
  });

  test("a project may only claim nodes it owns or leases", async () => {
    await inv.upsertNode(node("owned", { owner: "p1" }));
    await inv.upsertNode(node("leased", { owner: "ops", lessee: "p1" }));
    await inv.upsertNode(node("other", { owner: "p2" }));
    await inv.upsertNode(node("unowned"));
    const got = new Set<string>();
    for (let i = 0; i < 2; i++) got.add((await inv.claimNode({ allocationId: `p1-${i}`, name: `p1-${i}`, project: "p1" })).node.name);
    expect(got).toEqual(new Set(["owned", "leased"]));
    const err = await failure(inv.claimNode({ allocationId: "p1-2", name: "p1-2", project: "p1" }));
    expect(err).toMatchObject({ code: "conflict", messageId: NO_MATCH });
    expect(err.message).toMatch(/project "p1"/);
    expect(err.message).toMatch(/2 nodes match the restrictions but none is free: 2 already claimed/);

    const none = await failure(inv.claimNode({ allocationId: "p3", name: "p3", project: "p3" }));
    expect(none.message).toMatch(/none of the 4 enrolled nodes passes the restrictions/);
    expect(none.details).toContain('0 of them owned by or leased to project "p3"');

    const p2 = await inv.claimNode({ allocationId: "p2", name: "p2", project: "p2" });
    expect(p2.node.name).toBe("other");
    expect(p2.allocation).toMatchObject({ owner: "p2", project: "p2" });
    // Without a project restriction (an admin), unowned nodes are claimable too.
    const admin = await inv.claimNode({ allocationId: "adm", name: "adm", owner: "ops" });
    expect(admin.node.name).toBe("unowned");
    expect(admin.allocation.owner).toBe("ops");
    expect(admin.allocation).not.toHaveProperty("project");
  });

  test("no match: a conflict that says why", async () => {
    const empty = await failure(inv.claimNode({ allocationId: "x", name: "x" }));
    expect(empty).toMatchObject({ code: "conflict", messageId: NO_MATCH });
    expect(empty.message).toMatch(/no available node matches allocation "x": no node is enrolled/);

    await inv.upsertNode(node("m", { resourceClass: "gpu", maintenance: true, maintenanceReason: "fan" }));
    await inv.upsertNode(node("e", { resourceClass: "gpu", provisionState: "enroll" }));
    await inv.upsertNode(node("f", { resourceClass: "gpu", provisionState: "deploy failed" }));
    await inv.upsertNode(node("c", { resourceClass: "gpu" }));
    await inv.upsertNode(node("s", { resourceClass: "small", traits: ["CUSTOM_X"] }));
    await inv.claimNode({ allocationId: "first", name: "first", resourceClass: "gpu" });

    const busy = await failure(inv.claimNode({ allocationId: "y", name: "y", resourceClass: "gpu" }));
    expect(busy.message).toMatch(/resource class "gpu"/);
    expect(busy.message).toMatch(/4 nodes match the restrictions but none is free/);
    expect(busy.message).toMatch(/1 already claimed/);
    expect(busy.message).toMatch(/1 in maintenance/);
    expect(busy.message).toMatch(/1 in provision state "deploy failed"/);
    expect(busy.message).toMatch(/1 in provision state "enroll"/);
    expect(busy.details[0]).toBe("5 nodes enrolled in the inventory");

    const traits = await failure(inv.claimNode({ allocationId: "z", name: "z", resourceClass: "small", traits: ["CUSTOM_X", "CUSTOM_Y"] }));
    expect(traits.message).toMatch(/none of the 5 enrolled nodes passes the restrictions/);
    expect(traits.details).toEqual([
      "5 nodes enrolled in the inventory",
      '1 of them of resource class "small"',
      "0 of them with every trait of [CUSTOM_X, CUSTOM_Y]",
    ]);

    const cands = await failure(inv.claimNode({ allocationId: "w", name: "w", candidates: ["nope"] }));
    expect(cands.details).toContain("candidates not enrolled: nope");
    // Nothing was written by the failed claims.
    expect(await inv.listAllocations()).toHaveLength(1);
  });

  test("claiming again with an active allocation's id returns the same claim", async () => {
    for (const n of ["a", "b", "c"]) await inv.upsertNode(node(n));
    const first = await inv.claimNode({ allocationId: "alloc-1", name: "x" });
    const again = await inv.claimNode({ allocationId: "alloc-1", name: "x" });
    expect(again.node.id).toBe(first.node.id);
    expect(again.allocation).toEqual(first.allocation);
    expect(await inv.listAllocations({ state: "active" })).toHaveLength(1);
  });

  test("release returns the node to the pool and keeps the allocation for the record", async () => {
    const n = await inv.upsertNode(node("only"));
    const c = await inv.claimNode({ allocationId: "a1", name: "a1", owner: "p1" });
    expect(await failure(inv.claimNode({ allocationId: "a2", name: "a2" }))).toMatchObject({ messageId: NO_MATCH });
    expect(await failure(inv.removeNode(n.id))).toMatchObject({ code: "conflict", messageId: "inventory.NodeClaimed" });

    const released = await inv.releaseClaim("a1");
    expect(released).toMatchObject({ id: "a1", state: "released", nodeId: n.id });
    expect(Date.parse(released!.releasedAt!)).not.toBeNaN();
    expect(await inv.getNode(n.id)).not.toHaveProperty("allocationId");
    expect(await inv.releaseClaim("a1")).toBeUndefined();
    expect(await inv.releaseClaim("never")).toBeUndefined();

    const c2 = await inv.claimNode({ allocationId: "a2", name: "a2" });
    expect(c2.node.id).toBe(c.node.id);
    expect(await inv.getAllocation("a1")).toMatchObject({ state: "released", owner: "p1" });
    expect(await inv.getAllocation("a2")).toMatchObject({ state: "active" });
    expect(await inv.getAllocation("zzz")).toBeUndefined();
    expect((await inv.listAllocations({ owner: "p1" })).map((a) => a.id)).toEqual(["a1"]);
    expect((await inv.listAllocations({ nodeId: n.id })).map((a) => a.id).sort()).toEqual(["a1", "a2"]);
    expect((await inv.listAllocations({ state: "active" })).map((a) => a.id)).toEqual(["a2"]);

    // A released allocation's id may claim again (a replaced resource that kept its id).
    await inv.releaseClaim("a2");
    expect((await inv.claimNode({ allocationId: "a1", name: "a1" })).allocation).toMatchObject({ state: "active", nodeId: n.id });
    expect(await inv.getAllocation("a1")).not.toHaveProperty("releasedAt");
  });

  test("concurrent claims in one process never share a node", async () => {
    for (let i = 0; i < 10; i++) await inv.upsertNode(node(`n${i}`));
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => inv.claimNode({ allocationId: `c${i}`, name: "same-name" })));
    const won = results.flatMap((r) => (r.status === "fulfilled" ? [r.value.node.id] : []));
    const lost = results.flatMap((r) => (r.status === "rejected" ? [r.reason as BaremetalError] : []));
    expect(won).toHaveLength(10);
    expect(new Set(won).size).toBe(10);
    expect(lost.every((e) => e.messageId === NO_MATCH)).toBe(true);
  });

  // ---- locks --------------------------------------------------------------------------------

  test("locks: exclusive, released, renewed, and free again once the lease runs out", async () => {
    const id = "https://bmc/redfish/v1/Systems/1"; // a lock may precede enrolment
    const a = await inv.acquireLock(id, "stack-a", "deploy", 30);
    expect(a).toMatchObject({ nodeId: id, holder: "stack-a", operation: "deploy" });
    expect(await inv.getLock(id)).toMatchObject({ holder: "stack-a", operation: "deploy", expired: false, expiresAt: a.expiresAt });

    const held = await failure(inv.acquireLock(id, "stack-b", "clean", 30));
    expect(held).toMatchObject({ code: "conflict", messageId: "inventory.NodeLocked" });
    expect(held.message).toMatch(/locked by "stack-a" for "deploy" until/);
    // Not re-entrant.
    expect(await failure(inv.acquireLock(id, "stack-a", "deploy", 30))).toMatchObject({ code: "conflict" });
    // Other nodes are independent.
    await (await inv.acquireLock("other", "stack-b", "clean", 30)).release();

    const before = Date.parse(a.expiresAt);
    await sleep(20);
    await a.renew(60);
    expect(Date.parse(a.expiresAt)).toBeGreaterThan(before);
    expect((await inv.getLock(id))!.expiresAt).toBe(a.expiresAt);

    await a.release();
    expect(await inv.getLock(id)).toBeUndefined();
    await a.release(); // idempotent
    const b = await inv.acquireLock(id, "stack-b", "clean", 30);
    await b.release();
  });

  test("locks: a crashed holder's lease runs out; its stale handle cannot touch the new holder's lock", async () => {
    const id = "n-lease";
    const crashed = await inv.acquireLock(id, "crashed-run", "deploy", 0.3);
    expect(await failure(inv.acquireLock(id, "next-run", "deploy", 30))).toMatchObject({ code: "conflict" });
    await sleep(500);
    expect(await inv.getLock(id)).toMatchObject({ holder: "crashed-run", expired: true });
    // Expired: renewing is refused (the operation must stop)...
    const late = await failure(crashed.renew());
    expect(late).toMatchObject({ code: "conflict", messageId: "inventory.LockLost" });
    expect(late.message).toMatch(/lease ran out/);
    // ...and anybody may take it.
    const next = await inv.acquireLock(id, "next-run", "deploy", 30);
    const taken = await failure(crashed.renew());
    expect(taken.message).toMatch(/taken over by "next-run"/);
    await crashed.release(); // must not free next-run's lock
    expect(await inv.getLock(id)).toMatchObject({ holder: "next-run", expired: false });
    await next.release();
  });

  // ---- migrations ---------------------------------------------------------------------------

  test("migrations: recorded once, idempotent on re-open, data kept", async () => {
    await inv.upsertNode(node("keep"));
    const again = await open();
    const third = await open();
    expect((await third.getNode(node("keep").id))?.name).toBe("keep");
    expect(await again.listNodes()).toHaveLength(1);
    const rows = await db.query("SELECT version, name FROM schema_migrations ORDER BY version");
    expect(rows.map((r) => Number(r.version))).toEqual(MIGRATIONS.map((m) => m.version));
    expect(SCHEMA_VERSION).toBe(MIGRATIONS.length);
  });

  test("migrations: a newer release's migration applies once; a database newer than the code is refused", async () => {
    const v2: Migration = { version: SCHEMA_VERSION + 1, name: "test extra table", sqlite: [sqliteBackend.extraTable], postgres: [postgresBackend.extraTable] };
    const newer = await open([...MIGRATIONS, v2]);
    await db.exec("INSERT INTO extra (x) VALUES (1)"); // the table exists
    await open([...MIGRATIONS, v2]); // nothing left to apply: no "table exists" error
    expect((await db.query("SELECT version FROM schema_migrations")).map((r) => Number(r.version)).sort()).toEqual([...MIGRATIONS.map((m) => m.version), v2.version]);
    await newer.close();

    // This release's code against that database: refused, with what to do.
    const refused = await failure(open());
    expect(refused).toMatchObject({ code: "conflict", messageId: "inventory.SchemaTooNew" });
    expect(refused.message).toMatch(new RegExp(`schema version ${v2.version}, newer than this provider knows \\(${SCHEMA_VERSION}\\)`));
    expect(refused.message).toMatch(/upgrade pulumi-resource-baremetal/);
    if (pg && backend === postgresBackend) expect(refused.message).not.toContain(pg.password); // the URL is redacted

    await db.exec("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'from the future', '2099-01-01T00:00:00Z')");
    expect((await failure(open([...MIGRATIONS, v2]))).message).toMatch(/schema version 999/);
  });

  test("a closed inventory refuses calls", async () => {
    const other = await open();
    await other.close();
    await other.close();
    expect(await failure(other.listNodes())).toMatchObject({ code: "internal" });
  });
});
