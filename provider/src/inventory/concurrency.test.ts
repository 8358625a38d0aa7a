/**
 * Concurrency proof: many stacks allocating from one pool at the same time, each its own process
 * (as each `pulumi up` runs its own provider), never get the same node.
 *
 * WORKERS child processes, each opening the inventory on its own and firing CLAIMS_PER_WORKER
 * claims at once, all released together by a barrier, against POOL free nodes (fewer than the
 * claims, so the pool runs out mid-way). Claim j of every worker uses the same allocation name,
 * so all workers prefer the same node for it: maximum contention, not a lucky spread.
 *
 * This file is also the worker: run directly (`node --require tsx/cjs concurrency.test.ts`)
 * with INVENTORY_CLAIM_WORKER=1 it claims instead of defining tests.
 */
import { ChildProcess, spawn } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as readline from "readline";
import { isBaremetalError } from "../core/errors";
import { openInventory, NO_MATCH, sqliteUrl } from "./index";

const WORKERS = 8;
const CLAIMS_PER_WORKER = 25;
const POOL = 150;

interface Outcome {
  allocationId: string;
  nodeId?: string;
  code?: string;
  messageId?: string;
  message?: string;
  ms: number;
}

/** The worker: open, say ready, wait for "go", claim, print the outcomes as one JSON line. */
async function worker(): Promise<void> {
  const [url, index, count] = [process.env.INVENTORY_URL!, process.env.WORKER_INDEX!, Number(process.env.WORKER_CLAIMS)];
  const inv = await openInventory(url);
  const lines = readline.createInterface({ input: process.stdin });
  const go = new Promise<void>((resolve) => lines.on("line", (l) => l.trim() === "go" && resolve()));
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  await go;
  const started = Date.now();
  const outcomes = await Promise.all(
    Array.from({ length: count }, async (_, j): Promise<Outcome> => {
      const allocationId = `w${index}-c${j}`;
      try {
        const c = await inv.claimNode({ allocationId, name: `alloc-${j}` });
        return { allocationId, nodeId: c.node.id, ms: Date.now() - started };
      } catch (err) {
        if (!isBaremetalError(err)) return { allocationId, code: "not-a-baremetal-error", message: String(err), ms: Date.now() - started };
        return { allocationId, code: err.code, messageId: err.messageId, message: err.message, ms: Date.now() - started };
      }
    }),
  );
  await inv.close();
  lines.close();
  process.stdout.write(`${JSON.stringify({ outcomes })}\n`);
}

if (require.main === module && process.env.INVENTORY_CLAIM_WORKER === "1") {
  worker().catch((err) => {
    process.stderr.write(`worker failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
} else {
  // Imported lazily: the worker needs neither jest nor the PostgreSQL harness.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { startPostgres } = require("../../../test/harness/postgres") as typeof import("../../../test/harness/postgres");

  const tsxCjs = (() => {
    try {
      return require.resolve("tsx/cjs");
    } catch {
      return path.resolve(__dirname, "../../../node_modules/tsx/dist/cjs/index.cjs");
    }
  })();

  interface Child {
    proc: ChildProcess;
    ready: Promise<void>;
    done: Promise<Outcome[]>;
  }

  function startWorker(url: string, index: number): Child {
    const proc = spawn(process.execPath, ["--require", tsxCjs, __filename], {
      env: { ...process.env, INVENTORY_CLAIM_WORKER: "1", INVENTORY_URL: url, WORKER_INDEX: String(index), WORKER_CLAIMS: String(CLAIMS_PER_WORKER) },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stderr = "";
    proc.stderr!.on("data", (d) => (stderr += d));
    const lines = readline.createInterface({ input: proc.stdout! });
    let markReady!: () => void;
    const ready = new Promise<void>((r) => (markReady = r));
    const done = new Promise<Outcome[]>((resolve, reject) => {
      let outcomes: Outcome[] | undefined;
      lines.on("line", (l) => {
        const msg = JSON.parse(l) as { ready?: boolean; outcomes?: Outcome[] };
        if (msg.ready) markReady();
        if (msg.outcomes) outcomes = msg.outcomes;
      });
      proc.once("exit", (code) =>
        code === 0 && outcomes ? resolve(outcomes) : reject(new Error(`worker ${index} exited ${code}: ${stderr}`)),
      );
    });
    done.catch(() => markReady()); // a worker dying before "ready" must not hang the barrier
    return { proc, ready, done };
  }

  async function race(url: string, label: string): Promise<void> {
    const seed = await openInventory(url);
    try {
      for (let i = 0; i < POOL; i++) {
        await seed.upsertNode({
          id: `https://bmc-${i % 10}.lab/redfish/v1/Systems/${i}`,
          name: `node-${String(i).padStart(3, "0")}`,
          resourceClass: "std",
          provisionState: "available",
        });
      }
      const children = Array.from({ length: WORKERS }, (_, i) => startWorker(url, i));
      try {
        await Promise.all(children.map((c) => c.ready));
        const t0 = Date.now();
        for (const c of children) c.proc.stdin!.write("go\n");
        const outcomes = (await Promise.all(children.map((c) => c.done))).flat();
        const elapsed = Date.now() - t0;

        const won = outcomes.filter((o) => o.nodeId !== undefined);
        const lost = outcomes.filter((o) => o.nodeId === undefined);
        const perNode = new Map<string, string[]>();
        for (const o of won) perNode.set(o.nodeId!, [...(perNode.get(o.nodeId!) ?? []), o.allocationId]);
        const doubles = [...perNode].filter(([, ids]) => ids.length > 1);
        console.log(
          `${label}: ${WORKERS} processes x ${CLAIMS_PER_WORKER} claims against ${POOL} nodes in ${elapsed} ms: ` +
            `${won.length} claimed, ${lost.length} refused (${lost.filter((o) => o.messageId === NO_MATCH).length} with no match), double allocations: ${doubles.length}`,
        );

        expect(outcomes).toHaveLength(WORKERS * CLAIMS_PER_WORKER);
        expect(doubles).toEqual([]);
        expect(won).toHaveLength(POOL);
        expect(lost).toHaveLength(WORKERS * CLAIMS_PER_WORKER - POOL);
        for (const o of lost) {
          expect(o).toMatchObject({ code: "conflict", messageId: NO_MATCH });
          // Refused because the pool was exhausted, not because of contention.
          expect(o.message).toMatch(new RegExp(`${POOL} nodes match the restrictions but none is free: ${POOL} already claimed`));
        }

        // The database agrees: one active allocation per node, pointing both ways.
        const nodes = await seed.listNodes();
        const active = await seed.listAllocations({ state: "active" });
        expect(active).toHaveLength(POOL);
        expect(new Set(active.map((a) => a.nodeId)).size).toBe(POOL);
        const byId = new Map(nodes.map((n) => [n.id, n]));
        for (const a of active) expect(byId.get(a.nodeId)!.allocationId).toBe(a.id);
        expect(nodes.every((n) => n.allocationId !== undefined)).toBe(true);
        for (const o of won) expect(byId.get(o.nodeId!)!.allocationId).toBe(o.allocationId);
      } finally {
        for (const c of children) if (c.proc.exitCode === null && c.proc.pid !== undefined) c.proc.kill("SIGKILL");
      }
    } finally {
      await seed.close();
    }
  }

  describe("claims from separate processes never share a node", () => {
    test(`SQLite file: ${WORKERS} processes x ${CLAIMS_PER_WORKER} claims, ${POOL} nodes`, async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "inventory-race-"));
      try {
        await race(sqliteUrl(path.join(dir, "inventory.db")), "sqlite");
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }, 120000);

    test(`PostgreSQL: ${WORKERS} processes x ${CLAIMS_PER_WORKER} claims, ${POOL} nodes`, async () => {
      const pg = await startPostgres();
      try {
        await race(await pg.database(), "postgres");
      } finally {
        await pg.stop();
      }
    }, 120000);
  });
}
