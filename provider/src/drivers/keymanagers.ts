/**
 * Key-manager families: which driver serves a key manager of the provider's configuration. Each
 * family turns a `KeyManagerConnection` (an address and the project every call is made as) into a
 * `KeyManagerDriver`; resources never name a family.
 */
import { validationError } from "../core/errors";
import { createBarbicanDriver } from "./barbican";
import { createLocalKeyManager } from "./keymanager-local";
import type { KeyManagerConnection, KeyManagerDriver } from "./kinds/keymanager";
import { createKmipDriver } from "./kmip/driver";
import { createVaultDriver } from "./vault";

export type KeyManagerFactory = (conn: KeyManagerConnection) => KeyManagerDriver;

/**
 * The families, by the name a key manager's `driver` setting gives:
 * - `barbican`: OpenStack Key Manager (REST, project-scoped by X-Project-Id / Keystone token);
 * - `kmip`: a KMIP 1.2 server over mutual TLS (the client certificate is the project's identity);
 * - `local`: the embedded lab's store (files under a directory, keys encrypted at rest with a master key);
 * - `vault`: OpenBao / Vault over HTTP (transit data keys wrapped in KV v2, the project's token and policy).
 */
export const keyManagerFamilies: Record<string, KeyManagerFactory> = {
  barbican: (conn) => createBarbicanDriver(conn),
  kmip: (conn) => createKmipDriver(conn),
  local: (conn) => createLocalKeyManager(conn),
  vault: (conn) => createVaultDriver(conn),
};

export function keyManagerDriverFor(family: string, conn: KeyManagerConnection, property = "driver"): KeyManagerDriver {
  const factory = Object.prototype.hasOwnProperty.call(keyManagerFamilies, family) ? keyManagerFamilies[family] : undefined;
  if (!factory) throw validationError(property, `no key manager driver '${family}'; use one of ${Object.keys(keyManagerFamilies).sort().join(", ")}`);
  return factory(conn);
}
