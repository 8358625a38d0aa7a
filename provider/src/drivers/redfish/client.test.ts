import * as fs from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as path from "node:path";
import { inspect } from "node:util";
import { BaremetalError, describeError, isBaremetalError } from "../../core/errors";
import { DMTF_MOCKUP_DIR, RedfishMockupServer } from "../../../../test/fixtures/redfish-mockup-server";
import { RedfishClient, RedfishClientOptions, alreadyApplied } from "./client";
import { parseRedfishError, parseRetryAfter } from "./errors";
import type { ComputerSystem } from "./types";

const SYSTEM_ID = "437XR1138R2";
const SYSTEM = `/redfish/v1/Systems/${SYSTEM_ID}`;
const RESET = `${SYSTEM}/Actions/ComputerSystem.Reset`;
const USER = "admin";
const PASSWORD = "s3cret-Pa55word!";

/** The mockup's own data, read straight from its JSON, to check facts against. */
const mockupSystem = JSON.parse(
  fs.readFileSync(path.join(DMTF_MOCKUP_DIR, "Systems", SYSTEM_ID, "index.json"), "utf8"),
) as ComputerSystem;

async function caught(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (isBaremetalError(e)) return e;
    throw new Error(`expected a BaremetalError, got ${inspect(e)}`);
  }
  throw new Error("expected a rejection");
}

describe("RedfishClient against our fake BMC (DMTF public-rackmount1 mockup)", () => {
  let server: RedfishMockupServer;
  const clients: RedfishClient[] = [];

  /** Retries as in production, but with short waits so tests stay fast. */
  const FAST_RETRIES = { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 20, maxRetryAfterMs: 5_000, busyBudgetMs: 2_000 };

  function client(extra: Partial<RedfishClientOptions> = {}): RedfishClient {
    const c = new RedfishClient({ endpoint: server.url, username: USER, password: PASSWORD, retryPolicy: FAST_RETRIES, ...extra });
    clients.push(c);
    return c;
  }

  beforeAll(async () => {
    server = await RedfishMockupServer.start({ username: USER, password: PASSWORD });
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  });

  afterAll(async () => {
    await server.close();
  });

  beforeEach(() => {
    // Put the system back to the mockup's state.
    server.update(SYSTEM, (s) => {
      s.PowerState = "On";
      s.Boot = JSON.parse(JSON.stringify(mockupSystem.Boot));
    });
    server.resetStats();
  });

  test("service root and systems listing", async () => {
    const c = client();
    const root = await c.serviceRoot();
    expect(root.RedfishVersion).toBe("1.15.0");
    expect(root.Systems?.["@odata.id"]).toBe("/redfish/v1/Systems");
    expect(await c.listSystems()).toEqual([SYSTEM]);
  });

  test("endpoint with a trailing /redfish/v1/ is tolerated, paths may be relative", async () => {
    const c = client({ endpoint: `${server.url}/redfish/v1/` });
    const { body } = await c.get<{ Id: string }>(`Systems/${SYSTEM_ID}`);
    expect(body.Id).toBe(SYSTEM_ID);
    const { system } = await c.getSystem(SYSTEM);
    expect(system.Id).toBe(SYSTEM_ID);
  });

  test("getSystemFacts returns the mockup system's facts", async () => {
    const facts = await client().getSystemFacts(SYSTEM_ID);
    expect(facts).toEqual({
      id: SYSTEM_ID,
      odataId: SYSTEM,
      manufacturer: "Contoso",
      model: "3500",
      serialNumber: "437XR1138R2",
      sku: "8675309",
      uuid: "38947555-7742-3448-3784-823347823834",
      powerState: "On",
      cpuCount: 2,
      cpuModel: "Multi-Core Intel(R) Xeon(R) processor 7xxx Series",
      memoryGiB: 96,
      // 12446A3B0411 (and VLAN1 on top of it), 12446A3B8890 (MACAddress overrides its permanent one);
      // ToManager is the host-to-BMC interface and is left out.
      macAddresses: ["12:44:6a:3b:04:11", "aa:bb:cc:dd:ee:00"],
      bootMode: "UEFI",
      bootSourceOverrideTarget: "Pxe",
      bootSourceOverrideEnabled: "Once",
      allowedBootTargets: mockupSystem.Boot?.["BootSourceOverrideTarget@Redfish.AllowableValues"],
      allowedResetTypes: mockupSystem.Actions?.["#ComputerSystem.Reset"]?.["ResetType@Redfish.AllowableValues"],
    });
    // Values as in the mockup JSON itself.
    expect(facts.manufacturer).toBe(mockupSystem.Manufacturer);
    expect(facts.cpuCount).toBe(mockupSystem.ProcessorSummary?.Count);
    expect(facts.memoryGiB).toBe(mockupSystem.MemorySummary?.TotalSystemMemoryGiB);
    expect(facts.allowedResetTypes).toEqual(["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn", "PushPowerButton"]);
  });

  test("a session is created once, reused, logged out with DELETE, and logout is idempotent", async () => {
    const c = client();
    await c.listSystems();
    await c.getSystem(SYSTEM_ID);
    await c.getSystemFacts(SYSTEM_ID);
    const logins = server.requests("POST", "/redfish/v1/SessionService/Sessions");
    expect(logins).toHaveLength(1);
    expect(logins[0].status).toBe(201);
    expect(server.sessionCount).toBe(1);
    // Everything after the unauthenticated root read and the login used the token.
    const after = server.log.slice(server.log.indexOf(logins[0]) + 1);
    expect(after.length).toBeGreaterThan(5);
    expect(after.every((r) => r.auth === "session")).toBe(true);
    // Neither the password nor the token shows when the client itself is logged.
    const shown = inspect(c, { depth: 10, showHidden: true });
    expect(shown).not.toContain(PASSWORD);
    expect(shown).not.toMatch(/[0-9a-f]{32}/);

    await c.logout();
    const deletes = server.requests("DELETE");
    expect(deletes).toHaveLength(1);
    expect(deletes[0].path).toMatch(/^\/redfish\/v1\/SessionService\/Sessions\/\d+$/);
    expect(deletes[0].status).toBe(204);
    expect(server.sessionCount).toBe(0);

    await c.logout();
    expect(server.requests("DELETE")).toHaveLength(1);
  });

  test("concurrent first requests share one login", async () => {
    const c = client();
    await Promise.all([c.getSystem(SYSTEM_ID), c.listSystems(), c.get("Chassis"), c.get("Managers")]);
    expect(server.requests("POST", "/redfish/v1/SessionService/Sessions")).toHaveLength(1);
  });

  test("an expired session is re-created once and the request goes through", async () => {
    const c = client();
    await c.getSystem(SYSTEM_ID);
    server.expireSessions();
    const { system } = await c.getSystem(SYSTEM_ID);
    expect(system.Id).toBe(SYSTEM_ID);
    expect(server.requests("POST", "/redfish/v1/SessionService/Sessions")).toHaveLength(2);
    expect(server.requests("GET", SYSTEM).map((r) => r.status)).toEqual([200, 401, 200]);
  });

  test("auth basic never makes a session", async () => {
    const c = client({ auth: "basic" });
    await c.getSystem(SYSTEM_ID);
    expect(server.requests("POST")).toHaveLength(0);
    expect(server.log.every((r) => r.auth === "basic")).toBe(true);
  });

  test("wrong password: code auth, HTTP 401, and the password appears nowhere", async () => {
    const wrong = "not-the-Right-one-42";
    for (const auth of ["auto", "basic"] as const) {
      const e = await caught(client({ password: wrong, auth }).getSystem(SYSTEM_ID));
      expect(e.code).toBe("auth");
      expect(e.httpStatus).toBe(401);
      expect(e.message).toMatch(/refused the credentials/);
      for (const text of [e.message, describeError(e), inspect(e, { depth: 10 }), JSON.stringify(e), e.details.join(" ")]) {
        expect(text).not.toContain(wrong);
        expect(text).not.toContain(Buffer.from(`${USER}:${wrong}`).toString("base64"));
      }
    }
  });

  test("wrong password carries the Redfish MessageId and ExtendedInfo", async () => {
    const e = await caught(client({ password: "nope" }).listSystems());
    expect(e.messageId).toBe("Base.1.15.0.ResourceAtUriUnauthorized");
    expect(e.details.join(" ")).toMatch(/authorization error/);
  });

  test("resetSystem with a value outside AllowableValues: validation listing them, no POST", async () => {
    const e = await caught(client().resetSystem(SYSTEM_ID, "PowerCycle"));
    expect(e.code).toBe("validation");
    expect(e.property).toBe("resetType");
    expect(e.message).toContain("On, ForceOff, GracefulShutdown, GracefulRestart, ForceRestart, Nmi, ForceOn, PushPowerButton");
    expect(server.requests("POST", SYSTEM)).toHaveLength(0);

    const near = await caught(client().resetSystem(SYSTEM_ID, "forceoff"));
    expect(near.message).toContain('did you mean "ForceOff"');
  });

  test("resetSystem with an allowed value posts it", async () => {
    await client().resetSystem(SYSTEM_ID, "ForceRestart");
    const posts = server.requests("POST", RESET);
    expect(posts).toHaveLength(1);
    expect(posts[0].body).toEqual({ ResetType: "ForceRestart" });
    expect(posts[0].status).toBe(204);
  });

  test("setPower On->Off: one POST changes the state; a second call sends none", async () => {
    const c = client();
    expect(await c.setPower(SYSTEM_ID, "Off")).toBe(true);
    expect(server.requests("POST", RESET)).toHaveLength(1);
    expect(server.requests("POST", RESET)[0].body).toEqual({ ResetType: "ForceOff" });
    expect((await c.getSystem(SYSTEM_ID)).system.PowerState).toBe("Off");

    expect(await c.setPower(SYSTEM_ID, "Off")).toBe(false);
    expect(server.requests("POST", RESET)).toHaveLength(1);

    expect(await c.setPower(SYSTEM_ID, "On")).toBe(true);
    expect(server.requests("POST", RESET)[1].body).toEqual({ ResetType: "On" });
    expect(await c.setPower(SYSTEM_ID, "Off", { graceful: true })).toBe(true);
    expect(server.requests("POST", RESET)[2].body).toEqual({ ResetType: "GracefulShutdown" });
    expect(server.resource<ComputerSystem>(SYSTEM).PowerState).toBe("Off");
  });

  test("setBootOverride PATCHes only what differs, with If-Match, and GET shows it", async () => {
    const c = client();
    expect(await c.setBootOverride(SYSTEM_ID, "Hdd", "Continuous", "UEFI")).toBe(true);
    const patches = server.requests("PATCH", SYSTEM);
    expect(patches).toHaveLength(1);
    expect(patches[0].status).toBe(204);
    expect(patches[0].ifMatch).toMatch(/^".+"$/);
    // Mode is UEFI already: not sent.
    expect(patches[0].body).toEqual({ Boot: { BootSourceOverrideTarget: "Hdd", BootSourceOverrideEnabled: "Continuous" } });
    const facts = await c.getSystemFacts(SYSTEM_ID);
    expect([facts.bootSourceOverrideTarget, facts.bootSourceOverrideEnabled, facts.bootMode]).toEqual(["Hdd", "Continuous", "UEFI"]);

    expect(await c.setBootOverride(SYSTEM_ID, "Hdd", "Continuous")).toBe(false);
    expect(server.requests("PATCH")).toHaveLength(1);
  });

  test("setBootOverride with a target outside AllowableValues: validation, no PATCH", async () => {
    const e = await caught(client().setBootOverride(SYSTEM_ID, "UefiHttp", "Once"));
    expect(e.code).toBe("validation");
    expect(e.property).toBe("bootSourceOverrideTarget");
    expect(e.message).toContain("None, Pxe, Cd, Usb, Hdd, BiosSetup, Utilities, Diags, SDCard, UefiTarget");
    expect(server.requests("PATCH")).toHaveLength(0);
  });

  test("stale ETag: the client re-reads once and patches again when still needed", async () => {
    const c = client();
    // Between the client's GET and its PATCH, somebody else changes the system.
    server.beforeNext("PATCH", SYSTEM, () => server.update(SYSTEM, (s) => (s.AssetTag = "changed-behind-your-back")));
    expect(await c.setBootOverride(SYSTEM_ID, "Cd", "Once")).toBe(true);
    const patches = server.requests("PATCH", SYSTEM);
    expect(patches.map((r) => r.status)).toEqual([412, 204]);
    expect(patches[0].ifMatch).not.toBe(patches[1].ifMatch);
    // Exactly one re-read between the two PATCHes.
    const i412 = server.log.indexOf(patches[0]);
    const i204 = server.log.indexOf(patches[1]);
    expect(server.log.slice(i412 + 1, i204).map((r) => `${r.method} ${r.path}`)).toEqual([`GET ${SYSTEM}`]);
    expect(server.resource<ComputerSystem>(SYSTEM).Boot?.BootSourceOverrideTarget).toBe("Cd");
  });

  test("stale ETag: no second PATCH when the re-read shows the wanted values", async () => {
    const c = client();
    server.beforeNext("PATCH", SYSTEM, () =>
      server.update(SYSTEM, (s) => {
        (s.Boot as Record<string, unknown>).BootSourceOverrideTarget = "Usb";
      }),
    );
    expect(await c.setBootOverride(SYSTEM_ID, "Usb", "Once")).toBe(true);
    expect(server.requests("PATCH", SYSTEM).map((r) => r.status)).toEqual([412]);
  });

  test("patch without an ETag uses the one of the last GET, or reads it", async () => {
    const c = client();
    await c.patch(SYSTEM, { AssetTag: "rack-7" });
    const [get, patch] = server.log.filter((r) => r.path === SYSTEM);
    expect(get.method).toBe("GET");
    expect(patch.ifMatch).toBeDefined();
    expect(server.resource<{ AssetTag: string }>(SYSTEM).AssetTag).toBe("rack-7");
  });

  test("a rejected PATCH is a backend error with the Redfish message", async () => {
    const e = await caught(client().patch(SYSTEM, { Model: "9000" }));
    expect(e.code).toBe("backend");
    expect(e.httpStatus).toBe(400);
    expect(e.messageId).toBe("Base.1.15.0.PropertyNotWritable");
    expect(e.details[0]).toMatch(/read only/);
  });

  test("503 with a Retry-After longer than we wait: transient with retryAfterSeconds, not retried", async () => {
    const c = client();
    await c.serviceRoot(); // logged in
    server.failNext(1, { status: 503, retryAfter: 7 });
    const e = await caught(c.getSystem(SYSTEM_ID));
    expect(e.code).toBe("transient");
    expect(e.httpStatus).toBe(503);
    expect(e.retryAfterSeconds).toBe(7);
    expect(e.messageId).toBe("Base.1.15.0.ServiceTemporarilyUnavailable");
    expect(e.details.length).toBeGreaterThan(0);
    expect(server.requests("GET", SYSTEM)).toHaveLength(1);
    expect((await c.getSystem(SYSTEM_ID)).system.Id).toBe(SYSTEM_ID);
  });

  test("503 is retried after the BMC's Retry-After, and the retry is reported", async () => {
    const retries: Array<{ attempt: number; delayMs: number; reason: string }> = [];
    const c = client({ onRetry: (r) => retries.push(r) });
    await c.serviceRoot();
    server.failNext(1, { status: 503, retryAfter: 1, path: SYSTEM });
    const started = Date.now();
    expect((await c.getSystem(SYSTEM_ID)).system.Id).toBe(SYSTEM_ID);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(server.requests("GET", SYSTEM)).toHaveLength(2);
    expect(retries).toEqual([expect.objectContaining({ attempt: 1, delayMs: 1000, reason: expect.stringMatching(/503.*retry in 1 s/) })]);
  });

  test("503s beyond the attempt budget fail as transient", async () => {
    const c = client();
    await c.serviceRoot();
    server.failNext(5, { status: 503, path: SYSTEM });
    expect((await caught(c.getSystem(SYSTEM_ID))).code).toBe("transient");
    expect(server.requests("GET", SYSTEM)).toHaveLength(3);
    server.clearFaults();
  });

  test("a POST answered 503 is sent again (the BMC did nothing)", async () => {
    const c = client();
    await c.getSystem(SYSTEM_ID);
    server.failNext(1, { method: "POST", path: RESET, status: 503 });
    await c.resetSystem(SYSTEM_ID, "ForceRestart");
    expect(server.requests("POST", RESET)).toHaveLength(2);
  });

  test("a POST whose connection dropped is never replayed (it may have happened)", async () => {
    const c = client();
    await c.getSystem(SYSTEM_ID);
    server.failNext(1, { method: "POST", path: RESET, drop: true });
    const e = await caught(c.resetSystem(SYSTEM_ID, "ForceRestart"));
    expect(e.code).toBe("transient");
    expect(server.requests("POST", RESET)).toHaveLength(1);
  });

  test("409 on a power action is retried until the BMC accepts it, within the busy budget", async () => {
    const c = client();
    await c.getSystem(SYSTEM_ID);
    server.failNext(4, { method: "POST", path: RESET, status: 409 });
    await c.resetSystem(SYSTEM_ID, "ForceRestart");
    // Busy answers are not bound by maxAttempts (3), only by the busy time budget.
    expect(server.requests("POST", RESET)).toHaveLength(5);
  });

  test("409 on a power action that outlasts the busy budget fails as a conflict", async () => {
    const c = client({ retryPolicy: { ...FAST_RETRIES, busyBudgetMs: 100 } });
    await c.getSystem(SYSTEM_ID);
    server.failNext(1000, { method: "POST", path: RESET, status: 409 });
    const e = await caught(c.resetSystem(SYSTEM_ID, "ForceRestart"));
    server.clearFaults();
    expect(e.code).toBe("conflict");
  });

  test("404 -> not-found, 409 -> conflict, 500 -> backend", async () => {
    const c = client();
    const nf = await caught(c.getSystem("no-such-system"));
    expect(nf.code).toBe("not-found");
    expect(nf.httpStatus).toBe(404);
    expect(nf.messageId).toBe("Base.1.15.0.ResourceMissingAtURI");

    server.failNext(1, { status: 409, path: SYSTEM });
    expect((await caught(c.getSystem(SYSTEM_ID))).code).toBe("conflict");
    // A read answered 500 is repeated (within maxAttempts); one that keeps failing is a backend error.
    server.failNext(1, { status: 500, path: SYSTEM });
    expect((await c.getSystem(SYSTEM_ID)).system.Id).toBe(SYSTEM_ID);
    server.failNext(1000, { status: 500, path: SYSTEM });
    const be = await caught(c.getSystem(SYSTEM_ID));
    server.clearFaults();
    expect(be.code).toBe("backend");
    expect(be.httpStatus).toBe(500);
  });

  test("a dropped connection on a GET is retried", async () => {
    const c = client({ auth: "basic" });
    server.failNext(1, { drop: true });
    expect((await c.getSystem(SYSTEM_ID)).system.Id).toBe(SYSTEM_ID);
  });

  test("connections that keep dropping fail as transient, naming the BMC", async () => {
    const c = client({ auth: "basic" });
    server.failNext(3, { drop: true });
    const e = await caught(c.getSystem(SYSTEM_ID));
    expect(e.code).toBe("transient");
    expect(e.message).toContain(server.url);
  });

  test("a slow answer beyond timeoutMs is a timeout (after the GET's retries)", async () => {
    const c = client({ auth: "basic", timeoutMs: 150 });
    server.failNext(3, { delayMs: 600 });
    const e = await caught(c.getSystem(SYSTEM_ID));
    expect(e.code).toBe("timeout");
    expect(e.message).toContain("150 ms");
  });

  test("the signal cancels requests", async () => {
    const ctl = new AbortController();
    const c = client({ auth: "basic", signal: ctl.signal });
    server.failNext(1, { delayMs: 2000 });
    const p = caught(c.getSystem(SYSTEM_ID));
    setTimeout(() => ctl.abort(), 50);
    expect((await p).code).toBe("cancelled");
    expect((await caught(c.getSystem(SYSTEM_ID))).code).toBe("cancelled");
  });

  test("maxConcurrency bounds the requests in flight", async () => {
    const c = client({ auth: "basic", maxConcurrency: 2 });
    server.failNext(8, { delayMs: 40 });
    await Promise.all(Array.from({ length: 8 }, () => c.get("Chassis")));
    expect(server.requests("GET", "/redfish/v1/Chassis")).toHaveLength(8);
    expect(server.maxInFlight).toBe(2);
  });

  test("onRequest sees every exchange, with status and duration", async () => {
    const events: Array<{ method: string; path: string; status: number | undefined; ms: number }> = [];
    const c = client({ onRequest: (e) => events.push(e) });
    await c.getSystemFacts(SYSTEM_ID);
    await c.setPower(SYSTEM_ID, "Off");
    await c.logout();
    expect(events).toHaveLength(server.log.length);
    expect(events.map((e) => `${e.method} ${e.path.replace(/\/$/, "")} ${e.status}`)).toEqual(
      server.log.map((r) => `${r.method} ${r.path} ${r.status}`),
    );
    expect(events.every((e) => e.ms >= 0)).toBe(true);
    expect(events.filter((e) => e.method === "POST" && e.path === RESET)).toHaveLength(1);
  });

  test("onRequest reports failed exchanges with status undefined", async () => {
    const events: Array<{ status: number | undefined }> = [];
    const c = client({ auth: "basic", onRequest: (e) => events.push(e), retryPolicy: { ...FAST_RETRIES, maxAttempts: 1 } });
    server.failNext(1, { drop: true });
    await caught(c.get("Chassis"));
    expect(events).toEqual([expect.objectContaining({ method: "GET", path: "/redfish/v1/Chassis", status: undefined })]);
  });

  test("ActionInfo: allowed ResetTypes come from @Redfish.ActionInfo", async () => {
    const s = await RedfishMockupServer.start({ username: USER, password: PASSWORD, resetActionInfo: ["On", "GracefulShutdown"] });
    try {
      const c = new RedfishClient({ endpoint: s.url, username: USER, password: PASSWORD });
      clients.push(c);
      const facts = await c.getSystemFacts(SYSTEM_ID);
      expect(facts.allowedResetTypes).toEqual(["On", "GracefulShutdown"]);
      const e = await caught(c.resetSystem(SYSTEM_ID, "ForceOff"));
      expect(e.code).toBe("validation");
      expect(e.message).toContain("allowed: On, GracefulShutdown");
      // ForceOff is not allowed: a hard power-off is refused before any POST ...
      expect((await caught(c.setPower(SYSTEM_ID, "Off"))).code).toBe("validation");
      expect(s.requests("POST", RESET)).toHaveLength(0);
      // ... a graceful one goes through.
      expect(await c.setPower(SYSTEM_ID, "Off", { graceful: true })).toBe(true);
      expect(s.requests("POST", RESET).map((r) => r.body)).toEqual([{ ResetType: "GracefulShutdown" }]);
      await c.close();
    } finally {
      await s.close();
    }
  });
});

describe("Basic auth fallback", () => {
  test.each(["absent", "post-405"] as const)("sessions %s: falls back to Basic", async (mode) => {
    const s = await RedfishMockupServer.start({ username: USER, password: PASSWORD, sessions: mode });
    const c = new RedfishClient({ endpoint: s.url, username: USER, password: PASSWORD });
    try {
      expect(await c.listSystems()).toEqual([SYSTEM]);
      const facts = await c.getSystemFacts(SYSTEM_ID);
      expect(facts.serialNumber).toBe("437XR1138R2");
      const logins = s.requests("POST", "/redfish/v1/SessionService/Sessions");
      expect(logins.map((r) => r.status)).toEqual(mode === "absent" ? [] : [405]);
      const authed = s.log.filter((r) => r.path !== "/redfish/v1" && r.method === "GET");
      expect(authed.length).toBeGreaterThan(3);
      expect(authed.every((r) => r.auth === "basic")).toBe(true);
      await c.logout(); // nothing to delete
      expect(s.requests("DELETE")).toHaveLength(0);

      const strict = new RedfishClient({ endpoint: s.url, username: USER, password: PASSWORD, auth: "session" });
      const e = await caught(strict.listSystems());
      expect(e.code).toBe("validation");
      expect(e.property).toBe("auth");
      await strict.close();
    } finally {
      await c.close();
      await s.close();
    }
  });
});

describe("connection and TLS failures", () => {
  test("connection refused (a closed port) is transient and names the endpoint", async () => {
    const port = await new Promise<number>((resolve) => {
      const srv = net.createServer();
      srv.listen(0, "127.0.0.1", () => {
        const p = (srv.address() as net.AddressInfo).port;
        srv.close(() => resolve(p));
      });
    });
    const endpoint = `http://127.0.0.1:${port}`;
    const c = new RedfishClient({ endpoint, username: USER, password: PASSWORD });
    const e = await caught(c.getSystem(SYSTEM_ID));
    expect(e.code).toBe("transient");
    expect(e.message).toContain(endpoint);
    expect(e.message).toContain("ECONNREFUSED");
    expect(inspect(e, { depth: 10 })).not.toContain(PASSWORD);
    await c.close();
  });

  test("credentials in the endpoint URL never show up in errors", async () => {
    const c = new RedfishClient({ endpoint: `http://${USER}:${encodeURIComponent(PASSWORD)}@127.0.0.1:1` });
    const e = await caught(c.listSystems());
    expect(e.code).toBe("transient");
    expect(inspect(e, { depth: 10 })).not.toContain("s3cret");
    await c.close();
  });

  describe("https with a self-signed certificate", () => {
    let s: RedfishMockupServer;
    beforeAll(async () => {
      s = await RedfishMockupServer.start({ username: USER, password: PASSWORD, https: true });
    });
    afterAll(async () => {
      await s.close();
    });

    test("verifyTls default: code tls with a hint how to fix it", async () => {
      const c = new RedfishClient({ endpoint: s.url, username: USER, password: PASSWORD });
      const e = await caught(c.listSystems());
      expect(e.code).toBe("tls");
      expect(e.message).toContain("caBundle");
      expect(e.message).toMatch(/insecure|verifyTls/);
      await c.close();
    });

    test("its certificate as caBundle: success", async () => {
      const c = new RedfishClient({ endpoint: s.url, username: USER, password: PASSWORD, caBundle: s.certPem });
      expect(await c.listSystems()).toEqual([SYSTEM]);
      await c.close();
      expect(s.requests("DELETE")).toHaveLength(1);
    });

    test("verifyTls false: success", async () => {
      const c = new RedfishClient({ endpoint: s.url, username: USER, password: PASSWORD, verifyTls: false });
      expect((await c.getSystemFacts(SYSTEM_ID)).model).toBe("3500");
      await c.close();
    });

    test("a certificate that does not name the host: code tls", async () => {
      // The fake's certificate names IP 127.0.0.1 only; connect to it as "localhost".
      const c = new RedfishClient({ endpoint: s.url.replace("127.0.0.1", "localhost"), caBundle: s.certPem, auth: "basic" });
      const e = await caught(c.listSystems());
      expect(e.code).toBe("tls");
      expect(e.message).toContain("does not name this host");
      await c.close();
    });

    test("a caBundle that is not PEM is a validation error", () => {
      expect(() => new RedfishClient({ endpoint: s.url, caBundle: "not a certificate" })).toThrow(
        expect.objectContaining({ code: "validation", property: "caBundle" }),
      );
    });
  });
});

describe("odd answers (an ad-hoc server)", () => {
  let srv: http.Server;
  let taskPolls = 0;
  let url: string;
  beforeAll(async () => {
    srv = http.createServer((req, res) => {
      const send = (status: number, body?: unknown, headers: Record<string, string> = {}) => {
        res.writeHead(status, { "Content-Type": "application/json", ...headers });
        res.end(body === undefined ? "" : JSON.stringify(body));
      };
      if (req.url === "/redfish/v1/Systems/1" && req.method === "PATCH") {
        return send(200, {
          "@odata.id": "/redfish/v1/Systems/1",
          "@Message.ExtendedInfo": [
            { MessageId: "Base.1.8.PropertyValueNotInList", Message: "The value Foo for AssetTag is not acceptable.", MessageSeverity: "Warning" },
          ],
        });
      }
      if (req.url === "/redfish/v1/Systems/1") return send(200, { "@odata.id": "/redfish/v1/Systems/1", Id: "1" }, { ETag: 'W/"1"' });
      if (req.url === "/redfish/v1/Moved") return send(301, undefined, { Location: "https://elsewhere.example/redfish/v1/Moved" });
      // A long action as a task: 202 + task monitor, running for two polls, then done or failed.
      if (req.method === "POST" && req.url?.startsWith("/redfish/v1/Slow/")) {
        taskPolls = 0;
        return send(202, undefined, { Location: `/redfish/v1/TaskService/TaskMonitors/${req.url.split("/").pop()}` });
      }
      if (req.url?.startsWith("/redfish/v1/TaskService/TaskMonitors/")) {
        taskPolls++;
        if (taskPolls < 3) return send(202, { TaskState: "Running", PercentComplete: taskPolls * 40 }, { "Retry-After": "0" });
        if (req.url.endsWith("/ok")) return send(204);
        return send(200, { "@odata.id": "/redfish/v1/TaskService/Tasks/9", TaskState: "Exception", TaskStatus: "Critical", Messages: [{ MessageId: "Base.1.8.InternalError", Message: "flash failed" }] });
      }
      send(404, { error: { code: "Base.1.8.GeneralError", message: "nothing here" } });
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
    url = `http://127.0.0.1:${(srv.address() as net.AddressInfo).port}`;
  });
  afterAll(async () => {
    srv.closeAllConnections();
    await new Promise((r) => srv.close(r));
  });

  test("a 200 PATCH that reports a rejected property is a backend error", async () => {
    const c = new RedfishClient({ endpoint: url });
    const e = await caught(c.patch("Systems/1", { AssetTag: "Foo" }));
    expect(e.code).toBe("backend");
    expect(e.httpStatus).toBe(200);
    expect(e.messageId).toBe("Base.1.8.PropertyValueNotInList");
    await c.close();
  });

  test("a long action answered 202 is awaited on its task monitor, with progress", async () => {
    const progress: string[] = [];
    const c = new RedfishClient({ endpoint: url, onRetry: (r) => progress.push(r.reason) });
    const res = await c.post("Slow/ok", {});
    expect(res.status).toBe(204);
    expect(taskPolls).toBe(3);
    expect(progress).toEqual([expect.stringMatching(/running as a BMC task, 40% done/), expect.stringMatching(/80% done/)]);
    await c.close();
  });

  test("a task that ends in Exception is a backend error with its messages", async () => {
    const c = new RedfishClient({ endpoint: url });
    const e = await caught(c.post("Slow/fail", {}));
    expect(e.code).toBe("backend");
    expect(e.message).toMatch(/task state Exception \(Critical\)/);
    expect(e.messageId).toBe("Base.1.8.InternalError");
    expect(e.details).toEqual(["flash failed"]);
    await c.close();
  });

  test("a redirect is reported, not followed", async () => {
    const c = new RedfishClient({ endpoint: url });
    const e = await caught(c.get("Moved"));
    expect(e.code).toBe("backend");
    expect(e.httpStatus).toBe(301);
    expect(e.message).toContain("https://elsewhere.example/redfish/v1/Moved");
    await c.close();
  });

  test("an error body without ExtendedInfo still gives the MessageId (code) and message", async () => {
    const c = new RedfishClient({ endpoint: url });
    const e = await caught(c.get("Nothing"));
    expect(e.code).toBe("not-found");
    expect(e.messageId).toBe("Base.1.8.GeneralError");
    expect(e.details).toEqual(["nothing here"]);
    await c.close();
  });
});

describe("helpers", () => {
  test("parseRedfishError reads code, MessageId and ExtendedInfo", () => {
    const parsed = parseRedfishError({
      error: {
        code: "Base.1.8.GeneralError",
        message: "A general error has occurred.",
        "@Message.ExtendedInfo": [
          { MessageId: "Base.1.8.PropertyValueNotInList", Message: "Bad value.", Resolution: "Pick another." },
          { MessageId: "Base.1.8.Other", Message: "Second." },
        ],
      },
    });
    expect(parsed).toEqual({
      messageId: "Base.1.8.PropertyValueNotInList",
      message: "A general error has occurred.",
      details: ["Bad value. (Pick another.)", "Second."],
    });
    expect(parseRedfishError("<html>oops</html>")).toEqual({ details: [] });
  });

  test("parseRetryAfter: seconds or HTTP date", () => {
    expect(parseRetryAfter("12")).toBe(12);
    expect(parseRetryAfter(new Date(Date.now() + 30_000).toUTCString())).toBeGreaterThanOrEqual(28);
    expect(parseRetryAfter("soon")).toBeUndefined();
    expect(parseRetryAfter(undefined)).toBeUndefined();
  });

  test("alreadyApplied compares only the patched properties", () => {
    expect(alreadyApplied({ Boot: { A: 1, B: 2 }, X: 3 }, { Boot: { A: 1 } })).toBe(true);
    expect(alreadyApplied({ Boot: { A: 1 } }, { Boot: { A: 2 } })).toBe(false);
    expect(alreadyApplied({}, { Boot: { A: 1 } })).toBe(false);
  });

  test("bad options are validation errors", () => {
    expect(() => new RedfishClient({ endpoint: "" })).toThrow(expect.objectContaining({ code: "validation", property: "endpoint" }));
    expect(() => new RedfishClient({ endpoint: "ftp://x" })).toThrow(expect.objectContaining({ code: "validation" }));
    expect(() => new RedfishClient({ endpoint: "https://x", maxConcurrency: 0 })).toThrow(expect.objectContaining({ property: "maxConcurrency" }));
  });
});
