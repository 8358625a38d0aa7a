/**
 * Our own Pulumi ResourceProvider gRPC server over the protocol-free core. It replaces the stock
 * `@pulumi/pulumi/provider` server, which ignores Configure, has no preview support, no detailed
 * diff and no stables, and hands secrets over still wrapped.
 *
 * Thin translation only: wire values <-> core values (values.ts), core errors <-> gRPC statuses,
 * and an OperationContext per call (deadline from custom timeouts, cancellation, progress to the
 * engine's log). Business logic lives in resources/ and drivers/.
 */
import * as grpc from "@grpc/grpc-js";
import { Any } from "google-protobuf/google/protobuf/any_pb";
import { Empty } from "google-protobuf/google/protobuf/empty_pb";
import * as engrpc from "@pulumi/pulumi/proto/engine_grpc_pb";
import * as engproto from "@pulumi/pulumi/proto/engine_pb";
import * as plugproto from "@pulumi/pulumi/proto/plugin_pb";
import * as provrpc from "@pulumi/pulumi/proto/provider_grpc_pb";
import * as provproto from "@pulumi/pulumi/proto/provider_pb";
import * as statusproto from "@pulumi/pulumi/proto/status_pb";
import { configFields } from "../../core/config";
import { ProviderHost } from "../../core/host";
import { diffInputs, type PropertyChange } from "../../core/diff";
import { BaremetalError, describeError, isBaremetalError } from "../../core/errors";
import { applyDefaults, type Fields } from "../../core/fields";
import { isPartialCreate, type OperationContext, type ProviderContext, type Props, type ResourceDefinition } from "../../core/resource";
import { type CheckFailure, Validator } from "../../core/validate";
import { UNKNOWN, isUnknown } from "../../core/values";
import { functionsByToken, resourcesByToken } from "../../resources";
import { packageSchema } from "./schema";
import { declaredSecretPaths, fromStruct, toStruct } from "./values";
import { PROVIDER_VERSION } from "./version";

type Handler<Req, Res> = (req: Req) => Promise<Res>;

/** Per-resource helpers computed once. */
interface Compiled {
  def: ResourceDefinition;
  validator: Validator;
  secretPaths: Set<string>;
}

export class BaremetalProvider {
  private readonly host = new ProviderHost();
  private engine?: engrpc.EngineClient;
  private readonly compiled = new Map<string, Compiled>();
  private readonly configSecrets = declaredSecretPaths(configFields);

  constructor(engineAddress?: string) {
    if (engineAddress) this.connectEngine(engineAddress);
  }

  private connectEngine(address: string): void {
    this.engine?.close();
    this.engine = new engrpc.EngineClient(address, grpc.credentials.createInsecure(), {
      "grpc.max_receive_message_length": 64 * 1024 * 1024,
    });
  }

  private resource(type: string, urn: string): Compiled {
    const token = type || typeFromUrn(urn);
    let c = this.compiled.get(token);
    if (!c) {
      const def = resourcesByToken.get(token);
      if (!def) throw new BaremetalError("validation", `unknown resource type '${token}'; this provider serves: ${[...resourcesByToken.keys()].join(", ")}`);
      c = { def, validator: new Validator(def.inputs), secretPaths: declaredSecretPaths({ ...def.inputs, ...def.outputs }) };
      this.compiled.set(token, c);
    }
    // Broker mode: the same fields, with handlers that call the service.
    return this.host.brokered ? { ...c, def: this.host.route(c.def) } : c;
  }

  private log(severity: engproto.LogSeverity, message: string, urn?: string, ephemeral = false): void {
    if (!this.engine) {
      // No engine (tests, tools): progress lines have nowhere to go; warnings go to stderr.
      if (!ephemeral) process.stderr.write(`${message}\n`);
      return;
    }
    const req = new engproto.LogRequest();
    req.setSeverity(severity);
    req.setMessage(message);
    if (urn) req.setUrn(urn);
    req.setEphemeral(ephemeral);
    this.engine.log(req, () => undefined);
  }

  /** What every handler may use: config, caller, policy and the shared inventory (opened once). */
  private providerContext(): ProviderContext {
    return this.host.providerContext();
  }

  /** Closes what the provider holds open (the inventory). */
  async close(): Promise<void> {
    await this.host.close();
  }

  private context(urn: string, timeoutSeconds: number, def: ResourceDefinition, name = ""): { ctx: OperationContext; done: () => void } {
    const log = {
      progress: (m: string) => this.log(engproto.LogSeverity.INFO, m, urn, true),
      warn: (m: string) => this.log(engproto.LogSeverity.WARNING, m, urn, false),
    };
    return this.host.operation(def, urn, name || urn.split("::").pop() || "", timeoutSeconds, log, "customTimeouts");
  }

  // ---- plugin and provider-level calls -------------------------------------------------------

  getPluginInfo: Handler<Empty, plugproto.PluginInfo> = async () => new plugproto.PluginInfo().setVersion(PROVIDER_VERSION);

  getSchema: Handler<provproto.GetSchemaRequest, provproto.GetSchemaResponse> = async () =>
    new provproto.GetSchemaResponse().setSchema(JSON.stringify(packageSchema()));

  handshake: Handler<provproto.ProviderHandshakeRequest, provproto.ProviderHandshakeResponse> = async (req) => {
    if (req.getEngineAddress()) this.connectEngine(req.getEngineAddress());
    return new provproto.ProviderHandshakeResponse().setAcceptSecrets(true).setAcceptResources(true).setAcceptOutputs(false);
  };

  checkConfig: Handler<provproto.CheckRequest, provproto.CheckResponse> = async (req) => {
    const news = fromStruct(req.getNews());
    const reserved = pickReserved(news.value);
    const values = coerceConfig(withoutReserved(news.value));
    // Validate what the environment would add too, so a bad BAREMETAL_* value fails the preview;
    // but return only what the user set, so no environment value (secret or not) lands in state.
    const failures = this.host.checkConfig(values);
    return checkResponse({ ...values, ...reserved }, new Set([...news.secretPaths, ...this.configSecrets]), failures);
  };

  diffConfig: Handler<provproto.DiffRequest, provproto.DiffResponse> = async (req) => {
    const olds = fromStruct(req.hasOldInputs() ? req.getOldInputs() : req.getOlds()).value;
    const news = fromStruct(req.getNews()).value;
    return diffResponse(diffInputs(configFields, coerceConfig(withoutReserved(olds)), coerceConfig(withoutReserved(news))).changes, [], [], false);
  };

  configure: Handler<provproto.ConfigureRequest, provproto.ConfigureResponse> = async (req) => {
    let values: Record<string, unknown>;
    if (req.hasArgs()) values = fromStruct(req.getArgs()).value;
    else {
      values = {};
      for (const [k, v] of req.getVariablesMap().entries()) values[k.replace(/^baremetal:(config:)?/, "")] = v;
    }
    this.host.configure(coerceConfig(withoutReserved(values)));
    return new provproto.ConfigureResponse().setAcceptsecrets(true).setSupportspreview(true).setAcceptresources(true).setAcceptoutputs(false);
  };

  cancel: Handler<Empty, Empty> = async () => {
    this.host.cancelAll("the engine cancelled the operation");
    return new Empty();
  };

  /** Functions (invokes): validated like resource inputs, authorised by the function itself. */
  invoke: Handler<provproto.InvokeRequest, provproto.InvokeResponse> = async (req) => {
    const fn = functionsByToken.get(req.getTok());
    if (!fn) throw new BaremetalError("validation", `unknown function '${req.getTok()}'; this provider serves: ${[...functionsByToken.keys()].join(", ")}`);
    const args = fromStruct(req.getArgs());
    const failures = new Validator(fn.inputs).check(args.value);
    const resp = new provproto.InvokeResponse();
    if (failures.length) {
      resp.setFailuresList(failures.map((f) => new provproto.CheckFailure().setProperty(f.property).setReason(f.reason)));
      return resp;
    }
    const result = await this.host.routeFunction(fn).invoke(this.providerContext(), applyDefaults(fn.inputs, args.value));
    return resp.setReturn(toStruct(result, new Set([...args.secretPaths, ...declaredSecretPaths(fn.outputs)])));
  };

  // ---- resource lifecycle --------------------------------------------------------------------

  check: Handler<provproto.CheckRequest, provproto.CheckResponse> = async (req) => {
    const { def, validator, secretPaths } = this.resource(req.getType(), req.getUrn());
    const news = fromStruct(req.getNews());
    let inputs = applyDefaults(def.inputs, news.value);
    const failures = validator.check(inputs);
    if (!failures.length && def.check) failures.push(...(await def.check(inputs, this.providerContext())));
    if (!failures.length && def.normalize) inputs = def.normalize(inputs);
    return checkResponse(inputs, new Set([...news.secretPaths, ...secretPaths]), failures);
  };

  diff: Handler<provproto.DiffRequest, provproto.DiffResponse> = async (req) => {
    const { def } = this.resource(req.getType(), req.getUrn());
    const olds = fromStruct(req.hasOldInputs() ? req.getOldInputs() : req.getOlds()).value;
    const news = fromStruct(req.getNews()).value;
    const d = diffInputs(def.inputs, pick(olds, def.inputs), news, req.getIgnorechangesList());
    if (def.pendingChanges && req.hasOlds()) {
      for (const p of def.pendingChanges(fromStruct(req.getOlds()).value, news)) d.changes.push({ path: p.path, kind: "update", replace: false } as PropertyChange);
    }
    const stables = d.replaces.length ? [] : Object.entries(def.outputs).filter(([, f]) => f.stable).map(([n]) => n);
    return diffResponse(d.changes, d.replaces, stables, def.deleteBeforeReplace ?? false);
  };

  create: Handler<provproto.CreateRequest, provproto.CreateResponse> = async (req) => {
    const { def, secretPaths } = this.resource(req.getType(), req.getUrn());
    const inputs = fromStruct(req.getProperties());
    const secrets = new Set([...inputs.secretPaths, ...secretPaths]);
    await def.authorize?.(this.providerContext(), "create", inputs.value);
    if (req.getPreview()) {
      const known = def.preview ? def.preview(inputs.value) : {};
      const outs: Props = { ...inputs.value };
      for (const name of Object.keys(def.outputs)) outs[name] = known[name] ?? UNKNOWN;
      return new provproto.CreateResponse().setId("").setProperties(toStruct(outs, secrets));
    }
    const { ctx, done } = this.context(req.getUrn(), req.getTimeout(), def, req.getName());
    try {
      const result = await def.create(ctx, inputs.value);
      return new provproto.CreateResponse().setId(result.id).setProperties(toStruct(result.outputs, secrets));
    } catch (e) {
      if (isPartialCreate(e)) throw new InitFailed(e.id, toStruct(e.outputs, secrets), toStruct(inputs.value, secrets), e.reasons);
      throw e;
    } finally {
      done();
    }
  };

  read: Handler<provproto.ReadRequest, provproto.ReadResponse> = async (req) => {
    const { def, secretPaths } = this.resource(req.getType(), req.getUrn());
    const state = fromStruct(req.getProperties());
    const inputs = fromStruct(req.getInputs());
    const hasInputs = req.hasInputs() && Object.keys(inputs.value).length > 0;
    const secrets = new Set([...state.secretPaths, ...inputs.secretPaths, ...secretPaths]);
    const { ctx, done } = this.context(req.getUrn(), 0, def, req.getName());
    try {
      const result = await def.read(ctx, req.getId(), hasInputs ? inputs.value : undefined, req.hasProperties() ? state.value : undefined);
      // An empty id tells the engine the object is gone (refresh removes it from state).
      if (!result) return new provproto.ReadResponse().setId("");
      return new provproto.ReadResponse()
        .setId(result.id)
        .setProperties(toStruct(result.outputs, secrets))
        .setInputs(toStruct(result.inputs, secrets));
    } finally {
      done();
    }
  };

  update: Handler<provproto.UpdateRequest, provproto.UpdateResponse> = async (req) => {
    const { def, secretPaths } = this.resource(req.getType(), req.getUrn());
    const oldState = fromStruct(req.getOlds());
    const oldInputs = req.hasOldInputs() ? fromStruct(req.getOldInputs()).value : pick(oldState.value, def.inputs);
    const news = fromStruct(req.getNews());
    const secrets = new Set([...news.secretPaths, ...oldState.secretPaths, ...secretPaths]);
    await def.authorize?.(this.providerContext(), "update", news.value, oldState.value);
    if (req.getPreview()) {
      const outs: Props = { ...news.value };
      for (const [name, f] of Object.entries(def.outputs)) outs[name] = f.stable ? oldState.value[name] : UNKNOWN;
      return new provproto.UpdateResponse().setProperties(toStruct(outs, secrets));
    }
    const { ctx, done } = this.context(req.getUrn(), req.getTimeout(), def, req.getName());
    try {
      const outputs = await def.update(ctx, req.getId(), oldInputs, news.value, oldState.value);
      return new provproto.UpdateResponse().setProperties(toStruct(outputs, secrets));
    } finally {
      done();
    }
  };

  delete: Handler<provproto.DeleteRequest, Empty> = async (req) => {
    const { def } = this.resource(req.getType(), req.getUrn());
    const state = fromStruct(req.getProperties()).value;
    const inputs = req.hasOldInputs() ? fromStruct(req.getOldInputs()).value : pick(state, def.inputs);
    await def.authorize?.(this.providerContext(), "delete", inputs, state);
    const { ctx, done } = this.context(req.getUrn(), req.getTimeout(), def, req.getName());
    try {
      await def.delete(ctx, req.getId(), inputs, state);
      return new Empty();
    } finally {
      done();
    }
  };
}

/** Thrown by create when the object exists but is not fully configured (ErrorResourceInitFailed). */
class InitFailed extends Error {
  constructor(
    readonly id: string,
    readonly properties: ReturnType<typeof toStruct>,
    readonly inputs: ReturnType<typeof toStruct>,
    readonly reasons: string[],
  ) {
    super(reasons.join("; "));
  }
}

function typeFromUrn(urn: string): string {
  // urn:pulumi:<stack>::<project>::<parent$type>::<name>
  const parts = urn.split("::");
  const qualified = parts[2] ?? "";
  return qualified.split("$").pop() ?? "";
}

function pick(state: Props, fields: Fields): Props {
  const out: Props = {};
  for (const name of Object.keys(fields)) if (state[name] !== undefined) out[name] = state[name];
  return out;
}

/** Properties the engine itself puts on every provider resource; not settings of ours. */
const ENGINE_RESERVED = new Set(["version", "pluginDownloadURL"]);
const isReserved = (k: string) => ENGINE_RESERVED.has(k) || k.startsWith("__");
function withoutReserved(values: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(values).filter(([k]) => !isReserved(k)));
}
function pickReserved(values: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(values).filter(([k]) => isReserved(k)));
}

/** Stack configuration arrives as text; give each setting its declared type. */
function coerceConfig(values: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, v] of Object.entries(values)) {
    const field = (configFields as Fields)[name];
    if (typeof v !== "string" || !field || isUnknown(v)) {
      out[name] = v;
      continue;
    }
    if (field.type === "boolean" && /^(true|false)$/.test(v)) out[name] = v === "true";
    else if ((field.type === "integer" || field.type === "number") && /^-?\d+(\.\d+)?$/.test(v)) out[name] = Number(v);
    else if ((field.type === "array" && v.startsWith("[")) || ((field.type === "map" || field.type === "object") && v.startsWith("{"))) {
      try {
        out[name] = JSON.parse(v);
      } catch {
        out[name] = v;
      }
    } else out[name] = v;
  }
  return out;
}

function checkResponse(inputs: Props, secrets: Set<string>, failures: CheckFailure[]): provproto.CheckResponse {
  const resp = new provproto.CheckResponse().setInputs(toStruct(inputs, secrets));
  resp.setFailuresList(failures.map((f) => new provproto.CheckFailure().setProperty(f.property).setReason(f.reason)));
  return resp;
}

function diffResponse(changes: PropertyChange[], replaces: string[], stables: string[], deleteBeforeReplace: boolean): provproto.DiffResponse {
  const K = provproto.PropertyDiff.Kind;
  const resp = new provproto.DiffResponse()
    .setChanges(changes.length ? provproto.DiffResponse.DiffChanges.DIFF_SOME : provproto.DiffResponse.DiffChanges.DIFF_NONE)
    .setReplacesList(replaces)
    .setStablesList(stables)
    .setDeletebeforereplace(deleteBeforeReplace && replaces.length > 0)
    .setDiffsList([...new Set(changes.map((c) => c.path.split(".")[0]))])
    .setHasdetaileddiff(true);
  const detailed = resp.getDetaileddiffMap();
  for (const c of changes) {
    const kind =
      c.kind === "add" ? (c.replace ? K.ADD_REPLACE : K.ADD) : c.kind === "delete" ? (c.replace ? K.DELETE_REPLACE : K.DELETE) : c.replace ? K.UPDATE_REPLACE : K.UPDATE;
    detailed.set(c.path, new provproto.PropertyDiff().setKind(kind).setInputdiff(true));
  }
  return resp;
}

function toServiceError(e: unknown): Partial<grpc.StatusObject> {
  if (e instanceof InitFailed) {
    const detail = new provproto.ErrorResourceInitFailed()
      .setId(e.id)
      .setProperties(e.properties)
      .setInputs(e.inputs)
      .setReasonsList(e.reasons);
    const any = new Any();
    any.pack(detail.serializeBinary(), "pulumirpc.ErrorResourceInitFailed");
    const status = new statusproto.Status().setCode(grpc.status.UNKNOWN).setMessage(e.message);
    status.addDetails(any);
    const metadata = new grpc.Metadata();
    metadata.add("grpc-status-details-bin", Buffer.from(status.serializeBinary()));
    return { code: grpc.status.UNKNOWN, details: e.message, metadata };
  }
  const code = isBaremetalError(e) && e.code === "cancelled" ? grpc.status.CANCELLED : grpc.status.UNKNOWN;
  return { code, details: describeError(e) };
}

/** Adapts our async handlers to grpc-js callbacks; unimplemented calls answer UNIMPLEMENTED. */
export function serviceImplementation(p: BaremetalProvider, onCall?: (rpc: string, ms: number) => void): grpc.UntypedServiceImplementation {
  const wrap =
    <Req, Res>(h: Handler<Req, Res>, rpc = "") =>
    (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
      const started = performance.now();
      const done = () => onCall?.(rpc, performance.now() - started);
      h(call.request).then(
        (res) => (done(), cb(null, res)),
        (e) => (done(), cb(toServiceError(e), null)),
      );
    };
  const unimplemented = (name: string) => (_call: unknown, cb: grpc.sendUnaryData<unknown>) =>
    cb({ code: grpc.status.UNIMPLEMENTED, details: `${name} is not implemented by the baremetal provider` }, null);
  return {
    handshake: wrap(p.handshake),
    getPluginInfo: wrap(p.getPluginInfo),
    getSchema: wrap(p.getSchema),
    checkConfig: wrap(p.checkConfig),
    diffConfig: wrap(p.diffConfig),
    configure: wrap(p.configure),
    check: wrap(p.check, "check"),
    diff: wrap(p.diff, "diff"),
    create: wrap(p.create, "create"),
    read: wrap(p.read, "read"),
    update: wrap(p.update, "update"),
    delete: wrap(p.delete, "delete"),
    cancel: wrap(p.cancel),
    parameterize: unimplemented("Parameterize"),
    invoke: wrap(p.invoke),
    call: unimplemented("Call"),
    construct: unimplemented("Construct"),
    attach: unimplemented("Attach"),
    getMapping: (_call: unknown, cb: grpc.sendUnaryData<provproto.GetMappingResponse>) => cb(null, new provproto.GetMappingResponse()),
    getMappings: (_call: unknown, cb: grpc.sendUnaryData<provproto.GetMappingsResponse>) => cb(null, new provproto.GetMappingsResponse()),
  };
}

/** Starts the server on loopback; resolves with the bound port. */
export async function serve(
  engineAddress?: string,
  port = 0,
  onCall?: (rpc: string, ms: number) => void,
): Promise<{ server: grpc.Server; port: number; provider: BaremetalProvider }> {
  const provider = new BaremetalProvider(engineAddress);
  const server = new grpc.Server({
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
  });
  server.addService(provrpc.ResourceProviderService, serviceImplementation(provider, onCall));
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { server, port: bound, provider };
}
