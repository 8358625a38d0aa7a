/**
 * The service API's OpenAPI document (provider/src/service/openapi.ts) against its releases
 * (provider/src/service/openapi-released/<version>.json):
 *
 *   npx tsx scripts/openapi.ts check     fails when the current document breaks a client of a
 *                                        released version (openapi-compat.ts), or changes a released
 *                                        version's document (other than its prose: descriptions and
 *                                        summaries) without a new info.version
 *   npx tsx scripts/openapi.ts release   records the current document as released (once per version)
 *
 * scripts/check-generated.sh runs `check`, so CI rejects an incompatible change.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { OPENAPI } from "../provider/src/service/openapi";
import { compareVersions, incompatibilities } from "../provider/src/service/openapi-compat";

const dir = path.resolve(__dirname, "../provider/src/service/openapi-released");
const current = JSON.parse(JSON.stringify(OPENAPI)) as Record<string, unknown> & { info: { version: string } };
const text = `${JSON.stringify(current, null, 2)}\n`;
const released = fs.existsSync(dir)
  ? fs
      .readdirSync(dir)
      .filter((f) => f.endsWith(".json"))
      .map((f) => ({ version: f.replace(/\.json$/, ""), file: path.join(dir, f) }))
      .sort((a, b) => compareVersions(a.version, b.version))
  : [];

/** The document without its prose (descriptions and summaries may improve within a version). */
const shape = (doc: unknown): string =>
  JSON.stringify(doc, (k, v) => (k === "description" || k === "summary" ? undefined : v));

function check(): number {
  const problems: string[] = [];
  for (const r of released) {
    const doc = fs.readFileSync(r.file, "utf8");
    if (r.version === current.info.version && shape(JSON.parse(doc)) !== shape(current)) problems.push(`version ${r.version} is released and its document changed: raise info.version in provider/src/service/openapi.ts (then 'npx tsx scripts/openapi.ts release')`);
    for (const p of incompatibilities(JSON.parse(doc), current)) problems.push(`breaks clients of ${r.version}: ${p}`);
  }
  const newest = released[released.length - 1];
  if (newest && compareVersions(current.info.version, newest.version) < 0) problems.push(`info.version ${current.info.version} is older than the released ${newest.version}`);
  if (problems.length) {
    process.stderr.write(`the OpenAPI document is not compatible with its releases:\n${problems.map((p) => `  - ${p}`).join("\n")}\n`);
    return 1;
  }
  process.stdout.write(`OpenAPI ${current.info.version}: compatible with ${released.length ? released.map((r) => r.version).join(", ") : "no released version yet"}\n`);
  return 0;
}

function release(): number {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${current.info.version}.json`);
  if (fs.existsSync(file)) {
    if (fs.readFileSync(file, "utf8") === text) return 0;
    process.stderr.write(`${current.info.version} is released already with another document: raise info.version\n`);
    return 1;
  }
  if (check() !== 0) return 1;
  fs.writeFileSync(file, text);
  process.stdout.write(`released OpenAPI ${current.info.version}: ${path.relative(process.cwd(), file)}\n`);
  return 0;
}

const cmd = process.argv[2];
process.exitCode = cmd === "check" ? check() : cmd === "release" ? release() : (process.stderr.write("usage: npx tsx scripts/openapi.ts check|release\n"), 2);
