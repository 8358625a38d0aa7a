/**
 * The `cumulus-nvue` dialect: NVIDIA Cumulus Linux 5.x through its NVUE command line (`nv`). NOT
 * proven against a real Cumulus switch: the commands and the parser follow NVIDIA's public NVUE
 * documentation, and are tested with transcripts we wrote in the documented formats
 * (fixtures/nvue-*.json).
 *
 * Read (one command line): `nv show interface -o json` (which ports exist, their admin state),
 * then a separator line, then `nv config show -o json` (the applied configuration; a list of
 * documents whose `set` holds it). A port's configuration is
 * `interface.<port>.bridge.domain.<bridge>`:
 *   absent                                   none
 *   access: V                                access V
 *   vlan: {"10": {}, "20-22": {}}            trunk 10, 20, 21, 22 (native: `untagged` V, or none)
 *   present without access/vlan              trunk of every VLAN of the bridge
 * The owner marker is the interface `description`, written `baremetal-owner=<owner>`. The VLAN
 * registry is the bridge domain's `vlan` list; NVUE keeps no VLAN names, so names read back as
 * `vlan<id>` and a rename changes nothing. NVUE cannot send a native VLAN tagged, and a trunk of no
 * VLAN is written (and read back) as a port outside the bridge (`none`).
 *
 * Write: `nv set`/`nv unset` commands staged in the pending revision, then ONE `nv config apply -y`,
 * chained with `&&` in one command line: the batch is applied as one revision. NVUE offers no
 * compare-and-swap against another user's revision, so the driver re-reads before and verifies
 * after. VLANs a port uses are added to the bridge first.
 */
import { BaremetalError, validationError } from "../../core/errors";
import { MAX_VLAN, MIN_VLAN, normalizePortConfig, SwitchPortConfig } from "../kinds/switch";
import { CliSnapshot, CliWriteInput, exitText, outputTail, SshCliDialect, WriteFailure } from "./dialect";
import { ExecResult, shellLine } from "./transport";

export const NVUE_OWNER_PREFIX = "baremetal-owner=";
export const NVUE_SEPARATOR = "--- baremetal: nv config show ---";
const BRIDGE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;

type Json = Record<string, unknown>;

interface NvueRaw {
  /** Ports that are in the bridge domain now. */
  inBridge: Set<string>;
  descriptions: Set<string>;
}

/** VLAN lists as NVUE writes them: keys "10", "20-22", or a number / comma text. */
export function parseVlanSet(v: unknown): number[] {
  const out = new Set<number>();
  const add = (text: string) => {
    for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
      const m = /^(\d+)(?:-(\d+))?$/.exec(part);
      if (!m) continue;
      const a = Number(m[1]);
      const b = m[2] !== undefined ? Number(m[2]) : a;
      for (let i = Math.max(a, MIN_VLAN); i <= Math.min(b, MAX_VLAN); i++) out.add(i);
    }
  };
  if (typeof v === "number") add(String(v));
  else if (typeof v === "string") add(v);
  else if (v && typeof v === "object") for (const k of Object.keys(v)) add(k);
  return [...out].sort((a, b) => a - b);
}

/** A VLAN list in NVUE's compact form: 10,20-22. */
export function vlanRanges(vlans: number[]): string {
  const s = [...new Set(vlans)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < s.length; ) {
    let j = i;
    while (j + 1 < s.length && s[j + 1] === s[j] + 1) j++;
    parts.push(i === j ? String(s[i]) : `${s[i]}-${s[j]}`);
    i = j + 1;
  }
  return parts.join(",");
}

function obj(v: unknown): Json | undefined {
  return v && typeof v === "object" && !Array.isArray(v) ? (v as Json) : undefined;
}

export class CumulusNvueDialect implements SshCliDialect<NvueRaw> {
  readonly name = "cumulus-nvue";
  readonly atomic = false;
  readonly bridge: string;

  constructor(opts: { bridge?: string } = {}) {
    this.bridge = opts.bridge ?? "br_default";
    if (!BRIDGE.test(this.bridge)) throw validationError("bridge", `bridge must be an NVUE bridge domain name (e.g. br_default), got ${JSON.stringify(this.bridge)}`);
  }

  readCommand(): string {
    return `${shellLine(["nv", "show", "interface", "-o", "json"])} && echo ${shellLine([NVUE_SEPARATOR])} && ${shellLine(["nv", "config", "show", "-o", "json"])}`;
  }

  parseRead(r: ExecResult, names: string[] | undefined): CliSnapshot<NvueRaw> {
    if (r.code !== 0) throw new BaremetalError("backend", `NVUE could not show the interfaces and the applied configuration (${exitText(r)}): ${outputTail(r)}`);
    const at = r.stdout.indexOf(NVUE_SEPARATOR);
    if (at < 0) throw new BaremetalError("backend", "unexpected NVUE output: the separator between the two documents is missing");
    let ifaces: Json;
    let applied: unknown;
    try {
      ifaces = JSON.parse(r.stdout.slice(0, at)) as Json;
      applied = JSON.parse(r.stdout.slice(at + NVUE_SEPARATOR.length));
    } catch {
      throw new BaremetalError("backend", `unexpected NVUE output (not JSON): ${r.stdout.slice(0, 200)}`);
    }
    // `nv config show -o json`: a list of documents ({header}, {set}); accept a bare object too.
    const docs = Array.isArray(applied) ? applied : [applied];
    const set = obj(docs.map((d) => obj(d)?.set).find((s) => obj(s))) ?? {};
    const bridgeCfg = obj(obj(obj(set.bridge)?.domain)?.[this.bridge]) ?? {};
    const registry = new Map<number, string>(parseVlanSet(bridgeCfg.vlan).map((v) => [v, `vlan${v}`]));
    const ifaceCfg = obj(set.interface) ?? {};
    const wanted = names === undefined ? undefined : new Set(names);
    const ports = new Map<string, SwitchPortConfig>();
    const inBridge = new Set<string>();
    const descriptions = new Set<string>();
    for (const [name, info] of Object.entries(ifaces)) {
      const type = obj(info)?.type;
      if (type !== "swp" && type !== "bond") continue; // loopback, eth0 (management), bridges, SVIs
      const cfg = obj(ifaceCfg[name]) ?? {};
      const dom = obj(obj(obj(cfg.bridge)?.domain)?.[this.bridge]);
      if (dom) inBridge.add(name);
      if (typeof cfg.description === "string") descriptions.add(name);
      if (wanted && !wanted.has(name)) continue;
      const desc = typeof cfg.description === "string" ? cfg.description : "";
      const owner = desc.startsWith(NVUE_OWNER_PREFIX) ? desc.slice(NVUE_OWNER_PREFIX.length) : undefined;
      const state = obj(obj(info)?.link)?.["admin-status"] ?? obj(cfg.link)?.state;
      const extra = { ...(owner ? { owner } : {}), ...(state === "down" ? { shutdown: true } : state === "up" ? { shutdown: false } : {}) };
      let c: SwitchPortConfig;
      if (!dom) c = { port: name, mode: "none" };
      else if (dom.access !== undefined) c = { port: name, mode: "access", vlan: Number(dom.access) };
      else {
        const untagged = typeof dom.untagged === "number" || /^\d+$/.test(String(dom.untagged ?? "")) ? Number(dom.untagged) : undefined;
        c = {
          port: name,
          mode: "trunk",
          ...(dom.vlan !== undefined ? { trunkVlans: parseVlanSet(dom.vlan) } : {}),
          ...(untagged !== undefined ? { vlan: untagged, nativeUntagged: true } : {}),
        };
      }
      ports.set(name, normalizePortConfig({ ...c, ...extra }));
    }
    return { ports, elsewhere: new Set(), registry, raw: { inBridge, descriptions } };
  }

  readBack(c: SwitchPortConfig): SwitchPortConfig {
    if (c.mode === "trunk" && c.trunkVlans !== undefined && !c.trunkVlans.length && c.vlan === undefined) {
      return normalizePortConfig({ port: c.port, mode: "none", ...(c.owner !== undefined ? { owner: c.owner } : {}), ...(c.shutdown !== undefined ? { shutdown: c.shutdown } : {}) });
    }
    return c;
  }

  writeCommand(input: CliWriteInput<NvueRaw>): string | undefined {
    const { snapshot, writes, registry } = input;
    const br = ["bridge", "domain", this.bridge];
    const cmds: string[][] = [];
    const vlans = new Set(snapshot.registry.keys());
    const addVlan = (v: number) => {
      if (vlans.has(v)) return;
      vlans.add(v);
      cmds.push(["nv", "set", ...br, "vlan", String(v)]);
    };
    for (const id of registry.keys()) addVlan(id); // a rename has nothing to write: NVUE keeps no names
    for (const w of writes) {
      const a = this.readBack(w.after);
      const b = w.before;
      const iface = ["interface", w.port];
      if (!(a.mode === b.mode && a.vlan === b.vlan && a.nativeUntagged === b.nativeUntagged && (a.trunkVlans ?? []).join() === (b.trunkVlans ?? []).join() && (a.trunkVlans === undefined) === (b.trunkVlans === undefined))) {
        if (snapshot.raw.inBridge.has(w.port)) cmds.push(["nv", "unset", ...iface, ...br]);
        if (a.mode === "access") {
          addVlan(a.vlan!);
          cmds.push(["nv", "set", ...iface, ...br, "access", String(a.vlan)]);
        } else if (a.mode === "trunk") {
          if (a.trunkVlans === undefined) throw new BaremetalError("conflict", `this driver does not make NVUE port ${w.port} a trunk of every VLAN; give the VLAN list`);
          if (a.vlan !== undefined && a.nativeUntagged === false) {
            throw new BaremetalError("conflict", `NVUE cannot send the native VLAN ${a.vlan} of port ${w.port} tagged (nativeUntagged: false); list it as a tagged VLAN instead`);
          }
          a.trunkVlans.forEach(addVlan);
          if (a.trunkVlans.length) cmds.push(["nv", "set", ...iface, ...br, "vlan", vlanRanges(a.trunkVlans)]);
          if (a.vlan !== undefined) {
            addVlan(a.vlan);
            cmds.push(["nv", "set", ...iface, ...br, "untagged", String(a.vlan)]);
          } else cmds.push(["nv", "set", ...iface, ...br, "untagged", "none"]);
        }
      }
      if (w.after.owner !== w.before.owner) {
        if (w.after.owner !== undefined) cmds.push(["nv", "set", ...iface, "description", `${NVUE_OWNER_PREFIX}${w.after.owner}`]);
        else if (snapshot.raw.descriptions.has(w.port)) cmds.push(["nv", "unset", ...iface, "description"]);
      }
    }
    for (const id of snapshot.registry.keys()) if (!registry.has(id)) cmds.push(["nv", "unset", ...br, "vlan", String(id)]);
    if (!cmds.length) return undefined;
    cmds.push(["nv", "config", "apply", "-y"]);
    return cmds.map(shellLine).join(" && ");
  }

  writeFailed(r: ExecResult): WriteFailure {
    throw new BaremetalError("backend", `NVUE refused the change (${exitText(r)}; nothing is applied unless 'nv config apply' ran, but the pending revision may hold the staged commands): ${outputTail(r)}`);
  }
}
