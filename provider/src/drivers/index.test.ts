import { RedfishMockupServer } from "../../../test/fixtures/redfish-mockup-server";
import { bmcDriverFor } from ".";
import type { RedfishDriver } from "./redfish/driver";

describe("hardware types", () => {
  let bmc: RedfishMockupServer;
  beforeAll(async () => {
    bmc = await RedfishMockupServer.start({ username: "admin", password: "pw" });
  });
  afterAll(() => bmc.close());

  it("holds the per-BMC concurrency limit across concurrent operations (our fake BMC counts requests in flight)", async () => {
    const conn = { address: bmc.url, username: "admin", password: "pw", verifyTls: true, requestTimeoutMs: 10_000, maxConcurrency: 2 };
    // Five operations at once, as Pulumi runs them, each with its own driver and session.
    bmc.failNext(1000, { delayMs: 30, method: "GET", path: /\/Systems\/437XR1138R2$/ });
    const drivers = Array.from({ length: 5 }, () => bmcDriverFor(conn));
    await Promise.all(drivers.map((d) => d.facts("437XR1138R2")));
    await Promise.all(drivers.map((d) => d.close()));
    bmc.clearFaults();
    expect(bmc.maxInFlight).toBeLessThanOrEqual(2);
    expect(bmc.maxInFlight).toBeGreaterThanOrEqual(1);
  });

  it("sends at most one change to a BMC at a time, across concurrent operations", async () => {
    const conn = { address: bmc.url, username: "admin", password: "pw", verifyTls: true, requestTimeoutMs: 10_000, maxConcurrency: 4 };
    const RESET = "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset";
    bmc.failNext(1000, { delayMs: 40, method: "POST", path: RESET });
    const drivers = Array.from({ length: 4 }, () => bmcDriverFor(conn)) as RedfishDriver[];
    await Promise.all(drivers.map((d) => d.client.resetSystem("437XR1138R2", "ForceRestart")));
    await Promise.all(drivers.map((d) => d.close()));
    bmc.clearFaults();
    expect(bmc.requests("POST", RESET)).toHaveLength(4);
    expect(bmc.maxMutationsInFlight).toBe(1);
  });

  it("names bmc.address for an address no driver serves", () => {
    expect(() => bmcDriverFor({ address: "ipmi://10.0.0.5", verifyTls: true, requestTimeoutMs: 1000, maxConcurrency: 1 })).toThrow(
      expect.objectContaining({ property: "bmc.address", code: "validation" }),
    );
  });
});
