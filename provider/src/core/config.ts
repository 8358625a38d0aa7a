/**
 * Provider configuration: BMC defaults and the caller's identity. Each setting can come from the
 * stack configuration (`baremetal:<name>`), an explicit provider resource, or a `BAREMETAL_*`
 * environment variable, in that order of precedence.
 */
import type { Fields } from "./fields";
import { checkEndpoint } from "../broker/client";
import { parseHostKeySetting } from "../drivers/ssh-cli/hostkeys";
import { isUnknown } from "./values";
import { fabricField, switchCredentialsField, type FabricConfig, type SwitchCredentials } from "./fabric-config";
import type { BackupTargetCredentials, BackupTargetSettings } from "../drivers/backup-targets";
import { backupTargetCredentialsField, backupTargetsField } from "./backup-config";
import { storageBackendsField, storageCredentialsField, type StorageBackendSettings, type StorageCredentials } from "./storage-config";
import { keyManagerCredentialsField, keyManagersField, type KeyManagerCredentials, type KeyManagerSettings } from "./keymanager-config";

export const configFields = {
  bmcUsername: {
    type: "string",
    description: "Default BMC user name for nodes that do not set `bmc.username`; also used by `pulumi import`.",
    env: ["BAREMETAL_BMC_USERNAME"],
  },
  bmcPassword: {
    type: "string",
    secret: true,
    description: "Default BMC password for nodes that do not set `bmc.password`; also used by `pulumi import`.",
    env: ["BAREMETAL_BMC_PASSWORD"],
  },
  bmcVerifyTls: {
    type: "boolean",
    default: true,
    description:
      "Verify the TLS certificates of BMCs (on by default). Turn it off only for lab BMCs with self-signed certificates; prefer `bmcCaBundle`.",
    env: ["BAREMETAL_BMC_VERIFY_TLS"],
  },
  bmcCaBundle: {
    type: "string",
    description: "PEM certificates (the text, or a path to a file) trusted for BMC TLS in addition to the system's roots.",
    env: ["BAREMETAL_BMC_CA_BUNDLE"],
  },
  bmcSshHostKeys: {
    type: "string",
    description:
      "The SSH host keys of the BMCs' serial consoles (the service's browser console logs in to them with the BMC credentials): known_hosts text (`[host]:port keytype key` lines, wildcards and `@revoked` as in OpenSSH), SHA256 fingerprints or public key lines. A console whose BMC presents another key is refused, so the BMC password never goes to an impostor. Required for consoles unless `bmcVerifyTls` is false.",
    env: ["BAREMETAL_BMC_SSH_HOST_KEYS"],
    hint: "Use known_hosts lines such as `[bmc1.example]:2200 ecdsa-sha2-nistp256 AAAA...`, or `SHA256:...` fingerprints as `ssh-keygen -lf` prints them",
    validate: (v: string) => hostKeyProblem(v),
  },
  bmcRequestTimeoutSeconds: {
    type: "integer",
    minimum: 1,
    maximum: 3600,
    default: 60,
    description: "Time allowed for one request to a BMC, in seconds.",
    env: ["BAREMETAL_BMC_REQUEST_TIMEOUT"],
    hint: "Use a whole number of seconds between 1 and 3600",
  },
  bmcMaxConcurrency: {
    type: "integer",
    minimum: 1,
    maximum: 64,
    default: 4,
    description: "Requests in flight to one BMC at a time (many BMCs handle only a few sessions).",
    env: ["BAREMETAL_BMC_MAX_CONCURRENCY"],
    hint: "Use a whole number between 1 and 64",
  },
  bmcGlobalMaxConcurrency: {
    type: "integer",
    minimum: 1,
    maximum: 4096,
    default: 64,
    description: "Requests in flight to all BMCs together, from one provider process.",
    env: ["BAREMETAL_BMC_GLOBAL_MAX_CONCURRENCY"],
    hint: "Use a whole number between 1 and 4096",
  },
  cleanEraseDisks: {
    type: "string",
    enum: ["auto", "always", "never"],
    default: "auto",
    description:
      "Whether cleaning (undeploy) erases the node's disks through the BMC (Redfish Drive.SecureErase), so the next tenant finds none of the last one's data. `auto`: erase where the BMC can, warn where it cannot; `always`: a node whose BMC cannot erase fails cleaning (`clean failed`); `never`: leave the disks as they are.",
    env: ["BAREMETAL_CLEAN_ERASE_DISKS"],
    hint: "Use auto, always or never",
  },
  fabrics: fabricField,
  switchCredentials: switchCredentialsField,
  keyManagers: keyManagersField,
  keyManagerCredentials: keyManagerCredentialsField,
  storageBackends: storageBackendsField,
  storageCredentials: storageCredentialsField,
  backupTargets: backupTargetsField,
  backupTargetCredentials: backupTargetCredentialsField,
  imageStoreUrl: {
    type: "string",
    secret: true,
    description:
      "Where deployments upload the images they generate (config drives with user data, network data and metadata), for the BMCs to fetch: an http(s) base URL that accepts PUT and DELETE of `<base>/<name>` and serves GET without credentials (a web server with WebDAV-style PUT, as Ironic's http_url; the embedded lab runs one). Credentials go in the URL (`https://user:password@host/path`). Needed only by deployments with userData, networkData or metaData.",
    env: ["BAREMETAL_IMAGE_STORE_URL"],
    hint: "Use an http(s) URL such as https://writer:password@images.example.com/baremetal",
    validate: (v: string) => (/^https?:\/\/[^/\s]+(\/\S*)?$/.test(v) ? undefined : `'${v.replace(/\/\/[^@/]*@/, "//***@")}' is not an http(s) URL`),
  },
  inventoryUrl: {
    type: "string",
    secret: true,
    description:
      "Where the shared inventory lives (enrolled nodes, allocations, operation locks): `sqlite:///absolute/path.db` (the default: ~/.local/state/pulumi-baremetal/inventory.db) or `postgres://user:password@host:port/database` for teams. Every stack of one installation must use the same one.",
    env: ["BAREMETAL_INVENTORY_URL"],
    hint: "Use sqlite:///absolute/path.db or postgres://user:password@host:port/database",
    validate: (v: string) => (/^(sqlite:(\/\/\/|:memory:)|postgres(ql)?:\/\/)/.test(v) ? undefined : `'${v.replace(/\/\/[^@/]*@/, "//***@")}' is not an inventory URL`),
  },
  policyFile: {
    type: "string",
    description:
      "A policy file (YAML or JSON, rule name -> check string, as Ironic's policy.yaml) overriding the default rules. Used only when `project` is set.",
    env: ["BAREMETAL_POLICY_FILE"],
  },
  project: {
    type: "string",
    description:
      "The caller's project (tenant) id, checked by the multi-tenancy policy. Unset: the caller is the operator of a standalone installation and every operation is allowed.",
    env: ["BAREMETAL_PROJECT"],
  },
  roles: {
    type: "array",
    items: { type: "string", description: "A role name." },
    description: "The caller's roles in its project (e.g. `admin`, `member`, `reader`), checked by the multi-tenancy policy.",
    env: ["BAREMETAL_ROLES"],
  },
  endpoint: {
    type: "string",
    description:
      "Broker mode: the URL of the tenant-facing service (`baremetal serve`). Every resource and function then goes through the service, which holds the backend credentials and decides the policy for the token's project; the backend settings (BMC, key managers, storage, backup targets, inventory) stay with the service. Give `token` too.",
    env: ["BAREMETAL_ENDPOINT"],
    hint: "Use https://host[:port] (http:// only on loopback)",
    validate: (v: string) => checkEndpoint(v),
  },
  token: {
    type: "string",
    secret: true,
    description: "Broker mode: the API token the service issued (`baremetal token create`), `bmt_<id>_<secret>`.",
    env: ["BAREMETAL_TOKEN"],
    hint: "Use the token printed by `baremetal token create`",
    validate: (v: string) => (/^bmt_[0-9a-f]{24}_[A-Za-z0-9_-]{43}$/.test(v) ? undefined : "is not a token of the baremetal service (bmt_<24 hex>_<43 characters>)"),
  },
  endpointCaBundle: {
    type: "string",
    description: "Broker mode: PEM certificates (the text, or a path to a file) trusted for the service's TLS in addition to the system's roots.",
    env: ["BAREMETAL_ENDPOINT_CA_BUNDLE"],
  },
} as const satisfies Fields;

export interface ProviderConfig {
  bmcUsername?: string;
  bmcPassword?: string;
  bmcVerifyTls: boolean;
  bmcCaBundle?: string;
  bmcSshHostKeys?: string;
  bmcRequestTimeoutSeconds: number;
  bmcMaxConcurrency: number;
  bmcGlobalMaxConcurrency: number;
  cleanEraseDisks: "auto" | "always" | "never";
  /** The network fabrics by name (validated by Check: see fabric-config.ts). */
  fabrics: Record<string, FabricConfig>;
  switchCredentials: Record<string, SwitchCredentials>;
  keyManagers: Record<string, KeyManagerSettings>;
  keyManagerCredentials: Record<string, KeyManagerCredentials>;
  storageBackends: Record<string, StorageBackendSettings>;
  storageCredentials: Record<string, StorageCredentials>;
  backupTargets: Record<string, BackupTargetSettings>;
  backupTargetCredentials: Record<string, BackupTargetCredentials>;
  imageStoreUrl?: string;
  inventoryUrl?: string;
  policyFile?: string;
  project?: string;
  roles: string[];
  /** Broker mode (endpoint and token): the service does the work. */
  endpoint?: string;
  token?: string;
  endpointCaBundle?: string;
}

/** Why `v` is not a usable bmcSshHostKeys value, or undefined. */
function hostKeyProblem(v: string): string | undefined {
  try {
    parseHostKeySetting(v, "bmcSshHostKeys", "BMC", "bmcSshHostKeys");
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/** Reads an environment value into the field's type (booleans and numbers from text, lists from commas). */
function fromEnv(raw: string, type: string): unknown {
  switch (type) {
    case "boolean":
      return /^(1|true|yes|on)$/i.test(raw.trim()) ? true : /^(0|false|no|off)$/i.test(raw.trim()) ? false : raw;
    case "integer":
    case "number":
      return /^-?\d+(\.\d+)?$/.test(raw.trim()) ? Number(raw) : raw;
    case "array":
      return raw
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
    default:
      return raw;
  }
}

/**
 * Fills unset settings from the environment, then from defaults. Returns the merged values and the
 * names that came from the environment (the adapter keeps secret ones secret).
 */
export function withEnvironment(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): Record<string, unknown> {
  const out: Record<string, unknown> = { ...values };
  for (const [name, field] of Object.entries(configFields as Fields)) {
    if (out[name] !== undefined) continue;
    for (const variable of field.env ?? []) {
      const raw = env[variable];
      if (raw !== undefined && raw !== "") {
        out[name] = fromEnv(raw, field.type);
        break;
      }
    }
  }
  return out;
}

export function toProviderConfig(values: Record<string, unknown>): ProviderConfig {
  const v = (name: string) => (isUnknown(values[name]) ? undefined : values[name]);
  return {
    bmcUsername: v("bmcUsername") as string | undefined,
    bmcPassword: v("bmcPassword") as string | undefined,
    bmcVerifyTls: (v("bmcVerifyTls") as boolean | undefined) ?? true,
    bmcCaBundle: v("bmcCaBundle") as string | undefined,
    bmcSshHostKeys: v("bmcSshHostKeys") as string | undefined,
    bmcRequestTimeoutSeconds: (v("bmcRequestTimeoutSeconds") as number | undefined) ?? 60,
    bmcMaxConcurrency: (v("bmcMaxConcurrency") as number | undefined) ?? 4,
    bmcGlobalMaxConcurrency: (v("bmcGlobalMaxConcurrency") as number | undefined) ?? 64,
    cleanEraseDisks: (v("cleanEraseDisks") as ProviderConfig["cleanEraseDisks"] | undefined) ?? "auto",
    fabrics: (v("fabrics") as Record<string, FabricConfig> | undefined) ?? {},
    switchCredentials: (v("switchCredentials") as Record<string, SwitchCredentials> | undefined) ?? {},
    keyManagers: (v("keyManagers") as Record<string, KeyManagerSettings> | undefined) ?? {},
    keyManagerCredentials: (v("keyManagerCredentials") as Record<string, KeyManagerCredentials> | undefined) ?? {},
    storageBackends: (v("storageBackends") as Record<string, StorageBackendSettings> | undefined) ?? {},
    storageCredentials: (v("storageCredentials") as Record<string, StorageCredentials> | undefined) ?? {},
    backupTargets: (v("backupTargets") as Record<string, BackupTargetSettings> | undefined) ?? {},
    backupTargetCredentials: (v("backupTargetCredentials") as Record<string, BackupTargetCredentials> | undefined) ?? {},
    imageStoreUrl: v("imageStoreUrl") as string | undefined,
    inventoryUrl: v("inventoryUrl") as string | undefined,
    policyFile: v("policyFile") as string | undefined,
    project: v("project") as string | undefined,
    roles: (v("roles") as string[] | undefined) ?? [],
    endpoint: v("endpoint") as string | undefined,
    token: v("token") as string | undefined,
    endpointCaBundle: v("endpointCaBundle") as string | undefined,
  };
}
