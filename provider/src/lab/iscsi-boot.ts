/**
 * The lab BMC's network device function (one per system, on the port of the system's first NIC)
 * and what OUR EMULATOR does with its iSCSI boot settings. Real BMCs only store these settings;
 * the machine's firmware (the NIC's option ROM or UEFI iSCSI driver) logs in at boot. Here,
 * when an emulated system boots from its function (see bmc.ts completeBoot), the emulator itself
 * logs in to the configured target with the configured initiator name and CHAP credentials,
 * using libiscsi's userspace initiator (`iscsi-readcapacity16` from Debian's libiscsi-bin: a
 * login, then READ CAPACITY(16) of the LUN), and records the outcome on the system (lab-only
 * `iscsiBoot`, and an `iscsi-login` side effect), so that a wrong configuration is visible.
 * Without libiscsi's tools the outcome says so (`state: "not-tried"`): the configuration is only
 * recorded.
 *
 * The CHAP secrets are write-only (GET answers null), never appear in side effects, views or the
 * request log (bmc.ts redacts them), and reach the initiator through its environment
 * (LIBISCSI_CHAP_USERNAME / LIBISCSI_CHAP_PASSWORD), never its command line.
 */
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { isIP } from "node:net";
import { message, RedfishError, type Json } from "./messages";

export const NDF_BOOT_MODES = ["Disabled", "PXE", "iSCSI"];

type Kind = "string" | "integer" | "boolean";
/** The writable iSCSIBoot properties, their JSON type (all nullable) and allowed values. */
const ISCSI_PROPS: Record<string, { kind: Kind; allowed?: string[]; min?: number; max?: number; secret?: boolean }> = {
  IPAddressType: { kind: "string", allowed: ["IPv4", "IPv6"] },
  InitiatorIPAddress: { kind: "string" },
  InitiatorName: { kind: "string" },
  InitiatorDefaultGateway: { kind: "string" },
  InitiatorNetmask: { kind: "string" },
  TargetInfoViaDHCP: { kind: "boolean" },
  PrimaryTargetName: { kind: "string" },
  PrimaryTargetIPAddress: { kind: "string" },
  PrimaryTargetTCPPort: { kind: "integer", min: 1, max: 65535 },
  PrimaryLUN: { kind: "integer", min: 0, max: 16383 },
  PrimaryVLANEnable: { kind: "boolean" },
  PrimaryVLANId: { kind: "integer", min: 0, max: 4094 },
  PrimaryDNS: { kind: "string" },
  IPMaskDNSViaDHCP: { kind: "boolean" },
  AuthenticationMethod: { kind: "string", allowed: ["None", "CHAP", "MutualCHAP"] },
  CHAPUsername: { kind: "string" },
  CHAPSecret: { kind: "string", secret: true },
  MutualCHAPUsername: { kind: "string" },
  MutualCHAPSecret: { kind: "string", secret: true },
};

export interface LabDeviceFunction {
  adapterId: string;
  functionId: string;
  mac: string;
  bootMode: string;
  /** Every iSCSIBoot property, secrets included (never rendered). */
  iscsi: Record<string, string | number | boolean | null>;
}

/** The outcome of the emulated firmware's iSCSI login at the last boot from the function. */
export interface LabIscsiBoot {
  state: "logging-in" | "logged-in" | "failed" | "not-tried";
  /** Lab time (ms) of the boot. */
  at: number;
  portal: string | null;
  target: string | null;
  lun: number | null;
  initiator: string | null;
  chapUser: string | null;
  /** READ CAPACITY(16) of the LUN after the login. */
  capacityBytes?: number;
  /** Why it failed (the initiator's own words), or why it was not tried. */
  error?: string;
}

export function newDeviceFunction(adapterId: string, functionId: string, mac: string): LabDeviceFunction {
  const iscsi: LabDeviceFunction["iscsi"] = Object.fromEntries(Object.keys(ISCSI_PROPS).map((k) => [k, null]));
  iscsi.IPAddressType = "IPv4";
  iscsi.TargetInfoViaDHCP = false;
  iscsi.IPMaskDNSViaDHCP = true;
  iscsi.AuthenticationMethod = "None";
  return { adapterId, functionId, mac, bootMode: "Disabled", iscsi };
}

/** The iSCSIBoot object as GET shows it: secrets null. */
export function renderIscsi(f: LabDeviceFunction): Json {
  const out: Json = {};
  for (const [k, spec] of Object.entries(ISCSI_PROPS)) out[k] = spec.secret ? null : f.iscsi[k];
  return out;
}

/** For views and side effects: no secrets, only whether one is set. */
export function describeFunction(f: LabDeviceFunction): Json {
  return { adapterId: f.adapterId, functionId: f.functionId, mac: f.mac.toLowerCase(), bootMode: f.bootMode, iSCSIBoot: renderIscsi(f), chapSecretSet: typeof f.iscsi.CHAPSecret === "string" && f.iscsi.CHAPSecret !== "" };
}

/**
 * Validates a PATCH body of a device function and returns the changes (400 with one message per
 * bad property otherwise). A refused secret value is never quoted back.
 */
export function functionChanges(f: LabDeviceFunction, body: Record<string, unknown>, current: Json): { bootMode?: string; iscsi: Record<string, string | number | boolean | null> } {
  const errors: ReturnType<typeof message>[] = [];
  const out: { bootMode?: string; iscsi: Record<string, string | number | boolean | null> } = { iscsi: {} };
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
  for (const [k, v] of Object.entries(body)) {
    if (k === "BootMode") {
      if (typeof v !== "string") errors.push(message("PropertyValueTypeError", [JSON.stringify(v), k], [`#/${k}`]));
      else if (!NDF_BOOT_MODES.includes(v)) errors.push(message("PropertyValueNotInList", [v, k], [`#/${k}`]));
      else out.bootMode = v;
    } else if (k === "iSCSIBoot") {
      if (!isObj(v)) {
        errors.push(message("PropertyValueTypeError", [JSON.stringify(v), k], [`#/${k}`]));
        continue;
      }
      for (const [ik, iv] of Object.entries(v)) {
        const spec = ISCSI_PROPS[ik];
        const name = `iSCSIBoot/${ik}`;
        const rel = [`#/iSCSIBoot/${ik}`];
        const shown = spec?.secret ? '"(secret)"' : JSON.stringify(iv);
        if (!spec) errors.push(message("PropertyUnknown", [name], rel));
        else if (iv === null) out.iscsi[ik] = null;
        else if (spec.kind === "string" && typeof iv !== "string") errors.push(message("PropertyValueTypeError", [shown, name], rel));
        else if (spec.kind === "boolean" && typeof iv !== "boolean") errors.push(message("PropertyValueTypeError", [shown, name], rel));
        else if (spec.kind === "integer" && !Number.isInteger(iv)) errors.push(message("PropertyValueTypeError", [shown, name], rel));
        else if (spec.allowed && !spec.allowed.includes(iv as string)) errors.push(message("PropertyValueNotInList", [shown, name], rel));
        else if (spec.kind === "integer" && ((iv as number) < (spec.min ?? -Infinity) || (iv as number) > (spec.max ?? Infinity))) errors.push(message("PropertyValueFormatError", [shown, name], rel));
        else if ((ik === "PrimaryTargetIPAddress" || ik === "InitiatorIPAddress") && !isIP(iv as string)) errors.push(message("PropertyValueFormatError", [shown, name], rel));
        else out.iscsi[ik] = iv as string | number | boolean;
      }
    } else if (k in current) {
      errors.push(message("PropertyNotWritable", [k], [`#/${k}`]));
    } else {
      errors.push(message("PropertyUnknown", [k], [`#/${k}`]));
    }
  }
  if (errors.length) throw new RedfishError(400, errors);
  void f;
  return out;
}

function findBin(name: string): string | undefined {
  for (const d of ["/usr/bin", "/bin", "/usr/local/bin", ...(process.env.PATH ?? "").split(":")]) {
    if (!d) continue;
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

/** What the boot will try, from the function's settings (or why it cannot try). */
export function bootPlan(f: LabDeviceFunction, at: number): LabIscsiBoot {
  const i = f.iscsi;
  const addr = i.PrimaryTargetIPAddress as string | null;
  const port = (i.PrimaryTargetTCPPort as number | null) ?? 3260;
  const portal = addr ? (isIP(addr) === 6 ? `[${addr}]:${port}` : `${addr}:${port}`) : null;
  const plan: LabIscsiBoot = {
    state: "logging-in",
    at,
    portal,
    target: (i.PrimaryTargetName as string | null) ?? null,
    lun: (i.PrimaryLUN as number | null) ?? null,
    initiator: (i.InitiatorName as string | null) ?? null,
    chapUser: i.AuthenticationMethod === "None" ? null : ((i.CHAPUsername as string | null) ?? null),
  };
  const notTried = (error: string): LabIscsiBoot => ({ ...plan, state: "failed", error });
  if (i.TargetInfoViaDHCP === true) return notTried("TargetInfoViaDHCP is true, and the lab has no DHCP server handing out iSCSI root paths (option 17)");
  if (!plan.portal || !plan.target) return notTried("no target configured (iSCSIBoot.PrimaryTargetIPAddress and PrimaryTargetName)");
  if (!plan.initiator) return notTried("no initiator name configured (iSCSIBoot.InitiatorName)");
  if (i.AuthenticationMethod === "MutualCHAP") return notTried("the lab's initiator does one-way CHAP only (AuthenticationMethod MutualCHAP)");
  if (i.AuthenticationMethod === "CHAP" && (typeof i.CHAPUsername !== "string" || typeof i.CHAPSecret !== "string")) return notTried("AuthenticationMethod is CHAP but CHAPUsername or CHAPSecret is not set");
  if (!findBin("iscsi-readcapacity16")) {
    return { ...plan, state: "not-tried", error: "libiscsi's iscsi-readcapacity16 is not installed (Debian libiscsi-bin): the lab recorded the configuration only" };
  }
  return plan;
}

/**
 * Logs in as the configured initiator (libiscsi) and reads the LUN's capacity. Resolves with the
 * finished outcome; never rejects.
 */
export function iscsiLogin(f: LabDeviceFunction, plan: LabIscsiBoot, signal: AbortSignal, timeoutMs = 20_000): Promise<LabIscsiBoot> {
  const bin = findBin("iscsi-readcapacity16")!;
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.LIBISCSI_CHAP_USERNAME;
  delete env.LIBISCSI_CHAP_PASSWORD;
  if (f.iscsi.AuthenticationMethod === "CHAP") {
    env.LIBISCSI_CHAP_USERNAME = f.iscsi.CHAPUsername as string;
    env.LIBISCSI_CHAP_PASSWORD = f.iscsi.CHAPSecret as string;
  }
  const url = `iscsi://${plan.portal}/${plan.target}/${plan.lun ?? 0}`;
  return new Promise((resolve) => {
    execFile(bin, ["--initiator-name", plan.initiator!, url], { env, timeout: timeoutMs, signal, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const total = /Total size:\s*(\d+)/.exec(stdout);
      if (!err && total) return resolve({ ...plan, state: "logged-in", capacityBytes: Number(total[1]) });
      const secret = typeof f.iscsi.CHAPSecret === "string" ? f.iscsi.CHAPSecret : "";
      let why = (stderr || stdout || (err?.message ?? "")).trim().split("\n").filter(Boolean).slice(-2).join("; ") || `exit code ${err?.code ?? "?"}`;
      if (secret) why = why.split(secret).join("(secret)");
      resolve({ ...plan, state: "failed", error: why });
    });
  });
}
