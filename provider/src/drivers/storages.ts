/**
 * Storage families: which driver serves a storage backend of the provider's configuration.
 */
import { validationError } from "../core/errors";
import type { StorageBackendSettings } from "../core/storage-config";
import type { StorageDriver } from "./kinds/storage";
import { CephStorageDriver } from "./storage-ceph/driver";
import { FileStorageDriver } from "./storage-file/driver";

export type StorageFactory = (settings: StorageBackendSettings, key: string | undefined, signal?: AbortSignal) => StorageDriver;

/**
 * - `file`: sparse files in a directory, exported by tgt over iSCSI with CHAP (the lab; small sites);
 * - `ceph`: RBD images as a restricted cephx client (golden images as protected snapshots,
 *   copy-on-write clones), exported by tgt's rbd backing store.
 */
export const storageFamilies: Record<string, StorageFactory> = {
  file: (s, _key, signal) =>
    new FileStorageDriver(
      { address: s.address, ...(s.iscsi ? { iscsi: { portal: s.iscsi.portal, controlPort: s.iscsi.controlPort, iqnPrefix: s.iscsi.iqnPrefix } } : {}), signal },
      { tgtSocketPath: s.iscsi?.socketPath },
    ),
  ceph: (s, key, signal) =>
    new CephStorageDriver(
      { address: s.address, key, ...(s.iscsi ? { iscsi: { portal: s.iscsi.portal, controlPort: s.iscsi.controlPort, iqnPrefix: s.iscsi.iqnPrefix } } : {}), signal },
      { tgtSocketPath: s.iscsi?.socketPath },
    ),
};

export function storageDriverFor(settings: StorageBackendSettings, key: string | undefined, property = "driver", signal?: AbortSignal): StorageDriver {
  const factory = Object.prototype.hasOwnProperty.call(storageFamilies, settings.driver) ? storageFamilies[settings.driver] : undefined;
  if (!factory) throw validationError(property, `no storage driver '${settings.driver}'; use one of ${Object.keys(storageFamilies).sort().join(", ")}`);
  return factory(settings, key, signal);
}
