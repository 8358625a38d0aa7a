/**
 * The browser console (issue 8, item 5) end to end: the service's page in headless Chromium
 * (Playwright driving Debian's /usr/bin/chromium) opens a lab node's serial console over the
 * websocket, which the service connects to the lab BMC's serial-over-SSH console with ITS BMC
 * credentials. The owner's token sees the node boot on the page; another project's token gets a
 * refused websocket and the page says so; the audit log has both.
 */
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { chromium, type Browser } from "playwright-core";
import { utils as sshUtils } from "ssh2";
import { ProviderHost } from "../../provider/src/core/host";
import { type Lab, startLab } from "../../provider/src/lab/lab";
import { createService, type LogEntry } from "../../provider/src/service/api";
import { InventoryTokenStore, TokenService } from "../../provider/src/service/tokens";

jest.setTimeout(120_000);

const CHROMIUM = "/usr/bin/chromium";

describe("the browser console", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "browser-console-"));
  const host = new ProviderHost();
  const logs: LogEntry[] = [];
  let lab: Lab;
  let server: ReturnType<typeof createService>;
  let base: string;
  let browser: Browser | undefined;
  const tok: Record<string, string> = {};
  let nodeId: string;

  /** The service's settings: the lab BMCs' credentials and their serial consoles' host keys, unless `hostKeys` says otherwise. */
  const settings = (hostKeys?: Record<string, unknown>) => ({
    inventoryUrl: `sqlite://${path.join(dir, "inventory.db")}`,
    bmcUsername: lab.info.credentials.username,
    bmcPassword: lab.info.credentials.password,
    ...(hostKeys ?? { bmcSshHostKeys: lab.info.providerConfig["baremetal:bmcSshHostKeys"] }),
  });
  /** A websocket upgrade of the console by `token`: the status the service answers and its body. */
  const upgrade = (token: string) =>
    new Promise<{ status?: number; body: string }>((resolve, reject) => {
      const req = http.get(`${base}/v1/nodes/${encodeURIComponent(nodeId)}/console`, {
        headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-protocol": `baremetal.console, bearer.${token}` },
      });
      req.on("response", (res) => {
        let body = "";
        res.on("data", (b: Buffer) => (body += b.toString()));
        res.on("end", () => resolve({ status: res.statusCode, body }));
      });
      req.on("upgrade", (res, socket) => {
        socket.destroy();
        resolve({ status: res.statusCode, body: "" });
      });
      req.on("error", reject);
    });

  beforeAll(async () => {
    if (!fs.existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: run scripts/bootstrap.sh (it installs Debian's chromium for the browser tests)`);
    }
    lab = await startLab({ systems: 1, bootSeconds: 1 });
    nodeId = lab.info.nodes[0].systemUri.startsWith("http") ? lab.info.nodes[0].systemUri : `${lab.info.nodes[0].address}${lab.info.nodes[0].systemUri}`;
    host.configure(settings());
    const inv = await host.providerContext().inventory();
    await inv.upsertNode({ id: nodeId, name: "console-node", owner: "project-a", lessee: "project-l" });
    const tokens = new TokenService(new InventoryTokenStore(inv), { defaultRatePerMinute: 1000 });
    tok.a = (await tokens.issue({ name: "tenant-a", projectId: "project-a", roles: ["member", "reader"] })).token;
    tok.b = (await tokens.issue({ name: "tenant-b", projectId: "project-b", roles: ["member", "reader"] })).token;
    tok.lesseeManager = (await tokens.issue({ name: "lessee-manager", projectId: "project-l", roles: ["manager", "member", "reader"] })).token;
    tok.lesseeMember = (await tokens.issue({ name: "lessee-member", projectId: "project-l", roles: ["member", "reader"] })).token;
    server = createService({ host, tokens, log: (e) => logs.push(e) });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      // Playwright gives every launch a fresh, empty --user-data-dir of its own (and removes it).
    });
  });

  afterAll(async () => {
    await browser?.close();
    if (server) {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
    await host.close();
    await lab?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /**
   * The terminal's whole buffer (scrollback included), as text. Runs in the page (a function, not
   * a string: the page's CSP forbids eval); this test has no DOM types, hence globalThis.
   */
  const bufferText = (): string => {
    const b = (globalThis as unknown as { consoleTerminal: { buffer: { active: { length: number; getLine(i: number): { translateToString(trim: boolean): string } | undefined } } } }).consoleTerminal.buffer.active;
    const lines: string[] = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
    return lines.join("\n");
  };
  const terminalText = (page: import("playwright-core").Page) => page.evaluate(bufferText);
  /** Polls the terminal's text until it matches. */
  const waitForText = async (page: import("playwright-core").Page, re: RegExp, timeout = 15_000): Promise<string> => {
    const until = Date.now() + timeout;
    for (;;) {
      const text = await terminalText(page);
      if (re.test(text)) return text;
      if (Date.now() > until) throw new Error(`the page's terminal never showed ${re}; it shows:\n${text.trimEnd()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };

  test("the owner's token shows the node's boot output on the page; input reaches the console", async () => {
    const context = await browser!.newContext();
    const page = await context.newPage();
    const requests: string[] = [];
    page.on("request", (r) => requests.push(r.url()));
    await page.goto(`${base}/console?node=${encodeURIComponent(nodeId)}#token=${tok.a}`);
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 15_000 });
    // The token left the address bar; no request carried it in its URL.
    expect(page.url()).not.toContain(tok.a);
    expect(requests.some((u) => u.includes(tok.a))).toBe(false);

    // Power the node on behind the BMC's back: POST, then (a lab second later) the boot.
    lab.bmcs[0].forcePower(lab.info.nodes[0].systemId, "On");
    await waitForText(page, /No bootable device found/);
    const text = await terminalText(page);
    expect(text).toContain("serial console of lab-bmc1-sys1");
    expect(text).toContain("POST: CPU and memory initialization ... ok");
    expect(text).toContain("No bootable device found");

    // Typing in the page goes to the machine, which echoes it.
    await page.locator(".xterm").click();
    await page.keyboard.type("hello-from-browser");
    await waitForText(page, /hello-from-browser/, 10_000);
    expect(lab.bmcs[0].serialConsole!.backlog(lab.info.nodes[0].systemId)).toContain("hello-from-browser");
    await context.close();
  });

  test("another project's token gets a refused websocket and the page says so; the audit log has both opens", async () => {
    const context = await browser!.newContext();
    const page = await context.newPage();
    await page.goto(`${base}/console?node=${encodeURIComponent(nodeId)}#token=${tok.b}`);
    await page.waitForSelector('#status[data-state="refused"]', { timeout: 15_000 });
    expect(await page.locator("#status").textContent()).toMatch(/console refused/);
    await context.close();

    // The refusal itself: 403 in the service's error shape, before any websocket.
    const refusal = await upgrade(tok.b);
    expect(refusal.status).toBe(403);
    expect(JSON.parse(refusal.body)).toEqual({ requestId: expect.any(String), errorCode: expect.any(String), message: expect.stringMatching(/get_console/) });

    const audit = await (await host.providerContext().inventory()).listAudit();
    const opens = audit.filter((e) => e.operation === "baremetal:node:get_console" && e.target === nodeId);
    expect(opens).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ projectId: "project-a", outcome: "done" }),
        expect.objectContaining({ projectId: "project-b", outcome: "denied" }),
      ]),
    );
    // No token and no BMC password in the audit log or the request log.
    const written = JSON.stringify({ audit, logs });
    for (const secret of [tok.a, tok.b, lab.info.credentials.password]) expect(written).not.toContain(secret);
    expect(logs.some((l) => l.path.endsWith("/console") && l.status === 101)).toBe(true);
    expect(logs.some((l) => l.path.endsWith("/console") && l.status === 403)).toBe(true);
  });
  test("the lessee's managers get the console (as they may deploy the node); its plain members do not", async () => {
    expect((await upgrade(tok.lesseeManager)).status).toBe(101);
    expect((await upgrade(tok.lesseeMember)).status).toBe(403);
  });

  test("the BMC's SSH host key is checked before the BMC password is sent: another key, or none configured, refuses the console (502); bmcVerifyTls false skips the check", async () => {
    const logins = () => lab.bmcs[0].serialConsole!.attached(lab.info.nodes[0].systemId);
    const other = sshUtils.generateKeyPairSync("ed25519").public;
    try {
      for (const [hostKeys, why] of [
        [{ bmcSshHostKeys: `[127.0.0.1]:${lab.bmcs[0].serialConsole!.port} ${other}` }, /presented host key ecdsa-sha2-nistp256 SHA256:\S+, which is not the one the bmcSshHostKeys setting expects/],
        [{}, /no bmcSshHostKeys setting/],
      ] as const) {
        host.configure(settings(hostKeys));
        const seen = logs.length;
        const r = await upgrade(tok.a);
        expect(r.status).toBe(502);
        // The tenant is told nothing about the BMC; the operator's log says what happened.
        expect(JSON.parse(r.body).message).toMatch(/the operator's log has the details/);
        expect(logs.slice(seen).find((l) => l.status === 502)?.error).toMatch(why);
        expect(logins()).toBe(0);
      }
      host.configure(settings({ bmcVerifyTls: false }));
      expect((await upgrade(tok.a)).status).toBe(101);
    } finally {
      host.configure(settings());
    }
  });
});
