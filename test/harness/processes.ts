/**
 * What every test harness that starts a server needs: a free loopback port, and a last-resort
 * guard that kills (by PID) whatever a test forgot to stop when the test process exits.
 */
import type { ChildProcess } from "node:child_process";
import * as net from "node:net";

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
