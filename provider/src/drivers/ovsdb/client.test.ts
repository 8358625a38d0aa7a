/**
 * The OVSDB client: first against a tiny JSON-RPC server of ours (ids, echo, notifications, errors,
 * timeouts, cancellation, lost connections), then against a real ovsdb-server: the harness's over
 * TCP (list_dbs, get_schema, a real failed operation, the server's inactivity probe) and one of our
 * own over TLS (verification of the server, a client certificate, an untrusted CA).
 */
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { BaremetalError, isBaremetalError } from "../../core/errors";
import { startOvs, OvsInstance } from "../../../../test/harness/ovs";
import { freePort, track, untrack } from "../../../../test/harness/processes";
import { isOvsdbTransactionError, OvsdbClient, OvsdbTransactionError, parseOvsdbUrl } from "./client";
import { cond, ops, setOf } from "./data";
import { JsonStreamDecoder } from "./framing";

async function rejection(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (!isBaremetalError(e)) throw e;
    return e;
  }
  throw new Error("expected a rejection");
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());

// ---- a tiny JSON-RPC server of ours --------------------------------------------------------------

interface FakeConn {
  socket: net.Socket;
  received: Record<string, unknown>[];
  send(msg: unknown): void;
  raw(text: string): void;
  next(): Promise<Record<string, unknown>>;
}

interface FakeServer {
  port: number;
  url: string;
  conns: FakeConn[];
  close(): Promise<void>;
}

function fakeServer(onMessage: (msg: Record<string, unknown>, c: FakeConn) => void, onConnect?: (c: FakeConn) => void): Promise<FakeServer> {
  const conns: FakeConn[] = [];
  const server = net.createServer((socket) => {
    const decoder = new JsonStreamDecoder();
    const waiters: ((m: Record<string, unknown>) => void)[] = [];
    const unread: Record<string, unknown>[] = [];
    const c: FakeConn = {
      socket,
      received: [],
      send: (msg) => socket.write(JSON.stringify(msg)),
      raw: (text) => socket.write(text),
      next: () => {
        const m = unread.shift();
        return m ? Promise.resolve(m) : new Promise((resolve) => waiters.push(resolve));
      },
    };
    conns.push(c);
    socket.on("error", () => undefined);
    socket.on("data", (chunk) => {
      for (const m of decoder.push(chunk) as Record<string, unknown>[]) {
        c.received.push(m);
        const w = waiters.shift();
        if (w) w(m);
        else unread.push(m);
        onMessage(m, c);
      }
    });
    onConnect?.(c);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port;
      resolve({
        port,
        url: `tcp:127.0.0.1:${port}`,
        conns,
        close: () =>
          new Promise<void>((r) => {
            for (const c of conns) c.socket.destroy();
            server.close(() => r());
          }),
      });
    });
  });
}

describe("OVSDB client against a JSON-RPC server of ours", () => {
  const servers: FakeServer[] = [];
  const clients: OvsdbClient[] = [];
  const serve = async (...args: Parameters<typeof fakeServer>) => {
    const s = await fakeServer(...args);
    servers.push(s);
    return s;
  };
  const client = (url: string, o: Partial<ConstructorParameters<typeof OvsdbClient>[0]> = {}) => {
    const c = new OvsdbClient({ url, requestTimeoutMs: 2000, ...o });
    clients.push(c);
    return c;
  };
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  it("matches answers to requests by id, even out of order, merged into one write or split into many", async () => {
    const held: Record<string, unknown>[] = [];
    const srv = await serve(async (m, c) => {
      held.push(m);
      if (held.length < 2) return;
      const answers = held.map((r) => JSON.stringify({ id: r.id, result: r.method === "list_dbs" ? ["Open_vSwitch"] : r.params, error: null }));
      // Reverse order; the first two answers in one write, the last split in three.
      const text = answers.reverse().join("");
      const cut1 = Math.floor(text.length / 3);
      c.raw(text.slice(0, cut1));
      await delay(20);
      c.raw(text.slice(cut1, cut1 + 5));
      await delay(20);
      c.raw(text.slice(cut1 + 5));
    });
    const cl = client(srv.url);
    const [dbs, echoed] = await Promise.all([cl.listDbs(), cl.echo(["héllo {", 1])]);
    expect(dbs).toEqual(["Open_vSwitch"]);
    expect(echoed).toEqual(["héllo {", 1]);
    const ids = srv.conns[0].received.map((m) => m.id);
    expect(new Set(ids).size).toBe(2); // distinct request ids
    expect(cl.stats).toMatchObject({ requests: 2, connections: 1 });
  });

  it("answers the server's echo requests (its keepalive), passes notifications on and refuses other server requests", async () => {
    const notes: [string, unknown][] = [];
    const srv = await serve(
      () => undefined,
      (c) => {
        c.send({ id: "echo", method: "echo", params: ["ping", 7] });
        c.send({ id: null, method: "update", params: ["mon", { Port: {} }] });
        c.send({ id: 99, method: "steal", params: [] });
      },
    );
    const cl = client(srv.url, { onNotification: (m, p) => notes.push([m, p]) });
    const done = cl.request("list_dbs", []).catch(() => undefined); // opens the connection; left unanswered
    await delay(10);
    const c = srv.conns[0];
    const answers = [await c.next(), await c.next(), await c.next()].filter((m) => m.method !== "list_dbs");
    expect(answers.find((a) => a.id === "echo")).toEqual({ id: "echo", result: ["ping", 7], error: null });
    expect(answers.find((a) => a.id === 99)).toMatchObject({ id: 99, result: null, error: { error: "not supported" } });
    expect(notes).toEqual([
      ["update", ["mon", { Port: {} }]],
      ["steal", []],
    ]);
    expect(cl.stats.echoesAnswered).toBe(1);
    await cl.close();
    await done;
  });

  it("names the failing operation of a transaction, maps a failed wait to conflict and a failed commit", async () => {
    const txn = [
      ops.wait("Port", [cond("name", "==", "p1")], ["tag"], "==", [{ tag: setOf() }], 0),
      ops.update("Port", [cond("name", "==", "p1")], { tag: 5000 }),
      ops.comment("x"),
    ];
    const replies = [
      [{}, { error: "constraint violation", details: "5000 is not in the valid range 0 to 4095 (inclusive)" }, null],
      [{ error: "timed out", details: '"where" clause test failed' }, null, null],
      [{}, { count: 1 }, {}, { error: "referential integrity violation", details: "row is referenced" }],
    ];
    const srv = await serve((m, c) => c.send({ id: m.id, result: replies.shift(), error: null }));
    const cl = client(srv.url);

    const e1 = await rejection(cl.transact("Open_vSwitch", txn));
    expect(isOvsdbTransactionError(e1)).toBe(true);
    expect(e1).toMatchObject({ code: "backend", messageId: "constraint violation", index: 1, ovsdbError: "constraint violation" });
    expect(e1.message).toContain('operation 2 of 3 (update Port where name == "p1" (tag)): constraint violation: 5000 is not in the valid range');
    expect((e1 as OvsdbTransactionError).operation).toBe(txn[1]);

    const e2 = await rejection(cl.transact("Open_vSwitch", txn));
    expect(e2).toMatchObject({ code: "conflict", index: 0 });
    expect(e2.message).toContain("operation 1 of 3 (wait on Port where name == \"p1\" until tag == expected)");

    const e3 = await rejection(cl.transact("Open_vSwitch", txn));
    expect(e3).toMatchObject({ code: "backend", index: 3, operation: undefined });
    expect(e3.message).toContain("the commit of 3 operations: referential integrity violation: row is referenced");
    // The raw transact request is RFC 7047's: [db, op, op, ...].
    expect(srv.conns[0].received[0]).toMatchObject({ method: "transact", params: ["Open_vSwitch", ...txn] });
  });

  it("maps a JSON-RPC error answer (unknown database) to not-found", async () => {
    const srv = await serve((m, c) => c.send({ id: m.id, result: null, error: { error: "unknown database", details: "get_schema request specifies unknown database Nope" } }));
    const e = await rejection(client(srv.url).getSchema("Nope"));
    expect(e).toMatchObject({ code: "not-found", messageId: "unknown database" });
    expect(e.message).toMatch(/refused get_schema: unknown database \(get_schema request specifies unknown database Nope\)/);
  });

  it("times out a request, cancels the given-up transaction on the server and ignores its late answer", async () => {
    const late: unknown[] = [];
    const srv = await serve((m, c) => {
      if (m.method === "transact") late.push(m.id); // never answered in time
      if (m.method === "cancel") c.send({ id: (m.params as number[])[0], result: null, error: { error: "canceled" } });
      if (m.method === "list_dbs") c.send({ id: m.id, result: ["Open_vSwitch"], error: null });
    });
    const cl = client(srv.url);
    const t0 = Date.now();
    const e = await rejection(cl.transact("Open_vSwitch", [ops.select("Port", [])], { timeoutMs: 150 }));
    expect(e.code).toBe("timeout");
    expect(e.message).toMatch(/did not answer transact within 150 ms/);
    expect(Date.now() - t0).toBeLessThan(1000);
    await delay(50);
    const cancel = srv.conns[0].received.find((m) => m.method === "cancel");
    expect(cancel).toEqual({ id: null, method: "cancel", params: [late[0]] });
    // The late answer ("canceled") is dropped; the connection goes on.
    expect(await cl.listDbs()).toEqual(["Open_vSwitch"]);
    expect(cl.stats.connections).toBe(1);
  });

  it("is cancelled by an AbortSignal, before sending or while waiting", async () => {
    const srv = await serve(() => undefined);
    const ctl = new AbortController();
    const cl = client(srv.url, { signal: ctl.signal });
    const perRequest = new AbortController();
    const pending = cl.listDbs({ signal: perRequest.signal });
    setTimeout(() => perRequest.abort(), 30);
    expect(await rejection(pending)).toMatchObject({ code: "cancelled" });
    ctl.abort();
    const before = srv.conns[0].received.length;
    expect(await rejection(cl.listDbs())).toMatchObject({ code: "cancelled" });
    expect(srv.conns[0].received.length).toBe(before); // never sent
  });

  it("fails requests in flight when the connection is lost, then reconnects for the next one", async () => {
    let first = true;
    const srv = await serve((m, c) => {
      if (first) {
        first = false;
        c.socket.destroy();
        return;
      }
      c.send({ id: m.id, result: ["Open_vSwitch"], error: null });
    });
    const cl = client(srv.url);
    const e = await rejection(cl.transact("Open_vSwitch", [ops.select("Port", [])]));
    expect(e.code).toBe("transient");
    expect(e.message).toMatch(/closed the connection; whether a transaction in flight was applied is unknown/);
    expect(await cl.listDbs()).toEqual(["Open_vSwitch"]);
    expect(cl.stats.connections).toBe(2);
  });

  it("drops the connection on a malformed stream with a backend error", async () => {
    const srv = await serve((m, c) => c.raw(`{"id":${m.id},"result":[1,],"error":null}`));
    const e = await rejection(client(srv.url).listDbs());
    expect(e.code).toBe("backend");
    expect(e.message).toMatch(/malformed JSON-RPC message/);
  });

  it("reports a refused connection as transient and unsent", async () => {
    const port = await freePort();
    const e = await rejection(client(`tcp:127.0.0.1:${port}`).listDbs());
    expect(e).toMatchObject({ code: "transient", unsent: true });
    expect(e.message).toMatch(/cannot connect to ovsdb-server at tcp:127.0.0.1:\d+: .*ECONNREFUSED/);
  });

  it("parses remotes and refuses malformed ones naming the property", () => {
    expect(parseOvsdbUrl("tcp:127.0.0.1:6640")).toEqual({ protocol: "tcp", host: "127.0.0.1", port: 6640 });
    expect(parseOvsdbUrl("ssl:switch1.example:6640")).toEqual({ protocol: "ssl", host: "switch1.example", port: 6640 });
    expect(parseOvsdbUrl("ssl:[fd00::2]:6640")).toEqual({ protocol: "ssl", host: "fd00::2", port: 6640 });
    for (const bad of ["127.0.0.1:6640", "unix:/run/db.sock", "tcp:host", "tcp:host:0", "tcp:host:70000", "http://x:1", "ptcp:6640", "tcp:[zz]:1"]) {
      expect(() => parseOvsdbUrl(bad, "address")).toThrow(expect.objectContaining({ code: "validation", property: "address" }));
    }
    expect(() => new OvsdbClient({ url: "ssl:h:1", tls: { cert: "x" } })).toThrow(expect.objectContaining({ property: "tls.key" }));
    expect(() => new OvsdbClient({ url: "ssl:h:1", tls: { ca: "not pem" } })).toThrow(expect.objectContaining({ property: "tls.ca" }));
  });
});

// ---- a real ovsdb-server -------------------------------------------------------------------------

describe("OVSDB client against a real ovsdb-server (TCP)", () => {
  let ovs: OvsInstance;
  const clients: OvsdbClient[] = [];
  beforeAll(async () => {
    ovs = await startOvs({ switches: 1 });
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await ovs?.stop();
  });

  it("lists the databases, reads the schema and runs transactions; a failed operation is named", async () => {
    const cl = new OvsdbClient({ url: ovs.ovsdbUrl });
    clients.push(cl);
    expect(await cl.listDbs()).toEqual(expect.arrayContaining(["Open_vSwitch", "_Server"]));
    const schema = await cl.getSchema("Open_vSwitch");
    expect(schema.name).toBe("Open_vSwitch");
    expect(schema.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(Object.keys(schema.tables)).toEqual(expect.arrayContaining(["Open_vSwitch", "Bridge", "Port", "Interface", "Manager"]));
    expect(Object.keys(schema.tables.Port.columns)).toEqual(expect.arrayContaining(["name", "tag", "trunks", "vlan_mode", "external_ids"]));

    const [bridges] = await cl.transact("Open_vSwitch", [ops.select("Bridge", [cond("name", "==", "br0")], ["name", "datapath_type"])]);
    expect(bridges.rows).toEqual([{ name: "br0", datapath_type: "netdev" }]);

    await ovs.vsctl(["add-port", "br0", "px", "--", "set", "interface", "px", "type=internal"]);
    const e = await rejection(
      cl.transact("Open_vSwitch", [ops.comment("first"), ops.update("Port", [cond("name", "==", "px")], { trunks: setOf(5000) })]),
    );
    expect(e).toMatchObject({ code: "backend", messageId: "constraint violation", index: 1 });
    expect(e.message).toContain('operation 2 of 2 (update Port where name == "px" (trunks)): constraint violation: 5000 is not in the valid range 0 to 4095');
    const bad = await rejection(cl.transact("Nope", [ops.select("Port", [])]));
    expect(bad).toMatchObject({ code: "not-found", messageId: "unknown database" });
  });

  it("answers the server's inactivity probe (echo) and keeps its connection, where a silent client is dropped", async () => {
    // A Manager row adds a remote to ovsdb-server (the harness starts it with
    // --remote=db:Open_vSwitch,Open_vSwitch,manager_options) with a 1 s inactivity probe (the minimum).
    const port = await freePort();
    await ovs.vsctl(["--no-wait", "--", "--id=@m", "create", "Manager", `target="ptcp:${port}:127.0.0.1"`, "inactivity_probe=1000", "--", "set", "Open_vSwitch", ".", "manager_options=@m"]);
    const cl = new OvsdbClient({ url: `tcp:127.0.0.1:${port}`, requestTimeoutMs: 2000 });
    clients.push(cl);
    for (let i = 0; ; i++) {
      try {
        await cl.listDbs();
        break;
      } catch (e) {
        if (i > 40) throw e;
        await delay(50); // the new remote opens on ovsdb-server's next main loop run
      }
    }
    const silent = net.connect({ host: "127.0.0.1", port });
    let silentGot = "";
    const silentClosed = new Promise<number>((resolve) => {
      const t0 = Date.now();
      silent.on("data", (d) => (silentGot += d));
      silent.on("close", () => resolve(Date.now() - t0));
      silent.on("error", () => undefined);
    });
    await delay(2600);
    expect(silentGot).toContain('"method":"echo"');
    expect(await Promise.race([silentClosed, delay(1000).then(() => -1)])).toBeGreaterThan(0);
    expect(cl.stats.echoesAnswered).toBeGreaterThanOrEqual(1);
    expect(await cl.listDbs()).toContain("Open_vSwitch");
    expect(cl.stats.connections).toBe(1); // the same connection all along
  });
});

// ---- TLS -----------------------------------------------------------------------------------------

interface Pki {
  dir: string;
  ca: string;
  otherCa: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** A throwaway CA, a server certificate for 127.0.0.1, a client certificate, and an unrelated CA. */
function makePki(dir: string): Pki {
  const ssl = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const key = (name: string) => ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${name}.key`];
  ssl(["req", "-x509", ...key("ca"), "-out", "ca.pem", "-days", "1", "-subj", "/CN=baremetal-test-ca"]);
  ssl(["req", "-x509", ...key("other"), "-out", "other.pem", "-days", "1", "-subj", "/CN=some-other-ca"]);
  fs.writeFileSync(path.join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1\n");
  for (const who of ["server", "client"]) {
    ssl(["req", ...key(who), "-out", `${who}.csr`, "-subj", `/CN=ovsdb-${who}`]);
    ssl(["x509", "-req", "-in", `${who}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", `${who}.pem`, "-days", "1", ...(who === "server" ? ["-extfile", "san.ext"] : [])]);
  }
  const read = (f: string) => fs.readFileSync(path.join(dir, f), "utf8");
  return { dir, ca: read("ca.pem"), otherCa: read("other.pem"), serverCert: read("server.pem"), serverKey: read("server.key"), clientCert: read("client.pem"), clientKey: read("client.key") };
}

describe("OVSDB client over TLS (an ovsdb-server of ours with --remote=pssl:)", () => {
  let dir: string;
  let pki: Pki;
  let server: ChildProcess | undefined;
  let url: string;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "ovsdb-tls-"));
    pki = makePki(dir);
    execFileSync("ovsdb-tool", ["create", path.join(dir, "conf.db"), "/usr/share/openvswitch/vswitch.ovsschema"]);
    const log = path.join(dir, "ovsdb-server.log");
    server = spawn("ovsdb-server", [
      path.join(dir, "conf.db"),
      "--remote=pssl:0:127.0.0.1", // port 0: the kernel picks; the log says which
      `--private-key=${path.join(dir, "server.key")}`,
      `--certificate=${path.join(dir, "server.pem")}`,
      `--ca-cert=${path.join(dir, "ca.pem")}`,
      `--pidfile=${path.join(dir, "ovsdb-server.pid")}`,
      `--unixctl=${path.join(dir, "ovsdb-server.ctl")}`,
      `--log-file=${log}`,
      "-vconsole:off",
    ], { cwd: dir, stdio: "ignore", env: { ...process.env, OVS_RUNDIR: dir, OVS_DBDIR: dir, OVS_LOGDIR: dir } });
    track(server);
    const deadline = Date.now() + 10000;
    for (;;) {
      const m = /listening on port (\d+)/.exec(fs.existsSync(log) ? fs.readFileSync(log, "utf8") : "");
      if (m) {
        url = `ssl:127.0.0.1:${m[1]}`;
        break;
      }
      if (server.exitCode !== null || Date.now() > deadline) throw new Error(`ovsdb-server (SSL) did not start: ${fs.existsSync(log) ? fs.readFileSync(log, "utf8") : "no log"}`);
      await delay(20);
    }
  });

  afterAll(async () => {
    if (server?.pid !== undefined && server.exitCode === null) {
      const exited = new Promise((r) => server!.once("exit", r));
      process.kill(server.pid, "SIGTERM");
      await Promise.race([exited, delay(3000)]);
      if (server.exitCode === null && server.signalCode === null) process.kill(server.pid, "SIGKILL");
      untrack(server);
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it("verifies the server against the CA given, presents the client certificate, and talks OVSDB", async () => {
    const cl = new OvsdbClient({ url, tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey } });
    try {
      expect(await cl.listDbs()).toEqual(expect.arrayContaining(["Open_vSwitch"]));
      const [r] = await cl.transact("Open_vSwitch", [ops.select("Open_vSwitch", [], ["next_cfg"])]);
      expect(r.rows).toHaveLength(0); // a fresh database: no Open_vSwitch row yet
    } finally {
      await cl.close();
    }
  });

  it("fails with a tls error when the server's certificate is signed by a CA we do not trust (verification is on by default)", async () => {
    for (const tls of [{ ca: pki.otherCa, cert: pki.clientCert, key: pki.clientKey }, { cert: pki.clientCert, key: pki.clientKey }]) {
      const cl = new OvsdbClient({ url, tls });
      const e = await rejection(cl.listDbs());
      await cl.close();
      expect(e.code).toBe("tls");
      expect(e.message).toMatch(/TLS with ovsdb-server at ssl:127\.0\.0\.1:\d+ failed \((SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)\)/);
      expect(e.message).toMatch(/CA bundle \(tls\.ca\)/);
    }
  });

  it("fails with a tls error when the server refuses us for lack of a client certificate", async () => {
    const cl = new OvsdbClient({ url, tls: { ca: pki.ca } });
    const e = await rejection(cl.listDbs());
    await cl.close();
    expect(e.code).toBe("tls");
    expect(e.message).toMatch(/client certificate/);
  });

  it("connects without verification only when told to", async () => {
    const cl = new OvsdbClient({ url, tls: { verify: false, cert: pki.clientCert, key: pki.clientKey } });
    try {
      expect(await cl.listDbs()).toContain("Open_vSwitch");
    } finally {
      await cl.close();
    }
  });
});
