/**
 * The lab BMC's serial console (serial-console.ts) through a real SSH client (ssh2's Client):
 * the BMC's accounts log in, the console entry command selects a system, the machine's boot
 * output streams as the emulator changes its state, a late client sees the backlog, input is
 * echoed (not for a ReadOnly account), and Redfish says where the console is.
 */
import { Client, type ClientChannel } from "ssh2";
import { LabBmc } from "./bmc";
import { ManualClock } from "./clock";
import { startLab } from "./lab";

const ADMIN = "serial-admin";
const PASSWORD = "serial-Adm1n-pw";

interface Session {
  client: Client;
  channel: ClientChannel;
  output: () => string;
  /** Resolves when the output matches (rejects after ms). */
  waitFor: (re: RegExp, ms?: number) => Promise<string>;
  exitCode: Promise<number | undefined>;
  close: () => void;
}

function open(port: number, username: string, password: string, command: string | null): Promise<Session> {
  return new Promise((resolve, reject) => {
    const client = new Client();
    client.on("error", reject);
    client.on("ready", () => {
      const onChannel = (err: Error | undefined, channel: ClientChannel) => {
        if (err) return reject(err);
        let out = "";
        const waiters: Array<() => void> = [];
        const exitCode = new Promise<number | undefined>((r) => channel.on("exit", (code: number | undefined) => r(code)));
        const collect = (b: Buffer) => {
          out += b.toString("utf8");
          for (const w of [...waiters]) w();
        };
        channel.on("data", collect);
        channel.stderr.on("data", collect);
        resolve({
          client,
          channel,
          output: () => out,
          exitCode,
          close: () => client.end(),
          waitFor: (re, ms = 5000) =>
            new Promise<string>((ok, fail) => {
              const check = () => {
                if (re.test(out)) {
                  clearTimeout(timer);
                  waiters.splice(waiters.indexOf(check), 1);
                  ok(out);
                }
              };
              const timer = setTimeout(() => {
                waiters.splice(waiters.indexOf(check), 1);
                fail(new Error(`no ${re} in the console output within ${ms} ms; got: ${JSON.stringify(out.slice(-2000))}`));
              }, ms);
              waiters.push(check);
              check();
            }),
        });
      };
      if (command === null) client.shell({ term: "xterm" }, onChannel);
      else client.exec(command, { pty: { term: "xterm" } }, onChannel);
    });
    client.connect({ host: "127.0.0.1", port, username, password, readyTimeout: 5000 });
  });
}

function loginFails(port: number, username: string, password: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const client = new Client();
    client.on("ready", () => {
      client.end();
      reject(new Error("logged in"));
    });
    client.on("error", (e) => resolve(e.message));
    client.connect({ host: "127.0.0.1", port, username, password, readyTimeout: 5000 });
  });
}

async function redfish(bmc: LabBmc, method: string, path: string, body?: unknown): Promise<{ status: number; body: Record<string, any> }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const res = await fetch(`${bmc.url}${path}`, {
    method,
    headers: { authorization: `Basic ${Buffer.from(`${ADMIN}:${PASSWORD}`).toString("base64")}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : {} };
}

describe("the lab BMC's serial console (SSH)", () => {
  let bmc: LabBmc;
  let clock: ManualClock;
  let ids: string[];
  const sessions: Session[] = [];
  const track = (s: Session) => (sessions.push(s), s);

  beforeAll(async () => {
    clock = new ManualClock();
    bmc = await LabBmc.start({ flavor: "generic", systems: 2, username: ADMIN, password: PASSWORD, clock, bootSeconds: 2, installSeconds: 5, serialConsole: true });
    ids = bmc.info().systems.map((s) => s.id);
  });
  afterEach(() => {
    for (const s of sessions.splice(0)) s.close();
  });
  afterAll(async () => {
    await bmc?.close();
  });

  it("is described where Redfish models it: the system's SerialConsole.SSH (Port, ConsoleEntryCommand), the lab info", async () => {
    const port = bmc.serialConsole!.port;
    expect(port).toBeGreaterThan(0);
    expect(port).not.toBe(bmc.port);
    const sys = await redfish(bmc, "GET", `/redfish/v1/Systems/${ids[1]}`);
    expect(sys.body.SerialConsole).toMatchObject({ SSH: { ServiceEnabled: true, Port: port, SharedWithManagerCLI: false, ConsoleEntryCommand: `console ${ids[1]}` } });
    const mgr = await redfish(bmc, "GET", bmc.managerUri);
    expect(mgr.body.SerialConsole.ConnectTypesSupported).toContain("SSH");
    expect(bmc.info().serialConsole).toEqual({ host: "127.0.0.1", port, url: `ssh://127.0.0.1:${port}` });
  });

  it("refuses a wrong password and an unknown user", async () => {
    const port = bmc.serialConsole!.port;
    expect(await loginFails(port, ADMIN, "not-the-password")).toMatch(/authentication/i);
    expect(await loginFails(port, "nobody", PASSWORD)).toMatch(/authentication/i);
  });

  it("streams POST and the boot as the machine powers on over Redfish, in lab time, and echoes input", async () => {
    const s = track(await open(bmc.serialConsole!.port, ADMIN, PASSWORD, `console ${ids[0]}`));
    await s.waitFor(/serial console of lab-bmc1-sys1/);
    expect((await redfish(bmc, "POST", `/redfish/v1/Systems/${ids[0]}/Actions/ComputerSystem.Reset`, { ResetType: "On" })).status).toBeLessThan(300);
    await s.waitFor(/POST: CPU and memory initialization/);
    expect(s.output()).not.toMatch(/No bootable device/); // still in POST: 2 lab seconds to go
    clock.advanceSeconds(2);
    await s.waitFor(/No bootable device found/); // the poll applies the boot while someone watches
    s.channel.write("hello\r");
    await s.waitFor(/hello\r\n/);
  });

  it("prints the installer's run from an HTTP boot and its power-off, without the URL's secrets; a late client sees the backlog", async () => {
    bmc.forcePower(ids[1], "Off");
    bmc.forceBoot(ids[1], { target: "UefiHttp", enabled: "Once", httpUri: "http://user:s3cret@127.0.0.1:9/images/ubuntu.iso?X-Amz-Signature=abcdef" });
    bmc.forcePower(ids[1], "On");
    clock.advanceSeconds(5);
    bmc.system(ids[1]); // settles: the installer writes the disk and powers off
    bmc.forcePower(ids[1], "On"); // boots the written disk
    const late = track(await open(bmc.serialConsole!.port, ADMIN, PASSWORD, `console 2`));
    const out = await late.waitFor(/lab-bmc1-sys2 login: /);
    const order = ["Booting from HTTP: http://127.0.0.1:9/images/ubuntu.iso", "installer: writing the image", "installer: deployment complete", "reboot: Power down", "Booting from Hard Disk", "multi-user.target"];
    const at = order.map((t) => out.indexOf(t));
    expect(at.every((i) => i >= 0)).toBe(true);
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    expect(out).toMatch(/\[\s+5\.000000\] installer: image written/);
    expect(out).not.toMatch(/s3cret|X-Amz-Signature|abcdef/);
    expect(bmc.serialConsole!.backlog(ids[1])).toContain("login: ");
  });

  it("keeps a bounded backlog", async () => {
    const small = await LabBmc.start({ flavor: "generic", systems: 1, username: ADMIN, password: PASSWORD, clock: new ManualClock(), bootSeconds: 0, serialConsole: true });
    try {
      const id = small.info().systems[0].id;
      (small.serialConsole as unknown as { backlogBytes: number }).backlogBytes = 300;
      for (let i = 0; i < 5; i++) {
        small.forcePower(id, "On");
        small.forcePower(id, "Off");
      }
      const log = small.serialConsole!.backlog(id);
      expect(Buffer.byteLength(log)).toBe(300);
      // A power-off behind the BMC's back prints nothing (the machine just loses power): the last boot's line ends it.
      expect(log.endsWith("press any key.\r\n")).toBe(true);
    } finally {
      await small.close();
    }
  });

  it("an account made through the AccountService logs in; a ReadOnly one watches but cannot type", async () => {
    const created = await redfish(bmc, "POST", "/redfish/v1/AccountService/Accounts", { UserName: "c-0a1b2c3d", Password: "Str0ng-console-pw_1", RoleId: "ReadOnly" });
    expect(created.status).toBe(201);
    const s = track(await open(bmc.serialConsole!.port, "c-0a1b2c3d", "Str0ng-console-pw_1", `console ${ids[0]}`));
    await s.waitFor(/read-only: your input is ignored/);
    const watcher = track(await open(bmc.serialConsole!.port, ADMIN, PASSWORD, `console ${ids[0]}`));
    await watcher.waitFor(/hello/); // the backlog
    s.channel.write("typed-by-readonly\r");
    watcher.channel.write("typed-by-admin\r");
    await s.waitFor(/typed-by-admin/); // every viewer sees the machine's echo
    expect(s.output()).not.toMatch(/typed-by-readonly/);
    await redfish(bmc, "DELETE", created.body["@odata.id"]);
    expect(await loginFails(bmc.serialConsole!.port, "c-0a1b2c3d", "Str0ng-console-pw_1")).toMatch(/authentication/i);
  });

  it("an unknown system gets the usage and exit status 1; ~. leaves; a shell takes the entry command at a prompt", async () => {
    const bad = track(await open(bmc.serialConsole!.port, ADMIN, PASSWORD, "console nope"));
    expect(await bad.exitCode).toBe(1);
    expect(bad.output()).toContain(`console ${ids[0]} | console ${ids[1]}`);

    const s = track(await open(bmc.serialConsole!.port, ADMIN, PASSWORD, `console ${ids[0]}`));
    await s.waitFor(/serial console of/);
    s.channel.write("\r~.");
    expect(await s.exitCode).toBe(0);
    expect(bmc.serialConsole!.attached(ids[0])).toBe(0);

    const sh = track(await open(bmc.serialConsole!.port, ADMIN, PASSWORD, null));
    await sh.waitFor(/lab-bmc1-> $/);
    sh.channel.write(`console ${ids[1]}\r`);
    await sh.waitFor(/serial console of lab-bmc1-sys2[\s\S]*login: /);
  });

  it("the lab reports each node's console; closing the BMC closes its console sessions", async () => {
    const lab = await startLab({ systems: 1, bootSeconds: 0 });
    try {
      const node = lab.info.nodes[0];
      expect(node.serialConsole).toEqual({ url: `ssh://127.0.0.1:${lab.bmcs[0].serialConsole!.port}`, entryCommand: `console ${node.systemId}` });
      expect(lab.info.bmcs[0].serialConsole?.port).toBe(lab.bmcs[0].serialConsole!.port);
      const s = await open(lab.bmcs[0].serialConsole!.port, lab.info.credentials.username, lab.info.credentials.password, node.serialConsole!.entryCommand);
      await s.waitFor(/serial console of/);
      const closed = new Promise<void>((r) => s.client.on("close", () => r()));
      await lab.stop();
      await closed;
    } finally {
      await lab.stop();
    }
  });

  it("a bare BMC has none unless asked (its shapes stay the mockup's)", async () => {
    const b = await LabBmc.start({ flavor: "generic", systems: 1 });
    try {
      expect(b.serialConsole).toBeNull();
      expect((await fetch(`${b.url}/redfish/v1/Systems/${b.info().systems[0].id}`, { headers: { authorization: `Basic ${Buffer.from(`admin:lab-password`).toString("base64")}` } }).then((r) => r.json() as Promise<Record<string, unknown>>)).SerialConsole).toBeUndefined();
    } finally {
      await b.close();
    }
  });

  it("a flavor without an SSH serial console has none", async () => {
    const b = await LabBmc.start({ flavor: "sushy-like", systems: 1, serialConsole: true });
    try {
      expect(b.serialConsole).toBeNull();
      expect(b.info().serialConsole).toBeNull();
    } finally {
      await b.close();
    }
  });
});
