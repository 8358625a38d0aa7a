/**
 * The `sonic` dialect: SONiC switches through their CLI (the `config` and `show` commands of
 * sonic-utilities) and `sonic-db-cli`. NOT proven against a real SONiC switch: the commands and the
 * parser follow SONiC's public Command Reference and its CONFIG_DB schema, and are tested with
 * transcripts we wrote in those documented formats (fixtures/sonic-*.json).
 *
 * Read: `show runningconfiguration all` (CONFIG_DB as JSON): PORT and PORTCHANNEL keys are the
 * ports, VLAN the registry (`Vlan<id>`, name = its `description`, else `Vlan<id>`), VLAN_MEMBER
 * (`Vlan<id>|<port>`, tagging_mode tagged/untagged) the port configuration:
 *   no membership                         none
 *   untagged in V only                    access V
 *   tagged in T (+ untagged in V)         trunk T (native V, untagged)
 * The owner marker is the port's `description`, written as `baremetal-owner=<owner>` (it takes
 * over the port's description). SONiC cannot send a native VLAN tagged (`nativeUntagged: false` is
 * refused), and a trunk of no VLAN is an unconfigured port (read back as `none`).
 *
 * Write: `config vlan add`, `config vlan member del|add [-u]`, `config vlan del`, `sonic-db-cli
 * CONFIG_DB hset|hdel` for descriptions, then `config save -y`, chained with `&&` in ONE command
 * line. SONiC's CLI has no transaction: each command commits on its own, so a failure part-way
 * leaves the earlier ones applied, and there is no compare-and-swap (the driver re-reads before and
 * verifies after). VLANs a port needs are created first; a VLAN is deleted only when no port is
 * still a member (SONiC refuses otherwise): such a delete-vlan is refused with `conflict`.
 */
import { BaremetalError } from "../../core/errors";
import { MAX_VLAN, MIN_VLAN, normalizePortConfig, SwitchPortConfig } from "../kinds/switch";
import { CliSnapshot, CliWriteInput, exitText, outputTail, SshCliDialect, WriteFailure } from "./dialect";
import { ExecResult, shellLine } from "./transport";

export const SONIC_OWNER_PREFIX = "baremetal-owner=";

interface SonicRaw {
  /** port -> vlan -> tagged? */
  members: Map<string, Map<number, "tagged" | "untagged">>;
  descriptions: Map<string, string>;
}

type Db = Record<string, Record<string, Record<string, string>>>;

function vlanOf(key: string): number | undefined {
  const m = /^Vlan(\d{1,4})$/.exec(key);
  const id = m ? Number(m[1]) : NaN;
  return id >= MIN_VLAN && id <= MAX_VLAN ? id : undefined;
}

/** The VLAN memberships that give a port configuration (what SONiC can express). */
export function sonicMemberships(c: SwitchPortConfig): Map<number, "tagged" | "untagged"> {
  const m = new Map<number, "tagged" | "untagged">();
  if (c.mode === "access" && c.vlan !== undefined) m.set(c.vlan, "untagged");
  if (c.mode === "trunk") {
    if (c.trunkVlans === undefined) throw new BaremetalError("conflict", `SONiC cannot make port ${c.port} a trunk of every VLAN; give the VLAN list`);
    if (c.vlan !== undefined && c.nativeUntagged === false) {
      throw new BaremetalError("conflict", `SONiC cannot send the native VLAN ${c.vlan} of port ${c.port} tagged (nativeUntagged: false); list it as a tagged VLAN instead`);
    }
    for (const v of c.trunkVlans) m.set(v, "tagged");
    if (c.vlan !== undefined) m.set(c.vlan, "untagged");
  }
  return m;
}

/** A port's configuration from its memberships (see the header). */
export function sonicPortConfig(port: string, members: Map<number, "tagged" | "untagged"> | undefined, extra: { owner?: string; shutdown?: boolean }): SwitchPortConfig {
  const tagged = [...(members ?? [])].filter(([, t]) => t === "tagged").map(([v]) => v);
  const untagged = [...(members ?? [])].filter(([, t]) => t === "untagged").map(([v]) => v);
  let c: SwitchPortConfig;
  if (!tagged.length && !untagged.length) c = { port, mode: "none" };
  else if (!tagged.length) c = { port, mode: "access", vlan: Math.min(...untagged) };
  else c = { port, mode: "trunk", trunkVlans: tagged, ...(untagged.length ? { vlan: Math.min(...untagged), nativeUntagged: true } : {}) };
  return normalizePortConfig({ ...c, ...extra });
}

export class SonicDialect implements SshCliDialect<SonicRaw> {
  readonly name = "sonic";
  readonly atomic = false;

  readCommand(): string {
    return shellLine(["show", "runningconfiguration", "all"]);
  }

  parseRead(r: ExecResult, names: string[] | undefined): CliSnapshot<SonicRaw> {
    if (r.code !== 0) throw new BaremetalError("backend", `SONiC could not show its running configuration (${exitText(r)}): ${outputTail(r)}`);
    let db: Db;
    try {
      db = JSON.parse(r.stdout) as Db;
    } catch {
      throw new BaremetalError("backend", `unexpected output of 'show runningconfiguration all' (not JSON): ${r.stdout.slice(0, 200)}`);
    }
    const registry = new Map<number, string>();
    for (const [key, fields] of Object.entries(db.VLAN ?? {})) {
      const id = vlanOf(key);
      if (id !== undefined) registry.set(id, fields.description || key);
    }
    const members: SonicRaw["members"] = new Map();
    for (const [key, fields] of Object.entries(db.VLAN_MEMBER ?? {})) {
      const [vlanKey, port] = key.split("|");
      const id = vlanOf(vlanKey);
      if (id === undefined || !port) continue;
      if (!members.has(port)) members.set(port, new Map());
      members.get(port)!.set(id, fields.tagging_mode === "untagged" ? "untagged" : "tagged");
    }
    const ports = new Map<string, SwitchPortConfig>();
    const descriptions = new Map<string, string>();
    const wanted = names === undefined ? undefined : new Set(names);
    for (const table of ["PORT", "PORTCHANNEL"]) {
      for (const [port, fields] of Object.entries(db[table] ?? {})) {
        if (fields.description !== undefined) descriptions.set(port, fields.description);
        if (wanted && !wanted.has(port)) continue;
        const desc = fields.description ?? "";
        const owner = desc.startsWith(SONIC_OWNER_PREFIX) ? desc.slice(SONIC_OWNER_PREFIX.length) : undefined;
        const shutdown = fields.admin_status === "down" ? true : fields.admin_status === "up" ? false : undefined;
        ports.set(port, sonicPortConfig(port, members.get(port), { ...(owner ? { owner } : {}), ...(shutdown !== undefined ? { shutdown } : {}) }));
      }
    }
    return { ports, elsewhere: new Set(), registry, raw: { members, descriptions } };
  }

  readBack(c: SwitchPortConfig): SwitchPortConfig {
    return sonicPortConfig(c.port, sonicMemberships(c), { ...(c.owner !== undefined ? { owner: c.owner } : {}), ...(c.shutdown !== undefined ? { shutdown: c.shutdown } : {}) });
  }

  writeCommand(input: CliWriteInput<SonicRaw>): string | undefined {
    const { snapshot, writes, registry } = input;
    const raw = snapshot.raw;
    const cmds: string[][] = [];
    const exists = new Set(snapshot.registry.keys());
    const createVlan = (v: number) => {
      if (exists.has(v)) return;
      exists.add(v);
      cmds.push(["config", "vlan", "add", String(v)]);
    };
    // The registry first (new VLANs and names), then memberships, then deletions.
    for (const [id, name] of registry) {
      createVlan(id);
      if (snapshot.registry.get(id) !== name) cmds.push(["sonic-db-cli", "CONFIG_DB", "hset", `VLAN|Vlan${id}`, "description", name]);
    }
    const dels: string[][] = [];
    const adds: string[][] = [];
    const finalMembers = new Map(raw.members);
    for (const w of writes) {
      const before = raw.members.get(w.port) ?? new Map<number, "tagged" | "untagged">();
      const after = sonicMemberships(w.after);
      finalMembers.set(w.port, after);
      for (const [v, t] of before) if (after.get(v) !== t) dels.push(["config", "vlan", "member", "del", String(v), w.port]);
      for (const [v, t] of after) {
        if (before.get(v) === t) continue;
        createVlan(v);
        adds.push(["config", "vlan", "member", "add", ...(t === "untagged" ? ["-u"] : []), String(v), w.port]);
      }
      if (w.after.owner !== w.before.owner) {
        if (w.after.owner !== undefined) adds.push(["sonic-db-cli", "CONFIG_DB", "hset", `PORT|${w.port}`, "description", `${SONIC_OWNER_PREFIX}${w.after.owner}`]);
        else if (raw.descriptions.has(w.port)) adds.push(["sonic-db-cli", "CONFIG_DB", "hdel", `PORT|${w.port}`, "description"]);
      }
    }
    cmds.push(...dels, ...adds);
    for (const id of snapshot.registry.keys()) {
      if (registry.has(id)) continue;
      const users = [...finalMembers].filter(([, m]) => m.has(id)).map(([p]) => p);
      if (users.length) {
        throw new BaremetalError("conflict", `SONiC cannot delete VLAN ${id} while ports are members of it (${users.sort().join(", ")}); move them first`);
      }
      cmds.push(["config", "vlan", "del", String(id)]);
    }
    if (!cmds.length) return undefined;
    cmds.push(["config", "save", "-y"]);
    return cmds.map(shellLine).join(" && ");
  }

  writeFailed(r: ExecResult): WriteFailure {
    throw new BaremetalError("backend", `SONiC refused the change (${exitText(r)}; commands before the failing one stay applied): ${outputTail(r)}`);
  }
}
