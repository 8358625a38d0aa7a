/**
 * Test harness: a real iSCSI target, tgtd (Debian's `tgt`, the Linux SCSI target framework's
 * userspace daemon), on loopback, and the userspace initiators that log in to it: libiscsi's tools
 * (Debian's `libiscsi-bin`: iscsi-inq, iscsi-ls, iscsi-readcapacity16, iscsi-perf, ...) and
 * qemu-io with qemu's libiscsi block driver (`qemu-utils` + `qemu-block-extra`), which reads and
 * writes data. There is no kernel iSCSI initiator here, and none is needed.
 *
 *   const tgt = await startTgt();
 *   // tgt.portal = "127.0.0.1:PORT"; manage it with tgt.tgtadm([...]) or through tgt.socketPath
 *   const cap = await tgt.readCapacity({ target, initiator, user, secret });
 *   await tgt.qemuIo({ target, initiator, user, secret }, ["write -P 0xab 0 4k"]);
 *   await tgt.stop();
 *
 * One instance = one temp directory holding tgtd's management socket and lock file
 * (`$TGT_IPC_SOCKET.<control port>`: tgtd and tgtadm both take the socket's base path from
 * TGT_IPC_SOCKET, so nothing goes to /var/run/tgtd and no instance meets another or a system tgtd),
 * its log, and the 0600 files that hand CHAP secrets to qemu-io. tgtd runs in the foreground (`-f`,
 * our child) with one iSCSI portal on 127.0.0.1:<free port>; when the port is taken tgtd logs
 * "unable to bind server socket" and keeps running without a portal, which counts as an early exit
 * (killed, retried on another port). Ready when tgtadm lists the portal and the port accepts a TCP
 * connection. tgtd ignores SIGTERM: stop() sends SIGKILL to its PID (the exit hook of processes.ts
 * too), then deletes the directory.
 *
 * CHAP secrets never appear in a command line: libiscsi's tools read them from the environment
 * (LIBISCSI_CHAP_USERNAME / LIBISCSI_CHAP_PASSWORD), qemu-io from a secret object's file.
 * Needs root (tgtd answers management requests from its own uid) and the Debian packages tgt,
 * libiscsi-bin, qemu-utils and qemu-block-extra (scripts/bootstrap.sh).
 */
import { ChildProcess, spawn } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { binariesAvailable, delay, describeExit, EarlyExit, findBin as processesFindBin, onFreePort, runTool, tail, type ToolResult, track, trackDir, untrack, untrackDir } from "./processes";

export interface TgtOptions {
  /** Readiness timeout in ms (default 15000). */
  startTimeoutMs?: number;
}

/** Who logs in, to what. */
export interface IscsiLogin {
  /** Target IQN. */
  target: string;
  lun?: number;
  /** Initiator name (`--initiator-name` / qemu's initiator-name). */
  initiator: string;
  /** CHAP user and secret; both or none. */
  user?: string;
  secret?: string;
}

export type { ToolResult };

export interface TgtInstance {
  host: "127.0.0.1";
  port: number;
  /** `127.0.0.1:PORT`. */
  portal: string;
  pid: number;
  dir: string;
  /** tgtd's -C value (the suffix of the socket's name). */
  controlPort: number;
  /** The TGT_IPC_SOCKET base of this instance. */
  ipcBase: string;
  /** The management socket: `${ipcBase}.${controlPort}`. */
  socketPath: string;
  /** Milliseconds from spawn to ready. */
  startMs: number;
  /** Runs tgtadm against this instance (never give it a secret: it would be in its argv). */
  tgtadm(args: string[]): Promise<string>;
  /** Runs a libiscsi tool (`iscsi-inq`, `iscsi-readcapacity16`, ...) with `--initiator-name`, the URL last. */
  iscsiTool(tool: string, login: IscsiLogin, extraArgs?: string[]): Promise<ToolResult>;
  /** Capacity in bytes by READ CAPACITY(16), or the tool's failure. */
  readCapacity(login: IscsiLogin): Promise<{ ok: true; bytes: number; blockSize: number } | { ok: false; result: ToolResult }>;
  /**
   * Runs qemu-io commands (`write -P 0xab 0 4k`, `read -P 0xab 0 4k`, `read -v 0 512`) on the LUN.
   * Killed after `timeoutMs` (default 30000; code -1): libiscsi keeps reconnecting to a target that
   * went away.
   */
  qemuIo(login: IscsiLogin, commands: string[], opts?: { timeoutMs?: number }): Promise<ToolResult>;
  log(): string;
  /** SIGKILL by PID (tgtd ignores SIGTERM), removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

const INSTALL = "Debian packages tgt, libiscsi-bin, qemu-utils, qemu-block-extra";
const findBin = (name: string) => processesFindBin(name, INSTALL);
const run = (file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 30000) => runTool(file, args, env, timeoutMs);


/** Whether this machine can run the harness. */
export function tgtAvailable(): { ok: boolean; why?: string } {
  if (typeof process.getuid === "function" && process.getuid() !== 0) return { ok: false, why: "not root" };
  return binariesAvailable(["tgtd", "tgtadm", "iscsi-readcapacity16", "iscsi-inq", "qemu-io"], INSTALL);
}



function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2000, () => done(false));
    s.once("error", () => done(false));
    s.once("connect", () => done(true));
  });
}

export async function startTgt(opts: TgtOptions = {}): Promise<TgtInstance> {
  const avail = tgtAvailable();
  if (!avail.ok) throw new Error(`the tgt harness cannot run: ${avail.why}`);
  const tgtd = findBin("tgtd");
  const tgtadmBin = findBin("tgtadm");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tgtd-"));
  fs.chmodSync(dir, 0o700);
  trackDir(dir);
  const ipcBase = path.join(dir, "socket");
  // Any number will do (the socket lives in our directory); a random one keeps even a tgtd that
  // ignored TGT_IPC_SOCKET off the default control port 0 of a system tgtd. tgtd keeps it in a
  // short: at most 32767.
  const controlPort = randomInt(1000, 32768);
  const socketPath = `${ipcBase}.${controlPort}`;
  const env = { ...process.env, TGT_IPC_SOCKET: ipcBase };
  let logText = "";
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let isExited = () => true;

  const tgtadm = async (args: string[]): Promise<string> => {
    const r = await run(tgtadmBin, ["-C", String(controlPort), ...args], env);
    if (r.code !== 0) throw new Error(`tgtadm ${args.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  };

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (child?.pid !== undefined && !isExited()) {
        process.kill(child.pid, "SIGKILL");
        await exited;
      }
      fs.rmSync(dir, { recursive: true, force: true });
      untrackDir(dir);
    })());

  const t0 = Date.now();
  try {
    const port = await onFreePort(async (p) => {
      logText = "";
      const c = spawn(tgtd, ["-f", "-C", String(controlPort), "--iscsi", `portal=127.0.0.1:${p}`], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
      c.stdout?.on("data", (d: Buffer) => (logText += d.toString()));
      c.stderr?.on("data", (d: Buffer) => (logText += d.toString()));
      c.once("error", () => undefined);
      track(c);
      let done = false;
      const ex = new Promise<void>((resolve) => {
        if (c.exitCode !== null || c.signalCode !== null) return resolve();
        c.once("exit", () => resolve());
      }).then(() => {
        done = true;
        untrack(c);
      });
      const kill = async () => {
        if (!done && c.pid !== undefined) process.kill(c.pid, "SIGKILL");
        await ex;
      };
      const deadline = Date.now() + (opts.startTimeoutMs ?? 15000);
      for (;;) {
        if (done || /unable to bind server socket|failed to create\/bind to portal|another tgtd is using/.test(logText)) {
          await kill();
          throw new EarlyExit(`tgtd could not start on 127.0.0.1:${p} (${describeExit(c)}):\n${tail(logText)}`);
        }
        if (Date.now() > deadline) {
          await kill();
          throw new Error(`tgtd not ready on 127.0.0.1:${p} after ${opts.startTimeoutMs ?? 15000} ms:\n${tail(logText)}`);
        }
        if (fs.existsSync(socketPath)) {
          const r = await run(tgtadmBin, ["-C", String(controlPort), "--lld", "iscsi", "--mode", "portal", "--op", "show"], env, 5000);
          if (r.code === 0 && r.stdout.includes(`Portal: 127.0.0.1:${p},`) && (await tcpOpen(p))) break;
        }
        await delay(10);
      }
      child = c;
      exited = ex;
      isExited = () => done;
      return p;
    });
    const startMs = Date.now() - t0;
    const portal = `127.0.0.1:${port}`;

    const loginEnv = (login: IscsiLogin): NodeJS.ProcessEnv => {
      const e: NodeJS.ProcessEnv = { ...process.env };
      delete e.LIBISCSI_CHAP_USERNAME;
      delete e.LIBISCSI_CHAP_PASSWORD;
      if (login.user !== undefined) e.LIBISCSI_CHAP_USERNAME = login.user;
      if (login.secret !== undefined) e.LIBISCSI_CHAP_PASSWORD = login.secret;
      return e;
    };
    const url = (login: IscsiLogin) => `iscsi://${portal}/${login.target}/${login.lun ?? 1}`;

    const iscsiTool = (tool: string, login: IscsiLogin, extraArgs: string[] = []) =>
      run(findBin(tool), ["--initiator-name", login.initiator, ...extraArgs, url(login)], loginEnv(login));

    return {
      host: "127.0.0.1",
      port,
      portal,
      pid: child!.pid!,
      dir,
      controlPort,
      ipcBase,
      socketPath,
      startMs,
      tgtadm,
      iscsiTool,
      async readCapacity(login) {
        const result = await iscsiTool("iscsi-readcapacity16", login);
        const total = /Total size:\s*(\d+)/.exec(result.stdout);
        const bs = /LOGICAL BLOCK LENGTH IN BYTES:\s*(\d+)/.exec(result.stdout);
        if (result.code !== 0 || !total || !bs) return { ok: false, result };
        return { ok: true, bytes: Number(total[1]), blockSize: Number(bs[1]) };
      },
      async qemuIo(login, commands, opts = {}) {
        const secretFile = path.join(dir, `chap-${randomBytes(6).toString("hex")}`);
        const o = [
          "driver=iscsi",
          "transport=tcp",
          `portal=${portal}`,
          `target=${login.target}`,
          `lun=${login.lun ?? 1}`,
          `initiator-name=${login.initiator}`,
        ];
        const args: string[] = [];
        if (login.user !== undefined) {
          fs.writeFileSync(secretFile, login.secret ?? "", { mode: 0o600 });
          args.push("--object", `secret,id=chap0,file=${secretFile}`);
          o.push(`user=${login.user}`, "password-secret=chap0");
        }
        args.push("--image-opts", o.join(","));
        for (const c of commands) args.push("-c", c);
        try {
          return await run(findBin("qemu-io"), args, process.env, opts.timeoutMs ?? 30000);
        } finally {
          fs.rmSync(secretFile, { force: true });
        }
      },
      log: () => logText,
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
