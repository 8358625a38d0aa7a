/**
 * The in-memory `fake` switch driver, and through it the switch kind's own rules (validation, the
 * effect of each change) that every driver shares.
 */
import { BaremetalError, isBaremetalError } from "../core/errors";
import { FakeSwitch, fakeSwitch, resetFakeSwitches } from "./fake-switch";
import { applyPortChange, expectationMismatches, validateSwitchChanges, type SwitchChange } from "./kinds/switch";

async function rejection(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return e;
  }
  throw new Error("expected a rejection");
}

describe("switch kind: validation", () => {
  const bad: [unknown, string, RegExp][] = [
    [[{ kind: "access", port: "p1", vlan: 0 }], "changes[0].vlan", /VLAN must be an integer from 1 to 4094, got 0/],
    [[{ kind: "access", port: "p1", vlan: 4095 }], "changes[0].vlan", /got 4095/],
    [[{ kind: "access", port: "p1", vlan: 1.5 }], "changes[0].vlan", /got 1.5/],
    [[{ kind: "access", port: "p1", vlan: "101" }], "changes[0].vlan", /got "101"/],
    [[{ kind: "access", port: "", vlan: 1 }], "changes[0].port", /port must be a switch port name/],
    [[{ kind: "access", port: "eth 0", vlan: 1 }], "changes[0].port", /got "eth 0"/],
    [[{ kind: "access", port: "x".repeat(65), vlan: 1 }], "changes[0].port", /1-64 characters/],
    [[{ kind: "access", port: "p1", vlan: 1 }, { kind: "trunk", port: "p2", vlans: [1, 5000] }], "changes[1].vlans[1]", /got 5000/],
    [[{ kind: "trunk", port: "p2", vlans: "1,2" }], "changes[0].vlans", /must be a list of VLANs/],
    [[{ kind: "trunk", port: "p2", vlans: [], nativeUntagged: true }], "changes[0].nativeUntagged", /needs a nativeVlan/],
    [[{ kind: "trunk-add", port: "p2", vlans: [] }], "changes[0].vlans", /at least one VLAN/],
    [[{ kind: "reset", port: "p2", quarantineVlan: 0 }], "changes[0].quarantineVlan", /got 0/],
    [[{ kind: "ensure-vlan", vlan: 10, name: "" }], "changes[0].name", /VLAN name must be 1-63 printable ASCII/],
    [[{ kind: "ensure-vlan", vlan: 10, name: "tab\there" }], "changes[0].name", /printable/],
    [[{ kind: "access", port: "p1", vlan: 1, owner: "" }], "changes[0].owner", /owner must be/],
    [[{ kind: "shutdown", port: "p1" }], "changes[0].kind", /kind must be one of access, trunk, reset/],
    [[null], "changes[0]", /must be an object/],
    ["nope", "changes", /must be a list/],
  ];
  it.each(bad)("refuses %j naming %s", (changes, property, message) => {
    let err: unknown;
    try {
      validateSwitchChanges(changes);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: "validation", property });
    expect((err as Error).message).toMatch(message);
  });

  it("normalises VLAN lists (sorted, no duplicates) and defaults a native VLAN to untagged", () => {
    expect(validateSwitchChanges([{ kind: "trunk", port: "Ethernet1/1", vlans: [30, 10, 30], nativeVlan: 5 }])).toEqual([
      { kind: "trunk", port: "Ethernet1/1", vlans: [10, 30], nativeVlan: 5, nativeUntagged: true },
    ]);
    expect(validateSwitchChanges([{ kind: "trunk-remove", port: "ge-0/0/1", vlans: [4094, 1] }])).toEqual([{ kind: "trunk-remove", port: "ge-0/0/1", vlans: [1, 4094] }]);
  });

  it("defines what each change does to a port", () => {
    const none = { port: "p", mode: "none" as const, shutdown: false };
    const trunk = applyPortChange(none, { kind: "trunk-add", port: "p", vlans: [5, 3] }, "me", "c");
    expect(trunk).toEqual({ port: "p", mode: "trunk", trunkVlans: [3, 5], shutdown: false }); // shared uplink: no owner taken
    expect(applyPortChange(trunk, { kind: "trunk-add", port: "p", vlans: [4] }, "me", "c").trunkVlans).toEqual([3, 4, 5]);
    expect(applyPortChange(trunk, { kind: "trunk-remove", port: "p", vlans: [3, 9] }, "me", "c").trunkVlans).toEqual([5]);
    expect(applyPortChange(trunk, { kind: "access", port: "p", vlan: 7 }, "me", "c")).toEqual({ port: "p", mode: "access", vlan: 7, owner: "me", shutdown: false });
    expect(applyPortChange({ port: "p", mode: "access", vlan: 7, owner: "me" }, { kind: "reset", port: "p" }, "me", "c")).toEqual({ port: "p", mode: "none" });
    const all = { port: "p", mode: "trunk" as const }; // a trunk of every VLAN
    expect(applyPortChange(all, { kind: "trunk-add", port: "p", vlans: [4] }, undefined, "c")).toEqual(all);
    expect(() => applyPortChange(all, { kind: "trunk-remove", port: "p", vlans: [4] }, undefined, "changes[2]")).toThrow(
      expect.objectContaining({ code: "conflict", property: "changes[2]", message: expect.stringMatching(/carries every VLAN/) }),
    );
    expect(() => applyPortChange({ port: "p", mode: "access", vlan: 7 }, { kind: "trunk-add", port: "p", vlans: [4] }, undefined, "c")).toThrow(/access port \(VLAN 7\)/);
    expect(expectationMismatches({ port: "p", mode: "access", vlan: 7 }, { port: "p", vlan: 8, owner: undefined })).toEqual(["vlan is 7, expected 8"]);
    expect(expectationMismatches({ port: "p", mode: "trunk", trunkVlans: [1, 2] }, { port: "p", trunkVlans: [2, 1] })).toEqual([]);
  });
});

describe("fake switch driver", () => {
  afterEach(() => resetFakeSwitches());

  it("applies a batch as one transaction and reads it back like the ovsdb driver would", async () => {
    const sw = new FakeSwitch({ ports: ["p1", "p2", { port: "up1", mode: "trunk", trunkVlans: [100] }] });
    const d = sw.driver({ owner: "stack-a" });
    expect(d.family).toBe("fake");
    const changes: SwitchChange[] = [
      { kind: "ensure-vlan", vlan: 101, name: "tenant-a" },
      { kind: "access", port: "p1", vlan: 101 },
      { kind: "trunk", port: "p2", vlans: [102], nativeVlan: 101, owner: "stack-b" },
      { kind: "trunk-add", port: "up1", vlans: [101] },
    ];
    expect(await d.apply(changes)).toEqual({ transactions: 1, retries: 0, changed: true });
    expect(sw.transactions).toBe(1);
    expect(await d.listPorts()).toEqual([
      { port: "p1", mode: "access", vlan: 101, owner: "stack-a" },
      { port: "p2", mode: "trunk", vlan: 101, nativeUntagged: true, trunkVlans: [102], owner: "stack-b" },
      { port: "up1", mode: "trunk", trunkVlans: [100, 101] },
    ]);
    expect(await d.listVlans()).toEqual([{ id: 101, name: "tenant-a" }]);
    // Again: nothing to do, no transaction.
    expect(await d.apply(changes)).toEqual({ transactions: 0, retries: 0, changed: false });
    expect(sw.transactions).toBe(1);
    expect(await d.ensureVlan(101, "tenant-a")).toEqual({ changed: false });
    expect(await d.ensureVlan(102, "tenant-b")).toEqual({ changed: true });
    expect(await d.deleteVlan(101)).toEqual({ changed: true });
    expect(await d.deleteVlan(101)).toEqual({ changed: false });
    expect(sw.transactions).toBe(3);
    // One at a time: one transaction each.
    await d.apply([{ kind: "reset", port: "p1", quarantineVlan: 4000 }]);
    await d.apply([{ kind: "reset", port: "p2" }]);
    expect(sw.transactions).toBe(5);
    expect(await d.getPort("p1")).toEqual({ port: "p1", mode: "access", vlan: 4000 });
    expect(await d.getPort("p2")).toEqual({ port: "p2", mode: "none" });
    expect(await d.getPort("nope")).toBeUndefined();
  });

  it("names a missing port and changes nothing of the batch", async () => {
    const sw = new FakeSwitch({ ports: ["p1"] });
    const e = await rejection(sw.driver().apply([{ kind: "access", port: "p1", vlan: 5 }, { kind: "access", port: "ghost", vlan: 5 }]));
    expect(e).toMatchObject({ code: "not-found", property: "changes[1].port" });
    expect(e.message).toMatch(/switch port ghost does not exist/);
    expect(sw.ports.get("p1")).toEqual({ port: "p1", mode: "none" });
    expect(sw.transactions).toBe(0);
  });

  it("simulates concurrent writers: retries, then conflict", async () => {
    const sw = new FakeSwitch({ ports: ["p1"] });
    sw.injectConflicts(2);
    expect(await sw.driver().apply([{ kind: "access", port: "p1", vlan: 5 }])).toEqual({ transactions: 3, retries: 2, changed: true });
    sw.injectConflicts(10);
    const e = await rejection(sw.driver({ maxRetries: 1 }).apply([{ kind: "access", port: "p1", vlan: 6 }]));
    expect(e.code).toBe("conflict");
    expect(e.message).toMatch(/2 times in a row/);
    expect(sw.ports.get("p1")?.vlan).toBe(5);
  });

  it("checks expectations, detects drift made by hand, fails on demand, and shares state per address", async () => {
    const sw = fakeSwitch("fake://tor1", { ports: ["p1"] });
    const d = sw.driver({ owner: "me" });
    await d.apply([{ kind: "access", port: "p1", vlan: 5 }]);
    const recorded = await d.getPort("p1");
    sw.setPort({ port: "p1", mode: "access", vlan: 9 }); // an operator's change
    const e = await rejection(d.apply([{ kind: "reset", port: "p1" }], { expect: [recorded!] }));
    expect(e).toMatchObject({ code: "conflict", property: "expect[0]" });
    expect(e.message).toMatch(/vlan is 9, expected 5; owner is absent, expected "me"/);

    sw.failNext(new BaremetalError("transient", "switch rebooting"));
    expect(await rejection(d.listPorts())).toMatchObject({ code: "transient" });
    expect(await d.listPorts()).toHaveLength(1);

    expect(fakeSwitch("fake://tor1")).toBe(sw);
    expect(await fakeSwitch("fake://tor1").driver().getPort("p1")).toMatchObject({ vlan: 9 });
    await d.close();
    expect(await rejection(d.listPorts())).toMatchObject({ code: "internal" });
    const ctl = new AbortController();
    ctl.abort();
    expect(await rejection(sw.driver().apply([{ kind: "reset", port: "p1" }], { signal: ctl.signal }))).toMatchObject({ code: "cancelled" });
  });
});
