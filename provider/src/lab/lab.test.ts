/** The lab runner: N BMCs with M systems, deterministic fixtures, provider config, tenants, TLS. */
import * as net from "node:net";
import { RedfishClient } from "../drivers/redfish/client";
import { ManualClock } from "./clock";
import { LAB_PERSONAS } from "./fixtures";
import { Lab, LabInfo, startLab } from "./lab";

const labs: Lab[] = [];
const clients: RedfishClient[] = [];

async function lab(opts: Parameters<typeof startLab>[0]): Promise<Lab> {
  const l = await startLab({ clock: new ManualClock(), bootSeconds: 0, ...opts });
  labs.push(l);
  return l;
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await Promise.all(labs.splice(0).map((l) => l.stop()));
});

/** The parts of the info that must not depend on the run (ports, lab id and pid do). */
function stable(info: LabInfo): unknown {
  const ports = new Map(info.bmcs.map((b) => [b.url, `bmc${b.index}`]));
  ports.set(new URL(info.imageStore.url).host, "image-store");
  return JSON.parse(
    JSON.stringify({ ...info, labId: "", pid: 0 }, (_k, v: unknown) =>
      typeof v === "string" ? [...ports].reduce((s, [url, name]) => s.split(url).join(name), v) : v,
    ),
  );
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

test("2 BMCs x 3 systems, flavors cycled, nodes with fixed ids, owners and resource classes", async () => {
  const l = await lab({ bmcs: 2, systems: 3, flavor: ["generic", "idrac-like"] });
  const info = l.info;
  expect(info.bmcs.map((b) => [b.index, b.flavor, b.managerId])).toEqual([
    [1, "generic", "BMC"],
    [2, "idrac-like", "iDRAC.Embedded.1"],
  ]);
  expect(info.nodes.map((n) => [n.name, n.systemId, n.owner, n.resourceClass])).toEqual([
    ["lab-bmc1-sys1", "lab-bmc1-sys1", "lab-tenant-a", "baremetal-small"],
    ["lab-bmc1-sys2", "lab-bmc1-sys2", "lab-tenant-b", "baremetal-large"],
    ["lab-bmc1-sys3", "lab-bmc1-sys3", "lab-tenant-a", "baremetal-small"],
    ["lab-bmc2-sys1", "System.Embedded.1", "lab-tenant-b", "baremetal-small"],
    ["lab-bmc2-sys2", "System.Embedded.2", "lab-tenant-a", "baremetal-large"],
    ["lab-bmc2-sys3", "System.Embedded.3", "lab-tenant-b", "baremetal-small"],
  ]);
  expect(info.nodes[3].macAddresses).toEqual(["02:1a:b0:02:01:01", "02:1a:b0:02:01:02"]);
  expect(info.nodes[4].virtualMediaUri).toBe("/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD2");
  // Every MAC is locally administered (bit 1 of the first octet) and unicast (bit 0 clear).
  for (const n of info.nodes) for (const mac of n.macAddresses) expect(parseInt(mac.slice(0, 2), 16) & 0b11).toBe(0b10);
  expect(info.credentials).toEqual({ username: "admin", password: "lab-password" });
  // The serial consoles' host keys, one known_hosts line per BMC, for the service to pin.
  const hostKeys = info.bmcs.map((b) => `[127.0.0.1]:${b.serialConsole!.port} ecdsa-sha2-nistp256 `);
  expect(info.providerConfig).toEqual({
    "baremetal:bmcUsername": "admin",
    "baremetal:bmcPassword": "lab-password",
    "baremetal:imageStoreUrl": expect.stringMatching(/^http:\/\/lab-images:lab-password@127\.0\.0\.1:\d+\/images$/),
    "baremetal:bmcSshHostKeys": expect.any(String),
  });
  const lines = String(info.providerConfig["baremetal:bmcSshHostKeys"]).split("\n");
  expect(lines.map((l) => l.replace(/\S+$/, ""))).toEqual(hostKeys);
  expect(info.secretConfig).toEqual(["baremetal:bmcPassword", "baremetal:imageStoreUrl"]);
  expect(info.env).toEqual({
    BAREMETAL_BMC_USERNAME: "admin",
    BAREMETAL_BMC_PASSWORD: "lab-password",
    BAREMETAL_IMAGE_STORE_URL: info.providerConfig["baremetal:imageStoreUrl"],
    BAREMETAL_BMC_SSH_HOST_KEYS: info.providerConfig["baremetal:bmcSshHostKeys"],
  });
  expect(info.quickstart).toEqual({ bmcAddress: info.bmcs[0].url, systemIds: ["lab-bmc1-sys1", "lab-bmc1-sys2", "lab-bmc1-sys3"] });
  expect(info.tenants.projects.map((p) => p.id)).toEqual(["system", "service", "lab-tenant-a", "lab-tenant-b"]);
  expect(info.tenants.personas["tenant-a-member"]).toEqual({ project: "lab-tenant-a", roles: ["member"] });
  expect(Object.keys(LAB_PERSONAS)).toContain("system-admin");
  expect(info.accounts.map((a) => [a.userName, a.roleId])).toEqual([
    ["admin", "Administrator"],
    ["lab-operator", "Operator"],
    ["lab-reader", "ReadOnly"],
  ]);
  expect(info.pid).toBe(process.pid);
  for (const b of info.bmcs) expect(b.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

  // The provider config works on every BMC, through our client.
  for (const n of info.nodes) {
    const c = new RedfishClient({ endpoint: n.address, username: info.credentials.username, password: info.credentials.password });
    clients.push(c);
    const f = await c.getSystemFacts(n.systemId);
    expect(f.macAddresses).toEqual(n.macAddresses);
    expect(f.uuid).toBe(n.uuid);
  }
  // The operator and reader accounts exist on every BMC.
  const reader = new RedfishClient({ endpoint: info.bmcs[1].url, username: "lab-reader", password: "lab-reader-pw", auth: "basic" });
  clients.push(reader);
  expect(await reader.listSystems()).toHaveLength(3);
});

test("two labs with the same options describe the same machines", async () => {
  const a = await lab({ bmcs: 2, systems: 2, flavor: "sushy-like" });
  const b = await lab({ bmcs: 2, systems: 2, flavor: "sushy-like" });
  expect(a.info.labId).not.toBe(b.info.labId);
  expect(stable(a.info)).toEqual(stable(b.info));
});

test("--port-base: BMC i listens on base + i - 1; a busy port fails with a clear message and leaves nothing running", async () => {
  // Other test workers take ports too: retry with another base if base + 1 happens to be taken.
  let base = 0;
  let l: Awaited<ReturnType<typeof lab>> | undefined;
  for (let attempt = 0; !l && attempt < 10; attempt++) {
    base = await freePort();
    l = await lab({ bmcs: 2, systems: 1, portBase: base }).catch((e: Error) => {
      if (!/port is in use/.test(e.message)) throw e;
      return undefined;
    });
  }
  if (!l) throw new Error("found no two free consecutive ports in 10 tries");
  expect(l.info.bmcs.map((b) => b.url)).toEqual([`http://127.0.0.1:${base}`, `http://127.0.0.1:${base + 1}`]);
  await expect(startLab({ bmcs: 1, portBase: base + 1 })).rejects.toThrow(/port-base/);
  // BMC 1 of this one starts (on base - 1), BMC 2 cannot (base is taken): BMC 1 is closed again.
  const err = (await startLab({ bmcs: 2, systems: 1, portBase: base - 1 }).catch((e: Error) => e)) as Error;
  expect(err.message).toMatch(/port-base/);
  if (err.message.includes(`:${base}:`)) {
    const s = net.createServer();
    await new Promise<void>((resolve, reject) => {
      s.once("error", reject);
      s.listen(base - 1, "127.0.0.1", () => resolve());
    });
    await new Promise<void>((r) => s.close(() => r()));
  }
});

test("options are checked", async () => {
  await expect(startLab({ bmcs: 0 })).rejects.toThrow(RangeError);
  await expect(startLab({ systems: 300 })).rejects.toThrow(/systems/);
  await expect(startLab({ flavor: "nope" as never })).rejects.toThrow(/unknown BMC flavor/);
  await expect(startLab({ password: "short" })).rejects.toThrow(/8 characters/);
});

test("idrac-like lab: the default user is root", async () => {
  const l = await lab({ flavor: "idrac-like", systems: 1 });
  expect(l.info.credentials.username).toBe("root");
  expect(l.info.providerConfig["baremetal:bmcUsername"]).toBe("root");
});

test("TLS: a throwaway certificate; the provider config carries it as bmcCaBundle and our client verifies against it", async () => {
  const l = await lab({ tls: true, systems: 1 });
  expect(l.info.bmcs[0].url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  const ca = l.info.providerConfig["baremetal:bmcCaBundle"] as string;
  expect(ca).toMatch(/^-----BEGIN CERTIFICATE-----/);
  expect(l.info.env.BAREMETAL_BMC_CA_BUNDLE).toBe(ca);
  const ok = new RedfishClient({ endpoint: l.info.bmcs[0].url, username: "admin", password: "lab-password", caBundle: ca });
  clients.push(ok);
  expect(await ok.listSystems()).toEqual(["/redfish/v1/Systems/lab-bmc1-sys1"]);
  const untrusted = new RedfishClient({ endpoint: l.info.bmcs[0].url, username: "admin", password: "lab-password" });
  clients.push(untrusted);
  await expect(untrusted.listSystems()).rejects.toMatchObject({ code: "tls" });
});
