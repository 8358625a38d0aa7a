import { isBaremetalError } from "../../core/errors";
import { LabBmc } from "../../lab/bmc";
import type { FlavorName } from "../../lab/flavors";
import { RedfishClient } from "./client";
import { consoleEndpoints, createConsoleAccount, deleteConsoleAccount, findConsoleAccount } from "./consoles";

const ADMIN = "console-admin";
const ADMIN_PW = "console-Adm1n-pw";

async function start(flavor: FlavorName): Promise<{ bmc: LabBmc; client: RedfishClient; systemId: string }> {
  const bmc = await LabBmc.start({ flavor, username: ADMIN, password: ADMIN_PW, systems: 1 });
  const client = new RedfishClient({ endpoint: bmc.url, username: ADMIN, password: ADMIN_PW });
  const systemId = bmc.info().systems[0].id;
  return { bmc, client, systemId };
}

describe.each(["generic", "idrac-like"] as const)("console access on a %s BMC", (flavor) => {
  let bmc: LabBmc;
  let client: RedfishClient;
  let systemId: string;

  beforeAll(async () => ({ bmc, client, systemId } = await start(flavor)));
  afterAll(async () => {
    await client?.close();
    await bmc?.close();
  });

  it("describes the serial, graphical and shell consoles of the system's manager, on the BMC's host", async () => {
    const c = await consoleEndpoints(client, systemId);
    expect(c.host).toBe("127.0.0.1");
    expect(c.managerUri).toMatch(/^\/redfish\/v1\/Managers\//);
    expect(c.serial).toEqual([
      { protocol: "SSH", url: "ssh://127.0.0.1:22", port: 22, maxConcurrentSessions: 1 },
      { protocol: "IPMI", url: "ipmi-sol://127.0.0.1:623", port: 623, maxConcurrentSessions: 1 },
    ]);
    // No NetworkProtocol in the lab: KVM is launched from the web UI at the Redfish endpoint's origin.
    expect(c.graphical).toEqual([{ protocol: "KVMIP", url: `${bmc.url}/`, maxConcurrentSessions: expect.any(Number) }]);
    expect(c.shell.map((e) => e.protocol)).toContain("SSH");
  });

  it("creates an account that can log in, with its role, idempotently, and deletes it", async () => {
    const before = bmc.accounts().length;
    const spec = { username: "c-0a1b2c3d", password: "Str0ng-console-pw_1", roleId: "Operator", expiresAt: new Date(Date.now() + 3600_000).toISOString() };
    const created = await createConsoleAccount(client, spec);
    expect(created.mode).toBe(flavor === "generic" ? "collection" : "slots");
    const mine = bmc.accounts().find((a) => a.userName === spec.username);
    expect(mine).toMatchObject({ roleId: "Operator", enabled: true });
    expect(mine?.expiresAt).toBe(Date.parse(spec.expiresAt));
    expect(bmc.accounts()).toHaveLength(before + 1);

    const user = new RedfishClient({ endpoint: bmc.url, username: spec.username, password: spec.password });
    try {
      await expect(user.listSystems()).resolves.toHaveLength(1);
    } finally {
      await user.close();
    }

    // Again: the same account (no second one), password and role set again.
    const again = await createConsoleAccount(client, { ...spec, roleId: "ReadOnly" });
    expect(again.uri).toBe(created.uri);
    expect(bmc.accounts()).toHaveLength(before + 1);
    expect(bmc.accounts().find((a) => a.userName === spec.username)?.roleId).toBe("ReadOnly");
    expect((await findConsoleAccount(client, spec.username))?.uri).toBe(created.uri);

    await expect(deleteConsoleAccount(client, spec.username)).resolves.toBe(true);
    expect(bmc.accounts().find((a) => a.userName === spec.username)).toBeUndefined();
    expect(bmc.accounts()).toHaveLength(before);
    await expect(deleteConsoleAccount(client, spec.username)).resolves.toBe(false);
    await expect(findConsoleAccount(client, spec.username)).resolves.toBeUndefined();
  });

  it("reuses a freed account slot or id for the next account", async () => {
    const a = await createConsoleAccount(client, { username: "c-11111111", password: "Str0ng-console-pw_2", roleId: "ReadOnly" });
    await deleteConsoleAccount(client, "c-11111111");
    const b = await createConsoleAccount(client, { username: "c-22222222", password: "Str0ng-console-pw_3", roleId: "ReadOnly" });
    if (flavor === "idrac-like") expect(b.uri).toBe(a.uri);
    expect(bmc.accounts().some((x) => x.userName === "c-11111111")).toBe(false);
    await deleteConsoleAccount(client, "c-22222222");
  });
});

describe("console access on a sushy-like BMC (no AccountService, no consoles)", () => {
  let bmc: LabBmc;
  let client: RedfishClient;
  let systemId: string;

  beforeAll(async () => ({ bmc, client, systemId } = await start("sushy-like")));
  afterAll(async () => {
    await client?.close();
    await bmc?.close();
  });

  it("says console credentials are not available", async () => {
    const e = await createConsoleAccount(client, { username: "c-33333333", password: "Str0ng-console-pw_4", roleId: "Operator" }).catch((x) => x);
    expect(isBaremetalError(e) && e.code).toBe("validation");
    expect(String(e.message)).toMatch(/console credentials are not available on this BMC/);
    expect(String(e.message)).not.toContain("Str0ng");
  });

  it("has no console endpoints and nothing to delete", async () => {
    const c = await consoleEndpoints(client, systemId);
    expect(c.serial).toEqual([]);
    expect(c.graphical).toEqual([]);
    expect(c.shell).toEqual([]);
    await expect(deleteConsoleAccount(client, "c-33333333")).resolves.toBe(false);
  });
});

describe("console endpoints from a manager's NetworkProtocol", () => {
  const docs: Record<string, object> = {
    "/redfish/v1/": { "@odata.id": "/redfish/v1/", Systems: { "@odata.id": "/redfish/v1/Systems" } },
    "/redfish/v1/Systems/1": { "@odata.id": "/redfish/v1/Systems/1", Id: "1", Links: { ManagedBy: [{ "@odata.id": "/redfish/v1/Managers/bmc" }] } },
    "/redfish/v1/Managers/bmc": {
      "@odata.id": "/redfish/v1/Managers/bmc",
      NetworkProtocol: { "@odata.id": "/redfish/v1/Managers/bmc/NetworkProtocol" },
      SerialConsole: { ServiceEnabled: true, MaxConcurrentSessions: 1, ConnectTypesSupported: ["SSH", "IPMI", "Telnet"], SSH: { ServiceEnabled: true, Port: 2200 } },
      GraphicalConsole: { ServiceEnabled: true, MaxConcurrentSessions: 4, ConnectTypesSupported: ["KVMIP"] },
      CommandShell: { ServiceEnabled: false, ConnectTypesSupported: ["SSH"] },
    },
    "/redfish/v1/Managers/bmc/NetworkProtocol": {
      SSH: { ProtocolEnabled: true, Port: 22 },
      IPMI: { ProtocolEnabled: true, Port: 6230 },
      Telnet: { ProtocolEnabled: false, Port: 23 },
      KVMIP: { ProtocolEnabled: true, Port: 5900 },
      HTTPS: { ProtocolEnabled: true, Port: 8443 },
    },
  };
  let server: import("node:http").Server;
  let url: string;

  beforeAll(async () => {
    const http = await import("node:http");
    server = http.createServer((req, res) => {
      const doc = docs[req.url ?? ""] ?? docs[`${req.url}/`];
      res.writeHead(doc ? 200 : 404, { "Content-Type": "application/json" });
      res.end(JSON.stringify(doc ?? {}));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    url = `http://127.0.0.1:${(server.address() as import("node:net").AddressInfo).port}`;
  });
  afterAll(async () => new Promise((r) => server.close(r)));

  it("uses the linked ports, the per-protocol serial port, and leaves out disabled protocols and services", async () => {
    const client = new RedfishClient({ endpoint: url, auth: "basic", username: "u", password: "p" });
    const c = await consoleEndpoints(client, "1");
    expect(c.serial).toEqual([
      { protocol: "SSH", url: "ssh://127.0.0.1:2200", port: 2200, maxConcurrentSessions: 1 },
      { protocol: "IPMI", url: "ipmi-sol://127.0.0.1:6230", port: 6230, maxConcurrentSessions: 1 },
    ]);
    expect(c.graphical).toEqual([{ protocol: "KVMIP", url: "https://127.0.0.1:8443/", port: 5900, maxConcurrentSessions: 4 }]);
    expect(c.shell).toEqual([]);
    await client.close();
  });
});
