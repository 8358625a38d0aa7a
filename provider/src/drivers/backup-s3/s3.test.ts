/**
 * The s3 backup target against a real Ceph 16 radosgw (test/harness/radosgw.ts), which checks every
 * SigV4 signature and payload hash.
 */
import { execFileSync } from "node:child_process";
import { createHash, randomBytes, randomFillSync } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import * as tls from "node:tls";
import { BaremetalError, isBaremetalError } from "../../core/errors";
import { startCeph, type CephInstance } from "../../../../test/harness/ceph";
import { describeWithPeer, freePort } from "../../../../test/harness/processes";
import { radosgwAvailable, startRadosgw, type RadosgwInstance } from "../../../../test/harness/radosgw";
import { backupTargetFor } from "../backup-targets";
import type { BackupTargetConnection } from "../kinds/backup-target";
import { S3BackupTarget, type S3DriverOptions } from "./driver";

jest.setTimeout(300000);
const MiB = 1024 * 1024;

let ceph: CephInstance | undefined;
let rgw: RadosgwInstance;
const opened: S3BackupTarget[] = [];

function target(over: Partial<BackupTargetConnection> = {}, opts: S3DriverOptions = {}): S3BackupTarget {
  const t = new S3BackupTarget({ address: rgw.address, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey, ...over }, opts);
  opened.push(t);
  return t;
}

async function failure(p: Promise<unknown>): Promise<BaremetalError> {
  try {
    await p;
  } catch (e) {
    if (isBaremetalError(e)) return e;
    throw e;
  }
  throw new Error("expected a failure");
}

async function sha(it: AsyncIterable<Buffer>): Promise<{ hex: string; bytes: number }> {
  const h = createHash("sha256");
  let bytes = 0;
  for await (const c of it) {
    h.update(c);
    bytes += c.length;
  }
  return { hex: h.digest("hex"), bytes };
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of it) out.push(c);
  return Buffer.concat(out);
}

/** A body of `total` pseudo-random bytes in `chunk`-sized pieces, with its sha256 at the end. */
function generated(total: number, chunk: number, onChunk?: (sent: number) => void, reuse = false): { body: AsyncIterable<Buffer>; digest: () => string } {
  const h = createHash("sha256");
  // `reuse`: one buffer refilled for every chunk (a producer that makes no garbage; the driver
  // copies each chunk before it asks for the next).
  const shared = reuse ? Buffer.alloc(chunk) : undefined;
  return {
    body: (async function* () {
      let sent = 0;
      while (sent < total) {
        const n = Math.min(chunk, total - sent);
        const c = shared ? randomFillSync(shared.subarray(0, n)) : randomBytes(n);
        h.update(c);
        sent += c.length;
        yield c;
        onChunk?.(sent);
      }
    })(),
    digest: () => h.digest("hex"),
  };
}

describeWithPeer(radosgwAvailable(), "s3 backup target against radosgw")("s3 backup target (Ceph radosgw, real SigV4)", () => {
  beforeAll(async () => {
    ceph = await startCeph({ mgr: false });
    rgw = await startRadosgw(ceph, { buckets: ["backups", "other"] });
    console.log(`ceph up in ${ceph.startMs} ms, radosgw ready ${rgw.startMs} ms after (${JSON.stringify(rgw.timings)})`);
  });
  afterAll(async () => {
    for (const t of opened) await t.close();
    await rgw?.stop();
    await ceph?.stop();
  });

  test("check passes; a wrong secret or an unknown access key is `auth` naming the target and the keys to check, never the secret", async () => {
    await target().check();
    const wrong = "Wrong" + rgw.secretAccessKey.slice(5);
    const bad = target({ secretAccessKey: wrong });
    for (const [what, call] of [
      ["check", () => bad.check()],
      ["put", () => bad.put("x", Buffer.from("data"))],
      ["get", () => bad.get("x")],
      ["list", async () => { for await (const _ of bad.list("")) void _; }],
      ["delete", () => bad.delete(["x"])],
    ] as const) {
      const e = await failure(call());
      expect([what, e.code]).toEqual([what, "auth"]);
      expect(e.message).toContain(rgw.address.replace(/\?.*/, "").replace("s3://", "s3://"));
      expect(e.message).toMatch(/access key id and secret/);
      expect(JSON.stringify({ m: e.message, d: e.details })).not.toContain(wrong);
      expect(JSON.stringify({ m: e.message, d: e.details })).not.toContain(rgw.secretAccessKey);
    }
    const e = await failure(bad.put("x", Buffer.from("data")));
    expect(e.messageId).toBe("SignatureDoesNotMatch");
    expect(e.httpStatus).toBe(403);
    const unknown = await failure(target({ accessKeyId: "NOSUCHKEY0000000000" }).put("x", Buffer.from("data")));
    expect([unknown.code, unknown.messageId]).toEqual(["auth", "InvalidAccessKeyId"]);
    expect(await target().head("x")).toBeUndefined(); // nothing was written by the refused puts
  });

  test("a payload hash the caller gives (sha256) is what the store checks: right, it stores; wrong, nothing is stored", async () => {
    const t = target();
    const body = Buffer.from(new SharedArrayBuffer(64 * 1024)); // shared memory, as the engine's chunks
    body.fill(7);
    const sha256 = createHash("sha256").update(body).digest("hex");
    await t.put("hashed", body, { sha256, sizeBytes: body.length });
    expect((await t.head("hashed"))?.sizeBytes).toBe(body.length);
    const e = await failure(t.put("mismatch", body, { sha256: "0".repeat(64) }));
    expect(e.messageId).toBe("XAmzContentSHA256Mismatch");
    expect(await t.head("mismatch")).toBeUndefined();
  });

  test("a missing bucket is `not-found` saying to create it; an unreachable store is `transient` with unsent", async () => {
    const nb = target({ address: `s3://127.0.0.1:${rgw.port}/no-such-bucket?tls=false` });
    for (const call of [() => nb.check(), () => nb.put("k", Buffer.from("x")), () => nb.head("k"), () => nb.get("k")]) {
      const e = await failure(call());
      expect(e.code).toBe("not-found");
      expect(e.message).toMatch(/bucket 'no-such-bucket' does not exist .*create it/);
    }
    const port = await freePort();
    const down = target({ address: `s3://127.0.0.1:${port}/backups?tls=false` });
    const e = await failure(down.check());
    expect([e.code, e.unsent]).toEqual(["transient", true]);
    expect(e.message).toMatch(/cannot reach the backup target s3:\/\/127\.0\.0\.1:\d+\/backups \(ECONNREFUSED\)/);
  });

  test("a 40 MiB object goes multipart (3 parts of 16 MiB, the default) and reads back byte for byte, whole and by ranges; metadata and head", async () => {
    const t = target();
    const data = randomBytes(40 * MiB);
    async function* body() {
      for (let i = 0; i < data.length; i += 3 * MiB + 1) yield data.subarray(i, i + 3 * MiB + 1);
    }
    const info = await t.put("vol-1/full/0001", body(), { metadata: { sha256: createHash("sha256").update(data).digest("hex") } });
    expect(info.sizeBytes).toBe(40 * MiB);
    expect(info.etag).toMatch(/-3$/); // S3's multipart ETag: md5 of the part md5s, dash, part count
    expect(await t.listUploads()).toEqual([]);
    const h = await t.head("vol-1/full/0001");
    expect(h).toMatchObject({ key: "vol-1/full/0001", sizeBytes: 40 * MiB, etag: info.etag, metadata: { sha256: createHash("sha256").update(data).digest("hex") } });
    expect((await collect(await t.get("vol-1/full/0001"))).equals(data)).toBe(true);
    // Ranges: inside a part, across the boundary of parts 1 and 2, the last byte, an empty one.
    for (const [start, end] of [[5, 105], [16 * MiB - 1000, 16 * MiB + 1000], [40 * MiB - 1, 40 * MiB], [7, 7]]) {
      expect((await collect(await t.get("vol-1/full/0001", { range: { start, end } }))).equals(data.subarray(start, end))).toBe(true);
    }
    expect((await failure(t.get("vol-1/full/0001", { range: { start: 41 * MiB, end: 42 * MiB } }))).code).toBe("validation");
    expect((await failure(t.get("vol-1/full/missing"))).code).toBe("not-found");
    // A small object is one PutObject (plain md5 ETag) and replaces whole.
    const small = await t.put("vol-1/full/0001", Buffer.from("replaced"));
    expect(small.etag).toBe(createHash("md5").update("replaced").digest("hex"));
    expect((await collect(await t.get("vol-1/full/0001"))).toString()).toBe("replaced");
    await t.delete(["vol-1/full/0001"]);
  });

  test("list pages (page size 7, and 1005 keys over S3's 1000) under a prefix in byte order; delete batches 1000 at a time and is idempotent", async () => {
    const t = target({}, { listPageSize: 7 });
    const keys = Array.from({ length: 25 }, (_, i) => `paging/k${String(i).padStart(3, "0")}`);
    await Promise.all(keys.map((k) => t.put(k, Buffer.from(k))));
    await t.put("pagingX", Buffer.from("outside the prefix 'paging/'"));
    const listed = [];
    for await (const o of t.list("paging/")) listed.push(o);
    expect(listed.map((o) => o.key)).toEqual(keys);
    expect(listed[3]).toMatchObject({ key: "paging/k003", sizeBytes: 11, etag: createHash("md5").update("paging/k003").digest("hex") });
    await t.delete([...keys, "pagingX"]);

    const big = target({ concurrency: 16 });
    const many = Array.from({ length: 1005 }, (_, i) => `many/${String(i).padStart(4, "0")}`);
    for (let i = 0; i < many.length; i += 50) await Promise.all(many.slice(i, i + 50).map((k) => big.put(k, Buffer.alloc(1, i))));
    const got: string[] = [];
    for await (const o of big.list("many/")) got.push(o.key);
    expect(got).toEqual(many);
    await big.delete([...many, "many/never-existed"]);
    await big.delete(many.slice(0, 3)); // again: absent keys are fine
    const after: string[] = [];
    for await (const o of big.list("many/")) after.push(o.key);
    expect(after).toEqual([]);
  });

  test("a prefix in the address scopes every key; another bucket's objects are not seen", async () => {
    const scoped = target({ address: `s3://127.0.0.1:${rgw.port}/backups/site-a/nightly?tls=false` });
    const whole = target();
    await scoped.put("v1/0001", Buffer.from("scoped"));
    expect((await whole.head("site-a/nightly/v1/0001"))?.sizeBytes).toBe(6);
    const seen: string[] = [];
    for await (const o of scoped.list("")) seen.push(o.key);
    expect(seen).toEqual(["v1/0001"]);
    const other = target({ address: `s3://127.0.0.1:${rgw.port}/other?tls=false` });
    expect(await other.head("site-a/nightly/v1/0001")).toBeUndefined();
    await scoped.delete(["v1/0001"]);
    expect(await whole.head("site-a/nightly/v1/0001")).toBeUndefined();
  });

  test("a body that fails mid-upload, and a signal aborted mid-stream, leave no object and no multipart upload (ListMultipartUploads)", async () => {
    const t = target({ partBytes: 5 * MiB, concurrency: 2 });
    async function* failing() {
      yield randomBytes(12 * MiB); // two full parts go out
      throw new Error("source read error at 12 MiB");
    }
    await expect(t.put("broken/0001", failing())).rejects.toThrow(/^source read error at 12 MiB$/);
    expect(await t.head("broken/0001")).toBeUndefined();
    expect(await t.listUploads()).toEqual([]);

    const ac = new AbortController();
    const src = generated(60 * MiB, 1 * MiB, (sent) => {
      if (sent === 23 * MiB) ac.abort();
    });
    const e = await failure(t.put("cancelled/0001", src.body, { signal: ac.signal }));
    expect(e.code).toBe("cancelled");
    expect(e.message).toMatch(/multipart upload was aborted/);
    expect(await t.head("cancelled/0001")).toBeUndefined();
    expect(await t.listUploads()).toEqual([]);

    // An upload left behind (by a crash of ours) shows in the listing until aborted.
    const t2 = target();
    const created = await t2["client"].request({ method: "POST", key: "crash/0001", query: { uploads: "" }, what: "test" });
    expect((await t2.listUploads()).map((u) => u.key)).toEqual(["crash/0001"]);
    const [u] = await t2.listUploads();
    expect(created.status).toBe(200);
    await t2.abortUpload(u.key, u.uploadId);
    await t2.abortUpload(u.key, u.uploadId); // idempotent
    expect(await t2.listUploads()).toEqual([]);

    // A declared size that the body does not match: refused, nothing left.
    const short = await failure(t.put("short/0001", generated(11 * MiB, MiB).body, { sizeBytes: 12 * MiB }));
    expect([short.code, short.property]).toEqual(["validation", "sizeBytes"]);
    expect(await t.head("short/0001")).toBeUndefined();
    expect(await t.listUploads()).toEqual([]);
  });

  test("a 200 MiB streamed put keeps memory bounded: RSS grows by less than 4 parts while at most `concurrency` parts are buffered", async () => {
    const partBytes = 16 * MiB;
    const concurrency = 2;
    const t = target({ partBytes, concurrency });
    const total = 200 * MiB;
    const src = generated(total, 1 * MiB, undefined, true);
    // Warm up (sockets, code paths) so that the baseline is a steady state.
    await t.put("mem/warmup", generated(20 * MiB, MiB).body);
    await t.delete(["mem/warmup"]);
    const base = process.memoryUsage().rss;
    const baseBuffers = process.memoryUsage().arrayBuffers;
    let peak = base;
    let peakBuffers = baseBuffers;
    // RSS (what the machine sees; allocator high-water marks of earlier tests can hide growth) and
    // the bytes of live Buffers (exact: the part buffers show there however RSS is reused).
    const timer = setInterval(() => {
      const m = process.memoryUsage();
      peak = Math.max(peak, m.rss);
      peakBuffers = Math.max(peakBuffers, m.arrayBuffers);
    }, 5);
    const t0 = Date.now();
    let info;
    try {
      info = await t.put("mem/200m", src.body);
    } finally {
      clearInterval(timer);
    }
    const ms = Date.now() - t0;
    peak = Math.max(peak, process.memoryUsage().rss);
    const growth = peak - base;
    console.log(`200 MiB put: ${ms} ms (${((total / MiB / ms) * 1000).toFixed(0)} MiB/s), RSS ${Math.round(base / MiB)} -> peak ${Math.round(peak / MiB)} MiB: growth ${(growth / MiB).toFixed(1)} MiB (bound ${(4 * partBytes) / MiB} MiB, parts ${partBytes / MiB} MiB x concurrency ${concurrency}); live Buffers peak +${((peakBuffers - baseBuffers) / MiB).toFixed(1)} MiB`);
    expect(info.sizeBytes).toBe(total);
    expect(info.etag).toMatch(/-13$/);
    expect(growth).toBeLessThan(4 * partBytes);
    expect(peakBuffers - baseBuffers).toBeLessThan(4 * partBytes);
    const back = await sha(await t.get("mem/200m"));
    expect(back).toEqual({ hex: src.digest(), bytes: total });
    await t.delete(["mem/200m"]);
  });

  test("TLS is verified by default: a self-signed endpoint is refused with `tls`; its certificate as caBundle is accepted (TLS proxy in front of radosgw)", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "s3-tls-"));
    try {
      execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], { stdio: "ignore" });
      const cert = fs.readFileSync(path.join(dir, "cert.pem"), "utf8");
      const conns = new Set<net.Socket>();
      const server = tls.createServer({ key: fs.readFileSync(path.join(dir, "key.pem")), cert }, (s) => {
        const up = net.connect(rgw.port, "127.0.0.1");
        conns.add(s).add(up);
        s.pipe(up).pipe(s);
        const end = () => (s.destroy(), up.destroy());
        s.once("error", end);
        up.once("error", end);
      });
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      const port = (server.address() as net.AddressInfo).port;
      try {
        const address = `s3://127.0.0.1:${port}/backups`;
        const e = await failure(target({ address }).check());
        expect(e.code).toBe("tls");
        expect(e.message).toMatch(/caBundle/);
        const trusted = target({ address, caBundle: cert });
        await trusted.check();
        await trusted.put("tls/0001", Buffer.from("over tls"));
        expect((await collect(await trusted.get("tls/0001"))).toString()).toBe("over tls");
        await target({ address, verifyTls: false }).delete(["tls/0001"]);
        // TLS to a store that serves plain HTTP (tls=false forgotten): radosgw answers the TLS hello
        // with an HTTP error, which is no TLS record; the message says what to check.
        const plainToTls = await failure(target({ address: `s3://127.0.0.1:${rgw.port}/backups`, requestTimeoutMs: 5000 }).check());
        expect(plainToTls.code).toBe("tls");
        expect(plainToTls.message).toMatch(/add tls=false/);
      } finally {
        // Kept-alive connections would hold close() until radosgw drops them (about a minute).
        for (const c of conns) c.destroy();
        await new Promise((r) => server.close(r));
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the registry builds the s3 family from settings and credentials", async () => {
    const d = backupTargetFor({ address: rgw.address, partBytes: 8 * MiB }, { accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey }, "backupTargets.rgw");
    try {
      expect(d.family).toBe("s3");
      expect(d.description).toBe(`s3://127.0.0.1:${rgw.port}/backups`);
      expect(d.description).not.toContain(rgw.accessKeyId);
      await d.check();
    } finally {
      await d.close();
    }
  });
});
