/**
 * Opening by URL, the default location, and what is specific to each backend (the conformance
 * suite covers the behaviour they share; concurrency.test.ts the races between processes).
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { DatabaseSync } from "node:sqlite";
import { Client } from "pg";
import { BaremetalError, isBaremetalError } from "../core/errors";
import { startPostgres, PostgresInstance } from "../../../test/harness/postgres";
import {
  MIGRATIONS,
  defaultInventoryPath,
  defaultInventoryUrl,
  defaultStateDir,
  openInventory,
  parseInventoryUrl,
  redactUrl,
  rankNodes,
  rendezvousKey,
  sqliteUrl,
} from "./index";

async function failure(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (err) {
    if (isBaremetalError(err)) return err;
    throw new Error(`expected a BaremetalError, got ${String(err)}`);
  }
  throw new Error("expected a failure, but the call succeeded");
}

function thrown(fn: () => unknown): BaremetalError {
  try {
    fn();
  } catch (err) {
    if (isBaremetalError(err)) return err;
    throw err;
  }
  throw new Error("expected a failure");
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "inventory-index-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe("inventory URLs", () => {
  test("parses the supported forms", () => {
    expect(parseInventoryUrl("sqlite::memory:")).toEqual({ kind: "sqlite", file: ":memory:" });
    expect(parseInventoryUrl("sqlite:///var/lib/baremetal/inv.db")).toEqual({ kind: "sqlite", file: "/var/lib/baremetal/inv.db" });
    expect(parseInventoryUrl("sqlite:///a%20b/c.db?busy_timeout=2000")).toEqual({ kind: "sqlite", file: "/a b/c.db", busyTimeoutMs: 2000 });
    expect(parseInventoryUrl("postgres://u:p@db:5432/inv")).toEqual({ kind: "postgres", url: "postgres://u:p@db:5432/inv" });
    expect(parseInventoryUrl("postgresql://db/inv?sslmode=require").kind).toBe("postgres");
    expect(parseInventoryUrl(sqliteUrl("/tmp/with space/x.db"))).toEqual({ kind: "sqlite", file: "/tmp/with space/x.db" });
  });

  test("refuses the others, naming the property and without echoing a password", () => {
    for (const bad of ["", "sqlite://relative.db", "sqlite:relative.db", "sqlite:///dir/", "sqlite:///x.db?cache=shared", "mysql://u:secret@h/db", "/abs/path.db"]) {
      const err = thrown(() => parseInventoryUrl(bad));
      expect(err).toMatchObject({ code: "validation", property: "inventoryUrl" });
      expect(err.message).toMatch(/sqlite:\/\/\/absolute\/path\.db/);
      expect(err.message).not.toMatch(/secret/);
    }
    expect(thrown(() => parseInventoryUrl("nope", "inventory")).property).toBe("inventory");
    expect(redactUrl("postgres://user:s3cr3t@host:5432/db")).toBe("postgres://user:***@host:5432/db");
    expect(redactUrl("postgres://host/db")).toBe("postgres://host/db");
  });

  test("the default is an SQLite file in the user's state directory", () => {
    expect(defaultStateDir({ HOME: "/home/op" })).toBe("/home/op/.local/state/pulumi-baremetal");
    expect(defaultStateDir({ HOME: "/home/op", XDG_STATE_HOME: "/xdg" })).toBe("/xdg/pulumi-baremetal");
    expect(defaultStateDir({ HOME: "/home/op", XDG_STATE_HOME: "relative" })).toBe("/home/op/.local/state/pulumi-baremetal");
    expect(defaultInventoryPath({ HOME: "/home/op" })).toBe("/home/op/.local/state/pulumi-baremetal/inventory.db");
    expect(defaultInventoryUrl({ HOME: "/home/op" })).toBe("sqlite:///home/op/.local/state/pulumi-baremetal/inventory.db");
    expect(parseInventoryUrl(defaultInventoryUrl({ HOME: "/home/op" }))).toEqual({ kind: "sqlite", file: defaultInventoryPath({ HOME: "/home/op" }) });
  });

  test("rendezvous ranking is the md5 of name/id, lowest first", () => {
    expect(rendezvousKey("web", "n1")).toBe("574eba82a530165e3c632bd6a417fb35"); // printf 'web/n1' | md5sum
    const nodes = ["a", "b", "c", "d"].map((id) => ({ id, name: id }));
    const ranked = rankNodes("web", nodes);
    expect(ranked.map((n) => rendezvousKey("web", n.id))).toEqual(nodes.map((n) => rendezvousKey("web", n.id)).sort());
    expect(rankNodes("web", [...nodes].reverse())).toEqual(ranked); // independent of input order
  });
});

describe("SQLite specifics", () => {
  test("sqlite::memory: inventories are private and empty", async () => {
    const a = await openInventory("sqlite::memory:");
    const b = await openInventory("sqlite::memory:");
    await a.upsertNode({ id: "n", name: "n" });
    expect(await b.listNodes()).toEqual([]);
    await a.close();
    await b.close();
  });

  test("creates the file 0600 (and its directory), in WAL mode", async () => {
    const file = path.join(tmp, "deep", "er", "inventory.db");
    const inv = await openInventory(sqliteUrl(file));
    await inv.upsertNode({ id: "n", name: "n" });
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const db = new DatabaseSync(file);
    expect(db.prepare("PRAGMA journal_mode").get()).toEqual({ journal_mode: "wal" });
    db.close();
    await inv.close();
  });

  test("waits for another process's write lock without blocking the event loop, then gives up as transient", async () => {
    const file = path.join(tmp, "busy.db");
    const inv = await openInventory(`${sqliteUrl(file)}?busy_timeout=400`);
    await inv.upsertNode({ id: "n", name: "n" });
    const other = new DatabaseSync(file);
    other.exec("BEGIN IMMEDIATE"); // another process mid-write

    // Held longer than the budget: a transient error, and the event loop kept turning meanwhile.
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    const t0 = Date.now();
    const err = await failure(inv.setProvisionState("n", "available"));
    clearInterval(timer);
    expect(err).toMatchObject({ code: "transient" });
    expect(err.message).toMatch(/busy/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    expect(ticks).toBeGreaterThan(5);

    // Released while waiting: the write goes through.
    setTimeout(() => other.exec("COMMIT"), 150);
    expect((await inv.setProvisionState("n", "available")).provisionState).toBe("available");
    // Reads are never blocked by a writer (WAL).
    other.exec("BEGIN IMMEDIATE");
    expect(await inv.getNode("n")).toBeDefined();
    other.exec("ROLLBACK");
    other.close();
    await inv.close();
  });

  test("refuses a file that is not an SQLite database", async () => {
    const file = path.join(tmp, "garbage.db");
    fs.writeFileSync(file, "this is not a database, just some text that is long enough to be a header".repeat(20));
    const err = await failure(openInventory(sqliteUrl(file)));
    expect(err.code).toBe("backend");
    expect(err.message).toMatch(/garbage\.db/);
  });
});

describe("PostgreSQL specifics", () => {
  let pg: PostgresInstance;
  beforeAll(async () => {
    pg = await startPostgres();
  }, 60000);
  afterAll(() => pg?.stop(), 30000);

  test("a claim waits out a node row locked by another transaction instead of reporting no match", async () => {
    const url = await pg.database();
    const inv = await openInventory(url);
    const n = await inv.upsertNode({ id: "only", name: "only", provisionState: "available" });
    const c = new Client({ connectionString: url });
    await c.connect();
    await c.query("BEGIN");
    await c.query("SELECT * FROM nodes WHERE id = $1 FOR UPDATE", [n.id]); // e.g. an upsertNode in flight
    setTimeout(() => void c.query("COMMIT"), 300);
    const claim = await inv.claimNode({ allocationId: "a", name: "a" });
    expect(claim.node.id).toBe("only");
    await c.end();

    // ...but only for a while: still locked after claimRetryMs, it reports the contention.
    const short = await openInventory(url, { postgres: { claimRetryMs: 200 } });
    await inv.releaseClaim("a");
    const c2 = new Client({ connectionString: url });
    await c2.connect();
    await c2.query("BEGIN");
    await c2.query("SELECT * FROM nodes WHERE id = $1 FOR UPDATE", [n.id]);
    const err = await failure(short.claimNode({ allocationId: "b", name: "b" }));
    expect(err.message).toMatch(/claimed concurrently; try again/);
    await c2.query("ROLLBACK");
    await c2.end();
    await short.close();
    await inv.close();
  });

  test("several processes opening a fresh database at once apply the schema once", async () => {
    const url = await pg.database();
    const all = await Promise.all(Array.from({ length: 6 }, () => openInventory(url)));
    const c = new Client({ connectionString: url });
    await c.connect();
    expect((await c.query("SELECT count(*)::int AS n FROM schema_migrations")).rows[0].n).toBe(MIGRATIONS.length);
    await c.end();
    for (const i of all) await i.close();
  });

  test("connection failures are transient or auth errors, without the password", async () => {
    const wrong = pg.url.replace(encodeURIComponent(pg.password), "not-the-password");
    const auth = await failure(openInventory(wrong));
    expect(auth).toMatchObject({ code: "auth" });
    expect(auth.message).toMatch(/postgres:\*\*\*@127\.0\.0\.1/);
    expect(auth.message).not.toMatch(/not-the-password/);

    const closedPort = pg.url.replace(`:${pg.port}/`, ":1/");
    const refused = await failure(openInventory(closedPort));
    expect(refused).toMatchObject({ code: "transient" });
    expect(refused.message).toMatch(/cannot connect/);
    expect(refused.message).not.toContain(pg.password);
  });
});
