/**
 * The provider's storage backends: where volumes live and how they are exported to nodes (iSCSI).
 * `storageBackends` is plain; `storageCredentials` (secret) holds backend keys (Ceph's client key).
 */
import type { Field } from "./fields";

export interface StorageBackendSettings {
  driver: string;
  address: string;
  iscsi?: { portal: string; controlPort?: number; socketPath?: string; iqnPrefix?: string };
}

export interface StorageCredentials {
  key?: string;
}

export const storageBackendsField = {
  type: "map",
  values: {
    type: "object",
    typeToken: "baremetal:storage:StorageBackendSettings",
    description: "One storage backend.",
    properties: {
      driver: { type: "string", required: true, enum: ["file", "ceph"], description: "`file` (sparse files, the lab) or `ceph` (RBD)." },
      address: { type: "string", required: true, minLength: 1, description: "`file:///dir` or `ceph://mon-host:port/pool?id=client`." },
      iscsi: {
        type: "object",
        typeToken: "baremetal:storage:IscsiSettings",
        description: "The iSCSI target (tgt) volumes are exported by.",
        properties: {
          portal: { type: "string", required: true, description: "`host:port` nodes connect to." },
          controlPort: { type: "integer", description: "tgtd's management instance (its -C)." },
          socketPath: { type: "string", description: "tgtd's management socket, when not the default." },
          iqnPrefix: { type: "string", description: "Prefix of the target names (`iqn.YYYY-MM.domain:...`)." },
        },
      },
    },
  },
  description: "The storage backends volumes live on, by name (JSON).",
} as const satisfies Field;

export const storageCredentialsField = {
  type: "map",
  secret: true,
  values: {
    type: "object",
    typeToken: "baremetal:storage:StorageCredentials",
    description: "How to log in to one storage backend.",
    properties: { key: { type: "string", secret: true, description: "Ceph: the client's key." } },
  },
  description: "Credentials of the storage backends, by name (secret JSON).",
} as const satisfies Field;
