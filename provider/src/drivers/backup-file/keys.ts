/**
 * The rules every backup target applies to object keys, so that a key valid on one family is valid
 * on the other: `/`-separated segments, none empty, `.` or `..`; no leading `/`; no NUL or other
 * control characters; at most 1024 bytes of UTF-8 (S3's limit, prefix included); no segment starting
 * with `.bm-` (the file target's temporary and metadata files).
 */
import { validationError } from "../../core/errors";

export const RESERVED_SEGMENT_PREFIX = ".bm-";

export function checkKey(key: unknown, property = "key", prefixBytes = 0): string {
  if (typeof key !== "string" || key === "") throw validationError(property, "an object key must be a non-empty string");
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(key)) throw validationError(property, `key ${JSON.stringify(key)} contains a control character (NUL, newline, ...): use printable characters`);
  if (key.startsWith("/")) throw validationError(property, `key '${key}' is absolute: keys are relative ('a/b', not '/a/b')`);
  if (Buffer.byteLength(key, "utf8") + prefixBytes > 1024) throw validationError(property, `key '${key.slice(0, 40)}...' is longer than 1024 bytes with the target's prefix`);
  for (const seg of key.split("/")) {
    if (seg === "" || seg === "." || seg === "..") throw validationError(property, `key '${key}' has an empty, '.' or '..' segment: write 'a/b/c'`);
    if (seg.startsWith(RESERVED_SEGMENT_PREFIX)) throw validationError(property, `key '${key}': segments starting with '${RESERVED_SEGMENT_PREFIX}' are reserved for the targets' own files`);
  }
  return key;
}

/** A list prefix: empty, or a key prefix (it may end with `/` or in the middle of a segment). */
export function checkPrefix(prefix: unknown, property = "prefix"): string {
  if (prefix === undefined || prefix === "") return "";
  if (typeof prefix !== "string") throw validationError(property, "a prefix must be a string");
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(prefix)) throw validationError(property, `prefix ${JSON.stringify(prefix)} contains a control character`);
  if (prefix.startsWith("/")) throw validationError(property, `prefix '${prefix}' is absolute: prefixes are relative ('a/', not '/a/')`);
  if (prefix.split("/").some((s) => s === "." || s === "..")) throw validationError(property, `prefix '${prefix}' has a '.' or '..' segment`);
  return prefix;
}

/** Metadata names and values that survive S3 headers: names [a-z0-9-_], values printable ASCII, 2 KiB in all. */
export function checkMetadata(md: Record<string, string> | undefined, property = "metadata"): Record<string, string> {
  const out: Record<string, string> = {};
  if (!md) return out;
  let total = 0;
  for (const [k, v] of Object.entries(md)) {
    if (!/^[a-z0-9][a-z0-9_-]{0,127}$/.test(k)) throw validationError(`${property}.${k}`, "metadata names are lower-case letters, digits, '-' and '_'");
    if (typeof v !== "string" || !/^[\x20-\x7e]*$/.test(v)) throw validationError(`${property}.${k}`, "metadata values are printable ASCII (encode anything else, e.g. base64)");
    total += k.length + v.length;
    out[k] = v;
  }
  if (total > 2048) throw validationError(property, `metadata is ${total} bytes; keep it under 2 KiB (S3 allows 2 KiB of user metadata)`);
  return out;
}
