/**
 * The worker processes of the inventory concurrency tests (concurrency.test.ts,
 * network-concurrency.test.ts): test-only, imported by nothing else.
 *
 * The test file is also the worker: `startRace` runs it again with `node --require tsx/cjs` and
 * the environment of `WorkerEnv`; the file sees its own flag and calls `serveRace` instead of
 * defining tests. Every worker opens the inventory on its own, says it is ready, and waits for
 * "go"; `startRace` sends "go" to all of them at once (a barrier), so their requests really
 * overlap. Each worker prints its outcomes as one JSON line and exits.
 *
 * No jest here: the file is compiled with the provider.
 */
import { ChildProcess, spawn } from "child_process";
import * as path from "path";
import * as readline from "readline";
import { isBaremetalError } from "../core/errors";
import { openInventory } from "./index";
import { Inventory } from "./types";

/** A request's failure, as the worker reports it. */
export interface Refusal {
  code: string;
  messageId?: string;
  message: string;
}

/** Each outcome: what names the request, what it got or its refusal, and when it ended (ms after "go"). */
export type RaceOutcome<K, G> = K & (G | Refusal) & { ms: number };

/**
 * In the worker: open the inventory (INVENTORY_URL), wait for "go", fire the WORKER_REQUESTS
 * requests at once, print the outcomes. `request(inv, j, index)` names request j of worker
 * `index` and returns what runs it. Exits the process with 1 if the worker itself fails.
 */
export function serveRace<K extends object, G extends object>(
  request: (inv: Inventory, j: number, index: string) => [K, () => Promise<G>],
): void {
  serve(request).catch((err) => {
    process.stderr.write(`worker failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}

async function serve<K extends object, G extends object>(request: (inv: Inventory, j: number, index: string) => [K, () => Promise<G>]): Promise<void> {
  const [url, index, count] = [process.env.INVENTORY_URL!, process.env.WORKER_INDEX!, Number(process.env.WORKER_REQUESTS)];
  const inv = await openInventory(url);
  const lines = readline.createInterface({ input: process.stdin });
  const go = new Promise<void>((resolve) => lines.on("line", (l) => l.trim() === "go" && resolve()));
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  await go;
  const started = Date.now();
  const outcomes = await Promise.all(
    Array.from({ length: count }, async (_, j): Promise<RaceOutcome<K, G>> => {
      const [key, run] = request(inv, j, index);
      try {
        const got = await run();
        return { ...key, ...got, ms: Date.now() - started };
      } catch (err) {
        if (!isBaremetalError(err)) return { ...key, code: "not-a-baremetal-error", message: String(err), ms: Date.now() - started };
        return { ...key, code: err.code, messageId: err.messageId, message: err.message, ms: Date.now() - started };
      }
    }),
  );
  await inv.close();
  lines.close();
  process.stdout.write(`${JSON.stringify({ outcomes })}\n`);
}

const tsxCjs = (() => {
  try {
    return require.resolve("tsx/cjs");
  } catch {
    return path.resolve(__dirname, "../../../node_modules/tsx/dist/cjs/index.cjs");
  }
})();

interface Child<O> {
  proc: ChildProcess;
  ready: Promise<void>;
  done: Promise<O[]>;
}

function startWorker<O>(file: string, env: NodeJS.ProcessEnv, index: number): Child<O> {
  const proc = spawn(process.execPath, ["--require", tsxCjs, file], {
    env: { ...process.env, ...env, WORKER_INDEX: String(index) },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr!.on("data", (d) => (stderr += d));
  const lines = readline.createInterface({ input: proc.stdout! });
  let markReady!: () => void;
  const ready = new Promise<void>((r) => (markReady = r));
  const done = new Promise<O[]>((resolve, reject) => {
    let outcomes: O[] | undefined;
    lines.on("line", (l) => {
      const msg = JSON.parse(l) as { ready?: boolean; outcomes?: O[] };
      if (msg.ready) markReady();
      if (msg.outcomes) outcomes = msg.outcomes;
    });
    proc.once("exit", (code) => (code === 0 && outcomes ? resolve(outcomes) : reject(new Error(`worker ${index} exited ${code}: ${stderr}`))));
  });
  done.catch(() => markReady()); // a worker dying before "ready" must not hang the barrier
  return { proc, ready, done };
}

/**
 * Runs `workers` copies of the test file `file` as workers (with `flag`=1 set, and `env`) against
 * the inventory at `url`, `requests` requests each; releases them together and returns every
 * outcome with the time from "go" to the last one. Workers still running on a failure are killed.
 */
export async function startRace<O>(
  file: string,
  flag: string,
  url: string,
  workers: number,
  requests: number,
  env: NodeJS.ProcessEnv = {},
): Promise<{ outcomes: O[]; elapsed: number }> {
  const workerEnv = { ...env, [flag]: "1", INVENTORY_URL: url, WORKER_REQUESTS: String(requests) };
  const children = Array.from({ length: workers }, (_, i) => startWorker<O>(file, workerEnv, i));
  try {
    await Promise.all(children.map((c) => c.ready));
    const t0 = Date.now();
    for (const c of children) c.proc.stdin!.write("go\n");
    const outcomes = (await Promise.all(children.map((c) => c.done))).flat();
    return { outcomes, elapsed: Date.now() - t0 };
  } finally {
    for (const c of children) if (c.proc.exitCode === null && c.proc.pid !== undefined) c.proc.kill("SIGKILL");
  }
}
