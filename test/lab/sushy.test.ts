/**
 * A third-party Redfish client drives the embedded lab: OpenStack's sushy (Debian python3-sushy,
 * the client library of Ironic) runs test/lab/sushy_check.py against lab BMCs of every flavor and
 * reports each step as JSON; the lab's request log and side-effect counters are checked too.
 *
 * Needs `apt-get install python3-sushy` (Debian's Python packages import only under
 * /usr/bin/python3). The lab runs in this process on the real clock, with 1 s power-ons and tasks.
 *
 * What sushy 4.3.3 cannot do, or does unsafely, against it (asserted below, so a change shows up):
 * - it finds VirtualMedia only below Managers (it has no ComputerSystem.virtual_media): for the
 *   generic and sushy-like flavors the script builds sushy's VirtualMedia from the system's link;
 * - its System has no `model` attribute (the script reads the JSON);
 * - its blocking wait for a long action polls the URI in the 202 body's @odata.id (the Task) in
 *   preference to the Location task monitor, and takes the first 200 as "done", even with
 *   TaskState Running: it works where the Task itself answers 202 while running (idrac-like),
 *   and returns too early with a DSP0266-style separate monitor;
 * - a monitor's `Retry-After` breaks that wait: TaskMonitor.sleep_for returns the header's text
 *   and time.sleep() raises TypeError;
 * - on a 412 it sends the PATCH again without If-Match (the ETag protection is dropped);
 * - it retries every 5xx answer to a GET 10 times, 3 s apart (so the lab answers 404, not 501,
 *   for collections a flavor does not implement).
 */
import { execFile } from "node:child_process";
import * as path from "node:path";
import { LabBmc } from "../../provider/src/lab/bmc";
import { customFlavor, FlavorName } from "../../provider/src/lab/flavors";
import { Lab, startLab } from "../../provider/src/lab/lab";

const PYTHON = "/usr/bin/python3";
const SCRIPT = path.join(__dirname, "sushy_check.py");

interface Step {
  ok: boolean;
  result?: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  error?: string;
  status?: number;
  code?: string;
}
interface Report {
  sushy: string;
  auth: "session" | "basic";
  sessionUri: string | null;
  mediaFoundVia: string | null;
  media: string | null;
  steps: Record<string, Step>;
  error?: string;
}

function sushyCheck(args: string[]): Promise<Report> {
  return new Promise((resolve, reject) => {
    // Asynchronous on purpose: the lab answers from this very process.
    execFile(PYTHON, [SCRIPT, "--timeout", "20", ...args], { timeout: 120_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === "ENOENT") return reject(new Error(`${PYTHON} not found`));
      const line = stdout.trim().split("\n").pop() ?? "";
      let report: Report;
      try {
        report = JSON.parse(line) as Report;
      } catch {
        return reject(new Error(`sushy_check.py printed no JSON (exit ${err?.code ?? 0}): ${stdout}\n${stderr}`));
      }
      if (report.error) return reject(new Error(`${report.error}\n(install it with: apt-get install python3-sushy)`));
      resolve(report);
    });
  });
}

const labs: Lab[] = [];
const bmcs: LabBmc[] = [];
afterEach(async () => {
  await Promise.all(labs.splice(0).map((l) => l.stop()));
  await Promise.all(bmcs.splice(0).map((b) => b.close()));
});

async function run(flavor: FlavorName, prepare?: (lab: Lab) => void): Promise<{ lab: Lab; report: Report }> {
  const lab = await startLab({ flavor, bmcs: 1, systems: 2, bootSeconds: 1, shutdownSeconds: 1, taskSeconds: 1 });
  labs.push(lab);
  prepare?.(lab);
  const node = lab.info.nodes[0];
  const report = await sushyCheck([
    "--url", node.address,
    "--username", lab.info.credentials.username,
    "--password", lab.info.credentials.password,
    "--system", node.systemId,
    "--media", node.virtualMediaUri,
  ]);
  return { lab, report };
}

/** The steps every flavor must pass, and the facts sushy read, against the lab's own description. */
function commonChecks(lab: Lab, r: Report): void {
  const s = r.steps;
  const node = lab.info.nodes[0];
  const failed = Object.entries(s).filter(([name, st]) => !st.ok && !["processors", "sessionService"].includes(name));
  expect(failed).toEqual([]);
  expect(r.sushy).toBe("4.3.3");
  expect(s.systems.result).toEqual(lab.info.nodes.map((n) => n.systemId));
  expect(s.facts.result).toMatchObject({
    id: node.systemId,
    uuid: node.uuid,
    name: node.name,
    manufacturer: "Lab Systems",
    serialNumber: node.serialNumber,
    sku: "LAB-S1",
    memoryGiB: 64,
    powerState: "Off",
  });
  expect(s.facts.result.allowedResets).toEqual(expect.arrayContaining(["On", "ForceOff"]));
  expect(s.macs.result).toEqual(node.macAddresses);
  expect(s.powerOn.result[s.powerOn.result.length - 1]).toBe("On");
  expect(s.powerOn.result).toContain("PoweringOn"); // sushy saw the transition
  expect(s.powerOff.result).toEqual(["Off"]); // ForceOff: at once
  expect(s.setBoot.result).toEqual({ target: "Pxe", enabled: "Continuous", mode: "UEFI" });
  // sushy parses our Redfish error body: status, MessageId and message.
  expect(s.badBootRejected.result).toMatchObject({ status: 400, code: "Base.1.15.0.PropertyValueNotInList" });
  expect(s.badBootRejected.result.detail).toContain("NoSuchDevice");
  expect(s.insertMedia.result[s.insertMedia.result.length - 1]).toEqual([true, "http://192.0.2.10/images/lab.iso"]);
  expect(s.ejectMedia.result[s.ejectMedia.result.length - 1]).toEqual([false, null]);
  expect(s.chassis.result).toHaveLength(2);
  expect(r.media).toBe(node.virtualMediaUri);

  // The lab's own account of what happened: each change applied exactly once.
  const bmc = lab.bmcs[0];
  const count = (k: Parameters<LabBmc["sideEffects"]>[0]) => bmc.sideEffects(k, k === "boot-override" || k?.startsWith("power") ? node.systemUri : undefined).length;
  expect(count("power-on")).toBe(1);
  expect(count("power-off")).toBe(1);
  expect(count("boot-override")).toBe(1);
  expect(count("media-insert")).toBe(2); // insertMedia and blockingInsertMedia
  expect(count("media-eject")).toBe(2); // ejectMedia and cleanupMedia
}

/** The boot PATCHes sushy sent (status, If-Match); the last one is the rejected unknown target. */
function bootPatches(lab: Lab): Array<[number, string | undefined]> {
  return lab.bmcs[0].requests({ method: "PATCH", path: lab.info.nodes[0].systemUri }).map((q) => [q.status, q.ifMatch]);
}

test("generic: session auth, facts, power, boot, virtual media below the system", async () => {
  const { lab, report: r } = await run("generic");
  commonChecks(lab, r);
  // sushy sends the ETag it read as If-Match on the boot PATCH, and the lab accepts it.
  const patches = bootPatches(lab);
  expect(patches[0][0]).toBe(200);
  expect(patches[0][1]).toMatch(/^"[0-9a-f]{16}"$/);
  expect(r.auth).toBe("session");
  expect(r.sessionUri).toBe("/redfish/v1/SessionService/Sessions/lab-session-1");
  expect(r.steps.processors.result).toEqual({ count: 32, architecture: "x86" }); // logical CPUs
  expect(r.mediaFoundVia).toMatch(/^system link/);
  expect(r.steps.blockingInsertMedia.result).toEqual({ status: 204, inserted: true });
  expect(r.steps.managers.result[0]).toMatchObject({ id: "BMC", serialConsole: ["SSH", "IPMI"], graphicalConsole: ["KVMIP"], commandShell: ["SSH"] });
  expect(r.steps.sessionService.result).toEqual({ timeout: 1800, sessions: ["lab-session-1"] });
  expect(r.steps.logout.result).toBe("session deleted");
  const bmc = lab.bmcs[0];
  expect(bmc.sessions()).toHaveLength(0);
  expect(bmc.sideEffects("session-create")).toHaveLength(1);
  // Everything after the login used the session token.
  const after = bmc.requests().filter((q) => q.seq > bmc.requests({ method: "POST", path: "/redfish/v1/SessionService/Sessions" })[0].seq);
  expect(new Set(after.map((q) => q.auth))).toEqual(new Set(["session"]));
});

test("idrac-like: user root, virtual media found below the manager, inserts and ejects as tasks", async () => {
  const { lab, report: r } = await run("idrac-like");
  commonChecks(lab, r);
  expect(r.auth).toBe("session");
  expect(r.mediaFoundVia).toBe("managers");
  expect(r.media).toBe("/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD1");
  // Not inserted at once: the task ran for a second first.
  expect(r.steps.insertMedia.result[0]).toEqual([false, null]);
  // sushy's own task monitor (blocking POST) polls the Task until it answers 200.
  expect(r.steps.blockingInsertMedia.result).toEqual({ status: 200, inserted: true });
  const monitorPolls = lab.bmcs[0].requests({ method: "GET", path: /^\/redfish\/v1\/TaskService\/Tasks\/JID_/ }).map((q) => q.status);
  expect(monitorPolls).toContain(202);
  expect(monitorPolls[monitorPolls.length - 1]).toBe(200);
  expect(r.steps.sessionService.result.timeout).toBe(300);
  expect(r.steps.managers.result[0]).toMatchObject({ id: "iDRAC.Embedded.1", commandShell: ["SSH", "IPMI"] });
});

test("sushy-like: Basic only (sushy falls back from sessions), no Processors collection, no SessionService", async () => {
  // One 412 on the boot PATCH, as if someone changed the system between sushy's read and its PATCH.
  const { lab, report: r } = await run("sushy-like", (l) =>
    l.bmcs[0].failNext(1, { kind: "status", status: 412, message: "PreconditionFailed" }, { method: "PATCH", path: l.info.nodes[0].systemUri }),
  );
  commonChecks(lab, r);
  // sushy 4.3.3 answers a 412 by sending the same PATCH again WITHOUT If-Match (it drops the protection).
  const patches = bootPatches(lab);
  expect(patches[0][0]).toBe(412);
  expect(patches[0][1]).toMatch(/^"[0-9a-f]{16}"$/);
  expect(patches[1]).toEqual([204, undefined]);
  expect(r.auth).toBe("basic");
  expect(r.steps.processors).toMatchObject({ ok: false, status: 404 });
  expect(r.steps.sessionService.ok).toBe(false);
  expect(r.steps.sessionService.error).toContain("SessionService");
  expect(r.steps.managers.result[0].serialConsole).toEqual([]);
  expect(r.steps.blockingInsertMedia.result).toEqual({ status: 204, inserted: true });
  const bmc = lab.bmcs[0];
  // sushy tried a session login once (refused: no SessionService), then used Basic throughout.
  expect(bmc.requests({ method: "POST", path: "/redfish/v1/SessionService/Sessions" }).map((q) => q.status)).toEqual([401]);
  expect(bmc.requests({ method: "GET" }).filter((q) => q.path !== "/redfish/v1").every((q) => q.auth === "basic")).toBe(true);
});

test("sushy 4.3.3 limitation: it polls the Task named in the 202 body, not the Location monitor, and stops at its first 200", async () => {
  // DSP0266 style: Location is a separate task monitor; the 202 body is the Task resource, which answers 200 while running.
  const flavor = customFlavor("generic", { tasks: { asyncActions: ["VirtualMedia.InsertMedia"], seconds: 1, monitor: "separate" } });
  const bmc = await LabBmc.start({ flavor, systems: 1, bootSeconds: 1 });
  bmcs.push(bmc);
  const r = await sushyCheck(["--url", bmc.url, "--username", bmc.username, "--password", bmc.password]);
  expect(r.steps.insertMedia.ok).toBe(true); // polled by the script: fine
  // The blocking POST "finished" at once: the Task answered 200 (TaskState Running), media not yet in.
  expect(r.steps.blockingInsertMedia.result).toEqual({ status: 200, inserted: false });
  expect(bmc.requests({ method: "GET", path: /\/TaskService\/TaskMonitors\// })).toHaveLength(0);
  expect(bmc.requests({ method: "GET", path: /\/TaskService\/Tasks\// }).length).toBeGreaterThan(0);
});

test("sushy 4.3.3 limitation: Retry-After on a task monitor's 202 breaks its blocking wait (TaskMonitor.sleep_for)", async () => {
  const flavor = customFlavor("idrac-like", {
    tasks: { asyncActions: ["VirtualMedia.InsertMedia", "VirtualMedia.EjectMedia"], seconds: 1, retryAfterSeconds: 1, monitor: "task-uri" },
  });
  const bmc = await LabBmc.start({ flavor, systems: 1, bootSeconds: 1 });
  bmcs.push(bmc);
  const r = await sushyCheck(["--url", bmc.url, "--username", bmc.username, "--password", bmc.password]);
  expect(r.steps.insertMedia.ok).toBe(true);
  // sushy sleeps for the header's *text*: time.sleep("1").
  expect(r.steps.blockingInsertMedia.ok).toBe(false);
  expect(r.steps.blockingInsertMedia.error).toMatch(/^TypeError: 'str' object cannot be interpreted as an integer/);
  // The task itself completes on the lab all the same (1 s of lab time on the real clock).
  const task = bmc.tasks().find((t) => t.id === "JID_000000000003");
  expect(task).toBeDefined();
  for (let i = 0; i < 50 && bmc.tasks().find((t) => t.id === task!.id)?.state !== "Completed"; i++) await new Promise((res) => setTimeout(res, 100));
  expect(bmc.sideEffects("media-insert")).toHaveLength(2);
});
