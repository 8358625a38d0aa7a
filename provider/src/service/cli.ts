/**
 * `baremetal serve` and `baremetal token ...` (issue 8).
 *
 *   baremetal serve --config FILE [--listen HOST:PORT]
 *       Serves the API (api.ts) on HOST:PORT (default 127.0.0.1:8480) until SIGINT/SIGTERM. FILE
 *       holds the provider settings (JSON, the names of the provider configuration: inventoryUrl,
 *       bmcUsername, bmcPassword, keyManagers, ...): the service holds the backend credentials,
 *       tenants hold tokens. Keep FILE readable by the service only; a FILE others can read is
 *       refused. Prints one JSON line when it listens ({"listening": "http://HOST:PORT"}).
 *   baremetal token create --config FILE --name NAME [--project P] [--roles r1,r2] [--ttl-seconds S] [--rate-per-minute R]
 *       Issues a token (kept hashed in the inventory) and prints it once, as JSON with its id.
 *   baremetal token revoke --config FILE --id ID
 *   baremetal token list --config FILE [--project P]
 *       Lists tokens (never their secrets).
 */
import * as fs from "node:fs";
import { BaremetalError } from "../core/errors";
import { ProviderHost } from "../core/host";
import { createService } from "./api";
import { InventoryTokenStore, TokenService } from "./tokens";

export type Flags = Record<string, string | true>;

export const SERVICE_USAGE = `  baremetal serve --config FILE [--listen HOST:PORT]
  baremetal token create --config FILE --name NAME [--project P] [--roles r1,r2] [--ttl-seconds S] [--rate-per-minute R]
  baremetal token revoke --config FILE --id ID
  baremetal token list   --config FILE [--project P]`;

export const SERVE_FLAGS = ["config", "listen"];
export const TOKEN_FLAGS = ["config", "name", "project", "roles", "ttl-seconds", "rate-per-minute", "id"];

/** The provider settings of FILE, refused when others may read it (it holds backend credentials). */
function readSettings(file: string | true | undefined): Record<string, unknown> {
  if (typeof file !== "string") throw new BaremetalError("validation", "--config FILE is required: the service's provider settings (JSON)", { property: "config" });
  const st = fs.statSync(file);
  if (st.mode & 0o077) throw new BaremetalError("validation", `${file} can be read by others (mode ${(st.mode & 0o777).toString(8)}): it holds backend credentials; chmod 600 it`, { property: "config" });
  try {
    return JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new BaremetalError("validation", `${file} is not JSON: ${(e as Error).message}`, { property: "config", cause: e });
  }
}

async function open(flags: Flags): Promise<{ host: ProviderHost; tokens: TokenService }> {
  const host = new ProviderHost();
  host.configure(readSettings(flags.config));
  const tokens = new TokenService(new InventoryTokenStore(await host.providerContext().inventory()));
  return { host, tokens };
}

const num = (flags: Flags, name: string) => {
  const v = flags[name];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !/^\d+$/.test(v)) throw new BaremetalError("validation", `--${name} must be a whole number`, { property: name });
  return Number(v);
};

export async function serveCommand(flags: Flags): Promise<number> {
  const { host, tokens } = await open(flags);
  const listen = typeof flags.listen === "string" ? flags.listen : "127.0.0.1:8480";
  const m = /^(.+):(\d+)$/.exec(listen);
  if (!m) throw new BaremetalError("validation", `--listen ${listen}: give HOST:PORT`, { property: "listen" });
  const server = createService({ host, tokens });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(m[2]), m[1], resolve);
  });
  const addr = server.address();
  const where = typeof addr === "object" && addr ? `http://${addr.address}:${addr.port}` : listen;
  process.stdout.write(`${JSON.stringify({ listening: where })}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => server.close(() => resolve());
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  await host.close();
  return 0;
}

export async function tokenCommand(sub: string | undefined, flags: Flags): Promise<number> {
  const { host, tokens } = await open(flags);
  try {
    switch (sub) {
      case "create": {
        if (typeof flags.name !== "string") throw new BaremetalError("validation", "--name is required", { property: "name" });
        const roles = typeof flags.roles === "string" ? flags.roles.split(",").map((r) => r.trim()).filter(Boolean) : [];
        const { token, record } = await tokens.issue({
          name: flags.name,
          projectId: typeof flags.project === "string" ? flags.project : undefined,
          roles,
          ttlSeconds: num(flags, "ttl-seconds"),
          ratePerMinute: num(flags, "rate-per-minute"),
        });
        process.stdout.write(`${JSON.stringify({ id: record.id, token, projectId: record.projectId, roles: record.roles, expiresAt: record.expiresAt })}\n`);
        return 0;
      }
      case "revoke":
        if (typeof flags.id !== "string") throw new BaremetalError("validation", "--id is required", { property: "id" });
        await tokens.revoke(flags.id);
        return 0;
      case "list": {
        const inv = await host.providerContext().inventory();
        for (const t of await inv.listTokens(typeof flags.project === "string" ? flags.project : undefined)) {
          const { secretHash: _hidden, ...shown } = t;
          void _hidden;
          process.stdout.write(`${JSON.stringify(shown)}\n`);
        }
        return 0;
      }
      default:
        throw new BaremetalError("validation", sub ? `unknown token command "${sub}"` : "token needs a command: create, revoke or list");
    }
  } finally {
    await host.close();
  }
}
