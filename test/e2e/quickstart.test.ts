/**
 * The README's main job, as a user runs it: examples/quickstart installs the generated SDK as a
 * package; on the embedded lab (our Redfish emulator) the operator stack enrols the machines, a
 * tenant stack allocates one and deploys an image on it; every preview afterwards is empty.
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { REPO } from "../harness/pulumi";

jest.setTimeout(300_000);

it("examples/quickstart: operator and tenant stacks come up, preview empty and are destroyed", () => {
  const install = spawnSync("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", "--no-package-lock"], {
    cwd: join(REPO, "examples/quickstart"),
    encoding: "utf8",
  });
  expect(install.status).toBe(0);
  const run = spawnSync("npx", ["--no-install", "tsx", "scripts/quickstart.ts"], { cwd: REPO, encoding: "utf8" });
  const out = `${run.stdout}\n${run.stderr}`;
  expect(out.match(/\+ 3 created/g)).toHaveLength(2); // operator: stack + 2 nodes; tenant: stack + allocation + deployment
  expect(out).toMatch(/"manufacturer": "Lab Systems"/);
  expect(out).toMatch(/"cpuCount": \d+/);
  expect(out).toMatch(/"state": "active"/);
  expect(out).toMatch(/lab-bmc1-sys\d: os:http:\/\/images\.lab\.example\/ubuntu-24\.04-deploy\.iso/);
  expect(out).toMatch(/quickstart: operator and tenant stacks came up, previewed empty and were destroyed/);
  expect(run.status).toBe(0);
});
