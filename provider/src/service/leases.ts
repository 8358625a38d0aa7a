/**
 * The service's lease reaper (issue 8, leases): every few seconds it activates the pending leases
 * whose start came (the node's lessee becomes the lease's), ends the active ones whose end came
 * (../resources/compute/lease.ts `endLease`: undeploy and clean, console accounts removed,
 * networks detached, allocation released, all audited) and retries those left `ending` by a step
 * that failed. It also puts an active lease's lessee back on its node when something reset it.
 *
 * Several instances on one database are safe: a lease changes state by one conditional update
 * (exactly one instance wins each change) and its teardown runs under the node's lock (an instance
 * that finds the node busy leaves it to the holder and retries at its next round).
 *
 * The interval: `BAREMETAL_LEASE_INTERVAL_SECONDS` in the service's environment (default 5).
 * Rounds never overlap. Each lease's work has the Lease resource's default deadline. Stopped when
 * the HTTP server closes (or by `stop`).
 */
import { describeError, isBaremetalError } from "../core/errors";
import type { ProviderHost } from "../core/host";
import type { LeaseRecord } from "../inventory/types";
import { activateLease, applyLessee, endLease, leaseResource } from "../resources/compute/lease";

export interface LeaseReaper {
  /** One round now (what the timer runs); resolves when it is done. */
  round(): Promise<void>;
  /** No more rounds; resolves when the running one (if any) is done. */
  stop(): Promise<void>;
}

export interface LeaseReaperOptions {
  /** Between rounds (default: BAREMETAL_LEASE_INTERVAL_SECONDS, else 5 s). */
  intervalMs?: number;
  /** One JSON line per event (default: the service's stderr). */
  log?: (entry: Record<string, unknown>) => void;
}

export function leaseIntervalMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.BAREMETAL_LEASE_INTERVAL_SECONDS;
  const seconds = raw === undefined || raw === "" ? 5 : Number(raw);
  return Number.isFinite(seconds) && seconds > 0 ? Math.max(100, Math.round(seconds * 1000)) : 5000;
}

/** Starts the reaper on `host`'s inventory; stopped when `server` closes. */
export function startLeaseReaper(host: ProviderHost, server?: { once(event: "close", listener: () => void): unknown }, options: LeaseReaperOptions = {}): LeaseReaper {
  const intervalMs = options.intervalMs ?? leaseIntervalMs();
  const log = options.log ?? ((entry) => process.stderr.write(`${JSON.stringify({ leaseReaper: true, ...entry })}\n`));
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;

  const handle = async (lease: LeaseRecord, act: (ctx: Parameters<typeof endLease>[0]) => Promise<LeaseRecord | boolean>, what: string) => {
    const urn = `service:lease-reaper:${lease.id}`;
    const { ctx, done } = host.operation(leaseResource, urn, lease.id, 0, {
      progress: () => undefined,
      warn: (m) => log({ leaseId: lease.id, warning: m }),
    });
    try {
      const result = await act(ctx);
      if (typeof result === "object") log({ leaseId: lease.id, nodeId: lease.nodeId, [what]: result.state });
      else if (result) log({ leaseId: lease.id, nodeId: lease.nodeId, [what]: true });
    } catch (e) {
      // A busy node (a deployment running, another instance ending it) is retried next round.
      const busy = isBaremetalError(e) && e.code === "conflict";
      log({ leaseId: lease.id, nodeId: lease.nodeId, [busy ? "retry" : "error"]: describeError(e) });
    } finally {
      done();
    }
  };

  const round = async (): Promise<void> => {
    const inventory = await host.providerContext().inventory();
    const now = new Date();
    for (const lease of await inventory.listLeases({ dueAt: now.toISOString() })) {
      if (stopped) return;
      if (Date.parse(lease.endTime) <= now.getTime() || lease.state === "ending") {
        await handle(lease, (ctx) => endLease(ctx, lease, "expired"), "ended");
      } else if (lease.state === "pending") {
        await handle(lease, (ctx) => activateLease(ctx, lease), "activated");
      }
    }
    for (const lease of await inventory.listLeases({ state: "active" })) {
      if (stopped) return;
      if (Date.parse(lease.endTime) > Date.now()) await handle(lease, async () => applyLessee(inventory, lease), "lesseeRestored");
    }
  };

  const once = (): Promise<void> => {
    running ??= round()
      .catch((e) => log({ error: describeError(e) }))
      .finally(() => (running = undefined));
    return running;
  };

  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => void once().finally(schedule), intervalMs);
    timer.unref();
  };

  const reaper: LeaseReaper = {
    round: once,
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await running;
    },
  };
  server?.once("close", () => void reaper.stop());
  schedule();
  return reaper;
}
