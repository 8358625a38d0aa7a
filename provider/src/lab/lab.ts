/**
 * The embedded lab, tier 0: N emulated BMCs (bmc.ts) with M systems each, on loopback, in this
 * process. `startLab()` resolves when every BMC listens; `info` says where they are, which
 * systems they manage, the credentials, the provider configuration to use, and the fixed tenants
 * and personas of later multi-tenancy tests. `stop()` closes everything.
 *
 *   const lab = await startLab({ bmcs: 2, systems: 2, flavor: "idrac-like", bootSeconds: 1 });
 *   ... pulumi config from lab.info.providerConfig, nodes from lab.info.nodes ...
 *   await lab.stop();
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_PASSWORD, LabAccountSeed, LabBmc, LabBmcInfo } from "./bmc";
import { type LabImageStore, startImageStore } from "./image-store";
import { Clock, SystemClock } from "./clock";
import { LAB_PERSONAS, LAB_PROJECTS, LabProject, MAX_INDEX, ownerOf } from "./fixtures";
import { FLAVOR_NAMES, FlavorName, flavorByName } from "./flavors";
import { LabSerialConsole } from "./serial-console";

export interface LabOptions {
  /** Number of BMCs (default 1). */
  bmcs?: number;
  /** Systems per BMC (default 2). */
  systems?: number;
  /** One flavor for every BMC, or a list cycled over the BMCs (default generic). */
  flavor?: FlavorName | FlavorName[];
  /** Real-time latency per request (default 0). */
  latencyMs?: number;
  /** Lab seconds a power-on takes (default 2). */
  bootSeconds?: number;
  shutdownSeconds?: number;
  /** Lab seconds a deploy image's installer runs before it writes the disk and powers the machine off (default 5). */
  installSeconds?: number;
  /** Installers fetch their http(s) images on loopback and fail on a non-200 answer or a checksum mismatch (default false). */
  fetchImages?: boolean;
  /** BMC i listens on portBase + i - 1 (default 0: free ports chosen by the system). */
  portBase?: number;
  /** Administrator of every BMC (default: the first flavor's default user). */
  username?: string;
  password?: string;
  /** Also seed lab-operator (Operator) and lab-reader (ReadOnly) accounts (default true). */
  extraAccounts?: boolean;
  clock?: Clock;
  /** Serve HTTPS with a throwaway self-signed certificate for 127.0.0.1 (made with the openssl CLI). */
  tls?: boolean;
  powerState?: "On" | "Off";
  powerOnGuardSeconds?: number;
  sessionLimit?: number;
  sessionTimeoutSeconds?: number;
  taskSeconds?: number;
  /**
   * Give every emulated machine a disk of real bytes: a sparse file of this many bytes per system
   * in a private temporary directory (removed by stop()). Installers then write their image's bytes
   * to it, and a booted backup image is played by our emulator's backup agent (bmc.ts "Backup
   * images"). Default: none (disks are labels only).
   */
  diskBytes?: number;
  /** Each BMC runs its serial console over SSH (serial-console.ts) on a free loopback port (default true). */
  serialConsole?: boolean;
}

export interface LabNode {
  /** A name for the node resource, e.g. lab-bmc1-sys2. */
  name: string;
  bmcIndex: number;
  /** The BMC address (bmc.address of a Node). */
  address: string;
  systemId: string;
  systemUri: string;
  uuid: string;
  serialNumber: string;
  macAddresses: string[];
  virtualMediaUri: string;
  resourceClass: string;
  /** The tenant project that owns the machine in multi-tenancy tests. */
  owner: string;
  /** The BMC's serial console (SSH) and the command that selects this machine's console on it; null without one. */
  serialConsole: { url: string; entryCommand: string } | null;
}

/** Everything a user or a test needs to use the lab; printed as JSON by `baremetal lab start`. */
export interface LabInfo {
  labId: string;
  pid: number;
  flavors: FlavorName[];
  systemsPerBmc: number;
  bootSeconds: number;
  installSeconds: number;
  fetchImages: boolean;
  latencyMs: number;
  tls: boolean;
  credentials: { username: string; password: string };
  accounts: LabAccountSeed[];
  bmcs: Array<LabBmcInfo & { admin: string }>;
  nodes: LabNode[];
  /** Stack configuration of the provider (`pulumi config set baremetal:...`). */
  providerConfig: Record<string, string | boolean>;
  /** The keys of providerConfig to set as secrets (`pulumi config set --secret`). */
  secretConfig: string[];
  /** The lab's image store (where deployments upload config drives; BMCs fetch from it). */
  imageStore: { url: string };
  /** The same as BAREMETAL_* environment variables. */
  env: Record<string, string>;
  /** Configuration of examples/quickstart (first BMC). */
  quickstart: { bmcAddress: string; systemIds: string[] };
  tenants: { projects: readonly LabProject[]; personas: typeof LAB_PERSONAS };
}

export interface Lab {
  readonly id: string;
  readonly bmcs: LabBmc[];
  readonly clock: Clock;
  readonly info: LabInfo;
  readonly imageStore: LabImageStore;
  /** PEM of the lab's certificate when `tls`. */
  readonly ca?: string;
  stop(): Promise<void>;
}

export const LAB_OPERATOR: LabAccountSeed = { userName: "lab-operator", password: "lab-operator-pw", roleId: "Operator" };
export const LAB_READER: LabAccountSeed = { userName: "lab-reader", password: "lab-reader-pw", roleId: "ReadOnly" };

function intOption(name: string, v: number | undefined, def: number, min: number, max: number): number {
  const n = v ?? def;
  if (!Number.isInteger(n) || n < min || n > max) throw new RangeError(`${name} must be an integer from ${min} to ${max}, got ${v}`);
  return n;
}

/** A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI. */
export function makeLabCertificate(): { key: string; cert: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "baremetal-lab-tls-"));
  try {
    const keyFile = path.join(dir, "key.pem");
    const certFile = path.join(dir, "cert.pem");
    execFileSync(
      "openssl",
      [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", keyFile, "-out", certFile, "-days", "30",
        "-subj", "/CN=baremetal-lab-bmc", "-addext", "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
      ],
      { stdio: "pipe" },
    );
    return { key: fs.readFileSync(keyFile, "utf8"), cert: fs.readFileSync(certFile, "utf8") };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export async function startLab(opts: LabOptions = {}): Promise<Lab> {
  const bmcCount = intOption("bmcs", opts.bmcs, 1, 1, MAX_INDEX);
  const systems = intOption("systems", opts.systems, 2, 1, MAX_INDEX);
  const portBase = intOption("portBase", opts.portBase, 0, 0, 65535);
  if (portBase > 0 && portBase + bmcCount - 1 > 65535) throw new RangeError(`portBase ${portBase} leaves no room for ${bmcCount} BMCs`);
  const flavors = (Array.isArray(opts.flavor) ? opts.flavor : [opts.flavor ?? "generic"]).map((f) => flavorByName(f).name);
  if (!flavors.length) throw new RangeError(`give at least one flavor (${FLAVOR_NAMES.join(", ")})`);
  const username = opts.username ?? flavorByName(flavors[0]).defaultUsername;
  const password = opts.password ?? DEFAULT_PASSWORD;
  if (password.length < 8) throw new RangeError("the lab password must have at least 8 characters");
  const accounts = opts.extraAccounts === false ? [] : [LAB_OPERATOR, LAB_READER].filter((a) => a.userName !== username);
  const clock = opts.clock ?? new SystemClock();
  const id = `lab-${randomBytes(6).toString("hex")}`;
  const tls = opts.tls ? makeLabCertificate() : undefined;
  const bootSeconds = opts.bootSeconds ?? 2;
  const installSeconds = opts.installSeconds ?? 5;
  const fetchImages = opts.fetchImages ?? false;
  const latencyMs = opts.latencyMs ?? 0;
  const diskDir = opts.diskBytes !== undefined ? fs.mkdtempSync(path.join(os.tmpdir(), `${id}-disks-`)) : undefined;
  const removeDisks = () => diskDir && fs.rmSync(diskDir, { recursive: true, force: true });

  const bmcs: LabBmc[] = [];
  try {
    for (let i = 1; i <= bmcCount; i++) {
      const port = portBase > 0 ? portBase + i - 1 : 0;
      try {
        bmcs.push(
          await LabBmc.start({
            index: i,
            systems,
            flavor: flavors[(i - 1) % flavors.length],
            username,
            password,
            accounts,
            port,
            clock,
            latencyMs,
            bootSeconds,
            shutdownSeconds: opts.shutdownSeconds,
            installSeconds,
            fetchImages,
            powerState: opts.powerState,
            powerOnGuardSeconds: opts.powerOnGuardSeconds,
            sessionLimit: opts.sessionLimit,
            sessionTimeoutSeconds: opts.sessionTimeoutSeconds,
            taskSeconds: opts.taskSeconds,
            tls,
            labId: id,
            serialConsole: opts.serialConsole ?? true,
            ...(diskDir ? { diskDir, diskBytes: opts.diskBytes } : {}),
          }),
        );
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "EADDRINUSE") throw new Error(`BMC ${i} cannot listen on 127.0.0.1:${port}: the port is in use; choose another --port-base`);
        throw e;
      }
    }
  } catch (e) {
    await Promise.all(bmcs.map((b) => b.close()));
    removeDisks();
    throw e;
  }

  let n = 0;
  const nodes: LabNode[] = [];
  const bmcInfos = bmcs.map((b) => ({ ...b.info(), admin: `${b.url}/lab` }));
  for (const b of bmcInfos) {
    for (const s of b.systems) {
      n++;
      nodes.push({
        name: s.name,
        bmcIndex: b.index,
        address: b.url,
        systemId: s.id,
        systemUri: s.uri,
        uuid: s.uuid,
        serialNumber: s.serialNumber,
        macAddresses: s.macAddresses,
        virtualMediaUri: s.virtualMediaUri,
        resourceClass: s.resourceClass,
        owner: ownerOf(n),
        serialConsole: b.serialConsole ? { url: b.serialConsole.url, entryCommand: LabSerialConsole.entryCommand(s.id) } : null,
      });
    }
  }
  let imageStore: LabImageStore;
  try {
    imageStore = await startImageStore({ username: "lab-images", password });
  } catch (e) {
    await Promise.all(bmcs.map((b) => b.close()));
    removeDisks();
    throw e;
  }
  const providerConfig: Record<string, string | boolean> = {
    "baremetal:bmcUsername": username,
    "baremetal:bmcPassword": password,
    "baremetal:imageStoreUrl": imageStore.writerUrl,
  };
  const secretConfig = ["baremetal:bmcPassword", "baremetal:imageStoreUrl"];
  const env: Record<string, string> = { BAREMETAL_BMC_USERNAME: username, BAREMETAL_BMC_PASSWORD: password, BAREMETAL_IMAGE_STORE_URL: imageStore.writerUrl };
  if (tls) {
    providerConfig["baremetal:bmcCaBundle"] = tls.cert;
    env.BAREMETAL_BMC_CA_BUNDLE = tls.cert;
  }
  // The serial consoles' SSH host keys, for whoever bridges a console (the service) to pin.
  const hostKeys = bmcs.flatMap((b) => (b.serialConsole ? [b.serialConsole.knownHostsLine] : []));
  if (hostKeys.length) {
    providerConfig["baremetal:bmcSshHostKeys"] = hostKeys.join("\n");
    env.BAREMETAL_BMC_SSH_HOST_KEYS = hostKeys.join("\n");
  }
  const info: LabInfo = {
    labId: id,
    pid: process.pid,
    flavors,
    systemsPerBmc: systems,
    bootSeconds,
    installSeconds,
    fetchImages,
    latencyMs,
    tls: !!tls,
    credentials: { username, password },
    accounts: [{ userName: username, password, roleId: "Administrator" }, ...accounts],
    bmcs: bmcInfos,
    nodes,
    providerConfig,
    secretConfig,
    imageStore: { url: imageStore.url },
    env,
    quickstart: { bmcAddress: bmcs[0].url, systemIds: bmcInfos[0].systems.map((s) => s.id) },
    tenants: { projects: LAB_PROJECTS, personas: LAB_PERSONAS },
  };

  let stopped: Promise<void> | undefined;
  return {
    id,
    bmcs,
    clock,
    info,
    ca: tls?.cert,
    imageStore,
    stop: () => (stopped ??= Promise.all([...bmcs.map((b) => b.close()), imageStore.close()]).then(() => void removeDisks())),
  };
}
