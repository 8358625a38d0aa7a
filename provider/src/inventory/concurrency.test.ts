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
 * with INVENTORY_CLAIM_WORKER=1 it claims instead of defining tests (see race-workers.ts).
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { NO_MATCH, openInventory, sqliteUrl } from "./index";
import { serveRace, startRace } from "./race-workers";

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

if (require.main === module && process.env.INVENTORY_CLAIM_WORKER === "1") {
  // The worker: claim j of every worker uses the same allocation name.
  serveRace((inv, j, index) => {
    const allocationId = `w${index}-c${j}`;
    return [{ allocationId }, async () => ({ nodeId: (await inv.claimNode({ allocationId, name: `alloc-${j}` })).node.id })];
  });
} else {
  // Imported lazily: the worker needs neither jest nor the PostgreSQL harness.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { startPostgres } = require("../../../test/harness/postgres") as typeof import("../../../test/harness/postgres");

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
      const { outcomes, elapsed } = await startRace<Outcome>(__filename, "INVENTORY_CLAIM_WORKER", url, WORKERS, CLAIMS_PER_WORKER);
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
