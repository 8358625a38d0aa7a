/**
 * The switch driver kind: what tenant networks need from a top-of-rack switch, whatever its family
 * (Open vSwitch over OVSDB today; vendor APIs such as NX-API, eAPI or NETCONF compose the same
 * interface later).
 *
 * Model:
 * - Ports are the switch's existing ports: a driver never creates or deletes one. A change naming a
 *   port the switch does not have fails with a `not-found` error whose `property` names the change.
 * - A port is in one of three modes: `access` (untagged in one VLAN), `trunk` (802.1Q-tagged VLANs,
 *   optionally with a native VLAN), or `none` (no VLAN configuration of ours: the switch's default).
 * - VLANs are an explicit registry (`listVlans`/`ensureVlan`/`deleteVlan`): on switches where VLANs
 *   are implicit (Open vSwitch) the driver keeps the registry itself, so that creating and deleting
 *   a VLAN is state that can be read back.
 * - Every port this provider configures carries an owner marker (`owner`), read back for drift
 *   detection and to show who configured a port.
 * - `apply` takes a batch of changes and makes them in ONE switch transaction where the family
 *   allows it, with optimistic concurrency: what it read must still hold when it writes, or it
 *   re-reads and tries again (a bounded number of times), else a `conflict` error. Two stacks
 *   configuring the same switch never overwrite each other silently.
 *
 * The pure functions below (validation, the effect of a change on a port's configuration) are
 * shared by every driver, so that all families agree on what a change means.
 */
import { BaremetalError, validationError } from "../../core/errors";

export const MIN_VLAN = 1;
export const MAX_VLAN = 4094;

export type SwitchPortMode = "access" | "trunk" | "none";

/** A port's VLAN configuration as read back from the switch (for drift detection). */
export interface SwitchPortConfig {
  port: string;
  mode: SwitchPortMode;
  /** The access VLAN, or the native VLAN of a trunk. */
  vlan?: number;
  /**
   * Tagged VLANs a trunk carries, sorted. `[]`: none at all. Absent on a trunk: every VLAN (a trunk
   * without a VLAN list, which this provider never configures but can find on a switch).
   */
  trunkVlans?: number[];
  /** Trunk with a native VLAN: whether its frames leave untagged (true) or tagged (false). */
  nativeUntagged?: boolean;
  /** The port is administratively down (read only; absent when the switch does not say). */
  shutdown?: boolean;
  /** Who configured the port, from this provider's marker on the switch. */
  owner?: string;
}

export interface SwitchVlan {
  id: number;
  name: string;
}

/** One change of a batch. Port changes name an existing port; VLAN changes name a VLAN. */
export type SwitchChange =
  /** Untagged member of one VLAN. */
  | { kind: "access"; port: string; vlan: number; owner?: string }
  /**
   * 802.1Q trunk carrying exactly `vlans` (may be empty), and optionally a native VLAN whose frames
   * leave untagged (default) or tagged (`nativeUntagged: false`).
   */
  | { kind: "trunk"; port: string; vlans: number[]; nativeVlan?: number; nativeUntagged?: boolean; owner?: string }
  /** Back to a quarantine VLAN (as an access port), or to no configuration; clears the owner. */
  | { kind: "reset"; port: string; quarantineVlan?: number }
  /** Adds VLANs to a trunk (an inter-switch link); a port with no configuration becomes a trunk of exactly these. */
  | { kind: "trunk-add"; port: string; vlans: number[] }
  /** Removes VLANs from a trunk that has an explicit VLAN list; VLANs it does not carry are ignored. */
  | { kind: "trunk-remove"; port: string; vlans: number[] }
  /** Creates the VLAN in the registry, or renames it. */
  | { kind: "ensure-vlan"; vlan: number; name: string }
  /** Removes the VLAN from the registry (ports still using it are left alone). */
  | { kind: "delete-vlan"; vlan: number };

export type SwitchPortChange = Extract<SwitchChange, { port: string }>;
export type SwitchVlanChange = Exclude<SwitchChange, { port: string }>;

/**
 * What the caller believes a port looks like before the change (e.g. the state it recorded last
 * time). Only the properties present are compared; a property present with the value `undefined`
 * must be absent on the switch (e.g. `owner: undefined`: nobody owns the port).
 */
export type SwitchPortExpectation = { port: string } & Partial<Omit<SwitchPortConfig, "port">>;

export interface SwitchApplyOptions {
  /** Fails with `conflict` (no retry) when a port does not match, checked atomically with the change. */
  expect?: SwitchPortExpectation[];
  signal?: AbortSignal;
}

export interface SwitchApplyResult {
  /** Write transactions sent to the switch, failed attempts included (0 when nothing had to change). */
  transactions: number;
  /** Attempts repeated because the switch changed between our read and our write. */
  retries: number;
  /** Whether anything on the switch changed. */
  changed: boolean;
}

/** How to reach a switch (what a resource gives a driver factory). */
export interface SwitchConnection {
  /** Family-specific address: `tcp:host:port` / `ssl:host:port` for OVSDB. */
  address: string;
  /** Open vSwitch: the bridge that is "the switch". */
  bridge?: string;
  /** Marker written on every port this driver configures, unless a change names its own. */
  owner?: string;
  verifyTls?: boolean;
  /** PEM: the CA (or certificate) to trust for the switch's TLS certificate. */
  caBundle?: string;
  /** PEM client certificate and key, for switches that require one (ovsdb-server over SSL does). */
  clientCertificate?: string;
  clientKey?: string;
  requestTimeoutMs?: number;
  signal?: AbortSignal;
  /** ssh-cli: the SSH user (else the `user@` of the address). */
  username?: string;
  /** ssh-cli: SSH password (secret). */
  password?: string;
  /** ssh-cli: SSH private key, OpenSSH or PEM text (secret). */
  privateKey?: string;
  /**
   * ssh-cli: the switch's SSH host key: SHA256 fingerprint(s) as OpenSSH prints them, or
   * known_hosts text. Required unless `verifyTls` is false (which turns host key checking off).
   */
  hostKey?: string;
  /** ssh-cli: the command-line dialect: `ovs-vsctl`, `sonic` or `cumulus-nvue`. */
  dialect?: string;
}

export interface SwitchDriver {
  /** The driver family ("ovsdb", "fake", ...). */
  readonly family: string;
  /** Every port of the switch, sorted by name. */
  listPorts(): Promise<SwitchPortConfig[]>;
  /** One port, or undefined when the switch has no such port. */
  getPort(port: string): Promise<SwitchPortConfig | undefined>;
  /** The registry of VLANs, sorted by id. */
  listVlans(): Promise<SwitchVlan[]>;
  ensureVlan(id: number, name: string): Promise<{ changed: boolean }>;
  deleteVlan(id: number): Promise<{ changed: boolean }>;
  /** Makes every change of the batch in one transaction (see the header). */
  apply(changes: SwitchChange[], opts?: SwitchApplyOptions): Promise<SwitchApplyResult>;
  /** Closes connections; idempotent. */
  close(): Promise<void>;
}

// ---- validation --------------------------------------------------------------------------------

/** Port names of every family: `Ethernet1/1`, `ge-0/0/1`, `swp1`, `eth0.100`, `Po10`, `a1`. */
const PORT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:\/-]{0,63}$/;
const VLAN_NAME = /^[\x21-\x7e][\x20-\x7e]{0,62}$/;
const OWNER = /^[\x21-\x7e][\x20-\x7e]{0,254}$/;

export function validateVlanId(v: unknown, property: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < MIN_VLAN || v > MAX_VLAN) {
    throw validationError(property, `VLAN must be an integer from ${MIN_VLAN} to ${MAX_VLAN}, got ${JSON.stringify(v)}`);
  }
  return v;
}

export function validatePortName(p: unknown, property: string): string {
  if (typeof p !== "string" || !PORT_NAME.test(p)) {
    throw validationError(
      property,
      `port must be a switch port name (1-64 characters of letters, digits and _ . : / -, starting with a letter or digit), got ${JSON.stringify(p)}`,
    );
  }
  return p;
}

export function validateVlanName(n: unknown, property: string): string {
  if (typeof n !== "string" || !VLAN_NAME.test(n)) {
    throw validationError(property, `VLAN name must be 1-63 printable ASCII characters, not starting with a space, got ${JSON.stringify(n)}`);
  }
  return n;
}

export function validateOwner(o: unknown, property: string): string {
  if (typeof o !== "string" || !OWNER.test(o)) {
    throw validationError(property, `owner must be 1-255 printable ASCII characters, not starting with a space, got ${JSON.stringify(o)}`);
  }
  return o;
}

function vlanList(v: unknown, property: string, allowEmpty: boolean): number[] {
  if (!Array.isArray(v)) throw validationError(property, `must be a list of VLANs, got ${JSON.stringify(v)}`);
  if (!allowEmpty && v.length === 0) throw validationError(property, "must list at least one VLAN");
  const ids = v.map((x, i) => validateVlanId(x, `${property}[${i}]`));
  return [...new Set(ids)].sort((a, b) => a - b);
}

/**
 * Checks a batch and returns it normalised (VLAN lists sorted and without duplicates). Errors name
 * the property as `<property>[i].<field>`.
 */
export function validateSwitchChanges(changes: unknown, property = "changes"): SwitchChange[] {
  if (!Array.isArray(changes)) throw validationError(property, "changes must be a list");
  return changes.map((c: unknown, i): SwitchChange => {
    const p = `${property}[${i}]`;
    if (typeof c !== "object" || c === null) throw validationError(p, `a change must be an object, got ${JSON.stringify(c)}`);
    const ch = c as Record<string, unknown>;
    const owner = ch.owner === undefined ? undefined : validateOwner(ch.owner, `${p}.owner`);
    switch (ch.kind) {
      case "access":
        return { kind: "access", port: validatePortName(ch.port, `${p}.port`), vlan: validateVlanId(ch.vlan, `${p}.vlan`), ...(owner !== undefined ? { owner } : {}) };
      case "trunk": {
        const port = validatePortName(ch.port, `${p}.port`);
        const vlans = vlanList(ch.vlans, `${p}.vlans`, true);
        const nativeVlan = ch.nativeVlan === undefined ? undefined : validateVlanId(ch.nativeVlan, `${p}.nativeVlan`);
        if (ch.nativeUntagged !== undefined && typeof ch.nativeUntagged !== "boolean") {
          throw validationError(`${p}.nativeUntagged`, `nativeUntagged must be true or false, got ${JSON.stringify(ch.nativeUntagged)}`);
        }
        if (ch.nativeUntagged !== undefined && nativeVlan === undefined) {
          throw validationError(`${p}.nativeUntagged`, "nativeUntagged needs a nativeVlan");
        }
        return {
          kind: "trunk",
          port,
          vlans,
          ...(nativeVlan !== undefined ? { nativeVlan, nativeUntagged: (ch.nativeUntagged as boolean | undefined) ?? true } : {}),
          ...(owner !== undefined ? { owner } : {}),
        };
      }
      case "reset": {
        const port = validatePortName(ch.port, `${p}.port`);
        if (ch.quarantineVlan === undefined) return { kind: "reset", port };
        return { kind: "reset", port, quarantineVlan: validateVlanId(ch.quarantineVlan, `${p}.quarantineVlan`) };
      }
      case "trunk-add":
      case "trunk-remove":
        return { kind: ch.kind, port: validatePortName(ch.port, `${p}.port`), vlans: vlanList(ch.vlans, `${p}.vlans`, false) };
      case "ensure-vlan":
        return { kind: "ensure-vlan", vlan: validateVlanId(ch.vlan, `${p}.vlan`), name: validateVlanName(ch.name, `${p}.name`) };
      case "delete-vlan":
        return { kind: "delete-vlan", vlan: validateVlanId(ch.vlan, `${p}.vlan`) };
      default:
        throw validationError(
          `${p}.kind`,
          `kind must be one of access, trunk, reset, trunk-add, trunk-remove, ensure-vlan, delete-vlan; got ${JSON.stringify(ch.kind)}`,
        );
    }
  });
}

export function validateExpectations(expect: unknown, property = "expect"): SwitchPortExpectation[] {
  if (expect === undefined) return [];
  if (!Array.isArray(expect)) throw validationError(property, "expect must be a list of port expectations");
  return expect.map((e: unknown, i) => {
    if (typeof e !== "object" || e === null) throw validationError(`${property}[${i}]`, "an expectation must be an object");
    const x = e as SwitchPortExpectation;
    validatePortName(x.port, `${property}[${i}].port`);
    if ("mode" in x && !["access", "trunk", "none"].includes(x.mode as string)) {
      throw validationError(`${property}[${i}].mode`, `mode must be access, trunk or none, got ${JSON.stringify(x.mode)}`);
    }
    return x;
  });
}

export function isPortChange(c: SwitchChange): c is SwitchPortChange {
  return "port" in c;
}

// ---- the meaning of a change ---------------------------------------------------------------------

/** Drops absent properties, sorts VLAN lists: the one shape every driver reads back. */
export function normalizePortConfig(c: SwitchPortConfig): SwitchPortConfig {
  const out: SwitchPortConfig = { port: c.port, mode: c.mode };
  if (c.vlan !== undefined) out.vlan = c.vlan;
  if (c.trunkVlans !== undefined) out.trunkVlans = [...new Set(c.trunkVlans)].sort((a, b) => a - b);
  if (c.nativeUntagged !== undefined) out.nativeUntagged = c.nativeUntagged;
  if (c.shutdown !== undefined) out.shutdown = c.shutdown;
  if (c.owner !== undefined) out.owner = c.owner;
  return out;
}

/**
 * The configuration a port has after `change`. The administrative state (`shutdown`) is not ours
 * and carries over. Throws `conflict` for a change that makes no sense on the port as it is (adding
 * VLANs to an access port, removing some from a trunk of every VLAN); `property` names the change.
 */
export function applyPortChange(current: SwitchPortConfig, change: SwitchPortChange, defaultOwner: string | undefined, property: string): SwitchPortConfig {
  const keep = current.shutdown !== undefined ? { shutdown: current.shutdown } : {};
  const owner = (o: string | undefined) => (o !== undefined ? { owner: o } : {});
  switch (change.kind) {
    case "access":
      return normalizePortConfig({ port: current.port, mode: "access", vlan: change.vlan, ...keep, ...owner(change.owner ?? defaultOwner) });
    case "trunk":
      return normalizePortConfig({
        port: current.port,
        mode: "trunk",
        trunkVlans: change.vlans,
        ...(change.nativeVlan !== undefined ? { vlan: change.nativeVlan, nativeUntagged: change.nativeUntagged ?? true } : {}),
        ...keep,
        ...owner(change.owner ?? defaultOwner),
      });
    case "reset":
      return change.quarantineVlan !== undefined
        ? normalizePortConfig({ port: current.port, mode: "access", vlan: change.quarantineVlan, ...keep })
        : normalizePortConfig({ port: current.port, mode: "none", ...keep });
    case "trunk-add": {
      if (current.mode === "access") {
        throw new BaremetalError("conflict", `port ${current.port} is an access port (VLAN ${current.vlan ?? "?"}); VLANs can only be added to a trunk`, { property });
      }
      if (current.mode === "none") {
        return normalizePortConfig({ port: current.port, mode: "trunk", trunkVlans: change.vlans, ...keep, ...owner(current.owner) });
      }
      if (current.trunkVlans === undefined) return current; // already carries every VLAN
      return normalizePortConfig({ ...current, trunkVlans: [...current.trunkVlans, ...change.vlans] });
    }
    case "trunk-remove": {
      if (current.mode === "access") {
        throw new BaremetalError("conflict", `port ${current.port} is an access port (VLAN ${current.vlan ?? "?"}); VLANs can only be removed from a trunk`, { property });
      }
      if (current.mode === "none" || current.trunkVlans === undefined) {
        throw new BaremetalError(
          "conflict",
          `port ${current.port} carries every VLAN (it has no VLAN list); set it as a trunk with an explicit list before removing VLANs`,
          { property },
        );
      }
      const drop = new Set(change.vlans);
      return normalizePortConfig({ ...current, trunkVlans: current.trunkVlans.filter((v) => !drop.has(v)) });
    }
  }
}

/** Whether two read-backs describe the same configuration (the administrative state aside). */
export function samePortConfig(a: SwitchPortConfig, b: SwitchPortConfig): boolean {
  const strip = (c: SwitchPortConfig) => JSON.stringify({ ...normalizePortConfig(c), shutdown: undefined });
  return strip(a) === strip(b);
}

/** The differences between a port and an expectation, as text (empty when it matches). */
export function expectationMismatches(actual: SwitchPortConfig, expected: SwitchPortExpectation): string[] {
  const a = normalizePortConfig(actual) as unknown as Record<string, unknown>;
  const out: string[] = [];
  for (const key of Object.keys(expected)) {
    if (key === "port") continue;
    let want = (expected as unknown as Record<string, unknown>)[key];
    if (key === "trunkVlans" && Array.isArray(want)) want = [...new Set(want as number[])].sort((x, y) => x - y);
    const have = a[key];
    if (JSON.stringify(have) !== JSON.stringify(want)) {
      out.push(`${key} is ${have === undefined ? "absent" : JSON.stringify(have)}, expected ${want === undefined ? "absent" : JSON.stringify(want)}`);
    }
  }
  return out;
}

/**
 * Applies the VLAN changes of a batch to a registry (in order) and returns the new registry; the
 * registry given is not modified.
 */
export function applyVlanChanges(registry: ReadonlyMap<number, string>, changes: SwitchVlanChange[]): Map<number, string> {
  const out = new Map(registry);
  for (const c of changes) {
    if (c.kind === "ensure-vlan") out.set(c.vlan, c.name);
    else out.delete(c.vlan);
  }
  return out;
}
