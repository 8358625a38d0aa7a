/**
 * The embedded inventory: one SQLite file shared by every provider process of one operator
 * (Node's built-in `node:sqlite`, so no native module to build).
 *
 * ## Atomicity
 *
 * Every write runs in a `BEGIN IMMEDIATE` transaction: it takes the database's single write lock
 * before its first read, so a claim's read of the free nodes and its update of the chosen one see
 * no other writer in between, in this process or any other. Two claims are therefore serialised by
 * SQLite itself and can never pick the same node. The file is in WAL mode, so readers (listNodes,
 * getNode) are never blocked by a writer, and a writer never waits for readers.
 *
 * `node:sqlite` is synchronous and one connection serves the whole process, so a transaction is
 * never interleaved with another call of the same process: its body runs without `await`.
 *
 * ## Waiting for the write lock
 *
 * SQLite's busy handler waits inside the call, which blocks the process's event loop (and with it
 * every other resource operation of the provider). So the busy timeout is kept short
 * (`BUSY_SLICE_MS`) and a busy transaction is retried asynchronously, with a small random delay,
 * until `busyTimeoutMs` (default 15 s) has passed; then the call fails with a `transient` error.
 * Transactions here last well under a millisecond, so waits are short even with many processes.
 *
 * Times are the machine's clock (every user of the file runs on this machine).
 */
import { randomUUID } from "crypto";
import * as fs from "fs";
import * as path from "path";
import type { DatabaseSync, SQLInputValue, StatementSync } from "node:sqlite";
import { BaremetalError, isBaremetalError } from "../core/errors";
import {
  ClaimValues,
  closedError,
  compact,
  delay,
  lockHeld,
  LockRow,
  lostLock,
  matchesRestrictions,
  noMatchError,
  nodeNotFound,
  normaliseClaim,
  normaliseFilter,
  normaliseNode,
  optionalText,
  optionalVersion,
  rankNodes,
  requireId,
  requireLease,
  requireState,
  requireText,
  versionConflict,
  nowIso,
  nodeColumns,
  currentColumns,
  sameColumns,
  NODE_COLUMNS,
} from "./common";
import { Migration, MIGRATIONS, pendingMigrations } from "./migrations";
import {
  AllocationFilter,
  AllocationRecord,
  AVAILABLE,
  Claim,
  ClaimRequest,
  Inventory,
  LockHandle,
  LockInfo,
  NodeFilter,
  NodeInput,
  NodeRecord,
  WriteOptions,
} from "./types";

export interface SqliteOptions {
  /** How long a call may wait for another process's write transaction (default 15000 ms). */
  busyTimeoutMs?: number;
  /** The migrations to apply (tests only; default: all of this release). */
  migrations?: readonly Migration[];
}

/** Longest synchronous wait inside SQLite's busy handler (it blocks the event loop). */
const BUSY_SLICE_MS = 50;
const SQLITE_BUSY = 5;
const SQLITE_LOCKED = 6;
const SQLITE_CONSTRAINT = 19;

type Row = Record<string, unknown>;
type SqliteModule = typeof import("node:sqlite");

function loadSqlite(): SqliteModule {
  try {
    // Loaded on first use: PostgreSQL users of the provider never need node:sqlite.
    return require("node:sqlite") as SqliteModule;
  } catch (err) {
    throw new BaremetalError(
      "internal",
      `the SQLite inventory needs Node.js >= 22.13 (built-in node:sqlite); this is ${process.version}. Use the project's Node 24 or a postgres:// inventory`,
      { cause: err },
    );
  }
}

function sqliteCode(err: unknown): number | undefined {
  const c = (err as { errcode?: unknown } | null)?.errcode;
  return typeof c === "number" ? c & 0xff : undefined;
}

function isBusy(err: unknown): boolean {
  const c = sqliteCode(err);
  return c === SQLITE_BUSY || c === SQLITE_LOCKED;
}

function failure(err: unknown, what: string, where: string): BaremetalError {
  if (isBaremetalError(err)) return err;
  const message = err instanceof Error ? err.message : String(err);
  const code = sqliteCode(err);
  if (code === SQLITE_BUSY || code === SQLITE_LOCKED) {
    return new BaremetalError("transient", `${what}: the SQLite inventory ${where} stayed busy (another process holds its write lock); try again`, { cause: err });
  }
  if (code === SQLITE_CONSTRAINT) {
    return new BaremetalError("conflict", `${what}: the SQLite inventory ${where} refused the change: ${message}`, { cause: err });
  }
  return new BaremetalError("backend", `${what}: SQLite inventory ${where}: ${message}`, { cause: err });
}

function opt<T>(v: unknown): T | undefined {
  return v === null || v === undefined ? undefined : (v as T);
}

function toNode(r: Row): NodeRecord {
  return compact({
    id: r.id as string,
    name: r.name as string,
    owner: opt(r.owner),
    lessee: opt(r.lessee),
    resourceClass: opt(r.resource_class),
    traits: JSON.parse(r.traits as string) as string[],
    properties: JSON.parse(r.properties as string) as Record<string, unknown>,
    provisionState: r.provision_state as string,
    maintenance: Number(r.maintenance) === 1,
    maintenanceReason: opt(r.maintenance_reason),
    lastError: opt(r.last_error),
    allocationId: opt(r.allocation_id),
    createdAt: r.created_at as string,
    updatedAt: r.updated_at as string,
    version: Number(r.version),
  });
}

function toAllocation(r: Row): AllocationRecord {
  return compact({
    id: r.id as string,
    name: r.name as string,
    owner: opt(r.owner),
    project: opt(r.project),
    nodeId: r.node_id as string,
    resourceClass: opt(r.resource_class),
    traits: JSON.parse(r.traits as string) as string[],
    candidateNodes: r.candidate_nodes == null ? undefined : (JSON.parse(r.candidate_nodes as string) as string[]),
    state: r.state as AllocationRecord["state"],
    createdAt: r.created_at as string,
    releasedAt: opt(r.released_at),
  });
}

function toLock(r: Row, now: string): LockInfo {
  return {
    nodeId: r.node_id as string,
    holder: r.holder as string,
    operation: r.operation as string,
    acquiredAt: r.acquired_at as string,
    expiresAt: r.expires_at as string,
    expired: (r.expires_at as string) <= now,
  };
}

/** Parameters: undefined -> NULL, booleans -> 0/1. */
function p(v: string | number | boolean | null | undefined): SQLInputValue {
  if (v === undefined) return null;
  if (typeof v === "boolean") return v ? 1 : 0;
  return v;
}

export class SqliteInventory implements Inventory {
  readonly kind = "sqlite";
  private db: DatabaseSync | undefined;
  private readonly statements = new Map<string, StatementSync>();

  private constructor(
    db: DatabaseSync,
    /** For messages: the file, or ":memory:". */
    readonly where: string,
    private readonly busyTimeoutMs: number,
  ) {
    this.db = db;
  }

  /** Opens (creating it when missing) the inventory file, or a private in-memory one for ":memory:". */
  static async open(file: string, options: SqliteOptions = {}): Promise<SqliteInventory> {
    const { DatabaseSync: Database } = loadSqlite();
    const memory = file === ":memory:";
    const busyTimeoutMs = options.busyTimeoutMs ?? 15000;
    if (!memory) {
      if (!path.isAbsolute(file)) throw new BaremetalError("validation", `the SQLite inventory path must be absolute, got ${JSON.stringify(file)}`);
      try {
        fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
        // Created 0600 before SQLite opens it: tenancy data is nobody else's business. SQLite
        // gives the -wal and -shm files the same mode.
        fs.closeSync(fs.openSync(file, "a", 0o600));
      } catch (err) {
        throw new BaremetalError("backend", `cannot create the SQLite inventory ${file}: ${(err as Error).message}`, { cause: err });
      }
    }
    let db: DatabaseSync;
    try {
      db = new Database(file, { timeout: BUSY_SLICE_MS, enableForeignKeyConstraints: true });
    } catch (err) {
      throw failure(err, "opening the inventory", file);
    }
    const inv = new SqliteInventory(db, file, busyTimeoutMs);
    try {
      if (!memory) {
        // WAL: readers never block the writer nor the other way round. Switching needs a moment
        // of exclusive access, so it is retried like a write; it is persistent in the file.
        await inv.retryBusy("opening the inventory", () => db.prepare("PRAGMA journal_mode = WAL").get());
      }
      await inv.migrate(options.migrations ?? MIGRATIONS);
    } catch (err) {
      db.close();
      throw err;
    }
    return inv;
  }

  // ---- plumbing ---------------------------------------------------------------------------

  private conn(): DatabaseSync {
    if (!this.db) throw closedError(this.kind);
    return this.db;
  }

  private stmt(sql: string): StatementSync {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.conn().prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  private get(sql: string, ...params: SQLInputValue[]): Row | undefined {
    return this.stmt(sql).get(...params) as Row | undefined;
  }

  private all(sql: string, ...params: SQLInputValue[]): Row[] {
    return this.stmt(sql).all(...params) as Row[];
  }

  private run(sql: string, ...params: SQLInputValue[]): number {
    return Number(this.stmt(sql).run(...params).changes);
  }

  /** Runs `fn` until it is not refused for a busy database, for at most busyTimeoutMs. */
  private async retryBusy<T>(what: string, fn: () => T): Promise<T> {
    const deadline = Date.now() + this.busyTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return fn();
      } catch (err) {
        if (!isBusy(err) || Date.now() >= deadline) throw failure(err, what, this.where);
        // Random back-off so that waiting processes do not retry in lock step.
        await delay(Math.min(5 + attempt * 5, 50) * (0.5 + Math.random()));
      }
    }
  }

  /** A write transaction: BEGIN IMMEDIATE (the write lock first), body without await, COMMIT. */
  private write<T>(what: string, body: () => T): Promise<T> {
    return this.retryBusy(what, () => {
      const db = this.conn();
      db.exec("BEGIN IMMEDIATE");
      try {
        const result = body();
        db.exec("COMMIT");
        return result;
      } catch (err) {
        if (db.isTransaction) db.exec("ROLLBACK");
        throw err;
      }
    });
  }

  private read<T>(what: string, body: () => T): Promise<T> {
    return this.retryBusy(what, body);
  }

  private async migrate(list: readonly Migration[]): Promise<void> {
    await this.write("migrating the inventory schema", () => {
      const db = this.conn();
      db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at TEXT NOT NULL
      )`);
      const applied = (db.prepare("SELECT version FROM schema_migrations").all() as Row[]).map((r) => Number(r.version));
      for (const m of pendingMigrations(applied, list, this.where)) {
        for (const sql of m.sqlite) db.exec(sql);
        db.prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)").run(m.version, m.name, nowIso());
      }
    });
  }

  // ---- nodes ------------------------------------------------------------------------------

  private nodeRow(id: string): NodeRecord | undefined {
    const r = this.get("SELECT * FROM nodes WHERE id = ?", id);
    return r ? toNode(r) : undefined;
  }

  async upsertNode(node: NodeInput, options: WriteOptions = {}): Promise<NodeRecord> {
    const v = normaliseNode(node);
    const expected = optionalVersion("expectedVersion", options.expectedVersion);
    return this.write("enrolling a node", () => {
      const cur = this.nodeRow(v.id);
      const now = nowIso();
      const next = nodeColumns(cur, v);
      if (!cur) {
        if (expected !== undefined && expected !== 0) throw nodeNotFound(v.id);
        this.run(
          `INSERT INTO nodes (${NODE_COLUMNS.join(", ")}, id, created_at, updated_at, version)
           VALUES (${NODE_COLUMNS.map(() => "?").join(", ")}, ?, ?, ?, 1)`,
          ...NODE_COLUMNS.map((k) => p(next[k])), v.id, now, now,
        );
        return this.nodeRow(v.id)!;
      }
      if (expected !== undefined && cur.version !== expected) throw versionConflict(`node ${JSON.stringify(v.id)}`, expected, cur.version);
      // An unchanged declaration leaves the row (and its version) alone: a refresh or a no-op
      // `pulumi up` does not invalidate what other stacks read.
      if (sameColumns(next, currentColumns(cur))) return cur;
      this.run(
        `UPDATE nodes SET ${NODE_COLUMNS.map((k) => `${k} = ?`).join(", ")}, updated_at = ?, version = version + 1 WHERE id = ?`,
        ...NODE_COLUMNS.map((k) => p(next[k])), now, v.id,
      );
      return this.nodeRow(v.id)!;
    });
  }

  async getNode(id: string): Promise<NodeRecord | undefined> {
    requireId("id", id);
    return this.read("reading a node", () => this.nodeRow(id));
  }

  async listNodes(filter?: NodeFilter): Promise<NodeRecord[]> {
    const f = normaliseFilter(filter);
    const where: string[] = [];
    const params: SQLInputValue[] = [];
    if (f.owner !== undefined) (where.push("owner = ?"), params.push(f.owner));
    if (f.lessee !== undefined) (where.push("lessee = ?"), params.push(f.lessee));
    if (f.visibleTo !== undefined) (where.push("(owner = ? OR lessee = ?)"), params.push(f.visibleTo, f.visibleTo));
    if (f.provisionState !== undefined) (where.push("provision_state = ?"), params.push(f.provisionState));
    if (f.resourceClass !== undefined) (where.push("resource_class = ?"), params.push(f.resourceClass));
    const sql = `SELECT * FROM nodes${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY name, id`;
    return this.read("listing nodes", () => this.all(sql, ...params).map(toNode));
  }

  async removeNode(id: string, options: WriteOptions = {}): Promise<boolean> {
    requireId("id", id);
    const expected = optionalVersion("expectedVersion", options.expectedVersion);
    return this.write("removing a node", () => {
      const cur = this.nodeRow(id);
      if (!cur) return false;
      if (expected !== undefined && cur.version !== expected) throw versionConflict(`node ${JSON.stringify(id)}`, expected, cur.version);
      if (cur.allocationId !== undefined) {
        throw new BaremetalError(
          "conflict",
          `node ${JSON.stringify(id)} is claimed by allocation ${JSON.stringify(cur.allocationId)}; release that allocation before removing the node`,
          { messageId: "inventory.NodeClaimed" },
        );
      }
      this.run("DELETE FROM nodes WHERE id = ?", id);
      return true;
    });
  }

  /** Updates an existing node's row (changes: column -> value) under the version check. */
  private updateNode(what: string, id: string, expected: number | undefined, changes: Record<string, SQLInputValue>): Promise<NodeRecord> {
    return this.write(what, () => {
      const cur = this.nodeRow(id);
      if (!cur) throw nodeNotFound(id);
      if (expected !== undefined && cur.version !== expected) throw versionConflict(`node ${JSON.stringify(id)}`, expected, cur.version);
      const cols = Object.keys(changes);
      this.run(
        `UPDATE nodes SET ${cols.map((c) => `${c} = ?`).join(", ")}, updated_at = ?, version = version + 1 WHERE id = ?`,
        ...cols.map((c) => changes[c]), nowIso(), id,
      );
      return this.nodeRow(id)!;
    });
  }

  async setProvisionState(id: string, state: string, lastError?: string, expectedVersion?: number): Promise<NodeRecord> {
    requireId("id", id);
    const s = requireState("state", state);
    const err = optionalText("lastError", lastError, 65536);
    const expected = optionalVersion("expectedVersion", expectedVersion);
    return this.updateNode("setting a provision state", id, expected, { provision_state: s, last_error: p(err) });
  }

  async setMaintenance(id: string, maintenance: boolean, reason?: string, expectedVersion?: number): Promise<NodeRecord> {
    requireId("id", id);
    if (typeof maintenance !== "boolean") throw new BaremetalError("validation", "maintenance must be a boolean", { property: "maintenance" });
    const r = optionalText("reason", reason, 4096);
    const expected = optionalVersion("expectedVersion", expectedVersion);
    return this.updateNode("setting maintenance", id, expected, { maintenance: p(maintenance), maintenance_reason: p(maintenance ? r : undefined) });
  }

  // ---- claims -----------------------------------------------------------------------------

  private allocationRow(id: string): AllocationRecord | undefined {
    const r = this.get("SELECT * FROM allocations WHERE id = ?", id);
    return r ? toAllocation(r) : undefined;
  }

  async claimNode(request: ClaimRequest): Promise<Claim> {
    const c = normaliseClaim(request);
    return this.write("claiming a node", () => this.claimInTransaction(c));
  }

  private claimInTransaction(c: ClaimValues): Claim {
    const existing = this.allocationRow(c.allocationId);
    if (existing?.state === "active") {
      // A retried create (the provider crashed after the claim): the same claim again.
      return { allocation: existing, node: this.nodeRow(existing.nodeId)! };
    }
    // The write lock is held: nobody can claim between this read and the update below.
    // SQL narrows by the indexed columns; matchesRestrictions is the full rule (traits, candidates).
    const free = this.all(
      `SELECT * FROM nodes
       WHERE provision_state = ? AND maintenance = 0 AND allocation_id IS NULL
         AND (? IS NULL OR resource_class = ?)
         AND (? IS NULL OR owner = ? OR lessee = ?)`,
      AVAILABLE, p(c.resourceClass), p(c.resourceClass), p(c.project), p(c.project), p(c.project),
    )
      .map(toNode)
      .filter((n) => matchesRestrictions(n, c));
    if (free.length === 0) throw noMatchError(c, this.all("SELECT * FROM nodes ORDER BY name, id").map(toNode), this.kind);
    const chosen = rankNodes(c.name, free)[0];
    const now = nowIso();
    const changed = this.run(
      "UPDATE nodes SET allocation_id = ?, updated_at = ?, version = version + 1 WHERE id = ? AND allocation_id IS NULL",
      c.allocationId, now, chosen.id,
    );
    if (changed !== 1) throw new BaremetalError("internal", `node ${chosen.id} was claimed under the write lock by someone else`);
    this.run(
      `INSERT INTO allocations (id, name, owner, project, node_id, resource_class, traits, candidate_nodes, state, created_at, released_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, NULL)
       ON CONFLICT (id) DO UPDATE SET name = excluded.name, owner = excluded.owner, project = excluded.project,
         node_id = excluded.node_id, resource_class = excluded.resource_class, traits = excluded.traits,
         candidate_nodes = excluded.candidate_nodes, state = 'active', created_at = excluded.created_at, released_at = NULL`,
      c.allocationId, c.name, p(c.owner), p(c.project), chosen.id, p(c.resourceClass), JSON.stringify(c.traits),
      c.candidates ? JSON.stringify(c.candidates) : null, now,
    );
    return { allocation: this.allocationRow(c.allocationId)!, node: this.nodeRow(chosen.id)! };
  }

  async releaseClaim(allocationId: string): Promise<AllocationRecord | undefined> {
    requireId("allocationId", allocationId);
    return this.write("releasing a claim", () => {
      const a = this.allocationRow(allocationId);
      if (!a || a.state !== "active") return undefined;
      const now = nowIso();
      this.run("UPDATE allocations SET state = 'released', released_at = ? WHERE id = ?", now, allocationId);
      this.run(
        "UPDATE nodes SET allocation_id = NULL, updated_at = ?, version = version + 1 WHERE id = ? AND allocation_id = ?",
        now, a.nodeId, allocationId,
      );
      return this.allocationRow(allocationId);
    });
  }

  async getAllocation(allocationId: string): Promise<AllocationRecord | undefined> {
    requireId("allocationId", allocationId);
    return this.read("reading an allocation", () => this.allocationRow(allocationId));
  }

  async listAllocations(filter: AllocationFilter = {}): Promise<AllocationRecord[]> {
    const where: string[] = [];
    const params: SQLInputValue[] = [];
    const owner = optionalText("owner", filter.owner);
    const nodeId = optionalText("nodeId", filter.nodeId, 1024);
    if (owner !== undefined) (where.push("owner = ?"), params.push(owner));
    if (filter.state !== undefined) (where.push("state = ?"), params.push(filter.state));
    if (nodeId !== undefined) (where.push("node_id = ?"), params.push(nodeId));
    const sql = `SELECT * FROM allocations${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY created_at, id`;
    return this.read("listing allocations", () => this.all(sql, ...params).map(toAllocation));
  }

  // ---- locks ------------------------------------------------------------------------------

  async acquireLock(nodeId: string, holder: string, operation: string, leaseSeconds: number): Promise<LockHandle> {
    requireId("nodeId", nodeId);
    requireText("holder", holder, 1024);
    requireText("operation", operation);
    const lease = requireLease("leaseSeconds", leaseSeconds);
    const token = randomUUID();
    const row = await this.write("locking a node", () => {
      const now = Date.now();
      const nowText = new Date(now).toISOString();
      const got = this.get(
        `INSERT INTO node_locks (node_id, holder, operation, token, acquired_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (node_id) DO UPDATE SET holder = excluded.holder, operation = excluded.operation, token = excluded.token,
           acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
         WHERE node_locks.expires_at <= ?
         RETURNING *`,
        nodeId, holder, operation, token, nowText, new Date(now + lease * 1000).toISOString(), nowText,
      );
      if (!got) {
        const cur = this.get("SELECT * FROM node_locks WHERE node_id = ?", nodeId)!;
        throw lockHeld(nodeId, cur.holder as string, cur.operation as string, cur.expires_at as string);
      }
      return got;
    });
    let expiresAt = row.expires_at as string;
    const inv = this;
    return {
      nodeId,
      holder,
      operation,
      get expiresAt() {
        return expiresAt;
      },
      async renew(seconds?: number): Promise<void> {
        const l = seconds === undefined ? lease : requireLease("leaseSeconds", seconds);
        expiresAt = await inv.write("renewing a node lock", () => {
          const now = Date.now();
          const next = new Date(now + l * 1000).toISOString();
          const changed = inv.run(
            "UPDATE node_locks SET expires_at = ? WHERE node_id = ? AND token = ? AND expires_at > ?",
            next, nodeId, token, new Date(now).toISOString(),
          );
          if (changed !== 1) {
            const cur = inv.get("SELECT * FROM node_locks WHERE node_id = ?", nodeId);
            throw lostLock(nodeId, operation, cur && (cur as unknown as LockRow), token, new Date(now).toISOString());
          }
          return next;
        });
      },
      async release(): Promise<void> {
        await inv.write("releasing a node lock", () => inv.run("DELETE FROM node_locks WHERE node_id = ? AND token = ?", nodeId, token));
      },
    };
  }

  async getLock(nodeId: string): Promise<LockInfo | undefined> {
    requireId("nodeId", nodeId);
    return this.read("reading a node lock", () => {
      const r = this.get("SELECT * FROM node_locks WHERE node_id = ?", nodeId);
      return r ? toLock(r, nowIso()) : undefined;
    });
  }

  async close(): Promise<void> {
    const db = this.db;
    this.db = undefined;
    this.statements.clear();
    if (db?.isOpen) db.close();
  }
}
