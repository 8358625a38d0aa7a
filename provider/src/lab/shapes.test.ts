/**
 * Shapes against the DMTF public mockup (shared/redfish-mockups/dmtf-public-rackmount1): every
 * property (at every depth; arrays as `[]`) of every resource the lab serves must also occur in a
 * mockup resource of the same @odata.type namespace, unless it is listed in JUSTIFIED with the
 * Redfish schema that defines it. The @odata.type of each resource must have the mockup's
 * namespace and schema version.
 *
 * Storage and Drive (the emulated disk) are not in rackmount1 (it has only SimpleStorage); they
 * are checked against DMTF's public-localstorage mockup (DSP2043 release 2025.4; DMTF/Redfish-Publications
 * commit 26c94965, mockups/public-localstorage/Systems/437XR1138R2/Storage, BSD-3-Clause). That mockup is not in
 * shared/ (yet): LOCALSTORAGE below lists the property paths of its StorageCollection, Storage/1
 * and Drive 32ADF365C6C1B7BD resources. When shared/redfish-mockups/dmtf-public-localstorage
 * exists, its files are read instead, and the list must agree with them.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { LabBmc } from "./bmc";
import { ManualClock } from "./clock";
import { FLAVOR_NAMES, FlavorName } from "./flavors";

const MOCKUP = path.resolve(__dirname, "../../../../shared/redfish-mockups/dmtf-public-rackmount1");
const LOCALSTORAGE_DIR = path.resolve(__dirname, "../../../../shared/redfish-mockups/dmtf-public-localstorage");

/** The public-localstorage resources LOCALSTORAGE transcribes. */
const LOCALSTORAGE_FILES = [
  "Systems/437XR1138R2/Storage/index.json",
  "Systems/437XR1138R2/Storage/1/index.json",
  "Systems/437XR1138R2/Storage/1/Drives/32ADF365C6C1B7BD/index.json",
];

/** Property paths of DMTF public-localstorage's storage resources, by namespace (with their schema version). */
const LOCALSTORAGE: Record<string, { version: string; paths: string[] }> = {
  StorageCollection: {
    version: "",
    paths: ["@odata.type", "@odata.id", "Name", "Members@odata.count", "Members", "Members[]/@odata.id"],
  },
  Storage: {
    version: "v1_21_0",
    paths: [
      "@odata.type", "@odata.id", "Id", "Name", "Description",
      "Status", "Status/State", "Status/Health", "Status/HealthRollup",
      "StorageControllers", "StorageControllers[]/@odata.id", "StorageControllers[]/MemberId", "StorageControllers[]/Name",
      "StorageControllers[]/Status", "StorageControllers[]/Status/State", "StorageControllers[]/Status/Health",
      "StorageControllers[]/Identifiers", "StorageControllers[]/Identifiers[]/DurableNameFormat", "StorageControllers[]/Identifiers[]/DurableName",
      "StorageControllers[]/Manufacturer", "StorageControllers[]/Model", "StorageControllers[]/SerialNumber", "StorageControllers[]/PartNumber",
      "StorageControllers[]/SpeedGbps", "StorageControllers[]/FirmwareVersion",
      "StorageControllers[]/SupportedControllerProtocols", "StorageControllers[]/SupportedDeviceProtocols",
      "StorageControllers[]/CacheSummary", "StorageControllers[]/CacheSummary/TotalCacheSizeMiB", "StorageControllers[]/CacheSummary/PersistentCacheSizeMiB",
      "StorageControllers[]/CacheSummary/Status", "StorageControllers[]/CacheSummary/Status/State", "StorageControllers[]/CacheSummary/Status/Health",
      "Drives", "Drives[]/@odata.id", "Volumes", "Volumes/@odata.id",
      "Actions", "Actions/#Storage.SetEncryptionKey", "Actions/#Storage.SetEncryptionKey/target",
    ],
  },
  Drive: {
    version: "v1_21_0",
    paths: [
      "@odata.type", "@odata.id", "Id", "Name", "IndicatorLED", "Model", "Revision",
      "Status", "Status/State", "Status/Health",
      "CapacityBytes", "FailurePredicted", "Protocol", "MediaType", "Manufacturer", "SerialNumber", "PartNumber",
      "Identifiers", "Identifiers[]/DurableNameFormat", "Identifiers[]/DurableName",
      "HotspareType", "HotspareReplacementMode", "EncryptionAbility", "EncryptionStatus",
      "RotationSpeedRPM", "BlockSizeBytes", "CapableSpeedGbs", "NegotiatedSpeedGbs",
      "Actions", "Actions/#Drive.SecureErase", "Actions/#Drive.SecureErase/target",
    ],
  },
};

type Json = Record<string, unknown>;

/**
 * Properties the lab serves that the mockup's resources happen not to have, with the DMTF schema
 * (DSP8010) that defines them. Paths use "/" between levels and "[]" for array members.
 */
const JUSTIFIED: Record<string, Record<string, string>> = {
  "*": {
    "@odata.etag": "OData annotation of the resource's ETag (DSP0266 'ETags'); the mockup is static and has none",
  },
  ServiceRoot: {
    Vendor: "ServiceRoot.v1_5_0",
    Product: "ServiceRoot.v1_3_0",
  },
  ComputerSystem: {
    Storage: "ComputerSystem.v1_1_0 link to the StorageCollection (the public-localstorage mockup's system has it; rackmount1's has only SimpleStorage)",
    "Storage/@odata.id": "the link's @odata.id",
    "Boot/BootSourceOverrideEnabled@Redfish.AllowableValues": "@Redfish.AllowableValues annotation (DSP0266) on the enum property Boot.BootSourceOverrideEnabled",
    "Boot/BootSourceOverrideMode@Redfish.AllowableValues": "@Redfish.AllowableValues annotation (DSP0266) on the enum property Boot.BootSourceOverrideMode (ComputerSystem.v1_1_0)",
    "Boot/HttpBootUri": "ComputerSystem.v1_9_0 Boot.HttpBootUri: the URI UEFI HTTP boot (target UefiHttp) boots; the mockup's system predates it",
  },
  Chassis: {
    NetworkAdapters: "Chassis.v1_4_0 link to the NetworkAdapterCollection (where iSCSI boot is configured; the mockup's chassis has none)",
    "NetworkAdapters/@odata.id": "the link's @odata.id",
  },
  Manager: {
    "VirtualMedia": "Manager.v1_0_0 VirtualMedia link (deprecated in v1_10_0 in favour of ComputerSystem.VirtualMedia; iDRAC-like BMCs still use it)",
    "VirtualMedia/@odata.id": "the link's @odata.id",
  },
  VirtualMedia: {
    Actions: "VirtualMedia.v1_2_0 actions",
    "Actions/#VirtualMedia.InsertMedia": "VirtualMedia.v1_2_0 InsertMedia action",
    "Actions/#VirtualMedia.InsertMedia/target": "the action's target (DSP0266 'Actions')",
    "Actions/#VirtualMedia.InsertMedia/TransferProtocolType@Redfish.AllowableValues": "@Redfish.AllowableValues of the action parameter TransferProtocolType (VirtualMedia.v1_3_0)",
    "Actions/#VirtualMedia.EjectMedia": "VirtualMedia.v1_2_0 EjectMedia action",
    "Actions/#VirtualMedia.EjectMedia/target": "the action's target (DSP0266 'Actions')",
    TransferProtocolType: "VirtualMedia.v1_3_0",
    TransferMethod: "VirtualMedia.v1_3_0",
    UserName: "VirtualMedia.v1_3_0",
  },
  Session: {
    CreatedTime: "Session.v1_4_0",
  },
  AccountService: {
    MaxPasswordLength: "AccountService.v1_0_0",
  },
  ManagerAccount: {
    AccountExpiration: "ManagerAccount.v1_8_0 (time-limited accounts)",
  },
  Task: {
    PercentComplete: "Task.v1_4_0",
    TaskMonitor: "Task.v1_2_0",
    "Messages[]/MessageSeverity": "Message.v1_1_0 (replaces the deprecated Severity the mockup uses)",
    "Messages[]/Resolution": "Message.v1_0_0",
  },
};

/**
 * Types the mockup does not serve at all, with the DMTF schema defining them and every property
 * path the lab may serve (checked like the mockup's: nothing else).
 */
const NOT_IN_MOCKUP: Record<string, { schema: string; paths: string[] }> = {
  NetworkAdapterCollection: { schema: "NetworkAdapterCollection", paths: ["@odata.id", "@odata.type", "@odata.etag", "Name", "Members", "Members[]/@odata.id", "Members@odata.count"] },
  NetworkDeviceFunctionCollection: { schema: "NetworkDeviceFunctionCollection", paths: ["@odata.id", "@odata.type", "@odata.etag", "Name", "Members", "Members[]/@odata.id", "Members@odata.count"] },
  NetworkAdapter: {
    schema: "NetworkAdapter.v1_9_0",
    paths: ["@odata.id", "@odata.type", "@odata.etag", "Id", "Name", "Manufacturer", "Model", "Status", "Status/State", "Status/Health", "NetworkDeviceFunctions", "NetworkDeviceFunctions/@odata.id"],
  },
  NetworkDeviceFunction: {
    schema: "NetworkDeviceFunction.v1_5_0 (BootMode, iSCSIBoot: v1_0_0; Links.EthernetInterface: v1_2_0)",
    paths: [
      "@odata.id", "@odata.type", "@odata.etag", "Id", "Name", "Status", "Status/State", "Status/Health",
      "NetDevFuncType", "NetDevFuncCapabilities", "DeviceEnabled",
      "Ethernet", "Ethernet/MACAddress", "Ethernet/PermanentMACAddress", "Ethernet/MTUSize",
      "BootMode", "BootMode@Redfish.AllowableValues",
      "iSCSIBoot", "iSCSIBoot/IPAddressType", "iSCSIBoot/InitiatorIPAddress", "iSCSIBoot/InitiatorName", "iSCSIBoot/InitiatorDefaultGateway",
      "iSCSIBoot/InitiatorNetmask", "iSCSIBoot/TargetInfoViaDHCP", "iSCSIBoot/PrimaryTargetName", "iSCSIBoot/PrimaryTargetIPAddress",
      "iSCSIBoot/PrimaryTargetTCPPort", "iSCSIBoot/PrimaryLUN", "iSCSIBoot/PrimaryVLANEnable", "iSCSIBoot/PrimaryVLANId", "iSCSIBoot/PrimaryDNS",
      "iSCSIBoot/IPMaskDNSViaDHCP", "iSCSIBoot/AuthenticationMethod", "iSCSIBoot/CHAPUsername", "iSCSIBoot/CHAPSecret",
      "iSCSIBoot/MutualCHAPUsername", "iSCSIBoot/MutualCHAPSecret",
      "Links", "Links/EthernetInterface", "Links/EthernetInterface/@odata.id",
    ],
  },
};

/** The resource types the brief names: each must be served by at least one flavor and checked. */
const REQUIRED = ["ServiceRoot", "ComputerSystem", "Manager", "VirtualMedia", "EthernetInterface", "SessionService", "AccountService", "Chassis", "Storage", "Drive"];

function typeOf(r: Json): { namespace: string; version: string } | undefined {
  const t = r["@odata.type"];
  if (typeof t !== "string") return undefined;
  const m = /^#([A-Za-z]+)\.(?:(v\d+_\d+_\d+)\.)?([A-Za-z]+)$/.exec(t);
  if (!m) throw new Error(`malformed @odata.type ${t}`);
  expect(m[3]).toBe(m[1]); // #Namespace.vX_Y_Z.Namespace
  return { namespace: m[1], version: m[2] ?? "" };
}

/** Every property path of a resource; Oem and the mockup's copyright are left out. */
function paths(v: unknown, prefix = "", out = new Set<string>()): Set<string> {
  if (Array.isArray(v)) {
    for (const x of v) if (x && typeof x === "object") paths(x, `${prefix}[]`, out);
    return out;
  }
  if (!v || typeof v !== "object") return out;
  for (const [k, x] of Object.entries(v)) {
    if (k === "Oem" || k === "@Redfish.Copyright") continue;
    const p = prefix ? `${prefix}/${k}` : k;
    out.add(p);
    paths(x, Array.isArray(x) ? p : p, out);
  }
  return out;
}

type MockupIndex = Map<string, { versions: Set<string>; paths: Set<string>; count: number }>;

function loadMockup(): MockupIndex {
  const byType: MockupIndex = new Map();
  walkMockup(MOCKUP, byType);
  if (fs.existsSync(LOCALSTORAGE_DIR)) {
    for (const f of LOCALSTORAGE_FILES) addResource(JSON.parse(fs.readFileSync(path.join(LOCALSTORAGE_DIR, f), "utf8")) as Json, byType);
  } else {
    for (const [namespace, { version, paths: list }] of Object.entries(LOCALSTORAGE)) {
      byType.set(namespace, { versions: new Set([version]), paths: new Set(list), count: 1 });
    }
  }
  return byType;
}

function addResource(r: Json, byType: MockupIndex): void {
  const t = typeOf(r);
  if (!t) return;
  const entry = byType.get(t.namespace) ?? { versions: new Set<string>(), paths: new Set<string>(), count: 0 };
  entry.versions.add(t.version);
  entry.count++;
  for (const x of paths(r)) entry.paths.add(x);
  byType.set(t.namespace, entry);
}

function walkMockup(root: string, byType: MockupIndex): void {
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name === "index.json") addResource(JSON.parse(fs.readFileSync(p, "utf8")) as Json, byType);
    }
  };
  walk(root);
}

async function get(b: LabBmc, p: string, init: RequestInit = {}): Promise<{ status: number; body: Json; headers: Headers }> {
  const headers = { Authorization: `Basic ${Buffer.from(`${b.username}:${b.password}`).toString("base64")}`, "Content-Type": "application/json" };
  const res = await fetch(b.url + p, { ...init, headers: { ...headers, ...(init.headers as Record<string, string>) } });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as Json) : {}, headers: res.headers };
}

/** Every resource a flavor serves, after making a session, an account and a task exist. */
async function crawl(flavor: FlavorName): Promise<Json[]> {
  const clock = new ManualClock();
  const b = await LabBmc.start({ flavor, systems: 2, clock, bootSeconds: 0 });
  try {
    if (b.flavor.sessions) {
      const r = await get(b, "/redfish/v1/SessionService/Sessions", { method: "POST", body: JSON.stringify({ UserName: b.username, Password: b.password }) });
      expect(r.status).toBe(201);
    }
    if (b.flavor.accounts?.mode === "collection") {
      const r = await get(b, "/redfish/v1/AccountService/Accounts", {
        method: "POST",
        body: JSON.stringify({ UserName: "shape-check", Password: "shape-check-pw", RoleId: "ReadOnly", AccountExpiration: "2030-01-01T00:00:00Z" }),
      });
      expect(r.status).toBe(201);
    }
    const media = b.system(1).virtualMedia.uri;
    const ins = await get(b, `${media}/Actions/VirtualMedia.InsertMedia`, { method: "POST", body: JSON.stringify({ Image: "http://192.0.2.10/x.iso" }) });
    expect([202, 204]).toContain(ins.status);
    clock.advance(60_000); // tasks are done: a Task answers 200 (EndTime included)

    const out: Json[] = [];
    const seen = new Set<string>();
    const queue = ["/redfish/v1/"];
    while (queue.length) {
      const p = queue.shift()!;
      if (seen.has(p) || p.includes("/Actions/") || p.includes("/TaskMonitors/")) continue;
      seen.add(p);
      const r = await get(b, p);
      if (r.status !== 200) continue; // sushy-like: 501 for Processors/Memory
      out.push(r.body);
      const walk = (v: unknown): void => {
        if (Array.isArray(v)) v.forEach(walk);
        else if (v && typeof v === "object") {
          for (const [k, x] of Object.entries(v)) {
            if (k === "@odata.id" && typeof x === "string") queue.push(x);
            else walk(x);
          }
        }
      };
      walk(r.body);
    }
    return out;
  } finally {
    await b.close();
  }
}

describe("resource shapes match the DMTF public mockup", () => {
  const mockup = loadMockup();
  const checked = new Set<string>();
  const used = new Set<string>();
  let propertiesChecked = 0;

  test("the mockup is there", () => {
    expect(mockup.get("ComputerSystem")?.count).toBe(1);
    expect(mockup.size).toBeGreaterThan(40);
    expect(mockup.has("Storage") && mockup.has("Drive")).toBe(true);
  });

  test("the transcribed public-localstorage paths agree with its files, where they are present", () => {
    if (!fs.existsSync(LOCALSTORAGE_DIR)) return; // only the transcription is there: nothing to compare
    for (const [namespace, { version, paths: list }] of Object.entries(LOCALSTORAGE)) {
      const m = mockup.get(namespace)!;
      expect([namespace, m.versions.has(version)]).toEqual([namespace, true]);
      expect([namespace, [...m.paths].sort()]).toEqual([namespace, [...list].sort()]);
    }
  });

  for (const flavor of FLAVOR_NAMES) {
    test(`${flavor}: every property is in the mockup's resource of the same type (or justified)`, async () => {
      const resources = await crawl(flavor);
      const problems: string[] = [];
      for (const r of resources) {
        const t = typeOf(r);
        if (!t) continue; // the OData service document
        const m = mockup.get(t.namespace);
        if (!m) {
          const known = NOT_IN_MOCKUP[t.namespace];
          if (!known) problems.push(`${r["@odata.id"]}: type ${t.namespace} is not in the mockup`);
          else for (const p of paths(r)) if (!known.paths.includes(p)) problems.push(`${r["@odata.id"]}: ${t.namespace} property ${p} is not among those listed for ${known.schema}`);
          continue;
        }
        if (!m.versions.has(t.version)) problems.push(`${r["@odata.id"]}: ${t.namespace} ${t.version}, the mockup has ${[...m.versions].join(", ")}`);
        const extra = JUSTIFIED[t.namespace] ?? {};
        for (const p of paths(r)) {
          propertiesChecked++;
          if (m.paths.has(p)) continue;
          if (JUSTIFIED["*"][p] || extra[p]) {
            used.add(`${extra[p] ? t.namespace : "*"} ${p}`);
            continue;
          }
          problems.push(`${r["@odata.id"]}: ${t.namespace} property ${p} is neither in the mockup nor justified`);
        }
        checked.add(t.namespace);
      }
      expect(problems).toEqual([]);
    });
  }

  test("the types the brief names were all checked; every justification is needed and used", () => {
    for (const t of REQUIRED) expect([t, checked.has(t)]).toEqual([t, true]);
    expect(checked.has("Task")).toBe(true);
    expect(checked.has("ManagerAccount")).toBe(true);
    expect(checked.has("Session")).toBe(true);
    for (const [type, list] of Object.entries(JUSTIFIED)) {
      for (const p of Object.keys(list)) {
        // A justification is needed (the mockup lacks the property) and used (the lab serves it).
        if (type !== "*") expect([type, p, mockup.get(type)?.paths.has(p)]).toEqual([type, p, false]);
        expect([type, p, used.has(`${type} ${p}`)]).toEqual([type, p, true]);
      }
    }
    expect(propertiesChecked).toBeGreaterThan(1000);
  });
});
