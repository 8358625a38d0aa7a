/**
 * The `ovsdb` switch driver: the switch kind on Open vSwitch's database (the Open_vSwitch schema),
 * for one bridge, over our OVSDB client.
 *
 * Port configuration lives in the Port row:
 *   access             tag=<vlan>, vlan_mode=access, trunks=[]
 *   trunk              tag=[], vlan_mode=trunk, trunks=[vlans]
 *   trunk + native     tag=<native>, vlan_mode=native-untagged (or native-tagged), trunks=[vlans]
 *   none (reset)       tag=[], vlan_mode=[], trunks=[]  (OVS's default: a trunk of every VLAN)
 * An empty `trunks` means EVERY VLAN to OVS, so a trunk that must carry no tagged VLAN at all is
 * written as trunks=[4095] (a VLAN id that is reserved by 802.1Q, never carried), and read back as
 * `trunkVlans: []`.
 * Our marker is the Port's `external_ids:baremetal-owner`. The VLAN registry is the bridge's
 * `external_ids:baremetal-vlan-<id>=<name>`.
 *
 * `apply` reads what it needs (one read-only transaction), computes the new rows, and writes them
 * in ONE transaction that:
 *  1. starts with a `wait` (timeout 0, until "==") per port it writes or was told to expect, asserting
 *     that the columns it read (tag, trunks, vlan_mode, external_ids) are unchanged: optimistic
 *     concurrency. When a wait fails (another client wrote in between), nothing was written; the
 *     driver re-reads and tries again, a bounded number of times, then gives up with `conflict`;
 *  2. updates the ports (their external_ids with `mutate`, so keys of others survive);
 *  3. changes the VLAN registry with `mutate` (insert/delete of keys), not by rewriting the map, so
 *     two clients adding different VLANs at once both succeed without even a retry;
 *  4. increments Open_vSwitch `next_cfg` and selects its new value.
 * Then it waits (a blocking `wait` on the server, bounded) until ovs-vswitchd reports that value or
 * later in `cur_cfg`, i.e. until the switch forwards with the new configuration.
 */
import { BaremetalError, validationError } from "../../core/errors";
import {
  applyPortChange,
  applyVlanChanges,
  expectationMismatches,
  isPortChange,
  normalizePortConfig,
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
  MIN_VLAN,
  MAX_VLAN,
} from "../kinds/switch";
import { isOvsdbTransactionError, OvsdbClient, OvsdbTlsOptions } from "./client";
import { cond, decodeOptional, decodeSet, decodeStringMap, decodeUuid, mapOf, mutation, Operation, ops, OvsdbSet, setOf, uuid, UuidRef, Wire } from "./data";

export const OWNER_KEY = "baremetal-owner";
export const VLAN_KEY_PREFIX = "baremetal-vlan-";
/** The trunks value of a trunk that carries no tagged VLAN (empty trunks would mean all VLANs). */
export const NO_VLANS_TRUNK = 4095;
const DB = "Open_vSwitch";
/** The columns `apply` reads, writes and asserts (in its `wait`s). */
const PORT_STATE_COLUMNS = ["tag", "trunks", "vlan_mode", "external_ids"];

export interface OvsdbSwitchOptions {
  /** `tcp:HOST:PORT` or `ssl:HOST:PORT` of ovsdb-server. */
  url: string;
  /** The bridge that is the switch. */
  bridge: string;
  /** Owner marker written on the ports configured, unless a change names its own. */
  owner?: string;
  tls?: OvsdbTlsOptions;
  requestTimeoutMs?: number;
  /** How long `apply` waits for ovs-vswitchd to apply a committed change (default 10000; 0: not at all). */
  appliedTimeoutMs?: number;
  /** Attempts repeated after a failed `wait` (a concurrent change) before `conflict` (default 5). */
  maxRetries?: number;
  signal?: AbortSignal;
  /** Every OVSDB request (for counting round trips). */
  onRequest?: (e: { method: string; ms: number; ok: boolean }) => void;
  /** Test and observability hooks. `afterRead` runs between the read and the write of each attempt. */
  hooks?: { afterRead?: (attempt: number) => void | Promise<void> };
}

/** The driver from a switch connection (what resources give the driver factory). */
export function ovsdbSwitchDriver(conn: SwitchConnection, extra: Partial<OvsdbSwitchOptions> = {}): OvsdbSwitchDriver {
  if (!conn.bridge) throw validationError("bridge", "an Open vSwitch switch needs the bridge that is the switch (e.g. br0)");
  return new OvsdbSwitchDriver({
    url: conn.address,
    bridge: conn.bridge,
    owner: conn.owner,
    tls: {
      verify: conn.verifyTls ?? true,
      ca: conn.caBundle,
      cert: conn.clientCertificate,
      key: conn.clientKey,
    },
    requestTimeoutMs: conn.requestTimeoutMs,
    signal: conn.signal,
    ...extra,
  });
}

/** The VLAN columns of a Port row, decoded. */
export interface PortColumns {
  tag?: number;
  trunks: number[];
  vlanMode?: string;
}

/** The Port columns that give a port this configuration. */
export function portColumnsFor(c: SwitchPortConfig): PortColumns {
  switch (c.mode) {
    case "access":
      return { tag: c.vlan, trunks: [], vlanMode: "access" };
    case "none":
      return { trunks: [] };
    case "trunk": {
      const trunks = c.trunkVlans === undefined ? [] : c.trunkVlans.length ? [...c.trunkVlans] : [NO_VLANS_TRUNK];
      if (c.vlan !== undefined) return { tag: c.vlan, trunks, vlanMode: c.nativeUntagged === false ? "native-tagged" : "native-untagged" };
      return { trunks, vlanMode: "trunk" };
    }
  }
}

/** What OVS does with a Port row's columns, in the kind's terms (see vswitch.xml, Port vlan_mode). */
export function portConfigFromColumns(port: string, cols: PortColumns, extra: { owner?: string; shutdown?: boolean } = {}): SwitchPortConfig {
  const mode = cols.vlanMode ?? (cols.tag !== undefined ? "access" : cols.trunks.length ? "trunk" : undefined);
  const trunkVlans = cols.trunks.length ? cols.trunks.filter((v) => v !== NO_VLANS_TRUNK) : undefined;
  let c: SwitchPortConfig;
  switch (mode) {
    case undefined:
      c = { port, mode: "none" };
      break;
    case "access":
    case "dot1q-tunnel": // an access port that pushes an outer tag
      c = { port, mode: "access", vlan: cols.tag };
      break;
    case "native-untagged":
    case "native-tagged":
      c = { port, mode: "trunk", vlan: cols.tag, nativeUntagged: mode === "native-untagged", trunkVlans };
      break;
    default: // "trunk" (OVS ignores tag then)
      c = { port, mode: "trunk", trunkVlans };
  }
  return normalizePortConfig({ ...c, ...extra });
}

function decodePortColumns(row: Record<string, Wire>): PortColumns {
  const tag = decodeOptional(row.tag);
  const vlanMode = decodeOptional(row.vlan_mode);
  return {
    ...(typeof tag === "number" ? { tag } : {}),
    trunks: decodeSet(row.trunks).filter((v): v is number => typeof v === "number").sort((a, b) => a - b),
    ...(typeof vlanMode === "string" ? { vlanMode } : {}),
  };
}

function sameColumns(a: PortColumns, b: PortColumns): boolean {
  return a.tag === b.tag && a.vlanMode === b.vlanMode && a.trunks.join(",") === b.trunks.join(",");
}

interface PortState {
  uuid: string;
  name: string;
  /** The columns as read, in wire form (asserted verbatim by `wait`). */
  raw: Record<string, Wire>;
  columns: PortColumns;
  config: SwitchPortConfig;
  onBridge: boolean;
}

interface Snapshot {
  bridgeUuid: string;
  registry: Map<number, string>;
  ports: Map<string, PortState>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class OvsdbSwitchDriver implements SwitchDriver {
  readonly family = "ovsdb";
  readonly client: OvsdbClient;
  readonly bridge: string;
  private readonly opts: OvsdbSwitchOptions;

  constructor(opts: OvsdbSwitchOptions) {
    if (typeof opts.bridge !== "string" || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(opts.bridge)) {
      throw validationError("bridge", `bridge must be an Open vSwitch bridge name, got ${JSON.stringify(opts.bridge)}`);
    }
    this.opts = opts;
    this.bridge = opts.bridge;
    this.client = new OvsdbClient({
      url: opts.url,
      urlProperty: "address",
      tls: opts.tls,
      requestTimeoutMs: opts.requestTimeoutMs,
      signal: opts.signal,
      onRequest: opts.onRequest,
    });
  }

  private get where(): string {
    return `bridge ${this.bridge} of ovsdb-server at ${this.client.url}`;
  }

  async listPorts(): Promise<SwitchPortConfig[]> {
    const snap = await this.read(undefined);
    return [...snap.ports.values()].filter((p) => p.onBridge).map((p) => p.config).sort((a, b) => (a.port < b.port ? -1 : a.port > b.port ? 1 : 0));
  }

  async getPort(port: string): Promise<SwitchPortConfig | undefined> {
    validatePortName(port, "port");
    if (port === this.bridge) return undefined; // the bridge's local port is not a switch port
    const snap = await this.read([port]);
    const p = snap.ports.get(port);
    return p?.onBridge ? p.config : undefined;
  }

  async listVlans(): Promise<SwitchVlan[]> {
    const snap = await this.read([]);
    return [...snap.registry].sort(([a], [b]) => a - b).map(([id, name]) => ({ id, name }));
  }

  async ensureVlan(id: number, name: string): Promise<{ changed: boolean }> {
    validateVlanId(id, "id");
    validateVlanName(name, "name");
    const r = await this.apply([{ kind: "ensure-vlan", vlan: id, name }]);
    return { changed: r.changed };
  }

  async deleteVlan(id: number): Promise<{ changed: boolean }> {
    validateVlanId(id, "id");
    const r = await this.apply([{ kind: "delete-vlan", vlan: id }]);
    return { changed: r.changed };
  }

  async apply(input: SwitchChange[], o: SwitchApplyOptions = {}): Promise<SwitchApplyResult> {
    const changes = validateSwitchChanges(input);
    const expect = validateExpectations(o.expect);
    changes.forEach((c, i) => {
      if (isPortChange(c) && c.port === this.bridge) {
        throw validationError(`changes[${i}].port`, `${c.port} is the bridge's own (local) port, not a switch port`);
      }
    });
    const names = [...new Set([...changes.filter(isPortChange).map((c) => c.port), ...expect.map((e) => e.port)])];
    const maxRetries = this.opts.maxRetries ?? 5;
    let transactions = 0;
    for (let attempt = 0; ; attempt++) {
      if (o.signal?.aborted) throw new BaremetalError("cancelled", `switch changes on ${this.where} were cancelled`);
      const snap = await this.read(names, o.signal);

      // Every port named must exist on this bridge.
      const missing = (port: string, property: string) => {
        const p = snap.ports.get(port);
        if (p?.onBridge) return;
        throw new BaremetalError(
          "not-found",
          p ? `switch port ${port} is not on ${this.where} (it belongs to another bridge)` : `switch port ${port} does not exist on ${this.where}`,
          { property },
        );
      };
      changes.forEach((c, i) => isPortChange(c) && missing(c.port, `changes[${i}].port`));
      expect.forEach((e, i) => missing(e.port, `expect[${i}].port`));
      expect.forEach((e, i) => {
        const diff = expectationMismatches(snap.ports.get(e.port)!.config, e);
        if (diff.length) {
          throw new BaremetalError("conflict", `switch port ${e.port} on ${this.where} is not as expected: ${diff.join("; ")}`, { property: `expect[${i}]`, details: diff });
        }
      });

      // The new configuration of each port, the changes applied in order.
      const desired = new Map<string, SwitchPortConfig>();
      changes.forEach((c, i) => {
        if (!isPortChange(c)) return;
        const current = desired.get(c.port) ?? snap.ports.get(c.port)!.config;
        desired.set(c.port, applyPortChange(current, c, this.opts.owner, `changes[${i}]`));
      });
      const registry = applyVlanChanges(snap.registry, changes.filter((c): c is SwitchVlanChange => !isPortChange(c)));

      const waits: Operation[] = [];
      const writes: Operation[] = [];
      let columnsChanged = false;
      const asserted = new Set<string>();
      const assertUnchanged = (p: PortState) => {
        if (asserted.has(p.name)) return;
        asserted.add(p.name);
        const row: Record<string, Wire> = {};
        for (const c of PORT_STATE_COLUMNS) row[c] = p.raw[c];
        waits.push(ops.wait("Port", [cond("_uuid", "==", uuid(p.uuid))], PORT_STATE_COLUMNS, "==", [row], 0));
      };
      for (const [name, want] of desired) {
        const p = snap.ports.get(name)!;
        const cols = portColumnsFor(want);
        const owner = p.config.owner;
        if (!sameColumns(cols, p.columns)) {
          columnsChanged = true;
          writes.push(
            ops.update("Port", [cond("_uuid", "==", uuid(p.uuid))], {
              tag: cols.tag !== undefined ? cols.tag : setOf(),
              trunks: new OvsdbSet(cols.trunks),
              vlan_mode: cols.vlanMode !== undefined ? cols.vlanMode : setOf(),
            }),
          );
        }
        if (want.owner !== owner) {
          const muts = [mutation("external_ids", "delete", setOf(OWNER_KEY))];
          if (want.owner !== undefined) muts.push(mutation("external_ids", "insert", mapOf({ [OWNER_KEY]: want.owner })));
          writes.push(ops.mutate("Port", [cond("_uuid", "==", uuid(p.uuid))], muts));
        }
        if (!sameColumns(cols, p.columns) || want.owner !== owner) assertUnchanged(p);
      }
      // What the caller expects must still hold when we write, even on ports we leave alone.
      for (const e of expect) assertUnchanged(snap.ports.get(e.port)!);

      const removeKeys: string[] = [];
      const addPairs: Record<string, string> = {};
      for (const id of new Set([...snap.registry.keys(), ...registry.keys()])) {
        const before = snap.registry.get(id);
        const after = registry.get(id);
        if (before === after) continue;
        if (before !== undefined) removeKeys.push(`${VLAN_KEY_PREFIX}${id}`);
        if (after !== undefined) addPairs[`${VLAN_KEY_PREFIX}${id}`] = after;
      }
      if (removeKeys.length || Object.keys(addPairs).length) {
        const muts = [];
        if (removeKeys.length) muts.push(mutation("external_ids", "delete", new OvsdbSet(removeKeys)));
        if (Object.keys(addPairs).length) muts.push(mutation("external_ids", "insert", mapOf(addPairs)));
        writes.push(ops.mutate("Bridge", [cond("_uuid", "==", uuid(snap.bridgeUuid))], muts));
      }

      if (!writes.length) return { transactions, retries: attempt, changed: false };

      const txn: Operation[] = [...waits, ...writes];
      let cfgIndex = -1;
      if (columnsChanged) {
        txn.push(ops.mutate("Open_vSwitch", [], [mutation("next_cfg", "+=", 1)]));
        cfgIndex = txn.length;
        txn.push(ops.select("Open_vSwitch", [], ["next_cfg"]));
      }
      txn.push(ops.comment(`baremetal: ${changes.length} change(s) on ${this.bridge}${this.opts.owner ? ` by ${this.opts.owner}` : ""}`));

      await this.opts.hooks?.afterRead?.(attempt);
      transactions++;
      let results;
      try {
        results = await this.client.transact(DB, txn, { signal: o.signal });
      } catch (e) {
        if (isOvsdbTransactionError(e) && e.code === "conflict" && e.index < waits.length) {
          if (attempt < maxRetries) {
            await sleep(5 + Math.random() * 20 * (attempt + 1));
            continue;
          }
          const changed = [...asserted].join(", ");
          throw new BaremetalError(
            "conflict",
            `switch ports ${changed} on ${this.where} kept changing under us: another client wrote them between our read and our write ${attempt + 1} times in a row; try again later`,
            { cause: e, details: [e.message] },
          );
        }
        throw e;
      }
      if (cfgIndex >= 0) {
        const nextCfg = results[cfgIndex].rows?.[0]?.next_cfg;
        if (typeof nextCfg === "number") await this.waitApplied(nextCfg, o.signal);
      }
      return { transactions, retries: attempt, changed: true };
    }
  }

  async close(): Promise<void> {
    await this.client.close();
  }

  /** Waits until ovs-vswitchd has applied configuration `nextCfg` (cur_cfg >= nextCfg). */
  private async waitApplied(nextCfg: number, signal?: AbortSignal): Promise<void> {
    const ms = this.opts.appliedTimeoutMs ?? 10000;
    if (ms <= 0) return;
    try {
      // A blocking wait: ovsdb-server answers as soon as cur_cfg reaches nextCfg, or after `ms`.
      await this.client.transact(DB, [ops.wait("Open_vSwitch", [cond("cur_cfg", ">=", nextCfg)], [], "==", [{}], ms)], {
        signal,
        timeoutMs: ms + (this.opts.requestTimeoutMs ?? 30000),
      });
    } catch (e) {
      if (isOvsdbTransactionError(e) && e.ovsdbError === "timed out") {
        throw new BaremetalError(
          "timeout",
          `the change on ${this.where} is committed, but ovs-vswitchd did not apply it within ${ms} ms (Open_vSwitch cur_cfg stayed below ${nextCfg}); is ovs-vswitchd running?`,
          { cause: e },
        );
      }
      throw e;
    }
  }

  /**
   * One read-only transaction: the bridge, the named ports (all ports when `names` is undefined) and
   * the interfaces' administrative state.
   */
  private async read(names: string[] | undefined, signal?: AbortSignal): Promise<Snapshot> {
    const portColumns = ["_uuid", "name", "interfaces", ...PORT_STATE_COLUMNS];
    const txn: Operation[] = [ops.select("Bridge", [cond("name", "==", this.bridge)], ["_uuid", "ports", "external_ids"])];
    if (names === undefined) txn.push(ops.select("Port", [], portColumns));
    else for (const n of names) txn.push(ops.select("Port", [cond("name", "==", n)], portColumns));
    const withInterfaces = names === undefined || names.length > 0;
    if (withInterfaces) txn.push(ops.select("Interface", [], ["_uuid", "admin_state"]));
    const results = await this.client.transact(DB, txn, { signal });

    const bridgeRow = results[0].rows?.[0];
    if (!bridgeRow) throw new BaremetalError("not-found", `Open vSwitch at ${this.client.url} has no bridge ${this.bridge}`, { property: "bridge" });
    const bridgePorts = new Set(decodeSet(bridgeRow.ports).map((u) => (u as UuidRef).uuid));
    const external = decodeStringMap(bridgeRow.external_ids);
    const registry = new Map<number, string>();
    for (const [k, v] of Object.entries(external)) {
      if (!k.startsWith(VLAN_KEY_PREFIX)) continue;
      const id = Number(k.slice(VLAN_KEY_PREFIX.length));
      if (Number.isInteger(id) && id >= MIN_VLAN && id <= MAX_VLAN && String(id) === k.slice(VLAN_KEY_PREFIX.length)) registry.set(id, v);
    }
    const admin = new Map<string, string>();
    if (withInterfaces) {
      for (const r of results[results.length - 1].rows ?? []) {
        const state = decodeOptional(r.admin_state);
        if (typeof state === "string") admin.set(decodeUuid(r._uuid), state);
      }
    }
    const ports = new Map<string, PortState>();
    const portRows = results.slice(1, withInterfaces ? -1 : undefined).flatMap((r) => r.rows ?? []);
    for (const row of portRows) {
      const name = row.name as string;
      const portUuid = decodeUuid(row._uuid);
      if (names === undefined && name === this.bridge) continue; // the bridge's local port
      const columns = decodePortColumns(row);
      const ext = decodeStringMap(row.external_ids);
      const states = decodeSet(row.interfaces).map((u) => admin.get((u as UuidRef).uuid)).filter((s): s is string => !!s);
      const shutdown = states.length ? states.every((s) => s === "down") : undefined;
      const raw: Record<string, Wire> = {};
      for (const c of PORT_STATE_COLUMNS) raw[c] = row[c];
      ports.set(name, {
        uuid: portUuid,
        name,
        raw,
        columns,
        config: portConfigFromColumns(name, columns, { owner: ext[OWNER_KEY], shutdown }),
        onBridge: bridgePorts.has(portUuid),
      });
    }
    return { bridgeUuid: decodeUuid(bridgeRow._uuid), registry, ports };
  }
}
