/**
 * The lab BMC emulator driven through OUR Redfish client (drivers/redfish/client.ts), plus raw
 * HTTP where the client deliberately refuses to send something (bad values, stale ETags).
 * Time is a ManualClock: nothing here sleeps for the emulator.
 */
import { BaremetalError } from "../core/errors";
import { RedfishClient } from "../drivers/redfish/client";
import type { RetryPolicy } from "../drivers/redfish/retry";
import { LabBmc, LabBmcOptions } from "./bmc";
import { ManualClock } from "./clock";
import { customFlavor } from "./flavors";

const live: LabBmc[] = [];
const clients: RedfishClient[] = [];

async function bmc(opts: LabBmcOptions = {}): Promise<LabBmc> {
  const b = await LabBmc.start({ clock: new ManualClock(), bootSeconds: 0, ...opts });
  live.push(b);
  return b;
}

/** No retries: each test sees the emulator's first answer (the retry tests below use their own policy). */
const NO_RETRY: RetryPolicy = { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1, maxRetryAfterMs: 0, busyBudgetMs: 0 };
/** Quick retries, for the tests of our client's retries against the emulator. */
const FAST_RETRY: RetryPolicy = { maxAttempts: 4, baseDelayMs: 20, maxDelayMs: 100, maxRetryAfterMs: 2000, busyBudgetMs: 5000 };

function client(b: LabBmc, extra: Partial<ConstructorParameters<typeof RedfishClient>[0]> = {}): RedfishClient {
  const c = new RedfishClient({ endpoint: b.url, username: b.username, password: b.password, timeoutMs: 5000, retryPolicy: NO_RETRY, ...extra });
  clients.push(c);
  return c;
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await Promise.all(live.splice(0).map((b) => b.close()));
});

interface RawAnswer {
  status: number;
  headers: Headers;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** One raw request with Basic credentials of the BMC (or `auth: null` for none). */
async function raw(
  b: LabBmc,
  method: string,
  path: string,
  o: { body?: unknown; auth?: [string, string] | null; headers?: Record<string, string> } = {},
): Promise<RawAnswer> {
  const headers: Record<string, string> = { ...o.headers };
  const auth = o.auth === undefined ? [b.username, b.password] : o.auth;
  if (auth) headers.Authorization = `Basic ${Buffer.from(`${auth[0]}:${auth[1]}`).toString("base64")}`;
  if (o.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(b.url + path, { method, headers, body: o.body === undefined ? undefined : JSON.stringify(o.body) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
}

function messageId(a: RawAnswer): string | undefined {
  return a.body?.error?.["@Message.ExtendedInfo"]?.[0]?.MessageId;
}

async function rejection(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof BaremetalError) return e;
    throw e;
  }
  throw new Error("expected a rejection");
}

describe("facts through our client", () => {
  test("generic: systems, facts, MACs, allowed values (session auth)", async () => {
    const b = await bmc({ systems: 2, index: 3 });
    const c = client(b);
    const systems = await c.listSystems();
    expect(systems).toEqual(["/redfish/v1/Systems/lab-bmc3-sys1", "/redfish/v1/Systems/lab-bmc3-sys2"]);
    const f1 = await c.getSystemFacts("lab-bmc3-sys1");
    expect(f1).toMatchObject({
      id: "lab-bmc3-sys1",
      manufacturer: "Lab Systems",
      model: "Lab Server S1",
      serialNumber: "LAB003S001",
      sku: "LAB-S1",
      uuid: "6c616200-0003-4001-8003-000000030001",
      powerState: "Off",
      cpuCount: 1,
      cpuModel: "Lab x86-64 16-Core Processor @ 2.40GHz",
      memoryGiB: 64,
      macAddresses: ["02:1a:b0:03:01:01", "02:1a:b0:03:01:02"],
      bootSourceOverrideTarget: "None",
      bootSourceOverrideEnabled: "Disabled",
      bootMode: "UEFI",
    });
    expect(f1.allowedBootTargets).toEqual(["None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup", "UefiHttp", "RemoteDrive"]);
    expect(f1.allowedResetTypes).toContain("ForceOff");
    const f2 = await c.getSystemFacts("lab-bmc3-sys2");
    expect(f2).toMatchObject({ cpuCount: 2, memoryGiB: 256, sku: "LAB-L1", macAddresses: ["02:1a:b0:03:02:01", "02:1a:b0:03:02:02"] });
    expect(b.requests().filter((r) => r.path !== "/redfish/v1/SessionService/Sessions").every((r) => r.auth === "session" || r.auth === "none")).toBe(true);
    expect(b.sideEffects("session-create")).toHaveLength(1);
    await c.logout();
    expect(b.sideEffects("session-delete")).toHaveLength(1);
    expect(b.sessions()).toHaveLength(0);
  });

  test("idrac-like: Dell-style ids, user root, facts from the same client", async () => {
    const b = await bmc({ flavor: "idrac-like" });
    expect(b.username).toBe("root");
    const c = client(b);
    expect(await c.listSystems()).toEqual(["/redfish/v1/Systems/System.Embedded.1"]);
    const f = await c.getSystemFacts("System.Embedded.1");
    expect(f).toMatchObject({ model: "Lab PowerServer R1", cpuCount: 1, memoryGiB: 64 });
    expect(f.allowedResetTypes).toContain("PowerCycle");
  });

  test("sushy-like: no SessionService, so the client falls back to Basic; no Processors/Memory collections", async () => {
    const b = await bmc({ flavor: "sushy-like", systems: 1 });
    const c = client(b);
    const [uri] = await c.listSystems();
    expect(uri).toBe("/redfish/v1/Systems/6c616200-0001-4001-8003-000000010001");
    const f = await c.getSystemFacts(uri);
    expect(f).toMatchObject({ cpuCount: 1, memoryGiB: 64, macAddresses: ["02:1a:b0:01:01:01", "02:1a:b0:01:01:02"] });
    expect(b.requests().filter((r) => r.path !== "/redfish/v1").every((r) => r.auth === "basic")).toBe(true);
    expect((await raw(b, "GET", `${uri}/Processors`)).status).toBe(404);
    expect((await raw(b, "GET", "/redfish/v1/SessionService")).status).toBe(404);
    expect((await raw(b, "POST", "/redfish/v1/SessionService/Sessions", { body: { UserName: "admin", Password: "x" }, auth: null })).status).toBe(401);
  });

  test("wrong credentials: 401 for Basic and for a session login; the client names the user", async () => {
    const b = await bmc();
    const e = await rejection(client(b, { password: "wrong-password" }).listSystems());
    expect(e.code).toBe("auth");
    expect(e.httpStatus).toBe(401);
    const e2 = await rejection(client(b, { password: "wrong-password", auth: "basic" }).listSystems());
    expect(e2.code).toBe("auth");
    const r = await raw(b, "GET", "/redfish/v1/Systems", { auth: null });
    expect(r.status).toBe(401);
    expect(r.headers.get("www-authenticate")).toMatch(/^Basic/);
    expect(messageId(r)).toBe("Base.1.15.0.NoValidSession");
  });
});

describe("protocol basics", () => {
  test("404, 405 with Allow, HEAD, the unauthenticated service root and odata document", async () => {
    const b = await bmc();
    const nf = await raw(b, "GET", "/redfish/v1/Systems/nope");
    expect(nf.status).toBe(404);
    expect(messageId(nf)).toBe("Base.1.15.0.ResourceMissingAtURI");
    const wrong = await raw(b, "DELETE", "/redfish/v1/Systems/lab-bmc1-sys1");
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get("allow")).toBe("GET, HEAD, PATCH");
    expect(messageId(wrong)).toBe("Base.1.15.0.OperationNotAllowed");
    const head = await fetch(`${b.url}/redfish/v1/`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers.get("etag")).toMatch(/^"[0-9a-f]{16}"$/);
    const root = await raw(b, "GET", "/redfish/v1/", { auth: null });
    expect(root.status).toBe(200);
    expect(root.body["@odata.etag"]).toBe(root.headers.get("etag"));
    expect((await raw(b, "GET", "/redfish/v1/odata", { auth: null })).body.value.map((v: { name: string }) => v.name)).toContain("Systems");
    expect((await raw(b, "GET", "/redfish", { auth: null })).body).toEqual({ v1: "/redfish/v1/" });
    const bad = await fetch(`${b.url}/redfish/v1/Systems/lab-bmc1-sys1`, {
      method: "PATCH",
      headers: { Authorization: `Basic ${Buffer.from("admin:lab-password").toString("base64")}`, "Content-Type": "application/json" },
      body: "{not json",
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as RawAnswer["body"]).error.code).toBe("Base.1.15.0.MalformedJSON");
  });

  test("roles: a ReadOnly account reads but may not change anything (403)", async () => {
    const b = await bmc({ accounts: [{ userName: "viewer", password: "viewer-pw-1", roleId: "ReadOnly" }] });
    const c = client(b, { username: "viewer", password: "viewer-pw-1" });
    expect((await c.getSystemFacts("lab-bmc1-sys1")).powerState).toBe("Off");
    const e = await rejection(c.setPower("lab-bmc1-sys1", "On"));
    expect(e.httpStatus).toBe(403);
    expect(e.messageId).toBe("Base.1.15.0.InsufficientPrivilege");
    expect(b.sideEffects("power-on")).toHaveLength(0);
  });
});

describe("sessions", () => {
  test("an idle session times out on the lab clock; the client logs in again once", async () => {
    const clock = new ManualClock();
    const b = await bmc({ clock, sessionTimeoutSeconds: 300 });
    const c = client(b);
    await c.getSystem("lab-bmc1-sys1");
    clock.advanceSeconds(299);
    await c.getSystem("lab-bmc1-sys1"); // used: the idle timer starts again
    clock.advanceSeconds(299);
    await c.getSystem("lab-bmc1-sys1");
    expect(b.sideEffects("session-create")).toHaveLength(1);
    clock.advanceSeconds(301);
    expect(b.sessions()).toHaveLength(0);
    expect(b.sideEffects("session-expire")).toHaveLength(1);
    await c.getSystem("lab-bmc1-sys1");
    expect(b.sideEffects("session-create")).toHaveLength(2);
    expect(b.requests({ method: "GET", path: "/redfish/v1/Systems/lab-bmc1-sys1" }).map((r) => r.status)).toEqual([200, 200, 200, 401, 200]);
  });

  test("session limit: generic answers 503, idrac-like 400, both with SessionLimitExceeded", async () => {
    for (const [flavor, status, code] of [
      ["generic", 503, "transient"],
      ["idrac-like", 400, "backend"],
    ] as const) {
      const b = await bmc({ flavor, sessionLimit: 2 });
      const login = () => raw(b, "POST", "/redfish/v1/SessionService/Sessions", { auth: null, body: { UserName: b.username, Password: b.password } });
      expect((await login()).status).toBe(201);
      expect((await login()).status).toBe(201);
      const third = await login();
      expect(third.status).toBe(status);
      expect(messageId(third)).toBe("Base.1.15.0.SessionLimitExceeded");
      // Sessions only: the full table is the error, named.
      const e = await rejection(client(b, { auth: "session" }).listSystems());
      expect(e.httpStatus).toBe(status);
      expect(e.code).toBe(code);
      expect(e.messageId).toBe("Base.1.15.0.SessionLimitExceeded");
      // auto (the default): the work goes on with HTTP Basic, which takes no session slot.
      const notes: string[] = [];
      b.clearLog();
      await expect(client(b, { onRetry: (r) => notes.push(r.reason) }).listSystems()).resolves.toHaveLength(1);
      expect(notes.join("\n")).toMatch(/session table is full .*using HTTP Basic/);
      expect(b.sessions()).toHaveLength(2);
      expect(b.requests({ method: "GET", path: /\/Systems$/ }).at(-1)?.auth).toBe("basic");
    }
  });

  test("login answer: 201, X-Auth-Token, Location; a token works, a deleted one gives 401", async () => {
    const b = await bmc();
    const res = await raw(b, "POST", "/redfish/v1/SessionService/Sessions", { auth: null, body: { UserName: "admin", Password: "lab-password" } });
    expect(res.status).toBe(201);
    const token = res.headers.get("x-auth-token")!;
    const location = res.headers.get("location")!;
    expect(location).toBe("/redfish/v1/SessionService/Sessions/lab-session-1");
    expect(res.body).toMatchObject({ Id: "lab-session-1", UserName: "admin" });
    const withToken = (method: string, p: string) => raw(b, method, p, { auth: null, headers: { "X-Auth-Token": token } });
    expect((await withToken("GET", "/redfish/v1/Systems")).status).toBe(200);
    expect((await withToken("DELETE", location)).status).toBe(204);
    expect((await withToken("GET", "/redfish/v1/Systems")).status).toBe(401);
    const missing = await raw(b, "POST", "/redfish/v1/SessionService/Sessions", { auth: null, body: { UserName: "admin" } });
    expect(missing.status).toBe(400);
    expect(messageId(missing)).toBe("Base.1.15.0.PropertyMissing");
  });
});

describe("ETag and If-Match", () => {
  test("every GET has an ETag equal to @odata.etag; a stale If-Match gets 412", async () => {
    const b = await bmc();
    const sys = "/redfish/v1/Systems/lab-bmc1-sys1";
    const r = await raw(b, "GET", sys);
    const etag = r.headers.get("etag")!;
    expect(r.body["@odata.etag"]).toBe(etag);
    b.forceBoot(1, { target: "Hdd" }); // behind the client's back
    const stale = await raw(b, "PATCH", sys, { body: { Boot: { BootSourceOverrideTarget: "Pxe" } }, headers: { "If-Match": etag } });
    expect(stale.status).toBe(412);
    expect(messageId(stale)).toBe("Base.1.15.0.PreconditionFailed");
    const fresh = (await raw(b, "GET", sys)).headers.get("etag")!;
    expect(fresh).not.toBe(etag);
    const ok = await raw(b, "PATCH", sys, { body: { Boot: { BootSourceOverrideTarget: "Pxe" } }, headers: { "If-Match": fresh } });
    expect(ok.status).toBe(200);
    expect(ok.body.Boot.BootSourceOverrideTarget).toBe("Pxe");
    expect(ok.headers.get("etag")).toBe(ok.body["@odata.etag"]);
  });

  test("our client: a PATCH that meets a concurrent change gets 412, re-reads and applies once", async () => {
    const b = await bmc();
    const c = client(b);
    const sys = "/redfish/v1/Systems/lab-bmc1-sys1";
    await c.get(sys); // the client remembers this ETag
    b.forceBoot(1, { mode: "Legacy" });
    await c.patch(sys, { Boot: { BootSourceOverrideTarget: "Pxe", BootSourceOverrideEnabled: "Continuous" } });
    expect(b.requests({ method: "PATCH" }).map((r) => r.status)).toEqual([412, 200]);
    expect(b.system(1).boot).toEqual({ target: "Pxe", enabled: "Continuous", mode: "Legacy" });
    expect(b.sideEffects("boot-override")).toHaveLength(1);
  });

  test("idrac-like: weak ETags; If-Match matches with or without W/; PATCH answers a Success message", async () => {
    const b = await bmc({ flavor: "idrac-like" });
    const sys = "/redfish/v1/Systems/System.Embedded.1";
    const etag = (await raw(b, "GET", sys)).headers.get("etag")!;
    expect(etag).toMatch(/^W\/"[0-9a-f]{16}"$/);
    const ok = await raw(b, "PATCH", sys, { body: { Boot: { BootSourceOverrideTarget: "Pxe" } }, headers: { "If-Match": etag.slice(2) } });
    expect(ok.status).toBe(200);
    expect(ok.body["@Message.ExtendedInfo"][0].MessageId).toBe("Base.1.15.0.Success");
  });
});

describe("@Redfish.AllowableValues are enforced", () => {
  test("PATCH: PropertyValueNotInList, PropertyUnknown, PropertyNotWritable, all reported", async () => {
    const b = await bmc();
    const sys = "/redfish/v1/Systems/lab-bmc1-sys1";
    const r = await raw(b, "PATCH", sys, {
      body: { Boot: { BootSourceOverrideTarget: "Floppy", BootSourceOverrideMode: "Legacy", Bogus: 1 }, PowerState: "On", Nope: true },
    });
    expect(r.status).toBe(400);
    const ids = r.body.error["@Message.ExtendedInfo"].map((m: { MessageId: string }) => m.MessageId);
    expect(ids).toEqual([
      "Base.1.15.0.PropertyValueNotInList",
      "Base.1.15.0.PropertyUnknown",
      "Base.1.15.0.PropertyNotWritable",
      "Base.1.15.0.PropertyUnknown",
    ]);
    expect(r.body.error["@Message.ExtendedInfo"][0].RelatedProperties).toEqual(["#/Boot/BootSourceOverrideTarget"]);
    expect(b.system(1).boot.mode).toBe("UEFI"); // nothing applied
    // Through our client's generic verb: the Redfish message id reaches the error.
    const e = await rejection(client(b).patch(sys, { Boot: { BootSourceOverrideTarget: "Floppy" } }));
    expect(e.httpStatus).toBe(400);
    expect(e.messageId).toBe("Base.1.15.0.PropertyValueNotInList");
  });

  test("ComputerSystem.Reset: value not in list, unknown and missing parameters", async () => {
    const b = await bmc();
    const target = "/redfish/v1/Systems/lab-bmc1-sys1/Actions/ComputerSystem.Reset";
    const c = client(b);
    const notInList = await rejection(c.post(target, { ResetType: "Suspend" }));
    expect(notInList.messageId).toBe("Base.1.15.0.ActionParameterValueNotInList");
    const unknown = await rejection(c.post(target, { ResetType: "On", Delay: 5 }));
    expect(unknown.messageId).toBe("Base.1.15.0.ActionParameterNotSupported");
    const missing = await rejection(c.post(target, {}));
    expect(missing.messageId).toBe("Base.1.15.0.ActionParameterMissing");
    expect(b.sideEffects()).toHaveLength(1); // only the client's session login
  });
});

describe("power and boot timing on the lab clock", () => {
  test("power-on takes bootSeconds; boot changes are refused during POST; a Once override is used by the boot", async () => {
    const clock = new ManualClock();
    const b = await bmc({ clock, bootSeconds: 30 });
    const c = client(b);
    await c.setBootOverride("lab-bmc1-sys1", "Pxe", "Once");
    expect(await c.setPower("lab-bmc1-sys1", "On")).toBe(true);
    expect((await c.getSystemFacts("lab-bmc1-sys1")).powerState).toBe("PoweringOn");
    expect(await c.setPower("lab-bmc1-sys1", "On")).toBe(false); // the client sees PoweringOn: nothing sent
    const during = await rejection(c.setBootOverride("lab-bmc1-sys1", "Hdd", "Continuous"));
    expect(during.httpStatus).toBe(409);
    expect(during.messageId).toBe("Base.1.15.0.ResourceInUse");
    clock.advanceSeconds(29);
    expect(b.system(1).powerState).toBe("PoweringOn");
    clock.advanceSeconds(1);
    expect(b.system(1).powerState).toBe("On");
    expect(b.system(1).boot).toEqual({ target: "Pxe", enabled: "Disabled", mode: "UEFI" });
    expect(await c.setBootOverride("lab-bmc1-sys1", "Hdd", "Continuous")).toBe(true);
    expect(b.sideEffects("power-on")).toHaveLength(1);
    expect(b.sideEffects("boot-override")).toHaveLength(2);
  });

  test("idrac-like: boot change during POST is a 400; power-on within 60 s of a power-off is a 409 with Retry-After", async () => {
    const clock = new ManualClock();
    const b = await bmc({ flavor: "idrac-like", clock, bootSeconds: 10, powerState: "On" });
    const c = client(b);
    const sys = "System.Embedded.1";
    expect(await c.setPower(sys, "Off")).toBe(true); // ForceOff: at once
    expect(b.system(1).powerState).toBe("Off");
    clock.advanceSeconds(20);
    const early = await rejection(c.setPower(sys, "On"));
    expect(early.httpStatus).toBe(409);
    expect(early.code).toBe("conflict");
    const r = b.requests({ method: "POST" }).pop()!;
    expect(r.status).toBe(409);
    const again = await raw(b, "POST", `/redfish/v1/Systems/${sys}/Actions/ComputerSystem.Reset`, { body: { ResetType: "On" } });
    expect(again.headers.get("retry-after")).toBe("40");
    clock.advanceSeconds(40);
    expect(await c.setPower(sys, "On")).toBe(true);
    expect(b.system(1).powerState).toBe("PoweringOn");
    const during = await rejection(c.setBootOverride(sys, "Pxe", "Once"));
    expect(during.httpStatus).toBe(400);
    // A reset to the state it is already in: 409 on this flavor (204 on generic).
    const same = await raw(b, "POST", `/redfish/v1/Systems/${sys}/Actions/ComputerSystem.Reset`, { body: { ResetType: "On" } });
    expect(same.status).toBe(409);
    expect(b.sideEffects("power-on")).toHaveLength(1);
    expect(b.sideEffects("power-off")).toHaveLength(1);
  });

  test("graceful shutdown passes through PoweringOff; restart through PoweringOn; PushPowerButton toggles", async () => {
    const clock = new ManualClock();
    const b = await bmc({ clock, bootSeconds: 5, shutdownSeconds: 3, powerState: "On" });
    const target = "/redfish/v1/Systems/lab-bmc1-sys1/Actions/ComputerSystem.Reset";
    const post = (rt: string) => raw(b, "POST", target, { body: { ResetType: rt } });
    expect((await post("GracefulShutdown")).status).toBe(204);
    expect(b.system(1).powerState).toBe("PoweringOff");
    expect((await post("On")).status).toBe(409); // still shutting down
    clock.advanceSeconds(3);
    expect(b.system(1).powerState).toBe("Off");
    expect((await post("ForceOff")).status).toBe(204); // same state on generic: a no-op
    expect((await post("PushPowerButton")).status).toBe(204);
    expect(b.system(1).powerState).toBe("PoweringOn");
    clock.advanceSeconds(5);
    expect((await post("ForceRestart")).status).toBe(204);
    expect(b.system(1).powerState).toBe("PoweringOn");
    clock.advanceSeconds(5);
    expect((await post("Nmi")).status).toBe(204);
    // Each power-on that ends is also a boot (what the machine runs: here its empty disk, nothing).
    expect(b.sideEffects().map((e) => e.kind)).toEqual(["power-off", "power-on", "booted", "power-restart", "booted", "nmi"]);
  });
});

describe("fault injection", () => {
  test("503 + Retry-After (retry in N s): the client reports a transient error and nothing is applied", async () => {
    const b = await bmc();
    const c = client(b);
    await c.getSystem("lab-bmc1-sys1");
    b.failNext(1, { kind: "unavailable", retryAfterSeconds: 30 }, { method: "POST", path: "/redfish/v1/Systems/*" });
    const e = await rejection(c.setPower("lab-bmc1-sys1", "On"));
    expect(e.code).toBe("transient");
    expect(e.retryAfterSeconds).toBe(30);
    expect(e.messageId).toBe("Base.1.15.0.ServiceTemporarilyUnavailable");
    expect(b.sideEffects("power-on")).toHaveLength(0);
    expect(await c.setPower("lab-bmc1-sys1", "On")).toBe(true); // the fault was for one request
    expect(b.sideEffects("power-on")).toHaveLength(1);
    expect(b.counters().faults).toEqual({ unavailable: 1 });
  });

  test("409, any status, a dropped connection, and a delay", async () => {
    const b = await bmc();
    const c = client(b, { auth: "basic", timeoutMs: 2000 });
    const sys = "/redfish/v1/Systems/lab-bmc1-sys1";
    b.failNext(1, { kind: "conflict" }, { path: sys });
    expect((await rejection(c.get(sys))).httpStatus).toBe(409);
    b.failNext(1, { kind: "status", status: 500, message: "InternalError" }, { path: sys });
    const e500 = await rejection(c.get(sys));
    expect(e500.httpStatus).toBe(500);
    expect(e500.messageId).toBe("Base.1.15.0.InternalError");
    b.failNext(1, { kind: "reset" }, { path: sys });
    const reset = await rejection(c.get(sys));
    expect(["transient", "backend"]).toContain(reset.code);
    expect(b.requests({ path: sys }).pop()!.status).toBe(0);
    b.failNext(1, { kind: "delay", ms: 150 }, { path: sys });
    const t0 = Date.now();
    await c.get(sys);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    b.failNext(1, { kind: "delay", ms: 5000 }, { path: sys });
    expect((await rejection(c.get(sys))).code).toBe("timeout");
  });

  test("the admin endpoint adds, lists and clears faults over HTTP; the clock can be moved", async () => {
    const clock = new ManualClock();
    const b = await bmc({ clock, bootSeconds: 60 });
    const add = await fetch(`${b.url}/lab/faults`, {
      method: "POST",
      body: JSON.stringify({ method: "GET", pathRegex: "^/redfish/v1/Systems$", count: 2, kind: "unavailable", retryAfterSeconds: 7 }),
    });
    expect(add.status).toBe(201);
    expect(((await add.json()) as { ids: number[] }).ids).toEqual([1]);
    expect((await raw(b, "GET", "/redfish/v1/Systems")).status).toBe(503);
    expect((await raw(b, "GET", "/redfish/v1/Systems")).headers.get("retry-after")).toBe("7");
    expect((await raw(b, "GET", "/redfish/v1/Systems")).status).toBe(200);
    const list = (await (await fetch(`${b.url}/lab/faults`)).json()) as { faults: Array<{ remaining: number; hits: number }> };
    expect(list.faults[0]).toMatchObject({ remaining: 0, hits: 2 });
    const bad = await fetch(`${b.url}/lab/faults`, { method: "POST", body: JSON.stringify({ kind: "explode" }) });
    expect(bad.status).toBe(400);
    expect((await fetch(`${b.url}/lab/faults`, { method: "DELETE" })).status).toBe(204);
    await raw(b, "POST", "/redfish/v1/Systems/lab-bmc1-sys1/Actions/ComputerSystem.Reset", { body: { ResetType: "On" } });
    expect(b.system(1).powerState).toBe("PoweringOn");
    const moved = await fetch(`${b.url}/lab/clock`, { method: "POST", body: JSON.stringify({ advanceSeconds: 60 }) });
    expect(moved.status).toBe(200);
    expect(b.system(1).powerState).toBe("On");
    const log = (await (await fetch(`${b.url}/lab/log`)).json()) as { counters: { sideEffects: Record<string, number> }; requests: unknown[] };
    expect(log.counters.sideEffects).toEqual({ "power-on": 1, booted: 1 });
    expect(log.requests.length).toBe(4);
    const info = (await (await fetch(`${b.url}/lab`)).json()) as { pid: number; systems: unknown[] };
    expect(info.pid).toBe(process.pid);
    expect(info.systems).toHaveLength(1);
  });

  test("session-limit overflow fault and slow tasks", async () => {
    const clock = new ManualClock();
    const b = await bmc({ flavor: "idrac-like", clock });
    b.failNext(1, { kind: "session-limit" });
    const e = await rejection(client(b, { auth: "session" }).listSystems());
    expect(e.messageId).toBe("Base.1.15.0.SessionLimitExceeded");
    const cd = "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD/Actions/VirtualMedia.InsertMedia";
    b.failNext(1, { kind: "slow-task", extraSeconds: 100 }, { method: "POST", path: cd });
    const r = await raw(b, "POST", cd, { body: { Image: "http://192.0.2.10/boot.iso" } });
    expect(r.status).toBe(202);
    clock.advanceSeconds(3);
    expect(b.tasks()[0].state).toBe("Running");
    clock.advanceSeconds(100);
    expect(b.tasks()[0].state).toBe("Completed");
    expect(b.sideEffects("media-insert")).toHaveLength(1);
  });
});

describe("virtual media and tasks", () => {
  test("generic: InsertMedia/EjectMedia under the system, synchronous, exactly one side effect each", async () => {
    const b = await bmc();
    const c = client(b);
    const sys = (await c.getSystem("lab-bmc1-sys1")).system;
    const collection = await c.get<{ Members: Array<{ "@odata.id": string }> }>(sys.VirtualMedia!["@odata.id"]);
    const cd = collection.body.Members[0]["@odata.id"];
    expect(cd).toBe("/redfish/v1/Systems/lab-bmc1-sys1/VirtualMedia/CD1");
    const media = (await c.get<Record<string, any>>(cd)).body; // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(media).toMatchObject({ Inserted: false, Image: null, ConnectedVia: "NotConnected" });
    const insert = media.Actions["#VirtualMedia.InsertMedia"].target;
    expect((await c.post(insert, { Image: "https://192.0.2.10/images/installer.iso", WriteProtected: true })).status).toBe(204);
    expect((await c.get<Record<string, unknown>>(cd)).body).toMatchObject({
      Inserted: true,
      Image: "https://192.0.2.10/images/installer.iso",
      ImageName: "installer.iso",
      ConnectedVia: "URI",
      TransferProtocolType: "HTTPS",
    });
    const again = await rejection(c.post(insert, { Image: "https://192.0.2.10/other.iso" }));
    expect(again.httpStatus).toBe(409);
    const bad = await rejection(c.post(insert, { Image: "ftp://192.0.2.10/x.iso" }));
    expect(bad.messageId).toBe("Base.1.15.0.ActionParameterValueNotInList");
    expect((await c.post(media.Actions["#VirtualMedia.EjectMedia"].target, {})).status).toBe(204);
    expect((await c.post(media.Actions["#VirtualMedia.EjectMedia"].target, {})).status).toBe(204); // empty: a no-op here
    expect(b.sideEffects("media-insert")).toHaveLength(1);
    expect(b.sideEffects("media-eject")).toHaveLength(1);
  });

  test("idrac-like: InsertMedia under the manager answers 202; the Task itself is the monitor (202 until done, then 200)", async () => {
    const clock = new ManualClock();
    const b = await bmc({ flavor: "idrac-like", clock, systems: 2 });
    const c = client(b);
    const mgr = (await c.get<{ VirtualMedia: { "@odata.id": string } }>("/redfish/v1/Managers/iDRAC.Embedded.1")).body;
    const members = (await c.get<{ Members: Array<{ "@odata.id": string }> }>(mgr.VirtualMedia["@odata.id"])).body.Members;
    expect(members.map((m) => m["@odata.id"])).toEqual([
      "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD1",
      "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD2",
    ]);
    const cd = members[1]["@odata.id"];
    const started = await c.post<{ TaskState: string; Id: string }>(
      `${cd}/Actions/VirtualMedia.InsertMedia`,
      { Image: "http://192.0.2.10/ipa.iso" },
      { awaitTask: false },
    );
    expect(started.status).toBe(202);
    expect(started.location).toBe("/redfish/v1/TaskService/Tasks/JID_000000000001");
    expect(started.body?.TaskState).toBe("Running");
    const busy = await rejection(c.post(`${cd}/Actions/VirtualMedia.EjectMedia`, {}));
    expect(busy.httpStatus).toBe(409);
    const poll = () => raw(b, "GET", started.location!);
    const p1 = await poll();
    expect(p1.status).toBe(202);
    expect(p1.headers.get("retry-after")).toBeNull();
    expect(p1.body).toMatchObject({ TaskState: "Running", TaskMonitor: started.location });
    expect(b.system(2).virtualMedia.inserted).toBe(false);
    clock.advanceSeconds(3);
    const p2 = await poll();
    expect(p2.status).toBe(200);
    expect(p2.body).toMatchObject({ TaskState: "Completed", TaskStatus: "OK", PercentComplete: 100, EndTime: "2024-01-01T00:00:03+00:00" });
    expect(b.system(2).virtualMedia).toMatchObject({ inserted: true, image: "http://192.0.2.10/ipa.iso" });
    expect(b.system(1).virtualMedia.inserted).toBe(false);
    expect(b.sideEffects("media-insert")).toHaveLength(1);
    expect((await raw(b, "GET", "/redfish/v1/TaskService/TaskMonitors/JID_000000000001")).status).toBe(404);
    // Ejecting an empty CD is a 409 on this flavor.
    expect((await raw(b, "POST", `${members[0]["@odata.id"]}/Actions/VirtualMedia.EjectMedia`)).status).toBe(409);
  });

  test("a separate task monitor (DSP0266): 202 + Retry-After while running, then the action's own result; DELETE cancels", async () => {
    const clock = new ManualClock();
    const flavor = customFlavor("generic", { tasks: { asyncActions: ["VirtualMedia.InsertMedia", "VirtualMedia.EjectMedia"], seconds: 10, retryAfterSeconds: 2, monitor: "separate" } });
    const b = await bmc({ flavor, clock });
    const cd = "/redfish/v1/Systems/lab-bmc1-sys1/VirtualMedia/CD1";
    const started = await raw(b, "POST", `${cd}/Actions/VirtualMedia.InsertMedia`, { body: { Image: "http://192.0.2.10/a.iso" } });
    expect(started.status).toBe(202);
    const monitor = started.headers.get("location")!;
    expect(monitor).toBe("/redfish/v1/TaskService/TaskMonitors/1");
    expect(started.body).toMatchObject({ "@odata.id": "/redfish/v1/TaskService/Tasks/1", TaskMonitor: monitor, TaskState: "Running" });
    const running = await raw(b, "GET", monitor);
    expect([running.status, running.headers.get("retry-after")]).toEqual([202, "2"]);
    clock.advanceSeconds(5);
    expect((await raw(b, "GET", "/redfish/v1/TaskService/Tasks/1")).body).toMatchObject({ TaskState: "Running", PercentComplete: 50 });
    clock.advanceSeconds(5);
    const done = await raw(b, "GET", monitor);
    expect(done.status).toBe(200);
    expect(done.body["@Message.ExtendedInfo"][0].MessageId).toBe("Base.1.15.0.Success");
    // Cancel an eject task: nothing is ejected.
    const ej = await raw(b, "POST", `${cd}/Actions/VirtualMedia.EjectMedia`);
    const ejMonitor = ej.headers.get("location")!;
    expect((await raw(b, "DELETE", ejMonitor)).status).toBe(204);
    clock.advanceSeconds(20);
    expect((await raw(b, "GET", ejMonitor)).status).toBe(404);
    expect((await raw(b, "GET", "/redfish/v1/TaskService/Tasks/2")).body.TaskState).toBe("Cancelled");
    expect(b.system(1).virtualMedia.inserted).toBe(true);
    expect(b.sideEffects("media-eject")).toHaveLength(0);
    const tasks = await raw(b, "GET", "/redfish/v1/TaskService/Tasks");
    expect(tasks.body["Members@odata.count"]).toBe(2);
  });
});

describe("accounts (for time-limited console credentials later)", () => {
  test("generic: create with a role, log in with it, expiry on the lab clock, delete ends its sessions", async () => {
    const clock = new ManualClock();
    const b = await bmc({ clock });
    const c = client(b);
    const expires = new Date(clock.now() + 600_000).toISOString();
    const created = await c.post<{ Id: string; RoleId: string; AccountExpiration: string; Password: null }>("/redfish/v1/AccountService/Accounts", {
      UserName: "console-1",
      Password: "console-pw-1",
      RoleId: "Operator",
      AccountExpiration: expires,
    });
    expect(created.status).toBe(201);
    expect(created.location).toBe("/redfish/v1/AccountService/Accounts/2");
    expect(created.body).toMatchObject({ RoleId: "Operator", Password: null });
    const op = client(b, { username: "console-1", password: "console-pw-1" });
    expect(await op.setPower("lab-bmc1-sys1", "On")).toBe(true);
    clock.advanceSeconds(601);
    const expired = await rejection(op.getSystem("lab-bmc1-sys1"));
    expect(expired.code).toBe("auth");
    const dup = await rejection(c.post("/redfish/v1/AccountService/Accounts", { UserName: "console-1", Password: "another-pw" }));
    expect(dup.messageId).toBe("Base.1.15.0.ResourceAlreadyExists");
    const weak = await rejection(c.post("/redfish/v1/AccountService/Accounts", { UserName: "x", Password: "short", RoleId: "God" }));
    expect(weak.httpStatus).toBe(400);
    const del = await raw(b, "DELETE", created.location!);
    expect(del.status).toBe(204);
    expect(b.accounts().map((a) => a.userName)).toEqual(["admin"]);
    expect(b.sideEffects().map((e) => e.kind).filter((k) => k.startsWith("account"))).toEqual(["account-create", "account-delete"]);
  });

  test("idrac-like: fixed slots; POST and DELETE are 405; an account is made and removed by PATCH", async () => {
    const b = await bmc({ flavor: "idrac-like" });
    const accounts = "/redfish/v1/AccountService/Accounts";
    const list = await raw(b, "GET", accounts);
    expect(list.body["Members@odata.count"]).toBe(16);
    const post = await raw(b, "POST", accounts, { body: { UserName: "u", Password: "password-1" } });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
    const slot = `${accounts}/3`;
    expect((await raw(b, "GET", slot)).body).toMatchObject({ UserName: "", Enabled: false, RoleId: "None" });
    const made = await raw(b, "PATCH", slot, { body: { UserName: "console-1", Password: "console-pw-1", RoleId: "Operator", Enabled: true } });
    expect(made.status).toBe(200);
    expect((await raw(b, "GET", "/redfish/v1/Systems", { auth: ["console-1", "console-pw-1"] })).status).toBe(200);
    expect((await raw(b, "DELETE", slot)).status).toBe(405);
    expect((await raw(b, "PATCH", slot, { body: { UserName: "" } })).status).toBe(200);
    expect((await raw(b, "GET", "/redfish/v1/Systems", { auth: ["console-1", "console-pw-1"] })).status).toBe(401);
    expect(b.sideEffects().map((e) => e.kind)).toEqual(["account-create", "account-delete"]);
  });
});

describe("manager and consoles", () => {
  test("consoles per flavor; Manager.Reset drops sessions and makes the BMC answer 503 for a while", async () => {
    const clock = new ManualClock();
    const g = await bmc({ clock });
    const mgr = (await raw(g, "GET", "/redfish/v1/Managers/BMC")).body;
    expect(mgr.SerialConsole).toMatchObject({ ServiceEnabled: true, ConnectTypesSupported: ["SSH", "IPMI"] });
    expect(mgr.GraphicalConsole.ConnectTypesSupported).toEqual(["KVMIP"]);
    expect(mgr.CommandShell.ConnectTypesSupported).toEqual(["SSH"]);
    const s = await bmc({ flavor: "sushy-like", clock });
    expect((await raw(s, "GET", "/redfish/v1/Managers/BMC")).body.SerialConsole.ServiceEnabled).toBe(false);

    const c = client(g);
    await c.listSystems();
    expect(g.sessions()).toHaveLength(1);
    const r = await raw(g, "POST", "/redfish/v1/Managers/BMC/Actions/Manager.Reset", { body: { ResetType: "GracefulRestart" } });
    expect(r.status).toBe(204);
    expect(g.sessions()).toHaveLength(0);
    const away = await raw(g, "GET", "/redfish/v1/Systems");
    expect(away.status).toBe(503);
    expect(away.headers.get("retry-after")).toBe("10");
    clock.advanceSeconds(10);
    expect((await c.listSystems()).length).toBe(1); // the client logs in again
  });
});

describe("our client's retries against the emulator: no duplicate side effects", () => {
  /** Resolves when the BMC has logged a request matching `pred` (the test's own wait, not the emulator's). */
  async function seen(b: LabBmc, pred: (r: ReturnType<LabBmc["requests"]>[number]) => boolean): Promise<void> {
    for (let i = 0; i < 500 && !b.requests().some(pred); i++) await new Promise((r) => setTimeout(r, 10));
  }

  test("503 with Retry-After on a power action: the client waits, sends it again, the machine powers on once", async () => {
    const b = await bmc();
    const c = client(b, { retryPolicy: FAST_RETRY });
    b.failNext(1, { kind: "unavailable", retryAfterSeconds: 1 }, { method: "POST", path: /Reset$/ });
    const t0 = Date.now();
    expect(await c.setPower("lab-bmc1-sys1", "On")).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(b.requests({ method: "POST", path: /Reset$/ }).map((r) => r.status)).toEqual([503, 204]);
    expect(b.sideEffects("power-on")).toHaveLength(1);
  });

  test("the answer of a power action is lost after the BMC applied it: the client reads the state back and does not replay it", async () => {
    const b = await bmc();
    const c = client(b, { retryPolicy: FAST_RETRY });
    b.failNext(1, { kind: "reset", afterApply: true }, { method: "POST", path: /Reset$/ });
    await expect(c.setPower("lab-bmc1-sys1", "On")).resolves.toBe(true);
    expect(b.requests({ method: "POST", path: /Reset$/ }).map((r) => r.status)).toEqual([0]);
    expect(b.sideEffects("power-on")).toHaveLength(1);
    expect(b.system(1).powerState).toBe("On");
  });

  test("the answer of a power action is lost before the BMC acted: after reading the state back, it is sent once more", async () => {
    const b = await bmc();
    const c = client(b, { retryPolicy: FAST_RETRY });
    b.failNext(1, { kind: "reset" }, { method: "POST", path: /Reset$/ });
    await expect(c.setPower("lab-bmc1-sys1", "On")).resolves.toBe(true);
    expect(b.requests({ method: "POST", path: /Reset$/ }).map((r) => r.status)).toEqual([0, 204]);
    expect(b.sideEffects("power-on")).toHaveLength(1);
  });

  test("a boot change refused during POST (409 ResourceInUse) is retried until the machine is up", async () => {
    const clock = new ManualClock();
    const b = await bmc({ clock, bootSeconds: 120 });
    const c = client(b, { retryPolicy: FAST_RETRY });
    await c.setPower("lab-bmc1-sys1", "On");
    const pending = c.setBootOverride("lab-bmc1-sys1", "Pxe", "Continuous");
    await seen(b, (r) => r.method === "PATCH" && r.status === 409);
    clock.advanceSeconds(120); // POST is over
    expect(await pending).toBe(true);
    const patches = b.requests({ method: "PATCH" }).map((r) => r.status);
    expect(patches[0]).toBe(409);
    expect(patches[patches.length - 1]).toBe(200);
    expect(b.sideEffects("boot-override")).toHaveLength(1);
  });

  test("a long action as a task: the client polls the monitor (202) and returns the result when done", async () => {
    const clock = new ManualClock();
    const b = await bmc({ flavor: "idrac-like", clock });
    const c = client(b, { retryPolicy: FAST_RETRY });
    const cd = "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD/Actions/VirtualMedia.InsertMedia";
    const pending = c.post(cd, { Image: "http://192.0.2.10/ipa.iso" });
    await seen(b, (r) => r.path.includes("/TaskService/Tasks/") && r.status === 202);
    clock.advanceSeconds(3);
    const done = await pending;
    expect(done.status).toBe(200);
    expect((done.body as { TaskState: string }).TaskState).toBe("Completed");
    expect(b.requests({ path: /\/TaskService\/Tasks\// }).map((r) => r.status)).toEqual([202, 200]);
    expect(b.sideEffects("media-insert")).toHaveLength(1);
  });
});

describe("every link resolves, on every flavor", () => {
  for (const flavor of ["generic", "idrac-like", "sushy-like"] as const) {
    test(flavor, async () => {
      const b = await bmc({ flavor, systems: 2, index: 7 });
      const seen = new Set<string>();
      const queue = ["/redfish/v1/"];
      const walk = (v: unknown): void => {
        if (Array.isArray(v)) v.forEach(walk);
        else if (v && typeof v === "object") {
          for (const [k, x] of Object.entries(v)) {
            if ((k === "@odata.id" || k === "target" || k === "TaskMonitor") && typeof x === "string" && !seen.has(x)) queue.push(x);
            else walk(x);
          }
        }
      };
      while (queue.length) {
        const p = queue.shift()!;
        if (seen.has(p)) continue;
        seen.add(p);
        if (p.includes("/Actions/")) continue;
        const r = await raw(b, "GET", p);
        if (flavor === "sushy-like" && /\/(Processors|Memory)$/.test(p)) {
          expect(r.status).toBe(404); // linked but not implemented, like sushy-tools' fake driver
          continue;
        }
        expect([p, r.status]).toEqual([p, 200]);
        expect(r.body["@odata.etag"]).toBe(r.headers.get("etag"));
        walk(r.body);
      }
      expect(seen.size).toBeGreaterThan(flavor === "sushy-like" ? 15 : 30);
    });
  }

  test("deterministic: two BMCs with the same options serve the same inventory", async () => {
    const clock = new ManualClock();
    const a = await bmc({ index: 2, systems: 2, clock });
    const b2 = await bmc({ index: 2, systems: 2, clock });
    for (const p of ["/redfish/v1/", "/redfish/v1/Systems/lab-bmc2-sys2", "/redfish/v1/Systems/lab-bmc2-sys2/EthernetInterfaces/NIC2", "/redfish/v1/Chassis/lab-bmc2-chassis1"]) {
      expect((await raw(a, "GET", p)).body).toEqual((await raw(b2, "GET", p)).body);
    }
  });

  test("a flavor can be adjusted as data", async () => {
    const b = await bmc({ flavor: customFlavor("generic", { bootTargets: ["Pxe"], resetTypes: ["On", "ForceOff"] }) });
    const f = await client(b).getSystemFacts("lab-bmc1-sys1");
    expect(f.allowedBootTargets).toEqual(["Pxe"]);
    expect(f.allowedResetTypes).toEqual(["On", "ForceOff"]);
  });
});
