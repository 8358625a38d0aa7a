/**
 * baremetal:compute:Node — a machine enrolled by its BMC.
 *
 * The resource is the operator's record of the machine: create discovers it and applies the
 * declared power state and boot device; refresh reads the machine back (a power change made by
 * hand shows up as drift); delete releases our management and never touches the machine.
 */
import { readFileSync } from "node:fs";
import { BaremetalError, describeError, isBaremetalError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import { type OperationContext, PartialCreateError, type Props, type ResourceDefinition } from "../../core/resource";
import { authorize } from "../../core/auth";
import { bmcDriverFor } from "../../drivers";
import { AVAILABLE, ENROLL, type NodeInput, type NodeRecord } from "../../inventory/types";
import type { BmcDriver, BootDevice, BootMode, SystemFacts } from "../../drivers/kinds/bmc";

const BOOT_DEVICES = ["none", "pxe", "disk", "cd", "bios", "http", "usb"] as const;

const inputs = {
  bmc: {
    type: "object",
    typeToken: "baremetal:compute:Bmc",
    required: true,
    description: "How to reach the machine's BMC.",
    properties: {
      address: {
        type: "string",
        required: true,
        replaceOnChange: true,
        description: "Base URL of the BMC, e.g. `https://10.0.0.5` or `https://bmc-r12.example.net:8443` (Redfish).",
        hint: "Give the BMC's base URL with its scheme, e.g. https://10.0.0.5:443 (the /redfish/v1 path is added for you)",
        validate: (v: string) => checkAddress(v),
      },
      systemId: {
        type: "string",
        replaceOnChange: true,
        description:
          "Which system of the BMC this node is (the last segment of its Redfish URI). Needed only when the BMC manages several systems.",
      },
      username: { type: "string", description: "BMC user name; defaults to the provider's `bmcUsername`." },
      password: { type: "string", secret: true, description: "BMC password; defaults to the provider's `bmcPassword`." },
      verifyTls: {
        type: "boolean",
        description: "Verify the BMC's TLS certificate; defaults to the provider's `bmcVerifyTls` (true).",
      },
      caBundle: {
        type: "string",
        description: "PEM certificates (text or a file path) to trust for this BMC, e.g. its self-signed certificate.",
      },
    },
  },
  powerState: {
    type: "string",
    enum: ["on", "off"],
    description: "Declared power state. Left as it is when unset.",
  },
  bootDevice: {
    type: "string",
    enum: BOOT_DEVICES,
    description: "Declared persistent boot device (`none` clears any override). Left as it is when unset.",
  },
  bootMode: {
    type: "string",
    enum: ["uefi", "legacy"],
    description: "Declared boot mode for the boot device override. Left as it is when unset.",
  },
  provide: {
    type: "boolean",
    default: true,
    description:
      "Offer the node to allocations (Ironic's `provide`: state `available`). false keeps it `manageable`: enrolled and inspected, but out of the pool (refused while an allocation holds it).",
  },
  maintenance: {
    type: "boolean",
    default: false,
    description: "Maintenance mode (Ironic's): a node in maintenance is never allocated; what runs on it is left alone.",
  },
  maintenanceReason: { type: "string", description: "Why the node is in maintenance (kept only while it is)." },
  owner: { type: "string", description: "Project that owns the node (the operator side of multi-tenancy)." },
  lessee: { type: "string", description: "Project the node is leased to." },
  resourceClass: { type: "string", description: "Resource class used to match allocations, e.g. `baremetal-large`." },
  traits: {
    type: "array",
    uniqueItems: true,
    items: {
      type: "string",
      pattern: "^[A-Z][A-Z0-9_]*$",
      description: "A trait name.",
      hint: "Traits are upper-case names such as HW_CPU_X86_AVX2 or CUSTOM_GPU",
    },
    description: "Traits of the node (standard os-traits names or `CUSTOM_*`), used to match allocations.",
  },
  properties: {
    type: "map",
    values: { type: "string", description: "A value." },
    description: "Free-form properties of the node.",
  },
} as const satisfies Fields;

const outputs = {
  systemId: { type: "string", stable: true, required: true, description: "The BMC's id of the system." },
  systemUri: { type: "string", stable: true, required: true, description: "Absolute Redfish URI of the system (also the resource id)." },
  manufacturer: { type: "string", stable: true, description: "Manufacturer reported by the BMC." },
  model: { type: "string", stable: true, description: "Model reported by the BMC." },
  serialNumber: { type: "string", stable: true, description: "Serial number reported by the BMC." },
  uuid: { type: "string", stable: true, description: "System UUID reported by the BMC." },
  cpuCount: { type: "integer", stable: true, description: "Number of CPUs (sockets) reported by the BMC." },
  cpuModel: { type: "string", stable: true, description: "CPU model reported by the BMC." },
  memoryGiB: { type: "number", stable: true, description: "Installed memory in GiB." },
  macAddresses: {
    type: "array",
    required: true,
    stable: true,
    items: { type: "string", description: "A MAC address." },
    description: "MAC addresses of the system's network interfaces (lower case, sorted).",
  },
  currentPowerState: {
    type: "string",
    required: true,
    description: "The power state read from the BMC: on, off, powering-on, powering-off, paused or unknown.",
  },
  currentBootDevice: { type: "string", required: true, description: "The boot override read from the BMC (`none` when disabled)." },
  currentBootMode: { type: "string", description: "The boot mode read from the BMC (uefi or legacy)." },
  provisionState: {
    type: "string",
    required: true,
    description: "Provision state in the shared inventory, as Ironic's: enroll, manageable (provide: false), available, deploying, active, deploy failed, cleaning, clean failed.",
  },
  lastError: { type: "string", description: "The last error recorded for the node in the inventory." },
  allocationId: { type: "string", description: "The allocation that holds the node, if any." },
} as const satisfies Fields;

export interface BmcInputs {
  address: string;
  systemId?: string;
  username?: string;
  password?: string;
  verifyTls?: boolean;
  caBundle?: string;
}

function checkAddress(v: string): string | undefined {
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    return `'${v}' is not a URL`;
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return `'${v}' must start with https:// (or http:// for a lab BMC)`;
  if (!url.hostname) return `'${v}' has no host`;
  if (url.username || url.password) return "credentials do not belong in the address; use bmc.username and bmc.password";
  if (!/^\/?(redfish\/v1\/?)?$/.test(url.pathname) || url.search || url.hash) return `'${v}' must be the BMC's base URL, without a path`;
  return undefined;
}

/** Canonical base URL of a BMC: scheme, host and port only. */
function baseUrl(address: string): string {
  return new URL(address).origin;
}

function readCaBundle(value: string | undefined, property: string): string | undefined {
  if (!value) return undefined;
  if (value.includes("-----BEGIN")) return value;
  try {
    return readFileSync(value, "utf8");
  } catch (e) {
    throw validationError(property, `cannot read the CA bundle file '${value}': ${(e as Error).message}; give PEM text or a readable file path`);
  }
}

/** What talking to a BMC needs of an operation's context (the service's API calls give just that). */
export type BmcContext = Pick<OperationContext, "config" | "progress"> & { signal?: AbortSignal };

function connect(ctx: BmcContext, bmc: BmcInputs, onRequest?: NodeRequestCounter): BmcDriver {
  const cfg = ctx.config;
  return bmcDriverFor({
    address: baseUrl(bmc.address),
    username: bmc.username ?? cfg.bmcUsername,
    password: bmc.password ?? cfg.bmcPassword,
    verifyTls: bmc.verifyTls ?? cfg.bmcVerifyTls,
    caBundle: readCaBundle(bmc.caBundle, "bmc.caBundle") ?? readCaBundle(cfg.bmcCaBundle, "bmcCaBundle"),
    requestTimeoutMs: cfg.bmcRequestTimeoutSeconds * 1000,
    maxConcurrency: cfg.bmcMaxConcurrency,
    globalMaxConcurrency: cfg.bmcGlobalMaxConcurrency,
    signal: ctx.signal,
    onProgress: (m) => ctx.progress(m),
    onRequest,
  });
}

type NodeRequestCounter = (e: { method: string; path: string; status: number | undefined; ms: number }) => void;

/** Puts the property the user can fix on BMC errors that lack one. */
function attribute(e: unknown): unknown {
  if (!isBaremetalError(e) || e.property) return e;
  const property =
    e.code === "auth" ? "bmc.password" : e.code === "tls" ? "bmc.caBundle" : e.code === "transient" || e.code === "timeout" ? "bmc.address" : undefined;
  if (!property) return e;
  const fix =
    e.code === "auth"
      ? " (check bmc.username and bmc.password, or the provider's bmcUsername/bmcPassword)"
      : e.code === "tls"
        ? " (give the BMC's certificate in bmc.caBundle or the provider's bmcCaBundle; set verifyTls false only for a lab BMC)"
        : /whether it acted is unknown/.test(e.message)
          ? " (the BMC was reachable but its answer was lost; run again: every step checks the machine's state first)"
          : " (check bmc.address and that the BMC is reachable)";
  return new BaremetalError(e.code, e.message + fix, {
    property,
    httpStatus: e.httpStatus,
    messageId: e.messageId,
    details: e.details,
    retryAfterSeconds: e.retryAfterSeconds,
    cause: e,
  });
}

/** The node's record in the shared inventory: what other stacks allocate from. */
function nodeRecordOf(id: string, name: string, props: Props): NodeInput {
  const maintenance = props.maintenance === true;
  return {
    id,
    name,
    owner: props.owner as string | undefined,
    lessee: props.lessee as string | undefined,
    resourceClass: props.resourceClass as string | undefined,
    traits: (props.traits as string[] | undefined) ?? [],
    properties: (props.properties as Record<string, string> | undefined) ?? {},
    maintenance,
    ...(maintenance && props.maintenanceReason !== undefined ? { maintenanceReason: props.maintenanceReason as string } : {}),
  };
}

const MANAGEABLE = "manageable";

/**
 * Registers (or updates) the node. `provide` moves an idle node between `available` (in the
 * pool) and `manageable` (out of it); a node in use keeps its state, and taking one out of the
 * pool while an allocation holds it is refused.
 */
async function register(ctx: OperationContext, id: string, props: Props): Promise<Props> {
  const inventory = await ctx.inventory();
  const existing = await inventory.getNode(id);
  const target = props.provide === false ? MANAGEABLE : AVAILABLE;
  let provisionState: string | undefined = target;
  if (existing && ![AVAILABLE, MANAGEABLE, ENROLL].includes(existing.provisionState)) {
    if (target === MANAGEABLE) {
      throw new BaremetalError("conflict", `the node is ${existing.provisionState}${existing.allocationId ? ` and held by allocation ${existing.allocationId}` : ""}; it can leave the pool (provide: false) once that allocation is destroyed`, { property: "provide" });
    }
    provisionState = undefined; // in use: its state is the deployment's business
  } else if (existing?.allocationId && target === MANAGEABLE) {
    throw new BaremetalError("conflict", `the node is held by allocation ${existing.allocationId}; it can leave the pool (provide: false) once that allocation is destroyed`, { property: "provide" });
  }
  // A node under an active lease keeps the lease's lessee (lease.ts): the declared one applies
  // once the lease ends. (Writing the declared one flipped the node back and forth between the
  // operator's runs and the lease's.)
  const leased = existing ? (await inventory.listLeases({ nodeId: id, state: "active" }))[0] : undefined;
  if (leased && leased.lessee !== props.lessee) {
    ctx.warn(`the node is leased to ${leased.lessee} until ${leased.endTime} (lease ${leased.id}): its lessee stays ${leased.lessee} until then; the declared lessee (${str(props.lessee) ?? "none"}) applies after`);
  }
  const record = await inventory.upsertNode({ ...nodeRecordOf(id, existing?.name ?? ctx.name, props), ...(leased ? { lessee: leased.lessee } : {}), provisionState });
  return inventoryOutputs(record);
}

/**
 * The declared pool fields as the inventory has them, always explicit (an import, or a state
 * written before these fields existed, then diffs empty against a program's defaults).
 */
function inventoryInputs(record: NodeRecord | undefined, declared: Props): Props {
  const out: Props = {
    provide: record ? record.provisionState !== MANAGEABLE : declared.provide !== false,
    maintenance: record ? record.maintenance : declared.maintenance === true,
  };
  if (record?.maintenance) out.maintenanceReason = record.maintenanceReason;
  return out;
}

function inventoryOutputs(record: NodeRecord | undefined): Props {
  return { provisionState: record?.provisionState ?? ENROLL, lastError: record?.lastError, allocationId: record?.allocationId };
}

const str = (v: unknown) => (typeof v === "string" ? v : undefined);

/** One driver (one BMC session) per operation, always closed. */
export async function withDriver<T>(ctx: BmcContext, bmc: BmcInputs, use: (driver: BmcDriver) => Promise<T>): Promise<T> {
  const driver = connect(ctx, bmc, nodeRequestHooks.onRequest);
  try {
    return await use(driver);
  } finally {
    await driver.close().catch(() => undefined);
  }
}

export const rethrowAttributed = (e: unknown): never => {
  throw attribute(e);
};

async function resolveSystemId(driver: BmcDriver, bmc: BmcInputs): Promise<string> {
  if (bmc.systemId) return bmc.systemId;
  const systems = await driver.listSystems();
  if (systems.length === 1) return systems[0];
  if (systems.length === 0) throw validationError("bmc.address", `the BMC at ${bmc.address} manages no systems`);
  throw validationError("bmc.systemId", `the BMC at ${bmc.address} manages ${systems.length} systems (${systems.join(", ")}); set bmc.systemId to one of them`);
}

async function factsOrExplain(driver: BmcDriver, bmc: BmcInputs, systemId: string): Promise<SystemFacts> {
  try {
    return await driver.facts(systemId);
  } catch (e) {
    if (isBaremetalError(e) && e.code === "not-found" && bmc.systemId) {
      const known = await driver.listSystems().catch(() => [] as string[]);
      throw validationError("bmc.systemId", `the BMC at ${bmc.address} has no system '${bmc.systemId}'${known.length ? `; it has: ${known.join(", ")}` : ""}`);
    }
    throw e;
  }
}

export const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), reject(new BaremetalError("cancelled", "operation cancelled"))), { once: true });
  });

/** Applies the declared power state and boot settings, waiting until the BMC reports them. */
async function converge(ctx: OperationContext, driver: BmcDriver, systemId: string, declared: Props, facts: SystemFacts): Promise<SystemFacts> {
  const bootDevice = declared.bootDevice as BootDevice | undefined;
  const bootMode = declared.bootMode as BootMode | undefined;
  // Boot settings first: a BMC may refuse boot changes while the machine is in POST.
  if ((bootDevice && (bootDevice !== facts.bootDevice || (bootDevice !== "none" && !facts.bootPersistent))) || (bootMode && bootMode !== facts.bootMode)) {
    const offered = facts.allowedBootDevices;
    if (bootDevice && bootDevice !== "none" && offered.length && !offered.includes(bootDevice)) {
      throw validationError("bootDevice", `the BMC does not offer boot device '${bootDevice}' for system ${systemId}; it offers: ${offered.join(", ")}`);
    }
    ctx.progress(`setting boot device ${bootDevice ?? facts.bootDevice}${bootMode ? ` (${bootMode})` : ""}`);
    await driver.setBoot(systemId, bootDevice ?? (facts.bootDevice as BootDevice), bootMode);
  }
  const power = declared.powerState as "on" | "off" | undefined;
  if (power) {
    const settled = (s: string) => s === power;
    if (!settled(facts.powerState)) {
      ctx.progress(`powering ${power}`);
      await driver.setPower(systemId, power);
      for (let attempt = 1; ; attempt++) {
        facts = await driver.facts(systemId);
        if (settled(facts.powerState)) break;
        if (Date.now() > ctx.deadline) {
          throw new BaremetalError("timeout", `the BMC still reports power '${facts.powerState}' after waiting for '${power}'; raise the resource's customTimeouts if the machine is slow`, {
            property: "powerState",
          });
        }
        ctx.progress(`waiting for power ${power}, attempt ${attempt} (now ${facts.powerState})`);
        await sleep(Math.min(1000 * attempt, 5000), ctx.signal);
      }
    }
  }
  return bootDevice || bootMode ? driver.facts(systemId) : facts;
}

function stateOf(address: string, facts: SystemFacts): Props {
  return {
    systemId: facts.systemId,
    systemUri: new URL(facts.systemUri, baseUrl(address)).href,
    manufacturer: facts.manufacturer,
    model: facts.model,
    serialNumber: facts.serialNumber,
    uuid: facts.uuid,
    cpuCount: facts.cpuCount,
    cpuModel: facts.cpuModel,
    memoryGiB: facts.memoryGiB,
    macAddresses: facts.macAddresses,
    currentPowerState: facts.powerState,
    currentBootDevice: facts.bootDevice,
    currentBootMode: facts.bootMode,
  };
}

/** The power state as a declared value: a transition counts as its destination. */
function declaredPower(facts: SystemFacts): string {
  return facts.powerState === "powering-on" ? "on" : facts.powerState === "powering-off" ? "off" : facts.powerState;
}

/** Declared inputs as the machine really is: what refresh reports as drift. */
function observedInputs(declared: Props, facts: SystemFacts): Props {
  const out: Props = { ...declared };
  if (declared.powerState !== undefined) out.powerState = declaredPower(facts);
  if (declared.bootDevice !== undefined) out.bootDevice = facts.bootDevice !== "none" && !facts.bootPersistent ? `${facts.bootDevice} (once)` : facts.bootDevice;
  if (declared.bootMode !== undefined && facts.bootMode !== undefined) out.bootMode = facts.bootMode;
  return out;
}

/**
 * Parses a node id: the system's absolute Redfish URI (`https://bmc/redfish/v1/Systems/1`), or for
 * `pulumi import` also `<address>#<systemId>`.
 */
export function parseNodeId(id: string): { address: string; systemId: string } {
  const hash = id.indexOf("#");
  if (hash > 0) return { address: baseUrl(id.slice(0, hash)), systemId: id.slice(hash + 1) };
  let url: URL;
  try {
    url = new URL(id);
  } catch {
    throw validationError("id", `'${id}' is not a node id; use the system's Redfish URI (https://bmc/redfish/v1/Systems/<id>) or <bmc address>#<system id>`);
  }
  const m = /^\/redfish\/v1\/Systems\/([^/]+)\/?$/.exec(url.pathname);
  if (!m) throw validationError("id", `'${id}' is not a Redfish system URI; expected https://bmc/redfish/v1/Systems/<id> or <bmc address>#<system id>`);
  return { address: url.origin, systemId: decodeURIComponent(m[1]) };
}

/** Request counter hook for benchmarks and tests (the closing note counts requests per create). */
export const nodeRequestHooks: { onRequest?: NodeRequestCounter } = {};

export const nodeResource: ResourceDefinition = {
  token: "baremetal:compute:Node",
  description:
    "A bare-metal machine enrolled by its BMC (Redfish). Create discovers the system's facts and applies the declared power state and boot device; refresh reports changes made behind Pulumi's back; delete releases management and never touches the machine.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 600,

  normalize(props) {
    const bmc = props.bmc as BmcInputs | undefined;
    if (!bmc || typeof bmc.address !== "string") return props;
    return { ...props, bmc: { ...bmc, address: baseUrl(bmc.address) } };
  },

  async create(ctx, props) {
    const bmc = props.bmc as BmcInputs;
    return withDriver(ctx, bmc, async (driver) => {
      const systemId = await resolveSystemId(driver, bmc).catch(rethrowAttributed);
      ctx.progress(`discovering system ${systemId}`);
      let facts = await factsOrExplain(driver, bmc, systemId).catch(rethrowAttributed);
      const id = new URL(facts.systemUri, baseUrl(bmc.address)).href;
      let registered: Props;
      try {
        facts = await converge(ctx, driver, systemId, props, facts);
        registered = await register(ctx, id, props);
      } catch (e) {
        // Found but not configured or not registered: keep the node in state so the next run converges it.
        throw new PartialCreateError(id, { ...props, ...stateOf(bmc.address, facts), ...inventoryOutputs(undefined) }, [describeError(attribute(e))]);
      }
      return { id, outputs: { ...props, ...stateOf(bmc.address, facts), ...registered } };
    });
  },

  async read(ctx, id, stored) {
    const { address, systemId } = parseNodeId(id);
    const declared: Props = stored ?? { bmc: { address, systemId } };
    const bmc = { ...(declared.bmc as BmcInputs), address: (declared.bmc as BmcInputs | undefined)?.address ?? address };
    return withDriver(ctx, bmc, async (driver) => {
      let facts: SystemFacts;
      try {
        facts = await driver.facts(systemId);
      } catch (e) {
        if (isBaremetalError(e) && e.code === "not-found") return undefined;
        throw attribute(e);
      }
      // An import declares the power state as it is, so that a program declaring it previews empty.
      let inputs = stored ? observedInputs(declared, facts) : { ...declared, powerState: declaredPower(facts) };
      const canonicalId = new URL(facts.systemUri, address).href;
      const record = await (await ctx.inventory()).getNode(canonicalId);
      // Maintenance and the pool as the shared inventory has them: a change made elsewhere is drift.
      inputs = { ...inputs, ...inventoryInputs(record, inputs) };
      if (inputs.maintenanceReason === undefined) delete inputs.maintenanceReason;
      return { id: canonicalId, inputs, outputs: { ...inputs, ...stateOf(address, facts), ...inventoryOutputs(record) } };
    });
  },

  async update(ctx, id, _olds, news) {
    const bmc = news.bmc as BmcInputs;
    const { systemId } = parseNodeId(id);
    return withDriver(ctx, bmc, async (driver) => {
      const observed = await driver.facts(systemId).catch(rethrowAttributed);
      // Converge against what the machine reports, not against the old state: a node left
      // half-configured by an earlier run (or changed by hand) is put right either way.
      const facts = await converge(ctx, driver, systemId, news, observed).catch(rethrowAttributed);
      return { ...news, ...stateOf(bmc.address, facts), ...(await register(ctx, id, news)) };
    });
  },

  async delete(ctx, id) {
    // Deliberately no BMC call: un-enrolling releases our management; the machine keeps running as it is.
    const inventory = await ctx.inventory();
    const record = await inventory.getNode(id);
    if (record?.allocationId) {
      throw new BaremetalError("conflict", `the node is held by allocation ${record.allocationId}; destroy that allocation (and its deployment) first`);
    }
    if (record) await inventory.removeNode(id);
    ctx.progress("released from management; the machine is left as it is");
  },

  authorize(ctx, change, inputs, state) {
    const owner = str((change === "create" ? inputs : (state ?? inputs)).owner);
    const lessee = str((change === "create" ? inputs : (state ?? inputs)).lessee);
    const operation = change === "create" ? "baremetal:node:create" : change === "delete" ? "baremetal:node:delete" : "baremetal:node:update";
    authorize(ctx.policy, ctx.caller, operation, { "node.owner": owner, "node.lessee": lessee });
  },
};
