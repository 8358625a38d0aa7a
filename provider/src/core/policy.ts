/**
 * Policy engine for multi-tenant bare metal, in the model of OpenStack Ironic's oslo.policy RBAC:
 * a table of named rules (rule name -> check string), where the operations the provider performs
 * (`baremetal:node:set_provision_state`, ...) are rules too, and an operator's policy file (YAML or
 * JSON, a map rule name -> check string) overrides the defaults of `policy-defaults.ts`.
 *
 * ## The check-string language (oslo.policy's, from `oslo_policy/_parser.py` and `_checks.py`)
 *
 * - `rule:NAME` — the rule NAME (names may contain `:`, e.g. `rule:baremetal:node:get`)
 * - `role:NAME` — the caller has the role (case-insensitive); NAME may be a `%(key)s` substitution
 * - `KEY:VALUE` — generic check: the credential KEY (dotted path; a list matches if any element
 *   does) equals VALUE. VALUE is a literal (`all`, `'a b'`) or contains substitutions `%(key)s`
 *   taken from the target (`%%` is a literal `%`).
 * - `LITERAL:VALUE` — when KEY is a literal (`'member'`, `"member"`, `True`, `False`, `None`, an
 *   integer), the literal itself is compared with VALUE (e.g. `True:%(node.public)s`).
 * - `@` or an empty check string: always; `!`: never
 * - `not`, `and`, `or` (any case) and parentheses; `not` binds tightest, then `and`, then `or`.
 *
 * ## Where we are stricter than oslo.policy (on purpose)
 *
 * - oslo.policy fails closed on a check string it cannot parse, and on `rule:` references to rules
 *   that do not exist, and logs; we refuse to load such a policy (a validation error that names the
 *   rule and the column), and also refuse cycles of `rule:` references.
 * - oslo.policy formats a target value of None as the text "None", so an unowned node compared with
 *   a caller without a project gives "None" == "None". Here a substitution whose key is missing,
 *   undefined or empty never matches, and neither does a credential that is missing or empty.
 * - a quoted VALUE (`project_id:'p 1'`) is compared without its quotes and may contain spaces
 *   (oslo.policy would compare the quotes too, and splits on spaces first).
 * - a check string of only spaces is an error (oslo.policy fails closed); `""` means always.
 * - `http:`/`https:` external checks and the list-of-lists legacy syntax are not supported.
 */
import * as fs from "fs";
import yaml from "js-yaml";
import { BaremetalError, validationError } from "./errors";
import { DEFAULT_RULES, IMPLIED_ROLES, OPERATIONS, SERVICE_PROJECT, SYSTEM_PROJECT } from "./policy-defaults";

export { DEFAULT_RULES, OPERATIONS, SERVICE_PROJECT, SYSTEM_PROJECT } from "./policy-defaults";
export type { Operation } from "./policy-defaults";

/** The caller: the provider configuration's `project` and `roles`. */
export interface Credentials {
  projectId?: string;
  roles: string[];
}

/** The object of an operation, as flat keys: "node.owner", "node.lessee", "allocation.owner", "project_id", ... */
export interface PolicyTarget {
  [key: string]: string | undefined;
}

export interface Decision {
  allowed: boolean;
  operation: string;
  /** The operation's check string in the effective rule table (the one that decided). */
  rule: string;
  /** One line a user can act on: who was denied (or allowed), and what the rule requires. */
  explanation: string;
}

// ---------------------------------------------------------------------------------------------
// Syntax tree

/** A value with substitutions: literal text and `%(key)s` references to the target. */
export type Template = ReadonlyArray<{ text: string } | { key: string }>;

export type CheckExpr =
  | { type: "always" }
  | { type: "never" }
  | { type: "rule"; name: string; column: number }
  | { type: "role"; role: Template; source: string }
  | {
      type: "generic";
      /** The credential path, e.g. ["project_id"]; absent when the left side is a literal. */
      path?: string[];
      /** The left side's literal value (`'member'` -> member, `True` -> True). */
      literal?: string;
      value: Template;
      source: string;
    }
  | { type: "not"; operand: CheckExpr }
  | { type: "and"; operands: CheckExpr[] }
  | { type: "or"; operands: CheckExpr[] };

/** Thrown by the parser; the loader turns it into a BaremetalError naming the rule. */
class CheckSyntaxError extends Error {
  constructor(
    readonly column: number,
    readonly detail: string,
  ) {
    super(`column ${column}: ${detail}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

type Token =
  | { kind: "(" | ")" | "and" | "or" | "not"; column: number; text: string }
  | { kind: "check"; column: number; text: string; check: CheckExpr }
  | { kind: "end"; column: number; text: string };

const QUOTES = new Set(["'", '"']);

function isSpace(c: string): boolean {
  return c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\f" || c === "\v";
}

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (isSpace(c)) {
      i++;
      continue;
    }
    if (c === "(" || c === ")") {
      tokens.push({ kind: c, column: i + 1, text: c });
      i++;
      continue;
    }
    // A word runs to the next space. A quoted part (at the start of the word, or right after its
    // first ':') runs to its closing quote, spaces included.
    const start = i;
    let firstColon = -1;
    while (i < text.length && !isSpace(text[i])) {
      const ch = text[i];
      if (QUOTES.has(ch) && (i === start || (firstColon >= 0 && i === firstColon + 1))) {
        const close = text.indexOf(ch, i + 1);
        if (close < 0) throw new CheckSyntaxError(i + 1, `expected a closing ${ch} for the quote opened here`);
        i = close + 1;
        continue;
      }
      if (ch === ":" && firstColon < 0) firstColon = i;
      i++;
    }
    let word = text.slice(start, i);
    // Closing parentheses glued to the end of a word close groups (`(role:a or role:b)`), as in
    // oslo.policy; a `%(key)s` substitution always ends in `s`, so it is never cut.
    let trailing = 0;
    while (word.endsWith(")")) {
      word = word.slice(0, -1);
      trailing++;
    }
    if (word) tokens.push(wordToken(word, start + 1));
    for (let k = 0; k < trailing; k++) tokens.push({ kind: ")", column: start + 1 + word.length + k, text: ")" });
  }
  tokens.push({ kind: "end", column: text.length + 1, text: "" });
  return tokens;
}

function wordToken(word: string, column: number): Token {
  const lower = word.toLowerCase();
  if (lower === "and" || lower === "or" || lower === "not") return { kind: lower, column, text: word };
  return { kind: "check", column, text: word, check: parseCheck(word, column) };
}

const EXPECTED_CHECK = "a check (role:NAME, rule:NAME, KEY:VALUE, '@' or '!'), 'not' or '('";

function quoted(s: string): boolean {
  return s.length >= 2 && QUOTES.has(s[0]) && s[s.length - 1] === s[0];
}

/** Parses one check word: `@`, `!`, `rule:x`, `role:x`, `key:value`, `'literal':value`. */
function parseCheck(word: string, column: number): CheckExpr {
  if (word === "@") return { type: "always" };
  if (word === "!") return { type: "never" };
  // The first ':' outside a quoted left side separates kind and value.
  let colon: number;
  if (QUOTES.has(word[0])) {
    const close = word.indexOf(word[0], 1);
    colon = word[close + 1] === ":" ? close + 1 : -1;
    if (colon < 0) {
      throw new CheckSyntaxError(column, `expected ${EXPECTED_CHECK}, found the quoted text ${word} (a quoted literal must be followed by ':VALUE')`);
    }
  } else {
    colon = word.indexOf(":");
  }
  if (colon < 0) {
    throw new CheckSyntaxError(column, `expected ${EXPECTED_CHECK}, found '${word}' (a check has the form KIND:VALUE)`);
  }
  const kind = word.slice(0, colon);
  const value = word.slice(colon + 1);
  const valueColumn = column + colon + 1;
  if (kind === "") throw new CheckSyntaxError(column, `expected a check kind (role, rule or a credential name) before ':' in '${word}'`);
  if (value === "") {
    const what = kind === "rule" ? "a rule name" : kind === "role" ? "a role name" : "a value";
    throw new CheckSyntaxError(valueColumn, `expected ${what} after '${kind}:'`);
  }
  if (kind === "rule") {
    if (quoted(value) || value.includes("%(")) {
      throw new CheckSyntaxError(valueColumn, `expected a plain rule name after 'rule:', found '${value}'`);
    }
    return { type: "rule", name: value, column: valueColumn };
  }
  if (kind === "http" || kind === "https") {
    throw new CheckSyntaxError(column, `external '${kind}:' checks are not supported; use role:, rule: or KEY:VALUE checks`);
  }
  const template = parseValue(value, valueColumn);
  if (kind === "role") return { type: "role", role: template, source: word };
  const literal = literalKind(kind);
  if (literal !== undefined) {
    if (literal === "") throw new CheckSyntaxError(column, `expected a non-empty literal before ':' in '${word}'`);
    return { type: "generic", literal, value: template, source: word };
  }
  if (!/^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$/.test(kind)) {
    throw new CheckSyntaxError(
      column,
      `expected a credential name (letters, digits, '_', '-', dotted), a quoted literal, True, False, None or an integer before ':', found '${kind}'`,
    );
  }
  return { type: "generic", path: kind.split("."), value: template, source: word };
}

/** The literal a generic check's left side stands for, as oslo.policy's `ast.literal_eval` + `str()` would print it. */
function literalKind(kind: string): string | undefined {
  if (quoted(kind)) return kind.slice(1, -1);
  if (kind === "True" || kind === "False" || kind === "None") return kind;
  if (/^-?\d+$/.test(kind)) return kind.replace(/^(-?)0+(?=\d)/, "$1");
  return undefined;
}

/** Parses a value: a quoted literal, or text with `%(key)s` substitutions and `%%`. */
function parseValue(value: string, column: number): Template {
  if (quoted(value)) return [{ text: value.slice(1, -1) }];
  const parts: Array<{ text: string } | { key: string }> = [];
  let text = "";
  let i = 0;
  while (i < value.length) {
    const c = value[i];
    if (c !== "%") {
      text += c;
      i++;
      continue;
    }
    if (value[i + 1] === "%") {
      text += "%";
      i += 2;
      continue;
    }
    const m = /^%\(([^()]+)\)s/.exec(value.slice(i));
    if (!m) {
      throw new CheckSyntaxError(column + i, `expected a substitution '%(key)s' (or '%%' for a literal '%') in '${value}'`);
    }
    if (text) parts.push({ text });
    text = "";
    parts.push({ key: m[1] });
    i += m[0].length;
  }
  if (text) parts.push({ text });
  return parts;
}

// ---------------------------------------------------------------------------------------------
// Parser: or_expr := and_expr ('or' and_expr)* ; and_expr := not_expr ('and' not_expr)* ;
// not_expr := 'not' not_expr | '(' or_expr ')' | check

function describeToken(t: Token): string {
  return t.kind === "end" ? "the end of the rule" : `'${t.text}'`;
}

/** Parses a check string into its tree. Throws a CheckSyntaxError (column is 1-based). */
function parseTree(text: string): CheckExpr {
  if (text === "") return { type: "always" };
  if (text.trim() === "") {
    throw new CheckSyntaxError(1, `expected a check, found only spaces (use "" to always allow, or "!" to never allow)`);
  }
  const tokens = tokenize(text);
  let pos = 0;
  const peek = () => tokens[pos];

  const parseOr = (): CheckExpr => {
    const operands = [parseAnd()];
    while (peek().kind === "or") {
      pos++;
      operands.push(parseAnd());
    }
    return operands.length === 1 ? operands[0] : { type: "or", operands };
  };
  const parseAnd = (): CheckExpr => {
    const operands = [parseNot()];
    while (peek().kind === "and") {
      pos++;
      operands.push(parseNot());
    }
    return operands.length === 1 ? operands[0] : { type: "and", operands };
  };
  const parseNot = (): CheckExpr => {
    const t = peek();
    if (t.kind === "not") {
      pos++;
      return { type: "not", operand: parseNot() };
    }
    if (t.kind === "(") {
      pos++;
      const inner = parseOr();
      const close = peek();
      if (close.kind !== ")") {
        throw new CheckSyntaxError(close.column, `expected 'and', 'or' or ')' to close the '(' at column ${t.column}, found ${describeToken(close)}`);
      }
      pos++;
      return inner;
    }
    if (t.kind === "check") {
      pos++;
      return t.check;
    }
    throw new CheckSyntaxError(t.column, `expected ${EXPECTED_CHECK}, found ${describeToken(t)}`);
  };

  const tree = parseOr();
  const rest = peek();
  if (rest.kind !== "end") {
    const why = rest.kind === ")" ? `found a ')' that closes nothing` : `found ${describeToken(rest)}`;
    throw new CheckSyntaxError(rest.column, `expected 'and', 'or' or the end of the rule after a check, ${why}`);
  }
  return tree;
}

/** Parses a check string (exported for tests and tools); errors are validation errors naming `ruleName`. */
export function parseCheckString(text: string, ruleName = "check", source = "policy"): CheckExpr {
  try {
    return parseTree(text);
  } catch (e) {
    if (e instanceof CheckSyntaxError) throw ruleError(source, ruleName, `${e.message} in "${text}"`);
    throw e;
  }
}

/** Prints a tree with explicit parentheses around every `and`/`or` (as oslo.policy's `str()` does). */
export function formatCheck(e: CheckExpr): string {
  switch (e.type) {
    case "always":
      return "@";
    case "never":
      return "!";
    case "rule":
      return `rule:${e.name}`;
    case "role":
    case "generic":
      return e.source;
    case "not":
      return `not ${formatCheck(e.operand)}`;
    case "and":
    case "or":
      return `(${e.operands.map(formatCheck).join(` ${e.type} `)})`;
  }
}

function ruleError(source: string, rule: string, message: string): BaremetalError {
  return validationError("policy", `${source}: rule "${rule}": ${message}`);
}

// ---------------------------------------------------------------------------------------------
// Credentials and evaluation

/** oslo.policy-style credentials (see the mapping in policy-defaults.ts). */
interface PolicyValues {
  project_id?: string;
  project_name?: string;
  system_scope?: string;
  is_admin_project: boolean;
  roles: string[];
}

function expandRoles(roles: readonly string[]): string[] {
  const out = new Set<string>();
  const queue = roles.map((r) => r.trim().toLowerCase()).filter(Boolean);
  while (queue.length) {
    const r = queue.shift() as string;
    if (out.has(r)) continue;
    out.add(r);
    queue.push(...(IMPLIED_ROLES[r] ?? []));
  }
  return [...out];
}

function policyValues(creds: Credentials): PolicyValues {
  const project = creds.projectId?.trim();
  if (!project) return { is_admin_project: false, roles: [] };
  const roles = expandRoles(creds.roles ?? []);
  if (project === SYSTEM_PROJECT) return { system_scope: "all", is_admin_project: true, roles };
  return { project_id: project, project_name: project, is_admin_project: false, roles };
}

/** oslo.policy prints credential values with Python's `str()`. */
function pyStr(v: unknown): string | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  if (v === true) return "True";
  if (v === false) return "False";
  return String(v);
}

interface Context {
  creds: PolicyValues;
  target: Record<string, string | undefined>;
  rules: ReadonlyMap<string, CheckExpr>;
}

/** Fills a template from the target; undefined when a key is missing or empty (never matches). */
function substitute(t: Template, target: Record<string, string | undefined>): string | undefined {
  let out = "";
  for (const part of t) {
    if ("text" in part) {
      out += part.text;
      continue;
    }
    const v = Object.prototype.hasOwnProperty.call(target, part.key) ? target[part.key] : undefined;
    if (v === undefined || v === null || v === "") return undefined;
    out += v;
  }
  return out === "" ? undefined : out;
}

/** Looks a dotted path up in the credentials; a list on the way matches if any element does. */
function credentialMatches(value: unknown, path: readonly string[], match: string): boolean {
  if (path.length === 0) {
    if (Array.isArray(value)) return value.some((v) => credentialMatches(v, path, match));
    return pyStr(value) === match;
  }
  if (Array.isArray(value)) return value.some((v) => credentialMatches(v, path, match));
  if (typeof value !== "object" || value === null) return false;
  const [head, ...rest] = path;
  if (!Object.prototype.hasOwnProperty.call(value, head)) return false;
  return credentialMatches((value as Record<string, unknown>)[head], rest, match);
}

function evaluate(e: CheckExpr, ctx: Context): boolean {
  switch (e.type) {
    case "always":
      return true;
    case "never":
      return false;
    case "rule": {
      const r = ctx.rules.get(e.name);
      return r ? evaluate(r, ctx) : false; // loading refuses unknown rules; fail closed anyway
    }
    case "role": {
      const role = substitute(e.role, ctx.target);
      return role !== undefined && ctx.creds.roles.includes(role.toLowerCase());
    }
    case "generic": {
      const match = substitute(e.value, ctx.target);
      if (match === undefined) return false;
      if (e.literal !== undefined) return e.literal !== "" && e.literal === match;
      return credentialMatches(ctx.creds, e.path ?? [], match);
    }
    case "not":
      return !evaluate(e.operand, ctx);
    case "and":
      return e.operands.every((o) => evaluate(o, ctx));
    case "or":
      return e.operands.some((o) => evaluate(o, ctx));
  }
}

// ---------------------------------------------------------------------------------------------
// Explanations: the rule as a list of alternatives (disjunctive normal form over its leaves)

type Leaf = Extract<CheckExpr, { type: "role" | "generic" | "not" }>;
const MAX_ALTERNATIVES = 64;

class TooManyAlternatives extends Error {}

/** The alternatives of a rule: each is a list of leaves that must all hold. */
function alternatives(e: CheckExpr, rules: ReadonlyMap<string, CheckExpr>): Leaf[][] {
  switch (e.type) {
    case "always":
      return [[]];
    case "never":
      return [];
    case "rule": {
      const r = rules.get(e.name);
      return r ? alternatives(r, rules) : [];
    }
    case "role":
    case "generic":
    case "not":
      return [[e]];
    case "or": {
      const out = e.operands.flatMap((o) => alternatives(o, rules));
      if (out.length > MAX_ALTERNATIVES) throw new TooManyAlternatives();
      return out;
    }
    case "and": {
      let acc: Leaf[][] = [[]];
      for (const o of e.operands) {
        const next: Leaf[][] = [];
        for (const a of acc) for (const b of alternatives(o, rules)) next.push([...a, ...b]);
        if (next.length > MAX_ALTERNATIVES) throw new TooManyAlternatives();
        acc = next;
      }
      return acc;
    }
  }
}

/** Target keys a leaf substitutes that are missing here (a leaf that needs one can never hold). */
function unsetKeys(leaf: Leaf, target: Record<string, string | undefined>): string[] {
  const template = leaf.type === "role" ? leaf.role : leaf.type === "generic" ? leaf.value : [];
  return template.flatMap((p) => ("key" in p && !target[p.key] ? [p.key] : []));
}

function describeValue(t: Template, target: Record<string, string | undefined>): string {
  if (t.length === 1 && "key" in t[0]) return `${target[t[0].key] || "(unset)"} (${t[0].key})`;
  return t.map((p) => ("text" in p ? p.text : target[p.key] || `(${p.key} unset)`)).join("");
}

function describeLeaf(leaf: Leaf, target: Record<string, string | undefined>): string {
  switch (leaf.type) {
    case "role":
      return `role ${describeValue(leaf.role, target)}`;
    case "not":
      return `not ${formatCheck(leaf.operand)}`;
    case "generic": {
      const value = describeValue(leaf.value, target);
      if (leaf.literal !== undefined) return `${value} = ${leaf.literal}`;
      const key = (leaf.path ?? []).join(".");
      if (key === "system_scope" && value === "all") return `the system project "${SYSTEM_PROJECT}"`;
      if (key === "project_id" || key === "project_name") return `project ${value}`;
      return `${key} = ${value}`;
    }
  }
}

function describeAlternative(alt: Leaf[], target: Record<string, string | undefined>): string {
  if (alt.length === 0) return "nothing (always allowed)";
  return [...new Set(alt.map((l) => describeLeaf(l, target)))].join(" and ");
}

function describeCaller(creds: Credentials): string {
  const project = creds.projectId?.trim();
  const roles = (creds.roles ?? []).length ? `roles ${creds.roles.join(", ")}` : "no roles";
  if (!project) return `a caller without a project (${roles})`;
  return project === SYSTEM_PROJECT ? `project ${project} (system scope; ${roles})` : `project ${project} (${roles})`;
}

function explain(operation: string, check: string, tree: CheckExpr, allowed: boolean, ctx: Context, creds: Credentials): string {
  const who = describeCaller(creds);
  let alts: Leaf[][] | undefined;
  try {
    alts = alternatives(tree, ctx.rules);
  } catch (e) {
    if (!(e instanceof TooManyAlternatives)) throw e;
  }
  if (allowed) {
    const hit = alts?.find((a) => a.every((l) => evaluate(l, ctx)));
    return `${operation} allowed for ${who}: rule '${check}' matched${hit ? ` ${describeAlternative(hit, ctx.target)}` : ""}`;
  }
  let requirement: string;
  if (!alts) {
    requirement = `is not met`;
  } else if (alts.length === 0) {
    requirement = `never allows it`;
  } else {
    const missing = new Set<string>();
    const possible: string[] = [];
    for (const alt of alts) {
      const unset = alt.flatMap((l) => unsetKeys(l, ctx.target));
      if (unset.length) unset.forEach((k) => missing.add(k));
      else possible.push(describeAlternative(alt, ctx.target));
    }
    const unique = [...new Set(possible)];
    const notSet = [...missing].join(", ");
    if (unique.length === 0) {
      requirement = `cannot be met for this object: it needs ${notSet}, which ${missing.size > 1 ? "are" : "is"} not set`;
    } else {
      requirement = unique.length === 1 ? `requires ${unique[0]}` : `requires one of: ${unique.join("; ")}`;
      if (missing.size) requirement += ` (alternatives needing ${notSet} do not apply: not set on this object)`;
    }
  }
  let hint = "";
  if (!creds.projectId?.trim() && (creds.roles ?? []).length) {
    hint = "; roles count only within a project: set the provider's `project`";
  }
  return `${operation} denied for ${who}: rule '${check}' ${requirement}${hint}`;
}

// ---------------------------------------------------------------------------------------------
// Loading

/** Rules referenced by a tree, with the column of each reference. */
function references(e: CheckExpr, out: Array<{ name: string; column: number }> = []): Array<{ name: string; column: number }> {
  switch (e.type) {
    case "rule":
      out.push({ name: e.name, column: e.column });
      break;
    case "not":
      references(e.operand, out);
      break;
    case "and":
    case "or":
      e.operands.forEach((o) => references(o, out));
      break;
    default:
      break;
  }
  return out;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

function suggest(name: string, known: Iterable<string>): string {
  const close = [...known].filter((k) => {
    const d = editDistance(k, name);
    return d <= 2 && d <= name.length / 3;
  });
  return close.length ? ` (did you mean ${close.slice(0, 3).map((c) => `"${c}"`).join(" or ")}?)` : "";
}

/** Parses every rule, then checks references and cycles. Throws one validation error listing every problem. */
function compile(table: Record<string, string>, source: string): Map<string, CheckExpr> {
  const problems: BaremetalError[] = [];
  const trees = new Map<string, CheckExpr>();
  for (const [name, text] of Object.entries(table)) {
    try {
      trees.set(name, parseCheckString(text, name, source));
    } catch (e) {
      problems.push(e as BaremetalError);
    }
  }
  for (const [name, tree] of trees) {
    for (const ref of references(tree)) {
      if (!Object.prototype.hasOwnProperty.call(table, ref.name)) {
        problems.push(
          ruleError(source, name, `column ${ref.column}: refers to rule "${ref.name}", which is not defined${suggest(ref.name, Object.keys(table))}`),
        );
      }
    }
  }
  // Cycles: depth-first search over rule references.
  const state = new Map<string, "visiting" | "done">();
  const stack: string[] = [];
  const reported = new Set<string>();
  const visit = (name: string): void => {
    const s = state.get(name);
    if (s === "done") return;
    if (s === "visiting") {
      const cycle = [...stack.slice(stack.indexOf(name)), name];
      const key = [...cycle.slice(0, -1)].sort().join("\u0000");
      if (!reported.has(key)) {
        reported.add(key);
        problems.push(ruleError(source, name, `rule references form a cycle: ${cycle.join(" -> ")}`));
      }
      return;
    }
    const tree = trees.get(name);
    if (!tree) return;
    state.set(name, "visiting");
    stack.push(name);
    for (const ref of references(tree)) visit(ref.name);
    stack.pop();
    state.set(name, "done");
  };
  for (const name of trees.keys()) visit(name);

  if (problems.length === 1) throw problems[0];
  if (problems.length > 1) {
    throw new BaremetalError("validation", `${problems[0].message} (and ${problems.length - 1} more problem${problems.length > 2 ? "s" : ""})`, {
      property: "policy",
      details: problems.map((p) => p.message),
    });
  }
  return trees;
}

const KNOWN_OPERATIONS: ReadonlySet<string> = new Set(OPERATIONS);

export class Policy {
  private constructor(
    private readonly table: Readonly<Record<string, string>>,
    private readonly trees: ReadonlyMap<string, CheckExpr>,
    readonly source: string,
  ) {}

  /** Ironic's default rules (see policy-defaults.ts). */
  static defaults(): Policy {
    return Policy.load({}, "default policy");
  }

  /** Overrides (rule name -> check string) over the defaults, as an operator's policy file does. */
  static load(overrides: Record<string, string>, source = "policy overrides"): Policy {
    // No prototype: a rule named "toString" or "__proto__" is just a rule.
    const table: Record<string, string> = Object.assign(Object.create(null) as Record<string, string>, DEFAULT_RULES);
    for (const [name, value] of Object.entries(overrides ?? {})) {
      const text: unknown = value;
      if (name.trim() === "") throw validationError("policy", `${source}: a rule has an empty name`);
      if (typeof text !== "string") {
        const found = text === null || text === undefined ? "nothing (in YAML an unquoted ! or @ is not text)" : Array.isArray(text) ? "a list (the list-of-lists syntax is not supported)" : `a ${typeof text}`;
        throw ruleError(source, name, `expected a check string, found ${found}; quote it, e.g. "role:admin", "@" or "!"`);
      }
      table[name] = text;
    }
    return new Policy(Object.freeze(table), compile(table, source), source);
  }

  /** Parses a policy file's text, YAML or JSON (oslo.policy files are a map rule-name -> check string). */
  static parse(text: string, source = "policy file"): Policy {
    let doc: unknown;
    try {
      doc = yaml.load(text, { filename: source });
    } catch (e) {
      const reason = e instanceof yaml.YAMLException ? e.message.split("\n")[0] : String(e);
      throw new BaremetalError(
        "validation",
        `${source}: not valid YAML or JSON: ${reason}; a policy file maps rule names to quoted check strings, e.g. "baremetal:node:get": "rule:is_admin"`,
        { property: "policy", cause: e },
      );
    }
    if (doc === undefined || doc === null) return Policy.load({}, source);
    if (typeof doc !== "object" || Array.isArray(doc)) {
      throw validationError(
        "policy",
        `${source}: expected a map of rule names to check strings, found ${Array.isArray(doc) ? "a list" : `a ${typeof doc}`}`,
      );
    }
    return Policy.load(doc as Record<string, string>, source);
  }

  static fromFile(path: string): Policy {
    let text: string;
    try {
      text = fs.readFileSync(path, "utf8");
    } catch (e) {
      throw new BaremetalError("validation", `cannot read the policy file ${path}: ${(e as Error).message}`, { property: "policy", cause: e });
    }
    return Policy.parse(text, path);
  }

  check(operation: string, creds: Credentials, target: PolicyTarget): Decision {
    if (!KNOWN_OPERATIONS.has(operation)) {
      throw validationError(
        "operation",
        `unknown policy operation "${operation}"${suggest(operation, KNOWN_OPERATIONS)}; known operations: ${OPERATIONS.join(", ")}`,
      );
    }
    const tree = this.trees.get(operation) as CheckExpr; // every operation has a default
    const values = policyValues(creds);
    const ctx: Context = {
      creds: values,
      target: {
        project_id: values.project_id,
        project_name: values.project_name,
        system_scope: values.system_scope,
        is_admin_project: pyStr(values.is_admin_project),
        ...target,
        "config.service_project_name": SERVICE_PROJECT,
      },
      rules: this.trees,
    };
    const allowed = evaluate(tree, ctx);
    const rule = this.table[operation];
    return { allowed, operation, rule, explanation: explain(operation, rule, tree, allowed, ctx, creds) };
  }

  /**
   * Throws when denied: a BaremetalError with code "auth" and httpStatus 403 (the code the core
   * already has for "credentials refused"; a policy denial is Ironic's 403 Forbidden), whose message
   * is the decision's explanation.
   */
  enforce(operation: string, creds: Credentials, target: PolicyTarget): void {
    const d = this.check(operation, creds, target);
    if (!d.allowed) throw new BaremetalError("auth", d.explanation, { httpStatus: 403, messageId: "PolicyNotAuthorized" });
  }

  /** The effective rule table (defaults with overrides applied). */
  rules(): Record<string, string> {
    return { ...this.table };
  }

  /** A rule with every `rule:` reference replaced by the referenced check string, in parentheses. */
  expanded(name: string): string {
    const text = Object.prototype.hasOwnProperty.call(this.table, name) ? this.table[name] : undefined;
    if (text === undefined) throw validationError("policy", `${this.source}: no rule "${name}"${suggest(name, Object.keys(this.table))}`);
    return text.replace(/(^|[\s(])rule:([^\s()]+)/g, (_m, pre: string, ref: string) => `${pre}(${this.expanded(ref)})`);
  }
}
