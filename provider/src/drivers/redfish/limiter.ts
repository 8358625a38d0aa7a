/** A counting semaphore: at most `max` holders at a time, FIFO, abortable while waiting. */
export class Limiter {
  private active = 0;
  private readonly waiting: Array<{ grant: () => void; reject: (e: unknown) => void }> = [];

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`Limiter: max must be a positive integer, got ${max}`);
  }

  get inFlight(): number {
    return this.active;
  }

  /** Resolves with a release function once a slot is free; rejects with `onAbort()` if the signal fires first. */
  acquire(signal?: AbortSignal, onAbort?: () => unknown): Promise<() => void> {
    const aborted = () => (onAbort ? onAbort() : new Error("aborted"));
    if (signal?.aborted) return Promise.reject(aborted());
    if (this.active < this.max) {
      this.active++;
      return Promise.resolve(this.releaser());
    }
    return new Promise((resolve, reject) => {
      const entry = {
        grant: () => {
          signal?.removeEventListener("abort", abort);
          resolve(this.releaser());
        },
        reject,
      };
      const abort = () => {
        const i = this.waiting.indexOf(entry);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(aborted());
      };
      signal?.addEventListener("abort", abort, { once: true });
      this.waiting.push(entry);
    });
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.waiting.shift();
      if (next) next.grant(); // the slot passes straight to the next waiter
      else this.active--;
    };
  }
}
