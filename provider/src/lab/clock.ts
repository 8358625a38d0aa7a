/**
 * Time of the embedded lab. Every time-dependent behaviour of an emulated BMC (power transitions,
 * the power-on guard after a power-off, session idle timeouts, task durations, account expiry)
 * reads `clock.now()` and is evaluated lazily when a request (or an in-process getter) looks at
 * the state: nothing in the emulator runs on timers, so a test moves time with `advance()` and
 * never sleeps.
 *
 * Only the per-request latency (`latencyMs`, and `delay` faults) is real wall-clock time: it models
 * the network and the BMC's slowness as a client experiences it.
 */

export interface Clock {
  /** Milliseconds since the epoch, as the lab sees them. */
  now(): number;
  /** Moves the lab's time forward (never backwards). */
  advance(ms: number): void;
}

function checkStep(ms: number): void {
  if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`the lab clock only moves forward, by a finite number of ms (got ${ms})`);
}

/** Wall-clock time plus an offset that `advance()` grows (so a running lab can skip a 60 s guard). */
export class SystemClock implements Clock {
  private offset = 0;
  now(): number {
    return Date.now() + this.offset;
  }
  advance(ms: number): void {
    checkStep(ms);
    this.offset += ms;
  }
}

/** A clock that stands still until told to move: for tests. Starts at 2024-01-01T00:00:00Z by default. */
export class ManualClock implements Clock {
  private t: number;
  constructor(start: number | Date = Date.UTC(2024, 0, 1)) {
    this.t = typeof start === "number" ? start : start.getTime();
  }
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    checkStep(ms);
    this.t += ms;
  }
  advanceSeconds(s: number): void {
    this.advance(s * 1000);
  }
}

/** ISO 8601 with a zero offset, second precision, as Redfish DateTime values are written. */
export function isoTime(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.000Z$/, "+00:00");
}
