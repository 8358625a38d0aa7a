/**
 * OVSDB data on the wire (RFC 7047 section 5.1) and typed builders of database operations
 * (section 5.2).
 *
 * Wire forms:
 *   atom       "text" | 42 | 1.5 | true | ["uuid", "<uuid>"] | ["named-uuid", "<id>"]
 *   set        ["set", [atom, ...]]; a set of exactly one element may also be sent as the bare atom
 *   map        ["map", [[key, value], ...]]
 *
 * In TypeScript: strings, numbers and booleans are themselves; UUIDs are `{ uuid }` and named UUIDs
 * `{ namedUuid }`; sets are `OvsdbSet`, maps `OvsdbMap`. A JS array is never a datum, so values that
 * are already in wire form (e.g. column values read back from a `select`) can be passed through
 * unchanged wherever a value is expected.
 */
import { BaremetalError } from "../../core/errors";

export interface UuidRef {
  readonly uuid: string;
}
export interface NamedUuidRef {
  readonly namedUuid: string;
}
export type Atom = string | number | boolean | UuidRef | NamedUuidRef;

export class OvsdbSet {
  readonly items: Atom[];
  constructor(items: Iterable<Atom> = []) {
    this.items = [...items];
  }
}

export class OvsdbMap {
  readonly entries: [Atom, Atom][];
  constructor(entries: Iterable<[Atom, Atom]> = []) {
    this.entries = [...entries];
  }
  /** The map as string keys to string values (a map of other types throws). */
  toRecord(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [k, v] of this.entries) {
      if (typeof k !== "string" || typeof v !== "string") throw dataError(`expected a map of strings, got ${JSON.stringify(encodeDatum(this))}`);
      out[k] = v;
    }
    return out;
  }
}

export type Datum = Atom | OvsdbSet | OvsdbMap;
/** A JSON value already in wire form. */
export type Wire = unknown;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ID = /^[A-Za-z_][A-Za-z0-9_]*$/;

function dataError(message: string): BaremetalError {
  return new BaremetalError("backend", `OVSDB data: ${message}`);
}

export function uuid(u: string): UuidRef {
  if (!UUID.test(u)) throw dataError(`not a UUID: ${JSON.stringify(u)}`);
  return { uuid: u.toLowerCase() };
}

export function namedUuid(id: string): NamedUuidRef {
  if (!ID.test(id)) throw dataError(`a named-uuid must be an identifier ([A-Za-z_][A-Za-z0-9_]*), got ${JSON.stringify(id)}`);
  return { namedUuid: id };
}

export function setOf(...items: Atom[]): OvsdbSet {
  return new OvsdbSet(items);
}

export function mapOf(record: Record<string, string> | Iterable<[Atom, Atom]>): OvsdbMap {
  return new OvsdbMap(Symbol.iterator in record ? (record as Iterable<[Atom, Atom]>) : Object.entries(record));
}

export function isUuidRef(v: unknown): v is UuidRef {
  return typeof v === "object" && v !== null && !Array.isArray(v) && typeof (v as UuidRef).uuid === "string" && Object.keys(v).length === 1;
}

export function isNamedUuidRef(v: unknown): v is NamedUuidRef {
  return typeof v === "object" && v !== null && !Array.isArray(v) && typeof (v as NamedUuidRef).namedUuid === "string" && Object.keys(v).length === 1;
}

// ---- encoding ------------------------------------------------------------------------------------

export function encodeAtom(a: Atom): Wire {
  if (typeof a === "string" || typeof a === "boolean") return a;
  if (typeof a === "number") {
    if (!Number.isFinite(a)) throw dataError(`a number must be finite, got ${a}`);
    return a;
  }
  if (isUuidRef(a)) return ["uuid", uuid(a.uuid).uuid];
  if (isNamedUuidRef(a)) return ["named-uuid", namedUuid(a.namedUuid).namedUuid];
  throw dataError(`not an atom: ${JSON.stringify(a)}`);
}

/** Encodes a datum; a set is always sent as ["set", [...]] (valid for every set, whatever its size). */
export function encodeDatum(d: Datum): Wire {
  if (d instanceof OvsdbSet) return ["set", d.items.map(encodeAtom)];
  if (d instanceof OvsdbMap) return ["map", d.entries.map(([k, v]) => [encodeAtom(k), encodeAtom(v)])];
  return encodeAtom(d);
}

/** Encodes a datum, or passes a value already in wire form (a JS array) through. */
export function encodeValue(v: Datum | Wire): Wire {
  if (Array.isArray(v)) return v;
  return encodeDatum(v as Datum);
}

export function encodeRow(row: Record<string, Datum | Wire>): Record<string, Wire> {
  const out: Record<string, Wire> = {};
  for (const [k, v] of Object.entries(row)) out[k] = encodeValue(v);
  return out;
}

// ---- decoding ------------------------------------------------------------------------------------

export function decodeAtom(w: Wire): Atom {
  if (typeof w === "string" || typeof w === "boolean") return w;
  if (typeof w === "number") return w;
  if (Array.isArray(w) && w.length === 2 && typeof w[1] === "string") {
    if (w[0] === "uuid") return uuid(w[1]);
    if (w[0] === "named-uuid") return namedUuid(w[1]);
  }
  throw dataError(`not an atom: ${JSON.stringify(w)}`);
}

/** Decodes any wire value. A bare atom decodes to the atom: use `decodeSet` for a set column. */
export function decodeDatum(w: Wire): Datum {
  if (Array.isArray(w) && w.length === 2 && Array.isArray(w[1])) {
    if (w[0] === "set") return new OvsdbSet((w[1] as Wire[]).map(decodeAtom));
    if (w[0] === "map") {
      return new OvsdbMap(
        (w[1] as Wire[]).map((pair) => {
          if (!Array.isArray(pair) || pair.length !== 2) throw dataError(`a map entry must be [key, value], got ${JSON.stringify(pair)}`);
          return [decodeAtom(pair[0]), decodeAtom(pair[1])] as [Atom, Atom];
        }),
      );
    }
  }
  return decodeAtom(w);
}

/** The elements of a set column: ["set", [...]] or a bare atom (a set of one). */
export function decodeSet(w: Wire): Atom[] {
  const d = decodeDatum(w);
  if (d instanceof OvsdbMap) throw dataError(`expected a set, got a map: ${JSON.stringify(w)}`);
  return d instanceof OvsdbSet ? d.items : [d];
}

/** The value of an optional column (a set of at most one element). */
export function decodeOptional(w: Wire): Atom | undefined {
  const items = decodeSet(w);
  if (items.length > 1) throw dataError(`expected at most one value, got ${JSON.stringify(w)}`);
  return items[0];
}

export function decodeMap(w: Wire): OvsdbMap {
  const d = decodeDatum(w);
  if (!(d instanceof OvsdbMap)) throw dataError(`expected a map, got ${JSON.stringify(w)}`);
  return d;
}

export function decodeStringMap(w: Wire): Record<string, string> {
  return decodeMap(w).toRecord();
}

export function decodeUuid(w: Wire): string {
  const a = decodeAtom(w);
  if (!isUuidRef(a)) throw dataError(`expected a UUID, got ${JSON.stringify(w)}`);
  return a.uuid;
}

// ---- operations ----------------------------------------------------------------------------------

export type ConditionFunction = "<" | "<=" | "==" | "!=" | ">=" | ">" | "includes" | "excludes";
export type Condition = [column: string, fn: ConditionFunction, value: Wire];
export type Mutator = "+=" | "-=" | "*=" | "/=" | "%=" | "insert" | "delete";
export type Mutation = [column: string, mutator: Mutator, value: Wire];

export interface InsertOp {
  op: "insert";
  table: string;
  row: Record<string, Wire>;
  "uuid-name"?: string;
}
export interface SelectOp {
  op: "select";
  table: string;
  where: Condition[];
  columns?: string[];
}
export interface UpdateOp {
  op: "update";
  table: string;
  where: Condition[];
  row: Record<string, Wire>;
}
export interface MutateOp {
  op: "mutate";
  table: string;
  where: Condition[];
  mutations: Mutation[];
}
export interface DeleteOp {
  op: "delete";
  table: string;
  where: Condition[];
}
export interface WaitOp {
  op: "wait";
  table: string;
  where: Condition[];
  columns: string[];
  until: "==" | "!=";
  rows: Record<string, Wire>[];
  timeout?: number;
}
export interface CommitOp {
  op: "commit";
  durable: boolean;
}
export interface AbortOp {
  op: "abort";
}
export interface CommentOp {
  op: "comment";
  comment: string;
}
export interface AssertOp {
  op: "assert";
  lock: string;
}
export type Operation = InsertOp | SelectOp | UpdateOp | MutateOp | DeleteOp | WaitOp | CommitOp | AbortOp | CommentOp | AssertOp;

/** Result of one operation of a successful transaction. */
export interface OperationResult {
  /** select */
  rows?: Record<string, Wire>[];
  /** update, mutate, delete */
  count?: number;
  /** insert: the new row's UUID */
  uuid?: string;
}

/** A condition; the value is encoded (a datum) or passed through (wire form). */
export function cond(column: string, fn: ConditionFunction, value: Datum | Wire): Condition {
  return [column, fn, encodeValue(value)];
}

export function mutation(column: string, mutator: Mutator, value: Datum | Wire): Mutation {
  return [column, mutator, encodeValue(value)];
}

type Row = Record<string, Datum | Wire>;

export const ops = {
  insert(table: string, row: Row, uuidName?: string): InsertOp {
    if (uuidName !== undefined) namedUuid(uuidName);
    return { op: "insert", table, row: encodeRow(row), ...(uuidName !== undefined ? { "uuid-name": uuidName } : {}) };
  },
  select(table: string, where: Condition[], columns?: string[]): SelectOp {
    return { op: "select", table, where, ...(columns ? { columns } : {}) };
  },
  update(table: string, where: Condition[], row: Row): UpdateOp {
    return { op: "update", table, where, row: encodeRow(row) };
  },
  mutate(table: string, where: Condition[], mutations: Mutation[]): MutateOp {
    return { op: "mutate", table, where, mutations };
  },
  delete(table: string, where: Condition[]): DeleteOp {
    return { op: "delete", table, where };
  },
  /**
   * Holds until (or checks that, with timeout 0) the rows matching `where`, projected to
   * `columns`, are (`==`) or are not (`!=`) exactly `rows`.
   */
  wait(table: string, where: Condition[], columns: string[], until: "==" | "!=", rows: Row[], timeoutMs?: number): WaitOp {
    return { op: "wait", table, where, columns, until, rows: rows.map(encodeRow), ...(timeoutMs !== undefined ? { timeout: timeoutMs } : {}) };
  },
  commit(durable: boolean): CommitOp {
    return { op: "commit", durable };
  },
  abort(): AbortOp {
    return { op: "abort" };
  },
  comment(comment: string): CommentOp {
    return { op: "comment", comment };
  },
  assert(lock: string): AssertOp {
    return { op: "assert", lock };
  },
};

/** A short description of an operation for error messages: `update Port where name == "p1"`. */
export function describeOperation(o: Operation): string {
  const where = (w: Condition[]) => (w.length ? ` where ${w.map(([c, f, v]) => `${c} ${f} ${JSON.stringify(v)}`).join(" and ")}` : "");
  switch (o.op) {
    case "insert":
      return `insert into ${o.table}${o["uuid-name"] ? ` (${o["uuid-name"]})` : ""}`;
    case "select":
    case "delete":
      return `${o.op} ${o.table}${where(o.where)}`;
    case "update":
      return `update ${o.table}${where(o.where)} (${Object.keys(o.row).join(", ")})`;
    case "mutate":
      return `mutate ${o.table}${where(o.where)} (${o.mutations.map(([c, m]) => `${c} ${m}`).join(", ")})`;
    case "wait":
      return `wait on ${o.table}${where(o.where)} until ${o.columns.join(", ") || "rows"} ${o.until} expected${o.timeout ? ` (${o.timeout} ms)` : ""}`;
    case "commit":
      return `commit${o.durable ? " (durable)" : ""}`;
    case "abort":
      return "abort";
    case "comment":
      return `comment ${JSON.stringify(o.comment)}`;
    case "assert":
      return `assert lock ${JSON.stringify(o.lock)}`;
  }
}
