/**
 * A minimal ISO 9660 reader for the lab (ECMA-119 directory records; Joliet names when the image
 * has a Joliet supplementary volume descriptor, else primary names without `;1`, compared
 * case-insensitively). Enough for our BMC emulator to look inside the CD it boots (is it a
 * backup image?). Written from ECMA-119 and Microsoft's Joliet specification.
 */

const SECTOR = 2048;

interface Dir {
  extent: number;
  size: number;
}

function rootOf(image: Buffer): { root: Dir; joliet: boolean } | undefined {
  let primary: Dir | undefined;
  for (let s = 16; (s + 1) * SECTOR <= image.length && s < 64; s++) {
    const d = image.subarray(s * SECTOR, (s + 1) * SECTOR);
    if (d.toString("latin1", 1, 6) !== "CD001") return undefined;
    const type = d[0];
    if (type === 255) break;
    const root = { extent: d.readUInt32LE(156 + 2), size: d.readUInt32LE(156 + 10) };
    if (type === 1) primary = root;
    if (type === 2 && d[88] === 0x25 && d[89] === 0x2f && [0x40, 0x43, 0x45].includes(d[90])) return { root, joliet: true };
  }
  return primary ? { root: primary, joliet: false } : undefined;
}

function entries(image: Buffer, dir: Dir, joliet: boolean): Array<{ name: string; dir: boolean; extent: number; size: number }> {
  const out: Array<{ name: string; dir: boolean; extent: number; size: number }> = [];
  const start = dir.extent * SECTOR;
  const end = Math.min(image.length, start + dir.size);
  for (let at = start; at < end; ) {
    const len = image[at];
    if (len === 0) {
      at = (Math.floor(at / SECTOR) + 1) * SECTOR; // records never cross a sector: the rest is padding
      continue;
    }
    const nameLen = image[at + 32];
    const raw = image.subarray(at + 33, at + 33 + nameLen);
    const isDir = (image[at + 25] & 2) !== 0;
    if (!(nameLen === 1 && raw[0] <= 1)) {
      let name = joliet ? Buffer.from(raw).swap16().toString("utf16le") : raw.toString("latin1");
      name = name.replace(/;\d+$/, "");
      if (!joliet) name = name.replace(/\.$/, "").toLowerCase();
      out.push({ name, dir: isDir, extent: image.readUInt32LE(at + 2), size: image.readUInt32LE(at + 10) });
    }
    at += len;
  }
  return out;
}

/** The bytes of the file at `path` (`a/b/c.json`) in an ISO image, or undefined (no such file, or not an ISO). */
export function readIsoFile(image: Buffer, path: string): Buffer | undefined {
  const top = rootOf(image);
  if (!top) return undefined;
  let dir: Dir = top.root;
  const parts = path.split("/").filter(Boolean);
  for (const [i, part] of parts.entries()) {
    const want = top.joliet ? part : part.toLowerCase();
    const e = entries(image, dir, top.joliet).find((x) => x.name === want);
    if (!e) return undefined;
    if (i === parts.length - 1) return e.dir ? undefined : image.subarray(e.extent * SECTOR, e.extent * SECTOR + e.size);
    if (!e.dir) return undefined;
    dir = { extent: e.extent, size: e.size };
  }
  return undefined;
}
