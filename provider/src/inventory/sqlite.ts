/**
 * The embedded inventory: one SQLite file shared by every provider process of one operator
 * (Node's built-in `node:sqlite`, so no native module to build).
 *
 * ## Atomicity
 *
 * Every write runs in a `BEGIN IMMEDIATE` transaction: it takes the database's single write lock
 * before its first read, so a claim's read of the free nodes and its update of the chosen one see
 * no other writer in between, in this process or any other. Two claims are therefore serialised by
 * SQLite itself and can never pick the same node; likewise two network creates never pick the same
 * VLAN and two allocations never pick the same address (the lowest free one is read and inserted
 * under the write lock). The file is in WAL mode, so readers (listNodes,
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
  auditFromRow,
  canonicalJson,
  ClaimValues,
  closedError,
  compact,
  delay,
  lockHandle,
  lockHeld,
  LockRow,
  lostLock,
  matchesRestrictions,
  noMatchError,
  nodeClaimed,
  nodeNotFound,
  normaliseClaim,
  normaliseFilter,
  normaliseNode,
  optionalText,
  optionalVersion,
  normaliseServiceChange,
  normaliseServiceListFilter,
  normaliseServiceResource,
  normaliseServiceSelector,
  rankNodes,
  requireId,
  etagConflict,
  leaseExists,
  leaseFromRow,
  leaseNotFound,
  leaseOverlap,
  normaliseLease,
  normaliseLeaseChange,
  normaliseLeaseFilter,
  serviceResourceExists,
  serviceResourceFromRow,
  serviceResourceNotFound,
  requireLockRequest,
  requireState,
  requireText,
  versionConflict,
  nowIso,
  nodeColumns,
  currentColumns,
  sameColumns,
  tokenFromRow,
  NODE_COLUMNS,
} from "./common";
import { Migration, MIGRATIONS, pendingMigrations } from "./migrations";
import {
  chooseAddress,
  chooseVlan,
  checkAttach,
  checkSubnetOverlap,
  existingAddress,
  existingAttachment,
  existingNetwork,
  existingSubnet,
  networkInUse,
  nodePortsAttached,
  normaliseAddressRequest,
  normaliseAttachment,
  normaliseAttachmentFilter,
  normaliseNetwork,
  normalisePort,
  normaliseSubnet,
  normaliseVlanPool,
  notFound,
  poolChangeConflict,
  poolInUse,
  PoolMember,
  portAttached,
  portChangeConflict,
  portTaken,
  rangesJson,
  resolvePool,
  samePort,
  sortAddresses,
  subnetColumns,
  subnetInUse,
  vlanPoolRecord,
} from "./network";
import {
  AddressRecord,
  AddressRequest,
  AllocationFilter,
  AllocationRecord,
  ApiTokenRecord,
  AttachmentFilter,
  AttachmentInput,
  AttachmentRecord,
  AuditInput,
  AuditRecord,
  AVAILABLE,
  Claim,
  ClaimRequest,
  Inventory,
  LeaseFilter,
  LeaseInput,
  LeaseRecord,
  LeaseState,
  LockHandle,
  LockInfo,
  NetworkFilter,
  NetworkInput,
  NetworkRecord,
  NodeFilter,
  NodeInput,
  NodeRecord,
  PortFilter,
  PortInput,
  PortRecord,
  ServiceResourceChange,
  ServiceResourceRecord,
  SubnetFilter,
  SubnetInput,
  SubnetRecord,
  VlanPoolFilter,
  VlanPoolInput,
  VlanPoolRecord,
  VlanRange,
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

function toNetwork(r: Row): NetworkRecord {
  return compact({
    id: r.id as string,
    name: r.name as string,
    owner: r.owner as string,
    fabric: r.fabric as string,
    pool: opt<string>(r.pool),
    vlan: Number(r.vlan),
    createdAt: r.created_at as string,
    updatedAt: r.updated_at as string,
    version: Number(r.version),
  });
}

function toSubnet(r: Row): SubnetRecord {
  return compact({
    id: r.id as string,
    networkId: r.network_id as string,
    cidr: r.cidr as string,
    ipVersion: Number(r.ip_version) as 4 | 6,
    gateway: opt<string>(r.gateway),
    allocationPools: (JSON.parse(r.allocation_pools as string) as SubnetRecord["allocationPools"]).map((x) => ({ start: x.start, end: x.end })),
    createdAt: r.created_at as string,
    updatedAt: r.updated_at as string,
    version: Number(r.version),
  });
}

function toAddress(r: Row): AddressRecord {
  const address = r.address as string;
  return {
    subnetId: r.subnet_id as string,
    address,
    ipVersion: address.includes(":") ? 6 : 4,
    owner: r.owner as string,
    static: Number(r.static) === 1,
    createdAt: r.created_at as string,
  };
}

function toPort(r: Row): PortRecord {
  return compact({
    id: r.id as string,
    nodeId: r.node_id as string,
    mac: r.mac as string,
    switchId: r.switch_id as string,
    switchPort: r.switch_port as string,
    physicalNetwork: opt<string>(r.physical_network),
    createdAt: r.created_at as string,
    updatedAt: r.updated_at as string,
    version: Number(r.version),
  });
}

/** An attachment with its port's and network's columns (see ATTACHMENTS). */
function toAttachment(r: Row): AttachmentRecord {
  return {
    id: r.id as string,
    portId: r.port_id as string,
    networkId: r.network_id as string,
    mode: r.mode as AttachmentRecord["mode"],
    native: Number(r.native) === 1,
    nodeId: r.node_id as string,
    mac: r.mac as string,
    switchId: r.switch_id as string,
    switchPort: r.switch_port as string,
    fabric: r.fabric as string,
    vlan: Number(r.vlan),
    owner: r.owner as string,
    createdAt: r.created_at as string,
  };
}

const ATTACHMENTS = `SELECT a.id, a.port_id, a.network_id, a.mode, a.native, a.created_at,
    p.node_id, p.mac, p.switch_id, p.switch_port, n.fabric, n.vlan, n.owner
  FROM attachments a JOIN ports p ON p.id = a.port_id JOIN networks n ON n.id = a.network_id`;

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
    if (f.after !== undefined) (where.push("(name > ? OR (name = ? AND id > ?))"), params.push(f.after.name, f.after.name, f.after.id));
    const sql = `SELECT * FROM nodes${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY name, id${f.limit !== undefined ? ` LIMIT ${f.limit}` : ""}`;
    return this.read("listing nodes", () => this.all(sql, ...params).map(toNode));
  }

  async removeNode(id: string, options: WriteOptions = {}): Promise<boolean> {
    requireId("id", id);
    const expected = optionalVersion("expectedVersion", options.expectedVersion);
    return this.write("removing a node", () => {
      const cur = this.nodeRow(id);
      if (!cur) return false;
      if (expected !== undefined && cur.version !== expected) throw versionConflict(`node ${JSON.stringify(id)}`, expected, cur.version);
      if (cur.allocationId !== undefined) throw nodeClaimed(id, cur.allocationId);
      const attached = this.attachmentRows({ nodeId: id });
      if (attached.length) throw nodePortsAttached(id, attached);
      this.run("DELETE FROM nodes WHERE id = ?", id); // its ports go with it (ON DELETE CASCADE)
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
    const lease = requireLockRequest(nodeId, holder, operation, leaseSeconds);
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
    return lockHandle(
      nodeId,
      holder,
      operation,
      lease,
      row.expires_at as string,
      (l) =>
        this.write("renewing a node lock", () => {
          const now = Date.now();
          const next = new Date(now + l * 1000).toISOString();
          const changed = this.run(
            "UPDATE node_locks SET expires_at = ? WHERE node_id = ? AND token = ? AND expires_at > ?",
            next, nodeId, token, new Date(now).toISOString(),
          );
          if (changed !== 1) {
            const cur = this.get("SELECT * FROM node_locks WHERE node_id = ?", nodeId);
            throw lostLock(nodeId, operation, cur && (cur as unknown as LockRow), token, new Date(now).toISOString());
          }
          return next;
        }),
      async () => {
        await this.write("releasing a node lock", () => this.run("DELETE FROM node_locks WHERE node_id = ? AND token = ?", nodeId, token));
      },
    );
  }

  async getLock(nodeId: string): Promise<LockInfo | undefined> {
    requireId("nodeId", nodeId);
    return this.read("reading a node lock", () => {
      const r = this.get("SELECT * FROM node_locks WHERE node_id = ?", nodeId);
      return r ? toLock(r, nowIso()) : undefined;
    });
  }

  // ---- VLAN pools -------------------------------------------------------------------------

  /** The fabric's VLANs in use, to the networks that have them. */
  private fabricVlans(fabric: string): Map<number, string> {
    return new Map(this.all("SELECT id, vlan FROM networks WHERE fabric = ?", fabric).map((r) => [Number(r.vlan), r.id as string]));
  }

  private toPool(r: Row): VlanPoolRecord {
    return vlanPoolRecord(
      {
        name: r.name as string,
        fabric: r.fabric as string,
        ranges: JSON.parse(r.ranges as string) as VlanRange[],
        createdAt: r.created_at as string,
        updatedAt: r.updated_at as string,
        version: Number(r.version),
      },
      this.fabricVlans(r.fabric as string).keys(),
    );
  }

  private poolRow(name: string): VlanPoolRecord | undefined {
    const r = this.get("SELECT * FROM vlan_pools WHERE name = ?", name);
    return r ? this.toPool(r) : undefined;
  }

  private poolMembers(name: string): PoolMember[] {
    return this.all("SELECT id, fabric, vlan FROM networks WHERE pool = ?", name).map((r) => ({
      id: r.id as string,
      fabric: r.fabric as string,
      vlan: Number(r.vlan),
    }));
  }

  async defineVlanPool(pool: VlanPoolInput): Promise<VlanPoolRecord> {
    const v = normaliseVlanPool(pool);
    return this.write("defining a VLAN pool", () => {
      const cur = this.poolRow(v.name);
      const now = nowIso();
      if (!cur) {
        this.run(
          "INSERT INTO vlan_pools (name, fabric, ranges, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, 1)",
          v.name, v.fabric, rangesJson(v.ranges), now, now,
        );
        return this.poolRow(v.name)!;
      }
      if (cur.fabric === v.fabric && rangesJson(cur.ranges) === rangesJson(v.ranges)) return cur;
      const refused = poolChangeConflict(cur, v, this.poolMembers(v.name));
      if (refused) throw refused;
      this.run(
        "UPDATE vlan_pools SET fabric = ?, ranges = ?, updated_at = ?, version = version + 1 WHERE name = ?",
        v.fabric, rangesJson(v.ranges), now, v.name,
      );
      return this.poolRow(v.name)!;
    });
  }

  async getVlanPool(name: string): Promise<VlanPoolRecord | undefined> {
    requireText("name", name);
    return this.read("reading a VLAN pool", () => this.poolRow(name));
  }

  async listVlanPools(filter: VlanPoolFilter = {}): Promise<VlanPoolRecord[]> {
    const fabric = optionalText("fabric", filter?.fabric);
    return this.read("listing VLAN pools", () =>
      this.all(`SELECT * FROM vlan_pools${fabric !== undefined ? " WHERE fabric = ?" : ""} ORDER BY name`, ...(fabric !== undefined ? [fabric] : [])).map((r) =>
        this.toPool(r),
      ),
    );
  }

  async removeVlanPool(name: string): Promise<boolean> {
    requireText("name", name);
    return this.write("removing a VLAN pool", () => {
      if (!this.get("SELECT name FROM vlan_pools WHERE name = ?", name)) return false;
      const members = this.poolMembers(name);
      if (members.length) throw poolInUse(name, members);
      this.run("DELETE FROM vlan_pools WHERE name = ?", name);
      return true;
    });
  }

  // ---- networks ---------------------------------------------------------------------------

  private networkRow(id: string): NetworkRecord | undefined {
    const r = this.get("SELECT * FROM networks WHERE id = ?", id);
    return r ? toNetwork(r) : undefined;
  }

  async createNetwork(network: NetworkInput): Promise<NetworkRecord> {
    const v = normaliseNetwork(network);
    return this.write("creating a network", () => {
      // The write lock is held: nobody can take a VLAN between this read and the insert below.
      const cur = this.networkRow(v.id);
      if (cur) return existingNetwork(cur, v);
      const named = v.pool !== undefined ? this.poolRow(v.pool) : undefined;
      const fabricPools =
        v.pool === undefined && v.vlan === undefined
          ? this.all("SELECT * FROM vlan_pools WHERE fabric = ? ORDER BY name", v.fabric).map((r) => this.toPool(r))
          : [];
      const pool = resolvePool(v, named, fabricPools);
      const vlan = chooseVlan(v, pool, this.fabricVlans(v.fabric));
      const now = nowIso();
      this.run(
        `INSERT INTO networks (id, name, owner, fabric, pool, vlan, created_at, updated_at, version)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)`,
        v.id, v.name, v.owner, v.fabric, p(pool?.name), vlan, now, now,
      );
      return this.networkRow(v.id)!;
    });
  }

  async getNetwork(id: string): Promise<NetworkRecord | undefined> {
    requireId("id", id);
    return this.read("reading a network", () => this.networkRow(id));
  }

  async listNetworks(filter: NetworkFilter = {}): Promise<NetworkRecord[]> {
    const where: string[] = [];
    const params: SQLInputValue[] = [];
    const owner = optionalText("owner", filter?.owner);
    const fabric = optionalText("fabric", filter?.fabric);
    if (owner !== undefined) (where.push("owner = ?"), params.push(owner));
    if (fabric !== undefined) (where.push("fabric = ?"), params.push(fabric));
    const sql = `SELECT * FROM networks${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY name, id`;
    return this.read("listing networks", () => this.all(sql, ...params).map(toNetwork));
  }

  async deleteNetwork(id: string): Promise<boolean> {
    requireId("id", id);
    return this.write("deleting a network", () => {
      if (!this.networkRow(id)) return false;
      const attachments = this.all("SELECT id, port_id FROM attachments WHERE network_id = ? ORDER BY id", id).map((r) => ({
        id: r.id as string,
        portId: r.port_id as string,
      }));
      const addresses = sortAddresses(
        this.all("SELECT a.* FROM ip_addresses a JOIN subnets s ON s.id = a.subnet_id WHERE s.network_id = ?", id).map(toAddress),
      );
      if (attachments.length || addresses.length) throw networkInUse(id, attachments, addresses);
      this.run("DELETE FROM subnets WHERE network_id = ?", id);
      this.run("DELETE FROM networks WHERE id = ?", id);
      return true;
    });
  }

  // ---- subnets and addresses --------------------------------------------------------------

  private subnetRow(id: string): SubnetRecord | undefined {
    const r = this.get("SELECT * FROM subnets WHERE id = ?", id);
    return r ? toSubnet(r) : undefined;
  }

  async addSubnet(subnet: SubnetInput): Promise<SubnetRecord> {
    const v = normaliseSubnet(subnet);
    const c = subnetColumns(v);
    return this.write("adding a subnet", () => {
      const cur = this.subnetRow(v.id);
      if (cur) return existingSubnet(cur, v);
      if (!this.networkRow(v.networkId)) throw notFound("network", v.networkId, "networkId");
      checkSubnetOverlap(v, this.all("SELECT * FROM subnets WHERE network_id = ?", v.networkId).map(toSubnet));
      const now = nowIso();
      this.run(
        `INSERT INTO subnets (id, network_id, cidr, ip_version, gateway, allocation_pools, created_at, updated_at, version)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)`,
        v.id, v.networkId, c.cidr, c.ipVersion, p(c.gateway), JSON.stringify(c.allocationPools), now, now,
      );
      return this.subnetRow(v.id)!;
    });
  }

  async getSubnet(id: string): Promise<SubnetRecord | undefined> {
    requireId("id", id);
    return this.read("reading a subnet", () => this.subnetRow(id));
  }

  async listSubnets(filter: SubnetFilter = {}): Promise<SubnetRecord[]> {
    const networkId = optionalText("networkId", filter?.networkId, 1024);
    return this.read("listing subnets", () =>
      this.all(`SELECT * FROM subnets${networkId !== undefined ? " WHERE network_id = ?" : ""} ORDER BY id`, ...(networkId !== undefined ? [networkId] : [])).map(toSubnet),
    );
  }

  async removeSubnet(id: string): Promise<boolean> {
    requireId("id", id);
    return this.write("removing a subnet", () => {
      if (!this.subnetRow(id)) return false;
      const addresses = sortAddresses(this.all("SELECT * FROM ip_addresses WHERE subnet_id = ?", id).map(toAddress));
      if (addresses.length) throw subnetInUse(id, addresses);
      this.run("DELETE FROM subnets WHERE id = ?", id);
      return true;
    });
  }

  async allocateAddress(request: AddressRequest): Promise<AddressRecord> {
    const v = normaliseAddressRequest(request);
    return this.write("allocating an address", () => {
      const subnet = this.subnetRow(v.subnetId);
      if (!subnet) throw notFound("subnet", v.subnetId, "subnetId");
      const held = this.get("SELECT * FROM ip_addresses WHERE subnet_id = ? AND owner = ?", v.subnetId, v.owner);
      if (held) return existingAddress(toAddress(held), v);
      // The write lock is held: nobody can take an address between this read and the insert.
      const taken = new Map(this.all("SELECT address, owner FROM ip_addresses WHERE subnet_id = ?", v.subnetId).map((r) => [r.address as string, r.owner as string]));
      const address = chooseAddress(subnet, v, taken);
      return toAddress(
        this.get(
          "INSERT INTO ip_addresses (subnet_id, address, owner, static, created_at) VALUES (?, ?, ?, ?, ?) RETURNING *",
          v.subnetId, address, v.owner, p(v.address !== undefined), nowIso(),
        )!,
      );
    });
  }

  async releaseAddress(subnetId: string, owner: string): Promise<boolean> {
    requireId("subnetId", subnetId);
    requireId("owner", owner);
    return this.write("releasing an address", () => this.run("DELETE FROM ip_addresses WHERE subnet_id = ? AND owner = ?", subnetId, owner) === 1);
  }

  async listAddresses(subnetId: string): Promise<AddressRecord[]> {
    requireId("subnetId", subnetId);
    return this.read("listing addresses", () => sortAddresses(this.all("SELECT * FROM ip_addresses WHERE subnet_id = ?", subnetId).map(toAddress)));
  }

  // ---- ports and attachments --------------------------------------------------------------

  private portRow(id: string): PortRecord | undefined {
    const r = this.get("SELECT * FROM ports WHERE id = ?", id);
    return r ? toPort(r) : undefined;
  }

  private attachmentRows(f: AttachmentFilter & { id?: string }): AttachmentRecord[] {
    const where: string[] = [];
    const params: SQLInputValue[] = [];
    if (f.id !== undefined) (where.push("a.id = ?"), params.push(f.id));
    if (f.networkId !== undefined) (where.push("a.network_id = ?"), params.push(f.networkId));
    if (f.portId !== undefined) (where.push("a.port_id = ?"), params.push(f.portId));
    if (f.nodeId !== undefined) (where.push("p.node_id = ?"), params.push(f.nodeId));
    return this.all(`${ATTACHMENTS}${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY a.id`, ...params).map(toAttachment);
  }

  async upsertPort(port: PortInput): Promise<PortRecord> {
    const v = normalisePort(port);
    return this.write("recording a port", () => {
      if (!this.get("SELECT id FROM nodes WHERE id = ?", v.nodeId)) throw notFound("node", v.nodeId, "nodeId");
      const cur = this.portRow(v.id);
      if (cur && samePort(cur, v)) return cur;
      const other = this.get(
        "SELECT * FROM ports WHERE id <> ? AND ((switch_id = ? AND switch_port = ?) OR mac = ?) ORDER BY mac = ?, id LIMIT 1",
        v.id, v.switchId, v.switchPort, v.mac, v.mac,
      );
      if (other) throw portTaken(v, toPort(other));
      const now = nowIso();
      if (!cur) {
        this.run(
          `INSERT INTO ports (id, node_id, mac, switch_id, switch_port, physical_network, created_at, updated_at, version)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)`,
          v.id, v.nodeId, v.mac, v.switchId, v.switchPort, p(v.physicalNetwork), now, now,
        );
        return this.portRow(v.id)!;
      }
      const refused = portChangeConflict(cur, v, this.attachmentRows({ portId: v.id }));
      if (refused) throw refused;
      this.run(
        `UPDATE ports SET node_id = ?, mac = ?, switch_id = ?, switch_port = ?, physical_network = ?, updated_at = ?, version = version + 1
         WHERE id = ?`,
        v.nodeId, v.mac, v.switchId, v.switchPort, p(v.physicalNetwork), now, v.id,
      );
      return this.portRow(v.id)!;
    });
  }

  async getPort(id: string): Promise<PortRecord | undefined> {
    requireId("id", id);
    return this.read("reading a port", () => this.portRow(id));
  }

  async listPorts(filter: PortFilter = {}): Promise<PortRecord[]> {
    const nodeId = optionalText("nodeId", filter?.nodeId, 1024);
    return this.read("listing ports", () =>
      this.all(`SELECT * FROM ports${nodeId !== undefined ? " WHERE node_id = ?" : ""} ORDER BY id`, ...(nodeId !== undefined ? [nodeId] : [])).map(toPort),
    );
  }

  async removePort(id: string): Promise<boolean> {
    requireId("id", id);
    return this.write("removing a port", () => {
      if (!this.portRow(id)) return false;
      const attached = this.attachmentRows({ portId: id });
      if (attached.length) throw portAttached(id, attached);
      this.run("DELETE FROM ports WHERE id = ?", id);
      return true;
    });
  }

  async attach(attachment: AttachmentInput): Promise<AttachmentRecord> {
    const v = normaliseAttachment(attachment);
    return this.write("attaching a port", () => {
      const [cur] = this.attachmentRows({ id: v.id });
      if (cur) return existingAttachment(cur, v);
      const port = this.portRow(v.portId);
      if (!port) throw notFound("port", v.portId, "portId");
      const network = this.networkRow(v.networkId);
      if (!network) throw notFound("network", v.networkId, "networkId");
      checkAttach(v, port, network, this.attachmentRows({ portId: v.portId }));
      this.run(
        "INSERT INTO attachments (id, port_id, network_id, mode, native, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        v.id, v.portId, v.networkId, v.mode, p(v.native), nowIso(),
      );
      return this.attachmentRows({ id: v.id })[0];
    });
  }

  async detach(id: string): Promise<boolean> {
    requireId("id", id);
    return this.write("detaching a port", () => this.run("DELETE FROM attachments WHERE id = ?", id) === 1);
  }

  async getAttachment(id: string): Promise<AttachmentRecord | undefined> {
    requireId("id", id);
    return this.read("reading an attachment", () => this.attachmentRows({ id })[0]);
  }

  async listAttachments(filter: AttachmentFilter = {}): Promise<AttachmentRecord[]> {
    const f = normaliseAttachmentFilter(filter);
    return this.read("listing attachments", () => this.attachmentRows(f));
  }

  // ---- the service's tokens and audit log (issue 8) ----------------------------------------------

  async insertToken(t: ApiTokenRecord): Promise<void> {
    requireId("id", t.id);
    await this.write("storing an API token", () => {
      if (this.get("SELECT id FROM api_tokens WHERE id = ?", t.id)) throw new BaremetalError("conflict", `API token ${t.id} exists`);
      this.run(
        "INSERT INTO api_tokens (id, name, project_id, roles, created_at, expires_at, revoked_at, secret_hash, rate_per_minute) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        t.id, t.name, t.projectId ?? null, JSON.stringify(t.roles), t.createdAt, t.expiresAt ?? null, t.revokedAt ?? null, t.secretHash, t.ratePerMinute,
      );
    });
  }

  async getToken(id: string): Promise<ApiTokenRecord | undefined> {
    const r = await this.read("reading an API token", () => this.get("SELECT * FROM api_tokens WHERE id = ?", id));
    return r ? tokenFromRow(r, String) : undefined;
  }

  async revokeToken(id: string, at: string): Promise<boolean> {
    return this.write("revoking an API token", () => {
      if (!this.get("SELECT id FROM api_tokens WHERE id = ?", id)) return false;
      this.run("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", at, id);
      return true;
    });
  }

  async listTokens(projectId?: string): Promise<ApiTokenRecord[]> {
    const rows = await this.read("listing API tokens", () =>
      projectId === undefined ? this.all("SELECT * FROM api_tokens ORDER BY created_at, id") : this.all("SELECT * FROM api_tokens WHERE project_id = ? ORDER BY created_at, id", projectId),
    );
    return rows.map((r) => tokenFromRow(r, String));
  }

  async appendAudit(e: AuditInput): Promise<AuditRecord> {
    return this.write("appending to the audit log", () => {
      const r = this.stmt(
        "INSERT INTO audit_log (at, request_id, token_id, project_id, operation, target, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      ).run(e.at, e.requestId, e.tokenId ?? null, e.projectId ?? null, e.operation, e.target ?? null, e.outcome, e.detail ?? null);
      return { ...e, seq: Number(r.lastInsertRowid) };
    });
  }

  async listAudit(filter: { projectId?: string; afterSeq?: number; limit?: number } = {}): Promise<AuditRecord[]> {
    const after = filter.afterSeq ?? 0;
    const limit = filter.limit ?? 100;
    const rows = await this.read("reading the audit log", () =>
      filter.projectId === undefined
        ? this.all("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", after, limit)
        : this.all("SELECT * FROM audit_log WHERE project_id = ? AND seq > ? ORDER BY seq LIMIT ?", filter.projectId, after, limit),
    );
    return rows.map((r) => auditFromRow(r, String));
  }

  // ---- objects the service manages for tenants (broker mode, issue 8) ----------------------------

  async insertServiceResource(r: ServiceResourceRecord): Promise<void> {
    const v = normaliseServiceResource(r);
    await this.write("storing a service object", () => {
      // DO NOTHING covers every unique constraint and index (and only those: CHECKs still fail).
      const stored = this.run(
        `INSERT INTO service_resources (uuid, type, project_id, name, resource_id, inputs, state, etag, idempotency_key, partial, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
        v.uuid, v.type, p(v.projectId), p(v.name), v.resourceId, canonicalJson(v.inputs), canonicalJson(v.state), v.etag,
        p(v.idempotencyKey), p(v.partial), v.createdAt, v.updatedAt,
      );
      if (stored === 0) {
        const clashes = this.all(
          `SELECT * FROM service_resources WHERE uuid = ? OR (type = ? AND resource_id = ?)
             OR (type = ? AND name = ? AND coalesce(project_id, '') = ?) OR idempotency_key = ? ORDER BY uuid`,
          v.uuid, v.type, v.resourceId, v.type, p(v.name), v.projectId ?? "", p(v.idempotencyKey),
        );
        throw serviceResourceExists(v, clashes.map((row) => serviceResourceFromRow(row, String)));
      }
    });
  }

  async getServiceResource(uuid: string): Promise<ServiceResourceRecord | undefined> {
    requireId("uuid", uuid);
    const r = await this.read("reading a service object", () => this.get("SELECT * FROM service_resources WHERE uuid = ?", uuid));
    return r ? serviceResourceFromRow(r, String) : undefined;
  }

  async findServiceResource(
    type: string,
    by: { resourceId?: string; name?: string; projectId?: string; idempotencyKey?: string },
  ): Promise<ServiceResourceRecord | undefined> {
    requireText("type", type);
    const s = normaliseServiceSelector(by);
    const r = await this.read("finding a service object", () =>
      s.by === "resourceId"
        ? this.get("SELECT * FROM service_resources WHERE type = ? AND resource_id = ?", type, s.value)
        : s.by === "name"
          ? this.get("SELECT * FROM service_resources WHERE coalesce(project_id, '') = ? AND type = ? AND name = ?", s.projectId ?? "", type, s.value)
          : this.get("SELECT * FROM service_resources WHERE idempotency_key = ? AND type = ?", s.value, type),
    );
    return r ? serviceResourceFromRow(r, String) : undefined;
  }

  async updateServiceResource(uuid: string, change: ServiceResourceChange, expectedEtag?: string): Promise<ServiceResourceRecord> {
    requireId("uuid", uuid);
    const c = normaliseServiceChange(change);
    const expected = expectedEtag === undefined ? undefined : requireText("expectedEtag", expectedEtag);
    return this.write("updating a service object", () => {
      // One statement: the etag is compared by the UPDATE itself.
      const set = "UPDATE service_resources SET resource_id = coalesce(?, resource_id), inputs = ?, state = ?, etag = ?, partial = ?, updated_at = ? WHERE uuid = ?";
      const values = [c.resourceId ?? null, canonicalJson(c.inputs), canonicalJson(c.state), c.etag, p(c.partial), c.updatedAt, uuid];
      const row =
        expected === undefined
          ? this.get(`${set} RETURNING *`, ...values)
          : this.get(`${set} AND etag = ? RETURNING *`, ...values, expected);
      if (row) return serviceResourceFromRow(row, String);
      const cur = this.get("SELECT etag FROM service_resources WHERE uuid = ?", uuid);
      if (!cur) throw serviceResourceNotFound(uuid);
      throw etagConflict(uuid, expected!, String(cur.etag));
    });
  }

  async deleteServiceResource(uuid: string, expectedEtag?: string): Promise<boolean> {
    requireId("uuid", uuid);
    const expected = expectedEtag === undefined ? undefined : requireText("expectedEtag", expectedEtag);
    return this.write("deleting a service object", () => {
      const deleted =
        expected === undefined
          ? this.run("DELETE FROM service_resources WHERE uuid = ?", uuid)
          : this.run("DELETE FROM service_resources WHERE uuid = ? AND etag = ?", uuid, expected);
      if (deleted === 1) return true;
      const cur = expected === undefined ? undefined : this.get("SELECT etag FROM service_resources WHERE uuid = ?", uuid);
      if (cur) throw etagConflict(uuid, expected!, String(cur.etag));
      return false;
    });
  }

  async listServiceResources(filter?: { type?: string; projectId?: string | null; afterUuid?: string; limit?: number }): Promise<ServiceResourceRecord[]> {
    const f = normaliseServiceListFilter(filter);
    const where: string[] = [];
    const params: SQLInputValue[] = [];
    if (f.type !== undefined) (where.push("type = ?"), params.push(f.type));
    if (f.projectId === null) where.push("project_id IS NULL");
    else if (f.projectId !== undefined) (where.push("project_id = ?"), params.push(f.projectId));
    if (f.afterUuid !== undefined) (where.push("uuid > ?"), params.push(f.afterUuid));
    const rows = await this.read("listing service objects", () =>
      this.all(`SELECT * FROM service_resources${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY uuid LIMIT ?`, ...params, f.limit),
    );
    return rows.map((r) => serviceResourceFromRow(r, String));
  }

  // ---- leases of nodes (issue 8) ----------------------------------------------------------------
  //
  // Times are stored as ISO 8601 UTC text with milliseconds (normalised on the way in), so text
  // order is time order. The overlap check and the insert run in one write transaction, which
  // holds the database's single write lock: two inserts for the same node never both pass.

  async insertLease(lease: LeaseInput): Promise<LeaseRecord> {
    const v = normaliseLease(lease);
    return this.write("storing a lease", () => {
      if (!this.nodeRow(v.nodeId)) throw new BaremetalError("not-found", `node ${v.nodeId} is not enrolled`, { property: "nodeId" });
      if (this.get("SELECT id FROM leases WHERE id = ?", v.id)) throw leaseExists(v.id);
      const other = this.get(
        "SELECT * FROM leases WHERE node_id = ? AND state <> 'ended' AND start_time < ? AND ? < end_time ORDER BY start_time, id LIMIT 1",
        v.nodeId, v.endTime, v.startTime,
      );
      if (other) throw leaseOverlap(v, leaseFromRow(other, String));
      this.run(
        "INSERT INTO leases (id, node_id, owner, lessee, start_time, end_time, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        v.id, v.nodeId, p(v.owner), v.lessee, v.startTime, v.endTime, v.state, v.createdAt,
      );
      return leaseFromRow(this.get("SELECT * FROM leases WHERE id = ?", v.id)!, String);
    });
  }

  async getLease(id: string): Promise<LeaseRecord | undefined> {
    requireId("id", id);
    const r = await this.read("reading a lease", () => this.get("SELECT * FROM leases WHERE id = ?", id));
    return r ? leaseFromRow(r, String) : undefined;
  }

  async listLeases(filter?: LeaseFilter): Promise<LeaseRecord[]> {
    const f = normaliseLeaseFilter(filter);
    const where: string[] = [];
    const params: SQLInputValue[] = [];
    if (f.nodeId !== undefined) (where.push("node_id = ?"), params.push(f.nodeId));
    if (f.states) (where.push(`state IN (${f.states.map(() => "?").join(", ")})`), params.push(...f.states));
    if (f.lessee !== undefined) (where.push("lessee = ?"), params.push(f.lessee));
    if (f.owner !== undefined) (where.push("owner = ?"), params.push(f.owner));
    if (f.dueAt !== undefined) {
      where.push("((state = 'pending' AND start_time <= ?) OR (state = 'active' AND end_time <= ?) OR state = 'ending')");
      params.push(f.dueAt, f.dueAt);
    }
    const rows = await this.read("listing leases", () =>
      this.all(`SELECT * FROM leases${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY start_time, id`, ...params),
    );
    return rows.map((r) => leaseFromRow(r, String));
  }

  async changeLeaseState(id: string, from: readonly LeaseState[], to: LeaseState, detail?: { endedAt?: string; endReason?: string }): Promise<LeaseRecord | undefined> {
    requireId("id", id);
    const c = normaliseLeaseChange(from, to, detail);
    return this.write("changing a lease's state", () => {
      const row = this.get(
        `UPDATE leases SET state = ?, ended_at = coalesce(?, ended_at), end_reason = coalesce(?, end_reason)
         WHERE id = ? AND state IN (${c.from.map(() => "?").join(", ")}) RETURNING *`,
        c.to, p(c.endedAt), p(c.endReason), id, ...c.from,
      );
      if (row) return leaseFromRow(row, String);
      if (!this.get("SELECT id FROM leases WHERE id = ?", id)) throw leaseNotFound(id);
      return undefined;
    });
  }

  async close(): Promise<void> {
    const db = this.db;
    this.db = undefined;
    this.statements.clear();
    if (db?.isOpen) db.close();
  }
}
