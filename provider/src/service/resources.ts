/**
 * The service's generic resource and function endpoints: what the provider in broker mode calls
 * (../broker/client.ts) and what any API client may call. The service runs the provider's own
 * resource definitions (the same handlers, drivers and checks), with its backend credentials and
 * the token's project as the caller, and keeps each object's handler state in the inventory
 * (`service_resources`): a tenant never holds the state the handlers work from, so a forged state
 * cannot point a handler at another tenant's object.
 *
 *   POST   /v1/resources/{type}/check   {inputs, name?}       -> {failures}
 *   POST   /v1/resources/{type}          {inputs, name, urn?}  -> 201 the object (Idempotency-Key honoured)
 *   GET    /v1/resources/{type}                                -> {items, nextPageToken?} (the token's project's)
 *   GET    /v1/resources/{type}/{sel}    [?refresh=true]       -> the object (refreshed from its backend)
 *   PUT    /v1/resources/{type}/{sel}    {inputs}  [If-Match]  -> the object
 *   DELETE /v1/resources/{type}/{sel}              [If-Match]  -> 204
 *   POST   /v1/functions/{token}         {args}                -> the function's result
 *
 * `{sel}` is the object's UUID, its handler id (what Pulumi/Terraform state holds), or its name.
 * An object is `{uuid, id, inputs, outputs, etag, partial?}`; its ETag changes on every write and
 * `If-Match` makes an update or delete fail with 412 when the object changed meanwhile.
 *
 * Tenancy: an object belongs to the project of the token that made it. Another project's object
 * answers 403 (and the refusal is in the audit log), not 404, so a tenant learns nothing it could
 * not learn from a refusal; the operator's tokens (no project) reach every object.
 * A create records the object before its handler runs (as pending) and fills it in after, so a
 * service that dies midway leaves a record to retry or delete, never an object nobody knows of.
 */
import { randomUUID } from "node:crypto";
import type { Caller } from "../core/auth";
import { BaremetalError, isBaremetalError } from "../core/errors";
import { applyDefaults } from "../core/fields";
import type { ProviderHost } from "../core/host";
import { isPartialCreate, type OperationContext, type Props, type ProviderContext, type ResourceDefinition } from "../core/resource";
import { Validator } from "../core/validate";
import type { Inventory, ServiceResourceRecord } from "../inventory/types";
import { functionsByToken, resourcesByToken } from "../resources";
import type { AuthenticatedCaller } from "./tokens";
import { unknownsFromWire } from "../broker/client";

/** What the API returns for an object. */
export interface ObjectView {
  uuid: string;
  id: string;
  type: string;
  name?: string;
  projectId?: string;
  inputs: Props;
  outputs: Props;
  etag: string;
  createdAt: string;
  updatedAt: string;
  partial?: string[];
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const PENDING = "pending:";
/**
 * Where a record keeps the name and URN its handlers ran with (ids derive from the name), next to
 * the handler's state: not a field name any resource can have, and never shown.
 */
const ORIGIN = "@origin";

interface Origin {
  name: string;
  urn: string;
}
const withOrigin = (state: Props, origin: Origin): Props => ({ ...state, [ORIGIN]: origin });
function originOf(r: ServiceResourceRecord): Origin {
  const o = r.state[ORIGIN] as Origin | undefined;
  return o ?? { name: r.name ?? r.uuid, urn: `service:${r.type}:${r.uuid}` };
}
function stateOf(r: ServiceResourceRecord): Props {
  const { [ORIGIN]: _origin, ...state } = r.state;
  void _origin;
  return state;
}

export interface ResourceRequest {
  caller: AuthenticatedCaller;
  method: string;
  /** The path after /v1/. */
  segments: string[];
  query: URLSearchParams;
  body: Record<string, unknown>;
  headers: Record<string, string | string[] | undefined>;
  /** Records the call in the audit log (mutations, and every refusal). */
  audit: (a: { operation: string; target: string }) => void;
  requestId: string;
}

export interface ResourceAnswer {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

/** A 405 naming the methods the path takes (the service answers them in an Allow header). */
export function notAllowed(path: string, methods: string[]): BaremetalError {
  return new BaremetalError("validation", `${path} takes ${methods.join(", ")}`, { httpStatus: 405, messageId: "MethodNotAllowed", details: methods });
}

/** Refuses body properties other than `allowed` (the document says additionalProperties: false). */
function onlyProperties(body: Record<string, unknown>, allowed: string[]): void {
  const extra = Object.keys(body).find((k) => !allowed.includes(k));
  if (extra !== undefined) throw new BaremetalError("validation", `${extra}: not a property of this request body (it takes ${allowed.join(", ")})`, { property: extra });
}

const header = (h: ResourceRequest["headers"], name: string) => {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
};

export class ResourceEndpoints {
  private readonly validators = new Map<string, Validator>();

  constructor(private readonly host: ProviderHost) {}

  /** Whether the service answers this path here. */
  static handles(pathname: string): boolean {
    return /^\/v1\/(resources|functions)\/[^/]+/.test(pathname);
  }

  private definition(type: string): ResourceDefinition {
    const def = resourcesByToken.get(type);
    if (!def) throw new BaremetalError("not-found", `no resource type ${JSON.stringify(type)}: this service manages ${[...resourcesByToken.keys()].join(", ")}`);
    return def;
  }

  private validator(def: ResourceDefinition): Validator {
    let v = this.validators.get(def.token);
    if (!v) this.validators.set(def.token, (v = new Validator(def.inputs)));
    return v;
  }

  private caller(c: AuthenticatedCaller): Caller {
    return { projectId: c.projectId, roles: c.roles, operator: c.projectId === undefined };
  }

  /** The service's provider context (its config, policy, inventory) with the token's caller. */
  private providerContext(c: AuthenticatedCaller): ProviderContext {
    return { ...this.host.providerContext(), caller: this.caller(c) };
  }

  private context(def: ResourceDefinition, caller: AuthenticatedCaller, name: string, urn: string, timeoutSeconds: number, requestId: string): { ctx: OperationContext; done: () => void } {
    // Progress stays in the service's log (one line per message, with the request id).
    const log = { progress: () => undefined, warn: (m: string) => process.stderr.write(`${JSON.stringify({ requestId, warning: m })}\n`) };
    const op = this.host.operation(def, urn, name, timeoutSeconds, log, "x-timeout-seconds");
    return { ctx: { ...op.ctx, caller: this.caller(caller) }, done: op.done };
  }

  private async inventory(): Promise<Inventory> {
    return this.host.providerContext().inventory();
  }

  /** The inputs as a handler gets them: defaults, validation, the resource's check and normalization. */
  private async prepare(def: ResourceDefinition, caller: AuthenticatedCaller, raw: unknown): Promise<Props> {
    if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new BaremetalError("validation", "inputs: give the resource's inputs as an object", { property: "inputs" });
    let inputs = applyDefaults(def.inputs, raw as Props);
    const failures = this.validator(def).check(inputs);
    if (!failures.length && def.check) failures.push(...(await def.check(inputs, this.providerContext(caller))));
    // A refusal of the policy found by the check (another project's volume, key, backup...) is a 403, not bad input.
    const refused = failures.find((f) => f.code === "auth");
    if (refused) throw new BaremetalError("auth", `${refused.property}: ${refused.reason}`, { property: refused.property, httpStatus: 403, messageId: "PolicyNotAuthorized" });
    if (failures.length) throw new BaremetalError("validation", failures.map((f) => `${f.property}: ${f.reason}`).join("; "), { property: failures[0].property });
    if (def.normalize) inputs = def.normalize(inputs);
    return inputs;
  }

  /** The object `sel` names (UUID, handler id or name) of `type`; 403 when another project's. */
  private async find(def: ResourceDefinition, caller: AuthenticatedCaller, sel: string, audit: ResourceRequest["audit"], operation: string): Promise<ServiceResourceRecord> {
    const inv = await this.inventory();
    let r = UUID.test(sel) ? await inv.getServiceResource(sel) : undefined;
    if (r && r.type !== def.token) r = undefined;
    r ??= await inv.findServiceResource(def.token, { resourceId: sel });
    r ??= await inv.findServiceResource(def.token, { name: sel, projectId: caller.projectId });
    if (!r) throw new BaremetalError("not-found", `no ${def.token} ${JSON.stringify(sel)} in this service`);
    if (caller.projectId !== undefined && r.projectId !== caller.projectId) {
      audit({ operation, target: `${def.token}/${r.uuid}` });
      throw new BaremetalError("auth", `${def.token} ${JSON.stringify(sel)} belongs to another project: project ${caller.projectId} may not use it`, { httpStatus: 403, messageId: "PolicyNotAuthorized" });
    }
    return r;
  }

  async handle(req: ResourceRequest): Promise<ResourceAnswer> {
    const [kind, token, sel, extra] = req.segments.map(decodeURIComponent);
    if (kind === "functions") {
      const fn = functionsByToken.get(token);
      if (!fn || sel !== undefined) throw new BaremetalError("not-found", `no function ${JSON.stringify(token)}: this service has ${[...functionsByToken.keys()].join(", ")}`);
      if (req.method !== "POST") throw notAllowed(`/v1/functions/${token}`, ["POST"]);
      onlyProperties(req.body, ["args"]);
      if (req.body.args !== undefined && (req.body.args === null || typeof req.body.args !== "object" || Array.isArray(req.body.args))) {
        throw new BaremetalError("validation", "args: give the function's arguments as an object", { property: "args" });
      }
      const args = (req.body.args ?? {}) as Props;
      const failures = new Validator(fn.inputs).check(args);
      if (failures.length) throw new BaremetalError("validation", failures.map((f) => `${f.property}: ${f.reason}`).join("; "), { property: failures[0].property });
      return { status: 200, body: await fn.invoke(this.providerContext(req.caller), applyDefaults(fn.inputs, args)) };
    }
    const def = this.definition(token);
    timeoutOf(req); // a bad X-Timeout-Seconds is refused before anything runs
    if (sel === "check" && extra === undefined) {
      if (req.method === "POST") return this.check(def, req);
      if (req.method !== "GET") throw notAllowed(`/v1/resources/${token}/check`, ["POST"]);
    }
    if (extra !== undefined) throw new BaremetalError("not-found", `no such endpoint under /v1/resources/${token}`);
    if (sel === undefined) {
      if (req.method === "POST") return this.create(def, req);
      if (req.method === "GET") return this.list(def, req);
      throw notAllowed(`/v1/resources/${token}`, ["GET", "POST"]);
    }
    switch (req.method) {
      case "GET":
        return this.get(def, sel, req);
      case "PUT":
        return this.update(def, sel, req);
      case "DELETE":
        return this.remove(def, sel, req);
      default:
        throw notAllowed(`/v1/resources/${token}/{sel}`, ["GET", "PUT", "DELETE"]);
    }
  }

  private async check(def: ResourceDefinition, req: ResourceRequest): Promise<ResourceAnswer> {
    onlyProperties(req.body, ["inputs", "name"]);
    if (req.body.name !== undefined && typeof req.body.name !== "string") throw new BaremetalError("validation", "name: give the object's name as text", { property: "name" });
    const raw = req.body.inputs;
    if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new BaremetalError("validation", "inputs: give the resource's inputs as an object", { property: "inputs" });
    // A preview's inputs may hold values not known yet ({"@unknown": true}): not judged.
    const inputs = applyDefaults(def.inputs, unknownsFromWire(raw) as Props);
    const failures = this.validator(def).check(inputs);
    const ctx = this.providerContext(req.caller);
    if (!failures.length && def.check) failures.push(...(await def.check(inputs, ctx)));
    // The policy's answer for a create, as a failure the preview shows (the change itself is checked again).
    if (!failures.length && def.authorize) {
      try {
        await def.authorize(ctx, "create", inputs);
      } catch (e) {
        if (!(isBaremetalError(e) && e.code === "auth")) throw e;
        req.audit({ operation: `${def.token}:create`, target: def.token });
        throw e;
      }
    }
    return { status: 200, body: { failures } };
  }

  private async create(def: ResourceDefinition, req: ResourceRequest): Promise<ResourceAnswer> {
    onlyProperties(req.body, ["inputs", "name", "urn"]);
    const name = req.body.name;
    if (typeof name !== "string" || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) {
      throw new BaremetalError("validation", "name: give the object's name (letters, digits, . _ -; at most 63 characters): handlers derive ids from it", { property: "name" });
    }
    const urn = typeof req.body.urn === "string" ? req.body.urn : `service:${def.token}:${name}`;
    const inv = await this.inventory();
    const key = header(req.headers, "idempotency-key");
    if (key !== undefined && !/^[A-Za-z0-9-]{8,64}$/.test(key)) throw new BaremetalError("validation", "Idempotency-Key: give 8 to 64 letters, digits or dashes (a UUID)", { property: "Idempotency-Key" });
    const scopedKey = key ? `${req.caller.projectId ?? ""}:${key}` : undefined;
    if (scopedKey) {
      const seen = await inv.findServiceResource(def.token, { idempotencyKey: scopedKey });
      if (seen && !seen.resourceId.startsWith(PENDING)) return { status: 201, body: view(seen), headers: { etag: seen.etag } };
      if (seen) throw new BaremetalError("conflict", `a create with this Idempotency-Key is still running (object ${seen.uuid}); retry later`, { httpStatus: 409 });
    }
    req.audit({ operation: `${def.token}:create`, target: `${def.token}/${name}` });
    const inputs = await this.prepare(def, req.caller, req.body.inputs);
    const ctxAuth = this.providerContext(req.caller);
    await def.authorize?.(ctxAuth, "create", inputs);

    const now = new Date().toISOString();
    const uuid = randomUUID();
    const record: ServiceResourceRecord = {
      uuid,
      type: def.token,
      ...(req.caller.projectId !== undefined ? { projectId: req.caller.projectId } : {}),
      // The object's name, unique among the project's objects of the type (the database refuses a
      // second: 409): an API client's as given; for Pulumi/Terraform (a urn given), whose names are
      // unique per stack only and whose replacements briefly have two objects of one name, the name
      // with a suffix of the UUID (as Pulumi auto-names), so that it is unique too and selects.
      name: typeof req.body.urn === "string" ? `${name.slice(0, 54)}-${uuid.slice(0, 8)}` : name,
      resourceId: `${PENDING}${uuid}`,
      inputs,
      state: withOrigin({}, { name, urn }),
      etag: randomUUID(),
      ...(scopedKey ? { idempotencyKey: scopedKey } : {}),
      partial: true,
      createdAt: now,
      updatedAt: now,
    };
    await inv.insertServiceResource(record);
    const { ctx, done } = this.context(def, req.caller, name, urn, timeoutOf(req), req.requestId);
    let id: string;
    let state: Props;
    let partial: string[] | undefined;
    try {
      const made = await def.create(ctx, inputs);
      id = made.id;
      state = made.outputs;
    } catch (e) {
      if (!isPartialCreate(e)) {
        await inv.deleteServiceResource(uuid).catch(() => undefined);
        throw e;
      }
      id = e.id;
      state = e.outputs;
      partial = e.reasons;
    } finally {
      done();
    }
    const stored = await this.store(inv, record, id, inputs, withOrigin(state, { name, urn }), partial !== undefined);
    return { status: 201, body: view(stored, partial), headers: { etag: stored.etag } };
  }

  /** Fills in a created object's record (its handler id known now), in one conditional write. */
  private async store(inv: Inventory, record: ServiceResourceRecord, id: string, inputs: Props, state: Props, partial: boolean): Promise<ServiceResourceRecord> {
    return inv.updateServiceResource(record.uuid, { resourceId: id, inputs, state, partial, etag: randomUUID(), updatedAt: new Date().toISOString() }, record.etag);
  }

  private async list(def: ResourceDefinition, req: ResourceRequest): Promise<ResourceAnswer> {
    const limitRaw = req.query.get("limit");
    const limit = limitRaw === null ? 100 : Number(limitRaw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new BaremetalError("validation", "limit: give a whole number from 1 to 1000", { property: "limit" });
    const after = req.query.get("pageToken") ?? undefined;
    if (after !== undefined && !UUID.test(after)) throw new BaremetalError("validation", "pageToken is not one this service gave out: pass the nextPageToken of the previous page, unchanged", { property: "pageToken" });
    const inv = await this.inventory();
    const rows = await inv.listServiceResources({ type: def.token, ...(req.caller.projectId !== undefined ? { projectId: req.caller.projectId } : {}), ...(after ? { afterUuid: after } : {}), limit: limit + 1 });
    const items = rows.slice(0, limit).map((r) => view(r));
    return { status: 200, body: { items, ...(rows.length > limit ? { nextPageToken: items[items.length - 1].uuid } : {}) } };
  }

  private async get(def: ResourceDefinition, sel: string, req: ResourceRequest): Promise<ResourceAnswer> {
    const r = await this.find(def, req.caller, sel, req.audit, `${def.token}:get`);
    if (req.query.get("refresh") !== "true" || r.resourceId.startsWith(PENDING)) return { status: 200, body: view(r), headers: { etag: r.etag } };
    const inv = await this.inventory();
    const { ctx, done } = this.context(def, req.caller, originOf(r).name, originOf(r).urn, timeoutOf(req), req.requestId);
    try {
      const now = await def.read(ctx, r.resourceId, r.inputs, stateOf(r));
      if (!now) {
        await inv.deleteServiceResource(r.uuid);
        throw new BaremetalError("not-found", `${def.token} ${r.resourceId} is gone from its backend`);
      }
      const updated = await inv.updateServiceResource(r.uuid, { inputs: now.inputs, state: withOrigin(now.outputs, originOf(r)), etag: r.etag, partial: r.partial, updatedAt: r.updatedAt }, r.etag);
      return { status: 200, body: view(updated), headers: { etag: updated.etag } };
    } finally {
      done();
    }
  }

  private async update(def: ResourceDefinition, sel: string, req: ResourceRequest): Promise<ResourceAnswer> {
    const operation = `${def.token}:update`;
    const r = await this.find(def, req.caller, sel, req.audit, operation);
    req.audit({ operation, target: `${def.token}/${r.uuid}` });
    onlyProperties(req.body, ["inputs"]);
    const ifMatch = header(req.headers, "if-match");
    if (ifMatch !== undefined && ifMatch !== r.etag) throw preconditionFailed(def, r);
    const news = await this.prepare(def, req.caller, req.body.inputs);
    const ctxAuth = this.providerContext(req.caller);
    await def.authorize?.(ctxAuth, "update", news, stateOf(r));
    const inv = await this.inventory();
    const { ctx, done } = this.context(def, req.caller, originOf(r).name, originOf(r).urn, timeoutOf(req), req.requestId);
    let state: Props;
    try {
      state = await def.update(ctx, r.resourceId, r.inputs, news, stateOf(r));
    } finally {
      done();
    }
    const updated = await inv.updateServiceResource(r.uuid, { inputs: news, state: withOrigin(state, originOf(r)), etag: randomUUID(), partial: false, updatedAt: new Date().toISOString() }, r.etag);
    return { status: 200, body: view(updated), headers: { etag: updated.etag } };
  }

  private async remove(def: ResourceDefinition, sel: string, req: ResourceRequest): Promise<ResourceAnswer> {
    const operation = `${def.token}:delete`;
    const r = await this.find(def, req.caller, sel, req.audit, operation);
    req.audit({ operation, target: `${def.token}/${r.uuid}` });
    const ifMatch = header(req.headers, "if-match");
    if (ifMatch !== undefined && ifMatch !== r.etag) throw preconditionFailed(def, r);
    const inv = await this.inventory();
    if (!r.resourceId.startsWith(PENDING)) {
      const ctxAuth = this.providerContext(req.caller);
      await def.authorize?.(ctxAuth, "delete", r.inputs, stateOf(r));
      const { ctx, done } = this.context(def, req.caller, originOf(r).name, originOf(r).urn, timeoutOf(req), req.requestId);
      try {
        await def.delete(ctx, r.resourceId, r.inputs, stateOf(r));
      } finally {
        done();
      }
    }
    await inv.deleteServiceResource(r.uuid);
    return { status: 204 };
  }
}

function preconditionFailed(def: ResourceDefinition, r: ServiceResourceRecord): BaremetalError {
  return new BaremetalError("conflict", `${def.token} ${r.resourceId} changed since the ETag you hold (now ${r.etag}): read it again, then retry`, { httpStatus: 412, messageId: "PreconditionFailed" });
}

/** The X-Timeout-Seconds header (0: the resource's default); a value that is not 1..604800 is refused. */
function timeoutOf(req: ResourceRequest): number {
  const raw = header(req.headers, "x-timeout-seconds");
  if (raw === undefined) return 0;
  const t = /^\d{1,6}$/.test(raw.trim()) ? Number(raw) : NaN;
  if (!(t >= 1 && t <= 7 * 86400)) throw new BaremetalError("validation", "X-Timeout-Seconds: give a whole number of seconds from 1 to 604800", { property: "x-timeout-seconds" });
  return t;
}

function view(r: ServiceResourceRecord, partial?: string[]): ObjectView {
  return {
    uuid: r.uuid,
    id: r.resourceId,
    type: r.type,
    ...(r.name !== undefined ? { name: r.name } : {}),
    ...(r.projectId !== undefined ? { projectId: r.projectId } : {}),
    inputs: r.inputs,
    outputs: stateOf(r),
    etag: r.etag,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
    ...(partial ? { partial } : {}),
  };
}
