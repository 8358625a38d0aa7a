/**
 * The cell operations give the same results in worker threads and on the main thread: ids equal
 * to SHA-256 / HMAC-SHA256 computed here, aes-ghash ids equal to the construction computed here
 * from NIST SP 800-38D's GHASH (written out below, independent of OpenSSL's GCM), chunks sealed
 * by one open with the other, payload hashes right, damage caught.
 */
import { createCipheriv, createHash, createHmac, hkdfSync, randomBytes } from "node:crypto";
import { isBaremetalError } from "../core/errors";
import { cellCrypto, type Keys, sharedBuffer } from "./cell-crypto";

const CELL = 1024 * 1024 + 5; // not a multiple of the 256 KiB pieces

function cellOf(seed: number, size = CELL): Buffer {
  const b = sharedBuffer(size);
  randomBytes(size).copy(b);
  b[0] = seed;
  return b;
}

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** One AES-256 block (ECB, no padding). */
function aesBlock(key: Buffer, block: Buffer): Buffer {
  const c = createCipheriv("aes-256-ecb", key, null);
  c.setAutoPadding(false);
  return Buffer.concat([c.update(block), c.final()]);
}

const big = (b: Buffer) => BigInt("0x" + (b.toString("hex") || "0"));
const bytes16 = (n: bigint) => Buffer.from(n.toString(16).padStart(32, "0"), "hex");

/** Multiplication in GF(2^128) as SP 800-38D (6.3) defines it: bit 0 is the leftmost bit. */
function gmul(x: bigint, y: bigint): bigint {
  const R = 0xe1n << 120n;
  let z = 0n;
  let v = y;
  for (let i = 127n; i >= 0n; i--) {
    if ((x >> i) & 1n) z ^= v;
    v = v & 1n ? (v >> 1n) ^ R : v >> 1n;
  }
  return z;
}

/** GCM's GHASH over associated data `a` and no ciphertext (SP 800-38D 6.4, 7.1 step 5). */
function ghash(h: bigint, a: Buffer): bigint {
  let y = 0n;
  for (let i = 0; i < a.length; i += 16) {
    const block = Buffer.alloc(16);
    a.copy(block, 0, i, Math.min(a.length, i + 16));
    y = gmul(y ^ big(block), h);
  }
  const lengths = Buffer.alloc(16);
  lengths.writeBigUInt64BE(BigInt(a.length) * 8n, 0);
  return gmul(y ^ big(lengths), h);
}

/** The aes-ghash id of `cell` under `key`, computed from the definitions (see cell-crypto.ts). */
function aesGhashId(key: Buffer, cell: Buffer): string {
  const derive = (info: string) => Buffer.from(hkdfSync("sha256", key, Buffer.alloc(0), Buffer.from(`baremetal-backup/1 chunk id ${info}`), 32));
  const k1 = derive("ghash");
  const k2 = derive("aes");
  const h = big(aesBlock(k1, Buffer.alloc(16)));
  const j0 = Buffer.alloc(16);
  j0[15] = 1; // 96-bit zero nonce || 0^31 || 1
  const tag = bytes16(ghash(h, cell) ^ big(aesBlock(k1, j0)));
  return aesBlock(k2, tag).toString("hex");
}

describe("cell crypto", () => {
  const dek = randomBytes(32);
  const hmacKeys: Keys = { mode: "envelope", ids: "hmac-sha256", dedup: randomBytes(32), dek, deks: new Map([["b1", dek]]) };
  const ghashKeys: Keys = { ...hmacKeys, ids: "aes-ghash", dedup: randomBytes(32) };

  test("aes-ghash ids are the construction of SP 800-38D's GHASH and AES, in workers and inline", async () => {
    const inline = cellCrypto({ mode: "source", ids: "aes-ghash", dedup: ghashKeys.dedup, deks: new Map() }, 0);
    const workers = cellCrypto({ mode: "source", ids: "aes-ghash", dedup: ghashKeys.dedup, deks: new Map() }, 2);
    try {
      // Lengths: empty, one byte, a whole block, not a multiple of 16, several KiB.
      for (const size of [1, 16, 47, 4101]) {
        const cell = cellOf(size, size);
        const want = aesGhashId(ghashKeys.dedup!, cell);
        expect(want).toMatch(/^[0-9a-f]{32}$/);
        expect((await inline.cell(cell))?.id).toBe(want);
        expect((await workers.cell(cell))?.id).toBe(want);
      }
      // Keyed: another key gives another id; one changed bit gives another id; zeros of two lengths differ.
      const cell = cellOf(7, 4096);
      const other = cellCrypto({ mode: "source", ids: "aes-ghash", dedup: randomBytes(32), deks: new Map() }, 0);
      expect((await other.cell(cell))?.id).not.toBe((await inline.cell(cell))?.id);
      await other.close();
      const flipped = sharedBuffer(4096);
      cell.copy(flipped);
      flipped[4000] ^= 0x10;
      expect((await inline.cell(flipped))?.id).not.toBe((await inline.cell(cell))?.id);
      expect((await inline.cell(sharedBuffer(32)))?.id).not.toBe((await inline.cell(sharedBuffer(48)))?.id);
    } finally {
      await inline.close();
      await workers.close();
    }
  });

  test.each([
    [0, hmacKeys],
    [2, hmacKeys],
    [0, ghashKeys],
    [2, ghashKeys],
  ])("envelope, %i workers, %o: sealing in the id's trip, opening with either implementation", async (workers, keys) => {
    const idOf = (b: Buffer) => (keys.ids === "hmac-sha256" ? createHmac("sha256", keys.dedup!).update(b).digest("hex") : aesGhashId(keys.dedup!, b));
    const crypto = cellCrypto(keys, workers);
    const other = cellCrypto(keys, workers ? 0 : 2);
    try {
      const cell = cellOf(1);
      const r = await crypto.cell(cell, { store: true });
      if (keys.ids === "hmac-sha256") expect(r?.id).toBe(idOf(cell));
      else expect(r?.id).toBe((await other.cell(cell))?.id); // the construction itself: the test above (GHASH in BigInt is slow on 1 MiB)
      const sealed = r!.stored!.body;
      expect(sealed.length).toBe(CELL + 28);
      expect(r!.stored!.sha256).toBeUndefined(); // no payload hashes unless asked
      // Ciphertext, not the cell: no 64-byte run of the cell appears in it.
      expect(sealed.indexOf(cell.subarray(1000, 1064))).toBe(-1);
      const opened = await other.open(sealed, r!.id, "b1", sharedBuffer(CELL), "test");
      expect(opened.equals(cell)).toBe(true);
      // A separate seal of the same cell opens too (fresh nonce: different bytes).
      const { body: again, release } = await other.store(cell, r!.id);
      expect(again.equals(sealed)).toBe(false);
      expect((await crypto.open(again, r!.id, "b1", sharedBuffer(CELL), "test")).equals(cell)).toBe(true);
      release();
      release(); // a second release is ignored

      // Damage: a flipped bit, another id, an unknown backup's key.
      const bad = Buffer.from(sealed);
      bad[100] ^= 1;
      const shared = sharedBuffer(bad.length);
      bad.copy(shared);
      await expect(crypto.open(shared, r!.id, "b1", sharedBuffer(CELL), "restoring x")).rejects.toThrow(/restoring x: chunk .* does not decrypt/);
      await expect(crypto.open(sealed, "0".repeat(r!.id.length), "b1", sharedBuffer(CELL), "t")).rejects.toThrow(/does not decrypt/);
      await expect(crypto.open(sealed, r!.id, "b9", sharedBuffer(CELL), "t")).rejects.toThrow(/no data key for chunk .* \(of backup b9\)/);

      // Sealing buffers are reused once released, never while held: a held chunk keeps its bytes.
      const held = Buffer.from(sealed);
      for (let i = 0; i < 4; i++) {
        const s = await crypto.cell(cellOf(10 + i), { store: true });
        expect(sealed.equals(held)).toBe(true);
        s!.stored!.release();
      }
      r!.stored!.release();
      expect((await crypto.cell(cellOf(20), { store: true }))?.stored?.body.length).toBe(CELL + 28);

      // Zero check only when asked; a zero cell asked to be stored is not.
      expect(await crypto.cell(sharedBuffer(CELL), { zero: true, store: true })).toBeNull();
      const zero = sharedBuffer(CELL);
      expect(await crypto.cell(zero, { zero: true })).toBeNull();
      expect((await crypto.cell(zero))?.id).toBe(keys.ids === "hmac-sha256" ? idOf(zero) : (await other.cell(zero))?.id);
    } finally {
      await crypto.close();
      await other.close();
    }
  });

  test.each([0, 2])("envelope, %i workers, a target that signs payloads: the SHA-256 of the sealed body comes with it", async (workers) => {
    const crypto = cellCrypto(ghashKeys, workers, { payloadSha256: true });
    try {
      const cell = cellOf(3);
      const r = await crypto.cell(cell, { store: true });
      expect(r!.stored!.sha256).toBe(sha256(r!.stored!.body));
      const s = await crypto.store(cell, r!.id);
      expect(s.sha256).toBe(sha256(s.body));
      expect(s.sha256).not.toBe(r!.stored!.sha256); // another nonce, another body
    } finally {
      await crypto.close();
    }
  });

  test.each([0, 2])("source, %i workers: SHA-256 ids; opening checks the id and returns the body itself", async (workers) => {
    const crypto = cellCrypto({ mode: "source", ids: "sha256", deks: new Map() }, workers, { payloadSha256: true });
    try {
      const cell = cellOf(2);
      const id = sha256(cell);
      expect((await crypto.cell(cell))?.id).toBe(id);
      // The body is the cell itself, and its payload hash is the id (not hashed twice).
      const r = await crypto.cell(cell, { store: true });
      expect(r?.stored?.body).toBe(cell);
      expect(r?.stored?.sha256).toBe(id);
      expect(await crypto.open(cell, id, undefined, undefined, "t")).toBe(cell);
      const e = await crypto.open(cell, "f".repeat(64), undefined, undefined, "t").catch((x) => x);
      expect(isBaremetalError(e) && e.code).toBe("backend");
      expect(String(e.message)).toMatch(/does not match its checksum/);
    } finally {
      await crypto.close();
    }
  });

  test.each([0, 2])("source, %i workers: aes-ghash ids; the payload hash is computed for what is stored, only when asked", async (workers) => {
    const keys: Keys = { mode: "source", ids: "aes-ghash", dedup: randomBytes(32), deks: new Map() };
    const signing = cellCrypto(keys, workers, { payloadSha256: true });
    const plain = cellCrypto(keys, workers);
    try {
      const cell = cellOf(4);
      const r = await signing.cell(cell, { store: true });
      expect(r?.id).toMatch(/^[0-9a-f]{32}$/);
      expect(r?.stored?.body).toBe(cell);
      expect(r?.stored?.sha256).toBe(sha256(cell));
      expect((await signing.store(cell, r!.id)).sha256).toBe(sha256(cell));
      const p = await plain.cell(cell, { store: true });
      expect(p?.id).toBe(r?.id);
      expect(p?.stored?.sha256).toBeUndefined();
      expect(await plain.open(cell, r!.id, undefined, undefined, "t")).toBe(cell);
      const flipped = sharedBuffer(CELL);
      cell.copy(flipped);
      flipped[CELL - 1] ^= 1;
      await expect(plain.open(flipped, r!.id, undefined, undefined, "t")).rejects.toThrow(/does not match its checksum/);
    } finally {
      await signing.close();
      await plain.close();
    }
  });

  test("a cell in ordinary memory works too (copied to the worker)", async () => {
    const crypto = cellCrypto(ghashKeys, 1);
    try {
      const cell = randomBytes(4096);
      const r = await crypto.cell(cell, { store: true });
      expect(r?.stored?.body.length).toBe(4096 + 28);
      expect((await crypto.open(r!.stored!.body, r!.id, "b1", sharedBuffer(4096), "t")).equals(cell)).toBe(true);
    } finally {
      await crypto.close();
    }
  });
});
