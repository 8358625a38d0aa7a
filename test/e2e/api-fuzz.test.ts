/**
 * A fuzzing pass over the tenant-facing service's API (issue 8): schemathesis (PyPI, installed by
 * scripts/bootstrap.sh into its own venv, BAREMETAL_SCHEMATHESIS) generates requests for every
 * operation of the OpenAPI document the service serves (/v1/openapi.json): valid and invalid
 * bodies, parameters and headers, plus requests without the token. It runs as tenant project-b
 * while project-a owns objects of its own and leases node 1.
 *
 * Proven: no answer of the service is a 5xx (schemathesis' not_a_server_error, and the service's own
 * request log); the answers match the document (response_schema_conformance and the other checks
 * named in CHECKS); no policy bypass: project-a's key and volume keep their ETags, node 1 keeps its
 * power state in the lab, and the audit log holds no `done` record of project-b's token on any of
 * them. The operations that take an object selector or a node id are fuzzed with project-a's
 * objects and node 1 as their target (schemathesis' per-operation `parameters`), so every generated
 * get/update/delete/power call of those types is a cross-tenant attempt.
 *
 * The token never reaches a command line: schemathesis reads it from its environment through a
 * config file of our own (mode 0600, in the test's temp dir) that names only the variable.
 *
 * What is EMULATED: the machines (our lab BMC). What is REAL: the service binary, its SQLite
 * inventory, the local key manager, the file storage backend and schemathesis.
 */
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { openInventory } from "../../provider/src/inventory";
import type { Inventory } from "../../provider/src/inventory/types";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { tail, track, untrack } from "../harness/processes";
import { type IssuedToken, labServiceSettings, type ServiceInstance, startService } from "../harness/service";

jest.setTimeout(600_000);

const ST = process.env.BAREMETAL_SCHEMATHESIS ?? "";
const KEY = "baremetal:keys:EncryptionKey";
const VOLUME = "baremetal:storage:Volume";

/**
 * The checks schemathesis runs: all of them but
 * - positive_data_acceptance: it expects a 2xx for every schema-valid request, but most valid
 *   requests here are refused on purpose (another project's object: 403; an object that does not
 *   exist: 404; a tenant creating a node: 403; a volume that may only grow: 400 from the handler's
 *   own rules, which a JSON Schema cannot say);
 * - use_after_free / ensure_resource_availability: they follow links between operations that the
 *   document does not declare (no OpenAPI links), so they have nothing to test (stateful phase off).
 */
const CHECKS = [
  "not_a_server_error",
  "status_code_conformance",
  "content_type_conformance",
  "response_headers_conformance",
  "response_schema_conformance",
  "negative_data_rejection",
  "missing_required_header",
  "unsupported_method",
  "allow_header_conformance",
  "ignored_auth",
];

interface HarEntry {
  request: { method: string; url: string };
  response: { status: number };
}

describe("the service API under schemathesis: no 5xx, answers as documented, no policy bypass (lab emulated; service, inventory, fuzzer real)", () => {
  let lab: Lab;
  let svc: ServiceInstance;
  let inv: Inventory;
  let dir: string;
  const tok: Record<"a" | "b", IssuedToken> = {} as never;
  const nodeIds: string[] = [];
  const own: Record<string, { path: string; uuid: string; id: string; etag: string }> = {};
  let powerBefore: string;
  let auditBefore: number;
  let auditBeforeA: number;

  const api = async (who: "a" | "b", method: string, p: string, body?: unknown) => {
    const r = await fetch(`${svc.url}${p}`, { method, headers: { authorization: `Bearer ${tok[who].token}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    return { status: r.status, etag: r.headers.get("etag"), body: (text ? JSON.parse(text) : {}) as Record<string, any> }; // eslint-disable-line @typescript-eslint/no-explicit-any
  };
  const allAudit = () => inv.listAudit({ limit: 1_000_000 });
  const node1Power = () => lab.bmcs[0].system(lab.info.nodes[0].systemId).powerState;

  beforeAll(async () => {
    if (!ST || !fs.existsSync(ST)) throw new Error(`no schemathesis at ${JSON.stringify(ST)}: run scripts/bootstrap.sh schemathesis and source scripts/env.sh`);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "api-fuzz-"));
    lab = await startLab({ systems: 2, bootSeconds: 0, powerState: "Off" });
    for (const n of lab.info.nodes) nodeIds.push(new URL(n.systemUri, n.address).href);
    const inventoryUrl = `sqlite://${path.join(dir, "inventory.db")}`;
    inv = await openInventory(inventoryUrl);
    await inv.upsertNode({ id: nodeIds[0], name: "fuzz-node-1", owner: "operator-proj", lessee: "project-a" });
    await inv.upsertNode({ id: nodeIds[1], name: "fuzz-node-2", owner: "operator-proj", lessee: "project-b" });
    svc = await startService(dir, labServiceSettings(lab, inventoryUrl, dir, randomBytes(32).toString("base64")));
    // A rate far above what the fuzzer sends: the rate limit is not what this test is about.
    tok.a = await svc.token("fuzz-a", "project-a", ["manager", "member"], { ratePerMinute: 1_000_000 });
    tok.b = await svc.token("fuzz-b", "project-b", ["manager", "member"], { ratePerMinute: 1_000_000 });

    // project-a's objects, whose every byte must survive project-b's fuzzing.
    for (const [type, name, inputs] of [[KEY, "a-key", {}], [VOLUME, "a-vol", { sizeGib: 1 }]] as const) {
      const made = await api("a", "POST", `/v1/resources/${type}`, { inputs, name });
      expect([type, made.status]).toEqual([type, 201]);
      own[type] = { path: `/v1/resources/${type}/${made.body.uuid}`, uuid: made.body.uuid, id: made.body.id, etag: made.etag! };
    }
    powerBefore = node1Power();
    auditBefore = (await allAudit()).length;
    auditBeforeA = (await inv.listAudit({ projectId: "project-a", limit: 1_000_000 })).length;
  }, 300_000);

  afterAll(async () => {
    await svc?.stop();
    await inv?.close();
    await lab?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Runs `st run` with the config file; resolves with its exit code and output. */
  const schemathesis = (args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> =>
    new Promise((resolve, reject) => {
      const child = spawn(ST, args, { cwd: dir, env: { ...process.env, ...env, NO_COLOR: "1", COLUMNS: "160" }, stdio: ["ignore", "pipe", "pipe"] });
      track(child);
      let out = "";
      child.stdout!.on("data", (b: Buffer) => (out += b.toString()));
      child.stderr!.on("data", (b: Buffer) => (out += b.toString()));
      child.once("error", reject);
      child.once("exit", (code) => {
        untrack(child);
        resolve({ code, out });
      });
    });

  it("finds no 5xx, no answer off the document and no policy bypass; every request is counted", async () => {
    const started = Date.now();
    const har = path.join(dir, "fuzz.har");
    const junit = path.join(dir, "fuzz.junit.xml");
    const opId = (type: string) => type.split(":").slice(1).map((p) => p[0].toUpperCase() + p.slice(1)).join("");
    const bySel = (type: string) => ["get", "update", "delete"].map((verb) => `"${verb}${opId(type)}"`).join(", ");
    // By UUID: schemathesis puts a path parameter's value in the path as given (a handler id with a
    // slash would not reach the endpoint), hence also the node id URL-encoded here.
    const config = [
      `[auth.openapi.bearer]`,
      `bearer = "\${BMT_FUZZ_TOKEN}"`,
      ``,
      `[generation]`,
      `database = "none"`,
      ``,
      `[[operations]]`,
      `include-operation-id = [${bySel(KEY)}]`,
      `parameters = { sel = ${JSON.stringify(own[KEY].uuid)} }`,
      ``,
      `[[operations]]`,
      `include-operation-id = [${bySel(VOLUME)}]`,
      `parameters = { sel = ${JSON.stringify(own[VOLUME].uuid)} }`,
      ``,
      `[[operations]]`,
      `include-operation-id = "setNodePower"`,
      `parameters = { id = ${JSON.stringify(encodeURIComponent(nodeIds[0]))} }`,
      ``,
    ].join("\n");
    const configFile = path.join(dir, "schemathesis.toml");
    fs.writeFileSync(configFile, config, { mode: 0o600 });
    const args = [
      "--config-file", configFile, "run", `${svc.url}/v1/openapi.json`,
      "--checks", CHECKS.join(","),
      "--phases", "examples,coverage,fuzzing",
      "--max-examples", "25",
      "--max-time", "150",
      "--request-timeout", "20",
      // One worker: with two, hypothesis' lambda-source cache (not thread-safe) failed inside schemathesis
      // once ("AST constructor recursion depth mismatch"), a fuzzer error that is no finding about the API.
      "--workers", "1",
      "--seed", String(Number(process.env.BAREMETAL_FUZZ_SEED ?? Date.now() % 1_000_000)),
      "--report", "har,junit",
      "--report-har-path", har,
      "--report-junit-path", junit,
      "--continue-on-failure",
    ];
    const run = await schemathesis(args, { BMT_FUZZ_TOKEN: tok.b.token });
    const seconds = (Date.now() - started) / 1000;
    // The summary, without anything secret (schemathesis masks the Authorization header; check anyway).
    const summary = tail(run.out, 80);
    // BAREMETAL_FUZZ_OUT=<file>: keep schemathesis' whole output (each failure with its request and a curl line to replay it).
    if (process.env.BAREMETAL_FUZZ_OUT) fs.writeFileSync(process.env.BAREMETAL_FUZZ_OUT, run.out.split(tok.b.token).join("<token of project-b>"), { mode: 0o600 });
    expect(summary).not.toContain(tok.b.token.slice(29));

    const entries = (JSON.parse(fs.readFileSync(har, "utf8")) as { log: { entries: HarEntry[] } }).log.entries;
    const byClass: Record<string, number> = {};
    for (const e of entries) byClass[`${Math.floor(e.response.status / 100)}xx`] = (byClass[`${Math.floor(e.response.status / 100)}xx`] ?? 0) + 1;
    const served = svc.log();
    const testcases = (fs.readFileSync(junit, "utf8").match(/<testcase /g) ?? []).length;
    console.log(
      `schemathesis: ${entries.length} requests over ${testcases} operations in ${seconds.toFixed(1)} s (exit ${run.code}); answers ${JSON.stringify(byClass)}; service log: ${served.length} requests\n${summary}`,
    );

    expect(entries.length).toBeGreaterThan(500);
    // No bypass: project-a's objects are as they were, node 1's power too.
    for (const o of Object.values(own)) {
      const now = await api("a", "GET", o.path);
      expect({ path: o.path, status: now.status, etag: now.etag }).toEqual({ path: o.path, status: 200, etag: o.etag });
    }
    for (const type of [KEY, VOLUME]) {
      expect((await api("a", "GET", `/v1/resources/${type}`)).body.items.map((i: { uuid: string }) => i.uuid)).toEqual([own[type].uuid]);
    }
    expect(node1Power()).toBe(powerBefore);
    const audit = await allAudit();
    expect(audit.length).toBeGreaterThan(auditBefore);
    expect((await inv.listAudit({ projectId: "project-a", limit: 1_000_000 })).length).toBe(auditBeforeA);
    const targets = new Set([...Object.values(own).map((o) => o.uuid), nodeIds[0]]);
    const touched = audit.filter((e) => e.tokenId === tok.b.id && [...targets].some((t) => (e.target ?? "").includes(t)));
    // The fuzzer did try each of them (refused), and nothing of project-b's on them went through.
    for (const t of targets) expect([t, touched.some((e) => (e.target ?? "").includes(t))]).toEqual([t, true]);
    expect(touched.filter((e) => e.outcome === "done").map((e) => `${e.operation} ${e.target}`)).toEqual([]);
    expect(new Set(touched.map((e) => e.outcome))).toEqual(new Set(["denied"]));
    // No 5xx: in what schemathesis saw, and in what the service logged (its own failures carry `error`).
    expect(served.filter((l) => Number(l.status) >= 500).map((l) => `${l.method} ${l.path} -> ${l.status} ${l.errorCode}: ${l.error}`)).toEqual([]);
    expect(entries.filter((e) => e.response.status >= 500).map((e) => `${e.request.method} ${e.request.url} -> ${e.response.status}`)).toEqual([]);
    // Schemathesis found nothing (its summary above says what, when it did).
    expect({ exit: run.code, summary: run.code === 0 ? "" : summary }).toEqual({ exit: 0, summary: "" });
  });
});
