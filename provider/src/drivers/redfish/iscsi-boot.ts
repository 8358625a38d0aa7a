/**
 * iSCSI boot over Redfish: the firmware's own iSCSI initiator, configured on a network device
 * function of the system's network adapter (DMTF NetworkDeviceFunction schema: `BootMode` and
 * `iSCSIBoot`), and the system's boot override pointed at it.
 *
 * - Where the functions are: the system's `NetworkInterfaces` (each links its adapter's
 *   `NetworkDeviceFunctions`), else the `NetworkAdapters` of the chassis the system links
 *   (`Links.Chassis`). A BMC with neither shows no function, and cannot do iSCSI boot.
 * - Which function: one that can boot iSCSI (`BootMode@Redfish.AllowableValues` lists "iSCSI",
 *   or, unannotated, it has an `iSCSIBoot` object), preferring the lowest of the node's known
 *   MACs (its first NIC), so the choice is the same on every run.
 * - The boot override: `RemoteDrive` ("boot from a remote drive, such as an iSCSI target",
 *   ComputerSystem schema v1_2_0) where the system allows it; else `Pxe`, the network boot of the
 *   adapter, which boots iSCSI instead of PXE once the function's BootMode says iSCSI (what NIC
 *   option ROMs do with their "legacy boot protocol" setting). Continuous: a node that boots from
 *   a volume boots from it every time.
 * - `CHAPSecret` is write-only (reads back null): it goes into the PATCH body only, and errors
 *   raised while it is in flight are scrubbed of it (a BMC's PropertyValueFormatError message
 *   may quote the value it refused). It is never compared on read: a secret changed on the BMC
 *   by hand cannot be detected over Redfish.
 */
import { isIP } from "node:net";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import type { RedfishClient } from "./client";
import type { Chassis, Collection, ComputerSystem, ISCSIBoot, NetworkAdapter, NetworkDeviceFunction, NetworkInterface } from "./types";

/** What the firmware's initiator needs to boot from one LUN. */
export interface IscsiBootRequest {
  /** The initiator name the firmware logs in with. */
  initiatorName: string;
  targetName: string;
  /** `host:port` (IPv6 as `[addr]:port`); the host must be an IP address (firmware does no DNS here). */
  portal: string;
  lun: number;
  chapUsername: string;
  /** Write-only on the BMC; never logged. */
  chapSecret: string;
}

/** One network device function as read (secrets dropped). */
export interface DeviceFunctionInfo {
  path: string;
  id: string;
  /** Lower-case MAC of the function (Ethernet.MACAddress, else PermanentMACAddress). */
  mac?: string;
  bootMode: string | null;
  /** BootMode@Redfish.AllowableValues; empty when the BMC does not say. */
  allowedBootModes: string[];
  /** iSCSIBoot without the write-only secrets; undefined when the function has none. */
  iscsi?: ISCSIBoot;
}

/** The non-secret iSCSIBoot properties we write, and compare on read. */
export const ISCSI_FIELDS = [
  "IPAddressType",
  "InitiatorName",
  "TargetInfoViaDHCP",
  "PrimaryTargetName",
  "PrimaryTargetIPAddress",
  "PrimaryTargetTCPPort",
  "PrimaryLUN",
  "AuthenticationMethod",
  "CHAPUsername",
] as const;
export type IscsiField = (typeof ISCSI_FIELDS)[number];

/** What a function and the system's boot override were before we configured them (restored on detach). */
export interface IscsiBootOriginal {
  functionPath: string;
  bootMode: string | null;
  iscsi: Partial<Record<IscsiField, string | number | boolean | null>>;
  bootOverride: { target: string | null; enabled: string | null };
}

const MAX_PAGES = 100;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function normalizeMac(mac: unknown): string | undefined {
  if (typeof mac !== "string") return undefined;
  const m = mac.trim().toLowerCase().replace(/-/g, ":");
  return /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(m) && m !== "00:00:00:00:00:00" ? m : undefined;
}

/** `host:port` -> address, port (default 3260) and IPAddressType; refuses a host name. */
export function parsePortal(portal: string): { address: string; port: number; type: "IPv4" | "IPv6" } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(portal) ?? /^([^:]+)(?::(\d+))?$/.exec(portal) ?? (isIP(portal) === 6 ? [portal, portal, undefined] : null);
  const address = m?.[1];
  const port = m?.[2] !== undefined ? Number(m[2]) : 3260;
  const family = address ? isIP(address) : 0;
  if (!address || !family || !(port >= 1 && port <= 65535)) {
    throw validationError(
      "boot",
      `the storage backend's iSCSI portal '${portal}' is not an IP address with an optional port: a firmware iSCSI initiator needs the target's IP address (set the backend's iscsi.portal to one)`,
    );
  }
  return { address, port, type: family === 6 ? "IPv6" : "IPv4" };
}

/** The iSCSIBoot properties we write (all but the secret). */
export interface DesiredIscsi {
  IPAddressType: "IPv4" | "IPv6";
  InitiatorName: string;
  TargetInfoViaDHCP: false;
  PrimaryTargetName: string;
  PrimaryTargetIPAddress: string;
  PrimaryTargetTCPPort: number;
  PrimaryLUN: number;
  AuthenticationMethod: "CHAP";
  CHAPUsername: string;
}

/** The iSCSIBoot object we write (without the secret). */
export function desiredIscsi(req: IscsiBootRequest): DesiredIscsi {
  const p = parsePortal(req.portal);
  return {
    IPAddressType: p.type,
    InitiatorName: req.initiatorName,
    TargetInfoViaDHCP: false,
    PrimaryTargetName: req.targetName,
    PrimaryTargetIPAddress: p.address,
    PrimaryTargetTCPPort: p.port,
    PrimaryLUN: req.lun,
    AuthenticationMethod: "CHAP",
    CHAPUsername: req.chapUsername,
  };
}

/**
 * The properties in which what the BMC has differs from what we set ("BootMode" included), as
 * `Name (BMC has X, expected Y)`. CHAPSecret is never compared: it reads back null.
 */
export function iscsiDifferences(actual: DeviceFunctionInfo | undefined, desired: DesiredIscsi): string[] {
  if (!actual) return ["NetworkDeviceFunction (gone from the BMC)"];
  const out: string[] = [];
  const show = (v: unknown) => (v === undefined || v === null ? "nothing" : JSON.stringify(v));
  if (actual.bootMode !== "iSCSI") out.push(`BootMode (BMC has ${show(actual.bootMode)}, expected "iSCSI")`);
  for (const k of ISCSI_FIELDS) {
    const have = actual.iscsi?.[k];
    const want = desired[k];
    const same = typeof want === "string" && typeof have === "string" && (k === "InitiatorName" || k === "PrimaryTargetName") ? have.toLowerCase() === want.toLowerCase() : have === want;
    if (!same) out.push(`iSCSIBoot.${k} (BMC has ${show(have)}, expected ${show(want)})`);
  }
  return out;
}

/** Replaces the secret in an error (message, details) raised while it was in flight. */
function scrub(e: unknown, secret: string): unknown {
  if (!secret) return e;
  const clean = (s: string) => s.split(secret).join("(secret)");
  if (isBaremetalError(e)) {
    if (!e.message.includes(secret) && !e.details.some((d) => d.includes(secret))) return e;
    return new BaremetalError(e.code, clean(e.message), { property: e.property, httpStatus: e.httpStatus, messageId: e.messageId, details: e.details.map(clean), retryAfterSeconds: e.retryAfterSeconds, unsent: e.unsent });
  }
  if (e instanceof Error && e.message.includes(secret)) return new Error(clean(e.message));
  return e;
}

async function members(client: RedfishClient, collection: string): Promise<string[]> {
  const out: string[] = [];
  let next: string | undefined = collection;
  for (let page = 0; next && page < MAX_PAGES; page++) {
    const { body }: { body: Collection } = await client.get<Collection>(next);
    for (const m of Array.isArray(body.Members) ? body.Members : []) if (isRecord(m) && typeof m["@odata.id"] === "string") out.push(m["@odata.id"]);
    next = body["Members@odata.nextLink"];
  }
  return out;
}

/** Collections a BMC links but does not serve (404/501) count as empty; other failures fail. */
async function optional<T>(fetch: () => Promise<T>, fallback: T): Promise<T> {
  try {
    return await fetch();
  } catch (e) {
    if (isBaremetalError(e) && (e.code === "not-found" || (e.code === "backend" && (e.httpStatus === 501 || e.httpStatus === 405)))) return fallback;
    throw e;
  }
}

function infoOf(path: string, f: NetworkDeviceFunction): DeviceFunctionInfo {
  const out: DeviceFunctionInfo = {
    path,
    id: f.Id ?? path.split("/").pop() ?? path,
    bootMode: f.BootMode ?? null,
    allowedBootModes: Array.isArray(f["BootMode@Redfish.AllowableValues"]) ? f["BootMode@Redfish.AllowableValues"].filter((v): v is string => typeof v === "string") : [],
  };
  const mac = normalizeMac(f.Ethernet?.MACAddress) ?? normalizeMac(f.Ethernet?.PermanentMACAddress);
  if (mac) out.mac = mac;
  if (isRecord(f.iSCSIBoot)) {
    const { CHAPSecret: _s, MutualCHAPSecret: _m, ...rest } = f.iSCSIBoot;
    out.iscsi = rest;
  }
  return out;
}

/** Reads one network device function. */
export async function readDeviceFunction(client: RedfishClient, path: string): Promise<DeviceFunctionInfo | undefined> {
  return optional(async () => infoOf(path, (await client.get<NetworkDeviceFunction>(path)).body), undefined);
}

/** Every network device function of the system (see the header for where they are found). */
export async function listDeviceFunctions(client: RedfishClient, systemId: string): Promise<DeviceFunctionInfo[]> {
  const { system } = await client.getSystem(systemId);
  const collections = new Set<string>();
  const sys = system as ComputerSystem;
  if (sys.NetworkInterfaces?.["@odata.id"]) {
    for (const ni of await optional(() => members(client, sys.NetworkInterfaces!["@odata.id"]), [] as string[])) {
      const iface = await optional(async () => (await client.get<NetworkInterface>(ni)).body, undefined);
      const fns = iface?.NetworkDeviceFunctions?.["@odata.id"];
      if (fns) collections.add(fns);
      else if (iface?.Links?.NetworkAdapter?.["@odata.id"]) {
        const adapter = await optional(async () => (await client.get<NetworkAdapter>(iface.Links!.NetworkAdapter!["@odata.id"])).body, undefined);
        if (adapter?.NetworkDeviceFunctions?.["@odata.id"]) collections.add(adapter.NetworkDeviceFunctions["@odata.id"]);
      }
    }
  }
  if (!collections.size) {
    for (const c of sys.Links?.Chassis ?? []) {
      const chassis = await optional(async () => (await client.get<Chassis>(c["@odata.id"])).body, undefined);
      const adapters = chassis?.NetworkAdapters?.["@odata.id"];
      if (!adapters) continue;
      for (const a of await optional(() => members(client, adapters), [] as string[])) {
        const adapter = await optional(async () => (await client.get<NetworkAdapter>(a)).body, undefined);
        if (adapter?.NetworkDeviceFunctions?.["@odata.id"]) collections.add(adapter.NetworkDeviceFunctions["@odata.id"]);
      }
    }
  }
  const out: DeviceFunctionInfo[] = [];
  for (const c of collections) {
    for (const p of await optional(() => members(client, c), [] as string[])) {
      const f = await readDeviceFunction(client, p);
      if (f) out.push(f);
    }
  }
  return out;
}

/** Can this function boot over iSCSI? */
export function canBootIscsi(f: DeviceFunctionInfo): boolean {
  return f.allowedBootModes.length ? f.allowedBootModes.includes("iSCSI") : f.iscsi !== undefined;
}

/** The function to configure: iSCSI-capable, the lowest of `macs` first, else the first by MAC/path. */
export function pickDeviceFunction(functions: DeviceFunctionInfo[], macs: string[], whose: string): DeviceFunctionInfo {
  const capable = functions.filter(canBootIscsi);
  if (!capable.length) {
    throw new BaremetalError(
      "validation",
      functions.length
        ? `${whose}: none of the BMC's ${functions.length} network device function(s) can boot over iSCSI (BootMode allows ${[...new Set(functions.flatMap((f) => f.allowedBootModes))].join(", ") || "nothing"}); this BMC cannot do iSCSI boot: attach the volume without boot`
        : `${whose}: the BMC shows no network adapters (no NetworkInterfaces and no Chassis NetworkAdapters with NetworkDeviceFunctions), so it cannot do iSCSI boot; attach the volume without boot, or boot the node another way`,
      { property: "boot" },
    );
  }
  const wanted = [...new Set(macs.map((m) => normalizeMac(m)).filter((m): m is string => !!m))].sort();
  for (const mac of wanted) {
    const f = capable.find((x) => x.mac === mac);
    if (f) return f;
  }
  return [...capable].sort((a, b) => (a.mac ?? "~").localeCompare(b.mac ?? "~") || a.path.localeCompare(b.path))[0];
}

/** The boot override target for iSCSI boot on this system: RemoteDrive where allowed, else Pxe. */
export function iscsiBootTarget(allowedTargets: string[]): string {
  if (!allowedTargets.length || allowedTargets.includes("RemoteDrive")) return "RemoteDrive";
  if (allowedTargets.includes("Pxe")) return "Pxe";
  throw new BaremetalError("validation", `the system's boot override allows neither RemoteDrive nor Pxe (it allows ${allowedTargets.join(", ")}): it cannot be told to boot from its iSCSI function`, { property: "boot" });
}

/**
 * Configures `fn` to boot from the target and the system to boot from it (continuously). Returns
 * what was there before, for `restoreIscsiBoot`.
 */
export async function configureIscsiBoot(client: RedfishClient, systemId: string, fn: DeviceFunctionInfo, req: IscsiBootRequest): Promise<{ original: IscsiBootOriginal; bootTarget: string }> {
  const desired = desiredIscsi(req);
  if (fn.allowedBootModes.length && !fn.allowedBootModes.includes("iSCSI")) {
    throw new BaremetalError("validation", `network device function ${fn.path} does not allow BootMode iSCSI (allows ${fn.allowedBootModes.join(", ")})`, { property: "boot" });
  }
  const { system } = await client.getSystem(systemId);
  const allowed = system.Boot?.["BootSourceOverrideTarget@Redfish.AllowableValues"] ?? [];
  const bootTarget = iscsiBootTarget(allowed);
  const original: IscsiBootOriginal = {
    functionPath: fn.path,
    bootMode: fn.bootMode,
    iscsi: Object.fromEntries(ISCSI_FIELDS.map((k) => [k, (fn.iscsi?.[k] as string | number | boolean | null | undefined) ?? null])),
    bootOverride: { target: system.Boot?.BootSourceOverrideTarget ?? null, enabled: system.Boot?.BootSourceOverrideEnabled ?? null },
  };
  try {
    await client.patch(fn.path, { BootMode: "iSCSI", iSCSIBoot: { ...desired, CHAPSecret: req.chapSecret } });
  } catch (e) {
    throw scrub(e, req.chapSecret);
  }
  await client.setBootOverride(systemId, bootTarget, "Continuous");
  return { original, bootTarget };
}

/**
 * Puts back what `configureIscsiBoot` found, if the function still boots from `targetName` (a
 * function somebody pointed elsewhere since is left alone, and said so). The CHAP secret we wrote
 * is cleared (null). The boot override is put back only if it is still the one we set.
 */
export async function restoreIscsiBoot(
  client: RedfishClient,
  systemId: string,
  original: IscsiBootOriginal,
  ours: { targetName: string; bootTarget: string },
): Promise<{ restored: boolean; why?: string }> {
  const now = await readDeviceFunction(client, original.functionPath);
  if (!now) return { restored: false, why: `network device function ${original.functionPath} is gone from the BMC` };
  const target = now.iscsi?.PrimaryTargetName;
  if (now.bootMode === "iSCSI" && typeof target === "string" && target.toLowerCase() !== ours.targetName.toLowerCase()) {
    return { restored: false, why: `network device function ${original.functionPath} now boots from ${target}, not ${ours.targetName}: left as it is` };
  }
  // Our secret is cleared (null: the schema's "no value"); the rest goes back as it was.
  const iscsi: Record<string, unknown> = { ...original.iscsi, CHAPSecret: null };
  await client.patch(original.functionPath, { BootMode: original.bootMode ?? "Disabled", iSCSIBoot: iscsi });
  const { system } = await client.getSystem(systemId);
  const boot = system.Boot;
  if (boot?.BootSourceOverrideTarget === ours.bootTarget && boot.BootSourceOverrideEnabled === "Continuous") {
    const o = original.bootOverride;
    if (!o.enabled || o.enabled === "Disabled" || !o.target || o.target === "None") await client.clearBootOverride(systemId);
    else await client.setBootOverride(systemId, o.target, o.enabled as "Once" | "Continuous");
  }
  return { restored: true };
}
