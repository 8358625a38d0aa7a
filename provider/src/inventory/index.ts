/**
 * Opening the inventory by URL:
 *
 * - `sqlite:///abs/path/inventory.db` — the embedded default (one operator, the lab); the file
 *   and its directory are created when missing. `?busy_timeout=MS` bounds the wait for another
 *   process's write (default 15000).
 * - `sqlite::memory:` — a private, empty, in-memory inventory (tests).
 * - `postgres://user:password@host:port/db` (or `postgresql://`) — the team inventory; every
 *   libpq-style parameter node-postgres understands may follow (`?sslmode=...`,
 *   `?options=-c%20search_path%3Dbaremetal`).
 *
 * When the provider configuration names no inventory, use `defaultInventoryUrl()`: an SQLite file
 * in the user's state directory (`$XDG_STATE_HOME/pulumi-baremetal/inventory.db`, else
 * `~/.local/state/pulumi-baremetal/inventory.db`), so every stack of that user shares it.
 */
import * as os from "os";
import * as path from "path";
import { BaremetalError } from "../core/errors";
import { redactUrl } from "./common";
import type { Migration } from "./migrations";
import { PostgresInventory, PostgresOptions } from "./postgres";
import { SqliteInventory, SqliteOptions } from "./sqlite";
import type { Inventory } from "./types";

export * from "./types";
export { LEASE_OVERLAP, NO_MATCH, rankNodes, rendezvousKey, redactUrl } from "./common";
export { MIGRATIONS, SCHEMA_VERSION } from "./migrations";
export {
  ADDRESS_IN_USE,
  ID_IN_USE,
  IN_USE,
  MAC_IN_USE,
  PORT_ATTACHED,
  SUBNET_EXHAUSTED,
  SWITCH_PORT_IN_USE,
  VLAN_IN_USE,
  VLAN_POOL_EXHAUSTED,
} from "./network";
export type { Migration } from "./migrations";
export { SqliteInventory } from "./sqlite";
export type { SqliteOptions } from "./sqlite";
export { PostgresInventory } from "./postgres";
export type { PostgresOptions } from "./postgres";

export interface OpenInventoryOptions {
  /** The configuration property the URL came from, named in validation errors (default `inventoryUrl`). */
  property?: string;
  sqlite?: SqliteOptions;
  postgres?: PostgresOptions;
  /** The migrations to apply (tests only). */
  migrations?: readonly Migration[];
}

/** The directory for the provider's own state: `$XDG_STATE_HOME/pulumi-baremetal` or `~/.local/state/pulumi-baremetal`. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  // The XDG spec ignores relative values.
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(env.HOME || os.homedir(), ".local", "state");
  return path.join(base, "pulumi-baremetal");
}

export function defaultInventoryPath(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(defaultStateDir(env), "inventory.db");
}

export function defaultInventoryUrl(env: NodeJS.ProcessEnv = process.env): string {
  return sqliteUrl(defaultInventoryPath(env));
}

/** `sqlite://` URL of an absolute path (percent-encoding what needs it). */
export function sqliteUrl(file: string): string {
  return `sqlite://${file.split("/").map(encodeURIComponent).join("/")}`;
}

export type ParsedInventoryUrl =
  | { kind: "sqlite"; file: string; busyTimeoutMs?: number }
  | { kind: "postgres"; url: string };

/** Parses and checks an inventory URL without opening anything. */
export function parseInventoryUrl(url: string, property = "inventoryUrl"): ParsedInventoryUrl {
  const bad = (why: string) =>
    new BaremetalError(
      "validation",
      `${why}; use sqlite:///absolute/path.db, sqlite::memory: or postgres://user:password@host:port/database`,
      { property },
    );
  if (typeof url !== "string" || url.trim() === "") throw bad("the inventory URL is empty");
  if (url === "sqlite::memory:") return { kind: "sqlite", file: ":memory:" };
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase();
  if (scheme === "postgres" || scheme === "postgresql") {
    if (!/^postgres(ql)?:\/\//i.test(url)) throw bad(`the inventory URL ${redactUrl(url)} is not of the form postgres://host/database`);
    return { kind: "postgres", url };
  }
  if (scheme === "sqlite") {
    const m = /^sqlite:\/\/(\/[^?#]*)(?:\?([^#]*))?$/i.exec(url);
    if (!m) throw bad(`the inventory URL ${JSON.stringify(url)} does not name an absolute file (three slashes: sqlite:///var/lib/x.db)`);
    let file: string;
    try {
      file = decodeURIComponent(m[1]);
    } catch {
      throw bad(`the inventory URL ${JSON.stringify(url)} has a malformed percent-encoding`);
    }
    if (file.endsWith("/")) throw bad(`the inventory URL ${JSON.stringify(url)} names a directory, not a file`);
    const out: ParsedInventoryUrl = { kind: "sqlite", file: path.normalize(file) };
    for (const [k, v] of new URLSearchParams(m[2] ?? "")) {
      if (k !== "busy_timeout") throw bad(`the SQLite inventory URL has an unknown parameter ${JSON.stringify(k)} (known: busy_timeout)`);
      const n = Number(v);
      if (!Number.isSafeInteger(n) || n < 0 || n > 600000) throw bad("busy_timeout must be a whole number of milliseconds, 0 to 600000");
      out.busyTimeoutMs = n;
    }
    return out;
  }
  throw bad(`the inventory URL ${JSON.stringify(redactUrl(url))} has an unsupported scheme`);
}

/** Opens (creating and migrating when needed) the inventory a URL names. */
export async function openInventory(url: string, options: OpenInventoryOptions = {}): Promise<Inventory> {
  const parsed = parseInventoryUrl(url, options.property);
  if (parsed.kind === "postgres") {
    return PostgresInventory.open(parsed.url, { ...options.postgres, migrations: options.migrations ?? options.postgres?.migrations });
  }
  return SqliteInventory.open(parsed.file, {
    ...options.sqlite,
    busyTimeoutMs: parsed.busyTimeoutMs ?? options.sqlite?.busyTimeoutMs,
    migrations: options.migrations ?? options.sqlite?.migrations,
  });
}
