/**
 * Test harness: Ceph's S3 gateway (radosgw, Debian package `radosgw`) on 127.0.0.1 and a free port,
 * on top of a cluster of test/harness/ceph.ts. radosgw really checks SigV4 signatures, so it is
 * the peer of the `s3` backup target.
 *
 *   const ceph = await startCeph({ mgr: false });
 *   const rgw = await startRadosgw(ceph);        // an S3 user, its keys, bucket `backups`
 *   // rgw.address = "s3://127.0.0.1:PORT/backups?region=us-east-1&tls=false"
 *   // rgw.accessKeyId / rgw.secretAccessKey: the user's keys (secret: never log them)
 *   await rgw.stop();                            // before ceph.stop()
 *
 * - radosgw runs as its own cephx client (`client.rgw.gw`, made with `ceph auth get-or-create`,
 *   caps `mon 'allow rw' osd 'allow rwx'`), its keyring 0600 in a private directory (0700) of its
 *   own; its log and admin socket live there too. The Beast frontend listens on
 *   `127.0.0.1:PORT` only. Overrides go on its command line (the cluster's ceph.conf stays as
 *   ceph.ts wrote it): small thread pool, no usage/ops logs, no garbage-collector or lifecycle
 *   hurry.
 * - The user is made with `radosgw-admin user create` (as client.admin), which generates the access
 *   key and the secret and prints them on its stdout; they reach the test in memory only. The
 *   zone's pools are made on the way (by radosgw-admin and radosgw, which run concurrently).
 * - Readiness: an anonymous `GET /` answers (radosgw is serving); then the bucket is created with
 *   a SigV4-signed CreateBucket (the provider's own S3 client: radosgw checks the signature).
 * - stop(): SIGTERM by PID, SIGKILL after a grace period; the directory goes. The process is
 *   tracked (processes.ts), so a test run that dies still kills it at exit.
 */
import { ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";
import { parseS3Address, S3Client } from "../../provider/src/drivers/backup-s3/client";
import type { CephInstance } from "./ceph";
import { binariesAvailable, delay, describeExit, EarlyExit, findBin as processesFindBin, onFreePort, runTool, tail, track, trackDir, untrack, untrackDir } from "./processes";

export interface RadosgwOptions {
  /** Buckets to create (default ["backups"]). */
  buckets?: string[];
  /** Readiness timeout in ms (default 120000). */
  startTimeoutMs?: number;
}

export interface RadosgwInstance {
  dir: string;
  port: number;
  /** http://127.0.0.1:PORT */
  url: string;
  /** `s3://127.0.0.1:PORT/<first bucket>?region=us-east-1&tls=false` */
  address: string;
  buckets: string[];
  uid: string;
  accessKeyId: string;
  /** A secret: never log it. */
  secretAccessKey: string;
  pid: number;
  startMs: number;
  timings: Record<string, number>;
  /** Runs `radosgw-admin ARGS` as client.admin; throws on failure. */
  admin(args: string[]): Promise<string>;
  /** Creates a bucket (SigV4 CreateBucket as the user). */
  createBucket(name: string): Promise<void>;
  /** Creates another S3 user and returns its keys. */
  createUser(uid: string): Promise<{ accessKeyId: string; secretAccessKey: string }>;
  log(): string;
  stop(): Promise<void>;
}

const GRACE_MS = 5000;
const INSTALL = "Debian package radosgw";
const findBin = (name: string) => processesFindBin(name, INSTALL);
const run = (file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60000) => runTool(file, args, env, timeoutMs);


/** Whether this machine can run the harness (ceph's binaries and radosgw's). */
export function radosgwAvailable(): { ok: boolean; why?: string } {
  return binariesAvailable(["radosgw", "radosgw-admin", "ceph-mon", "ceph-osd"], INSTALL);
}



function anonymousGet(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const r = http.get({ host: "127.0.0.1", port, path: "/", timeout: 2000 }, (res) => {
      res.resume();
      res.once("end", () => resolve(res.statusCode ?? 0));
    });
    r.once("timeout", () => r.destroy(new Error("timeout")));
    r.once("error", reject);
  });
}

export async function startRadosgw(ceph: CephInstance, opts: RadosgwOptions = {}): Promise<RadosgwInstance> {
  const avail = radosgwAvailable();
  if (!avail.ok) throw new Error(`the radosgw harness cannot run: ${avail.why}`);
  const t0 = Date.now();
  const timings: Record<string, number> = {};
  const mark = (s: string) => (timings[s] = Date.now() - t0);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "radosgw-"));
  fs.chmodSync(dir, 0o700);
  trackDir(dir);
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir, LANG: "C", LC_ALL: "C", TZ: "UTC" };
  const adminBin = findBin("radosgw-admin");
  const admin = async (args: string[], timeoutMs?: number) => {
    const r = await run(adminBin, ["-c", ceph.confPath, "--log-file", path.join(dir, "admin.log"), ...args], env, timeoutMs);
    if (r.code !== 0) throw new Error(`radosgw-admin ${args[0]} ${args[1] ?? ""} failed (${r.code}): ${tail(r.stderr.trim(), 10)}`);
    return r.stdout;
  };
  const logPath = path.join(dir, "radosgw.log");
  const logOf = () => {
    try {
      return fs.readFileSync(logPath, "utf8");
    } catch {
      return "";
    }
  };
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let done = true;
  const stop = async () => {
    if (child?.pid !== undefined && !done) {
      try {
        process.kill(child.pid, "SIGTERM");
      } catch {
        /* gone */
      }
      await Promise.race([exited, delay(GRACE_MS)]);
      if (!done) {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          /* gone */
        }
        await exited;
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
    untrackDir(dir);
  };

  try {
    const name = "client.rgw.gw";
    const key = (await ceph.admin(["auth", "get-or-create-key", name, "mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"])).trim();
    const keyring = path.join(dir, "keyring");
    fs.writeFileSync(keyring, `[${name}]\n\tkey = ${key}\n`, { mode: 0o600 });
    fs.mkdirSync(path.join(dir, "data"), { mode: 0o700 });
    mark("cephx");

    // The user (and with it the zone's metadata pools) while radosgw starts.
    const uid = "backup";
    const userP = admin(["user", "create", `--uid=${uid}`, "--display-name=backup tests", "--format=json"], 120000).then((out) => {
      mark("user");
      return out;
    });

    const bin = findBin("radosgw");
    const deadline = t0 + (opts.startTimeoutMs ?? 120000);
    const port = await onFreePort(async (p) => {
      const c = spawn(
        bin,
        [
          "-f",
          "-c",
          ceph.confPath,
          "-n",
          name,
          "--keyring",
          keyring,
          "--rgw-data",
          path.join(dir, "data"),
          "--log-file",
          logPath,
          "--admin-socket",
          path.join(dir, "radosgw.asok"),
          "--rgw-frontends",
          `beast endpoint=127.0.0.1:${p}`,
          "--rgw-thread-pool-size",
          "32",
          "--rgw-enable-usage-log=false",
          "--rgw-enable-ops-log=false",
          "--rgw-dns-name=127.0.0.1",
        ],
        { cwd: dir, env, stdio: ["ignore", "ignore", "pipe"] },
      );
      let stderr = "";
      c.stderr?.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-8192)));
      c.once("error", () => undefined);
      track(c);
      child = c;
      done = false;
      exited = new Promise<void>((resolve) => {
        if (c.exitCode !== null || c.signalCode !== null) return resolve();
        c.once("exit", () => resolve());
      }).then(() => {
        done = true;
        untrack(c);
      });
      for (;;) {
        if (done) {
          const why = `radosgw exited during start-up (${describeExit(c)}): ${tail(stderr.trim(), 10)}\n${tail(logOf(), 20)}`;
          throw /bind|address already in use/i.test(why) ? new EarlyExit(why) : new Error(why);
        }
        try {
          const s = await anonymousGet(p);
          if (s > 0) return p;
        } catch {
          /* not yet */
        }
        if (Date.now() > deadline) throw new Error(`radosgw did not answer on 127.0.0.1:${p} in time:\n${tail(logOf(), 20)}`);
        await delay(100);
      }
    });
    mark("serving");
    const user = JSON.parse(await userP) as { keys?: { access_key: string; secret_key: string }[] };
    const k = user.keys?.[0];
    if (!k) throw new Error("radosgw-admin user create gave no keys");
    const buckets = opts.buckets ?? ["backups"];
    const url = `http://127.0.0.1:${port}`;
    const createBucket = async (bucket: string) => {
      const client = new S3Client({ endpoint: parseS3Address(`s3://127.0.0.1:${port}/${bucket}?tls=false`), accessKeyId: k.access_key, secretAccessKey: k.secret_key });
      try {
        await client.request({ method: "PUT", what: `creation of bucket ${bucket}` });
      } finally {
        client.close();
      }
    };
    for (const b of buckets) await createBucket(b);
    mark("ready");
    return {
      dir,
      port,
      url,
      address: `s3://127.0.0.1:${port}/${buckets[0]}?region=us-east-1&tls=false`,
      buckets,
      uid,
      accessKeyId: k.access_key,
      secretAccessKey: k.secret_key,
      pid: child!.pid!,
      startMs: Date.now() - t0,
      timings,
      admin: (args) => admin(args),
      createBucket,
      async createUser(id) {
        const u = JSON.parse(await admin(["user", "create", `--uid=${id}`, `--display-name=${id}`, "--format=json"])) as { keys: { access_key: string; secret_key: string }[] };
        return { accessKeyId: u.keys[0].access_key, secretAccessKey: u.keys[0].secret_key };
      },
      log: logOf,
      stop,
    };
  } catch (err) {
    const log = tail(logOf(), 20);
    await stop().catch(() => undefined);
    throw new Error(`${(err as Error).message}${log ? `\n--- radosgw:\n${log}` : ""}`);
  }
}
