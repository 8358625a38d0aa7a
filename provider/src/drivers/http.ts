/**
 * Small pieces shared by the HTTP drivers of key managers (Barbican, Vault/OpenBao): reading a
 * Retry-After header, the network error code of an axios/node error, and a sleep that a
 * cancellation interrupts.
 */
import { BaremetalError } from "../core/errors";

/** Retry-After (seconds or an HTTP date) in milliseconds, or undefined when absent or unreadable. */
export function retryAfterMs(h: unknown): number | undefined {
  if (typeof h !== "string") return undefined;
  const n = Number(h);
  if (Number.isFinite(n) && n >= 0) return n * 1000;
  const d = Date.parse(h);
  return Number.isNaN(d) ? undefined : Math.max(0, d - Date.now());
}

export const seconds = (ms: number | undefined) => (ms === undefined ? undefined : Math.ceil(ms / 1000));

/** The network error code (ECONNREFUSED, ETIMEDOUT, ...) of an axios/node error, looking through `cause`. */
export function errorCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let i = 0; i < 4 && typeof cur === "object" && cur !== null; i++) {
    const c = (cur as { code?: unknown }).code;
    if (typeof c === "string" && c !== "ERR_NETWORK" && c !== "ERR_BAD_REQUEST") return c;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Waits `ms`; a `cancelled` error naming what was waited for when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal | undefined, waitingFor: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new BaremetalError("cancelled", "cancelled"));
    const t = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }
    function onAbort() {
      clearTimeout(t);
      reject(new BaremetalError("cancelled", `cancelled while waiting for ${waitingFor}`));
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
