/**
 * iSCSI boot over Redfish (iscsi-boot.ts, RedfishDriver's iSCSI methods) against the lab's BMC
 * emulator: finding the network device function, configuring it, the boot override per flavor,
 * drift, restore, a BMC without network adapters, the secret kept out of logs and errors; and,
 * against a real tgtd, the lab emulator's login at boot (our emulator's behaviour: real BMCs
 * leave the login to the machine's firmware) with the right and wrong CHAP secret.
 */
import * as fs from "node:fs";
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";
import { isBaremetalError } from "../../core/errors";
import { LabBmc } from "../../lab/bmc";
import { startTgt, tgtAvailable, type TgtInstance } from "../../../../test/harness/tgt";
import { describeWithPeer } from "../../../../test/harness/processes";
import { FileStorageDriver } from "../storage-file/driver";
import { RedfishClient } from "./client";
import { RedfishDriver } from "./driver";
import { desiredIscsi, type IscsiBootRequest, iscsiBootTarget, iscsiDifferences, parsePortal, pickDeviceFunction } from "./iscsi-boot";

const SECRET = "bfv-chap-secret-4d1c9e";
const REQ: IscsiBootRequest = {
  initiatorName: "iqn.2026-11.io.pulumi-baremetal:node-0011223344556677",
  targetName: "iqn.2025-01.lab.baremetal.vol:project-a--root",
  portal: "127.0.0.1:3260",
  lun: 1,
  chapUsername: "c0123456789ab",
  chapSecret: SECRET,
};

function driverFor(bmc: LabBmc): RedfishDriver {
  return new RedfishDriver({ address: bmc.url, username: bmc.username, password: bmc.password, verifyTls: false, requestTimeoutMs: 10_000, maxConcurrency: 4 });
}

async function failure(p: Promise<unknown>): Promise<{ code: string; property?: string; message: string; details: string[] }> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return { code: e.code, property: e.property, message: e.message, details: e.details };
  }
  throw new Error("expected a rejection");
}

describe("iSCSI boot settings (pure parts)", () => {
  it("parses portals, IPv4 and IPv6, and refuses a host name (firmware needs an address)", () => {
    expect(parsePortal("127.0.0.1:3260")).toEqual({ address: "127.0.0.1", port: 3260, type: "IPv4" });
    expect(parsePortal("10.0.0.5")).toEqual({ address: "10.0.0.5", port: 3260, type: "IPv4" });
    expect(parsePortal("[fd00::5]:3261")).toEqual({ address: "fd00::5", port: 3261, type: "IPv6" });
    expect(() => parsePortal("storage.example:3260")).toThrow(/IP address/);
  });

  it("drift names each differing property and never the CHAP secret", () => {
    const want = desiredIscsi(REQ);
    const same = { path: "/f", id: "f", bootMode: "iSCSI", allowedBootModes: [], iscsi: { ...want, CHAPSecret: null } };
    expect(iscsiDifferences(same, want)).toEqual([]);
    const d = iscsiDifferences({ ...same, bootMode: "PXE", iscsi: { ...want, CHAPUsername: "someone" } }, want);
    expect(d).toEqual(['BootMode (BMC has "PXE", expected "iSCSI")', 'iSCSIBoot.CHAPUsername (BMC has "someone", expected "c0123456789ab")']);
    expect(JSON.stringify(d)).not.toContain(SECRET);
  });

  it("prefers RemoteDrive, falls back to the NIC's network boot (Pxe), and picks the node's lowest MAC", () => {
    expect(iscsiBootTarget(["None", "Pxe", "Hdd", "RemoteDrive"])).toBe("RemoteDrive");
    expect(iscsiBootTarget(["None", "Pxe", "Hdd"])).toBe("Pxe");
    expect(() => iscsiBootTarget(["Hdd", "Cd"])).toThrow(/neither RemoteDrive nor Pxe/);
    const f = (mac: string, modes: string[]) => ({ path: `/f/${mac}`, id: mac, mac, bootMode: "Disabled", allowedBootModes: modes });
    const fns = [f("aa:00:00:00:00:03", ["Disabled", "PXE", "iSCSI"]), f("aa:00:00:00:00:01", ["Disabled", "PXE"]), f("aa:00:00:00:00:02", ["Disabled", "iSCSI"])];
    expect(pickDeviceFunction(fns, ["AA:00:00:00:00:03", "aa:00:00:00:00:01"], "node n").mac).toBe("aa:00:00:00:00:03");
    expect(pickDeviceFunction(fns, [], "node n").mac).toBe("aa:00:00:00:00:02");
    expect(() => pickDeviceFunction([fns[1]], [], "node n")).toThrow(/node n: none of the BMC's 1 network device function\(s\) can boot over iSCSI/);
  });
});

describe("iSCSI boot over Redfish against the lab BMC", () => {
  let bmc: LabBmc;
  let drv: RedfishDriver;

  beforeEach(async () => {
    bmc = await LabBmc.start({ systems: 2, bootSeconds: 0 });
    drv = driverFor(bmc);
  });
  afterEach(async () => {
    await drv.close();
    await bmc.close();
  });

  it("finds the function on the port of the system's first NIC (Chassis NetworkAdapters), configures it, and GET shows CHAPSecret null", async () => {
    const sys = bmc.system(2);
    const fns = await drv.deviceFunctions(sys.id);
    expect(fns).toHaveLength(1);
    expect(fns[0]).toMatchObject({ mac: sys.macAddresses[0], bootMode: "Disabled", allowedBootModes: ["Disabled", "PXE", "iSCSI"] });
    expect(fns[0].path).toMatch(/\/Chassis\/[^/]+\/NetworkAdapters\/NetworkAdapter1\/NetworkDeviceFunctions\/NIC1-1$/);

    const done = await drv.configureIscsiBoot(sys.id, REQ, { macs: sys.macAddresses, whose: "node x" });
    expect(done.bootTarget).toBe("RemoteDrive");
    expect(done.original).toMatchObject({ bootMode: "Disabled", bootOverride: { target: "None", enabled: "Disabled" } });
    expect(done.original.iscsi.PrimaryTargetName).toBeNull();

    const view = bmc.system(2);
    expect(view.boot).toMatchObject({ target: "RemoteDrive", enabled: "Continuous" });
    expect(view.networkDeviceFunction).toMatchObject({
      bootMode: "iSCSI",
      chapSecretSet: true,
      iSCSIBoot: { InitiatorName: REQ.initiatorName, PrimaryTargetName: REQ.targetName, PrimaryTargetIPAddress: "127.0.0.1", PrimaryTargetTCPPort: 3260, PrimaryLUN: 1, AuthenticationMethod: "CHAP", CHAPUsername: REQ.chapUsername, CHAPSecret: null, TargetInfoViaDHCP: false },
    });
    const raw = await drv.client.get<Record<string, unknown>>(done.functionPath);
    expect((raw.body.iSCSIBoot as Record<string, unknown>).CHAPSecret).toBeNull();
    // The lab's request log and side effects hold no secret.
    expect(JSON.stringify(bmc.requests())).not.toContain(SECRET);
    expect(JSON.stringify(bmc.sideEffects())).not.toContain(SECRET);
    expect(bmc.sideEffects("iscsi-boot-config")[0].detail).toMatchObject({ "iSCSIBoot.CHAPSecret": "(set)" });
    // The other system's function is untouched.
    expect(bmc.system(1).networkDeviceFunction).toMatchObject({ bootMode: "Disabled", chapSecretSet: false });

    expect(await drv.iscsiBootDrift(done.functionPath, REQ)).toEqual([]);
  });

  it("drift: a CHAP user or target changed by hand is named; a changed secret is not detectable (reads back null)", async () => {
    const sys = bmc.system(1);
    const done = await drv.configureIscsiBoot(sys.id, REQ, { macs: sys.macAddresses, whose: "node x" });
    await drv.client.patch(done.functionPath, { iSCSIBoot: { CHAPSecret: "a-wrong-secret-by-hand" } });
    expect(await drv.iscsiBootDrift(done.functionPath, REQ)).toEqual([]);
    await drv.client.patch(done.functionPath, { BootMode: "PXE", iSCSIBoot: { CHAPUsername: "intruder", PrimaryLUN: 7 } });
    expect(await drv.iscsiBootDrift(done.functionPath, REQ)).toEqual([
      'BootMode (BMC has "PXE", expected "iSCSI")',
      'iSCSIBoot.PrimaryLUN (BMC has 7, expected 1)',
      'iSCSIBoot.CHAPUsername (BMC has "intruder", expected "c0123456789ab")',
    ]);
  });

  it("restore puts back BootMode, the iSCSI settings and the boot override, and clears the secret; a function pointed elsewhere is left alone", async () => {
    const sys = bmc.system(1);
    const done = await drv.configureIscsiBoot(sys.id, REQ, { macs: sys.macAddresses, whose: "node x" });
    expect(await drv.restoreIscsiBoot(sys.id, done.original, { targetName: REQ.targetName, bootTarget: done.bootTarget })).toEqual({ restored: true });
    const view = bmc.system(1);
    expect(view.boot).toMatchObject({ target: "None", enabled: "Disabled" });
    expect(view.networkDeviceFunction).toMatchObject({ bootMode: "Disabled", chapSecretSet: false, iSCSIBoot: { PrimaryTargetName: null, InitiatorName: null, AuthenticationMethod: "None" } });

    const again = await drv.configureIscsiBoot(sys.id, REQ, { macs: sys.macAddresses, whose: "node x" });
    await drv.client.patch(again.functionPath, { iSCSIBoot: { PrimaryTargetName: "iqn.2025-01.other:vol" } });
    const r = await drv.restoreIscsiBoot(sys.id, again.original, { targetName: REQ.targetName, bootTarget: again.bootTarget });
    expect(r.restored).toBe(false);
    expect(r.why).toMatch(/now boots from iqn\.2025-01\.other:vol/);
  });

  it("an iDRAC-like BMC (no RemoteDrive) boots iSCSI through the NIC's network boot (Pxe)", async () => {
    const idrac = await LabBmc.start({ systems: 1, flavor: "idrac-like", bootSeconds: 0 });
    const d = driverFor(idrac);
    try {
      const sys = idrac.system(1);
      const done = await d.configureIscsiBoot(sys.id, REQ, { macs: sys.macAddresses, whose: "node y" });
      expect(done.bootTarget).toBe("Pxe");
      expect(done.functionPath).toMatch(/NetworkAdapters\/NIC\.Integrated\.1\/NetworkDeviceFunctions\/NIC\.Integrated\.1-1-1$/);
      expect(idrac.system(1).boot).toMatchObject({ target: "Pxe", enabled: "Continuous" });
    } finally {
      await d.close();
      await idrac.close();
    }
  });

  it("a BMC without network adapters (sushy-like) cannot do iSCSI boot: a validation error on boot naming the node", async () => {
    const sushy = await LabBmc.start({ systems: 1, flavor: "sushy-like" });
    const d = driverFor(sushy);
    try {
      const f = await failure(d.configureIscsiBoot(sushy.system(1).id, REQ, { whose: "node http://bmc/redfish/v1/Systems/abc" }));
      expect(f.code).toBe("validation");
      expect(f.property).toBe("boot");
      expect(f.message).toMatch(/^node http:\/\/bmc\/redfish\/v1\/Systems\/abc: the BMC shows no network adapters .* cannot do iSCSI boot/);
      expect(sushy.requests({ method: "PATCH" })).toEqual([]);
    } finally {
      await d.close();
      await sushy.close();
    }
  });

  it("the lab refuses bad values (400, each property named) and never quotes a secret back", async () => {
    const sys = bmc.system(1);
    const [fn] = await drv.deviceFunctions(sys.id);
    const f = await failure(drv.client.patch(fn.path, { BootMode: "Floppy", iSCSIBoot: { PrimaryLUN: "one", CHAPSecret: 4242424242, Bogus: 1 } }));
    expect(f.code).toBe("backend");
    const said = f.details.join("\n");
    for (const p of ["BootMode", "iSCSIBoot/PrimaryLUN", "iSCSIBoot/CHAPSecret", "iSCSIBoot/Bogus"]) expect(said).toContain(p);
    expect(said).not.toContain("4242424242");
    expect(bmc.system(1).networkDeviceFunction).toMatchObject({ bootMode: "Disabled" });
  });
});

describe("errors raised while the secret is in flight are scrubbed of it", () => {
  let server: http.Server;
  let url: string;
  beforeAll(async () => {
    // A BMC that quotes the refused value back, as Base.PropertyValueFormatError allows.
    server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const p = req.url ?? "";
        const send = (status: number, o: unknown) => {
          res.writeHead(status, { "Content-Type": "application/json" });
          res.end(JSON.stringify(o));
        };
        if (req.method === "PATCH") {
          const got = JSON.parse(body) as { iSCSIBoot?: { CHAPSecret?: string } };
          const v = got.iSCSIBoot?.CHAPSecret ?? "";
          return send(400, { error: { code: "Base.1.0.GeneralError", message: `bad value ${v}`, "@Message.ExtendedInfo": [{ MessageId: "Base.1.0.PropertyValueFormatError", Message: `The value ${v} for CHAPSecret is not in the right format` }] } });
        }
        if (p === "/redfish/v1/Systems/s1") return send(200, { "@odata.id": p, Id: "s1", Boot: { BootSourceOverrideTarget: "None", BootSourceOverrideEnabled: "Disabled" } });
        return send(200, { "@odata.id": "/redfish/v1/", Systems: { "@odata.id": "/redfish/v1/Systems" } });
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
  });

  it("a BMC's message quoting the CHAP secret reaches the caller without it", async () => {
    const client = new RedfishClient({ endpoint: url, auth: "basic", username: "u", password: "p" });
    const { configureIscsiBoot } = await import("./iscsi-boot");
    try {
      const fn = { path: "/redfish/v1/Chassis/c/NetworkAdapters/a/NetworkDeviceFunctions/f", id: "f", bootMode: "Disabled", allowedBootModes: ["Disabled", "iSCSI"] };
      let caught: unknown;
      try {
        await configureIscsiBoot(client, "s1", fn, REQ);
      } catch (e) {
        caught = e;
      }
      expect(isBaremetalError(caught)).toBe(true);
      const e = caught as { message: string; details: string[] };
      expect(JSON.stringify({ m: e.message, d: e.details })).not.toContain(SECRET);
      expect(JSON.stringify({ m: e.message, d: e.details })).toContain("(secret)");
    } finally {
      await client.close();
    }
  });
});

const describeTgt = describeWithPeer(tgtAvailable(), "redfish iscsi-boot.test.ts (lab login against tgt)");

describeTgt("the lab emulator's iSCSI login at boot, against a real tgtd (our emulator's behaviour, not a real BMC's)", () => {
  let tgt: TgtInstance;
  let root: string;
  let storage: FileStorageDriver;
  let bmc: LabBmc;
  let drv: RedfishDriver;
  let req: IscsiBootRequest;

  beforeAll(async () => {
    tgt = await startTgt();
    root = fs.mkdtempSync(path.join(os.tmpdir(), "bfv-unit-"));
    storage = new FileStorageDriver({ address: `file://${path.join(root, "lab")}`, iscsi: { portal: tgt.portal, controlPort: tgt.controlPort } }, { tgtSocketPath: tgt.socketPath });
    await storage.createVolume({ name: "root", sizeBytes: 32 * 1024 * 1024 });
    const e = await storage.exportVolume({ volume: "root", initiatorIqn: REQ.initiatorName, chapUser: REQ.chapUsername, chapSecret: SECRET });
    req = { ...REQ, targetName: e.targetIqn, portal: e.portal, lun: e.lun };
    bmc = await LabBmc.start({ systems: 1, bootSeconds: 0 });
    drv = driverFor(bmc);
  }, 60_000);
  afterAll(async () => {
    await drv?.close();
    await bmc?.close();
    await storage?.unexportVolume("root").catch(() => undefined);
    await storage?.close();
    await tgt?.stop();
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  const boot = async () => {
    const id = bmc.system(1).id;
    await drv.setPower(id, "off");
    await drv.setPower(id, "on");
    await bmc.settled();
    return bmc.system(1);
  };

  it("with the configured initiator and CHAP the emulated firmware logs in and runs the OS from the LUN", async () => {
    const sys = bmc.system(1);
    await drv.configureIscsiBoot(sys.id, req, { macs: sys.macAddresses, whose: "node x" });
    const t0 = Date.now();
    const after = await boot();
    expect(after.iscsiBoot).toMatchObject({ state: "logged-in", target: req.targetName, portal: req.portal, lun: req.lun, initiator: req.initiatorName, chapUser: req.chapUsername, capacityBytes: 32 * 1024 * 1024 });
    expect(after.running).toBe(`os:iscsi://${req.portal}/${req.targetName}/${req.lun}`);
    process.stdout.write(`lab iSCSI boot login (iscsi-readcapacity16 against tgtd, CHAP): ${Date.now() - t0} ms including power cycle\n`);
  });

  it("a wrong CHAP secret set by hand fails the login, visibly; the secret is not in the recorded outcome", async () => {
    const sys = bmc.system(1);
    const [fn] = await drv.deviceFunctions(sys.id);
    const wrong = "wrong-secret-by-hand-77";
    await drv.client.patch(fn.path, { iSCSIBoot: { CHAPSecret: wrong } });
    const after = await boot();
    expect(after.iscsiBoot?.state).toBe("failed");
    expect(after.iscsiBoot?.error).toBeTruthy();
    expect(after.running).toBe("nothing");
    expect(JSON.stringify(after)).not.toContain(wrong);
    expect(JSON.stringify(bmc.sideEffects("iscsi-login"))).not.toContain(wrong);
  });

  it("another initiator name is refused by the target", async () => {
    const sys = bmc.system(1);
    await drv.configureIscsiBoot(sys.id, { ...req, initiatorName: "iqn.2026-11.example:intruder" }, { macs: sys.macAddresses, whose: "node x" });
    const after = await boot();
    expect(after.iscsiBoot).toMatchObject({ state: "failed", initiator: "iqn.2026-11.example:intruder" });
  });
});
