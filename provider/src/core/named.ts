/**
 * Picking one of the provider's named settings (key managers, storage backends, backup targets)
 * for a resource input: the one named, or the only one configured; otherwise a validation error
 * naming the input and what to do.
 */
import { validationError } from "./errors";

/**
 * `named` if it is one of `configured`'s keys; the only key when `named` is undefined and there is
 * exactly one. `what` is the thing in the plural and singular (`key managers`, `key manager`),
 * `setting` the provider setting (`keyManagers`).
 */
export function pickNamed(configured: Record<string, unknown>, named: string | undefined, property: string, what: [plural: string, singular: string], setting: string): string {
  const known = Object.keys(configured);
  if (named !== undefined && known.includes(named)) return named;
  if (named === undefined && known.length === 1) return known[0];
  throw validationError(
    property,
    known.length === 0
      ? `the provider has no ${setting} configured; set baremetal:${setting}`
      : named !== undefined
        ? `no ${what[1]} '${named}'; configured: ${known.join(", ")}`
        : `the provider has ${known.length} ${what[0]} (${known.join(", ")}); name one`,
  );
}
