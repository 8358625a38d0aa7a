/**
 * Concurrency proof for tenant networks: many stacks creating networks and allocating addresses at
 * the same time, each its own process (as each `pulumi up` runs its own provider), never get the
 * same VLAN on a fabric nor the same address in a subnet.
 *
 * WORKERS child processes, each opening the inventory on its own and firing its requests at once,
 * all released together by a barrier:
 *
 * - VLANs: NETWORKS_PER_WORKER `createNetwork`s each against one pool of VLAN_POOL VLANs (fewer
 *   than the creates, so the pool runs out mid-way);
 * - addresses: ADDRESSES_PER_WORKER `allocateAddress`es each (distinct owners) against one /26
 *   whose allocation pool holds ADDRESS_POOL addresses.
 *
 * Every request wants the lowest free VLAN or address: maximum contention, not a lucky spread.
 *
 * This file is also the worker: run directly (`node --require tsx/cjs network-concurrency.test.ts`)
 * with INVENTORY_NETWORK_WORKER=1 it creates or allocates instead of defining tests (see race-workers.ts).
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { openInventory, sqliteUrl, SUBNET_EXHAUSTED, VLAN_POOL_EXHAUSTED } from "./index";
import { serveRace, startRace } from "./race-workers";

const WORKERS = 8;
const NETWORKS_PER_WORKER = 10;
const VLAN_POOL = 64;
const VLAN_FIRST = 100;
const ADDRESSES_PER_WORKER = 30;
const ADDRESS_POOL = 60;

type Operation = "vlan" | "address";

interface Outcome {
  /** The network id, or the address owner. */
  key: string;
  /** The VLAN (as text) or the address that was obtained. */
  got?: string;
  code?: string;
  messageId?: string;
  message?: string;
  ms: number;
}

if (require.main === module && process.env.INVENTORY_NETWORK_WORKER === "1") {
  const op = process.env.WORKER_OPERATION as Operation;
  serveRace((inv, j, index) => {
    const key = `w${index}-${op === "vlan" ? "net" : "att"}${j}`;
    return [
      { key },
      async () => ({
        got:
          op === "vlan"
            ? String((await inv.createNetwork({ id: key, name: key, owner: `project-${index}`, fabric: "dc1", pool: "tenant" })).vlan)
            : (await inv.allocateAddress({ subnetId: "s26", owner: key })).address,
      }),
    ];
  });
} else {
  // Imported lazily: the worker needs neither jest nor the PostgreSQL harness.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { startPostgres } = require("../../../test/harness/postgres") as typeof import("../../../test/harness/postgres");

  /** Starts the workers, releases them together, and returns every outcome with the elapsed time. */
  function race(url: string, op: Operation, requests: number): Promise<{ outcomes: Outcome[]; elapsed: number }> {
    return startRace<Outcome>(__filename, "INVENTORY_NETWORK_WORKER", url, WORKERS, requests, { WORKER_OPERATION: op });
  }

  /** The values obtained more than once, with who got them. */
  function duplicates(won: Outcome[]): [string, string[]][] {
    const by = new Map<string, string[]>();
    for (const o of won) by.set(o.got!, [...(by.get(o.got!) ?? []), o.key]);
    return [...by].filter(([, keys]) => keys.length > 1);
  }

  async function vlanRace(url: string, label: string): Promise<void> {
    const seed = await openInventory(url);
    try {
      await seed.defineVlanPool({ name: "tenant", fabric: "dc1", ranges: [{ from: VLAN_FIRST, to: VLAN_FIRST + VLAN_POOL - 1 }] });
      const { outcomes, elapsed } = await race(url, "vlan", NETWORKS_PER_WORKER);
      const won = outcomes.filter((o) => o.got !== undefined);
      const lost = outcomes.filter((o) => o.got === undefined);
      const doubles = duplicates(won);
      console.log(
        `${label}: ${WORKERS} processes x ${NETWORKS_PER_WORKER} createNetwork against a pool of ${VLAN_POOL} VLANs in ${elapsed} ms: ` +
          `${won.length} created, ${lost.length} refused (${lost.filter((o) => o.messageId === VLAN_POOL_EXHAUSTED).length} with the pool exhausted), duplicate VLANs: ${doubles.length}`,
      );

      expect(outcomes).toHaveLength(WORKERS * NETWORKS_PER_WORKER);
      expect(doubles).toEqual([]);
      expect(won).toHaveLength(VLAN_POOL);
      expect(lost).toHaveLength(WORKERS * NETWORKS_PER_WORKER - VLAN_POOL);
      // Exactly the pool, every VLAN of it once.
      expect(won.map((o) => Number(o.got)).sort((a, b) => a - b)).toEqual(Array.from({ length: VLAN_POOL }, (_, i) => VLAN_FIRST + i));
      for (const o of lost) {
        expect(o).toMatchObject({ code: "conflict", messageId: VLAN_POOL_EXHAUSTED });
        expect(o.message).toMatch(new RegExp(`VLAN pool "tenant" \\(fabric "dc1", VLANs ${VLAN_FIRST}-${VLAN_FIRST + VLAN_POOL - 1}\\) is exhausted: ${VLAN_POOL} of its ${VLAN_POOL} VLANs are in use`));
      }

      // The database agrees.
      const networks = await seed.listNetworks({ fabric: "dc1" });
      expect(networks).toHaveLength(VLAN_POOL);
      expect(new Set(networks.map((n) => n.vlan)).size).toBe(VLAN_POOL);
      const byId = new Map(networks.map((n) => [n.id, n]));
      for (const o of won) expect(byId.get(o.key)).toMatchObject({ vlan: Number(o.got), pool: "tenant" });
      expect(await seed.getVlanPool("tenant")).toMatchObject({ size: VLAN_POOL, inUse: VLAN_POOL });
    } finally {
      await seed.close();
    }
  }

  async function addressRace(url: string, label: string): Promise<void> {
    const seed = await openInventory(url);
    try {
      await seed.defineVlanPool({ name: "tenant", fabric: "dc1", ranges: [{ from: VLAN_FIRST, to: VLAN_FIRST + VLAN_POOL - 1 }] });
      await seed.createNetwork({ id: "net", name: "net", owner: "project", fabric: "dc1" });
      // /26: .0 network, .1 gateway, .2-.61 the pool (60 addresses), .62 outside it, .63 broadcast.
      await seed.addSubnet({ id: "s26", networkId: "net", cidr: "10.20.0.0/26", gateway: "10.20.0.1", allocationPools: [{ start: "10.20.0.2", end: "10.20.0.61" }] });
      const { outcomes, elapsed } = await race(url, "address", ADDRESSES_PER_WORKER);
      const won = outcomes.filter((o) => o.got !== undefined);
      const lost = outcomes.filter((o) => o.got === undefined);
      const doubles = duplicates(won);
      console.log(
        `${label}: ${WORKERS} processes x ${ADDRESSES_PER_WORKER} allocateAddress against a /26 with a pool of ${ADDRESS_POOL} in ${elapsed} ms: ` +
          `${won.length} allocated, ${lost.length} refused (${lost.filter((o) => o.messageId === SUBNET_EXHAUSTED).length} with the subnet exhausted), duplicate addresses: ${doubles.length}`,
      );

      expect(outcomes).toHaveLength(WORKERS * ADDRESSES_PER_WORKER);
      expect(doubles).toEqual([]);
      expect(won).toHaveLength(ADDRESS_POOL);
      expect(lost).toHaveLength(WORKERS * ADDRESSES_PER_WORKER - ADDRESS_POOL);
      expect(new Set(won.map((o) => o.got))).toEqual(new Set(Array.from({ length: ADDRESS_POOL }, (_, i) => `10.20.0.${i + 2}`)));
      for (const o of lost) {
        expect(o).toMatchObject({ code: "conflict", messageId: SUBNET_EXHAUSTED });
        expect(o.message).toMatch(new RegExp(`subnet "s26" \\(10\\.20\\.0\\.0/26\\) .*: ${ADDRESS_POOL} of its ${ADDRESS_POOL} addresses are in use`));
      }

      // The database agrees, and every winner asking again gets its address back.
      const rows = await seed.listAddresses("s26");
      expect(rows).toHaveLength(ADDRESS_POOL);
      const byOwner = new Map(rows.map((r) => [r.owner, r.address]));
      for (const o of won) {
        expect(byOwner.get(o.key)).toBe(o.got);
        expect((await seed.allocateAddress({ subnetId: "s26", owner: o.key })).address).toBe(o.got);
      }
    } finally {
      await seed.close();
    }
  }

  describe("tenant networks from separate processes never share a VLAN or an address", () => {
    let dir: string;
    beforeAll(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), "inventory-network-race-"));
    });
    afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

    test(`SQLite file: ${WORKERS} processes x ${NETWORKS_PER_WORKER} createNetwork, ${VLAN_POOL} VLANs`, async () => {
      await vlanRace(sqliteUrl(path.join(dir, "vlans.db")), "sqlite");
    }, 120000);

    test(`SQLite file: ${WORKERS} processes x ${ADDRESSES_PER_WORKER} allocateAddress, ${ADDRESS_POOL} addresses`, async () => {
      await addressRace(sqliteUrl(path.join(dir, "addresses.db")), "sqlite");
    }, 120000);

    test(`PostgreSQL: ${WORKERS} processes x ${NETWORKS_PER_WORKER} createNetwork, ${VLAN_POOL} VLANs; x ${ADDRESSES_PER_WORKER} allocateAddress, ${ADDRESS_POOL} addresses`, async () => {
      const pg = await startPostgres();
      try {
        await vlanRace(await pg.database(), "postgres");
        await addressRace(await pg.database(), "postgres");
      } finally {
        await pg.stop();
      }
    }, 180000);
  });
}
