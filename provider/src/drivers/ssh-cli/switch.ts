/**
 * The `ssh-cli` switch driver family: switches configured by running their command line over SSH,
 * the way physical switch families are managed (SONiC, Cumulus Linux / NVUE, Open vSwitch based
 * white boxes). A small dialect layer (dialect.ts) says which commands read and write a family:
 *
 *   dialect        proven against                                          transaction / concurrency
 *   ovs-vsctl      REAL peer: OpenSSH sshd + Open vSwitch 3.1 (ssh-cli.test.ts)  one ovs-vsctl = one OVSDB transaction; compare-and-swap (wait-until + get)
 *   sonic          recorded transcripts written from SONiC's documentation   no transaction: one `&&` chain per batch; re-read before, verify after
 *   cumulus-nvue   recorded transcripts written from NVIDIA's NVUE documentation  one `nv config apply` per batch; re-read before, verify after
 *
 * The sonic and cumulus-nvue dialects have NOT been run against a real device: their commands and
 * parsers follow the vendors' public documentation, and their tests use transcripts we wrote in
 * the documented formats (fixtures/README.md).
 *
 * `apply` is the kind's: read (one command), compute the new configuration with the kind's shared
 * rules (applyPortChange, applyVlanChanges), check `expect`, write (one command). With an atomic
 * dialect a failed precondition (the switch changed since our read) means nothing was written: the
 * driver re-reads and tries again, a bounded number of times, then gives up with `conflict`. With a
 * non-atomic dialect the driver re-reads after writing and reports `conflict` when the switch does
 * not show what it wrote (another client interfered; the batch may be partly applied).
 *
 * Connection settings (SwitchConnection): address `ssh://[user@]host[:port]` (the query `?db=`
 * sets ovs-vsctl's --db), `username` (or the address's user), `password` and/or `privateKey`,
 * `hostKey` (SHA256 fingerprint(s) or known_hosts text), `dialect`, `bridge` (ovs-vsctl). Host key
 * verification is on; `verifyTls: false` turns it off explicitly.
 */
import { BaremetalError, validationError } from "../../core/errors";
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
  SwitchConnection,
  SwitchDriver,
  SwitchPortConfig,
  SwitchVlan,
  SwitchVlanChange,
  validateExpectations,
  validatePortName,
  validateSwitchChanges,
  validateVlanId,
  validateVlanName,
} from "../kinds/switch";
import { CumulusNvueDialect } from "./cumulus-nvue";
import { CliPortWrite, CliSnapshot, exitText, outputTail, SshCliDialect } from "./dialect";
import { OvsVsctlDialect } from "./ovs-vsctl";
import { SonicDialect } from "./sonic";
import { ExecResult, parseSshAddress, SshTransport, SshTransportOptions } from "./transport";

export const SSH_CLI_DIALECTS = ["ovs-vsctl", "sonic", "cumulus-nvue"] as const;
export type SshCliDialectName = (typeof SSH_CLI_DIALECTS)[number];

export interface SshCliSwitchOptions {
  transport: SshTransport;
  dialect: SshCliDialect;
  owner?: string;
  /** Attempts repeated after a failed precondition before `conflict` (default 5). */
  maxRetries?: number;
  /** How long to wait for the device to forward with a committed change (default 10000). */
  appliedTimeoutMs?: number;
  signal?: AbortSignal;
  /** `afterRead` runs between the read and the write of each attempt (tests). */
  hooks?: { afterRead?: (attempt: number) => void | Promise<void> };
}

/** Options beyond SwitchConnection (tests, benchmarks). */
export interface SshCliExtra {
  /** ovs-vsctl --db (overrides the address's `?db=`). */
  ovsdbRemote?: string;
  /** ovs-vsctl --timeout of a write (seconds). */
  writeTimeoutSec?: number;
  maxRetries?: number;
  appliedTimeoutMs?: number;
  hooks?: SshCliSwitchOptions["hooks"];
}

/** The driver from a switch connection (what resources give the driver factory). */
export function sshCliSwitchDriver(conn: SwitchConnection, extra: SshCliExtra = {}): SshCliSwitchDriver {
  const addr = parseSshAddress(conn.address, "address");
  const username = conn.username ?? addr.user;
  if (!username) throw validationError("username", "an ssh-cli switch needs a username (the setting, or user@ in the address)");
  const dialectName = conn.dialect;
  if (!dialectName || !(SSH_CLI_DIALECTS as readonly string[]).includes(dialectName)) {
    throw validationError("dialect", `an ssh-cli switch needs a dialect: one of ${SSH_CLI_DIALECTS.join(", ")}; got ${JSON.stringify(dialectName)}`);
  }
  let dialect: SshCliDialect;
  switch (dialectName as SshCliDialectName) {
    case "ovs-vsctl":
      if (!conn.bridge) throw validationError("bridge", "the ovs-vsctl dialect needs the bridge that is the switch (e.g. br0)");
      dialect = new OvsVsctlDialect({ bridge: conn.bridge, db: extra.ovsdbRemote ?? addr.query.get("db") ?? undefined, writeTimeoutSec: extra.writeTimeoutSec });
      break;
    case "sonic":
      dialect = new SonicDialect();
      break;
    case "cumulus-nvue":
      dialect = new CumulusNvueDialect({ bridge: conn.bridge });
      break;
  }
  const topts: SshTransportOptions = {
    host: addr.host,
    port: addr.port,
    username,
    ...(conn.password !== undefined ? { password: conn.password } : {}),
    ...(conn.privateKey !== undefined ? { privateKey: conn.privateKey } : {}),
    ...(conn.hostKey !== undefined ? { hostKey: conn.hostKey } : {}),
    verifyHostKey: conn.verifyTls !== false,
    timeoutMs: conn.requestTimeoutMs,
  };
  return new SshCliSwitchDriver({
    transport: new SshTransport(topts),
    dialect,
    owner: conn.owner,
    signal: conn.signal,
    ...(extra.maxRetries !== undefined ? { maxRetries: extra.maxRetries } : {}),
    ...(extra.appliedTimeoutMs !== undefined ? { appliedTimeoutMs: extra.appliedTimeoutMs } : {}),
    ...(extra.hooks ? { hooks: extra.hooks } : {}),
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class SshCliSwitchDriver implements SwitchDriver {
  readonly family = "ssh-cli";
  readonly transport: SshTransport;
  readonly dialect: SshCliDialect;
  /** Reads and writes sent (commands), for tests and benchmarks. */
  readonly stats = { reads: 0, writes: 0 };
  private readonly opts: SshCliSwitchOptions;

  constructor(opts: SshCliSwitchOptions) {
    this.opts = opts;
    this.transport = opts.transport;
    this.dialect = opts.dialect;
  }

  private get where(): string {
    return `the ${this.dialect.name} switch ${this.transport.where}`;
  }

  private async read(names: string[] | undefined, signal?: AbortSignal): Promise<CliSnapshot> {
    this.stats.reads++;
    const r = await this.transport.exec(this.dialect.readCommand(names), { signal: signal ?? this.opts.signal });
    return this.dialect.parseRead(r, names);
  }

  async listPorts(): Promise<SwitchPortConfig[]> {
    const snap = await this.read(undefined);
    return [...snap.ports.values()].sort((a, b) => (a.port < b.port ? -1 : a.port > b.port ? 1 : 0));
  }

  async getPort(port: string): Promise<SwitchPortConfig | undefined> {
    validatePortName(port, "port");
    return (await this.read([port])).ports.get(port);
  }

  async listVlans(): Promise<SwitchVlan[]> {
    const snap = await this.read([]);
    return [...snap.registry].sort(([a], [b]) => a - b).map(([id, name]) => ({ id, name }));
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
    const signal = o.signal ?? this.opts.signal;
    const names = [...new Set([...changes.filter(isPortChange).map((c) => c.port), ...expect.map((e) => e.port)])];
    const maxRetries = this.opts.maxRetries ?? 5;
    let transactions = 0;
    for (let attempt = 0; ; attempt++) {
      if (signal?.aborted) throw new BaremetalError("cancelled", `switch changes on ${this.where} were cancelled`);
      const snap = await this.read(names, signal);
      const missing = (port: string, property: string) => {
        if (snap.ports.has(port)) return;
        throw new BaremetalError(
          "not-found",
          snap.elsewhere.has(port) ? `switch port ${port} is not a port of ${this.where} (it belongs to another bridge)` : `switch port ${port} does not exist on ${this.where}`,
          { property },
        );
      };
      changes.forEach((c, i) => isPortChange(c) && missing(c.port, `changes[${i}].port`));
      expect.forEach((e, i) => missing(e.port, `expect[${i}].port`));
      expect.forEach((e, i) => {
        const diff = expectationMismatches(snap.ports.get(e.port)!, e);
        if (diff.length) {
          throw new BaremetalError("conflict", `switch port ${e.port} on ${this.where} is not as expected: ${diff.join("; ")}`, { property: `expect[${i}]`, details: diff });
        }
      });

      const desired = new Map<string, SwitchPortConfig>();
      changes.forEach((c, i) => {
        if (!isPortChange(c)) return;
        desired.set(c.port, applyPortChange(desired.get(c.port) ?? snap.ports.get(c.port)!, c, this.opts.owner, `changes[${i}]`));
      });
      const registry = applyVlanChanges(snap.registry, changes.filter((c): c is SwitchVlanChange => !isPortChange(c)));
      const writes: CliPortWrite[] = [];
      for (const [port, after] of desired) {
        const before = snap.ports.get(port)!;
        if (!samePortConfig(before, after) || before.owner !== after.owner) writes.push({ port, before, after });
      }
      const asserted = [...new Set([...writes.map((w) => w.port), ...expect.map((e) => e.port)])];
      const command = this.dialect.writeCommand({ snapshot: snap, writes, asserted, registry });
      if (command === undefined) return { transactions, retries: attempt, changed: false };

      await this.opts.hooks?.afterRead?.(attempt);
      transactions++;
      this.stats.writes++;
      const r = await this.transport.exec(command, { signal });
      if (r.code === 0) {
        if (!this.dialect.atomic) {
          const deleted = new Set(changes.flatMap((c) => (c.kind === "delete-vlan" ? [c.vlan] : [])));
          await this.verifyWritten(desired, registry, deleted, signal);
        }
        else await this.waitApplied(signal);
        return { transactions, retries: attempt, changed: true };
      }
      const failure = this.dialect.writeFailed(r);
      if (failure === "unknown") {
        // Did it commit (and only the wait for the device timed out), or was the precondition unmet?
        const after = await this.read(names, signal);
        if (this.shows(after, desired, registry)) {
          await this.waitApplied(signal, after);
          return { transactions, retries: attempt, changed: true };
        }
      }
      if (attempt < maxRetries) {
        await sleep(5 + Math.random() * 20 * (attempt + 1));
        continue;
      }
      throw new BaremetalError(
        "conflict",
        `switch ports ${asserted.join(", ") || "(registry)"} on ${this.where} kept changing under us: another client wrote them between our read and our write ${attempt + 1} times in a row; try again later`,
        { details: [`last write: ${exitText(r)}: ${outputTail(r, 300)}`] },
      );
    }
  }

  /** Whether a read shows the desired ports (owner included) and registry. */
  private shows(snap: CliSnapshot, desired: Map<string, SwitchPortConfig>, registry: Map<number, string>): boolean {
    for (const [port, want] of desired) {
      const have = snap.ports.get(port);
      if (!have || !this.same(have, want)) return false;
    }
    for (const [id, name] of registry) if (snap.registry.get(id) !== name) return false;
    for (const id of snap.registry.keys()) if (!registry.has(id)) return false;
    return true;
  }

  private same(have: SwitchPortConfig, written: SwitchPortConfig): boolean {
    const want = this.dialect.readBack ? this.dialect.readBack(written) : written;
    return samePortConfig(have, want) && have.owner === want.owner;
  }

  /** Non-atomic dialects: the switch must show what we wrote, else someone interfered. */
  private async verifyWritten(desired: Map<string, SwitchPortConfig>, registry: Map<number, string>, deleted: Set<number>, signal?: AbortSignal): Promise<void> {
    const snap = await this.read([...desired.keys()], signal);
    const wrong: string[] = [];
    for (const [port, want] of desired) {
      const have = snap.ports.get(port);
      if (!have || !this.same(have, want)) {
        wrong.push(`${port} reads ${JSON.stringify(have && normalizePortConfig(have))}, we wrote ${JSON.stringify(want)}`);
      }
    }
    for (const id of registry.keys()) if (!snap.registry.has(id)) wrong.push(`VLAN ${id} is missing`);
    for (const id of snap.registry.keys()) if (!registry.has(id) && deleted.has(id)) wrong.push(`VLAN ${id} is still there`);
    if (wrong.length) {
      throw new BaremetalError("conflict", `${this.where} does not show what we wrote (another client changed it meanwhile, or the batch was partly applied): ${wrong.join("; ")}`, {
        details: wrong,
      });
    }
  }

  /** Waits until the device forwards with the committed configuration, where the dialect can tell. */
  private async waitApplied(signal?: AbortSignal, known?: CliSnapshot): Promise<void> {
    const wait = this.dialect.waitAppliedCommand;
    if (!wait || !known) return; // ovs-vsctl waited itself (no --no-wait) when the write exited 0
    const ms = this.opts.appliedTimeoutMs ?? 10000;
    const cmd = wait.call(this.dialect, known, ms);
    if (!cmd) return;
    const r: ExecResult = await this.transport.exec(cmd, { signal, timeoutMs: ms + 5000 });
    if (r.code !== 0) {
      throw new BaremetalError("timeout", `the change on ${this.where} is committed, but the switch did not apply it within ${ms} ms (${exitText(r)}): ${outputTail(r, 300)}`);
    }
  }

  async close(): Promise<void> {
    await this.transport.close();
  }
}
