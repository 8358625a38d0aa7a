/**
 * The Terraform adapter's translation, without OpenTofu (test/e2e/engines.test.ts runs the real
 * one): schema, validation diagnostics with attribute paths, plans (unknown outputs, defaults,
 * empty plan on no change, requires_replace), and values round-tripping through msgpack.
 */
import { UNKNOWN } from "../../core/values";
import { decodeDynamic, encodeDynamic, fromCore, toCore } from "./cty";
import { terraformSchema } from "./schema";
import { attributePath, TerraformProvider } from "./server";

const schema = terraformSchema();
const node = schema.resources.find((r) => r.typeName === "baremetal_node")!;
const enc = (props: Record<string, unknown> | null) => ({ msgpack: encodeDynamic(props === null ? null : fromCore(props, node.block.attributes), node.block.type) });
const dec = (dv: { msgpack?: Buffer }) => {
  const v = decodeDynamic(dv, node.block.type) as Record<string, unknown> | null;
  return v === null ? null : toCore(v, node.block.attributes);
};

describe("Terraform adapter", () => {
  const p = new TerraformProvider();
  afterAll(() => p.close());

  test("schema: every resource, snake_case attributes, flags from the fields", async () => {
    const s = await p.getProviderSchema();
    expect(Object.keys(s.resourceSchemas)).toEqual(expect.arrayContaining(["baremetal_node", "baremetal_allocation", "baremetal_deployment", "baremetal_volume", "baremetal_backup_policy"]));
    const attrs = s.resourceSchemas.baremetal_node.block.attributes as Array<Record<string, unknown>>;
    const byName = Object.fromEntries(attrs.map((a) => [a.name, a]));
    expect(byName.id).toMatchObject({ computed: true, optional: false, required: false });
    expect(byName.bmc).toMatchObject({ required: true, nestedType: { nesting: 1 } });
    const bmc = Object.fromEntries((byName.bmc.nestedType as { attributes: Array<Record<string, unknown>> }).attributes.map((a) => [a.name, a]));
    expect(bmc.password).toMatchObject({ sensitive: true, optional: true });
    expect(bmc.system_id).toBeDefined();
    expect(JSON.parse(String(byName.power_state.type))).toBe("string");
    expect(byName.manufacturer).toMatchObject({ computed: true, optional: false });
  });

  test("validation failures are error diagnostics on the attribute's path", async () => {
    const r = await p.validateResourceConfig({ typeName: "baremetal_node", config: enc({ bmc: { address: "10.0.0.5" }, powerState: "sideways" }) });
    const paths = r.diagnostics.map((d: { attribute?: { steps: unknown[] } }) => d.attribute?.steps);
    expect(paths).toContainEqual([{ attributeName: "bmc" }, { attributeName: "address" }]);
    expect(paths).toContainEqual([{ attributeName: "power_state" }]);
    expect(r.diagnostics.every((d: { severity: number }) => d.severity === 1)).toBe(true);
    // Unknown values (from other resources) are not judged.
    const ok = await p.validateResourceConfig({ typeName: "baremetal_node", config: enc({ bmc: { address: UNKNOWN } }) });
    expect(ok.diagnostics).toEqual([]);
  });

  test("plan of a create: inputs as configured, computed outputs unknown", async () => {
    const config = enc({ bmc: { address: "https://10.0.0.5" } });
    const r = await p.planResourceChange({ typeName: "baremetal_node", priorState: enc(null), proposedNewState: config, config });
    expect(r.diagnostics).toEqual([]);
    const planned = dec(r.plannedState)!;
    expect(planned.bmc).toEqual({ address: "https://10.0.0.5" });
    expect(planned.id).toBe(UNKNOWN);
    expect(planned.manufacturer).toBe(UNKNOWN);
  });

  test("plan of an update: no change -> the prior state itself; a replace-on-change input -> requires_replace", async () => {
    const prior = { id: "n-1", bmc: { address: "https://10.0.0.5", systemId: "s1" }, manufacturer: "Lab", resourceClass: "small" };
    const same = await p.planResourceChange({ typeName: "baremetal_node", priorState: enc(prior), proposedNewState: enc(prior), config: enc(prior) });
    expect(Buffer.compare(same.plannedState.msgpack, enc(prior).msgpack)).toBe(0);
    expect(same.requiresReplace).toEqual([]);

    const moved = { ...prior, bmc: { address: "https://10.0.0.6", systemId: "s1" } };
    const r = await p.planResourceChange({ typeName: "baremetal_node", priorState: enc(prior), proposedNewState: enc(moved), config: enc(moved) });
    expect(r.requiresReplace).toEqual([attributePath("bmc")]);
    expect(dec(r.plannedState)!.bmc).toEqual(moved.bmc);
  });

  test("state upgrade: the stored JSON re-encoded with the current schema; attributes it no longer has dropped; a newer version refused", async () => {
    const raw = { id: "n-1", bmc: { address: "https://10.0.0.5", system_id: "s1" }, manufacturer: "Lab", retired_attribute: "x" };
    const r = await p.upgradeResourceState({ typeName: "baremetal_node", version: 0, rawState: { json: Buffer.from(JSON.stringify(raw)) } });
    expect(r.diagnostics).toEqual([]);
    expect(dec(r.upgradedState)).toMatchObject({ id: "n-1", bmc: { address: "https://10.0.0.5", systemId: "s1" }, manufacturer: "Lab" });
    const newer = await p.upgradeResourceState({ typeName: "baremetal_node", version: 7, rawState: { json: Buffer.from("{}") } });
    expect(newer.diagnostics[0].summary).toMatch(/written by a newer provider \(schema version 7\); upgrade the provider/);
  });

  test("attribute paths: nested names in snake case, list indexes as element keys", () => {
    expect(attributePath("volumes[2].keyId").steps).toEqual([{ attributeName: "volumes" }, { elementKeyInt: 2 }, { attributeName: "key_id" }]);
    expect(attributePath("bmc.verifyTls").steps).toEqual([{ attributeName: "bmc" }, { attributeName: "verify_tls" }]);
    // Through the schema: a field's terraformName, and the keys of a map of objects.
    const va = schema.resources.find((r) => r.typeName === "baremetal_volume_attachment")!;
    expect(attributePath("connection.chapSecret", va.block.attributes).steps).toEqual([{ attributeName: "iscsi_connection" }, { attributeName: "chap_secret" }]);
    expect(attributePath("keyManagers.barbican.caBundle", schema.provider.attributes).steps).toEqual([{ attributeName: "key_managers" }, { elementKeyString: "barbican" }, { attributeName: "ca_bundle" }]);
  });

  test("an unknown resource type is an error diagnostic, not a crash", async () => {
    const r = await p.planResourceChange({ typeName: "baremetal_nope", priorState: enc(null), proposedNewState: enc(null), config: enc(null) });
    expect(r.diagnostics[0].summary).toMatch(/unknown resource type baremetal_nope; this provider serves: baremetal_node/);
  });
});
