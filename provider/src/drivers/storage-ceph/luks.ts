/**
 * LUKS2 at the source for RBD volumes, with Ceph's own client-side encryption:
 *
 * - formatLuks2: `rbd encryption format POOL/VOLUME luks2 PASSPHRASE_FILE` (Ceph 16 has it: librbd
 *   writes a LUKS2 header, 16 MiB, aes-xts-plain64 with a 512-bit key by default, argon2id, 4096-byte
 *   sectors). The passphrase reaches rbd as a file path (the caller's 0600 file), never a command
 *   line. A volume that already starts with a LUKS header is refused (formatting again would make
 *   its data unreadable for good).
 * - readHead: the first bytes of a volume into a 0600 file (`rbd export --export-format 1 POOL/VOLUME -`,
 *   stopped once enough is read), so that cryptsetup can check the header we wrote (`luksDump`,
 *   `open --test-passphrase`) without device-mapper, and without reading the whole volume.
 *
 * The data path: a node (or qemu/librbd with `encrypt.format=luks2`) opens the volume with the key;
 * the cluster only ever holds ciphertext past the header.
 */
import * as fs from "node:fs";
import { BaremetalError, isBaremetalError, validationError } from "../../core/errors";
import type { CephStorageDriver } from "./driver";

const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
/** The header `rbd encryption format luks2` writes (metadata + keyslots area). */
export const LUKS2_HEADER_BYTES = 16 * 1024 * 1024;

export interface FormatLuks2Options {
  /** Data cipher key size: aes-256 (default: aes-xts-plain64 with a 512-bit key) or aes-128. */
  cipherAlg?: "aes-128" | "aes-256";
}

function checkKeyFile(keyFile: unknown): string {
  if (typeof keyFile !== "string" || !keyFile.startsWith("/")) throw validationError("keyFile", "give the passphrase as the absolute path of a 0600 file");
  let st: fs.Stats;
  try {
    st = fs.statSync(keyFile);
  } catch {
    throw validationError("keyFile", `the passphrase file ${keyFile} does not exist`);
  }
  if (!st.isFile()) throw validationError("keyFile", `${keyFile} is not a regular file`);
  if (st.mode & 0o077) throw validationError("keyFile", `the passphrase file ${keyFile} is readable by others (mode ${(st.mode & 0o777).toString(8)}): make it 0600`);
  if (st.size === 0) throw validationError("keyFile", `the passphrase file ${keyFile} is empty`);
  return keyFile;
}

/** Writes a LUKS2 header on `volume` with the passphrase in `keyFile` (Ceph's client-side encryption). */
export async function formatLuks2(driver: CephStorageDriver, volume: string, keyFile: string, opts: FormatLuks2Options = {}): Promise<void> {
  const file = checkKeyFile(keyFile);
  if (opts.cipherAlg !== undefined && opts.cipherAlg !== "aes-128" && opts.cipherAlg !== "aes-256") {
    throw validationError("cipherAlg", `cipherAlg must be aes-128 or aes-256, not ${JSON.stringify(opts.cipherAlg)}`);
  }
  const head = await readHead(driver, volume, LUKS_MAGIC.length);
  if (head.equals(LUKS_MAGIC)) {
    throw new BaremetalError("conflict", `volume ${driver.pool}/${volume} already holds a LUKS header; formatting it again would lose its data for good (rotate its keys instead)`);
  }
  await driver.rbd.run(
    ["encryption", "format", ...(opts.cipherAlg ? ["--cipher-alg", opts.cipherAlg] : []), `${driver.pool}/${volume}`, "luks2", file],
    `writing a LUKS2 header on ${driver.pool}/${volume}`,
  );
}

/**
 * The first `bytes` of `volume` (all of it when shorter): returned, and written to `toFile` (0600,
 * created anew) when given.
 */
export async function readHead(driver: CephStorageDriver, volume: string, bytes: number, toFile?: string): Promise<Buffer> {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw validationError("bytes", "give a positive number of bytes");
  if (!(await driver.getVolume(volume))) throw new BaremetalError("not-found", `volume ${driver.pool}/${volume} does not exist`);
  const what = `reading the first ${bytes} bytes of ${driver.pool}/${volume}`;
  const { child, stderr } = driver.rbd.spawn(["export", "--no-progress", "--export-format", "1", `${driver.pool}/${volume}`, "-"]);
  const chunks: Buffer[] = [];
  let have = 0;
  let enough = false;
  const timer = setTimeout(() => child.kill("SIGKILL"), driver.rbd.commandTimeoutMs);
  try {
    await new Promise<void>((resolve, reject) => {
      child.once("error", reject);
      child.stdout!.on("data", (d: Buffer) => {
        if (enough) return;
        chunks.push(d);
        have += d.length;
        if (have >= bytes) {
          enough = true;
          child.kill("SIGKILL");
        }
      });
      child.once("close", (code) => {
        if (enough || code === 0) return resolve();
        reject(driver.rbd.failed(code, stderr(), what));
      });
    });
  } catch (e) {
    throw isBaremetalError(e) ? e : new BaremetalError("internal", `${what}: ${(e as Error).message}`, { cause: e });
  } finally {
    clearTimeout(timer);
  }
  const head = Buffer.concat(chunks).subarray(0, bytes);
  if (toFile !== undefined) {
    fs.rmSync(toFile, { force: true });
    fs.writeFileSync(toFile, head, { mode: 0o600, flag: "wx" });
  }
  return head;
}
