/**
 * The embedded lab's Redfish BMC emulator (tier 0: in-process, no root, loopback only).
 *
 * One `LabBmc` is one BMC: an HTTP(S) server on 127.0.0.1 serving Redfish 1.x resources shaped
 * like the DMTF public mockup (ServiceRoot, Systems with EthernetInterfaces/Processors/Memory,
 * one Manager, Chassis, VirtualMedia, SessionService, AccountService, TaskService) for `systems`
 * machines, with in-memory state that clients change: power (ComputerSystem.Reset), boot override
 * (PATCH), virtual media (InsertMedia/EjectMedia), sessions, accounts, tasks.
 *
 * Behaviour real BMCs show and clients must survive, switched by the flavor (flavors.ts) and the
 * options: power transitions that take `bootSeconds` (PoweringOn, then On), boot changes refused
 * during POST, a power-on guard after a power-off, session limits and idle timeouts, tasks with
 * task monitors, ETag/If-Match (412), `@Redfish.AllowableValues` enforced, Redfish error bodies,
 * 401/403/404/405, latency per request, and injected faults (faults.ts).
 *
 * Time comes from an injectable clock (clock.ts) and is evaluated lazily: tests advance a
 * ManualClock instead of sleeping.
 *
 * Vendor differences (ids, limits, status codes, where VirtualMedia lives, tasks, ETag style) are
 * data: see flavors.ts. A flavor's Processors/Memory collections may be absent (404 while linked).
 *
 * What the machine does when it boots (lab state, not Redfish: a real BMC does not know it):
 * every system has one emulated disk (`"empty"` or `{image, checksum?, writtenAt}`) and, while
 * On, runs something (`running`): `"nothing"`, `"pxe"`, `"installer:<image>"` or `"os:<image>"`.
 * - Boot: when a power-on (or restart) ends, after `bootSeconds`, the boot override decides
 *   (Once is used up by this boot, Continuous stays): Cd with media inserted runs
 *   `installer:<the media's image>`; Hdd runs `os:<disk image>` if the disk is written, else
 *   `nothing`; Pxe and UefiHttp run `pxe`; any other target, and Cd without media, `nothing`.
 *   Without an override (Disabled, or target None) the machine boots its disk: `os:<image>` if
 *   written, else `nothing` (the default boot order has no CD or network fallback).
 * - The installer: `installSeconds` (default 5) after it started it writes its image to the disk
 *   (`writtenAt` = that instant; `checksum` = `sha256:<hex>` or `sha512:<hex>` when the image URL
 *   declares one in its fragment, `...iso#sha256=<64 hex>`) and then powers the machine off by
 *   itself (PowerState Off at the same instant; lastOffAt, so a power-on guard applies), the
 *   convention deploy ramdisks use to signal completion. It fails (no write, power off by itself,
 *   `lastInstallError` set) when the fragment's checksum is malformed, when the media is ejected
 *   or replaced meanwhile, and, with `fetchImages`, when its http(s) URL on loopback does not
 *   answer 200 or its body does not match the declared checksum. A power-off or restart during
 *   the install interrupts it (no write, `lastInstallError` set, no extra power change).
 * - Erase: `eraseDisk()` (and DELETE /lab/systems/<id>/disk) at any time; over Redfish, where the
 *   flavor has it, Drive.SecureErase on the system's one Drive, refused (409) unless the system is Off.
 * - Disk bytes (`diskDir`): each system's disk is also a file of `diskBytes` (default 64 MiB,
 *   sparse) in that directory (`diskFile` in the view). The installer then always fetches its
 *   http(s) image on loopback and writes its bytes at offset 0 (the rest of the disk zero); an
 *   erase zeroes the file.
 * - Backup images (OUR EMULATOR playing the backup agent a real machine would boot; see
 *   backup-agent.ts): when the CD a system boots is an ISO holding `baremetal-backup/job.json`,
 *   the emulator runs the job instead of an installer: it reads the system's disk file and streams
 *   it to the backup target the job names (real S3 or a directory, with the job's credentials),
 *   writes the manifest last, and then powers the machine off by itself (`running` is
 *   `backup:<image>` meanwhile; side effects `backup-started`, then `backup-written` or
 *   `backup-failed`; `lastBackup` in the view). Nothing is written to the disk. A power change or
 *   an eject stops it (no manifest). Needs `diskDir`.
 *
 * Lab-only admin endpoint (same port, outside /redfish, no authentication, loopback only):
 *   GET    /lab                 this BMC: url, flavor, systems, pid, lab id
 *   GET    /lab/state           power, boot, media of every system; sessions; tasks
 *   GET    /lab/faults          the fault rules;  POST one rule (or an array);  DELETE all
 *   DELETE /lab/faults/<id>     one rule
 *   GET    /lab/log[?since=N]   request log (seq > N), side effects, counters;  DELETE clears it
 *   POST   /lab/clock           {"advanceSeconds": S} moves the lab's time forward
 *   POST   /lab/latency         {"ms": L} sets the latency of every Redfish request
 *   GET    /lab/systems/<id>    one system as the TS API sees it (id, or 1-based index)
 *   GET    /lab/systems/<id>/disk   the disk;  PUT {"image": URL, "checksum"?: "sha256:<hex>"} writes it;  DELETE erases it
 * It is for tests and demos; a real BMC has nothing like it.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { isBackupImage, runLabBackupAgent } from "./backup-agent";
import { Clock, isoTime, SystemClock } from "./clock";
import {
  FaultAction,
  faultRuleFromJson,
  FaultRule,
  FaultSet,
  LabRequest,
  LabStats,
  redactPasswords,
  SideEffect,
  SideEffectKind,
} from "./faults";
import { labDiskSerial, labMac, labSerial, labUuid, MAX_INDEX, memoryGiB, profileOf, HardwareProfile, UUID_KIND } from "./fixtures";
import { Flavor, FlavorName, flavorByName, StorageSpec } from "./flavors";
import { errorBody, fail, Json, message, messagesBody, RedfishError, Reply } from "./messages";
import { bootPlan, describeFunction, functionChanges, iscsiLogin, type LabDeviceFunction, type LabIscsiBoot, NDF_BOOT_MODES, newDeviceFunction, renderIscsi } from "./iscsi-boot";
import { HOTKEY, LabSerialConsole } from "./serial-console";

export type { Reply } from "./messages";

const ROOT = "/redfish/v1";
const SESSIONS = `${ROOT}/SessionService/Sessions`;
const MAX_BODY = 1 << 20;
const LOG_LIMIT = 20_000;
export const DEFAULT_PASSWORD = "lab-password";

export type PowerState = "On" | "Off" | "PoweringOn" | "PoweringOff";
type Method = "GET" | "HEAD" | "PATCH" | "POST" | "DELETE" | "PUT";
type Privilege = "Login" | "ConfigureManager" | "ConfigureUsers" | "ConfigureSelf" | "ConfigureComponents";

const ROLE_PRIVILEGES: Record<string, Privilege[]> = {
  Administrator: ["Login", "ConfigureManager", "ConfigureUsers", "ConfigureSelf", "ConfigureComponents"],
  Operator: ["Login", "ConfigureSelf", "ConfigureComponents"],
  ReadOnly: ["Login", "ConfigureSelf"],
};
const ROLE_DESCRIPTIONS: Record<string, string> = {
  Administrator: "Administrator User Role",
  Operator: "Operator User Role",
  ReadOnly: "ReadOnly User Role",
};

export interface LabAccountSeed {
  userName: string;
  password: string;
  roleId: "Administrator" | "Operator" | "ReadOnly";
}

export interface LabBmcOptions {
  /** 1-based index of this BMC in its lab; ids, UUIDs, serials and MACs derive from it (default 1). */
  index?: number;
  /** Number of systems (machines) this BMC manages (default 1). */
  systems?: number;
  flavor?: FlavorName | Flavor;
  /** Administrator account (default: the flavor's default user, e.g. admin or root). */
  username?: string;
  password?: string;
  /** More accounts (e.g. an Operator and a ReadOnly user). */
  accounts?: LabAccountSeed[];
  /** 127.0.0.1 (default) or ::1; nothing else: the lab stays on loopback. */
  host?: string;
  /** TCP port (default 0: any free port). */
  port?: number;
  clock?: Clock;
  /** Real-time delay before each Redfish request is answered (default 0). */
  latencyMs?: number;
  /** Lab seconds from a power-on (or restart) to PowerState On; the system is in POST meanwhile (default 2). */
  bootSeconds?: number;
  /** Lab seconds a GracefulShutdown takes (default 1). */
  shutdownSeconds?: number;
  /** Lab seconds the installer of a deploy image (booted from the virtual CD) runs before it writes the disk and powers off (default 5). */
  installSeconds?: number;
  /**
   * The installer fetches its image when the URL is http(s) on loopback (127.0.0.0/8, localhost,
   * ::1): an answer other than 200, or a body whose digest differs from the URL's declared
   * checksum, fails the install (default false: images are never fetched). The image server's
   * TLS certificate is not verified.
   */
  fetchImages?: boolean;
  /** Power state of every system at start (default Off). */
  powerState?: "On" | "Off";
  /** A directory holding one disk file per system (see "Disk bytes" above); none by default (disks are labels only). */
  diskDir?: string;
  /** Size of each disk file (default 64 MiB). */
  diskBytes?: number;
  /** Overrides of the flavor's values. */
  powerOnGuardSeconds?: number;
  sessionLimit?: number;
  sessionTimeoutSeconds?: number;
  taskSeconds?: number;
  /** Serve HTTPS with this key and certificate (PEM). */
  tls?: { key: string; cert: string };
  /** Serve the /lab admin endpoint (default true). */
  admin?: boolean;
  /** Shown by GET /lab (the lab runner sets it, with its pid, so `lab stop` can check whom it stops). */
  labId?: string;
  /**
   * Run the serial console (serial-console.ts): an SSH server on the BMC's host, on its own port
   * (`{ port }`, or true: any free port). Default false here (a bare BMC's Redfish shapes stay
   * those of the mockup); startLab turns it on. Flavors whose SerialConsole lacks SSH have none.
   */
  serialConsole?: boolean | { port: number };
}

interface MediaState {
  id: string;
  uri: string;
  image: string | null;
  inserted: boolean;
  writeProtected: boolean;
  transferProtocolType: string | null;
  userName: string | null;
  /** The id of a task that is inserting or ejecting. */
  busyTask?: string;
}

/** The emulated disk of a system: empty, or the image a deploy wrote (lab time in ms). */
export type LabDisk = "empty" | { image: string; checksum?: string; writtenAt: number };
/** What a system runs while On (null while it is not On). */
export type LabRunning = "nothing" | "pxe" | `installer:${string}` | `os:${string}` | `backup:${string}`;

/** The outcome of the last backup image a system booted (our emulator's agent; lab-only). */
export type LabBackupRun = { state: "written"; backupId: string; prefix: string; bytesRead: number; bytesStored: number; chunksStored: number; chunksReused: number; at: number } | { state: "failed"; error: string; at: number };

interface InstallState {
  image: string;
  /** Booted from the virtual CD (the install needs the medium to stay), else from HttpBootUri (in RAM). */
  fromMedia: boolean;
  checksum?: string;
  startedAt: number;
  endsAt: number;
  /** Known at the start (malformed checksum) or from the image fetch: the install will fail. */
  error?: string;
  /** The image fetch (fetchImages): the install cannot end while it is pending. */
  fetch?: { state: "pending" } | { state: "done"; at: number };
  /** The image's bytes (diskDir): written to the disk file when the install ends. */
  body?: Buffer;
  /** The image is a backup image: our emulator's agent runs (and the fetch stays pending until it ends). */
  backup?: { outcome?: LabBackupRun };
  /** Stops the image fetch and the backup agent (power change, eject). */
  abort?: AbortController;
}

interface SystemState {
  index: number;
  id: string;
  uri: string;
  uuid: string;
  name: string;
  serial: string;
  profile: HardwareProfile;
  chassisId: string;
  power: PowerState;
  transitionEndsAt?: number;
  lastOffAt?: number;
  lastResetAt?: number;
  boot: { target: string; enabled: string; mode: string; httpUri?: string | null };
  assetTag: string;
  nics: Array<{ id: string; mac: string }>;
  media: MediaState;
  disk: LabDisk;
  running: LabRunning | null;
  install?: InstallState;
  lastInstallError: string | null;
  /** The id of a task that is erasing the drive. */
  eraseTask?: string;
  /** The network device function (flavors with networkAdapters). */
  ndf?: LabDeviceFunction;
  /** Outcome of the last boot from the function over iSCSI (our emulator's login; lab-only). */
  iscsiBoot: LabIscsiBoot | null;
  /** Counts boots, so that a login that ends after the next power change does not count. */
  bootSeq: number;
  /** The disk's bytes (diskDir). */
  diskFile?: string;
  lastBackup: LabBackupRun | null;
}

interface Account {
  id: string;
  userName: string;
  password: string;
  roleId: string;
  enabled: boolean;
  locked: boolean;
  /** ms since the epoch; null: never. */
  expiresAt: number | null;
}

interface Session {
  id: string;
  token: string;
  accountId: string;
  userName: string;
  createdAt: number;
  lastUsedAt: number;
}

interface Task {
  id: string;
  name: string;
  state: "Running" | "Completed" | "Cancelled" | "Exception";
  startedAt: number;
  endsAt: number;
  endedAt?: number;
  target: string;
  apply: (at: number) => Reply;
  result?: Reply;
}

interface AuthResult {
  kind: "session" | "basic" | "none" | "bad";
  account?: Account;
  session?: Session;
}

interface Ctx {
  method: Method;
  path: string;
  body: unknown;
  hasBody: boolean;
  ifMatch?: string;
  auth: AuthResult;
  entry: LabRequest;
  slowTaskSeconds: number;
  sessionLimitFault: boolean;
  /** A reset-after-apply fault: carry the request out, then drop the connection instead of answering. */
  dropAnswer?: boolean;
}

/** What a URI is: its GET rendering and the other methods it allows. */
interface Node {
  get?: () => Json;
  patch?: (ctx: Ctx) => Reply;
  post?: (ctx: Ctx) => Reply;
  delete?: (ctx: Ctx) => Reply;
  /** Methods answered without credentials. */
  public?: Method[];
  /** Privilege per method (default: Login for GET/HEAD, ConfigureComponents otherwise). */
  privilege?: Partial<Record<Method, Privilege | ((ctx: Ctx) => Privilege)>>;
  /** A GET whose answer is not simply the resource (task monitors). */
  getReply?: (ctx: Ctx) => Reply;
}

/** A system as tests see it (a copy; settled to the clock's now). */
export interface LabSystemView {
  index: number;
  id: string;
  uri: string;
  uuid: string;
  name: string;
  serialNumber: string;
  sku: string;
  profile: HardwareProfile["name"];
  resourceClass: string;
  cpuCount: number;
  cpuModel: string;
  memoryGiB: number;
  powerState: PowerState;
  boot: { target: string; enabled: string; mode: string; httpUri?: string | null };
  macAddresses: string[];
  virtualMedia: { uri: string; image: string | null; inserted: boolean; writeProtected: boolean };
  /** The emulated disk (not in Redfish). */
  disk: LabDisk;
  /** What the machine runs; null unless PowerState is On (or PoweringOff: what is shutting down). */
  running: LabRunning | null;
  /** The installer at work (lab ms), or null. */
  install: { image: string; startedAt: number; endsAt: number } | null;
  /** Why the last install wrote nothing; null after a successful one (and before any). */
  lastInstallError: string | null;
  /** The Redfish Drive of the disk (flavors with Storage), and its SecureErase target where offered. */
  driveUri: string | null;
  secureEraseTarget: string | null;
  /** The network device function's settings (no secrets: chapSecretSet says whether one is set); null without networkAdapters. */
  networkDeviceFunction: Json | null;
  /**
   * The last boot from the function over iSCSI: OUR EMULATOR logs in to the configured target
   * with libiscsi (a real BMC leaves that to the machine's firmware). null: no such boot yet.
   */
  iscsiBoot: LabIscsiBoot | null;
  /** The file holding the disk's bytes (diskDir), or null. */
  diskFile: string | null;
  /** The last backup image this machine ran (OUR EMULATOR's agent), or null. */
  lastBackup: LabBackupRun | null;
}

export interface LabBmcInfo {
  index: number;
  flavor: FlavorName;
  url: string;
  redfish: string;
  managerId: string;
  managerUri: string;
  username: string;
  systems: Array<{
    id: string;
    uri: string;
    uuid: string;
    name: string;
    serialNumber: string;
    macAddresses: string[];
    virtualMediaUri: string;
    resourceClass: string;
  }>;
  /** The serial console (SSH; select a system with `console <systemId>`), or null. */
  serialConsole: { host: string; port: number; url: string } | null;
}

export interface FaultMatch {
  method?: string;
  path?: string | RegExp;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function link(uri: string): { "@odata.id": string } {
  return { "@odata.id": uri };
}

function collection(type: string, uri: string, name: string, members: string[]): Json {
  return {
    "@odata.type": `#${type}.${type}`,
    "@odata.id": uri,
    Name: name,
    "Members@odata.count": members.length,
    Members: members.map(link),
  };
}

/** The file name of an image URL (without query or fragment: `#sha256=...` is not part of it). */
function imageName(image: string): string {
  const last = image.replace(/[?#].*$/s, "").split("/").pop() ?? "";
  try {
    return decodeURIComponent(last);
  } catch {
    return last;
  }
}

function stableJson(v: unknown): string {
  return JSON.stringify(v);
}

const POWER_ON_TYPES = new Set(["On", "ForceOn"]);
const SANITIZATION_TYPES = ["BlockErase", "CryptographicErase", "Overwrite"];

function copyDisk(d: LabDisk): LabDisk {
  return d === "empty" ? d : { ...d };
}

/**
 * The checksum an image URL declares in its fragment: `#sha256=<64 hex>` or `#sha512=<128 hex>`
 * (other fragment parameters, `&`-separated, are ignored). Returned as `sha256:<lower-case hex>`.
 */
export function declaredChecksum(image: string): { checksum?: string; error?: string } {
  const i = image.indexOf("#");
  if (i < 0) return {};
  const params = new URLSearchParams(image.slice(i + 1));
  for (const [algo, hexLength] of [["sha256", 64], ["sha512", 128]] as const) {
    const v = params.get(algo);
    if (v === null) continue;
    if (v.length !== hexLength || !/^[0-9a-fA-F]+$/.test(v)) return { error: `the image URL declares a malformed ${algo} checksum (want ${hexLength} hex digits)` };
    return { checksum: `${algo}:${v.toLowerCase()}` };
  }
  return {};
}

function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** GET of an image (the installer's download): undefined when it answered 200 (and matched `checksum`), else why not. */
function fetchImage(url: URL, checksum: string | undefined, signal: AbortSignal, keepBytes = 0): Promise<{ failure?: string; body?: Buffer }> {
  const u = new URL(url.href);
  u.hash = "";
  const where = `GET ${u.href}`;
  return new Promise((resolve) => {
    const onAnswer = (res: http.IncomingMessage): void => {
      if (res.statusCode !== 200) {
        res.resume();
        resolve({ failure: `${where} answered ${res.statusCode} (want 200)` });
        return;
      }
      const [algo, want] = checksum ? checksum.split(":") : [];
      const hash = algo ? createHash(algo) : undefined;
      // With keepBytes (disk files), the body is kept: it is what the installer writes, or a backup image.
      const parts: Buffer[] = [];
      let size = 0;
      res.on("data", (chunk: Buffer) => {
        hash?.update(chunk);
        size += chunk.length;
        if (keepBytes && size <= keepBytes) parts.push(chunk);
      });
      res.on("error", (e) => resolve({ failure: `${where} failed while reading: ${e.message}` }));
      res.on("end", () => {
        const got = hash?.digest("hex");
        if (got !== undefined && got !== want) return resolve({ failure: `the image's ${algo} is ${got}, the URL declares ${want}` });
        if (keepBytes && size > keepBytes) return resolve({ failure: `the image (${size} bytes) is larger than the disk (${keepBytes} bytes)` });
        resolve(keepBytes ? { body: Buffer.concat(parts) } : {});
      });
    };
    const opts = { agent: false as const, timeout: 30_000, signal };
    const req = u.protocol === "https:" ? https.get(u, { ...opts, rejectUnauthorized: false }, onAnswer) : http.get(u, opts, onAnswer);
    req.on("timeout", () => req.destroy(new Error("no answer within 30 s")));
    req.on("error", (e) => resolve({ failure: `${where} failed: ${e.message}` }));
  });
}
/** A disk file of `bytes` zeros (sparse). */
function blankDisk(file: string, bytes: number): void {
  const fd = fs.openSync(file, "w", 0o600);
  try {
    fs.ftruncateSync(fd, bytes);
  } finally {
    fs.closeSync(fd);
  }
}

/** What the installer leaves on a disk file: the image at offset 0, zeros after it. */
function writeDiskFile(file: string, bytes: number, image: Buffer): void {
  blankDisk(file, bytes);
  const fd = fs.openSync(file, "r+");
  try {
    fs.writeSync(fd, image, 0, Math.min(image.length, bytes), 0);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

const RESTART_TYPES = new Set(["ForceRestart", "GracefulRestart", "PowerCycle", "FullPowerCycle"]);

export class LabBmc {
  readonly index: number;
  readonly flavor: Flavor;
  readonly username: string;
  readonly password: string;
  readonly clock: Clock;
  readonly faults = new FaultSet();
  readonly labId?: string;
  readonly managerId: string;
  readonly managerUri: string;
  readonly bootSeconds: number;
  readonly shutdownSeconds: number;
  readonly installSeconds: number;
  readonly fetchImages: boolean;
  /** Disk files (see "Disk bytes" in the header), or undefined. */
  readonly diskDir?: string;
  readonly diskBytes: number;
  latencyMs: number;

  private readonly host: string;
  private readonly wantedPort: number;
  private readonly admin: boolean;
  private readonly tls?: { key: string; cert: string };
  private readonly server: http.Server;
  private readonly sockets = new Set<Socket>();
  private readonly systemsList: SystemState[] = [];
  private readonly systemsById = new Map<string, SystemState>();
  private readonly accountsById = new Map<string, Account>();
  private readonly sessionsById = new Map<string, Session>();
  private readonly tasksById = new Map<string, Task>();
  private readonly log: LabRequest[] = [];
  private readonly effects: SideEffect[] = [];
  private stats: LabStats = { requests: {}, statuses: {}, faults: {}, sideEffects: {} };
  private seq = 0;
  private effectSeq = 0;
  private sessionCounter = 0;
  private taskCounter = 0;
  private unavailableUntil = 0;
  private sessionTimeoutSeconds: number;
  private readonly serviceUuid: string;
  private _url = "";
  private _port = 0;
  private closed = false;
  /** Image fetches of installers in flight (fetchImages). */
  private readonly imageFetches = new Set<Promise<void>>();
  /** iSCSI logins of booting systems in flight (see iscsi-boot.ts). */
  private readonly iscsiLogins = new Set<Promise<void>>();
  private readonly fetchAbort = new AbortController();
  /** The serial console (serial-console.ts), once started. */
  private serial?: LabSerialConsole;

  private constructor(opts: LabBmcOptions) {
    this.index = opts.index ?? 1;
    const systems = opts.systems ?? 1;
    if (!Number.isInteger(this.index) || this.index < 1 || this.index > MAX_INDEX) {
      throw new RangeError(`a lab BMC's index must be an integer from 1 to ${MAX_INDEX}, got ${opts.index}`);
    }
    if (!Number.isInteger(systems) || systems < 1 || systems > MAX_INDEX) {
      throw new RangeError(`a lab BMC manages 1 to ${MAX_INDEX} systems, got ${opts.systems}`);
    }
    const base = typeof opts.flavor === "object" ? opts.flavor : flavorByName(opts.flavor ?? "generic");
    this.flavor = {
      ...base,
      powerOnGuardSeconds: opts.powerOnGuardSeconds ?? base.powerOnGuardSeconds,
      sessions: base.sessions && {
        ...base.sessions,
        limit: opts.sessionLimit ?? base.sessions.limit,
        timeoutSeconds: opts.sessionTimeoutSeconds ?? base.sessions.timeoutSeconds,
      },
      tasks: base.tasks && { ...base.tasks, seconds: opts.taskSeconds ?? base.tasks.seconds },
    };
    this.sessionTimeoutSeconds = this.flavor.sessions?.timeoutSeconds ?? 0;
    this.username = opts.username ?? this.flavor.defaultUsername;
    this.password = opts.password ?? DEFAULT_PASSWORD;
    this.clock = opts.clock ?? new SystemClock();
    this.labId = opts.labId;
    this.latencyMs = opts.latencyMs ?? 0;
    this.bootSeconds = opts.bootSeconds ?? 2;
    this.shutdownSeconds = opts.shutdownSeconds ?? 1;
    this.installSeconds = opts.installSeconds ?? 5;
    this.fetchImages = opts.fetchImages ?? false;
    this.diskDir = opts.diskDir;
    this.diskBytes = opts.diskBytes ?? 64 * 1024 * 1024;
    if (!Number.isInteger(this.diskBytes) || this.diskBytes < 4096) throw new RangeError(`diskBytes must be an integer >= 4096, got ${opts.diskBytes}`);
    const durations = { latencyMs: this.latencyMs, bootSeconds: this.bootSeconds, shutdownSeconds: this.shutdownSeconds, installSeconds: this.installSeconds };
    for (const [k, v] of Object.entries(durations)) {
      if (!(v >= 0) || !Number.isFinite(v)) throw new RangeError(`${k} must be a number >= 0, got ${v}`);
    }
    this.host = opts.host ?? "127.0.0.1";
    if (this.host !== "127.0.0.1" && this.host !== "::1") {
      throw new RangeError(`the lab binds loopback only (127.0.0.1 or ::1), not ${this.host}`);
    }
    this.wantedPort = opts.port ?? 0;
    this.admin = opts.admin ?? true;
    this.tls = opts.tls;
    this.managerId = this.flavor.managerId;
    this.managerUri = `${ROOT}/Managers/${this.managerId}`;
    this.serviceUuid = labUuid(UUID_KIND.serviceRoot, this.index);

    this.seedAccounts(opts.accounts ?? []);
    const initial = opts.powerState ?? "Off";
    for (let s = 1; s <= systems; s++) this.addSystem(s, systems, initial);

    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
      this.handle(req, res).catch((e: unknown) => {
        if (!res.headersSent && !res.destroyed) {
          this.send(res, { status: 500, body: errorBody(message("InternalError")) });
        }
        if (process.env.BAREMETAL_LAB_DEBUG) console.error("lab BMC bug:", e);
      });
    };
    this.server = this.tls ? https.createServer({ key: this.tls.key, cert: this.tls.cert }, handler) : http.createServer(handler);
    this.server.setMaxListeners(0); // every delayed request listens for the server's close
    this.server.on("connection", (s: Socket) => {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
    });
  }

  /** Starts a BMC; it is ready (listening) when the promise resolves. */
  static async start(opts: LabBmcOptions = {}): Promise<LabBmc> {
    const bmc = new LabBmc(opts);
    await new Promise<void>((resolve, reject) => {
      bmc.server.once("error", reject);
      bmc.server.listen(bmc.wantedPort, bmc.host, () => {
        bmc.server.off("error", reject);
        resolve();
      });
    });
    const { port } = bmc.server.address() as AddressInfo;
    bmc._port = port;
    const host = bmc.host.includes(":") ? `[${bmc.host}]` : bmc.host;
    bmc._url = `${bmc.tls ? "https" : "http"}://${host}:${port}`;
    try {
      if (opts.serialConsole) await bmc.startSerialConsole(opts.serialConsole === true ? 0 : opts.serialConsole.port);
    } catch (e) {
      await bmc.close();
      throw e;
    }
    return bmc;
  }

  // -------------------------------------------------------------------------------------------
  // Serial console (serial-console.ts): SSH on its own port; output from the side effects below

  private async startSerialConsole(port: number): Promise<void> {
    if (!this.flavor.serialConsole.ServiceEnabled || !this.flavor.serialConsole.ConnectTypesSupported.includes("SSH")) return;
    this.serial = await LabSerialConsole.start(
      {
        index: this.index,
        systems: () => this.systemsList.map((s) => ({ id: s.id, uri: s.uri, name: s.name })),
        login: (user, password) => this.login(user, password, this.clock.now()),
        mayType: (roleId) => (ROLE_PRIVILEGES[roleId] ?? []).includes("ConfigureComponents"),
        settle: () => this.settle(),
        now: () => this.clock.now(),
      },
      { host: this.host as "127.0.0.1" | "::1", port },
    );
  }

  /** The serial console server (null when this BMC has none). */
  get serialConsole(): LabSerialConsole | null {
    return this.serial ?? null;
  }

  /** ComputerSystem.SerialConsole (HostSerialConsole, ComputerSystem v1_13+): where and how to reach this system's console. */
  private renderHostSerialConsole(s: SystemState): Json {
    const c = this.serial!;
    return {
      MaxConcurrentSessions: this.flavor.serialConsole.MaxConcurrentSessions,
      SSH: { ServiceEnabled: true, Port: c.port, SharedWithManagerCLI: false, ConsoleEntryCommand: LabSerialConsole.entryCommand(s.id), HotKeySequenceDisplay: `Press ${HOTKEY} at the start of a line to exit` },
      IPMI: { ServiceEnabled: false },
    };
  }

  /** e.g. http://127.0.0.1:41234 (the BMC address to give a client; /redfish/v1 is below it). */
  get url(): string {
    return this._url;
  }

  get port(): number {
    return this._port;
  }

  /** Stops listening and drops every connection. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.fetchAbort.abort();
    await this.serial?.close();
    await Promise.allSettled([...this.imageFetches]); // backup agents stop at the abort
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.sockets) s.destroy();
      this.server.closeAllConnections?.();
    });
  }

  // -------------------------------------------------------------------------------------------
  // Seeding

  private seedAccounts(extra: LabAccountSeed[]): void {
    const acc = this.flavor.accounts;
    const seeds: LabAccountSeed[] = [{ userName: this.username, password: this.password, roleId: "Administrator" }, ...extra];
    const names = new Set<string>();
    for (const s of seeds) {
      if (names.has(s.userName)) throw new Error(`lab BMC: account ${s.userName} given twice`);
      names.add(s.userName);
      if (!ROLE_PRIVILEGES[s.roleId]) throw new Error(`lab BMC: unknown role ${s.roleId}`);
    }
    if (acc?.mode === "slots") {
      if (seeds.length > acc.slots - 1) throw new Error(`lab BMC: the ${this.flavor.name} flavor has ${acc.slots - 1} usable account slots`);
      for (let n = 1; n <= acc.slots; n++) {
        const seed = n >= 2 ? seeds[n - 2] : undefined;
        this.accountsById.set(String(n), {
          id: String(n),
          userName: seed?.userName ?? "",
          password: seed?.password ?? "",
          roleId: seed?.roleId ?? "None",
          enabled: !!seed,
          locked: false,
          expiresAt: null,
        });
      }
    } else {
      seeds.forEach((s, i) => {
        const id = String(i + 1);
        this.accountsById.set(id, { id, userName: s.userName, password: s.password, roleId: s.roleId, enabled: true, locked: false, expiresAt: null });
      });
    }
  }

  private addSystem(s: number, count: number, power: "On" | "Off"): void {
    const b = this.index;
    const f = this.flavor;
    const uuid = labUuid(UUID_KIND.system, b, s);
    const id = f.systemId(b, s, uuid);
    const uri = `${ROOT}/Systems/${id}`;
    const profile = profileOf(s);
    const nics = Array.from({ length: profile.nics }, (_, k) => {
      const mac = labMac(b, s, k + 1);
      return { id: f.nicId(s, k + 1, mac), mac };
    });
    const mediaId = f.virtualMedia === "system" ? f.systemCdId : f.managerCdId(s, count);
    const mediaUri = f.virtualMedia === "system" ? `${uri}/VirtualMedia/${mediaId}` : `${this.managerUri}/VirtualMedia/${mediaId}`;
    const sys: SystemState = {
      index: s,
      id,
      uri,
      uuid,
      name: `lab-bmc${b}-sys${s}`,
      serial: labSerial(b, s),
      profile,
      chassisId: f.chassisId(b, s, uuid),
      power,
      boot: { target: "None", enabled: "Disabled", mode: "UEFI" },
      assetTag: "",
      nics,
      media: { id: mediaId, uri: mediaUri, image: null, inserted: false, writeProtected: true, transferProtocolType: null, userName: null },
      disk: "empty",
      running: power === "On" ? "nothing" : null,
      lastInstallError: null,
      iscsiBoot: null,
      bootSeq: 0,
      lastBackup: null,
    };
    if (this.diskDir) {
      sys.diskFile = path.join(this.diskDir, `bmc${b}-${id.replace(/[^A-Za-z0-9._-]/g, "_")}.img`);
      fs.mkdirSync(this.diskDir, { recursive: true });
      blankDisk(sys.diskFile, this.diskBytes);
    }
    if (f.networkAdapters) sys.ndf = newDeviceFunction(f.networkAdapters.adapterId, f.networkAdapters.functionId, nics[0].mac);
    this.systemsList.push(sys);
    this.systemsById.set(id, sys);
  }

  // -------------------------------------------------------------------------------------------
  // In-process API for tests

  /** Every system, settled to now. */
  systems(): LabSystemView[] {
    this.settle();
    return this.systemsList.map((s) => this.view(s));
  }

  /** One system by id (or 1-based index). */
  system(idOrIndex: string | number): LabSystemView {
    this.settle();
    return this.view(this.findSystem(idOrIndex));
  }

  /**
   * Changes a system's power at once, behind every client's back (no power side effect is
   * counted). Powering on boots at once (see "Boot" above); powering off interrupts an install.
   */
  forcePower(idOrIndex: string | number, state: "On" | "Off"): void {
    this.settle();
    const s = this.findSystem(idOrIndex);
    const now = this.clock.now();
    if (state === "Off") {
      this.interruptInstall(s, "the machine was powered off behind the BMC's back", now);
      s.power = "Off";
      s.transitionEndsAt = undefined;
      s.running = null;
      s.lastOffAt = now;
    } else if (s.power !== "On") {
      s.power = "On";
      s.transitionEndsAt = undefined;
      this.completeBoot(s, now);
    }
  }

  /** Erases a system's disk behind the BMC's back (any flavor, any power state); counted as disk-erased (via "lab"). */
  eraseDisk(idOrIndex: string | number): void {
    this.settle();
    this.erase(this.findSystem(idOrIndex), "lab", this.clock.now());
  }

  /** Writes an image to a system's disk behind the BMC's back (an already deployed machine); counted as disk-written (via "lab"). */
  writeDisk(idOrIndex: string | number, image: string, checksum?: string): void {
    if (typeof image !== "string" || !image) throw new TypeError("writeDisk needs an image URL");
    if (checksum !== undefined && !/^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$/.test(checksum)) {
      throw new TypeError("a checksum is sha256:<64 lower-case hex digits> or sha512:<128>");
    }
    this.settle();
    const s = this.findSystem(idOrIndex);
    const now = this.clock.now();
    s.disk = checksum ? { image, checksum, writtenAt: now } : { image, writtenAt: now };
    this.effect("disk-written", s.uri, { image, ...(checksum ? { checksum } : {}), via: "lab" }, now);
  }

  /**
   * Waits for the installers' image fetches in flight (`fetchImages`), then settles: after it, an
   * install whose lab time is over has ended. Without fetches, the same as reading the state.
   */
  async settled(): Promise<void> {
    this.settle(); // a boot whose time has come starts its installer (and its download) here
    while (this.imageFetches.size || this.iscsiLogins.size) {
      await Promise.allSettled([...this.imageFetches, ...this.iscsiLogins]);
      this.settle();
    }
  }

  /** Changes a system's boot override behind every client's back (its ETag changes). */
  forceBoot(idOrIndex: string | number, boot: Partial<SystemState["boot"]>): void {
    const s = this.findSystem(idOrIndex);
    s.boot = { ...s.boot, ...boot };
  }

  /** Adds a fault rule (see faults.ts); returns its id. */
  addFault(rule: FaultRule): number {
    return this.faults.add(rule);
  }

  /** Removes one fault rule (by the id addFault/failNext returned); false when it is gone. */
  removeFault(id: number): boolean {
    return this.faults.remove(id);
  }

  /** The next `count` requests matching `match` get `action`. */
  failNext(count: number, action: FaultAction, match: FaultMatch = {}): number {
    return this.faults.add({ ...match, count, action });
  }

  /** The request log (Redfish requests only; /lab is not logged). */
  requests(filter: { method?: string; path?: string | RegExp } = {}): LabRequest[] {
    return this.log.filter(
      (r) =>
        (!filter.method || r.method === filter.method.toUpperCase()) &&
        (filter.path === undefined || (typeof filter.path === "string" ? r.path === filter.path : filter.path.test(r.path))),
    );
  }

  /** Changes actually applied, optionally of one kind and/or on one target URI. */
  sideEffects(kind?: SideEffectKind, target?: string): SideEffect[] {
    this.settle();
    return this.effects.filter((e) => (!kind || e.kind === kind) && (!target || e.target === target));
  }

  counters(): LabStats {
    this.settle();
    return JSON.parse(JSON.stringify(this.stats)) as LabStats;
  }

  clearLog(): void {
    this.log.length = 0;
    this.effects.length = 0;
    this.stats = { requests: {}, statuses: {}, faults: {}, sideEffects: {} };
  }

  /** Live sessions (after expiring idle ones). */
  sessions(): Array<{ id: string; userName: string; createdAt: number; lastUsedAt: number }> {
    this.settle();
    return [...this.sessionsById.values()].map(({ id, userName, createdAt, lastUsedAt }) => ({ id, userName, createdAt, lastUsedAt }));
  }

  /** Forgets every session at once (as a BMC reboot does). */
  dropSessions(): void {
    this.sessionsById.clear();
  }

  /** Accounts in use (passwords left out). */
  accounts(): Array<{ id: string; userName: string; roleId: string; enabled: boolean; expiresAt: number | null }> {
    return [...this.accountsById.values()]
      .filter((a) => a.userName !== "")
      .map(({ id, userName, roleId, enabled, expiresAt }) => ({ id, userName, roleId, enabled, expiresAt }));
  }

  tasks(): Array<{ id: string; state: Task["state"]; target: string; startedAt: number; endsAt: number }> {
    this.settle();
    return [...this.tasksById.values()].map(({ id, state, target, startedAt, endsAt }) => ({ id, state, target, startedAt, endsAt }));
  }

  info(): LabBmcInfo {
    return {
      index: this.index,
      flavor: this.flavor.name,
      url: this.url,
      redfish: `${this.url}${ROOT}`,
      managerId: this.managerId,
      managerUri: this.managerUri,
      username: this.username,
      serialConsole: this.serial ? { host: this.serial.host, port: this.serial.port, url: `ssh://${this.serial.host.includes(":") ? `[${this.serial.host}]` : this.serial.host}:${this.serial.port}` } : null,
      systems: this.systemsList.map((s) => ({
        id: s.id,
        uri: s.uri,
        uuid: s.uuid,
        name: s.name,
        serialNumber: s.serial,
        macAddresses: s.nics.map((n) => n.mac.toLowerCase()),
        virtualMediaUri: s.media.uri,
        resourceClass: s.profile.resourceClass,
      })),
    };
  }

  private findSystem(idOrIndex: string | number): SystemState {
    const s =
      typeof idOrIndex === "number"
        ? this.systemsList[idOrIndex - 1]
        : (this.systemsById.get(idOrIndex) ?? (/^\d+$/.test(idOrIndex) ? this.systemsList[Number(idOrIndex) - 1] : undefined));
    if (!s) throw new Error(`lab BMC ${this.index}: no system ${idOrIndex}`);
    return s;
  }

  private view(s: SystemState): LabSystemView {
    return {
      index: s.index,
      id: s.id,
      uri: s.uri,
      uuid: s.uuid,
      name: s.name,
      serialNumber: s.serial,
      sku: s.profile.sku,
      profile: s.profile.name,
      resourceClass: s.profile.resourceClass,
      cpuCount: s.profile.cpuSockets,
      cpuModel: s.profile.cpuModel,
      memoryGiB: memoryGiB(s.profile),
      powerState: s.power,
      boot: { ...s.boot },
      macAddresses: s.nics.map((n) => n.mac.toLowerCase()),
      virtualMedia: { uri: s.media.uri, image: s.media.image, inserted: s.media.inserted, writeProtected: s.media.writeProtected },
      disk: copyDisk(s.disk),
      running: s.running,
      install: s.install ? { image: s.install.image, startedAt: s.install.startedAt, endsAt: s.install.endsAt } : null,
      lastInstallError: s.lastInstallError,
      driveUri: this.flavor.storage ? this.driveUri(s) : null,
      secureEraseTarget: this.flavor.storage?.secureErase ? `${this.driveUri(s)}/Actions/Drive.SecureErase` : null,
      networkDeviceFunction: s.ndf ? describeFunction(s.ndf) : null,
      iscsiBoot: s.iscsiBoot ? { ...s.iscsiBoot } : null,
      diskFile: s.diskFile ?? null,
      lastBackup: s.lastBackup ? { ...s.lastBackup } : null,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Time

  /**
   * Applies everything whose time has come, in the order of lab time (so that, say, an eject task
   * that ended before an install did is seen by the install): finished power transitions (and the
   * boots they end), installs, tasks; then idle sessions.
   */
  private settle(): void {
    const now = this.clock.now();
    for (;;) {
      let at = Infinity;
      let next: (() => void) | undefined;
      for (const s of this.systemsList) {
        const t = s.transitionEndsAt;
        if (t !== undefined && t <= now && t < at) {
          at = t;
          next = () => this.endTransition(s, t);
        }
        const i = this.installEndsAt(s);
        if (i !== undefined && i <= now && i < at) {
          at = i;
          next = () => this.endInstall(s, i);
        }
      }
      for (const task of this.tasksById.values()) {
        if (task.state === "Running" && task.endsAt <= now && task.endsAt < at) {
          at = task.endsAt;
          next = () => this.endTask(task);
        }
      }
      if (!next) break;
      next();
    }
    const timeout = this.sessionTimeoutSeconds * 1000;
    if (this.flavor.sessions && timeout > 0) {
      for (const [id, s] of this.sessionsById) {
        if (now >= s.lastUsedAt + timeout) {
          this.sessionsById.delete(id);
          this.effect("session-expire", `${SESSIONS}/${id}`, { userName: s.userName }, s.lastUsedAt + timeout);
        }
      }
    }
  }

  private endTransition(s: SystemState, at: number): void {
    s.transitionEndsAt = undefined;
    if (s.power === "PoweringOn") {
      s.power = "On";
      this.completeBoot(s, at);
    } else if (s.power === "PoweringOff") {
      s.power = "Off";
      s.running = null;
      s.lastOffAt = at;
    }
  }

  private endTask(t: Task): void {
    t.state = "Completed";
    t.endedAt = t.endsAt;
    try {
      t.result = t.apply(t.endsAt);
    } catch (e) {
      t.state = "Exception";
      t.result = e instanceof RedfishError ? e.reply() : { status: 500, body: errorBody(message("InternalError")) };
    }
  }

  // -------------------------------------------------------------------------------------------
  // Boot, installer, disk (lab state; see the header)

  /** The machine has just come up (PowerState On at `at`): the boot override decides what it runs. */
  private completeBoot(s: SystemState, at: number): void {
    const override = s.boot.enabled !== "Disabled" && s.boot.target !== "None" ? s.boot.target : undefined;
    // A one-time override is used by this boot (ComputerSystem schema: Once -> Disabled).
    if (s.boot.enabled === "Once") s.boot.enabled = "Disabled";
    const target = override ?? "Hdd";
    let running: LabRunning = "nothing";
    s.bootSeq++;
    // The adapter's network boot runs iSCSI instead of PXE once its function's BootMode says so.
    const iscsi = s.ndf?.bootMode === "iSCSI" && (target === "RemoteDrive" || target === "Pxe");
    if (iscsi) {
      s.running = running;
      this.effect("booted", s.uri, { target: override ?? "default (disk)", running, via: "iSCSI" }, at);
      this.bootIscsi(s, at);
      return;
    }
    if (target === "Cd") {
      if (s.media.inserted && s.media.image !== null) running = `installer:${s.media.image}`;
    } else if (target === "Hdd") {
      if (s.disk !== "empty") running = `os:${s.disk.image}`;
    } else if (target === "UefiHttp" && s.boot.httpUri) {
      running = `installer:${s.boot.httpUri}`;
    } else if (target === "Pxe" || target === "UefiHttp") {
      running = "pxe";
    }
    s.running = running;
    this.effect("booted", s.uri, { target: override ?? "default (disk)", running }, at);
    if (running.startsWith("installer:")) this.startInstall(s, running.slice("installer:".length), target === "Cd", at);
  }

  /**
   * OUR EMULATOR's stand-in for the firmware's iSCSI initiator: logs in to the function's target
   * (libiscsi) and records the outcome; on success the machine runs `os:iscsi://portal/target/lun`.
   */
  private bootIscsi(s: SystemState, at: number): void {
    const f = s.ndf!;
    const plan = bootPlan(f, at);
    s.iscsiBoot = plan;
    if (plan.state !== "logging-in") {
      this.effect("iscsi-login", s.uri, { state: plan.state, target: plan.target, initiator: plan.initiator, error: plan.error }, at);
      return;
    }
    const seq = s.bootSeq;
    const p = iscsiLogin(f, plan, this.fetchAbort.signal).then((done) => {
      if (s.bootSeq !== seq) return; // powered off or rebooted meanwhile
      s.iscsiBoot = done;
      const now = this.clock.now();
      this.effect("iscsi-login", s.uri, { state: done.state, portal: done.portal, target: done.target, lun: done.lun, initiator: done.initiator, chapUser: done.chapUser, ...(done.error ? { error: done.error } : {}) }, now);
      if (done.state === "logged-in" && s.power === "On") s.running = `os:iscsi://${done.portal}/${done.target}/${done.lun ?? 0}`;
    });
    this.iscsiLogins.add(p);
    void p.finally(() => this.iscsiLogins.delete(p));
  }

  private startInstall(s: SystemState, image: string, fromMedia: boolean, at: number): void {
    const { checksum, error } = declaredChecksum(image);
    const inst: InstallState = { image, fromMedia, startedAt: at, endsAt: at + this.installSeconds * 1000 };
    if (checksum) inst.checksum = checksum;
    if (error) inst.error = error;
    s.install = inst;
    s.lastInstallError = null;
    this.effect("installer-started", s.uri, { image, ...(checksum ? { checksum } : {}) }, at);
    if (!(this.fetchImages || s.diskFile) || error) return;
    let url: URL;
    try {
      url = new URL(image);
    } catch {
      return;
    }
    if ((url.protocol !== "http:" && url.protocol !== "https:") || !isLoopbackHost(url.hostname)) return;
    inst.fetch = { state: "pending" };
    inst.abort = new AbortController();
    const signal = AbortSignal.any([this.fetchAbort.signal, inst.abort.signal]);
    const p = fetchImage(url, checksum, signal, s.diskFile ? this.diskBytes : 0)
      .then(async ({ failure, body }) => {
        if (failure) inst.error ??= failure;
        if (body && isBackupImage(body)) await this.runBackupImage(s, inst, body, signal);
        else if (body) inst.body = body;
      })
      .finally(() => {
        inst.fetch = { state: "done", at: this.clock.now() };
      });
    this.imageFetches.add(p);
    void p.finally(() => this.imageFetches.delete(p));
  }

  /**
   * OUR EMULATOR playing the backup agent a real machine would boot from the backup image
   * (backup-agent.ts): it streams the disk file to the job's target; the install machinery then
   * ends this "install" when it is done (the machine powers itself off, nothing written to disk).
   */
  private async runBackupImage(s: SystemState, inst: InstallState, image: Buffer, signal: AbortSignal): Promise<void> {
    inst.backup = {};
    const at = this.clock.now();
    if (s.install === inst) s.running = `backup:${inst.image}`;
    this.effect("backup-started", s.uri, { image: inst.image }, at);
    if (!s.diskFile) {
      inst.backup.outcome = { state: "failed", error: "this emulated machine has no disk file: start the lab with diskDir", at };
      return;
    }
    try {
      const r = await runLabBackupAgent(image, s.diskFile, signal);
      inst.backup.outcome = { state: "written", ...r, at: this.clock.now() };
    } catch (e) {
      inst.backup.outcome = { state: "failed", error: e instanceof Error ? e.message : String(e), at: this.clock.now() };
    }
  }

  /**
   * When the running install ends: at `endsAt`, or when its image download answered if that was
   * later (in lab time: the clock's reading when the answer arrived); undefined while it is pending.
   */
  private installEndsAt(s: SystemState): number | undefined {
    const inst = s.install;
    if (!inst || inst.fetch?.state === "pending") return undefined;
    return Math.max(inst.endsAt, inst.fetch?.state === "done" ? inst.fetch.at : inst.endsAt);
  }

  /** The installer is done: it writes the disk (unless it failed) and powers the machine off by itself. */
  private endInstall(s: SystemState, at: number): void {
    const inst = s.install!;
    s.install = undefined;
    if (inst.backup) {
      // OUR EMULATOR's backup agent is done (see runBackupImage): nothing is written to the disk.
      const outcome: LabBackupRun = inst.backup.outcome ?? { state: "failed", error: inst.error ?? "the backup agent ended without an outcome", at };
      s.lastBackup = outcome;
      if (outcome.state === "failed") s.lastInstallError = outcome.error;
      this.effect(outcome.state === "written" ? "backup-written" : "backup-failed", s.uri, { image: inst.image, ...outcome }, at);
    } else if (inst.error) {
      s.lastInstallError = inst.error;
      this.effect("install-failed", s.uri, { image: inst.image, error: inst.error }, at);
    } else {
      if (s.diskFile && inst.body) writeDiskFile(s.diskFile, this.diskBytes, inst.body);
      s.disk = inst.checksum ? { image: inst.image, checksum: inst.checksum, writtenAt: at } : { image: inst.image, writtenAt: at };
      this.effect("disk-written", s.uri, { image: inst.image, ...(inst.checksum ? { checksum: inst.checksum } : {}), via: "installer" }, at);
    }
    this.installerPowerOff(s, at);
  }

  private installerPowerOff(s: SystemState, at: number): void {
    const from = s.power;
    s.power = "Off";
    s.transitionEndsAt = undefined;
    s.running = null;
    s.lastOffAt = at;
    this.effect("power-off", s.uri, { cause: "installer", from, to: "Off" }, at);
  }

  /** The installer loses its medium (ejected or replaced): it fails and powers the machine off. */
  private mediaChanged(s: SystemState, at: number): void {
    const inst = s.install;
    if (!inst || !inst.fromMedia || (s.media.inserted && s.media.image === inst.image)) return;
    s.install = undefined;
    inst.abort?.abort();
    const error = "the virtual media was ejected or replaced during the install";
    s.lastInstallError = error;
    this.effect("install-failed", s.uri, { image: inst.image, error }, at);
    this.installerPowerOff(s, at);
  }

  /** A power change stops the installer without writing anything. */
  private interruptInstall(s: SystemState, why: string, at: number): void {
    const inst = s.install;
    if (!inst) return;
    s.install = undefined;
    inst.abort?.abort();
    const error = `the install was interrupted: ${why}`;
    s.lastInstallError = error;
    this.effect("install-failed", s.uri, { image: inst.image, error }, at);
  }

  private erase(s: SystemState, via: string, at: number, detail: Record<string, unknown> = {}): void {
    const before = s.disk;
    s.disk = "empty";
    if (s.diskFile) blankDisk(s.diskFile, this.diskBytes);
    this.effect("disk-erased", s.uri, { via, ...detail, ...(before !== "empty" ? { image: before.image } : {}) }, at);
  }

  private effect(kind: SideEffectKind, target: string, detail?: Record<string, unknown>, at = this.clock.now()): void {
    const e: SideEffect = { seq: ++this.effectSeq, at, kind, target };
    if (detail) e.detail = detail;
    this.effects.push(e);
    if (this.effects.length > LOG_LIMIT) this.effects.shift();
    this.stats.sideEffects[kind] = (this.stats.sideEffects[kind] ?? 0) + 1;
    this.serial?.sideEffect(e); // what the machine prints on its serial port
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  private send(res: http.ServerResponse, reply: Reply, head = false): void {
    const text = reply.body === undefined ? "" : JSON.stringify(reply.body);
    const headers: Record<string, string> = {
      "OData-Version": "4.0",
      "Cache-Control": "no-cache",
      ...(reply.body !== undefined ? { "Content-Type": "application/json; charset=utf-8" } : {}),
      "Content-Length": String(Buffer.byteLength(text)),
      ...reply.headers,
    };
    res.writeHead(reply.status, headers);
    res.end(head ? undefined : text);
  }

  private async readBody(req: http.IncomingMessage): Promise<string | undefined> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > MAX_BODY) return undefined;
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks).toString("utf8");
  }

  private async sleep(ms: number, res: http.ServerResponse): Promise<void> {
    if (ms <= 0) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        res.off("close", done);
        this.server.off("close", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      res.once("close", done);
      this.server.once("close", done);
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const method = (req.method ?? "GET").toUpperCase() as Method;
    const url = new URL(req.url ?? "/", "http://lab");
    let path: string;
    try {
      path = decodeURIComponent(url.pathname).replace(/\/+$/, "") || "/";
    } catch {
      path = url.pathname;
    }
    const raw = await this.readBody(req);
    if (this.admin && (path === "/lab" || path.startsWith("/lab/"))) return this.handleAdmin(method, path, url, raw, res);

    const entry: LabRequest = { seq: ++this.seq, at: this.clock.now(), method, path, status: 0, auth: "none" };
    this.log.push(entry);
    if (this.log.length > LOG_LIMIT) this.log.shift();
    this.stats.requests[method] = (this.stats.requests[method] ?? 0) + 1;
    const reply = (r: Reply): void => {
      entry.status = r.status;
      this.stats.statuses[String(r.status)] = (this.stats.statuses[String(r.status)] ?? 0) + 1;
      if (!res.destroyed) this.send(res, r, method === "HEAD");
    };

    await this.sleep(this.latencyMs, res);
    if (res.destroyed || this.closed) return;

    let body: unknown;
    let hasBody = false;
    if (raw === undefined) return reply({ status: 413, body: errorBody(message("GeneralError")) });
    if (raw.trim()) {
      hasBody = true;
      try {
        body = JSON.parse(raw);
      } catch {
        return reply(new RedfishError(400, [message("MalformedJSON")]).reply());
      }
      if (method === "PATCH" || method === "POST") entry.body = redactPasswords(body);
    }
    const ifMatch = typeof req.headers["if-match"] === "string" ? req.headers["if-match"] : undefined;
    if (ifMatch !== undefined) entry.ifMatch = ifMatch;

    this.settle();
    const isLogin = method === "POST" && path === SESSIONS;
    const ctx: Ctx = {
      method,
      path,
      body,
      hasBody,
      ifMatch,
      auth: { kind: "none" },
      entry,
      slowTaskSeconds: 0,
      sessionLimitFault: false,
    };

    // Faults come first: a busy BMC refuses before it looks at credentials.
    const fault = this.faults.take(method, path, (kind) =>
      kind === "session-limit" ? isLogin : kind === "slow-task" ? method === "POST" : true,
    );
    if (fault) {
      entry.fault = fault.kind;
      this.stats.faults[fault.kind] = (this.stats.faults[fault.kind] ?? 0) + 1;
      switch (fault.kind) {
        case "reset":
          if (fault.afterApply) {
            ctx.dropAnswer = true;
            break;
          }
          entry.status = 0;
          req.socket.destroy();
          return;
        case "delay":
          await this.sleep(fault.ms, res);
          if (res.destroyed || this.closed) return;
          this.settle();
          break;
        case "unavailable": {
          const secs = fault.retryAfterSeconds ?? 30;
          return reply(new RedfishError(503, [message("ServiceTemporarilyUnavailable", [String(secs)])], { "Retry-After": String(secs) }).reply());
        }
        case "conflict":
          return reply(new RedfishError(409, [message("ResourceInUse", ["the lab was told to refuse this request"])]).reply());
        case "status": {
          const headers: Record<string, string> = fault.retryAfterSeconds !== undefined ? { "Retry-After": String(fault.retryAfterSeconds) } : {};
          let msg;
          try {
            msg = message(fault.message ?? "GeneralError");
          } catch {
            msg = message("GeneralError");
          }
          return reply(new RedfishError(fault.status, [msg], headers).reply());
        }
        case "slow-task":
          ctx.slowTaskSeconds = fault.extraSeconds;
          break;
        case "session-limit":
          ctx.sessionLimitFault = true;
          break;
      }
    }

    // After a Manager.Reset the BMC is away for a while.
    const now = this.clock.now();
    if (now < this.unavailableUntil) {
      const secs = Math.max(1, Math.ceil((this.unavailableUntil - now) / 1000));
      return reply(new RedfishError(503, [message("ServiceTemporarilyUnavailable", [String(secs)])], { "Retry-After": String(secs) }).reply());
    }

    let answer: Reply;
    try {
      answer = this.dispatch(ctx, req);
    } catch (e) {
      if (!(e instanceof RedfishError)) throw e;
      answer = e.reply();
    }
    if (ctx.dropAnswer) {
      entry.status = 0;
      req.socket.destroy();
      return;
    }
    reply(answer);
  }

  private dispatch(ctx: Ctx, req: http.IncomingMessage): Reply {
    const { method, path } = ctx;
    if (path === "/redfish" && (method === "GET" || method === "HEAD")) return { status: 200, body: { v1: `${ROOT}/` } };
    const node = path === ROOT || path.startsWith(`${ROOT}/`) ? this.resolve(path) : undefined;

    // Authentication first (as BMCs do): without credentials, only public URIs answer.
    ctx.auth = this.authenticate(req);
    ctx.entry.auth = ctx.auth.kind;
    if (ctx.auth.account) ctx.entry.user = ctx.auth.account.userName;
    const isPublic = !!node?.public?.includes(method);
    if (!isPublic && !ctx.auth.account) {
      fail(401, "NoValidSession", [], undefined, { "WWW-Authenticate": 'Basic realm="lab-bmc"' });
    }
    if (!node) fail(404, "ResourceMissingAtURI", [path]);
    const allow = this.allowOf(node);
    if (!allow.includes(method)) {
      fail(405, "OperationNotAllowed", [method, path], undefined, { Allow: allow.join(", ") });
    }
    if (!isPublic && ctx.auth.account) {
      const want = node.privilege?.[method] ?? (method === "GET" || method === "HEAD" ? "Login" : "ConfigureComponents");
      const privilege = typeof want === "function" ? want(ctx) : want;
      if (!(ROLE_PRIVILEGES[ctx.auth.account.roleId] ?? []).includes(privilege)) fail(403, "InsufficientPrivilege");
    }
    if (ctx.auth.session) ctx.auth.session.lastUsedAt = this.clock.now();

    switch (method) {
      case "GET":
      case "HEAD": {
        if (node.getReply) return node.getReply(ctx);
        const body = this.withEtag(node.get!());
        return { status: 200, body, headers: { ETag: body["@odata.etag"] as string, Allow: allow.join(", ") } };
      }
      case "PATCH":
        return node.patch!(ctx);
      case "POST":
        return node.post!(ctx);
      case "DELETE":
        return node.delete!(ctx);
      default:
        fail(405, "OperationNotAllowed", [method, path], undefined, { Allow: allow.join(", ") });
    }
  }

  private allowOf(node: Node): Method[] {
    const out: Method[] = [];
    if (node.get) out.push("GET", "HEAD");
    if (node.patch) out.push("PATCH");
    if (node.post) out.push("POST");
    if (node.delete) out.push("DELETE");
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // ETags

  private etagOf(resource: Json): string {
    const { ["@odata.etag"]: _drop, ...rest } = resource;
    const h = createHash("sha1").update(stableJson(rest)).digest("hex").slice(0, 16);
    return this.flavor.etag === "weak" ? `W/"${h}"` : `"${h}"`;
  }

  private withEtag(resource: Json): Json {
    return { ...resource, "@odata.etag": this.etagOf(resource) };
  }

  /** 412 unless If-Match is absent, `*`, or the resource's current ETag. */
  private checkIfMatch(ctx: Ctx, node: Node): void {
    if (ctx.ifMatch === undefined || !node.get) return;
    const current = this.etagOf(node.get());
    const tags = ctx.ifMatch.split(",").map((t) => t.trim());
    const strip = (t: string): string => t.replace(/^W\//, "");
    const ok = tags.some((t) => t === "*" || t === current || (this.flavor.etag === "weak" && strip(t) === strip(current)));
    if (!ok) fail(412, "PreconditionFailed");
  }

  /** The answer of a successful PATCH, as the flavor writes it. */
  private patched(node: Node): Reply {
    const body = this.withEtag(node.get!());
    const headers = { ETag: body["@odata.etag"] as string };
    switch (this.flavor.patchResponse) {
      case "resource":
        return { status: 200, body, headers };
      case "message":
        return { status: 200, body: messagesBody(message("Success")), headers };
      default:
        return { status: 204, headers };
    }
  }

  // -------------------------------------------------------------------------------------------
  // Authentication

  private authenticate(req: http.IncomingMessage): AuthResult {
    const now = this.clock.now();
    const token = req.headers["x-auth-token"];
    if (typeof token === "string" && token) {
      if (!this.flavor.sessions) return { kind: "bad" };
      const session = [...this.sessionsById.values()].find((s) => s.token === token);
      const account = session && this.accountsById.get(session.accountId);
      if (!session || !account || !this.usable(account, now)) return { kind: "bad" };
      return { kind: "session", account, session };
    }
    const h = req.headers.authorization;
    if (typeof h === "string" && /^basic\s/i.test(h)) {
      const decoded = Buffer.from(h.replace(/^basic\s+/i, "").trim(), "base64").toString("utf8");
      const i = decoded.indexOf(":");
      if (i < 0) return { kind: "bad" };
      const account = this.login(decoded.slice(0, i), decoded.slice(i + 1), now);
      return account ? { kind: "basic", account } : { kind: "bad" };
    }
    return h !== undefined ? { kind: "bad" } : { kind: "none" };
  }

  private usable(a: Account, now: number): boolean {
    return a.enabled && !a.locked && a.userName !== "" && (a.expiresAt === null || now < a.expiresAt);
  }

  private login(user: string, password: string, now: number): Account | undefined {
    const a = [...this.accountsById.values()].find((x) => x.userName === user && x.userName !== "");
    if (!a || !this.usable(a, now)) return undefined;
    const want = Buffer.from(a.password, "utf8");
    const got = Buffer.from(password, "utf8");
    // Constant-time comparison (of equal-length buffers) so the lab does not model a timing leak.
    if (want.length !== got.length) return undefined;
    let diff = 0;
    for (let k = 0; k < want.length; k++) diff |= want[k] ^ got[k];
    return diff === 0 ? a : undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Routing

  private resolve(path: string): Node | undefined {
    const rest = path === ROOT ? [] : path.slice(ROOT.length + 1).split("/");
    const [a, b, c, d, e] = rest;
    const f = this.flavor;
    if (rest.length === 0) return { get: () => this.renderRoot(), public: ["GET", "HEAD"] };
    if (a === "odata" && rest.length === 1) return { get: () => this.renderOdata(), public: ["GET", "HEAD"] };
    if (a === "Systems") {
      if (b === undefined) return { get: () => this.renderSystems() };
      const sys = this.systemsById.get(b);
      if (!sys) return undefined;
      if (c === undefined) return this.systemNode(sys);
      if (c === "Actions" && d === "ComputerSystem.Reset" && e === undefined) return { post: (ctx) => this.reset(ctx, sys) };
      if (c === "EthernetInterfaces") {
        if (d === undefined) return { get: () => this.renderNics(sys) };
        const nic = sys.nics.find((n) => n.id === d);
        return nic && e === undefined ? { get: () => this.renderNic(sys, nic) } : undefined;
      }
      if (c === "Processors" || c === "Memory") {
        if (!f.inventoryCollections) return undefined; // linked, but not there (404), as sushy-tools' fake driver
        if (d === undefined) return { get: () => (c === "Processors" ? this.renderCpus(sys) : this.renderDimms(sys)) };
        const k = this.memberIndex(d, c === "Processors" ? sys.profile.cpuSockets : sys.profile.dimms, c === "Processors" ? f.cpuId : f.dimmId);
        if (k === undefined || e !== undefined) return undefined;
        return { get: () => (c === "Processors" ? this.renderCpu(sys, k) : this.renderDimm(sys, k)) };
      }
      if (c === "VirtualMedia" && f.virtualMedia === "system") return this.mediaNode([sys], rest.slice(3));
      if (c === "Storage" && f.storage) return this.storageNode(sys, f.storage, rest.slice(3));
      return undefined;
    }
    if (a === "Managers") {
      if (b === undefined) return { get: () => collection("ManagerCollection", `${ROOT}/Managers`, "Manager Collection", [this.managerUri]) };
      if (b !== this.managerId) return undefined;
      if (c === undefined) return { get: () => this.renderManager() };
      if (c === "Actions" && d === "Manager.Reset" && e === undefined && f.managerResetSeconds !== null) {
        return { post: (ctx) => this.managerReset(ctx), privilege: { POST: "ConfigureManager" } };
      }
      if (c === "VirtualMedia" && f.virtualMedia === "manager") return this.mediaNode(this.systemsList, rest.slice(3));
      return undefined;
    }
    if (a === "Chassis") {
      if (b === undefined) {
        return { get: () => collection("ChassisCollection", `${ROOT}/Chassis`, "Chassis Collection", this.systemsList.map((s) => this.chassisUri(s))) };
      }
      const sys = this.systemsList.find((s) => s.chassisId === b);
      if (!sys) return undefined;
      if (c === undefined) return { get: () => this.renderChassis(sys) };
      if (c === "NetworkAdapters" && sys.ndf) return this.adapterNode(sys, sys.ndf, rest.slice(3));
      return undefined;
    }
    if (a === "SessionService" && f.sessions) {
      if (b === undefined) {
        return { get: () => this.renderSessionService(), patch: (ctx) => this.patchSessionService(ctx), privilege: { PATCH: "ConfigureManager" } };
      }
      if (b !== "Sessions") return undefined;
      if (c === undefined) {
        return { get: () => this.renderSessions(), post: (ctx) => this.createSession(ctx), public: ["POST"] };
      }
      const session = this.sessionsById.get(c);
      if (!session || d !== undefined) return undefined;
      const own = (ctx: Ctx): Privilege => (ctx.auth.session?.id === session.id ? "Login" : "ConfigureManager");
      return {
        get: () => this.renderSession(session),
        delete: (ctx) => this.deleteSession(ctx, session),
        privilege: { GET: own, HEAD: own, DELETE: own },
      };
    }
    if (a === "AccountService" && f.accounts) {
      if (b === undefined) return { get: () => this.renderAccountService() };
      if (b === "Accounts") {
        if (c === undefined) {
          const node: Node = { get: () => this.renderAccounts(), privilege: { POST: "ConfigureUsers" } };
          if (f.accounts.mode === "collection") node.post = (ctx) => this.createAccount(ctx);
          return node;
        }
        const acc = this.accountsById.get(c);
        if (!acc || d !== undefined || (f.accounts.mode === "collection" && acc.userName === "")) return undefined;
        const self = (ctx: Ctx): Privilege => (ctx.auth.account?.id === acc.id ? "ConfigureSelf" : "ConfigureUsers");
        const node: Node = {
          get: () => this.renderAccount(acc),
          patch: (ctx) => this.patchAccount(ctx, acc, node),
          privilege: { GET: self, HEAD: self, PATCH: self, DELETE: "ConfigureUsers" },
        };
        if (f.accounts.mode === "collection") node.delete = (ctx) => this.deleteAccount(ctx, acc);
        return node;
      }
      if (b === "Roles") {
        if (c === undefined) {
          return {
            get: () =>
              collection("RoleCollection", `${ROOT}/AccountService/Roles`, "Roles Collection", Object.keys(ROLE_PRIVILEGES).map((r) => `${ROOT}/AccountService/Roles/${r}`)),
          };
        }
        return ROLE_PRIVILEGES[c] && d === undefined ? { get: () => this.renderRole(c) } : undefined;
      }
      return undefined;
    }
    if (a === "TaskService" && f.tasks) {
      if (b === undefined) return { get: () => this.renderTaskService() };
      if (b === "Tasks") {
        if (c === undefined) {
          return { get: () => collection("TaskCollection", `${ROOT}/TaskService/Tasks`, "Task Collection", [...this.tasksById.keys()].map((id) => this.taskUri(id))) };
        }
        const task = this.tasksById.get(c);
        if (!task || d !== undefined) return undefined;
        return f.tasks.monitor === "task-uri" ? this.monitorNode(task) : { get: () => this.renderTask(task) };
      }
      if (b === "TaskMonitors" && c !== undefined && d === undefined && f.tasks.monitor === "separate") {
        const task = this.tasksById.get(c);
        return task ? this.monitorNode(task) : undefined;
      }
      return undefined;
    }
    return undefined;
  }

  private memberIndex(id: string, count: number, idOf: (k: number) => string): number | undefined {
    for (let k = 1; k <= count; k++) if (idOf(k) === id) return k;
    return undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Service root

  private renderRoot(): Json {
    const f = this.flavor;
    const root: Json = {
      "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
      "@odata.id": `${ROOT}/`,
      Id: "RootService",
      Name: "Root Service",
      RedfishVersion: "1.15.0",
      UUID: this.serviceUuid,
      Vendor: f.vendor,
      Product: f.product,
      Systems: link(`${ROOT}/Systems`),
      Chassis: link(`${ROOT}/Chassis`),
      Managers: link(`${ROOT}/Managers`),
    };
    if (f.tasks) root.Tasks = link(`${ROOT}/TaskService`);
    if (f.sessions) root.SessionService = link(`${ROOT}/SessionService`);
    if (f.accounts) root.AccountService = link(`${ROOT}/AccountService`);
    if (f.sessions) root.Links = { Sessions: link(SESSIONS) };
    return root;
  }

  private renderOdata(): Json {
    const root = this.renderRoot();
    const value = Object.entries(root)
      .filter(([, v]) => isRecord(v) && typeof v["@odata.id"] === "string")
      .map(([name, v]) => ({ name, kind: "Singleton", url: (v as { "@odata.id": string })["@odata.id"] }));
    return { "@odata.context": `${ROOT}/$metadata`, value };
  }

  // -------------------------------------------------------------------------------------------
  // Systems

  private renderSystems(): Json {
    return collection("ComputerSystemCollection", `${ROOT}/Systems`, "Computer System Collection", this.systemsList.map((s) => s.uri));
  }

  private bootProgress(s: SystemState): string {
    if (s.power === "PoweringOn") return "PrimaryProcessorInitializationStarted";
    if (s.power === "On") return "SystemHardwareInitializationComplete";
    return "None";
  }

  private renderSystem(s: SystemState): Json {
    const f = this.flavor;
    const p = s.profile;
    const boot: Json = {
      BootSourceOverrideEnabled: s.boot.enabled,
      BootSourceOverrideTarget: s.boot.target,
      "BootSourceOverrideTarget@Redfish.AllowableValues": [...f.bootTargets],
      BootSourceOverrideMode: s.boot.mode,
    };
    if (f.httpBootUri) boot.HttpBootUri = s.boot.httpUri ?? null;
    if (f.bootEnabledAllowable) boot["BootSourceOverrideEnabled@Redfish.AllowableValues"] = [...f.bootEnabledAllowable];
    if (f.bootModeAllowable) boot["BootSourceOverrideMode@Redfish.AllowableValues"] = [...f.bootModeAllowable];
    const sys: Json = {
      "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
      "@odata.id": s.uri,
      Id: s.id,
      Name: s.name,
      SystemType: "Physical",
      AssetTag: s.assetTag,
      Manufacturer: f.manufacturer,
      Model: f.model(p.name),
      SKU: p.sku,
      SerialNumber: s.serial,
      PartNumber: `${p.sku}-MB`,
      UUID: s.uuid,
      Status: { State: "Enabled", Health: "OK", HealthRollup: "OK" },
      PowerState: s.power,
      BootProgress: { LastState: this.bootProgress(s) },
      Boot: boot,
      BiosVersion: f.biosVersion,
      ProcessorSummary: {
        Count: p.cpuSockets,
        Model: p.cpuModel,
        CoreCount: p.cpuSockets * p.coresPerSocket,
        LogicalProcessorCount: p.cpuSockets * p.coresPerSocket * p.threadsPerCore,
        Status: { State: "Enabled", Health: "OK", HealthRollup: "OK" },
      },
      MemorySummary: {
        TotalSystemMemoryGiB: memoryGiB(p),
        Status: { State: "Enabled", Health: "OK", HealthRollup: "OK" },
      },
      Processors: link(`${s.uri}/Processors`),
      Memory: link(`${s.uri}/Memory`),
      EthernetInterfaces: link(`${s.uri}/EthernetInterfaces`),
      Links: { Chassis: [link(this.chassisUri(s))], ManagedBy: [link(this.managerUri)] },
      Actions: {
        "#ComputerSystem.Reset": {
          target: `${s.uri}/Actions/ComputerSystem.Reset`,
          "ResetType@Redfish.AllowableValues": [...f.resetTypes],
        },
      },
    };
    if (s.lastResetAt !== undefined) sys.LastResetTime = isoTime(s.lastResetAt);
    if (f.virtualMedia === "system") sys.VirtualMedia = link(`${s.uri}/VirtualMedia`);
    if (f.storage) sys.Storage = link(`${s.uri}/Storage`);
    if (this.serial) sys.SerialConsole = this.renderHostSerialConsole(s);
    return sys;
  }

  private systemNode(s: SystemState): Node {
    const node: Node = {
      get: () => this.renderSystem(s),
      patch: (ctx) => this.patchSystem(ctx, s, node),
    };
    return node;
  }

  private patchSystem(ctx: Ctx, s: SystemState, node: Node): Reply {
    this.checkIfMatch(ctx, node);
    const body = this.patchBody(ctx);
    const f = this.flavor;
    const errors: ReturnType<typeof message>[] = [];
    const next = { boot: { ...s.boot }, assetTag: s.assetTag };
    const current = this.renderSystem(s);
    for (const [k, v] of Object.entries(body)) {
      if (k === "AssetTag") {
        if (typeof v !== "string") errors.push(message("PropertyValueTypeError", [JSON.stringify(v), k], [`#/${k}`]));
        else next.assetTag = v;
      } else if (k === "Boot") {
        if (!isRecord(v)) {
          errors.push(message("PropertyValueTypeError", [JSON.stringify(v), k], [`#/${k}`]));
          continue;
        }
        for (const [bk, bv] of Object.entries(v)) {
          const rel = [`#/Boot/${bk}`];
          if (bk === "HttpBootUri" && f.httpBootUri) {
            if (bv !== null && (typeof bv !== "string" || !/^https?:\/\/\S+$/.test(bv))) errors.push(message("PropertyValueFormatError", [JSON.stringify(bv), `Boot/${bk}`], rel));
            else next.boot.httpUri = bv;
            continue;
          }
          const allowed =
            bk === "BootSourceOverrideTarget"
              ? f.bootTargets
              : bk === "BootSourceOverrideEnabled"
                ? (f.bootEnabledAllowable ?? ["Disabled", "Once", "Continuous"])
                : bk === "BootSourceOverrideMode"
                  ? (f.bootModeAllowable ?? ["UEFI", "Legacy"])
                  : undefined;
          if (!allowed) {
            const known = isRecord(current.Boot) && bk in current.Boot;
            errors.push(message(known ? "PropertyNotWritable" : "PropertyUnknown", [`Boot/${bk}`], rel));
          } else if (typeof bv !== "string") {
            errors.push(message("PropertyValueTypeError", [JSON.stringify(bv), `Boot/${bk}`], rel));
          } else if (!allowed.includes(bv)) {
            errors.push(message("PropertyValueNotInList", [bv, `Boot/${bk}`], rel));
          } else if (bk === "BootSourceOverrideTarget") next.boot.target = bv;
          else if (bk === "BootSourceOverrideEnabled") next.boot.enabled = bv;
          else next.boot.mode = bv;
        }
      } else if (k in current) {
        errors.push(message("PropertyNotWritable", [k], [`#/${k}`]));
      } else {
        errors.push(message("PropertyUnknown", [k], [`#/${k}`]));
      }
    }
    if (errors.length) throw new RedfishError(400, errors);
    const bootChanged = stableJson(next.boot) !== stableJson(s.boot);
    if (bootChanged && s.power === "PoweringOn" && f.bootPatchDuringPost !== null) {
      fail(f.bootPatchDuringPost, "ResourceInUse", ["the system is in POST (powering on); change the boot override when it is On or Off"], ["#/Boot"]);
    }
    if (bootChanged) {
      this.effect("boot-override", s.uri, { from: { ...s.boot }, to: { ...next.boot } });
      s.boot = next.boot;
    }
    if (next.assetTag !== s.assetTag) {
      this.effect("system-update", s.uri, { AssetTag: next.assetTag });
      s.assetTag = next.assetTag;
    }
    return this.patched(node);
  }

  /** The JSON object of a PATCH (400 when it is missing, not an object, or empty). */
  private patchBody(ctx: Ctx): Record<string, unknown> {
    if (!ctx.hasBody || !isRecord(ctx.body)) fail(400, "MalformedJSON");
    if (!Object.keys(ctx.body).length) fail(400, "EmptyJSON");
    return ctx.body;
  }

  /** Parameters of an action: a JSON object (an empty or missing body is {}), only `known` keys. */
  private actionParams(ctx: Ctx, action: string, known: string[]): Record<string, unknown> {
    if (!ctx.hasBody) return {};
    if (!isRecord(ctx.body)) fail(400, "MalformedJSON");
    const unknown = Object.keys(ctx.body).filter((k) => !known.includes(k));
    if (unknown.length) {
      throw new RedfishError(
        400,
        unknown.map((k) => message("ActionParameterNotSupported", [k, action], [`#/${k}`])),
      );
    }
    return ctx.body;
  }

  private reset(ctx: Ctx, s: SystemState): Reply {
    const action = "ComputerSystem.Reset";
    const p = this.actionParams(ctx, action, ["ResetType"]);
    const rt = p.ResetType;
    if (rt === undefined) fail(400, "ActionParameterMissing", [action, "ResetType"], ["#/ResetType"]);
    if (typeof rt !== "string") fail(400, "ActionParameterValueTypeError", [JSON.stringify(rt), "ResetType", action], ["#/ResetType"]);
    if (!this.flavor.resetTypes.includes(rt)) fail(400, "ActionParameterValueNotInList", [rt, "ResetType", action], ["#/ResetType"]);
    this.applyReset(s, rt);
    return { status: 204 };
  }

  private sameState(s: SystemState, what: string): void {
    if (this.flavor.resetToSameState === "conflict") fail(409, "ResourceInUse", [`the system is already ${what}`]);
  }

  private busy(s: SystemState): never {
    const secs = s.transitionEndsAt !== undefined ? Math.max(1, Math.ceil((s.transitionEndsAt - this.clock.now()) / 1000)) : 1;
    fail(409, "ResourceInUse", [`the system is ${s.power}`], undefined, { "Retry-After": String(secs) });
  }

  private powerOn(s: SystemState, resetType: string, kind: "power-on" | "power-restart"): void {
    const now = this.clock.now();
    const guard = this.flavor.powerOnGuardSeconds * 1000;
    if (guard > 0 && s.lastOffAt !== undefined && now < s.lastOffAt + guard) {
      const secs = Math.max(1, Math.ceil((s.lastOffAt + guard - now) / 1000));
      fail(409, "ResourceInUse", [`the system powered off less than ${this.flavor.powerOnGuardSeconds} seconds ago; retry in ${secs} seconds`], undefined, {
        "Retry-After": String(secs),
      });
    }
    const from = s.power;
    s.lastResetAt = now;
    this.interruptInstall(s, `ComputerSystem.Reset ${resetType}`, now);
    s.running = null;
    if (this.bootSeconds > 0) {
      s.power = "PoweringOn";
      s.transitionEndsAt = now + this.bootSeconds * 1000;
      this.effect(kind, s.uri, { resetType, from, to: s.power });
    } else {
      s.power = "On";
      s.transitionEndsAt = undefined;
      this.effect(kind, s.uri, { resetType, from, to: s.power });
      this.completeBoot(s, now);
    }
  }

  private powerOff(s: SystemState, resetType: string, graceful: boolean): void {
    const now = this.clock.now();
    const from = s.power;
    this.interruptInstall(s, `ComputerSystem.Reset ${resetType}`, now);
    if (graceful && this.shutdownSeconds > 0) {
      s.power = "PoweringOff";
      s.transitionEndsAt = now + this.shutdownSeconds * 1000;
    } else {
      s.power = "Off";
      s.transitionEndsAt = undefined;
      s.running = null;
      s.lastOffAt = now;
    }
    this.effect("power-off", s.uri, { resetType, from, to: s.power });
  }

  private applyReset(s: SystemState, rt: string): void {
    const cur = s.power;
    if (POWER_ON_TYPES.has(rt)) {
      if (cur === "On" || cur === "PoweringOn") return this.sameState(s, "on");
      if (cur === "PoweringOff") this.busy(s);
      return this.powerOn(s, rt, "power-on");
    }
    if (rt === "ForceOff") {
      if (cur === "Off") return this.sameState(s, "off");
      return this.powerOff(s, rt, false);
    }
    if (rt === "GracefulShutdown") {
      if (cur === "Off" || cur === "PoweringOff") return this.sameState(s, "off");
      return this.powerOff(s, rt, true);
    }
    if (RESTART_TYPES.has(rt)) {
      if (cur === "PoweringOff") this.busy(s);
      if (cur === "Off") {
        if (this.flavor.resetToSameState === "conflict") fail(409, "ResourceInUse", ["the system is off; power it on instead of restarting it"]);
        return this.powerOn(s, rt, "power-on");
      }
      return this.powerOn(s, rt, "power-restart");
    }
    if (rt === "PushPowerButton") {
      if (cur === "PoweringOff") this.busy(s);
      if (cur === "Off") return this.powerOn(s, rt, "power-on");
      return this.powerOff(s, rt, true);
    }
    if (rt === "Nmi") {
      if (cur !== "On") fail(409, "ResourceInUse", [`the system is ${cur}; an NMI needs it On`]);
      this.effect("nmi", s.uri, { resetType: rt });
      return;
    }
    fail(400, "ActionParameterValueNotInList", [rt, "ResetType", "ComputerSystem.Reset"], ["#/ResetType"]);
  }

  // -------------------------------------------------------------------------------------------
  // System members

  private renderNics(s: SystemState): Json {
    return collection(
      "EthernetInterfaceCollection",
      `${s.uri}/EthernetInterfaces`,
      "Ethernet Interface Collection",
      s.nics.map((n) => `${s.uri}/EthernetInterfaces/${n.id}`),
    );
  }

  private renderNic(s: SystemState, nic: { id: string; mac: string }): Json {
    const up = s.power === "On";
    return {
      "@odata.type": "#EthernetInterface.v1_9_0.EthernetInterface",
      "@odata.id": `${s.uri}/EthernetInterfaces/${nic.id}`,
      Id: nic.id,
      Name: "Ethernet Interface",
      Description: `System NIC ${s.nics.indexOf(nic) + 1}`,
      Status: { State: "Enabled", Health: "OK" },
      InterfaceEnabled: true,
      EthernetInterfaceType: "Physical",
      LinkStatus: up ? "LinkUp" : "LinkDown",
      PermanentMACAddress: nic.mac,
      MACAddress: nic.mac,
      SpeedMbps: s.profile.nicSpeedMbps,
      FullDuplex: true,
      AutoNeg: true,
      MTUSize: 1500,
    };
  }

  private renderCpus(s: SystemState): Json {
    const ids = Array.from({ length: s.profile.cpuSockets }, (_, k) => `${s.uri}/Processors/${this.flavor.cpuId(k + 1)}`);
    return collection("ProcessorCollection", `${s.uri}/Processors`, "Processors Collection", ids);
  }

  private renderCpu(s: SystemState, k: number): Json {
    const p = s.profile;
    const id = this.flavor.cpuId(k);
    return {
      "@odata.type": "#Processor.v1_17_0.Processor",
      "@odata.id": `${s.uri}/Processors/${id}`,
      Id: id,
      Name: "Processor",
      Socket: `CPU ${k}`,
      ProcessorType: "CPU",
      ProcessorArchitecture: "x86",
      InstructionSet: "x86-64",
      Manufacturer: "Lab Semiconductors",
      Model: p.cpuModel,
      MaxSpeedMHz: p.cpuMaxSpeedMHz,
      TotalCores: p.coresPerSocket,
      TotalThreads: p.coresPerSocket * p.threadsPerCore,
      Status: { State: "Enabled", Health: "OK" },
    };
  }

  private renderDimms(s: SystemState): Json {
    const ids = Array.from({ length: s.profile.dimms }, (_, k) => `${s.uri}/Memory/${this.flavor.dimmId(k + 1)}`);
    return collection("MemoryCollection", `${s.uri}/Memory`, "Memory Module Collection", ids);
  }

  private renderDimm(s: SystemState, k: number): Json {
    const p = s.profile;
    const id = this.flavor.dimmId(k);
    const perSocket = Math.ceil(p.dimms / p.cpuSockets);
    return {
      "@odata.type": "#Memory.v1_17_0.Memory",
      "@odata.id": `${s.uri}/Memory/${id}`,
      Id: id,
      Name: `DIMM Slot ${k}`,
      CapacityMiB: p.dimmMiB,
      DataWidthBits: 64,
      BusWidthBits: 72,
      ErrorCorrection: "MultiBitECC",
      MemoryLocation: { Socket: Math.ceil(k / perSocket), MemoryController: 1, Channel: ((k - 1) % perSocket) + 1, Slot: k },
      MemoryType: "DRAM",
      MemoryDeviceType: "DDR5",
      BaseModuleType: "RDIMM",
      MemoryMedia: ["DRAM"],
      Status: { State: "Enabled", Health: "OK" },
    };
  }

  // -------------------------------------------------------------------------------------------
  // Virtual media

  /** VirtualMedia below a system (one CD) or below the manager (one CD per system). */
  private mediaNode(owners: SystemState[], rest: string[]): Node | undefined {
    const base = this.flavor.virtualMedia === "system" ? `${owners[0].uri}/VirtualMedia` : `${this.managerUri}/VirtualMedia`;
    const [id, act, name, ...more] = rest;
    if (id === undefined) {
      return { get: () => ({ ...collection("VirtualMediaCollection", base, "Virtual Media Services", owners.map((s) => s.media.uri)), Description: "Virtual Media Services" }) };
    }
    const sys = owners.find((s) => s.media.id === id);
    if (!sys || more.length) return undefined;
    if (act === undefined) return { get: () => this.renderMedia(sys.media) };
    if (act !== "Actions") return undefined;
    if (name === "VirtualMedia.InsertMedia") return { post: (ctx) => this.insertMedia(ctx, sys) };
    if (name === "VirtualMedia.EjectMedia") return { post: (ctx) => this.ejectMedia(ctx, sys) };
    return undefined;
  }

  private renderMedia(m: MediaState): Json {
    return {
      "@odata.type": "#VirtualMedia.v1_6_0.VirtualMedia",
      "@odata.id": m.uri,
      Id: m.id,
      Name: "Virtual CD",
      MediaTypes: ["CD", "DVD"],
      Image: m.image,
      ImageName: m.image ? imageName(m.image) : null,
      ConnectedVia: m.inserted ? "URI" : "NotConnected",
      Inserted: m.inserted,
      WriteProtected: m.writeProtected,
      TransferProtocolType: m.transferProtocolType,
      TransferMethod: "Stream",
      UserName: m.userName,
      Actions: {
        "#VirtualMedia.InsertMedia": {
          target: `${m.uri}/Actions/VirtualMedia.InsertMedia`,
          "TransferProtocolType@Redfish.AllowableValues": [...this.flavor.transferProtocols],
        },
        "#VirtualMedia.EjectMedia": { target: `${m.uri}/Actions/VirtualMedia.EjectMedia` },
      },
    };
  }

  private insertMedia(ctx: Ctx, s: SystemState): Reply {
    const action = "VirtualMedia.InsertMedia";
    const p = this.actionParams(ctx, action, ["Image", "Inserted", "WriteProtected", "TransferProtocolType", "TransferMethod", "UserName", "Password"]);
    const m = s.media;
    if (p.Image === undefined) fail(400, "ActionParameterMissing", [action, "Image"], ["#/Image"]);
    if (typeof p.Image !== "string") fail(400, "ActionParameterValueTypeError", [JSON.stringify(p.Image), "Image", action], ["#/Image"]);
    let scheme: string;
    try {
      scheme = new URL(p.Image).protocol.replace(/:$/, "").toUpperCase();
    } catch {
      fail(400, "ActionParameterValueTypeError", [p.Image, "Image", action], ["#/Image"]);
    }
    for (const k of ["Inserted", "WriteProtected"]) {
      if (p[k] !== undefined && typeof p[k] !== "boolean") fail(400, "ActionParameterValueTypeError", [JSON.stringify(p[k]), k, action], [`#/${k}`]);
    }
    for (const k of ["UserName", "Password", "TransferMethod"]) {
      if (p[k] !== undefined && typeof p[k] !== "string") fail(400, "ActionParameterValueTypeError", [JSON.stringify(p[k]), k, action], [`#/${k}`]);
    }
    if (p.TransferMethod !== undefined && !["Stream", "Upload"].includes(p.TransferMethod as string)) {
      fail(400, "ActionParameterValueNotInList", [p.TransferMethod as string, "TransferMethod", action], ["#/TransferMethod"]);
    }
    const protocol = p.TransferProtocolType ?? (scheme === "SMB" ? "CIFS" : scheme);
    if (typeof protocol !== "string" || !this.flavor.transferProtocols.includes(protocol)) {
      fail(400, "ActionParameterValueNotInList", [String(protocol), "TransferProtocolType", action], ["#/TransferProtocolType"]);
    }
    if (m.busyTask) fail(409, "ResourceInUse", [`the virtual media is busy with task ${m.busyTask}`]);
    if (m.inserted && this.flavor.insertWhenInserted === "conflict") {
      fail(409, "ResourceInUse", ["media is already inserted; eject it first"]);
    }
    const image = p.Image;
    const inserted = p.Inserted === undefined ? true : (p.Inserted as boolean);
    const writeProtected = p.WriteProtected === undefined ? true : (p.WriteProtected as boolean);
    const userName = (p.UserName as string | undefined) ?? null;
    const apply = (at: number): Reply => {
      m.image = image;
      m.inserted = inserted;
      m.writeProtected = writeProtected;
      m.transferProtocolType = protocol;
      m.userName = userName;
      m.busyTask = undefined;
      this.effect("media-insert", m.uri, { image, inserted, writeProtected }, at);
      this.mediaChanged(s, at);
      return { status: 200, body: messagesBody(message("Success")) };
    };
    return this.maybeTask(ctx, action, m.uri, apply, (id) => (m.busyTask = id));
  }

  private ejectMedia(ctx: Ctx, s: SystemState): Reply {
    const action = "VirtualMedia.EjectMedia";
    this.actionParams(ctx, action, []);
    const m = s.media;
    if (m.busyTask) fail(409, "ResourceInUse", [`the virtual media is busy with task ${m.busyTask}`]);
    if (!m.inserted && m.image === null) {
      if (this.flavor.ejectWhenEmpty === "conflict") fail(409, "ResourceInUse", ["no media is inserted"]);
      return { status: 204 };
    }
    const apply = (at: number): Reply => {
      const image = m.image;
      m.image = null;
      m.inserted = false;
      m.transferProtocolType = null;
      m.userName = null;
      m.writeProtected = true;
      m.busyTask = undefined;
      this.effect("media-eject", m.uri, { image }, at);
      this.mediaChanged(s, at);
      return { status: 200, body: messagesBody(message("Success")) };
    };
    return this.maybeTask(ctx, action, m.uri, apply, (id) => (m.busyTask = id));
  }

  /**
   * Runs `apply` now (204), or as a task when the flavor makes this action asynchronous (202 +
   * task monitor); `busy` is told the task's id (the resource refuses other changes meanwhile).
   */
  private maybeTask(ctx: Ctx, action: string, target: string, apply: (at: number) => Reply, busy: (taskId: string) => void): Reply {
    const tasks = this.flavor.tasks;
    if (!tasks || !tasks.asyncActions.includes(action)) {
      apply(this.clock.now());
      return { status: 204 };
    }
    const task = this.startTask(action, target, tasks.seconds + ctx.slowTaskSeconds, apply);
    busy(task.id);
    const accepted = this.taskAccepted(task);
    this.settle(); // a task of 0 s is done at once (its monitor then answers the result)
    return accepted;
  }

  // -------------------------------------------------------------------------------------------
  // Storage: the system's one disk as one Storage with one Drive (shaped like the DMTF
  // public-localstorage mockup); Drive.SecureErase where the flavor offers it.

  private storageUri(s: SystemState): string {
    return `${s.uri}/Storage/${this.flavor.storage!.storageId}`;
  }

  private driveUri(s: SystemState): string {
    return `${this.storageUri(s)}/Drives/${this.flavor.storage!.driveId}`;
  }

  private storageNode(s: SystemState, spec: StorageSpec, rest: string[]): Node | undefined {
    const [id, drives, driveId, act, name, ...more] = rest;
    if (id === undefined) {
      return { get: () => collection("StorageCollection", `${s.uri}/Storage`, "Storage Collection", [this.storageUri(s)]) };
    }
    if (id !== spec.storageId || more.length) return undefined;
    if (drives === undefined) return { get: () => this.renderStorage(s, spec) };
    if (drives !== "Drives" || driveId !== spec.driveId) return undefined;
    if (act === undefined) return { get: () => this.renderDrive(s, spec) };
    if (act === "Actions" && name === "Drive.SecureErase" && spec.secureErase) return { post: (ctx) => this.secureErase(ctx, s) };
    return undefined;
  }

  private renderStorage(s: SystemState, spec: StorageSpec): Json {
    const uri = this.storageUri(s);
    return {
      "@odata.type": "#Storage.v1_21_0.Storage",
      "@odata.id": uri,
      Id: spec.storageId,
      Name: "Local Storage Controller",
      Description: "Integrated storage controller",
      Status: { State: "Enabled", Health: "OK", HealthRollup: "OK" },
      StorageControllers: [
        {
          "@odata.id": `${uri}#/StorageControllers/0`,
          MemberId: "0",
          Name: spec.controllerModel,
          Status: { State: "Enabled", Health: "OK" },
          Manufacturer: this.flavor.manufacturer,
          Model: spec.controllerModel,
          FirmwareVersion: this.flavor.firmwareVersion,
          SpeedGbps: 12,
          SupportedControllerProtocols: ["PCIe"],
          SupportedDeviceProtocols: [spec.protocol],
        },
      ],
      Drives: [link(this.driveUri(s))],
    };
  }

  private renderDrive(s: SystemState, spec: StorageSpec): Json {
    const uri = this.driveUri(s);
    const drive: Json = {
      "@odata.type": "#Drive.v1_21_0.Drive",
      "@odata.id": uri,
      Id: spec.driveId,
      Name: "Drive 1",
      Model: s.profile.diskModel,
      Revision: "1.0",
      Status: { State: s.eraseTask ? "Updating" : "Enabled", Health: "OK" },
      CapacityBytes: s.profile.diskBytes,
      FailurePredicted: false,
      Protocol: spec.protocol,
      MediaType: "SSD",
      Manufacturer: this.flavor.manufacturer,
      SerialNumber: labDiskSerial(this.index, s.index),
      BlockSizeBytes: 512,
      CapableSpeedGbs: 12,
      NegotiatedSpeedGbs: 12,
    };
    if (spec.secureErase) drive.Actions = { "#Drive.SecureErase": { target: `${uri}/Actions/Drive.SecureErase` } };
    return drive;
  }

  /**
   * Drive.SecureErase: empties the emulated disk. Refused (409) unless the system is Off: the
   * drive is in use while anything runs. Optional parameters (Drive.v1_15_0): SanitizationType,
   * OverwritePasses (with Overwrite).
   */
  private secureErase(ctx: Ctx, s: SystemState): Reply {
    const action = "Drive.SecureErase";
    const p = this.actionParams(ctx, action, ["SanitizationType", "OverwritePasses"]);
    const type = p.SanitizationType;
    if (type !== undefined && typeof type !== "string") fail(400, "ActionParameterValueTypeError", [JSON.stringify(type), "SanitizationType", action], ["#/SanitizationType"]);
    if (type !== undefined && !SANITIZATION_TYPES.includes(type)) fail(400, "ActionParameterValueNotInList", [type, "SanitizationType", action], ["#/SanitizationType"]);
    const passes = p.OverwritePasses;
    if (passes !== undefined && (typeof passes !== "number" || !Number.isInteger(passes) || passes < 1)) {
      fail(400, "ActionParameterValueTypeError", [JSON.stringify(passes), "OverwritePasses", action], ["#/OverwritePasses"]);
    }
    if (s.eraseTask) fail(409, "ResourceInUse", [`the drive is busy with task ${s.eraseTask}`]);
    if (s.power !== "Off") fail(409, "ResourceInUse", [`the system is ${s.power} and its drive in use; power it off first`]);
    const apply = (at: number): Reply => {
      s.eraseTask = undefined;
      this.erase(s, action, at, type !== undefined ? { sanitizationType: type } : {});
      return { status: 200, body: messagesBody(message("Success")) };
    };
    return this.maybeTask(ctx, action, this.driveUri(s), apply, (id) => (s.eraseTask = id));
  }

  // -------------------------------------------------------------------------------------------
  // Tasks

  private taskUri(id: string): string {
    return `${ROOT}/TaskService/Tasks/${id}`;
  }

  private monitorUri(id: string): string {
    return this.flavor.tasks?.monitor === "task-uri" ? this.taskUri(id) : `${ROOT}/TaskService/TaskMonitors/${id}`;
  }

  private startTask(action: string, target: string, seconds: number, apply: (at: number) => Reply): Task {
    const now = this.clock.now();
    const id = this.flavor.taskId(++this.taskCounter);
    const task: Task = { id, name: `Task ${id}: ${action}`, state: "Running", startedAt: now, endsAt: now + seconds * 1000, target, apply };
    this.tasksById.set(id, task);
    // Keep the last 100 tasks.
    if (this.tasksById.size > 100) {
      const oldest = [...this.tasksById.values()].find((t) => t.state !== "Running");
      if (oldest) this.tasksById.delete(oldest.id);
    }
    return task;
  }

  private taskAccepted(task: Task): Reply {
    const headers: Record<string, string> = { Location: this.monitorUri(task.id) };
    if (this.flavor.tasks?.retryAfterSeconds !== undefined) headers["Retry-After"] = String(this.flavor.tasks.retryAfterSeconds);
    return { status: 202, body: this.withEtag(this.renderTask(task)), headers };
  }

  private renderTaskService(): Json {
    return {
      "@odata.type": "#TaskService.v1_2_0.TaskService",
      "@odata.id": `${ROOT}/TaskService`,
      Id: "TaskService",
      Name: "Task Service",
      DateTime: isoTime(this.clock.now()),
      CompletedTaskOverWritePolicy: "Oldest",
      LifeCycleEventOnTaskStateChange: false,
      Status: { State: "Enabled", Health: "OK" },
      ServiceEnabled: true,
      Tasks: link(`${ROOT}/TaskService/Tasks`),
    };
  }

  private renderTask(t: Task): Json {
    const now = this.clock.now();
    const total = Math.max(1, t.endsAt - t.startedAt);
    const percent = t.state === "Running" ? Math.min(99, Math.floor(((now - t.startedAt) / total) * 100)) : 100;
    const task: Json = {
      "@odata.type": "#Task.v1_7_0.Task",
      "@odata.id": this.taskUri(t.id),
      Id: t.id,
      Name: t.name,
      TaskState: t.state,
      TaskStatus: t.state === "Exception" ? "Critical" : t.state === "Cancelled" ? "Warning" : "OK",
      StartTime: isoTime(t.startedAt),
      PercentComplete: percent,
      TaskMonitor: this.monitorUri(t.id),
      Messages: [t.state === "Completed" ? message("Success") : message("TaskStarted", [t.id])],
    };
    if (t.endedAt !== undefined) task.EndTime = isoTime(t.endedAt);
    return task;
  }

  /**
   * The task monitor: 202 (with the Task) while running; then the operation's own answer
   * ("separate" monitors) or the finished Task ("task-uri"). DELETE cancels a running task.
   */
  private monitorNode(t: Task): Node {
    return {
      get: () => this.renderTask(t),
      getReply: () => {
        if (t.state === "Running") {
          const headers: Record<string, string> = { Location: this.monitorUri(t.id) };
          if (this.flavor.tasks?.retryAfterSeconds !== undefined) headers["Retry-After"] = String(this.flavor.tasks.retryAfterSeconds);
          return { status: 202, body: this.withEtag(this.renderTask(t)), headers };
        }
        if (this.flavor.tasks?.monitor === "task-uri") {
          const body = this.withEtag(this.renderTask(t));
          return { status: 200, body, headers: { ETag: body["@odata.etag"] as string } };
        }
        if (t.state === "Cancelled" || !t.result) fail(404, "ResourceMissingAtURI", [this.monitorUri(t.id)]);
        return t.result;
      },
      delete: () => {
        if (t.state !== "Running") fail(409, "ResourceInUse", [`task ${t.id} is ${t.state}`]);
        t.state = "Cancelled";
        t.endedAt = this.clock.now();
        const m = this.systemsList.find((s) => s.media.busyTask === t.id)?.media;
        if (m) m.busyTask = undefined;
        const erasing = this.systemsList.find((s) => s.eraseTask === t.id);
        if (erasing) erasing.eraseTask = undefined;
        return { status: 204 };
      },
      privilege: { GET: "Login", HEAD: "Login" },
    };
  }

  // -------------------------------------------------------------------------------------------
  // Manager, chassis

  private chassisUri(s: SystemState): string {
    return `${ROOT}/Chassis/${s.chassisId}`;
  }

  private renderManager(): Json {
    const f = this.flavor;
    const now = this.clock.now();
    const mgr: Json = {
      "@odata.type": "#Manager.v1_17_0.Manager",
      "@odata.id": this.managerUri,
      Id: this.managerId,
      Name: "Manager",
      ManagerType: "BMC",
      Description: `Lab BMC ${this.index} (${f.name})`,
      ServiceEntryPointUUID: this.serviceUuid,
      UUID: labUuid(UUID_KIND.manager, this.index),
      Model: f.managerModel,
      FirmwareVersion: f.firmwareVersion,
      DateTime: isoTime(now),
      DateTimeLocalOffset: "+00:00",
      Status: { State: now < this.unavailableUntil ? "Starting" : "Enabled", Health: "OK" },
      PowerState: "On",
      GraphicalConsole: { ...f.graphicalConsole, ConnectTypesSupported: [...f.graphicalConsole.ConnectTypesSupported] },
      SerialConsole: { ...f.serialConsole, ConnectTypesSupported: [...f.serialConsole.ConnectTypesSupported] },
      CommandShell: { ...f.commandShell, ConnectTypesSupported: [...f.commandShell.ConnectTypesSupported] },
      Links: {
        ManagerForServers: this.systemsList.map((s) => link(s.uri)),
        ManagerForChassis: this.systemsList.map((s) => link(this.chassisUri(s))),
        ManagerInChassis: link(this.chassisUri(this.systemsList[0])),
      },
    };
    if (f.virtualMedia === "manager") mgr.VirtualMedia = link(`${this.managerUri}/VirtualMedia`);
    if (f.managerResetSeconds !== null) {
      mgr.Actions = {
        "#Manager.Reset": {
          target: `${this.managerUri}/Actions/Manager.Reset`,
          "ResetType@Redfish.AllowableValues": ["ForceRestart", "GracefulRestart"],
        },
      };
    }
    return mgr;
  }

  private managerReset(ctx: Ctx): Reply {
    const action = "Manager.Reset";
    const p = this.actionParams(ctx, action, ["ResetType"]);
    const rt = p.ResetType ?? "GracefulRestart";
    if (typeof rt !== "string") fail(400, "ActionParameterValueTypeError", [JSON.stringify(rt), "ResetType", action], ["#/ResetType"]);
    if (!["ForceRestart", "GracefulRestart"].includes(rt)) fail(400, "ActionParameterValueNotInList", [rt, "ResetType", action], ["#/ResetType"]);
    this.sessionsById.clear();
    this.unavailableUntil = this.clock.now() + (this.flavor.managerResetSeconds ?? 0) * 1000;
    this.effect("manager-reset", this.managerUri, { resetType: rt });
    return { status: 204 };
  }

  private renderChassis(s: SystemState): Json {
    const f = this.flavor;
    const out: Json = {
      "@odata.type": "#Chassis.v1_22_0.Chassis",
      "@odata.id": this.chassisUri(s),
      Id: s.chassisId,
      Name: "Computer System Chassis",
      ChassisType: "RackMount",
      Manufacturer: f.manufacturer,
      Model: f.model(s.profile.name),
      SKU: s.profile.sku,
      SerialNumber: s.serial,
      PartNumber: `${s.profile.sku}-CH`,
      PowerState: s.power,
      Status: { State: "Enabled", Health: "OK" },
      Links: {
        ComputerSystems: [link(s.uri)],
        ManagedBy: [link(this.managerUri)],
        ...(s.index === 1 ? { ManagersInChassis: [link(this.managerUri)] } : {}),
      },
    };
    if (s.ndf) out.NetworkAdapters = link(`${this.chassisUri(s)}/NetworkAdapters`);
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // Network adapters (flavors with networkAdapters; see iscsi-boot.ts)

  private adapterUri(s: SystemState, f: LabDeviceFunction): string {
    return `${this.chassisUri(s)}/NetworkAdapters/${f.adapterId}`;
  }

  private functionUri(s: SystemState, f: LabDeviceFunction): string {
    return `${this.adapterUri(s, f)}/NetworkDeviceFunctions/${f.functionId}`;
  }

  private adapterNode(s: SystemState, f: LabDeviceFunction, rest: string[]): Node | undefined {
    const [a, b, c, d] = rest;
    if (a === undefined) return { get: () => collection("NetworkAdapterCollection", `${this.chassisUri(s)}/NetworkAdapters`, "Network Adapter Collection", [this.adapterUri(s, f)]) };
    if (a !== f.adapterId) return undefined;
    if (b === undefined) return { get: () => this.renderAdapter(s, f) };
    if (b !== "NetworkDeviceFunctions") return undefined;
    if (c === undefined) return { get: () => collection("NetworkDeviceFunctionCollection", `${this.adapterUri(s, f)}/NetworkDeviceFunctions`, "Network Device Function Collection", [this.functionUri(s, f)]) };
    if (c !== f.functionId || d !== undefined) return undefined;
    const node: Node = { get: () => this.renderFunction(s, f), patch: (ctx) => this.patchFunction(ctx, s, f, node) };
    return node;
  }

  private renderAdapter(s: SystemState, f: LabDeviceFunction): Json {
    return {
      "@odata.type": "#NetworkAdapter.v1_9_0.NetworkAdapter",
      "@odata.id": this.adapterUri(s, f),
      Id: f.adapterId,
      Name: "Network Adapter",
      Manufacturer: this.flavor.manufacturer,
      Model: this.flavor.networkAdapters?.model ?? "Lab NIC",
      Status: { State: "Enabled", Health: "OK" },
      NetworkDeviceFunctions: link(`${this.adapterUri(s, f)}/NetworkDeviceFunctions`),
    };
  }

  private renderFunction(s: SystemState, f: LabDeviceFunction): Json {
    const nic = s.nics[0];
    return {
      "@odata.type": "#NetworkDeviceFunction.v1_5_0.NetworkDeviceFunction",
      "@odata.id": this.functionUri(s, f),
      Id: f.functionId,
      Name: "Network Device Function",
      Status: { State: "Enabled", Health: "OK" },
      NetDevFuncType: "Ethernet",
      NetDevFuncCapabilities: ["Ethernet", "iSCSI"],
      DeviceEnabled: true,
      Ethernet: { MACAddress: f.mac, PermanentMACAddress: f.mac, MTUSize: 1500 },
      BootMode: f.bootMode,
      "BootMode@Redfish.AllowableValues": [...NDF_BOOT_MODES],
      iSCSIBoot: renderIscsi(f),
      Links: { EthernetInterface: link(`${s.uri}/EthernetInterfaces/${nic.id}`) },
    };
  }

  private patchFunction(ctx: Ctx, s: SystemState, f: LabDeviceFunction, node: Node): Reply {
    this.checkIfMatch(ctx, node);
    const body = this.patchBody(ctx);
    const change = functionChanges(f, body, this.renderFunction(s, f));
    const bootChanged = change.bootMode !== undefined && change.bootMode !== f.bootMode;
    if (bootChanged && s.power === "PoweringOn" && this.flavor.bootPatchDuringPost !== null) {
      fail(this.flavor.bootPatchDuringPost, "ResourceInUse", ["the system is in POST (powering on); change the boot mode when it is On or Off"], ["#/BootMode"]);
    }
    const changed: Record<string, unknown> = {};
    if (bootChanged) changed.BootMode = { from: f.bootMode, to: change.bootMode };
    for (const [k, v] of Object.entries(change.iscsi)) {
      if (f.iscsi[k] === v) continue;
      changed[`iSCSIBoot.${k}`] = /Secret$/.test(k) ? (v === null ? "(cleared)" : "(set)") : { from: f.iscsi[k], to: v };
      f.iscsi[k] = v;
    }
    if (change.bootMode !== undefined) f.bootMode = change.bootMode;
    if (Object.keys(changed).length) this.effect("iscsi-boot-config", this.functionUri(s, f), changed);
    return this.patched(node);
  }

  // -------------------------------------------------------------------------------------------
  // Sessions

  private renderSessionService(): Json {
    return {
      "@odata.type": "#SessionService.v1_1_8.SessionService",
      "@odata.id": `${ROOT}/SessionService`,
      Id: "SessionService",
      Name: "Session Service",
      Description: "Session Service",
      Status: { State: "Enabled", Health: "OK" },
      ServiceEnabled: true,
      SessionTimeout: this.sessionTimeoutSeconds,
      Sessions: link(SESSIONS),
    };
  }

  private patchSessionService(ctx: Ctx): Reply {
    const node: Node = { get: () => this.renderSessionService() };
    this.checkIfMatch(ctx, node);
    const body = this.patchBody(ctx);
    const current = this.renderSessionService();
    const errors: ReturnType<typeof message>[] = [];
    let timeout = this.sessionTimeoutSeconds;
    for (const [k, v] of Object.entries(body)) {
      if (k === "SessionTimeout") {
        if (typeof v !== "number" || !Number.isInteger(v)) errors.push(message("PropertyValueTypeError", [JSON.stringify(v), k], [`#/${k}`]));
        else if (v < 30 || v > 86400) errors.push(message("PropertyValueNotInList", [String(v), k], [`#/${k}`]));
        else timeout = v;
      } else errors.push(message(k in current ? "PropertyNotWritable" : "PropertyUnknown", [k], [`#/${k}`]));
    }
    if (errors.length) throw new RedfishError(400, errors);
    if (timeout !== this.sessionTimeoutSeconds) {
      this.sessionTimeoutSeconds = timeout;
      this.effect("service-update", `${ROOT}/SessionService`, { SessionTimeout: timeout });
    }
    return this.patched(node);
  }

  private renderSessions(): Json {
    return collection("SessionCollection", SESSIONS, "Session Collection", [...this.sessionsById.keys()].map((id) => `${SESSIONS}/${id}`));
  }

  private renderSession(s: Session): Json {
    return {
      "@odata.type": "#Session.v1_6_0.Session",
      "@odata.id": `${SESSIONS}/${s.id}`,
      Id: s.id,
      Name: "User Session",
      Description: "Manager User Session",
      UserName: s.userName,
      CreatedTime: isoTime(s.createdAt),
    };
  }

  private createSession(ctx: Ctx): Reply {
    const sessions = this.flavor.sessions!;
    if (!ctx.hasBody || !isRecord(ctx.body)) fail(400, "MalformedJSON");
    const b = ctx.body;
    const missing = ["UserName", "Password"].filter((k) => typeof b[k] !== "string");
    if (missing.length) {
      throw new RedfishError(400, missing.map((k) => message("PropertyMissing", [k], [`#/${k}`])));
    }
    const unknown = Object.keys(b).filter((k) => !["UserName", "Password", "Oem", "Context"].includes(k));
    if (unknown.length) throw new RedfishError(400, unknown.map((k) => message("PropertyUnknown", [k], [`#/${k}`])));
    const now = this.clock.now();
    const account = this.login(b.UserName as string, b.Password as string, now);
    ctx.entry.user = b.UserName as string;
    if (!account) fail(401, "ResourceAtUriUnauthorized", [SESSIONS]);
    if (ctx.sessionLimitFault || this.sessionsById.size >= sessions.limit) fail(sessions.limitStatus, "SessionLimitExceeded");
    const id = this.flavor.sessionId(++this.sessionCounter);
    const session: Session = {
      id,
      token: randomBytes(24).toString("hex"),
      accountId: account.id,
      userName: account.userName,
      createdAt: now,
      lastUsedAt: now,
    };
    this.sessionsById.set(id, session);
    this.effect("session-create", `${SESSIONS}/${id}`, { userName: account.userName });
    const body = this.withEtag(this.renderSession(session));
    return { status: 201, body, headers: { "X-Auth-Token": session.token, Location: `${SESSIONS}/${id}`, ETag: body["@odata.etag"] as string } };
  }

  private deleteSession(_ctx: Ctx, s: Session): Reply {
    this.sessionsById.delete(s.id);
    this.effect("session-delete", `${SESSIONS}/${s.id}`, { userName: s.userName });
    return { status: 204 };
  }

  // -------------------------------------------------------------------------------------------
  // Accounts

  private renderAccountService(): Json {
    return {
      "@odata.type": "#AccountService.v1_12_0.AccountService",
      "@odata.id": `${ROOT}/AccountService`,
      Id: "AccountService",
      Name: "Account Service",
      Description: "Account Service",
      Status: { State: "Enabled", Health: "OK" },
      ServiceEnabled: true,
      MinPasswordLength: 8,
      MaxPasswordLength: 40,
      AccountLockoutThreshold: 0,
      LocalAccountAuth: "Enabled",
      Accounts: link(`${ROOT}/AccountService/Accounts`),
      Roles: link(`${ROOT}/AccountService/Roles`),
    };
  }

  private accountUri(id: string): string {
    return `${ROOT}/AccountService/Accounts/${id}`;
  }

  private renderAccounts(): Json {
    const visible = [...this.accountsById.values()].filter((a) => this.flavor.accounts?.mode === "slots" || a.userName !== "");
    return collection("ManagerAccountCollection", `${ROOT}/AccountService/Accounts`, "Accounts Collection", visible.map((a) => this.accountUri(a.id)));
  }

  private renderAccount(a: Account): Json {
    const acc: Json = {
      "@odata.type": "#ManagerAccount.v1_10_0.ManagerAccount",
      "@odata.id": this.accountUri(a.id),
      Id: a.id,
      Name: "User Account",
      Description: "User Account",
      Enabled: a.enabled,
      Password: null,
      PasswordChangeRequired: false,
      AccountTypes: ["Redfish"],
      UserName: a.userName,
      RoleId: a.roleId,
      Locked: a.locked,
      AccountExpiration: a.expiresAt === null ? null : isoTime(a.expiresAt),
    };
    if (ROLE_PRIVILEGES[a.roleId]) acc.Links = { Role: link(`${ROOT}/AccountService/Roles/${a.roleId}`) };
    return acc;
  }

  private renderRole(id: string): Json {
    return {
      "@odata.type": "#Role.v1_3_1.Role",
      "@odata.id": `${ROOT}/AccountService/Roles/${id}`,
      Id: id,
      Name: "User Role",
      Description: ROLE_DESCRIPTIONS[id],
      IsPredefined: true,
      AssignedPrivileges: [...ROLE_PRIVILEGES[id]],
      OemPrivileges: [],
    };
  }

  /** Validates account properties; returns the changes. `creating`: UserName and Password are required. */
  private accountChanges(body: Record<string, unknown>, a: Account | undefined, creating: boolean): Partial<Account> {
    const errors: ReturnType<typeof message>[] = [];
    const out: Partial<Account> = {};
    const roles = this.flavor.accounts?.mode === "slots" ? [...Object.keys(ROLE_PRIVILEGES), "None"] : Object.keys(ROLE_PRIVILEGES);
    const readOnly = ["Id", "Name", "Description", "AccountTypes", "PasswordChangeRequired", "Links", "@odata.id", "@odata.type"];
    for (const [k, v] of Object.entries(body)) {
      const rel = [`#/${k}`];
      switch (k) {
        case "UserName":
          if (typeof v !== "string") errors.push(message("PropertyValueTypeError", [JSON.stringify(v), k], rel));
          else if (v !== "" && !/^[A-Za-z0-9._-]{1,32}$/.test(v)) errors.push(message("PropertyValueFormatError", [v, k], rel));
          else if (v !== "" && [...this.accountsById.values()].some((x) => x.userName === v && x !== a)) {
            throw new RedfishError(400, [message("ResourceAlreadyExists", ["UserName", v], rel)]);
          } else out.userName = v;
          break;
        case "Password":
          if (typeof v !== "string") errors.push(message("PropertyValueTypeError", ["***", k], rel));
          else if (v.length < 8 || v.length > 40) errors.push(message("PropertyValueFormatError", ["***", k], rel));
          else out.password = v;
          break;
        case "RoleId":
          if (typeof v !== "string") errors.push(message("PropertyValueTypeError", [JSON.stringify(v), k], rel));
          else if (!roles.includes(v)) errors.push(message("PropertyValueNotInList", [v, k], rel));
          else out.roleId = v;
          break;
        case "Enabled":
        case "Locked":
          if (typeof v !== "boolean") errors.push(message("PropertyValueTypeError", [JSON.stringify(v), k], rel));
          else if (k === "Locked" && v) errors.push(message("PropertyValueNotInList", ["true", k], rel));
          else if (k === "Enabled") out.enabled = v;
          else out.locked = v;
          break;
        case "AccountExpiration":
          if (v === null) out.expiresAt = null;
          else if (typeof v !== "string" || Number.isNaN(Date.parse(v))) errors.push(message("PropertyValueFormatError", [JSON.stringify(v), k], rel));
          else out.expiresAt = Date.parse(v);
          break;
        default:
          errors.push(message(readOnly.includes(k) ? "PropertyNotWritable" : "PropertyUnknown", [k], rel));
      }
    }
    if (creating) {
      for (const k of ["UserName", "Password"]) {
        if (body[k] === undefined) errors.push(message("PropertyMissing", [k], [`#/${k}`]));
      }
      if (out.userName === "") errors.push(message("PropertyValueFormatError", ['""', "UserName"], ["#/UserName"]));
    }
    if (errors.length) throw new RedfishError(400, errors);
    return out;
  }

  private createAccount(ctx: Ctx): Reply {
    const acc = this.flavor.accounts;
    if (!acc || acc.mode !== "collection") fail(405, "OperationNotAllowed", ["POST", ctx.path]);
    if (!ctx.hasBody || !isRecord(ctx.body)) fail(400, "MalformedJSON");
    const changes = this.accountChanges(ctx.body, undefined, true);
    if (this.accountsById.size >= acc.max) fail(400, "CreateLimitReachedForResource");
    const id = String(Math.max(0, ...[...this.accountsById.keys()].map(Number)) + 1);
    const a: Account = {
      id,
      userName: changes.userName!,
      password: changes.password!,
      roleId: changes.roleId ?? "ReadOnly",
      enabled: changes.enabled ?? true,
      locked: false,
      expiresAt: changes.expiresAt ?? null,
    };
    this.accountsById.set(id, a);
    this.effect("account-create", this.accountUri(id), { userName: a.userName, roleId: a.roleId });
    const body = this.withEtag(this.renderAccount(a));
    return { status: 201, body, headers: { Location: this.accountUri(id), ETag: body["@odata.etag"] as string } };
  }

  private patchAccount(ctx: Ctx, a: Account, node: Node): Reply {
    this.checkIfMatch(ctx, node);
    const body = this.patchBody(ctx);
    const self = ctx.auth.account?.id === a.id;
    const canConfigureUsers = (ROLE_PRIVILEGES[ctx.auth.account?.roleId ?? ""] ?? []).includes("ConfigureUsers");
    if (self && !canConfigureUsers && Object.keys(body).some((k) => k !== "Password")) fail(403, "InsufficientPrivilege");
    const slots = this.flavor.accounts?.mode === "slots";
    if (slots && a.id === "1") fail(400, "PropertyNotWritable", ["UserName"], ["#/UserName"]);
    const changes = this.accountChanges(body, a, false);
    const wasEmpty = a.userName === "";
    if (slots && wasEmpty && changes.userName) {
      // Filling an empty slot creates an account: it needs a password too.
      if (changes.password === undefined) fail(400, "PropertyMissing", ["Password"], ["#/Password"]);
    } else if (!slots && changes.userName === "") {
      fail(400, "PropertyValueFormatError", ['""', "UserName"], ["#/UserName"]);
    }
    const before = { ...a };
    Object.assign(a, changes);
    const clearing = slots && !wasEmpty && a.userName === "";
    if (clearing) Object.assign(a, { password: "", roleId: "None", enabled: false, expiresAt: null });
    if (slots && wasEmpty && a.userName !== "" && changes.enabled === undefined) a.enabled = true;
    if (slots && wasEmpty && a.userName !== "" && changes.roleId === undefined) a.roleId = "ReadOnly";
    // Sessions of an account that can no longer log in (or whose password changed) end.
    if (clearing || !a.enabled || a.password !== before.password || a.userName !== before.userName) {
      for (const [id, s] of this.sessionsById) {
        if (s.accountId === a.id && !(self && ctx.auth.session?.id === id && !clearing && a.enabled && a.userName === before.userName)) {
          this.sessionsById.delete(id);
        }
      }
    }
    const kind: SideEffectKind = slots && wasEmpty && a.userName !== "" ? "account-create" : clearing ? "account-delete" : "account-update";
    if (stableJson(before) !== stableJson(a)) {
      const detail: Record<string, unknown> = { userName: a.userName || before.userName };
      for (const k of Object.keys(changes)) if (k !== "password") detail[k] = (a as unknown as Record<string, unknown>)[k];
      if (changes.password !== undefined) detail.password = "***";
      this.effect(kind, this.accountUri(a.id), detail);
    }
    return this.patched(node);
  }

  private deleteAccount(_ctx: Ctx, a: Account): Reply {
    this.accountsById.delete(a.id);
    for (const [id, s] of this.sessionsById) if (s.accountId === a.id) this.sessionsById.delete(id);
    this.effect("account-delete", this.accountUri(a.id), { userName: a.userName });
    return { status: 204 };
  }

  // -------------------------------------------------------------------------------------------
  // Admin endpoint (lab-only)

  private adminInfo(): Json {
    return { ...this.info(), labId: this.labId ?? null, pid: process.pid, now: isoTime(this.clock.now()), latencyMs: this.latencyMs } as unknown as Json;
  }

  private adminState(): Json {
    this.settle();
    return {
      now: this.clock.now(),
      systems: this.systemsList.map((s) => ({
        id: s.id,
        powerState: s.power,
        boot: { ...s.boot },
        virtualMedia: { uri: s.media.uri, image: s.media.image, inserted: s.media.inserted },
        disk: copyDisk(s.disk),
        running: s.running,
        install: s.install ? { image: s.install.image, startedAt: s.install.startedAt, endsAt: s.install.endsAt } : null,
        lastInstallError: s.lastInstallError,
      })),
      sessions: this.sessions(),
      accounts: this.accounts(),
      tasks: this.tasks(),
    };
  }

  private handleAdmin(method: Method, path: string, url: URL, raw: string | undefined, res: http.ServerResponse): void {
    const json = (status: number, body?: unknown): void => this.send(res, { status, body });
    const bad = (msg: string, status = 400): void => json(status, { error: msg });
    let body: unknown;
    if (raw?.trim()) {
      try {
        body = JSON.parse(raw);
      } catch {
        return bad("the body is not JSON");
      }
    }
    try {
      if (path === "/lab" && method === "GET") return json(200, this.adminInfo());
      if (path === "/lab/state" && method === "GET") return json(200, this.adminState());
      if (path === "/lab/faults") {
        if (method === "GET") return json(200, { faults: this.faults.list() });
        if (method === "POST") {
          const rules = (Array.isArray(body) ? body : [body]).map(faultRuleFromJson);
          return json(201, { ids: rules.map((r) => this.faults.add(r)) });
        }
        if (method === "DELETE") {
          this.faults.clear();
          return json(204);
        }
      }
      const m = /^\/lab\/faults\/(\d+)$/.exec(path);
      if (m && method === "DELETE") return this.faults.remove(Number(m[1])) ? json(204) : bad(`no fault ${m[1]}`, 404);
      if (path === "/lab/log") {
        if (method === "GET") {
          const since = Number(url.searchParams.get("since") ?? 0);
          this.settle();
          return json(200, {
            requests: this.log.filter((r) => r.seq > since),
            sideEffects: this.effects,
            counters: this.stats,
          });
        }
        if (method === "DELETE") {
          this.clearLog();
          return json(204);
        }
      }
      if (path === "/lab/clock" && method === "POST") {
        const o = isRecord(body) ? body : {};
        const ms = typeof o.advanceSeconds === "number" ? o.advanceSeconds * 1000 : typeof o.advanceMs === "number" ? o.advanceMs : NaN;
        if (!(ms >= 0)) return bad('give {"advanceSeconds": S} (S >= 0)');
        this.clock.advance(ms);
        this.settle();
        return json(200, { now: this.clock.now(), iso: isoTime(this.clock.now()) });
      }
      const sm = /^\/lab\/systems\/([^/]+)(\/disk)?$/.exec(path);
      if (sm) {
        let sys: SystemState;
        try {
          sys = this.findSystem(sm[1]);
        } catch (e) {
          return bad(e instanceof Error ? e.message : String(e), 404);
        }
        if (!sm[2] && method === "GET") return json(200, this.system(sys.id));
        if (sm[2] && method === "GET") return json(200, { disk: this.system(sys.id).disk });
        if (sm[2] && method === "DELETE") {
          this.eraseDisk(sys.id);
          return json(200, { disk: this.system(sys.id).disk });
        }
        if (sm[2] && method === "PUT") {
          const o = isRecord(body) ? body : {};
          if (typeof o.image !== "string" || !o.image) return bad('give {"image": URL, "checksum"?: "sha256:<hex>"}');
          if (o.checksum !== undefined && typeof o.checksum !== "string") return bad("checksum must be a string");
          this.writeDisk(sys.id, o.image, o.checksum as string | undefined);
          return json(200, { disk: this.system(sys.id).disk });
        }
        return bad(`no lab endpoint ${method} ${path}`, 405);
      }
      if (path === "/lab/latency" && method === "POST") {
        const ms = isRecord(body) ? body.ms : undefined;
        if (typeof ms !== "number" || !(ms >= 0)) return bad('give {"ms": L} (L >= 0)');
        this.latencyMs = ms;
        return json(200, { latencyMs: ms });
      }
      return bad(`no lab endpoint ${method} ${path}`, 404);
    } catch (e) {
      return bad(e instanceof Error ? e.message : String(e));
    }
  }
}

export type { ActiveFault, FaultAction, FaultRule, LabRequest, LabStats, SideEffect, SideEffectKind } from "./faults";
