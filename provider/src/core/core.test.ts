import { configFields, toProviderConfig, withEnvironment } from "./config";
import { diffInputs } from "./diff";
import { applyDefaults } from "./fields";
import { Validator } from "./validate";
import { UNKNOWN } from "./values";
import { nodeResource } from "../resources/compute/node";

describe("validation of Node inputs", () => {
  const v = new Validator(nodeResource.inputs);

  it("accepts a minimal node", () => {
    expect(v.check({ bmc: { address: "https://10.0.0.5" } })).toEqual([]);
  });

  it("names a missing BMC address and says how to fix it", () => {
    const failures = v.check({ bmc: { username: "admin" } });
    expect(failures).toHaveLength(1);
    expect(failures[0].property).toBe("bmc.address");
    expect(failures[0].reason).toMatch(/missing required property 'bmc.address'.*https:\/\//);
  });

  it("names a missing bmc block", () => {
    expect(v.check({})[0].property).toBe("bmc");
  });

  it.each([
    ["not a url", /is not a URL/],
    ["ftp://bmc", /must start with https/],
    ["https://bmc.example/some/path", /without a path/],
    ["https://root:pw@bmc.example", /credentials do not belong/],
  ])("rejects the malformed address %s", (address, why) => {
    const failures = v.check({ bmc: { address } });
    expect(failures).toEqual([{ property: "bmc.address", reason: expect.stringMatching(why) }]);
    // The password is never echoed back.
    expect(JSON.stringify(failures)).not.toContain("pw@");
  });

  it("lists the allowed values of an enum", () => {
    const [f] = v.check({ bmc: { address: "https://b" }, powerState: "up" });
    expect(f).toEqual({ property: "powerState", reason: expect.stringContaining('"on", "off"') });
  });

  it("rejects unknown properties and lists the known ones", () => {
    const [f] = v.check({ bmc: { address: "https://b", pasword: "x" } });
    expect(f.property).toBe("bmc.pasword");
    expect(f.reason).toMatch(/known properties here: .*password/);
  });

  it("checks array items with their hint", () => {
    const [f] = v.check({ bmc: { address: "https://b" }, traits: ["lower"] });
    expect(f.property).toBe("traits[0]");
    expect(f.reason).toMatch(/HW_CPU_X86_AVX2/);
  });

  it("does not judge unknown values at preview", () => {
    expect(v.check({ bmc: UNKNOWN })).toEqual([]);
    expect(v.check({ bmc: { address: UNKNOWN } })).toEqual([]);
  });
});

describe("diff of Node inputs", () => {
  const base = { bmc: { address: "https://b", password: "x" }, powerState: "on" };

  it("is empty for equal inputs", () => {
    expect(diffInputs(nodeResource.inputs, base, structuredClone(base)).changes).toEqual([]);
  });

  it("updates in place for power and credentials", () => {
    const d = diffInputs(nodeResource.inputs, base, { bmc: { address: "https://b", password: "y" }, powerState: "off" });
    expect(d.replaces).toEqual([]);
    expect(d.changes.map((c) => c.path).sort()).toEqual(["bmc.password", "powerState"]);
  });

  it("replaces when the BMC address changes", () => {
    const d = diffInputs(nodeResource.inputs, base, { ...base, bmc: { address: "https://c", password: "x" } });
    expect(d.replaces).toEqual(["bmc"]);
    expect(d.changes).toEqual([{ path: "bmc.address", kind: "update", replace: true }]);
  });

  it("treats an unknown replace-on-change value as a replacement", () => {
    expect(diffInputs(nodeResource.inputs, base, { ...base, bmc: UNKNOWN }).replaces).toEqual(["bmc"]);
  });

  it("honours ignoreChanges", () => {
    expect(diffInputs(nodeResource.inputs, base, { ...base, powerState: "off" }, ["powerState"]).changes).toEqual([]);
  });
});

describe("provider configuration", () => {
  it("takes BAREMETAL_* variables with their types, below explicit values", () => {
    const env = { BAREMETAL_BMC_VERIFY_TLS: "false", BAREMETAL_BMC_MAX_CONCURRENCY: "8", BAREMETAL_ROLES: "admin, member", BAREMETAL_PROJECT: "p1" };
    const merged = applyDefaults(configFields, withEnvironment({ project: "explicit" }, env));
    const cfg = toProviderConfig(merged);
    expect(cfg).toMatchObject({ bmcVerifyTls: false, bmcMaxConcurrency: 8, roles: ["admin", "member"], project: "explicit" });
  });

  it("verifies TLS by default", () => {
    expect(toProviderConfig(applyDefaults(configFields, withEnvironment({}, {}))).bmcVerifyTls).toBe(true);
  });

  it("checks bmcSshHostKeys when configured: known_hosts lines and fingerprints pass, anything else names the setting", () => {
    const v = new Validator(configFields);
    const fp = `SHA256:${"A".repeat(43)}`;
    const ok = `[127.0.0.1]:2200 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n${"#"} comment`;
    for (const good of [fp, ok]) expect(v.check(applyDefaults(configFields, { bmcSshHostKeys: good }))).toEqual([]);
    const [f] = v.check(applyDefaults(configFields, { bmcSshHostKeys: "bmc1 ssh-ed25519" }));
    expect(f.property).toBe("bmcSshHostKeys");
    expect(f.reason).toMatch(/not a known_hosts line/);
  });

  it("rejects a bad environment value with the setting's name", () => {
    const v = new Validator(configFields);
    const [f] = v.check(applyDefaults(configFields, withEnvironment({}, { BAREMETAL_BMC_MAX_CONCURRENCY: "lots" })));
    expect(f.property).toBe("bmcMaxConcurrency");
    expect(f.reason).toMatch(/whole number/);
  });
});
