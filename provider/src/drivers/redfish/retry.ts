/**
 * When a Redfish request may be sent again, and after how long. Retries only what is known to be
 * safe: the BMC said it did nothing (503, 429, 409 on an action), or the request never left, or
 * the method is idempotent (GET, PATCH of absolute values, DELETE of a session), or a read met a
 * server-side fault (500/502/504 on GET). A POST whose
 * fate is unknown (connection reset or timeout after sending) is never replayed: the error goes
 * to the user instead, because a replayed power action may power-cycle a machine twice.
 *
 * Vendor differences are data (`RetryQuirks`), not special cases in the code.
 */
import { type BaremetalError, isBaremetalError } from "../../core/errors";

export interface RetryPolicy {
  /** Attempts per request, the first included. */
  maxAttempts: number;
  /** First back-off delay; doubles per attempt, with jitter, up to `maxDelayMs`. */
  baseDelayMs: number;
  maxDelayMs: number;
  /** Longest a BMC's Retry-After hint is honoured; a longer hint fails at once with the hint in the message. */
  maxRetryAfterMs: number;
  /**
   * How long "busy" answers are retried: 409 on a power action shortly after another power
   * change, boot settings refused while the machine is in POST. They clear by themselves.
   */
  busyBudgetMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 6,
  baseDelayMs: 500,
  maxDelayMs: 15_000,
  maxRetryAfterMs: 60_000,
  busyBudgetMs: 90_000,
};

/** Vendor behaviour as data. */
export interface RetryQuirks {
  /** MessageIds (or their suffixes) that mean "busy now, the same request will succeed later". */
  busyMessageIds: string[];
}

export const DEFAULT_QUIRKS: RetryQuirks = {
  busyMessageIds: [
    "ServiceInUnknownState",
    "SessionLimitExceeded",
    "ResourceInUse",
    "OperationNotAllowed", // HPE iLO/Supermicro answer this while the host is in POST
    "PropertyValueResourceConflict",
    "SYS446", // Dell iDRAC: the host is in POST; retry
    "SYS500",
  ],
};

export interface Attempt {
  method: string;
  /** Is this request a ComputerSystem.Reset (or similar) action? */
  isAction: boolean;
  attempt: number;
  /** Milliseconds since the first attempt. */
  elapsedMs: number;
  status?: number;
  retryAfterSeconds?: number;
  messageId?: string;
  error?: unknown;
}

export type Decision = { retry: false } | { retry: true; delayMs: number; reason: string };

const IDEMPOTENT = new Set(["GET", "HEAD", "PATCH", "PUT", "DELETE"]);

export class RetryPlanner {
  constructor(
    private readonly policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    private readonly quirks: RetryQuirks = DEFAULT_QUIRKS,
    private readonly random: () => number = Math.random,
  ) {}

  decide(a: Attempt): Decision {
    const busy = this.isBusy(a);
    const limit = busy ? Number.POSITIVE_INFINITY : this.policy.maxAttempts;
    if (a.attempt >= limit) return { retry: false };
    if (busy && a.elapsedMs >= this.policy.busyBudgetMs) return { retry: false };

    const reason = this.reason(a, busy);
    if (!reason) return { retry: false };

    if (a.retryAfterSeconds !== undefined) {
      const hinted = a.retryAfterSeconds * 1000;
      if (hinted > this.policy.maxRetryAfterMs) return { retry: false };
      return { retry: true, delayMs: hinted, reason: `${reason}; the BMC asked to retry in ${a.retryAfterSeconds} s` };
    }
    return { retry: true, delayMs: this.backoff(a.attempt), reason };
  }

  private reason(a: Attempt, busy: boolean): string | undefined {
    if (busy) return `the BMC is busy (HTTP ${a.status}${a.messageId ? `, ${a.messageId}` : ""})`;
    if (a.status === 503) return "the BMC is temporarily unavailable (HTTP 503)";
    if (a.status === 429) return "the BMC asks us to slow down (HTTP 429)";
    // A server-side fault on a read: BMCs (and sushy-tools under concurrent use) answer the odd
    // 500/502/504 that the same read then gets right. Reads change nothing: safe to repeat.
    if ((a.method === "GET" || a.method === "HEAD") && (a.status === 500 || a.status === 502 || a.status === 504)) {
      return `the BMC answered HTTP ${a.status} to a read`;
    }
    const e = a.error;
    if (isBaremetalError(e) && (e.code === "transient" || e.code === "timeout")) {
      if ((e as BaremetalError).unsent) return `the request never reached the BMC (${e.message})`;
      if (IDEMPOTENT.has(a.method)) return `connection trouble on an idempotent request (${e.message})`;
    }
    return undefined;
  }

  private isBusy(a: Attempt): boolean {
    if (a.status === 409 && a.isAction) return true; // an action refused: nothing happened
    // 503 is not "busy": it is retried by attempts and the BMC's Retry-After hint.
    if ((a.status === 409 || a.status === 400) && a.messageId) {
      return this.quirks.busyMessageIds.some((id) => a.messageId === id || a.messageId!.endsWith(`.${id}`));
    }
    return false;
  }

  private backoff(attempt: number): number {
    const exp = Math.min(this.policy.maxDelayMs, this.policy.baseDelayMs * 2 ** (attempt - 1));
    // Full jitter in the upper half: never hammer a BMC in lock-step with other clients.
    return Math.round(exp / 2 + (this.random() * exp) / 2);
  }
}
