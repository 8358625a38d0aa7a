/**
 * The JSON-RPC stream framing and the OVSDB data encodings, without a server.
 */
import { isBaremetalError } from "../../core/errors";
import {
  decodeAtom,
  decodeDatum,
  decodeMap,
  decodeOptional,
  decodeSet,
  decodeStringMap,
  describeOperation,
  encodeDatum,
  encodeValue,
  mapOf,
  mutation,
  cond,
  namedUuid,
  ops,
  OvsdbMap,
  OvsdbSet,
  setOf,
  uuid,
} from "./data";
import { JsonStreamDecoder } from "./framing";

const enc = (s: string) => Buffer.from(s, "utf8");

/** Feeds `bytes` cut at the given offsets; returns every message decoded. */
function feed(bytes: Buffer, cuts: number[], d = new JsonStreamDecoder()): unknown[] {
  const out: unknown[] = [];
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    out.push(...d.push(bytes.subarray(prev, c)));
    prev = c;
  }
  return out;
}

describe("JSON-RPC stream framing", () => {
  const messages = [
    { id: 1, method: "list_dbs", params: [] },
    { id: null, method: "update", params: ["x", { Port: { "6a1d0000-0000-4000-8000-000000000001": { new: { name: "p{1}" } } } }] },
    { id: "echo", method: "echo", params: [] },
    { id: 2, result: ["Open_vSwitch", "_Server"], error: null },
    { id: 3, result: [{ rows: [{ name: 'quote " and brace } and bracket ]', note: "back\\slash\\", u: "é€😀" }] }], error: null },
  ];
  const stream = enc(messages.map((m) => JSON.stringify(m)).join(""));

  it("decodes concatenated messages in one chunk, with or without whitespace between them", () => {
    expect(new JsonStreamDecoder().push(stream)).toEqual(messages);
    const spaced = enc(messages.map((m) => JSON.stringify(m)).join(" \n\t\r\n"));
    expect(new JsonStreamDecoder().push(spaced)).toEqual(messages);
  });

  it("decodes the same messages fed one byte at a time", () => {
    const d = new JsonStreamDecoder();
    const out: unknown[] = [];
    for (let i = 0; i < stream.length; i++) out.push(...d.push(stream.subarray(i, i + 1)));
    expect(out).toEqual(messages);
    expect(d.pendingBytes).toBe(0);
  });

  it("decodes them cut at every single position (two chunks) and at random positions (many chunks)", () => {
    for (let cut = 1; cut < stream.length; cut++) expect(feed(stream, [cut])).toEqual(messages);
    let seed = 42;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let round = 0; round < 200; round++) {
      const cuts = Array.from({ length: 1 + Math.floor(rand() * 12) }, () => Math.floor(rand() * stream.length)).sort((a, b) => a - b);
      expect(feed(stream, cuts)).toEqual(messages);
    }
  });

  it("is not fooled by braces, brackets and escaped quotes inside strings", () => {
    const tricky = [
      { s: "}" },
      { s: "{{{[[[" },
      { s: '\\"}' }, // backslash then quote: the string goes on
      { s: "\\" }, // a string that ends in a backslash
      { s: '\\\\"' },
      { s: "\u0000\u001f\u2028" },
      { a: [[], {}, [{}], ""] },
    ];
    const bytes = enc(tricky.map((m) => JSON.stringify(m)).join(""));
    expect(new JsonStreamDecoder().push(bytes)).toEqual(tricky);
    for (let cut = 1; cut < bytes.length; cut++) expect(feed(bytes, [cut])).toEqual(tricky);
  });

  it("decodes UTF-8 characters split across chunks (2, 3 and 4 byte sequences)", () => {
    const msg = { id: 9, result: "é€😀 naïve", error: null };
    const bytes = enc(JSON.stringify(msg));
    for (const ch of ["é", "€", "😀"]) {
      const at = bytes.indexOf(enc(ch));
      for (let k = 1; k < enc(ch).length; k++) expect(feed(bytes, [at + k])).toEqual([msg]);
    }
  });

  it("returns nothing until a message is complete, and keeps the rest for the next chunk", () => {
    const d = new JsonStreamDecoder();
    const a = JSON.stringify({ id: 1, result: [1, 2], error: null });
    const b = JSON.stringify({ id: 2, result: { k: "v" }, error: null });
    expect(d.push(enc(a.slice(0, 10)))).toEqual([]);
    expect(d.pendingBytes).toBe(10);
    expect(d.push(enc(a.slice(10) + b.slice(0, 5)))).toEqual([JSON.parse(a)]);
    expect(d.push(enc(b.slice(5)))).toEqual([JSON.parse(b)]);
    expect(d.pendingBytes).toBe(0);
  });

  it("refuses junk between messages, invalid UTF-8, malformed JSON and oversized messages", () => {
    const err = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(isBaremetalError(e)).toBe(true);
        return (e as Error).message;
      }
      throw new Error("no error");
    };
    expect(err(() => new JsonStreamDecoder().push(enc('{"id":1}x{"id":2}')))).toMatch(/expected '\{' to start a message, got "x"/);
    expect(err(() => new JsonStreamDecoder().push(Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d])))).toMatch(/not valid UTF-8/);
    expect(err(() => new JsonStreamDecoder().push(enc('{"id":1,}')))).toMatch(/malformed JSON-RPC message/);
    const small = new JsonStreamDecoder({ maxMessageBytes: 16 });
    expect(small.push(enc('{"a":1}'))).toEqual([{ a: 1 }]);
    expect(err(() => small.push(enc(`{"a":"${"x".repeat(20)}`)))).toMatch(/larger than 16 bytes/);
  });
});

describe("OVSDB data encodings (RFC 7047 5.1)", () => {
  const U = "550e8400-e29b-41d4-a716-446655440000";

  it("encodes and decodes atoms", () => {
    for (const a of ["", "text", 0, 42, -7, 1.5, true, false]) {
      expect(encodeDatum(a)).toBe(a);
      expect(decodeAtom(a)).toBe(a);
    }
    expect(encodeDatum(uuid(U))).toEqual(["uuid", U]);
    expect(decodeAtom(["uuid", U])).toEqual({ uuid: U });
    expect(encodeDatum(namedUuid("row_1"))).toEqual(["named-uuid", "row_1"]);
    expect(decodeAtom(["named-uuid", "row_1"])).toEqual({ namedUuid: "row_1" });
    expect(() => uuid("not-a-uuid")).toThrow(/not a UUID/);
    expect(() => namedUuid("1bad")).toThrow(/identifier/);
    expect(() => encodeDatum(NaN)).toThrow(/finite/);
  });

  it("round-trips sets and maps, both ways", () => {
    const wires = [
      ["set", []],
      ["set", [101]],
      ["set", [1, 2, 4094]],
      ["set", [["uuid", U]]],
      ["map", []],
      ["map", [["baremetal-owner", "stack-a"], ["k", "v"]]],
      ["map", [[1, ["uuid", U]]]],
    ];
    for (const w of wires) expect(encodeDatum(decodeDatum(w))).toEqual(w);
    const data = [setOf(), setOf("a"), setOf(1, 2, 3), setOf(uuid(U)), mapOf({}), mapOf({ a: "1", b: "2" }), new OvsdbMap([[1, true]])];
    for (const d of data) expect(decodeDatum(encodeDatum(d))).toEqual(d);
  });

  it("reads a set column in both of its forms: a bare atom is a set of one", () => {
    expect(decodeSet(4095)).toEqual([4095]);
    expect(decodeSet(["set", [4095]])).toEqual([4095]);
    expect(decodeSet(["set", []])).toEqual([]);
    expect(decodeSet(["uuid", U])).toEqual([{ uuid: U }]);
    expect(decodeSet(["set", [["uuid", U], ["uuid", U.replace("0000", "0001")]]])).toHaveLength(2);
    expect(decodeOptional(["set", []])).toBeUndefined();
    expect(decodeOptional(101)).toBe(101);
    expect(decodeOptional("access")).toBe("access");
    expect(() => decodeOptional(["set", [1, 2]])).toThrow(/at most one/);
    expect(() => decodeSet(["map", []])).toThrow(/expected a set/);
  });

  it("reads maps, and string maps as records", () => {
    expect(decodeStringMap(["map", [["a", "1"], ["b", "2"]]])).toEqual({ a: "1", b: "2" });
    expect(decodeMap(["map", []]).entries).toEqual([]);
    expect(() => decodeStringMap(["map", [[1, "x"]]])).toThrow(/map of strings/);
    expect(() => decodeMap(["set", []])).toThrow(/expected a map/);
    expect(() => decodeDatum(["map", [["only-key"]]])).toThrow(/\[key, value\]/);
    expect(() => decodeAtom({ not: "an atom" })).toThrow(/not an atom/);
  });

  it("passes values already in wire form through (e.g. columns read back for a wait)", () => {
    expect(encodeValue(["set", [1, 2]])).toEqual(["set", [1, 2]]);
    expect(encodeValue(["map", [["k", "v"]]])).toEqual(["map", [["k", "v"]]]);
    expect(encodeValue(new OvsdbSet([1]))).toEqual(["set", [1]]);
    expect(encodeValue(7)).toBe(7);
  });

  it("builds operations in wire form", () => {
    expect(ops.select("Port", [cond("name", "==", "p1")], ["_uuid", "tag"])).toEqual({
      op: "select",
      table: "Port",
      where: [["name", "==", "p1"]],
      columns: ["_uuid", "tag"],
    });
    expect(ops.insert("Bridge", { name: "br9", ports: setOf(namedUuid("p")) }, "b")).toEqual({
      op: "insert",
      table: "Bridge",
      row: { name: "br9", ports: ["set", [["named-uuid", "p"]]] },
      "uuid-name": "b",
    });
    expect(ops.update("Port", [cond("_uuid", "==", uuid(U))], { tag: 101, trunks: setOf(), vlan_mode: "access" })).toEqual({
      op: "update",
      table: "Port",
      where: [["_uuid", "==", ["uuid", U]]],
      row: { tag: 101, trunks: ["set", []], vlan_mode: "access" },
    });
    expect(ops.mutate("Bridge", [], [mutation("external_ids", "insert", mapOf({ k: "v" })), mutation("external_ids", "delete", setOf("old"))])).toEqual({
      op: "mutate",
      table: "Bridge",
      where: [],
      mutations: [
        ["external_ids", "insert", ["map", [["k", "v"]]]],
        ["external_ids", "delete", ["set", ["old"]]],
      ],
    });
    expect(ops.delete("Port", [cond("name", "==", "x")])).toEqual({ op: "delete", table: "Port", where: [["name", "==", "x"]] });
    const w = ops.wait("Port", [cond("_uuid", "==", uuid(U))], ["tag", "trunks"], "==", [{ tag: ["set", []], trunks: 4095 }], 0);
    expect(w).toEqual({ op: "wait", table: "Port", where: [["_uuid", "==", ["uuid", U]]], columns: ["tag", "trunks"], until: "==", rows: [{ tag: ["set", []], trunks: 4095 }], timeout: 0 });
    expect(ops.comment("hi")).toEqual({ op: "comment", comment: "hi" });
    expect(ops.assert("lock1")).toEqual({ op: "assert", lock: "lock1" });
    expect(ops.commit(true)).toEqual({ op: "commit", durable: true });
    expect(ops.abort()).toEqual({ op: "abort" });
    expect(describeOperation(w)).toBe(`wait on Port where _uuid == ["uuid","${U}"] until tag, trunks == expected`);
    expect(describeOperation(ops.update("Port", [cond("name", "==", "p1")], { tag: 5 }))).toBe('update Port where name == "p1" (tag)');
  });
});
