/**
 * Pulumi's wire form of property values (google.protobuf.Struct with signature-keyed objects for
 * secrets and output values, and a sentinel string for unknowns) to and from the core's plain
 * values. Secrets are unwrapped on the way in, with their paths remembered, and wrapped again on
 * the way out: at those paths and wherever a field is declared secret.
 */
import { Struct } from "google-protobuf/google/protobuf/struct_pb";
import { type Fields, isPlainObject } from "../../core/fields";
import { UNKNOWN, isUnknown } from "../../core/values";

const SIG = "4dabf18193072939515e22adb298388d";
const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";
const OUTPUT_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4";
export const UNKNOWN_SENTINEL = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

export interface Decoded {
  value: Record<string, unknown>;
  /** Paths (`bmc.password`, `traits[0]`) whose values arrived secret. */
  secretPaths: Set<string>;
}

export function fromStruct(s: Struct | undefined): Decoded {
  const secretPaths = new Set<string>();
  const raw = s ? s.toJavaScript() : {};
  const value = decode(raw, "", secretPaths);
  return { value: isPlainObject(value) ? value : {}, secretPaths };
}

function decode(v: unknown, path: string, secrets: Set<string>): unknown {
  if (v === UNKNOWN_SENTINEL) return UNKNOWN;
  if (v === null || v === undefined) return undefined;
  if (Array.isArray(v)) return v.map((x, i) => decode(x, `${path}[${i}]`, secrets));
  if (!isPlainObject(v)) return v;
  const sig = v[SIG];
  if (sig === SECRET_SIG) {
    secrets.add(path);
    return decode(v.value, path, secrets);
  }
  if (sig === OUTPUT_SIG) {
    if (v.secret === true) secrets.add(path);
    return "value" in v ? decode(v.value, path, secrets) : UNKNOWN;
  }
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    const d = decode(x, path ? `${path}.${k}` : k, secrets);
    if (d !== undefined) out[k] = d;
  }
  return out;
}

/** Paths of fields declared secret, with `[]` standing for any array index. */
export function declaredSecretPaths(fields: Fields, prefix = "", into = new Set<string>()): Set<string> {
  for (const [name, f] of Object.entries(fields)) {
    const path = prefix ? `${prefix}.${name}` : name;
    if (f.secret) into.add(path);
    if (f.type === "object") declaredSecretPaths(f.properties, path, into);
    if (f.type === "array" && f.items.type === "object") declaredSecretPaths(f.items.properties, `${path}[]`, into);
  }
  return into;
}

export function toStruct(value: Record<string, unknown>, secretPaths: Set<string>): Struct {
  return Struct.fromJavaScript(encode(value, "", secretPaths) as Record<string, never>);
}

function encode(v: unknown, path: string, secrets: Set<string>): unknown {
  let out: unknown;
  if (isUnknown(v)) out = UNKNOWN_SENTINEL;
  else if (Array.isArray(v)) out = v.map((x, i) => encode(x, `${path}[${i}]`, secrets) ?? null);
  else if (isPlainObject(v)) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      const e = encode(x, path ? `${path}.${k}` : k, secrets);
      if (e !== undefined) o[k] = e;
    }
    out = o;
  } else out = v;
  if (out === undefined || !path) return out;
  const generic = path.replace(/\[\d+\]/g, "[]");
  return secrets.has(path) || secrets.has(generic) ? { [SIG]: SECRET_SIG, value: out } : out;
}
