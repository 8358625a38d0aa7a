/**
 * IPv4 and IPv6 address arithmetic for the inventory's IPAM, on BigInt (no dependency): parsing
 * and canonical formatting of addresses and CIDR prefixes, containment and overlap of ranges, and
 * the choice of the lowest free address of a set of pools.
 *
 * Canonical text is what the inventory stores and compares (a unique index on the text is what
 * keeps an address from being handed out twice), so every address goes through `formatIp`:
 * IPv4 as four decimal octets without leading zeros, IPv6 as RFC 5952 says (lower case, no
 * leading zeros in a group, the longest run of two or more zero groups, the first on a tie,
 * written `::`). Input may use any RFC 4291 form, including a trailing dotted IPv4 part.
 */
import { BaremetalError } from "../core/errors";

export type IpVersion = 4 | 6;

export interface Ip {
  version: IpVersion;
  value: bigint;
}

/** A prefix: `first` is the network address (host bits zero), `last` the highest address. */
export interface Cidr {
  version: IpVersion;
  prefix: number;
  first: bigint;
  last: bigint;
  /** Canonical `address/prefix`. */
  text: string;
}

/** An inclusive range of addresses of one version. */
export interface IpRange {
  start: bigint;
  end: bigint;
}

export function bitsOf(version: IpVersion): 32 | 128 {
  return version === 4 ? 32 : 128;
}

function bad(property: string, message: string): BaremetalError {
  return new BaremetalError("validation", message, { property });
}

const V4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function parseV4(s: string): bigint | undefined {
  const m = V4.exec(s);
  if (!m) return undefined;
  let v = 0n;
  for (const octet of m.slice(1)) {
    // A leading zero reads as octal to some tools (inet_aton): refuse the ambiguity.
    if (octet.length > 1 && octet.startsWith("0")) return undefined;
    const n = Number(octet);
    if (n > 255) return undefined;
    v = (v << 8n) | BigInt(n);
  }
  return v;
}

function parseV6(s: string): bigint | undefined {
  let text = s.toLowerCase();
  // A trailing dotted IPv4 part (::ffff:192.0.2.1) stands for the last two groups.
  let tail4: bigint | undefined;
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".")) {
    tail4 = parseV4(text.slice(lastColon + 1));
    if (tail4 === undefined || lastColon < 0) return undefined;
    text = `${text.slice(0, lastColon + 1)}0:0`; // "::ffff:192.0.2.1" -> "::ffff:0:0", the value ORed in below
  }
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groups = (h: string): string[] | undefined => {
    if (h === "") return [];
    const g = h.split(":");
    return g.every((x) => /^[0-9a-f]{1,4}$/.test(x)) ? g : undefined;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (!head || !tail) return undefined;
  let all: string[];
  if (halves.length === 2) {
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return undefined; // "::" stands for at least one zero group
    all = [...head, ...Array<string>(missing).fill("0"), ...tail];
  } else {
    if (head.length !== 8) return undefined;
    all = head;
  }
  let v = 0n;
  for (const g of all) v = (v << 16n) | BigInt(parseInt(g, 16));
  if (tail4 !== undefined) v = (v & ~0xffffffffn) | tail4;
  return v;
}

/** Parses an IPv4 or IPv6 address (a `validation` naming `property` when malformed). */
export function parseIp(property: string, v: unknown): Ip {
  if (typeof v !== "string" || v.length === 0) throw bad(property, `${property} must be an IPv4 or IPv6 address`);
  if (v.length > 64) throw bad(property, `${property} must be an IPv4 or IPv6 address, got a string of ${v.length} characters`);
  if (v.includes("%")) throw bad(property, `${property} must not carry an IPv6 zone (${JSON.stringify(v)})`);
  const v4 = parseV4(v);
  if (v4 !== undefined) return { version: 4, value: v4 };
  const v6 = v.includes(":") ? parseV6(v) : undefined;
  if (v6 !== undefined) return { version: 6, value: v6 };
  throw bad(property, `${property} must be an IPv4 address (192.0.2.10) or an IPv6 address (2001:db8::10), got ${JSON.stringify(v)}`);
}

/** The canonical text of an address. */
export function formatIp(version: IpVersion, value: bigint): string {
  if (version === 4) {
    return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join(".");
  }
  const groups = Array.from({ length: 8 }, (_, i) => Number((value >> BigInt(112 - 16 * i)) & 0xffffn));
  // The longest run of at least two zero groups (the first of equal runs) becomes "::".
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) (best = i), (bestLen = j - i);
    i = j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(":");
  if (best < 0) return hex(groups);
  return `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

/** The canonical text of an address given as text (`validation` when malformed). */
export function canonicalIp(property: string, v: unknown): string {
  const ip = parseIp(property, v);
  return formatIp(ip.version, ip.value);
}

export function hostMask(version: IpVersion, prefix: number): bigint {
  return (1n << BigInt(bitsOf(version) - prefix)) - 1n;
}

/**
 * Parses `address/prefix`. Host bits must be zero (`10.0.0.1/24` is refused, naming
 * `10.0.0.0/24`): a subnet is a network, and a typo should not silently widen it.
 */
export function parseCidr(property: string, v: unknown): Cidr {
  if (typeof v !== "string" || !v.includes("/")) {
    throw bad(property, `${property} must be a CIDR prefix such as 192.0.2.0/24 or 2001:db8::/64, got ${JSON.stringify(v)}`);
  }
  const slash = v.lastIndexOf("/");
  const ip = parseIp(property, v.slice(0, slash));
  const p = v.slice(slash + 1);
  const bits = bitsOf(ip.version);
  if (!/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > bits) {
    throw bad(property, `${property}: the prefix length of ${JSON.stringify(v)} must be a whole number from 0 to ${bits}`);
  }
  const prefix = Number(p);
  const mask = hostMask(ip.version, prefix);
  const first = ip.value & ~mask;
  const text = `${formatIp(ip.version, first)}/${prefix}`;
  if ((ip.value & mask) !== 0n) {
    throw bad(property, `${property}: ${JSON.stringify(v)} has host bits set; the network is ${text}`);
  }
  return { version: ip.version, prefix, first, last: first | mask, text };
}

export function inCidr(c: Cidr, ip: Ip): boolean {
  return ip.version === c.version && ip.value >= c.first && ip.value <= c.last;
}

export function overlaps(a: IpRange, b: IpRange): boolean {
  return a.start <= b.end && b.start <= a.end;
}

export function rangeSize(r: IpRange): bigint {
  return r.end - r.start + 1n;
}

/**
 * The lowest address of `pools` (sorted by start, not overlapping) that is in neither `taken` nor
 * `reserved`; undefined when every one is. Linear in the number of taken addresses: it never
 * walks the pools address by address, so a /64 costs no more than a /26.
 */
export function lowestFree(pools: readonly IpRange[], taken: Iterable<bigint>, reserved: Iterable<bigint>): bigint | undefined {
  const blocked = [...new Set([...taken, ...reserved])].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  let i = 0;
  for (const pool of pools) {
    let candidate = pool.start;
    while (i < blocked.length && blocked[i] < candidate) i++;
    while (i < blocked.length && blocked[i] === candidate) (candidate++, i++);
    if (candidate <= pool.end) return candidate;
  }
  return undefined;
}

/** How many addresses of `values` lie in one of `pools`. */
export function countInPools(pools: readonly IpRange[], values: Iterable<bigint>): bigint {
  let n = 0n;
  for (const v of new Set(values)) if (pools.some((p) => v >= p.start && v <= p.end)) n++;
  return n;
}

export function compareBig(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
