/**
 * KeyRotationPolicy's cryptoperiod as its field validation judges it (what a preview and the
 * service refuse before anything runs): a period and a unit, at least 1 s (the check), at most 100
 * years (a longer one made dates JavaScript cannot hold: the fuzzer's 648793630201d was a 500).
 */
import { Validator } from "../../core/validate";
import { keyRotationPolicyResource } from "./rotation-policy";

const check = (cryptoperiod: string) => new Validator(keyRotationPolicyResource.inputs).check({ cryptoperiod, volumes: [] });

test.each(["90d", "12h", "30m", "45s", "36500d"])("%s is a cryptoperiod", (p) => {
  expect(check(p)).toEqual([]);
});

test.each(["36501d", "648793630201d", "9999999999999999h"])("%s is refused naming cryptoperiod", (p) => {
  expect(check(p)).toEqual([{ property: "cryptoperiod", reason: expect.stringMatching(/longer than 100 years/) }]);
});

test("a period without a unit is refused with the hint", () => {
  expect(check("90")).toEqual([{ property: "cryptoperiod", reason: expect.stringMatching(/90d, 12h/) }]);
});
