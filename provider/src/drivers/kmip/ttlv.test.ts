/**
 * TTLV codec and KMIP message encoding, on byte-exact examples derived by hand from the structure
 * the KMIP 1.2 specification gives (section 9.1: 3-byte tag, 1-byte type, 4-byte length, value
 * padded to 8 bytes), and cross-checked with a third-party KMIP implementation: PyKMIP's own
 * message parser (Debian python3-pykmip) must read what we encode.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { describeWithPeer } from "../../../../test/harness/processes";
import { decodeAttributes, decodeResponse, decodeSymmetricKey, encodeAttributes, encodeRequest, requests, RevocationReasonCode, State } from "./client";
import {
  bigInteger,
  bigIntegerBytes,
  boolean,
  byteString,
  dateTime,
  decode,
  encode,
  enumeration,
  integer,
  interval,
  ItemType,
  longInteger,
  messageLength,
  structure,
  Tag,
  textString,
  TtlvError,
} from "./ttlv";

const hex = (s: string) => Buffer.from(s.replace(/[\s|]/g, ""), "hex");
const T = 0x420020; // the tag the specification's examples use

describe("TTLV items (byte-exact)", () => {
  const cases: [string, ReturnType<typeof integer>, string][] = [
    ["Integer 8", integer(T, 8), "420020 | 02 | 00000004 | 00000008 00000000"],
    ["Integer -1", integer(T, -1), "420020 | 02 | 00000004 | FFFFFFFF 00000000"],
    ["Long Integer 123456789000000000", longInteger(T, 123456789000000000n), "420020 | 03 | 00000008 | 01B69B4BA5749200"],
    ["Big Integer 1234567890000000000000000000", bigInteger(T, 1234567890000000000000000000n), "420020 | 04 | 00000010 | 0000000003FD35EB 6BC2DF4618080000"],
    ["Big Integer -1", bigInteger(T, -1n), "420020 | 04 | 00000008 | FFFFFFFFFFFFFFFF"],
    ["Enumeration 255", enumeration(T, 255), "420020 | 05 | 00000004 | 000000FF 00000000"],
    ["Boolean true", boolean(T, true), "420020 | 06 | 00000008 | 0000000000000001"],
    ["Text String Hello World", textString(T, "Hello World"), "420020 | 07 | 0000000B | 48656C6C6F20576F 726C640000000000"],
    ["Text String of 8 bytes (no padding)", textString(T, "ABCDEFGH"), "420020 | 07 | 00000008 | 4142434445464748"],
    ["Byte String 01 02 03", byteString(T, Buffer.from([1, 2, 3])), "420020 | 08 | 00000003 | 0102030000000000"],
    ["Date-Time 2008-03-14T11:56:40Z", dateTime(T, new Date("2008-03-14T11:56:40Z")), "420020 | 09 | 00000008 | 0000000047DA67F8"],
    ["Interval 10 days", interval(T, 864000), "420020 | 0A | 00000004 | 000D2F00 00000000"],
    [
      "Structure { Enumeration 254, Integer 255 }",
      structure(T, enumeration(0x420004, 254), integer(0x420005, 255)),
      "420020 | 01 | 00000020 | 420004 | 05 | 00000004 | 000000FE 00000000 | 420005 | 02 | 00000004 | 000000FF 00000000",
    ],
  ];
  for (const [name, item, bytes] of cases) {
    test(`${name}: encodes and decodes`, () => {
      expect(encode(item).toString("hex")).toBe(hex(bytes).toString("hex"));
      expect(decode(hex(bytes))).toEqual(item);
    });
  }

  test("Big Integer sign extension at the 8-byte boundary", () => {
    expect(bigIntegerBytes(0x7fffffffffffffffn).toString("hex")).toBe("7fffffffffffffff");
    expect(bigIntegerBytes(0x8000000000000000n).toString("hex")).toBe("00000000000000008000000000000000");
    expect(bigIntegerBytes(-(1n << 63n)).toString("hex")).toBe("8000000000000000");
    expect(bigIntegerBytes(-(1n << 63n) - 1n).toString("hex")).toBe("ffffffffffffffff7fffffffffffffff");
    for (const v of [0n, 1n, -1n, 255n, -256n, 1n << 64n, -(1n << 64n), 12345678901234567890123456789n])
      expect(decode(encode(bigInteger(T, v)))).toEqual(bigInteger(T, v));
  });

  test("UTF-8 text: the length counts bytes", () => {
    const e = encode(textString(T, "clé"));
    expect(e.readUInt32BE(4)).toBe(4);
    expect(e.length).toBe(16);
    expect(decode(e)).toEqual(textString(T, "clé"));
  });

  test("values that do not fit their type are refused when encoding", () => {
    expect(() => encode(integer(T, 2 ** 31))).toThrow(TtlvError);
    expect(() => encode(enumeration(T, -1))).toThrow(TtlvError);
    expect(() => encode(integer(0x1000000, 1))).toThrow(/tag/);
  });
});

describe("TTLV decoder is strict", () => {
  test.each([
    ["a truncated header", "4200200200"],
    ["an Integer of length 8", "420020 | 02 | 00000008 | 0000000000000008"],
    ["a length running past the buffer", "420020 | 07 | 00000010 | 4142434445464748"],
    ["non-zero padding", "420020 | 02 | 00000004 | 00000008 00000001"],
    ["an unknown type", "420020 | 0B | 00000000"],
    ["a Boolean of 2", "420020 | 06 | 00000008 | 0000000000000002"],
    ["invalid UTF-8", "420020 | 07 | 00000001 | FF00000000000000"],
    ["a child running past its structure", "420020 | 01 | 00000008 | 420004 | 05 | 00000004 | 000000FE 00000000"],
    ["trailing bytes", "420020 | 05 | 00000004 | 000000FF 00000000 | 00"],
  ])("refuses %s", (_, bytes) => {
    expect(() => decode(hex(bytes))).toThrow(TtlvError);
  });

  test("refuses nesting deeper than 32 structures", () => {
    let item = integer(T, 1);
    for (let i = 0; i < 40; i++) item = structure(T, item);
    expect(() => decode(encode(item))).toThrow(/deeper/);
  });

  test("messageLength frames a stream", () => {
    const m = encode(structure(T, textString(T, "Hello World")));
    expect(messageLength(m.subarray(0, 7))).toBeUndefined();
    expect(messageLength(m.subarray(0, 8))).toBe(m.length);
  });
});

describe("KMIP messages", () => {
  test("a Get request message (byte-exact, derived from sections 6, 7.1 and 9.1)", () => {
    const expected = hex(`
      420078 | 01 | 00000070
        420077 | 01 | 00000038
          420069 | 01 | 00000020
            42006A | 02 | 00000004 | 00000001 00000000
            42006B | 02 | 00000004 | 00000002 00000000
          42000D | 02 | 00000004 | 00000001 00000000
        42000F | 01 | 00000028
          42005C | 05 | 00000004 | 0000000A 00000000
          420079 | 01 | 00000010
            420094 | 07 | 00000001 | 3100000000000000
    `);
    expect(encodeRequest([requests.get("1")]).toString("hex")).toBe(expected.toString("hex"));
  });

  test("a batch carries the Stop option and a Unique Batch Item ID per item", () => {
    const m = decode(encodeRequest([requests.revoke("7", RevocationReasonCode.CessationOfOperation), requests.destroy("7")]));
    if (m.type !== ItemType.Structure) throw new Error("not a structure");
    const header = m.value[0];
    if (header.type !== ItemType.Structure) throw new Error("no header");
    expect(header.value.map((i) => i.tag)).toEqual([Tag.ProtocolVersion, Tag.BatchErrorContinuationOption, Tag.BatchCount]);
    const items = m.value.filter((i) => i.tag === Tag.BatchItem);
    expect(items).toHaveLength(2);
    for (const [n, it] of items.entries()) {
      if (it.type !== ItemType.Structure) throw new Error("not a structure");
      expect(it.value[1]).toEqual(byteString(Tag.UniqueBatchItemId, Buffer.from([0, 0, 0, n])));
    }
  });

  test("attributes round-trip", () => {
    const a = {
      names: ["vol-db", "vol-db@v2"],
      cryptographicAlgorithm: 3,
      cryptographicLength: 512,
      cryptographicUsageMask: 12,
      state: State.Active,
      objectGroups: ["baremetal"],
      applicationSpecificInformation: [{ namespace: "baremetal.name", data: "vol-db" }],
      operationPolicyName: "default",
    };
    expect(decodeAttributes(encodeAttributes(a))).toEqual(a);
  });

  test("a repeated multi-valued attribute carries Attribute Index 1, 2, ... (absent for the first)", () => {
    const items = encodeAttributes({ names: ["a", "b", "c"], objectGroups: ["g"] });
    const indexOf = (i: (typeof items)[number]) => (i.type === ItemType.Structure ? i.value.find((c) => c.tag === Tag.AttributeIndex)?.value : undefined);
    expect(items.map(indexOf)).toEqual([undefined, 1, 2, undefined]);
    expect(encode(items[1]).toString("hex")).toBe(
      hex(`420008 | 01 | 00000048
             42000A | 07 | 00000004 | 4E616D6500000000
             420009 | 02 | 00000004 | 00000001 00000000
             42000B | 01 | 00000020
               420055 | 07 | 00000001 | 6200000000000000
               420054 | 05 | 00000004 | 00000001 00000000`).toString("hex"),
    );
  });

  test("a Get response with a Raw key (hand-built, section 2.2 Key Block) yields the material", () => {
    const key = Buffer.alloc(32, 0xab);
    const response = encode(
      structure(
        Tag.ResponseMessage,
        structure(
          Tag.ResponseHeader,
          structure(Tag.ProtocolVersion, integer(Tag.ProtocolVersionMajor, 1), integer(Tag.ProtocolVersionMinor, 2)),
          dateTime(Tag.TimeStamp, new Date("2026-01-01T00:00:00Z")),
          integer(Tag.BatchCount, 1),
        ),
        structure(
          Tag.BatchItem,
          enumeration(Tag.Operation, 0x0a),
          enumeration(Tag.ResultStatus, 0),
          structure(
            Tag.ResponsePayload,
            enumeration(Tag.ObjectType, 2),
            textString(Tag.UniqueIdentifier, "42"),
            structure(
              Tag.SymmetricKey,
              structure(
                Tag.KeyBlock,
                enumeration(Tag.KeyFormatType, 1),
                structure(Tag.KeyValue, byteString(Tag.KeyMaterial, key)),
                enumeration(Tag.CryptographicAlgorithm, 3),
                integer(Tag.CryptographicLength, 256),
              ),
            ),
          ),
        ),
      ),
    );
    const r = decodeResponse(response);
    expect(r.version).toEqual({ major: 1, minor: 2 });
    expect(r.timeStamp?.toISOString()).toBe("2026-01-01T00:00:00.000Z");
    const k = decodeSymmetricKey(r.items[0]);
    expect(k).toEqual({ uid: "42", formatType: 1, algorithm: 3, length: 256, material: key });
  });

  test("a Transparent Symmetric Key block yields its Key", () => {
    const key = Buffer.alloc(64, 0x5a);
    const k = decodeSymmetricKey({
      status: 0,
      payload: structure(
        Tag.ResponsePayload,
        enumeration(Tag.ObjectType, 2),
        textString(Tag.UniqueIdentifier, "9"),
        structure(Tag.SymmetricKey, structure(Tag.KeyBlock, enumeration(Tag.KeyFormatType, 7), structure(Tag.KeyValue, structure(Tag.KeyMaterial, byteString(Tag.Key, key))))),
      ),
    });
    expect(k.material).toEqual(key);
  });
});

// A third-party KMIP implementation reads what we encode: PyKMIP's message classes (strict about
// lengths, padding and which fields each payload has).
const PYTHON = "/usr/bin/python3";
const pykmip = fs.existsSync(PYTHON) && (() => {
  try {
    execFileSync(PYTHON, ["-c", "import kmip.core.messages.messages"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();
// Skipped only where Debian's python3-pykmip is not installed (scripts/bootstrap.sh installs it), never under CI.
const withPykmip = describeWithPeer({ ok: pykmip, why: "python3-pykmip is not installed" }, "kmip ttlv.test.ts (PyKMIP cross-check)");

const PARSE = `
import sys, json, binascii
from kmip.core.messages import messages
from kmip.core import utils, enums
m = messages.RequestMessage()
m.read(utils.BytearrayStream(binascii.unhexlify(sys.stdin.read().strip())), kmip_version=enums.KMIPVersion.KMIP_1_2)
h = m.request_header
out = {"version": str(h.protocol_version), "count": h.batch_count.value, "items": []}
for bi in m.batch_items:
    p = bi.request_payload
    item = {"op": bi.operation.value.name, "id": bi.unique_batch_item_id.value.hex() if bi.unique_batch_item_id else None}
    if hasattr(p, "unique_identifier") and p.unique_identifier is not None:
        u = p.unique_identifier
        item["uid"] = u if isinstance(u, str) else u.value
    if bi.operation.value == enums.Operation.CREATE:
        item["object_type"] = p.object_type.name
        attrs = []
        for a in p.template_attribute.attributes:
            v = a.attribute_value
            name = a.attribute_name.value
            if name == "Name": v = v.name_value.value
            elif name == "Application Specific Information": v = [v.application_namespace, v.application_data]
            elif hasattr(v, "value"): v = v.value.name if hasattr(v.value, "name") else v.value
            attrs.append([name, v])
        item["attributes"] = attrs
    if bi.operation.value == enums.Operation.REVOKE:
        item["reason"] = p.revocation_reason.revocation_code.value.name
        item["message"] = p.revocation_reason.revocation_message.value
    if bi.operation.value == enums.Operation.LOCATE:
        item["maximum_items"] = p.maximum_items
        item["attributes"] = [[a.attribute_name.value, a.attribute_value.name_value.value] for a in p.attributes]
    if bi.operation.value == enums.Operation.GET_ATTRIBUTES:
        item["names"] = p.attribute_names
    out["items"].append(item)
print(json.dumps(out))
`;

withPykmip("PyKMIP's parser reads our requests", () => {
  test("Create, Activate, Locate, Revoke, Get, Get Attributes, Destroy in one batch", () => {
    const msg = encodeRequest([
      requests.create({
        names: ["vol-db"],
        cryptographicAlgorithm: 3,
        cryptographicLength: 512,
        cryptographicUsageMask: 12,
        objectGroups: ["baremetal"],
        applicationSpecificInformation: [{ namespace: "baremetal.name", data: "vol-db" }],
      }),
      requests.activate("1"),
      requests.locate({ names: ["vol-db"] }, 5),
      requests.revoke("1", RevocationReasonCode.Superseded, "superseded by 2"),
      requests.get("1"),
      requests.getAttributes("1", ["State", "Name"]),
      requests.destroy("1"),
    ]);
    const parsed = JSON.parse(execFileSync(PYTHON, ["-c", PARSE], { input: msg.toString("hex"), encoding: "utf8" }));
    expect(parsed).toEqual({
      version: "1.2",
      count: 7,
      items: [
        {
          op: "CREATE",
          id: "00000000",
          object_type: "SYMMETRIC_KEY",
          attributes: [
            ["Name", "vol-db"],
            ["Cryptographic Algorithm", "AES"],
            ["Cryptographic Length", 512],
            ["Cryptographic Usage Mask", 12],
            ["Application Specific Information", ["baremetal.name", "vol-db"]],
            ["Object Group", "baremetal"],
          ],
        },
        { op: "ACTIVATE", id: "00000001", uid: "1" },
        { op: "LOCATE", id: "00000002", maximum_items: 5, attributes: [["Name", "vol-db"]] },
        { op: "REVOKE", id: "00000003", uid: "1", reason: "SUPERSEDED", message: "superseded by 2" },
        { op: "GET", id: "00000004", uid: "1" },
        { op: "GET_ATTRIBUTES", id: "00000005", uid: "1", names: ["State", "Name"] },
        { op: "DESTROY", id: "00000006", uid: "1" },
      ],
    });
  });
});
