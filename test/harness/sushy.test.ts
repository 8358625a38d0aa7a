import * as fs from "node:fs";
import * as https from "node:https";
import axios from "axios";
import { startSushy, SushyInstance } from "./sushy";

/** Poll `probe` until it returns a value other than undefined, or fail after `timeoutMs`. */
async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

describe("sushy-tools harness", () => {
  let bmc: SushyInstance | undefined;

  afterEach(async () => {
    await bmc?.stop();
    bmc = undefined;
  });

  it("serves N fake systems behind Basic auth, changes power state, and stops by PID", async () => {
    bmc = await startSushy({ systems: 2, username: "admin", password: "s3cret pw" });
    const { url, systemIds, pid } = bmc;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(systemIds).toHaveLength(2);
    expect(pidAlive(pid)).toBe(true);

    const anon = axios.create({ baseURL: url, validateStatus: () => true });
    // The service root is open, as Redfish requires; everything else needs credentials.
    expect((await anon.get("/redfish/v1/")).status).toBe(200);
    const denied = await anon.get("/redfish/v1/Systems");
    expect(denied.status).toBe(401);
    expect(String(denied.headers["www-authenticate"])).toMatch(/^Basic /);
    const wrong = await anon.get("/redfish/v1/Systems", { auth: { username: "admin", password: "nope" } });
    expect(wrong.status).toBe(401);

    const list = await bmc.http.get("/redfish/v1/Systems");
    expect(list.status).toBe(200);
    expect(list.data["Members@odata.count"]).toBe(2);
    expect(list.data.Members.map((m: { "@odata.id": string }) => m["@odata.id"]).sort()).toEqual(
      systemIds.map((id) => `/redfish/v1/Systems/${id}`).sort(),
    );

    const [target, other] = systemIds;
    const before = await bmc.http.get(`/redfish/v1/Systems/${target}`);
    expect(before.status).toBe(200);
    expect(before.data.PowerState).toBe("On");

    const reset = await bmc.http.post(`/redfish/v1/Systems/${target}/Actions/ComputerSystem.Reset`, {
      ResetType: "ForceOff",
    });
    expect(reset.status).toBe(204);
    // The fake driver applies power changes 0-11 s later.
    await waitFor("PowerState Off", 20000, async () => {
      const r = await bmc!.http.get(`/redfish/v1/Systems/${target}`);
      return r.data.PowerState === "Off" ? true : undefined;
    });
    expect((await bmc.http.get(`/redfish/v1/Systems/${other}`)).data.PowerState).toBe("On");

    const instance = bmc;
    bmc = undefined;
    await instance.stop();
    expect(pidAlive(pid)).toBe(false);
    expect(fs.existsSync(instance.dir)).toBe(false);
    await instance.stop(); // idempotent
  });

  it("serves HTTPS with a throwaway certificate that clients can pin", async () => {
    bmc = await startSushy({ tls: true });
    expect(bmc.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(bmc.ca).toContain("BEGIN CERTIFICATE");
    const ok = await bmc.http.get("/redfish/v1/Systems");
    expect(ok.status).toBe(200);
    expect(ok.data.Members).toHaveLength(1);
    // Without trusting the certificate, a client must refuse to talk.
    await expect(axios.get(`${bmc.url}/redfish/v1/`, { httpsAgent: new https.Agent({ keepAlive: false }) })).rejects.toThrow(
      /self[- ]signed|certificate/i,
    );
  });

  it("gives every instance its own state, so earlier power changes never leak in", async () => {
    const a = await startSushy({ systems: 1, powerState: "Off" });
    try {
      expect((await a.http.get(`/redfish/v1/Systems/${a.systemIds[0]}`)).data.PowerState).toBe("Off");
    } finally {
      await a.stop();
    }
    bmc = await startSushy({ systems: 1 });
    expect((await bmc.http.get(`/redfish/v1/Systems/${bmc.systemIds[0]}`)).data.PowerState).toBe("On");
    expect(bmc.systemIds).toEqual(a.systemIds); // same fixed UUIDs, separate state
    expect(fs.existsSync(a.dir)).toBe(false);
  });
});
