/**
 * What every adapter (Pulumi gRPC, Terraform tfplugin6) holds for the core: the configured
 * provider, the policy, the shared inventory (opened once, on first use), the operations in
 * flight (cancelled together), and the context each handler runs with. The adapters translate
 * wire values and errors; this is the one place that turns settings into a running provider.
 */
import { callerOf } from "./auth";
import { type ProviderConfig, configFields, toProviderConfig, withEnvironment } from "./config";
import { BaremetalError } from "./errors";
import { applyDefaults } from "./fields";
import { isUnknown } from "./values";
import { Policy } from "./policy";
import type { FunctionDefinition, OperationContext, ProviderContext, ResourceDefinition } from "./resource";
import { BrokerClient } from "../broker/client";
import { brokeredFunction, brokeredResource } from "../broker/definitions";
import { type CheckFailure, Validator } from "./validate";
import { defaultInventoryUrl, openInventory } from "../inventory";
import type { Inventory } from "../inventory/types";

/** Where a handler's progress lines and warnings go (the engine's log, diagnostics...). */
export interface OperationLog {
  progress(message: string): void;
  warn(message: string): void;
}

export class ProviderHost {
  private configValue: ProviderConfig = toProviderConfig(withEnvironment({}));
  private policy: Policy = Policy.defaults();
  private inventoryHandle?: { url: string; opened: Promise<Inventory> };
  private readonly inflight = new Set<AbortController>();
  private validator?: Validator;
  private broker?: { client: BrokerClient; resources: Map<ResourceDefinition, ResourceDefinition>; functions: Map<FunctionDefinition, FunctionDefinition> };

  get config(): ProviderConfig {
    return this.configValue;
  }

  /**
   * The failures of provider settings as the user gave them, judged with what the environment
   * (`BAREMETAL_*`) adds and the defaults; unknown values are not judged.
   */
  checkConfig(values: Record<string, unknown>): CheckFailure[] {
    return this.check(applyDefaults(configFields, withEnvironment(values)));
  }

  /** Configures the provider from the user's settings (plus environment and defaults). */
  configure(values: Record<string, unknown>): void {
    const merged = applyDefaults(configFields, withEnvironment(values));
    const failures = this.check(merged);
    if (failures.length) throw new BaremetalError("validation", failures.map((f) => `${f.property}: ${f.reason}`).join("; "), { property: failures[0].property });
    const config = toProviderConfig(merged);
    if ((config.endpoint === undefined) !== (config.token === undefined) && !isUnknown(merged.endpoint) && !isUnknown(merged.token)) {
      const missing = config.endpoint === undefined ? "endpoint" : "token";
      throw new BaremetalError("validation", `broker mode needs both endpoint and token: set ${missing} (${missing === "token" ? "from `baremetal token create`" : "the service's URL"})`, { property: missing });
    }
    this.configValue = config;
    this.policy = this.configValue.policyFile ? Policy.fromFile(this.configValue.policyFile) : Policy.defaults();
    this.broker = config.endpoint && config.token ? { client: new BrokerClient({ endpoint: config.endpoint, token: config.token, caBundle: config.endpointCaBundle }), resources: new Map(), functions: new Map() } : undefined;
  }

  /** Whether resources go through the service (broker mode: endpoint and token set). */
  get brokered(): boolean {
    return this.broker !== undefined;
  }

  /** The definition whose handlers run `def`'s operations: `def` itself, or in broker mode its service-backed twin. */
  route(def: ResourceDefinition): ResourceDefinition {
    if (!this.broker) return def;
    let r = this.broker.resources.get(def);
    if (!r) this.broker.resources.set(def, (r = brokeredResource(def, this.broker.client)));
    return r;
  }

  /** The same for a function. */
  routeFunction(fn: FunctionDefinition): FunctionDefinition {
    if (!this.broker) return fn;
    let r = this.broker.functions.get(fn);
    if (!r) this.broker.functions.set(fn, (r = brokeredFunction(fn, this.broker.client)));
    return r;
  }

  /** Validates complete settings (the validator is compiled on first use: start-up stays fast). */
  private check(merged: Record<string, unknown>): CheckFailure[] {
    this.validator ??= new Validator(configFields);
    return this.validator.check(merged);
  }

  /** What every handler may use: config, caller, policy and the shared inventory (opened once). */
  providerContext(): ProviderContext {
    return {
      config: this.configValue,
      caller: callerOf(this.configValue),
      policy: this.policy,
      inventory: () => {
        const url = this.configValue.inventoryUrl ?? defaultInventoryUrl();
        if (this.inventoryHandle?.url !== url) {
          const previous = this.inventoryHandle?.opened;
          this.inventoryHandle = { url, opened: openInventory(url, { property: "inventoryUrl" }) };
          previous?.then((i) => i.close()).catch(() => undefined);
        }
        return this.inventoryHandle.opened;
      },
    };
  }

  /**
   * The context of one operation on a resource: a deadline (`timeoutSeconds`, or the resource's
   * default when 0), cancellation (by `cancelAll` or the deadline), and where its log lines go.
   * `timeoutSetting` names the setting that raises the deadline. Call `done` when the operation ends.
   */
  operation(def: ResourceDefinition, urn: string, name: string, timeoutSeconds: number, log: OperationLog, timeoutSetting = "timeout"): { ctx: OperationContext; done: () => void } {
    const controller = new AbortController();
    this.inflight.add(controller);
    const seconds = timeoutSeconds > 0 ? timeoutSeconds : def.defaultTimeoutSeconds;
    const deadline = Date.now() + seconds * 1000;
    const timer = setTimeout(
      () => controller.abort(new BaremetalError("timeout", `timed out after ${seconds} s; raise the resource's ${timeoutSetting} if the machine is slow`)),
      seconds * 1000 + 2000,
    );
    const ctx: OperationContext = {
      ...this.providerContext(),
      name,
      urn,
      signal: controller.signal,
      deadline,
      progress: (m) => log.progress(m),
      warn: (m) => log.warn(m),
    };
    return {
      ctx,
      done: () => {
        clearTimeout(timer);
        this.inflight.delete(controller);
      },
    };
  }

  /** Aborts every operation in flight. */
  cancelAll(reason: string): void {
    for (const c of this.inflight) c.abort(new BaremetalError("cancelled", reason));
  }

  /** Closes what the provider holds open (the inventory). */
  async close(): Promise<void> {
    await this.inventoryHandle?.opened.then((i) => i.close()).catch(() => undefined);
    this.inventoryHandle = undefined;
  }
}
