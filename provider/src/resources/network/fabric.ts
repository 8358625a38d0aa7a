/**
 * The configured fabrics at run time: finding a fabric or a switch by name, opening a switch's
 * driver with its credentials, and keeping the inventory's VLAN pool of a fabric equal to the
 * configuration (the pool is what makes VLAN choice atomic across stacks).
 */
import { BaremetalError, validationError } from "../../core/errors";
import { type FabricConfig, parseVlanRange, type SwitchSettings } from "../../core/fabric-config";
import type { ProviderContext } from "../../core/resource";
import type { SwitchDriver } from "../../drivers/kinds/switch";
import { switchDriverFor } from "../../drivers/switches";
import type { Inventory } from "../../inventory/types";

export interface ResolvedSwitch {
  id: string;
  fabricName: string;
  fabric: FabricConfig;
  settings: SwitchSettings;
}

export function fabricNamed(ctx: ProviderContext, name: string, property: string): FabricConfig {
  const fabrics = ctx.config.fabrics;
  const fabric = Object.prototype.hasOwnProperty.call(fabrics, name) ? fabrics[name] : undefined;
  if (!fabric) {
    const known = Object.keys(fabrics);
    throw validationError(
      property,
      known.length
        ? `no fabric '${name}' in the provider's fabrics setting; known fabrics: ${known.join(", ")}`
        : `no fabric '${name}': the provider's fabrics setting is empty; configure baremetal:fabrics (its VLAN pool and switches) first`,
    );
  }
  return fabric;
}

/** The only fabric, when there is exactly one (the default of resources that name none). */
export function defaultFabricName(ctx: ProviderContext, property: string): string {
  const names = Object.keys(ctx.config.fabrics);
  if (names.length === 1) return names[0];
  throw validationError(
    property,
    names.length ? `the provider has ${names.length} fabrics (${names.join(", ")}); name one` : "the provider's fabrics setting is empty; configure baremetal:fabrics first",
  );
}

export function switchNamed(ctx: ProviderContext, id: string, property: string): ResolvedSwitch {
  for (const [fabricName, fabric] of Object.entries(ctx.config.fabrics)) {
    const settings = Object.prototype.hasOwnProperty.call(fabric.switches, id) ? fabric.switches[id] : undefined;
    if (settings) return { id, fabricName, fabric, settings };
  }
  const known = Object.values(ctx.config.fabrics).flatMap((f) => Object.keys(f.switches));
  throw validationError(property, `no switch '${id}' in the provider's fabrics setting${known.length ? `; known switches: ${known.join(", ")}` : ""}`);
}

export function switchesOf(ctx: ProviderContext, fabricName: string): ResolvedSwitch[] {
  const fabric = fabricNamed(ctx, fabricName, "fabric");
  return Object.entries(fabric.switches).map(([id, settings]) => ({ id, fabricName, fabric, settings }));
}

/** Opens the switch's driver, runs `use`, closes it. Errors name the switch. */
export async function withSwitch<T>(ctx: ProviderContext, sw: ResolvedSwitch, use: (driver: SwitchDriver) => Promise<T>, signal?: AbortSignal): Promise<T> {
  const creds = Object.prototype.hasOwnProperty.call(ctx.config.switchCredentials, sw.id) ? ctx.config.switchCredentials[sw.id] : {};
  const driver = switchDriverFor(
    sw.settings.driver,
    {
      address: sw.settings.address,
      bridge: sw.settings.bridge,
      verifyTls: sw.settings.verifyTls,
      caBundle: sw.settings.caBundle,
      clientCertificate: creds.clientCertificate,
      clientKey: creds.clientKey,
      username: creds.username,
      password: creds.password,
      privateKey: creds.privateKey,
      hostKey: sw.settings.hostKey,
      dialect: sw.settings.dialect,
      signal,
    },
    `fabrics.${sw.fabricName}.switches.${sw.id}.driver`,
  );
  try {
    return await use(driver);
  } catch (e) {
    if (e instanceof BaremetalError && !e.message.includes(`switch ${sw.id}`)) e.message = `switch ${sw.id}: ${e.message}`;
    throw e;
  } finally {
    await driver.close().catch(() => undefined);
  }
}

/** The inventory's VLAN pool of a fabric (named after it), made equal to the configuration. */
export async function ensureFabricPool(inventory: Inventory, fabricName: string, fabric: FabricConfig): Promise<void> {
  await inventory.defineVlanPool({ name: fabricName, fabric: fabricName, ranges: fabric.vlanRanges.map(parseVlanRange) });
}

/** The VLAN ids of the fabric's provisioning and quarantine networks (never a tenant's). */
export function infrastructureVlans(fabric: FabricConfig): number[] {
  return [fabric.provisioningVlan, fabric.quarantineVlan].filter((v): v is number => v !== undefined);
}
