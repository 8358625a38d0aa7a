/**
 * Load on the tenant-facing service's node listing (GET /v1/nodes), with one and with two
 * instances of the built `baremetal serve` sharing one PostgreSQL inventory.
 *
 *   npx tsx bench/service-load.ts [--seconds 10] [--connections 32]
 *
 * (Run `npm run build` first if provider/src changed since provider/dist was built: the service is
 * the built CLI; a note is printed when a provider/src file is newer than the build.)
 *
 * Set-up: a throwaway PostgreSQL (test/harness/postgres.ts) holding 1000 nodes spread over 50
 * projects (owner project-NN, 20 each; 250 of them leased to another project, 5 out and 5 in per
 * project, so each project sees 25 nodes), written through the Inventory API; one token per
 * project (roles member, reader) and one operator token (admin), issued with `baremetal token
 * create` through test/harness/service.ts, with a rate of 10^7 per minute so the per-token rate
 * limit is not what is measured (429s are counted anyway).
 *
 * Before any load, one request per token on every instance is checked: a project's listing holds
 * exactly the nodes it owns or leases (and the operator's all 1000), so the figures are those of a
 * correct API.
 *
 * Load: autocannon (programmatic API), --connections connections on loopback for --seconds each,
 * requests rotating over the 50 project tokens (autocannon's `requests` array: every connection
 * walks the 50 tokens in turn). Scenarios: default page size and ?limit=1000, each against one
 * instance, then against two instances: two autocannon runs at the same time, one per instance,
 * each with half the connections (the same offered concurrency as the one-instance run), summing
 * requests/s, bytes/s and counts and taking the worse of the two p50/p99. Then the operator's
 * token (all 1000 nodes visible) on one instance, for scale. For each run: requests/s, p50/p99
 * latency, non-2xx and 429 counts, bytes/s, CPU of each service process, of PostgreSQL (postmaster
 * and its backends) and of this process (autocannon), in % of one core over the run, and how busy
 * the whole machine was (all cores, any process: other work on a shared machine shows there).
 * Each instance keeps the inventory's default PostgreSQL pool (4 connections).
 *
 * The load generator, PostgreSQL and the services share this machine's cores: read the CPU
 * columns before reading the two-instance figures as the service's scaling. Prints figures;
 * asserts nothing about time. Every process it starts is stopped by PID; its temp dirs are removed.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { openInventory } from "../provider/src/inventory";
import { startPostgres, type PostgresInstance } from "../test/harness/postgres";
import { type ServiceInstance, startService } from "../test/harness/service";

// autocannon 9 ships no type declarations: the part of its API this uses.
interface CannonRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
}
interface Histogram {
  average: number;
  p50: number;
  p99: number;
  total: number;
}
interface CannonResult {
  requests: Histogram;
  latency: Histogram;
  throughput: Histogram;
  duration: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  statusCodeStats: Record<string, { count: number }>;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const autocannon = require("autocannon") as (opts: { url: string; connections: number; duration: number; requests: CannonRequest[] }) => Promise<CannonResult>;

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const SECONDS = arg("seconds", 10);
const CONNECTIONS = arg("connections", 32);
const NODES = 1000;
const PROJECTS = 50;
const RATE = 10_000_000;
const CLI = path.resolve(__dirname, "../provider/dist/src/cli/main.js");

const project = (p: number) => `project-${String(p).padStart(2, "0")}`;
/** Node i: owned by project i mod 50; in every 4th block of 50 nodes leased to the project 7 on. */
function nodeOf(i: number): { id: string; name: string; owner: string; lessee?: string } {
  const p = i % PROJECTS;
  const leased = Math.floor(i / PROJECTS) % 4 === 0;
  return {
    id: `https://bmc-${String(Math.floor(i / 100)).padStart(2, "0")}.lab.example/redfish/v1/Systems/n${String(i).padStart(4, "0")}`,
    name: `node-${String(i).padStart(4, "0")}`,
    owner: project(p),
    ...(leased ? { lessee: project((p + 7) % PROJECTS) } : {}),
  };
}
const ALL = Array.from({ length: NODES }, (_, i) => nodeOf(i));
const visibleTo = (proj: string) => new Set(ALL.filter((n) => n.owner === proj || n.lessee === proj).map((n) => n.id));

// ---- CPU of processes (utime + stime from /proc, in clock ticks) ---------------------------------

const TICKS = 100; // USER_HZ on Linux
function ticksOf(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
  } catch {
    return 0;
  }
}
/** The postmaster and its live children (backends, walwriter...), by PID. */
function postgresTicks(pgPid: number): Map<number, number> {
  const m = new Map([[pgPid, ticksOf(pgPid)]]);
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pgPid) m.set(Number(d), ticksOf(Number(d)));
    } catch {
      /* gone */
    }
  }
  return m;
}
/** The machine's busy and total jiffies over all cores (/proc/stat), to show what else ran. */
function machineTicks(): { busy: number; total: number } {
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - f[3] - f[4], total }; // minus idle and iowait
}
function cpuMeter(services: ServiceInstance[], pg: PostgresInstance) {
  const t0 = performance.now();
  const m0 = machineTicks();
  const svc0 = services.map((s) => ticksOf(s.pid));
  const pg0 = postgresTicks(pg.pid);
  const self0 = process.cpuUsage();
  return () => {
    const secs = (performance.now() - t0) / 1000;
    const pct = (ticks: number) => `${((ticks / TICKS / secs) * 100).toFixed(0)}%`;
    const pg1 = postgresTicks(pg.pid);
    let pgTicks = 0;
    for (const [pid, t] of pg1) pgTicks += t - (pg0.get(pid) ?? 0);
    const self = process.cpuUsage(self0);
    const m1 = machineTicks();
    return {
      machine: `${(((m1.busy - m0.busy) / Math.max(1, m1.total - m0.total)) * 100).toFixed(0)}%`,
      services: services.map((s, i) => pct(ticksOf(s.pid) - svc0[i])).join(" + "),
      postgres: pct(pgTicks),
      autocannon: `${(((self.user + self.system) / 1e6 / secs) * 100).toFixed(0)}%`,
    };
  };
}

// ---- the runs ------------------------------------------------------------------------------------

interface Row {
  label: string;
  reqPerSec: number;
  p50: number;
  p99: number;
  total: number;
  non2xx: number;
  tooMany: number;
  errors: number;
  bytesPerSec: number;
  cpu: ReturnType<ReturnType<typeof cpuMeter>>;
}

const requestsFor = (tokens: string[], query: string): CannonRequest[] =>
  tokens.map((t) => ({ method: "GET", path: `/v1/nodes${query}`, headers: { authorization: `Bearer ${t}` } }));

async function load(label: string, targets: ServiceInstance[], pg: PostgresInstance, tokens: string[], query: string): Promise<Row> {
  const meter = cpuMeter(targets, pg);
  const per = Math.max(1, Math.floor(CONNECTIONS / targets.length));
  const results = await Promise.all(targets.map((s) => autocannon({ url: s.url, connections: per, duration: SECONDS, requests: requestsFor(tokens, query) })));
  const cpu = meter();
  const sum = (f: (r: CannonResult) => number) => results.reduce((a, r) => a + f(r), 0);
  return {
    label,
    reqPerSec: sum((r) => r.requests.total / r.duration),
    p50: Math.max(...results.map((r) => r.latency.p50)),
    p99: Math.max(...results.map((r) => r.latency.p99)),
    total: sum((r) => r.requests.total),
    non2xx: sum((r) => r.non2xx),
    tooMany: sum((r) => r.statusCodeStats["429"]?.count ?? 0),
    errors: sum((r) => r.errors + r.timeouts),
    bytesPerSec: sum((r) => r.throughput.total / r.duration),
    cpu,
  };
}

function printRows(rows: Row[]): void {
  const head = ["scenario", "req/s", "p50 ms", "p99 ms", "requests", "non-2xx", "429", "errors", "MB/s", "CPU service(s)", "CPU postgres", "CPU autocannon", "machine busy"];
  const cells = rows.map((r) => [
    r.label,
    r.reqPerSec.toFixed(0),
    String(r.p50),
    String(r.p99),
    String(r.total),
    String(r.non2xx),
    String(r.tooMany),
    String(r.errors),
    (r.bytesPerSec / 1e6).toFixed(2),
    r.cpu.services,
    r.cpu.postgres,
    r.cpu.autocannon,
    r.cpu.machine,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const line = (c: string[]) => c.map((x, i) => (i === 0 ? x.padEnd(widths[i]) : x.padStart(widths[i]))).join("  ");
  console.log(line(head));
  for (const c of cells) console.log(line(c));
}

// ---- correctness before load ----------------------------------------------------------------------

interface Page {
  items: Array<{ id: string; owner?: string; lessee?: string }>;
  nextPageToken?: string;
}
async function list(svc: ServiceInstance, token: string, query: string): Promise<Page> {
  const res = await fetch(`${svc.url}/v1/nodes${query}`, { headers: { authorization: `Bearer ${token}` } });
  if (res.status !== 200) throw new Error(`GET /v1/nodes${query} answered ${res.status} (${(await res.text()).slice(0, 200)})`);
  return (await res.json()) as Page;
}
/** One request per token: each project's listing is exactly what it owns or leases. */
async function checkListings(svc: ServiceInstance, projectTokens: string[], operatorToken: string): Promise<void> {
  for (let p = 0; p < PROJECTS; p++) {
    const page = await list(svc, projectTokens[p], "?limit=1000");
    const want = visibleTo(project(p));
    const got = new Set(page.items.map((n) => n.id));
    const foreign = page.items.filter((n) => n.owner !== project(p) && n.lessee !== project(p));
    if (got.size !== page.items.length || got.size !== want.size || [...want].some((id) => !got.has(id)) || foreign.length || page.nextPageToken) {
      throw new Error(`${project(p)}'s listing on ${svc.url} is wrong: ${got.size} nodes (want ${want.size}), ${foreign.length} of another project, nextPageToken ${page.nextPageToken ? "set" : "unset"}`);
    }
  }
  const all = await list(svc, operatorToken, "?limit=1000");
  if (all.items.length !== NODES || all.nextPageToken) throw new Error(`the operator's listing holds ${all.items.length} nodes, want ${NODES}`);
}

function checkBuild(): void {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  const built = fs.statSync(CLI).mtimeMs;
  const stale: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts") && !e.name.endsWith(".test.ts") && fs.statSync(p).mtimeMs > built) stale.push(path.relative(process.cwd(), p));
    }
  };
  walk(path.resolve(__dirname, "../provider/src"));
  if (stale.length) {
    console.log(`NOTE: provider/dist is older than ${stale.slice(0, 5).join(", ")}${stale.length > 5 ? `, ... (${stale.length} files)` : ""}: these figures are the build's, not the working tree's (\`npm run build\` first)`);
  }
}

async function main(): Promise<void> {
  checkBuild();
  console.log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "?"}, load ${os.loadavg().map((x) => x.toFixed(1)).join(" ")}, node ${process.version}`);
  console.log(`${NODES} nodes, ${PROJECTS} projects; ${CONNECTIONS} connections, ${SECONDS} s per run`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "service-load-"));
  const started: ServiceInstance[] = [];
  let pg: PostgresInstance | undefined;
  try {
    pg = await startPostgres();
    const url = await pg.database();
    const inv = await openInventory(url);
    try {
      const t = performance.now();
      for (const n of ALL) await inv.upsertNode(n);
      console.log(`inventory: ${NODES} nodes written in ${((performance.now() - t) / 1000).toFixed(1)} s (${ALL.filter((n) => n.lessee).length} leased)`);
    } finally {
      await inv.close();
    }

    const one = await startService(dir, { inventoryUrl: url });
    started.push(one);
    const two = await one.another();
    started.push(two);
    const projectTokens: string[] = [];
    for (let p = 0; p < PROJECTS; p++) projectTokens.push((await one.token(`tenant-${p}`, project(p), ["member", "reader"], { ratePerMinute: RATE })).token);
    const operatorToken = (await one.token("operator", undefined, ["admin"], { ratePerMinute: RATE })).token;
    console.log(`tokens: ${PROJECTS} project tokens and 1 operator token, ${RATE} requests/min each`);

    for (const s of [one, two]) await checkListings(s, projectTokens, operatorToken);
    console.log(`correctness before load: each of the ${PROJECTS} projects lists exactly the nodes it owns or leases, the operator all ${NODES}, on both instances`);
    const sample = 7;
    for (const q of ["", "?limit=1000"]) {
      const page = await list(one, projectTokens[sample], q);
      const owned = page.items.filter((n) => n.owner === project(sample)).length;
      console.log(`  ${project(sample)} GET /v1/nodes${q}: ${page.items.length} nodes on the page (${owned} owned, ${page.items.length - owned} leased to it), nextPageToken ${page.nextPageToken ? "set" : "none"}`);
    }
    for (const q of ["", "?limit=1000"]) {
      const page = await list(one, operatorToken, q);
      console.log(`  operator GET /v1/nodes${q}: ${page.items.length} nodes on the page, nextPageToken ${page.nextPageToken ? "set" : "none"}`);
    }

    // Warm-up (JIT, connection pools), not measured.
    await Promise.all([one, two].map((s) => autocannon({ url: s.url, connections: 4, duration: 2, requests: requestsFor(projectTokens, "") })));

    const rows: Row[] = [];
    for (const [name, q] of [["default page", ""], ["limit=1000", "?limit=1000"]] as const) {
      rows.push(await load(`50 tokens, ${name}, 1 instance`, [one], pg, projectTokens, q));
      rows.push(await load(`50 tokens, ${name}, 2 instances`, [one, two], pg, projectTokens, q));
    }
    for (const [name, q] of [["default page (100)", ""], ["limit=1000", "?limit=1000"]] as const) {
      rows.push(await load(`operator, ${name}, 1 instance`, [one], pg, [operatorToken], q));
    }
    console.log("");
    printRows(rows);
    console.log(
      "\n2 instances: two autocannon runs at once, one per instance, each with half the connections; req/s, bytes and counts summed, p50/p99 the worse of the two. CPU in % of one core over the run; machine busy: all cores, every process (other work on the machine included).",
    );
  } finally {
    for (const s of started.reverse()) await s.stop();
    await pg?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
