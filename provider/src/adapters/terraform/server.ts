/**
 * The Terraform/OpenTofu provider (plugin protocol v6) over the protocol-free core: the same
 * resource definitions and handlers the Pulumi adapter drives, with the same diff
 * (core/diff.ts), validation, policy checks and partial-create handling.
 *
 * Thin translation only: DynamicValues <-> core property bags (cty.ts, by the schema of
 * schema.ts), errors <-> diagnostics with attribute paths, and an operation context per call.
 *
 * How the Terraform lifecycle maps onto the core:
 * - ValidateResourceConfig: field validation (unknown values are not judged); the resource's
 *   own `check` needs the configured provider, so it runs in PlanResourceChange (together they
 *   are Pulumi's Check).
 * - PlanResourceChange: create -> inputs with defaults, outputs from `preview` or unknown; update
 *   -> `diffInputs` of the stored inputs against the new ones (plus `pendingChanges`), replacing
 *   properties answered as `requires_replace`; no change -> the prior state as it is (an empty
 *   plan); destroy -> the policy's delete check (the server announces plan_destroy). The policy
 *   is checked at plan time, like a Pulumi preview.
 * - ApplyResourceChange: create / update / delete. Values the plan knew are kept as planned
 *   (Terraform requires it), the rest come from the handler. Handlers receive normalized inputs
 *   (`normalize`); the state keeps what the configuration says, so a plan after apply is empty.
 *   A create that leaves an object behind but fails (PartialCreateError) returns its state with
 *   the error: Terraform keeps it, tainted, and replaces it on the next apply.
 * - ReadResource (refresh): the handler's `read`; gone -> null state. A property the backend
 *   reports in another spelling of the same value (normalization) keeps the configuration's.
 * - ImportResourceState: `read` by id alone.
 * - UpgradeResourceState: the stored JSON re-encoded with the current schema (version 0).
 *
 * Terraform gives providers no resource address: the core's operation name is the `name` input
 * where the resource has one, else `<type>-<random>` at create (stored in the id).
 */
import { randomBytes } from "node:crypto";
import { diffInputs } from "../../core/diff";
import { BaremetalError, describeError, isBaremetalError } from "../../core/errors";
import { applyDefaults, type Fields } from "../../core/fields";
import { ProviderHost } from "../../core/host";
import { isPartialCreate, type OperationContext, type Props } from "../../core/resource";
import { type CheckFailure, Validator } from "../../core/validate";
import { UNKNOWN, containsUnknown, deepEqual } from "../../core/values";
import { decodeDynamic, encodeDynamic, fromCore, toCore } from "./cty";
import { snake, type TfAttribute, type TfBlock, type TfDataSource, type TfResource, terraformSchema } from "./schema";

/** A protobufjs plain object (camelCase fields, bytes as Buffer, enums as numbers). */
type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const SEVERITY = { error: 1, warning: 2 } as const;
const NESTING = { single: 1, list: 2, set: 3, map: 4 } as const;

interface Diagnostic {
  severity: number;
  summary: string;
  detail?: string;
  attribute?: { steps: Msg[] };
}

/**
 * A dotted core path (`bmc.address`, `volumes[0].keyId`) as a Terraform attribute path. Names go
 * through `attrs` (the block's attribute tree) where given, so a field's `terraformName` and the
 * keys of a map of objects come out right; without it (or past it), names are snake-cased.
 */
export function attributePath(property: string, attrs?: TfAttribute[]): { steps: Msg[] } {
  const steps: Msg[] = [];
  let level = attrs;
  let mapKeyNext = false;
  for (const part of property.split(".")) {
    const m = /^([^[\]]*)((?:\[\d+\])*)$/.exec(part);
    const name = m ? m[1] : part;
    if (name && mapKeyNext) {
      steps.push({ elementKeyString: name });
      mapKeyNext = false;
    } else if (name) {
      const a = level?.find((x) => x.coreName === name);
      steps.push({ attributeName: a?.name ?? snake(name) });
      level = a?.nested?.attributes;
      mapKeyNext = a?.nested?.nesting === "map";
    }
    if (m) for (const idx of m[2].matchAll(/\[(\d+)\]/g)) steps.push({ elementKeyInt: Number(idx[1]) });
  }
  return { steps };
}

function errorDiagnostic(e: unknown, attrs?: TfAttribute[]): Diagnostic {
  const d: Diagnostic = { severity: SEVERITY.error, summary: isBaremetalError(e) ? e.message : describeError(e) };
  if (isBaremetalError(e) && e.property) d.attribute = attributePath(e.property, attrs);
  if (isPartialCreate(e)) d.summary = `the object was created but is not fully configured: ${e.reasons.join("; ")}`;
  return d;
}

function failureDiagnostics(failures: CheckFailure[], attrs?: TfAttribute[]): Diagnostic[] {
  return failures.map((f) => ({ severity: SEVERITY.error, summary: `${f.property}: ${f.reason}`, attribute: attributePath(f.property, attrs) }));
}

function attributeProto(a: TfAttribute): Msg {
  const out: Msg = { name: a.name, description: a.description, descriptionKind: 0, required: a.required, optional: a.optional, computed: a.computed, sensitive: a.sensitive };
  if (a.nested) out.nestedType = { attributes: a.nested.attributes.map(attributeProto), nesting: NESTING[a.nested.nesting] };
  else out.type = Buffer.from(JSON.stringify(a.type));
  return out;
}

function schemaProto(block: TfBlock, version: number, description: string): Msg {
  return { version, block: { version, attributes: block.attributes.map(attributeProto), blockTypes: [], description, descriptionKind: 0, deprecated: false } };
}

const pickFields = (props: Props, fields: Fields): Props => Object.fromEntries(Object.entries(props).filter(([k, v]) => k in fields && v !== undefined));

/** Per resource type: the schema entry and a validator (compiled on first use: start-up stays fast). */
interface Compiled {
  r: TfResource;
  validator?: Validator;
}

export class TerraformProvider {
  private readonly host = new ProviderHost();
  private readonly schema = terraformSchema();
  private readonly resources = new Map<string, Compiled>(this.schema.resources.map((r) => [r.typeName, { r }]));
  private readonly dataSources = new Map<string, TfDataSource>(this.schema.dataSources.map((d) => [d.typeName, d]));
  private readonly dataValidators = new Map<string, Validator>();

  private resource(typeName: string): Compiled {
    const c = this.resources.get(typeName);
    if (!c) throw new BaremetalError("validation", `unknown resource type ${typeName}; this provider serves: ${[...this.resources.keys()].join(", ")}`);
    return c;
  }

  private validator(c: Compiled): Validator {
    c.validator ??= new Validator(c.r.def.inputs);
    return c.validator;
  }

  private decode(dv: Msg | undefined, block: TfBlock): Props | undefined {
    if (!dv || (!dv.msgpack?.length && !dv.json?.length)) return undefined;
    const v = decodeDynamic(dv, block.type) as Record<string, unknown> | null;
    return v === null ? undefined : toCore(v, block.attributes);
  }

  private encode(props: Props | undefined, block: TfBlock): Msg {
    return { msgpack: encodeDynamic(props === undefined ? null : fromCore(props, block.attributes), block.type) };
  }

  /** The operation context of a call; warnings become diagnostics of its response. */
  private operation(c: Compiled, id: string | undefined, name: string, diagnostics: Diagnostic[]) {
    const log = {
      progress: (m: string) => process.stderr.write(`[INFO] ${c.r.typeName}: ${m}\n`),
      warn: (m: string) => diagnostics.push({ severity: SEVERITY.warning, summary: m }),
    };
    return this.host.operation(c.r.def, `terraform:${c.r.typeName}:${id ?? name}`, name, 0, log);
  }

  /** Inputs of a state or plan (with defaults for what is left out). */
  private inputsOf(c: Compiled, props: Props): Props {
    return applyDefaults(c.r.def.inputs, pickFields(props, c.r.def.inputs));
  }

  private normalized(c: Compiled, inputs: Props): Props {
    return c.r.def.normalize ? c.r.def.normalize(inputs) : inputs;
  }

  // ---- provider-level calls --------------------------------------------------------------------

  getMetadata = async (): Promise<Msg> => ({
    serverCapabilities: { planDestroy: true, getProviderSchemaOptional: false, moveResourceState: false },
    diagnostics: [],
    resources: this.schema.resources.map((r) => ({ typeName: r.typeName })),
    dataSources: this.schema.dataSources.map((d) => ({ typeName: d.typeName })),
    functions: [],
    ephemeralResources: [],
  });

  getProviderSchema = async (): Promise<Msg> => ({
    provider: schemaProto(this.schema.provider, 0, "The baremetal provider. Every setting can also come from a `BAREMETAL_*` environment variable."),
    resourceSchemas: Object.fromEntries(this.schema.resources.map((r) => [r.typeName, schemaProto(r.block, r.version, r.def.description)])),
    dataSourceSchemas: Object.fromEntries(this.schema.dataSources.map((d) => [d.typeName, schemaProto(d.block, 0, d.def.description)])),
    functions: {},
    ephemeralResourceSchemas: {},
    diagnostics: [],
    serverCapabilities: { planDestroy: true, getProviderSchemaOptional: false, moveResourceState: false },
  });

  validateProviderConfig = async (req: Msg): Promise<Msg> => {
    const values = this.decode(req.config, this.schema.provider) ?? {};
    return { diagnostics: failureDiagnostics(this.host.checkConfig(values)) };
  };

  configureProvider = async (req: Msg): Promise<Msg> => {
    try {
      this.host.configure(this.decode(req.config, this.schema.provider) ?? {});
      return { diagnostics: [] };
    } catch (e) {
      return { diagnostics: [errorDiagnostic(e)] };
    }
  };

  stopProvider = async (): Promise<Msg> => {
    this.host.cancelAll("OpenTofu/Terraform stopped the provider");
    return { Error: "" };
  };

  // ---- resources --------------------------------------------------------------------------------

  /** A handler on one resource type: an unknown type, or anything a step throws, answers an error diagnostic. */
  private onResource(handle: (c: Compiled, req: Msg) => Promise<Msg>): (req: Msg) => Promise<Msg> {
    return async (req) => {
      let c: Compiled | undefined;
      try {
        c = this.resource(req.typeName);
        return await handle(c, req);
      } catch (e) {
        return { diagnostics: [errorDiagnostic(e, c?.r.block.attributes)] };
      }
    };
  }

  /**
   * Runs one operation on an object with its context (warnings become `diagnostics`); a failure
   * adds its error diagnostic and answers what `failed` makes of it.
   */
  private async run(c: Compiled, id: string | undefined, name: string, diagnostics: Diagnostic[], body: (ctx: OperationContext) => Promise<Msg>, failed: (e: unknown) => Msg): Promise<Msg> {
    const { ctx, done } = this.operation(c, id, name, diagnostics);
    try {
      return await body(ctx);
    } catch (e) {
      diagnostics.push(errorDiagnostic(e, c.r.block.attributes));
      return failed(e);
    } finally {
      done();
    }
  }

  /**
   * Field validation only: OpenTofu validates before it configures the provider, so the
   * resource's own `check` (which may read the provider's settings) runs when planning.
   */
  validateResourceConfig = this.onResource(async (c, req) => {
    const inputs = this.inputsOf(c, this.decode(req.config, c.r.block) ?? {});
    return { diagnostics: failureDiagnostics(this.validator(c).check(inputs), c.r.block.attributes) };
  });

  /** Field validation and the resource's own `check` (Pulumi's Check), on a configured provider. */
  private async checkInputs(c: Compiled, inputs: Props): Promise<Diagnostic[]> {
    const failures = this.validator(c).check(inputs);
    const routed = this.host.route(c.r.def);
    if (!failures.length && routed.check) failures.push(...(await routed.check(inputs, this.host.providerContext())));
    return failureDiagnostics(failures, c.r.block.attributes);
  }

  upgradeResourceState = this.onResource(async (c, req) => {
    if (Number(req.version ?? 0) > c.r.version) throw new BaremetalError("validation", `the state of this ${req.typeName} was written by a newer provider (schema version ${req.version}); upgrade the provider`);
    const raw = req.rawState?.json as Buffer | undefined;
    if (!raw?.length) throw new BaremetalError("validation", `the state of this ${req.typeName} is in the legacy flatmap form, which this provider never wrote`);
    // Attributes the current schema no longer has are dropped; new ones start null.
    const props = toCore(decodeDynamic({ json: raw }, c.r.block.type, { ignoreUnknownAttributes: true }) as Record<string, unknown>, c.r.block.attributes);
    return { upgradedState: this.encode(props, c.r.block), diagnostics: [] };
  });

  readResource = this.onResource(async (c, req) => {
    const diagnostics: Diagnostic[] = [];
    const state = this.decode(req.currentState, c.r.block);
    if (!state?.id) return { newState: req.currentState, diagnostics, private: req.private };
    const id = state.id as string;
    const stored = this.inputsOf(c, state);
    const normalizedStored = this.normalized(c, stored);
    return this.run(
      c, id, id, diagnostics,
      async (ctx) => {
        const result = await this.host.route(c.r.def).read(ctx, id, normalizedStored, state);
        if (!result) return { newState: this.encode(undefined, c.r.block), diagnostics, private: req.private };
        // Keep the configuration's spelling of a value the backend reports normalized.
        const inputs: Props = { ...result.inputs };
        for (const [k, v] of Object.entries(stored)) if (deepEqual(normalizedStored[k], inputs[k])) inputs[k] = v;
        return { newState: this.encode({ ...result.outputs, ...inputs, id: result.id }, c.r.block), diagnostics, private: req.private };
      },
      () => ({ newState: req.currentState, diagnostics, private: req.private }),
    );
  });

  planResourceChange = this.onResource(async (c, req) => {
    const diagnostics: Diagnostic[] = [];
    const def = this.host.route(c.r.def);
    const prior = this.decode(req.priorState, c.r.block);
    const proposed = this.decode(req.proposedNewState, c.r.block);
    const ctx = this.host.providerContext();
    if (!proposed) {
      if (prior) await def.authorize?.(ctx, "delete", this.inputsOf(c, prior), prior);
      return { plannedState: req.proposedNewState, diagnostics, requiresReplace: [] };
    }
    const news = this.inputsOf(c, proposed);
    const failures = await this.checkInputs(c, news);
    if (failures.length) return { diagnostics: failures };
    if (!prior) {
      await def.authorize?.(ctx, "create", news);
      const known = def.preview ? def.preview(news) : {};
      const planned: Props = { ...news, id: UNKNOWN };
      for (const name of Object.keys(def.outputs)) if (planned[name] === undefined) planned[name] = known[name] ?? UNKNOWN;
      return { plannedState: this.encode(planned, c.r.block), diagnostics, requiresReplace: [] };
    }
    const olds = this.inputsOf(c, prior);
    const d = diffInputs(def.inputs, olds, news);
    const pending = def.pendingChanges ? def.pendingChanges(prior, news) : [];
    if (!d.changes.length && !pending.length) return { plannedState: req.priorState, diagnostics, requiresReplace: [] };
    if (!d.replaces.length) await def.authorize?.(ctx, "update", news, prior);
    const planned: Props = { ...news, id: prior.id };
    for (const [name, f] of Object.entries(def.outputs)) {
      if (name in def.inputs && news[name] !== undefined) continue;
      planned[name] = f.stable && !d.replaces.length ? prior[name] : UNKNOWN;
    }
    // A change only the state asks for (e.g. a rotation fell due) still needs a planned difference.
    return { plannedState: this.encode(planned, c.r.block), diagnostics, requiresReplace: d.replaces.map((p) => attributePath(p, c.r.block.attributes)) };
  });

  applyResourceChange = this.onResource(async (c, req) => {
    const diagnostics: Diagnostic[] = [];
    const def = this.host.route(c.r.def);
    const prior = this.decode(req.priorState, c.r.block);
    const planned = this.decode(req.plannedState, c.r.block);

    if (!planned) {
      // Destroy.
      const id = prior!.id as string;
      const inputs = this.inputsOf(c, prior!);
      return this.run(
        c, id, id, diagnostics,
        async (ctx) => {
          await def.authorize?.(ctx, "delete", inputs, prior);
          await def.delete(ctx, id, this.normalized(c, inputs), prior!);
          return { newState: this.encode(undefined, c.r.block), diagnostics, private: Buffer.alloc(0) };
        },
        () => ({ newState: req.priorState, diagnostics, private: req.plannedPrivate }),
      );
    }

    // What the plan left unknown is the provider's to compute (an optional input the program
    // did not set, such as VolumeAttachment.initiatorIqn): the handler gets it unset.
    const news = this.inputsOf(c, Object.fromEntries(Object.entries(planned).filter(([, v]) => !containsUnknown(v))));
    /**
     * The new state: Terraform requires what the plan knew to stay as planned (and attributes the
     * provider does not compute to stay as configured, null included); the rest from the handler.
     */
    const stateOf = (id: string, outputs: Props): Props => {
      const out: Props = { ...outputs };
      for (const a of c.r.block.attributes) {
        const v = planned[a.coreName];
        if (!a.computed) out[a.coreName] = v;
        else if (v !== undefined && !containsUnknown(v)) out[a.coreName] = v;
      }
      out.id = id;
      return out;
    };

    if (!prior) {
      const name = typeof news.name === "string" && news.name ? news.name : `${c.r.typeName.replace(/^baremetal_/, "").replace(/_/g, "-")}-${randomBytes(4).toString("hex")}`;
      return this.run(
        c, undefined, name, diagnostics,
        async (ctx) => {
          await def.authorize?.(ctx, "create", news);
          const result = await def.create(ctx, this.normalized(c, news));
          return { newState: this.encode(stateOf(result.id, result.outputs), c.r.block), diagnostics, private: Buffer.alloc(0) };
        },
        (e) =>
          // Something exists but is not finished: Terraform keeps it (tainted) and replaces it next time.
          isPartialCreate(e)
            ? { newState: this.encode(stateOf(e.id, e.outputs), c.r.block), diagnostics, private: Buffer.alloc(0) }
            : { newState: this.encode(undefined, c.r.block), diagnostics },
      );
    }

    const id = prior.id as string;
    return this.run(
      c, id, id, diagnostics,
      async (ctx) => {
        await def.authorize?.(ctx, "update", news, prior);
        const outputs = await def.update(ctx, id, this.normalized(c, this.inputsOf(c, prior)), this.normalized(c, news), prior);
        return { newState: this.encode(stateOf(id, outputs), c.r.block), diagnostics, private: req.plannedPrivate };
      },
      () => ({ newState: req.priorState, diagnostics, private: req.plannedPrivate }),
    );
  });

  importResourceState = this.onResource(async (c, req) => {
    const diagnostics: Diagnostic[] = [];
    const id = String(req.id ?? "");
    return this.run(
      c, id, id, diagnostics,
      async (ctx) => {
        const result = await this.host.route(c.r.def).read(ctx, id, undefined, undefined);
        if (!result) {
          diagnostics.push({ severity: SEVERITY.error, summary: `there is no ${req.typeName} with id ${JSON.stringify(id)} to import (or the caller may not see it)` });
          return { importedResources: [], diagnostics };
        }
        const state = { ...result.outputs, ...result.inputs, id: result.id };
        return { importedResources: [{ typeName: req.typeName, state: this.encode(state, c.r.block), private: Buffer.alloc(0) }], diagnostics };
      },
      () => ({ importedResources: [], diagnostics }),
    );
  });

  // ---- data sources ----------------------------------------------------------------------------

  validateDataResourceConfig = async (req: Msg): Promise<Msg> => {
    const d = this.dataSources.get(req.typeName);
    if (!d) return { diagnostics: [errorDiagnostic(new BaremetalError("validation", `unknown data source ${req.typeName}`))] };
    const args = pickFields(this.decode(req.config, d.block) ?? {}, d.def.inputs);
    let validator = this.dataValidators.get(d.typeName);
    if (!validator) this.dataValidators.set(d.typeName, (validator = new Validator(d.def.inputs)));
    return { diagnostics: failureDiagnostics(validator.check(args), d.block.attributes) };
  };

  readDataSource = async (req: Msg): Promise<Msg> => {
    const d = this.dataSources.get(req.typeName);
    if (!d) return { diagnostics: [errorDiagnostic(new BaremetalError("validation", `unknown data source ${req.typeName}`))] };
    try {
      const args = applyDefaults(d.def.inputs, pickFields(this.decode(req.config, d.block) ?? {}, d.def.inputs));
      const result = await this.host.routeFunction(d.def).invoke(this.host.providerContext(), args);
      return { state: this.encode({ ...result, ...args, id: d.typeName }, d.block), diagnostics: [] };
    } catch (e) {
      return { diagnostics: [errorDiagnostic(e)] };
    }
  };

  /** The handlers by RPC name, for plugin.ts. */
  handlers(): Record<string, (req: Msg) => Promise<Msg>> {
    return {
      GetMetadata: this.getMetadata,
      GetProviderSchema: this.getProviderSchema,
      ValidateProviderConfig: this.validateProviderConfig,
      ConfigureProvider: this.configureProvider,
      StopProvider: this.stopProvider,
      ValidateResourceConfig: this.validateResourceConfig,
      UpgradeResourceState: this.upgradeResourceState,
      ReadResource: this.readResource,
      PlanResourceChange: this.planResourceChange,
      ApplyResourceChange: this.applyResourceChange,
      ImportResourceState: this.importResourceState,
      ValidateDataResourceConfig: this.validateDataResourceConfig,
      ReadDataSource: this.readDataSource,
    };
  }

  async close(): Promise<void> {
    await this.host.close();
  }
}

