/**
 * The `ovs-vsctl` dialect: the switch is a Linux host running Open vSwitch (a white box such as a
 * PicOS-style OVS switch, or a server), driven with `ovs-vsctl` over SSH. PROVEN against a real
 * peer: OpenSSH's sshd in front of Open vSwitch 3.1 (test/harness/sshd.ts + ovs.ts, ssh-cli.test.ts).
 *
 * It stores exactly what the `ovsdb` driver stores, with the same helpers (ovsdb/switch.ts): the
 * Port's tag/trunks/vlan_mode (portColumnsFor / portConfigFromColumns, the 4095 sentinel for a
 * trunk of no VLAN), the owner in Port external_ids:baremetal-owner, the VLAN registry in the
 * bridge's external_ids:baremetal-vlan-<id>. Both families read each other's configuration
 * identically.
 *
 * Read: ONE `ovs-vsctl --format=json` invocation with several `--`-separated `list` commands (one
 * consistent snapshot of the database): the bridge, the ports, the interfaces' admin_state and
 * Open_vSwitch next_cfg/cur_cfg. Cells are OVSDB wire JSON, decoded with ovsdb/data.ts.
 *
 * Write: ONE `ovs-vsctl` invocation, which is ONE OVSDB transaction:
 *   -- wait-until Port <uuid> tag=.. trunks=.. vlan_mode=.. external_ids={..}   per asserted port
 *   -- get Port <uuid> tag trunks vlan_mode external_ids
 *   -- set Port <uuid> tag=.. trunks=.. vlan_mode=..  /  remove|set .. external_ids baremetal-owner
 *   -- remove|set Bridge <uuid> external_ids baremetal-vlan-<id>
 * This is a compare-and-swap: `wait-until` holds the transaction back unless the columns are
 * exactly what our read saw (it reads ovs-vsctl's replica), and `get` makes ovs-vsctl verify those
 * columns at commit (ovsdb_idl_txn_verify), so a change landing between ovs-vsctl's fetch and its
 * commit makes ovs-vsctl redo the commands, and the `wait-until` then holds. ovs-vsctl has no
 * fail-fast precondition: an unmet `wait-until` blocks until `--timeout`, and ovs-vsctl dies with
 * SIGALRM (exit 142, "terminating with signal 14"). Nothing was committed then, unless the timeout
 * hit while ovs-vswitchd was applying a committed change (ovs-vsctl waits for that too, without
 * --no-wait): `writeFailed` says "unknown" and the driver re-reads to tell the two apart.
 * Registry keys are written with `set`/`remove` of single keys, which ovs-vsctl verifies and
 * redoes itself when another client changed the map: two clients adding different VLANs both win.
 */
import { BaremetalError, validationError } from "../../core/errors";
import { MAX_VLAN, MIN_VLAN, SwitchPortConfig } from "../kinds/switch";
import { decodeOptional, decodeSet, decodeStringMap, decodeUuid, Wire } from "../ovsdb/data";
import { OWNER_KEY, portColumnsFor, portConfigFromColumns, PortColumns, VLAN_KEY_PREFIX } from "../ovsdb/switch";
import { CliSnapshot, CliWriteInput, exitText, outputTail, SshCliDialect, WriteFailure } from "./dialect";
import { ExecResult, shellLine } from "./transport";

export interface OvsVsctlDialectOptions {
  /** The bridge that is the switch. */
  bridge: string;
  /** ovs-vsctl's --db (e.g. tcp:127.0.0.1:6640); default: ovs-vsctl's own (the local unix socket). */
  db?: string;
  /** The ovs-vsctl command (default "ovs-vsctl"; e.g. "sudo ovs-vsctl" as a list: ["sudo", "ovs-vsctl"]). */
  command?: string[];
  /** ovs-vsctl --timeout of a write, whole seconds: how long an unmet precondition blocks (default 2). */
  writeTimeoutSec?: number;
}

interface OvsRaw {
  bridgeUuid: string;
  /** By port name: the Port row's uuid and the asserted columns in wire form. */
  rows: Map<string, { uuid: string; tag: Wire; trunks: Wire; vlanMode: Wire; externalIds: Wire; columns: PortColumns }>;
  nextCfg?: number;
}

const BRIDGE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const DB_REMOTE = /^(unix:[^\s]+|(tcp|ssl):[A-Za-z0-9.:[\]-]+)$/;

/** A string atom as ovs-vsctl parses it (a quoted string with JSON escapes). */
function atomText(s: string): string {
  return JSON.stringify(s);
}

/** A column value from OVSDB wire JSON, in ovs-vsctl's syntax. */
export function vsctlValue(w: Wire): string {
  const atom = (a: unknown): string => {
    if (typeof a === "string") return atomText(a);
    if (typeof a === "number" || typeof a === "boolean") return String(a);
    if (Array.isArray(a) && a[0] === "uuid") return String(a[1]);
    throw new BaremetalError("internal", `unexpected OVSDB atom ${JSON.stringify(a)}`);
  };
  if (Array.isArray(w) && w[0] === "set") return `[${(w[1] as unknown[]).map(atom).join(",")}]`;
  if (Array.isArray(w) && w[0] === "map") return `{${(w[1] as [unknown, unknown][]).map(([k, v]) => `${atom(k)}=${atom(v)}`).join(",")}}`;
  return atom(w);
}

function columnsText(c: PortColumns): string[] {
  return [`tag=${c.tag !== undefined ? c.tag : "[]"}`, `trunks=[${c.trunks.join(",")}]`, `vlan_mode=${c.vlanMode !== undefined ? atomText(c.vlanMode) : "[]"}`];
}

function sameColumns(a: PortColumns, b: PortColumns): boolean {
  return a.tag === b.tag && a.vlanMode === b.vlanMode && a.trunks.join(",") === b.trunks.join(",");
}

interface JsonTable {
  headings: string[];
  data: Wire[][];
}

function parseTables(stdout: string, n: number, where: string): Record<string, Wire>[][] {
  const lines = stdout.split("\n").filter((l) => l.trim());
  if (lines.length !== n) throw new BaremetalError("backend", `unexpected ovs-vsctl output on ${where}: ${n} JSON tables expected, got ${lines.length} lines`);
  return lines.map((l) => {
    let t: JsonTable;
    try {
      t = JSON.parse(l) as JsonTable;
    } catch {
      throw new BaremetalError("backend", `unexpected ovs-vsctl output on ${where} (not JSON): ${l.slice(0, 200)}`);
    }
    return t.data.map((row) => Object.fromEntries(t.headings.map((h, i) => [h, row[i]])));
  });
}

export class OvsVsctlDialect implements SshCliDialect<OvsRaw> {
  readonly name = "ovs-vsctl";
  readonly atomic = true;
  readonly bridge: string;
  private readonly opts: OvsVsctlDialectOptions;

  constructor(opts: OvsVsctlDialectOptions) {
    if (typeof opts.bridge !== "string" || !BRIDGE_NAME.test(opts.bridge)) {
      throw validationError("bridge", `bridge must be an Open vSwitch bridge name, got ${JSON.stringify(opts.bridge)}`);
    }
    if (opts.db !== undefined && !DB_REMOTE.test(opts.db)) {
      throw validationError("db", `the ovs-vsctl database must be unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT, got ${JSON.stringify(opts.db)}`);
    }
    const t = opts.writeTimeoutSec ?? 2;
    if (!Number.isInteger(t) || t < 1 || t > 600) throw validationError("writeTimeoutSec", `writeTimeoutSec must be whole seconds from 1 to 600, got ${t}`);
    this.opts = opts;
    this.bridge = opts.bridge;
  }

  private base(extra: string[]): string[] {
    return [...(this.opts.command ?? ["ovs-vsctl"]), ...(this.opts.db ? [`--db=${this.opts.db}`] : []), ...extra];
  }

  readCommand(names: string[] | undefined): string {
    return shellLine(
      this.base([
        "--timeout=30",
        "--format=json",
        "--if-exists", "--columns=_uuid,name,ports,external_ids", "list", "Bridge", this.bridge,
        "--", "--if-exists", "--columns=_uuid,name,interfaces,tag,trunks,vlan_mode,external_ids", "list", "Port", ...(names ?? []),
        "--", "--columns=_uuid,admin_state", "list", "Interface",
        "--", "--columns=next_cfg,cur_cfg", "list", "Open_vSwitch",
      ]),
    );
  }

  parseRead(r: ExecResult, names: string[] | undefined): CliSnapshot<OvsRaw> {
    const where = `bridge ${this.bridge}`;
    if (r.code !== 0) throw new BaremetalError("backend", `ovs-vsctl could not read ${where} (${exitText(r)}): ${outputTail(r)}`);
    // `list Port` without names lists every port; with an empty name list we must not read them all.
    const [bridges, portRows, ifaces, ovs] = parseTables(r.stdout, 4, where);
    const b = bridges[0];
    if (!b) throw new BaremetalError("not-found", `Open vSwitch has no bridge ${this.bridge}`, { property: "bridge" });
    const onBridge = new Set(decodeSet(b.ports).map((u) => (u as { uuid: string }).uuid));
    const registry = new Map<number, string>();
    for (const [k, v] of Object.entries(decodeStringMap(b.external_ids))) {
      if (!k.startsWith(VLAN_KEY_PREFIX)) continue;
      const idText = k.slice(VLAN_KEY_PREFIX.length);
      const id = Number(idText);
      if (Number.isInteger(id) && id >= MIN_VLAN && id <= MAX_VLAN && String(id) === idText) registry.set(id, v);
    }
    const admin = new Map<string, string>();
    for (const row of ifaces) {
      const s = decodeOptional(row.admin_state);
      if (typeof s === "string") admin.set(decodeUuid(row._uuid), s);
    }
    const ports = new Map<string, SwitchPortConfig>();
    const elsewhere = new Set<string>();
    const rows: OvsRaw["rows"] = new Map();
    const wanted = names === undefined ? undefined : new Set(names);
    for (const row of portRows) {
      const name = row.name as string;
      if (wanted && !wanted.has(name)) continue;
      const uuid = decodeUuid(row._uuid);
      if (!onBridge.has(uuid)) {
        elsewhere.add(name);
        continue;
      }
      if (name === this.bridge) continue; // the bridge's local port is not a switch port
      const tag = decodeOptional(row.tag);
      const vlanMode = decodeOptional(row.vlan_mode);
      const columns: PortColumns = {
        ...(typeof tag === "number" ? { tag } : {}),
        trunks: decodeSet(row.trunks).filter((v): v is number => typeof v === "number").sort((x, y) => x - y),
        ...(typeof vlanMode === "string" ? { vlanMode } : {}),
      };
      const states = decodeSet(row.interfaces).map((u) => admin.get((u as { uuid: string }).uuid)).filter((s): s is string => !!s);
      const shutdown = states.length ? states.every((s) => s === "down") : undefined;
      const owner = decodeStringMap(row.external_ids)[OWNER_KEY];
      ports.set(name, portConfigFromColumns(name, columns, { owner, shutdown }));
      rows.set(name, { uuid, tag: row.tag, trunks: row.trunks, vlanMode: row.vlan_mode, externalIds: row.external_ids, columns });
    }
    const o = ovs[0];
    const nextCfg = typeof o?.next_cfg === "number" ? o.next_cfg : undefined;
    const curCfg = typeof o?.cur_cfg === "number" ? o.cur_cfg : undefined;
    return {
      ports,
      elsewhere,
      registry,
      ...(nextCfg !== undefined && curCfg !== undefined ? { applied: curCfg >= nextCfg } : {}),
      raw: { bridgeUuid: decodeUuid(b._uuid), rows, ...(nextCfg !== undefined ? { nextCfg } : {}) },
    };
  }

  writeCommand(input: CliWriteInput<OvsRaw>): string | undefined {
    const { snapshot, writes, asserted, registry } = input;
    const raw = snapshot.raw;
    const cmds: string[][] = [];
    for (const name of asserted) {
      const row = raw.rows.get(name)!;
      cmds.push(["wait-until", "Port", row.uuid, `tag=${vsctlValue(row.tag)}`, `trunks=${vsctlValue(row.trunks)}`, `vlan_mode=${vsctlValue(row.vlanMode)}`, `external_ids=${vsctlValue(row.externalIds)}`]);
      cmds.push(["get", "Port", row.uuid, "tag", "trunks", "vlan_mode", "external_ids"]);
    }
    let columnsChanged = false;
    let wrote = false;
    for (const w of writes) {
      const row = raw.rows.get(w.port)!;
      const cols = portColumnsFor(w.after);
      if (!sameColumns(cols, row.columns)) {
        columnsChanged = true;
        wrote = true;
        cmds.push(["set", "Port", row.uuid, ...columnsText(cols)]);
      }
      if (w.after.owner !== w.before.owner) {
        wrote = true;
        if (w.before.owner !== undefined) cmds.push(["remove", "Port", row.uuid, "external_ids", atomText(OWNER_KEY)]);
        if (w.after.owner !== undefined) cmds.push(["set", "Port", row.uuid, `external_ids:${atomText(OWNER_KEY)}=${atomText(w.after.owner)}`]);
      }
    }
    for (const id of new Set([...snapshot.registry.keys(), ...registry.keys()])) {
      const before = snapshot.registry.get(id);
      const after = registry.get(id);
      if (before === after) continue;
      wrote = true;
      const key = atomText(`${VLAN_KEY_PREFIX}${id}`);
      if (after === undefined) cmds.push(["remove", "Bridge", raw.bridgeUuid, "external_ids", key]);
      else cmds.push(["set", "Bridge", raw.bridgeUuid, `external_ids:${key}=${atomText(after)}`]);
    }
    if (!wrote) return undefined;
    // Without --no-wait ovs-vsctl bumps next_cfg and returns once ovs-vswitchd applied it.
    const args = this.base([`--timeout=${this.opts.writeTimeoutSec ?? 2}`, ...(columnsChanged ? [] : ["--no-wait"])]);
    for (const c of cmds) args.push("--", ...c);
    return shellLine(args);
  }

  writeFailed(r: ExecResult): WriteFailure {
    if (r.signal === "ALRM" || r.code === 142 || /terminating with signal 14/.test(r.stderr)) return "unknown";
    throw new BaremetalError("backend", `ovs-vsctl refused the change on bridge ${this.bridge} (${exitText(r)}): ${outputTail(r)}`);
  }

  waitAppliedCommand(snapshot: CliSnapshot<OvsRaw>, timeoutMs: number): string | undefined {
    if (snapshot.applied !== false || snapshot.raw.nextCfg === undefined) return undefined;
    return shellLine(this.base([`--timeout=${Math.max(1, Math.ceil(timeoutMs / 1000))}`, "wait-until", "Open_vSwitch", ".", `cur_cfg>=${snapshot.raw.nextCfg}`]));
  }
}
