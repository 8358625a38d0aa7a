/**
 * What both SQL backends share about tenant networks: validation and normalisation of VLAN pools,
 * networks, subnets, address requests, ports and attachments; the choice of a VLAN and of an
 * address (the lowest free one); the rules of attaching a port; and the `conflict`s that name
 * what is in the way.
 *
 * The backends only read the rows these functions need and write what they decide, under their
 * own arbitration (SQLite: the database's write lock; PostgreSQL: a per-fabric advisory lock for
 * VLANs and row locks for subnets, networks and ports, see postgres.ts). Keeping the decisions
 * here is what makes both backends pick the same VLAN and the same address.
 */
import { BaremetalError } from "../core/errors";
import { byteOrder, optionalText, requireId, requireText } from "./common";
import {
  canonicalIp,
  Cidr,
  compareBig,
  countInPools,
  formatIp,
  inCidr,
  Ip,
  IpRange,
  lowestFree,
  overlaps,
  parseCidr,
  parseIp,
  rangeSize,
} from "./ip";
import {
  AddressPool,
  AddressRequest,
  AttachmentFilter,
  AttachmentInput,
  AttachmentMode,
  AttachmentRecord,
  NetworkInput,
  NetworkRecord,
  PortInput,
  PortRecord,
  SubnetInput,
  SubnetRecord,
  VlanPoolInput,
  VlanPoolRecord,
  VlanRange,
} from "./types";

/** 802.1Q: 0 means "no VLAN" and 4095 is reserved. */
export const MIN_VLAN = 1;
export const MAX_VLAN = 4094;
const MAX_ALLOCATION_POOLS = 256;

/** `messageId`s of the network conflicts, for callers that must tell them apart. */
export const VLAN_POOL_EXHAUSTED = "inventory.VlanPoolExhausted";
export const SUBNET_EXHAUSTED = "inventory.SubnetExhausted";
export const VLAN_IN_USE = "inventory.VlanInUse";
export const ADDRESS_IN_USE = "inventory.AddressInUse";
export const SWITCH_PORT_IN_USE = "inventory.SwitchPortInUse";
export const MAC_IN_USE = "inventory.MacInUse";
export const PORT_ATTACHED = "inventory.PortAttached";
export const IN_USE = "inventory.InUse";
export const ID_IN_USE = "inventory.IdInUse";

function bad(property: string, message: string): BaremetalError {
  return new BaremetalError("validation", message, { property });
}

function plural(n: number | bigint, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 || n === 1n ? one : many}`;
}

/** "a, b, c and 4 more": names in a message without flooding it. */
export function someOf(items: readonly string[], max = 10): string {
  if (items.length <= max) return items.join(", ");
  return `${items.slice(0, max).join(", ")} and ${items.length - max} more`;
}

const q = (s: string) => JSON.stringify(s);

/** A `not-found` for a record a call refers to (`property` names the reference). */
export function notFound(what: string, id: string, property: string): BaremetalError {
  return new BaremetalError("not-found", `${what} ${q(id)} does not exist in the inventory`, { property });
}

// ---- VLAN pools ---------------------------------------------------------------------------

export function requireVlan(property: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < MIN_VLAN || v > MAX_VLAN) {
    throw bad(property, `${property} must be a VLAN id, a whole number from ${MIN_VLAN} to ${MAX_VLAN}, got ${JSON.stringify(v)}`);
  }
  return v;
}

export interface VlanPoolValues {
  name: string;
  fabric: string;
  ranges: VlanRange[];
}

export function normaliseVlanPool(p: VlanPoolInput): VlanPoolValues {
  if (p === null || typeof p !== "object") throw bad("pool", "the VLAN pool must be an object");
  const name = requireText("name", p.name);
  const fabric = requireText("fabric", p.fabric);
  if (!Array.isArray(p.ranges) || p.ranges.length === 0) throw bad("ranges", "ranges must be a non-empty list of {from, to} VLAN ranges");
  if (p.ranges.length > MAX_VLAN) throw bad("ranges", `ranges may hold at most ${MAX_VLAN} ranges`);
  const ranges = p.ranges.map((r, i) => {
    if (r === null || typeof r !== "object") throw bad(`ranges[${i}]`, `ranges[${i}] must be an object {from, to}`);
    const from = requireVlan(`ranges[${i}].from`, r.from);
    const to = requireVlan(`ranges[${i}].to`, r.to);
    if (from > to) throw bad(`ranges[${i}]`, `ranges[${i}]: from (${from}) must not be above to (${to})`);
    return { i, from, to };
  });
  ranges.sort((a, b) => a.from - b.from || a.to - b.to);
  for (let k = 1; k < ranges.length; k++) {
    const [a, b] = [ranges[k - 1], ranges[k]];
    if (b.from <= a.to) {
      throw bad(`ranges[${b.i}]`, `ranges[${b.i}] (${describeRange(b)}) overlaps ranges[${a.i}] (${describeRange(a)})`);
    }
  }
  return { name, fabric, ranges: ranges.map(({ from, to }) => ({ from, to })) };
}

function describeRange(r: VlanRange): string {
  return r.from === r.to ? String(r.from) : `${r.from}-${r.to}`;
}

export function describeRanges(ranges: readonly VlanRange[]): string {
  return ranges.map(describeRange).join(", ");
}

export function vlanCount(ranges: readonly VlanRange[]): number {
  return ranges.reduce((n, r) => n + r.to - r.from + 1, 0);
}

export function inVlanRanges(ranges: readonly VlanRange[], vlan: number): boolean {
  return ranges.some((r) => vlan >= r.from && vlan <= r.to);
}

/** The lowest VLAN of the ranges (sorted) not in `used`. */
export function lowestFreeVlan(ranges: readonly VlanRange[], used: ReadonlySet<number>): number | undefined {
  for (const r of ranges) for (let v = r.from; v <= r.to; v++) if (!used.has(v)) return v;
  return undefined;
}

export function rangesJson(ranges: readonly VlanRange[]): string {
  return JSON.stringify(ranges.map((r) => ({ from: r.from, to: r.to })));
}

/** A pool record from its columns and the VLANs of its fabric in use. */
export function vlanPoolRecord(
  row: { name: string; fabric: string; ranges: VlanRange[]; createdAt: string; updatedAt: string; version: number },
  usedOnFabric: Iterable<number>,
): VlanPoolRecord {
  let inUse = 0;
  for (const v of new Set(usedOnFabric)) if (inVlanRanges(row.ranges, v)) inUse++;
  return {
    name: row.name,
    fabric: row.fabric,
    ranges: row.ranges.map((r) => ({ from: r.from, to: r.to })),
    size: vlanCount(row.ranges),
    inUse,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
    version: row.version,
  };
}

/** A network as far as a pool change is concerned. */
export interface PoolMember {
  id: string;
  fabric: string;
  vlan: number;
}

/**
 * The `conflict` of a pool change that would take VLANs away from its networks (or move them to
 * another fabric), or undefined when the change is fine.
 */
export function poolChangeConflict(cur: { name: string; fabric: string }, next: VlanPoolValues, members: readonly PoolMember[]): BaremetalError | undefined {
  const sorted = [...members].sort((a, b) => a.vlan - b.vlan || byteOrder(a.id, b.id));
  if (next.fabric !== cur.fabric && sorted.length) {
    return new BaremetalError(
      "conflict",
      `VLAN pool ${q(cur.name)} cannot move from fabric ${q(cur.fabric)} to ${q(next.fabric)}: ` +
        `${plural(sorted.length, "network")} of fabric ${q(cur.fabric)} took their VLAN from it (${someOf(sorted.map((m) => `VLAN ${m.vlan}: network ${q(m.id)}`))}); delete them first`,
      { messageId: IN_USE, property: "fabric" },
    );
  }
  const dropped = sorted.filter((m) => !inVlanRanges(next.ranges, m.vlan));
  if (dropped.length) {
    return new BaremetalError(
      "conflict",
      `VLAN pool ${q(cur.name)} cannot shrink to ${describeRanges(next.ranges)}: ` +
        `${plural(dropped.length, "VLAN")} outside the new ranges ${dropped.length === 1 ? "is" : "are"} in use (${someOf(dropped.map((m) => `VLAN ${m.vlan}: network ${q(m.id)}`))}); ` +
        "delete those networks first or keep their VLANs in the pool",
      { messageId: IN_USE, property: "ranges", details: dropped.map((m) => `VLAN ${m.vlan}: network ${m.id}`) },
    );
  }
  return undefined;
}

export function poolInUse(name: string, members: readonly PoolMember[]): BaremetalError {
  const sorted = [...members].sort((a, b) => a.vlan - b.vlan || byteOrder(a.id, b.id));
  return new BaremetalError(
    "conflict",
    `VLAN pool ${q(name)} is in use by ${plural(sorted.length, "network")} (${someOf(sorted.map((m) => `VLAN ${m.vlan}: network ${q(m.id)}`))}); delete them first`,
    { messageId: IN_USE },
  );
}

// ---- networks -----------------------------------------------------------------------------

export interface NetworkValues {
  id: string;
  name: string;
  owner: string;
  fabric: string;
  pool?: string;
  vlan?: number;
}

export function normaliseNetwork(n: NetworkInput): NetworkValues {
  if (n === null || typeof n !== "object") throw bad("network", "the network must be an object");
  return {
    id: requireId("id", n.id),
    name: requireText("name", n.name),
    owner: requireText("owner", n.owner),
    fabric: requireText("fabric", n.fabric),
    pool: optionalText("pool", n.pool),
    vlan: n.vlan === undefined || n.vlan === null ? undefined : requireVlan("vlan", n.vlan),
  };
}

/**
 * A create with the id of an existing network: the same network again (a retried create) returns
 * it; anything else is a `conflict`.
 */
export function existingNetwork(cur: NetworkRecord, v: NetworkValues): NetworkRecord {
  const diffs: string[] = [];
  if (cur.name !== v.name) diffs.push(`name ${q(cur.name)}`);
  if (cur.owner !== v.owner) diffs.push(`owner ${q(cur.owner)}`);
  if (cur.fabric !== v.fabric) diffs.push(`fabric ${q(cur.fabric)}`);
  if (v.pool !== undefined && cur.pool !== v.pool) diffs.push(cur.pool === undefined ? "no pool" : `pool ${q(cur.pool)}`);
  if (v.vlan !== undefined && cur.vlan !== v.vlan) diffs.push(`VLAN ${cur.vlan}`);
  if (!diffs.length) return cur;
  return idInUse("network", cur.id, diffs);
}

function idInUse(what: string, id: string, diffs: string[]): never {
  throw new BaremetalError("conflict", `${what} ${q(id)} already exists with ${diffs.join(", ")}; delete it first or use another id`, {
    messageId: ID_IN_USE,
    property: "id",
  });
}

/**
 * Which pool a create takes its VLAN from: the named one (`named`, read by the backend; it must
 * exist and belong to the fabric), else the fabric's only pool when no VLAN is requested, else
 * none.
 */
export function resolvePool(v: NetworkValues, named: VlanPoolRecord | undefined, fabricPools: readonly VlanPoolRecord[]): VlanPoolRecord | undefined {
  if (v.pool !== undefined) {
    if (!named) throw new BaremetalError("not-found", `VLAN pool ${q(v.pool)} does not exist; define it first`, { property: "pool" });
    if (named.fabric !== v.fabric) {
      throw bad("pool", `VLAN pool ${q(named.name)} belongs to fabric ${q(named.fabric)}, not to the network's fabric ${q(v.fabric)}`);
    }
    if (v.vlan !== undefined && !inVlanRanges(named.ranges, v.vlan)) {
      throw bad("vlan", `VLAN ${v.vlan} is not in VLAN pool ${q(named.name)} (${describeRanges(named.ranges)})`);
    }
    return named;
  }
  if (v.vlan !== undefined) return undefined;
  if (fabricPools.length === 1) return fabricPools[0];
  if (fabricPools.length === 0) {
    throw bad("pool", `fabric ${q(v.fabric)} has no VLAN pool: define one (defineVlanPool) or request a vlan`);
  }
  throw bad("pool", `fabric ${q(v.fabric)} has ${fabricPools.length} VLAN pools (${someOf(fabricPools.map((p) => q(p.name)))}): name one`);
}

/**
 * The VLAN of a new network: the requested one if no network of the fabric has it, else the
 * pool's lowest free one. `used` maps the fabric's VLANs in use to their network ids.
 */
export function chooseVlan(v: NetworkValues, pool: VlanPoolRecord | undefined, used: ReadonlyMap<number, string>): number {
  if (v.vlan !== undefined) {
    const holder = used.get(v.vlan);
    if (holder !== undefined) {
      throw new BaremetalError("conflict", `VLAN ${v.vlan} of fabric ${q(v.fabric)} is already used by network ${q(holder)}`, {
        messageId: VLAN_IN_USE,
        property: "vlan",
      });
    }
    return v.vlan;
  }
  const chosen = lowestFreeVlan(pool!.ranges, new Set(used.keys()));
  if (chosen !== undefined) return chosen;
  const size = vlanCount(pool!.ranges);
  let inUse = 0;
  for (const vlan of used.keys()) if (inVlanRanges(pool!.ranges, vlan)) inUse++;
  throw new BaremetalError(
    "conflict",
    `VLAN pool ${q(pool!.name)} (fabric ${q(pool!.fabric)}, VLANs ${describeRanges(pool!.ranges)}) is exhausted: ` +
      `${inUse} of its ${plural(size, "VLAN")} ${inUse === 1 ? "is" : "are"} in use; enlarge the pool or delete networks that are no longer needed`,
    { messageId: VLAN_POOL_EXHAUSTED, details: [`pool size: ${size}`, `in use: ${inUse}`] },
  );
}

/** The `conflict` of deleting a network that is still used. */
export function networkInUse(id: string, attachments: readonly { id: string; portId: string }[], addresses: readonly { subnetId: string; address: string; owner: string }[]): BaremetalError {
  const parts: string[] = [];
  if (attachments.length) {
    parts.push(`${plural(attachments.length, "port")} attached (${someOf(attachments.map((a) => `attachment ${q(a.id)} of port ${q(a.portId)}`))})`);
  }
  if (addresses.length) {
    parts.push(`${plural(addresses.length, "address", "addresses")} allocated (${someOf(addresses.map((a) => `${a.address} in subnet ${q(a.subnetId)} to ${q(a.owner)}`))})`);
  }
  return new BaremetalError("conflict", `network ${q(id)} is in use: ${parts.join("; ")}; detach and release them first`, { messageId: IN_USE });
}

// ---- subnets ------------------------------------------------------------------------------

export interface SubnetValues {
  id: string;
  networkId: string;
  cidr: Cidr;
  gateway?: Ip;
  /** Sorted, not overlapping, inside the subnet. */
  pools: IpRange[];
}

/** Addresses the pools never hand out: IPv4 network and broadcast, IPv6 subnet-router anycast, the gateway. */
export function reservedAddresses(cidr: Cidr, gateway: bigint | undefined): bigint[] {
  const out = [cidr.first];
  if (cidr.version === 4) out.push(cidr.last);
  if (gateway !== undefined) out.push(gateway);
  return out;
}

export function normaliseSubnet(s: SubnetInput): SubnetValues {
  if (s === null || typeof s !== "object") throw bad("subnet", "the subnet must be an object");
  const id = requireId("id", s.id);
  const networkId = requireId("networkId", s.networkId);
  const cidr = parseCidr("cidr", s.cidr);
  // A subnet must leave room for hosts beside its reserved addresses.
  const maxPrefix = cidr.version === 4 ? 30 : 126;
  if (cidr.prefix > maxPrefix) throw bad("cidr", `cidr: an IPv${cidr.version} subnet must be a /${maxPrefix} or larger, got ${cidr.text}`);
  const inside = (property: string, text: unknown): Ip => {
    const ip = parseIp(property, text);
    if (ip.version !== cidr.version) throw bad(property, `${property} (${String(text)}) is an IPv${ip.version} address but the subnet ${cidr.text} is IPv${cidr.version}`);
    if (!inCidr(cidr, ip)) throw bad(property, `${property} (${formatIp(ip.version, ip.value)}) is outside the subnet ${cidr.text}`);
    return ip;
  };
  let gateway: Ip | undefined;
  if (s.gateway !== undefined && s.gateway !== null && s.gateway !== "") {
    gateway = inside("gateway", s.gateway);
    if (gateway.value === cidr.first) throw bad("gateway", `gateway ${formatIp(cidr.version, gateway.value)} is the subnet's own address (${cidr.text}); use a host address`);
    if (cidr.version === 4 && gateway.value === cidr.last) throw bad("gateway", `gateway ${formatIp(4, gateway.value)} is the broadcast address of ${cidr.text}`);
  }
  let pools: (IpRange & { i: number })[];
  if (s.allocationPools === undefined || s.allocationPools === null) {
    // The host addresses, around the gateway (as Neutron does).
    const start = cidr.first + 1n;
    const end = cidr.version === 4 ? cidr.last - 1n : cidr.last;
    const g = gateway?.value;
    pools = (g === undefined ? [{ start, end }] : [{ start, end: g - 1n }, { start: g + 1n, end }])
      .filter((r) => r.start <= r.end)
      .map((r) => ({ i: 0, ...r }));
  } else {
    if (!Array.isArray(s.allocationPools) || s.allocationPools.length === 0) {
      throw bad("allocationPools", "allocationPools must be a non-empty list of {start, end} (omit it for the whole subnet)");
    }
    if (s.allocationPools.length > MAX_ALLOCATION_POOLS) throw bad("allocationPools", `allocationPools may hold at most ${MAX_ALLOCATION_POOLS} pools`);
    pools = s.allocationPools.map((p: AddressPool, i) => {
      if (p === null || typeof p !== "object") throw bad(`allocationPools[${i}]`, `allocationPools[${i}] must be an object {start, end}`);
      const start = inside(`allocationPools[${i}].start`, p.start).value;
      const end = inside(`allocationPools[${i}].end`, p.end).value;
      if (start > end) {
        throw bad(`allocationPools[${i}]`, `allocationPools[${i}]: start ${formatIp(cidr.version, start)} is above end ${formatIp(cidr.version, end)}`);
      }
      return { i, start, end };
    });
    pools.sort((a, b) => compareBig(a.start, b.start));
    for (let k = 1; k < pools.length; k++) {
      if (overlaps(pools[k - 1], pools[k])) {
        throw bad(
          `allocationPools[${pools[k].i}]`,
          `allocationPools[${pools[k].i}] (${describePool(cidr, pools[k])}) overlaps allocationPools[${pools[k - 1].i}] (${describePool(cidr, pools[k - 1])})`,
        );
      }
    }
    const capacity = poolCapacity(cidr, pools, gateway?.value);
    if (capacity === 0n) throw bad("allocationPools", "allocationPools hold only reserved addresses (network, broadcast, gateway): nothing to allocate");
  }
  return { id, networkId, cidr, gateway, pools: pools.map(({ start, end }) => ({ start, end })) };
}

function describePool(cidr: Cidr, p: IpRange): string {
  return `${formatIp(cidr.version, p.start)}-${formatIp(cidr.version, p.end)}`;
}

/** How many addresses the pools can hand out (reserved ones excluded). */
export function poolCapacity(cidr: Cidr, pools: readonly IpRange[], gateway: bigint | undefined): bigint {
  const total = pools.reduce((n, p) => n + rangeSize(p), 0n);
  return total - countInPools(pools, reservedAddresses(cidr, gateway));
}

/** The stored columns of a subnet (canonical text), also what tells an equal re-add. */
export interface SubnetColumns {
  cidr: string;
  ipVersion: 4 | 6;
  gateway?: string;
  allocationPools: AddressPool[];
}

export function subnetColumns(v: SubnetValues): SubnetColumns {
  return {
    cidr: v.cidr.text,
    ipVersion: v.cidr.version,
    gateway: v.gateway ? formatIp(v.gateway.version, v.gateway.value) : undefined,
    allocationPools: v.pools.map((p) => ({ start: formatIp(v.cidr.version, p.start), end: formatIp(v.cidr.version, p.end) })),
  };
}

export function existingSubnet(cur: SubnetRecord, v: SubnetValues): SubnetRecord {
  const c = subnetColumns(v);
  const diffs: string[] = [];
  if (cur.networkId !== v.networkId) diffs.push(`network ${q(cur.networkId)}`);
  if (cur.cidr !== c.cidr) diffs.push(`cidr ${cur.cidr}`);
  if ((cur.gateway ?? null) !== (c.gateway ?? null)) diffs.push(cur.gateway ? `gateway ${cur.gateway}` : "no gateway");
  if (JSON.stringify(cur.allocationPools) !== JSON.stringify(c.allocationPools)) {
    diffs.push(`allocation pools ${cur.allocationPools.map((p) => `${p.start}-${p.end}`).join(", ")}`);
  }
  if (!diffs.length) return cur;
  return idInUse("subnet", cur.id, diffs);
}

/** A `validation` when the new subnet overlaps another subnet of the network. */
export function checkSubnetOverlap(v: SubnetValues, others: readonly SubnetRecord[]): void {
  for (const o of others) {
    if (o.id === v.id || o.ipVersion !== v.cidr.version) continue;
    const oc = parseCidr("cidr", o.cidr);
    if (overlaps({ start: v.cidr.first, end: v.cidr.last }, { start: oc.first, end: oc.last })) {
      throw bad("cidr", `cidr ${v.cidr.text} overlaps ${o.cidr}, subnet ${q(o.id)} of network ${q(v.networkId)}`);
    }
  }
}

export function subnetInUse(id: string, addresses: readonly { address: string; owner: string }[]): BaremetalError {
  return new BaremetalError(
    "conflict",
    `subnet ${q(id)} has ${plural(addresses.length, "address", "addresses")} allocated (${someOf(addresses.map((a) => `${a.address} to ${q(a.owner)}`))}); release them first`,
    { messageId: IN_USE },
  );
}

// ---- addresses ----------------------------------------------------------------------------

export interface AddressValues {
  subnetId: string;
  owner: string;
  address?: string;
}

export function normaliseAddressRequest(r: AddressRequest): AddressValues {
  if (r === null || typeof r !== "object") throw bad("request", "the address request must be an object");
  const subnetId = requireId("subnetId", r.subnetId);
  const owner = requireId("owner", r.owner);
  const address = r.address === undefined || r.address === null || r.address === "" ? undefined : canonicalIp("address", r.address);
  return { subnetId, owner, address };
}

function subnetShape(s: SubnetRecord): { cidr: Cidr; gateway?: bigint; pools: IpRange[] } {
  const cidr = parseCidr("cidr", s.cidr);
  return {
    cidr,
    gateway: s.gateway === undefined ? undefined : parseIp("gateway", s.gateway).value,
    pools: s.allocationPools.map((p) => ({ start: parseIp("start", p.start).value, end: parseIp("end", p.end).value })),
  };
}

/** The held address of an owner asking again: it, or a `conflict` when it asked for another one. */
export function existingAddress<T extends { address: string }>(cur: T, v: AddressValues): T {
  if (v.address !== undefined && v.address !== cur.address) {
    throw new BaremetalError(
      "conflict",
      `${q(v.owner)} already holds ${cur.address} in subnet ${q(v.subnetId)}; release it before asking for ${v.address}`,
      { messageId: ADDRESS_IN_USE, property: "address" },
    );
  }
  return cur;
}

/**
 * The address to allocate: the requested one when it is a free, unreserved host address of the
 * subnet (it need not be in a pool), else the lowest free address of the pools. `taken` maps the
 * subnet's allocated addresses (canonical) to their owners.
 */
export function chooseAddress(s: SubnetRecord, v: AddressValues, taken: ReadonlyMap<string, string>): string {
  const { cidr, gateway, pools } = subnetShape(s);
  if (v.address !== undefined) {
    const ip = parseIp("address", v.address);
    if (!inCidr(cidr, ip)) throw bad("address", `address ${v.address} is outside subnet ${q(s.id)} (${s.cidr})`);
    if (reservedAddresses(cidr, gateway).includes(ip.value)) {
      const what = ip.value === gateway ? "the gateway" : ip.value === cidr.first ? (cidr.version === 4 ? "the network address" : "the subnet-router anycast address") : "the broadcast address";
      throw bad("address", `address ${v.address} is ${what} of subnet ${q(s.id)} (${s.cidr}); it is never allocated`);
    }
    const holder = taken.get(v.address);
    if (holder !== undefined) {
      throw new BaremetalError("conflict", `address ${v.address} of subnet ${q(s.id)} is already allocated to ${q(holder)}`, {
        messageId: ADDRESS_IN_USE,
        property: "address",
      });
    }
    return v.address;
  }
  const takenValues = [...taken.keys()].map((a) => parseIp("address", a).value);
  const chosen = lowestFree(pools, takenValues, reservedAddresses(cidr, gateway));
  if (chosen !== undefined) return formatIp(cidr.version, chosen);
  const capacity = poolCapacity(cidr, pools, gateway);
  const inUse = countInPools(pools, takenValues);
  throw new BaremetalError(
    "conflict",
    `subnet ${q(s.id)} (${s.cidr}) of network ${q(s.networkId)} has no free address in its allocation pools ` +
      `(${s.allocationPools.map((p) => `${p.start}-${p.end}`).join(", ")}): ${inUse} of its ${plural(capacity, "address", "addresses")} ${inUse === 1n ? "is" : "are"} in use`,
    { messageId: SUBNET_EXHAUSTED, details: [`capacity: ${capacity}`, `in use: ${inUse}`] },
  );
}

/** Addresses in numeric order (text order would put 10.0.0.10 before 10.0.0.9). */
export function sortAddresses<T extends { address: string }>(rows: T[]): T[] {
  const key = new Map(rows.map((r) => [r, parseIp("address", r.address).value]));
  return rows.sort((a, b) => compareBig(key.get(a)!, key.get(b)!));
}

// ---- ports --------------------------------------------------------------------------------

export interface PortValues {
  id: string;
  nodeId: string;
  mac: string;
  switchId: string;
  switchPort: string;
  physicalNetwork?: string;
}

export function normaliseMac(property: string, v: unknown): string {
  if (typeof v !== "string" || !/^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$/i.test(v)) {
    throw bad(property, `${property} must be a MAC address such as 52:54:00:12:34:56, got ${JSON.stringify(v)}`);
  }
  return v.toLowerCase().replace(/-/g, ":");
}

export function normalisePort(p: PortInput): PortValues {
  if (p === null || typeof p !== "object") throw bad("port", "the port must be an object");
  return {
    id: requireId("id", p.id),
    nodeId: requireId("nodeId", p.nodeId),
    mac: normaliseMac("mac", p.mac),
    switchId: requireId("switchId", p.switchId),
    switchPort: requireText("switchPort", p.switchPort),
    physicalNetwork: optionalText("physicalNetwork", p.physicalNetwork),
  };
}

export function samePort(cur: PortRecord, v: PortValues): boolean {
  return (
    cur.nodeId === v.nodeId && cur.mac === v.mac && cur.switchId === v.switchId && cur.switchPort === v.switchPort &&
    (cur.physicalNetwork ?? null) === (v.physicalNetwork ?? null)
  );
}

/**
 * The `conflict` of a port change the switches would not follow: moving an attached port to
 * another node, switch, switch port or physical network.
 */
export function portChangeConflict(cur: PortRecord, v: PortValues, attachments: readonly AttachmentRecord[]): BaremetalError | undefined {
  if (!attachments.length) return undefined;
  const changed: string[] = [];
  if (cur.nodeId !== v.nodeId) changed.push("nodeId");
  if (cur.switchId !== v.switchId) changed.push("switchId");
  if (cur.switchPort !== v.switchPort) changed.push("switchPort");
  if ((cur.physicalNetwork ?? null) !== (v.physicalNetwork ?? null)) changed.push("physicalNetwork");
  if (!changed.length) return undefined;
  return new BaremetalError(
    "conflict",
    `port ${q(cur.id)} is attached to ${attachedTo(attachments)}; detach it before changing its ${changed.join(", ")}`,
    { messageId: PORT_ATTACHED, property: changed[0] },
  );
}

function attachedTo(attachments: readonly AttachmentRecord[]): string {
  return someOf(attachments.map((a) => `network ${q(a.networkId)} (${a.mode}, attachment ${q(a.id)})`));
}

/** A switch port or MAC already recorded for another port. */
export function portTaken(v: PortValues, other: PortRecord): BaremetalError {
  if (other.switchId === v.switchId && other.switchPort === v.switchPort) {
    return new BaremetalError(
      "conflict",
      `switch port ${q(v.switchPort)} of switch ${q(v.switchId)} already belongs to port ${q(other.id)} of node ${q(other.nodeId)}`,
      { messageId: SWITCH_PORT_IN_USE, property: "switchPort" },
    );
  }
  return new BaremetalError("conflict", `MAC ${v.mac} already belongs to port ${q(other.id)} of node ${q(other.nodeId)}`, {
    messageId: MAC_IN_USE,
    property: "mac",
  });
}

export function portAttached(id: string, attachments: readonly AttachmentRecord[]): BaremetalError {
  return new BaremetalError("conflict", `port ${q(id)} is attached to ${attachedTo(attachments)}; detach it first`, { messageId: PORT_ATTACHED });
}

export function nodePortsAttached(nodeId: string, attachments: readonly AttachmentRecord[]): BaremetalError {
  return new BaremetalError(
    "conflict",
    `node ${q(nodeId)} has ports attached to networks (${someOf(attachments.map((a) => `port ${q(a.portId)} in network ${q(a.networkId)}`))}); detach them before removing the node`,
    { messageId: PORT_ATTACHED },
  );
}

// ---- attachments --------------------------------------------------------------------------

export interface AttachmentValues {
  id: string;
  portId: string;
  networkId: string;
  mode: AttachmentMode;
  native: boolean;
}

export function normaliseAttachment(a: AttachmentInput): AttachmentValues {
  if (a === null || typeof a !== "object") throw bad("attachment", "the attachment must be an object");
  if (a.mode !== "access" && a.mode !== "trunk") throw bad("mode", `mode must be "access" or "trunk", got ${JSON.stringify(a.mode)}`);
  if (a.native !== undefined && a.native !== null && typeof a.native !== "boolean") throw bad("native", "native must be a boolean");
  const native = a.native === true;
  if (native && a.mode === "access") throw bad("native", "native applies to trunk attachments only (an access port carries its network untagged anyway)");
  return { id: requireId("id", a.id), portId: requireId("portId", a.portId), networkId: requireId("networkId", a.networkId), mode: a.mode, native };
}

/** The filter of `listAttachments`, checked. */
export function normaliseAttachmentFilter(filter: AttachmentFilter | undefined): AttachmentFilter {
  return {
    networkId: optionalText("networkId", filter?.networkId, 1024),
    portId: optionalText("portId", filter?.portId, 1024),
    nodeId: optionalText("nodeId", filter?.nodeId, 1024),
  };
}

export function existingAttachment(cur: AttachmentRecord, v: AttachmentValues): AttachmentRecord {
  const diffs: string[] = [];
  if (cur.portId !== v.portId) diffs.push(`port ${q(cur.portId)}`);
  if (cur.networkId !== v.networkId) diffs.push(`network ${q(cur.networkId)}`);
  if (cur.mode !== v.mode) diffs.push(`mode ${cur.mode}`);
  if (cur.native !== v.native) diffs.push(cur.native ? "native" : "not native");
  if (!diffs.length) return cur;
  return idInUse("attachment", cur.id, diffs);
}

/**
 * The rules of attaching a port (`current`: the port's attachments): the port's physical
 * network, if set, is the network's fabric; an access port is in one network only; a port is
 * never mixed access and trunk; a network once per port; one native network per trunk port.
 */
export function checkAttach(v: AttachmentValues, port: PortRecord, network: NetworkRecord, current: readonly AttachmentRecord[]): void {
  if (port.physicalNetwork !== undefined && port.physicalNetwork !== network.fabric) {
    throw new BaremetalError(
      "conflict",
      `port ${q(port.id)} is cabled to physical network ${q(port.physicalNetwork)} but network ${q(network.id)} is on fabric ${q(network.fabric)}`,
      { messageId: PORT_ATTACHED, property: "networkId" },
    );
  }
  const access = current.find((a) => a.mode === "access");
  if (access) {
    throw new BaremetalError(
      "conflict",
      `port ${q(port.id)} is an access port in network ${q(access.networkId)} (attachment ${q(access.id)}, owner ${q(access.owner)}); ` +
        "an access port is in one network at a time: detach it first",
      { messageId: PORT_ATTACHED, property: "portId" },
    );
  }
  if (v.mode === "access" && current.length) {
    throw new BaremetalError(
      "conflict",
      `port ${q(port.id)} is a trunk port in ${attachedTo(current)}; it cannot also be an access port: detach those first`,
      { messageId: PORT_ATTACHED, property: "mode" },
    );
  }
  const same = current.find((a) => a.networkId === v.networkId);
  if (same) {
    throw new BaremetalError("conflict", `port ${q(port.id)} is already in network ${q(v.networkId)} (attachment ${q(same.id)})`, {
      messageId: PORT_ATTACHED,
      property: "networkId",
    });
  }
  const native = current.find((a) => a.native);
  if (v.native && native) {
    throw new BaremetalError(
      "conflict",
      `port ${q(port.id)} already has native network ${q(native.networkId)} (attachment ${q(native.id)}); a trunk port has one untagged VLAN`,
      { messageId: PORT_ATTACHED, property: "native" },
    );
  }
}
