/**
 * baremetal:keys:KeyRotationPolicy — rotates the keys of encrypted volumes after a cryptoperiod
 * (PCI DSS 3.6.4), or at once when `rotateNow` changes (suspected compromise).
 *
 * When an `up` runs after `nextRotationDue`, the policy shows a `rotation` change and, for each
 * volume: (1) new key material in the key manager, linked to the current key (a key that already
 * `replaces` the current one is reused: a rotation interrupted after this step resumes with it);
 * (2) a LUKS2 keyslot for the new key is added, THEN the old key's keyslot is removed, so at every
 * instant the old or the new key opens the volume (luks.rotateKeyslot, resumable from any state);
 * (3) optionally the whole volume is re-encrypted under a new volume key (`reencrypt`, with
 * progress); (4) the old key is retired (deactivated) in the key manager. Only then does the state
 * name the new key: a crash anywhere leaves the old state, and the next `up` finishes the job.
 * Every step is appended to `auditTrail` (time, volume, keys, step), material never.
 */
import { checkFailureOf } from "../../core/validate";
import { authorize } from "../../core/auth";
import { BaremetalError, validationError } from "../../core/errors";
import type { Fields } from "../../core/fields";
import type { OperationContext, Props, ResourceDefinition } from "../../core/resource";
import { isUnknown } from "../../core/values";
import type { KeyManagerDriver, ManagedKey } from "../../drivers/kinds/keymanager";
import { Luks } from "../../drivers/luks";
import { backendName, requireOwnVolume, withLuksHeader, withStorage } from "../storage/volume";
import { keyManagerName, projectOf, withKeyManager } from "./encryption-key";

const PERIOD = /^(\d+)(s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const MAX_PERIOD_MS = 36_500 * 86_400_000;

export function periodMs(text: string): number {
  const m = PERIOD.exec(text);
  if (!m) throw validationError("cryptoperiod", `cryptoperiod must be a number and a unit (s, m, h, d), e.g. 90d; got ${JSON.stringify(text)}`);
  return Number(m[1]) * UNIT_MS[m[2]];
}

const volumeFields = {
  volumeId: { type: "string", required: true, minLength: 1, description: "An encrypted Volume (its `volumeId`)." },
  keyId: { type: "string", required: true, minLength: 1, description: "The key the volume was encrypted with (its EncryptionKey's `keyId`): where the rotation starts." },
  keyManager: { type: "string", description: "The key manager holding it (default: the only one)." },
  backend: { type: "string", description: "The volume's storage backend (default: the only one)." },
} as const satisfies Fields;

const inputs = {
  cryptoperiod: {
    type: "string",
    required: true,
    pattern: "^\\d+(s|m|h|d)$",
    description: "How long a key may be used: a number and a unit, e.g. `90d` (PCI DSS leaves the period to the key's risk assessment).",
    hint: "Write the period as 90d, 12h, 30m or 45s",
    // Dates past the year 275760 do not exist (JavaScript's Date): keep periods to 100 years.
    validate: (v: string) => (PERIOD.test(v) && periodMs(v) > MAX_PERIOD_MS ? `cryptoperiod ${v} is longer than 100 years (36500d); a key that old is not rotated at all` : undefined),
  },
  volumes: {
    type: "array",
    required: true,
    items: { type: "object", typeToken: "baremetal:keys:RotatedVolume", description: "A volume whose key the policy rotates.", properties: volumeFields },
    description: "The volumes (and their initial keys) under the policy.",
  },
  reencrypt: { type: "boolean", default: false, description: "Also re-encrypt each volume under a new volume key on rotation (for a suspected compromise; takes time proportional to the size)." },
  rotateNow: { type: "string", description: "Changing this value rotates at the next `up`, whatever the period (e.g. an incident id)." },
  unlockTimeMs: { type: "integer", minimum: 100, maximum: 60000, description: "Key-derivation time of new keyslots (cryptsetup --iter-time; default cryptsetup's)." },
} as const satisfies Fields;

const event = {
  at: { type: "string", required: true, description: "When (ISO 8601)." },
  volumeId: { type: "string", required: true, description: "The volume." },
  step: { type: "string", required: true, description: "`baseline`, `key-created`, `keyslot-added`, `keyslot-removed`, `verified`, `reencrypted`, `key-retired`, `rotated`." },
  keyId: { type: "string", description: "The key concerned (the new one, or the old one when retired)." },
  detail: { type: "string", description: "More about the step (no secret)." },
} as const satisfies Fields;

const outputs = {
  currentKeys: { type: "map", values: { type: "string", description: "A key id." }, required: true, description: "The key that opens each volume now, by volume id." },
  keyVersions: { type: "map", values: { type: "integer", description: "A count." }, required: true, description: "How many keys each volume has had (1 before its first rotation)." },
  lastRotation: { type: "string", required: true, description: "When the keys were last rotated (or the policy made)." },
  nextRotationDue: { type: "string", required: true, description: "When the next rotation falls due." },
  auditTrail: {
    type: "array",
    items: { type: "object", typeToken: "baremetal:keys:RotationEvent", description: "One step of a rotation.", properties: event },
    description: "Every step of every rotation, for a PCI DSS 3.6.4 review (the last 500).",
  },
} as const satisfies Fields;

interface VolumeRef {
  volumeId: string;
  keyId: string;
  keyManager?: string;
  backend?: string;
}
type AuditEvent = { at: string; volumeId: string; step: string; keyId?: string; detail?: string };

const luks = new Luks();

/** Test-only fault injection: the provider process dies at this step (proves crash safety end to end). */
function crashPoint(step: string): void {
  if (process.env.BAREMETAL_FAULT_CRASH_AT === step) process.kill(process.pid, "SIGKILL");
}

async function successorOf(driver: KeyManagerDriver, keyId: string): Promise<ManagedKey | undefined> {
  return (await driver.listKeys()).find((k) => k.replaces === keyId && k.state === "active");
}

/** Rotates one volume's key; returns the new key id. Resumable from any point (see the header). */
async function rotateVolume(ctx: OperationContext, v: VolumeRef, currentKey: string, props: Props, audit: (e: Omit<AuditEvent, "at">) => void): Promise<string> {
  requireOwnVolume(ctx, v.volumeId, "volumes");
  const km = keyManagerName(ctx, { ...v }, "volumes.keyManager");
  return withKeyManager(
    ctx,
    km,
    async (keys) => {
      let next = await successorOf(keys, currentKey);
      if (!next) {
        next = await keys.rotateKey(currentKey);
        audit({ volumeId: v.volumeId, step: "key-created", keyId: next.id, detail: `replaces ${currentKey}` });
      } else {
        audit({ volumeId: v.volumeId, step: "key-created", keyId: next.id, detail: `resumed: ${next.id} already replaces ${currentKey}` });
      }
      crashPoint("key-created");
      const oldKey = await keys.getKeyMaterial(currentKey);
      const newKey = await keys.getKeyMaterial(next.id);
      try {
        await withStorage(
          ctx,
          backendName(ctx, { ...v }, "volumes.backend"),
          async (storage) => {
            if (props.reencrypt && storage.luksHeader) throw reencryptRefused(v.volumeId, storage.family);
            await withLuksHeader(storage, v.volumeId, (file, commit) =>
              luks.rotateKeyslot(file, oldKey, newKey, {
                ...(props.unlockTimeMs !== undefined ? { iterTimeMs: props.unlockTimeMs as number } : {}),
                signal: ctx.signal,
                onCheckpoint: async (c) => {
                  // On the volume before it is recorded (a header session writes it back now;
                  // a removal names no keyslot whose material is gone).
                  await commit({ headersFirst: c.step !== "added" });
                  const step = c.step === "added" ? "keyslot-added" : c.step === "removed" ? "keyslot-removed" : "verified";
                  audit({ volumeId: v.volumeId, step, keyId: next!.id, detail: `keyslot ${c.newSlot}; old key opens: ${c.opens.old}, new key opens: ${c.opens.new}` });
                  ctx.progress(`volume ${v.volumeId}: ${step}`);
                  crashPoint(c.step);
                },
              }),
            );
            if (props.reencrypt) {
              const file = await storage.path(v.volumeId);
              await luks.reencrypt(file, newKey, {
                onProgress: (p) => ctx.progress(`volume ${v.volumeId}: re-encrypting, ${Math.floor((100 * p.bytesDone) / Math.max(1, p.bytesTotal))}%`),
                signal: ctx.signal,
              });
              audit({ volumeId: v.volumeId, step: "reencrypted", keyId: next!.id, detail: "new volume key" });
            }
          },
          ctx.signal,
        );
      } finally {
        oldKey.fill(0);
        newKey.fill(0);
      }
      await keys.retireKey(currentKey);
      audit({ volumeId: v.volumeId, step: "key-retired", keyId: currentKey });
      crashPoint("key-retired");
      return next.id;
    },
    ctx.signal,
  );
}

/** Re-encryption rewrites every sector: it needs the volume as a local file (not an RBD image). */
function reencryptRefused(volumeId: string, family: string) {
  return validationError(
    "reencrypt",
    `volume ${volumeId} is on a ${family} backend, where only keyslots can be rotated in place (the header is rewritten, not the data); re-encrypting it means a new volume: make one keyed by a new EncryptionKey and copy the data, or set reencrypt to false`,
  );
}

function isDue(state: Props, now = Date.now()): boolean {
  return typeof state.nextRotationDue === "string" && Date.parse(state.nextRotationDue) <= now;
}

export const keyRotationPolicyResource: ResourceDefinition = {
  token: "baremetal:keys:KeyRotationPolicy",
  description:
    "Rotates the keys of encrypted volumes after a cryptoperiod (or when rotateNow changes): new key material, a new LUKS2 keyslot added before the old one is removed (the volume always opens with the old or the new key), optional full re-encryption, the old key retired; with an audit trail.",
  inputs,
  outputs,
  defaultTimeoutSeconds: 3600,

  check(props, ctx) {
    if (typeof props.cryptoperiod === "string" && PERIOD.test(props.cryptoperiod) && periodMs(props.cryptoperiod) < 1000) {
      return [{ property: "cryptoperiod", reason: "cryptoperiod must be at least 1s" }];
    }
    if (props.reencrypt === true && Array.isArray(props.volumes)) {
      for (const v of props.volumes as Props[]) {
        if (isUnknown(v) || isUnknown(v.backend) || isUnknown(v.volumeId)) continue;
        let backend: string;
        try {
          backend = backendName(ctx, { ...v }, "volumes.backend");
        } catch (e) {
          if (e instanceof BaremetalError && e.property) return [checkFailureOf(e)];
          throw e;
        }
        const family = ctx.config.storageBackends[backend].driver;
        if (family !== "file") return [{ property: "reencrypt", reason: reencryptRefused(String(v.volumeId), family).message }];
      }
    }
    return [];
  },

  authorize(ctx) {
    authorize(ctx.policy, ctx.caller, "baremetal:key:update", { "key.owner": projectOf(ctx) });
  },

  pendingChanges(state) {
    return isDue(state) ? [{ path: "rotation", reason: `the keys fell due on ${state.nextRotationDue}` }] : [];
  },

  async create(ctx, props) {
    const now = new Date();
    const volumes = props.volumes as VolumeRef[];
    const currentKeys: Record<string, string> = {};
    const auditTrail: AuditEvent[] = [];
    for (const v of volumes) {
      requireOwnVolume(ctx, v.volumeId, "volumes");
      currentKeys[v.volumeId] = v.keyId;
      auditTrail.push({ at: now.toISOString(), volumeId: v.volumeId, step: "baseline", keyId: v.keyId });
    }
    const outputs = {
      ...props,
      currentKeys,
      keyVersions: Object.fromEntries(volumes.map((v) => [v.volumeId, 1])),
      lastRotation: now.toISOString(),
      nextRotationDue: new Date(now.getTime() + periodMs(props.cryptoperiod as string)).toISOString(),
      auditTrail,
    };
    return { id: `rotation-${ctx.name}`, outputs };
  },

  async read(_ctx, id, stored, state) {
    if (!state) return undefined;
    return { id, inputs: stored ?? {}, outputs: state };
  },

  async update(ctx, _id, olds, news, oldState) {
    const currentKeys = { ...(oldState.currentKeys as Record<string, string>) };
    const keyVersions = { ...(oldState.keyVersions as Record<string, number>) };
    const auditTrail = [...((oldState.auditTrail as AuditEvent[] | undefined) ?? [])];
    const audit = (e: Omit<AuditEvent, "at">) => auditTrail.push({ at: new Date().toISOString(), ...e });
    const volumes = news.volumes as VolumeRef[];
    for (const v of volumes) {
      if (currentKeys[v.volumeId] === undefined) {
        requireOwnVolume(ctx, v.volumeId, "volumes");
        currentKeys[v.volumeId] = v.keyId;
        keyVersions[v.volumeId] = 1;
        audit({ volumeId: v.volumeId, step: "baseline", keyId: v.keyId });
      }
    }
    for (const gone of Object.keys(currentKeys)) if (!volumes.some((v) => v.volumeId === gone)) delete currentKeys[gone];
    const forced = (news.rotateNow ?? null) !== (olds.rotateNow ?? null) && news.rotateNow !== undefined;
    const due = isDue(oldState) || forced;
    let lastRotation = oldState.lastRotation as string;
    if (due) {
      for (const v of volumes) {
        const fresh = await rotateVolume(ctx, v, currentKeys[v.volumeId], news, audit);
        currentKeys[v.volumeId] = fresh;
        keyVersions[v.volumeId] = (keyVersions[v.volumeId] ?? 1) + 1;
        audit({ volumeId: v.volumeId, step: "rotated", keyId: fresh, detail: forced ? `rotateNow ${news.rotateNow}` : "cryptoperiod elapsed" });
      }
      lastRotation = new Date().toISOString();
    }
    const next = new Date(Date.parse(lastRotation) + periodMs(news.cryptoperiod as string)).toISOString();
    return { ...oldState, ...news, currentKeys, keyVersions, lastRotation, nextRotationDue: next, auditTrail: auditTrail.slice(-500) };
  },

  async delete() {
    // The policy stops; keys and volumes are their own resources.
  },
};
