/**
 * Our KMIP client: KMIP 1.2 request/response messages in TTLV (ttlv.ts) over one mutually
 * authenticated TLS connection, written from the OASIS KMIP 1.2 specification (sections 4 "Object
 * Attributes", 6 "Message Contents", 7 "Message Format" and 9 "Message Encoding") and the KMIP 1.2
 * profiles (TLS 1.2, client certificate).
 *
 * - TLS 1.2 or later, with the server's certificate verified by default against `ca` (the system's
 *   roots when absent) and the address's host name or IP; the client presents `cert`/`key`. KMIP
 *   servers identify the caller by that certificate (PyKMIP: its subject CN becomes the owner of
 *   every object it creates).
 * - One connection, opened on the first request and again after it was lost; one message in
 *   flight at a time (KMIP over TLS answers in order). Every request has a deadline and an optional
 *   AbortSignal; a request given up closes the connection (its answer would be misaligned).
 * - A message carries a batch of operations (`batch`); a later item may use the ID placeholder left
 *   by an earlier one (e.g. Create then Activate without a Unique Identifier).
 * - Failures are `BaremetalError`s: a failed operation maps its Result Reason (Permission Denied
 *   -> `auth`, Item Not Found -> `not-found`, ...), with the reason as `messageId` and the server's
 *   Result Message in `details`. Key material never appears in an error or a log line.
 */
import * as tls from "node:tls";
import { BaremetalError, ErrorCode, isBaremetalError } from "../../core/errors";
import {
  bytesOf,
  byteString,
  child,
  children,
  dateOf,
  decode,
  encode,
  enumeration,
  integer,
  ItemType,
  messageLength,
  numberOf,
  requiredNumber,
  structure,
  structureOf,
  Tag,
  textOf,
  textString,
  TtlvError,
  TtlvItem,
} from "./ttlv";

// ---- enumerations (KMIP 1.2 section 9.1.3.2) ----------------------------------------------------

export enum Operation {
  Create = 0x01,
  ReKey = 0x04,
  Locate = 0x08,
  Get = 0x0a,
  GetAttributes = 0x0b,
  GetAttributeList = 0x0c,
  Activate = 0x12,
  Revoke = 0x13,
  Destroy = 0x14,
  Query = 0x18,
  DiscoverVersions = 0x1e,
}

export enum ObjectType {
  Certificate = 0x01,
  SymmetricKey = 0x02,
  PublicKey = 0x03,
  PrivateKey = 0x04,
  SecretData = 0x07,
  OpaqueObject = 0x08,
}

export enum CryptographicAlgorithm {
  AES = 0x03,
}

export const UsageMask = {
  Encrypt: 0x04,
  Decrypt: 0x08,
} as const;

export enum KeyFormatType {
  Raw = 0x01,
  Opaque = 0x02,
  TransparentSymmetricKey = 0x07,
}

export enum State {
  PreActive = 0x01,
  Active = 0x02,
  Deactivated = 0x03,
  Compromised = 0x04,
  Destroyed = 0x05,
  DestroyedCompromised = 0x06,
}

export enum RevocationReasonCode {
  Unspecified = 0x01,
  KeyCompromise = 0x02,
  CACompromise = 0x03,
  AffiliationChanged = 0x04,
  Superseded = 0x05,
  CessationOfOperation = 0x06,
  PrivilegeWithdrawn = 0x07,
}

export enum ResultStatus {
  Success = 0x00,
  OperationFailed = 0x01,
  OperationPending = 0x02,
  OperationUndone = 0x03,
}

export enum ResultReason {
  ItemNotFound = 0x01,
  ResponseTooLarge = 0x02,
  AuthenticationNotSuccessful = 0x03,
  InvalidMessage = 0x04,
  OperationNotSupported = 0x05,
  MissingData = 0x06,
  InvalidField = 0x07,
  FeatureNotSupported = 0x08,
  OperationCanceledByRequester = 0x09,
  CryptographicFailure = 0x0a,
  IllegalOperation = 0x0b,
  PermissionDenied = 0x0c,
  ObjectArchived = 0x0d,
  IndexOutOfBounds = 0x0e,
  ApplicationNamespaceNotSupported = 0x0f,
  KeyFormatTypeNotSupported = 0x10,
  KeyCompressionTypeNotSupported = 0x11,
  EncodingOptionError = 0x12,
  KeyValueNotPresent = 0x13,
  AttestationRequired = 0x14,
  AttestationFailed = 0x15,
  Sensitive = 0x16,
  NotExtractable = 0x17,
  ObjectAlreadyExists = 0x18,
  GeneralFailure = 0x100,
}

export enum NameType {
  UninterpretedTextString = 0x01,
  URI = 0x02,
}

export enum QueryFunction {
  Operations = 0x01,
  Objects = 0x02,
  ServerInformation = 0x03,
}

const BatchErrorContinuation = { Continue: 0x01, Stop: 0x02 } as const;

/** "Permission Denied" from PermissionDenied. */
export function reasonName(reason: number | undefined): string {
  if (reason === undefined) return "no reason given";
  const n = ResultReason[reason];
  return n ? n.replace(/([a-z])([A-Z])/g, "$1 $2") : `reason 0x${reason.toString(16)}`;
}

// ---- attributes ---------------------------------------------------------------------------------

export interface ApplicationSpecificInformation {
  namespace: string;
  data: string;
}

/** The attributes this client reads and writes, as plain values. */
export interface KmipAttributes {
  names?: string[];
  objectType?: ObjectType;
  cryptographicAlgorithm?: number;
  cryptographicLength?: number;
  cryptographicUsageMask?: number;
  state?: State;
  initialDate?: Date;
  activationDate?: Date;
  deactivationDate?: Date;
  applicationSpecificInformation?: ApplicationSpecificInformation[];
  objectGroups?: string[];
  operationPolicyName?: string;
}

export const AttributeName = {
  Name: "Name",
  ObjectType: "Object Type",
  CryptographicAlgorithm: "Cryptographic Algorithm",
  CryptographicLength: "Cryptographic Length",
  CryptographicUsageMask: "Cryptographic Usage Mask",
  State: "State",
  InitialDate: "Initial Date",
  ActivationDate: "Activation Date",
  DeactivationDate: "Deactivation Date",
  ApplicationSpecificInformation: "Application Specific Information",
  ObjectGroup: "Object Group",
  OperationPolicyName: "Operation Policy Name",
} as const;

/**
 * Attribute structures (section 2.1.1) for the values set in `a`. The second and later instances
 * of a multi-valued attribute (Name, Application Specific Information, Object Group) carry an
 * Attribute Index (1, 2, ...; absent means 0): PyKMIP refuses a Create whose template repeats an
 * attribute without one.
 */
export function encodeAttributes(a: KmipAttributes): TtlvItem[] {
  const out: TtlvItem[] = [];
  const seen = new Map<string, number>();
  const attribute = (name: string, value: TtlvItem): TtlvItem => {
    const index = seen.get(name) ?? 0;
    seen.set(name, index + 1);
    return structure(Tag.Attribute, textString(Tag.AttributeName, name), index > 0 && integer(Tag.AttributeIndex, index), value);
  };
  const V = Tag.AttributeValue;
  for (const n of a.names ?? [])
    out.push(attribute(AttributeName.Name, structure(V, textString(Tag.NameValue, n), enumeration(Tag.NameType, NameType.UninterpretedTextString))));
  if (a.objectType !== undefined) out.push(attribute(AttributeName.ObjectType, enumeration(V, a.objectType)));
  if (a.cryptographicAlgorithm !== undefined) out.push(attribute(AttributeName.CryptographicAlgorithm, enumeration(V, a.cryptographicAlgorithm)));
  if (a.cryptographicLength !== undefined) out.push(attribute(AttributeName.CryptographicLength, integer(V, a.cryptographicLength)));
  if (a.cryptographicUsageMask !== undefined) out.push(attribute(AttributeName.CryptographicUsageMask, integer(V, a.cryptographicUsageMask)));
  if (a.state !== undefined) out.push(attribute(AttributeName.State, enumeration(V, a.state)));
  for (const i of a.applicationSpecificInformation ?? [])
    out.push(
      attribute(
        AttributeName.ApplicationSpecificInformation,
        structure(V, textString(Tag.ApplicationNamespace, i.namespace), textString(Tag.ApplicationData, i.data)),
      ),
    );
  for (const g of a.objectGroups ?? []) out.push(attribute(AttributeName.ObjectGroup, textString(V, g)));
  if (a.operationPolicyName !== undefined) out.push(attribute(AttributeName.OperationPolicyName, textString(V, a.operationPolicyName)));
  return out;
}

/** Reads Attribute structures back into values; attributes this client does not know are skipped. */
export function decodeAttributes(items: TtlvItem[]): KmipAttributes {
  const a: KmipAttributes = {};
  for (const item of items) {
    if (item.tag !== Tag.Attribute) continue;
    const name = textOf(child(item, Tag.AttributeName));
    const v = child(item, Tag.AttributeValue);
    if (!name || !v) continue;
    switch (name) {
      case AttributeName.Name: {
        const value = textOf(child(v, Tag.NameValue));
        if (value !== undefined) (a.names ??= []).push(value);
        break;
      }
      case AttributeName.ObjectType:
        a.objectType = numberOf(v);
        break;
      case AttributeName.CryptographicAlgorithm:
        a.cryptographicAlgorithm = numberOf(v);
        break;
      case AttributeName.CryptographicLength:
        a.cryptographicLength = numberOf(v);
        break;
      case AttributeName.CryptographicUsageMask:
        a.cryptographicUsageMask = numberOf(v);
        break;
      case AttributeName.State:
        a.state = numberOf(v);
        break;
      case AttributeName.InitialDate:
        a.initialDate = dateOf(v);
        break;
      case AttributeName.ActivationDate:
        a.activationDate = dateOf(v);
        break;
      case AttributeName.DeactivationDate:
        a.deactivationDate = dateOf(v);
        break;
      case AttributeName.ApplicationSpecificInformation:
        (a.applicationSpecificInformation ??= []).push({
          namespace: textOf(child(v, Tag.ApplicationNamespace)) ?? "",
          data: textOf(child(v, Tag.ApplicationData)) ?? "",
        });
        break;
      case AttributeName.ObjectGroup: {
        const g = textOf(v);
        if (g !== undefined) (a.objectGroups ??= []).push(g);
        break;
      }
      case AttributeName.OperationPolicyName:
        a.operationPolicyName = textOf(v);
        break;
    }
  }
  return a;
}

// ---- request payloads ---------------------------------------------------------------------------

export interface BatchItemRequest {
  operation: Operation;
  payload: TtlvItem[];
}

const uidItem = (uid?: string): TtlvItem | undefined => (uid === undefined ? undefined : textString(Tag.UniqueIdentifier, uid));

export const requests = {
  /** Create (4.1) a symmetric key with these attributes. */
  create(attributes: KmipAttributes): BatchItemRequest {
    return {
      operation: Operation.Create,
      payload: [enumeration(Tag.ObjectType, ObjectType.SymmetricKey), structure(Tag.TemplateAttribute, ...encodeAttributes(attributes))],
    };
  },
  /** Activate (4.19); without `uid` it applies to the ID placeholder (the batch's last created object). */
  activate(uid?: string): BatchItemRequest {
    return { operation: Operation.Activate, payload: [uidItem(uid)].filter((i): i is TtlvItem => !!i) };
  },
  get(uid?: string, keyFormatType?: KeyFormatType): BatchItemRequest {
    return {
      operation: Operation.Get,
      payload: [uidItem(uid), keyFormatType === undefined ? undefined : enumeration(Tag.KeyFormatType, keyFormatType)].filter(
        (i): i is TtlvItem => !!i,
      ),
    };
  },
  getAttributes(uid?: string, names: string[] = []): BatchItemRequest {
    return { operation: Operation.GetAttributes, payload: [uidItem(uid), ...names.map((n) => textString(Tag.AttributeName, n))].filter((i): i is TtlvItem => !!i) };
  },
  locate(attributes: KmipAttributes, maximumItems?: number): BatchItemRequest {
    return {
      operation: Operation.Locate,
      payload: [maximumItems === undefined ? undefined : integer(Tag.MaximumItems, maximumItems), ...encodeAttributes(attributes)].filter(
        (i): i is TtlvItem => !!i,
      ),
    };
  },
  revoke(uid: string | undefined, code: RevocationReasonCode, message?: string): BatchItemRequest {
    return {
      operation: Operation.Revoke,
      payload: [
        uidItem(uid),
        structure(Tag.RevocationReason, enumeration(Tag.RevocationReasonCode, code), message !== undefined && textString(Tag.RevocationMessage, message)),
      ].filter((i): i is TtlvItem => !!i),
    };
  },
  destroy(uid?: string): BatchItemRequest {
    return { operation: Operation.Destroy, payload: [uidItem(uid)].filter((i): i is TtlvItem => !!i) };
  },
  reKey(uid: string): BatchItemRequest {
    return { operation: Operation.ReKey, payload: [textString(Tag.UniqueIdentifier, uid)] };
  },
  query(functions: QueryFunction[]): BatchItemRequest {
    return { operation: Operation.Query, payload: functions.map((f) => enumeration(Tag.QueryFunction, f)) };
  },
};

export interface ProtocolVersion {
  major: number;
  minor: number;
}

export const KMIP_1_2: ProtocolVersion = { major: 1, minor: 2 };

/** A Request Message (section 7.1) of one or more batch items. */
export function encodeRequest(items: BatchItemRequest[], version: ProtocolVersion = KMIP_1_2, maximumResponseSize?: number): Buffer {
  const many = items.length > 1;
  return encode(
    structure(
      Tag.RequestMessage,
      structure(
        Tag.RequestHeader,
        structure(Tag.ProtocolVersion, integer(Tag.ProtocolVersionMajor, version.major), integer(Tag.ProtocolVersionMinor, version.minor)),
        maximumResponseSize !== undefined && integer(Tag.MaximumResponseSize, maximumResponseSize),
        many && enumeration(Tag.BatchErrorContinuationOption, BatchErrorContinuation.Stop),
        integer(Tag.BatchCount, items.length),
      ),
      ...items.map((it, i) =>
        structure(
          Tag.BatchItem,
          enumeration(Tag.Operation, it.operation),
          many && byteString(Tag.UniqueBatchItemId, batchItemId(i)),
          structure(Tag.RequestPayload, ...it.payload),
        ),
      ),
    ),
  );
}

function batchItemId(i: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(i);
  return b;
}

// ---- responses ----------------------------------------------------------------------------------

export interface BatchItemResult {
  operation?: Operation;
  status: ResultStatus;
  reason?: ResultReason;
  message?: string;
  payload?: TtlvItem;
}

export interface ResponseMessage {
  version: ProtocolVersion;
  timeStamp?: Date;
  items: BatchItemResult[];
}

/** A Response Message (section 7.2); batch items in request order (by Unique Batch Item ID when present). */
export function decodeResponse(buf: Buffer): ResponseMessage {
  const msg = decode(buf);
  if (msg.tag !== Tag.ResponseMessage || msg.type !== ItemType.Structure) throw new TtlvError("not a KMIP Response Message");
  const header = structureOf(msg, Tag.ResponseHeader);
  const pv = structureOf(header, Tag.ProtocolVersion);
  const version = { major: requiredNumber(pv, Tag.ProtocolVersionMajor), minor: requiredNumber(pv, Tag.ProtocolVersionMinor) };
  const items: { id?: number; result: BatchItemResult }[] = children(msg, Tag.BatchItem).map((bi) => {
    const id = bytesOf(child(bi, Tag.UniqueBatchItemId));
    const payload = child(bi, Tag.ResponsePayload);
    return {
      id: id && id.length === 4 ? id.readUInt32BE(0) : undefined,
      result: {
        operation: numberOf(child(bi, Tag.Operation)),
        status: requiredNumber(bi, Tag.ResultStatus),
        reason: numberOf(child(bi, Tag.ResultReason)),
        message: textOf(child(bi, Tag.ResultMessage)),
        payload,
      },
    };
  });
  if (items.every((i) => i.id !== undefined)) items.sort((a, b) => a.id! - b.id!);
  return { version, timeStamp: dateOf(child(header, Tag.TimeStamp)), items: items.map((i) => i.result) };
}

/** The Unique Identifier of a response payload. */
export function payloadUid(r: BatchItemResult): string {
  const uid = r.payload && textOf(child(r.payload, Tag.UniqueIdentifier));
  if (uid === undefined) throw new TtlvError(`${Operation[r.operation ?? 0] ?? "the"} response has no Unique Identifier`);
  return uid;
}

export interface SymmetricKeyMaterial {
  uid: string;
  formatType: KeyFormatType;
  algorithm?: number;
  length?: number;
  material: Buffer;
}

/** The key of a Get response: Raw (Key Material is a Byte String) or Transparent Symmetric Key (a Key inside). */
export function decodeSymmetricKey(r: BatchItemResult): SymmetricKeyMaterial {
  const p = r.payload;
  if (!p) throw new TtlvError("Get response has no payload");
  const uid = payloadUid(r);
  const objectType = numberOf(child(p, Tag.ObjectType));
  if (objectType !== ObjectType.SymmetricKey) throw new TtlvError(`object ${uid} is not a symmetric key (Object Type ${objectType})`);
  const block = structureOf(structureOf(p, Tag.SymmetricKey), Tag.KeyBlock);
  const formatType = requiredNumber(block, Tag.KeyFormatType) as KeyFormatType;
  if (child(block, Tag.KeyWrappingData)) throw new TtlvError(`the key block of ${uid} is wrapped; this client asks for unwrapped keys only`);
  const keyValue = structureOf(block, Tag.KeyValue);
  const km = child(keyValue, Tag.KeyMaterial);
  if (!km) throw new TtlvError(`the key block of ${uid} has no Key Material`);
  let material: Buffer | undefined;
  if (formatType === KeyFormatType.Raw || formatType === KeyFormatType.Opaque) material = bytesOf(km);
  else if (formatType === KeyFormatType.TransparentSymmetricKey) material = bytesOf(child(km, Tag.Key));
  else throw new TtlvError(`the key of ${uid} has Key Format Type ${formatType}; expected Raw or Transparent Symmetric Key`);
  if (!material) throw new TtlvError(`the key block of ${uid} has no key bytes`);
  return {
    uid,
    formatType,
    algorithm: numberOf(child(block, Tag.CryptographicAlgorithm)),
    length: numberOf(child(block, Tag.CryptographicLength)),
    material,
  };
}

// ---- the connection -----------------------------------------------------------------------------

export interface KmipClientOptions {
  host: string;
  /** Default 5696 (the IANA port of KMIP over TLS). */
  port?: number;
  /** PEM: the CA that signed the server's certificate (default: the system's roots). */
  ca?: string;
  /** PEM client certificate and private key: the caller's identity. */
  cert: string;
  key: string;
  /** Verify the server's certificate (default true). */
  verify?: boolean;
  /** Name to verify the server's certificate against (default: host). */
  servername?: string;
  /** Deadline of each message, connecting included (default 30000 ms). */
  requestTimeoutMs?: number;
  /** Deadline of connecting and the TLS handshake (default 10000 ms). */
  connectTimeoutMs?: number;
  /** An idle connection is closed after this long (default 15000 ms). */
  idleTimeoutMs?: number;
  /** Largest response accepted (default 16 MiB). */
  maxResponseBytes?: number;
  version?: ProtocolVersion;
  signal?: AbortSignal;
}

export interface RequestOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

const UNSENT_CODES = new Set(["ECONNREFUSED", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ENOTFOUND", "EAI_AGAIN", "EADDRNOTAVAIL"]);
const CERT_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "HOSTNAME_MISMATCH",
]);

const REASON_CODES: Partial<Record<ResultReason, ErrorCode>> = {
  [ResultReason.ItemNotFound]: "not-found",
  [ResultReason.AuthenticationNotSuccessful]: "auth",
  [ResultReason.PermissionDenied]: "auth",
  [ResultReason.IllegalOperation]: "conflict",
  [ResultReason.ObjectArchived]: "conflict",
  [ResultReason.ObjectAlreadyExists]: "conflict",
  [ResultReason.InvalidField]: "backend",
  [ResultReason.OperationNotSupported]: "backend",
  [ResultReason.FeatureNotSupported]: "backend",
  [ResultReason.GeneralFailure]: "backend",
  [ResultReason.OperationCanceledByRequester]: "cancelled",
};

/** A failed batch item, as an error: the operation, the Result Reason and the server's message. */
export class KmipOperationError extends BaremetalError {
  constructor(
    readonly operation: Operation,
    readonly reason: ResultReason | undefined,
    readonly resultMessage: string | undefined,
    readonly address: string,
  ) {
    super(
      REASON_CODES[reason as ResultReason] ?? "backend",
      `KMIP ${Operation[operation] ?? `operation 0x${operation.toString(16)}`} failed at ${address}: ${reasonName(reason)}${resultMessage ? ` (${resultMessage})` : ""}`,
      { messageId: reasonName(reason), details: resultMessage ? [resultMessage] : [] },
    );
  }
}

export function isKmipOperationError(e: unknown): e is KmipOperationError {
  return e instanceof KmipOperationError;
}

interface Pending {
  resolve: (b: Buffer) => void;
  reject: (e: unknown) => void;
}

export class KmipClient {
  readonly address: string;
  private socket?: tls.TLSSocket;
  private connecting?: Promise<tls.TLSSocket>;
  private handshaking?: tls.TLSSocket;
  private buffered: Buffer = Buffer.alloc(0);
  private pending?: Pending;
  private queue: Promise<unknown> = Promise.resolve();
  private idleTimer?: NodeJS.Timeout;
  private closed = false;
  private readonly port: number;

  constructor(private readonly opts: KmipClientOptions) {
    this.port = opts.port ?? 5696;
    this.address = `${opts.host.includes(":") ? `[${opts.host}]` : opts.host}:${this.port}`;
  }

  /** Sends one message of `items` and returns each item's result; throws for the first failed one. */
  async batch(items: BatchItemRequest[], ro: RequestOptions = {}): Promise<BatchItemResult[]> {
    const results = await this.batchResults(items, ro);
    for (let i = 0; i < items.length; i++) {
      const r = results[i];
      if (!r) throw new KmipOperationError(items[i].operation, undefined, "no result (an earlier item of the batch failed)", this.address);
      if (r.status !== ResultStatus.Success) throw new KmipOperationError(items[i].operation, r.reason, r.message, this.address);
    }
    return results;
  }

  /** Like `batch`, but failed items are returned as results (status and reason), not thrown. */
  async batchResults(items: BatchItemRequest[], ro: RequestOptions = {}): Promise<BatchItemResult[]> {
    if (items.length === 0) return [];
    const request = encodeRequest(items, this.opts.version ?? KMIP_1_2);
    const raw = await this.roundTrip(request, ro);
    let response: ResponseMessage;
    try {
      response = decodeResponse(raw);
    } catch (e) {
      this.drop(undefined);
      throw new BaremetalError("backend", `the KMIP server at ${this.address} sent a malformed response: ${(e as Error).message}`, { cause: e });
    }
    // A server that could not parse or authenticate the message answers with one failed item.
    if (response.items.length === 1 && items.length > 1 && response.items[0].status !== ResultStatus.Success && response.items[0].operation === undefined)
      throw new KmipOperationError(items[0].operation, response.items[0].reason, response.items[0].message, this.address);
    return response.items;
  }

  async one(item: BatchItemRequest, ro?: RequestOptions): Promise<BatchItemResult> {
    return (await this.batch([item], ro))[0];
  }

  // ---- operations ----

  async create(attributes: KmipAttributes, ro?: RequestOptions): Promise<string> {
    return payloadUid(await this.one(requests.create(attributes), ro));
  }

  async activate(uid: string, ro?: RequestOptions): Promise<void> {
    await this.one(requests.activate(uid), ro);
  }

  async get(uid: string, keyFormatType?: KeyFormatType, ro?: RequestOptions): Promise<SymmetricKeyMaterial> {
    return decodeSymmetricKey(await this.one(requests.get(uid, keyFormatType), ro));
  }

  async getAttributes(uid: string, names: string[] = [], ro?: RequestOptions): Promise<KmipAttributes> {
    const r = await this.one(requests.getAttributes(uid, names), ro);
    return decodeAttributes(r.payload && r.payload.type === ItemType.Structure ? r.payload.value : []);
  }

  async locate(attributes: KmipAttributes, maximumItems?: number, ro?: RequestOptions): Promise<string[]> {
    const r = await this.one(requests.locate(attributes, maximumItems), ro);
    return r.payload ? children(r.payload, Tag.UniqueIdentifier).map((i) => textOf(i)!) : [];
  }

  async revoke(uid: string, code: RevocationReasonCode, message?: string, ro?: RequestOptions): Promise<void> {
    await this.one(requests.revoke(uid, code, message), ro);
  }

  async destroy(uid: string, ro?: RequestOptions): Promise<void> {
    await this.one(requests.destroy(uid), ro);
  }

  /** The operations the server says it supports (Query, Query Operations). */
  async supportedOperations(ro?: RequestOptions): Promise<Operation[]> {
    const r = await this.one(requests.query([QueryFunction.Operations]), ro);
    return r.payload ? children(r.payload, Tag.Operation).map((i) => numberOf(i)!) : [];
  }

  async close(): Promise<void> {
    this.closed = true;
    this.drop(new BaremetalError("cancelled", `the KMIP client for ${this.address} was closed`));
  }

  // ---- transport ----

  private roundTrip(request: Buffer, ro: RequestOptions): Promise<Buffer> {
    const run = this.queue.then(() => this.send(request, ro));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * One request; once more on a new connection when it went out on a connection kept open from an
   * earlier call that the server has closed since (restarted, or its idle limit): the write fails
   * with EPIPE, so the server never read the request, and the caller should see what the server's
   * state is now (e.g. refused), not "unknown whether it was applied".
   */
  private async send(request: Buffer, ro: RequestOptions): Promise<Buffer> {
    const reused = !!this.socket && !this.socket.destroyed;
    try {
      return await this.sendOnce(request, ro);
    } catch (e) {
      if (reused && isBaremetalError(e) && e.messageId === "EPIPE") return this.sendOnce(request, ro);
      throw e;
    }
  }

  private async sendOnce(request: Buffer, ro: RequestOptions): Promise<Buffer> {
    if (this.closed) throw new BaremetalError("cancelled", `the KMIP client for ${this.address} was closed`);
    const signals = [this.opts.signal, ro.signal].filter((s): s is AbortSignal => !!s);
    for (const s of signals) if (s.aborted) throw new BaremetalError("cancelled", `KMIP request to ${this.address} cancelled`, { unsent: true });
    const timeoutMs = ro.timeoutMs ?? this.opts.requestTimeoutMs ?? 30000;
    if (this.idleTimer) clearTimeout(this.idleTimer);

    return new Promise<Buffer>((resolve, reject) => {
      let settled = false;
      let sent = false;
      const finish = (err: unknown, value?: Buffer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        for (const s of signals) s.removeEventListener("abort", onAbort);
        if (err) reject(err);
        else {
          resolve(value!);
          this.armIdle();
        }
      };
      const timer = setTimeout(() => {
        this.drop(undefined);
        finish(
          new BaremetalError("timeout", `the KMIP server at ${this.address} did not answer within ${timeoutMs} ms: check that it runs and is not overloaded`, {
            unsent: !sent,
          }),
        );
      }, timeoutMs);
      const onAbort = () => {
        this.drop(undefined);
        finish(new BaremetalError("cancelled", `KMIP request to ${this.address} cancelled`, { unsent: !sent }));
      };
      for (const s of signals) s.addEventListener("abort", onAbort, { once: true });

      this.connect().then(
        (socket) => {
          if (settled) return;
          this.pending = { resolve: (b) => finish(undefined, b), reject: (e) => finish(e) };
          sent = true;
          socket.write(request);
        },
        (err) => finish(err),
      );
    });
  }

  private armIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.drop(undefined), this.opts.idleTimeoutMs ?? 15000);
    this.idleTimer.unref();
  }

  private connect(): Promise<tls.TLSSocket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    if (this.connecting) return this.connecting;
    const connectTimeoutMs = this.opts.connectTimeoutMs ?? 10000;
    const p = new Promise<tls.TLSSocket>((resolve, reject) => {
      const socket = tls.connect({
        host: this.opts.host,
        port: this.port,
        ca: this.opts.ca,
        cert: this.opts.cert,
        key: this.opts.key,
        rejectUnauthorized: this.opts.verify ?? true,
        // Node refuses an IP address as SNI; the certificate is still checked against the IP.
        servername: this.opts.servername ?? (isIp(this.opts.host) ? undefined : this.opts.host),
        minVersion: "TLSv1.2",
      });
      this.handshaking = socket;
      let done = false;
      const fail = (err: unknown) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (this.handshaking === socket) this.handshaking = undefined;
        socket.destroy();
        reject(this.connectError(err));
      };
      const timer = setTimeout(
        () => fail(new BaremetalError("timeout", `connecting to the KMIP server at ${this.address} took longer than ${connectTimeoutMs} ms: check that it runs and the address`, { unsent: true })),
        connectTimeoutMs,
      );
      socket.once("error", fail);
      socket.once("close", () => fail(new BaremetalError("transient", `the KMIP server at ${this.address} closed the connection during the TLS handshake`, { unsent: true })));
      socket.once("secureConnect", () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (this.handshaking === socket) this.handshaking = undefined;
        socket.removeAllListeners("error");
        socket.removeAllListeners("close");
        this.attach(socket);
        resolve(socket);
      });
    });
    this.connecting = p;
    p.then(
      () => (this.connecting = undefined),
      () => (this.connecting = undefined),
    );
    return p;
  }

  private attach(socket: tls.TLSSocket): void {
    this.socket = socket;
    this.buffered = Buffer.alloc(0);
    const max = this.opts.maxResponseBytes ?? 16 * 1024 * 1024;
    socket.on("data", (chunk: Buffer) => {
      if (this.socket !== socket) return;
      this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
      for (;;) {
        const len = messageLength(this.buffered);
        if (len === undefined) return;
        if (len > max) {
          this.drop(new BaremetalError("backend", `the KMIP server at ${this.address} announced a ${len}-byte response, more than the ${max} bytes accepted`));
          return;
        }
        if (this.buffered.length < len) return;
        const msg = this.buffered.subarray(0, len);
        this.buffered = this.buffered.subarray(len);
        const p = this.pending;
        this.pending = undefined;
        if (p) p.resolve(Buffer.from(msg));
        else {
          this.drop(undefined); // an answer nobody asked for: the stream cannot be trusted any more
          return;
        }
      }
    });
    socket.on("error", (err) => this.lost(socket, this.transportError(err)));
    socket.on("close", () =>
      this.lost(
        socket,
        new BaremetalError(
          "transient",
          `the KMIP server at ${this.address} closed the connection before answering; whether the request was applied is unknown`,
        ),
      ),
    );
  }

  private lost(socket: tls.TLSSocket, err: BaremetalError): void {
    if (this.socket !== socket) return;
    this.socket = undefined;
    const p = this.pending;
    this.pending = undefined;
    socket.destroy();
    p?.reject(err);
  }

  /** Closes the connection; a pending request fails with `err` (or is left to its own timer). */
  private drop(err: BaremetalError | undefined): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.handshaking?.destroy(); // its connect promise fails; nobody waits for it any more
    const s = this.socket;
    this.socket = undefined;
    const p = this.pending;
    this.pending = undefined;
    s?.destroy();
    if (err) p?.reject(err);
  }

  private connectError(err: unknown): BaremetalError {
    if (isBaremetalError(err)) return err;
    const e = err as NodeJS.ErrnoException & { reason?: string };
    const code = e.code ?? "";
    if (UNSENT_CODES.has(code))
      return new BaremetalError(
        "transient",
        `the KMIP server at ${this.address} is unavailable (${code === "ECONNREFUSED" ? "connection refused" : code}): check that it runs and that the address is right`,
        { cause: err, unsent: true, messageId: code },
      );
    if (CERT_CODES.has(code))
      return new BaremetalError(
        "tls",
        `the KMIP server at ${this.address} presented a certificate we do not trust (${code}: ${firstLine(e.message)}): set caBundle to the CA that signed it`,
        { cause: err, unsent: true, messageId: code },
      );
    if (/ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|UNSUPPORTED_CERTIFICATE|CERTIFICATE_UNKNOWN|CERTIFICATE_REVOKED|CERTIFICATE_EXPIRED|CERTIFICATE_REQUIRED|ACCESS_DENIED)/.test(code))
      return new BaremetalError(
        "auth",
        `the KMIP server at ${this.address} refused our client certificate (${code}): it must be signed by a CA the server trusts, be valid, and allow client authentication (extendedKeyUsage clientAuth)`,
        { cause: err, unsent: true, messageId: code, property: "clientCertificate" },
      );
    if (code === "ECONNRESET")
      return new BaremetalError(
        "transient",
        `the KMIP server at ${this.address} reset the connection during the TLS handshake (it may have refused our client certificate or our TLS version)`,
        { cause: err, unsent: true, messageId: code },
      );
    if (code.startsWith("ERR_SSL") || code.startsWith("ERR_TLS"))
      return new BaremetalError("tls", `TLS with the KMIP server at ${this.address} failed (${code}: ${firstLine(e.message)})`, { cause: err, unsent: true, messageId: code });
    return this.transportError(err, true);
  }

  private transportError(err: unknown, unsent = false): BaremetalError {
    const e = err as NodeJS.ErrnoException;
    return new BaremetalError("transient", `the connection to the KMIP server at ${this.address} failed (${e.code ?? e.message}); whether a request in flight was applied is unknown`, {
      cause: err,
      unsent,
      messageId: e.code,
    });
  }
}

function firstLine(s: string | undefined): string {
  return (s ?? "").split("\n")[0].trim();
}

function isIp(host: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host.includes(":");
}
