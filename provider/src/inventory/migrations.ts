/**
 * Versioned schema migrations of the inventory, one ordered list with the SQL of each dialect.
 *
 * - Versions are 1, 2, 3, ... without gaps; a migration is never edited once released (a change
 *   is a new migration), so `schema_migrations` tells exactly which SQL a database has seen.
 * - `schema_migrations (version, name, applied_at)` is created by the runner itself, not by a
 *   migration, so that the runner can always ask a database where it stands.
 * - On every open the runner takes the database's write lock (SQLite `BEGIN IMMEDIATE`,
 *   PostgreSQL a transaction-scoped advisory lock), reads the applied versions, applies the
 *   missing ones in order and records each, and commits once: several processes opening the same
 *   fresh database at once apply the schema exactly once, and a failed migration leaves nothing
 *   behind (DDL is transactional on both engines).
 * - A database whose versions the code does not know (newer code wrote it) is refused with a
 *   `conflict` that says to upgrade the provider: old code must not write rows whose meaning it
 *   does not know.
 *
 * Schema notes (v1):
 * - `nodes.allocation_id` is the claim itself, on the node row: claiming is an update of that row,
 *   so on PostgreSQL the row lock taken by `FOR UPDATE SKIP LOCKED` arbitrates between claims and
 *   the re-check of the claim's condition after waiting sees the competing claim (see postgres.ts).
 *   It is UNIQUE: one node per allocation.
 * - `allocations_one_active_per_node` (partial unique index) is the second guard: one active
 *   allocation per node, whatever the code does. Released allocations stay, for the record.
 * - `node_locks` is keyed by node id without a foreign key: a lock may be taken before the node is
 *   enrolled (create) and outlives its removal until released or expired. `token` is the fencing
 *   token of one acquisition (renew/release of a stale handle never touch a newer holder's lock).
 * - SQLite stores times as ISO 8601 text in UTC (they sort as text) and JSON as text; PostgreSQL
 *   uses timestamptz and jsonb.
 *
 * Schema notes (v3, the service of issue 8):
 * - `api_tokens` holds a token's SHA-256 (`secret_hash`), never its secret; `revoked_at` is set
 *   once and never cleared.
 * - `audit_log` is append-only: `seq` orders it (and pages it); rows are never updated.
 *
 * Schema notes (v4, the service's objects in broker mode, issue 8):
 * - `service_resources` holds what the service keeps of each object it manages for a tenant (a
 *   resource's inputs and handler state). The uniqueness rules live in the database, so several
 *   service instances sharing one PostgreSQL cannot both insert the same thing:
 *   `UNIQUE (type, resource_id)` (the handler's id, per resource type),
 *   `service_resources_name` on `(coalesce(project_id, ''), type, name) WHERE name IS NOT NULL`
 *   (a name once per project and type; the operator's objects, without project, form one scope:
 *   the code never stores an empty project id), and `service_resources_idempotency_key`
 *   (a client's Idempotency-Key once).
 * - `etag` is the token of optimistic concurrency: a conditional update or delete is one
 *   statement `... WHERE uuid = ? AND etag = ?`, never a read then a write.
 * - `uuid` is ordered byte-wise on both engines (PostgreSQL: `COLLATE "C"`): keyset pages by uuid.
 *
 * Schema notes (v2, tenant networks):
 * - `networks UNIQUE (fabric, vlan)`: a VLAN id is used once per fabric, whatever the code does.
 *   The choice of the lowest free VLAN is serialised per fabric (SQLite: the write lock;
 *   PostgreSQL: an advisory lock on the fabric), the constraint is the guard behind it.
 *   `networks.pool` records the pool the VLAN came from (what a pool change must respect).
 * - `ip_addresses PRIMARY KEY (subnet_id, address)`: an address once per subnet (addresses are
 *   canonical text, see ip.ts); `UNIQUE (subnet_id, owner)`: one address per owner and subnet,
 *   which makes a repeated allocation return the same address. Subnets of a network never
 *   overlap, so this is uniqueness per network. Allocation is serialised per subnet (PostgreSQL:
 *   the subnet row's lock).
 * - `ports UNIQUE (switch_id, switch_port)` and `UNIQUE (mac)`: a switch port, and a NIC, belong
 *   to one node port. Ports go with their node (ON DELETE CASCADE).
 * - `attachments UNIQUE (port_id, network_id)`, and partial unique indexes for one access
 *   attachment per port and one native network per port; the rest of the rule (an access port is
 *   in no other network) is checked under the port row's lock.
 * - Foreign keys without cascade (subnet -> network, address -> subnet, attachment -> port and
 *   network, network -> pool) refuse deleting what is in use, behind the checks that name it.
 */
import { BaremetalError } from "../core/errors";

export interface Migration {
  version: number;
  /** Short, stable description (recorded). */
  name: string;
  sqlite: string[];
  postgres: string[];
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "nodes, allocations, node locks",
    sqlite: [
      `CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT,
        lessee TEXT,
        resource_class TEXT,
        traits TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(traits) AND json_type(traits) = 'array'),
        properties TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(properties) AND json_type(properties) = 'object'),
        provision_state TEXT NOT NULL DEFAULT 'enroll',
        maintenance INTEGER NOT NULL DEFAULT 0 CHECK (maintenance IN (0, 1)),
        maintenance_reason TEXT,
        last_error TEXT,
        allocation_id TEXT UNIQUE,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1
      )`,
      `CREATE INDEX nodes_owner ON nodes (owner)`,
      `CREATE INDEX nodes_lessee ON nodes (lessee)`,
      `CREATE INDEX nodes_name ON nodes (name, id)`,
      `CREATE INDEX nodes_claimable ON nodes (resource_class) WHERE provision_state = 'available' AND maintenance = 0 AND allocation_id IS NULL`,
      `CREATE TABLE allocations (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT,
        project TEXT,
        node_id TEXT NOT NULL,
        resource_class TEXT,
        traits TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(traits)),
        candidate_nodes TEXT CHECK (candidate_nodes IS NULL OR json_valid(candidate_nodes)),
        state TEXT NOT NULL CHECK (state IN ('active', 'released')),
        created_at TEXT NOT NULL,
        released_at TEXT
      )`,
      `CREATE UNIQUE INDEX allocations_one_active_per_node ON allocations (node_id) WHERE state = 'active'`,
      `CREATE INDEX allocations_owner ON allocations (owner)`,
      `CREATE TABLE node_locks (
        node_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        operation TEXT NOT NULL,
        token TEXT NOT NULL,
        acquired_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
      )`,
    ],
    postgres: [
      `CREATE TABLE nodes (
        id text PRIMARY KEY,
        name text NOT NULL,
        owner text,
        lessee text,
        resource_class text,
        traits jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(traits) = 'array'),
        properties jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(properties) = 'object'),
        provision_state text NOT NULL DEFAULT 'enroll',
        maintenance boolean NOT NULL DEFAULT false,
        maintenance_reason text,
        last_error text,
        allocation_id text UNIQUE,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version integer NOT NULL DEFAULT 1
      )`,
      `CREATE INDEX nodes_owner ON nodes (owner)`,
      `CREATE INDEX nodes_lessee ON nodes (lessee)`,
      `CREATE INDEX nodes_name ON nodes (name COLLATE "C", id COLLATE "C")`,
      `CREATE INDEX nodes_claimable ON nodes (resource_class) WHERE provision_state = 'available' AND NOT maintenance AND allocation_id IS NULL`,
      `CREATE TABLE allocations (
        id text PRIMARY KEY,
        name text NOT NULL,
        owner text,
        project text,
        node_id text NOT NULL,
        resource_class text,
        traits jsonb NOT NULL DEFAULT '[]',
        candidate_nodes jsonb,
        state text NOT NULL CHECK (state IN ('active', 'released')),
        created_at timestamptz NOT NULL,
        released_at timestamptz
      )`,
      `CREATE UNIQUE INDEX allocations_one_active_per_node ON allocations (node_id) WHERE state = 'active'`,
      `CREATE INDEX allocations_owner ON allocations (owner)`,
      `CREATE TABLE node_locks (
        node_id text PRIMARY KEY,
        holder text NOT NULL,
        operation text NOT NULL,
        token text NOT NULL,
        acquired_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
      )`,
    ],
  },
  {
    version: 2,
    name: "tenant networks: VLAN pools, networks, subnets, IP addresses, switch ports, attachments",
    sqlite: [
      `CREATE TABLE vlan_pools (
        name TEXT PRIMARY KEY,
        fabric TEXT NOT NULL,
        ranges TEXT NOT NULL CHECK (json_valid(ranges) AND json_type(ranges) = 'array'),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1
      )`,
      `CREATE INDEX vlan_pools_fabric ON vlan_pools (fabric)`,
      `CREATE TABLE networks (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        fabric TEXT NOT NULL,
        pool TEXT REFERENCES vlan_pools (name),
        vlan INTEGER NOT NULL CHECK (vlan BETWEEN 1 AND 4094),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        UNIQUE (fabric, vlan)
      )`,
      `CREATE INDEX networks_owner ON networks (owner)`,
      `CREATE INDEX networks_pool ON networks (pool)`,
      `CREATE INDEX networks_name ON networks (name, id)`,
      `CREATE TABLE subnets (
        id TEXT PRIMARY KEY,
        network_id TEXT NOT NULL REFERENCES networks (id),
        cidr TEXT NOT NULL,
        ip_version INTEGER NOT NULL CHECK (ip_version IN (4, 6)),
        gateway TEXT,
        allocation_pools TEXT NOT NULL CHECK (json_valid(allocation_pools) AND json_type(allocation_pools) = 'array'),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1
      )`,
      `CREATE INDEX subnets_network ON subnets (network_id)`,
      `CREATE TABLE ip_addresses (
        subnet_id TEXT NOT NULL REFERENCES subnets (id),
        address TEXT NOT NULL,
        owner TEXT NOT NULL,
        static INTEGER NOT NULL DEFAULT 0 CHECK (static IN (0, 1)),
        created_at TEXT NOT NULL,
        PRIMARY KEY (subnet_id, address),
        UNIQUE (subnet_id, owner)
      )`,
      `CREATE TABLE ports (
        id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
        mac TEXT NOT NULL UNIQUE,
        switch_id TEXT NOT NULL,
        switch_port TEXT NOT NULL,
        physical_network TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        UNIQUE (switch_id, switch_port)
      )`,
      `CREATE INDEX ports_node ON ports (node_id)`,
      `CREATE TABLE attachments (
        id TEXT PRIMARY KEY,
        port_id TEXT NOT NULL REFERENCES ports (id),
        network_id TEXT NOT NULL REFERENCES networks (id),
        mode TEXT NOT NULL CHECK (mode IN ('access', 'trunk')),
        native INTEGER NOT NULL DEFAULT 0 CHECK (native IN (0, 1)),
        created_at TEXT NOT NULL,
        UNIQUE (port_id, network_id),
        CHECK (mode = 'trunk' OR native = 0)
      )`,
      `CREATE UNIQUE INDEX attachments_one_access_per_port ON attachments (port_id) WHERE mode = 'access'`,
      `CREATE UNIQUE INDEX attachments_one_native_per_port ON attachments (port_id) WHERE native = 1`,
      `CREATE INDEX attachments_network ON attachments (network_id)`,
    ],
    postgres: [
      `CREATE TABLE vlan_pools (
        name text PRIMARY KEY,
        fabric text NOT NULL,
        ranges jsonb NOT NULL CHECK (jsonb_typeof(ranges) = 'array'),
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version integer NOT NULL DEFAULT 1
      )`,
      `CREATE INDEX vlan_pools_fabric ON vlan_pools (fabric)`,
      `CREATE TABLE networks (
        id text PRIMARY KEY,
        name text NOT NULL,
        owner text NOT NULL,
        fabric text NOT NULL,
        pool text REFERENCES vlan_pools (name),
        vlan integer NOT NULL CHECK (vlan BETWEEN 1 AND 4094),
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version integer NOT NULL DEFAULT 1,
        UNIQUE (fabric, vlan)
      )`,
      `CREATE INDEX networks_owner ON networks (owner)`,
      `CREATE INDEX networks_pool ON networks (pool)`,
      `CREATE INDEX networks_name ON networks (name COLLATE "C", id COLLATE "C")`,
      `CREATE TABLE subnets (
        id text PRIMARY KEY,
        network_id text NOT NULL REFERENCES networks (id),
        cidr text NOT NULL,
        ip_version integer NOT NULL CHECK (ip_version IN (4, 6)),
        gateway text,
        allocation_pools jsonb NOT NULL CHECK (jsonb_typeof(allocation_pools) = 'array'),
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version integer NOT NULL DEFAULT 1
      )`,
      `CREATE INDEX subnets_network ON subnets (network_id)`,
      `CREATE TABLE ip_addresses (
        subnet_id text NOT NULL REFERENCES subnets (id),
        address text NOT NULL,
        owner text NOT NULL,
        static boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL,
        PRIMARY KEY (subnet_id, address),
        UNIQUE (subnet_id, owner)
      )`,
      `CREATE TABLE ports (
        id text PRIMARY KEY,
        node_id text NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
        mac text NOT NULL UNIQUE,
        switch_id text NOT NULL,
        switch_port text NOT NULL,
        physical_network text,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        version integer NOT NULL DEFAULT 1,
        UNIQUE (switch_id, switch_port)
      )`,
      `CREATE INDEX ports_node ON ports (node_id)`,
      `CREATE TABLE attachments (
        id text PRIMARY KEY,
        port_id text NOT NULL REFERENCES ports (id),
        network_id text NOT NULL REFERENCES networks (id),
        mode text NOT NULL CHECK (mode IN ('access', 'trunk')),
        native boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL,
        UNIQUE (port_id, network_id),
        CHECK (mode = 'trunk' OR NOT native)
      )`,
      `CREATE UNIQUE INDEX attachments_one_access_per_port ON attachments (port_id) WHERE mode = 'access'`,
      `CREATE UNIQUE INDEX attachments_one_native_per_port ON attachments (port_id) WHERE native`,
      `CREATE INDEX attachments_network ON attachments (network_id)`,
    ],
  },
  {
    version: 3,
    name: "service: api tokens, audit log",
    sqlite: [
      `CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        project_id TEXT,
        roles TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT,
        secret_hash TEXT NOT NULL,
        rate_per_minute INTEGER NOT NULL CHECK (rate_per_minute > 0)
      )`,
      `CREATE INDEX api_tokens_project ON api_tokens (project_id)`,
      `CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        request_id TEXT NOT NULL,
        token_id TEXT,
        project_id TEXT,
        operation TEXT NOT NULL,
        target TEXT,
        outcome TEXT NOT NULL,
        detail TEXT
      )`,
      `CREATE INDEX audit_log_project ON audit_log (project_id, seq)`,
    ],
    postgres: [
      `CREATE TABLE api_tokens (
        id text PRIMARY KEY,
        name text NOT NULL,
        project_id text,
        roles jsonb NOT NULL,
        created_at timestamptz NOT NULL,
        expires_at timestamptz,
        revoked_at timestamptz,
        secret_hash text NOT NULL,
        rate_per_minute integer NOT NULL CHECK (rate_per_minute > 0)
      )`,
      `CREATE INDEX api_tokens_project ON api_tokens (project_id)`,
      `CREATE TABLE audit_log (
        seq bigserial PRIMARY KEY,
        at timestamptz NOT NULL,
        request_id text NOT NULL,
        token_id text,
        project_id text,
        operation text NOT NULL,
        target text,
        outcome text NOT NULL,
        detail text
      )`,
      `CREATE INDEX audit_log_project ON audit_log (project_id, seq)`,
    ],
  },
  {
    version: 4,
    name: "service: objects managed for tenants (broker mode)",
    sqlite: [
      `CREATE TABLE service_resources (
        uuid TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        project_id TEXT,
        name TEXT,
        resource_id TEXT NOT NULL,
        inputs TEXT NOT NULL CHECK (json_valid(inputs) AND json_type(inputs) = 'object'),
        state TEXT NOT NULL CHECK (json_valid(state) AND json_type(state) = 'object'),
        etag TEXT NOT NULL,
        idempotency_key TEXT,
        partial INTEGER NOT NULL DEFAULT 0 CHECK (partial IN (0, 1)),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (type, resource_id)
      )`,
      `CREATE UNIQUE INDEX service_resources_name ON service_resources (coalesce(project_id, ''), type, name) WHERE name IS NOT NULL`,
      `CREATE UNIQUE INDEX service_resources_idempotency_key ON service_resources (idempotency_key) WHERE idempotency_key IS NOT NULL`,
      `CREATE INDEX service_resources_project ON service_resources (project_id, uuid)`,
      `CREATE INDEX service_resources_type ON service_resources (type, uuid)`,
    ],
    postgres: [
      `CREATE TABLE service_resources (
        uuid text COLLATE "C" PRIMARY KEY,
        type text NOT NULL,
        project_id text,
        name text,
        resource_id text NOT NULL,
        inputs jsonb NOT NULL CHECK (jsonb_typeof(inputs) = 'object'),
        state jsonb NOT NULL CHECK (jsonb_typeof(state) = 'object'),
        etag text NOT NULL,
        idempotency_key text,
        partial boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        UNIQUE (type, resource_id)
      )`,
      `CREATE UNIQUE INDEX service_resources_name ON service_resources (coalesce(project_id, ''), type, name) WHERE name IS NOT NULL`,
      `CREATE UNIQUE INDEX service_resources_idempotency_key ON service_resources (idempotency_key) WHERE idempotency_key IS NOT NULL`,
      `CREATE INDEX service_resources_project ON service_resources (project_id, uuid)`,
      `CREATE INDEX service_resources_type ON service_resources (type, uuid)`,
    ],
  },
  {
    version: 5,
    name: "service: leases of nodes (owner -> lessee for a time window)",
    sqlite: [
      `CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        owner TEXT,
        lessee TEXT NOT NULL,
        start_time TEXT NOT NULL,
        end_time TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'ending', 'ended')),
        created_at TEXT NOT NULL,
        ended_at TEXT,
        end_reason TEXT,
        CHECK (end_time > start_time)
      )`,
      `CREATE INDEX leases_node ON leases (node_id, state)`,
      `CREATE INDEX leases_state_end ON leases (state, end_time)`,
    ],
    postgres: [
      `CREATE TABLE leases (
        id text COLLATE "C" PRIMARY KEY,
        node_id text NOT NULL,
        owner text,
        lessee text NOT NULL,
        start_time timestamptz NOT NULL,
        end_time timestamptz NOT NULL,
        state text NOT NULL CHECK (state IN ('pending', 'active', 'ending', 'ended')),
        created_at timestamptz NOT NULL,
        ended_at timestamptz,
        end_reason text,
        CHECK (end_time > start_time)
      )`,
      `CREATE INDEX leases_node ON leases (node_id, state)`,
      `CREATE INDEX leases_state_end ON leases (state, end_time)`,
    ],
  },
];

/** The schema version this code writes. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

/** Refuses a malformed list (a bug of ours): versions must be 1..n in order. */
export function checkMigrationList(list: readonly Migration[]): void {
  list.forEach((m, i) => {
    if (m.version !== i + 1) {
      throw new BaremetalError("internal", `inventory migration #${i} has version ${m.version}, expected ${i + 1}`);
    }
  });
}

/**
 * The migrations still to apply to a database that recorded `applied`, or a `conflict` when the
 * database was written by newer code (or by different code: a version this list lacks).
 */
export function pendingMigrations(applied: number[], list: readonly Migration[], where: string): Migration[] {
  checkMigrationList(list);
  const latest = list.length ? list[list.length - 1].version : 0;
  const known = new Set(list.map((m) => m.version));
  const newest = applied.length ? Math.max(...applied) : 0;
  if (newest > latest || applied.some((v) => !known.has(v))) {
    throw new BaremetalError(
      "conflict",
      `the inventory database (${where}) has schema version ${newest}, newer than this provider knows (${latest}): ` +
        "upgrade pulumi-resource-baremetal on every machine that uses this inventory, or point this one at another inventory",
      { messageId: "inventory.SchemaTooNew", details: [`applied versions: ${[...applied].sort((a, b) => a - b).join(", ")}`] },
    );
  }
  const done = new Set(applied);
  return list.filter((m) => !done.has(m.version));
}
