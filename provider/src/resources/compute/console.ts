/**
 * baremetal:compute:ConsoleAccess — console access to an allocated node for boot-time debugging.
 *
 * Create: allocation -> node (shared inventory) -> its BMC (with the provider's BMC credentials).
 * Reads the BMC's console endpoints (serial: SSH / IPMI SOL; graphical: KVM; the command shell)
 * and creates a BMC account for the lessee with a random user name (`c-<8 hex>`) and a strong
 * random password (a secret output), valid for `validHours`. Where the BMC supports it, the
 * expiry is also set on the account itself (AccountExpiration), so the BMC disables it on time
 * even if nobody runs Pulumi.
 *
 * Expiry: Read (refresh) treats an account past its expiry, or whose allocation has ended, as
 * gone: it removes the account from the BMC and reports the resource deleted, so the next `up`
 * creates fresh credentials. Without a refresh nothing notices the expiry: run
 * `pulumi up --refresh` to rotate. Delete removes the account (idempotent). A BMC without an
 * AccountService fails the create, saying console credentials are not available on it.
 */
import { randomBytes, randomInt } from "node:crypto";
import { BaremetalError, describeError, isBaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { OperationContext, ProviderContext, ResourceDefinition } from "../../core/resource";
import { consoleEndpoints, createConsoleAccount, deleteConsoleAccount, findConsoleAccount } from "../../drivers/redfish/consoles";
import { RedfishDriver } from "../../drivers/redfish/driver";
import type { RedfishClient } from "../../drivers/redfish/client";
import { allocatedNode, authorizeOnAllocatedNode } from "./allocation";
import { parseNodeId, rethrowAttributed, withDriver } from "./node";

const inputs = {
  allocationId: {
    type: "string",
    required: true,
    replaceOnChange: true,
    pattern: "^alloc-",
    description: "The allocation whose node the console is for (an Allocation's `allocationId`).",
    hint: "Pass an Allocation's allocationId output",
  },
  validHours: {
    type: "integer",
    default: 8,
    minimum: 1,
    maximum: 168,
    replaceOnChange: true,
    description: "How long the console credentials are valid, in hours (1 to 168, default 8).",
  },
  role: {
    type: "string",
    enum: ["ReadOnly", "Operator"],
    default: "Operator",
    replaceOnChange: true,
    description: "The BMC role of the console account: `Operator` (default) may use the consoles and power the machine; `ReadOnly` may only look.",
  },
} as const satisfies Fields;

const endpoint = {
  protocol: { type: "string", required: true, description: "The Redfish connect type: SSH, IPMI, Telnet, KVMIP, VNC or Oem." },
  url: { type: "string", required: true, description: "Where to connect, e.g. `ssh://10.0.0.5:22`, `ipmi-sol://10.0.0.5:623`, `https://10.0.0.5/`." },
  port: { type: "integer", description: "The port (the protocol's well-known port unless the BMC's NetworkProtocol says otherwise)." },
  maxConcurrentSessions: { type: "integer", description: "How many sessions the BMC serves at once, when it says." },
} as const satisfies Fields;

const endpoints = (what: string) =>
  ({
    type: "array",
    required: true,
    items: { type: "object", typeToken: "baremetal:compute:ConsoleEndpoint", description: "A console endpoint of the BMC.", properties: endpoint },
    description: what,
  }) as const;

const outputs = {
  nodeId: { type: "string", required: true, stable: true, description: "The node the console is for (its Node resource id)." },
  bmcHost: { type: "string", required: true, stable: true, description: "The BMC's host (name or address)." },
  username: { type: "string", required: true, stable: true, description: "The console account's BMC user name." },
  password: { type: "string", required: true, secret: true, stable: true, description: "The console account's password." },
  expiresAt: { type: "string", required: true, stable: true, description: "When the credentials expire (ISO 8601); refresh after it to get new ones." },
  serial: endpoints("Serial console endpoints (SSH, IPMI serial-over-LAN); empty when the BMC offers none."),
  graphical: endpoints("Graphical console endpoints (KVM over IP, VNC); empty when the BMC offers none."),
  shell: endpoints("The BMC's command shell endpoints (SSH, IPMI); empty when the BMC offers none."),
} as const satisfies Fields;

function redfishClient(driver: unknown, address: string): RedfishClient {
  if (driver instanceof RedfishDriver) return driver.client;
  throw new BaremetalError("validation", `console access needs a Redfish BMC; the BMC at ${address} is not one`);
}

/** `c-` and 8 hex digits: short enough for every BMC (iDRAC allows 16 characters). */
function newUsername(): string {
  return `c-${randomBytes(4).toString("hex")}`;
}

const UPPER = "ABCDEFGHJKLMNPQRSTUVWXYZ";
const LOWER = "abcdefghijkmnopqrstuvwxyz";
const DIGITS = "23456789";
const SYMBOLS = "-_";

/**
 * 20 characters (iDRAC's maximum), uniformly random (crypto.randomInt) over letters and digits
 * with at least one of each class and one of `-_` (many BMCs require a mix): about 110 bits.
 */
export function newPassword(length = 20): string {
  const all = UPPER + LOWER + DIGITS;
  const chars = [UPPER, LOWER, DIGITS, SYMBOLS].map((set) => set[randomInt(set.length)]);
  while (chars.length < length) chars.push(all[randomInt(all.length)]);
  for (let i = chars.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [chars[i], chars[j]] = [chars[j], chars[i]];
  }
  return chars.join("");
}

/** Removes the account; a BMC that cannot be reached is reported, not hidden. */
async function removeAccount(ctx: OperationContext, nodeId: string, username: string): Promise<boolean> {
  const { address } = parseNodeId(nodeId);
  return withDriver(ctx, { address }, (driver) => deleteConsoleAccount(redfishClient(driver, address), username).catch(rethrowAttributed));
}

export const consoleAccessResource: ResourceDefinition = {
  token: "baremetal:compute:ConsoleAccess",
  description:
    "Console access to an allocated node for boot-time debugging: the BMC's serial-console (SSH, IPMI SOL) and graphical-console (KVM) endpoints, and time-limited BMC credentials for the lessee, removed on destroy (and on refresh once expired or once the allocation ended).",
  inputs,
  outputs,
  defaultTimeoutSeconds: 120,

  async authorize(ctx: ProviderContext, _change, props, state) {
    // The people who may deploy the node may operate its console.
    await authorizeOnAllocatedNode(ctx, state?.allocationId ?? props.allocationId, ["baremetal:node:set_provision_state"]);
  },

  async create(ctx, props) {
    const inventory = await ctx.inventory();
    const node = await allocatedNode(inventory, props.allocationId as string);
    const { address, systemId } = parseNodeId(node.id);
    const validHours = (props.validHours as number | undefined) ?? 8;
    const role = (props.role as string | undefined) ?? "Operator";
    const username = newUsername();
    const password = newPassword();
    const expiresAt = new Date(Date.now() + validHours * 3600_000).toISOString().replace(/\.\d{3}Z$/, "Z");
    return withDriver(ctx, { address }, async (driver) => {
      const client = redfishClient(driver, address);
      ctx.progress("reading the BMC's console endpoints");
      const consoles = await consoleEndpoints(client, systemId).catch(rethrowAttributed);
      ctx.progress(`creating BMC account ${username} (${role}, valid ${validHours} h)`);
      await createConsoleAccount(client, { username, password, roleId: role, expiresAt }).catch((e) => {
        if (isBaremetalError(e) && e.code === "validation" && !e.property) {
          throw new BaremetalError("validation", e.message, { property: "allocationId", cause: e });
        }
        rethrowAttributed(e);
      });
      return {
        id: `${username}@${new URL(address).host}`,
        outputs: {
          ...props,
          validHours,
          role,
          nodeId: node.id,
          bmcHost: consoles.host,
          username,
          password,
          expiresAt,
          serial: consoles.serial,
          graphical: consoles.graphical,
          shell: consoles.shell,
        },
      };
    });
  },

  async read(ctx, id, stored, state) {
    // Credentials cannot be read back from a BMC: without state (import) there is nothing to adopt.
    if (!state || !stored) return undefined;
    const nodeId = state.nodeId as string;
    const username = state.username as string;
    const inventory = await ctx.inventory();
    const allocation = await inventory.getAllocation(stored.allocationId as string);
    const expired = Date.parse(state.expiresAt as string) <= Date.now();
    const leaseEnded = !allocation || allocation.state !== "active" || allocation.nodeId !== nodeId;
    if (expired || leaseEnded) {
      // Past its time: the account must not outlive it. Removed here, reported gone, so `up` makes new credentials.
      await removeAccount(ctx, nodeId, username).catch((e) => ctx.warn(`could not remove the ${expired ? "expired" : "orphaned"} console account ${username}: ${describeError(e)}`));
      return undefined;
    }
    const { address } = parseNodeId(nodeId);
    const exists = await withDriver(ctx, { address }, async (driver) => {
      try {
        return (await findConsoleAccount(redfishClient(driver, address), username)) !== undefined;
      } catch (e) {
        if (isBaremetalError(e) && e.code === "validation") return false;
        throw e;
      }
    }).catch(rethrowAttributed);
    if (!exists) return undefined;
    return { id, inputs: stored, outputs: { ...state, ...stored } };
  },

  async update(_ctx, _id, _olds, news, oldState) {
    // Every input replaces; nothing changes in place.
    return { ...oldState, ...news };
  },

  async delete(ctx, _id, _inputs, state) {
    const nodeId = state.nodeId as string | undefined;
    const username = state.username as string | undefined;
    if (!nodeId || !username) return;
    const removed = await removeAccount(ctx, nodeId, username);
    ctx.progress(removed ? `BMC account ${username} removed` : `BMC account ${username} was already gone`);
  },
};
