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

  it("shares one session per BMC among concurrent operations and logs it out when the last one ends", async () => {
    const conn = { address: bmc.url, username: "admin", password: "pw", verifyTls: true, requestTimeoutMs: 10_000, maxConcurrency: 4 };
    const before = { logins: bmc.requests("POST", "/redfish/v1/SessionService/Sessions").length, logouts: bmc.requests("DELETE").length };
    bmc.failNext(1000, { delayMs: 20, method: "GET", path: /\/Systems\/437XR1138R2$/ });
    const drivers = Array.from({ length: 6 }, () => bmcDriverFor(conn));
    await Promise.all(drivers.map((d) => d.facts("437XR1138R2")));
    expect(bmc.requests("POST", "/redfish/v1/SessionService/Sessions").length - before.logins).toBe(1);
    // Five leave: the session stays for the sixth; the last one out logs it out.
    await Promise.all(drivers.slice(0, 5).map((d) => d.close()));
    expect(bmc.requests("DELETE").length - before.logouts).toBe(0);
    await drivers[5].close();
    bmc.clearFaults();
    expect(bmc.requests("DELETE").length - before.logouts).toBe(1);
    expect(bmc.sessionCount).toBe(0);
    // A later operation logs in afresh.
    const later = bmcDriverFor(conn);
    await later.facts("437XR1138R2");
    await later.close();
    expect(bmc.requests("POST", "/redfish/v1/SessionService/Sessions").length - before.logins).toBe(2);
  });

  it("renews a shared session that expired, once for all its users", async () => {
    const conn = { address: bmc.url, username: "admin", password: "pw", verifyTls: true, requestTimeoutMs: 10_000, maxConcurrency: 4 };
    const drivers = Array.from({ length: 3 }, () => bmcDriverFor(conn));
    await Promise.all(drivers.map((d) => d.facts("437XR1138R2")));
    const logins = bmc.requests("POST", "/redfish/v1/SessionService/Sessions").length;
    bmc.expireSessions();
    await Promise.all(drivers.map((d) => d.facts("437XR1138R2")));
    expect(bmc.requests("POST", "/redfish/v1/SessionService/Sessions").length - logins).toBe(1);
    await Promise.all(drivers.map((d) => d.close()));
    expect(bmc.sessionCount).toBe(0);
  });

  it("names bmc.address for an address no driver serves", () => {
    expect(() => bmcDriverFor({ address: "ipmi://10.0.0.5", verifyTls: true, requestTimeoutMs: 1000, maxConcurrency: 1 })).toThrow(
      expect.objectContaining({ property: "bmc.address", code: "validation" }),
    );
  });
});
