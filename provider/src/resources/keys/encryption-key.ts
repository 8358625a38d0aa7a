/**
 * baremetal:keys:EncryptionKey — a symmetric key (AES, for LUKS2 volume encryption) in one of the
 * provider's key managers, owned by the caller's project.
 *
 * The material never leaves the key manager through this resource: state holds the key's id and
 * description only. Every call is made as the caller's project, so the key manager itself refuses
 * another project (Barbican by project, KMIP by client certificate): importing or reading another
 * project's key fails with an `auth` error naming it. A tenant's members (no admin role) may create
 * keys in their own project. Delete destroys the key (crypto-shredding whatever it encrypted).
 */
import { checkFailureOf } from "../../core/validate";
import { authorize } from "../../core/auth";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { KeyManagerSettings } from "../../core/keymanager-config";
import { pickNamed } from "../../core/named";
import type { OperationContext, Props, ProviderContext, ReadResult, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import type { KeyManagerDriver, ManagedKey } from "../../drivers/kinds/keymanager";
import { keyManagerDriverFor } from "../../drivers/keymanagers";
import { OPERATOR_PROJECT } from "../network/tenant-network";

const inputs = {
  keyManager: { type: "string", minLength: 1, replaceOnChange: true, description: "Which of the provider's `keyManagers` holds the key (default: the only one)." },
  name: { type: "string", minLength: 1, maxLength: 200, replaceOnChange: true, description: "The key's name in the key manager (default: the resource name)." },
  bits: {
    type: "integer",
    minimum: 256,
    maximum: 512,
    default: 512,
    replaceOnChange: true,
    description: "Key length: 512 (AES-256 in XTS mode, LUKS2's aes-xts-plain64 default) or 256.",
    hint: "Use 256 or 512",
    validate: (v: number) => (v === 256 || v === 512 ? undefined : `bits must be 256 or 512, got ${v}`),
  },
  labels: { type: "map", values: { type: "string", description: "A label value." }, replaceOnChange: true, description: "Labels kept with the key in the key manager." },
} as const satisfies Fields;

const outputs = {
  keyId: { type: "string", required: true, stable: true, description: "The key manager's id of the key (Barbican secret UUID, KMIP unique identifier, ...)." },
  project: { type: "string", required: true, stable: true, description: "The project that owns the key." },
  family: { type: "string", required: true, stable: true, description: "The key manager's driver: barbican, kmip or local." },
  state: { type: "string", required: true, description: "`active`, or `deactivated` once retired by a rotation." },
  createdAt: { type: "string", description: "When the key manager made the key." },
} as const satisfies Fields;

export function projectOf(ctx: ProviderContext): string {
  return ctx.caller.projectId ?? OPERATOR_PROJECT;
}

export function keyManagerName(ctx: ProviderContext, props: Props, property = "keyManager"): string {
  return pickNamed(ctx.config.keyManagers, props.keyManager as string | undefined, property, ["key managers", "key manager"], "keyManagers");
}

/**
 * Opens the named key manager as the caller's project, runs `use`, closes it. A driver's error
 * about its connection names the provider setting to fix; `keyProperty` is the input that holds the
 * key's id (e.g. a Volume's `encryption.keyId`), named instead of the driver's `id`.
 */
export async function withKeyManager<T>(
  ctx: ProviderContext,
  name: string,
  use: (driver: KeyManagerDriver, settings: KeyManagerSettings) => Promise<T>,
  signal?: AbortSignal,
  opts: { keyProperty?: string } = {},
): Promise<T> {
  const settings = ctx.config.keyManagers[name];
  const creds = Object.prototype.hasOwnProperty.call(ctx.config.keyManagerCredentials, name) ? ctx.config.keyManagerCredentials[name] : {};
  let driver: KeyManagerDriver;
  try {
    driver = keyManagerDriverFor(
      settings.driver,
      {
        address: settings.address,
        project: projectOf(ctx),
        verifyTls: settings.verifyTls,
        caBundle: settings.caBundle,
        token: creds.token,
        clientCertificate: creds.clientCertificate,
        clientKey: creds.clientKey,
        masterKey: creds.masterKey,
        signal,
      },
      `keyManagers.${name}.driver`,
    );
  } catch (e) {
    throw inProviderTerms(e, name, opts.keyProperty);
  }
  try {
    return await use(driver, settings);
  } catch (e) {
    throw inProviderTerms(e, name, opts.keyProperty);
  } finally {
    await driver.close().catch(() => undefined);
  }
}

/** Where a driver's connection setting lives in the provider's configuration. */
const SETTING_OF: Record<string, (name: string) => string> = {
  address: (n) => `keyManagers.${n}.address`,
  verifyTls: (n) => `keyManagers.${n}.verifyTls`,
  caBundle: (n) => `keyManagers.${n}.caBundle`,
  project: () => "project",
  token: (n) => `keyManagerCredentials.${n}.token`,
  clientCertificate: (n) => `keyManagerCredentials.${n}.clientCertificate`,
  clientKey: (n) => `keyManagerCredentials.${n}.clientKey`,
  masterKey: (n) => `keyManagerCredentials.${n}.masterKey`,
};

/**
 * A driver's error about its connection (`address`, `token`, ...) names the provider setting to fix
 * (`keyManagers.<name>.address`, `keyManagerCredentials.<name>.token`): a user never sees the
 * driver's own parameter names. An error about the key (`id`) names `keyProperty` when given.
 */
function inProviderTerms(e: unknown, name: string, keyProperty?: string): unknown {
  if (!isBaremetalError(e) || !e.property) return e;
  const property = e.property === "id" ? keyProperty : Object.prototype.hasOwnProperty.call(SETTING_OF, e.property) ? SETTING_OF[e.property](name) : undefined;
  if (!property) return e;
  return new BaremetalError(e.code, e.message, {
    property,
    httpStatus: e.httpStatus,
    messageId: e.messageId,
    details: e.details,
    retryAfterSeconds: e.retryAfterSeconds,
    unsent: e.unsent,
    cause: e,
  });
}

/** The key as the key manager has it: the declared inputs on refresh, the key's own on import. */
async function readKey(ctx: OperationContext, id: string, name: string, stored: Props | undefined, state: Props | undefined): Promise<ReadResult | undefined> {
  return withKeyManager(
    ctx,
    name,
    async (driver, settings) => {
      const key = await driver.describeKey(id);
      if (!key || key.state === "destroyed") return undefined;
      const inputs: Props = stored ?? { keyManager: name, name: key.name, bits: key.bits };
      return { id, inputs, outputs: { ...(state ?? {}), ...outputsOf(inputs, key, settings.driver) } };
    },
    ctx.signal,
  );
}

function outputsOf(props: Props, key: ManagedKey, family: string): Props {
  return { ...props, keyId: key.id, project: key.project, family, state: key.state, ...(key.createdAt ? { createdAt: key.createdAt } : {}) };
}

export const encryptionKeyResource: ResourceDefinition = {
  token: "baremetal:keys:EncryptionKey",
  description:
    "A symmetric encryption key (AES) in a key manager (Barbican, KMIP, the lab's store), owned by the caller's project: the material stays in the key manager, which refuses every other project. Destroying the resource destroys the key.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 120,

  check(props, ctx) {
    if (isUnknown(props.keyManager)) return [];
    try {
      keyManagerName(ctx, props);
    } catch (e) {
      if (e instanceof BaremetalError && e.property) return [checkFailureOf(e)];
      throw e;
    }
    return [];
  },

  authorize(ctx, change) {
    const op = change === "create" ? "baremetal:key:create" : change === "delete" ? "baremetal:key:delete" : "baremetal:key:update";
    authorize(ctx.policy, ctx.caller, op, { "key.owner": projectOf(ctx) });
  },

  async create(ctx: OperationContext, props) {
    const name = keyManagerName(ctx, props);
    return withKeyManager(
      ctx,
      name,
      async (driver, settings) => {
        const key = await driver.createKey({ name: (props.name as string | undefined) ?? ctx.name, bits: props.bits as 256 | 512, labels: props.labels as Record<string, string> | undefined });
        ctx.progress(`key ${key.id} created in ${name} (${settings.driver}) for project ${key.project}`);
        return { id: key.id, outputs: outputsOf(props, key, settings.driver) };
      },
      ctx.signal,
    );
  },

  async read(ctx, id, stored, state) {
    if (stored) return readKey(ctx, id, keyManagerName(ctx, stored), stored, state);
    // Import by id alone: the key manager that knows the id (one refusing it as another project's refuses the import).
    const names = Object.keys(ctx.config.keyManagers);
    if (names.length <= 1) return readKey(ctx, id, keyManagerName(ctx, {}), undefined, state);
    for (const name of names) {
      const found = await readKey(ctx, id, name, undefined, state).catch((e) => {
        if (e instanceof BaremetalError && (e.code === "not-found" || e.code === "validation")) return undefined;
        throw e;
      });
      if (found) return found;
    }
    return undefined;
  },

  async update(_ctx, _id, _olds, news, oldState) {
    return { ...oldState, ...news }; // every input replaces
  },

  async delete(ctx, id, props) {
    const name = keyManagerName(ctx, props);
    await withKeyManager(ctx, name, (driver) => driver.destroyKey(id), ctx.signal);
    ctx.progress(`key ${id} destroyed`);
  },
};
