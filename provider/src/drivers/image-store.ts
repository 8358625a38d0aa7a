/**
 * The image store client: where deployments put the images they generate (config drives) for
 * BMCs to fetch. The contract is plain HTTP, as a site's web server with WebDAV-style PUT serves
 * it (nginx dav, Apache mod_dav; the embedded lab runs one): PUT and DELETE `<base>/<name>` with
 * the writer's credentials (HTTP Basic, from the URL's user info), GET `<base>/<name>` without.
 *
 * The URL handed to a BMC never carries the credentials. TLS is verified (the system's CAs).
 */
import * as https from "node:https";
import axios, { type AxiosInstance } from "axios";
import { BaremetalError } from "../core/errors";

const NAME = /^[A-Za-z0-9._-]{1,200}$/;
const ATTEMPTS = 3;

export interface ImageStore {
  /** Stores `data` as `name` (replacing it: PUT is idempotent) and returns the URL BMCs fetch. */
  put(name: string, data: Buffer): Promise<string>;
  /** Removes `name`; one that is gone already is fine. */
  delete(name: string): Promise<void>;
  /** The URL BMCs fetch `name` from (no credentials). */
  publicUrl(name: string): string;
}

/** Redacts the password of a URL for messages. */
const redact = (url: string) => url.replace(/\/\/([^:@/]*):[^@/]*@/, "//$1:***@");

export function imageStore(storeUrl: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): ImageStore {
  let base: URL;
  try {
    base = new URL(storeUrl.replace(/\/+$/, ""));
  } catch {
    throw new BaremetalError("validation", `imageStoreUrl '${redact(storeUrl)}' is not a URL`, { property: "imageStoreUrl" });
  }
  const username = decodeURIComponent(base.username);
  const password = decodeURIComponent(base.password);
  base.username = "";
  base.password = "";
  const root = base.toString().replace(/\/+$/, "");
  const http: AxiosInstance = axios.create({
    timeout: opts.timeoutMs ?? 60_000,
    maxBodyLength: Infinity,
    maxContentLength: Infinity,
    validateStatus: () => true,
    httpsAgent: new https.Agent({ rejectUnauthorized: true }),
    ...(username ? { auth: { username, password } } : {}),
  });
  const urlOf = (name: string) => {
    if (!NAME.test(name)) throw new BaremetalError("validation", `'${name}' is not an image name ([A-Za-z0-9._-], at most 200)`);
    return `${root}/${name}`;
  };

  async function send(method: "PUT" | "DELETE", name: string, data?: Buffer): Promise<number> {
    const url = urlOf(name);
    for (let attempt = 1; ; attempt++) {
      let status: number;
      try {
        const res = await http.request({ method, url, data, signal: opts.signal, headers: data ? { "content-type": "application/octet-stream" } : {} });
        status = res.status;
      } catch (e) {
        // PUT and DELETE of one name are idempotent: trying again is safe.
        if (attempt < ATTEMPTS && !opts.signal?.aborted) continue;
        throw new BaremetalError("transient", `the image store at ${root} did not answer ${method} ${name}: ${(e as Error).message}`, { property: "imageStoreUrl" });
      }
      if (status === 401 || status === 403) {
        throw new BaremetalError("auth", `the image store at ${root} refused ${method} ${name} (HTTP ${status}); give the writer's credentials in imageStoreUrl (https://user:password@host/path)`, {
          property: "imageStoreUrl",
          httpStatus: status,
        });
      }
      if (status >= 500 && attempt < ATTEMPTS) continue;
      return status;
    }
  }

  return {
    publicUrl: urlOf,
    async put(name, data) {
      const status = await send("PUT", name, data);
      if (status < 200 || status >= 300) {
        throw new BaremetalError("backend", `the image store at ${root} answered HTTP ${status} to PUT ${name}; it must accept PUT (WebDAV-style) at imageStoreUrl`, {
          property: "imageStoreUrl",
          httpStatus: status,
        });
      }
      return urlOf(name);
    },
    async delete(name) {
      const status = await send("DELETE", name);
      if (status !== 404 && (status < 200 || status >= 300)) {
        throw new BaremetalError("backend", `the image store at ${root} answered HTTP ${status} to DELETE ${name}`, { property: "imageStoreUrl", httpStatus: status });
      }
    },
  };
}
