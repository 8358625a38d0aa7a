/**
 * baremetal:compute:Deployment — an image running on an allocated node.
 *
 * Deploy (virtual media, the default): insert the deploy image into the node's virtual CD, boot
 * it once, and wait until the installer has written the disk and powered the machine off (the
 * completion signal of agentless deploy images); then eject, boot from disk persistently and
 * power on. `http` has the firmware boot the image URL itself (UEFI HTTP boot); `pxe` boots
 * whatever the site's PXE service offers the node.
 *
 * Destroy = undeploy and clean: power off, eject, clear the boot override, erase the disks where
 * the BMC can (provider config `cleanEraseDisks`); the node goes back to
 * `available` and stays allocated (destroying the Allocation returns it to the pool). A node
 * whose deploy failed is recorded (`deploy failed` with `lastError`), and the next `up` tries the
 * deploy again. Every step is idempotent, and the node's operation lock keeps two runs apart.
 */
import { BaremetalError, describeError, isBaremetalError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import { type OperationContext, PartialCreateError, type Props, type ProviderContext, type ResourceDefinition } from "../../core/resource";
import type { BmcDriver } from "../../drivers/kinds/bmc";
import type { Inventory, LockHandle } from "../../inventory/types";
import { allocatedNode, authorizeOnAllocatedNode } from "./allocation";
import { parseNodeId, rethrowAttributed, sleep, withDriver } from "./node";

const inputs = {
  allocationId: {
    type: "string",
    required: true,
    replaceOnChange: true,
    pattern: "^alloc-",
    description: "The allocation whose node gets the image (an Allocation's `allocationId`).",
    hint: "Pass an Allocation's allocationId output",
  },
  imageUrl: {
    type: "string",
    required: true,
    replaceOnChange: true,
    description: "URL of the deploy image (an ISO the BMC can fetch over HTTP(S)).",
    validate: (v: string) => (/^https?:\/\/[^/\s]+\/\S*$/.test(v) ? undefined : `'${v}' is not an http(s) URL of an image`),
  },
  imageChecksum: {
    type: "string",
    replaceOnChange: true,
    pattern: "^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$",
    description: "Checksum of the image, `sha256:<hex>` or `sha512:<hex>`; recorded with the deployment and passed to the installer.",
    hint: "Give the checksum as sha256:<64 hex digits> or sha512:<128 hex digits>",
  },
  userData: { type: "string", secret: true, replaceOnChange: true, description: "User data (cloud-init) for the deployed system." },
  networkData: { type: "string", replaceOnChange: true, description: "Network data (JSON, as a config drive's network_data.json) for the deployed system." },
  bootInterface: {
    type: "string",
    enum: ["virtual-media", "http", "pxe"],
    default: "virtual-media",
    replaceOnChange: true,
    description:
      "How the installer boots: `virtual-media` inserts `imageUrl` into the BMC's virtual CD; `http` has the firmware boot `imageUrl` itself (UEFI HTTP boot, Redfish Boot.HttpBootUri), no PXE service needed; `pxe` network-boots whatever the provisioning network's PXE service offers the node (that service is the site's; `imageUrl` is only recorded).",
  },
} as const satisfies Fields;

const outputs = {
  nodeId: { type: "string", required: true, stable: true, description: "The node the image runs on (its Node resource id)." },
  provisionState: { type: "string", required: true, description: "`active` once deployed; `deploy failed` with `lastError` otherwise." },
  lastError: { type: "string", description: "Why the last deploy failed." },
  deployedAt: { type: "string", description: "When the deployment became active (ISO 8601)." },
} as const satisfies Fields;

async function withNodeLock<T>(ctx: OperationContext, inventory: Inventory, nodeId: string, operation: string, work: () => Promise<T>): Promise<T> {
  const leaseSeconds = Math.max(60, Math.ceil((ctx.deadline - Date.now()) / 1000) + 60);
  let lock: LockHandle;
  try {
    lock = await inventory.acquireLock(nodeId, ctx.urn, operation, leaseSeconds);
  } catch (e) {
    if (isBaremetalError(e) && e.code === "conflict") throw new BaremetalError("conflict", `node ${nodeId} is busy: ${e.message}; try again when that operation ends (or its lease runs out)`);
    throw e;
  }
  try {
    return await work();
  } finally {
    await lock.release().catch(() => undefined);
  }
}

/**
 * Waits for the machine to reach `state`, reporting progress; the deadline bounds it. The poll
 * interval grows to `maxPollMs`: keep it short where the state may be brief (an installer that
 * boots, writes a small image and powers off again within seconds must not be missed).
 */
async function waitForPower(ctx: OperationContext, driver: BmcDriver, systemId: string, state: "on" | "off", what: string, maxPollMs = 5000): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const facts = await driver.facts(systemId);
    if (facts.powerState === state) return;
    if (Date.now() > ctx.deadline) {
      throw new BaremetalError("timeout", `${what}: the machine still reports power '${facts.powerState}'; raise the resource's customTimeouts if the image is large or the machine slow`);
    }
    ctx.progress(`${what}, attempt ${attempt} (power ${facts.powerState})`);
    await sleep(Math.min(1000 * attempt, maxPollMs), ctx.signal);
  }
}

async function deploy(ctx: OperationContext, driver: BmcDriver, systemId: string, props: Props): Promise<void> {
  const how = (props.bootInterface as string | undefined) ?? "virtual-media";
  const viaCd = how === "virtual-media";
  if (viaCd) {
    ctx.progress("inserting the deploy image into the virtual CD");
    await driver.insertVirtualMedia(systemId, props.imageUrl as string);
  }
  ctx.progress(`booting the installer once from ${viaCd ? "the virtual CD" : how === "http" ? `${props.imageUrl as string} (UEFI HTTP boot)` : "the network (PXE)"}`);
  if (how === "http") await driver.setBoot(systemId, "http", "uefi", true, props.imageUrl as string);
  else await driver.setBoot(systemId, viaCd ? "cd" : "pxe", undefined, true);
  await driver.powerCycle(systemId);
  await waitForPower(ctx, driver, systemId, "on", "waiting for the installer to boot", 1000);
  await waitForPower(ctx, driver, systemId, "off", "waiting for the installer to write the disk and power off");
  if (viaCd) await driver.ejectVirtualMedia(systemId);
  ctx.progress("booting the deployed system from disk");
  await driver.setBoot(systemId, "disk");
  await driver.setPower(systemId, "on");
  await waitForPower(ctx, driver, systemId, "on", "waiting for the deployed system to power on");
}

/** Undeploy and clean: the node is left off, empty-handed and ready for its next deployment. */
async function clean(ctx: OperationContext, driver: BmcDriver, systemId: string): Promise<void> {
  ctx.progress("cleaning: powering off");
  await driver.setPower(systemId, "off");
  await waitForPower(ctx, driver, systemId, "off", "waiting for power off");
  await driver.ejectVirtualMedia(systemId).catch((e) => {
    // A machine without virtual media has nothing to eject.
    if (!(isBaremetalError(e) && e.code === "validation")) throw e;
  });
  // Not essential once the media is out and the machine off: some BMCs (sushy-tools among them)
  // cannot disable an override. Say so, and go on.
  await driver.setBoot(systemId, "none").catch((e) => ctx.warn(`cleaning could not clear the boot override: ${describeError(e)}`));
  await eraseDisks(ctx, driver, systemId);
}

/** Erases the disks as the provider's `cleanEraseDisks` says; the machine is off. */
async function eraseDisks(ctx: OperationContext, driver: BmcDriver, systemId: string): Promise<void> {
  const mode = ctx.config.cleanEraseDisks;
  if (mode === "never") return;
  ctx.progress("cleaning: erasing the disks");
  const { erased, unsupported } = await driver.eraseDisks(systemId);
  if (erased.length === 0 && unsupported.length === 0) {
    const why = "the BMC shows no drives it could erase (no Redfish Storage)";
    if (mode === "always") throw new BaremetalError("validation", `cleaning could not erase the disks: ${why}; erase them another way, or set the provider's cleanEraseDisks to auto`, { property: "cleanEraseDisks" });
    ctx.warn(`cleaning left the disks as they are: ${why}`);
    return;
  }
  if (unsupported.length) {
    const why = `the BMC cannot erase drive(s) ${unsupported.join(", ")} (no Drive.SecureErase)`;
    if (mode === "always") throw new BaremetalError("validation", `cleaning could not erase the disks: ${why}; erase them another way, or set the provider's cleanEraseDisks to auto`, { property: "cleanEraseDisks" });
    ctx.warn(`cleaning left some disks as they are: ${why}`);
  }
}

export const deploymentResource: ResourceDefinition = {
  token: "baremetal:compute:Deployment",
  description:
    "An image running on an allocated node, deployed over Redfish virtual media (or PXE). Destroying it undeploys and cleans the node, which stays allocated; it never un-enrols it.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 1800,

  async authorize(ctx: ProviderContext, change, props, state) {
    const operations = ["baremetal:node:set_provision_state", ...(change !== "delete" ? ["baremetal:node:update_instance_info"] : [])];
    await authorizeOnAllocatedNode(ctx, state?.allocationId ?? props.allocationId, operations);
  },

  async create(ctx, props) {
    const inventory = await ctx.inventory();
    const node = await allocatedNode(inventory, props.allocationId as string);
    const { address, systemId } = parseNodeId(node.id);
    return withNodeLock(ctx, inventory, node.id, "deploy", async () => {
      await inventory.setProvisionState(node.id, "deploying");
      try {
        await withDriver(ctx, { address }, (driver) => deploy(ctx, driver, systemId, props).catch(rethrowAttributed));
      } catch (e) {
        const why = describeError(e);
        await inventory.setProvisionState(node.id, "deploy failed", why);
        // Recorded with its error: the next `up` deploys again (update), or replaces as declared.
        throw new PartialCreateError(node.id, { ...props, nodeId: node.id, provisionState: "deploy failed", lastError: why }, [why]);
      }
      await inventory.setProvisionState(node.id, "active");
      return { id: node.id, outputs: { ...props, nodeId: node.id, provisionState: "active", deployedAt: new Date().toISOString() } };
    });
  },

  async read(ctx, id, stored, state) {
    const inventory = await ctx.inventory();
    const node = await inventory.getNode(id);
    if (!node || !node.allocationId) return undefined;
    const declared = stored ?? { allocationId: node.allocationId, imageUrl: "" };
    if (declared.allocationId !== node.allocationId) return undefined;
    const deployed = ["active", "deploy failed", "deploying"].includes(node.provisionState);
    if (!deployed) return undefined; // cleaned behind our back: the deployment is gone
    return {
      id,
      inputs: declared,
      outputs: { ...state, ...declared, nodeId: id, provisionState: node.provisionState, lastError: node.lastError },
    };
  },

  async update(ctx, id, _olds, news, oldState) {
    // Nothing changes in place (every input replaces); an update is the retry of a failed deploy.
    if (oldState.provisionState === "active") return { ...oldState, ...news };
    const created = await deploymentResource.create(ctx, news);
    return { ...created.outputs, nodeId: id };
  },

  async delete(ctx, id) {
    const inventory = await ctx.inventory();
    const node = await inventory.getNode(id);
    if (!node) return; // un-enrolled: nothing left to clean
    const { address, systemId } = parseNodeId(id);
    await withNodeLock(ctx, inventory, id, "clean", async () => {
      await inventory.setProvisionState(id, "cleaning");
      try {
        await withDriver(ctx, { address }, (driver) => clean(ctx, driver, systemId).catch(rethrowAttributed));
      } catch (e) {
        await inventory.setProvisionState(id, "clean failed", describeError(e));
        throw e;
      }
      await inventory.setProvisionState(id, "available");
    });
  },
};
