/**
 * The README's main job, as a user runs it: examples/quickstart installs the generated SDK as a
 * package and comes up with `pulumi up` against the embedded lab (our Redfish emulator); the next
 * preview is empty.
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { REPO } from "../harness/pulumi";

jest.setTimeout(300_000);

it("examples/quickstart comes up, previews empty and is destroyed", () => {
  const install = spawnSync("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", "--no-package-lock"], {
    cwd: join(REPO, "examples/quickstart"),
    encoding: "utf8",
  });
  expect(install.status).toBe(0);
  const run = spawnSync("npx", ["--no-install", "tsx", "scripts/quickstart.ts"], { cwd: REPO, encoding: "utf8" });
  const out = `${run.stdout}\n${run.stderr}`;
  expect(out).toMatch(/\+ 3 created/);
  expect(out).toMatch(/"manufacturer": "Lab Systems"/);
  expect(out).toMatch(/"cpuCount": \d+/);
  expect(out).toMatch(/quickstart: up, an empty preview and destroy all succeeded/);
  expect(run.status).toBe(0);
});
