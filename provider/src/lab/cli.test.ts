/**
 * `baremetal lab start|stop|wait|status` (provider/src/cli/main.ts), run as a real process from
 * the TypeScript source (node --require tsx/cjs), as provider/bin/baremetal runs the built copy.
 */
import { ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { LabInfo } from "./lab";

const REPO = path.resolve(__dirname, "../../..");
const MAIN = path.join(REPO, "provider/src/cli/main.ts");
const children = new Set<ChildProcess>();
let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "baremetal-lab-cli-"));
});

afterEach(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  children.clear();
  fs.rmSync(dir, { recursive: true, force: true });
});

function cli(args: string[]): ChildProcess {
  const child = spawn(process.execPath, ["--require", "tsx/cjs", MAIN, ...args], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  return child;
}

/** Runs the CLI to completion. */
function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = cli(args);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

/** Starts a lab in the foreground process `child`; resolves with its first stdout line (the JSON) and the rest. */
function firstLine(child: ChildProcess): Promise<{ info: LabInfo; more: () => string; stderr: () => string }> {
  let out = "";
  let err = "";
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf("\n");
      if (nl >= 0) resolve({ info: JSON.parse(out.slice(0, nl)) as LabInfo, more: () => out.slice(nl + 1), stderr: () => err });
    });
    child.on("close", (code) => reject(new Error(`lab start exited with ${code} before printing: ${err}`)));
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.on("close", (code) => resolve(code)));
}

async function root(url: string): Promise<number> {
  try {
    return (await fetch(`${url}/redfish/v1/`)).status;
  } catch {
    return 0;
  }
}

test("start prints JSON then a summary; SIGINT stops it cleanly", async () => {
  const child = cli(["lab", "start", "--bmcs", "2", "--systems", "2", "--flavor", "idrac-like", "--boot-seconds", "1", "--latency-ms", "5", "--install-seconds", "7", "--fetch-images"]);
  const { info, more, stderr } = await firstLine(child);
  expect(info.bmcs).toHaveLength(2);
  expect(info.nodes.map((n) => n.systemId)).toEqual(["System.Embedded.1", "System.Embedded.2", "System.Embedded.1", "System.Embedded.2"]);
  expect(info.credentials.username).toBe("root");
  expect(info.providerConfig["baremetal:bmcUsername"]).toBe("root");
  expect(info.latencyMs).toBe(5);
  expect(info.installSeconds).toBe(7);
  expect(info.fetchImages).toBe(true);
  expect(info.pid).toBe(child.pid);
  for (const b of info.bmcs) expect(await root(b.url)).toBe(200);
  // The summary follows the JSON line.
  for (let i = 0; i < 100 && !more().includes("Stop:"); i++) await new Promise((r) => setTimeout(r, 20));
  expect(more()).toMatch(/^Lab lab-[0-9a-f]+ \(pid \d+\): 2 BMCs \(idrac-like\)/);
  expect(more()).toContain("pulumi config set --secret baremetal:bmcPassword lab-password");
  expect(more()).toMatch(/pulumi config set --secret baremetal:imageStoreUrl http:\/\/lab-images:/);
  child.kill("SIGINT");
  expect(await exited(child)).toBe(0);
  expect(stderr()).toContain("stopped (SIGINT)");
  for (const b of info.bmcs) expect(await root(b.url)).toBe(0);
});

test("background lab: wait, status, then stop --state-file checks the pid through the admin endpoint", async () => {
  const state = path.join(dir, "lab.json");
  const child = cli(["lab", "start", "--systems", "1", "--flavor", "sushy-like", "--state-file", state]);
  const waited = await run(["lab", "wait", "--state-file", state, "--timeout-seconds", "30"]);
  expect(waited.code).toBe(0);
  const info = JSON.parse(waited.stdout) as LabInfo & { stateFile: string };
  expect(info.stateFile).toBe(state);
  expect(info.pid).toBe(child.pid);
  expect(fs.statSync(state).mode & 0o777).toBe(0o600);
  const status = await run(["lab", "status", "--state-file", state]);
  expect(status.code).toBe(0);
  // A second lab on the same state file is refused while the first runs.
  const second = await run(["lab", "start", "--state-file", state]);
  expect(second.code).toBe(1);
  expect(second.stderr).toContain("already runs");
  const stop = await run(["lab", "stop", "--state-file", state]);
  expect(stop.code).toBe(0);
  expect(await exited(child)).toBe(0);
  expect(fs.existsSync(state)).toBe(false);
  expect(await root(info.bmcs[0].url)).toBe(0);
  expect((await run(["lab", "status", "--state-file", state])).code).toBe(1);
  expect((await run(["lab", "stop", "--state-file", state])).code).toBe(0); // nothing to stop
});

test("stop refuses a pid that the admin endpoint does not confirm", async () => {
  const state = path.join(dir, "fake.json");
  // A state file naming this (jest's) pid and a URL where no lab answers.
  fs.writeFileSync(state, JSON.stringify({ labId: "lab-000000000000", pid: process.pid, bmcs: [{ url: "http://127.0.0.1:9" }], providerConfig: {} }));
  const stop = await run(["lab", "stop", "--state-file", state]);
  expect(stop.code).toBe(1);
  expect(stop.stderr).toContain("not stopping it");
  expect(fs.existsSync(state)).toBe(true);
});

test("usage errors exit 2", async () => {
  for (const args of [["lab", "start", "--bmcs", "two"], ["lab", "start", "--flavor", "hp"], ["lab", "frobnicate"], ["lab", "stop"], ["nope"]]) {
    const r = await run(args);
    expect([args.join(" "), r.code]).toEqual([args.join(" "), 2]);
    expect(r.stderr).toContain("usage:");
  }
  expect((await run(["lab", "start", "--help"])).code).toBe(0);
});
