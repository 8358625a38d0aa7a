/**
 * Shared setup of the e2e tests of keys and volumes through the real engine: an operator stack that
 * enrolls the lab's nodes leased to a tenant project, tenant stacks configured as a project's member
 * (inventory, project, roles, key managers, storage backends), and the provider settings of a
 * `file` storage backend exported by a tgt instance.
 *
 *   const op = await operatorStack("vol-operator", lab, { nodes: 2, lessee: "project-a" });
 *   const p = await tenantStack("vol-a", PROGRAM, { project: "project-a", inventoryUrl: op.inventoryUrl, lab,
 *     keyManagers: { barbican: { driver: "barbican", address: barbican.url } },
 *     storageBackends: { lab: fileBackend(dir, tgt) } });
 *
 * Nothing here starts a server: the peers come from their own harnesses (barbican.ts, openbao.ts,
 * tgt.ts) and the lab from provider/src/lab. Secret settings (key-manager credentials, the
 * inventory URL, the lab's BMC password) go in as `pulumi config set --secret`, on stdin.
 */
import type { Lab } from "../../provider/src/lab/lab";
import { newProject, type PulumiProject, SDK_IMPORT } from "./pulumi";
import type { TgtInstance } from "./tgt";

/** Enrolls `nodes` of the lab's systems (config `nodes`: [{address, systemId}]) leased to `lessee` (or node i to `lessees[i]`); exports their ids. */
export const OPERATOR_PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const config = new pulumi.Config();
const nodes = config.requireObject<Array<{ address: string; systemId: string }>>("nodes");
const lessees = config.getObject<string[]>("lessees") ?? [];
const lessee = config.get("lessee");
export const nodeIds = nodes.map((n, i) => new baremetal.compute.Node(\`n\${i}\`, { bmc: { address: n.address, systemId: n.systemId }, owner: "operator-proj", lessee: lessees[i] ?? lessee }).id);
`;

export interface OperatorStack {
  project: PulumiProject;
  /** The inventory every stack of the test shares (sqlite file in the operator's project dir). */
  inventoryUrl: string;
  nodeIds: string[];
}

/** Sets the lab's provider configuration (BMC credentials and the like) on a stack. */
export async function setLabConfig(p: PulumiProject, lab: Lab): Promise<void> {
  for (const [k, v] of Object.entries(lab.info.providerConfig)) await p.setConfig(k, String(v), lab.info.secretConfig.includes(k));
}

/** An operator stack that enrolls the first `nodes` systems of the lab, leased to `lessee` (node i to `lessee[i]` when a list), and is up. */
export async function operatorStack(name: string, lab: Lab, opts: { nodes?: number; lessee: string | string[] }): Promise<OperatorStack> {
  const count = opts.nodes ?? 1;
  if (lab.info.nodes.length < count) throw new Error(`the lab has ${lab.info.nodes.length} systems, ${count} wanted: start it with systems >= ${count}`);
  const project = await newProject(name, OPERATOR_PROGRAM);
  const inventoryUrl = `sqlite://${project.dir}/inventory.db`;
  await setLabConfig(project, lab);
  await project.setConfig("baremetal:inventoryUrl", inventoryUrl, true);
  await project.setConfig("nodes", JSON.stringify(lab.info.nodes.slice(0, count).map((n) => ({ address: n.address, systemId: n.systemId }))));
  if (Array.isArray(opts.lessee)) await project.setConfig("lessees", JSON.stringify(opts.lessee));
  else await project.setConfig("lessee", opts.lessee);
  await project.pulumi(["up", "--yes", "--skip-preview"]);
  const { nodeIds } = (await project.outputs()) as { nodeIds: string[] };
  return { project, inventoryUrl, nodeIds };
}

/** Provider settings of one key manager (`baremetal:keyManagers` values). */
export interface KeyManagerSetting {
  driver: "barbican" | "kmip" | "vault" | "local";
  address: string;
  caBundle?: string;
  verifyTls?: boolean;
}

export interface TenantOptions {
  project: string;
  /** Default ["member"]: a tenant's member, not an admin. */
  roles?: string[];
  /** Default: a sqlite inventory of the stack's own. */
  inventoryUrl?: string;
  /** The lab whose provider configuration (BMC credentials) the stack needs, when it allocates nodes. */
  lab?: Lab;
  keyManagers?: Record<string, KeyManagerSetting>;
  /** Secret: tokens, client certificates and keys, by key manager. */
  keyManagerCredentials?: Record<string, { token?: string; clientCertificate?: string; clientKey?: string; masterKey?: string }>;
  storageBackends?: Record<string, unknown>;
  /** Further stack config (plain). */
  config?: Record<string, string>;
}

/** A new stack configured as a member of `opts.project`. */
export async function tenantStack(name: string, program: string, opts: TenantOptions): Promise<PulumiProject> {
  const p = await newProject(name, program);
  await configureTenant(p, opts);
  return p;
}

/** Configures an existing stack as a member of `opts.project` (see tenantStack). */
export async function configureTenant(p: PulumiProject, opts: TenantOptions): Promise<void> {
  if (opts.lab) await setLabConfig(p, opts.lab);
  await p.setConfig("baremetal:inventoryUrl", opts.inventoryUrl ?? `sqlite://${p.dir}/inventory.db`, true);
  await p.setConfig("baremetal:project", opts.project);
  await p.setConfig("baremetal:roles", JSON.stringify(opts.roles ?? ["member"]));
  if (opts.keyManagers) await p.setConfig("baremetal:keyManagers", JSON.stringify(opts.keyManagers));
  if (opts.keyManagerCredentials) await p.setConfig("baremetal:keyManagerCredentials", JSON.stringify(opts.keyManagerCredentials), true);
  if (opts.storageBackends) await p.setConfig("baremetal:storageBackends", JSON.stringify(opts.storageBackends));
  for (const [k, v] of Object.entries(opts.config ?? {})) await p.setConfig(k, v);
}

/** A `file` storage backend in `dir`, exported by `tgt` when given (`baremetal:storageBackends` value). */
export function fileBackend(dir: string, tgt?: TgtInstance): Record<string, unknown> {
  return {
    driver: "file",
    address: `file://${dir}`,
    ...(tgt ? { iscsi: { portal: tgt.portal, controlPort: tgt.controlPort, socketPath: tgt.socketPath } } : {}),
  };
}

/** The resources of a stack's state of one type (`baremetal:storage:Volume`), from `pulumi stack export`. */
export async function stateResources(p: PulumiProject, type: string): Promise<Array<Record<string, unknown>>> {
  const exported = await p.exportStack();
  return (exported.deployment.resources ?? []).filter((r) => r.type === type);
}
