/**
 * Switch families: which driver serves a switch of the provider's `fabrics` configuration. Each
 * family turns a `SwitchConnection` into a `SwitchDriver`; resources never name a family.
 */
import { validationError } from "../core/errors";
import { fakeSwitch } from "./fake-switch";
import type { SwitchConnection, SwitchDriver } from "./kinds/switch";
import { ovsdbSwitchDriver } from "./ovsdb/switch";
import { sshCliSwitchDriver } from "./ssh-cli/switch";

export type SwitchFactory = (conn: SwitchConnection) => SwitchDriver;

/**
 * The families, by the name a switch's `driver` setting gives:
 * - `ovsdb`: Open vSwitch (or any switch managed over OVSDB), `tcp:HOST:PORT` / `ssl:HOST:PORT`;
 * - `ssh-cli`: a switch configured through its command line over SSH, `ssh://[user@]host[:port]`,
 *   with a `dialect`: `ovs-vsctl` (Open vSwitch hosts; `?db=` sets ovs-vsctl's --db), `sonic`,
 *   `cumulus-nvue`; `hostKey` (verified unless verifyTls is false), `password` / `privateKey`.
 *   Only ovs-vsctl is proven against a real peer; see ssh-cli/switch.ts;
 * - `fake`: an in-process switch (tests, demos), one per address.
 */
export const switchFamilies: Record<string, SwitchFactory> = {
  ovsdb: (conn) => ovsdbSwitchDriver(conn),
  "ssh-cli": (conn) => sshCliSwitchDriver(conn),
  fake: (conn) => fakeSwitch(conn.address).driver({ owner: conn.owner }),
};

export function switchFamilyNames(): string[] {
  return Object.keys(switchFamilies).sort();
}

/** The driver for a switch; `property` names the setting in errors (e.g. `fabrics.rack1.switches.tor1.driver`). */
export function switchDriverFor(family: string, conn: SwitchConnection, property = "driver"): SwitchDriver {
  const factory = Object.prototype.hasOwnProperty.call(switchFamilies, family) ? switchFamilies[family] : undefined;
  if (!factory) throw validationError(property, `no switch driver '${family}'; use one of ${switchFamilyNames().join(", ")}`);
  return factory(conn);
}
