/**
 * Counts the Redfish requests of one Node create, refresh (read) and no-op update against
 * sushy-tools (OpenStack's Redfish emulator, fake driver), by method, through the driver's request
 * hook. Prints figures; asserts nothing.
 *
 *   npx tsx bench/node-requests.ts            (after scripts/bootstrap.sh; sources nothing itself)
 */
import { applyDefaults } from "../provider/src/core/fields";
import { configFields, toProviderConfig, withEnvironment } from "../provider/src/core/config";
import { callerOf } from "../provider/src/core/auth";
import { Policy } from "../provider/src/core/policy";
import type { OperationContext } from "../provider/src/core/resource";
import { openInventory } from "../provider/src/inventory";
import { nodeRequestHooks, nodeResource } from "../provider/src/resources/compute/node";
import { startSushy } from "../test/harness/sushy";

async function main(): Promise<void> {
  const sushy = await startSushy({ systems: 1, username: "admin", password: "bench-password" });
  const log: Array<{ method: string; path: string; ms: number }> = [];
  nodeRequestHooks.onRequest = (e) => log.push(e);
  const config = toProviderConfig(applyDefaults(configFields, withEnvironment({ bmcUsername: "admin", bmcPassword: "bench-password" }, {})));
  const inventory = openInventory("sqlite::memory:");
  const ctx: OperationContext = {
    config,
    caller: callerOf(config),
    policy: Policy.defaults(),
    inventory: () => inventory,
    name: "bench-node",
    urn: "urn:pulumi:bench::bench::baremetal:compute:Node::bench-node",
    signal: new AbortController().signal,
    deadline: Date.now() + 300_000,
    progress: () => undefined,
    warn: () => undefined,
  };
  const inputs = { bmc: { address: sushy.url, systemId: sushy.systemIds[0] }, powerState: "on", bootDevice: "pxe" };
  const measure = async <T>(label: string, op: () => Promise<T>): Promise<T> => {
    log.length = 0;
    // Werkzeug colours the lines of non-2xx answers, so match the request, not the quote before it.
    const seenBySushy = () => (sushy.log().match(/(GET|POST|PATCH|PUT|DELETE) \/redfish\S* HTTP/g) ?? []).length;
    const sushyBefore = seenBySushy();
    const t0 = process.hrtime.bigint();
    const result = await op();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const byMethod = log.reduce<Record<string, number>>((acc, e) => ((acc[e.method] = (acc[e.method] ?? 0) + 1), acc), {});
    const mutating = log.filter((e) => e.method !== "GET").length;
    // The emulator's own access log counts too: a cross-check that does not trust our hook.
    await new Promise((r) => setTimeout(r, 300)); // let the emulator's log lines arrive
    const sushyCount = seenBySushy() - sushyBefore;
    console.log(
      `${label.padEnd(38)} requests=${String(log.length).padStart(3)} (sushy log: ${sushyCount}) mutating=${mutating} ${JSON.stringify(byMethod)} wall=${ms.toFixed(0)} ms`,
    );
    return result;
  };
  try {
    console.log(`sushy-tools fake driver at ${sushy.url}, system ${sushy.systemIds[0]}`);
    const created = await measure("create (fresh system as sushy has it)", () => nodeResource.create(ctx, inputs));
    await measure("create (already on, pxe already set)", () => nodeResource.create(ctx, inputs));
    await measure("read (refresh)", () => nodeResource.read(ctx, created.id, inputs, created.outputs));
    await measure("update (no change)", () => nodeResource.update(ctx, created.id, inputs, inputs, created.outputs));
    await measure("update (power off, wait)", () => nodeResource.update(ctx, created.id, inputs, { ...inputs, powerState: "off" }, created.outputs));
    await measure("create (power on from off, wait)", () => nodeResource.create(ctx, inputs));
  } finally {
    await (await inventory).close();
    await sushy.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
