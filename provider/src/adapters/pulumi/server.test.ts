/**
 * The gRPC server, driven over a real gRPC channel the way the engine drives it. The BMC behind it
 * is our own fake over the DMTF mockup (test/fixtures); the real-engine proofs against
 * sushy-tools are in test/e2e.
 */
import * as grpc from "@grpc/grpc-js";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Empty } from "google-protobuf/google/protobuf/empty_pb";
import { Struct } from "google-protobuf/google/protobuf/struct_pb";
import * as provrpc from "@pulumi/pulumi/proto/provider_grpc_pb";
import * as provproto from "@pulumi/pulumi/proto/provider_pb";
import * as statusproto from "@pulumi/pulumi/proto/status_pb";
import { RedfishMockupServer } from "../../../../test/fixtures/redfish-mockup-server";
import { packageSchema } from "./schema";
import { serve } from "./server";
import { UNKNOWN_SENTINEL } from "./values";
import { PROVIDER_VERSION } from "./version";

const SECRET = { "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270" };
const secret = (value: unknown) => ({ ...SECRET, value });
const URN = "urn:pulumi:test::proj::baremetal:compute:Node::n1";
const TYPE = "baremetal:compute:Node";

let server: grpc.Server;
let client: provrpc.ResourceProviderClient;
let bmc: RedfishMockupServer;

function call<Req, Res>(method: string, req: Req): Promise<Res> {
  return new Promise((res, rej) =>
    (client as unknown as Record<string, (r: Req, cb: (e: grpc.ServiceError | null, v: Res) => void) => void>)[method](req, (e, v) => (e ? rej(e) : res(v))),
  );
}

const struct = (o: Record<string, unknown>) => Struct.fromJavaScript(o as never);

beforeAll(async () => {
  bmc = await RedfishMockupServer.start({ username: "admin", password: "mockup-pw" });
  const s = await serve();
  server = s.server;
  client = new provrpc.ResourceProviderClient(`127.0.0.1:${s.port}`, grpc.credentials.createInsecure());
  const cfg = new provproto.ConfigureRequest().setArgs(struct({ bmcUsername: "admin", bmcPassword: secret("mockup-pw"), inventoryUrl: "sqlite::memory:" })).setAcceptsecrets(true);
  const resp = await call<provproto.ConfigureRequest, provproto.ConfigureResponse>("configure", cfg);
  expect(resp.getSupportspreview()).toBe(true);
  expect(resp.getAcceptsecrets()).toBe(true);
});

afterAll(async () => {
  client.close();
  await new Promise<void>((r) => server.tryShutdown(() => r()));
  await bmc.close();
});

describe("plugin calls", () => {
  it("reports its version", async () => {
    const info = await call<Empty, { getVersion(): string }>("getPluginInfo", new Empty());
    expect(info.getVersion()).toBe(PROVIDER_VERSION);
    const pkg = JSON.parse(readFileSync(resolve(__dirname, "../../../package.json"), "utf8"));
    expect(pkg.version).toBe(PROVIDER_VERSION);
  });

  it("serves the same schema as schema.json", async () => {
    const resp = await call<provproto.GetSchemaRequest, provproto.GetSchemaResponse>("getSchema", new provproto.GetSchemaRequest());
    expect(JSON.parse(resp.getSchema())).toEqual(packageSchema());
    const onDisk = JSON.parse(readFileSync(resolve(__dirname, "../../../../schema.json"), "utf8"));
    expect(onDisk).toEqual(packageSchema());
  });
});

describe("Check", () => {
  const check = (news: Record<string, unknown>) =>
    call<provproto.CheckRequest, provproto.CheckResponse>("check", new provproto.CheckRequest().setUrn(URN).setType(TYPE).setNews(struct(news)));

  it("names the property and says how to fix it", async () => {
    const resp = await check({ bmc: { address: "bmc.example.com" } });
    expect(resp.getFailuresList().map((f) => [f.getProperty(), f.getReason()])).toEqual([["bmc.address", expect.stringMatching(/not a URL.*https:\/\//)]]);
  });

  it("keeps secrets secret and marks schema-secret fields even when sent plain", async () => {
    const resp = await check({ bmc: { address: "https://10.0.0.5/", password: "plain-pw" }, owner: secret("tenant-a") });
    const inputs = resp.getInputs()!.toJavaScript() as Record<string, any>;
    expect(resp.getFailuresList()).toEqual([]);
    expect(inputs.bmc.password).toEqual(secret("plain-pw"));
    expect(inputs.owner).toEqual(secret("tenant-a"));
    // Normalised: the address loses its trailing slash, so equal meanings diff equal.
    expect(inputs.bmc.address).toBe("https://10.0.0.5");
  });

  it("passes unknowns through without judging them", async () => {
    const resp = await check({ bmc: { address: UNKNOWN_SENTINEL }, powerState: UNKNOWN_SENTINEL });
    expect(resp.getFailuresList()).toEqual([]);
    expect((resp.getInputs()!.toJavaScript() as any).powerState).toBe(UNKNOWN_SENTINEL);
  });
});

describe("Diff", () => {
  const olds = { bmc: { address: "https://b", password: secret("x") }, powerState: "on" };
  const diff = (news: Record<string, unknown>) =>
    call<provproto.DiffRequest, provproto.DiffResponse>(
      "diff",
      new provproto.DiffRequest().setUrn(URN).setType(TYPE).setId("https://b/redfish/v1/Systems/1").setOlds(struct(olds)).setOldInputs(struct(olds)).setNews(struct(news)),
    );

  it("reports no change, with the facts as stables", async () => {
    const resp = await diff(olds);
    expect(resp.getChanges()).toBe(provproto.DiffResponse.DiffChanges.DIFF_NONE);
  });

  it("gives a detailed diff of an in-place update with stables", async () => {
    const resp = await diff({ ...olds, powerState: "off" });
    expect(resp.getChanges()).toBe(provproto.DiffResponse.DiffChanges.DIFF_SOME);
    expect(resp.getReplacesList()).toEqual([]);
    expect(resp.getDetaileddiffMap().get("powerState")?.getKind()).toBe(provproto.PropertyDiff.Kind.UPDATE);
    expect(resp.getStablesList()).toEqual(expect.arrayContaining(["systemId", "serialNumber", "macAddresses"]));
  });

  it("replaces when the BMC address changes", async () => {
    const resp = await diff({ ...olds, bmc: { address: "https://c", password: secret("x") } });
    expect(resp.getReplacesList()).toEqual(["bmc"]);
    expect(resp.getDetaileddiffMap().get("bmc.address")?.getKind()).toBe(provproto.PropertyDiff.Kind.UPDATE_REPLACE);
    expect(resp.getStablesList()).toEqual([]);
  });
});

describe("Create, Read, Update, Delete against the fake BMC", () => {
  const inputs = () => ({ bmc: { address: bmc.url, systemId: "437XR1138R2" }, powerState: "on", bootDevice: "pxe" });

  it("previews without touching the BMC: outputs are unknown", async () => {
    const before = bmc.log.length;
    const resp = await call<provproto.CreateRequest, provproto.CreateResponse>(
      "create",
      new provproto.CreateRequest().setUrn(URN).setType(TYPE).setProperties(struct(inputs())).setPreview(true),
    );
    const props = resp.getProperties()!.toJavaScript() as Record<string, unknown>;
    expect(props.serialNumber).toBe(UNKNOWN_SENTINEL);
    expect(props.powerState).toBe("on");
    expect(bmc.log.length).toBe(before);
  });

  it("creates, reads back, detects a hand-made power change, and marks the password secret", async () => {
    const withPw = { ...inputs(), bmc: { ...inputs().bmc, password: secret("mockup-pw") } };
    const created = await call<provproto.CreateRequest, provproto.CreateResponse>(
      "create",
      new provproto.CreateRequest().setUrn(URN).setType(TYPE).setProperties(struct(withPw)).setTimeout(60),
    );
    expect(created.getId()).toBe(`${bmc.url}/redfish/v1/Systems/437XR1138R2`);
    const state = created.getProperties()!.toJavaScript() as Record<string, any>;
    expect(state).toMatchObject({ manufacturer: "Contoso", serialNumber: "437XR1138R2", cpuCount: 2, memoryGiB: 96, currentPowerState: "on", currentBootDevice: "pxe" });
    expect(state.bmc.password).toEqual(secret("mockup-pw"));

    // Someone powers the machine off by hand.
    bmc.update("/redfish/v1/Systems/437XR1138R2", (r) => void (r.PowerState = "Off"));
    const read = await call<provproto.ReadRequest, provproto.ReadResponse>(
      "read",
      new provproto.ReadRequest().setUrn(URN).setType(TYPE).setId(created.getId()).setProperties(created.getProperties()).setInputs(struct(withPw)),
    );
    expect((read.getInputs()!.toJavaScript() as any).powerState).toBe("off");
    expect((read.getProperties()!.toJavaScript() as any).currentPowerState).toBe("off");
    expect((read.getInputs()!.toJavaScript() as any).bmc.password).toEqual(secret("mockup-pw"));

    // Update puts it right.
    const updated = await call<provproto.UpdateRequest, provproto.UpdateResponse>(
      "update",
      new provproto.UpdateRequest().setUrn(URN).setType(TYPE).setId(created.getId()).setOlds(read.getProperties()).setOldInputs(read.getInputs()).setNews(struct(withPw)).setTimeout(60),
    );
    expect((updated.getProperties()!.toJavaScript() as any).currentPowerState).toBe("on");

    await call("delete", new provproto.DeleteRequest().setUrn(URN).setType(TYPE).setId(created.getId()).setProperties(updated.getProperties()));
  });

  it("reads a vanished system as gone", async () => {
    const read = await call<provproto.ReadRequest, provproto.ReadResponse>(
      "read",
      new provproto.ReadRequest().setUrn(URN).setType(TYPE).setId(`${bmc.url}/redfish/v1/Systems/no-such-system`).setInputs(struct(inputs())).setProperties(struct(inputs())),
    );
    expect(read.getId()).toBe("");
  });

  it("imports by BMC address and system id with the provider's credentials", async () => {
    const read = await call<provproto.ReadRequest, provproto.ReadResponse>(
      "read",
      new provproto.ReadRequest().setUrn(URN).setType(TYPE).setId(`${bmc.url}#437XR1138R2`),
    );
    expect(read.getId()).toBe(`${bmc.url}/redfish/v1/Systems/437XR1138R2`);
    expect(read.getInputs()!.toJavaScript()).toEqual({ bmc: { address: bmc.url, systemId: "437XR1138R2" }, powerState: "on", provide: true, maintenance: false });
  });

  it("reports a partial create as an init failure that keeps the node in state", async () => {
    // The boot override is accepted but the power action fails: the node exists, half configured.
    bmc.update("/redfish/v1/Systems/437XR1138R2", (r) => void (r.PowerState = "Off"));
    bmc.failNext(1, { status: 500, method: "POST", path: "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset" });
    const err = await call<provproto.CreateRequest, provproto.CreateResponse>(
      "create",
      new provproto.CreateRequest().setUrn(URN).setType(TYPE).setProperties(struct(inputs())).setTimeout(60),
    ).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err).toBeDefined();
    const bin = err!.metadata.get("grpc-status-details-bin")[0] as Buffer;
    const status = statusproto.Status.deserializeBinary(new Uint8Array(bin));
    const detail = provproto.ErrorResourceInitFailed.deserializeBinary(status.getDetailsList()[0].getValue_asU8());
    expect(detail.getId()).toBe(`${bmc.url}/redfish/v1/Systems/437XR1138R2`);
    expect(detail.getReasonsList()[0]).toMatch(/HTTP 500/);
    expect((detail.getProperties()!.toJavaScript() as any).serialNumber).toBe("437XR1138R2");
  });

  it("says which property to fix when the password is wrong, without echoing it", async () => {
    const wrong = { ...inputs(), bmc: { ...inputs().bmc, password: secret("wrong-pw-123") } };
    const err = await call("create", new provproto.CreateRequest().setUrn(URN).setType(TYPE).setProperties(struct(wrong)).setTimeout(30)).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err?.details).toMatch(/^bmc\.password: .*HTTP 401/);
    expect(err?.details).not.toContain("wrong-pw-123");
  });

  describe("a machine that never reaches the declared power state", () => {
    const RESET = "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset";
    beforeEach(() => {
      bmc.update("/redfish/v1/Systems/437XR1138R2", (r) => void (r.PowerState = "Off"));
      // The BMC accepts the reset but nothing happens (a stuck machine).
      bmc.failNext(1, { status: 204, method: "POST", path: RESET });
    });

    it("fails at the custom timeout, naming powerState and how to give it more time", async () => {
      const started = Date.now();
      const err = await call("create", new provproto.CreateRequest().setUrn(URN).setType(TYPE).setProperties(struct(inputs())).setTimeout(2)).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      // Enrolled but not converged: an init failure, so the node stays in state.
      const bin = err!.metadata.get("grpc-status-details-bin")[0] as Buffer;
      const status = statusproto.Status.deserializeBinary(new Uint8Array(bin));
      const detail = provproto.ErrorResourceInitFailed.deserializeBinary(status.getDetailsList()[0].getValue_asU8());
      expect(detail.getReasonsList()[0]).toMatch(/^powerState: .*still reports power 'off'.*customTimeouts/);
      expect(Date.now() - started).toBeGreaterThanOrEqual(2000);
    });

    it("stops waiting when the engine cancels", async () => {
      const pending = call("create", new provproto.CreateRequest().setUrn(URN).setType(TYPE).setProperties(struct(inputs())).setTimeout(120)).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      await new Promise((r) => setTimeout(r, 500));
      await call("cancel", new Empty());
      const err = await pending;
      expect(err?.details).toMatch(/cancel/);
    });
  });
});
