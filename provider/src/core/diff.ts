/**
 * Field-driven diff of a resource's inputs: which properties change, which of those force a
 * replacement, and which outputs stay as they are (stables). Shared by every adapter so that a
 * Pulumi preview and a Terraform plan agree.
 */
import { type Field, type Fields, isPlainObject } from "./fields";
import { deepEqual, isUnknown } from "./values";

export type ChangeKind = "add" | "update" | "delete";

export interface PropertyChange {
  /** Dotted path, e.g. `bmc.address`. */
  path: string;
  kind: ChangeKind;
  /** The change forces replacement of the resource. */
  replace: boolean;
}

export interface InputDiff {
  changes: PropertyChange[];
  /** Top-level properties whose change forces replacement. */
  replaces: string[];
}

export function diffInputs(fields: Fields, olds: Record<string, unknown>, news: Record<string, unknown>, ignore: string[] = []): InputDiff {
  const changes: PropertyChange[] = [];
  diffObject(fields, olds, news, "", false, changes, new Set(ignore));
  const replaces = [...new Set(changes.filter((c) => c.replace).map((c) => c.path.split(".")[0]))];
  return { changes, replaces };
}

function diffObject(
  fields: Fields,
  olds: Record<string, unknown>,
  news: Record<string, unknown>,
  prefix: string,
  parentReplaces: boolean,
  out: PropertyChange[],
  ignore: Set<string>,
): void {
  for (const [name, field] of Object.entries(fields)) {
    const path = prefix ? `${prefix}.${name}` : name;
    if (ignore.has(path)) continue;
    const o = olds[name];
    const n = news[name];
    // An object that becomes unknown may change any of its replace-on-change members.
    const replace = parentReplaces || field.replaceOnChange === true || (isUnknown(n) && o !== undefined && hasReplaceMember(field));
    if (field.type === "object" && isPlainObject(o) && isPlainObject(n)) {
      diffObject(field.properties, o, n, path, replace, out, ignore);
      continue;
    }
    if (!isUnknown(n) && deepEqual(o, n)) continue;
    const kind: ChangeKind = o === undefined ? "add" : n === undefined ? "delete" : "update";
    out.push({ path, kind, replace });
  }
}

function hasReplaceMember(field: Field): boolean {
  if (field.type !== "object") return false;
  return Object.values(field.properties).some((f) => f.replaceOnChange === true || hasReplaceMember(f));
}
