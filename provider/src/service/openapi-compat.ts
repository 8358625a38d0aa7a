/**
 * Whether an OpenAPI document still serves the clients of a released one (issue 8: "the OpenAPI
 * document is versioned and CI rejects an incompatible change to a released version").
 *
 * A change breaks a client of `released` when `current`:
 * - drops a path or an operation (method) of a path;
 * - adds a required parameter or header, or makes an optional one required;
 * - requires a request body property that was optional or absent, or drops a request property
 *   (a client sending it would be refused: request bodies allow no extra properties);
 * - narrows a request value: another type, a new or smaller enum, a higher minimum or lower
 *   maximum, a shorter maxLength or longer minLength, a new pattern;
 * - drops a response status that was documented, or a response property that was required, or
 *   makes it another type.
 * `$ref`s are followed within each document. Additions (paths, optional inputs, response
 * properties, statuses) are compatible. Each problem is one line naming where it is.
 */

type Json = Record<string, unknown>;
const METHODS = ["get", "put", "post", "delete", "patch"] as const;

function resolve(doc: Json, s: unknown, depth = 0): Json | undefined {
  if (!s || typeof s !== "object") return undefined;
  const ref = (s as Json).$ref;
  if (typeof ref === "string" && depth < 20) {
    const target = ref
      .replace(/^#\//, "")
      .split("/")
      .reduce<unknown>((o, k) => (o && typeof o === "object" ? (o as Json)[k] : undefined), doc);
    return resolve(doc, target, depth + 1);
  }
  return s as Json;
}

const typesOf = (s: Json): string[] => (s.type === undefined ? [] : Array.isArray(s.type) ? (s.type as string[]) : [s.type as string]);

/** Problems of a request schema `cur` accepting less than `old` did. */
function requestNarrowed(oldDoc: Json, curDoc: Json, oldS: unknown, curS: unknown, where: string, out: string[]): void {
  const o = resolve(oldDoc, oldS);
  const c = resolve(curDoc, curS);
  if (!o || !c) return;
  const ot = typesOf(o);
  const ct = typesOf(c);
  if (ct.length && ot.some((t) => !ct.includes(t) && !(t === "integer" && ct.includes("number")))) out.push(`${where}: the type is ${ct.join("|")}, was ${ot.join("|") || "any"}`);
  if (Array.isArray(c.enum)) {
    const allowed = new Set((c.enum as unknown[]).map((v) => JSON.stringify(v)));
    const lost = Array.isArray(o.enum) ? (o.enum as unknown[]).filter((v) => !allowed.has(JSON.stringify(v))) : ["(any value)"];
    if (lost.length) out.push(`${where}: no longer accepts ${lost.map((v) => JSON.stringify(v)).join(", ")}`);
  }
  const tighter = (k: string, higher: boolean) => {
    const cv = c[k] as number | undefined;
    const ov = o[k] as number | undefined;
    if (cv === undefined) return;
    if (ov === undefined || (higher ? cv > ov : cv < ov)) out.push(`${where}: ${k} is ${cv}, was ${ov ?? "unset"}`);
  };
  tighter("minimum", true);
  tighter("minLength", true);
  tighter("maximum", false);
  tighter("maxLength", false);
  if (c.pattern !== undefined && c.pattern !== o.pattern) out.push(`${where}: the pattern is ${JSON.stringify(c.pattern)}, was ${JSON.stringify(o.pattern ?? null)}`);
  const oProps = (o.properties ?? {}) as Json;
  const cProps = (c.properties ?? {}) as Json;
  const oReq = new Set((o.required as string[] | undefined) ?? []);
  for (const r of (c.required as string[] | undefined) ?? []) if (!oReq.has(r)) out.push(`${where}.${r}: required now`);
  for (const [k, v] of Object.entries(oProps)) {
    if (!(k in cProps)) {
      if (c.additionalProperties === false) out.push(`${where}.${k}: no longer accepted`);
      continue;
    }
    requestNarrowed(oldDoc, curDoc, v, cProps[k], `${where}.${k}`, out);
  }
  if (o.items || c.items) requestNarrowed(oldDoc, curDoc, o.items, c.items, `${where}[]`, out);
}

/** Problems of a response schema `cur` promising less than `old` did. */
function responseWeakened(oldDoc: Json, curDoc: Json, oldS: unknown, curS: unknown, where: string, out: string[]): void {
  const o = resolve(oldDoc, oldS);
  const c = resolve(curDoc, curS);
  if (!o) return;
  if (!c) {
    out.push(`${where}: no longer described`);
    return;
  }
  const ot = typesOf(o);
  const ct = typesOf(c);
  if (ot.length && ct.some((t) => !ot.includes(t))) out.push(`${where}: the type is ${ct.join("|")}, was ${ot.join("|")}`);
  const cReq = new Set((c.required as string[] | undefined) ?? []);
  const oProps = (o.properties ?? {}) as Json;
  const cProps = (c.properties ?? {}) as Json;
  for (const r of (o.required as string[] | undefined) ?? []) {
    if (!cReq.has(r)) out.push(`${where}.${r}: no longer always present`);
    else responseWeakened(oldDoc, curDoc, oProps[r], cProps[r], `${where}.${r}`, out);
  }
  if (o.items) responseWeakened(oldDoc, curDoc, o.items, c.items, `${where}[]`, out);
}

interface Param {
  name: string;
  in: string;
  required?: boolean;
  schema?: unknown;
}

/** The problems of `current` for clients of `released` (empty: compatible). */
export function incompatibilities(released: Json, current: Json): string[] {
  const out: string[] = [];
  const oPaths = (released.paths ?? {}) as Record<string, Json>;
  const cPaths = (current.paths ?? {}) as Record<string, Json>;
  for (const [path, oItem] of Object.entries(oPaths)) {
    const cItem = cPaths[path];
    if (!cItem) {
      out.push(`${path}: removed`);
      continue;
    }
    for (const m of METHODS) {
      const oOp = oItem[m] as Json | undefined;
      if (!oOp) continue;
      const cOp = cItem[m] as Json | undefined;
      const at = `${m.toUpperCase()} ${path}`;
      if (!cOp) {
        out.push(`${at}: removed`);
        continue;
      }
      const key = (p: Param) => `${p.in}:${p.name.toLowerCase()}`;
      const oParams = new Map(((oOp.parameters as Param[] | undefined) ?? []).map((p) => [key(p), p]));
      for (const p of (cOp.parameters as Param[] | undefined) ?? []) {
        const was = oParams.get(key(p));
        if (p.required && !was?.required) out.push(`${at}: the ${p.in} parameter ${p.name} is required now`);
        if (was) requestNarrowed(released, current, was.schema, p.schema, `${at} ${p.in} ${p.name}`, out);
      }
      const body = (op: Json) => ((op.requestBody as Json | undefined)?.content as Json | undefined)?.["application/json"] as Json | undefined;
      const oBody = body(oOp);
      const cBody = body(cOp);
      if (cBody && !oBody && (cOp.requestBody as Json).required) out.push(`${at}: a request body is required now`);
      if (oBody && cBody) requestNarrowed(released, current, oBody.schema, cBody.schema, `${at} body`, out);
      const oResp = (oOp.responses ?? {}) as Record<string, Json>;
      const cResp = (cOp.responses ?? {}) as Record<string, Json>;
      for (const [status, r] of Object.entries(oResp)) {
        const now = cResp[status];
        if (!now) {
          out.push(`${at}: response ${status} no longer documented`);
          continue;
        }
        const schema = (x: Json) => ((resolve(released, x)?.content as Json | undefined)?.["application/json"] as Json | undefined)?.schema;
        const curSchema = ((resolve(current, now)?.content as Json | undefined)?.["application/json"] as Json | undefined)?.schema;
        if (schema(r) !== undefined) responseWeakened(released, current, schema(r), curSchema, `${at} ${status}`, out);
      }
    }
  }
  return out;
}

/** Compares dotted versions (`0.2.0` < `0.10.0`). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d) return d;
  }
  return 0;
}
