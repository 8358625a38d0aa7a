/**
 * The BMC driver kind: what a resource needs from a machine's management controller, whatever the
 * protocol (Redfish today; IPMI and vendor APIs compose the same interface later).
 * Every mutating call is idempotent: asking for a state that already holds is a success with
 * `changed: false`.
 */

export type PowerState = "on" | "off" | "powering-on" | "powering-off" | "paused" | "unknown";
export type BootDevice = "none" | "pxe" | "disk" | "cd" | "bios" | "http" | "usb";
export type BootMode = "uefi" | "legacy";
export type VirtualDrive = "cd" | "removable";

export interface BmcConnection {
  /** `https://host[:port]`; the protocol's path (e.g. /redfish/v1) is the driver's business. */
  address: string;
  username?: string;
  password?: string;
  verifyTls: boolean;
  /** PEM text. */
  caBundle?: string;
  requestTimeoutMs: number;
  maxConcurrency: number;
  /** Requests in flight to all BMCs together (process-wide). */
  globalMaxConcurrency?: number;
  signal?: AbortSignal;
  /** Progress a user should see while an operation waits (retries, back-off, task polling). */
  onProgress?: (message: string) => void;
  /** Called once per request the driver makes (observability, request counting). */
  onRequest?: (e: { method: string; path: string; status: number | undefined; ms: number }) => void;
}

export interface SystemFacts {
  /** The protocol's own id of the system (Redfish: the last segment of its URI). */
  systemId: string;
  /** The system's path at the BMC (Redfish: its @odata.id); with the address it names the machine. */
  systemUri: string;
  manufacturer?: string;
  model?: string;
  serialNumber?: string;
  uuid?: string;
  cpuCount?: number;
  cpuModel?: string;
  memoryGiB?: number;
  macAddresses: string[];
  powerState: PowerState;
  bootDevice: BootDevice | string;
  /** Whether the boot override persists across boots. */
  bootPersistent: boolean;
  bootMode?: BootMode | string;
  allowedBootDevices: string[];
}

export interface BmcDriver {
  /** Ids of the systems this BMC manages. */
  listSystems(): Promise<string[]>;
  /** The facts of one system; throws a `not-found` BaremetalError when it is gone. */
  facts(systemId: string): Promise<SystemFacts>;
  setPower(systemId: string, desired: "on" | "off"): Promise<{ changed: boolean }>;
  /**
   * Sets the boot override: persistent by default, or for the next boot only (`once`). With
   * device `http`, `httpBootUri` is the URL the firmware boots (refused where the BMC cannot).
   */
  setBoot(systemId: string, device: BootDevice, mode?: BootMode, once?: boolean, httpBootUri?: string): Promise<{ changed: boolean }>;
  /** Restarts the machine (hard), or powers it on when it is off. */
  powerCycle(systemId: string): Promise<void>;
  /**
   * Inserts an image (by URL) into one of the system's virtual drives: the CD (default), or a
   * removable one (a USB stick, else a floppy: where config drives go while the CD carries the
   * installer); idempotent. Throws a `validation` error when the BMC has no such drive.
   */
  insertVirtualMedia(systemId: string, imageUrl: string, drive?: VirtualDrive): Promise<{ changed: boolean }>;
  /** Ejects one of the system's virtual drives (the CD by default); idempotent. */
  ejectVirtualMedia(systemId: string, drive?: VirtualDrive): Promise<{ changed: boolean }>;
  /**
   * Erases the system's disks where the BMC can (Redfish Drive.SecureErase); the machine must be
   * off. `unsupported` lists drives the BMC shows but cannot erase; a BMC that shows no drives
   * gives two empty lists.
   */
  eraseDisks(systemId: string): Promise<{ erased: string[]; unsupported: string[] }>;
  /** Ends sessions; idempotent. */
  close(): Promise<void>;
}
