/**
 * `baremetal serve` and `baremetal token ...` (issue 8).
 *
 *   baremetal serve --config FILE [--listen HOST:PORT]
 *       Serves the API (api.ts) on HOST:PORT (default 127.0.0.1:8480) until SIGINT/SIGTERM. FILE
 *       holds the provider settings (JSON, the names of the provider configuration: inventoryUrl,
 *       bmcUsername, bmcPassword, keyManagers, ...): the service holds the backend credentials,
 *       tenants hold tokens. Keep FILE readable by the service only; a FILE others can read is
 *       refused. Prints one JSON line when it listens ({"listening": "http://HOST:PORT"}, https
 *       with TLS).
 *
 *       The service's own settings sit under one top-level key `service` of FILE (taken out before
 *       the rest goes to the provider configuration; an unknown or malformed one is refused, the
 *       error naming it, e.g. `service.oidc.issuer: ...`):
 *         "service": {
 *           "oidc": {                      JWT bearer tokens of an identity provider (oidc.ts)
 *             "issuer": "https://idp.example/realms/x",   exactly the tokens' iss (required)
 *             "audience": "baremetal",     the aud the tokens must name (required)
 *             "projectClaim": "project_id", "rolesClaim": "roles",   (these defaults)
 *             "algorithms": ["RS256", "ES256", "EdDSA"],              (default; never none/HS*)
 *             "clockSkewSeconds": 60, "ratePerMinute": 600, "jwksRefetchIntervalSeconds": 60
 *           },
 *           "tls": {                       serve HTTPS (api.ts)
 *             "cert": "server.pem", "key": "server-key.pem",  PEM text, or a path (relative to FILE's directory)
 *             "clientCa": "clients-ca.pem"  optional: mutual TLS, every client presents a
 *           }                              certificate chaining to it (refused in the handshake
 *         }                                otherwise; it still needs a token)
 *       A key given as a path must not be readable by others, like FILE. `bmt_` tokens keep working
 *       with OIDC configured; a JWT without the project claim is refused (no JWT makes an operator).
 *   baremetal token create --config FILE --name NAME [--project P] [--roles r1,r2] [--ttl-seconds S] [--rate-per-minute R]
 *       Issues a token (kept hashed in the inventory) and prints it once, as JSON with its id.
 *   baremetal token revoke --config FILE --id ID
 *   baremetal token list --config FILE [--project P]
 *       Lists tokens (never their secrets).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { BaremetalError } from "../core/errors";
import { ProviderHost } from "../core/host";
import { createService, type ServiceOptions } from "./api";
import { OidcVerifier, type OidcSettings, parseOidcSettings } from "./oidc";
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

/** The service's own settings (`service` of the settings file), checked; TLS files read (relative to `dir`). */
export interface ServiceSettings {
  oidc?: OidcSettings;
  tls?: NonNullable<ServiceOptions["tls"]>;
}

const bad = (setting: string, message: string) => new BaremetalError("validation", `${setting}: ${message}`, { property: setting });

/** A PEM setting: PEM text as is, else a file path (relative to `dir`) read now; `secret` files must be private. */
function pem(setting: string, value: unknown, dir: string, secret: boolean): string {
  if (typeof value !== "string" || !value) throw bad(setting, "required: PEM text or the path of a PEM file");
  if (value.includes("-----BEGIN ")) return value;
  const file = path.resolve(dir, value);
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw bad(setting, `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (secret && st.mode & 0o077) throw bad(setting, `${file} can be read by others (mode ${(st.mode & 0o777).toString(8)}): it is a private key; chmod 600 it`);
  const text = fs.readFileSync(file, "utf8");
  if (!text.includes("-----BEGIN ")) throw bad(setting, `${file} is not a PEM file`);
  return text;
}

/** Checks `service` of the settings file (see the header); `dir` resolves relative file paths. */
export function parseServiceSettings(raw: unknown, dir: string): ServiceSettings {
  if (raw === undefined) return {};
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw bad("service", "must be an object ({oidc, tls})");
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (k !== "oidc" && k !== "tls") throw bad(`service.${k}`, "unknown setting (known: oidc, tls)");
  const out: ServiceSettings = {};
  if (r.oidc !== undefined) out.oidc = parseOidcSettings(r.oidc);
  if (r.tls !== undefined) {
    const t = r.tls;
    if (!t || typeof t !== "object" || Array.isArray(t)) throw bad("service.tls", "must be an object ({cert, key, clientCa})");
    const tr = t as Record<string, unknown>;
    for (const k of Object.keys(tr)) if (!["cert", "key", "clientCa"].includes(k)) throw bad(`service.tls.${k}`, "unknown setting (known: cert, key, clientCa)");
    out.tls = {
      cert: pem("service.tls.cert", tr.cert, dir, false),
      key: pem("service.tls.key", tr.key, dir, true),
      ...(tr.clientCa !== undefined ? { clientCa: pem("service.tls.clientCa", tr.clientCa, dir, false) } : {}),
    };
  }
  return out;
}

async function open(flags: Flags): Promise<{ host: ProviderHost; tokens: TokenService; service: ServiceSettings }> {
  const { service: raw, ...provider } = readSettings(flags.config);
  const service = parseServiceSettings(raw, path.dirname(path.resolve(String(flags.config))));
  const host = new ProviderHost();
  host.configure(provider);
  const oidc = service.oidc ? new OidcVerifier(service.oidc) : undefined;
  const tokens = new TokenService(new InventoryTokenStore(await host.providerContext().inventory()), { oidc });
  return { host, tokens, service };
}

const num = (flags: Flags, name: string) => {
  const v = flags[name];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !/^\d+$/.test(v)) throw new BaremetalError("validation", `--${name} must be a whole number`, { property: name });
  return Number(v);
};

export async function serveCommand(flags: Flags): Promise<number> {
  const { host, tokens, service } = await open(flags);
  const listen = typeof flags.listen === "string" ? flags.listen : "127.0.0.1:8480";
  const m = /^(.+):(\d+)$/.exec(listen);
  if (!m) throw new BaremetalError("validation", `--listen ${listen}: give HOST:PORT`, { property: "listen" });
  const server = createService({ host, tokens, ...(service.tls ? { tls: service.tls } : {}) });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(m[2]), m[1], resolve);
  });
  (await import("./leases")).startLeaseReaper(host, server); // ends due leases (leases.ts); stops when the server closes
  const addr = server.address();
  const where = typeof addr === "object" && addr ? `${service.tls ? "https" : "http"}://${addr.address}:${addr.port}` : listen;
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
