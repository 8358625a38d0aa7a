/**
 * SSH transport of the ssh-cli switch driver: one SSH connection per driver (ssh2, pure
 * JavaScript), opened on first use and reused; each command is one `exec` channel. Host key
 * verification is ON unless `verifyHostKey: false` is given explicitly; password or private-key
 * authentication. Secrets (password, private key) are never logged nor put in an error message.
 */
import { Client, ConnectConfig } from "ssh2";
import { BaremetalError, validationError } from "../../core/errors";
import { HostKeyPolicy, keyTypeOf, parseHostKeySetting, sha256Fingerprint } from "./hostkeys";

export interface SshTarget {
  host: string;
  port: number;
  username: string;
}

export interface SshTransportOptions extends SshTarget {
  password?: string;
  /** OpenSSH or PEM private key text. */
  privateKey?: string;
  /** Fingerprint(s) or known_hosts text, see hostkeys.ts. */
  hostKey?: string;
  /** false: accept any host key (explicitly asked for; default true). */
  verifyHostKey?: boolean;
  /** Connection and per-command timeout in ms (default 30000). */
  timeoutMs?: number;
  /** The setting names used in errors (default: hostKey, password, ...). */
  properties?: { hostKey?: string; auth?: string; address?: string };
}

export interface ExecResult {
  command: string;
  code: number | null;
  /** The signal that ended the remote command, if the server says (e.g. "ALRM"). */
  signal?: string;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Parses `ssh://[user@]host[:port][?query]` or `[user@]host[:port]` (IPv6 in brackets). */
export function parseSshAddress(address: string, property = "address"): { user?: string; host: string; port: number; query: URLSearchParams } {
  if (typeof address !== "string" || !address) throw validationError(property, "the switch address must be ssh://[user@]host[:port]");
  const text = address.startsWith("ssh://") ? address : `ssh://${address}`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw validationError(property, `the switch address must be ssh://[user@]host[:port], got ${JSON.stringify(address)}`);
  }
  if (url.protocol !== "ssh:" || !url.hostname || url.password || (url.pathname && url.pathname !== "/" && url.pathname !== "")) {
    throw validationError(property, `the switch address must be ssh://[user@]host[:port] (no password, no path), got ${JSON.stringify(address.replace(/:[^@/]*@/, ":***@"))}`);
  }
  const port = url.port ? Number(url.port) : 22;
  return { ...(url.username ? { user: decodeURIComponent(url.username) } : {}), host: url.hostname.replace(/^\[|\]$/g, ""), port, query: url.searchParams };
}

/** Quotes one argument for a POSIX shell (the remote login shell runs the command line). */
export function shellQuote(arg: string): string {
  if (/^[A-Za-z0-9_./:=,@%+-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function shellLine(argv: string[]): string {
  return argv.map(shellQuote).join(" ");
}

export class SshTransport {
  readonly target: SshTarget;
  /** Commands run (exec channels opened), and connections made. */
  readonly stats = { commands: 0, connections: 0 };
  /** Every command run, in order (for tests and observability). */
  onCommand?: (r: ExecResult) => void;
  private readonly opts: SshTransportOptions;
  private readonly policy?: HostKeyPolicy;
  private client?: Promise<Client>;
  private closed = false;

  constructor(opts: SshTransportOptions) {
    this.opts = opts;
    this.target = { host: opts.host, port: opts.port, username: opts.username };
    const hostKeyProperty = opts.properties?.hostKey ?? "hostKey";
    if (opts.verifyHostKey !== false) {
      if (!opts.hostKey) {
        throw validationError(
          hostKeyProperty,
          `the switch ${this.where} needs its SSH host key to be verified: give hostKey (SHA256:... as \`ssh-keygen -lf\` prints it, or known_hosts text), or turn verification off explicitly`,
        );
      }
      this.policy = parseHostKeySetting(opts.hostKey, hostKeyProperty);
    }
    if (!opts.password && !opts.privateKey) {
      throw validationError(opts.properties?.auth ?? "password", `the switch ${this.where} needs a password or a privateKey for SSH`);
    }
  }

  get where(): string {
    return `${this.opts.username}@${this.opts.host}:${this.opts.port}`;
  }

  private connect(): Promise<Client> {
    if (this.closed) return Promise.reject(new BaremetalError("internal", `the SSH connection to ${this.where} is closed`));
    if (this.client) return this.client;
    const p = new Promise<Client>((resolve, reject) => {
      const c = new Client();
      let seen: { fp: string; type: string } | undefined;
      let refusal: string | undefined;
      const config: ConnectConfig = {
        host: this.opts.host,
        port: this.opts.port,
        username: this.opts.username,
        readyTimeout: this.opts.timeoutMs ?? 30000,
        ...(this.opts.password !== undefined ? { password: this.opts.password } : {}),
        ...(this.opts.privateKey !== undefined ? { privateKey: this.opts.privateKey } : {}),
        tryKeyboard: false,
        hostVerifier: (key: Buffer) => {
          seen = { fp: sha256Fingerprint(key), type: keyTypeOf(key) };
          if (!this.policy) return true;
          refusal = this.policy.check(this.opts.host, this.opts.port, key);
          return refusal === undefined;
        },
      };
      let settled = false;
      c.once("ready", () => {
        settled = true;
        this.stats.connections++;
        resolve(c);
      });
      c.on("error", (err: Error & { level?: string }) => {
        if (settled) return; // an error after ready surfaces through the channel / close
        settled = true;
        c.destroy();
        reject(this.connectError(err, refusal, seen));
      });
      c.once("close", () => {
        if (this.client === p) this.client = undefined; // reconnect on next use
        if (!settled) {
          settled = true;
          reject(new BaremetalError("transient", `the SSH connection to ${this.where} closed before it was ready`, { unsent: true }));
        }
      });
      try {
        c.connect(config);
      } catch (err) {
        settled = true;
        // ssh2 throws synchronously on an unparsable private key (its message names no key material).
        reject(validationError(this.opts.properties?.auth ?? "privateKey", `the privateKey for ${this.where} cannot be used: ${(err as Error).message}`));
      }
    });
    this.client = p;
    p.catch(() => {
      if (this.client === p) this.client = undefined;
    });
    return p;
  }

  private connectError(err: Error & { level?: string; code?: string }, refusal: string | undefined, seen: { fp: string; type: string } | undefined): BaremetalError {
    const hostKeyProperty = this.opts.properties?.hostKey ?? "hostKey";
    if (refusal !== undefined) {
      return new BaremetalError("tls", `SSH host key verification failed for ${this.where}: ${refusal}; check the switch, then update ${hostKeyProperty}`, {
        property: hostKeyProperty,
        details: seen ? [`seen: ${seen.type} ${seen.fp}`] : [],
        unsent: true,
      });
    }
    if (err.level === "client-authentication") {
      const methods = [this.opts.privateKey !== undefined ? "publickey" : "", this.opts.password !== undefined ? "password" : ""].filter(Boolean).join(", ");
      return new BaremetalError("auth", `the switch ${this.where} refused SSH authentication as ${this.opts.username} (tried: ${methods}); check the username and the credentials`, {
        property: this.opts.properties?.auth ?? "password",
        unsent: true,
      });
    }
    if (err.level === "client-timeout" || /Timed out while waiting for handshake/.test(err.message)) {
      return new BaremetalError("timeout", `no SSH handshake with ${this.where} within ${this.opts.timeoutMs ?? 30000} ms`, { unsent: true });
    }
    const code = err.code ? ` (${err.code})` : "";
    // Messages of the socket and of the protocol layer carry no credentials.
    return new BaremetalError("transient", `cannot reach the switch ${this.where} over SSH${code}: ${err.message}`, { property: this.opts.properties?.address, unsent: true });
  }

  /** Runs one command line on the switch; never throws for a non-zero exit (see `code`). */
  async exec(command: string, o: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<ExecResult> {
    const client = await this.connect();
    const started = Date.now();
    this.stats.commands++;
    const timeoutMs = o.timeoutMs ?? this.opts.timeoutMs ?? 30000;
    const result = await new Promise<ExecResult>((resolve, reject) => {
      client.exec(command, (err, stream) => {
        if (err) return reject(new BaremetalError("transient", `the switch ${this.where} refused a command channel: ${err.message}`));
        const out: Buffer[] = [];
        const errOut: Buffer[] = [];
        let code: number | null = null;
        let signal: string | undefined;
        const timer = setTimeout(() => {
          stream.close();
          reject(new BaremetalError("timeout", `the command on ${this.where} did not finish within ${timeoutMs} ms: ${command.slice(0, 200)}`));
        }, timeoutMs);
        const onAbort = () => {
          clearTimeout(timer);
          stream.close();
          reject(new BaremetalError("cancelled", `the command on ${this.where} was cancelled`));
        };
        o.signal?.addEventListener("abort", onAbort, { once: true });
        stream.on("data", (d: Buffer) => out.push(d));
        stream.stderr.on("data", (d: Buffer) => errOut.push(d));
        stream.on("exit", (c: number | null, sig?: string) => {
          code = c;
          if (sig) signal = sig;
        });
        stream.on("close", () => {
          clearTimeout(timer);
          o.signal?.removeEventListener("abort", onAbort);
          resolve({ command, code, ...(signal ? { signal } : {}), stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(errOut).toString("utf8"), ms: Date.now() - started });
        });
      });
    });
    this.onCommand?.(result);
    return result;
  }

  async close(): Promise<void> {
    this.closed = true;
    const c = this.client;
    this.client = undefined;
    if (!c) return;
    try {
      const client = await c;
      await new Promise<void>((resolve) => {
        client.once("close", () => resolve());
        client.end();
        setTimeout(resolve, 1000).unref?.();
      });
    } catch {
      /* never connected */
    }
  }
}
