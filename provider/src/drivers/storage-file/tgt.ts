/**
 * A client of tgtd's management channel (the unix socket `tgtadm` talks to), so that CHAP secrets
 * reach tgtd without ever being a command-line argument: `tgtadm --mode account --op new` takes the
 * password only as `--password <secret>` (visible in /proc/<pid>/cmdline to every local user for
 * the life of the process), so we speak tgtadm's own request format instead.
 *
 * Wire format (tgt 1.0.x, usr/tgtadm.h; the same on every version Debian ships):
 * - the socket is `<base>.<control port>`, base `/var/run/tgtd/socket`, or `$TGT_IPC_SOCKET` when
 *   set (tgtd and tgtadm both honour it), control port 0 unless tgtd runs with `-C N`;
 * - one request per connection: a 120-byte header in host byte order (little-endian here)
 *     u32 mode, u32 op, char lld[64], u32 len (header + body), i32 tid, u64 sid, u64 lun,
 *     u32 cid, u32 host_no, u32 device_type, u32 ac_dir, u32 pack, u32 force
 *   then the body: `key=value` pairs joined by commas (we add a terminating NUL);
 * - the answer: u32 err (a tgtadm error number, 0 = success), u32 len (8 + text), then the text of
 *   a `show`; tgtd closes the connection after it.
 * tgtd only answers a peer with its own uid and gid (SO_PEERCRED): run as the same user as tgtd.
 *
 * Facts taken from tgt's public source; the code is ours.
 */
import * as net from "node:net";
import { BaremetalError } from "../../core/errors";
import type { ExportInfo } from "../kinds/storage";

export const enum Mode {
  System = 0,
  Target = 1,
  Device = 2,
  Portal = 3,
  Lld = 4,
  Session = 5,
  Connection = 6,
  Account = 7,
}

export const enum Op {
  New = 0,
  Delete = 1,
  Show = 2,
  Bind = 3,
  Unbind = 4,
  Update = 5,
  Stats = 6,
  Start = 7,
  Stop = 8,
}

const HEADER_BYTES = 120;
const RESPONSE_HEADER_BYTES = 8;
/** tgtd refuses request bodies larger than this (MAX_MGT_BUFSIZE). */
const MAX_BODY_BYTES = 8 * 1024;

/** tgtadm's error numbers (usr/tgtadm_error.h), in order. */
const TGTADM_ERRORS = [
  "success",
  "unknown error",
  "out of memory",
  "can't find the driver",
  "can't find the target",
  "can't find the logical unit",
  "can't find the session",
  "can't find the connection",
  "can't find the binding",
  "this target already exists",
  "this logical unit number already exists",
  "this binding already exists",
  "this access control rule already exists",
  "this access control rule does not exist",
  "this account already exists",
  "can't find the account",
  "too many accounts",
  "invalid request",
  "this target already has an outgoing account",
  "this target is still active",
  "this logical unit is still active",
  "this driver is busy",
  "this operation is not supported",
  "unknown parameter",
  "the device has Prevent Removal set",
] as const;

export const TgtErr = {
  NoTarget: 4,
  NoLun: 5,
  NoBinding: 8,
  TargetExist: 9,
  LunExist: 10,
  BindingExist: 11,
  AclExist: 12,
  AclNoExist: 13,
  UserExist: 14,
  NoUser: 15,
  InvalidRequest: 17,
  TargetActive: 19,
} as const;

/** tgtd answered with an error number. `message` never contains request parameters. */
export class TgtError extends Error {
  constructor(
    readonly tgtErr: number,
    readonly what: string,
  ) {
    super(`tgtd refused ${what}: ${TGTADM_ERRORS[tgtErr] ?? `error ${tgtErr}`}`);
    this.name = "TgtError";
  }
}

export interface TgtRequest {
  mode: Mode;
  op: Op;
  /** Default -1: "every target" for a show. */
  tid?: number;
  lun?: bigint;
  sid?: bigint;
  /** 0 incoming (default), 1 outgoing. */
  acDir?: number;
  force?: boolean;
  /** `key=value` pairs; joined with commas. */
  params?: string[];
  /** Describes the request in errors (never its parameters: they may hold a secret). */
  what: string;
}

export interface TgtManagementOptions {
  /** The socket path; default from `controlPort` and `$TGT_IPC_SOCKET` like tgtadm. */
  socketPath?: string;
  controlPort?: number;
  timeoutMs?: number;
}

export function tgtSocketPath(controlPort = 0, base = process.env.TGT_IPC_SOCKET || "/var/run/tgtd/socket"): string {
  return `${base}.${controlPort}`;
}

export class TgtManagement {
  readonly socketPath: string;
  private readonly timeoutMs: number;

  constructor(opts: TgtManagementOptions = {}) {
    this.socketPath = opts.socketPath ?? tgtSocketPath(opts.controlPort ?? 0);
    this.timeoutMs = opts.timeoutMs ?? 15000;
  }

  /** Sends one request; resolves with the text of the answer (empty unless a show). */
  request(req: TgtRequest, signal?: AbortSignal): Promise<string> {
    const body = req.params?.length ? Buffer.from(`${req.params.join(",")}\0`, "utf8") : Buffer.alloc(0);
    if (body.length > MAX_BODY_BYTES) {
      body.fill(0);
      return Promise.reject(new BaremetalError("validation", `the tgt request for ${req.what} is longer than tgtd accepts (${MAX_BODY_BYTES} bytes)`));
    }
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32LE(req.mode, 0);
    header.writeUInt32LE(req.op, 4);
    header.write("iscsi", 8, "latin1");
    header.writeUInt32LE(HEADER_BYTES + body.length, 72);
    header.writeInt32LE(req.tid ?? -1, 76);
    header.writeBigUInt64LE(req.sid ?? 0n, 80);
    header.writeBigUInt64LE(req.lun ?? 0xffffffffffffffffn, 88);
    header.writeUInt32LE(0, 96); // cid
    header.writeUInt32LE(0, 100); // host_no
    header.writeUInt32LE(0, 104); // device_type: disk
    header.writeUInt32LE(req.acDir ?? 0, 108);
    header.writeUInt32LE(0, 112); // pack
    header.writeUInt32LE(req.force ? 1 : 0, 116);

    return new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let settled = false;
      const sock = net.connect({ path: this.socketPath });
      const finish = (err: Error | undefined, text?: string) => {
        if (settled) return;
        settled = true;
        body.fill(0); // the body may hold a CHAP secret: do not leave it in the heap longer than needed
        signal?.removeEventListener("abort", onAbort);
        sock.destroy();
        if (err) reject(err);
        else resolve(text ?? "");
      };
      const onAbort = () => finish(new BaremetalError("cancelled", `cancelled while asking tgtd for ${req.what}`));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      sock.setTimeout(this.timeoutMs, () =>
        finish(new BaremetalError("timeout", `tgtd did not answer ${req.what} within ${this.timeoutMs} ms (socket ${this.socketPath})`)),
      );
      sock.once("error", (e: NodeJS.ErrnoException) => {
        const unreachable = e.code === "ENOENT" || e.code === "ECONNREFUSED";
        finish(
          new BaremetalError(
            "transient",
            unreachable
              ? `tgtd is not running or not reachable at ${this.socketPath} (${e.code}): start tgtd (with -C <control port> matching iscsi.controlPort) or fix the iSCSI settings`
              : `talking to tgtd at ${this.socketPath} failed (${e.code ?? e.message})`,
            { unsent: unreachable, cause: e },
          ),
        );
      });
      sock.once("connect", () => {
        sock.write(body.length ? Buffer.concat([header, body]) : header);
      });
      sock.on("data", (d: Buffer) => chunks.push(d));
      sock.once("end", () => {
        const all = Buffer.concat(chunks);
        if (all.length < RESPONSE_HEADER_BYTES) {
          return finish(
            new BaremetalError("backend", `tgtd closed the management connection without an answer to ${req.what} (is the caller's uid the same as tgtd's?)`),
          );
        }
        const err = all.readUInt32LE(0);
        if (err !== 0) return finish(new TgtError(err, req.what));
        const len = all.readUInt32LE(4);
        finish(undefined, all.subarray(RESPONSE_HEADER_BYTES, Math.max(RESPONSE_HEADER_BYTES, len)).toString("utf8").replace(/\0+$/, ""));
      });
    });
  }

  showTargets(signal?: AbortSignal): Promise<TgtTarget[]> {
    return this.request({ mode: Mode.Target, op: Op.Show, what: "the list of targets" }, signal).then(parseTargets);
  }

  /** The portals tgtd listens on, as `host:port` (IPv6 hosts in brackets as tgtd prints them). */
  async showPortals(signal?: AbortSignal): Promise<string[]> {
    const text = await this.request({ mode: Mode.Portal, op: Op.Show, what: "the list of portals" }, signal);
    const out: string[] = [];
    for (const line of text.split("\n")) {
      const m = /^Portal:\s*(\S+?),\d+\s*$/.exec(line.trim());
      if (m) out.push(m[1]);
    }
    return out;
  }

  async showAccounts(signal?: AbortSignal): Promise<string[]> {
    const text = await this.request({ mode: Mode.Account, op: Op.Show, what: "the list of accounts" }, signal);
    return text
      .split("\n")
      .slice(1)
      .map((l) => l.trim())
      .filter(Boolean);
  }
}

export interface TgtLun {
  lun: number;
  type: string;
  backingStoreType: string;
  backingStorePath?: string;
  readonly: boolean;
}

export interface TgtTarget {
  tid: number;
  name: string;
  state: string;
  luns: TgtLun[];
  /** Incoming CHAP accounts bound to the target. */
  incomingAccounts: string[];
  outgoingAccount?: string;
  /** ACL entries: initiator addresses (`ALL`, `10.0.0.0/8`, ...) and initiator names, in tgtd's order. */
  acl: string[];
  /** Initiator names of the sessions (I_T nexuses) logged in now. */
  sessions: string[];
}

/**
 * Parses `tgtadm --mode target --op show` text (tgt's target.c prints it: one "Target N: name"
 * block per target, sections indented by tabs or spaces).
 */
export function parseTargets(text: string): TgtTarget[] {
  const targets: TgtTarget[] = [];
  let t: TgtTarget | undefined;
  let section = "";
  let lun: TgtLun | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const head = /^Target (\d+): (.+)$/.exec(line);
    if (head && !/^\s/.test(raw)) {
      t = { tid: Number(head[1]), name: head[2], state: "", luns: [], incomingAccounts: [], acl: [], sessions: [] };
      targets.push(t);
      section = "";
      lun = undefined;
      continue;
    }
    if (!t) continue;
    if (/^(System|I_T nexus|LUN|Account|ACL) information:$/.test(line)) {
      section = line.split(" ")[0];
      lun = undefined;
      continue;
    }
    switch (section) {
      case "System": {
        const m = /^State: (.+)$/.exec(line);
        if (m) t.state = m[1];
        break;
      }
      case "I_T": {
        const m = /^Initiator: (\S+)/.exec(line);
        if (m) t.sessions.push(m[1]);
        break;
      }
      case "LUN": {
        let m = /^LUN: (\d+)$/.exec(line);
        if (m) {
          lun = { lun: Number(m[1]), type: "", backingStoreType: "", readonly: false };
          t.luns.push(lun);
          break;
        }
        if (!lun) break;
        if ((m = /^Type: (.+)$/.exec(line))) lun.type = m[1];
        else if ((m = /^Backing store type: (.+)$/.exec(line))) lun.backingStoreType = m[1];
        else if ((m = /^Backing store path: (.+)$/.exec(line))) lun.backingStorePath = m[1] === "None" ? undefined : m[1];
        else if ((m = /^Readonly: (.+)$/.exec(line))) lun.readonly = m[1] === "Yes";
        break;
      }
      case "Account": {
        const m = /^(.+) \(outgoing\)$/.exec(line);
        if (m) t.outgoingAccount = m[1];
        else t.incomingAccounts.push(line);
        break;
      }
      case "ACL":
        t.acl.push(line);
        break;
    }
  }
  return targets;
}

// ---- exports as the storage drivers make them ----------------------------------------------------

/** RFC 3720 3.2.6.3 initiator names (iqn. lowercase as stringprep leaves it, eui., naa.). */
export const INITIATOR_RE = /^(?:iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[a-z0-9.:_-]+)?|eui\.[0-9A-F]{16}|naa\.[0-9A-F]{16}(?:[0-9A-F]{16})?)$/;

/** Target-name prefixes of our exports (`iqn.YYYY-MM.reversed.domain[:name]`, lowercase). */
export const IQN_PREFIX_RE = /^iqn\.\d{4}-\d{2}\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[a-z0-9.-]+)?$/;
export const CHAP_USER_RE = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$/;
/**
 * RFC 7143 12.1.3: CHAP secrets of at least 96 bits; printable ASCII without spaces or commas:
 * tgtd's requests are comma-separated `key=value` pairs, so a comma would cut the secret short.
 */
export const CHAP_SECRET_RE = /^[\x21-\x2b\x2d-\x7e]{12,255}$/;

/** The LUN every export of ours uses. */
export const EXPORT_LUN = 1;

/** An export as tgtd has it now, with what differs from the export the storage drivers make. */
export interface TgtExportInfo extends ExportInfo {
  tid: number;
  /** Initiators logged in now (tgt I_T nexuses). */
  sessions: string[];
  /** Deviations from the export the driver makes (extra ACL entries, no CHAP account, ...). */
  problems: string[];
}

/**
 * Reads one of our exports back from tgtd's target: one LUN (EXPORT_LUN) backed by `backingPath`
 * with `backingType`, the target named `targetIqn`, exactly one initiator name and one CHAP account
 * bound, no address ACL; every deviation is listed in `problems` (drift).
 */
export function describeTgtExport(
  t: TgtTarget,
  want: { volume: string; targetIqn: string; backingPath: string; backingType: string; portal: string | undefined },
): TgtExportInfo {
  const problems: string[] = [];
  const lun = t.luns.find((l) => l.backingStorePath === want.backingPath);
  if (t.name !== want.targetIqn) problems.push(`target name ${t.name}, expected ${want.targetIqn}`);
  if (!lun) problems.push(`no LUN is backed by ${want.backingPath}`);
  else {
    if (lun.lun !== EXPORT_LUN) problems.push(`the volume is LUN ${lun.lun}, expected ${EXPORT_LUN}`);
    if (lun.backingStoreType !== want.backingType) problems.push(`backing-store type ${lun.backingStoreType}, expected ${want.backingType}`);
  }
  if (t.state !== "ready") problems.push(`target state ${t.state}`);
  const names = t.acl.filter((a) => INITIATOR_RE.test(a));
  const addresses = t.acl.filter((a) => !INITIATOR_RE.test(a));
  if (names.length !== 1) problems.push(names.length ? `${names.length} initiators allowed: ${names.join(", ")}` : "no initiator allowed (ACL empty)");
  if (addresses.length) problems.push(`address ACL entries let initiators in by address: ${addresses.join(", ")}`);
  if (!t.incomingAccounts.length) problems.push("no CHAP account bound: tgt accepts logins without CHAP");
  if (t.incomingAccounts.length > 1) problems.push(`${t.incomingAccounts.length} CHAP accounts bound: ${t.incomingAccounts.join(", ")}`);
  return {
    volume: want.volume,
    portal: want.portal ?? "",
    targetIqn: t.name,
    lun: lun?.lun ?? EXPORT_LUN,
    initiatorIqn: names[0] ?? "",
    chapUser: t.incomingAccounts[0] ?? "",
    tid: t.tid,
    sessions: t.sessions,
    problems,
  };
}
