/**
 * LUKS2 key rotation and re-encryption on this machine, with the real cryptsetup:
 *   1. rotateKeyslot (add the new key's keyslot, remove the old one, verify old refused and new
 *      accepted) on a 1 GiB and a 100 GiB sparse volume file, for three PBKDF settings of the new
 *      keyslot: cryptsetup's default (argon2id, benchmarked to ~2 s), pbkdf2 with --iter-time 100
 *      (still benchmarked), pbkdf2 with a forced 1000 iterations (no benchmark, tests only).
 *      The time must not depend on the volume's size: only the header is touched.
 *   2. `cryptsetup benchmark --cipher aes-xts-plain64 --key-size 512` (in-memory cipher speed of the
 *      kernel's crypto API; where the kernel has no AF_ALG skcipher, as in small VMs, it says so), and
 *      `openssl speed -evp aes-256-xts`: the userspace cipher that offline reencrypt really uses.
 *   3. reencrypt of a 256 MiB volume, offline, with cryptsetup's default step and with 16 MiB steps.
 *
 *   npx tsx bench/luks-rotation.ts [--quick]   (--quick: skip the argon2id rows)
 *
 * Prints figures; asserts only what each step must leave (old key refused, new accepted).
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { Luks, PbkdfOptions } from "../provider/src/drivers/luks";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

async function sparse(file: string, size: number): Promise<void> {
  const fh = await fs.open(file, "w");
  await fh.truncate(size);
  await fh.close();
}

async function allocated(file: string): Promise<number> {
  return (await fs.stat(file)).blocks * 512;
}

const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

async function main(): Promise<void> {
  const quick = process.argv.includes("--quick");
  const luks = new Luks();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "bench-luks-"));
  try {
    console.log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "?"}, ${(os.totalmem() / GiB).toFixed(1)} GiB RAM, ${(await promisify(execFile)("cryptsetup", ["--version"])).stdout.trim()}`);

    // ---- 1. keyslot rotation vs volume size -------------------------------------------------
    const modes: { name: string; o: PbkdfOptions }[] = [
      ...(quick ? [] : [{ name: "argon2id (cryptsetup default)", o: {} }]),
      { name: "pbkdf2 --iter-time 100", o: { pbkdf: "pbkdf2", iterTimeMs: 100 } },
      { name: "pbkdf2 forced 1000 iterations", o: { pbkdf: "pbkdf2", forceIterations: 1000 } },
    ];
    console.log("\nrotateKeyslot (add new keyslot, remove old, verify), per volume:");
    console.log(`  ${"pbkdf of the keyslots".padEnd(32)} ${"volume".padEnd(8)} ${"rotation".padStart(9)}  steps (ms)`);
    for (const mode of modes) {
      for (const [label, size] of [["1 GiB", GiB], ["100 GiB", 100 * GiB]] as const) {
        const f = path.join(dir, "vol.img");
        await sparse(f, size);
        const [oldK, newK] = [randomBytes(64), randomBytes(64)];
        await luks.format(f, oldK, { ...mode.o, label: "bench" });
        const r = await luks.rotateKeyslot(f, oldK, newK, mode.o);
        if ((await luks.testKey(f, oldK)) || !(await luks.testKey(f, newK))) throw new Error("rotation left the wrong key in place");
        const steps = r.steps.map((s) => `${s.step} ${s.ms}`).join(", ");
        console.log(`  ${mode.name.padEnd(32)} ${label.padEnd(8)} ${fmt(r.ms).padStart(9)}  ${steps}; file allocated ${(await allocated(f)) / MiB} MiB`);
        await fs.rm(f);
      }
    }

    // ---- 2. cryptsetup benchmark ------------------------------------------------------------
    console.log("\ncryptsetup benchmark --cipher aes-xts-plain64 --key-size 512 (in memory, encryption / decryption):");
    try {
      const b = await promisify(execFile)("cryptsetup", ["benchmark", "--cipher", "aes-xts-plain64", "--key-size", "512"]);
      console.log(`  ${b.stdout.split("\n").find((l) => /aes-xts\s+512b/.test(l))?.trim() ?? b.stdout.trim()}`);
    } catch (e) {
      // It measures the KERNEL's cipher through AF_ALG (algif_skcipher), which small VMs may lack.
      const why = ((e as { stderr?: string }).stderr ?? String(e)).trim().split("\n").join(" / ");
      console.log(`  unavailable here: ${why}`);
    }
    // Offline reencrypt runs the cipher in userspace, in libcryptsetup's crypto backend (OpenSSL's
    // libcrypto 3 on Debian): the same cipher, measured by OpenSSL itself, 4 KiB blocks (the sector size).
    try {
      const o = await promisify(execFile)("openssl", ["speed", "-evp", "aes-256-xts", "-bytes", "4096", "-seconds", "2"]);
      const m = /AES-256-XTS\s+([\d.]+)k/i.exec(o.stdout);
      console.log(`  openssl speed -evp aes-256-xts, 4096-byte blocks (the backend libcryptsetup uses here): ${m ? `${((Number(m[1]) * 1000) / MiB).toFixed(0)} MiB/s` : o.stdout.trim()}`);
    } catch (e) {
      console.log(`  openssl speed failed: ${e instanceof Error ? e.message : e}`);
    }

    // ---- 3. re-encryption throughput ---------------------------------------------------------
    console.log("\nreencrypt (offline, --force-offline-reencrypt) of a 256 MiB volume (header 16 MiB + 256 MiB data):");
    for (const hotzoneMiB of [undefined, 64, 16]) {
      const f = path.join(dir, "re.img");
      await sparse(f, 256 * MiB + 16 * MiB);
      const k = randomBytes(64);
      const fast: PbkdfOptions = { pbkdf: "pbkdf2", forceIterations: 1000 };
      await luks.format(f, k, fast);
      let last: { speed?: number } = {};
      let events = 0;
      const r = await luks.reencrypt(f, k, { ...fast, ...(hotzoneMiB ? { hotzoneMiB } : {}), onProgress: (p) => ((last = p), events++) });
      if (!(await luks.testKey(f, k))) throw new Error("the key does not open the volume after reencrypt");
      const mbps = r.bytes / MiB / (r.ms / 1000);
      console.log(
        `  step ${hotzoneMiB ? `${hotzoneMiB} MiB`.padEnd(9) : "default  "} ${fmt(r.ms)} wall (incl. key tests and dumps) = ${mbps.toFixed(0)} MiB/s; cryptsetup's own figure ${last.speed ? (last.speed / MiB).toFixed(0) : "?"} MiB/s; ${events} progress events`,
      );
      await fs.rm(f);
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
