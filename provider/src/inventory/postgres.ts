/**
 * The team inventory: a PostgreSQL database shared by every provider process of every operator
 * and tenant (node-postgres, a small pool per process).
 *
 * ## Atomicity of a claim
 *
 * The claim itself is ONE statement: pick the best matching free node with
 * `SELECT ... ORDER BY <rendezvous hash> LIMIT 1 FOR UPDATE SKIP LOCKED` and set its
 * `allocation_id` in the same statement. Why this is race-free under READ COMMITTED:
 *
 * - a node row that another transaction has locked (it is claiming it right now) is skipped, not
 *   waited for, so concurrent claims spread over different rows instead of queueing;
 * - a row that another transaction claimed and committed after this statement's snapshot is
 *   locked on its newest version and the WHERE clause is evaluated again on it (PostgreSQL's
 *   EvalPlanQual re-check): `allocation_id IS NULL` is now false, so the row is dropped and the
 *   next one in order is tried. This is why the claim lives on the node row (`nodes.allocation_id`)
 *   rather than only in the allocations table: the re-check only sees changes of the locked row.
 * - the partial unique index `allocations_one_active_per_node` and the UNIQUE `nodes.allocation_id`
 *   make a double allocation impossible even if the code were wrong.
 *
 * The allocation row is written in the same transaction. A transaction-scoped advisory lock on the
 * allocation id serialises a claim with a retry of itself and with its release (two processes
 * claiming with the same allocation id get the same node, not two).
 *
 * SKIP LOCKED has one false negative: when every matching free row is locked by transactions that
 * will NOT take it after all (an `upsertNode` of that node, a claim that rolls back), the statement
 * finds nothing. So when it finds nothing, a plain count of the matching free rows (no locks) tells
 * "pool exhausted" from "contended", and a contended claim is retried for a few seconds before it
 * gives up.
 *
 * ## Other writes
 *
 * Node writes lock the row (`SELECT ... FOR UPDATE`) and apply the same rules as the SQLite
 * backend (`nodeColumns` in common.ts); a concurrent first insert of the same node surfaces as a
 * unique violation and the transaction is retried, then it updates. Lock acquisition is one
 * `INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= clock_timestamp()` statement; leases
 * use the database server's clock, so provider machines with skewed clocks still agree.
 *
 * The tables live in the connection's `search_path` (default `public`); a shared database can
 * keep them in their own schema with `?options=-c%20search_path%3Dbaremetal` in the URL.
 */
import { randomUUID } from "crypto";
import { Pool, PoolClient, QueryResultRow } from "pg";
import { BaremetalError, isBaremetalError } from "../core/errors";
import {
  ClaimValues,
  closedError,
  compact,
  currentColumns,
  delay,
  lockHeld,
  lostLock,
  noMatchError,
  NODE_COLUMNS,
  nodeColumns,
  nodeNotFound,
  normaliseClaim,
  normaliseFilter,
  normaliseNode,
  optionalText,
  optionalVersion,
  redactUrl,
  requireId,
  requireLease,
  requireState,
  requireText,
  sameColumns,
  sortKeys,
  versionConflict,
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

export interface PostgresOptions {
  /** Connections per provider process (default 4). */
  maxConnections?: number;
  /** Time to get a connection (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Longest statement (default 30000 ms); longer ones fail with `timeout`. */
  statementTimeoutMs?: number;
  /** How long a contended claim keeps retrying before it reports no match (default 5000 ms). */
  claimRetryMs?: number;
  /** The migrations to apply (tests only; default: all of this release). */
  migrations?: readonly Migration[];
}

type Row = QueryResultRow;
type Query = (sql: string, params?: unknown[]) => Promise<Row[]>;

/** SQLSTATEs worth replaying the whole transaction for. */
const SERIALIZATION_FAILURE = "40001";
const DEADLOCK = "40P01";
const UNIQUE_VIOLATION = "23505";

function pgCode(err: unknown): string | undefined {
  const c = (err as { code?: unknown } | null)?.code;
  return typeof c === "string" ? c : undefined;
}

function failure(err: unknown, what: string, where: string): BaremetalError {
  if (isBaremetalError(err)) return err;
  const message = err instanceof Error ? err.message : String(err);
  const code = pgCode(err) ?? "";
  const say = (m: string) => `${what}: PostgreSQL inventory ${where}: ${m}`;
  if (["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"].includes(code)) {
    return new BaremetalError("transient", say(`cannot connect (${code}); is the database running?`), { cause: err });
  }
  if (["ECONNRESET", "ETIMEDOUT", "EPIPE"].includes(code) || /Connection terminated|timeout exceeded when trying to connect/i.test(message)) {
    return new BaremetalError("transient", say(message), { cause: err });
  }
  if (code === "28P01" || code === "28000") return new BaremetalError("auth", say(`credentials refused: ${message}`), { cause: err, messageId: code });
  if (code === "57014") return new BaremetalError("timeout", say(`statement timed out: ${message}`), { cause: err, messageId: code });
  if (code.startsWith("08") || ["40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03"].includes(code)) {
    return new BaremetalError("transient", say(message), { cause: err, messageId: code });
  }
  if (code.startsWith("23")) return new BaremetalError("conflict", say(`refused: ${message}`), { cause: err, messageId: code });
  return new BaremetalError("backend", say(message), { cause: err, messageId: code || undefined });
}

function iso(v: unknown): string {
  return v instanceof Date ? v.toISOString() : new Date(v as string).toISOString();
}

function opt<T>(v: unknown): T | undefined {
  return v === null || v === undefined ? undefined : (v as T);
}

function toNode(r: Row): NodeRecord {
  return compact({
    id: r.id,
    name: r.name,
    owner: opt(r.owner),
    lessee: opt(r.lessee),
    resourceClass: opt(r.resource_class),
    traits: r.traits as string[],
    properties: sortKeys(r.properties) as Record<string, unknown>,
    provisionState: r.provision_state,
    maintenance: r.maintenance === true,
    maintenanceReason: opt(r.maintenance_reason),
    lastError: opt(r.last_error),
    allocationId: opt(r.allocation_id),
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at),
    version: Number(r.version),
  });
}

function toAllocation(r: Row): AllocationRecord {
  return compact({
    id: r.id,
    name: r.name,
    owner: opt(r.owner),
    project: opt(r.project),
    nodeId: r.node_id,
    resourceClass: opt(r.resource_class),
    traits: r.traits as string[],
    candidateNodes: opt(r.candidate_nodes),
    state: r.state,
    createdAt: iso(r.created_at),
    releasedAt: r.released_at == null ? undefined : iso(r.released_at),
  });
}

/**
 * The claim's condition over `nodes`, the same rule as `matchesClaim` in common.ts. Parameters
 * from $first: project, resource class, required traits (jsonb array), candidates (text[]).
 */
function claimable(first: number): string {
  const [project, rc, traits, candidates] = [0, 1, 2, 3].map((i) => `$${first + i}`);
  return `provision_state = '${AVAILABLE}' AND NOT maintenance AND allocation_id IS NULL
    AND (${project}::text IS NULL OR owner = ${project}::text OR lessee = ${project}::text)
    AND (${rc}::text IS NULL OR resource_class = ${rc}::text)
    AND traits @> ${traits}::jsonb
    AND (${candidates}::text[] IS NULL OR id = ANY (${candidates}::text[]))`;
}

/**
 * The claim: one statement (see the top of the file). $1 allocation id, $2..$5 the restrictions,
 * $6 the allocation name (the rendezvous hash is `rendezvousKey` of common.ts).
 */
const CLAIM = `WITH pick AS (
    SELECT id FROM nodes
    WHERE ${claimable(2)}
    ORDER BY md5($6::text || '/' || id) COLLATE "C", name COLLATE "C", id COLLATE "C"
    LIMIT 1
    FOR UPDATE SKIP LOCKED
  )
  UPDATE nodes n SET allocation_id = $1::text, updated_at = clock_timestamp(), version = n.version + 1
  FROM pick WHERE n.id = pick.id AND n.allocation_id IS NULL
  RETURNING n.*`;

/** Matching free nodes, without locking: tells an exhausted pool from a contended one. */
const COUNT_CLAIMABLE = `SELECT count(*)::integer AS n FROM nodes WHERE ${claimable(1)}`;

export class PostgresInventory implements Inventory {
  readonly kind = "postgres";
  private pool: Pool | undefined;

  private constructor(
    pool: Pool,
    /** For messages: the URL without its password. */
    readonly where: string,
    private readonly claimRetryMs: number,
  ) {
    this.pool = pool;
  }

  static async open(url: string, options: PostgresOptions = {}): Promise<PostgresInventory> {
    const pool = new Pool({
      connectionString: url,
      max: options.maxConnections ?? 4,
      connectionTimeoutMillis: options.connectTimeoutMs ?? 10000,
      idleTimeoutMillis: 10000,
      statement_timeout: options.statementTimeoutMs ?? 30000,
      // Row locks are held for milliseconds; a longer wait means something is stuck.
      lock_timeout: 10000,
      idle_in_transaction_session_timeout: 60000,
      application_name: "pulumi-resource-baremetal",
      // Idle connections must not keep a provider process (or a test) alive.
      allowExitOnIdle: true,
    });
    // An idle connection that breaks (server restart) is dropped by the pool; without a listener
    // the error would crash the process.
    pool.on("error", () => undefined);
    const inv = new PostgresInventory(pool, redactUrl(url), options.claimRetryMs ?? 5000);
    try {
      await inv.migrate(options.migrations ?? MIGRATIONS);
    } catch (err) {
      await pool.end().catch(() => undefined);
      throw err;
    }
    return inv;
  }

  // ---- plumbing ---------------------------------------------------------------------------

  private getPool(): Pool {
    if (!this.pool) throw closedError(this.kind);
    return this.pool;
  }

  /** One statement outside a transaction. */
  private async q(what: string, sql: string, params: unknown[] = []): Promise<Row[]> {
    try {
      return (await this.getPool().query(sql, params)).rows;
    } catch (err) {
      throw failure(err, what, this.where);
    }
  }

  /**
   * A transaction on one connection, replayed (up to 5 times) on serialization failures and
   * deadlocks, and on unique violations when `retryUnique` (a concurrent first insert).
   */
  private async tx<T>(what: string, body: (q: Query) => Promise<T>, retryUnique = false): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      let client: PoolClient;
      try {
        client = await this.getPool().connect();
      } catch (err) {
        throw failure(err, what, this.where);
      }
      let broken = false;
      try {
        await client.query("BEGIN");
        const result = await body(async (sql, params) => (await client.query(sql, params)).rows);
        await client.query("COMMIT");
        return result;
      } catch (err) {
        try {
          await client.query("ROLLBACK");
        } catch {
          broken = true; // the connection is gone: do not return it to the pool
        }
        const code = pgCode(err);
        const retry = code === SERIALIZATION_FAILURE || code === DEADLOCK || (retryUnique && code === UNIQUE_VIOLATION);
        if (!retry || attempt >= 5) throw failure(err, what, this.where);
      } finally {
        client.release(broken);
      }
      await delay(Math.random() * 20 * (attempt + 1));
    }
  }

  private async migrate(list: readonly Migration[]): Promise<void> {
    await this.tx("migrating the inventory schema", async (q) => {
      // One migrator at a time per database, across processes (released at commit).
      await q("SELECT pg_advisory_xact_lock(hashtext('pulumi-baremetal:inventory:migrate'))");
      await q(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
      )`);
      const applied = (await q("SELECT version FROM schema_migrations")).map((r) => Number(r.version));
      for (const m of pendingMigrations(applied, list, this.where)) {
        for (const sql of m.postgres) await q(sql);
        await q("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [m.version, m.name]);
      }
    });
  }

  // ---- nodes ------------------------------------------------------------------------------

  private async nodeRow(q: Query, id: string, forUpdate = false): Promise<NodeRecord | undefined> {
    const rows = await q(`SELECT * FROM nodes WHERE id = $1${forUpdate ? " FOR UPDATE" : ""}`, [id]);
    return rows.length ? toNode(rows[0]) : undefined;
  }

  async upsertNode(node: NodeInput, options: WriteOptions = {}): Promise<NodeRecord> {
    const v = normaliseNode(node);
    const expected = optionalVersion("expectedVersion", options.expectedVersion);
    return this.tx(
      "enrolling a node",
      async (q) => {
        const cur = await this.nodeRow(q, v.id, true);
        const next = nodeColumns(cur, v);
        const values = NODE_COLUMNS.map((k) => next[k]);
        if (!cur) {
          if (expected !== undefined && expected !== 0) throw nodeNotFound(v.id);
          const rows = await q(
            `INSERT INTO nodes (${NODE_COLUMNS.join(", ")}, id, created_at, updated_at, version)
             VALUES (${NODE_COLUMNS.map((_, i) => `$${i + 1}`).join(", ")}, $${NODE_COLUMNS.length + 1}, clock_timestamp(), clock_timestamp(), 1)
             RETURNING *`,
            [...values, v.id],
          );
          return toNode(rows[0]);
        }
        if (expected !== undefined && cur.version !== expected) throw versionConflict(`node ${JSON.stringify(v.id)}`, expected, cur.version);
        if (sameColumns(next, currentColumns(cur))) return cur;
        const rows = await q(
          `UPDATE nodes SET ${NODE_COLUMNS.map((k, i) => `${k} = $${i + 1}`).join(", ")},
             updated_at = clock_timestamp(), version = version + 1
           WHERE id = $${NODE_COLUMNS.length + 1} RETURNING *`,
          [...values, v.id],
        );
        return toNode(rows[0]);
      },
      true,
    );
  }

  async getNode(id: string): Promise<NodeRecord | undefined> {
    requireId("id", id);
    const rows = await this.q("reading a node", "SELECT * FROM nodes WHERE id = $1", [id]);
    return rows.length ? toNode(rows[0]) : undefined;
  }

  async listNodes(filter?: NodeFilter): Promise<NodeRecord[]> {
    const f = normaliseFilter(filter);
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (cond: (n: string) => string, value: string) => {
      params.push(value);
      where.push(cond(`$${params.length}`));
    };
    if (f.owner !== undefined) add((x) => `owner = ${x}`, f.owner);
    if (f.lessee !== undefined) add((x) => `lessee = ${x}`, f.lessee);
    if (f.visibleTo !== undefined) add((x) => `(owner = ${x} OR lessee = ${x})`, f.visibleTo);
    if (f.provisionState !== undefined) add((x) => `provision_state = ${x}`, f.provisionState);
    if (f.resourceClass !== undefined) add((x) => `resource_class = ${x}`, f.resourceClass);
    const rows = await this.q(
      "listing nodes",
      `SELECT * FROM nodes${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY name COLLATE "C", id COLLATE "C"`,
      params,
    );
    return rows.map(toNode);
  }

  async removeNode(id: string, options: WriteOptions = {}): Promise<boolean> {
    requireId("id", id);
    const expected = optionalVersion("expectedVersion", options.expectedVersion);
    return this.tx("removing a node", async (q) => {
      const cur = await this.nodeRow(q, id, true);
      if (!cur) return false;
      if (expected !== undefined && cur.version !== expected) throw versionConflict(`node ${JSON.stringify(id)}`, expected, cur.version);
      if (cur.allocationId !== undefined) {
        throw new BaremetalError(
          "conflict",
          `node ${JSON.stringify(id)} is claimed by allocation ${JSON.stringify(cur.allocationId)}; release that allocation before removing the node`,
          { messageId: "inventory.NodeClaimed" },
        );
      }
      await q("DELETE FROM nodes WHERE id = $1", [id]);
      return true;
    });
  }

  /** One UPDATE under the version check; on no row, tells not-found from a stale version. */
  private async updateNode(what: string, id: string, expected: number | undefined, changes: Record<string, unknown>): Promise<NodeRecord> {
    const cols = Object.keys(changes);
    const params = [...cols.map((c) => changes[c]), id, expected ?? null];
    const n = cols.length;
    const rows = await this.q(
      what,
      `UPDATE nodes SET ${cols.map((c, i) => `${c} = $${i + 1}`).join(", ")}, updated_at = clock_timestamp(), version = version + 1
       WHERE id = $${n + 1} AND ($${n + 2}::integer IS NULL OR version = $${n + 2}::integer) RETURNING *`,
      params,
    );
    if (rows.length) return toNode(rows[0]);
    const cur = await this.getNode(id);
    if (!cur) throw nodeNotFound(id);
    throw versionConflict(`node ${JSON.stringify(id)}`, expected ?? cur.version, cur.version);
  }

  async setProvisionState(id: string, state: string, lastError?: string, expectedVersion?: number): Promise<NodeRecord> {
    requireId("id", id);
    const s = requireState("state", state);
    const err = optionalText("lastError", lastError, 65536);
    const expected = optionalVersion("expectedVersion", expectedVersion);
    return this.updateNode("setting a provision state", id, expected, { provision_state: s, last_error: err ?? null });
  }

  async setMaintenance(id: string, maintenance: boolean, reason?: string, expectedVersion?: number): Promise<NodeRecord> {
    requireId("id", id);
    if (typeof maintenance !== "boolean") throw new BaremetalError("validation", "maintenance must be a boolean", { property: "maintenance" });
    const r = optionalText("reason", reason, 4096);
    const expected = optionalVersion("expectedVersion", expectedVersion);
    return this.updateNode("setting maintenance", id, expected, { maintenance, maintenance_reason: maintenance ? (r ?? null) : null });
  }

  // ---- claims -----------------------------------------------------------------------------

  async claimNode(request: ClaimRequest): Promise<Claim> {
    const c = normaliseClaim(request);
    const deadline = Date.now() + this.claimRetryMs;
    for (let attempt = 0; ; attempt++) {
      const outcome = await this.tx("claiming a node", (q) => this.claimOnce(q, c), true);
      if ("claim" in outcome) return outcome.claim;
      if (!outcome.contended || Date.now() >= deadline) break;
      // Matching free nodes exist but are locked by transactions still running: wait for them.
      await delay(Math.min(10 + attempt * 10, 100) * (0.5 + Math.random()));
    }
    throw noMatchError(c, await this.listNodes(), this.kind);
  }

  private async claimOnce(q: Query, c: ClaimValues): Promise<{ claim: Claim } | { contended: boolean }> {
    await q("SELECT pg_advisory_xact_lock(hashtext($1))", [`pulumi-baremetal:allocation:${c.allocationId}`]);
    const existing = await q("SELECT * FROM allocations WHERE id = $1", [c.allocationId]);
    if (existing.length && existing[0].state === "active") {
      // A retried create (the provider crashed after the claim): the same claim again.
      const allocation = toAllocation(existing[0]);
      return { claim: { allocation, node: (await this.nodeRow(q, allocation.nodeId))! } };
    }
    const params = [c.allocationId, c.project ?? null, c.resourceClass ?? null, JSON.stringify(c.traits), c.candidates ?? null, c.name];
    const claimed = await q(CLAIM, params);
    if (!claimed.length) {
      const [{ n }] = await q(COUNT_CLAIMABLE, params.slice(1, 5));
      return { contended: n > 0 };
    }
    const node = toNode(claimed[0]);
    const rows = await q(
      `INSERT INTO allocations (id, name, owner, project, node_id, resource_class, traits, candidate_nodes, state, created_at, released_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, 'active', clock_timestamp(), NULL)
       ON CONFLICT (id) DO UPDATE SET name = excluded.name, owner = excluded.owner, project = excluded.project,
         node_id = excluded.node_id, resource_class = excluded.resource_class, traits = excluded.traits,
         candidate_nodes = excluded.candidate_nodes, state = 'active', created_at = excluded.created_at, released_at = NULL
       RETURNING *`,
      [
        c.allocationId, c.name, c.owner ?? null, c.project ?? null, node.id, c.resourceClass ?? null,
        JSON.stringify(c.traits), c.candidates ? JSON.stringify(c.candidates) : null,
      ],
    );
    return { claim: { node, allocation: toAllocation(rows[0]) } };
  }

  async releaseClaim(allocationId: string): Promise<AllocationRecord | undefined> {
    requireId("allocationId", allocationId);
    return this.tx("releasing a claim", async (q) => {
      await q("SELECT pg_advisory_xact_lock(hashtext($1))", [`pulumi-baremetal:allocation:${allocationId}`]);
      const rows = await q("SELECT * FROM allocations WHERE id = $1 FOR UPDATE", [allocationId]);
      if (!rows.length || rows[0].state !== "active") return undefined;
      const released = await q(
        "UPDATE allocations SET state = 'released', released_at = clock_timestamp() WHERE id = $1 RETURNING *",
        [allocationId],
      );
      await q(
        "UPDATE nodes SET allocation_id = NULL, updated_at = clock_timestamp(), version = version + 1 WHERE id = $1 AND allocation_id = $2",
        [rows[0].node_id, allocationId],
      );
      return toAllocation(released[0]);
    });
  }

  async getAllocation(allocationId: string): Promise<AllocationRecord | undefined> {
    requireId("allocationId", allocationId);
    const rows = await this.q("reading an allocation", "SELECT * FROM allocations WHERE id = $1", [allocationId]);
    return rows.length ? toAllocation(rows[0]) : undefined;
  }

  async listAllocations(filter: AllocationFilter = {}): Promise<AllocationRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    const owner = optionalText("owner", filter.owner);
    const nodeId = optionalText("nodeId", filter.nodeId, 1024);
    if (owner !== undefined) (params.push(owner), where.push(`owner = $${params.length}`));
    if (filter.state !== undefined) (params.push(filter.state), where.push(`state = $${params.length}`));
    if (nodeId !== undefined) (params.push(nodeId), where.push(`node_id = $${params.length}`));
    const rows = await this.q(
      "listing allocations",
      `SELECT * FROM allocations${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY created_at, id COLLATE "C"`,
      params,
    );
    return rows.map(toAllocation);
  }

  // ---- locks ------------------------------------------------------------------------------

  async acquireLock(nodeId: string, holder: string, operation: string, leaseSeconds: number): Promise<LockHandle> {
    requireId("nodeId", nodeId);
    requireText("holder", holder, 1024);
    requireText("operation", operation);
    const lease = requireLease("leaseSeconds", leaseSeconds);
    const token = randomUUID();
    let expiresAt = "";
    for (let attempt = 0; ; attempt++) {
      // One statement: concurrent acquirers of the same id are serialised by the row (or its
      // unique index entry), and the loser re-evaluates the WHERE on the winner's row.
      const rows = await this.q(
        "locking a node",
        `INSERT INTO node_locks (node_id, holder, operation, token, acquired_at, expires_at)
         VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp() + make_interval(secs => $5::double precision))
         ON CONFLICT (node_id) DO UPDATE SET holder = excluded.holder, operation = excluded.operation, token = excluded.token,
           acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
         WHERE node_locks.expires_at <= clock_timestamp()
         RETURNING expires_at`,
        [nodeId, holder, operation, token, lease],
      );
      if (rows.length) {
        expiresAt = iso(rows[0].expires_at);
        break;
      }
      const cur = await this.q(
        "locking a node",
        "SELECT holder, operation, expires_at, expires_at <= clock_timestamp() AS expired FROM node_locks WHERE node_id = $1",
        [nodeId],
      );
      // Released or expired between the two statements: try again.
      if ((!cur.length || cur[0].expired) && attempt < 3) continue;
      if (!cur.length) throw new BaremetalError("transient", `locking node ${JSON.stringify(nodeId)}: the lock changed hands repeatedly; try again`);
      throw lockHeld(nodeId, cur[0].holder, cur[0].operation, iso(cur[0].expires_at));
    }
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
        const rows = await inv.q(
          "renewing a node lock",
          `UPDATE node_locks SET expires_at = clock_timestamp() + make_interval(secs => $3::double precision)
           WHERE node_id = $1 AND token = $2 AND expires_at > clock_timestamp() RETURNING expires_at`,
          [nodeId, token, l],
        );
        if (rows.length) {
          expiresAt = iso(rows[0].expires_at);
          return;
        }
        const cur = await inv.q(
          "renewing a node lock",
          "SELECT holder, operation, token, expires_at, clock_timestamp() AS now FROM node_locks WHERE node_id = $1",
          [nodeId],
        );
        const row = cur[0];
        throw lostLock(
          nodeId,
          operation,
          row && { holder: row.holder, operation: row.operation, token: row.token, expires_at: iso(row.expires_at) },
          token,
          row ? iso(row.now) : new Date().toISOString(),
        );
      },
      async release(): Promise<void> {
        await inv.q("releasing a node lock", "DELETE FROM node_locks WHERE node_id = $1 AND token = $2", [nodeId, token]);
      },
    };
  }

  async getLock(nodeId: string): Promise<LockInfo | undefined> {
    requireId("nodeId", nodeId);
    const rows = await this.q(
      "reading a node lock",
      "SELECT *, expires_at <= clock_timestamp() AS expired FROM node_locks WHERE node_id = $1",
      [nodeId],
    );
    if (!rows.length) return undefined;
    const r = rows[0];
    return {
      nodeId: r.node_id,
      holder: r.holder,
      operation: r.operation,
      acquiredAt: iso(r.acquired_at),
      expiresAt: iso(r.expires_at),
      expired: r.expired === true,
    };
  }

  async close(): Promise<void> {
    const pool = this.pool;
    this.pool = undefined;
    if (pool) await pool.end();
  }
}
