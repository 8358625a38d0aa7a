/**
 * The lab's image store: the HTTP server deployments upload generated images to (config drives)
 * and BMCs fetch them from, as a site runs a web server with WebDAV-style PUT for Ironic's
 * `http_url`/`http_root`. It is ours and tier 0 (in process, loopback, no root), named as such;
 * the provider speaks to it only through the generic contract below, which any web server with
 * PUT/DELETE (nginx dav, Apache mod_dav) also serves:
 *
 *   PUT    /images/<name>   (HTTP Basic: the store's writer)  201 created, 204 replaced
 *   DELETE /images/<name>   (HTTP Basic)                       204, or 404 when absent
 *   GET    /images/<name>   (no credentials: BMCs fetch it)    200 with the bytes, 404
 *   HEAD   /images/<name>
 *
 * Names are one path segment of [A-Za-z0-9._-]; bodies up to 64 MiB. Everything lives in memory.
 */
import { timingSafeEqual } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";

const MAX_BYTES = 64 * 1024 * 1024;
const NAME = /^\/images\/([A-Za-z0-9._-]{1,200})$/;

export interface LabImageStore {
  /** http://127.0.0.1:<port>/images (no credentials). */
  readonly url: string;
  /** The same URL with the writer's credentials in it (what the provider's imageStoreUrl gets). */
  readonly writerUrl: string;
  /** The stored images (name -> bytes). */
  readonly images: Map<string, Buffer>;
  /** GETs served so far, by name (how tests see that a BMC fetched an image). */
  readonly fetches: Map<string, number>;
  close(): Promise<void>;
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export async function startImageStore(opts: { username: string; password: string; port?: number }): Promise<LabImageStore> {
  const images = new Map<string, Buffer>();
  const fetches = new Map<string, number>();
  const expected = `Basic ${Buffer.from(`${opts.username}:${opts.password}`).toString("base64")}`;

  const server = http.createServer((req, res) => {
    const name = NAME.exec(new URL(req.url ?? "/", "http://store").pathname)?.[1];
    const end = (status: number, body?: Buffer | string, headers: Record<string, string> = {}) => {
      res.writeHead(status, { ...headers, ...(body !== undefined ? { "content-length": String(Buffer.byteLength(body)) } : {}) });
      res.end(req.method === "HEAD" ? undefined : body);
    };
    if (!name) return end(404, "no such image\n");
    if (req.method === "GET" || req.method === "HEAD") {
      const image = images.get(name);
      if (!image) return end(404, "no such image\n");
      if (req.method === "GET") fetches.set(name, (fetches.get(name) ?? 0) + 1);
      return end(200, image, { "content-type": "application/octet-stream" });
    }
    if (req.method !== "PUT" && req.method !== "DELETE") return end(405, "method not allowed\n", { allow: "GET, HEAD, PUT, DELETE" });
    if (!sameSecret(req.headers.authorization ?? "", expected)) return end(401, "credentials required\n", { "www-authenticate": 'Basic realm="lab images"' });
    if (req.method === "DELETE") return end(images.delete(name) ? 204 : 404);
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BYTES) {
        end(413, "image too large\n");
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => {
      if (size > MAX_BYTES) return;
      const existed = images.has(name);
      images.set(name, Buffer.concat(chunks));
      end(existed ? 204 : 201);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}/images`;
  return {
    url,
    writerUrl: `http://${encodeURIComponent(opts.username)}:${encodeURIComponent(opts.password)}@127.0.0.1:${port}/images`,
    images,
    fetches,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
