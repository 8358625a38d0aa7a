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
 * - `not-found`: the node does not exist (or the pool, network, subnet or port a call refers to;
 *   `property` then names the reference);
 * - `conflict`: the change is refused in the current state (a stale `expectedVersion`, no node
 *   matches a claim, a lock held by someone else, removing a claimed node, an exhausted VLAN pool
 *   or subnet, a VLAN, address or switch port taken, deleting what is in use, a database whose
 *   schema is newer than this code);
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
  /** Keyset paging: only nodes after this (name, id) in the listing's order. */
  after?: { name: string; id: string };
  /** At most this many nodes (the first ones in the listing's order). */
  limit?: number;
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

// ---- tenant networks ------------------------------------------------------------------------

/** An inclusive range of VLAN ids (802.1Q: 1 to 4094). */
export interface VlanRange {
  from: number;
  to: number;
}

export interface VlanPoolInput {
  /** Unique in the inventory. */
  name: string;
  /** The layer-2 domain (a set of switches trunked together) whose VLAN ids the pool hands out. */
  fabric: string;
  /** Not overlapping; stored sorted by `from`. */
  ranges: VlanRange[];
}

export interface VlanPoolRecord {
  name: string;
  fabric: string;
  /** Sorted by `from`. */
  ranges: VlanRange[];
  /** How many VLAN ids the ranges hold. */
  size: number;
  /** How many of them networks of the fabric use (whichever way they got them), as of the read. */
  inUse: number;
  createdAt: string;
  updatedAt: string;
  version: number;
}

export interface VlanPoolFilter {
  fabric?: string;
}

export interface NetworkInput {
  /** The network resource's id. Creating again with the id of an existing, equal network returns it. */
  id: string;
  name: string;
  /** The project that owns the network. */
  owner: string;
  fabric: string;
  /**
   * The VLAN pool to take the VLAN from (it must belong to `fabric`). When omitted: the fabric's
   * only pool, or none when `vlan` is given.
   */
  pool?: string;
  /** A specific VLAN id (inside `pool` when a pool is named); else the pool's lowest free one. */
  vlan?: number;
}

export interface NetworkRecord {
  id: string;
  name: string;
  owner: string;
  fabric: string;
  /** The pool the VLAN was taken from; absent for a requested VLAN without a pool. */
  pool?: string;
  /** Unique per fabric. */
  vlan: number;
  createdAt: string;
  updatedAt: string;
  version: number;
}

export interface NetworkFilter {
  owner?: string;
  fabric?: string;
}

/** An inclusive range of addresses, as text. */
export interface AddressPool {
  start: string;
  end: string;
}

export interface SubnetInput {
  /** The subnet resource's id. Adding again with the id of an existing, equal subnet returns it. */
  id: string;
  networkId: string;
  /** `192.0.2.0/24` or `2001:db8::/64`: the IP version follows from it. Host bits must be zero. */
  cidr: string;
  /** Inside the subnet; never handed out. None when omitted. */
  gateway?: string;
  /**
   * Where `allocateAddress` picks from: inside the subnet, not overlapping. Default: the whole
   * subnet around the gateway (without the network and broadcast addresses for IPv4, the
   * subnet-router anycast address for IPv6). Those and the gateway are skipped even inside a pool.
   */
  allocationPools?: AddressPool[];
}

export interface SubnetRecord {
  id: string;
  networkId: string;
  /** Canonical (RFC 5952 for IPv6). */
  cidr: string;
  ipVersion: 4 | 6;
  gateway?: string;
  /** Canonical, sorted by start. */
  allocationPools: AddressPool[];
  createdAt: string;
  updatedAt: string;
  version: number;
}

export interface SubnetFilter {
  networkId?: string;
}

export interface AddressRequest {
  subnetId: string;
  /** Who holds the address (e.g. an attachment id). One address per owner and subnet. */
  owner: string;
  /** A specific address (inside the subnet, not reserved); else the lowest free one of the pools. */
  address?: string;
}

export interface AddressRecord {
  subnetId: string;
  /** Canonical. */
  address: string;
  ipVersion: 4 | 6;
  owner: string;
  /** Requested explicitly rather than picked from the pools. */
  static: boolean;
  createdAt: string;
}

/** A node's network interface and where it is cabled (Ironic's port with its local_link_connection). */
export interface PortInput {
  id: string;
  nodeId: string;
  /** The interface's MAC address; unique in the inventory. Stored lower case with colons. */
  mac: string;
  /** The switch the interface is cabled to (local_link_connection.switch_id). */
  switchId: string;
  /** The switch's port (local_link_connection.port_id); one node port per switch port. */
  switchPort: string;
  /** When set, the port may only join networks of this fabric (Ironic's physical_network). */
  physicalNetwork?: string;
}

export interface PortRecord {
  id: string;
  nodeId: string;
  mac: string;
  switchId: string;
  switchPort: string;
  physicalNetwork?: string;
  createdAt: string;
  updatedAt: string;
  version: number;
}

export interface PortFilter {
  nodeId?: string;
}

/** `access`: the port carries this one network untagged. `trunk`: tagged, with other networks. */
export type AttachmentMode = "access" | "trunk";

export interface AttachmentInput {
  /** The attachment resource's id. Attaching again with the id of an existing, equal attachment returns it. */
  id: string;
  portId: string;
  networkId: string;
  mode: AttachmentMode;
  /** Trunk only: this network is the port's untagged (native) VLAN. At most one per port. */
  native?: boolean;
}

/** An attachment with what a switch driver and a policy check need, read with it. */
export interface AttachmentRecord {
  id: string;
  portId: string;
  networkId: string;
  mode: AttachmentMode;
  native: boolean;
  /** The port's node, MAC, switch and switch port. */
  nodeId: string;
  mac: string;
  switchId: string;
  switchPort: string;
  /** The network's fabric, VLAN and owner (the project). */
  fabric: string;
  vlan: number;
  owner: string;
  createdAt: string;
}

export interface AttachmentFilter {
  networkId?: string;
  portId?: string;
  nodeId?: string;
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
   * Removes the node and its ports: true when it existed. A `conflict` while an allocation holds
   * it or one of its ports is attached to a network. Its lock,
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

  // ---- tenant networks ----------------------------------------------------------------------

  /**
   * Creates the VLAN pool or replaces its fabric and ranges (unchanged: the row and its version
   * stay). A `conflict` when the new ranges would drop VLANs that networks of the pool use, or
   * the fabric would change under them: both name the networks.
   */
  defineVlanPool(pool: VlanPoolInput): Promise<VlanPoolRecord>;
  getVlanPool(name: string): Promise<VlanPoolRecord | undefined>;
  /** Ordered by name (byte order). */
  listVlanPools(filter?: VlanPoolFilter): Promise<VlanPoolRecord[]>;
  /** True when it existed. A `conflict` while networks took their VLAN from it (named). */
  removeVlanPool(name: string): Promise<boolean>;

  /**
   * Creates a network with its VLAN: atomically the lowest VLAN of the pool that no network of
   * the fabric uses, or the requested one if free. Two creates, from any processes, never get the
   * same VLAN on a fabric. An exhausted pool is a `conflict` naming it and how many are in use; a
   * taken VLAN, one naming the network that has it.
   */
  createNetwork(network: NetworkInput): Promise<NetworkRecord>;
  getNetwork(id: string): Promise<NetworkRecord | undefined>;
  /** Ordered by name, then id (byte order). */
  listNetworks(filter?: NetworkFilter): Promise<NetworkRecord[]>;
  /**
   * Deletes the network and its subnets, returning its VLAN to the pool: true when it existed. A
   * `conflict` while ports are attached to it or addresses of its subnets are allocated (named).
   */
  deleteNetwork(id: string): Promise<boolean>;

  /**
   * Adds a subnet (IPv4 or IPv6) to a network: a `validation` for a malformed CIDR, a gateway or
   * pool outside it, overlapping pools, or an overlap with another subnet of the network.
   */
  addSubnet(subnet: SubnetInput): Promise<SubnetRecord>;
  getSubnet(id: string): Promise<SubnetRecord | undefined>;
  /** Ordered by id (byte order). */
  listSubnets(filter?: SubnetFilter): Promise<SubnetRecord[]>;
  /** True when it existed. A `conflict` while addresses of it are allocated (named). */
  removeSubnet(id: string): Promise<boolean>;

  /**
   * Atomically allocates an address of the subnet to `owner`: the lowest free address of the
   * allocation pools (never the gateway, the IPv4 network and broadcast addresses, the IPv6
   * subnet-router anycast address), or the requested one if free. The same owner asking again gets
   * its address back. Never hands out an address twice, across processes; an exhausted subnet is
   * a `conflict` naming it.
   */
  allocateAddress(request: AddressRequest): Promise<AddressRecord>;
  /** Frees the owner's address: true when it had one. */
  releaseAddress(subnetId: string, owner: string): Promise<boolean>;
  /** In address order; empty for an unknown subnet. */
  listAddresses(subnetId: string): Promise<AddressRecord[]>;

  /**
   * Records a node's port and where it is cabled (creates or replaces; unchanged: the row and its
   * version stay). A switch port and a MAC belong to one port only: a `conflict` names the other.
   * While attached, the port's node, switch, switch port and physical network cannot change.
   */
  upsertPort(port: PortInput): Promise<PortRecord>;
  getPort(id: string): Promise<PortRecord | undefined>;
  /** Ordered by id (byte order). */
  listPorts(filter?: PortFilter): Promise<PortRecord[]>;
  /** True when it existed. A `conflict` while attached (the networks named). */
  removePort(id: string): Promise<boolean>;

  /**
   * Puts a port into a network. An access port is in one network only (a `conflict` names the
   * network it is in); a trunk port in several, at most one of them native; a port is never mixed
   * access and trunk.
   */
  attach(attachment: AttachmentInput): Promise<AttachmentRecord>;
  /** True when it existed. */
  detach(id: string): Promise<boolean>;
  getAttachment(id: string): Promise<AttachmentRecord | undefined>;
  /** Every filter given must hold. Ordered by id (byte order). */
  listAttachments(filter?: AttachmentFilter): Promise<AttachmentRecord[]>;

  /** Stores a new API token (a `conflict` when its id exists). */
  insertToken(token: ApiTokenRecord): Promise<void>;
  getToken(id: string): Promise<ApiTokenRecord | undefined>;
  /** Sets `revokedAt` unless it is set already; false when there is no such token. */
  revokeToken(id: string, at: string): Promise<boolean>;
  /** Tokens of a project (every token when omitted), by creation time then id. */
  listTokens(projectId?: string): Promise<ApiTokenRecord[]>;

  /** Appends one record to the audit log; returns it with its sequence number. */
  appendAudit(entry: AuditInput): Promise<AuditRecord>;
  /** Audit records after `afterSeq` (default: from the start), oldest first, at most `limit` (default 100). */
  listAudit(filter?: { projectId?: string; afterSeq?: number; limit?: number }): Promise<AuditRecord[]>;

  // ---- objects the service manages for tenants (broker mode, issue 8) ----------------------------

  /** Stores a new service object; a `conflict` error when its uuid, (type, resourceId), (projectId, type, name) or idempotencyKey exists. */
  insertServiceResource(r: ServiceResourceRecord): Promise<void>;
  getServiceResource(uuid: string): Promise<ServiceResourceRecord | undefined>;
  /** The object of `type` with this resourceId, or (projectId, name), or idempotencyKey: give exactly one of resourceId, name (with projectId, which may be undefined for the operator) or idempotencyKey. */
  findServiceResource(type: string, by: { resourceId?: string; name?: string; projectId?: string; idempotencyKey?: string }): Promise<ServiceResourceRecord | undefined>;
  /** Replaces inputs/state/etag/partial/updatedAt; `not-found` when absent; a version conflict (the same error kind updates of nodes raise on a stale version: code `conflict`) when `expectedEtag` is given and differs. Returns the record as stored. */
  updateServiceResource(uuid: string, change: ServiceResourceChange, expectedEtag?: string): Promise<ServiceResourceRecord>;
  /** Deletes; false when absent; a conflict when `expectedEtag` is given and differs. */
  deleteServiceResource(uuid: string, expectedEtag?: string): Promise<boolean>;
  /** Objects ordered by uuid (byte order), after `afterUuid` when given, at most `limit` (default 100); filters all hold when given (projectId: null means the operator's objects, undefined means any project). */
  listServiceResources(filter?: { type?: string; projectId?: string | null; afterUuid?: string; limit?: number }): Promise<ServiceResourceRecord[]>;

  // ---- leases of nodes (issue 8, the ESI model) -----------------------------------------------

  /**
   * Stores a new lease (state `pending` unless given `active`). Atomic against other inserts for
   * the same node: a `conflict` (messageId `inventory.LeaseOverlap`, naming the other lease) when
   * its window [startTime, endTime) overlaps that of a lease of the node that has not ended, or
   * when its id exists; `not-found` (property `nodeId`) when the node is not enrolled.
   */
  insertLease(lease: LeaseInput): Promise<LeaseRecord>;
  getLease(id: string): Promise<LeaseRecord | undefined>;
  /** Every filter given must hold. Ordered by start time, then id (byte order). */
  listLeases(filter?: LeaseFilter): Promise<LeaseRecord[]>;
  /**
   * Moves the lease to `to` only if its state is one of `from`, in one statement: of two callers
   * making the same change at once exactly one gets the record back, the other `undefined`.
   * `endedAt` and `endReason` are set when given (kept otherwise). `not-found` when there is no
   * such lease.
   */
  changeLeaseState(id: string, from: readonly LeaseState[], to: LeaseState, detail?: { endedAt?: string; endReason?: string }): Promise<LeaseRecord | undefined>;

  /** Closes connections. Idempotent; other calls fail afterwards. */
  close(): Promise<void>;
}

/** An API token of the service (issue 8): the secret's SHA-256 only. */
export interface ApiTokenRecord {
  id: string;
  name: string;
  projectId?: string;
  roles: string[];
  createdAt: string;
  expiresAt?: string;
  revokedAt?: string;
  /** Hex SHA-256 of the secret. */
  secretHash: string;
  ratePerMinute: number;
}

/** One mutating call, as the audit log records it: who, what, when, outcome. */
export interface AuditInput {
  at: string;
  requestId: string;
  tokenId?: string;
  projectId?: string;
  /** The policy operation, e.g. `baremetal:node:deploy`. */
  operation: string;
  /** What it was done to (an id). */
  target?: string;
  /** `allowed`, `denied`, `failed`, `done`. */
  outcome: string;
  detail?: string;
}

export interface AuditRecord extends AuditInput {
  seq: number;
}

/**
 * An object the service manages for a tenant (broker mode, issue 8): a resource's handler state,
 * kept by the service.
 *
 * Text fields follow the inventory's rules (non-empty, no NUL; an empty optional one means unset).
 * `inputs` and `state` are plain JSON objects (stored with their keys sorted; `undefined` members
 * are dropped, strings must be well-formed Unicode). Times are ISO 8601, stored and returned in UTC
 * with milliseconds (`2026-11-23T00:00:00.000Z`).
 */
export interface ServiceResourceRecord {
  /** The API's id of the object (a UUID). */
  uuid: string;
  /** The resource token, e.g. `baremetal:storage:Volume`. */
  type: string;
  /** The project owning it (undefined: the operator's). */
  projectId?: string;
  /** Optional; unique per (projectId, type) when given. */
  name?: string;
  /** The handler's id of the object; unique per type. */
  resourceId: string;
  inputs: Record<string, unknown>;
  state: Record<string, unknown>;
  /** Changes on every write; what If-Match compares. */
  etag: string;
  /** The client's Idempotency-Key of the create (unique when given). */
  idempotencyKey?: string;
  /** True after a create that made the object but failed to finish configuring it. */
  partial: boolean;
  createdAt: string;
  updatedAt: string;
}

/** What `updateServiceResource` replaces (the rest of the record never changes). */
export interface ServiceResourceChange {
  /** A new handler id (a create's, once its handler returned); unchanged when omitted. */
  resourceId?: string;
  inputs: Record<string, unknown>;
  state: Record<string, unknown>;
  etag: string;
  partial: boolean;
  updatedAt: string;
}

/**
 * A lease of a node (issue 8, the MOC ESI model): its owner lends it to a lessee project for a
 * time window. `pending` until its start, `active` while the lessee holds it, `ending` while the
 * lessee's use of the node is torn down (retried until every step succeeds), then `ended`.
 */
export type LeaseState = "pending" | "active" | "ending" | "ended";

export const LEASE_STATES: readonly LeaseState[] = ["pending", "active", "ending", "ended"];

export interface LeaseInput {
  id: string;
  nodeId: string;
  /** The node's owner project when the lease was made (undefined: an ownerless node, leased by the operator). */
  owner?: string;
  lessee: string;
  /** ISO 8601 with a zone; stored in UTC with milliseconds. */
  startTime: string;
  /** After `startTime`. */
  endTime: string;
  /** Default `pending`; `active` for a lease that starts at once. */
  state?: "pending" | "active";
  /** Default: now. */
  createdAt?: string;
}

export interface LeaseRecord {
  id: string;
  nodeId: string;
  owner?: string;
  lessee: string;
  startTime: string;
  endTime: string;
  state: LeaseState;
  createdAt: string;
  /** When the lease reached `ended`. */
  endedAt?: string;
  /** Why it ended (`expired`, `deleted`, ...). */
  endReason?: string;
}

export interface LeaseFilter {
  nodeId?: string;
  /** One state or any of several. */
  state?: LeaseState | readonly LeaseState[];
  lessee?: string;
  owner?: string;
  /**
   * Only leases the reaper has to act on at this time (ISO 8601): `pending` ones whose start is
   * at or before it, `active` ones whose end is at or before it, and every `ending` one.
   */
  dueAt?: string;
}
