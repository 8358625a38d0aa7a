/**
 * The `fake` switch driver: an in-memory switch behind the switch kind, for unit tests of the
 * resources that configure switches. It applies changes with the kind's own rules (the functions of
 * kinds/switch.ts, as the ovsdb driver does), counts transactions, and can simulate what only a real
 * shared switch does: another client writing between our read and our write (`injectConflicts`),
 * or the switch failing (`failNext`).
 *
 *   const sw = new FakeSwitch({ ports: ["p1", "p2"] });
 *   const driver = sw.driver({ owner: "stack-a" });
 *   await driver.apply([{ kind: "access", port: "p1", vlan: 101 }]);
 *   sw.transactions // 1
 *
 * Several drivers of one FakeSwitch share its state, as several connections to one switch do.
 * `fakeSwitch(address)` keeps one FakeSwitch per address for code that only has an address.
 */
import { BaremetalError } from "../core/errors";
import {
  applyPortChange,
  applyVlanChanges,
  expectationMismatches,
  isPortChange,
  normalizePortConfig,
  samePortConfig,
  SwitchApplyOptions,
  SwitchApplyResult,
  SwitchChange,
  SwitchDriver,
  SwitchPortConfig,
  SwitchVlan,
  SwitchVlanChange,
  validateExpectations,
  validatePortName,
  validateSwitchChanges,
  validateVlanId,
  validateVlanName,
} from "./kinds/switch";

export interface FakeSwitchOptions {
  /** The switch's ports: names (no configuration) or configurations. */
  ports: (string | SwitchPortConfig)[];
  vlans?: SwitchVlan[];
  /** For messages (default "fake-switch"). */
  name?: string;
}

export interface FakeSwitchDriverOptions {
  owner?: string;
  /** Attempts repeated after a simulated concurrent change before `conflict` (default 5). */
  maxRetries?: number;
}

export class FakeSwitch {
  readonly name: string;
  readonly ports = new Map<string, SwitchPortConfig>();
  readonly vlans = new Map<number, string>();
  /** Write transactions, failed attempts included. */
  transactions = 0;
  /** Read transactions (every list/get and the read of every apply attempt). */
  reads = 0;
  private conflicts = 0;
  private failures: BaremetalError[] = [];

  constructor(opts: FakeSwitchOptions) {
    this.name = opts.name ?? "fake-switch";
    for (const p of opts.ports) {
      const c = typeof p === "string" ? { port: p, mode: "none" as const } : p;
      validatePortName(c.port, "ports");
      this.ports.set(c.port, normalizePortConfig(c));
    }
    for (const v of opts.vlans ?? []) this.vlans.set(validateVlanId(v.id, "vlans"), validateVlanName(v.name, "vlans"));
  }

  /** A driver (a connection) to this switch. */
  driver(opts: FakeSwitchDriverOptions = {}): FakeSwitchDriver {
    return new FakeSwitchDriver(this, opts);
  }

  /** The next `n` write attempts fail their precondition, as if another client had written first. */
  injectConflicts(n: number): void {
    this.conflicts += n;
  }

  /** The next operation (read or write) fails with this error. */
  failNext(error: BaremetalError): void {
    this.failures.push(error);
  }

  /** Operator's hand on the switch (not through a driver): e.g. drift made outside the provider. */
  setPort(config: SwitchPortConfig): void {
    if (!this.ports.has(config.port)) throw new BaremetalError("not-found", `${this.name} has no port ${config.port}`);
    this.ports.set(config.port, normalizePortConfig(config));
  }

  /** @internal */
  takeFailure(): void {
    const f = this.failures.shift();
    if (f) throw f;
  }

  /** @internal */
  takeConflict(): boolean {
    if (this.conflicts <= 0) return false;
    this.conflicts--;
    return true;
  }
}

const shared = new Map<string, FakeSwitch>();

/** One FakeSwitch per address, created on first use with `opts` (ports default to none). */
export function fakeSwitch(address: string, opts?: FakeSwitchOptions): FakeSwitch {
  let sw = shared.get(address);
  if (!sw) shared.set(address, (sw = new FakeSwitch({ name: address, ...(opts ?? { ports: [] }) })));
  return sw;
}

/** Forgets every FakeSwitch of `fakeSwitch(address)` (between tests). */
export function resetFakeSwitches(): void {
  shared.clear();
}

export class FakeSwitchDriver implements SwitchDriver {
  readonly family = "fake";
  private closed = false;

  constructor(
    readonly sw: FakeSwitch,
    private readonly opts: FakeSwitchDriverOptions = {},
  ) {}

  private begin(): void {
    if (this.closed) throw new BaremetalError("internal", `the driver of ${this.sw.name} is closed`);
    this.sw.takeFailure();
  }

  async listPorts(): Promise<SwitchPortConfig[]> {
    this.begin();
    this.sw.reads++;
    return [...this.sw.ports.values()].map((c) => structuredClone(c)).sort((a, b) => (a.port < b.port ? -1 : a.port > b.port ? 1 : 0));
  }

  async getPort(port: string): Promise<SwitchPortConfig | undefined> {
    validatePortName(port, "port");
    this.begin();
    this.sw.reads++;
    const c = this.sw.ports.get(port);
    return c ? structuredClone(c) : undefined;
  }

  async listVlans(): Promise<SwitchVlan[]> {
    this.begin();
    this.sw.reads++;
    return [...this.sw.vlans].sort(([a], [b]) => a - b).map(([id, name]) => ({ id, name }));
  }

  async ensureVlan(id: number, name: string): Promise<{ changed: boolean }> {
    validateVlanId(id, "id");
    validateVlanName(name, "name");
    return { changed: (await this.apply([{ kind: "ensure-vlan", vlan: id, name }])).changed };
  }

  async deleteVlan(id: number): Promise<{ changed: boolean }> {
    validateVlanId(id, "id");
    return { changed: (await this.apply([{ kind: "delete-vlan", vlan: id }])).changed };
  }

  async apply(input: SwitchChange[], o: SwitchApplyOptions = {}): Promise<SwitchApplyResult> {
    const changes = validateSwitchChanges(input);
    const expect = validateExpectations(o.expect);
    const maxRetries = this.opts.maxRetries ?? 5;
    let transactions = 0;
    for (let attempt = 0; ; attempt++) {
      if (o.signal?.aborted) throw new BaremetalError("cancelled", `switch changes on ${this.sw.name} were cancelled`);
      this.begin();
      this.sw.reads++;
      const missing = (port: string, property: string) => {
        if (!this.sw.ports.has(port)) throw new BaremetalError("not-found", `switch port ${port} does not exist on ${this.sw.name}`, { property });
      };
      changes.forEach((c, i) => isPortChange(c) && missing(c.port, `changes[${i}].port`));
      expect.forEach((e, i) => {
        missing(e.port, `expect[${i}].port`);
        const diff = expectationMismatches(this.sw.ports.get(e.port)!, e);
        if (diff.length) {
          throw new BaremetalError("conflict", `switch port ${e.port} on ${this.sw.name} is not as expected: ${diff.join("; ")}`, { property: `expect[${i}]`, details: diff });
        }
      });
      const desired = new Map<string, SwitchPortConfig>();
      changes.forEach((c, i) => {
        if (!isPortChange(c)) return;
        desired.set(c.port, applyPortChange(desired.get(c.port) ?? this.sw.ports.get(c.port)!, c, this.opts.owner, `changes[${i}]`));
      });
      const registry = applyVlanChanges(this.sw.vlans, changes.filter((c): c is SwitchVlanChange => !isPortChange(c)));
      const portsChanged = [...desired].filter(([name, c]) => !samePortConfig(c, this.sw.ports.get(name)!));
      const vlansChanged = registry.size !== this.sw.vlans.size || [...registry].some(([id, n]) => this.sw.vlans.get(id) !== n);
      if (!portsChanged.length && !vlansChanged) return { transactions, retries: attempt, changed: false };

      transactions++;
      this.sw.transactions++;
      if (this.sw.takeConflict()) {
        if (attempt < maxRetries) continue;
        throw new BaremetalError(
          "conflict",
          `switch ports on ${this.sw.name} kept changing under us: another client wrote them between our read and our write ${attempt + 1} times in a row; try again later`,
        );
      }
      for (const [name, c] of portsChanged) this.sw.ports.set(name, c);
      this.sw.vlans.clear();
      for (const [id, n] of registry) this.sw.vlans.set(id, n);
      return { transactions, retries: attempt, changed: true };
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
