/**
 * SSH host key verification (pure functions): the ssh-cli switch driver's `hostKey` setting, and
 * the `bmcSshHostKeys` setting for BMCs' serial consoles over SSH (service/console.ts).
 *
 * The setting is one of:
 * - one or more fingerprints as OpenSSH prints them (`ssh-keygen -lf`, `ssh -v`):
 *   `SHA256:<base64 without padding>` of the key blob, separated by commas or whitespace;
 * - known_hosts text (the format of sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT"): lines of
 *   `[marker] hostnames keytype base64-key [comment]`, hostnames plain (`host`, `[host]:port`,
 *   with `*`/`?` wildcards and `!` negation) or hashed (`|1|salt|hmac-sha1`); `@revoked` lines
 *   refuse a key; `@cert-authority` lines are ignored (host certificates are not supported);
 * - a public key line as in a `.pub` file (`ssh-ed25519 AAAA... comment`): that key, for any host.
 */
import { createHash, createHmac } from "node:crypto";
import { validationError } from "../../core/errors";

/** OpenSSH's fingerprint of a key blob (the SSH wire encoding of the public key). */
export function sha256Fingerprint(keyBlob: Buffer): string {
  return `SHA256:${createHash("sha256").update(keyBlob).digest("base64").replace(/=+$/, "")}`;
}

/** The key type named inside a key blob (its first SSH string), e.g. `ssh-ed25519`. */
export function keyTypeOf(keyBlob: Buffer): string {
  if (keyBlob.length < 4) return "unknown";
  const n = keyBlob.readUInt32BE(0);
  return n > 0 && n < 64 && keyBlob.length >= 4 + n ? keyBlob.subarray(4, 4 + n).toString("latin1") : "unknown";
}

interface KnownKey {
  /** undefined: any host (a bare public key line or a fingerprint). */
  matchesHost?: (host: string, port: number) => boolean;
  revoked: boolean;
  /** Either a blob (compared exactly) or a fingerprint. */
  blob?: Buffer;
  fingerprint?: string;
}

export interface HostKeyPolicy {
  /** What the setting accepts, for messages: fingerprints only, never secret. */
  describe: string;
  /** undefined when the key is accepted, else why not. */
  check(host: string, port: number, keyBlob: Buffer): string | undefined;
}

const KEY_TYPE = /^(ssh-(rsa|dss|ed25519|ed448)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)$/;
const FINGERPRINT = /^SHA256:[A-Za-z0-9+/]{43}$/;

function hostPatternMatches(pattern: string, name: string): boolean {
  const re = new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`, "i");
  return re.test(name);
}

/** The name a known_hosts line uses for a host: `host` on port 22, `[host]:port` otherwise. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

function hostsMatcher(field: string): (host: string, port: number) => boolean {
  if (field.startsWith("|1|")) {
    const [, , salt64, hash64] = field.split("|");
    const salt = Buffer.from(salt64 ?? "", "base64");
    return (host, port) => createHmac("sha1", salt).update(knownHostsName(host, port)).digest("base64") === hash64;
  }
  const patterns = field.split(",").filter(Boolean);
  return (host, port) => {
    const name = knownHostsName(host, port);
    let hit = false;
    for (const p of patterns) {
      const negated = p.startsWith("!");
      if (hostPatternMatches(negated ? p.slice(1) : p, name)) {
        if (negated) return false;
        hit = true;
      }
    }
    return hit;
  };
}

/**
 * Parses a host key setting; `property` names it in errors, `peer` is what presents the keys
 * (`switch`, `BMC`) and `setting` the setting's name in messages.
 */
export function parseHostKeySetting(setting: string, property: string, peer = "switch", settingName = "hostKey"): HostKeyPolicy {
  if (typeof setting !== "string" || !setting.trim()) {
    throw validationError(property, `${settingName} must be a SHA256 fingerprint (SHA256:...), a public key line or known_hosts text`);
  }
  const keys: KnownKey[] = [];
  const trimmed = setting.trim();
  if (/^SHA256:/.test(trimmed)) {
    for (const fp of trimmed.split(/[\s,]+/).filter(Boolean)) {
      const f = fp.replace(/=+$/, "");
      if (!FINGERPRINT.test(f)) throw validationError(property, `not a SHA256 host key fingerprint as OpenSSH prints it (SHA256: and 43 base64 characters): ${JSON.stringify(fp)}`);
      keys.push({ fingerprint: f, revoked: false });
    }
  } else {
    trimmed.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith("#")) return;
      let fields = line.split(/\s+/);
      let marker: string | undefined;
      if (fields[0].startsWith("@")) {
        marker = fields[0];
        fields = fields.slice(1);
      }
      if (marker === "@cert-authority") return;
      if (marker !== undefined && marker !== "@revoked") throw validationError(property, `line ${i + 1}: unknown marker ${JSON.stringify(marker)}`);
      let hosts: string | undefined;
      if (!KEY_TYPE.test(fields[0])) {
        hosts = fields[0];
        fields = fields.slice(1);
      }
      if (fields.length < 2 || !KEY_TYPE.test(fields[0]) || !/^[A-Za-z0-9+/]+={0,2}$/.test(fields[1])) {
        throw validationError(property, `line ${i + 1} is not a known_hosts line ([marker] hostnames keytype base64-key) nor a public key line`);
      }
      const blob = Buffer.from(fields[1], "base64");
      if (keyTypeOf(blob) !== fields[0]) throw validationError(property, `line ${i + 1}: the key is not of type ${fields[0]}`);
      keys.push({ blob, revoked: marker === "@revoked", ...(hosts !== undefined ? { matchesHost: hostsMatcher(hosts) } : {}) });
    });
    if (!keys.some((k) => !k.revoked)) throw validationError(property, `${settingName} lists no usable host key`);
  }
  const trusted = keys.filter((k) => !k.revoked);
  const describe = trusted.map((k) => k.fingerprint ?? sha256Fingerprint(k.blob!)).join(", ");
  return {
    describe,
    check(host, port, keyBlob) {
      const fp = sha256Fingerprint(keyBlob);
      const forHost = keys.filter((k) => !k.matchesHost || k.matchesHost(host, port));
      const same = (k: KnownKey) => (k.blob ? k.blob.equals(keyBlob) : k.fingerprint === fp);
      if (forHost.some((k) => k.revoked && same(k))) return `the host key ${keyTypeOf(keyBlob)} ${fp} of ${knownHostsName(host, port)} is marked @revoked`;
      if (forHost.some((k) => !k.revoked && same(k))) return undefined;
      const expected = forHost.filter((k) => !k.revoked).map((k) => k.fingerprint ?? sha256Fingerprint(k.blob!));
      return expected.length
        ? `the ${peer} ${knownHostsName(host, port)} presented host key ${keyTypeOf(keyBlob)} ${fp}, which is not the one the ${settingName} setting expects (${expected.join(", ")})`
        : `the ${peer} ${knownHostsName(host, port)} presented host key ${keyTypeOf(keyBlob)} ${fp}, and the ${settingName} setting has no key for ${knownHostsName(host, port)}`;
    },
  };
}
