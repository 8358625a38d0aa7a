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
 *
 * Volumes (`volumes`): the iSCSI connection of each VolumeAttachment and, for an encrypted volume,
 * its LUKS key go to the node on its config drive (`vendor_data2.json`, namespace `baremetal`),
 * never to the storage host. The key material is fetched from the key manager at deploy time AS
 * THE CALLER's project, so a tenant can only deliver keys its project may read; a refused key fails
 * the deploy before the node is touched. Changing `volumes` on an active deployment republishes
 * the config drive (a new image, the old one deleted from the image store) and swaps the virtual
 * media in place: the installed system is not redeployed.
 */
import { checkFailureOf } from "../../core/validate";
import { createHash } from "node:crypto";
import { BaremetalError, describeError, isBaremetalError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import { deepEqual, isUnknown } from "../../core/values";
import { type OperationContext, PartialCreateError, type Props, type ProviderContext, type ResourceDefinition } from "../../core/resource";
import { imageStore } from "../../drivers/image-store";
import type { BmcDriver } from "../../drivers/kinds/bmc";
import type { Inventory, LockHandle } from "../../inventory/types";
import { networkDataFor } from "../network/network-data";
import { syncNodePorts } from "../network/wiring";
import { allocatedNode, authorizeOnAllocatedNode } from "./allocation";
import { buildConfigDrive, type ConfigDriveInput, configDriveFiles } from "./config-drive";
import { parseNodeId, rethrowAttributed, sleep, withDriver } from "./node";
import { keyManagerName, withKeyManager } from "../keys/encryption-key";
import { requireOwnVolume } from "../storage/volume";
import { VOLUME_CONNECTION_TYPE, volumeConnectionFields } from "../storage/volume-attachment";

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
  userData: {
    type: "string",
    secret: true,
    replaceOnChange: true,
    description: "User data for the deployed system (e.g. a `#cloud-config` document), delivered on its config drive.",
  },
  networkData: {
    type: "string",
    replaceOnChange: true,
    description:
      "Network data for the deployed system: the JSON of an OpenStack `network_data.json` (links, networks, services), delivered on its config drive. Default, when the deployment has a config drive: derived from the node's NetworkAttachments (a link per port by MAC, VLAN links for tagged trunk networks, the assigned static addresses with their netmasks and default routes).",
  },
  metaData: {
    type: "map",
    values: { type: "string", description: "A value." },
    replaceOnChange: true,
    description: "More `meta_data.json` keys for the config drive (e.g. `availability_zone`).",
  },
  hostname: { type: "string", replaceOnChange: true, description: "The deployed system's host name (config drive `meta_data.json` hostname)." },
  sshPublicKeys: {
    type: "map",
    values: { type: "string", description: "An OpenSSH public key." },
    replaceOnChange: true,
    description: "SSH public keys by name, for the deployed system's default user (config drive `public_keys`).",
  },
  volumes: {
    type: "array",
    secret: true,
    description:
      "Volumes the deployed system logs in to, delivered on its config drive (`openstack/*/vendor_data2.json`, as `{\"baremetal\": {\"volumes\": [{volumeId, portal, targetIqn, lun, initiatorIqn, chapUser, chapSecret, luks: {keyId, keyManager, key}}]}}`, `key` being the key material in base64). Each key is fetched from its key manager at deploy time as the caller's project: a key the project may not read fails the deploy before the node is touched. Secret as a whole (CHAP secrets). A change republishes the config drive and swaps the virtual media in place (no redeploy); the running system sees the new drive when it reads it again (e.g. at its next boot).",
    items: {
      type: "object",
      typeToken: "baremetal:compute:DeploymentVolume",
      description: "A volume for the deployed system: where to log in, and the key that unlocks it.",
      properties: {
        connection: {
          type: "object",
          typeToken: VOLUME_CONNECTION_TYPE,
          required: true,
          description: "The VolumeAttachment's `connection` (it must be exported to this deployment's node, and be a volume of the caller's project).",
          properties: volumeConnectionFields,
        },
        keyId: {
          type: "string",
          minLength: 1,
          description:
            "The EncryptionKey (its `keyId`) that unlocks the volume's LUKS2 keyslot; leave out for an unencrypted volume. After a KeyRotationPolicy rotates the volume's key, point this at the new key (best: the policy's `currentKeys[volumeId]`, which follows every rotation): the next `up` republishes the config drive with the new key and swaps it in place (no redeploy).",
        },
        keyManager: { type: "string", minLength: 1, description: "The key manager holding `keyId` (default: the only one)." },
      },
    },
  },
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
  configDriveUrl: {
    type: "string",
    secret: true,
    description: "Where the BMC fetches the node's config drive (OpenStack `config-2` ISO in the image store); attached while deployed. Secret: whoever has it reads the user data.",
  },
} as const satisfies Fields;

/** Runs `work` holding the node's operation lock (a lease as long as the operation's deadline allows). */
export async function withNodeLock<T>(ctx: OperationContext, inventory: Inventory, nodeId: string, operation: string, work: () => Promise<T>): Promise<T> {
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

const CONFIG_DRIVE_INPUTS = ["userData", "networkData", "metaData", "hostname", "sshPublicKeys", "volumes"] as const;

const containsUnknown = (v: unknown): boolean => isUnknown(v) || (typeof v === "object" && v !== null && Object.values(v).some(containsUnknown));

type DeploymentVolume = { connection: Record<string, unknown>; keyId?: string; keyManager?: string };

const volumesOf = (props: Props): DeploymentVolume[] => (Array.isArray(props.volumes) ? (props.volumes as DeploymentVolume[]) : []);

/**
 * vendor_data2.json's `baremetal` namespace: each volume's connection and, where it has a key, the
 * key material (base64) from `keys` (same index). Without `keys` (preview) the material is left out.
 */
function volumesVendorData(ctx: ProviderContext, props: Props, keys?: (Buffer | undefined)[]): Record<string, unknown> {
  const volumes = volumesOf(props).map((v, i) => {
    const c = v.connection;
    const entry: Record<string, unknown> = {
      volumeId: c.volumeId,
      portal: c.portal,
      targetIqn: c.targetIqn,
      lun: c.lun,
      initiatorIqn: c.initiatorIqn,
      chapUser: c.chapUser,
      chapSecret: c.chapSecret,
    };
    if (v.keyId !== undefined) {
      const luks: Record<string, unknown> = { keyId: v.keyId, keyManager: keyManagerName(ctx, v, `volumes[${i}].keyManager`) };
      const key = keys?.[i];
      if (key) luks.key = key.toString("base64");
      entry.luks = luks;
    }
    return entry;
  });
  return { baremetal: { volumes } };
}

/**
 * The volumes' own rules, as far as they are known: each connection is a volume of the caller's
 * project (`auth` otherwise), exported to `nodeId` when that is known, and a key manager is named
 * only with a key and names a configured one. Throws naming `volumes[i]...`.
 */
function checkVolumes(ctx: ProviderContext, props: Props, nodeId?: string): void {
  volumesOf(props).forEach((v, i) => {
    if (isUnknown(v) || !v) return;
    const c = v.connection;
    if (c && !isUnknown(c)) {
      if (typeof c.volumeId === "string") requireOwnVolume(ctx, c.volumeId, `volumes[${i}].connection.volumeId`);
      if (nodeId !== undefined && typeof c.nodeId === "string" && c.nodeId !== nodeId) {
        throw validationError(
          `volumes[${i}].connection.nodeId`,
          `volumes[${i}] is exported to node ${c.nodeId}, not to this deployment's node ${nodeId}; attach the volume to this deployment's allocation (a VolumeAttachment with its allocationId) and pass that attachment's connection`,
        );
      }
    }
    if (v.keyManager !== undefined && !isUnknown(v.keyManager)) {
      if (v.keyId === undefined) throw validationError(`volumes[${i}].keyManager`, `volumes[${i}].keyManager is set without a keyId; give the EncryptionKey's keyId too, or drop keyManager`);
      keyManagerName(ctx, v, `volumes[${i}].keyManager`);
    } else if (v.keyId !== undefined && !isUnknown(v.keyId)) keyManagerName(ctx, v, `volumes[${i}].keyManager`);
  });
}

/**
 * The key material of each volume that has a key, fetched as the caller's project (the key manager
 * refuses another project's key). Runs before anything on the node is touched; a failure names
 * `volumes[i].keyId`. The caller zeroes the buffers.
 */
async function fetchVolumeKeys(ctx: OperationContext, props: Props): Promise<(Buffer | undefined)[]> {
  const keys: (Buffer | undefined)[] = [];
  try {
    for (const [i, v] of volumesOf(props).entries()) {
      if (v.keyId === undefined) {
        keys.push(undefined);
        continue;
      }
      const property = `volumes[${i}].keyId`;
      const km = keyManagerName(ctx, v, `volumes[${i}].keyManager`);
      try {
        keys.push(await withKeyManager(ctx, km, (d) => d.getKeyMaterial(v.keyId as string), ctx.signal));
      } catch (e) {
        if (!isBaremetalError(e)) throw e;
        const why = e.code === "auth" ? `; only a key of project ${ctx.caller.projectId ?? "(operator)"} can be delivered to its nodes` : "";
        throw new BaremetalError(e.code, `key manager ${km}: ${e.message}${why}`, { property, httpStatus: e.httpStatus, cause: e });
      }
    }
    return keys;
  } catch (e) {
    for (const k of keys) k?.fill(0);
    throw e;
  }
}

/** What goes on the config drive, or undefined when the deployment asks for none. */
function configDriveInput(ctx: ProviderContext, props: Props, uuid: string, keys?: (Buffer | undefined)[]): ConfigDriveInput | undefined {
  if (!CONFIG_DRIVE_INPUTS.some((k) => props[k] !== undefined)) return undefined;
  const input: ConfigDriveInput = { uuid };
  if (props.volumes !== undefined) input.vendorData2 = volumesVendorData(ctx, props, keys);
  if (props.userData !== undefined) input.userData = props.userData as string;
  if (props.networkData !== undefined) input.networkData = props.networkData;
  if (props.metaData !== undefined) input.metaData = props.metaData as Record<string, string>;
  if (props.hostname !== undefined) input.hostname = props.hostname as string;
  if (props.sshPublicKeys !== undefined) input.publicKeys = props.sshPublicKeys as Record<string, string>;
  return input;
}

/** The image store name of a config drive: the allocation's and the content's, so a retry reuses it. */
function configDriveName(allocationId: string, image: Buffer): string {
  return `configdrive-${allocationId.replace(/^alloc-/, "")}-${createHash("sha256").update(image).digest("hex").slice(0, 16)}.iso`;
}

/** Builds the config drive and puts it in the image store; returns the URL the BMC fetches. */
async function publishConfigDrive(ctx: OperationContext, props: Props, nodeId: string, keys?: (Buffer | undefined)[]): Promise<string | undefined> {
  const allocationId = props.allocationId as string;
  const input = configDriveInput(ctx, props, allocationId.replace(/^alloc-/, ""), keys);
  if (!input) return undefined;
  // Without networkData of its own, the node is told the addresses of its network attachments.
  if (input.networkData === undefined) input.networkData = await networkDataFor(await ctx.inventory(), nodeId);
  if (!ctx.config.imageStoreUrl) throw new BaremetalError("validation", noImageStore, { property: CONFIG_DRIVE_INPUTS.find((k) => props[k] !== undefined) ?? "userData" });
  const image = buildConfigDrive(input);
  try {
    ctx.progress(`publishing the config drive (${image.length} bytes) to the image store`);
    return await imageStore(ctx.config.imageStoreUrl, { signal: ctx.signal }).put(configDriveName(allocationId, image), image);
  } finally {
    if (input.vendorData2) image.fill(0); // it holds key material
  }
}

/** The state's outputs (no inputs): what an update keeps while the inputs come from the program. */
function outputsOnly(state: Props): Props {
  return Object.fromEntries(Object.entries(state).filter(([k]) => !(k in inputs)));
}

/**
 * An active deployment whose `volumes` changed: the new config drive goes to the image store, the
 * BMC swaps it into the drive that holds the old one, and the old image is deleted. Keys are
 * fetched first (nothing is touched when one is refused); a failed swap deletes the new image.
 */
async function redeliverConfigDrive(ctx: OperationContext, id: string, news: Props, oldState: Props): Promise<Props> {
  const inventory = await ctx.inventory();
  const node = await allocatedNode(inventory, news.allocationId as string);
  if (node.id !== id) throw new BaremetalError("conflict", `allocation ${news.allocationId as string} now holds node ${node.id}, not ${id}; run \`pulumi refresh\``);
  checkVolumes(ctx, news, node.id);
  const keys = await fetchVolumeKeys(ctx, news);
  try {
    return await withNodeLock(ctx, inventory, node.id, "config drive", async () => {
      const { address, systemId } = parseNodeId(node.id);
      const oldUrl = oldState.configDriveUrl as string | undefined;
      const url = await publishConfigDrive(ctx, news, node.id, keys);
      const drive = ((news.bootInterface as string | undefined) ?? "virtual-media") === "virtual-media" ? "removable" : "cd";
      const what = drive === "cd" ? "CD" : "USB stick";
      try {
        await withDriver(ctx, { address }, async (driver) => {
          if (url) {
            ctx.progress(`swapping the config drive in the virtual ${what}`);
            await driver.insertVirtualMedia(systemId, url, drive);
          } else if (oldUrl) {
            ctx.progress(`ejecting the config drive from the virtual ${what}`);
            await driver.ejectVirtualMedia(systemId, drive);
          }
        }).catch(rethrowAttributed);
      } catch (e) {
        if (url && url !== oldUrl) await removeConfigDrive(ctx, { configDriveUrl: url }).catch(() => undefined);
        throw e;
      }
      if (oldUrl && oldUrl !== url) await removeConfigDrive(ctx, oldState);
      const out: Props = { ...outputsOnly(oldState), ...news };
      if (url) out.configDriveUrl = url;
      else delete out.configDriveUrl;
      return out;
    });
  } finally {
    for (const k of keys) k?.fill(0);
  }
}

/** Deletes the deployment's config drive from the image store (its user data must not outlive it). */
export async function removeConfigDrive(ctx: OperationContext, state: Props | undefined): Promise<void> {
  const url = state?.configDriveUrl as string | undefined;
  if (!url) return;
  if (!ctx.config.imageStoreUrl) {
    ctx.warn(`the config drive at ${url.replace(/[^/]+$/, "<name>")} stays in the image store: the provider has no imageStoreUrl to delete it with`);
    return;
  }
  await imageStore(ctx.config.imageStoreUrl, { signal: ctx.signal }).delete(url.slice(url.lastIndexOf("/") + 1));
}

const noImageStore =
  "a config drive (userData, networkData, metaData, hostname, sshPublicKeys or volumes) needs an image store the BMC can fetch it from: set the provider's imageStoreUrl (an http(s) server that accepts PUT)";

async function deploy(ctx: OperationContext, driver: BmcDriver, systemId: string, props: Props, configDriveUrl?: string): Promise<void> {
  const how = (props.bootInterface as string | undefined) ?? "virtual-media";
  const viaCd = how === "virtual-media";
  if (viaCd) {
    ctx.progress("inserting the deploy image into the virtual CD");
    await driver.insertVirtualMedia(systemId, props.imageUrl as string);
  }
  if (configDriveUrl) {
    // Attached before the installer boots (it may copy it) and kept while deployed: cloud-init
    // reads it at the first boot. The CD is free unless it carries the installer.
    ctx.progress(`attaching the config drive as a virtual ${viaCd ? "USB stick" : "CD"}`);
    await driver.insertVirtualMedia(systemId, configDriveUrl, viaCd ? "removable" : "cd").catch((e) => {
      if (viaCd && isBaremetalError(e) && e.code === "validation") {
        throw new BaremetalError("validation", `${e.message}. The config drive needs a second virtual drive while the CD carries the installer: use bootInterface http`, { property: "bootInterface" });
      }
      throw e;
    });
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
  for (const drive of ["cd", "removable"] as const) {
    await driver.ejectVirtualMedia(systemId, drive).catch((e) => {
      // A machine without this virtual drive has nothing to eject from it.
      if (!(isBaremetalError(e) && e.code === "validation")) throw e;
    });
  }
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

/** The deploy proper, under the node's lock (the volumes' keys already fetched). */
async function deployWith(
  ctx: OperationContext,
  inventory: Inventory,
  props: Props,
  nodeId: string,
  address: string,
  systemId: string,
  keys: (Buffer | undefined)[],
): Promise<{ id: string; outputs: Props }> {
  return withNodeLock(ctx, inventory, nodeId, "deploy", async () => {
    await inventory.setProvisionState(nodeId, "deploying");
    let configDriveUrl: string | undefined;
    try {
      // On the provisioning network before the installer boots.
      await syncNodePorts(ctx, inventory, nodeId);
      configDriveUrl = await publishConfigDrive(ctx, props, nodeId, keys);
      await withDriver(ctx, { address }, (driver) => deploy(ctx, driver, systemId, props, configDriveUrl).catch(rethrowAttributed));
    } catch (e) {
      const why = describeError(e);
      await inventory.setProvisionState(nodeId, "deploy failed", why);
      // Recorded with its error: the next `up` deploys again (update), or replaces as declared.
      const recorded = { ...props, nodeId, provisionState: "deploy failed", lastError: why, ...(configDriveUrl ? { configDriveUrl } : {}) };
      throw new PartialCreateError(nodeId, recorded, [why]);
    }
    await inventory.setProvisionState(nodeId, "active");
    // Into its tenant networks only once active.
    await syncNodePorts(ctx, inventory, nodeId);
    const outputs = { ...props, nodeId, provisionState: "active", deployedAt: new Date().toISOString(), ...(configDriveUrl ? { configDriveUrl } : {}) };
    return { id: nodeId, outputs };
  });
}

export const deploymentResource: ResourceDefinition = {
  token: "baremetal:compute:Deployment",
  description:
    "An image running on an allocated node, deployed over Redfish virtual media (or PXE). Destroying it undeploys and cleans the node, which stays allocated; it never un-enrols it.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 1800,

  async check(props, ctx) {
    // The volumes: the caller's own, on this deployment's node (where known), known key managers.
    try {
      let nodeId: string | undefined;
      if (typeof props.allocationId === "string" && Array.isArray(props.volumes)) {
        const allocation = await (await ctx.inventory()).getAllocation(props.allocationId);
        if (allocation?.state === "active") nodeId = allocation.nodeId;
      }
      if (!isUnknown(props.volumes)) checkVolumes(ctx, props, nodeId);
    } catch (e) {
      if (isBaremetalError(e) && e.property) return [checkFailureOf(e)];
      throw e;
    }
    // The config drive's inputs are checked as the drive is built (the same code), at preview.
    const given = CONFIG_DRIVE_INPUTS.find((k) => props[k] !== undefined);
    if (!given) return [];
    if (!ctx.config.imageStoreUrl) return [{ property: given, reason: noImageStore }];
    // Values unknown until apply (outputs of other resources) are checked when the drive is built.
    if (CONFIG_DRIVE_INPUTS.some((k) => containsUnknown(props[k]))) return [];
    const input = configDriveInput(ctx, props, "preview")!;
    try {
      configDriveFiles(input);
    } catch (e) {
      // The builder calls the keys publicKeys (meta_data.json's name); the input is sshPublicKeys.
      if (isBaremetalError(e) && e.property) return [{ property: e.property.replace(/^publicKeys/, "sshPublicKeys"), reason: e.message.replace(/^publicKeys/, "sshPublicKeys") }];
      throw e;
    }
    return [];
  },

  async authorize(ctx: ProviderContext, change, props, state) {
    const operations = ["baremetal:node:set_provision_state", ...(change !== "delete" ? ["baremetal:node:update_instance_info"] : [])];
    await authorizeOnAllocatedNode(ctx, state?.allocationId ?? props.allocationId, operations);
  },

  async create(ctx, props) {
    const inventory = await ctx.inventory();
    const node = await allocatedNode(inventory, props.allocationId as string);
    const { address, systemId } = parseNodeId(node.id);
    // The volumes and their keys before anything else: a refused key leaves the node untouched.
    checkVolumes(ctx, props, node.id);
    const keys = await fetchVolumeKeys(ctx, props);
    try {
      return await deployWith(ctx, inventory, props, node.id, address, systemId, keys);
    } finally {
      for (const k of keys) k?.fill(0);
    }
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

  async update(ctx, id, olds, news, oldState) {
    // Only `volumes` changes in place (the config drive is republished and swapped); every other
    // input replaces, so otherwise an update is the retry of a failed deploy.
    if (oldState.provisionState === "active") {
      if (deepEqual(olds.volumes, news.volumes)) return { ...outputsOnly(oldState), ...news };
      return redeliverConfigDrive(ctx, id, news, oldState);
    }
    const created = await deploymentResource.create(ctx, news);
    // The failed attempt's config drive, when the retry published another one.
    if (oldState.configDriveUrl && oldState.configDriveUrl !== created.outputs.configDriveUrl) await removeConfigDrive(ctx, oldState);
    return { ...created.outputs, nodeId: id };
  },

  async delete(ctx, id, _inputs, state) {
    const inventory = await ctx.inventory();
    const node = await inventory.getNode(id);
    await removeConfigDrive(ctx, state);
    if (!node) return; // un-enrolled: nothing left to clean
    await withNodeLock(ctx, inventory, id, "clean", () => undeployAndClean(ctx, inventory, id));
  },
};

/**
 * Undeploy and clean (what destroying a Deployment does to its node), for a caller that holds the
 * node's lock: off the tenant networks, powered off, media ejected, boot override cleared, disks
 * erased per `cleanEraseDisks`; the node ends `available` (or `clean failed`, and the error is thrown).
 */
export async function undeployAndClean(ctx: OperationContext, inventory: Inventory, id: string): Promise<void> {
  const { address, systemId } = parseNodeId(id);
  await inventory.setProvisionState(id, "cleaning");
  // Cut off from every tenant network BEFORE the machine is touched (moved to the provisioning network).
  await syncNodePorts(ctx, inventory, id);
  try {
    await withDriver(ctx, { address }, (driver) => clean(ctx, driver, systemId).catch(rethrowAttributed));
  } catch (e) {
    await inventory.setProvisionState(id, "clean failed", describeError(e));
    throw e;
  }
  await inventory.setProvisionState(id, "available");
  // Still held by its allocation: back into the holder's networks (quarantine if none).
  await syncNodePorts(ctx, inventory, id);
}
