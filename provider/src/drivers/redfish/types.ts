/**
 * Typed shapes of the Redfish resources the driver reads and writes (DMTF DSP0266 / DSP8010).
 *
 * Only the properties the driver uses are spelled out; every interface stays open to the rest
 * of the schema through optional members and `Oem`. Everything a BMC may omit is optional:
 * real services implement different subsets of each schema version.
 */

/** A navigation link: `{ "@odata.id": "/redfish/v1/..." }`. */
export interface ODataId {
  "@odata.id": string;
}

/** Properties every Redfish resource has (or may have). */
export interface Resource {
  "@odata.id": string;
  "@odata.type"?: string;
  "@odata.etag"?: string;
  Id?: string;
  Name?: string;
  Description?: string;
  Oem?: Record<string, unknown>;
}

/** A resource collection. Long collections are paged with `Members@odata.nextLink`. */
export interface Collection<M = ODataId> extends Resource {
  Members: M[];
  "Members@odata.count"?: number;
  "Members@odata.nextLink"?: string;
}

export interface Status {
  State?: string; // Enabled, Disabled, Absent, StandbyOffline, ...
  Health?: "OK" | "Warning" | "Critical" | (string & {});
  HealthRollup?: "OK" | "Warning" | "Critical" | (string & {});
}

/** `GET /redfish/v1/` — readable without authentication. */
export interface ServiceRoot extends Resource {
  RedfishVersion?: string;
  UUID?: string;
  Vendor?: string;
  Product?: string;
  Systems?: ODataId;
  Chassis?: ODataId;
  Managers?: ODataId;
  SessionService?: ODataId;
  AccountService?: ODataId;
  UpdateService?: ODataId;
  TaskService?: ODataId;
  Tasks?: ODataId;
  Links?: {
    /** Where sessions are created (the spec fixes it as /redfish/v1/SessionService/Sessions). */
    Sessions?: ODataId;
  };
  ProtocolFeaturesSupported?: Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------
// Actions

/**
 * One action of a resource, e.g. `Actions["#ComputerSystem.Reset"]`. The allowed values of a
 * parameter are either inline (`<Parameter>@Redfish.AllowableValues`) or described by a separate
 * ActionInfo resource linked with `@Redfish.ActionInfo`.
 */
export interface ActionTarget {
  target: string;
  title?: string;
  "@Redfish.ActionInfo"?: string;
  [allowable: `${string}@Redfish.AllowableValues`]: string[] | undefined;
}

export interface ResetAction extends ActionTarget {
  "ResetType@Redfish.AllowableValues"?: string[];
}

/** The ActionInfo resource a `@Redfish.ActionInfo` annotation points to. */
export interface ActionInfo extends Resource {
  Parameters?: ActionInfoParameter[];
}

export interface ActionInfoParameter {
  Name: string;
  Required?: boolean;
  DataType?: string; // String, Number, Boolean, Object, ...
  AllowableValues?: string[];
  AllowableNumbers?: string[];
  AllowablePattern?: string;
}

/** `ResetType` values defined by the Resource schema (the set a BMC may allow a subset of). */
export const RESET_TYPES = [
  "On",
  "ForceOff",
  "GracefulShutdown",
  "GracefulRestart",
  "ForceRestart",
  "Nmi",
  "ForceOn",
  "PushPowerButton",
  "PowerCycle",
  "Suspend",
  "Pause",
  "Resume",
  "FullPowerCycle",
] as const;
export type ResetType = (typeof RESET_TYPES)[number];

// ---------------------------------------------------------------------------------------------
// ComputerSystem

export type PowerState = "On" | "Off" | "PoweringOn" | "PoweringOff" | "Paused" | (string & {});

/** `BootSourceOverrideTarget` values defined by the ComputerSystem schema. */
export const BOOT_SOURCES = [
  "None",
  "Pxe",
  "Floppy",
  "Cd",
  "Usb",
  "Hdd",
  "BiosSetup",
  "Utilities",
  "Diags",
  "UefiShell",
  "UefiTarget",
  "SDCard",
  "UefiHttp",
  "RemoteDrive",
  "UefiBootNext",
  "Recovery",
] as const;
export type BootSource = (typeof BOOT_SOURCES)[number];

export const BOOT_OVERRIDE_ENABLED = ["Disabled", "Once", "Continuous"] as const;
export type BootSourceOverrideEnabled = (typeof BOOT_OVERRIDE_ENABLED)[number];

export const BOOT_OVERRIDE_MODES = ["UEFI", "Legacy"] as const;
export type BootSourceOverrideMode = (typeof BOOT_OVERRIDE_MODES)[number];

export interface Boot {
  BootSourceOverrideEnabled?: BootSourceOverrideEnabled | (string & {});
  "BootSourceOverrideEnabled@Redfish.AllowableValues"?: string[];
  BootSourceOverrideTarget?: BootSource | (string & {});
  "BootSourceOverrideTarget@Redfish.AllowableValues"?: string[];
  BootSourceOverrideMode?: BootSourceOverrideMode | (string & {});
  "BootSourceOverrideMode@Redfish.AllowableValues"?: string[];
  UefiTargetBootSourceOverride?: string;
  "UefiTargetBootSourceOverride@Redfish.AllowableValues"?: string[];
  BootNext?: string;
  BootOrder?: string[];
  HttpBootUri?: string;
}

export interface ProcessorSummary {
  Count?: number;
  CoreCount?: number;
  LogicalProcessorCount?: number;
  Model?: string;
  Status?: Status;
}

export interface MemorySummary {
  TotalSystemMemoryGiB?: number;
  TotalSystemPersistentMemoryGiB?: number;
  MemoryMirroring?: string;
  Status?: Status;
}

export interface ComputerSystemActions {
  "#ComputerSystem.Reset"?: ResetAction;
  Oem?: Record<string, unknown>;
}

export interface ComputerSystem extends Resource {
  Id: string;
  SystemType?: string; // Physical, Virtual, ...
  AssetTag?: string;
  Manufacturer?: string;
  Model?: string;
  SubModel?: string;
  SKU?: string;
  SerialNumber?: string;
  PartNumber?: string;
  UUID?: string;
  HostName?: string;
  BiosVersion?: string;
  Status?: Status;
  IndicatorLED?: string;
  LocationIndicatorActive?: boolean;
  PowerState?: PowerState;
  Boot?: Boot;
  ProcessorSummary?: ProcessorSummary;
  MemorySummary?: MemorySummary;
  Processors?: ODataId;
  Memory?: ODataId;
  EthernetInterfaces?: ODataId;
  /** The system's network adapters as it sees them (NetworkInterface members link their device functions). */
  NetworkInterfaces?: ODataId;
  Bios?: ODataId;
  SecureBoot?: ODataId;
  SimpleStorage?: ODataId;
  Storage?: ODataId;
  VirtualMedia?: ODataId;
  LogServices?: ODataId;
  Links?: {
    Chassis?: ODataId[];
    ManagedBy?: ODataId[];
  };
  Actions?: ComputerSystemActions;
}

// ---------------------------------------------------------------------------------------------
// Storage (DSP0268 Storage and Drive schemas)

export interface Storage extends Resource {
  Drives?: ODataId[];
  "Drives@odata.count"?: number;
}

export interface Drive extends Resource {
  CapacityBytes?: number;
  MediaType?: string; // HDD, SSD, SMR
  Protocol?: string;
  Status?: Status;
  Actions?: {
    "#Drive.SecureErase"?: { target: string; "SanitizationType@Redfish.AllowableValues"?: string[] };
    "#Drive.Reset"?: { target: string };
  };
}

// ---------------------------------------------------------------------------------------------
// Members of a system

export interface EthernetInterface extends Resource {
  Id: string;
  Status?: Status;
  InterfaceEnabled?: boolean;
  LinkStatus?: "LinkUp" | "NoLink" | "LinkDown" | (string & {});
  MACAddress?: string;
  PermanentMACAddress?: string;
  SpeedMbps?: number;
  MTUSize?: number;
  HostName?: string;
  FQDN?: string;
  VLAN?: { VLANEnable?: boolean; VLANId?: number };
  Links?: {
    /** Set on the host-to-BMC interface (Redfish Host Interface), which is not a data NIC. */
    HostInterface?: ODataId;
    Chassis?: ODataId;
  };
}

export interface Processor extends Resource {
  Id: string;
  ProcessorType?: "CPU" | "GPU" | "FPGA" | "DSP" | "Accelerator" | "Core" | "Thread" | (string & {});
  Manufacturer?: string;
  Model?: string;
  TotalCores?: number;
  TotalThreads?: number;
  MaxSpeedMHz?: number;
  Status?: Status;
}

export interface Memory extends Resource {
  Id: string;
  CapacityMiB?: number;
  MemoryDeviceType?: string;
  MemoryType?: string;
  Status?: Status;
}

// ---------------------------------------------------------------------------------------------
// Sessions

export interface SessionService extends Resource {
  ServiceEnabled?: boolean;
  SessionTimeout?: number; // seconds
  Sessions?: ODataId;
  Status?: Status;
}

/** Body of `POST .../Sessions`; the service answers with a Session and an `X-Auth-Token` header. */
export interface SessionCreateRequest {
  UserName: string;
  Password: string;
}

export interface Session extends Resource {
  UserName?: string;
  CreatedTime?: string;
}

// ---------------------------------------------------------------------------------------------
// Messages and errors

/** One entry of `@Message.ExtendedInfo` (Message schema). */
export interface RedfishMessage {
  MessageId: string;
  Message?: string;
  MessageArgs?: string[];
  Severity?: string; // deprecated in favour of MessageSeverity
  MessageSeverity?: "OK" | "Warning" | "Critical" | (string & {});
  Resolution?: string;
  RelatedProperties?: string[];
}

/** The body of a Redfish error response (any 4xx/5xx). */
export interface RedfishErrorBody {
  error: {
    code: string;
    message: string;
    "@Message.ExtendedInfo"?: RedfishMessage[];
  };
}

/** A Redfish Task (TaskService), as a task monitor reports it while or after a long action runs. */
export interface Task extends Resource {
  TaskState?: "New" | "Starting" | "Running" | "Suspended" | "Interrupted" | "Pending" | "Stopping" | "Completed" | "Killed" | "Exception" | "Service" | "Cancelling" | "Cancelled";
  TaskStatus?: "OK" | "Warning" | "Critical";
  PercentComplete?: number;
  TaskMonitor?: string;
  Messages?: Array<{ MessageId?: string; Message?: string }>;
}

/** VirtualMedia: a virtual CD/DVD/USB drive a BMC attaches to its system from an image URL. */
export interface VirtualMedia extends Resource {
  MediaTypes?: string[];
  Image?: string | null;
  ImageName?: string;
  Inserted?: boolean;
  WriteProtected?: boolean;
  ConnectedVia?: string;
  Actions?: {
    "#VirtualMedia.InsertMedia"?: ActionTarget;
    "#VirtualMedia.EjectMedia"?: ActionTarget;
  };
}

export interface Manager extends Resource {
  VirtualMedia?: ODataId;
}

// ---------------------------------------------------------------------------------------------
// Network adapters (DSP8010 NetworkAdapter, NetworkDeviceFunction, NetworkInterface schemas)

/** `NetworkDeviceFunction.BootMode` values defined by the schema. */
export const NDF_BOOT_MODES = ["Disabled", "PXE", "iSCSI", "FibreChannel", "FibreChannelOverEthernet"] as const;

/** `iSCSIBoot.AuthenticationMethod` values defined by the schema. */
export const ISCSI_AUTH_METHODS = ["None", "CHAP", "MutualCHAP"] as const;

/**
 * iSCSI boot settings of a network device function (the firmware's iSCSI initiator). The CHAP
 * secrets are write-only: a service answers null for them on GET.
 */
export interface ISCSIBoot {
  IPAddressType?: "IPv4" | "IPv6" | (string & {}) | null;
  InitiatorIPAddress?: string | null;
  InitiatorName?: string | null;
  InitiatorDefaultGateway?: string | null;
  InitiatorNetmask?: string | null;
  /** The target's name, address, port and LUN come from DHCP (option 17) instead of the fields below. */
  TargetInfoViaDHCP?: boolean | null;
  PrimaryTargetName?: string | null;
  PrimaryTargetIPAddress?: string | null;
  PrimaryTargetTCPPort?: number | null;
  PrimaryLUN?: number | null;
  PrimaryVLANEnable?: boolean | null;
  PrimaryVLANId?: number | null;
  /** The initiator's own address, netmask and DNS come from DHCP. */
  IPMaskDNSViaDHCP?: boolean | null;
  AuthenticationMethod?: "None" | "CHAP" | "MutualCHAP" | (string & {}) | null;
  CHAPUsername?: string | null;
  /** Write-only (null on GET). */
  CHAPSecret?: string | null;
  MutualCHAPUsername?: string | null;
  MutualCHAPSecret?: string | null;
}

export interface NetworkDeviceFunction extends Resource {
  Id: string;
  Status?: Status;
  NetDevFuncType?: string;
  NetDevFuncCapabilities?: string[];
  DeviceEnabled?: boolean;
  Ethernet?: { MACAddress?: string | null; PermanentMACAddress?: string | null; MTUSize?: number | null };
  BootMode?: (typeof NDF_BOOT_MODES)[number] | (string & {}) | null;
  "BootMode@Redfish.AllowableValues"?: string[];
  iSCSIBoot?: ISCSIBoot | null;
  Links?: { EthernetInterface?: ODataId; PhysicalPortAssignment?: ODataId; Endpoints?: ODataId[] };
}

export interface NetworkAdapter extends Resource {
  Manufacturer?: string;
  Model?: string;
  NetworkDeviceFunctions?: ODataId;
  Ports?: ODataId;
  NetworkPorts?: ODataId;
}

/** A system's view of an adapter (ComputerSystem.NetworkInterfaces members). */
export interface NetworkInterface extends Resource {
  NetworkDeviceFunctions?: ODataId;
  Links?: { NetworkAdapter?: ODataId };
}

export interface Chassis extends Resource {
  NetworkAdapters?: ODataId;
  Links?: { ComputerSystems?: ODataId[] };
}
