/**
 * What every test harness that starts a server needs: a free loopback port, and a last-resort
 * guard that kills (by PID) whatever a test forgot to stop when the test process exits.
 */
import { type ChildProcess, execFile } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Tracks a child until `untrack`; at process exit, every tracked child is killed by its PID. */
export function track(child: ChildProcess): void {
  live.add(child);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const c of live) {
      if (c.pid === undefined) continue;
      try {
        process.kill(c.pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
  });
}

export function untrack(child: ChildProcess): void {
  live.delete(child);
}

/** The server died before it was ready (most often: another process took its port first). */
export class EarlyExit extends Error {}

/**
 * Starts a server on a free port, trying again on another port (up to `attempts` times) when it
 * dies early: between picking a free port and binding it, another process may take it.
 */
export async function onFreePort<T>(start: (port: number) => Promise<T>, attempts = 3): Promise<T> {
  let lastError: unknown;
  for (let attempt = 0; attempt < attempts; attempt++) {
    try {
      return await start(await freePort());
    } catch (err) {
      lastError = err;
      if (!(err instanceof EarlyExit)) break;
    }
  }
  throw lastError;
}

/** How a child process ended, for failure messages. */
export function describeExit(child: ChildProcess): string {
  return child.signalCode ? `signal ${child.signalCode}` : `exit code ${child.exitCode}`;
}

/** The last lines of a log, for failure messages. */
export function tail(text: string, lines = 40): string {
  return text.split("\n").slice(-lines).join("\n");
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref?.());
}

/**
 * `describe` for tests that need a third-party peer installed (Ceph, tgtd, PyKMIP, ...). Where it is
 * missing on a developer's machine the block is skipped and `why` printed; under CI (`CI` set) it
 * is never skipped, so a missing install step fails the run instead of passing it silently.
 */
export function describeWithPeer(peer: { ok: boolean; why?: string }, what: string): jest.Describe {
  if (peer.ok || process.env.CI) return describe;
  console.warn(`${what} skipped: ${peer.why ?? "a peer is missing"}; run scripts/bootstrap.sh`);
  return describe.skip;
}

/** A harness's tool: its full path, from the system directories or PATH; `install` says how to get it. */
export function findBin(name: string, install: string): string {
  for (const d of ["/usr/bin", "/usr/sbin", "/bin", "/sbin", ...(process.env.PATH ?? "").split(":")]) {
    if (!d) continue;
    const p = path.join(d, name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${name} not found: run scripts/bootstrap.sh (${install})`);
}

/** Whether every one of `names` is installed (for describeWithPeer). */
export function binariesAvailable(names: string[], install: string): { ok: boolean; why?: string } {
  try {
    for (const b of names) findBin(b, install);
    return { ok: true };
  } catch (err) {
    return { ok: false, why: (err as Error).message };
  }
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool to its end; never rejects (a failure is a non-zero code, -1 when killed or not started). */
export function runTool(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number, maxBuffer = 16 << 20): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

const liveDirs = new Set<string>();
let dirHookInstalled = false;

/** A harness's private directory, removed at process exit if the test forgot to stop the harness. */
export function trackDir(dir: string): void {
  if (!dirHookInstalled) {
    dirHookInstalled = true;
    process.once("exit", () => {
      for (const d of liveDirs) fs.rmSync(d, { recursive: true, force: true });
    });
  }
  liveDirs.add(dir);
}

export function untrackDir(dir: string): void {
  liveDirs.delete(dir);
}
