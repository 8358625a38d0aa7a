/**
 * Test harness: a real OpenSSH server (Debian's `openssh-server`) on loopback, the SSH peer of the
 * ssh-cli switch driver.
 *
 *   const sshd = await startSshd({ passwordUser: true });
 *   // sshd.port on 127.0.0.1; log in as root with sshd.privateKey, checking sshd.hostKeyFingerprint;
 *   // or as sshd.passwordLogin.user with sshd.passwordLogin.password
 *   sshd.sessions()  // commands run so far (sshd's own log: one "Starting session: command" each)
 *   await sshd.stop();
 *
 * One instance = one temp directory holding a generated sshd_config, a throwaway ed25519 host key
 * and client key (ssh-keygen), the authorized_keys, the pid file and the log. `sshd -D -f <config>
 * -E <log>` runs in the foreground (our child; stopped by its PID: SIGTERM, then SIGKILL), listens on
 * 127.0.0.1 only, on a free port (retried on another port when the bind fails). Test-only settings:
 * root may log in with the generated key only (PermitRootLogin prohibit-password), no PAM,
 * StrictModes off (the temp dir is not a home directory), LogLevel VERBOSE (to count sessions).
 *
 * `passwordUser: true` creates a throwaway local user (`bmssh<pid>x<random>`, no home, shell
 * /bin/sh) with a random password, because sshd checks passwords against the system's accounts
 * (without PAM: /etc/shadow) and root's password is not ours to set. stop() deletes the user; an exit
 * hook does too, and a later start deletes users of test processes that no longer exist.
 *
 * sshd needs its privilege separation directory /run/sshd (created, 0755, when missing: no service
 * manager creates it here). Needs root and the Debian package openssh-server (scripts/bootstrap.sh).
 */
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { delay, describeExit, EarlyExit, onFreePort, tail, track, untrack } from "./processes";

export interface SshdOptions {
  /** Also create a throwaway local user that logs in with a password (see the header). */
  passwordUser?: boolean;
  /** Readiness timeout in ms (default 15000). */
  startTimeoutMs?: number;
}

export interface SshdInstance {
  host: "127.0.0.1";
  port: number;
  pid: number;
  dir: string;
  /** The host key as OpenSSH prints its fingerprint: SHA256:<base64>. */
  hostKeyFingerprint: string;
  /** The host's public key line (`ssh-ed25519 AAAA... comment`). */
  hostPublicKey: string;
  /** A known_hosts line for this server (`[127.0.0.1]:PORT ssh-ed25519 AAAA...`). */
  knownHosts: string;
  /** Root logs in with this key (OpenSSH private key text). */
  user: "root";
  privateKey: string;
  /** A user with a password (when `passwordUser`). */
  passwordLogin?: { user: string; password: string };
  /** Sessions (exec channels) sshd has started so far, from its log. */
  sessions(): number;
  log(): string;
  /** Stops sshd by PID, deletes the password user and the temp dir. Idempotent. */
  stop(): Promise<void>;
}

const STOP_GRACE_MS = 3000;
const USER_PREFIX = "bmssh";
const liveUsers = new Set<string>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;

function findSbin(name: string): string {
  for (const d of ["/usr/sbin", "/sbin", "/usr/bin", "/bin", ...(process.env.PATH ?? "").split(":")]) {
    if (!d) continue;
    const p = path.join(d, name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${name} not found: run scripts/bootstrap.sh (Debian packages openssh-server, openssh-client)`);
}

/** Whether this machine can run the harness (root, sshd and ssh-keygen installed). */
export function sshdAvailable(): { ok: boolean; why?: string } {
  if (typeof process.getuid === "function" && process.getuid() !== 0) return { ok: false, why: "not root" };
  try {
    findSbin("sshd");
    findSbin("ssh-keygen");
    return { ok: true };
  } catch (err) {
    return { ok: false, why: (err as Error).message };
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const u of liveUsers) {
      try {
        execFileSync(findSbin("userdel"), [u], { stdio: "ignore", timeout: 5000 });
      } catch {
        /* gone */
      }
    }
    for (const d of liveDirs) fs.rmSync(d, { recursive: true, force: true });
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Deletes bmssh<pid>x* users left behind by test processes that were killed outright. */
function sweepStaleUsers(): void {
  let passwd: string;
  try {
    passwd = fs.readFileSync("/etc/passwd", "utf8");
  } catch {
    return;
  }
  const re = new RegExp(`^${USER_PREFIX}(\\d+)x[0-9a-f]+$`);
  for (const line of passwd.split("\n")) {
    const name = line.split(":")[0];
    const m = re.exec(name);
    if (!m || Number(m[1]) === process.pid || pidAlive(Number(m[1]))) continue;
    try {
      execFileSync(findSbin("userdel"), [name], { stdio: "ignore", timeout: 5000 });
    } catch {
      /* someone else's cleanup won */
    }
  }
}

function keygen(file: string, comment: string): void {
  execFileSync(findSbin("ssh-keygen"), ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file], { stdio: "ignore" });
}

function fingerprint(pubFile: string): string {
  const out = execFileSync(findSbin("ssh-keygen"), ["-l", "-E", "sha256", "-f", pubFile], { encoding: "utf8" });
  const m = /SHA256:[A-Za-z0-9+/]+/.exec(out);
  if (!m) throw new Error(`ssh-keygen -l printed no SHA256 fingerprint: ${out}`);
  return m[0];
}

export async function startSshd(opts: SshdOptions = {}): Promise<SshdInstance> {
  const avail = sshdAvailable();
  if (!avail.ok) throw new Error(`the sshd harness cannot run: ${avail.why}`);
  const sshd = findSbin("sshd"); // sshd re-executes itself: it must be an absolute path
  installExitHook();
  sweepStaleUsers();
  if (!fs.existsSync("/run/sshd")) fs.mkdirSync("/run/sshd", { mode: 0o755, recursive: true });

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sshd-"));
  liveDirs.add(dir);
  const hostKey = path.join(dir, "ssh_host_ed25519_key");
  const clientKey = path.join(dir, "client_ed25519");
  const logFile = path.join(dir, "sshd.log");
  let user: string | undefined;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let isExited = () => true;

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (child?.pid !== undefined && !isExited()) {
        process.kill(child.pid, "SIGTERM");
        const graceful = await Promise.race([exited.then(() => true), delay(STOP_GRACE_MS).then(() => false)]);
        if (!graceful && !isExited()) {
          process.kill(child.pid, "SIGKILL");
          await exited;
        }
      }
      if (user) {
        try {
          execFileSync(findSbin("userdel"), [user], { stdio: "ignore", timeout: 10000 });
        } catch {
          /* gone */
        }
        liveUsers.delete(user);
      }
      fs.rmSync(dir, { recursive: true, force: true });
      liveDirs.delete(dir);
    })());

  try {
    keygen(hostKey, "baremetal-test-host");
    keygen(clientKey, "baremetal-test-client");
    fs.copyFileSync(`${clientKey}.pub`, path.join(dir, "authorized_keys"));
    const hostPublicKey = fs.readFileSync(`${hostKey}.pub`, "utf8").trim();
    let passwordLogin: SshdInstance["passwordLogin"];
    if (opts.passwordUser) {
      user = `${USER_PREFIX}${process.pid}x${randomBytes(3).toString("hex")}`;
      const password = randomBytes(12).toString("base64url");
      liveUsers.add(user);
      execFileSync(findSbin("useradd"), ["-M", "-N", "-d", "/", "-s", "/bin/sh", user], { stdio: "ignore" });
      execFileSync(findSbin("chpasswd"), [], { input: `${user}:${password}\n`, stdio: ["pipe", "ignore", "ignore"] });
      passwordLogin = { user, password };
    }

    const port = await onFreePort(async (p) => {
      const config = path.join(dir, "sshd_config");
      fs.writeFileSync(
        config,
        [
          `Port ${p}`,
          "ListenAddress 127.0.0.1",
          `HostKey ${hostKey}`,
          `PidFile ${path.join(dir, "sshd.pid")}`,
          `AuthorizedKeysFile ${path.join(dir, "authorized_keys")}`,
          "StrictModes no",
          "PermitRootLogin prohibit-password",
          "PubkeyAuthentication yes",
          `PasswordAuthentication ${opts.passwordUser ? "yes" : "no"}`,
          "KbdInteractiveAuthentication no",
          "PermitEmptyPasswords no",
          "UsePAM no",
          "LogLevel VERBOSE",
          "MaxStartups 100:30:200",
          "MaxSessions 100",
          "PrintMotd no",
          "X11Forwarding no",
          "AllowTcpForwarding no",
          "",
        ].join("\n"),
      );
      fs.writeFileSync(logFile, "");
      const c = spawn(sshd, ["-D", "-f", config, "-E", logFile], { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
      let stderr = "";
      c.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
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
      const deadline = Date.now() + (opts.startTimeoutMs ?? 15000);
      for (;;) {
        const logText = readOr(logFile) + stderr;
        if (done || /Cannot bind any address|Address already in use/.test(logText)) {
          if (!done) {
            c.kill("SIGKILL");
            await ex;
          }
          throw new EarlyExit(`sshd could not start on 127.0.0.1:${p} (${describeExit(c)}):\n${tail(logText)}`);
        }
        if (Date.now() > deadline) {
          c.kill("SIGKILL");
          await ex;
          throw new Error(`sshd not ready on 127.0.0.1:${p} after ${opts.startTimeoutMs ?? 15000} ms:\n${tail(logText)}`);
        }
        if (/Server listening on 127\.0\.0\.1 port/.test(logText) && (await banner(p))) break;
        await delay(25);
      }
      child = c;
      exited = ex;
      isExited = () => done;
      return p;
    });

    return {
      host: "127.0.0.1",
      port,
      pid: child!.pid!,
      dir,
      hostKeyFingerprint: fingerprint(`${hostKey}.pub`),
      hostPublicKey,
      knownHosts: `[127.0.0.1]:${port} ${hostPublicKey.split(/\s+/).slice(0, 2).join(" ")}`,
      user: "root",
      privateKey: fs.readFileSync(clientKey, "utf8"),
      ...(passwordLogin ? { passwordLogin } : {}),
      sessions: () => (readOr(logFile).match(/Starting session: command/g) ?? []).length,
      log: () => readOr(logFile),
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

/** Whether 127.0.0.1:port answers with an SSH banner (it is an SSH server, and ours is up). */
function banner(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2000, () => done(false));
    s.once("error", () => done(false));
    s.once("data", (d) => done(d.toString("latin1").startsWith("SSH-2.0-")));
  });
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return "";
  }
}
