/**
 * The lab BMC's serial console: serial-over-SSH, as real BMCs offer it (iDRAC, iLO, OpenBMC's
 * obmc-console), one SSH server per BMC on loopback, on its own port.
 *
 * - Authentication: SSH password authentication against the BMC's own accounts (the lab's
 *   administrator, the seeded accounts, and those created through the AccountService, e.g. by
 *   ConsoleAccess). An account whose role lacks ConfigureComponents (ReadOnly) may watch but not
 *   type: its input is dropped (the console says so when it attaches).
 * - Selecting the system: the SSH `exec` request with the system's console entry command,
 *   `console <systemId>` (a 1-based index works too), e.g. `ssh -p <port> admin@127.0.0.1 console
 *   System.Embedded.1`. This is the DMTF model for a console port shared by several systems:
 *   ComputerSystem.SerialConsole.SSH.ConsoleEntryCommand is "the command string passed to the
 *   service to select or enter the system's serial console", and real BMCs select the same way
 *   (iDRAC's `console com2`, iLO's `vsp`). The BMC publishes port and command in each system's
 *   `SerialConsole` (bmc.ts). An interactive shell request gets a one-line prompt that takes the
 *   same command (what a BMC's CLI does); with one system it attaches at once. (The `user:port`
 *   user name is a terminal-server convention, Opengear/Avocent, not a BMC's.)
 * - Output: what the emulated machine prints on its serial port, derived from the state changes
 *   the emulator already makes (bmc.ts side effects): firmware POST at power-on, the boot device
 *   it boots (disk, virtual CD, PXE, HTTP), the installer's progress and its power-off, the OS
 *   boot to a login prompt. Each system keeps a bounded backlog (the newest `backlogBytes`), which
 *   a client that attaches late sees first, as BMCs keep a console history buffer.
 * - Input: echoed back as a terminal in cooked mode would (CR as CRLF). `~.` at the start of a
 *   line leaves the console (the HotKeySequenceDisplay).
 *
 * Image URLs are printed without credentials, query or fragment (presigned URLs carry secrets).
 */
import { generateKeyPairSync } from "node:crypto";
import type { AddressInfo, Socket } from "node:net";
import { type Connection, Server, type ServerChannel, utils as sshUtils } from "ssh2";

/** What the console needs of its BMC. */
export interface SerialConsoleHost {
  /** The BMC's index (in banners). */
  index: number;
  /** The systems this BMC manages, in order. */
  systems(): Array<{ id: string; uri: string; name: string }>;
  /** The account of a user name and password, or undefined (disabled, expired, wrong password). */
  login(userName: string, password: string): { userName: string; roleId: string } | undefined;
  /** Whether a role may type on the console (Redfish ConfigureComponents). */
  mayType(roleId: string): boolean;
  /** Applies the state changes whose (lab) time has come, so that their output is printed. */
  settle(): void;
  /** Lab time, ms since the epoch. */
  now(): number;
}

export interface SerialConsoleOptions {
  host?: "127.0.0.1" | "::1";
  /** 0 (default): a free port chosen by the system. */
  port?: number;
  /** Bytes of output each system keeps for clients that attach later (default 64 KiB). */
  backlogBytes?: number;
  /** How often (real ms) pending state changes are applied while a client is attached (default 200). */
  pollMs?: number;
}

/** A side effect of the BMC (faults.ts SideEffect), as far as the console reads it. */
export interface ConsoleEvent {
  kind: string;
  /** The system's URI. */
  target: string;
  at: number;
  detail?: Record<string, unknown>;
}

export const HOTKEY = "~.";

interface Attached {
  channel: ServerChannel;
  canType: boolean;
}

interface SystemConsole {
  id: string;
  name: string;
  chunks: Buffer[];
  bytes: number;
  /** Lab time of the power-on the printed POST belongs to (kernel-style timestamps count from it). */
  bootAt?: number;
  /** POST printed for the current power-on. */
  posted: boolean;
  clients: Set<Attached>;
}

/** An image URL as a console may show it: no user info, query or fragment. */
export function printableImage(image: string): string {
  try {
    const u = new URL(image);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return image.replace(/[?#].*$/s, "");
  }
}

export class LabSerialConsole {
  private readonly server: Server;
  private readonly byUri = new Map<string, SystemConsole>();
  private readonly byId = new Map<string, SystemConsole>();
  private readonly order: SystemConsole[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly connections = new Set<Connection>();
  private readonly backlogBytes: number;
  private readonly pollMs: number;
  private timer?: NodeJS.Timeout;
  private _port = 0;
  private closed = false;
  /** `type base64` of the host key. */
  private readonly publicKey: string;

  private constructor(
    private readonly bmc: SerialConsoleHost,
    private readonly opts: SerialConsoleOptions,
  ) {
    this.backlogBytes = opts.backlogBytes ?? 64 * 1024;
    this.pollMs = opts.pollMs ?? 200;
    for (const s of bmc.systems()) {
      const c: SystemConsole = { id: s.id, name: s.name, chunks: [], bytes: 0, posted: false, clients: new Set() };
      this.byUri.set(s.uri, c);
      this.byId.set(s.id, c);
      this.order.push(c);
    }
    // A host key per console server; the lab publishes it (knownHostsLine) for clients to pin.
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1", privateKeyEncoding: { type: "sec1", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } });
    const parsed = sshUtils.parseKey(privateKey);
    if (parsed instanceof Error) throw parsed;
    this.publicKey = `${parsed.type} ${parsed.getPublicSSH().toString("base64")}`;
    this.server = new Server({ hostKeys: [privateKey], ident: `lab-bmc${bmc.index}-serial` }, (conn) => this.onConnection(conn));
    this.server.on("connection", () => undefined);
  }

  static async start(bmc: SerialConsoleHost, opts: SerialConsoleOptions = {}): Promise<LabSerialConsole> {
    const c = new LabSerialConsole(bmc, opts);
    const host = opts.host ?? "127.0.0.1";
    await new Promise<void>((resolve, reject) => {
      c.server.once("error", reject);
      c.server.listen(opts.port ?? 0, host, () => {
        c.server.off("error", reject);
        resolve();
      });
    });
    // Track raw sockets so close() can drop them (ssh2's Server wraps a net.Server).
    const net = (c.server as unknown as { _srv: import("node:net").Server })._srv;
    net?.on("connection", (s: Socket) => {
      c.sockets.add(s);
      s.on("close", () => c.sockets.delete(s));
    });
    c._port = (c.server.address() as AddressInfo).port;
    return c;
  }

  get port(): number {
    return this._port;
  }

  get host(): string {
    return this.opts.host ?? "127.0.0.1";
  }

  /** The server's host key as a known_hosts line (`[host]:port type base64`). */
  get knownHostsLine(): string {
    return `[${this.host}]:${this.port} ${this.publicKey}`;
  }

  /** The command that selects a system's console (ComputerSystem.SerialConsole.SSH.ConsoleEntryCommand). */
  static entryCommand(systemId: string): string {
    return `console ${systemId}`;
  }

  /** The output a system's console keeps (the newest backlogBytes). */
  backlog(systemId: string): string {
    const c = this.byId.get(systemId);
    return c ? Buffer.concat(c.chunks).toString("utf8") : "";
  }

  /** Clients attached to a system's console now. */
  attached(systemId: string): number {
    return this.byId.get(systemId)?.clients.size ?? 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    for (const c of this.connections) c.end();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // -------------------------------------------------------------------------------------------
  // What the machine prints

  /** A BMC side effect: prints what the machine shows on its serial port at that moment. */
  sideEffect(e: ConsoleEvent): void {
    const c = this.byUri.get(e.target);
    if (!c) return;
    const d = e.detail ?? {};
    switch (e.kind) {
      case "power-on":
      case "power-restart":
        if (e.kind === "power-restart") this.line(c, e.at, "reboot: Restarting system");
        c.posted = false;
        this.post(c, e.at);
        break;
      case "booted":
        if (!c.posted) this.post(c, e.at);
        this.booted(c, e.at, String(d.running ?? "nothing"), String(d.target ?? ""), d.via === "iSCSI");
        break;
      case "installer-started":
        this.line(c, e.at, `installer: deploying ${printableImage(String(d.image ?? ""))}${d.checksum ? ` (${String(d.checksum).split(":")[0]} declared)` : ""}`);
        this.line(c, e.at, "installer: writing the image to /dev/sda ...");
        break;
      case "disk-written":
        if (d.via === "installer") {
          this.line(c, e.at, "installer: image written to /dev/sda; sync done");
          this.line(c, e.at, "installer: deployment complete, powering off");
        }
        break;
      case "install-failed":
        this.line(c, e.at, `installer: FAILED: ${String(d.error ?? "unknown error")}`);
        break;
      case "backup-started":
        this.line(c, e.at, "backup-agent: reading /dev/sda ...");
        break;
      case "backup-written":
        this.line(c, e.at, `backup-agent: backup ${String(d.backupId ?? "")} written; powering off`);
        break;
      case "backup-failed":
        this.line(c, e.at, `backup-agent: FAILED: ${String(d.error ?? "unknown error")}`);
        break;
      case "iscsi-login":
        this.line(c, e.at, `iSCSI: login to ${String(d.target ?? "?")}: ${String(d.state ?? "?")}${d.error ? ` (${String(d.error)})` : ""}`);
        break;
      case "nmi":
        this.line(c, e.at, "Uhhuh. NMI received for unknown reason on CPU 0.");
        break;
      case "power-off":
        if (d.cause !== "installer" && d.to === "PoweringOff") this.line(c, e.at, "systemd-shutdown: powering off (ACPI power button)");
        this.line(c, e.at, "reboot: Power down");
        c.posted = false;
        c.bootAt = undefined;
        break;
      default:
        break;
    }
  }

  private post(c: SystemConsole, at: number): void {
    c.bootAt = at;
    c.posted = true;
    this.raw(c, "\r\n");
    this.raw(c, `Lab BMC ${this.bmc.index} UEFI firmware, ${c.name} (${c.id})\r\n`);
    this.raw(c, "POST: CPU and memory initialization ... ok\r\n");
    this.raw(c, "POST: PCI enumeration ... ok\r\n");
    this.raw(c, "Press F2 for setup, F12 for network boot\r\n");
  }

  private booted(c: SystemConsole, at: number, running: string, target: string, iscsi: boolean): void {
    if (iscsi) {
      this.raw(c, "Booting from the network adapter (iSCSI) ...\r\n");
      return;
    }
    if (running.startsWith("installer:")) {
      const image = printableImage(running.slice("installer:".length));
      this.raw(c, target === "Cd" ? `Booting from virtual CD: ${image}\r\n` : `Booting from HTTP: ${image}\r\n`);
      this.line(c, at, "Linux version 6.1.0-lab (deploy ramdisk)");
      this.line(c, at, "Run /init as init process");
    } else if (running.startsWith("os:")) {
      const image = printableImage(running.slice("os:".length));
      this.raw(c, "Booting from Hard Disk ...\r\n");
      this.line(c, at, `Linux version 6.1.0-lab (${image})`);
      this.line(c, at, "systemd[1]: Reached target multi-user.target");
      this.raw(c, `\r\n${c.name} login: `);
    } else if (running === "pxe") {
      this.raw(c, "Booting from the network (PXE) ...\r\n");
      this.raw(c, "PXE: DHCP ... no boot file offered\r\n");
    } else {
      this.raw(c, "No bootable device found. Insert boot media and press any key.\r\n");
    }
  }

  /** A kernel-style line stamped with the seconds since the power-on. */
  private line(c: SystemConsole, at: number, text: string): void {
    const secs = c.bootAt !== undefined ? Math.max(0, (at - c.bootAt) / 1000) : 0;
    this.raw(c, `[${secs.toFixed(6).padStart(12)}] ${text}\r\n`);
  }

  private raw(c: SystemConsole, text: string): void {
    const b = Buffer.from(text, "utf8");
    this.keep(c, b);
    for (const a of c.clients) a.channel.write(b);
  }

  private keep(c: SystemConsole, b: Buffer): void {
    c.chunks.push(b);
    c.bytes += b.length;
    while (c.bytes > this.backlogBytes && c.chunks.length) {
      const first = c.chunks[0];
      const over = c.bytes - this.backlogBytes;
      if (first.length <= over) {
        c.chunks.shift();
        c.bytes -= first.length;
      } else {
        c.chunks[0] = first.subarray(over);
        c.bytes -= over;
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // SSH

  private onConnection(conn: Connection): void {
    this.connections.add(conn);
    let account: { userName: string; roleId: string } | undefined;
    conn.on("error", () => undefined);
    conn.on("close", () => this.connections.delete(conn));
    conn.on("authentication", (ctx) => {
      if (ctx.method === "password") {
        account = this.bmc.login(ctx.username, ctx.password);
        if (account) return ctx.accept();
      }
      ctx.reject(["password"]);
    });
    conn.on("ready", () => {
      conn.on("session", (acceptSession) => {
        const session = acceptSession();
        session.on("pty", (accept) => accept?.());
        session.on("window-change", (accept) => accept?.());
        session.on("env", (accept) => accept?.());
        session.on("exec", (accept, _reject, info) => {
          const channel = accept();
          if (!this.select(channel, info.command, account!)) {
            channel.stderr.write(`${this.usage()}\r\n`);
            channel.exit(1);
            channel.end();
          }
        });
        session.on("shell", (accept) => {
          const channel = accept();
          if (this.order.length === 1) {
            this.attach(channel, this.order[0], account!);
            return;
          }
          this.prompt(channel, account!);
        });
      });
    });
  }

  private usage(): string {
    return `select a system's console with: ${this.order.map((c) => LabSerialConsole.entryCommand(c.id)).join(" | ")}`;
  }

  /** A BMC CLI's prompt: takes the console entry command, one line. */
  private prompt(channel: ServerChannel, account: { userName: string; roleId: string }): void {
    const ps = `lab-bmc${this.bmc.index}-> `;
    channel.write(`${this.usage()}\r\n${ps}`);
    let line = "";
    const onData = (b: Buffer) => {
      for (const ch of b.toString("utf8")) {
        if (ch === "\r" || ch === "\n") {
          channel.write("\r\n");
          const cmd = line.trim();
          line = "";
          if (cmd === "exit" || cmd === "quit") {
            channel.exit(0);
            channel.end();
            return;
          }
          if (cmd && this.select(channel, cmd, account, () => channel.off("data", onData))) return;
          if (cmd) channel.write(`unknown command or system: ${cmd}\r\n${this.usage()}\r\n`);
          channel.write(ps);
        } else if (ch === "\x7f" || ch === "\b") {
          if (line) {
            line = line.slice(0, -1);
            channel.write("\b \b");
          }
        } else if (ch >= " ") {
          line += ch;
          channel.write(ch);
        }
      }
    };
    channel.on("data", onData);
  }

  /** Attaches a channel to the console an entry command names; false when it names none. */
  private select(channel: ServerChannel, command: string, account: { userName: string; roleId: string }, before?: () => void): boolean {
    const m = /^\s*console\s+(\S+)\s*$/.exec(command);
    if (!m) return false;
    const c = this.byId.get(m[1]) ?? (/^\d+$/.test(m[1]) ? this.order[Number(m[1]) - 1] : undefined);
    if (!c) return false;
    before?.();
    this.attach(channel, c, account);
    return true;
  }

  private attach(channel: ServerChannel, c: SystemConsole, account: { userName: string; roleId: string }): void {
    this.bmc.settle();
    const a: Attached = { channel, canType: this.bmc.mayType(account.roleId) };
    channel.write(`[serial console of ${c.name} (${c.id}); ${HOTKEY} at the start of a line leaves${a.canType ? "" : "; read-only: your input is ignored"}]\r\n`);
    for (const chunk of c.chunks) channel.write(chunk);
    c.clients.add(a);
    this.poll();
    const detach = () => {
      c.clients.delete(a);
      this.poll();
    };
    channel.on("close", detach);
    channel.on("error", detach);
    let lineStart = true;
    let tilde = false;
    channel.on("data", (b: Buffer) => {
      if (!a.canType) return;
      let out = "";
      for (const ch of b.toString("utf8")) {
        if (tilde) {
          tilde = false;
          if (ch === ".") {
            if (out) this.raw(c, out);
            detach();
            channel.write("\r\n[console closed]\r\n");
            channel.exit(0);
            channel.end();
            return;
          }
          out += "~";
        }
        if (lineStart && ch === "~") {
          tilde = true;
          continue;
        }
        if (ch === "\r" || ch === "\n") {
          out += "\r\n";
          lineStart = true;
        } else {
          out += ch;
          lineStart = false;
        }
      }
      // The machine echoes what it receives (a tty in cooked mode); every viewer sees it.
      if (out) this.raw(c, out);
    });
  }

  /** Applies pending state changes every pollMs while someone watches (so boot output appears on time). */
  private poll(): void {
    const watching = this.order.some((c) => c.clients.size > 0);
    if (watching && !this.timer && !this.closed) {
      this.timer = setInterval(() => {
        try {
          this.bmc.settle();
        } catch {
          /* the BMC's own requests report its errors */
        }
      }, this.pollMs);
      this.timer.unref();
    } else if (!watching && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }
}
