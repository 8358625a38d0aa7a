/**
 * The IPAM's address arithmetic (ip.ts): parsing, canonical text, prefixes, the lowest free
 * address. The backends' behaviour on top of it is in the conformance suite.
 */
import { isBaremetalError } from "../core/errors";
import { canonicalIp, countInPools, formatIp, lowestFree, parseCidr, parseIp } from "./ip";

function refused(fn: () => unknown): { property?: string; message: string } {
  try {
    fn();
  } catch (err) {
    if (isBaremetalError(err) && err.code === "validation") return { property: err.property, message: err.message };
    throw err;
  }
  throw new Error("expected a validation error");
}

describe("IP addresses", () => {
  test("IPv4: four decimal octets, canonical as given", () => {
    expect(parseIp("a", "192.0.2.10")).toEqual({ version: 4, value: 0xc000020an });
    expect(canonicalIp("a", "0.0.0.0")).toBe("0.0.0.0");
    expect(canonicalIp("a", "255.255.255.255")).toBe("255.255.255.255");
    expect(formatIp(4, 0x0a000001n)).toBe("10.0.0.1");
  });

  test("IPv6: every RFC 4291 form in, RFC 5952 text out", () => {
    const cases: [string, string][] = [
      ["::", "::"],
      ["::1", "::1"],
      ["1::", "1::"],
      ["2001:DB8::1", "2001:db8::1"],
      ["2001:0db8:0000:0000:0000:0000:0002:0001", "2001:db8::2:1"],
      // The longest run of zeros is compressed; the first of equal runs; never a single group.
      ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
      ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
      ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
      ["0:0:0:0:0:0:0:0", "::"],
      ["1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"],
      // A trailing dotted IPv4 part.
      ["::ffff:192.0.2.1", "::ffff:c000:201"],
      ["1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"],
    ];
    for (const [input, canonical] of cases) expect([input, canonicalIp("a", input)]).toEqual([input, canonical]);
    expect(parseIp("a", "::1")).toEqual({ version: 6, value: 1n });
  });

  test("refuses malformed addresses, naming the property", () => {
    for (const bad of [
      "", "1.2.3", "01.2.3.4", "256.1.1.1", "1.2.3.4.5", " 1.2.3.4",
      "1:2:3:4:5:6:7:8:9", "1::2::3", ":::", "12345::", "1:2:3:4:5:6:7::8", "g::", ":1", "1:", "1.2.3.4::", "1:2:3:4:5:6:7:1.2.3.4",
    ]) {
      expect([bad, refused(() => parseIp("gateway", bad)).property]).toEqual([bad, "gateway"]);
    }
    expect(refused(() => parseIp("a", "fe80::1%eth0")).message).toMatch(/zone/);
    expect(refused(() => parseIp("a", 42)).property).toBe("a");
  });
});

describe("CIDR prefixes", () => {
  test("parses IPv4 and IPv6, canonical text", () => {
    expect(parseCidr("cidr", "10.0.0.0/26")).toEqual({ version: 4, prefix: 26, first: 0x0a000000n, last: 0x0a00003fn, text: "10.0.0.0/26" });
    const v6 = parseCidr("cidr", "2001:DB8:0:1::/64");
    expect(v6).toMatchObject({ version: 6, prefix: 64, text: "2001:db8:0:1::/64" });
    expect(v6.last - v6.first).toBe((1n << 64n) - 1n);
    expect(parseCidr("cidr", "0.0.0.0/0").last).toBe(0xffffffffn);
  });

  test("refuses host bits (naming the network), bad prefixes and bare addresses", () => {
    expect(refused(() => parseCidr("cidr", "10.0.0.1/24")).message).toMatch(/host bits set; the network is 10\.0\.0\.0\/24/);
    expect(refused(() => parseCidr("cidr", "2001:db8::1/64")).message).toMatch(/the network is 2001:db8::\/64/);
    for (const bad of ["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/024", "10.0.0.0/-1", "::/129", "10.0.0.0", "x/8"]) {
      expect([bad, refused(() => parseCidr("cidr", bad)).property]).toEqual([bad, "cidr"]);
    }
  });
});

describe("lowest free address", () => {
  test("the lowest address of the pools in neither taken nor reserved", () => {
    const pools = [
      { start: 1n, end: 5n },
      { start: 10n, end: 12n },
    ];
    expect(lowestFree(pools, [], [])).toBe(1n);
    expect(lowestFree(pools, [1n, 2n, 4n], [3n])).toBe(5n);
    expect(lowestFree(pools, [1n, 2n, 4n, 5n, 11n], [3n])).toBe(10n);
    expect(lowestFree(pools, [10n, 1n, 5n, 2n, 4n, 3n, 99n], [11n])).toBe(12n); // any order, outsiders ignored
    expect(lowestFree(pools, [1n, 2n, 3n, 4n, 5n, 10n, 12n], [11n])).toBeUndefined();
    expect(countInPools(pools, [1n, 1n, 7n, 12n])).toBe(2n);
  });

  test("costs nothing extra on a huge IPv6 pool", () => {
    const c = parseCidr("cidr", "2001:db8::/64");
    const pools = [{ start: c.first + 1n, end: c.last }];
    const taken = Array.from({ length: 1000 }, (_, i) => c.first + 1n + BigInt(i));
    expect(formatIp(6, lowestFree(pools, taken, [c.first])!)).toBe("2001:db8::3e9");
  });
});
