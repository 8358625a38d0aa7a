/**
 * The Redfish BMC driver: the BmcDriver kind over our Redfish client. Translations between the
 * provider's vocabulary (lower-case power states and boot devices) and Redfish's enumerations are
 * data (the tables below), not special cases.
 */
import { BaremetalError, isBaremetalError } from "../../core/errors";
import type { BmcConnection, BmcDriver, BootDevice, BootMode, PowerState, SystemFacts, VirtualDrive } from "../kinds/bmc";
import { RedfishClient } from "./client";
import {
  configureIscsiBoot,
  type DeviceFunctionInfo,
  desiredIscsi,
  type IscsiBootOriginal,
  type IscsiBootRequest,
  iscsiDifferences,
  listDeviceFunctions,
  pickDeviceFunction,
  readDeviceFunction,
  restoreIscsiBoot,
} from "./iscsi-boot";
import type { Limiter } from "./limiter";
import type { SessionPool } from "./sessions";

const POWER_STATES: Record<string, PowerState> = {
  On: "on",
  Off: "off",
  PoweringOn: "powering-on",
  PoweringOff: "powering-off",
  Paused: "paused",
};

/** Provider boot device -> Redfish BootSourceOverrideTarget. */
export const BOOT_TARGETS: Record<Exclude<BootDevice, "none">, string> = {
  pxe: "Pxe",
  disk: "Hdd",
  cd: "Cd",
  bios: "BiosSetup",
  http: "UefiHttp",
  usb: "Usb",
};
const BOOT_DEVICES: Record<string, BootDevice> = Object.fromEntries(
  Object.entries(BOOT_TARGETS).map(([device, target]) => [target, device as BootDevice]),
);
const BOOT_MODES: Record<BootMode, string> = { uefi: "UEFI", legacy: "Legacy" };

export class RedfishDriver implements BmcDriver {
  readonly client: RedfishClient;

  constructor(conn: BmcConnection, limits: { perBmc?: Limiter; mutations?: Limiter; global?: Limiter } = {}, sessionPool?: SessionPool) {
    this.client = new RedfishClient({
      endpoint: conn.address,
      username: conn.username,
      password: conn.password,
      verifyTls: conn.verifyTls,
      caBundle: conn.caBundle,
      timeoutMs: conn.requestTimeoutMs,
      maxConcurrency: conn.maxConcurrency,
      limiter: limits.perBmc,
      mutationLimiter: limits.mutations,
      globalLimiter: limits.global,
      sessionPool,
      signal: conn.signal,
      onRequest: conn.onRequest,
      onRetry: (r) =>
        conn.onProgress?.(`${r.reason}; ${r.method} ${r.path} again in ${(r.delayMs / 1000).toFixed(1)} s (attempt ${r.attempt + 1})`),
    });
  }

  async listSystems(): Promise<string[]> {
    const members = await this.client.listSystems();
    return members.map((odataId) => odataId.replace(/\/+$/, "").split("/").pop() as string);
  }

  async facts(systemId: string): Promise<SystemFacts> {
    const f = await this.client.getSystemFacts(systemId);
    const enabled = f.bootSourceOverrideEnabled ?? "Disabled";
    const target = f.bootSourceOverrideTarget ?? "None";
    return {
      systemId: f.id,
      systemUri: f.odataId,
      manufacturer: f.manufacturer,
      model: f.model,
      serialNumber: f.serialNumber,
      uuid: f.uuid,
      cpuCount: f.cpuCount,
      cpuModel: f.cpuModel,
      memoryGiB: f.memoryGiB,
      macAddresses: f.macAddresses,
      powerState: POWER_STATES[f.powerState ?? ""] ?? "unknown",
      bootDevice: enabled === "Disabled" || target === "None" ? "none" : (BOOT_DEVICES[target] ?? target.toLowerCase()),
      bootPersistent: enabled === "Continuous",
      bootMode: f.bootMode ? (f.bootMode === "UEFI" ? "uefi" : f.bootMode === "Legacy" ? "legacy" : f.bootMode) : undefined,
      allowedBootDevices: f.allowedBootTargets.map((t) => BOOT_DEVICES[t] ?? t.toLowerCase()),
    };
  }

  async setPower(systemId: string, desired: "on" | "off"): Promise<{ changed: boolean }> {
    const changed = await this.client.setPower(systemId, desired === "on" ? "On" : "Off");
    return { changed };
  }

  async setBoot(systemId: string, device: BootDevice, mode?: BootMode, once = false, httpBootUri?: string): Promise<{ changed: boolean }> {
    const redfishMode = mode ? (BOOT_MODES[mode] as "UEFI" | "Legacy") : undefined;
    if (device === "none") return { changed: await this.client.clearBootOverride(systemId) };
    const target = BOOT_TARGETS[device];
    if (!target) throw new BaremetalError("validation", `unknown boot device '${device}'`, { property: "bootDevice" });
    return { changed: await this.client.setBootOverride(systemId, target, once ? "Once" : "Continuous", redfishMode, device === "http" ? httpBootUri : undefined) };
  }

  async powerCycle(systemId: string): Promise<void> {
    const { system } = await this.client.getSystem(systemId);
    if (system.PowerState === "Off" || system.PowerState === "PoweringOff") await this.client.setPower(systemId, "On");
    else await this.client.resetSystem(systemId, "ForceRestart");
  }

  async insertVirtualMedia(systemId: string, imageUrl: string, drive: VirtualDrive = "cd"): Promise<{ changed: boolean }> {
    const { path } = await this.findDrive(systemId, drive);
    return { changed: await this.client.insertMedia(path, imageUrl) };
  }

  async ejectVirtualMedia(systemId: string, drive: VirtualDrive = "cd"): Promise<{ changed: boolean }> {
    const { path } = await this.findDrive(systemId, drive);
    return { changed: await this.client.ejectMedia(path) };
  }

  /** The CD, or for `removable` a USB stick drive, else a floppy drive. */
  private async findDrive(systemId: string, drive: VirtualDrive): Promise<{ path: string }> {
    if (drive === "cd") return this.client.findVirtualMedia(systemId, "CD");
    try {
      return await this.client.findVirtualMedia(systemId, "USBStick");
    } catch (e) {
      if (!(isBaremetalError(e) && e.code === "validation")) throw e;
      return this.client.findVirtualMedia(systemId, "Floppy");
    }
  }

  async eraseDisks(systemId: string): Promise<{ erased: string[]; unsupported: string[] }> {
    const erased: string[] = [];
    const unsupported: string[] = [];
    for (const drive of await this.client.listDrives(systemId)) {
      const name = drive.Id ?? drive["@odata.id"];
      if (!drive.Actions?.["#Drive.SecureErase"]) {
        unsupported.push(name);
        continue;
      }
      await this.client.secureEraseDrive(drive);
      erased.push(name);
    }
    return { erased, unsupported };
  }

  // -------------------------------------------------------------------------------------------
  // iSCSI boot (Redfish only: not part of the BmcDriver kind; see iscsi-boot.ts)

  /** The system's network device functions (secrets dropped). */
  async deviceFunctions(systemId: string): Promise<DeviceFunctionInfo[]> {
    return listDeviceFunctions(this.client, systemId);
  }

  /**
   * Makes the system boot from an iSCSI LUN with its firmware initiator: picks a function that can
   * (the lowest of `macs` first), configures it, sets the boot override. `whose` names the node in
   * errors (a BMC without network adapters cannot do iSCSI boot: a `validation` error on `boot`).
   */
  async configureIscsiBoot(
    systemId: string,
    req: IscsiBootRequest,
    opts: { macs?: string[]; whose: string },
  ): Promise<{ functionPath: string; bootTarget: string; original: IscsiBootOriginal }> {
    desiredIscsi(req); // a portal the firmware cannot use fails before the BMC is touched
    const fn = pickDeviceFunction(await listDeviceFunctions(this.client, systemId), opts.macs ?? [], opts.whose);
    const { original, bootTarget } = await configureIscsiBoot(this.client, systemId, fn, req);
    return { functionPath: fn.path, bootTarget, original };
  }

  /** What differs between the function's iSCSI boot settings and `req` (CHAPSecret is never compared: it reads null). */
  async iscsiBootDrift(functionPath: string, req: Omit<IscsiBootRequest, "chapSecret">): Promise<string[]> {
    return iscsiDifferences(await readDeviceFunction(this.client, functionPath), desiredIscsi({ ...req, chapSecret: "" }));
  }

  async restoreIscsiBoot(systemId: string, original: IscsiBootOriginal, ours: { targetName: string; bootTarget: string }): Promise<{ restored: boolean; why?: string }> {
    return restoreIscsiBoot(this.client, systemId, original, ours);
  }

  async close(): Promise<void> {
    await this.client.logout();
  }
}
