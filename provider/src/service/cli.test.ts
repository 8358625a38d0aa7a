/**
 * `baremetal token` and `baremetal serve` as an operator runs them (the built CLI, a settings file
 * with the inventory URL): a token issued on the command line works against the served API,
 * `token list` shows no secret, a revoked token is refused, a world-readable settings file is
 * refused, and SIGTERM stops the service cleanly.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const CLI = resolve(__dirname, "../../dist/src/cli/main.js");
const node = process.env.BAREMETAL_NODE ?? process.execPath;

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) =>
    execFile(node, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) => res({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr })),
  );
}

describe("baremetal serve / token", () => {
  const dir = mkdtempSync(join(tmpdir(), "service-cli-"));
  const config = join(dir, "service.json");
  let serve: ChildProcess | undefined;

  beforeAll(() => {
    writeFileSync(config, JSON.stringify({ inventoryUrl: `sqlite://${join(dir, "inventory.db")}` }), { mode: 0o600 });
  });

  afterAll(async () => {
    if (serve && serve.exitCode === null) serve.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  test("a token from the command line works against the served API until it is revoked", async () => {
    const created = await cli(["token", "create", "--config", config, "--name", "tenant-a", "--project", "project-a", "--roles", "member,reader"]);
    expect(created.code).toBe(0);
    const { id, token } = JSON.parse(created.stdout) as { id: string; token: string };
    expect(token).toMatch(/^bmt_/);

    const listed = await cli(["token", "list", "--config", config]);
    expect(JSON.parse(listed.stdout)).toMatchObject({ id, name: "tenant-a", projectId: "project-a" });
    expect(listed.stdout).not.toContain(token.slice(29));
    expect(listed.stdout).not.toContain("secretHash");

    serve = spawn(node, [CLI, "serve", "--config", config, "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
    const base = await new Promise<string>((res, rej) => {
      let out = "";
      serve!.stdout!.on("data", (b: Buffer) => {
        out += b.toString();
        const m = /\{"listening":"([^"]+)"\}/.exec(out);
        if (m) res(m[1]);
      });
      serve!.once("exit", (code) => rej(new Error(`serve exited ${code}`)));
    });
    const me = await fetch(`${base}/v1/me`, { headers: { authorization: `Bearer ${token}` } });
    expect(me.status).toBe(200);
    expect(await me.json()).toMatchObject({ tokenId: id, projectId: "project-a" });

    expect((await cli(["token", "revoke", "--config", config, "--id", id])).code).toBe(0);
    const refused = await fetch(`${base}/v1/me`, { headers: { authorization: `Bearer ${token}` } });
    expect(refused.status).toBe(401);
    expect(((await refused.json()) as { message: string }).message).toMatch(/was revoked/);

    const exited = new Promise<number | null>((res) => serve!.once("exit", (code) => res(code)));
    serve.kill("SIGTERM");
    expect(await exited).toBe(0);
  });

  test("a settings file others can read is refused (it holds backend credentials)", async () => {
    const open = join(dir, "open.json");
    writeFileSync(open, "{}");
    chmodSync(open, 0o644);
    const r = await cli(["token", "list", "--config", open]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/can be read by others \(mode 644\).*chmod 600/);
  });
});
