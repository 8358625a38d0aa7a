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
import {
  ADDRESS_IN_USE,
  ID_IN_USE,
  IN_USE,
  Inventory,
  LEASE_OVERLAP,
  MAC_IN_USE,
  Migration,
  MIGRATIONS,
  NetworkInput,
  NO_MATCH,
  NodeInput,
  openInventory,
  PORT_ATTACHED,
  rankNodes,
  SCHEMA_VERSION,
  ServiceResourceChange,
  ServiceResourceRecord,
  sqliteUrl,
  SUBNET_EXHAUSTED,
  SWITCH_PORT_IN_USE,
  VLAN_IN_USE,
  VLAN_POOL_EXHAUSTED,
} from "./index";

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
    // Keyset pages in the database: after a (name, id), at most `limit`, the same order.
    const ids = new Map((await inv.listNodes()).map((n) => [n.name, n.id]));
    expect(await names({ limit: 2 })).toEqual(["a", "b"]);
    expect(await names({ after: { name: "b", id: ids.get("b")! }, limit: 2 })).toEqual(["c", "d"]);
    expect(await names({ after: { name: "a", id: ids.get("a")! }, visibleTo: "p1" })).toEqual(["c"]);
    expect(await names({ after: { name: "d", id: ids.get("d")! } })).toEqual([]);
    expect(await failure(inv.listNodes({ limit: 0 }))).toMatchObject({ code: "validation", property: "limit" });
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

  // ---- tenant networks: VLAN pools and networks -----------------------------------------------

  const net = (id: string, extra: Partial<NetworkInput> = {}): NetworkInput => ({ id, name: id, owner: "t1", fabric: "dc1", ...extra });

  test("VLAN pools: validated, sorted, idempotent; shrinking below VLANs in use or moving fabric is refused naming them", async () => {
    expect(await failure(inv.defineVlanPool({ name: "p", fabric: "dc1", ranges: [] }))).toMatchObject({ code: "validation", property: "ranges" });
    expect(await failure(inv.defineVlanPool({ name: "p", fabric: "dc1", ranges: [{ from: 0, to: 10 }] }))).toMatchObject({ property: "ranges[0].from" });
    expect(await failure(inv.defineVlanPool({ name: "p", fabric: "dc1", ranges: [{ from: 10, to: 4095 }] }))).toMatchObject({ property: "ranges[0].to" });
    expect(await failure(inv.defineVlanPool({ name: "p", fabric: "dc1", ranges: [{ from: 20, to: 10 }] }))).toMatchObject({ property: "ranges[0]" });
    const overlap = await failure(inv.defineVlanPool({ name: "p", fabric: "dc1", ranges: [{ from: 100, to: 110 }, { from: 50, to: 100 }] }));
    expect(overlap).toMatchObject({ code: "validation", property: "ranges[0]" });
    expect(overlap.message).toMatch(/ranges\[0\] \(100-110\) overlaps ranges\[1\] \(50-100\)/);
    expect(await failure(inv.defineVlanPool({ name: "", fabric: "dc1", ranges: [{ from: 1, to: 2 }] }))).toMatchObject({ property: "name" });

    const p = await inv.defineVlanPool({ name: "tenant", fabric: "dc1", ranges: [{ from: 200, to: 201 }, { from: 100, to: 102 }] });
    expect(p).toMatchObject({ name: "tenant", fabric: "dc1", ranges: [{ from: 100, to: 102 }, { from: 200, to: 201 }], size: 5, inUse: 0, version: 1 });
    expect(await inv.defineVlanPool({ name: "tenant", fabric: "dc1", ranges: [{ from: 100, to: 102 }, { from: 200, to: 201 }] })).toEqual(p);
    expect(await inv.getVlanPool("tenant")).toEqual(p);

    await inv.createNetwork(net("n1"));
    await inv.createNetwork(net("n2"));
    await inv.createNetwork(net("static", { vlan: 300 })); // not from the pool
    expect(await inv.getVlanPool("tenant")).toMatchObject({ inUse: 2, size: 5 });

    const shrink = await failure(inv.defineVlanPool({ name: "tenant", fabric: "dc1", ranges: [{ from: 101, to: 102 }] }));
    expect(shrink).toMatchObject({ code: "conflict", messageId: IN_USE, property: "ranges" });
    expect(shrink.message).toMatch(/VLAN pool "tenant" cannot shrink to 101-102: 1 VLAN outside the new ranges is in use \(VLAN 100: network "n1"\)/);
    // Dropping unused VLANs and growing are fine.
    const grown = await inv.defineVlanPool({ name: "tenant", fabric: "dc1", ranges: [{ from: 100, to: 110 }] });
    expect(grown).toMatchObject({ ranges: [{ from: 100, to: 110 }], size: 11, inUse: 2, version: 2 });
    const move = await failure(inv.defineVlanPool({ name: "tenant", fabric: "dc2", ranges: [{ from: 100, to: 110 }] }));
    expect(move).toMatchObject({ code: "conflict", property: "fabric" });
    expect(move.message).toMatch(/cannot move from fabric "dc1" to "dc2": 2 networks .*VLAN 100: network "n1", VLAN 101: network "n2"/);

    await inv.defineVlanPool({ name: "other", fabric: "dc2", ranges: [{ from: 5, to: 5 }] });
    expect((await inv.listVlanPools()).map((x) => x.name)).toEqual(["other", "tenant"]);
    expect((await inv.listVlanPools({ fabric: "dc2" })).map((x) => x.name)).toEqual(["other"]);

    expect(await failure(inv.removeVlanPool("tenant"))).toMatchObject({ code: "conflict", messageId: IN_USE });
    await inv.deleteNetwork("n1");
    await inv.deleteNetwork("n2");
    expect(await inv.removeVlanPool("tenant")).toBe(true);
    expect(await inv.removeVlanPool("tenant")).toBe(false);
    expect(await inv.getVlanPool("tenant")).toBeUndefined();
    expect(await inv.getNetwork("static")).toMatchObject({ vlan: 300 });
  });

  test("networks: the lowest free VLAN of the pool, or the requested one; unique per fabric; exhaustion names the pool", async () => {
    await inv.defineVlanPool({ name: "pa", fabric: "A", ranges: [{ from: 100, to: 103 }] });
    await inv.defineVlanPool({ name: "pb", fabric: "B", ranges: [{ from: 100, to: 101 }] });

    const a1 = await inv.createNetwork(net("a1", { fabric: "A", owner: "t1" }));
    expect(a1).toMatchObject({ id: "a1", name: "a1", owner: "t1", fabric: "A", pool: "pa", vlan: 100, version: 1 });
    expect(Date.parse(a1.createdAt)).not.toBeNaN();
    expect(await inv.getNetwork("a1")).toEqual(a1);
    const a2 = await inv.createNetwork(net("a2", { fabric: "A", vlan: 102 }));
    expect(a2.vlan).toBe(102);
    expect(a2).not.toHaveProperty("pool");
    expect((await inv.createNetwork(net("a3", { fabric: "A", pool: "pa" }))).vlan).toBe(101);
    expect((await inv.createNetwork(net("a4", { fabric: "A" }))).vlan).toBe(103); // 102 is taken, if not from the pool
    const full = await failure(inv.createNetwork(net("a5", { fabric: "A" })));
    expect(full).toMatchObject({ code: "conflict", messageId: VLAN_POOL_EXHAUSTED });
    expect(full.message).toMatch(/VLAN pool "pa" \(fabric "A", VLANs 100-103\) is exhausted: 4 of its 4 VLANs are in use/);

    // A VLAN is unique per fabric, not globally.
    const taken = await failure(inv.createNetwork(net("x", { fabric: "A", vlan: 101 })));
    expect(taken).toMatchObject({ code: "conflict", messageId: VLAN_IN_USE, property: "vlan" });
    expect(taken.message).toMatch(/VLAN 101 of fabric "A" is already used by network "a3"/);
    expect((await inv.createNetwork(net("b1", { fabric: "B", vlan: 101, pool: "pb" }))).vlan).toBe(101);
    expect((await inv.createNetwork(net("b2", { fabric: "B", owner: "t2" }))).vlan).toBe(100);

    // Which pool.
    expect(await failure(inv.createNetwork(net("x", { fabric: "A", pool: "pa", vlan: 200 })))).toMatchObject({ code: "validation", property: "vlan" });
    expect(await failure(inv.createNetwork(net("x", { fabric: "A", pool: "pb" })))).toMatchObject({ code: "validation", property: "pool" });
    expect(await failure(inv.createNetwork(net("x", { fabric: "A", pool: "nope" })))).toMatchObject({ code: "not-found", property: "pool" });
    expect((await failure(inv.createNetwork(net("x", { fabric: "C" })))).message).toMatch(/fabric "C" has no VLAN pool/);
    await inv.defineVlanPool({ name: "pb2", fabric: "B", ranges: [{ from: 500, to: 510 }] });
    expect((await failure(inv.createNetwork(net("x", { fabric: "B" })))).message).toMatch(/fabric "B" has 2 VLAN pools \("pb", "pb2"\): name one/);
    for (const vlan of [0, 4095, 1.5]) expect(await failure(inv.createNetwork(net("x", { fabric: "C", vlan })))).toMatchObject({ code: "validation", property: "vlan" });
    expect(await failure(inv.createNetwork(net("x", { owner: "" })))).toMatchObject({ code: "validation", property: "owner" });

    // The same create again returns the network; the same id with something else is refused.
    expect(await inv.createNetwork(net("a1", { fabric: "A", owner: "t1" }))).toEqual(a1);
    expect(await inv.createNetwork(net("a1", { fabric: "A", owner: "t1", vlan: 100, pool: "pa" }))).toEqual(a1);
    const other = await failure(inv.createNetwork(net("a1", { fabric: "A", owner: "t2" })));
    expect(other).toMatchObject({ code: "conflict", messageId: ID_IN_USE });
    expect(other.message).toMatch(/network "a1" already exists with owner "t1"/);

    // Deleting returns the VLAN to the pool: the next create gets it.
    expect(await inv.deleteNetwork("a3")).toBe(true);
    expect(await inv.deleteNetwork("a3")).toBe(false);
    expect(await inv.getNetwork("a3")).toBeUndefined();
    expect((await inv.createNetwork(net("a6", { fabric: "A" }))).vlan).toBe(101);

    const ids = async (f?: Parameters<Inventory["listNetworks"]>[0]) => (await inv.listNetworks(f)).map((n) => n.id);
    expect(await ids()).toEqual(["a1", "a2", "a4", "a6", "b1", "b2"]);
    expect(await ids({ owner: "t2" })).toEqual(["b2"]);
    expect(await ids({ fabric: "B" })).toEqual(["b1", "b2"]);
    expect(await ids({ fabric: "B", owner: "t1" })).toEqual(["b1"]);
  });

  test("concurrent network creates and address allocations in one process never share a VLAN or an address", async () => {
    await inv.defineVlanPool({ name: "p", fabric: "f", ranges: [{ from: 10, to: 19 }] });
    const created = await Promise.allSettled(Array.from({ length: 15 }, (_, i) => inv.createNetwork(net(`n${i}`, { fabric: "f" }))));
    const vlans = created.flatMap((r) => (r.status === "fulfilled" ? [r.value.vlan] : []));
    expect(vlans.sort((a, b) => a - b)).toEqual([10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    expect(created.filter((r) => r.status === "rejected").every((r) => (r as PromiseRejectedResult).reason.messageId === VLAN_POOL_EXHAUSTED)).toBe(true);

    await inv.addSubnet({ id: "s", networkId: "n0", cidr: "10.9.0.0/28" }); // 14 hosts
    const got = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => inv.allocateAddress({ subnetId: "s", owner: `o${i}` })));
    const addresses = got.flatMap((r) => (r.status === "fulfilled" ? [r.value.address] : []));
    expect(addresses).toHaveLength(14);
    expect(new Set(addresses).size).toBe(14);
    expect(got.filter((r) => r.status === "rejected").every((r) => (r as PromiseRejectedResult).reason.messageId === SUBNET_EXHAUSTED)).toBe(true);
  });

  // ---- tenant networks: subnets and addresses -------------------------------------------------

  test("subnets: IPv4 and IPv6, canonical; gateway and pools inside, pools apart, no overlap within a network", async () => {
    await inv.createNetwork(net("n", { vlan: 10 }));
    await inv.createNetwork(net("m", { vlan: 11 }));
    const s4 = await inv.addSubnet({ id: "s4", networkId: "n", cidr: "10.0.0.0/24", gateway: "10.0.0.1" });
    expect(s4).toMatchObject({
      id: "s4", networkId: "n", cidr: "10.0.0.0/24", ipVersion: 4, gateway: "10.0.0.1",
      allocationPools: [{ start: "10.0.0.2", end: "10.0.0.254" }], version: 1,
    });
    expect(await inv.getSubnet("s4")).toEqual(s4);
    // The gateway inside the host range splits the default pool.
    const mid = await inv.addSubnet({ id: "mid", networkId: "m", cidr: "10.0.0.0/29", gateway: "10.0.0.3" });
    expect(mid.allocationPools).toEqual([{ start: "10.0.0.1", end: "10.0.0.2" }, { start: "10.0.0.4", end: "10.0.0.6" }]);
    const s6 = await inv.addSubnet({
      id: "s6", networkId: "n", cidr: "2001:DB8:0:1::/64", gateway: "2001:db8:0:1:0:0:0:1",
      allocationPools: [{ start: "2001:db8:0:1::1:0", end: "2001:db8:0:1::1:ff" }, { start: "2001:db8:0:1::100", end: "2001:db8:0:1::1ff" }],
    });
    expect(s6).toMatchObject({
      cidr: "2001:db8:0:1::/64", ipVersion: 6, gateway: "2001:db8:0:1::1",
      allocationPools: [{ start: "2001:db8:0:1::100", end: "2001:db8:0:1::1ff" }, { start: "2001:db8:0:1::1:0", end: "2001:db8:0:1::1:ff" }],
    });
    const noGateway = await inv.addSubnet({ id: "v6", networkId: "m", cidr: "fd00::/64" });
    expect(noGateway).not.toHaveProperty("gateway");
    expect(noGateway.allocationPools).toEqual([{ start: "fd00::1", end: "fd00::ffff:ffff:ffff:ffff" }]);

    const v = (s: Partial<Parameters<Inventory["addSubnet"]>[0]>) => failure(inv.addSubnet({ id: "x", networkId: "n", cidr: "10.1.0.0/24", ...s }));
    expect((await v({ cidr: "10.1.0.1/24" })).message).toMatch(/host bits set; the network is 10\.1\.0\.0\/24/);
    expect(await v({ cidr: "10.1.0.0/31" })).toMatchObject({ code: "validation", property: "cidr" });
    expect(await v({ cidr: "2001:db8::/127" })).toMatchObject({ property: "cidr" });
    expect(await v({ cidr: "banana" })).toMatchObject({ property: "cidr" });
    expect(await v({ gateway: "10.2.0.1" })).toMatchObject({ property: "gateway" });
    expect(await v({ gateway: "10.1.0.0" })).toMatchObject({ property: "gateway" });
    expect(await v({ gateway: "10.1.0.255" })).toMatchObject({ property: "gateway" });
    expect(await v({ gateway: "2001:db8::1" })).toMatchObject({ property: "gateway" });
    expect(await v({ allocationPools: [{ start: "10.1.0.10", end: "10.1.1.20" }] })).toMatchObject({ property: "allocationPools[0].end" });
    expect(await v({ allocationPools: [{ start: "10.1.0.20", end: "10.1.0.10" }] })).toMatchObject({ property: "allocationPools[0]" });
    const pools = await v({ allocationPools: [{ start: "10.1.0.50", end: "10.1.0.60" }, { start: "10.1.0.10", end: "10.1.0.50" }] });
    expect(pools).toMatchObject({ property: "allocationPools[0]" });
    expect(pools.message).toMatch(/overlaps allocationPools\[1\] \(10\.1\.0\.10-10\.1\.0\.50\)/);
    expect(await v({ allocationPools: [{ start: "10.1.0.0", end: "10.1.0.0" }] })).toMatchObject({ property: "allocationPools" });
    expect(await v({ allocationPools: [] })).toMatchObject({ property: "allocationPools" });
    const overlap = await v({ cidr: "10.0.0.128/25" });
    expect(overlap).toMatchObject({ code: "validation", property: "cidr" });
    expect(overlap.message).toMatch(/10\.0\.0\.128\/25 overlaps 10\.0\.0\.0\/24, subnet "s4" of network "n"/);
    expect(await failure(inv.addSubnet({ id: "x", networkId: "nope", cidr: "10.1.0.0/24" }))).toMatchObject({ code: "not-found", property: "networkId" });
    // The same prefix in another network is fine (separate layer-2 domains).
    await inv.createNetwork(net("o", { vlan: 12 }));
    expect((await inv.addSubnet({ id: "same-as-s4", networkId: "o", cidr: "10.0.0.0/24" })).cidr).toBe("10.0.0.0/24");

    // The same subnet again returns it; the same id with something else is refused.
    expect(await inv.addSubnet({ id: "s4", networkId: "n", cidr: "10.0.0.0/24", gateway: "10.0.0.1" })).toEqual(s4);
    const changed = await failure(inv.addSubnet({ id: "s4", networkId: "n", cidr: "10.0.0.0/24" }));
    expect(changed).toMatchObject({ code: "conflict", messageId: ID_IN_USE });
    expect(changed.message).toMatch(/subnet "s4" already exists with gateway 10\.0\.0\.1/);

    expect((await inv.listSubnets({ networkId: "n" })).map((s) => s.id)).toEqual(["s4", "s6"]);
    expect(await inv.removeSubnet("s6")).toBe(true);
    expect(await inv.removeSubnet("s6")).toBe(false);
    expect((await inv.listSubnets({ networkId: "n" })).map((s) => s.id)).toEqual(["s4"]);
  });

  test("addresses: the lowest free of the pools, never reserved; static; the same owner gets the same address; exhaustion names the subnet", async () => {
    await inv.createNetwork(net("n", { vlan: 10 }));
    await inv.addSubnet({ id: "s", networkId: "n", cidr: "10.1.0.0/29", gateway: "10.1.0.1" }); // .2-.6
    const a = (owner: string, address?: string) => inv.allocateAddress({ subnetId: "s", owner, ...(address ? { address } : {}) });
    const o1 = await a("o1");
    expect(o1).toMatchObject({ subnetId: "s", address: "10.1.0.2", ipVersion: 4, owner: "o1", static: false });
    expect((await a("o2")).address).toBe("10.1.0.3");
    expect(await a("o3", "10.1.0.5")).toMatchObject({ address: "10.1.0.5", static: true });
    expect((await a("o4")).address).toBe("10.1.0.4");
    expect((await a("o5")).address).toBe("10.1.0.6");
    const full = await failure(a("o6"));
    expect(full).toMatchObject({ code: "conflict", messageId: SUBNET_EXHAUSTED });
    expect(full.message).toMatch(/subnet "s" \(10\.1\.0\.0\/29\) of network "n" has no free address in its allocation pools \(10\.1\.0\.2-10\.1\.0\.6\): 5 of its 5 addresses are in use/);

    // Idempotent per owner.
    expect(await a("o1")).toEqual(o1);
    expect(await a("o1", "10.1.0.2")).toEqual(o1);
    expect(await failure(a("o1", "10.1.0.4"))).toMatchObject({ code: "conflict", messageId: ADDRESS_IN_USE, property: "address" });

    // Static requests: free, inside, never reserved.
    const dup = await failure(a("o7", "10.1.0.3"));
    expect(dup).toMatchObject({ code: "conflict", messageId: ADDRESS_IN_USE });
    expect(dup.message).toMatch(/address 10\.1\.0\.3 of subnet "s" is already allocated to "o2"/);
    expect((await failure(a("o7", "10.1.0.1"))).message).toMatch(/is the gateway/);
    expect((await failure(a("o7", "10.1.0.0"))).message).toMatch(/is the network address/);
    expect((await failure(a("o7", "10.1.0.7"))).message).toMatch(/is the broadcast address/);
    expect(await failure(a("o7", "10.1.0.8"))).toMatchObject({ code: "validation", property: "address" });
    expect(await failure(a("o7", "2001:db8::1"))).toMatchObject({ code: "validation", property: "address" });
    expect(await failure(a("o7", "10.1.0.300"))).toMatchObject({ code: "validation", property: "address" });
    expect(await failure(inv.allocateAddress({ subnetId: "nope", owner: "o" }))).toMatchObject({ code: "not-found", property: "subnetId" });
    expect(await failure(inv.allocateAddress({ subnetId: "s", owner: "" }))).toMatchObject({ code: "validation", property: "owner" });

    expect(await inv.releaseAddress("s", "o2")).toBe(true);
    expect(await inv.releaseAddress("s", "o2")).toBe(false);
    expect(await inv.releaseAddress("nope", "o2")).toBe(false);
    expect((await a("o7")).address).toBe("10.1.0.3"); // the lowest free again
    expect((await inv.listAddresses("s")).map((x) => `${x.address}=${x.owner}`)).toEqual(["10.1.0.2=o1", "10.1.0.3=o7", "10.1.0.4=o4", "10.1.0.5=o3", "10.1.0.6=o5"]);
    expect(await inv.listAddresses("nope")).toEqual([]);

    // Pools in any order, the gateway and broadcast inside them skipped; listed in numeric order.
    await inv.addSubnet({
      id: "p", networkId: "n", cidr: "10.2.0.0/24", gateway: "10.2.0.9",
      allocationPools: [{ start: "10.2.0.250", end: "10.2.0.255" }, { start: "10.2.0.8", end: "10.2.0.10" }],
    });
    const got: string[] = [];
    for (let i = 0; i < 7; i++) got.push((await inv.allocateAddress({ subnetId: "p", owner: `p${i}` })).address);
    expect(got).toEqual(["10.2.0.8", "10.2.0.10", "10.2.0.250", "10.2.0.251", "10.2.0.252", "10.2.0.253", "10.2.0.254"]);
    expect((await failure(inv.allocateAddress({ subnetId: "p", owner: "p7" }))).message).toMatch(/7 of its 7 addresses are in use/);
    // A static address outside the pools is allowed (and does not count against them).
    expect((await inv.allocateAddress({ subnetId: "p", owner: "fixed", address: "10.2.0.100" })).static).toBe(true);
    expect((await inv.listAddresses("p")).map((x) => x.address)).toEqual([...got.slice(0, 2), "10.2.0.100", ...got.slice(2)]);

    // IPv6: the subnet-router anycast address (the prefix itself) is never handed out.
    await inv.addSubnet({ id: "v6", networkId: "n", cidr: "2001:db8:1::/64", allocationPools: [{ start: "2001:db8:1::", end: "2001:db8:1::2" }] });
    expect(await inv.allocateAddress({ subnetId: "v6", owner: "a" })).toMatchObject({ address: "2001:db8:1::1", ipVersion: 6 });
    expect((await inv.allocateAddress({ subnetId: "v6", owner: "b" })).address).toBe("2001:db8:1::2");
    expect((await failure(inv.allocateAddress({ subnetId: "v6", owner: "c" }))).message).toMatch(/2 of its 2 addresses are in use/);
    expect((await failure(inv.allocateAddress({ subnetId: "v6", owner: "c", address: "2001:db8:1::" }))).message).toMatch(/subnet-router anycast/);
    expect((await inv.allocateAddress({ subnetId: "v6", owner: "c", address: "2001:DB8:1:0::00FF" })).address).toBe("2001:db8:1::ff");
    await inv.addSubnet({ id: "gw6", networkId: "n", cidr: "2001:db8:2::/64", gateway: "2001:db8:2::1" });
    expect((await inv.allocateAddress({ subnetId: "gw6", owner: "a" })).address).toBe("2001:db8:2::2");

    expect(await failure(inv.removeSubnet("s"))).toMatchObject({ code: "conflict", messageId: IN_USE });
    expect((await failure(inv.removeSubnet("s"))).message).toMatch(/subnet "s" has 5 addresses allocated \(10\.1\.0\.2 to "o1", /);
  });

  test("deleting a network: refused while ports are attached or addresses allocated, naming them; its subnets go with it", async () => {
    await inv.upsertNode(node("n1"));
    await inv.upsertPort({ id: "port1", nodeId: node("n1").id, mac: "52:54:00:00:00:01", switchId: "sw1", switchPort: "eth1" });
    await inv.createNetwork(net("red", { vlan: 10 }));
    await inv.addSubnet({ id: "s", networkId: "red", cidr: "10.0.0.0/24" });
    await inv.addSubnet({ id: "empty", networkId: "red", cidr: "10.0.1.0/24" });
    await inv.attach({ id: "att1", portId: "port1", networkId: "red", mode: "access" });
    await inv.allocateAddress({ subnetId: "s", owner: "att1" });
    const busy = await failure(inv.deleteNetwork("red"));
    expect(busy).toMatchObject({ code: "conflict", messageId: IN_USE });
    expect(busy.message).toMatch(/network "red" is in use: 1 port attached \(attachment "att1" of port "port1"\); 1 address allocated \(10\.0\.0\.1 in subnet "s" to "att1"\)/);
    await inv.detach("att1");
    expect((await failure(inv.deleteNetwork("red"))).message).not.toMatch(/attached/);
    await inv.releaseAddress("s", "att1");
    expect(await inv.deleteNetwork("red")).toBe(true);
    expect(await inv.listSubnets()).toEqual([]);
    expect((await inv.createNetwork(net("blue", { vlan: 10 }))).vlan).toBe(10);
  });

  // ---- tenant networks: ports and attachments -------------------------------------------------

  test("ports: a switch port and a MAC belong to one port; the node must exist; ports go with their node", async () => {
    const n1 = (await inv.upsertNode(node("n1"))).id;
    const n2 = (await inv.upsertNode(node("n2"))).id;
    const p1 = await inv.upsertPort({ id: "p1", nodeId: n1, mac: "52-54-00-AA-BB-01", switchId: "leaf1", switchPort: "Ethernet1/1" });
    expect(p1).toMatchObject({ id: "p1", nodeId: n1, mac: "52:54:00:aa:bb:01", switchId: "leaf1", switchPort: "Ethernet1/1", version: 1 });
    expect(p1).not.toHaveProperty("physicalNetwork");
    expect(await inv.upsertPort({ id: "p1", nodeId: n1, mac: "52:54:00:aa:bb:01", switchId: "leaf1", switchPort: "Ethernet1/1" })).toEqual(p1);
    const p1b = await inv.upsertPort({ id: "p1", nodeId: n1, mac: "52:54:00:aa:bb:01", switchId: "leaf1", switchPort: "Ethernet1/1", physicalNetwork: "dc1" });
    expect(p1b).toMatchObject({ physicalNetwork: "dc1", version: 2 });
    expect(await inv.getPort("p1")).toEqual(p1b);

    const sw = await failure(inv.upsertPort({ id: "p2", nodeId: n2, mac: "52:54:00:aa:bb:02", switchId: "leaf1", switchPort: "Ethernet1/1" }));
    expect(sw).toMatchObject({ code: "conflict", messageId: SWITCH_PORT_IN_USE, property: "switchPort" });
    expect(sw.message).toMatch(new RegExp(`switch port "Ethernet1/1" of switch "leaf1" already belongs to port "p1" of node "${n1}"`));
    const mac = await failure(inv.upsertPort({ id: "p2", nodeId: n2, mac: "52:54:00:AA:BB:01", switchId: "leaf1", switchPort: "Ethernet1/2" }));
    expect(mac).toMatchObject({ code: "conflict", messageId: MAC_IN_USE, property: "mac" });
    await inv.upsertPort({ id: "p2", nodeId: n2, mac: "52:54:00:aa:bb:02", switchId: "leaf1", switchPort: "Ethernet1/2" });
    await inv.upsertPort({ id: "p3", nodeId: n2, mac: "52:54:00:aa:bb:03", switchId: "leaf2", switchPort: "Ethernet1/1" }); // another switch
    expect(await failure(inv.upsertPort({ id: "p4", nodeId: "ghost", mac: "52:54:00:aa:bb:04", switchId: "s", switchPort: "1" }))).toMatchObject({ code: "not-found", property: "nodeId" });
    expect(await failure(inv.upsertPort({ id: "p4", nodeId: n1, mac: "52:54:00:aa:bb", switchId: "s", switchPort: "1" }))).toMatchObject({ code: "validation", property: "mac" });
    expect(await failure(inv.upsertPort({ id: "p4", nodeId: n1, mac: "52:54:00:aa:bb:04", switchId: "s", switchPort: "" }))).toMatchObject({ property: "switchPort" });

    expect((await inv.listPorts()).map((p) => p.id)).toEqual(["p1", "p2", "p3"]);
    expect((await inv.listPorts({ nodeId: n2 })).map((p) => p.id)).toEqual(["p2", "p3"]);
    expect(await inv.removePort("p3")).toBe(true);
    expect(await inv.removePort("p3")).toBe(false);
    expect(await inv.removeNode(n2)).toBe(true);
    expect(await inv.listPorts()).toHaveLength(1);
    // The freed switch port may be taken by another node's port.
    await inv.upsertPort({ id: "p5", nodeId: n1, mac: "52:54:00:aa:bb:05", switchId: "leaf1", switchPort: "Ethernet1/2" });
  });

  test("attachments: an access port in one network, a trunk in several with one native; the network's owner on the record", async () => {
    const n1 = (await inv.upsertNode(node("n1"))).id;
    await inv.upsertPort({ id: "p1", nodeId: n1, mac: "52:54:00:00:00:01", switchId: "leaf1", switchPort: "eth1", physicalNetwork: "dc1" });
    await inv.upsertPort({ id: "p2", nodeId: n1, mac: "52:54:00:00:00:02", switchId: "leaf1", switchPort: "eth2" });
    await inv.createNetwork(net("red", { owner: "t1", vlan: 10 }));
    await inv.createNetwork(net("blue", { owner: "t2", vlan: 20 }));
    await inv.createNetwork(net("green", { owner: "t1", vlan: 30 }));
    await inv.createNetwork(net("far", { owner: "t1", fabric: "dc2", vlan: 10 }));

    const a1 = await inv.attach({ id: "a1", portId: "p1", networkId: "red", mode: "access" });
    expect(a1).toMatchObject({
      id: "a1", portId: "p1", networkId: "red", mode: "access", native: false,
      nodeId: n1, mac: "52:54:00:00:00:01", switchId: "leaf1", switchPort: "eth1", fabric: "dc1", vlan: 10, owner: "t1",
    });
    expect(Date.parse(a1.createdAt)).not.toBeNaN();
    expect(await inv.getAttachment("a1")).toEqual(a1);
    expect(await inv.attach({ id: "a1", portId: "p1", networkId: "red", mode: "access" })).toEqual(a1);
    expect(await failure(inv.attach({ id: "a1", portId: "p1", networkId: "blue", mode: "access" }))).toMatchObject({ code: "conflict", messageId: ID_IN_USE });

    const access = await failure(inv.attach({ id: "a2", portId: "p1", networkId: "blue", mode: "access" }));
    expect(access).toMatchObject({ code: "conflict", messageId: PORT_ATTACHED, property: "portId" });
    expect(access.message).toMatch(/port "p1" is an access port in network "red" \(attachment "a1", owner "t1"\)/);
    expect((await failure(inv.attach({ id: "a2", portId: "p1", networkId: "blue", mode: "trunk" }))).message).toMatch(/access port in network "red"/);
    // The port's physical network must be the network's fabric.
    await inv.detach("a1");
    expect((await failure(inv.attach({ id: "a2", portId: "p1", networkId: "far", mode: "access" }))).message).toMatch(/physical network "dc1" but network "far" is on fabric "dc2"/);

    // Trunks: several networks, one native, never mixed with access.
    await inv.attach({ id: "t-red", portId: "p2", networkId: "red", mode: "trunk", native: true });
    await inv.attach({ id: "t-blue", portId: "p2", networkId: "blue", mode: "trunk" });
    expect((await failure(inv.attach({ id: "t-green", portId: "p2", networkId: "green", mode: "trunk", native: true }))).message).toMatch(/already has native network "red"/);
    const mixed = await failure(inv.attach({ id: "x", portId: "p2", networkId: "green", mode: "access" }));
    expect(mixed).toMatchObject({ messageId: PORT_ATTACHED, property: "mode" });
    expect(mixed.message).toMatch(/port "p2" is a trunk port in network "blue" \(trunk, attachment "t-blue"\), network "red" \(trunk, attachment "t-red"\)/);
    expect((await failure(inv.attach({ id: "x", portId: "p2", networkId: "red", mode: "trunk" }))).message).toMatch(/already in network "red" \(attachment "t-red"\)/);
    await inv.attach({ id: "t-green", portId: "p2", networkId: "green", mode: "trunk" });
    await inv.attach({ id: "a1", portId: "p1", networkId: "red", mode: "access" });

    expect(await failure(inv.attach({ id: "x", portId: "p1", networkId: "red", mode: "access", native: true }))).toMatchObject({ code: "validation", property: "native" });
    expect(await failure(inv.attach({ id: "x", portId: "p1", networkId: "red", mode: "hybrid" as "access" }))).toMatchObject({ code: "validation", property: "mode" });
    expect(await failure(inv.attach({ id: "x", portId: "nope", networkId: "red", mode: "access" }))).toMatchObject({ code: "not-found", property: "portId" });
    expect(await failure(inv.attach({ id: "x", portId: "p2", networkId: "nope", mode: "trunk" }))).toMatchObject({ code: "not-found", property: "networkId" });

    const ids = async (f?: Parameters<Inventory["listAttachments"]>[0]) => (await inv.listAttachments(f)).map((a) => a.id);
    expect(await ids()).toEqual(["a1", "t-blue", "t-green", "t-red"]);
    expect(await ids({ networkId: "red" })).toEqual(["a1", "t-red"]);
    expect(await ids({ portId: "p2", networkId: "blue" })).toEqual(["t-blue"]);
    expect(await ids({ nodeId: n1 })).toHaveLength(4);
    expect(await ids({ nodeId: "other" })).toEqual([]);
    expect((await inv.listAttachments({ networkId: "blue" }))[0]).toMatchObject({ owner: "t2", vlan: 20, native: false });

    // What an attachment pins down.
    const move = await failure(inv.upsertPort({ id: "p1", nodeId: n1, mac: "52:54:00:00:00:01", switchId: "leaf1", switchPort: "eth9", physicalNetwork: "dc1" }));
    expect(move).toMatchObject({ code: "conflict", messageId: PORT_ATTACHED, property: "switchPort" });
    expect(move.message).toMatch(/port "p1" is attached to network "red" \(access, attachment "a1"\); detach it before changing its switchPort/);
    expect((await inv.upsertPort({ id: "p1", nodeId: n1, mac: "52:54:00:00:00:0a", switchId: "leaf1", switchPort: "eth1", physicalNetwork: "dc1" })).mac).toBe("52:54:00:00:00:0a");
    expect(await failure(inv.removePort("p2"))).toMatchObject({ code: "conflict", messageId: PORT_ATTACHED });
    const nodeBusy = await failure(inv.removeNode(n1));
    expect(nodeBusy).toMatchObject({ code: "conflict", messageId: PORT_ATTACHED });
    expect(nodeBusy.message).toMatch(/has ports attached to networks \(port "p1" in network "red", /);
    expect((await failure(inv.deleteNetwork("red"))).message).toMatch(/2 ports attached \(attachment "a1" of port "p1", attachment "t-red" of port "p2"\)/);

    expect(await inv.detach("a1")).toBe(true);
    expect(await inv.detach("a1")).toBe(false);
    expect(await inv.getAttachment("a1")).toBeUndefined();
    await inv.attach({ id: "a3", portId: "p1", networkId: "blue", mode: "access" }); // free again
  });

  test("the schema's constraints hold behind the code: one VLAN per fabric, an address once, a switch port once", async () => {
    await inv.upsertNode(node("n1"));
    await inv.createNetwork(net("a", { vlan: 10 }));
    await inv.addSubnet({ id: "s", networkId: "a", cidr: "10.0.0.0/24" });
    await inv.allocateAddress({ subnetId: "s", owner: "o1" });
    await inv.upsertPort({ id: "p1", nodeId: node("n1").id, mac: "52:54:00:00:00:01", switchId: "sw", switchPort: "1" });
    await inv.attach({ id: "x1", portId: "p1", networkId: "a", mode: "access" });
    await inv.createNetwork(net("b", { vlan: 11 }));
    const now = "'2024-01-01T00:00:00Z'";
    for (const sql of [
      `INSERT INTO networks (id, name, owner, fabric, vlan, created_at, updated_at) VALUES ('dup', 'dup', 't', 'dc1', 10, ${now}, ${now})`,
      `INSERT INTO ip_addresses (subnet_id, address, owner, created_at) VALUES ('s', '10.0.0.1', 'o2', ${now})`,
      `INSERT INTO ip_addresses (subnet_id, address, owner, created_at) VALUES ('s', '10.0.0.9', 'o1', ${now})`,
      `INSERT INTO ports (id, node_id, mac, switch_id, switch_port, created_at, updated_at) VALUES ('p2', '${node("n1").id}', '52:54:00:00:00:02', 'sw', '1', ${now}, ${now})`,
      `INSERT INTO attachments (id, port_id, network_id, mode, created_at) VALUES ('x2', 'p1', 'b', 'access', ${now})`,
      "DELETE FROM subnets WHERE id = 's'",
      "DELETE FROM networks WHERE id = 'a'",
    ]) {
      await expect(db.exec(sql)).rejects.toThrow(/unique|constraint/i);
    }
  });

  // ---- migrations ---------------------------------------------------------------------------

  // ---- the service's tokens and audit log -------------------------------------------------------

  test("API tokens: stored and read back as given, listed by project, revoked once (the first time stays)", async () => {
    const t = { id: "0123456789abcdef01234567", name: "ci", projectId: "project-a", roles: ["member", "reader"], createdAt: "2026-11-23T00:00:00.000Z", expiresAt: "2026-12-23T00:00:00.000Z", secretHash: "ab".repeat(32), ratePerMinute: 600 };
    await inv.insertToken(t);
    await inv.insertToken({ ...t, id: "fedcba9876543210fedcba98", name: "op", projectId: undefined, roles: ["admin"], createdAt: "2026-11-23T00:00:01.000Z", expiresAt: undefined });
    expect(await inv.getToken(t.id)).toEqual(t);
    expect(await inv.getToken("000000000000000000000000")).toBeUndefined();
    expect((await failure(inv.insertToken(t))).code).toBe("conflict");
    expect((await inv.listTokens("project-a")).map((x) => x.name)).toEqual(["ci"]);
    expect((await inv.listTokens()).map((x) => x.name)).toEqual(["ci", "op"]);
    expect(await inv.revokeToken(t.id, "2026-11-24T00:00:00.000Z")).toBe(true);
    expect(await inv.revokeToken(t.id, "2026-11-25T00:00:00.000Z")).toBe(true);
    expect((await inv.getToken(t.id))?.revokedAt).toBe("2026-11-24T00:00:00.000Z");
    expect(await inv.revokeToken("000000000000000000000000", "2026-11-24T00:00:00.000Z")).toBe(false);
  });

  test("audit log: appended in order with sequence numbers, paged after a sequence, filtered by project", async () => {
    const base = { at: "2026-11-23T00:00:00.000Z", requestId: "r", operation: "baremetal:node:deploy", outcome: "done" };
    const a1 = await inv.appendAudit({ ...base, requestId: "r1", tokenId: "t1", projectId: "project-a", target: "n1" });
    const b1 = await inv.appendAudit({ ...base, requestId: "r2", projectId: "project-b", outcome: "denied", detail: "PolicyNotAuthorized" });
    const a2 = await inv.appendAudit({ ...base, requestId: "r3", projectId: "project-a" });
    expect(b1.seq).toBeGreaterThan(a1.seq);
    expect(a2.seq).toBeGreaterThan(b1.seq);
    expect((await inv.listAudit()).map((e) => e.requestId)).toEqual(["r1", "r2", "r3"]);
    expect(await inv.listAudit({ projectId: "project-a" })).toEqual([
      { ...base, requestId: "r1", tokenId: "t1", projectId: "project-a", target: "n1", seq: a1.seq },
      { ...base, requestId: "r3", projectId: "project-a", seq: a2.seq },
    ]);
    expect((await inv.listAudit({ afterSeq: a1.seq, limit: 1 })).map((e) => e.requestId)).toEqual(["r2"]);
  });

  // ---- objects the service manages for tenants (broker mode) -----------------------------------

  const VOLUME = "baremetal:storage:Volume";
  const KEY = "baremetal:kms:Key";
  const T0 = "2026-11-23T00:00:00.000Z";
  const uuidOf = (n: number) => `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
  const svc = (n: number, extra: Partial<ServiceResourceRecord> = {}): ServiceResourceRecord => ({
    uuid: uuidOf(n),
    type: VOLUME,
    projectId: "project-a",
    name: `vol-${n}`,
    resourceId: `pool-1/vol-${n}`,
    inputs: { sizeGiB: 10 * n },
    state: { device: `/dev/nvme${n}` },
    etag: `e${n}`,
    partial: false,
    createdAt: T0,
    updatedAt: T0,
    ...extra,
  });
  const change = (etag: string, extra: Partial<ServiceResourceChange> = {}): ServiceResourceChange => ({
    inputs: { sizeGiB: 20 },
    state: { device: "/dev/nvme9", grown: true },
    etag,
    partial: false,
    updatedAt: "2026-11-24T00:00:00.000Z",
    ...extra,
  });

  test("service objects: stored and read back as given, found by resourceId, by name in a project (or the operator's) and by idempotency key", async () => {
    const a = svc(1, { idempotencyKey: "idem-1", partial: true });
    const op = svc(2, { projectId: undefined, name: "shared", resourceId: "pool-1/op" });
    const unnamed = svc(3, { name: undefined, resourceId: "pool-1/anon" });
    for (const r of [a, op, unnamed]) await inv.insertServiceResource(r);

    expect(await inv.getServiceResource(a.uuid)).toEqual(a);
    const gotOp = await inv.getServiceResource(op.uuid);
    expect(gotOp).toEqual(op);
    expect(gotOp).not.toHaveProperty("projectId"); // unset optional fields are absent
    expect(gotOp).not.toHaveProperty("idempotencyKey");
    expect(await inv.getServiceResource(unnamed.uuid)).not.toHaveProperty("name");
    expect(await inv.getServiceResource(uuidOf(99))).toBeUndefined();

    expect(await inv.findServiceResource(VOLUME, { resourceId: "pool-1/vol-1" })).toEqual(a);
    expect(await inv.findServiceResource(KEY, { resourceId: "pool-1/vol-1" })).toBeUndefined(); // per type
    expect(await inv.findServiceResource(VOLUME, { name: "vol-1", projectId: "project-a" })).toEqual(a);
    expect(await inv.findServiceResource(VOLUME, { name: "vol-1", projectId: "project-b" })).toBeUndefined();
    expect(await inv.findServiceResource(VOLUME, { name: "vol-1" })).toBeUndefined(); // the operator's scope
    expect(await inv.findServiceResource(VOLUME, { name: "shared" })).toEqual(op);
    expect(await inv.findServiceResource(VOLUME, { name: "shared", projectId: undefined })).toEqual(op);
    expect(await inv.findServiceResource(VOLUME, { name: "shared", projectId: "project-a" })).toBeUndefined();
    expect(await inv.findServiceResource(VOLUME, { idempotencyKey: "idem-1" })).toEqual(a);
    expect(await inv.findServiceResource(KEY, { idempotencyKey: "idem-1" })).toBeUndefined();
    expect(await inv.findServiceResource(VOLUME, { idempotencyKey: "idem-2" })).toBeUndefined();

    // Times are stored in UTC with milliseconds, whatever zone they were given in.
    await inv.insertServiceResource(svc(4, { createdAt: "2026-11-23T01:00:00+01:00", updatedAt: "2026-11-23T00:00:00.5Z" }));
    expect(await inv.getServiceResource(uuidOf(4))).toMatchObject({ createdAt: T0, updatedAt: "2026-11-23T00:00:00.500Z" });
  });

  test("service objects: malformed arguments are refused with the property named", async () => {
    await inv.insertServiceResource(svc(1));
    const v = (p: Promise<unknown>) => failure(p).then((e) => ({ code: e.code, property: e.property }));
    expect(await v(inv.findServiceResource(VOLUME, {}))).toEqual({ code: "validation", property: "by" });
    expect(await v(inv.findServiceResource(VOLUME, { resourceId: "pool-1/vol-1", name: "vol-1" }))).toEqual({ code: "validation", property: "by" });
    expect(await v(inv.findServiceResource(VOLUME, { resourceId: "pool-1/vol-1", projectId: "project-a" }))).toEqual({ code: "validation", property: "projectId" });
    expect(await v(inv.findServiceResource("", { resourceId: "x" }))).toEqual({ code: "validation", property: "type" });
    expect(await v(inv.insertServiceResource(svc(2, { inputs: [] as unknown as Record<string, unknown> })))).toEqual({ code: "validation", property: "inputs" });
    expect(await v(inv.insertServiceResource(svc(2, { state: { s: "\ud800" } })))).toEqual({ code: "validation", property: "state" });
    expect(await v(inv.insertServiceResource(svc(2, { state: { s: "a\u0000b" } })))).toEqual({ code: "validation", property: "state" });
    expect(await v(inv.insertServiceResource(svc(2, { createdAt: "yesterday" })))).toEqual({ code: "validation", property: "createdAt" });
    expect(await v(inv.insertServiceResource(svc(2, { partial: "no" as unknown as boolean })))).toEqual({ code: "validation", property: "partial" });
    expect(await v(inv.insertServiceResource(svc(2, { resourceId: "" })))).toEqual({ code: "validation", property: "resourceId" });
    expect(await v(inv.updateServiceResource(uuidOf(1), change("e2", { updatedAt: "2026-11-24" })))).toEqual({ code: "validation", property: "updatedAt" });
    expect(await v(inv.listServiceResources({ limit: 0 }))).toEqual({ code: "validation", property: "limit" });
    // An empty project id never widens a filter to every project.
    expect(await v(inv.listServiceResources({ projectId: "" }))).toEqual({ code: "validation", property: "projectId" });
    expect(await inv.listServiceResources()).toHaveLength(1); // nothing malformed was stored
  });

  test("service objects: every uniqueness is a conflict (uuid, type and resourceId, project type and name, idempotency key)", async () => {
    const a = svc(1, { idempotencyKey: "idem-1" });
    await inv.insertServiceResource(a);
    await inv.insertServiceResource(svc(2, { projectId: undefined, name: "op-vol" }));
    const refused = async (r: ServiceResourceRecord, why: RegExp) => {
      const e = await failure(inv.insertServiceResource(r));
      expect(e).toMatchObject({ code: "conflict", messageId: "inventory.ServiceResourceExists" });
      expect(e.message).toMatch(why);
      expect(e.message).not.toContain("idem-1"); // the client's key is not echoed
    };
    await refused(svc(1, { type: KEY, name: "other", resourceId: "k1", idempotencyKey: undefined }), new RegExp(`uuid ${uuidOf(1)} exists`));
    await refused(svc(3, { name: "vol-3", resourceId: a.resourceId }), /has resourceId "pool-1\/vol-1"/);
    await refused(svc(3, { name: "vol-1" }), /is named "vol-1" in project "project-a"/);
    await refused(svc(3, { projectId: undefined, name: "op-vol" }), /is named "op-vol" of the operator/);
    await refused(svc(3, { idempotencyKey: "idem-1" }), /was created with the same idempotency key/);
    await refused(svc(3, { resourceId: a.resourceId, name: "vol-1", idempotencyKey: "idem-1" }), /resourceId.*named.*idempotency key/);

    // What is unique only in its scope is not refused elsewhere.
    await inv.insertServiceResource(svc(3, { projectId: "project-b", name: "vol-1" })); // same name, other project
    await inv.insertServiceResource(svc(4, { projectId: undefined, name: "vol-1" })); // same name, the operator's
    await inv.insertServiceResource(svc(5, { type: KEY, name: "vol-1", resourceId: a.resourceId })); // same name and resourceId, other type
    await inv.insertServiceResource(svc(6, { name: undefined })); // unnamed objects never clash by name
    await inv.insertServiceResource(svc(7, { name: undefined }));
    expect((await inv.listServiceResources()).map((r) => r.uuid)).toEqual([1, 2, 3, 4, 5, 6, 7].map(uuidOf));
    expect(await inv.getServiceResource(uuidOf(1))).toEqual(a); // the refusals changed nothing

    // The database itself refuses them, whatever the code does (two service instances, one database).
    const cols = "(uuid, type, project_id, name, resource_id, inputs, state, etag, idempotency_key, partial, created_at, updated_at)";
    const row = (uuid: string, project: string, name: string, resourceId: string, key: string) =>
      `INSERT INTO service_resources ${cols} VALUES ('${uuid}', '${VOLUME}', ${project}, ${name}, '${resourceId}', '{}', '{}', 'e', ${key}, false, '${T0}', '${T0}')`;
    for (const sql of [
      row("x1", "'project-z'", "'x1'", "pool-1/vol-1", "NULL"),
      row("x2", "'project-a'", "'vol-1'", "pool-1/x2", "NULL"),
      row("x3", "NULL", "'op-vol'", "pool-1/x3", "NULL"),
      row("x4", "NULL", "NULL", "pool-1/x4", "'idem-1'"),
    ]) {
      await expect(db.exec(sql)).rejects.toThrow(/unique/i);
    }
  });

  test("service objects: updates compare the etag (matching, stale, absent object), deletes too", async () => {
    const a = svc(1);
    await inv.insertServiceResource(a);
    const updated = await inv.updateServiceResource(a.uuid, change("e2", { partial: true }), "e1");
    expect(updated).toEqual({ ...a, inputs: { sizeGiB: 20 }, state: { device: "/dev/nvme9", grown: true }, etag: "e2", partial: true, updatedAt: "2026-11-24T00:00:00.000Z" });
    expect(await inv.getServiceResource(a.uuid)).toEqual(updated); // returned as stored

    const stale = await failure(inv.updateServiceResource(a.uuid, change("e3"), "e1"));
    expect(stale).toMatchObject({ code: "conflict", messageId: "inventory.VersionConflict" });
    expect(stale.message).toMatch(/expected etag "e1", found "e2"/);
    expect(await inv.getServiceResource(a.uuid)).toEqual(updated); // unchanged

    expect(await failure(inv.updateServiceResource(uuidOf(99), change("e3"), "e1"))).toMatchObject({ code: "not-found" });
    expect(await failure(inv.updateServiceResource(uuidOf(99), change("e3")))).toMatchObject({ code: "not-found" });
    // Without an expected etag the update is unconditional.
    expect((await inv.updateServiceResource(a.uuid, change("e3", { partial: false }))).etag).toBe("e3");
    // A create's record gets its handler id once the handler returns (found by it afterwards); omitted, the id stays.
    const renamed = await inv.updateServiceResource(a.uuid, { ...change("e3"), resourceId: "pool-1/renamed" }, "e3");
    expect(renamed.resourceId).toBe("pool-1/renamed");
    expect((await inv.findServiceResource(a.type, { resourceId: "pool-1/renamed" }))?.uuid).toBe(a.uuid);
    expect((await inv.updateServiceResource(a.uuid, change("e3"))).resourceId).toBe("pool-1/renamed");

    const staleDelete = await failure(inv.deleteServiceResource(a.uuid, "e2"));
    expect(staleDelete).toMatchObject({ code: "conflict", messageId: "inventory.VersionConflict" });
    expect(await inv.getServiceResource(a.uuid)).toBeDefined();
    expect(await inv.deleteServiceResource(a.uuid, "e3")).toBe(true);
    expect(await inv.getServiceResource(a.uuid)).toBeUndefined();
    expect(await inv.deleteServiceResource(a.uuid, "e3")).toBe(false);
    expect(await inv.deleteServiceResource(a.uuid)).toBe(false);
    await inv.insertServiceResource(svc(2));
    expect(await inv.deleteServiceResource(uuidOf(2))).toBe(true); // unconditional
    // Its name, resource id and uuid are free again.
    await inv.insertServiceResource(a);
  });

  test("service objects: listed by uuid in byte order, filtered by type and project (null: the operator's), paged by keyset", async () => {
    // Upper case sorts before lower case in byte order (not in most locales).
    const ids = ["a0000000-0000-4000-8000-000000000000", "A0000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000001", "f0000000-0000-4000-8000-000000000000", "90000000-0000-4000-8000-000000000000"];
    const projects = ["project-a", undefined, "project-b", "project-a", undefined];
    const types = [VOLUME, VOLUME, KEY, KEY, VOLUME];
    for (let i = 0; i < ids.length; i++) {
      await inv.insertServiceResource(svc(i + 1, { uuid: ids[i], projectId: projects[i], type: types[i] }));
    }
    const list = async (f?: Parameters<Inventory["listServiceResources"]>[0]) => (await inv.listServiceResources(f)).map((r) => r.uuid);
    const sorted = [...ids].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
    expect(sorted[1]).toBe("90000000-0000-4000-8000-000000000000");
    expect(await list()).toEqual(sorted);
    expect(await list({ type: KEY })).toEqual([ids[2], ids[3]]);
    expect(await list({ projectId: "project-a" })).toEqual([ids[0], ids[3]]);
    expect(await list({ projectId: null })).toEqual([ids[4], ids[1]]);
    expect(await list({ projectId: null, type: VOLUME })).toEqual([ids[4], ids[1]]);
    expect(await list({ projectId: "project-a", type: VOLUME })).toEqual([ids[0]]);
    expect(await list({ projectId: "project-c" })).toEqual([]);
    expect((await inv.listServiceResources({ projectId: "project-a" }))[0]).toEqual(svc(1, { uuid: ids[0], projectId: "project-a", type: VOLUME }));

    // Keyset pages of two: every object once, in order, whatever happens between the pages.
    const pages: string[][] = [];
    let after: string | undefined;
    for (;;) {
      const page = await list({ afterUuid: after, limit: 2 });
      if (!page.length) break;
      pages.push(page);
      after = page[page.length - 1];
      if (pages.length === 1) await inv.deleteServiceResource(page[0]); // behind the cursor: no page shifts
    }
    expect(pages).toEqual([sorted.slice(0, 2), sorted.slice(2, 4), sorted.slice(4)]);
    expect(await list({ afterUuid: sorted[2], limit: 1 })).toEqual([sorted[3]]);
    expect(sorted[2]).toBe(ids[1]); // "A0..."; after it: "a0..." (project-a), "f0..." (project-a)
    expect(await list({ afterUuid: sorted[2], projectId: "project-a" })).toEqual([ids[0], ids[3]]);
    expect(await list({ afterUuid: sorted[2], projectId: null })).toEqual([]);
    expect(await list({ afterUuid: "~" })).toEqual([]);

    // The default page is 100 objects.
    for (let i = 10; i < 115; i++) await inv.insertServiceResource(svc(i, { name: undefined }));
    expect(await list()).toHaveLength(100);
    expect(await list({ limit: 1000 })).toHaveLength(109);
  });

  test("service objects: inputs and state round trip as JSON (nesting, numbers, booleans, null, unicode)", async () => {
    const inputs = {
      sizeGiB: 1024,
      ratio: 0.1,
      negative: -17.25,
      big: 9007199254740991,
      tiny: 5e-324,
      huge: 1.7976931348623157e308,
      exp: 1e21,
      on: true,
      off: false,
      none: null,
      empty: {},
      emptyList: [],
      nested: { deeper: { list: [1, [2, [3, { four: "4" }]], "five", { six: [true, false, null] }] } },
      "clé é 鍵 🔑": "ünïcödé — 日本語 — 🚀 — \u200b — \"quoted\" \\ back\nslash\ttab",
      order: { z: 1, a: 2, m: [3, 2, 1] },
    };
    const state = { wwn: "naa.600", targets: [{ portal: "[2001:db8::1]:3260", lun: 0 }], attempts: [[], [[]], [{}]], "": "empty key" };
    const a = svc(1, { inputs, state });
    await inv.insertServiceResource(a);
    expect(await inv.getServiceResource(a.uuid)).toEqual(a);
    const reopened = await open(); // another instance reads what this one stored
    expect((await reopened.getServiceResource(a.uuid))?.inputs).toEqual(inputs);
    expect((await reopened.findServiceResource(VOLUME, { resourceId: a.resourceId }))?.state).toEqual(state);
    const changed = await inv.updateServiceResource(a.uuid, change("e2", { inputs: state, state: inputs }), "e1");
    expect(changed.inputs).toEqual(state);
    expect(changed.state).toEqual(inputs);
    expect((await inv.listServiceResources())[0].state).toEqual(inputs);
    // Undefined members are dropped (as JSON does).
    await inv.updateServiceResource(a.uuid, change("e3", { state: { kept: 1, dropped: undefined } }));
    expect((await inv.getServiceResource(a.uuid))?.state).toEqual({ kept: 1 });
    expect((await inv.getServiceResource(a.uuid))?.state).not.toHaveProperty("dropped");
  });

  test("service objects: of concurrent writes expecting the same etag exactly one wins (one inventory, and several on one database)", async () => {
    const a = svc(1);
    await inv.insertServiceResource(a);
    const others = [await open(), await open()];
    const writers = [inv, ...others];
    let etag = "e1";
    for (let round = 0; round < 8; round++) {
      // Several writes per instance, all at once, all expecting the etag read before.
      // (Only strings in what a failure prints: an inventory object would show its database URL.)
      const etags = Array.from({ length: 9 }, (_, i) => `r${round}-w${i}`);
      const outcomes = await Promise.allSettled(
        etags.map((e, i) => writers[i % writers.length].updateServiceResource(a.uuid, change(e, { state: { round, writer: i } }), etag)),
      );
      const won = etags.filter((_, i) => outcomes[i].status === "fulfilled");
      expect(won).toHaveLength(1);
      for (const o of outcomes) {
        if (o.status === "rejected") expect(o.reason).toMatchObject({ code: "conflict", messageId: "inventory.VersionConflict" });
      }
      const stored = await others[round % 2].getServiceResource(a.uuid);
      expect(stored?.etag).toBe(won[0]);
      expect(stored?.state).toEqual({ round, writer: etags.indexOf(won[0]) });
      etag = won[0];
    }

    // An update and a delete expecting the same etag: exactly one of them happens.
    for (let round = 0; round < 4; round++) {
      const [u, d] = await Promise.allSettled([
        others[0].updateServiceResource(a.uuid, change(`u${round}`), etag),
        others[1].deleteServiceResource(a.uuid, etag),
      ]);
      const stored = await inv.getServiceResource(a.uuid);
      if (u.status === "fulfilled") {
        expect(d).toMatchObject({ status: "rejected", reason: { code: "conflict" } });
        expect(stored?.etag).toBe(`u${round}`);
        etag = `u${round}`;
      } else {
        expect(d).toEqual({ status: "fulfilled", value: true });
        expect(u.reason).toMatchObject({ code: "not-found" });
        expect(stored).toBeUndefined();
        await inv.insertServiceResource(a);
        etag = a.etag;
      }
    }
  });

  // ---- leases of nodes (issue 8) --------------------------------------------------------------

  test("leases: stored with times in UTC, read, listed by node, state, lessee and due time", async () => {
    const n = await inv.upsertNode(node("leased", { owner: "project-o" }));
    const a = await inv.insertLease({ id: "lease-a", nodeId: n.id, owner: "project-o", lessee: "project-a", startTime: "2030-01-01T01:00:00+01:00", endTime: "2030-01-01T01:00:00Z" });
    expect(a).toEqual({
      id: "lease-a",
      nodeId: n.id,
      owner: "project-o",
      lessee: "project-a",
      startTime: "2030-01-01T00:00:00.000Z",
      endTime: "2030-01-01T01:00:00.000Z",
      state: "pending",
      createdAt: expect.stringMatching(/Z$/),
    });
    expect(await inv.getLease("lease-a")).toEqual(a);
    expect(await inv.getLease("nope")).toBeUndefined();
    const b = await inv.insertLease({ id: "lease-b", nodeId: n.id, lessee: "project-b", startTime: "2030-01-01T01:00:00Z", endTime: "2030-01-01T02:00:00Z", state: "active" });
    expect(b).not.toHaveProperty("owner");
    expect(b.state).toBe("active");
    expect((await inv.listLeases()).map((l) => l.id)).toEqual(["lease-a", "lease-b"]);
    expect((await inv.listLeases({ nodeId: n.id, state: "active" })).map((l) => l.id)).toEqual(["lease-b"]);
    expect((await inv.listLeases({ state: ["pending", "active"], lessee: "project-a" })).map((l) => l.id)).toEqual(["lease-a"]);
    expect((await inv.listLeases({ owner: "project-o" })).map((l) => l.id)).toEqual(["lease-a"]);
    expect(await inv.listLeases({ nodeId: "https://bmc.example/redfish/v1/Systems/other" })).toEqual([]);
    // Due: a pending lease once its start is reached, an active one once its end is, every ending one.
    expect((await inv.listLeases({ dueAt: "2029-12-31T23:59:59Z" })).map((l) => l.id)).toEqual([]);
    expect((await inv.listLeases({ dueAt: "2030-01-01T00:00:00Z" })).map((l) => l.id)).toEqual(["lease-a"]);
    expect((await inv.listLeases({ dueAt: "2030-01-01T02:00:00Z" })).map((l) => l.id)).toEqual(["lease-a", "lease-b"]);
    await inv.changeLeaseState("lease-a", ["pending"], "ending");
    expect((await inv.listLeases({ dueAt: "2000-01-01T00:00:00Z" })).map((l) => l.id)).toEqual(["lease-a"]);
  });

  test("leases: an overlapping window of the same node is refused until the other lease ended; bad input is refused", async () => {
    const n = await inv.upsertNode(node("busy"));
    const other = await inv.upsertNode(node("free"));
    const base = { nodeId: n.id, lessee: "project-a" };
    await inv.insertLease({ id: "l1", ...base, startTime: "2030-01-01T00:00:00Z", endTime: "2030-01-01T10:00:00Z" });
    for (const [start, end] of [["2030-01-01T09:59:59Z", "2030-01-02T00:00:00Z"], ["2029-12-31T00:00:00Z", "2030-01-01T00:00:01Z"], ["2030-01-01T01:00:00Z", "2030-01-01T02:00:00Z"]]) {
      const refused = await failure(inv.insertLease({ id: `x-${start}`, ...base, lessee: "project-b", startTime: start, endTime: end }));
      expect(refused).toMatchObject({ code: "conflict", messageId: LEASE_OVERLAP });
      expect(refused.message).toMatch(/lease l1 \(to project project-a, pending\)/);
    }
    // Touching windows do not overlap ([start, end)); another node is independent.
    await inv.insertLease({ id: "l2", ...base, startTime: "2030-01-01T10:00:00Z", endTime: "2030-01-01T11:00:00Z" });
    await inv.insertLease({ id: "l3", ...base, nodeId: other.id, startTime: "2030-01-01T00:00:00Z", endTime: "2030-01-01T10:00:00Z" });
    expect(await failure(inv.insertLease({ id: "l1", ...base, startTime: "2031-01-01T00:00:00Z", endTime: "2031-01-02T00:00:00Z" }))).toMatchObject({ code: "conflict", property: "id" });
    // Once l1 ended, its window is free again.
    await inv.changeLeaseState("l1", ["pending"], "ended", { endedAt: "2030-01-01T00:30:00Z", endReason: "deleted" });
    await inv.insertLease({ id: "l4", ...base, startTime: "2030-01-01T05:00:00Z", endTime: "2030-01-01T06:00:00Z" });
    expect(await failure(inv.insertLease({ id: "l5", ...base, nodeId: "https://bmc.example/redfish/v1/Systems/ghost", startTime: "2030-01-01T00:00:00Z", endTime: "2030-01-01T01:00:00Z" }))).toMatchObject({
      code: "not-found",
      property: "nodeId",
    });
    expect(await failure(inv.insertLease({ id: "l6", ...base, startTime: "2031-01-01T01:00:00Z", endTime: "2031-01-01T01:00:00Z" }))).toMatchObject({ code: "validation", property: "endTime" });
    expect(await failure(inv.insertLease({ id: "l7", ...base, startTime: "tomorrow", endTime: "2031-01-01T01:00:00Z" }))).toMatchObject({ code: "validation", property: "startTime" });
    expect(await failure(inv.insertLease({ id: "l8", ...base, lessee: "", startTime: "2032-01-01T00:00:00Z", endTime: "2032-01-01T01:00:00Z" }))).toMatchObject({ code: "validation", property: "lessee" });
    expect(await failure(inv.listLeases({ state: "gone" as never }))).toMatchObject({ code: "validation", property: "state" });
  });

  test("leases: concurrent inserts of overlapping windows for one node: exactly one is stored", async () => {
    const n = await inv.upsertNode(node("race"));
    const second = await open();
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) =>
        (i % 2 ? second : inv).insertLease({ id: `race-${i}`, nodeId: n.id, lessee: `project-${i}`, startTime: `2030-01-01T0${i}:00:00Z`, endTime: "2030-01-02T00:00:00Z" }),
      ),
    );
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    for (const r of results) if (r.status === "rejected") expect(r.reason).toMatchObject({ code: "conflict", messageId: LEASE_OVERLAP });
    expect(await inv.listLeases({ nodeId: n.id })).toHaveLength(1);
  });

  test("leases: a state change is conditional, so two callers ending a lease at once end it once", async () => {
    const n = await inv.upsertNode(node("ending"));
    await inv.insertLease({ id: "e1", nodeId: n.id, lessee: "project-a", startTime: "2030-01-01T00:00:00Z", endTime: "2030-01-01T01:00:00Z", state: "active" });
    const second = await open();
    const [x, y] = await Promise.all([inv.changeLeaseState("e1", ["active"], "ending"), second.changeLeaseState("e1", ["active"], "ending")]);
    expect([x, y].filter((r) => r !== undefined)).toHaveLength(1);
    expect((x ?? y)!.state).toBe("ending");
    // From a state it is not in: nothing changes.
    expect(await inv.changeLeaseState("e1", ["pending", "active"], "ended")).toBeUndefined();
    const ended = await inv.changeLeaseState("e1", ["ending"], "ended", { endedAt: "2030-01-01T01:00:05+00:00", endReason: "expired" });
    expect(ended).toMatchObject({ state: "ended", endedAt: "2030-01-01T01:00:05.000Z", endReason: "expired" });
    expect(await inv.getLease("e1")).toEqual(ended);
    // Kept when not given again.
    expect(await inv.changeLeaseState("e1", ["ended"], "ended")).toMatchObject({ endedAt: "2030-01-01T01:00:05.000Z", endReason: "expired" });
    expect(await failure(inv.changeLeaseState("nope", ["active"], "ending"))).toMatchObject({ code: "not-found" });
    expect(await failure(inv.changeLeaseState("e1", [], "ending"))).toMatchObject({ code: "validation", property: "from" });
    expect(await failure(inv.changeLeaseState("e1", ["active"], "over" as never))).toMatchObject({ code: "validation", property: "to" });
  });

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
