/**
 * What `cryptsetup luksDump --dump-json-metadata` (the LUKS2 JSON area) and the binary header
 * fields of the plain `luksDump` (UUID, label, epoch: they are not in the JSON area) say about a
 * volume, typed. Used for drift (cipher, key size, keyslots) and to verify what we wrote.
 */
import { BaremetalError } from "../../core/errors";

export interface LuksKeyslot {
  id: number;
  /** "luks2" for a passphrase/key keyslot. */
  type: string;
  /** Bits of the volume key this keyslot holds (512 for aes-xts-plain64 with AES-256). */
  keyBits: number;
  pbkdf: string;
  /** pbkdf2: iterations; argon2: time cost. */
  iterations?: number;
  time?: number;
  memoryKiB?: number;
  cpus?: number;
  priority?: string;
  /** The digest (volume key) this keyslot unlocks; during reencryption old and new keys differ. */
  digest?: number;
}

export interface LuksSegment {
  id: number;
  /** "crypt", or "linear" / "reencrypt"-related types while a reencryption is in progress. */
  type: string;
  offset: number;
  /** Bytes, or "dynamic" (up to the end of the device). */
  size: number | "dynamic";
  cipher?: string;
  sectorSize?: number;
  ivTweak?: string;
}

export interface LuksDump {
  version: 2;
  uuid: string;
  label?: string;
  subsystem?: string;
  /** Metadata sequence number: grows with each header change. */
  epoch?: number;
  /** The data cipher (segment 0), e.g. aes-xts-plain64. */
  cipher: string;
  /** Size in bits of the volume key protecting segment 0 (512 for AES-256 in XTS). */
  keyBits: number;
  sectorSize?: number;
  keyslots: LuksKeyslot[];
  segments: LuksSegment[];
  /** LUKS2 requirements flags, e.g. ["online-reencrypt-v2"] while a reencryption is unfinished. */
  requirements: string[];
  /** True when a reencryption was started and not finished (run reencrypt again to resume). */
  reencryptInProgress: boolean;
  /** The JSON area as cryptsetup printed it. */
  json: unknown;
}

type Json = Record<string, unknown>;

const num = (v: unknown): number | undefined => (typeof v === "number" ? v : typeof v === "string" && /^\d+$/.test(v) ? Number(v) : undefined);

/** Parses the two outputs into a LuksDump. */
export function parseLuksDump(jsonText: string, headerText: string, what: string): LuksDump {
  let json: Json;
  try {
    json = JSON.parse(jsonText) as Json;
  } catch {
    throw new BaremetalError("backend", `${what}: cryptsetup printed LUKS2 metadata that is not JSON`);
  }
  const field = (name: string) => headerText.match(new RegExp(`^${name}:\\s*(.*)$`, "m"))?.[1].trim();
  const version = field("Version");
  if (version !== "2") throw new BaremetalError("conflict", `${what}: the volume is LUKS${version ?? "?"}, only LUKS2 is supported`);
  const uuid = field("UUID");
  if (!uuid) throw new BaremetalError("backend", `${what}: cryptsetup's luksDump shows no UUID`);
  const label = field("Label");
  const subsystem = field("Subsystem");

  const digests = (json.digests ?? {}) as Record<string, Json>;
  const digestOfSlot = new Map<number, number>();
  const digestOfSegment = new Map<number, number>();
  for (const [id, d] of Object.entries(digests)) {
    for (const s of (d.keyslots as string[] | undefined) ?? []) digestOfSlot.set(Number(s), Number(id));
    for (const s of (d.segments as string[] | undefined) ?? []) digestOfSegment.set(Number(s), Number(id));
  }
  const keyslots: LuksKeyslot[] = Object.entries((json.keyslots ?? {}) as Record<string, Json>)
    .map(([id, k]) => {
      const kdf = (k.kdf ?? {}) as Json;
      const slot: LuksKeyslot = { id: Number(id), type: String(k.type), keyBits: (num(k.key_size) ?? 0) * 8, pbkdf: String(kdf.type ?? "") };
      if (num(kdf.iterations) !== undefined) slot.iterations = num(kdf.iterations);
      if (num(kdf.time) !== undefined) slot.time = num(kdf.time);
      if (num(kdf.memory) !== undefined) slot.memoryKiB = num(kdf.memory);
      if (num(kdf.cpus) !== undefined) slot.cpus = num(kdf.cpus);
      if (typeof k.priority === "number") slot.priority = ["ignore", "normal", "prefer"][k.priority] ?? String(k.priority);
      if (digestOfSlot.has(Number(id))) slot.digest = digestOfSlot.get(Number(id));
      return slot;
    })
    .sort((a, b) => a.id - b.id);
  const segments: LuksSegment[] = Object.entries((json.segments ?? {}) as Record<string, Json>)
    .map(([id, s]) => {
      const seg: LuksSegment = { id: Number(id), type: String(s.type), offset: num(s.offset) ?? 0, size: s.size === "dynamic" ? "dynamic" : (num(s.size) ?? 0) };
      if (typeof s.encryption === "string") seg.cipher = s.encryption;
      if (num(s.sector_size) !== undefined) seg.sectorSize = num(s.sector_size);
      if (typeof s.iv_tweak === "string") seg.ivTweak = s.iv_tweak;
      return seg;
    })
    .sort((a, b) => a.id - b.id);
  const config = (json.config ?? {}) as Json;
  const reqs = ((config.requirements as Json | undefined)?.mandatory as string[] | undefined) ?? [];
  const data = segments.find((s) => s.type === "crypt") ?? segments[0];
  const dataDigest = data ? digestOfSegment.get(data.id) : undefined;
  const volumeSlot = keyslots.find((k) => k.digest !== undefined && k.digest === dataDigest) ?? keyslots[0];
  const out: LuksDump = {
    version: 2,
    uuid,
    cipher: data?.cipher ?? "",
    keyBits: volumeSlot?.keyBits ?? 0,
    keyslots,
    segments,
    requirements: reqs,
    reencryptInProgress: reqs.some((r) => r.startsWith("online-reencrypt")) || segments.some((s) => s.type !== "crypt"),
    json,
  };
  if (label && label !== "(no label)") out.label = label;
  if (subsystem && subsystem !== "(no subsystem)") out.subsystem = subsystem;
  const epoch = num(field("Epoch"));
  if (epoch !== undefined) out.epoch = epoch;
  if (data?.sectorSize !== undefined) out.sectorSize = data.sectorSize;
  return out;
}
