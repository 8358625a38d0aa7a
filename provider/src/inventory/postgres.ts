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
 * ## Tenant networks
 *
 * The VLAN of a new network and the address of an allocation are "the lowest free one", so
 * concurrent requests all want the same value: they are serialised rather than spread. VLANs per
 * fabric by a transaction-scoped advisory lock on the fabric name, addresses per subnet by the
 * subnet row's lock (`FOR UPDATE`); under READ COMMITTED the next holder's read is a new
 * statement, so it sees what the previous holder committed. UNIQUE (fabric, vlan) and the primary
 * key (subnet, address) are the guards behind the locks. Attaches are serialised per port by the
 * port row's lock (the access/trunk rule spans rows), with the network row held FOR SHARE against
 * its deletion.
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
  auditFromRow,
  ClaimValues,
  closedError,
  compact,
  currentColumns,
  delay,
  lockHandle,
  lockHeld,
  lostLock,
  noMatchError,
  NODE_COLUMNS,
  nodeClaimed,
  nodeColumns,
  nodeNotFound,
  normaliseClaim,
  normaliseFilter,
  normaliseNode,
  optionalText,
  optionalVersion,
  redactUrl,
  requireId,
  canonicalJson,
  etagConflict,
  leaseExists,
  leaseFromRow,
  leaseNotFound,
  leaseOverlap,
  normaliseLease,
  normaliseLeaseChange,
  normaliseLeaseFilter,
  normaliseServiceChange,
  normaliseServiceListFilter,
  normaliseServiceResource,
  normaliseServiceSelector,
  serviceResourceExists,
  serviceResourceFromRow,
  serviceResourceNotFound,
  requireLockRequest,
  requireState,
  requireText,
  sameColumns,
  tokenFromRow,
  sortKeys,
  versionConflict,
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

function toNetwork(r: Row): NetworkRecord {
  return compact({
    id: r.id,
    name: r.name,
    owner: r.owner,
    fabric: r.fabric,
    pool: opt<string>(r.pool),
    vlan: Number(r.vlan),
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at),
    version: Number(r.version),
  });
}

function toSubnet(r: Row): SubnetRecord {
  return compact({
    id: r.id,
    networkId: r.network_id,
    cidr: r.cidr,
    ipVersion: Number(r.ip_version) as 4 | 6,
    gateway: opt<string>(r.gateway),
    // jsonb orders keys its own way: rebuild the objects in the record's order.
    allocationPools: (r.allocation_pools as SubnetRecord["allocationPools"]).map((x) => ({ start: x.start, end: x.end })),
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at),
    version: Number(r.version),
  });
}

function toAddress(r: Row): AddressRecord {
  const address = r.address as string;
  return {
    subnetId: r.subnet_id,
    address,
    ipVersion: address.includes(":") ? 6 : 4,
    owner: r.owner,
    static: r.static === true,
    createdAt: iso(r.created_at),
  };
}

function toPort(r: Row): PortRecord {
  return compact({
    id: r.id,
    nodeId: r.node_id,
    mac: r.mac,
    switchId: r.switch_id,
    switchPort: r.switch_port,
    physicalNetwork: opt<string>(r.physical_network),
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at),
    version: Number(r.version),
  });
}

/** An attachment with its port's and network's columns (see ATTACHMENTS). */
function toAttachment(r: Row): AttachmentRecord {
  return {
    id: r.id,
    portId: r.port_id,
    networkId: r.network_id,
    mode: r.mode,
    native: r.native === true,
    nodeId: r.node_id,
    mac: r.mac,
    switchId: r.switch_id,
    switchPort: r.switch_port,
    fabric: r.fabric,
    vlan: Number(r.vlan),
    owner: r.owner,
    createdAt: iso(r.created_at),
  };
}

const ATTACHMENTS = `SELECT a.id, a.port_id, a.network_id, a.mode, a.native, a.created_at,
    p.node_id, p.mac, p.switch_id, p.switch_port, n.fabric, n.vlan, n.owner
  FROM attachments a JOIN ports p ON p.id = a.port_id JOIN networks n ON n.id = a.network_id`;

/** The advisory lock that serialises the choice of VLANs on one fabric (see createNetwork). */
const FABRIC_LOCK = "SELECT pg_advisory_xact_lock(hashtext('pulumi-baremetal:fabric:' || $1::text))";

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
    if (f.after !== undefined) {
      params.push(f.after.name, f.after.id);
      const [n, i] = [`$${params.length - 1}`, `$${params.length}`];
      where.push(`(name COLLATE "C" > ${n} OR (name = ${n} AND id COLLATE "C" > ${i}))`);
    }
    const rows = await this.q(
      "listing nodes",
      `SELECT * FROM nodes${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY name COLLATE "C", id COLLATE "C"${f.limit !== undefined ? ` LIMIT ${f.limit}` : ""}`,
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
      if (cur.allocationId !== undefined) throw nodeClaimed(id, cur.allocationId);
      // Its ports, locked: an attach (which locks the port first) waits, then finds no port.
      await q("SELECT id FROM ports WHERE node_id = $1 FOR UPDATE", [id]);
      const attached = await this.attachmentRows(q, { nodeId: id });
      if (attached.length) throw nodePortsAttached(id, attached);
      await q("DELETE FROM nodes WHERE id = $1", [id]); // its ports go with it (ON DELETE CASCADE)
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
    const lease = requireLockRequest(nodeId, holder, operation, leaseSeconds);
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
    return lockHandle(
      nodeId,
      holder,
      operation,
      lease,
      expiresAt,
      async (l) => {
        const rows = await this.q(
          "renewing a node lock",
          `UPDATE node_locks SET expires_at = clock_timestamp() + make_interval(secs => $3::double precision)
           WHERE node_id = $1 AND token = $2 AND expires_at > clock_timestamp() RETURNING expires_at`,
          [nodeId, token, l],
        );
        if (rows.length) return iso(rows[0].expires_at);
        const cur = await this.q(
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
      async () => {
        await this.q("releasing a node lock", "DELETE FROM node_locks WHERE node_id = $1 AND token = $2", [nodeId, token]);
      },
    );
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

  // ---- VLAN pools -------------------------------------------------------------------------

  /** The fabric's VLANs in use, to the networks that have them. */
  private async fabricVlans(q: Query, fabric: string): Promise<Map<number, string>> {
    const rows = await q("SELECT id, vlan FROM networks WHERE fabric = $1", [fabric]);
    return new Map(rows.map((r) => [Number(r.vlan), r.id as string]));
  }

  private async toPool(q: Query, r: Row): Promise<VlanPoolRecord> {
    return vlanPoolRecord(
      {
        name: r.name,
        fabric: r.fabric,
        ranges: r.ranges as VlanRange[],
        createdAt: iso(r.created_at),
        updatedAt: iso(r.updated_at),
        version: Number(r.version),
      },
      (await this.fabricVlans(q, r.fabric)).keys(),
    );
  }

  private async poolMembers(q: Query, name: string): Promise<PoolMember[]> {
    const rows = await q("SELECT id, fabric, vlan FROM networks WHERE pool = $1", [name]);
    return rows.map((r) => ({ id: r.id, fabric: r.fabric, vlan: Number(r.vlan) }));
  }

  /** A query function outside a transaction, for the helpers that take one. */
  private plain(what: string): Query {
    return (sql, params) => this.q(what, sql, params);
  }

  async defineVlanPool(pool: VlanPoolInput): Promise<VlanPoolRecord> {
    const v = normaliseVlanPool(pool);
    return this.tx(
      "defining a VLAN pool",
      async (q) => {
        // The pool row's lock waits for the creates taking a VLAN from it (they hold it FOR SHARE)
        // and holds off new ones, so the check below sees every network of the pool.
        const rows = await q("SELECT * FROM vlan_pools WHERE name = $1 FOR UPDATE", [v.name]);
        if (!rows.length) {
          const created = await q(
            `INSERT INTO vlan_pools (name, fabric, ranges, created_at, updated_at, version)
             VALUES ($1, $2, $3::jsonb, clock_timestamp(), clock_timestamp(), 1) RETURNING *`,
            [v.name, v.fabric, rangesJson(v.ranges)],
          );
          return this.toPool(q, created[0]);
        }
        const cur = await this.toPool(q, rows[0]);
        if (cur.fabric === v.fabric && rangesJson(cur.ranges) === rangesJson(v.ranges)) return cur;
        const refused = poolChangeConflict(cur, v, await this.poolMembers(q, v.name));
        if (refused) throw refused;
        const updated = await q(
          `UPDATE vlan_pools SET fabric = $2, ranges = $3::jsonb, updated_at = clock_timestamp(), version = version + 1
           WHERE name = $1 RETURNING *`,
          [v.name, v.fabric, rangesJson(v.ranges)],
        );
        return this.toPool(q, updated[0]);
      },
      true,
    );
  }

  async getVlanPool(name: string): Promise<VlanPoolRecord | undefined> {
    requireText("name", name);
    const q = this.plain("reading a VLAN pool");
    const rows = await q("SELECT * FROM vlan_pools WHERE name = $1", [name]);
    return rows.length ? this.toPool(q, rows[0]) : undefined;
  }

  async listVlanPools(filter: VlanPoolFilter = {}): Promise<VlanPoolRecord[]> {
    const fabric = optionalText("fabric", filter?.fabric);
    const q = this.plain("listing VLAN pools");
    const rows = await q(`SELECT * FROM vlan_pools${fabric !== undefined ? " WHERE fabric = $1" : ""} ORDER BY name COLLATE "C"`, fabric !== undefined ? [fabric] : []);
    const out: VlanPoolRecord[] = [];
    for (const r of rows) out.push(await this.toPool(q, r));
    return out;
  }

  async removeVlanPool(name: string): Promise<boolean> {
    requireText("name", name);
    return this.tx("removing a VLAN pool", async (q) => {
      if (!(await q("SELECT name FROM vlan_pools WHERE name = $1 FOR UPDATE", [name])).length) return false;
      const members = await this.poolMembers(q, name);
      if (members.length) throw poolInUse(name, members);
      await q("DELETE FROM vlan_pools WHERE name = $1", [name]);
      return true;
    });
  }

  // ---- networks ---------------------------------------------------------------------------

  private async networkRow(q: Query, id: string, lock = ""): Promise<NetworkRecord | undefined> {
    const rows = await q(`SELECT * FROM networks WHERE id = $1${lock ? ` ${lock}` : ""}`, [id]);
    return rows.length ? toNetwork(rows[0]) : undefined;
  }

  /**
   * Under the fabric's advisory lock (held to commit), the VLANs in use read by one statement
   * include every network committed by an earlier holder, and no other create of the fabric can
   * choose until this one has committed: two creates never choose the same VLAN. The unique
   * (fabric, vlan) constraint is the guard behind it. The pool row is read FOR SHARE, so a pool
   * change waits for the creates under way and the creates after it see the new ranges.
   */
  async createNetwork(network: NetworkInput): Promise<NetworkRecord> {
    const v = normaliseNetwork(network);
    return this.tx(
      "creating a network",
      async (q) => {
        await q(FABRIC_LOCK, [v.fabric]);
        const cur = await this.networkRow(q, v.id);
        if (cur) return existingNetwork(cur, v);
        let named: VlanPoolRecord | undefined;
        if (v.pool !== undefined) {
          const rows = await q("SELECT * FROM vlan_pools WHERE name = $1 FOR SHARE", [v.pool]);
          named = rows.length ? await this.toPool(q, rows[0]) : undefined;
        }
        const fabricPools: VlanPoolRecord[] = [];
        if (v.pool === undefined && v.vlan === undefined) {
          for (const r of await q(`SELECT * FROM vlan_pools WHERE fabric = $1 ORDER BY name COLLATE "C" FOR SHARE`, [v.fabric])) {
            fabricPools.push(await this.toPool(q, r));
          }
        }
        const pool = resolvePool(v, named, fabricPools);
        const vlan = chooseVlan(v, pool, await this.fabricVlans(q, v.fabric));
        const rows = await q(
          `INSERT INTO networks (id, name, owner, fabric, pool, vlan, created_at, updated_at, version)
           VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp(), clock_timestamp(), 1) RETURNING *`,
          [v.id, v.name, v.owner, v.fabric, pool?.name ?? null, vlan],
        );
        return toNetwork(rows[0]);
      },
      true,
    );
  }

  async getNetwork(id: string): Promise<NetworkRecord | undefined> {
    requireId("id", id);
    return this.networkRow(this.plain("reading a network"), id);
  }

  async listNetworks(filter: NetworkFilter = {}): Promise<NetworkRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    const owner = optionalText("owner", filter?.owner);
    const fabric = optionalText("fabric", filter?.fabric);
    if (owner !== undefined) (params.push(owner), where.push(`owner = $${params.length}`));
    if (fabric !== undefined) (params.push(fabric), where.push(`fabric = $${params.length}`));
    const rows = await this.q(
      "listing networks",
      `SELECT * FROM networks${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY name COLLATE "C", id COLLATE "C"`,
      params,
    );
    return rows.map(toNetwork);
  }

  async deleteNetwork(id: string): Promise<boolean> {
    requireId("id", id);
    return this.tx("deleting a network", async (q) => {
      // The network row holds off attaches and new subnets (they lock it too); its subnets' rows
      // hold off allocations (they lock the subnet first).
      if (!(await this.networkRow(q, id, "FOR UPDATE"))) return false;
      await q("SELECT id FROM subnets WHERE network_id = $1 FOR UPDATE", [id]);
      const attachments = (await q(`SELECT id, port_id FROM attachments WHERE network_id = $1 ORDER BY id COLLATE "C"`, [id])).map((r) => ({
        id: r.id as string,
        portId: r.port_id as string,
      }));
      const addresses = sortAddresses(
        (await q("SELECT a.* FROM ip_addresses a JOIN subnets s ON s.id = a.subnet_id WHERE s.network_id = $1", [id])).map(toAddress),
      );
      if (attachments.length || addresses.length) throw networkInUse(id, attachments, addresses);
      await q("DELETE FROM subnets WHERE network_id = $1", [id]);
      await q("DELETE FROM networks WHERE id = $1", [id]);
      return true;
    });
  }

  // ---- subnets and addresses --------------------------------------------------------------

  private async subnetRow(q: Query, id: string, lock = ""): Promise<SubnetRecord | undefined> {
    const rows = await q(`SELECT * FROM subnets WHERE id = $1${lock ? ` ${lock}` : ""}`, [id]);
    return rows.length ? toSubnet(rows[0]) : undefined;
  }

  async addSubnet(subnet: SubnetInput): Promise<SubnetRecord> {
    const v = normaliseSubnet(subnet);
    const c = subnetColumns(v);
    return this.tx(
      "adding a subnet",
      async (q) => {
        const cur = await this.subnetRow(q, v.id);
        if (cur) return existingSubnet(cur, v);
        // The network's row lock serialises the subnets added to it (the overlap check).
        if (!(await this.networkRow(q, v.networkId, "FOR UPDATE"))) throw notFound("network", v.networkId, "networkId");
        checkSubnetOverlap(v, (await q("SELECT * FROM subnets WHERE network_id = $1", [v.networkId])).map(toSubnet));
        const rows = await q(
          `INSERT INTO subnets (id, network_id, cidr, ip_version, gateway, allocation_pools, created_at, updated_at, version)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb, clock_timestamp(), clock_timestamp(), 1) RETURNING *`,
          [v.id, v.networkId, c.cidr, c.ipVersion, c.gateway ?? null, JSON.stringify(c.allocationPools)],
        );
        return toSubnet(rows[0]);
      },
      true,
    );
  }

  async getSubnet(id: string): Promise<SubnetRecord | undefined> {
    requireId("id", id);
    return this.subnetRow(this.plain("reading a subnet"), id);
  }

  async listSubnets(filter: SubnetFilter = {}): Promise<SubnetRecord[]> {
    const networkId = optionalText("networkId", filter?.networkId, 1024);
    const rows = await this.q(
      "listing subnets",
      `SELECT * FROM subnets${networkId !== undefined ? " WHERE network_id = $1" : ""} ORDER BY id COLLATE "C"`,
      networkId !== undefined ? [networkId] : [],
    );
    return rows.map(toSubnet);
  }

  async removeSubnet(id: string): Promise<boolean> {
    requireId("id", id);
    return this.tx("removing a subnet", async (q) => {
      if (!(await this.subnetRow(q, id, "FOR UPDATE"))) return false;
      const addresses = sortAddresses((await q("SELECT * FROM ip_addresses WHERE subnet_id = $1", [id])).map(toAddress));
      if (addresses.length) throw subnetInUse(id, addresses);
      await q("DELETE FROM subnets WHERE id = $1", [id]);
      return true;
    });
  }

  /**
   * The subnet's row lock (held to commit) serialises the allocations of one subnet: the next
   * allocation's read of the taken addresses is a new statement, so it sees this one's insert.
   * The primary key (subnet, address) and the unique (subnet, owner) are the guards behind it.
   */
  async allocateAddress(request: AddressRequest): Promise<AddressRecord> {
    const v = normaliseAddressRequest(request);
    return this.tx(
      "allocating an address",
      async (q) => {
        const subnet = await this.subnetRow(q, v.subnetId, "FOR UPDATE");
        if (!subnet) throw notFound("subnet", v.subnetId, "subnetId");
        const held = await q("SELECT * FROM ip_addresses WHERE subnet_id = $1 AND owner = $2", [v.subnetId, v.owner]);
        if (held.length) return existingAddress(toAddress(held[0]), v);
        const taken = new Map((await q("SELECT address, owner FROM ip_addresses WHERE subnet_id = $1", [v.subnetId])).map((r) => [r.address as string, r.owner as string]));
        const address = chooseAddress(subnet, v, taken);
        const rows = await q(
          "INSERT INTO ip_addresses (subnet_id, address, owner, static, created_at) VALUES ($1, $2, $3, $4, clock_timestamp()) RETURNING *",
          [v.subnetId, address, v.owner, v.address !== undefined],
        );
        return toAddress(rows[0]);
      },
      true,
    );
  }

  async releaseAddress(subnetId: string, owner: string): Promise<boolean> {
    requireId("subnetId", subnetId);
    requireId("owner", owner);
    const rows = await this.q("releasing an address", "DELETE FROM ip_addresses WHERE subnet_id = $1 AND owner = $2 RETURNING address", [subnetId, owner]);
    return rows.length === 1;
  }

  async listAddresses(subnetId: string): Promise<AddressRecord[]> {
    requireId("subnetId", subnetId);
    const rows = await this.q("listing addresses", "SELECT * FROM ip_addresses WHERE subnet_id = $1", [subnetId]);
    return sortAddresses(rows.map(toAddress));
  }

  // ---- ports and attachments --------------------------------------------------------------

  private async portRow(q: Query, id: string, lock = ""): Promise<PortRecord | undefined> {
    const rows = await q(`SELECT * FROM ports WHERE id = $1${lock ? ` ${lock}` : ""}`, [id]);
    return rows.length ? toPort(rows[0]) : undefined;
  }

  private async attachmentRows(q: Query, f: AttachmentFilter & { id?: string }): Promise<AttachmentRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (col: string, value: string | undefined) => {
      if (value === undefined) return;
      params.push(value);
      where.push(`${col} = $${params.length}`);
    };
    add("a.id", f.id);
    add("a.network_id", f.networkId);
    add("a.port_id", f.portId);
    add("p.node_id", f.nodeId);
    const rows = await q(`${ATTACHMENTS}${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY a.id COLLATE "C"`, params);
    return rows.map(toAttachment);
  }

  async upsertPort(port: PortInput): Promise<PortRecord> {
    const v = normalisePort(port);
    return this.tx(
      "recording a port",
      async (q) => {
        // KEY SHARE: the node cannot be removed meanwhile, but other node writes go on.
        if (!(await q("SELECT id FROM nodes WHERE id = $1 FOR KEY SHARE", [v.nodeId])).length) throw notFound("node", v.nodeId, "nodeId");
        const cur = await this.portRow(q, v.id, "FOR UPDATE");
        if (cur && samePort(cur, v)) return cur;
        // A concurrent insert of the same switch port or MAC fails on the unique constraints;
        // the transaction is then replayed and finds the other port here.
        const other = await q(
          `SELECT * FROM ports WHERE id <> $1 AND ((switch_id = $2 AND switch_port = $3) OR mac = $4) ORDER BY mac = $4, id COLLATE "C" LIMIT 1`,
          [v.id, v.switchId, v.switchPort, v.mac],
        );
        if (other.length) throw portTaken(v, toPort(other[0]));
        if (!cur) {
          const rows = await q(
            `INSERT INTO ports (id, node_id, mac, switch_id, switch_port, physical_network, created_at, updated_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp(), clock_timestamp(), 1) RETURNING *`,
            [v.id, v.nodeId, v.mac, v.switchId, v.switchPort, v.physicalNetwork ?? null],
          );
          return toPort(rows[0]);
        }
        const refused = portChangeConflict(cur, v, await this.attachmentRows(q, { portId: v.id }));
        if (refused) throw refused;
        const rows = await q(
          `UPDATE ports SET node_id = $2, mac = $3, switch_id = $4, switch_port = $5, physical_network = $6,
             updated_at = clock_timestamp(), version = version + 1
           WHERE id = $1 RETURNING *`,
          [v.id, v.nodeId, v.mac, v.switchId, v.switchPort, v.physicalNetwork ?? null],
        );
        return toPort(rows[0]);
      },
      true,
    );
  }

  async getPort(id: string): Promise<PortRecord | undefined> {
    requireId("id", id);
    return this.portRow(this.plain("reading a port"), id);
  }

  async listPorts(filter: PortFilter = {}): Promise<PortRecord[]> {
    const nodeId = optionalText("nodeId", filter?.nodeId, 1024);
    const rows = await this.q(
      "listing ports",
      `SELECT * FROM ports${nodeId !== undefined ? " WHERE node_id = $1" : ""} ORDER BY id COLLATE "C"`,
      nodeId !== undefined ? [nodeId] : [],
    );
    return rows.map(toPort);
  }

  async removePort(id: string): Promise<boolean> {
    requireId("id", id);
    return this.tx("removing a port", async (q) => {
      if (!(await this.portRow(q, id, "FOR UPDATE"))) return false;
      const attached = await this.attachmentRows(q, { portId: id });
      if (attached.length) throw portAttached(id, attached);
      await q("DELETE FROM ports WHERE id = $1", [id]);
      return true;
    });
  }

  /**
   * The port's row lock (held to commit) serialises the attaches of one port, so the rule check
   * sees every attachment of it; the network's row is held FOR SHARE against its deletion. The
   * partial unique indexes (one access, one native attachment per port) are the guards behind it.
   */
  async attach(attachment: AttachmentInput): Promise<AttachmentRecord> {
    const v = normaliseAttachment(attachment);
    return this.tx(
      "attaching a port",
      async (q) => {
        const [cur] = await this.attachmentRows(q, { id: v.id });
        if (cur) return existingAttachment(cur, v);
        const port = await this.portRow(q, v.portId, "FOR UPDATE");
        if (!port) throw notFound("port", v.portId, "portId");
        const network = await this.networkRow(q, v.networkId, "FOR SHARE");
        if (!network) throw notFound("network", v.networkId, "networkId");
        checkAttach(v, port, network, await this.attachmentRows(q, { portId: v.portId }));
        await q("INSERT INTO attachments (id, port_id, network_id, mode, native, created_at) VALUES ($1, $2, $3, $4, $5, clock_timestamp())", [
          v.id, v.portId, v.networkId, v.mode, v.native,
        ]);
        return (await this.attachmentRows(q, { id: v.id }))[0];
      },
      true,
    );
  }

  async detach(id: string): Promise<boolean> {
    requireId("id", id);
    return (await this.q("detaching a port", "DELETE FROM attachments WHERE id = $1 RETURNING id", [id])).length === 1;
  }

  async getAttachment(id: string): Promise<AttachmentRecord | undefined> {
    requireId("id", id);
    return (await this.attachmentRows(this.plain("reading an attachment"), { id }))[0];
  }

  async listAttachments(filter: AttachmentFilter = {}): Promise<AttachmentRecord[]> {
    const f = normaliseAttachmentFilter(filter);
    return this.attachmentRows(this.plain("listing attachments"), f);
  }

  // ---- the service's tokens and audit log (issue 8) ----------------------------------------------

  async insertToken(t: ApiTokenRecord): Promise<void> {
    requireId("id", t.id);
    const rows = await this.q(
      "storing an API token",
      "INSERT INTO api_tokens (id, name, project_id, roles, created_at, expires_at, revoked_at, secret_hash, rate_per_minute) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING id",
      [t.id, t.name, t.projectId ?? null, JSON.stringify(t.roles), t.createdAt, t.expiresAt ?? null, t.revokedAt ?? null, t.secretHash, t.ratePerMinute],
    );
    if (!rows.length) throw new BaremetalError("conflict", `API token ${t.id} exists`);
  }

  async getToken(id: string): Promise<ApiTokenRecord | undefined> {
    const rows = await this.q("reading an API token", "SELECT * FROM api_tokens WHERE id = $1", [id]);
    return rows.length ? tokenFromRow(rows[0], iso) : undefined;
  }

  async revokeToken(id: string, at: string): Promise<boolean> {
    const rows = await this.q("revoking an API token", "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING id", [id, at]);
    return rows.length > 0;
  }

  async listTokens(projectId?: string): Promise<ApiTokenRecord[]> {
    const rows =
      projectId === undefined
        ? await this.q("listing API tokens", "SELECT * FROM api_tokens ORDER BY created_at, id")
        : await this.q("listing API tokens", "SELECT * FROM api_tokens WHERE project_id = $1 ORDER BY created_at, id", [projectId]);
    return rows.map((r) => tokenFromRow(r, iso));
  }

  async appendAudit(e: AuditInput): Promise<AuditRecord> {
    const rows = await this.q(
      "appending to the audit log",
      "INSERT INTO audit_log (at, request_id, token_id, project_id, operation, target, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
      [e.at, e.requestId, e.tokenId ?? null, e.projectId ?? null, e.operation, e.target ?? null, e.outcome, e.detail ?? null],
    );
    return { ...e, seq: Number(rows[0].seq) };
  }

  async listAudit(filter: { projectId?: string; afterSeq?: number; limit?: number } = {}): Promise<AuditRecord[]> {
    const after = filter.afterSeq ?? 0;
    const limit = filter.limit ?? 100;
    const rows =
      filter.projectId === undefined
        ? await this.q("reading the audit log", "SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", [after, limit])
        : await this.q("reading the audit log", "SELECT * FROM audit_log WHERE project_id = $1 AND seq > $2 ORDER BY seq LIMIT $3", [filter.projectId, after, limit]);
    return rows.map((r) => auditFromRow(r, iso));
  }

  // ---- objects the service manages for tenants (broker mode, issue 8) ----------------------------
  //
  // Each call is one statement (plus a read to explain a refusal): the unique constraints and
  // indexes arbitrate between service instances sharing the database, and a conditional update or
  // delete compares the etag in its own WHERE clause. A concurrent writer of the same row waits for
  // the row lock, then PostgreSQL re-evaluates `etag = $n` on the newest version (EvalPlanQual),
  // so of two writers expecting the same etag exactly one matches.

  async insertServiceResource(r: ServiceResourceRecord): Promise<void> {
    const v = normaliseServiceResource(r);
    // DO NOTHING without a target covers every unique constraint and index, and only those.
    const rows = await this.q(
      "storing a service object",
      `INSERT INTO service_resources (uuid, type, project_id, name, resource_id, inputs, state, etag, idempotency_key, partial, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING RETURNING uuid`,
      [
        v.uuid, v.type, v.projectId ?? null, v.name ?? null, v.resourceId, canonicalJson(v.inputs), canonicalJson(v.state), v.etag,
        v.idempotencyKey ?? null, v.partial, v.createdAt, v.updatedAt,
      ],
    );
    if (rows.length) return;
    const clashes = await this.q(
      "storing a service object",
      `SELECT * FROM service_resources WHERE uuid = $1 OR (type = $2 AND resource_id = $3)
         OR (type = $2 AND name = $4 AND coalesce(project_id, '') = $5) OR idempotency_key = $6 ORDER BY uuid`,
      [v.uuid, v.type, v.resourceId, v.name ?? null, v.projectId ?? "", v.idempotencyKey ?? null],
    );
    throw serviceResourceExists(v, clashes.map((row) => serviceResourceFromRow(row, iso)));
  }

  async getServiceResource(uuid: string): Promise<ServiceResourceRecord | undefined> {
    requireId("uuid", uuid);
    const rows = await this.q("reading a service object", "SELECT * FROM service_resources WHERE uuid = $1", [uuid]);
    return rows.length ? serviceResourceFromRow(rows[0], iso) : undefined;
  }

  async findServiceResource(
    type: string,
    by: { resourceId?: string; name?: string; projectId?: string; idempotencyKey?: string },
  ): Promise<ServiceResourceRecord | undefined> {
    requireText("type", type);
    const s = normaliseServiceSelector(by);
    const rows =
      s.by === "resourceId"
        ? await this.q("finding a service object", "SELECT * FROM service_resources WHERE type = $1 AND resource_id = $2", [type, s.value])
        : s.by === "name"
          ? await this.q(
              "finding a service object",
              "SELECT * FROM service_resources WHERE coalesce(project_id, '') = $1 AND type = $2 AND name = $3",
              [s.projectId ?? "", type, s.value],
            )
          : await this.q("finding a service object", "SELECT * FROM service_resources WHERE idempotency_key = $1 AND type = $2", [s.value, type]);
    return rows.length ? serviceResourceFromRow(rows[0], iso) : undefined;
  }

  async updateServiceResource(uuid: string, change: ServiceResourceChange, expectedEtag?: string): Promise<ServiceResourceRecord> {
    requireId("uuid", uuid);
    const c = normaliseServiceChange(change);
    const expected = expectedEtag === undefined ? undefined : requireText("expectedEtag", expectedEtag);
    const rows = await this.q(
      "updating a service object",
      `UPDATE service_resources SET inputs = $1, state = $2, etag = $3, partial = $4, updated_at = $5, resource_id = coalesce($8::text, resource_id)
       WHERE uuid = $6 AND ($7::text IS NULL OR etag = $7) RETURNING *`,
      [canonicalJson(c.inputs), canonicalJson(c.state), c.etag, c.partial, c.updatedAt, uuid, expected ?? null, c.resourceId ?? null],
    );
    if (rows.length) return serviceResourceFromRow(rows[0], iso);
    // Nothing matched: absent, or (with an expected etag) changed since the caller read it.
    const cur = await this.q("updating a service object", "SELECT etag FROM service_resources WHERE uuid = $1", [uuid]);
    if (!cur.length) throw serviceResourceNotFound(uuid);
    throw etagConflict(uuid, expected!, String(cur[0].etag));
  }

  async deleteServiceResource(uuid: string, expectedEtag?: string): Promise<boolean> {
    requireId("uuid", uuid);
    const expected = expectedEtag === undefined ? undefined : requireText("expectedEtag", expectedEtag);
    const rows = await this.q(
      "deleting a service object",
      "DELETE FROM service_resources WHERE uuid = $1 AND ($2::text IS NULL OR etag = $2) RETURNING uuid",
      [uuid, expected ?? null],
    );
    if (rows.length) return true;
    if (expected === undefined) return false;
    const cur = await this.q("deleting a service object", "SELECT etag FROM service_resources WHERE uuid = $1", [uuid]);
    if (cur.length) throw etagConflict(uuid, expected, String(cur[0].etag));
    return false;
  }

  async listServiceResources(filter?: { type?: string; projectId?: string | null; afterUuid?: string; limit?: number }): Promise<ServiceResourceRecord[]> {
    const f = normaliseServiceListFilter(filter);
    const where: string[] = [];
    const params: unknown[] = [];
    const param = (v: unknown) => (params.push(v), `$${params.length}`);
    if (f.type !== undefined) where.push(`type = ${param(f.type)}`);
    if (f.projectId === null) where.push("project_id IS NULL");
    else if (f.projectId !== undefined) where.push(`project_id = ${param(f.projectId)}`);
    // uuid is COLLATE "C": byte order, as SQLite's BINARY.
    if (f.afterUuid !== undefined) where.push(`uuid > ${param(f.afterUuid)}`);
    const rows = await this.q(
      "listing service objects",
      `SELECT * FROM service_resources${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY uuid LIMIT ${param(f.limit)}`,
      params,
    );
    return rows.map((r) => serviceResourceFromRow(r, iso));
  }

  // ---- leases of nodes (issue 8) ----------------------------------------------------------------
  //
  // An insert locks the node's row (FOR UPDATE) before it looks for overlapping leases: inserts
  // for the same node queue on that lock, and under READ COMMITTED the next one's overlap query
  // (a new snapshot) sees the lease the previous one committed. A state change is one conditional
  // UPDATE: of two concurrent callers expecting the same state, the second re-evaluates the WHERE
  // on the first's row version and matches nothing.

  async insertLease(lease: LeaseInput): Promise<LeaseRecord> {
    const v = normaliseLease(lease);
    return this.tx("storing a lease", async (q) => {
      if (!(await this.nodeRow(q, v.nodeId, true))) throw new BaremetalError("not-found", `node ${v.nodeId} is not enrolled`, { property: "nodeId" });
      if ((await q("SELECT id FROM leases WHERE id = $1", [v.id])).length) throw leaseExists(v.id);
      const other = await q(
        "SELECT * FROM leases WHERE node_id = $1 AND state <> 'ended' AND start_time < $2::timestamptz AND $3::timestamptz < end_time ORDER BY start_time, id LIMIT 1",
        [v.nodeId, v.endTime, v.startTime],
      );
      if (other.length) throw leaseOverlap(v, leaseFromRow(other[0], iso));
      const rows = await q(
        "INSERT INTO leases (id, node_id, owner, lessee, start_time, end_time, state, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
        [v.id, v.nodeId, v.owner ?? null, v.lessee, v.startTime, v.endTime, v.state, v.createdAt],
      );
      return leaseFromRow(rows[0], iso);
    });
  }

  async getLease(id: string): Promise<LeaseRecord | undefined> {
    requireId("id", id);
    const rows = await this.q("reading a lease", "SELECT * FROM leases WHERE id = $1", [id]);
    return rows.length ? leaseFromRow(rows[0], iso) : undefined;
  }

  async listLeases(filter?: LeaseFilter): Promise<LeaseRecord[]> {
    const f = normaliseLeaseFilter(filter);
    const where: string[] = [];
    const params: unknown[] = [];
    const param = (v: unknown) => (params.push(v), `$${params.length}`);
    if (f.nodeId !== undefined) where.push(`node_id = ${param(f.nodeId)}`);
    if (f.states) where.push(`state = ANY(${param(f.states)}::text[])`);
    if (f.lessee !== undefined) where.push(`lessee = ${param(f.lessee)}`);
    if (f.owner !== undefined) where.push(`owner = ${param(f.owner)}`);
    if (f.dueAt !== undefined) {
      const at = param(f.dueAt);
      where.push(`((state = 'pending' AND start_time <= ${at}::timestamptz) OR (state = 'active' AND end_time <= ${at}::timestamptz) OR state = 'ending')`);
    }
    // id is COLLATE "C": byte order, as SQLite's BINARY.
    const rows = await this.q("listing leases", `SELECT * FROM leases${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY start_time, id`, params);
    return rows.map((r) => leaseFromRow(r, iso));
  }

  async changeLeaseState(id: string, from: readonly LeaseState[], to: LeaseState, detail?: { endedAt?: string; endReason?: string }): Promise<LeaseRecord | undefined> {
    requireId("id", id);
    const c = normaliseLeaseChange(from, to, detail);
    const rows = await this.q(
      "changing a lease's state",
      `UPDATE leases SET state = $1, ended_at = coalesce($2::timestamptz, ended_at), end_reason = coalesce($3::text, end_reason)
       WHERE id = $4 AND state = ANY($5::text[]) RETURNING *`,
      [c.to, c.endedAt ?? null, c.endReason ?? null, id, c.from],
    );
    if (rows.length) return leaseFromRow(rows[0], iso);
    if (!(await this.q("changing a lease's state", "SELECT id FROM leases WHERE id = $1", [id])).length) throw leaseNotFound(id);
    return undefined;
  }

  async close(): Promise<void> {
    const pool = this.pool;
    this.pool = undefined;
    if (pool) await pool.end();
  }
}
