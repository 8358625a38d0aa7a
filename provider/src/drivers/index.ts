/**
 * Hardware types: which driver serves a BMC address. Redfish is the only BMC protocol so far;
 * `ipmi://` and vendor schemes join here without touching the resources.
 */
import { validationError } from "../core/errors";
import type { BmcConnection, BmcDriver } from "./kinds/bmc";
import { RedfishDriver } from "./redfish/driver";
import { Limiter } from "./redfish/limiter";

/**
 * One request limiter per BMC for the whole provider process: Pulumi runs many resource
 * operations at once, and many BMCs serve only a few sessions or requests at a time, so the
 * `bmcMaxConcurrency` limit holds per BMC, not per operation.
 */
const limiters = new Map<string, Limiter>();

export function bmcLimiter(address: string, max: number): Limiter {
  const key = `${new URL(address).origin} ${max}`;
  let limiter = limiters.get(key);
  if (!limiter) limiters.set(key, (limiter = new Limiter(max)));
  return limiter;
}

export function bmcDriverFor(conn: BmcConnection, property = "bmc.address"): BmcDriver {
  const scheme = new URL(conn.address).protocol;
  if (scheme === "https:" || scheme === "http:") return new RedfishDriver(conn, bmcLimiter(conn.address, conn.maxConcurrency));
  throw validationError(property, `no BMC driver serves '${scheme}' addresses; use an https:// (Redfish) address`);
}
