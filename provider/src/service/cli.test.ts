/**
 * `baremetal token` and `baremetal serve` as an operator runs them (the built CLI, a settings file
 * with the inventory URL): a token issued on the command line works against the served API,
 * `token list` shows no secret, a revoked token is refused, a world-readable settings file is
 * refused, and SIGTERM stops the service cleanly. The `service` settings: mutual TLS with throwaway
 * certificates (openssl CLI; a client without a certificate, or with one of another CA, is refused
 * in the handshake; one of the client CA gets answers and still needs a token) and OIDC (a JWT of an
 * issuer run in the test is accepted by the served API); malformed settings are refused naming them.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { generateKeyPairSync, sign } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const CLI = resolve(__dirname, "../../dist/src/cli/main.js");
const node = process.env.BAREMETAL_NODE ?? process.execPath;

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) =>
    execFile(node, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) => res({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr })),
  );
}

describe("baremetal serve / token", () => {
  const dir = mkdtempSync(join(tmpdir(), "service-cli-"));
  const config = join(dir, "service.json");
  let serve: ChildProcess | undefined;

  beforeAll(() => {
    writeFileSync(config, JSON.stringify({ inventoryUrl: `sqlite://${join(dir, "inventory.db")}` }), { mode: 0o600 });
  });

  afterAll(async () => {
    if (serve && serve.exitCode === null) serve.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  test("a token from the command line works against the served API until it is revoked", async () => {
    const created = await cli(["token", "create", "--config", config, "--name", "tenant-a", "--project", "project-a", "--roles", "member,reader"]);
    expect(created.code).toBe(0);
    const { id, token } = JSON.parse(created.stdout) as { id: string; token: string };
    expect(token).toMatch(/^bmt_/);

    const listed = await cli(["token", "list", "--config", config]);
    expect(JSON.parse(listed.stdout)).toMatchObject({ id, name: "tenant-a", projectId: "project-a" });
    expect(listed.stdout).not.toContain(token.slice(29));
    expect(listed.stdout).not.toContain("secretHash");

    serve = spawn(node, [CLI, "serve", "--config", config, "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
    const base = await new Promise<string>((res, rej) => {
      let out = "";
      serve!.stdout!.on("data", (b: Buffer) => {
        out += b.toString();
        const m = /\{"listening":"([^"]+)"\}/.exec(out);
        if (m) res(m[1]);
      });
      serve!.once("exit", (code) => rej(new Error(`serve exited ${code}`)));
    });
    const me = await fetch(`${base}/v1/me`, { headers: { authorization: `Bearer ${token}` } });
    expect(me.status).toBe(200);
    expect(await me.json()).toMatchObject({ tokenId: id, projectId: "project-a" });

    expect((await cli(["token", "revoke", "--config", config, "--id", id])).code).toBe(0);
    const refused = await fetch(`${base}/v1/me`, { headers: { authorization: `Bearer ${token}` } });
    expect(refused.status).toBe(401);
    expect(((await refused.json()) as { message: string }).message).toMatch(/was revoked/);

    const exited = new Promise<number | null>((res) => serve!.once("exit", (code) => res(code)));
    serve.kill("SIGTERM");
    expect(await exited).toBe(0);
  });

  test("a settings file others can read is refused (it holds backend credentials)", async () => {
    const open = join(dir, "open.json");
    writeFileSync(open, "{}");
    chmodSync(open, 0o644);
    const r = await cli(["token", "list", "--config", open]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/can be read by others \(mode 644\).*chmod 600/);
  });
});

/**
 * `baremetal serve` on `config` until stopped; resolves with its URL. `logged` waits for a line
 * of its log (stderr): the log is another pipe than the answer, read whenever it arrives, so a
 * line written before an answer may still be on its way when the answer is in.
 */
function serveOn(config: string): { child: ChildProcess; url: Promise<string>; stderr: () => string; logged: (re: RegExp, ms?: number) => Promise<string> } {
  const child = spawn(node, [CLI, "serve", "--config", config, "--listen", "127.0.0.1:0"], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
  const logged = (re: RegExp, ms = 10_000) =>
    new Promise<string>((res) => {
      const t0 = Date.now();
      const look = () => (re.test(err) || Date.now() - t0 > ms || child.exitCode !== null ? res(err) : setTimeout(look, 20));
      look();
    });
  const url = new Promise<string>((res, rej) => {
    let out = "";
    child.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const m = /\{"listening":"([^"]+)"\}/.exec(out);
      if (m) res(m[1]);
    });
    child.once("exit", (code) => rej(new Error(`serve exited ${code}: ${err}`)));
  });
  return { child, url, stderr: () => err, logged };
}

/** GET over HTTPS with the given client certificate (or none): the status and body, or the TLS error. */
function tlsGet(url: string, opts: { ca: string; cert?: string; key?: string; token?: string }): Promise<{ status?: number; body?: string; error?: string }> {
  return new Promise((res) => {
    const req = https.request(url, { ca: opts.ca, cert: opts.cert, key: opts.key, headers: opts.token ? { authorization: `Bearer ${opts.token}` } : {}, timeout: 10_000 }, (r) => {
      let body = "";
      r.on("data", (b: Buffer) => (body += b.toString()));
      r.on("end", () => res({ status: r.statusCode, body }));
    });
    req.on("error", (e: NodeJS.ErrnoException) => res({ error: `${e.code ?? ""} ${e.message}` }));
    req.end();
  });
}

describe("baremetal serve: the service settings (mutual TLS, OIDC)", () => {
  const dir = mkdtempSync(join(tmpdir(), "service-tls-"));
  const pki = (name: string) => join(dir, name);
  const openssl = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  let serve: ChildProcess | undefined;
  const issuerKey = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const issuer = http.createServer((req, res) => {
    const base = `http://127.0.0.1:${(issuer.address() as AddressInfo).port}`;
    if (req.url === "/.well-known/openid-configuration") return res.writeHead(200).end(JSON.stringify({ issuer: base, jwks_uri: `${base}/jwks` }));
    if (req.url === "/jwks") return res.writeHead(200, { "cache-control": "max-age=60" }).end(JSON.stringify({ keys: [{ ...issuerKey.publicKey.export({ format: "jwk" }), kid: "k1", use: "sig" }] }));
    res.writeHead(404).end();
  });
  let issuerUrl = "";

  /** A CA, and a certificate it signs (serverAuth with IP 127.0.0.1, or clientAuth). */
  function ca(name: string) {
    openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${name}-key.pem`, "-out", `${name}.pem`, "-days", "1", "-subj", `/CN=${name}`]);
    chmodSync(pki(`${name}-key.pem`), 0o600);
  }
  function leaf(name: string, caName: string, usage: "server" | "client") {
    openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${name}-key.pem`, "-out", `${name}.csr`, "-subj", `/CN=${name}`]);
    chmodSync(pki(`${name}-key.pem`), 0o600);
    const ext = usage === "server" ? "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth" : "extendedKeyUsage=clientAuth";
    writeFileSync(pki(`${name}.ext`), `${ext}\n`);
    openssl(["x509", "-req", "-in", `${name}.csr`, "-CA", `${caName}.pem`, "-CAkey", `${caName}-key.pem`, "-CAcreateserial", "-out", `${name}.pem`, "-days", "1", "-extfile", `${name}.ext`]);
  }
  const read = (f: string) => readFileSync(pki(f), "utf8");

  beforeAll(async () => {
    ca("server-ca");
    ca("client-ca");
    ca("other-ca");
    leaf("server", "server-ca", "server");
    leaf("client", "client-ca", "client");
    leaf("stranger", "other-ca", "client");
    await new Promise<void>((r) => issuer.listen(0, "127.0.0.1", r));
    issuerUrl = `http://127.0.0.1:${(issuer.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    if (serve && serve.exitCode === null) serve.kill("SIGKILL");
    await new Promise((r) => issuer.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  test("mutual TLS: no client certificate or one of another CA is refused in the handshake; the client CA's gets answers, with a token; OIDC JWTs work", async () => {
    const config = pki("service.json");
    writeFileSync(
      config,
      JSON.stringify({
        inventoryUrl: `sqlite://${pki("inventory.db")}`,
        // PEM paths relative to the settings file; the client CA given as PEM text.
        service: { tls: { cert: "server.pem", key: "server-key.pem", clientCa: read("client-ca.pem") }, oidc: { issuer: issuerUrl, audience: "baremetal" } },
      }),
      { mode: 0o600 },
    );
    const created = await cli(["token", "create", "--config", config, "--name", "tls-tenant", "--project", "project-a", "--roles", "member"]);
    expect(created.code).toBe(0);
    const { token } = JSON.parse(created.stdout) as { token: string };

    const s = serveOn(config);
    serve = s.child;
    const base = await s.url;
    expect(base).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const caPem = read("server-ca.pem");
    const client = { ca: caPem, cert: read("client.pem"), key: read("client-key.pem") };

    const bare = await tlsGet(`${base}/v1/me`, { ca: caPem, token });
    expect(bare.status).toBeUndefined();
    // The server's alert, or (a TLS 1.3 race under load) the reset that follows it.
    expect(bare.error).toMatch(/ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED|ECONNRESET/);
    const stranger = await tlsGet(`${base}/v1/me`, { ca: caPem, cert: read("stranger.pem"), key: read("stranger-key.pem"), token });
    expect(stranger.status).toBeUndefined();
    // The server aborts the handshake (unknown CA); TLS 1.3 clients see the connection reset.
    expect(stranger.error).toMatch(/unknown ca|ECONNRESET/i);

    const noToken = await tlsGet(`${base}/v1/me`, client);
    expect(noToken.status).toBe(401);
    const me = await tlsGet(`${base}/v1/me`, { ...client, token });
    expect(me.status).toBe(200);
    expect(JSON.parse(me.body!)).toMatchObject({ tokenName: "tls-tenant", projectId: "project-a" });

    // A JWT of the configured issuer (ES256), over the same mutual-TLS connection.
    const now = Math.floor(Date.now() / 1000);
    const h = Buffer.from(JSON.stringify({ alg: "ES256", kid: "k1", typ: "JWT" })).toString("base64url");
    const p = Buffer.from(JSON.stringify({ iss: issuerUrl, aud: "baremetal", sub: "bob", exp: now + 300, iat: now, project_id: "project-b", roles: "member reader" })).toString("base64url");
    const jwt = `${h}.${p}.${sign("sha256", Buffer.from(`${h}.${p}`), { key: issuerKey.privateKey, dsaEncoding: "ieee-p1363" }).toString("base64url")}`;
    const viaJwt = await tlsGet(`${base}/v1/me`, { ...client, token: jwt });
    expect(viaJwt.status).toBe(200);
    expect(JSON.parse(viaJwt.body!)).toMatchObject({ tokenId: "oidc:bob", projectId: "project-b", roles: ["member", "reader"] });
    const wrongAud = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, "base64url").toString()), aud: "x" })).toString("base64url")}.${jwt.split(".")[2]}`;
    const refused = await tlsGet(`${base}/v1/me`, { ...client, token: wrongAud });
    expect(refused.status).toBe(401);
    expect(JSON.parse(refused.body!).message).toBe("the token is not valid");
    // The reason is in the operator's log (stderr), the token is not.
    expect(await s.logged(/"event":"oidc-refused"/)).toMatch(/"event":"oidc-refused","detail":"the signature does not verify/);
    expect(s.stderr()).not.toContain(jwt.split(".")[2]);

    const exited = new Promise<number | null>((res) => serve!.once("exit", (code) => res(code)));
    serve.kill("SIGTERM");
    expect(await exited).toBe(0);
  });

  test("malformed service settings are refused, naming the setting", async () => {
    const attempt = async (service: unknown, mode = 0o600) => {
      const f = pki("bad.json");
      rmSync(f, { force: true });
      writeFileSync(f, JSON.stringify({ inventoryUrl: `sqlite://${pki("bad.db")}`, service }), { mode });
      const r = await cli(["serve", "--config", f, "--listen", "127.0.0.1:0"]);
      expect(r.code).toBe(1);
      return r.stderr;
    };
    expect(await attempt({ oidc: { audience: "x" } })).toMatch(/service\.oidc\.issuer: required/);
    expect(await attempt({ oidc: { issuer: "https://idp.example", audience: "x", algorithms: ["HS256"] } })).toMatch(/service\.oidc\.algorithms: "HS256" is not allowed/);
    expect(await attempt({ tls: { cert: "server.pem" } })).toMatch(/service\.tls\.key: required/);
    expect(await attempt({ tls: { cert: "missing.pem", key: "server-key.pem" } })).toMatch(/service\.tls\.cert: cannot read .*missing\.pem: ENOENT/);
    expect(await attempt({ tlss: {} })).toMatch(/service\.tlss: unknown setting/);
    chmodSync(pki("client-key.pem"), 0o644);
    expect(await attempt({ tls: { cert: "server.pem", key: "client-key.pem" } })).toMatch(/service\.tls\.key: .*can be read by others \(mode 644\).*chmod 600/);
  });
});
