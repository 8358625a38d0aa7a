/**
 * The inventory: the one source of truth about enrolled nodes, their claims (allocations) and
 * per-node operation locks, shared by every stack (every concurrent `pulumi up`, each its own
 * provider process).
 *
 * Resources talk to the `Inventory` interface only, never to SQL: the embedded SQLite backend
 * (one operator, the lab), the PostgreSQL backend (teams) and a later `HttpInventory` (a
 * tenant-facing API owning the database) are interchangeable behind it. That is why every method
 * is asynchronous, takes and returns plain JSON-able records, and reports failures only as
 * `BaremetalError`s:
 *
 * - `validation`: a malformed argument (`property` names it);
 * - `not-found`: the node does not exist;
 * - `conflict`: the change is refused in the current state (a stale `expectedVersion`, no node
 *   matches a claim, a lock held by someone else, removing a claimed node, a database whose schema
 *   is newer than this code);
 * - `transient`: the database was busy or unreachable; retrying is safe;
 * - `backend`: the database reported anything else.
 */

/** The provision state in which a node can be claimed (Ironic's name for it). */
export const AVAILABLE = "available";

/** The provision state of a node enrolled without one (Ironic's first state). */
export const ENROLL = "enroll";

export interface NodeRecord {
  /** The node resource's id: its Redfish system URI. */
  id: string;
  name: string;
  /** The project that owns the machine (Ironic's `owner`). */
  owner?: string;
  /** The project the machine is leased to (Ironic's `lessee`). */
  lessee?: string;
  resourceClass?: string;
  /** Sorted, without duplicates. */
  traits: string[];
  properties: Record<string, unknown>;
  provisionState: string;
  maintenance: boolean;
  maintenanceReason?: string;
  lastError?: string;
  /** The active allocation holding the node, if any. */
  allocationId?: string;
  /** ISO 8601 (UTC). */
  createdAt: string;
  updatedAt: string;
  /** Incremented by every change of the row: the token of optimistic concurrency. */
  version: number;
}

/** What a node resource declares; the operational fields are optional (see `upsertNode`). */
export interface NodeInput {
  id: string;
  name: string;
  owner?: string;
  lessee?: string;
  resourceClass?: string;
  traits?: string[];
  properties?: Record<string, unknown>;
  /** For a new node: default `enroll`. For an existing one: unchanged when omitted. */
  provisionState?: string;
  /** Unchanged when omitted (new nodes: false). */
  maintenance?: boolean;
  maintenanceReason?: string;
}

export interface WriteOptions {
  /**
   * Optimistic concurrency: the version the caller read. The write is refused with a `conflict`
   * when the row changed since. `0` means "the node must not exist yet" (create only).
   */
  expectedVersion?: number;
}

export interface NodeFilter {
  owner?: string;
  lessee?: string;
  /** Nodes this project may see: it is their owner or their lessee. */
  visibleTo?: string;
  provisionState?: string;
  resourceClass?: string;
}

export interface ClaimRequest {
  /** The allocation resource's id; claiming again with the id of an active allocation returns it. */
  allocationId: string;
  /** The allocation's name; it also seeds the choice among matching nodes (see `claimNode`). */
  name: string;
  /** Recorded as the allocation's owner (defaults to `project`). It does not restrict the choice. */
  owner?: string;
  /** Only nodes whose owner or lessee is this project. */
  project?: string;
  resourceClass?: string;
  /** Every one of these traits is required. */
  traits?: string[];
  /** Only these node ids. */
  candidates?: string[];
}

export type AllocationState = "active" | "released";

export interface AllocationRecord {
  id: string;
  name: string;
  owner?: string;
  /** The restriction the claim was made with (`ClaimRequest.project`). */
  project?: string;
  /** The claimed node; kept after release, for the record. */
  nodeId: string;
  resourceClass?: string;
  traits: string[];
  candidateNodes?: string[];
  state: AllocationState;
  createdAt: string;
  releasedAt?: string;
}

export interface Claim {
  node: NodeRecord;
  allocation: AllocationRecord;
}

export interface AllocationFilter {
  owner?: string;
  state?: AllocationState;
  nodeId?: string;
}

export interface LockInfo {
  nodeId: string;
  holder: string;
  operation: string;
  acquiredAt: string;
  expiresAt: string;
  /** The lease ran out: anybody may take the lock. */
  expired: boolean;
}

/** A held per-node lock. `renew` and `release` act only on this acquisition (a fencing token). */
export interface LockHandle {
  readonly nodeId: string;
  readonly holder: string;
  readonly operation: string;
  /** When the lease runs out (ISO 8601), as of the last acquire or renew. */
  readonly expiresAt: string;
  /**
   * Extends the lease to `leaseSeconds` (default: the acquire's) from now. A `conflict` when the
   * lease already ran out or the lock was taken over: the operation must stop.
   */
  renew(leaseSeconds?: number): Promise<void>;
  /** Frees the lock if this acquisition still holds it; never fails because it does not. */
  release(): Promise<void>;
}

export interface Inventory {
  /** `sqlite` or `postgres` (or `http` later): for messages and diagnostics. */
  readonly kind: string;

  /**
   * Creates the node or replaces its declared fields (name, owner, lessee, resource class,
   * traits, properties). `provisionState`, `maintenance` and `maintenanceReason` change only when
   * given; `lastError` and the claim are never touched here.
   */
  upsertNode(node: NodeInput, options?: WriteOptions): Promise<NodeRecord>;
  getNode(id: string): Promise<NodeRecord | undefined>;
  /** Every filter given must hold. Ordered by name, then id (byte order). */
  listNodes(filter?: NodeFilter): Promise<NodeRecord[]>;
  /**
   * Removes the node: true when it existed. A `conflict` while an allocation holds it. Its lock,
   * if any, is left to run out (a lock names a node id, not a row: see `acquireLock`).
   */
  removeNode(id: string, options?: WriteOptions): Promise<boolean>;
  /** Sets the provision state and `lastError` (cleared when omitted). */
  setProvisionState(id: string, state: string, lastError?: string, expectedVersion?: number): Promise<NodeRecord>;
  setMaintenance(id: string, maintenance: boolean, reason?: string, expectedVersion?: number): Promise<NodeRecord>;

  /**
   * Atomically claims one available node (provision state `available`, not in maintenance, not
   * claimed) matching every restriction of the request, or fails with a `conflict` whose message
   * and `details` say why no node matches. Two claims, from any processes, never get the same node.
   *
   * Among the matching nodes the one with the highest rendezvous hash of (allocation name, node id)
   * wins (`rankNodes`): deterministic for a given pool and name (a re-created allocation of the same
   * name gets the same machine back while it is free), spread evenly over the pool across names (so
   * concurrent claims rarely contend for the same row), and unaffected by other nodes joining or
   * leaving the pool.
   */
  claimNode(request: ClaimRequest): Promise<Claim>;
  /** Returns the allocation's node to the pool; the released allocation, or undefined when none was active. */
  releaseClaim(allocationId: string): Promise<AllocationRecord | undefined>;
  getAllocation(allocationId: string): Promise<AllocationRecord | undefined>;
  listAllocations(filter?: AllocationFilter): Promise<AllocationRecord[]>;

  /**
   * Takes the operation lock of a node id (the node need not be enrolled yet) for `leaseSeconds`:
   * succeeds when the lock is free or its lease ran out, else a `conflict` naming the holder, its
   * operation and the lease's end. Not re-entrant: the same holder asking again is refused too.
   * A crashed run never holds a node longer than its lease. Times are the database's clock.
   */
  acquireLock(nodeId: string, holder: string, operation: string, leaseSeconds: number): Promise<LockHandle>;
  getLock(nodeId: string): Promise<LockInfo | undefined>;

  /** Closes connections. Idempotent; other calls fail afterwards. */
  close(): Promise<void>;
}
