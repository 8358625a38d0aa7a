/**
 * The cell operations give the same results in worker threads and on the main thread: ids equal
 * to SHA-256 / HMAC-SHA256 computed here, chunks sealed by one open with the other, damage caught.
 */
import { createHash, createHmac, randomBytes } from "node:crypto";
import { isBaremetalError } from "../core/errors";
import { cellCrypto, type Keys, sharedBuffer } from "./cell-crypto";

const CELL = 1024 * 1024 + 5; // not a multiple of the 256 KiB pieces

function cellOf(seed: number): Buffer {
  const b = sharedBuffer(CELL);
  randomBytes(CELL).copy(b);
  b[0] = seed;
  return b;
}

describe("cell crypto", () => {
  const dek = randomBytes(32);
  const keys: Keys = { mode: "envelope", dedup: randomBytes(32), dek, deks: new Map([["b1", dek]]) };

  test.each([0, 2])("envelope, %i workers: HMAC ids, sealing in the hash's trip, opening with either implementation", async (workers) => {
    const crypto = cellCrypto(keys, workers);
    const other = cellCrypto(keys, workers ? 0 : 2);
    try {
      const cell = cellOf(1);
      const r = await crypto.cell(cell, { seal: true });
      expect(r?.id).toBe(createHmac("sha256", keys.dedup!).update(cell).digest("hex"));
      expect(r?.sealed?.length).toBe(CELL + 28);
      // Ciphertext, not the cell: no 64-byte run of the cell appears in it.
      expect(r!.sealed!.indexOf(cell.subarray(1000, 1064))).toBe(-1);
      const opened = await other.open(r!.sealed!, r!.id, "b1", sharedBuffer(CELL), "test");
      expect(opened.equals(cell)).toBe(true);
      // A separate seal of the same cell opens too (fresh nonce: different bytes).
      const { sealed: again, release } = await other.seal(cell, r!.id);
      expect(again.equals(r!.sealed!)).toBe(false);
      expect((await crypto.open(again, r!.id, "b1", sharedBuffer(CELL), "test")).equals(cell)).toBe(true);
      release();
      release(); // a second release is ignored

      // Damage: a flipped bit, another id, an unknown backup's key.
      const bad = Buffer.from(r!.sealed!);
      bad[100] ^= 1;
      const shared = sharedBuffer(bad.length);
      bad.copy(shared);
      await expect(crypto.open(shared, r!.id, "b1", sharedBuffer(CELL), "restoring x")).rejects.toThrow(/restoring x: chunk .* does not decrypt/);
      await expect(crypto.open(r!.sealed!, "0".repeat(64), "b1", sharedBuffer(CELL), "t")).rejects.toThrow(/does not decrypt/);
      await expect(crypto.open(r!.sealed!, r!.id, "b9", sharedBuffer(CELL), "t")).rejects.toThrow(/no data key for chunk .* \(of backup b9\)/);

      // Sealing buffers are reused once released, never while held: a held chunk keeps its bytes.
      const held = Buffer.from(r!.sealed!);
      for (let i = 0; i < 4; i++) {
        const s = await crypto.cell(cellOf(10 + i), { seal: true });
        expect(r!.sealed!.equals(held)).toBe(true);
        s!.release!();
      }
      r!.release!();
      expect((await crypto.cell(cellOf(20), { seal: true }))?.sealed?.length).toBe(CELL + 28);

      // Zero check only when asked; a zero cell asked to be sealed is not.
      expect(await crypto.cell(sharedBuffer(CELL), { zero: true, seal: true })).toBeNull();
      const zero = sharedBuffer(CELL);
      expect(await crypto.cell(zero, { zero: true })).toBeNull();
      expect((await crypto.cell(zero))?.id).toBe(createHmac("sha256", keys.dedup!).update(zero).digest("hex"));
    } finally {
      await crypto.close();
      await other.close();
    }
  });

  test.each([0, 2])("source, %i workers: SHA-256 ids; opening checks the id and returns the body itself", async (workers) => {
    const crypto = cellCrypto({ mode: "source", deks: new Map() }, workers);
    try {
      const cell = cellOf(2);
      const id = createHash("sha256").update(cell).digest("hex");
      expect((await crypto.cell(cell))?.id).toBe(id);
      expect(await crypto.open(cell, id, undefined, undefined, "t")).toBe(cell);
      const e = await crypto.open(cell, "f".repeat(64), undefined, undefined, "t").catch((x) => x);
      expect(isBaremetalError(e) && e.code).toBe("backend");
      expect(String(e.message)).toMatch(/does not match its checksum/);
    } finally {
      await crypto.close();
    }
  });

  test("a cell in ordinary memory works too (copied to the worker)", async () => {
    const crypto = cellCrypto(keys, 1);
    try {
      const cell = randomBytes(4096);
      const r = await crypto.cell(cell, { seal: true });
      expect(r?.sealed?.length).toBe(4096 + 28);
      expect((await crypto.open(r!.sealed!, r!.id, "b1", sharedBuffer(4096), "t")).equals(cell)).toBe(true);
    } finally {
      await crypto.close();
    }
  });
});
