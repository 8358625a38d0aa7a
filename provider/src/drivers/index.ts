/**
 * Hardware types: which driver serves a BMC address. Redfish is the only BMC protocol so far;
 * `ipmi://` and vendor schemes join here without touching the resources.
 */
import { validationError } from "../core/errors";
import type { BmcConnection, BmcDriver } from "./kinds/bmc";
import { RedfishDriver } from "./redfish/driver";

export function bmcDriverFor(conn: BmcConnection, property = "bmc.address"): BmcDriver {
  const scheme = new URL(conn.address).protocol;
  if (scheme === "https:" || scheme === "http:") return new RedfishDriver(conn);
  throw validationError(property, `no BMC driver serves '${scheme}' addresses; use an https:// (Redfish) address`);
}
