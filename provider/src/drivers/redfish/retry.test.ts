import { BaremetalError } from "../../core/errors";
import { DEFAULT_RETRY_POLICY, RetryPlanner } from "./retry";

const planner = new RetryPlanner(DEFAULT_RETRY_POLICY, undefined, () => 0.5);
const reset = new BaremetalError("transient", "connection reset (ECONNRESET)");
const refused = new BaremetalError("transient", "connection refused (ECONNREFUSED)", { unsent: true });
const base = { attempt: 1, elapsedMs: 0, isAction: false };

describe("RetryPlanner: only what is known to be safe", () => {
  it.each(["GET", "PATCH", "DELETE"])("retries %s after a connection reset (idempotent)", (method) => {
    expect(planner.decide({ ...base, method, error: reset }).retry).toBe(true);
  });

  it("never replays a POST whose fate is unknown", () => {
    expect(planner.decide({ ...base, method: "POST", isAction: true, error: reset })).toEqual({ retry: false });
    expect(planner.decide({ ...base, method: "POST", isAction: true, error: new BaremetalError("timeout", "no answer") })).toEqual({ retry: false });
  });

  it("replays a POST that never left (connection refused)", () => {
    expect(planner.decide({ ...base, method: "POST", isAction: true, error: refused }).retry).toBe(true);
  });

  it("retries a POST answered 503 or 429: the BMC did nothing", () => {
    expect(planner.decide({ ...base, method: "POST", isAction: true, status: 503 }).retry).toBe(true);
    expect(planner.decide({ ...base, method: "POST", isAction: true, status: 429 }).retry).toBe(true);
  });

  it("repeats a read answered 500/502/504 (a server-side fault), never a POST or PATCH so answered", () => {
    for (const status of [500, 502, 504]) expect(planner.decide({ ...base, method: "GET", status }).retry).toBe(true);
    expect(planner.decide({ ...base, method: "GET", status: 500, attempt: DEFAULT_RETRY_POLICY.maxAttempts })).toEqual({ retry: false });
    expect(planner.decide({ ...base, method: "POST", isAction: true, status: 500 })).toEqual({ retry: false });
    expect(planner.decide({ ...base, method: "PATCH", status: 500 })).toEqual({ retry: false });
  });

  it("honours Retry-After, but not one longer than it will wait", () => {
    expect(planner.decide({ ...base, method: "GET", status: 503, retryAfterSeconds: 30 })).toMatchObject({ retry: true, delayMs: 30_000 });
    expect(planner.decide({ ...base, method: "GET", status: 503, retryAfterSeconds: 600 })).toEqual({ retry: false });
  });

  it("stops after maxAttempts", () => {
    expect(planner.decide({ ...base, method: "GET", status: 503, attempt: DEFAULT_RETRY_POLICY.maxAttempts })).toEqual({ retry: false });
  });

  it("treats a refused power action (409) and vendor 'in POST' answers as busy, within the busy budget", () => {
    expect(planner.decide({ ...base, method: "POST", isAction: true, status: 409, attempt: 20, elapsedMs: 1000 }).retry).toBe(true);
    expect(planner.decide({ ...base, method: "PATCH", status: 400, messageId: "IDRAC.2.8.SYS446", attempt: 10 }).retry).toBe(true);
    expect(planner.decide({ ...base, method: "POST", isAction: true, status: 409, elapsedMs: DEFAULT_RETRY_POLICY.busyBudgetMs })).toEqual({
      retry: false,
    });
  });

  it("does not retry answers that will not change: 400, 401, 404, a 409 on PATCH without a busy MessageId", () => {
    for (const status of [400, 401, 404]) expect(planner.decide({ ...base, method: "GET", status })).toEqual({ retry: false });
    expect(planner.decide({ ...base, method: "PATCH", status: 409, messageId: "Base.1.0.PropertyValueConflict" })).toEqual({ retry: false });
  });

  it("backs off exponentially with jitter, capped", () => {
    const delays = [1, 2, 3, 4, 5].map((attempt) => (planner.decide({ ...base, method: "GET", status: 503, attempt }) as { delayMs: number }).delayMs);
    expect(delays).toEqual([375, 750, 1500, 3000, 6000]);
    const low = new RetryPlanner(DEFAULT_RETRY_POLICY, undefined, () => 0).decide({ ...base, method: "GET", status: 503, attempt: 10, elapsedMs: 0 });
    expect(low).toEqual({ retry: false }); // attempt 10 > maxAttempts
  });
});
