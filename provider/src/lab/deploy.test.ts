/**
 * What an emulated machine does when it boots a deploy image (bmc.ts, "Boot, installer, disk"),
 * driven through OUR Redfish client the way the coming Deployment resource will drive a real
 * machine: insert the deploy ISO, boot it once from the CD, power on, wait for the installer to
 * write the disk and power the machine off, eject, boot the disk; and back (power off, eject,
 * reset the boot override, erase). Time is a ManualClock: nothing here waits for the emulator,
 * except the client's own (real, short) polls of idrac-like tasks.
 */
import { createHash } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { BaremetalError } from "../core/errors";
import { RedfishClient } from "../drivers/redfish/client";
import type { RetryPolicy } from "../drivers/redfish/retry";
import { declaredChecksum, LabBmc, LabBmcOptions } from "./bmc";
import { ManualClock } from "./clock";
import { customFlavor, FlavorName } from "./flavors";

const live: LabBmc[] = [];
const clients: RedfishClient[] = [];
const servers: http.Server[] = [];

const NO_RETRY: RetryPolicy = { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1, maxRetryAfterMs: 0, busyBudgetMs: 0 };
const BOOT = 10;
const INSTALL = 30;
const TASK = 3;

async function bmc(clock: ManualClock, opts: LabBmcOptions = {}): Promise<LabBmc> {
  const b = await LabBmc.start({ clock, bootSeconds: BOOT, installSeconds: INSTALL, taskSeconds: TASK, ...opts });
  live.push(b);
  return b;
}

/** Our client; while it waits for a BMC task (idrac-like media actions) the lab clock moves on by the task's length. */
function client(b: LabBmc, clock: ManualClock): RedfishClient {
  const c = new RedfishClient({
    endpoint: b.url,
    username: b.username,
    password: b.password,
    timeoutMs: 5000,
    retryPolicy: NO_RETRY,
    onRetry: (e) => {
      if (e.reason.includes("BMC task")) clock.advanceSeconds(TASK);
    },
  });
  clients.push(c);
  return c;
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await Promise.all(live.splice(0).map((b) => b.close()));
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function rejection(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof BaremetalError) return e;
    throw e;
  }
  throw new Error("expected a rejection");
}

async function raw(b: LabBmc, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const headers: Record<string, string> = { Authorization: `Basic ${Buffer.from(`${b.username}:${b.password}`).toString("base64")}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(b.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

/** The SecureErase target of a system's drive as a client finds it (System -> Storage -> Drive), or null. */
async function findSecureErase(c: RedfishClient, systemPath: string): Promise<{ drive: string | null; target: string | null }> {
  type Link = { "@odata.id": string };
  const sys = (await c.get<{ Storage?: Link }>(systemPath)).body;
  if (!sys.Storage) return { drive: null, target: null };
  const storages = (await c.get<{ Members: Link[] }>(sys.Storage["@odata.id"])).body.Members;
  expect(storages).toHaveLength(1);
  const storage = (await c.get<{ Drives: Link[] }>(storages[0]["@odata.id"])).body;
  expect(storage.Drives).toHaveLength(1);
  const drive = (await c.get<{ Actions?: Record<string, { target: string }> }>(storage.Drives[0]["@odata.id"])).body;
  return { drive: storage.Drives[0]["@odata.id"], target: drive.Actions?.["#Drive.SecureErase"]?.target ?? null };
}

const IMAGE = "http://192.0.2.10/images/deploy-ubuntu-24.04.iso";
const SHA = createHash("sha256").update("lab image").digest("hex");

describe("deploy and undeploy over virtual media, on every flavor", () => {
  const cases: Array<[FlavorName, "Continuous" | "Once"]> = [
    ["generic", "Continuous"],
    ["idrac-like", "Once"],
    ["sushy-like", "Continuous"],
  ];
  for (const [flavor, diskOverride] of cases) {
    test(`${flavor}: installer writes the disk and powers off; the disk boots; cleaning empties it`, async () => {
      const clock = new ManualClock();
      const b = await bmc(clock, { flavor, systems: 2 });
      const c = client(b, clock);
      // The machine deployed: the second, so that the first shows it is left alone. Not on
      // idrac-like: its CDs are under the one manager of both systems and nothing in Redfish says
      // which CD is whose, so our client takes the first (a real iDRAC manages one system).
      const k = b.flavor.virtualMedia === "manager" ? 1 : 2;
      const other = 3 - k;
      const sys = b.system(k).id;
      const image = `${IMAGE}#sha256=${SHA}`;

      // Deploy: insert, Once -> Cd, power on.
      const { path: cd } = await c.findVirtualMedia(sys);
      expect(cd).toBe(b.system(k).virtualMedia.uri);
      expect(await c.insertMedia(cd, image)).toBe(true);
      expect(await c.setBootOverride(sys, "Cd", "Once")).toBe(true);
      expect(await c.setPower(sys, "On")).toBe(true);
      expect(b.system(k)).toMatchObject({ powerState: "PoweringOn", running: null, disk: "empty" });

      clock.advanceSeconds(BOOT);
      expect(b.system(k)).toMatchObject({
        powerState: "On",
        running: `installer:${image}`,
        boot: { target: "Cd", enabled: "Disabled" }, // the one-time override is used up
        install: { image, endsAt: clock.now() + INSTALL * 1000 },
        disk: "empty",
      });
      clock.advanceSeconds(INSTALL - 1);
      expect((await c.getSystemFacts(sys)).powerState).toBe("On");
      clock.advanceSeconds(1);
      // The installer wrote the disk and powered the machine off by itself.
      expect((await c.getSystemFacts(sys)).powerState).toBe("Off");
      expect(b.system(k)).toMatchObject({
        powerState: "Off",
        running: null,
        install: null,
        lastInstallError: null,
        disk: { image, checksum: `sha256:${SHA}`, writtenAt: clock.now() },
      });
      expect(b.system(other).disk).toBe("empty"); // the other machine is untouched

      // Eject, boot the disk.
      expect(await c.ejectMedia(cd)).toBe(true);
      expect(await c.setBootOverride(sys, "Hdd", diskOverride)).toBe(true);
      if (b.flavor.powerOnGuardSeconds > 0) {
        // idrac-like: the installer's power-off counts; a power-on right after it is refused.
        const early = await rejection(c.setPower(sys, "On"));
        expect(early.httpStatus).toBe(409);
        clock.advanceSeconds(b.flavor.powerOnGuardSeconds);
      }
      expect(await c.setPower(sys, "On")).toBe(true);
      clock.advanceSeconds(BOOT);
      expect(b.system(k)).toMatchObject({ powerState: "On", running: `os:${image}` });
      expect(b.system(k).boot.enabled).toBe(diskOverride === "Once" ? "Disabled" : "Continuous");

      // Exactly once each.
      const n = (k: Parameters<LabBmc["sideEffects"]>[0]) => b.sideEffects(k).length;
      expect([n("media-insert"), n("installer-started"), n("disk-written"), n("media-eject"), n("install-failed")]).toEqual([1, 1, 1, 1, 0]);
      expect(n("power-on")).toBe(2);
      expect(b.sideEffects("power-off").map((e) => e.detail?.cause)).toEqual(["installer"]);
      expect(b.sideEffects("booted").map((e) => e.detail?.running)).toEqual([`installer:${image}`, `os:${image}`]);

      // Undeploy: off, eject (already empty: nothing sent), boot override back to none, erase.
      expect(await c.setPower(sys, "Off")).toBe(true);
      expect(await c.ejectMedia(cd)).toBe(false);
      const targets = (await c.getSystemFacts(sys)).allowedBootTargets;
      const reset = targets.includes("None") ? "None" : "Hdd"; // sushy-like offers no None
      expect(await c.setBootOverride(sys, reset, "Disabled")).toBe(true);
      const erase = await findSecureErase(c, b.system(k).uri);
      if (flavor === "generic") {
        expect(erase.target).toBe(b.system(k).secureEraseTarget);
        expect((await c.post(erase.target!, {})).status).toBe(204);
      } else {
        // No Redfish way: idrac-like has a Drive without the action, sushy-like no Storage at all.
        expect(erase).toEqual({ drive: flavor === "idrac-like" ? b.system(k).driveUri : null, target: null });
        const r = await fetch(`${b.url}/lab/systems/${encodeURIComponent(sys)}/disk`, { method: "DELETE" });
        expect(r.status).toBe(200);
        expect(await r.json()).toEqual({ disk: "empty" });
      }
      expect(b.system(k)).toMatchObject({ powerState: "Off", running: null, disk: "empty" });
      expect(b.sideEffects("disk-erased").map((e) => e.detail?.via)).toEqual([flavor === "generic" ? "Drive.SecureErase" : "lab"]);
      expect(b.sideEffects("disk-erased")[0].detail?.image).toBe(image);

      // A cleaned machine boots nothing.
      clock.advanceSeconds(120);
      expect(await c.setPower(sys, "On")).toBe(true);
      clock.advanceSeconds(BOOT);
      expect(b.system(k)).toMatchObject({ powerState: "On", running: "nothing" });
    });
  }
});

describe("boot resolution", () => {
  test("Pxe and UefiHttp run pxe; Hdd or no override with an empty disk, and Cd without media, run nothing", async () => {
    const clock = new ManualClock();
    const b = await bmc(clock, { bootSeconds: 0 });
    const c = client(b, clock);
    const sys = b.system(1).id;
    const boot = async (target: string, enabled: "Once" | "Continuous" | "Disabled"): Promise<string | null> => {
      await c.setPower(sys, "Off");
      await c.setBootOverride(sys, target, enabled);
      await c.setPower(sys, "On");
      return b.system(1).running;
    };
    expect(await boot("Pxe", "Once")).toBe("pxe");
    expect(b.system(1).boot.enabled).toBe("Disabled");
    expect(await boot("Pxe", "Disabled")).toBe("nothing"); // a disabled override: the disk, which is empty
    expect(await boot("UefiHttp", "Continuous")).toBe("pxe");
    expect(await boot("Hdd", "Continuous")).toBe("nothing");
    expect(await boot("Cd", "Continuous")).toBe("nothing"); // no media
    expect(await boot("BiosSetup", "Once")).toBe("nothing");
    b.writeDisk(1, "http://192.0.2.10/os.img");
    expect(await boot("None", "Disabled")).toBe("os:http://192.0.2.10/os.img"); // no override: the disk
    expect(await boot("Pxe", "Continuous")).toBe("pxe"); // the override wins over the disk
    expect(b.sideEffects("disk-written").map((e) => e.detail?.via)).toEqual(["lab"]);
  });

  test("a restart boots again; a graceful shutdown keeps what runs until Off; a power-on at start runs nothing", async () => {
    const clock = new ManualClock();
    const b = await bmc(clock, { powerState: "On", shutdownSeconds: 5 });
    expect(b.system(1).running).toBe("nothing");
    b.writeDisk(1, "http://192.0.2.10/os.img");
    const c = client(b, clock);
    await c.resetSystem(b.system(1).id, "ForceRestart");
    expect(b.system(1)).toMatchObject({ powerState: "PoweringOn", running: null });
    clock.advanceSeconds(BOOT);
    expect(b.system(1).running).toBe("os:http://192.0.2.10/os.img");
    await c.setPower(b.system(1).id, "Off", { graceful: true });
    expect(b.system(1)).toMatchObject({ powerState: "PoweringOff", running: "os:http://192.0.2.10/os.img" });
    clock.advanceSeconds(5);
    expect(b.system(1)).toMatchObject({ powerState: "Off", running: null });
    b.forcePower(1, "On"); // behind the back: boots at once
    expect(b.system(1)).toMatchObject({ powerState: "On", running: "os:http://192.0.2.10/os.img" });
  });
});

describe("the installer", () => {
  async function installing(opts: LabBmcOptions = {}, image = IMAGE, override: "Once" | "Continuous" = "Once") {
    const clock = new ManualClock();
    const b = await bmc(clock, opts);
    const c = client(b, clock);
    const sys = b.system(1).id;
    const { path: cd } = await c.findVirtualMedia(sys);
    await c.insertMedia(cd, image);
    await c.setBootOverride(sys, "Cd", override);
    await c.setPower(sys, "On");
    clock.advanceSeconds(BOOT);
    expect(b.system(1).running).toBe(`installer:${image}`);
    return { clock, b, c, sys, cd };
  }

  test("a Continuous Cd override installs again on every power-on (the boot loop a deploy avoids by switching to Hdd)", async () => {
    const { clock, b, c, sys } = await installing({}, IMAGE, "Continuous");
    clock.advanceSeconds(INSTALL);
    expect(b.system(1)).toMatchObject({ powerState: "Off", disk: { image: IMAGE, writtenAt: clock.now() } });
    expect(b.system(1).disk).not.toHaveProperty("checksum");
    await c.setPower(sys, "On");
    clock.advanceSeconds(BOOT + INSTALL);
    expect(b.system(1).powerState).toBe("Off");
    expect(b.sideEffects("installer-started")).toHaveLength(2);
    expect(b.sideEffects("disk-written")).toHaveLength(2);
  });

  test("a power-off or restart during the install interrupts it: nothing written, the error kept, no extra power change", async () => {
    const { clock, b, c, sys } = await installing();
    clock.advanceSeconds(INSTALL / 2);
    await c.setPower(sys, "Off");
    clock.advanceSeconds(INSTALL);
    expect(b.system(1)).toMatchObject({ powerState: "Off", disk: "empty", install: null });
    expect(b.system(1).lastInstallError).toBe("the install was interrupted: ComputerSystem.Reset ForceOff");
    expect(b.sideEffects("install-failed")).toHaveLength(1);
    expect(b.sideEffects("power-off").map((e) => e.detail?.resetType)).toEqual(["ForceOff"]);

    const again = await installing({}, IMAGE, "Continuous");
    await again.c.resetSystem(again.sys, "ForceRestart");
    again.clock.advanceSeconds(BOOT);
    expect(again.b.system(1).running).toBe(`installer:${IMAGE}`); // Continuous: the restart boots the CD again
    again.clock.advanceSeconds(INSTALL);
    expect(again.b.system(1)).toMatchObject({ powerState: "Off", lastInstallError: null, disk: { image: IMAGE } });
    expect(again.b.sideEffects("install-failed")).toHaveLength(1);
  });

  test("ejecting the CD during the install fails it: the installer powers off without writing", async () => {
    const { clock, b, c, cd } = await installing();
    clock.advanceSeconds(5);
    await c.ejectMedia(cd);
    expect(b.system(1)).toMatchObject({
      powerState: "Off",
      disk: "empty",
      lastInstallError: "the virtual media was ejected or replaced during the install",
    });
    expect(b.sideEffects("power-off").map((e) => e.detail?.cause)).toEqual(["installer"]);
    clock.advanceSeconds(INSTALL);
    expect(b.sideEffects("disk-written")).toHaveLength(0);
  });

  test("idrac-like: an eject task that ends during the install is seen by it, in lab-time order", async () => {
    const clock = new ManualClock();
    const b = await bmc(clock, { flavor: "idrac-like" });
    const c = client(b, clock);
    const sys = b.system(1).id;
    const { path: cd } = await c.findVirtualMedia(sys);
    await c.insertMedia(cd, IMAGE); // a task: the client's poll moves the clock
    await c.setBootOverride(sys, "Cd", "Once");
    await c.setPower(sys, "On");
    clock.advanceSeconds(BOOT + INSTALL - TASK - 1);
    const eject = await c.post<unknown>(`${cd}/Actions/VirtualMedia.EjectMedia`, {}, { awaitTask: false });
    expect(eject.status).toBe(202);
    clock.advanceSeconds(3600); // the eject ends 1 s before the install would have: the install fails
    expect(b.system(1)).toMatchObject({ powerState: "Off", disk: "empty", lastInstallError: expect.stringContaining("ejected") });
    const off = b.sideEffects("power-off")[0];
    expect(off.at - b.sideEffects("media-eject")[0].at).toBe(0);
  });

  test("a malformed checksum in the image URL fails the install", async () => {
    const image = `${IMAGE}#sha256=abc`;
    const { clock, b } = await installing({}, image);
    clock.advanceSeconds(INSTALL);
    expect(b.system(1)).toMatchObject({ powerState: "Off", disk: "empty" });
    expect(b.system(1).lastInstallError).toMatch(/malformed sha256 checksum/);
    expect(b.sideEffects("install-failed")[0].detail).toEqual({ image, error: b.system(1).lastInstallError });
  });

  test("declaredChecksum: sha256 or sha512 in the fragment, other parameters ignored", () => {
    expect(declaredChecksum("http://x/a.iso")).toEqual({});
    expect(declaredChecksum(`http://x/a.iso#sha256=${SHA.toUpperCase()}`)).toEqual({ checksum: `sha256:${SHA}` });
    expect(declaredChecksum(`http://x/a.iso#name=a&sha512=${"ab".repeat(64)}`)).toEqual({ checksum: `sha512:${"ab".repeat(64)}` });
    expect(declaredChecksum("http://x/a.iso#part=1")).toEqual({});
    expect(declaredChecksum("http://x/a.iso#sha256=xyz").error).toMatch(/malformed/);
  });

  test("installSeconds 0 and bootSeconds 0: the install is over as soon as the power-on is answered", async () => {
    const clock = new ManualClock();
    const b = await bmc(clock, { bootSeconds: 0, installSeconds: 0 });
    const c = client(b, clock);
    const sys = b.system(1).id;
    await c.insertMedia((await c.findVirtualMedia(sys)).path, IMAGE);
    await c.setBootOverride(sys, "Cd", "Once");
    await c.setPower(sys, "On");
    expect((await c.getSystemFacts(sys)).powerState).toBe("Off");
    expect(b.system(1).disk).toEqual({ image: IMAGE, writtenAt: clock.now() });
  });
});

describe("the installer fetches its image (fetchImages)", () => {
  const body = Buffer.from("lab deploy image\n".repeat(1000));
  const sha = createHash("sha256").update(body).digest("hex");

  async function imageServer(): Promise<string> {
    const server = http.createServer((req, res) => {
      if (req.url === "/good.iso") {
        res.writeHead(200, { "Content-Length": String(body.length) });
        res.end(body);
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async function install(image: string): Promise<LabBmc> {
    const clock = new ManualClock();
    const b = await bmc(clock, { fetchImages: true });
    const c = client(b, clock);
    const sys = b.system(1).id;
    await c.insertMedia((await c.findVirtualMedia(sys)).path, image);
    await c.setBootOverride(sys, "Cd", "Once");
    await c.setPower(sys, "On");
    clock.advanceSeconds(BOOT + INSTALL);
    await b.settled();
    expect(b.system(1).powerState).toBe("Off");
    return b;
  }

  test("200 with the declared checksum: written", async () => {
    const image = `${await imageServer()}/good.iso#sha256=${sha}`;
    const b = await install(image);
    expect(b.system(1)).toMatchObject({ disk: { image, checksum: `sha256:${sha}` }, lastInstallError: null });
  });

  test("404: the install fails", async () => {
    const b = await install(`${await imageServer()}/missing.iso`);
    expect(b.system(1).disk).toBe("empty");
    expect(b.system(1).lastInstallError).toMatch(/answered 404 \(want 200\)$/);
  });

  test("a body that does not match the declared checksum: the install fails", async () => {
    const wrong = createHash("sha256").update("something else").digest("hex");
    const b = await install(`${await imageServer()}/good.iso#sha256=${wrong}`);
    expect(b.system(1).disk).toBe("empty");
    expect(b.system(1).lastInstallError).toBe(`the image's sha256 is ${sha}, the URL declares ${wrong}`);
  });

  test("nobody listening: the install fails; a URL off loopback is not fetched", async () => {
    const url = await imageServer();
    await new Promise((r) => servers.pop()!.close(r));
    const b = await install(`${url}/good.iso`);
    expect(b.system(1).lastInstallError).toMatch(/failed: .*ECONNREFUSED/);
    const off = await install(IMAGE); // 192.0.2.10: never fetched
    expect(off.system(1)).toMatchObject({ disk: { image: IMAGE }, lastInstallError: null });
  });

  test("the install cannot end before the download has answered", async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const server = http.createServer((_req, res) => {
      void gate.then(() => {
        res.writeHead(200);
        res.end("ok");
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const clock = new ManualClock();
    const b = await bmc(clock, { fetchImages: true });
    const c = client(b, clock);
    const sys = b.system(1).id;
    const image = `http://127.0.0.1:${(server.address() as AddressInfo).port}/slow.iso`;
    await c.insertMedia((await c.findVirtualMedia(sys)).path, image);
    await c.setBootOverride(sys, "Cd", "Once");
    await c.setPower(sys, "On");
    clock.advanceSeconds(BOOT + INSTALL + 100);
    expect(b.system(1)).toMatchObject({ powerState: "On", running: `installer:${image}` });
    release();
    await b.settled();
    expect(b.system(1)).toMatchObject({ powerState: "Off", disk: { image, writtenAt: clock.now() } });
  });
});

describe("Drive.SecureErase (generic)", () => {
  test("refused while the system is not Off; parameters checked; the Drive's shape", async () => {
    const clock = new ManualClock();
    const b = await bmc(clock, { bootSeconds: 0 });
    const c = client(b, clock);
    b.writeDisk(1, IMAGE);
    const target = b.system(1).secureEraseTarget!;
    expect(target).toBe("/redfish/v1/Systems/lab-bmc1-sys1/Storage/1/Drives/Drive1/Actions/Drive.SecureErase");
    await c.setPower(b.system(1).id, "On");
    const on = await rejection(c.post(target, {}));
    expect([on.httpStatus, on.messageId]).toEqual([409, "Base.1.15.0.ResourceInUse"]);
    await c.setPower(b.system(1).id, "Off");
    expect((await raw(b, "POST", target, { SanitizationType: "Shred" })).status).toBe(400);
    expect((await raw(b, "POST", target, { OverwritePasses: 0 })).status).toBe(400);
    expect((await raw(b, "POST", target, { Force: true })).status).toBe(400);
    expect(b.system(1).disk).not.toBe("empty");
    expect((await raw(b, "POST", target, { SanitizationType: "CryptographicErase" })).status).toBe(204);
    expect(b.system(1).disk).toBe("empty");
    expect(b.sideEffects("disk-erased").map((e) => e.detail)).toEqual([{ via: "Drive.SecureErase", sanitizationType: "CryptographicErase", image: IMAGE }]);
    const drive = (await raw(b, "GET", b.system(1).driveUri!)).body;
    expect(drive).toMatchObject({
      "@odata.type": "#Drive.v1_21_0.Drive",
      Id: "Drive1",
      MediaType: "SSD",
      CapacityBytes: 480_103_981_056,
      SerialNumber: "LABD001S001",
      Actions: { "#Drive.SecureErase": { target } },
    });
  });

  test("as a task (a flavor listing Drive.SecureErase as asynchronous): the disk is empty when the task ends", async () => {
    const clock = new ManualClock();
    const flavor = customFlavor("generic", { tasks: { asyncActions: ["Drive.SecureErase"], seconds: 20, retryAfterSeconds: 1, monitor: "separate" } });
    const b = await bmc(clock, { flavor });
    b.writeDisk(1, IMAGE);
    const target = b.system(1).secureEraseTarget!;
    const started = await raw(b, "POST", target, {});
    expect(started.status).toBe(202);
    expect((await raw(b, "GET", b.system(1).driveUri!)).body.Status.State).toBe("Updating");
    expect((await raw(b, "POST", target, {})).status).toBe(409); // busy
    expect(b.system(1).disk).not.toBe("empty");
    clock.advanceSeconds(20);
    expect(b.system(1).disk).toBe("empty");
    expect((await raw(b, "GET", b.system(1).driveUri!)).body.Status.State).toBe("Enabled");
    expect(b.sideEffects("disk-erased")).toHaveLength(1);
  });

  test("idrac-like and sushy-like: no erase action; the action URI does not exist", async () => {
    const clock = new ManualClock();
    const idrac = await bmc(clock, { flavor: "idrac-like" });
    const drive = idrac.system(1).driveUri!;
    expect(drive).toBe("/redfish/v1/Systems/System.Embedded.1/Storage/RAID.Integrated.1-1/Drives/Disk.Bay.0:Enclosure.Internal.0-1:RAID.Integrated.1-1");
    expect((await raw(idrac, "GET", drive)).body.Actions).toBeUndefined();
    expect((await raw(idrac, "POST", `${drive}/Actions/Drive.SecureErase`, {})).status).toBe(404);
    const sushy = await bmc(clock, { flavor: "sushy-like" });
    expect(sushy.system(1)).toMatchObject({ driveUri: null, secureEraseTarget: null });
    expect((await raw(sushy, "GET", `${sushy.system(1).uri}/Storage`)).status).toBe(404);
    expect((await raw(sushy, "GET", sushy.system(1).uri)).body.Storage).toBeUndefined();
  });
});

describe("lab admin endpoints for the disk", () => {
  test("/lab/state shows disk and running; /lab/systems/<id or index>[/disk] reads, writes, erases", async () => {
    const clock = new ManualClock();
    const b = await bmc(clock, { systems: 2, powerState: "On", bootSeconds: 0 });
    const admin = async (method: string, path: string, body?: unknown) => {
      const r = await fetch(b.url + path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
      return { status: r.status, body: (await r.json()) as any }; // eslint-disable-line @typescript-eslint/no-explicit-any
    };
    const state = await admin("GET", "/lab/state");
    expect(state.body.systems[0]).toMatchObject({ disk: "empty", running: "nothing", install: null, lastInstallError: null });
    const put = await admin("PUT", "/lab/systems/2/disk", { image: "http://192.0.2.10/os.img", checksum: `sha256:${SHA}` });
    expect(put).toEqual({ status: 200, body: { disk: { image: "http://192.0.2.10/os.img", checksum: `sha256:${SHA}`, writtenAt: clock.now() } } });
    expect((await admin("GET", "/lab/systems/lab-bmc1-sys2")).body).toMatchObject({ id: "lab-bmc1-sys2", disk: { image: "http://192.0.2.10/os.img" } });
    expect((await admin("PUT", "/lab/systems/2/disk", { image: "x", checksum: "md5:1" })).status).toBe(400);
    expect((await admin("PUT", "/lab/systems/2/disk", {})).status).toBe(400);
    expect((await admin("GET", "/lab/systems/9")).status).toBe(404);
    expect((await admin("POST", "/lab/systems/2/disk")).status).toBe(405);
    expect(await admin("DELETE", "/lab/systems/2/disk")).toEqual({ status: 200, body: { disk: "empty" } });
    const log = (await admin("GET", "/lab/log")).body;
    expect(log.counters.sideEffects).toEqual({ "disk-written": 1, "disk-erased": 1 });
  });

  test("ImageName leaves out the URL's query and fragment", async () => {
    const clock = new ManualClock();
    const b = await bmc(clock);
    const c = client(b, clock);
    const { path: cd } = await c.findVirtualMedia(b.system(1).id);
    await c.insertMedia(cd, `http://192.0.2.10/images/deploy%20image.iso?token=1#sha256=${SHA}`);
    expect((await c.get<{ ImageName: string }>(cd)).body.ImageName).toBe("deploy image.iso");
  });
});
