/**
 * Runs the `cryptsetup` binary (Debian package cryptsetup-bin) and turns its failures into
 * BaremetalErrors. Keys never travel in argv: the key that unlocks goes through stdin
 * (`--key-file=-`), a second key (a new keyslot's) through a 0600 file in a private 0700 directory
 * on a RAM file system when there is one (/dev/shm), overwritten and removed as soon as the
 * command ends. Nothing here logs; error messages carry cryptsetup's own stderr, from which any
 * rendering of the keys passed is scrubbed (cryptsetup never prints key material, this is a
 * second fence).
 *
 * Exit codes, as documented in cryptsetup(8) "RETURN CODES":
 *   0 success, 1 wrong parameters, 2 no permission (bad passphrase), 3 out of memory,
 *   4 wrong device specified, 5 device already exists or device is busy.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promises as fs, constants as fsc } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { BaremetalError, ErrorCode } from "../../core/errors";

export const EXIT_MEANING: Record<number, string> = {
  1: "wrong parameters",
  2: "no permission or bad passphrase",
  3: "out of memory",
  4: "wrong device specified",
  5: "device already exists or device is busy",
};

export interface RunOptions {
  /** The key cryptsetup reads from stdin (`--key-file=-` must be among the args). */
  stdinKey?: Buffer;
  /**
   * A second key, written to a private file whose path replaces the `{keyfile}` placeholder in
   * the args (e.g. `--new-keyfile={keyfile}`).
   */
  fileKey?: Buffer;
  /** Kills cryptsetup (SIGTERM, then SIGKILL) after this many ms. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Each complete stdout line, as it arrives (reencrypt progress). */
  onStdoutLine?: (line: string) => void;
  /** What the command was doing, for error messages ("format /path/vol"). */
  what: string;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  ms: number;
}

/** The program and the directory of key files; overridable for tests. */
export interface CryptsetupSettings {
  binary?: string;
  /** Where the private key-file directories go (default: /dev/shm when writable, else the OS temp dir). */
  keyDir?: string;
}

const MAX_CAPTURE = 256 * 1024;
const PLACEHOLDER = "{keyfile}";

const swept = new Map<string, Promise<string>>();
/**
 * The directory of key-file directories. The first use in a process removes directories left by
 * processes of ours that died without cleaning up (SIGKILL during a luksAddKey): their names carry
 * the owner's PID.
 */
function keyDirectory(settings: CryptsetupSettings): Promise<string> {
  const base = settings.keyDir
    ? Promise.resolve(settings.keyDir)
    : fs
        .access("/dev/shm", fsc.W_OK)
        .then(() => "/dev/shm")
        .catch(() => os.tmpdir());
  const key = settings.keyDir ?? "";
  let p = swept.get(key);
  if (!p) {
    p = base.then(async (dir) => {
      for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
        const m = /^baremetal-luks-(\d+)-/.exec(name);
        if (!m || Number(m[1]) === process.pid) continue;
        try {
          process.kill(Number(m[1]), 0);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === "ESRCH") await fs.rm(path.join(dir, name), { recursive: true, force: true }).catch(() => undefined);
        }
      }
      return dir;
    });
    swept.set(key, p);
  }
  return p;
}

/** Removes any text form of the keys from cryptsetup's output (hex, base64, raw bytes). */
export function scrub(text: string, keys: (Buffer | undefined)[]): string {
  let out = text;
  for (const k of keys) {
    if (!k || k.length === 0) continue;
    for (const form of [k.toString("hex"), k.toString("hex").toUpperCase(), k.toString("base64"), k.toString("latin1"), k.toString("utf8")]) {
      if (form.length >= 8) out = out.split(form).join("[redacted]");
    }
    // `xx xx xx` as in luksDump's volume key dump
    const spaced = k.toString("hex").match(/../g)!.join(" ");
    out = out.split(spaced).join("[redacted]");
  }
  return out;
}

function codeFor(exit: number, stderr: string): ErrorCode {
  if (/not a valid LUKS device|Unsupported LUKS version|is not LUKS2|LUKS2 only/i.test(stderr)) return "conflict";
  if (/does not exist or access denied|No such file/i.test(stderr)) return "not-found";
  switch (exit) {
    case 2:
      return "auth";
    case 4:
      return "not-found";
    case 5:
      return "conflict";
    default:
      return "backend";
  }
}

function advice(code: ErrorCode, stderr: string): string {
  if (/not a valid LUKS device/i.test(stderr)) return "the file holds no LUKS header: format the volume first";
  if (/LUKS2 only|is not LUKS2|Unsupported LUKS version/i.test(stderr)) return "only LUKS2 volumes are supported";
  if (/too small/i.test(stderr)) return "the volume is too small for a LUKS2 header (16 MiB) and data: make it larger";
  if (/All key slots full|No free key slot|slot .* is full/i.test(stderr)) return "every keyslot is taken: remove an old key first";
  switch (code) {
    case "auth":
      return "no keyslot of the volume opens with the key given: check the key reference";
    case "not-found":
      return "the volume file does not exist or cannot be opened";
    case "conflict":
      return "the volume is busy (another cryptsetup holds its lock?): retry when it is done";
    default:
      return "see cryptsetup's message";
  }
}

/** Runs cryptsetup with `args`; resolves on exit 0, rejects with a BaremetalError otherwise. */
export async function runCryptsetup(settings: CryptsetupSettings, args: string[], opts: RunOptions): Promise<RunResult> {
  const binary = settings.binary ?? "cryptsetup";
  const keys = [opts.stdinKey, opts.fileKey];
  let keyDir: string | undefined;
  let keyFile: string | undefined;
  const started = Date.now();
  try {
    let argv = args;
    if (opts.fileKey) {
      keyDir = await fs.mkdtemp(path.join(await keyDirectory(settings), `baremetal-luks-${process.pid}-`));
      await fs.chmod(keyDir, 0o700);
      keyFile = path.join(keyDir, randomBytes(8).toString("hex"));
      const fh = await fs.open(keyFile, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        await fh.writeFile(opts.fileKey);
      } finally {
        await fh.close();
      }
      argv = args.map((a) => a.split(PLACEHOLDER).join(keyFile!));
    } else if (args.some((a) => a.includes(PLACEHOLDER))) {
      throw new BaremetalError("internal", `${opts.what}: a key-file placeholder without a key`);
    }
    if (opts.signal?.aborted) throw new BaremetalError("cancelled", `${opts.what}: cancelled before cryptsetup started`);
    return await new Promise<RunResult>((resolve, reject) => {
      const child = spawn(binary, argv, {
        stdio: ["pipe", "pipe", "pipe"],
        env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
      });
      let stdout = "";
      let stderr = "";
      let pending = "";
      let timedOut = false;
      let cancelled = false;
      let killTimer: NodeJS.Timeout | undefined;
      const stop = () => {
        // SIGINT first: cryptsetup's reencrypt stops cleanly on it (resumable), other commands just end.
        child.kill("SIGINT");
        killTimer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        killTimer.unref();
      };
      const timer = opts.timeoutMs !== undefined ? setTimeout(() => ((timedOut = true), stop()), opts.timeoutMs) : undefined;
      const onAbort = () => ((cancelled = true), stop());
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      child.stdout.setEncoding("utf8");
      child.stderr.setEncoding("utf8");
      child.stdout.on("data", (d: string) => {
        if (stdout.length < MAX_CAPTURE) stdout += d;
        if (opts.onStdoutLine) {
          pending += d;
          let i: number;
          while ((i = pending.indexOf("\n")) >= 0) {
            const line = pending.slice(0, i).trim();
            pending = pending.slice(i + 1);
            if (line) opts.onStdoutLine(line);
          }
        }
      });
      child.stderr.on("data", (d: string) => {
        if (stderr.length < MAX_CAPTURE) stderr += d;
      });
      // cryptsetup may exit before reading stdin (bad device): EPIPE is not our error to report.
      child.stdin.on("error", () => undefined);
      child.stdin.end(opts.stdinKey ?? Buffer.alloc(0));
      child.on("error", (e: NodeJS.ErrnoException) => {
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        reject(
          new BaremetalError(
            "backend",
            e.code === "ENOENT"
              ? `${opts.what}: '${binary}' is not installed (Debian package cryptsetup-bin): run scripts/bootstrap.sh`
              : `${opts.what}: cannot run '${binary}': ${e.message}`,
            { cause: e },
          ),
        );
      });
      child.on("close", (code, sig) => {
        if (timer) clearTimeout(timer);
        if (killTimer) clearTimeout(killTimer);
        opts.signal?.removeEventListener("abort", onAbort);
        if (opts.onStdoutLine && pending.trim()) opts.onStdoutLine(pending.trim());
        const ms = Date.now() - started;
        const err = scrub(stderr, keys).trim();
        const out = scrub(stdout, keys);
        if (code === 0) return resolve({ stdout: out, stderr: err, ms });
        const details = err.split("\n").map((l) => l.trim()).filter((l) => l && !/^No usable token is available\.?$/.test(l));
        if (cancelled) return reject(new BaremetalError("cancelled", `${opts.what}: cancelled (cryptsetup stopped)`, { details }));
        if (timedOut) return reject(new BaremetalError("timeout", `${opts.what}: cryptsetup did not finish within ${opts.timeoutMs} ms`, { details }));
        if (code === null) return reject(new BaremetalError("backend", `${opts.what}: cryptsetup was killed by ${sig}`, { details }));
        const ec = codeFor(code, err);
        reject(
          new BaremetalError(ec, `${opts.what}: ${advice(ec, err)}`, {
            messageId: `cryptsetup exit ${code}${EXIT_MEANING[code] ? ` (${EXIT_MEANING[code]})` : ""}`,
            details,
          }),
        );
      });
    });
  } finally {
    if (keyFile) {
      // Overwrite before unlinking (tmpfs: the pages are freed; on disk: best effort).
      await fs.writeFile(keyFile, Buffer.alloc(opts.fileKey!.length)).catch(() => undefined);
      await fs.rm(keyFile, { force: true }).catch(() => undefined);
    }
    if (keyDir) await fs.rm(keyDir, { recursive: true, force: true }).catch(() => undefined);
  }
}
