/**
 * Terraform values (cty) on the wire, and their translation to and from the core's property bags.
 *
 * A tfplugin6 `DynamicValue` carries one value of a known cty type, as msgpack (what Terraform
 * sends and expects) or JSON (`UpgradeResourceState`'s raw state, some older callers). The
 * encoding follows go-cty's `msgpack` package:
 * - null is msgpack nil; a wholly unknown value is the extension `d4 00 00` (fixext1, type 0);
 *   newer cty versions write an unknown with refinements (not null, string prefix, number or
 *   length bounds) as extension type 0x0c whose payload is a small map: we read it as unknown and
 *   ignore the refinements (cty itself treats any extension of length <= 1 as a plain unknown);
 * - numbers are the smallest msgpack int when the value is an integer in the int64 range, a float64
 *   when it is not an integer, and otherwise (integers outside int64, decimals that are no float64)
 *   their decimal text as a string;
 * - lists, sets and tuples are arrays; maps and objects are maps with their keys in sorted
 *   (byte-wise) order, and an object carries every attribute of its type (nil when null);
 * - a value of the `dynamic` pseudo-type is the array `[type JSON as bin, value]`.
 *
 * On the core side, values are plain JSON plus the UNKNOWN marker (core/values.ts). An integer that
 * a JS number cannot hold exactly (2^53 + 1) or a number it cannot hold at all (1e400) is refused
 * instead of rounded silently (cty compares integers exactly: a rounded one would not match the
 * configuration); decimals such as `0.1` (cty sends them as text) round to the nearest float64, which
 * cty considers equal to them (it compares non-integers by their shortest text).
 * We write an integer beyond int64 as its exact digits; go-cty writes the shortest digits of its
 * 512-bit float, equal to ours below ~1e154 and read back by both sides as the same value above.
 *
 * Errors name the value's path in Terraform form (`disks[0].size_gib`, `labels["a"]`): bad numbers
 * from the user are `validation` errors, everything else (malformed wire data, a value of ours that
 * does not fit its type) is `internal`.
 *
 * No imports beyond types and two small core modules: Terraform starts the provider process for
 * every command, so this module must load fast.
 */
import { BaremetalError } from "../../core/errors";
import { UNKNOWN } from "../../core/values";
import type { CtyType, TfAttribute } from "./schema";

/** Every cty type this module reads or writes: the schema's types plus `dynamic` and tuples. */
export type AnyCtyType =
  | "string"
  | "number"
  | "bool"
  | "dynamic"
  | ["list", AnyCtyType]
  | ["set", AnyCtyType]
  | ["map", AnyCtyType]
  | ["object", Record<string, AnyCtyType>]
  | ["object", Record<string, AnyCtyType>, string[]]
  | ["tuple", AnyCtyType[]];

/** A tfplugin6 DynamicValue: `msgpack` when set (non-empty), else `json`. */
export interface DynamicValue {
  msgpack?: Uint8Array | Buffer | null;
  json?: Uint8Array | Buffer | null;
}

export interface DecodeOptions {
  /**
   * Drop object attributes the type does not know instead of failing (raw state written by an
   * older schema, UpgradeResourceState).
   */
  ignoreUnknownAttributes?: boolean;
}

type Path = string;
const attrPath = (p: Path, name: string): Path => (p ? `${p}.${name}` : name);
const indexPath = (p: Path, i: number): Path => `${p}[${i}]`;
const keyPath = (p: Path, k: string): Path => `${p}[${JSON.stringify(k)}]`;
const shown = (p: Path): string => p || "(root)";

function internal(path: Path, message: string): BaremetalError {
  return new BaremetalError("internal", `${shown(path)}: ${message}`);
}

function describeType(t: AnyCtyType): string {
  return typeof t === "string" ? t : t[0] === "object" ? "object" : t[0] === "tuple" ? "tuple" : `${t[0]} of ${describeType(t[1])}`;
}

function describeValue(v: unknown): string {
  if (v === null || v === undefined) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  return `a ${typeof v}`;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/** Go's sort.Strings order: byte-wise over UTF-8 (differs from JS's UTF-16 order past U+FFFF). */
function byteOrder(a: string, b: string): number {
  if (a === b) return 0;
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

function sortedKeys(keys: string[]): string[] {
  // Plain comparison is byte order as long as no key has characters outside the BMP.
  return keys.some((k) => /[\ud800-\udfff]/.test(k)) ? [...keys].sort(byteOrder) : [...keys].sort();
}

const orders = new WeakMap<object, string[]>();
/** An object type's attribute names in cty's order (computed once per type object). */
function attributeOrder(attrs: Record<string, AnyCtyType>): string[] {
  let names = orders.get(attrs);
  if (!names) orders.set(attrs, (names = sortedKeys(Object.keys(attrs))));
  return names;
}

// ---- numbers ----------------------------------------------------------------------------------

const DECIMAL = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** The decimal's value as a bigint when it is an integer, else undefined. */
function decimalInteger(text: string): bigint | undefined {
  const m = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(text)!;
  let digits = (m[2] + (m[3] ?? "")).replace(/^0+/, "");
  let exp = Number(m[4] ?? 0) - (m[3] ?? "").length;
  if (digits === "") return 0n;
  const trailing = /0*$/.exec(digits)![0].length;
  digits = digits.slice(0, digits.length - trailing);
  exp += trailing;
  if (exp < 0) return undefined;
  const v = BigInt(digits) * 10n ** BigInt(exp);
  return m[1] === "-" ? -v : v;
}

/** A number's text for a message: long ones shortened. */
const shownNumber = (text: string): string => (text.length > 40 ? `${text.slice(0, 24)}... (${text.length} characters)` : text);

/** A number from its decimal text (cty's string form, JSON number text). */
function parseNumber(text: string, path: Path): number {
  if (!DECIMAL.test(text)) {
    if (/^[+-]?inf(inity)?$/i.test(text)) throw new BaremetalError("validation", `${shown(path)}: the number ${shownNumber(text)} is not finite`);
    throw internal(path, `${JSON.stringify(shownNumber(text))} is not a number`);
  }
  const n = Number(text);
  if (!Number.isFinite(n)) throw new BaremetalError("validation", `${shown(path)}: the number ${shownNumber(text)} is too large`);
  if (Number.isInteger(n) && !Number.isSafeInteger(n)) {
    const exact = decimalInteger(text);
    if (exact !== undefined) return integer(exact, path);
  }
  return n;
}

/**
 * A JS number for an integer, refusing one it cannot hold exactly. "Exactly" as cty sees it: cty
 * parses number text into a 512-bit float, so past 2^512 it writes (and means) the shortest text of
 * that float, which may differ from the double's exact digits by less than half a 512-bit ulp.
 */
function integer(v: bigint, path: Path): number {
  const n = Number(v);
  if (Number.isFinite(n)) {
    const exact = BigInt(n);
    if (exact === v) return n;
    const bits = (exact < 0n ? -exact : exact).toString(2).length;
    const diff = v > exact ? v - exact : exact - v;
    if (bits > 512 && diff < 1n << BigInt(bits - 513)) return n;
  }
  throw new BaremetalError("validation", `${shown(path)}: the number ${shownNumber(v.toString())} is too large to be held exactly (integers are exact up to ${Number.MAX_SAFE_INTEGER})`);
}

// ---- msgpack writing ----------------------------------------------------------------------------

class Writer {
  private buf = Buffer.allocUnsafe(256);
  private len = 0;

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }
  byte(b: number): void {
    this.room(1);
    this.buf[this.len++] = b;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  /** A type byte then a big-endian unsigned of 1, 2, 4 or 8 bytes. */
  head(code: number, size: 1 | 2 | 4 | 8, n: number | bigint): void {
    this.room(1 + size);
    this.buf[this.len++] = code;
    if (size === 1) this.buf.writeUInt8(Number(n), this.len);
    else if (size === 2) this.buf.writeUInt16BE(Number(n), this.len);
    else if (size === 4) this.buf.writeUInt32BE(Number(n), this.len);
    else this.buf.writeBigUInt64BE(BigInt.asUintN(64, BigInt(n)), this.len);
    this.len += size;
  }
  float64(n: number): void {
    this.room(9);
    this.buf[this.len++] = 0xcb;
    this.buf.writeDoubleBE(n, this.len);
    this.len += 8;
  }
  /** The smallest form, as vmihailenco/msgpack's EncodeInt with compact ints (what cty uses). */
  int(n: bigint | number): void {
    if (typeof n === "number") {
      if (n >= 0 && n <= 0x7f) return this.byte(n);
      if (n >= 0 && n <= 0xffffffff) return n <= 0xff ? this.head(0xcc, 1, n) : n <= 0xffff ? this.head(0xcd, 2, n) : this.head(0xce, 4, n);
      if (n < 0 && n >= -32) return this.byte(n & 0xff);
      n = BigInt(n);
    }
    if (n >= 0n) {
      if (n <= 0x7fn) this.byte(Number(n));
      else if (n <= 0xffn) this.head(0xcc, 1, n);
      else if (n <= 0xffffn) this.head(0xcd, 2, n);
      else if (n <= 0xffffffffn) this.head(0xce, 4, n);
      else this.head(0xcf, 8, n);
    } else if (n >= -32n) this.byte(Number(n) & 0xff);
    else if (n >= -128n) this.head(0xd0, 1, Number(n) & 0xff);
    else if (n >= -32768n) this.head(0xd1, 2, Number(n) & 0xffff);
    else if (n >= -2147483648n) this.head(0xd2, 4, Number(n) >>> 0);
    else this.head(0xd3, 8, n);
  }
  str(s: string): void {
    const l = Buffer.byteLength(s, "utf8");
    if (l < 32) this.byte(0xa0 | l);
    else if (l < 0x100) this.head(0xd9, 1, l);
    else if (l < 0x10000) this.head(0xda, 2, l);
    else this.head(0xdb, 4, l);
    this.room(l);
    this.len += this.buf.write(s, this.len, l, "utf8");
  }
  bin(b: Uint8Array): void {
    const l = b.length;
    if (l < 0x100) this.head(0xc4, 1, l);
    else if (l < 0x10000) this.head(0xc5, 2, l);
    else this.head(0xc6, 4, l);
    this.bytes(b);
  }
  array(l: number): void {
    if (l < 16) this.byte(0x90 | l);
    else if (l < 0x10000) this.head(0xdc, 2, l);
    else this.head(0xdd, 4, l);
  }
  map(l: number): void {
    if (l < 16) this.byte(0x80 | l);
    else if (l < 0x10000) this.head(0xde, 2, l);
    else this.head(0xdf, 4, l);
  }
  done(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

/** The bytes cty writes for a wholly unknown value: fixext1, extension type 0, one zero byte. */
export const UNKNOWN_MSGPACK: Readonly<Uint8Array> = Uint8Array.of(0xd4, 0x00, 0x00);

/** A type's JSON form as cty writes it (Go's encoding/json: object keys sorted, HTML-safe). */
export function typeJson(t: AnyCtyType): string {
  if (typeof t === "string") return JSON.stringify(t);
  switch (t[0]) {
    case "list":
    case "set":
    case "map":
      return `[${JSON.stringify(t[0])},${typeJson(t[1])}]`;
    case "tuple":
      return `["tuple",[${t[1].map(typeJson).join(",")}]]`;
    case "object": {
      const attrs = sortedKeys(Object.keys(t[1])).map((k) => `${goString(k)}:${typeJson(t[1][k])}`);
      const optional = t[2]?.length ? `,[${sortedKeys(t[2]).map(goString).join(",")}]` : "";
      return `["object",{${attrs.join(",")}}${optional}]`;
    }
  }
}

function goString(s: string): string {
  return JSON.stringify(s).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** The type cty would give a JSON-like value (arrays are tuples, objects objects, null dynamic). */
function impliedType(v: unknown, path: Path): AnyCtyType {
  if (v === null || v === undefined || v === UNKNOWN) return "dynamic";
  switch (typeof v) {
    case "string":
      return "string";
    case "number":
    case "bigint":
      return "number";
    case "boolean":
      return "bool";
  }
  if (Array.isArray(v)) return ["tuple", v.map((e, i) => impliedType(e, indexPath(path, i)))];
  if (isPlainObject(v)) return ["object", Object.fromEntries(Object.entries(v).map(([k, e]) => [k, impliedType(e, attrPath(path, k))]))];
  throw internal(path, `${describeValue(v)} has no cty type`);
}

function writeNumber(w: Writer, v: unknown, path: Path): void {
  if (typeof v === "bigint") {
    if (v >= INT64_MIN && v <= INT64_MAX) w.int(v);
    else w.str(v.toString());
    return;
  }
  if (typeof v !== "number") throw internal(path, `expected a number, got ${describeValue(v)}`);
  if (!Number.isFinite(v)) throw internal(path, `the number ${v} is not finite`);
  if (!Number.isInteger(v)) return w.float64(v);
  if (v >= -32 && v <= 0xffffffff) return w.int(v === 0 ? 0 : v); // -0 is 0
  const b = BigInt(v);
  if (b >= INT64_MIN && b <= INT64_MAX) w.int(b);
  else w.str(b.toString());
}

/** Set elements in cty's order (primitives sorted, nulls then unknowns last), duplicates removed. */
function setElements(items: unknown[], elem: AnyCtyType): unknown[] {
  if (typeof elem !== "string" || elem === "dynamic") return items;
  const rank = (v: unknown) => (v === null || v === undefined ? 2 : v === UNKNOWN ? 1 : 0);
  const less = (a: unknown, b: unknown): number => {
    const ra = rank(a);
    const rb = rank(b);
    if (ra || rb) return ra === 1 && rb === 2 ? -1 : ra === 2 && rb === 1 ? 1 : ra - rb;
    if (elem === "string") return byteOrder(a as string, b as string);
    if (elem === "number") return Number(a) < Number(b) ? -1 : Number(a) > Number(b) ? 1 : 0;
    return (a ? 1 : 0) - (b ? 1 : 0);
  };
  const sorted = [...items].sort(less);
  // Known equal values collapse; unknowns stay distinct (as cty's unknowns do).
  return sorted.filter((v, i) => i === 0 || rank(v) !== 0 || less(v, sorted[i - 1]) !== 0);
}

function write(w: Writer, v: unknown, t: AnyCtyType, path: Path): void {
  if (v === UNKNOWN) return w.bytes(UNKNOWN_MSGPACK);
  if (v === null || v === undefined) return w.byte(0xc0);
  if (t === "dynamic") {
    const actual = impliedType(v, path);
    w.array(2);
    w.bin(utf8.encode(typeJson(actual)));
    return write(w, v, actual, path);
  }
  if (typeof t === "string") {
    switch (t) {
      case "string":
        if (typeof v !== "string") throw internal(path, `expected a string, got ${describeValue(v)}`);
        return w.str(v);
      case "number":
        return writeNumber(w, v, path);
      case "bool":
        if (typeof v !== "boolean") throw internal(path, `expected a bool, got ${describeValue(v)}`);
        return w.byte(v ? 0xc3 : 0xc2);
    }
  }
  switch (t[0]) {
    case "list":
    case "set": {
      if (!Array.isArray(v)) throw internal(path, `expected a ${t[0]}, got ${describeValue(v)}`);
      const items = t[0] === "set" ? setElements(v, t[1]) : v;
      w.array(items.length);
      items.forEach((e, i) => write(w, e, t[1], indexPath(path, i)));
      return;
    }
    case "tuple": {
      if (!Array.isArray(v) || v.length !== t[1].length) throw internal(path, `expected a tuple of ${t[1].length} elements, got ${describeValue(v)}`);
      w.array(v.length);
      v.forEach((e, i) => write(w, e, t[1][i], indexPath(path, i)));
      return;
    }
    case "map": {
      if (!isPlainObject(v)) throw internal(path, `expected a map, got ${describeValue(v)}`);
      const keys = sortedKeys(Object.keys(v));
      w.map(keys.length);
      for (const k of keys) {
        w.str(k);
        write(w, v[k], t[1], keyPath(path, k));
      }
      return;
    }
    case "object": {
      if (!isPlainObject(v)) throw internal(path, `expected an object, got ${describeValue(v)}`);
      const attrs = t[1];
      for (const k of Object.keys(v)) {
        if (!Object.hasOwn(attrs, k) && v[k] !== undefined) throw internal(attrPath(path, k), "is not an attribute of the object type");
      }
      const names = attributeOrder(attrs);
      w.map(names.length);
      for (const k of names) {
        w.str(k);
        write(w, Object.hasOwn(v, k) ? v[k] : null, attrs[k], attrPath(path, k));
      }
      return;
    }
  }
}

/**
 * A value as msgpack, byte for byte what cty's msgpack.Marshal writes for it at that type.
 * UNKNOWN (at any depth) is cty's wholly unknown value; `undefined` is null. Throws an `internal`
 * error naming the path when the value does not fit the type.
 */
export function encodeDynamic(value: unknown, type: CtyType | AnyCtyType): Buffer {
  const w = new Writer();
  write(w, value, type, "");
  return w.done();
}

// ---- msgpack reading ----------------------------------------------------------------------------

class Reader {
  pos = 0;
  private view: DataView;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  private need(n: number, path: Path): void {
    if (this.pos + n > this.buf.length) throw internal(path, "msgpack data ends early");
  }
  peek(path: Path): number {
    this.need(1, path);
    return this.buf[this.pos];
  }
  u8(path: Path): number {
    this.need(1, path);
    return this.buf[this.pos++];
  }
  uint(size: 1 | 2 | 4, path: Path): number {
    this.need(size, path);
    const p = this.pos;
    this.pos += size;
    return size === 1 ? this.view.getUint8(p) : size === 2 ? this.view.getUint16(p) : this.view.getUint32(p);
  }
  take(n: number, path: Path): Uint8Array {
    this.need(n, path);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  fixed(kind: "i8" | "i16" | "i32" | "i64" | "u64" | "f32" | "f64", path: Path): number | bigint {
    const size = kind === "i8" ? 1 : kind === "i16" || kind === "f32" ? (kind === "i16" ? 2 : 4) : kind === "i32" ? 4 : 8;
    this.need(size, path);
    const p = this.pos;
    this.pos += size;
    switch (kind) {
      case "i8":
        return this.view.getInt8(p);
      case "i16":
        return this.view.getInt16(p);
      case "i32":
        return this.view.getInt32(p);
      case "i64":
        return this.view.getBigInt64(p);
      case "u64":
        return this.view.getBigUint64(p);
      case "f32":
        return this.view.getFloat32(p);
      case "f64":
        return this.view.getFloat64(p);
    }
  }
}

/** Extension header at the reader: [extension type, payload length], or undefined when not one. */
function extHeader(r: Reader, path: Path): [number, number] | undefined {
  const c = r.peek(path);
  if (c >= 0xd4 && c <= 0xd8) {
    r.pos++;
    return [r.u8(path), 1 << (c - 0xd4)];
  }
  if (c === 0xc7 || c === 0xc8 || c === 0xc9) {
    r.pos++;
    const len = r.uint(c === 0xc7 ? 1 : c === 0xc8 ? 2 : 4, path);
    return [r.u8(path), len];
  }
  return undefined;
}

const REFINED_UNKNOWN = 0x0c;

function readUnknown(r: Reader, ext: [number, number], path: Path): typeof UNKNOWN {
  const [code, len] = ext;
  // Length 0 or 1: a plain unknown whatever the type code (cty's rule). Longer: refinements.
  if (len > 1 && code !== REFINED_UNKNOWN) throw internal(path, `unsupported msgpack extension type 0x${code.toString(16)} of length ${len}`);
  if (len > 1024) throw internal(path, "oversize unknown value refinement");
  r.take(len, path); // refinements (not null, prefix, bounds) are not used by the core
  return UNKNOWN;
}

function strLength(c: number, r: Reader, path: Path): number | undefined {
  if (c >= 0xa0 && c <= 0xbf) return c & 0x1f;
  if (c === 0xd9 || c === 0xc4) return r.uint(1, path);
  if (c === 0xda || c === 0xc5) return r.uint(2, path);
  if (c === 0xdb || c === 0xc6) return r.uint(4, path);
  return undefined;
}

function readText(r: Reader, path: Path, what: string): string {
  const c = r.u8(path);
  const len = strLength(c, r, path);
  if (len === undefined) throw internal(path, `expected ${what}, got msgpack 0x${c.toString(16)}`);
  const b = r.take(len, path);
  if (len <= 64) {
    // Short ASCII (names, ids, addresses) needs no decoder call.
    let ascii = true;
    for (let i = 0; i < len && ascii; i++) ascii = b[i] < 0x80;
    if (ascii) return String.fromCharCode.apply(null, b as unknown as number[]);
  }
  try {
    return utf8Decoder.decode(b);
  } catch {
    throw internal(path, "string is not valid UTF-8");
  }
}

function containerLength(r: Reader, kind: "array" | "map", path: Path, what: string): number {
  const c = r.u8(path);
  if (kind === "array") {
    if (c >= 0x90 && c <= 0x9f) return c & 0x0f;
    if (c === 0xdc) return r.uint(2, path);
    if (c === 0xdd) return r.uint(4, path);
  } else {
    if (c >= 0x80 && c <= 0x8f) return c & 0x0f;
    if (c === 0xde) return r.uint(2, path);
    if (c === 0xdf) return r.uint(4, path);
  }
  throw internal(path, `expected ${what}, got msgpack 0x${c.toString(16)}`);
}

function readNumber(r: Reader, path: Path): number {
  const c = r.peek(path);
  if (c <= 0x7f) return r.u8(path);
  if (c >= 0xe0) return r.u8(path) - 0x100;
  let v: number | bigint;
  switch (c) {
    case 0xcc:
    case 0xcd:
    case 0xce:
      r.pos++;
      return r.uint(c === 0xcc ? 1 : c === 0xcd ? 2 : 4, path);
    case 0xd0:
    case 0xd1:
    case 0xd2:
      r.pos++;
      return r.fixed(c === 0xd0 ? "i8" : c === 0xd1 ? "i16" : "i32", path) as number;
    case 0xcf:
    case 0xd3:
      r.pos++;
      return integer(r.fixed(c === 0xcf ? "u64" : "i64", path) as bigint, path);
    case 0xca:
    case 0xcb:
      r.pos++;
      v = r.fixed(c === 0xca ? "f32" : "f64", path) as number;
      if (!Number.isFinite(v)) throw new BaremetalError("validation", `${shown(path)}: the number ${v} is not finite`);
      return v;
    default:
      return parseNumber(readText(r, path, "a number"), path);
  }
}

/** Steps over one msgpack value of any shape (an attribute the type does not know). */
function skip(r: Reader, path: Path): void {
  const ext = extHeader(r, path);
  if (ext) return void r.take(ext[1], path);
  const c = r.peek(path);
  if (c <= 0x7f || c >= 0xe0 || c === 0xc0 || c === 0xc2 || c === 0xc3) return void r.pos++;
  const sizes: Record<number, number> = { 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8, 0xca: 4, 0xcb: 8 };
  if (sizes[c] !== undefined) {
    r.pos++;
    return void r.take(sizes[c], path);
  }
  if ((c >= 0xa0 && c <= 0xbf) || (c >= 0xc4 && c <= 0xc6) || (c >= 0xd9 && c <= 0xdb)) {
    r.pos++;
    return void r.take(strLength(c, r, path)!, path);
  }
  const isMap = (c >= 0x80 && c <= 0x8f) || c === 0xde || c === 0xdf;
  const n = containerLength(r, isMap ? "map" : "array", path, "a msgpack value") * (isMap ? 2 : 1);
  for (let i = 0; i < n; i++) skip(r, path);
}

function read(r: Reader, t: AnyCtyType, path: Path, opts: DecodeOptions): unknown {
  const ext = extHeader(r, path);
  if (ext) return readUnknown(r, ext, path);
  if (t === "dynamic") {
    if (r.peek(path) === 0xc0) {
      r.pos++;
      return null;
    }
    if (containerLength(r, "array", path, "a dynamic value ([type, value])") !== 2) throw internal(path, "a dynamic value must be an array of two elements");
    const actual = parseType(readText(r, path, "a type"), path);
    return read(r, actual, path, opts);
  }
  if (r.peek(path) === 0xc0) {
    r.pos++;
    return null;
  }
  if (typeof t === "string") {
    switch (t) {
      case "string":
        return readText(r, path, "a string");
      case "number":
        return readNumber(r, path);
      case "bool": {
        const c = r.u8(path);
        if (c === 0xc2 || c === 0xc3) return c === 0xc3;
        throw internal(path, `expected a bool, got msgpack 0x${c.toString(16)}`);
      }
    }
  }
  switch (t[0]) {
    case "list":
    case "set":
    case "tuple": {
      const n = containerLength(r, "array", path, `a ${t[0]}`);
      if (t[0] === "tuple" && n !== t[1].length) throw internal(path, `expected a tuple of ${t[1].length} elements, got ${n}`);
      const out: unknown[] = [];
      for (let i = 0; i < n; i++) out.push(read(r, t[0] === "tuple" ? t[1][i] : t[1], indexPath(path, i), opts));
      return out;
    }
    case "map": {
      const n = containerLength(r, "map", path, "a map");
      const entries: [string, unknown][] = [];
      for (let i = 0; i < n; i++) {
        const k = readText(r, path, "a map key (string)");
        entries.push([k, read(r, t[1], keyPath(path, k), opts)]);
      }
      return Object.fromEntries(entries);
    }
    case "object": {
      const n = containerLength(r, "map", path, "an object");
      const attrs = t[1];
      // Every attribute, null until read (attribute names are never "__proto__" in a cty object
      // type built by us; a decoded type could say so, hence fromEntries there).
      const out: Record<string, unknown> = Object.hasOwn(attrs, "__proto__") ? Object.fromEntries(Object.keys(attrs).map((k) => [k, null])) : {};
      for (const k in attrs) if (k !== "__proto__") out[k] = null;
      for (let i = 0; i < n; i++) {
        const k = readText(r, path, "an attribute name (string)");
        if (!Object.hasOwn(attrs, k)) {
          if (!opts.ignoreUnknownAttributes) throw internal(attrPath(path, k), "unsupported attribute");
          skip(r, attrPath(path, k));
          continue;
        }
        const v = read(r, attrs[k], attrPath(path, k), opts);
        if (k === "__proto__") Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
        else out[k] = v;
      }
      return out;
    }
  }
}

// ---- JSON ---------------------------------------------------------------------------------------

/** A JSON number with its exact source text. */
class JsonNumber {
  constructor(readonly text: string) {}
}

function readJson(v: unknown, t: AnyCtyType, path: Path, opts: DecodeOptions): unknown {
  if (v === null) return null;
  if (t === "dynamic") {
    if (!isPlainObject(v) || !("type" in v) || !("value" in v)) throw internal(path, 'a dynamic value must be {"type": ..., "value": ...}');
    for (const k of Object.keys(v)) if (k !== "type" && k !== "value") throw internal(path, `invalid key ${JSON.stringify(k)} in dynamically-typed value`);
    return readJson(v.value, typeFromJson(v.type, path), path, opts);
  }
  if (typeof t === "string") {
    switch (t) {
      case "string":
        if (typeof v === "string") return v;
        if (v instanceof JsonNumber) return v.text;
        if (typeof v === "boolean") return String(v);
        throw internal(path, `expected a string, got ${describeValue(v)}`);
      case "number":
        if (v instanceof JsonNumber) return parseNumber(v.text, path);
        if (typeof v === "string") return parseNumber(v, path);
        throw internal(path, `expected a number, got ${describeValue(v)}`);
      case "bool":
        if (typeof v === "boolean") return v;
        if (v === "true" || v === "false") return v === "true";
        throw internal(path, `expected a bool, got ${describeValue(v)}`);
    }
  }
  switch (t[0]) {
    case "list":
    case "set":
    case "tuple": {
      if (!Array.isArray(v)) throw internal(path, `expected a ${t[0]}, got ${describeValue(v instanceof JsonNumber ? 0 : v)}`);
      if (t[0] === "tuple" && v.length !== t[1].length) throw internal(path, `expected a tuple of ${t[1].length} elements, got ${v.length}`);
      return v.map((e, i) => readJson(e, t[0] === "tuple" ? t[1][i] : t[1], indexPath(path, i), opts));
    }
    case "map":
      if (!isPlainObject(v) || v instanceof JsonNumber) throw internal(path, `expected a map, got ${describeValue(v instanceof JsonNumber ? 0 : v)}`);
      return Object.fromEntries(Object.entries(v).map(([k, e]) => [k, readJson(e, t[1], keyPath(path, k), opts)]));
    case "object": {
      if (!isPlainObject(v) || v instanceof JsonNumber) throw internal(path, `expected an object, got ${describeValue(v instanceof JsonNumber ? 0 : v)}`);
      const attrs = t[1];
      for (const k of Object.keys(v)) if (!Object.hasOwn(attrs, k) && !opts.ignoreUnknownAttributes) throw internal(attrPath(path, k), "unsupported attribute");
      return Object.fromEntries(Object.keys(attrs).map((k) => [k, Object.hasOwn(v, k) ? readJson(v[k], attrs[k], attrPath(path, k), opts) : null]));
    }
  }
}

function parseJsonText(bytes: Uint8Array, path: Path): unknown {
  let text: string;
  try {
    text = utf8Decoder.decode(bytes);
  } catch {
    throw internal(path, "JSON is not valid UTF-8");
  }
  try {
    // The reviver's third argument (source text access) keeps numbers exact until their type is known.
    return JSON.parse(text, ((_k: string, v: unknown, ctx?: { source?: string }) =>
      typeof v === "number" ? new JsonNumber(ctx?.source ?? String(v)) : v) as (k: string, v: unknown) => unknown);
  } catch (e) {
    throw internal(path, `invalid JSON (${(e as Error).message})`);
  }
}

// ---- types --------------------------------------------------------------------------------------

function typeFromJson(j: unknown, path: Path): AnyCtyType {
  if (j === "string" || j === "number" || j === "bool" || j === "dynamic") return j;
  if (Array.isArray(j)) {
    const [kind, inner, optional] = j as [unknown, unknown, unknown];
    if ((kind === "list" || kind === "set" || kind === "map") && j.length === 2) return [kind, typeFromJson(inner, path)];
    if (kind === "tuple" && j.length === 2 && Array.isArray(inner)) return ["tuple", inner.map((e) => typeFromJson(e, path))];
    if (kind === "object" && isPlainObject(inner) && (j.length === 2 || (j.length === 3 && Array.isArray(optional)))) {
      return ["object", Object.fromEntries(Object.entries(inner).map(([k, e]) => [k, typeFromJson(e, attrPath(path, k))]))];
    }
  }
  throw internal(path, `invalid type description ${JSON.stringify(j)?.slice(0, 80)}`);
}

function parseType(text: string, path: Path): AnyCtyType {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    throw internal(path, `invalid type description ${JSON.stringify(text.slice(0, 80))}`);
  }
  return typeFromJson(j, path);
}

/**
 * A tfplugin6 DynamicValue as a JS value of the given type: null, UNKNOWN (plain or refined
 * unknown, at any depth), numbers, booleans, strings, arrays (lists, sets, tuples), plain objects
 * (maps, objects: every attribute of the type present, null when unset). Reads `msgpack` when it is
 * non-empty, else `json`.
 */
export function decodeDynamic(dv: DynamicValue, type: CtyType | AnyCtyType, options: DecodeOptions = {}): unknown {
  if (dv.msgpack && dv.msgpack.length > 0) {
    const r = new Reader(dv.msgpack);
    const v = read(r, type, "", options);
    if (r.pos !== dv.msgpack.length) throw internal("", `${dv.msgpack.length - r.pos} bytes after the msgpack value`);
    return v;
  }
  if (dv.json && dv.json.length > 0) return readJson(parseJsonText(dv.json, ""), type, "", options);
  throw internal("", "the DynamicValue has neither msgpack nor json");
}

// ---- core <-> Terraform -------------------------------------------------------------------------

type Bag = Record<string, unknown>;

function mapNested(v: unknown, a: TfAttribute, inner: (o: Bag, attrs: TfAttribute[]) => Bag): unknown {
  const n = a.nested!;
  const one = (o: unknown): unknown => (isPlainObject(o) ? inner(o, n.attributes) : o);
  switch (n.nesting) {
    case "single":
      return one(v);
    case "list":
      return Array.isArray(v) ? v.map(one) : v;
    case "map":
      return isPlainObject(v) ? Object.fromEntries(Object.entries(v).map(([k, e]) => [k, one(e)])) : v;
  }
}

/**
 * A decoded Terraform object as the core's property bag: snake_case attributes become the core's
 * camelCase names (recursively through nested attributes; map keys are data and keep their
 * spelling); null attributes are left out; UNKNOWN passes through at any depth.
 */
export function toCore(value: Bag | null, attrs: TfAttribute[]): Bag {
  const out: Bag = {};
  if (!value) return out;
  for (const a of attrs) {
    const v = value[a.name];
    if (v === null || v === undefined) continue;
    out[a.coreName] = a.nested ? mapNested(v, a, toCore) : v;
  }
  return out;
}

/**
 * A core property bag as a Terraform object: every attribute present (null when the core has no
 * value), camelCase names to snake_case, properties the schema does not know dropped.
 */
export function fromCore(props: Bag, attrs: TfAttribute[]): Bag {
  const out: Bag = {};
  for (const a of attrs) {
    const v = props[a.coreName];
    out[a.name] = v === null || v === undefined ? null : a.nested ? mapNested(v, a, fromCore) : v;
  }
  return out;
}
