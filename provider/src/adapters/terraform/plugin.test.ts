/**
 * The Terraform transport (plugin.ts, proto.ts, tls-cert.ts) with a stub provider
 * (test/fixtures/terraform-stub-provider.ts): by hand over gRPC as go-plugin would drive it, then
 * under real OpenTofu (the one scripts/bootstrap.sh builds): offline init through a filesystem
 * mirror, plan/apply/destroy over AutoMTLS, errors as diagnostics, every provider process shut
 * down by Shutdown and gone, and plain gRPC with TF_DISABLE_PLUGIN_TLS=1.
 *
 * The stub runs compiled (TypeScript transpiled once into a temp dir) so that start-up times are
 * those of plain Node.js, not of the TypeScript loader; the figures are printed.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as ts from "typescript";
import { describeWithPeer, track, trackDir, untrack, untrackDir } from "../../../../test/harness/processes";
import { newTofuProject, REPO, tofuAvailable, type TofuProject } from "../../../../test/harness/tofu-project";
import { decodeMessage, encodeMessage, rpcTypes, type RpcName } from "./proto";
import { MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE } from "./plugin";
import { makeServerCertificate } from "./tls-cert";

const STUB_LAUNCHER = path.join(REPO, "test/fixtures/terraform-provider-stub");
const COMPILED = ["test/fixtures/terraform-stub-provider.ts", "provider/src/adapters/terraform/plugin.ts", "provider/src/adapters/terraform/proto.ts", "provider/src/adapters/terraform/tls-cert.ts", "provider/src/core/errors.ts"];

let tmp: string;
let stubJs: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tf-plugin-test-"));
  trackDir(tmp);
  for (const rel of COMPILED) {
    const out = ts.transpileModule(fs.readFileSync(path.join(REPO, rel), "utf8"), {
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    });
    const dest = path.join(tmp, "js", rel.replace(/\.ts$/, ".js"));
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.writeFileSync(dest, out.outputText);
  }
  stubJs = path.join(tmp, "js/test/fixtures/terraform-stub-provider.js");
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  untrackDir(tmp);
});

/** The environment the compiled stub runs in (NODE_PATH: its packages are the repo's). */
function stubEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TF_") && !k.startsWith("PLUGIN_")));
  Object.assign(env, { BAREMETAL_STUB_PROVIDER_JS: stubJs, NODE_PATH: path.join(REPO, "node_modules"), ...extra });
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  return env;
}

interface Started {
  child: ChildProcess;
  line: string;
  ms: number;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Starts the stub as go-plugin does and waits for its handshake line. */
function startStub(env: NodeJS.ProcessEnv): Promise<Started> {
  const t0 = performance.now();
  const child = spawn(STUB_LAUNCHER, [], { env, stdio: ["ignore", "pipe", "pipe"] });
  track(child);
  let err = "";
  child.stderr!.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => {
      untrack(child);
      resolve(code);
    }),
  );
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d) => {
      out += d;
      const nl = out.indexOf("\n");
      if (nl >= 0) resolve({ child, line: out.slice(0, nl), ms: performance.now() - t0, stderr: () => err, exited });
    });
    void exited.then((code) => reject(new Error(`stub exited (${code}) before its handshake: ${err}`)));
  });
}

function pluginEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return stubEnv({ [MAGIC_COOKIE_KEY]: MAGIC_COOKIE_VALUE, PLUGIN_PROTOCOL_VERSIONS: "5,6", PLUGIN_MIN_PORT: "10000", PLUGIN_MAX_PORT: "25000", ...extra });
}

type Client = grpc.Client & Record<string, (req: unknown, cb: (err: grpc.ServiceError | null, res: any) => void) => void>;

/** A gRPC client of the services go-plugin and OpenTofu use. */
function client(address: string, credentials: grpc.ChannelCredentials): Client {
  const methods: grpc.ServiceDefinition = {};
  const def = (name: string, p: string, req: string | undefined, res: string | undefined) => {
    (methods as Record<string, grpc.MethodDefinition<unknown, unknown>>)[name] = {
      path: p,
      requestStream: false,
      responseStream: false,
      requestSerialize: (v) => (req ? encodeMessage(req, v) : Buffer.alloc(0)),
      requestDeserialize: (b) => b,
      responseSerialize: (v) => v as Buffer,
      responseDeserialize: (b) => (res ? decodeMessage(res, b) : {}),
    };
  };
  for (const rpc of ["GetProviderSchema", "StopProvider", "ReadDataSource", "PlanResourceChange", "GetResourceIdentitySchemas", "ValidateProviderConfig"] as RpcName[]) {
    const t = rpcTypes(rpc);
    def(rpc, `/tfplugin6.Provider/${rpc}`, t.request, t.response);
  }
  def("Check", "/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse");
  def("Shutdown", "/plugin.GRPCController/Shutdown", undefined, undefined);
  const Ctor = grpc.makeGenericClientConstructor(methods, "TestClient");
  return new Ctor(address, credentials, { "grpc.ssl_target_name_override": "localhost" }) as unknown as Client;
}

function call(c: Client, method: string, req: unknown = {}): Promise<any> {
  return new Promise((resolve, reject) => c[method](req, (err, res) => (err ? reject(err) : resolve(res))));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  return !/^\d+ \(.*\) Z/.test(stat); // a zombie is gone too, only not yet reaped
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const startupFigures: string[] = [];
afterAll(() => {
  if (startupFigures.length) console.log(`Terraform provider transport start-up (stub provider):\n${startupFigures.join("\n")}`);
});

describe("the plugin transport, by hand", () => {
  test("run by hand (no magic cookie): a clear message on stderr, exit 1, nothing on stdout", async () => {
    const child = spawn(STUB_LAUNCHER, [], { env: stubEnv(), stdio: ["ignore", "pipe", "pipe"] });
    track(child);
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const code = await new Promise((resolve) => child.once("exit", resolve));
    untrack(child);
    expect(code).toBe(1);
    expect(out).toBe("");
    expect(err).toContain("it is started by them, not by hand");
  });

  test("a client offering only protocol 5 is refused", async () => {
    await expect(startStub(pluginEnv({ PLUGIN_PROTOCOL_VERSIONS: "5" }))).rejects.toThrow(/speaks plugin protocol 6 only; the client offered 5/);
  });

  test("TLS disabled: plain handshake line, schema and health over plain gRPC, Shutdown ends the process", async () => {
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const s = await startStub(pluginEnv());
      times.push(s.ms);
      expect(s.line).toMatch(/^1\|6\|tcp\|127\.0\.0\.1:\d+\|grpc\|$/);
      const c = client(s.line.split("|")[3], grpc.credentials.createInsecure());
      if (i === 0) {
        expect(await call(c, "Check", { service: "plugin" })).toEqual({ status: 1 });
        const schema = await call(c, "GetProviderSchema");
        expect(Object.keys(schema.resourceSchemas)).toEqual(["baremetal_echo"]);
        expect(schema.resourceSchemas.baremetal_echo.block.attributes.map((a: { name: string }) => a.name)).toEqual(["id", "name", "size", "token", "greeting"]);
        expect(schema.resourceSchemas.baremetal_echo.version).toBe(1);
        // no handler: the empty answer OpenTofu needs, or UNIMPLEMENTED where it accepts that
        expect(await call(c, "ValidateProviderConfig", { config: { msgpack: Buffer.from([0x80]) } })).toEqual({ diagnostics: [] });
        await expect(call(c, "GetResourceIdentitySchemas")).rejects.toMatchObject({ code: grpc.status.UNIMPLEMENTED });
      }
      expect(await call(c, "Shutdown")).toEqual({});
      c.close();
      expect(await s.exited).toBe(0);
      expect(alive(s.child.pid!)).toBe(false);
    }
    startupFigures.push(`  by hand, plain gRPC: spawn -> handshake line median ${median(times).toFixed(0)} ms (${times.map((t) => t.toFixed(0)).join(", ")})`);
  });

  test("AutoMTLS: our certificate is valid for localhost; no client certificate, no service; StopProvider answered while a call runs", async () => {
    const clientCert = makeServerCertificate(); // same shape as go-plugin's client certificate: CA, clientAuth
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await startStub(pluginEnv({ PLUGIN_CLIENT_CERT: clientCert.certPem }));
      times.push(s.ms);
      const [core, app, network, address, proto, certB64] = s.line.split("|");
      expect([core, app, network, proto]).toEqual(["1", "6", "tcp", "grpc"]);
      expect(certB64).toMatch(/^[A-Za-z0-9+/]+$/); // base64 without padding
      const der = Buffer.from(certB64, "base64");
      const cert = new X509Certificate(der);
      expect(cert.checkHost("localhost")).toBe("localhost");
      expect(cert.ca).toBe(true);
      expect(cert.verify(cert.publicKey)).toBe(true);
      const serverPem = `-----BEGIN CERTIFICATE-----\n${der.toString("base64")}\n-----END CERTIFICATE-----\n`;

      if (i === 0) {
        const anonymous = client(address, grpc.credentials.createSsl(Buffer.from(serverPem)));
        await expect(call(anonymous, "Check", { service: "plugin" })).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
        anonymous.close();
        const stranger = makeServerCertificate();
        const wrong = client(address, grpc.credentials.createSsl(Buffer.from(serverPem), Buffer.from(stranger.keyPem), Buffer.from(stranger.certPem)));
        await expect(call(wrong, "Check", { service: "plugin" })).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
        wrong.close();
      }

      const c = client(address, grpc.credentials.createSsl(Buffer.from(serverPem), Buffer.from(clientCert.keyPem), Buffer.from(clientCert.certPem)));
      if (i === 0) {
        expect(await call(c, "Check", { service: "plugin" })).toEqual({ status: 1 });
        // a data source read that waits for StopProvider
        const t0 = performance.now();
        const reading = call(c, "ReadDataSource", { typeName: "baremetal_wait", config: { msgpack: Buffer.from([0x81, 0xa7, ...Buffer.from("seconds"), 30]) } });
        await new Promise((r) => setTimeout(r, 300));
        expect(await call(c, "StopProvider")).toEqual({ Error: "" });
        const read = await reading;
        expect(performance.now() - t0).toBeLessThan(10_000);
        expect(read.diagnostics).toEqual([{ severity: 1, summary: "stopped by StopProvider", detail: "" }]);
      }
      await call(c, "Shutdown");
      c.close();
      expect(await s.exited).toBe(0);
      expect(alive(s.child.pid!)).toBe(false);
    }
    startupFigures.push(`  by hand, AutoMTLS: spawn -> handshake line median ${median(times).toFixed(0)} ms (${times.map((t) => t.toFixed(0)).join(", ")})`);
  });
});

describeWithPeer(tofuAvailable(), "plugin.test.ts (OpenTofu)")("the plugin transport under real OpenTofu", () => {
  let project: TofuProject;
  let stubLog: string;
  let startupLog: string;

  const entries = (file: string): any[] =>
    fs.existsSync(file) ? fs.readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];

  /** Every provider process of the run answered Shutdown and is gone. */
  function expectAllShutDown(): void {
    const pids = [...new Set(entries(startupLog).map((e) => e.pid as number))];
    expect(pids.length).toBeGreaterThan(0);
    const shut = new Set(entries(stubLog).filter((e) => e.rpc === "Shutdown").map((e) => e.pid));
    expect(pids.filter((p) => !shut.has(p))).toEqual([]);
    expect(pids.filter(alive)).toEqual([]);
  }

  beforeAll(async () => {
    stubLog = path.join(tmp, "stub.jsonl");
    startupLog = path.join(tmp, "startup.jsonl");
    project = await newTofuProject(
      "plugin",
      {
        variable: { token: { type: "string", sensitive: true } },
        provider: { baremetal: { endpoint: "https://example.invalid" } },
        resource: { baremetal_echo: { a: { name: "first", size: 3, token: "${var.token}" } } },
      },
      { launcher: STUB_LAUNCHER, env: stubEnv({ STUB_PROVIDER_LOG: stubLog, BAREMETAL_TF_STARTUP_LOG: startupLog }) as Record<string, string> },
    );
  }, 120_000);

  afterAll(() => project?.remove());

  const secretEnv = { TF_VAR_token: "stub-token-value" };

  test("init works offline through the filesystem mirror", () => {
    expect(project.init.stdout).toContain("OpenTofu has been successfully initialized");
    expect(project.init.stdout.replace(/\s+/g, " ")).toMatch(/Installing baremetal\.local\/pulumi-baremetal\/baremetal v0\.1\.0/);
    expect(fs.readFileSync(path.join(project.workDir, ".terraform.lock.hcl"), "utf8")).toContain('provider "baremetal.local/pulumi-baremetal/baremetal"');
  });

  test("apply, an empty second plan, a replacement, import and destroy reach our handlers over AutoMTLS; every process shut down", async () => {
    fs.rmSync(stubLog, { force: true });
    fs.rmSync(startupLog, { force: true });
    const apply = await project.tofu(["apply", "-auto-approve"], { env: secretEnv });
    expect(apply.stdout).toMatch(/baremetal_echo\.a: Creation complete after \d+s \[id=echo-\d+-\d+\]/);
    expect(apply.stdout + apply.stderr).not.toContain(secretEnv.TF_VAR_token);
    const state = await project.state();
    const values = state.values.root_module.resources[0].values;
    expect(values).toMatchObject({ name: "first", size: 3, greeting: "hello first" });
    expect(state.values.root_module.resources[0].sensitive_values).toEqual({ token: true });

    const log = entries(stubLog);
    const configure = log.find((e) => e.rpc === "ConfigureProvider");
    expect(configure.config).toEqual({ endpoint: "https://example.invalid" });
    expect(configure.clientCapabilities).toEqual({ deferralAllowed: false, writeOnlyAttributesAllowed: true });
    expect(log.find((e) => e.rpc === "PlanResourceChange")).toMatchObject({ typeName: "baremetal_echo", prior: null, proposed: { name: "first", size: 3, token: "(16 chars)" } });
    expect(log.find((e) => e.rpc === "ApplyResourceChange")).toMatchObject({ planned: { name: "first" } });
    expect(entries(startupLog).every((e) => e.tls === true)).toBe(true);

    const again = await project.tofu(["plan", "-detailed-exitcode"], { env: secretEnv });
    expect(again.code).toBe(0);
    expect(entries(stubLog).some((e) => e.rpc === "ReadResource" && e.state?.name === "first")).toBe(true);

    project.writeConfig({
      variable: { token: { type: "string", sensitive: true } },
      provider: { baremetal: { endpoint: "https://example.invalid" } },
      resource: { baremetal_echo: { a: { name: "second", size: 3, token: "${var.token}" } } },
    });
    const replace = await project.tofu(["plan", "-detailed-exitcode"], { env: secretEnv, allowFail: true });
    expect(replace.code).toBe(2);
    expect(replace.stdout).toMatch(/# baremetal_echo\.a must be replaced/);
    expect(replace.stdout).toMatch(/~ name\s+= "first" -> "second" # forces replacement/);
    await project.tofu(["apply", "-auto-approve"], { env: secretEnv });
    expect((await project.state()).values.root_module.resources[0].values.greeting).toBe("hello second");

    await project.tofu(["import", "baremetal_echo.b", "given-id"], { env: secretEnv, allowFail: true }).then((r) => {
      // config has no baremetal_echo.b: tofu refuses before calling us
      expect(r.code).toBe(1);
    });
    project.writeConfig({
      variable: { token: { type: "string", sensitive: true } },
      resource: { baremetal_echo: { a: { name: "second", size: 3, token: "${var.token}" }, b: { name: "imported-given-id" } } },
    });
    await project.tofu(["import", "baremetal_echo.b", "given-id"], { env: secretEnv });
    expect(entries(stubLog).some((e) => e.rpc === "ImportResourceState" && e.id === "given-id")).toBe(true);
    const imported = (await project.state()).values.root_module.resources.find((r: { name: string }) => r.name === "b");
    expect(imported.values).toMatchObject({ id: "given-id", name: "imported-given-id", greeting: "hello imported" });

    await project.tofu(["destroy", "-auto-approve"], { env: secretEnv });
    expect((await project.state()).values?.root_module?.resources ?? []).toEqual([]);
    expect(entries(stubLog).filter((e) => e.rpc === "ApplyResourceChange" && e.planned === null).length).toBe(3); // the replaced "first", then a and b

    expectAllShutDown();
    const ms = entries(startupLog).map((e) => e.handshakeMs as number);
    startupFigures.push(
      `  under tofu (AutoMTLS), ${ms.length} provider processes: in-process time to handshake median ${median(ms).toFixed(0)} ms, max ${Math.max(...ms).toFixed(0)} ms; certificate ${median(entries(startupLog).map((e) => e.certMs)).toFixed(1)} ms`,
    );
  }, 300_000);

  test("handler failures are diagnostics: a validation error with its attribute path, an apply error", async () => {
    project.writeConfig({ resource: { baremetal_echo: { c: { name: "neg", size: -1 } } } });
    const neg = await project.tofu(["plan"], { allowFail: true });
    expect(neg.code).toBe(1);
    expect(neg.stderr).toContain("Error: size must not be negative");
    expect(neg.stderr).toMatch(/with baremetal_echo\.c,\s+on main\.tf\.json line \d+/);

    project.writeConfig({ resource: { baremetal_echo: { c: { name: "fail" } } } });
    const fail = await project.tofu(["apply", "-auto-approve"], { allowFail: true });
    expect(fail.code).toBe(1);
    expect(fail.stderr).toContain("Error: the stub refuses name=fail");
    expectAllShutDown();
  }, 120_000);

  test("TF_DISABLE_PLUGIN_TLS=1: OpenTofu talks plain gRPC to the same provider", async () => {
    fs.rmSync(startupLog, { force: true });
    project.writeConfig({ resource: { baremetal_echo: { d: { name: "plain" } } } });
    const plan = await project.tofu(["plan", "-detailed-exitcode"], { allowFail: true, env: { TF_DISABLE_PLUGIN_TLS: "1" } });
    expect(plan.code).toBe(2);
    expect(plan.stdout).toMatch(/\+ name\s+= "plain"/);
    const started = entries(startupLog);
    expect(started.length).toBeGreaterThan(0);
    expect(started.every((e) => e.tls === false)).toBe(true);
    expectAllShutDown();
    startupFigures.push(`  under tofu (plain gRPC): in-process time to handshake median ${median(started.map((e) => e.handshakeMs)).toFixed(0)} ms`);
  }, 120_000);
});
