/**
 * TTLV, the binary encoding of KMIP messages (OASIS KMIP 1.2 specification, section 9.1 "TTLV
 * Encoding"), written from the specification.
 *
 * Every item is Tag (3 bytes), Type (1 byte), Length (4 bytes, big-endian: the length of the value
 * without padding) and Value, padded with zero bytes to a multiple of 8. A Structure's value is the
 * concatenation of its items (each already padded), so its length is always a multiple of 8.
 *
 * | type          | code | value                                                     |
 * | ------------- | ---- | --------------------------------------------------------- |
 * | Structure     | 0x01 | items                                                     |
 * | Integer       | 0x02 | 4 bytes, signed two's complement, + 4 bytes padding       |
 * | Long Integer  | 0x03 | 8 bytes, signed two's complement                          |
 * | Big Integer   | 0x04 | a multiple of 8 bytes, two's complement, sign-extended    |
 * | Enumeration   | 0x05 | 4 bytes, unsigned, + 4 bytes padding                      |
 * | Boolean       | 0x06 | 8 bytes: 0 (false) or 1 (true)                            |
 * | Text String   | 0x07 | UTF-8 bytes, padded                                       |
 * | Byte String   | 0x08 | bytes, padded                                             |
 * | Date-Time     | 0x09 | 8 bytes: signed POSIX time in seconds                     |
 * | Interval      | 0x0A | 4 bytes, unsigned seconds, + 4 bytes padding              |
 *
 * The decoder is strict: a length that does not fit its type, an item running past its structure,
 * non-zero padding or nesting deeper than MAX_DEPTH is a `TtlvError`. It never throws anything else
 * on hostile input.
 */

export enum ItemType {
  Structure = 0x01,
  Integer = 0x02,
  LongInteger = 0x03,
  BigInteger = 0x04,
  Enumeration = 0x05,
  Boolean = 0x06,
  TextString = 0x07,
  ByteString = 0x08,
  DateTime = 0x09,
  Interval = 0x0a,
}

/** The KMIP 1.2 tags this client uses (section 9.1.3.1, "Tags"). */
export enum Tag {
  ActivationDate = 0x420001,
  ApplicationData = 0x420002,
  ApplicationNamespace = 0x420003,
  ApplicationSpecificInformation = 0x420004,
  Attribute = 0x420008,
  AttributeIndex = 0x420009,
  AttributeName = 0x42000a,
  AttributeValue = 0x42000b,
  BatchCount = 0x42000d,
  BatchErrorContinuationOption = 0x42000e,
  BatchItem = 0x42000f,
  CryptographicAlgorithm = 0x420028,
  CryptographicLength = 0x42002a,
  CryptographicUsageMask = 0x42002c,
  DeactivationDate = 0x42002f,
  InitialDate = 0x420039,
  Key = 0x42003f,
  KeyBlock = 0x420040,
  KeyCompressionType = 0x420041,
  KeyFormatType = 0x420042,
  KeyMaterial = 0x420043,
  KeyValue = 0x420045,
  KeyWrappingData = 0x420046,
  Link = 0x42004a,
  LinkType = 0x42004b,
  LinkedObjectIdentifier = 0x42004c,
  MaximumItems = 0x42004f,
  MaximumResponseSize = 0x420050,
  Name = 0x420053,
  NameType = 0x420054,
  NameValue = 0x420055,
  ObjectGroup = 0x420056,
  ObjectType = 0x420057,
  Operation = 0x42005c,
  OperationPolicyName = 0x42005d,
  ProtocolVersion = 0x420069,
  ProtocolVersionMajor = 0x42006a,
  ProtocolVersionMinor = 0x42006b,
  QueryFunction = 0x420074,
  RequestHeader = 0x420077,
  RequestMessage = 0x420078,
  RequestPayload = 0x420079,
  ResponseHeader = 0x42007a,
  ResponseMessage = 0x42007b,
  ResponsePayload = 0x42007c,
  ResultMessage = 0x42007d,
  ResultReason = 0x42007e,
  ResultStatus = 0x42007f,
  RevocationMessage = 0x420080,
  RevocationReason = 0x420081,
  RevocationReasonCode = 0x420082,
  ServerInformation = 0x420088,
  State = 0x42008d,
  SymmetricKey = 0x42008f,
  TemplateAttribute = 0x420091,
  TimeStamp = 0x420092,
  UniqueBatchItemId = 0x420093,
  UniqueIdentifier = 0x420094,
  VendorIdentification = 0x42009d,
}

export type TtlvItem =
  | { tag: number; type: ItemType.Structure; value: TtlvItem[] }
  | { tag: number; type: ItemType.Integer | ItemType.Enumeration | ItemType.Interval; value: number }
  | { tag: number; type: ItemType.LongInteger | ItemType.BigInteger | ItemType.DateTime; value: bigint }
  | { tag: number; type: ItemType.Boolean; value: boolean }
  | { tag: number; type: ItemType.TextString; value: string }
  | { tag: number; type: ItemType.ByteString; value: Buffer };

export type TtlvStructure = Extract<TtlvItem, { type: ItemType.Structure }>;

/** Malformed TTLV (from the peer) or a value that cannot be encoded (a bug of ours). */
export class TtlvError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TtlvError";
  }
}

export const HEADER_BYTES = 8;
export const MAX_DEPTH = 32;

// ---- constructors -------------------------------------------------------------------------------

export const structure = (tag: number, ...items: (TtlvItem | undefined | false)[]): TtlvStructure => ({
  tag,
  type: ItemType.Structure,
  value: items.filter((i): i is TtlvItem => !!i),
});
export const integer = (tag: number, value: number): TtlvItem => ({ tag, type: ItemType.Integer, value });
export const enumeration = (tag: number, value: number): TtlvItem => ({ tag, type: ItemType.Enumeration, value });
export const interval = (tag: number, value: number): TtlvItem => ({ tag, type: ItemType.Interval, value });
export const longInteger = (tag: number, value: bigint): TtlvItem => ({ tag, type: ItemType.LongInteger, value });
export const bigInteger = (tag: number, value: bigint): TtlvItem => ({ tag, type: ItemType.BigInteger, value });
export const boolean = (tag: number, value: boolean): TtlvItem => ({ tag, type: ItemType.Boolean, value });
export const textString = (tag: number, value: string): TtlvItem => ({ tag, type: ItemType.TextString, value });
export const byteString = (tag: number, value: Buffer): TtlvItem => ({ tag, type: ItemType.ByteString, value });
/** Date-Time from a Date (whole seconds; KMIP has no sub-second precision). */
export const dateTime = (tag: number, value: Date): TtlvItem => ({
  tag,
  type: ItemType.DateTime,
  value: BigInt(Math.floor(value.getTime() / 1000)),
});

// ---- encoding -----------------------------------------------------------------------------------

const pad8 = (n: number): number => (n + 7) & ~7;

function checkTag(tag: number): void {
  if (!Number.isInteger(tag) || tag < 0 || tag > 0xffffff) throw new TtlvError(`tag ${tag} does not fit 3 bytes`);
}

/** Big Integer value bytes: two's complement, big-endian, sign-extended to a multiple of 8. */
export function bigIntegerBytes(v: bigint): Buffer {
  const negative = v < 0n;
  // Smallest byte count n such that -2^(8n-1) <= v < 2^(8n-1), rounded up to a multiple of 8.
  let n = 8;
  while (v >= 1n << BigInt(8 * n - 1) || v < -(1n << BigInt(8 * n - 1))) n += 8;
  let u = negative ? (1n << BigInt(8 * n)) + v : v;
  const out = Buffer.alloc(n);
  for (let i = n - 1; i >= 0; i--) {
    out[i] = Number(u & 0xffn);
    u >>= 8n;
  }
  return out;
}

function valueBytes(item: TtlvItem): Buffer {
  switch (item.type) {
    case ItemType.Structure:
      return Buffer.concat(item.value.map(encodeItem));
    case ItemType.Integer: {
      if (!Number.isInteger(item.value) || item.value < -0x80000000 || item.value > 0x7fffffff)
        throw new TtlvError(`Integer ${item.value} does not fit 32 signed bits`);
      const b = Buffer.alloc(4);
      b.writeInt32BE(item.value);
      return b;
    }
    case ItemType.Enumeration:
    case ItemType.Interval: {
      if (!Number.isInteger(item.value) || item.value < 0 || item.value > 0xffffffff)
        throw new TtlvError(`${ItemType[item.type]} ${item.value} does not fit 32 unsigned bits`);
      const b = Buffer.alloc(4);
      b.writeUInt32BE(item.value);
      return b;
    }
    case ItemType.LongInteger:
    case ItemType.DateTime: {
      if (item.value < -(1n << 63n) || item.value >= 1n << 63n) throw new TtlvError(`${ItemType[item.type]} ${item.value} does not fit 64 signed bits`);
      const b = Buffer.alloc(8);
      b.writeBigInt64BE(item.value);
      return b;
    }
    case ItemType.BigInteger:
      return bigIntegerBytes(item.value);
    case ItemType.Boolean: {
      const b = Buffer.alloc(8);
      b[7] = item.value ? 1 : 0;
      return b;
    }
    case ItemType.TextString:
      return Buffer.from(item.value, "utf8");
    case ItemType.ByteString:
      return item.value;
    default:
      throw new TtlvError(`unknown item type ${(item as { type: number }).type}`);
  }
}

/** One item, header and padded value. */
export function encodeItem(item: TtlvItem): Buffer {
  checkTag(item.tag);
  const value = valueBytes(item);
  const out = Buffer.alloc(HEADER_BYTES + pad8(value.length));
  out.writeUIntBE(item.tag, 0, 3);
  out[3] = item.type;
  out.writeUInt32BE(value.length, 4);
  value.copy(out, HEADER_BYTES);
  return out;
}

export const encode = encodeItem;

// ---- decoding -----------------------------------------------------------------------------------

const FIXED_LENGTH: Partial<Record<ItemType, number>> = {
  [ItemType.Integer]: 4,
  [ItemType.Enumeration]: 4,
  [ItemType.Interval]: 4,
  [ItemType.LongInteger]: 8,
  [ItemType.DateTime]: 8,
  [ItemType.Boolean]: 8,
};

function hex(n: number, digits: number): string {
  return "0x" + n.toString(16).toUpperCase().padStart(digits, "0");
}

export function tagName(tag: number): string {
  return Tag[tag] ?? hex(tag, 6);
}

function decodeAt(buf: Buffer, offset: number, end: number, depth: number): { item: TtlvItem; next: number } {
  if (end - offset < HEADER_BYTES) throw new TtlvError(`truncated item header at byte ${offset}`);
  const tag = buf.readUIntBE(offset, 3);
  const type = buf[offset + 3] as ItemType;
  const length = buf.readUInt32BE(offset + 4);
  const start = offset + HEADER_BYTES;
  const padded = pad8(length);
  if (padded < length || start + padded > end)
    throw new TtlvError(`${tagName(tag)} at byte ${offset}: length ${length} runs past its enclosing item`);
  const fixed = FIXED_LENGTH[type];
  if (fixed !== undefined && length !== fixed) throw new TtlvError(`${tagName(tag)}: ${ItemType[type]} with length ${length} (must be ${fixed})`);
  for (let i = start + length; i < start + padded; i++)
    if (buf[i] !== 0) throw new TtlvError(`${tagName(tag)} at byte ${offset}: non-zero padding`);
  const next = start + padded;
  switch (type) {
    case ItemType.Structure: {
      if (depth >= MAX_DEPTH) throw new TtlvError(`structures nested deeper than ${MAX_DEPTH}`);
      const items: TtlvItem[] = [];
      let at = start;
      while (at < start + length) {
        const r = decodeAt(buf, at, start + length, depth + 1);
        items.push(r.item);
        at = r.next;
      }
      return { item: { tag, type, value: items }, next };
    }
    case ItemType.Integer:
      return { item: { tag, type, value: buf.readInt32BE(start) }, next };
    case ItemType.Enumeration:
    case ItemType.Interval:
      return { item: { tag, type, value: buf.readUInt32BE(start) }, next };
    case ItemType.LongInteger:
    case ItemType.DateTime:
      return { item: { tag, type, value: buf.readBigInt64BE(start) }, next };
    case ItemType.BigInteger: {
      if (length === 0 || length % 8 !== 0) throw new TtlvError(`${tagName(tag)}: Big Integer with length ${length} (must be a non-zero multiple of 8)`);
      let v = 0n;
      for (let i = 0; i < length; i++) v = (v << 8n) | BigInt(buf[start + i]);
      if (buf[start] & 0x80) v -= 1n << BigInt(8 * length);
      return { item: { tag, type, value: v }, next };
    }
    case ItemType.Boolean: {
      const v = buf.readBigUInt64BE(start);
      if (v > 1n) throw new TtlvError(`${tagName(tag)}: Boolean value ${v} (must be 0 or 1)`);
      return { item: { tag, type, value: v === 1n }, next };
    }
    case ItemType.TextString: {
      const bytes = buf.subarray(start, start + length);
      let value: string;
      try {
        value = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      } catch {
        throw new TtlvError(`${tagName(tag)}: Text String is not valid UTF-8`);
      }
      return { item: { tag, type, value }, next };
    }
    case ItemType.ByteString:
      return { item: { tag, type, value: Buffer.from(buf.subarray(start, start + length)) }, next };
    default:
      throw new TtlvError(`${tagName(tag)} at byte ${offset}: unknown item type ${hex(type, 2)}`);
  }
}

/** Decodes exactly one item that fills `buf` (a whole message). */
export function decode(buf: Buffer): TtlvItem {
  const { item, next } = decodeAt(buf, 0, buf.length, 0);
  if (next !== buf.length) throw new TtlvError(`${buf.length - next} bytes after the item`);
  return item;
}

/**
 * The byte length of the message that starts `buf` (header + padded value), once its header is in;
 * undefined while fewer than 8 bytes arrived. For framing a stream of messages.
 */
export function messageLength(buf: Buffer): number | undefined {
  if (buf.length < HEADER_BYTES) return undefined;
  return HEADER_BYTES + pad8(buf.readUInt32BE(4));
}

// ---- reading decoded structures -----------------------------------------------------------------

/** The items of `parent` with this tag. */
export function children(parent: TtlvItem, tag: number): TtlvItem[] {
  if (parent.type !== ItemType.Structure) return [];
  return parent.value.filter((i) => i.tag === tag);
}

export function child(parent: TtlvItem, tag: number): TtlvItem | undefined {
  return children(parent, tag)[0];
}

function wrongType(item: TtlvItem, want: string): TtlvError {
  return new TtlvError(`${tagName(item.tag)} is a ${ItemType[item.type] ?? item.type}, expected ${want}`);
}

function required(parent: TtlvItem, tag: number): TtlvItem {
  const i = child(parent, tag);
  if (!i) throw new TtlvError(`${tagName(parent.tag)} has no ${tagName(tag)}`);
  return i;
}

export function structureOf(parent: TtlvItem, tag: number): TtlvStructure {
  const i = required(parent, tag);
  if (i.type !== ItemType.Structure) throw wrongType(i, "Structure");
  return i;
}

export function numberOf(item: TtlvItem | undefined): number | undefined {
  if (!item) return undefined;
  if (item.type === ItemType.Integer || item.type === ItemType.Enumeration || item.type === ItemType.Interval) return item.value;
  throw wrongType(item, "Integer or Enumeration");
}

export function requiredNumber(parent: TtlvItem, tag: number): number {
  return numberOf(required(parent, tag))!;
}

export function textOf(item: TtlvItem | undefined): string | undefined {
  if (!item) return undefined;
  if (item.type !== ItemType.TextString) throw wrongType(item, "Text String");
  return item.value;
}

export function requiredText(parent: TtlvItem, tag: number): string {
  return textOf(required(parent, tag))!;
}

export function bytesOf(item: TtlvItem | undefined): Buffer | undefined {
  if (!item) return undefined;
  if (item.type !== ItemType.ByteString) throw wrongType(item, "Byte String");
  return item.value;
}

export function dateOf(item: TtlvItem | undefined): Date | undefined {
  if (!item) return undefined;
  if (item.type !== ItemType.DateTime) throw wrongType(item, "Date-Time");
  return new Date(Number(item.value) * 1000);
}

/**
 * A readable dump for debugging and test failures. Byte Strings are shown by length only: they may
 * be key material.
 */
export function describe(item: TtlvItem, indent = ""): string {
  const head = `${indent}${tagName(item.tag)} ${ItemType[item.type] ?? item.type}`;
  switch (item.type) {
    case ItemType.Structure:
      return [head, ...item.value.map((i) => describe(i, indent + "  "))].join("\n");
    case ItemType.ByteString:
      return `${head} (${item.value.length} bytes)`;
    case ItemType.TextString:
      return `${head} ${JSON.stringify(item.value)}`;
    default:
      return `${head} ${String(item.value)}`;
  }
}
