/**
 * The provider's `fabrics` setting: the layer-2 domains (sets of top-of-rack switches trunked
 * together) on which tenant networks get their VLANs, with the switches of each and how nodes are
 * kept apart while they are provisioned. Switch credentials are a separate, secret setting
 * (`switchCredentials`), so the topology can be shown in plain text while passwords never are.
 *
 * Provisioning-network modes (the MOC/ESI design):
 * - `flat`: one tenant, one provisioning network: nodes not in a tenant network sit on
 *   `provisioningVlan` (there is no separate quarantine);
 * - `shared`: trusted tenants share one provisioning network (`provisioningVlan`) while their nodes
 *   are deployed and cleaned; a node in no network sits in `quarantineVlan`;
 * - `private`: each untrusted tenant gets a provisioning network of its own (a VLAN from the
 *   fabric's pool, taken on first use) for its nodes being deployed and cleaned; otherwise as shared.
 */
import type { Field, Fields } from "./fields";

export interface SwitchSettings {
  driver: string;
  address: string;
  bridge?: string;
  trunkPorts?: string[];
  verifyTls?: boolean;
  caBundle?: string;
  hostKey?: string;
  dialect?: string;
}

export interface FabricConfig {
  vlanRanges: string[];
  quarantineVlan?: number;
  provisioningMode?: "flat" | "shared" | "private";
  provisioningVlan?: number;
  switches: Record<string, SwitchSettings>;
}

export interface SwitchCredentials {
  username?: string;
  password?: string;
  privateKey?: string;
  clientCertificate?: string;
  clientKey?: string;
}

const vlanId = (description: string): Field => ({ type: "integer", minimum: 1, maximum: 4094, description, hint: "Use a VLAN id from 1 to 4094" });

const switchFields = {
  driver: {
    type: "string",
    required: true,
    description: "The switch family: `ovsdb` (Open vSwitch and switches managed over OVSDB), `ssh-cli` (switches configured over SSH), `fake` (in-process, for tests).",
  },
  address: {
    type: "string",
    required: true,
    minLength: 1,
    description:
      "Where the switch is managed: `tcp:HOST:PORT` or `ssl:HOST:PORT` for OVSDB, `ssh://[USER@]HOST[:PORT]` for ssh-cli (the ovs-vsctl dialect takes the OVSDB remote as `?db=...`).",
  },
  bridge: { type: "string", description: "Open vSwitch: the bridge that is the switch (e.g. `br0`)." },
  trunkPorts: {
    type: "array",
    uniqueItems: true,
    items: { type: "string", minLength: 1, description: "A port name." },
    description: "Ports linking this switch to the others of the fabric (or to the spine): they carry exactly the VLANs of the fabric's tenant networks in use, and are pruned when a network goes.",
  },
  verifyTls: { type: "boolean", description: "Verify the switch's TLS certificate or SSH host key (default true)." },
  caBundle: { type: "string", description: "PEM: the CA trusted for the switch's TLS certificate." },
  hostKey: {
    type: "string",
    description: "ssh-cli: the switch's SSH host key: its fingerprint (`SHA256:...`, as `ssh-keygen -lf` prints it), a public key line, or known_hosts text. Required unless `verifyTls` is false.",
  },
  dialect: { type: "string", description: "ssh-cli: the command dialect of the switch (e.g. `ovs-vsctl`, `sonic`, `cumulus-nvue`)." },
} as const satisfies Fields;

const fabricFields = {
  vlanRanges: {
    type: "array",
    required: true,
    items: {
      type: "string",
      pattern: "^\\d{1,4}(-\\d{1,4})?$",
      description: "A VLAN id or an inclusive range `FROM-TO`.",
      hint: "Write VLAN ranges as 100-199 (or a single id such as 250)",
    },
    description: "The VLAN ids tenant networks of this fabric get theirs from (e.g. `[\"100-199\"]`).",
  },
  quarantineVlan: vlanId("Where a node port in no tenant network sits (an isolated VLAN, outside `vlanRanges`). Required unless the mode is `flat`."),
  provisioningMode: {
    type: "string",
    enum: ["flat", "shared", "private"],
    default: "shared",
    description: "How nodes are kept apart while deployed and cleaned: `flat`, `shared` or `private` (see the provider docs).",
  },
  provisioningVlan: vlanId("The provisioning network's VLAN (flat and shared modes), outside `vlanRanges`."),
  switches: {
    type: "map",
    required: true,
    values: { type: "object", typeToken: "baremetal:network:SwitchSettings", description: "How to reach one switch of the fabric.", properties: switchFields },
    description: "The fabric's switches by id (the id node ports name as their `switchId`; unique across fabrics).",
  },
} as const satisfies Fields;

/** Parses `100-199` / `250` into an inclusive range (the pattern is checked by the schema). */
export function parseVlanRange(text: string): { from: number; to: number } {
  const [a, b] = text.split("-");
  return { from: Number(a), to: Number(b ?? a) };
}

/** Cross-field rules of the whole setting; one message per problem, naming the path. */
export function fabricProblems(fabrics: Record<string, FabricConfig>): string[] {
  const problems: string[] = [];
  const switchOwner = new Map<string, string>();
  for (const [name, f] of Object.entries(fabrics)) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(name)) problems.push(`fabric name '${name}' must be 1-63 letters, digits, _ . - (starting with a letter or digit)`);
    const ranges = (f.vlanRanges ?? []).map(parseVlanRange);
    ranges.forEach((r, i) => {
      if (r.from < 1 || r.to > 4094 || r.from > r.to) problems.push(`fabrics.${name}.vlanRanges[${i}] '${f.vlanRanges[i]}' is not a range within 1-4094 (FROM <= TO)`);
    });
    const inPool = (v: number) => ranges.some((r) => v >= r.from && v <= r.to);
    const mode = f.provisioningMode ?? "shared";
    if (mode !== "flat" && f.quarantineVlan === undefined) problems.push(`fabrics.${name}.quarantineVlan is required in ${mode} mode: the VLAN where ports in no tenant network sit`);
    if (mode !== "private" && f.provisioningVlan === undefined) problems.push(`fabrics.${name}.provisioningVlan is required in ${mode} mode: the provisioning network's VLAN`);
    for (const key of ["quarantineVlan", "provisioningVlan"] as const) {
      const v = f[key];
      if (v !== undefined && inPool(v)) problems.push(`fabrics.${name}.${key} ${v} lies inside vlanRanges; choose a VLAN outside the tenant pool`);
    }
    if (f.quarantineVlan !== undefined && f.quarantineVlan === f.provisioningVlan) {
      problems.push(`fabrics.${name}.quarantineVlan and provisioningVlan are both ${f.quarantineVlan}; nodes being provisioned must not share a VLAN with quarantined ones`);
    }
    for (const [id, sw] of Object.entries(f.switches ?? {})) {
      const other = switchOwner.get(id);
      if (other !== undefined) problems.push(`switch id '${id}' is in fabrics ${other} and ${name}; switch ids must be unique across fabrics`);
      switchOwner.set(id, name);
      if (sw.driver === "ovsdb" && !sw.bridge) problems.push(`fabrics.${name}.switches.${id}.bridge is required for an ovsdb switch: the bridge that is the switch (e.g. br0)`);
    }
  }
  return problems;
}

export const fabricField = {
  type: "map",
  values: { type: "object", typeToken: "baremetal:network:Fabric", description: "One network fabric.", properties: fabricFields },
  description:
    "The network fabrics tenant networks live on, by name: their VLAN pool, quarantine and provisioning VLANs, provisioning-network mode (`flat`, `shared`, `private`) and switches. Every stack of one installation must use the same. Set it as a JSON object.",
  hint: "See the README's tenant networks section for an example",
  validate: (v: Record<string, FabricConfig>) => {
    const problems = fabricProblems(v);
    return problems.length ? problems.join("; ") : undefined;
  },
} as const satisfies Field;

export const switchCredentialsField = {
  type: "map",
  secret: true,
  values: {
    type: "object",
    typeToken: "baremetal:network:SwitchCredentials",
    description: "How to log in to one switch.",
    properties: {
      username: { type: "string", description: "SSH user name (ssh-cli)." },
      password: { type: "string", secret: true, description: "SSH password (ssh-cli)." },
      privateKey: { type: "string", secret: true, description: "Private key for SSH (ssh-cli): OpenSSH or PEM text." },
      clientCertificate: { type: "string", description: "PEM client certificate (OVSDB over SSL)." },
      clientKey: { type: "string", secret: true, description: "PEM client key (OVSDB over SSL)." },
    },
  },
  description: "Credentials of the switches, by switch id (secret; kept apart from `fabrics` so the topology can be read in plain text).",
} as const satisfies Field;
