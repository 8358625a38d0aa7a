/**
 * BMC "flavors": the vendor differences the lab reproduces, as data. The emulator (bmc.ts) has
 * one code path; a flavor only says which ids, allowable values, limits, status codes and
 * resource locations to use.
 *
 * - `generic`: shaped like the DMTF public mockup (dmtf-public-rackmount1): sessions and Basic,
 *   VirtualMedia under the system, a PATCH answers 200 with the resource, strong ETags.
 * - `idrac-like`: behaviours published for Dell iDRAC: `System.Embedded.1`-style ids, user `root`,
 *   a low session limit (400 SessionLimitExceeded), 300 s session timeout, VirtualMedia under the
 *   manager, InsertMedia/EjectMedia as tasks (202 + task monitor), 409 on power-on within 60 s of
 *   a power-off and on a reset to the state the system is already in, boot changes refused with
 *   400 during POST, the Task resource as its own task monitor (202 while running), fixed account slots changed by PATCH (no POST/DELETE), weak ETags, a PATCH
 *   answers 200 with a Success message.
 * - `sushy-like`: like OpenStack sushy-tools' fake driver: Basic only (no SessionService,
 *   AccountService or TaskService), UUIDs as system ids, VirtualMedia under the system, no
 *   Processors/Memory collections, no consoles, a PATCH answers 204, anything goes during POST.
 *
 * Every system has one emulated disk (bmc.ts: what a deploy writes, what cleaning erases). Where
 * Redfish shows it is flavor data (`storage`): `generic` serves Storage + one Drive with the
 * Drive.SecureErase action (the DMTF public-localstorage mockup's shape); `idrac-like` serves the
 * Drive without any erase action; `sushy-like` serves no Storage at all. The last two can only be
 * erased behind the BMC's back (the lab's `eraseDisk`).
 */

export type FlavorName = "generic" | "idrac-like" | "sushy-like";

export const FLAVOR_NAMES: readonly FlavorName[] = ["generic", "idrac-like", "sushy-like"];

export interface ConsoleSpec {
  ServiceEnabled: boolean;
  MaxConcurrentSessions: number;
  ConnectTypesSupported: string[];
}

export interface Flavor {
  name: FlavorName;
  description: string;
  /** ServiceRoot.Vendor / Product. */
  vendor: string;
  product: string;
  manufacturer: string;
  /** Model of a system with the given hardware profile name. */
  model: (profile: string) => string;
  managerModel: string;
  firmwareVersion: string;
  biosVersion: string;
  defaultUsername: string;

  // ids (b: BMC index, s: system index, k: member index; all 1-based)
  managerId: string;
  systemId: (b: number, s: number, uuid: string) => string;
  chassisId: (b: number, s: number, uuid: string) => string;
  nicId: (s: number, k: number, mac: string) => string;
  cpuId: (k: number) => string;
  dimmId: (k: number) => string;
  /** Id of system s's CD under the manager (VirtualMedia under Managers) when the BMC has `count` systems. */
  managerCdId: (s: number, count: number) => string;
  /** Id of the CD under a system (VirtualMedia under Systems). */
  systemCdId: string;
  sessionId: (n: number) => string;
  taskId: (n: number) => string;

  /** null: the service has no SessionService (Basic only). */
  sessions: null | {
    limit: number;
    timeoutSeconds: number;
    /** HTTP status of a login refused because the limit is reached (message SessionLimitExceeded). */
    limitStatus: number;
  };
  /** null: no AccountService. "collection": POST/DELETE accounts; "slots": fixed slots 1..slots changed by PATCH. */
  accounts: null | { mode: "collection"; max: number } | { mode: "slots"; slots: number };
  /** null: no TaskService. */
  tasks: null | {
    /** Actions that answer 202 + a task monitor instead of finishing at once. */
    asyncActions: string[];
    /** How long such a task runs (lab time). */
    seconds: number;
    /** Retry-After (seconds) on a task monitor's 202 answers; undefined: none. */
    retryAfterSeconds?: number;
    /**
     * "separate": the 202's Location is a task monitor URI (TaskService/TaskMonitors/<id>) that
     * answers 202 while the task runs, then the action's own result (DSP0266 "Asynchronous
     * operations"); the Task resource always answers 200. "task-uri": the Location is the Task
     * resource itself, which answers 202 (with the Task) while running and 200 when done, as
     * older services and iDRAC-like BMCs do.
     */
    monitor: "separate" | "task-uri";
  };
  virtualMedia: "system" | "manager";
  /** TransferProtocolType values InsertMedia accepts. */
  transferProtocols: string[];
  /** Inserting into a CD that holds media: "conflict" (409) or "replace". */
  insertWhenInserted: "conflict" | "replace";
  /** Ejecting an empty CD: "noop" (success) or "conflict" (409). */
  ejectWhenEmpty: "noop" | "conflict";

  resetTypes: string[];
  bootTargets: string[];
  /**
   * Boot.HttpBootUri is writable (ComputerSystem v1_9): with target UefiHttp the machine boots
   * that URI (the installer) without any PXE/DHCP service. false: the property is absent.
   */
  httpBootUri: boolean;
  /** `BootSourceOverrideEnabled@Redfish.AllowableValues` (undefined: not annotated; the schema's three values apply). */
  bootEnabledAllowable?: string[];
  /** `BootSourceOverrideMode@Redfish.AllowableValues` (undefined: not annotated; UEFI and Legacy apply). */
  bootModeAllowable?: string[];
  /** A boot-override PATCH while the system is in POST (PoweringOn): refused with this status, or null (accepted). */
  bootPatchDuringPost: null | number;
  /** A power-on within this many seconds after a power-off is refused with 409 (0: never). */
  powerOnGuardSeconds: number;
  /** A reset to the state the system is already in (On when On, ForceOff when Off): "noop" (204) or "conflict" (409). */
  resetToSameState: "noop" | "conflict";
  /** Answer of a successful PATCH: 200 + the resource, 200 + a Success message, or 204. */
  patchResponse: "resource" | "message" | "empty";
  etag: "strong" | "weak";
  /** Processors and Memory collections served; when false the system still links them, and they answer 404 (their summaries are always in the system). */
  inventoryCollections: boolean;
  serialConsole: ConsoleSpec;
  graphicalConsole: ConsoleSpec;
  commandShell: ConsoleSpec;
  /** How long a Manager.Reset makes the BMC answer 503 (lab time); null: no Manager.Reset action. */
  managerResetSeconds: number | null;
  /**
   * The system's one emulated disk as Redfish sees it: a Storage collection under the system with
   * one Storage (one controller) holding one Drive. null: no Storage (the disk is only in the lab).
   */
  storage: null | StorageSpec;
  /**
   * A network adapter per system (under its chassis, `Chassis/<id>/NetworkAdapters/<adapterId>`)
   * with one NetworkDeviceFunction on the port of the system's first NIC (same MAC), whose
   * BootMode and iSCSIBoot settings can be PATCHed (see iscsi-boot.ts). Absent: no NetworkAdapters
   * at all (such a BMC cannot do iSCSI boot).
   */
  networkAdapters?: { adapterId: string; functionId: string; model: string };
}

export interface StorageSpec {
  storageId: string;
  driveId: string;
  controllerModel: string;
  protocol: "SATA" | "SAS" | "NVMe";
  /**
   * The Drive has the Drive.SecureErase action (it erases the emulated disk; refused with 409
   * unless the system is Off). Make it a task by listing "Drive.SecureErase" in `tasks.asyncActions`.
   */
  secureErase: boolean;
}

const generic: Flavor = {
  name: "generic",
  description: "DMTF-mockup-like BMC: sessions + Basic, VirtualMedia under the system, synchronous actions, Drive.SecureErase.",
  vendor: "Lab",
  product: "Lab Redfish BMC (generic)",
  manufacturer: "Lab Systems",
  model: (p) => (p === "small" ? "Lab Server S1" : "Lab Server L1"),
  managerModel: "Lab BMC 1000",
  firmwareVersion: "1.0.0-lab",
  biosVersion: "LAB.1.0.0",
  defaultUsername: "admin",
  managerId: "BMC",
  systemId: (b, s) => `lab-bmc${b}-sys${s}`,
  chassisId: (b, s) => `lab-bmc${b}-chassis${s}`,
  nicId: (_s, k) => `NIC${k}`,
  cpuId: (k) => `CPU${k}`,
  dimmId: (k) => `DIMM${k}`,
  managerCdId: (s, count) => (count === 1 ? "CD1" : `CD${s}`),
  systemCdId: "CD1",
  sessionId: (n) => `lab-session-${n}`,
  taskId: (n) => String(n),
  sessions: { limit: 64, timeoutSeconds: 1800, limitStatus: 503 },
  accounts: { mode: "collection", max: 32 },
  tasks: { asyncActions: [], seconds: 5, retryAfterSeconds: 1, monitor: "separate" },
  virtualMedia: "system",
  transferProtocols: ["HTTP", "HTTPS", "NFS", "CIFS"],
  insertWhenInserted: "conflict",
  ejectWhenEmpty: "noop",
  resetTypes: ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn", "PushPowerButton"],
  bootTargets: ["None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup", "UefiHttp", "RemoteDrive"],
  httpBootUri: true,
  bootEnabledAllowable: ["Disabled", "Once", "Continuous"],
  bootModeAllowable: ["UEFI", "Legacy"],
  bootPatchDuringPost: 409,
  powerOnGuardSeconds: 0,
  resetToSameState: "noop",
  patchResponse: "resource",
  etag: "strong",
  inventoryCollections: true,
  serialConsole: { ServiceEnabled: true, MaxConcurrentSessions: 1, ConnectTypesSupported: ["SSH", "IPMI"] },
  graphicalConsole: { ServiceEnabled: true, MaxConcurrentSessions: 2, ConnectTypesSupported: ["KVMIP"] },
  commandShell: { ServiceEnabled: true, MaxConcurrentSessions: 4, ConnectTypesSupported: ["SSH"] },
  managerResetSeconds: 10,
  storage: { storageId: "1", driveId: "Drive1", controllerModel: "Lab 12Gbs Integrated SATA", protocol: "SATA", secureErase: true },
  networkAdapters: { adapterId: "NetworkAdapter1", functionId: "NIC1-1", model: "Lab 25GbE 2-port" },
};

const idracLike: Flavor = {
  name: "idrac-like",
  description:
    "iDRAC-like BMC: user root, 16 sessions (400 when full), 300 s session timeout, VirtualMedia under the manager as tasks, 60 s power-on guard, fixed account slots, a drive without SecureErase.",
  vendor: "Lab",
  product: "Lab Integrated Remote Access Controller (iDRAC-like)",
  manufacturer: "Lab Systems",
  model: (p) => (p === "small" ? "Lab PowerServer R1" : "Lab PowerServer R2"),
  managerModel: "Lab iRAC 9",
  firmwareVersion: "7.00.00.00-lab",
  biosVersion: "2.19.1",
  defaultUsername: "root",
  managerId: "iDRAC.Embedded.1",
  systemId: (_b, s) => `System.Embedded.${s}`,
  chassisId: (_b, s) => `System.Embedded.${s}`,
  nicId: (_s, k) => `NIC.Integrated.1-${k}-1`,
  cpuId: (k) => `CPU.Socket.${k}`,
  dimmId: (k) => `DIMM.Socket.A${k}`,
  managerCdId: (s, count) => (count === 1 ? "CD" : `CD${s}`),
  systemCdId: "CD",
  sessionId: (n) => String(n),
  taskId: (n) => `JID_${String(n).padStart(12, "0")}`,
  sessions: { limit: 16, timeoutSeconds: 300, limitStatus: 400 },
  accounts: { mode: "slots", slots: 16 },
  tasks: { asyncActions: ["VirtualMedia.InsertMedia", "VirtualMedia.EjectMedia"], seconds: 3, monitor: "task-uri" },
  virtualMedia: "manager",
  transferProtocols: ["HTTP", "HTTPS", "NFS", "CIFS"],
  insertWhenInserted: "conflict",
  ejectWhenEmpty: "conflict",
  resetTypes: ["On", "ForceOff", "ForceRestart", "GracefulRestart", "GracefulShutdown", "PushPowerButton", "Nmi", "PowerCycle"],
  bootTargets: ["None", "Pxe", "Floppy", "Cd", "Hdd", "BiosSetup", "Utilities", "UefiTarget", "SDCard", "UefiHttp"],
  httpBootUri: false,
  bootEnabledAllowable: ["Once", "Continuous", "Disabled"],
  bootModeAllowable: undefined,
  bootPatchDuringPost: 400,
  powerOnGuardSeconds: 60,
  resetToSameState: "conflict",
  patchResponse: "message",
  etag: "weak",
  inventoryCollections: true,
  serialConsole: { ServiceEnabled: true, MaxConcurrentSessions: 1, ConnectTypesSupported: ["SSH", "IPMI"] },
  graphicalConsole: { ServiceEnabled: true, MaxConcurrentSessions: 6, ConnectTypesSupported: ["KVMIP"] },
  commandShell: { ServiceEnabled: true, MaxConcurrentSessions: 5, ConnectTypesSupported: ["SSH", "IPMI"] },
  managerResetSeconds: 30,
  storage: {
    storageId: "RAID.Integrated.1-1",
    driveId: "Disk.Bay.0:Enclosure.Internal.0-1:RAID.Integrated.1-1",
    controllerModel: "Lab PERC H755 Front",
    protocol: "SAS",
    secureErase: false,
  },
  // No RemoteDrive among its boot targets: iSCSI boot goes through the NIC's network boot (Pxe).
  networkAdapters: { adapterId: "NIC.Integrated.1", functionId: "NIC.Integrated.1-1-1", model: "Lab 10GbE 4P rNDC" },
};

const sushyLike: Flavor = {
  name: "sushy-like",
  description: "sushy-tools-like BMC (fake driver): Basic only, UUID system ids, no sessions, accounts, tasks, consoles, inventory collections or Storage.",
  vendor: "Lab",
  product: "Lab Redfish emulator (sushy-like)",
  manufacturer: "Lab Systems",
  model: () => "Lab Virtual Machine",
  managerModel: "Lab Virtual BMC",
  firmwareVersion: "1.0.0",
  biosVersion: "1.0.0",
  defaultUsername: "admin",
  managerId: "BMC",
  systemId: (_b, _s, uuid) => uuid,
  chassisId: (_b, _s, uuid) => `chassis-${uuid}`,
  nicId: (_s, _k, mac) => mac.replace(/:/g, "").toLowerCase(),
  cpuId: (k) => `CPU${k}`,
  dimmId: (k) => `DIMM${k}`,
  managerCdId: (s, count) => (count === 1 ? "Cd" : `Cd${s}`),
  systemCdId: "Cd",
  sessionId: (n) => String(n),
  taskId: (n) => String(n),
  sessions: null,
  accounts: null,
  tasks: null,
  virtualMedia: "system",
  transferProtocols: ["HTTP", "HTTPS"],
  insertWhenInserted: "replace",
  ejectWhenEmpty: "noop",
  resetTypes: ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"],
  bootTargets: ["Pxe", "Cd", "Hdd", "UefiHttp"],
  httpBootUri: false,
  bootEnabledAllowable: undefined,
  bootModeAllowable: undefined,
  bootPatchDuringPost: null,
  powerOnGuardSeconds: 0,
  resetToSameState: "noop",
  patchResponse: "empty",
  etag: "strong",
  inventoryCollections: false,
  serialConsole: { ServiceEnabled: false, MaxConcurrentSessions: 0, ConnectTypesSupported: [] },
  graphicalConsole: { ServiceEnabled: false, MaxConcurrentSessions: 0, ConnectTypesSupported: [] },
  commandShell: { ServiceEnabled: false, MaxConcurrentSessions: 0, ConnectTypesSupported: [] },
  managerResetSeconds: null,
  storage: null,
};

export const FLAVORS: Readonly<Record<FlavorName, Flavor>> = {
  generic,
  "idrac-like": idracLike,
  "sushy-like": sushyLike,
};

export function flavorByName(name: string): Flavor {
  const f = (FLAVORS as Record<string, Flavor | undefined>)[name];
  if (!f) throw new Error(`unknown BMC flavor "${name}"; use one of ${FLAVOR_NAMES.join(", ")}`);
  return f;
}

/** A flavor with some fields replaced (for tests: e.g. `{ ...flavor, powerOnGuardSeconds: 5 }`). */
export function customFlavor(base: FlavorName | Flavor, changes: Partial<Flavor>): Flavor {
  const b = typeof base === "string" ? flavorByName(base) : base;
  return { ...b, ...changes };
}
