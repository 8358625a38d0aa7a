/**
 * Hardware types: which driver serves a BMC address. Redfish is the only BMC protocol so far;
 * `ipmi://` and vendor schemes join here without touching the resources.
 */
import { validationError } from "../core/errors";
import type { BmcConnection, BmcDriver } from "./kinds/bmc";
import { RedfishDriver } from "./redfish/driver";
import { Limiter } from "./redfish/limiter";
import { SessionPool } from "./redfish/sessions";

/** One Redfish session per BMC and credentials, shared by the operations in flight. */
export const redfishSessions = new SessionPool();

/**
 * Limits shared by the whole provider process: Pulumi runs many resource operations at once, and
 * many BMCs serve only a few sessions or requests at a time. So `bmcMaxConcurrency` holds per
 * BMC (not per operation), changes to one BMC go one at a time, and `bmcGlobalMaxConcurrency`
 * bounds the requests in flight to all BMCs together.
 */
const perBmc = new Map<string, Limiter>();
const mutations = new Map<string, Limiter>();
let global: Limiter | undefined;

function shared(map: Map<string, Limiter>, key: string, max: number): Limiter {
  let limiter = map.get(key);
  if (!limiter) map.set(key, (limiter = new Limiter(max)));
  return limiter;
}

export function bmcLimiter(address: string, max: number): Limiter {
  return shared(perBmc, `${new URL(address).origin} ${max}`, max);
}

function globalLimiter(max: number): Limiter {
  if (!global || global.max !== max) global = new Limiter(max);
  return global;
}

export function bmcDriverFor(conn: BmcConnection, property = "bmc.address"): BmcDriver {
  const scheme = new URL(conn.address).protocol;
  if (scheme === "https:" || scheme === "http:") {
    return new RedfishDriver(conn, {
      perBmc: bmcLimiter(conn.address, conn.maxConcurrency),
      mutations: shared(mutations, new URL(conn.address).origin, 1),
      global: globalLimiter(conn.globalMaxConcurrency ?? 64),
    }, redfishSessions);
  }
  throw validationError(property, `no BMC driver serves '${scheme}' addresses; use an https:// (Redfish) address`);
}
