/**
 * Test harness: a real KMIP server, PyKMIP 0.10's `pykmip-server` (Debian's `python3-pykmip`), on
 * loopback with mutual TLS, the peer of the kmip key-manager driver.
 *
 *   const kmip = await startKmipServer();               // identities project-a and project-b
 *   // kmip.port on 127.0.0.1; trust kmip.ca; log in as kmip.clients["project-a"] (cert + key PEM)
 *   await kmip.stop();
 *
 * One instance = one private temp directory (0700) holding a throwaway CA made by `openssl`
 * (EC P-256), the server's certificate (SAN IP:127.0.0.1, serverAuth), one client certificate per
 * identity (subject CN = the identity, clientAuth), a second CA that the server does NOT trust with a
 * client certificate of its own (`untrusted`, for refusal tests), server.conf, the empty operation
 * policy directory, the SQLite database and the log. Private keys are files of mode 0600 there;
 * none goes through argv.
 *
 * What PyKMIP 0.10 does, read from its source (kmip/services/server/{server,session,engine}.py,
 * kmip/services/auth.py) and checked by the tests:
 * - Ownership: with no authentication plugin configured, the client identity is the subject
 *   Common Name of the client certificate (exactly one CN, else the request is refused); every object
 *   created records it as its owner. The built-in `default` operation policy allows only the owner
 *   to Get / Get Attributes / Locate / Activate / Revoke / Destroy a symmetric key: another
 *   identity gets Result Reason "Permission Denied" ("Could not locate object: <uid>"), and Locate
 *   silently leaves other owners' objects out.
 * - `enable_tls_client_auth = True` (its default) also refuses, with "Authentication Not
 *   Successful", a client certificate without an extendedKeyUsage extension. One whose
 *   extendedKeyUsage lacks clientAuth never gets that far: OpenSSL's own client-certificate check
 *   ends the handshake (alert 43, unsupported certificate).
 * - TLS: `auth_suite = TLS1.2` wraps the listening socket with `ssl.wrap_socket(...,
 *   PROTOCOL_TLSv1_2, CERT_REQUIRED)`: TLS 1.2 only, a client certificate signed by `ca_path`
 *   required. Its TLS 1.2 cipher list has no RSA AES-GCM suite (only CBC-SHA256/384 for RSA
 *   certificates); with EC certificates `tls_cipher_suites` (space separated) picks
 *   ECDHE-ECDSA-AES-GCM. The `Basic` suite is TLS 1.0, which OpenSSL 3 refuses at its default
 *   security level. `ssl.wrap_socket` was removed in Python 3.12; Debian bookworm's Python is
 *   3.11, where it is deprecated but works, so the Debian package runs as is (no shim needed). On a
 *   Python >= 3.12 a sitecustomize defining `ssl.wrap_socket` through `SSLContext` would be the
 *   smallest workaround.
 * - The log level is INFO: at DEBUG PyKMIP logs every request and response in hex, key material
 *   included.
 * - SIGINT stops it cleanly in about 2 s (its handler raises KeyboardInterrupt out of accept(), then
 *   it stops its policy monitor and multiprocessing manager, two child processes); SIGTERM only
 *   ends the accept loop at its next 10 s socket timeout. While a client connection is open, its
 *   shutdown joins that session's thread for 10 s. It runs in its own process group, so stop()
 *   (and the exit hook) SIGKILLs that group by its id when SIGINT has not ended it within 3 s.
 * - Destroy deletes the object's row: a destroyed key then reads as Item Not Found. Destroy of an
 *   Active key is refused with Permission Denied (the same reason as another owner's key).
 * - Not supported: ReKey (Operation Not Supported), the Link attribute (Create refuses it, Get
 *   Attributes returns nothing for it); Application Specific Information and Name are supported and
 *   Locate matches them exactly.
 *
 * Needs `/usr/bin/pykmip-server` and `openssl` (scripts/bootstrap.sh installs python3-pykmip and
 * openssl). Debian's Python packages import only under /usr/bin/python3 (the pyenv python3 on PATH
 * does not see them): the console script's shebang is /usr/bin/python3.
 */
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { delay, describeExit, EarlyExit, onFreePort, tail, track, untrack } from "./processes";

export const PYKMIP_SERVER = "/usr/bin/pykmip-server";

export interface KmipIdentity {
  /** PEM certificate (subject CN = the identity) and its private key. */
  cert: string;
  key: string;
}

export interface KmipServerOptions {
  /** Client identities to issue certificates for (default project-a, project-b). */
  identities?: string[];
  /** Readiness timeout in ms (default 30000). */
  startTimeoutMs?: number;
}

export interface KmipServerInstance {
  host: "127.0.0.1";
  port: number;
  /** The server process (its process group has the same id). */
  pid: number;
  dir: string;
  /** PEM of the CA that signed the server's and the clients' certificates. */
  ca: string;
  clients: Record<string, KmipIdentity>;
  /** A client certificate from another CA (CN=intruder), which the server does not trust. */
  untrusted: KmipIdentity & { ca: string };
  /**
   * Certificates of the right CA that may not authenticate clients: `noEku` has no
   * extendedKeyUsage at all (CN=no-eku: OpenSSL accepts it, PyKMIP's own check refuses it),
   * `serverAuthOnly` has extendedKeyUsage serverAuth (CN=server-auth-only: OpenSSL refuses it
   * during the handshake, with alert 43 "unsupported certificate").
   */
  noEku: KmipIdentity;
  serverAuthOnly: KmipIdentity;
  /** The server's log so far (INFO: no key material). */
  log(): string;
  /** SIGINT, then SIGKILL of its process group; removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

const STOP_GRACE_MS = 3000;
const liveGroups = new Set<number>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;

/** Whether this machine can run the harness. */
export function kmipServerAvailable(): { ok: boolean; why?: string } {
  if (!fs.existsSync(PYKMIP_SERVER)) return { ok: false, why: `${PYKMIP_SERVER} not found: run scripts/bootstrap.sh (Debian package python3-pykmip)` };
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
  } catch {
    return { ok: false, why: "openssl not found: run scripts/bootstrap.sh" };
  }
  return { ok: true };
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const g of liveGroups) killGroup(g, "SIGKILL");
    for (const d of liveDirs) fs.rmSync(d, { recursive: true, force: true });
  });
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    /* gone */
  }
}

function openssl(dir: string, args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"], timeout: 30000 });
}

/** An EC P-256 key (0600) and a certificate signed by caName (or self-signed when caName is undefined). */
function issue(dir: string, name: string, cn: string, extensions: string[], caName?: string): void {
  const keyFile = `${name}.key`;
  openssl(dir, ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyFile]);
  fs.chmodSync(path.join(dir, keyFile), 0o600);
  fs.writeFileSync(path.join(dir, `${name}.ext`), extensions.join("\n") + "\n");
  if (!caName) {
    openssl(dir, ["req", "-x509", "-new", "-key", keyFile, "-subj", `/CN=${cn}`, "-days", "2", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", `${name}.crt`]);
    return;
  }
  openssl(dir, ["req", "-new", "-key", keyFile, "-subj", `/CN=${cn}`, "-out", `${name}.csr`]);
  openssl(dir, ["x509", "-req", "-in", `${name}.csr`, "-CA", `${caName}.crt`, "-CAkey", `${caName}.key`, "-CAcreateserial", "-days", "2", "-sha256", "-extfile", `${name}.ext`, "-out", `${name}.crt`]);
}

const CLIENT_EXT = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth"];

export async function startKmipServer(opts: KmipServerOptions = {}): Promise<KmipServerInstance> {
  const avail = kmipServerAvailable();
  if (!avail.ok) throw new Error(`the KMIP server harness cannot run: ${avail.why}`);
  installExitHook();
  const identities = opts.identities ?? ["project-a", "project-b"];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kmip-"));
  fs.chmodSync(dir, 0o700);
  liveDirs.add(dir);
  const logFile = path.join(dir, "server.log");
  const read = (f: string) => fs.readFileSync(path.join(dir, f), "utf8");

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let isExited = () => true;
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (child?.pid !== undefined) {
        const pid = child.pid;
        if (!isExited()) {
          child.kill("SIGINT");
          await Promise.race([exited, delay(STOP_GRACE_MS)]);
        }
        // Its policy monitor and multiprocessing manager are children in its group.
        killGroup(pid, "SIGKILL");
        await exited;
        liveGroups.delete(pid);
      }
      fs.rmSync(dir, { recursive: true, force: true });
      liveDirs.delete(dir);
    })());

  try {
    issue(dir, "ca", "baremetal-test-kmip-ca", []);
    issue(dir, "server", "127.0.0.1", ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", "extendedKeyUsage=serverAuth", "subjectAltName=IP:127.0.0.1"], "ca");
    const clients: Record<string, KmipIdentity> = {};
    identities.forEach((id, i) => {
      issue(dir, `client${i}`, id, CLIENT_EXT, "ca");
      clients[id] = { cert: read(`client${i}.crt`), key: read(`client${i}.key`) };
    });
    issue(dir, "noeku", "no-eku", ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature"], "ca");
    issue(dir, "serveronly", "server-auth-only", ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", "extendedKeyUsage=serverAuth"], "ca");
    issue(dir, "otherca", "baremetal-test-other-ca", []);
    issue(dir, "intruder", "intruder", CLIENT_EXT, "otherca");
    fs.mkdirSync(path.join(dir, "policies"));

    const port = await onFreePort(async (p) => {
      const conf = path.join(dir, "server.conf");
      fs.writeFileSync(
        conf,
        [
          "[server]",
          "hostname=127.0.0.1",
          `port=${p}`,
          `certificate_path=${path.join(dir, "server.crt")}`,
          `key_path=${path.join(dir, "server.key")}`,
          `ca_path=${path.join(dir, "ca.crt")}`,
          "auth_suite=TLS1.2",
          `policy_path=${path.join(dir, "policies")}`,
          "enable_tls_client_auth=True",
          "tls_cipher_suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
          "logging_level=INFO",
          `database_path=${path.join(dir, "pykmip.db")}`,
          "",
        ].join("\n"),
      );
      fs.writeFileSync(logFile, "");
      const c = spawn(PYKMIP_SERVER, ["-f", conf, "-l", logFile], {
        cwd: dir,
        detached: true, // its own process group: stop() can reach its children
        stdio: ["ignore", "ignore", "pipe"],
        env: { ...process.env, PYTHONWARNINGS: "ignore" },
      });
      let stderr = "";
      c.stderr?.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20000)));
      c.once("error", () => undefined);
      track(c);
      if (c.pid !== undefined) liveGroups.add(c.pid);
      let done = false;
      const ex = new Promise<void>((resolve) => {
        if (c.exitCode !== null || c.signalCode !== null) return resolve();
        c.once("exit", () => resolve());
      }).then(() => {
        done = true;
        untrack(c);
      });
      const timeoutMs = opts.startTimeoutMs ?? 30000;
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = readOr(logFile) + stderr;
        if (done || /failed to bind socket handler|Address already in use/.test(text)) {
          if (c.pid !== undefined) {
            killGroup(c.pid, "SIGKILL");
            liveGroups.delete(c.pid);
          }
          await ex;
          throw new EarlyExit(`pykmip-server could not start on 127.0.0.1:${p} (${describeExit(c)}):\n${tail(text)}`);
        }
        if (Date.now() > deadline) {
          if (c.pid !== undefined) {
            killGroup(c.pid, "SIGKILL");
            liveGroups.delete(c.pid);
          }
          await ex;
          throw new Error(`pykmip-server not ready on 127.0.0.1:${p} after ${timeoutMs} ms:\n${tail(text)}`);
        }
        if (/Starting connection service/.test(text) && (await listening(p))) break;
        await delay(50);
      }
      child = c;
      exited = ex;
      isExited = () => done;
      return p;
    });

    return {
      host: "127.0.0.1",
      port,
      pid: child!.pid!,
      dir,
      ca: read("ca.crt"),
      clients,
      untrusted: { cert: read("intruder.crt"), key: read("intruder.key"), ca: read("otherca.crt") },
      noEku: { cert: read("noeku.crt"), key: read("noeku.key") },
      serverAuthOnly: { cert: read("serveronly.crt"), key: read("serveronly.key") },
      log: () => readOr(logFile),
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2000, () => done(false));
    s.once("error", () => done(false));
    s.once("connect", () => done(true));
  });
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return "";
  }
}
