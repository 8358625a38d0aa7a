/**
 * The provider's key managers: where volume encryption keys live. `keyManagers` (plain) says which
 * backends there are; `keyManagerCredentials` (secret) holds what proves the caller's project to
 * each (a Keystone/Vault token, a KMIP client certificate and key, the lab store's master key).
 * Every call is made as the caller's project: keys are the project's, and the backend itself keeps
 * other projects out.
 */
import type { Field } from "./fields";

export interface KeyManagerSettings {
  driver: string;
  address: string;
  verifyTls?: boolean;
  caBundle?: string;
}

export interface KeyManagerCredentials {
  token?: string;
  clientCertificate?: string;
  clientKey?: string;
  masterKey?: string;
}

export const keyManagersField = {
  type: "map",
  values: {
    type: "object",
    typeToken: "baremetal:keys:KeyManagerSettings",
    description: "One key manager.",
    properties: {
      driver: {
        type: "string",
        required: true,
        enum: ["barbican", "kmip", "local", "vault"],
        description: "`barbican` (OpenStack Key Manager), `kmip` (KMIP 1.2 over mutual TLS), `vault` (Vault/OpenBao transit + KV v2, per-project mounts), `local` (the embedded lab's store).",
      },
      address: {
        type: "string",
        required: true,
        minLength: 1,
        description: "`https://barbican:9311`, `kmip://host:5696`, `https://vault:8200[/mount-prefix]`, `file:///dir` (local).",
      },
      verifyTls: { type: "boolean", description: "Verify the key manager's TLS certificate (default true)." },
      caBundle: { type: "string", description: "PEM: the CA trusted for the key manager's TLS certificate." },
    },
  },
  description: "The key managers encryption keys live in, by name (JSON). Keys are created and read as the caller's project.",
} as const satisfies Field;

export const keyManagerCredentialsField = {
  type: "map",
  secret: true,
  values: {
    type: "object",
    typeToken: "baremetal:keys:KeyManagerCredentials",
    description: "What proves the caller's project to one key manager.",
    properties: {
      token: { type: "string", secret: true, description: "A Keystone (Barbican) or Vault token." },
      clientCertificate: { type: "string", description: "PEM client certificate (KMIP: its Common Name is the project)." },
      clientKey: { type: "string", secret: true, description: "PEM key of clientCertificate." },
      masterKey: { type: "string", secret: true, description: "The local store's master key: 32 random bytes, base64." },
    },
  },
  description: "Credentials of the key managers, by name (secret JSON).",
} as const satisfies Field;
