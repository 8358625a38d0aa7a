/**
 * Console access over Redfish: where a person reaches a machine at boot time (the BMC's serial
 * console, graphical console and command shell), and short-lived BMC accounts to do it with.
 *
 * Endpoints. A Manager says which console services it runs (`SerialConsole`, `GraphicalConsole`,
 * `CommandShell`: `ServiceEnabled`, `MaxConcurrentSessions`, `ConnectTypesSupported`) but gives
 * types, not addresses. We assume the console listens on the BMC's own host (the host of the
 * Redfish endpoint) and on the protocol's well-known port, unless the manager links a
 * ManagerNetworkProtocol resource (`NetworkProtocol`), whose `SSH.Port`, `Telnet.Port`,
 * `IPMI.Port`, `KVMIP.Port` and `HTTPS.Port` then win (and a protocol it reports as
 * `ProtocolEnabled: false` is left out). Newer managers (Manager v1_10+) also describe the serial
 * console per protocol (`SerialConsole.SSH.Port`, ...), which wins over both.
 *
 *   SSH    ssh://<host>:<SSH.Port, default 22>
 *   Telnet telnet://<host>:<Telnet.Port, default 23>
 *   IPMI   ipmi-sol://<host>:<IPMI.Port, default 623>       (IPMI serial-over-LAN, e.g. `ipmitool -I lanplus sol activate`)
 *   KVMIP  https://<host>[:<HTTPS.Port>]/                    (the BMC's web UI launches the KVM viewer; without
 *                                                            NetworkProtocol: the Redfish endpoint's own scheme and port)
 *   VNC    vnc://<host>:<VNC port, default 5900>
 *   Oem    https://<host>[:port]/ (vendor-specific; only the BMC's web UI is known)
 *
 * Accounts. Through the AccountService: a POST to its Accounts collection where the BMC allows
 * it; on BMCs with a fixed set of slots (iDRAC: 16, slot 1 reserved) the first free slot (empty
 * `UserName`) is filled by PATCH and emptied again on delete. Both are idempotent: creating an
 * account that exists sets its password and role; deleting one that is gone does nothing.
 */
import { BaremetalError, isBaremetalError } from "../../core/errors";
import type { RedfishClient } from "./client";
import type { ComputerSystem, ServiceRoot } from "./types";

export type ConsoleKind = "serial" | "graphical" | "shell";

export interface ConsoleEndpoint {
  /** The Redfish connect type: SSH, IPMI, Telnet, KVMIP, VNC, Oem. */
  protocol: string;
  /** Where to connect (no credentials in it). */
  url: string;
  port?: number;
  /** How many sessions the BMC serves at once, when it says. */
  maxConcurrentSessions?: number;
}

export interface ConsoleEndpoints {
  /** The BMC's host name or address (without port). */
  host: string;
  /** The manager the endpoints belong to (its Redfish URI). */
  managerUri: string;
  serial: ConsoleEndpoint[];
  graphical: ConsoleEndpoint[];
  shell: ConsoleEndpoint[];
}

interface ConsoleService {
  ServiceEnabled?: boolean;
  MaxConcurrentSessions?: number;
  ConnectTypesSupported?: string[];
  /** Manager v1_10+: per-protocol serial console settings. */
  SSH?: { ServiceEnabled?: boolean; Port?: number };
  IPMI?: { ServiceEnabled?: boolean; Port?: number };
  Telnet?: { ServiceEnabled?: boolean; Port?: number };
}

interface ManagerWithConsoles {
  SerialConsole?: ConsoleService;
  GraphicalConsole?: ConsoleService;
  CommandShell?: ConsoleService;
  NetworkProtocol?: { "@odata.id": string };
}

type ProtocolSetting = { ProtocolEnabled?: boolean; Port?: number | null };
type NetworkProtocol = Partial<Record<"SSH" | "Telnet" | "IPMI" | "KVMIP" | "HTTPS" | "HTTP" | "VNC", ProtocolSetting>>;

const DEFAULT_PORTS: Record<string, number> = { SSH: 22, Telnet: 23, IPMI: 623, VNC: 5900 };
const SCHEMES: Record<string, string> = { SSH: "ssh", Telnet: "telnet", IPMI: "ipmi-sol", VNC: "vnc" };

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function hostOf(endpoint: string): { host: string; origin: URL } {
  const u = new URL(endpoint);
  return { host: u.hostname, origin: u };
}

/** `host` as it goes into a URL (IPv6 literals in brackets; URL.hostname already has them). */
function withPort(host: string, port: number | undefined): string {
  return port === undefined ? host : `${host}:${port}`;
}

/** The manager of a system: `Links.ManagedBy[0]`, else the BMC's only manager. */
async function managerOf(client: RedfishClient, systemId: string): Promise<string> {
  const systemPath = systemId.startsWith("/") ? systemId : `/redfish/v1/Systems/${encodeURIComponent(systemId)}`;
  const { body: system } = await client.get<ComputerSystem>(systemPath);
  const managedBy = system.Links?.ManagedBy?.[0]?.["@odata.id"];
  if (managedBy) return managedBy;
  const root = await client.serviceRoot();
  const managers = (root as ServiceRoot & { Managers?: { "@odata.id": string } }).Managers?.["@odata.id"];
  if (managers) {
    const { body } = await client.get<{ Members?: Array<{ "@odata.id": string }> }>(managers);
    if (body.Members?.length === 1) return body.Members[0]["@odata.id"];
  }
  throw new BaremetalError("validation", `the BMC at ${client.endpoint} does not say which manager runs system ${systemId}, so its consoles are unknown`);
}

/**
 * The console endpoints of a system, from its manager. Services the BMC reports disabled are
 * left out, as are protocols that its NetworkProtocol reports disabled.
 */
export async function consoleEndpoints(client: RedfishClient, systemId: string): Promise<ConsoleEndpoints> {
  const managerUri = await managerOf(client, systemId);
  const { body: manager } = await client.get<ManagerWithConsoles>(managerUri);
  let protocols: NetworkProtocol | undefined;
  const np = manager.NetworkProtocol?.["@odata.id"];
  if (np) {
    try {
      protocols = (await client.get<NetworkProtocol>(np)).body;
    } catch (e) {
      // Linked but unreadable: fall back to the well-known ports rather than fail the console.
      if (!(isBaremetalError(e) && (e.code === "not-found" || e.code === "backend"))) throw e;
    }
  }
  const { host, origin } = hostOf(client.endpoint);
  const setting = (name: keyof NetworkProtocol): ProtocolSetting | undefined => (isRecord(protocols?.[name]) ? protocols![name] : undefined);
  const portOf = (name: keyof NetworkProtocol): number | undefined => {
    const p = setting(name)?.Port;
    return typeof p === "number" && p > 0 ? p : undefined;
  };
  const disabled = (name: keyof NetworkProtocol) => setting(name)?.ProtocolEnabled === false;
  const webUi = (): string => {
    const https = portOf("HTTPS");
    if (protocols) return `https://${withPort(host, https !== undefined && https !== 443 ? https : undefined)}/`;
    return `${origin.protocol}//${origin.host}/`;
  };

  const describe = (service: ConsoleService | undefined): ConsoleEndpoint[] => {
    if (!service || typeof service !== "object" || service.ServiceEnabled !== true) return [];
    const out: ConsoleEndpoint[] = [];
    const types: unknown[] = Array.isArray(service.ConnectTypesSupported) ? service.ConnectTypesSupported : [];
    for (const type of types) {
      if (typeof type !== "string") continue;
      const max = typeof service.MaxConcurrentSessions === "number" ? { maxConcurrentSessions: service.MaxConcurrentSessions } : {};
      if (type === "KVMIP") {
        if (disabled("KVMIP")) continue;
        const port = portOf("KVMIP");
        out.push({ protocol: type, url: webUi(), ...(port !== undefined ? { port } : {}), ...max });
      } else if (SCHEMES[type]) {
        const sub = (service as Record<string, unknown>)[type];
        if (isRecord(sub) && sub.ServiceEnabled === false) continue;
        if (disabled(type as keyof NetworkProtocol)) continue;
        const subPort = isRecord(sub) && typeof sub.Port === "number" && sub.Port > 0 ? sub.Port : undefined;
        const port = subPort ?? portOf(type as keyof NetworkProtocol) ?? DEFAULT_PORTS[type];
        out.push({ protocol: type, url: `${SCHEMES[type]}://${withPort(host, port)}`, port, ...max });
      } else {
        out.push({ protocol: type, url: webUi(), ...max });
      }
    }
    return out;
  };

  return {
    host,
    managerUri,
    serial: describe(manager.SerialConsole),
    graphical: describe(manager.GraphicalConsole),
    shell: describe(manager.CommandShell),
  };
}

// ---------------------------------------------------------------------------------------------
// Accounts

interface ManagerAccount {
  "@odata.id": string;
  Id?: string;
  UserName?: string;
  Enabled?: boolean;
  RoleId?: string;
  AccountExpiration?: string | null;
}

interface AccountService {
  ServiceEnabled?: boolean;
  Accounts?: { "@odata.id": string };
}

export interface ConsoleAccountSpec {
  username: string;
  password: string;
  /** A Redfish role: ReadOnly, Operator (or Administrator). */
  roleId: string;
  /** When the BMC should disable the account by itself (ISO 8601); dropped where the BMC does not support it. */
  expiresAt?: string;
}

export interface ConsoleAccount {
  /** The account's Redfish URI. */
  uri: string;
  username: string;
  roleId?: string;
  enabled?: boolean;
  /** How the BMC keeps accounts: a collection (POST/DELETE) or fixed slots (PATCH). */
  mode: "collection" | "slots";
}

export function consolesUnavailable(endpoint: string, why: string): BaremetalError {
  return new BaremetalError("validation", `console credentials are not available on this BMC (${endpoint}): ${why}; use the BMC's own credentials or a BMC with a Redfish AccountService`);
}

/** The Accounts collection of the BMC's AccountService; a clear error where there is none. */
async function accountsCollection(client: RedfishClient): Promise<string> {
  const root = await client.serviceRoot();
  const link = (root as ServiceRoot & { AccountService?: { "@odata.id": string } }).AccountService?.["@odata.id"];
  if (!link) throw consolesUnavailable(client.endpoint, "it has no AccountService");
  let service: AccountService;
  try {
    service = (await client.get<AccountService>(link)).body;
  } catch (e) {
    if (isBaremetalError(e) && e.code === "not-found") throw consolesUnavailable(client.endpoint, "its AccountService is missing");
    throw e;
  }
  if (service.ServiceEnabled === false) throw consolesUnavailable(client.endpoint, "its AccountService is disabled");
  const accounts = service.Accounts?.["@odata.id"];
  if (!accounts) throw consolesUnavailable(client.endpoint, "its AccountService has no Accounts collection");
  return accounts;
}

/** Every account of the collection (following nextLink pages), read one by one. */
async function listAccounts(client: RedfishClient, collection: string): Promise<ManagerAccount[]> {
  const uris: string[] = [];
  let page: string | undefined = collection;
  for (let n = 0; page && n < 100; n++) {
    const { body }: { body: { Members?: Array<{ "@odata.id": string }>; "Members@odata.nextLink"?: string } } = await client.get(page);
    for (const m of body.Members ?? []) if (m?.["@odata.id"]) uris.push(m["@odata.id"]);
    page = body["Members@odata.nextLink"];
  }
  const accounts = await Promise.all(
    uris.map(async (uri) => {
      try {
        return { ...(await client.get<ManagerAccount>(uri)).body, "@odata.id": uri };
      } catch (e) {
        if (isBaremetalError(e) && e.code === "not-found") return undefined; // deleted while we listed
        throw e;
      }
    }),
  );
  return accounts.filter((a): a is ManagerAccount => a !== undefined);
}

/** Fixed-slot BMCs list their empty slots (an empty UserName); collection BMCs list only accounts. */
function looksLikeSlots(accounts: ManagerAccount[]): boolean {
  return accounts.some((a) => a.UserName === "");
}

const notAllowed = (e: unknown) => isBaremetalError(e) && (e.httpStatus === 405 || e.httpStatus === 501 || /OperationNotAllowed|ActionNotSupported/.test(e.messageId ?? ""));
const propertyUnsupported = (e: unknown) => isBaremetalError(e) && /PropertyUnknown|PropertyNotWritable/.test(`${e.messageId ?? ""} ${e.details.join(" ")} ${e.message}`);

function describe(a: ManagerAccount, mode: ConsoleAccount["mode"]): ConsoleAccount {
  return { uri: a["@odata.id"], username: a.UserName ?? "", roleId: a.RoleId, enabled: a.Enabled, mode };
}

/**
 * RedfishClient has no public DELETE verb (client.ts is shared code; see the report): this uses
 * its transport, with the same authentication, limits, retries and error mapping as every verb.
 */
/** Sends `body` (with AccountExpiration when asked); a BMC that does not know AccountExpiration gets it again without. */
async function withExpiration<T>(spec: ConsoleAccountSpec, send: (body: Record<string, unknown>) => Promise<T>, body: Record<string, unknown>): Promise<T> {
  if (!spec.expiresAt) return send(body);
  try {
    return await send({ ...body, AccountExpiration: spec.expiresAt });
  } catch (e) {
    if (!propertyUnsupported(e)) throw e;
    return send(body);
  }
}

/**
 * Creates (or, when it exists, resets) the account `spec.username`. Never logs or echoes the
 * password. A BMC without an AccountService gives a `validation` error saying console
 * credentials are not available on it.
 */
export async function createConsoleAccount(client: RedfishClient, spec: ConsoleAccountSpec): Promise<ConsoleAccount> {
  const collection = await accountsCollection(client);
  const accounts = await listAccounts(client, collection);
  const slots = looksLikeSlots(accounts);
  const mode = slots ? "slots" : "collection";
  const settings = { Password: spec.password, RoleId: spec.roleId, Enabled: true };

  const existing = accounts.find((a) => a.UserName === spec.username);
  if (existing) {
    await withExpiration(spec, (b) => client.patch(existing["@odata.id"], b), settings);
    return { ...describe(existing, mode), roleId: spec.roleId, enabled: true };
  }

  if (!slots) {
    try {
      const res = await withExpiration(spec, (b) => client.post<ManagerAccount>(collection, b), { UserName: spec.username, ...settings });
      const uri = res.location ? new URL(res.location, "http://x").pathname : (res.body?.["@odata.id"] ?? `${collection}/${res.body?.Id ?? ""}`);
      return { uri, username: spec.username, roleId: spec.roleId, enabled: true, mode };
    } catch (e) {
      if (!notAllowed(e)) throw e;
      // Falls through: a BMC that refuses POST but lists no empty slot has no room.
    }
  }

  for (const slot of accounts.filter((a) => a.UserName === "")) {
    try {
      await withExpiration(spec, (b) => client.patch(slot["@odata.id"], b), { UserName: spec.username, ...settings });
      return { uri: slot["@odata.id"], username: spec.username, roleId: spec.roleId, enabled: true, mode: "slots" };
    } catch (e) {
      // A reserved slot (iDRAC's slot 1) refuses a user name: try the next one.
      if (isBaremetalError(e) && /PropertyNotWritable/.test(`${e.messageId ?? ""} ${e.message}`)) continue;
      throw e;
    }
  }
  throw new BaremetalError("conflict", `the BMC at ${client.endpoint} has no free account slot for a console account; remove an unused BMC account first`);
}

/** The account `username`, if the BMC has it (undefined when it has none or no AccountService). */
export async function findConsoleAccount(client: RedfishClient, username: string): Promise<ConsoleAccount | undefined> {
  const collection = await accountsCollection(client);
  const accounts = await listAccounts(client, collection);
  const found = accounts.find((a) => a.UserName === username);
  return found ? describe(found, looksLikeSlots(accounts) ? "slots" : "collection") : undefined;
}

/**
 * Removes the account `username`: DELETE where the BMC allows it, else the slot is disabled and
 * emptied (as Dell documents for iDRAC: Enabled false and RoleId None, then an empty UserName).
 * Returns false when there was nothing to remove (also on a BMC without AccountService).
 */
export async function deleteConsoleAccount(client: RedfishClient, username: string): Promise<boolean> {
  let account: ConsoleAccount | undefined;
  try {
    account = await findConsoleAccount(client, username);
  } catch (e) {
    if (isBaremetalError(e) && e.code === "validation") return false; // no AccountService: nothing was ever created
    throw e;
  }
  if (!account) return false;
  if (account.mode === "collection") {
    const status = await client.delete(account.uri, { accept: [404, 405, 501] });
    if (status === 404) return false;
    if (status !== 405 && status !== 501) return true;
  }
  await client.patch(account.uri, { Enabled: false, RoleId: "None" }).catch(async (e) => {
    // Some fixed-slot BMCs know no "None" role: disabling is what matters.
    if (!(isBaremetalError(e) && e.code === "validation") && !(isBaremetalError(e) && e.httpStatus === 400)) throw e;
    await client.patch(account!.uri, { Enabled: false });
  });
  await client.patch(account.uri, { UserName: "" });
  return true;
}
