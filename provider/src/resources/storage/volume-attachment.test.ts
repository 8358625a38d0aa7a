/**
 * What `boot: true` accepts as a bootable volume: the first sectors a machine's firmware looks at.
 */
import { notBootable } from "./volume-attachment";

describe("boot: true needs a boot sector", () => {
  const head = () => Buffer.alloc(8192);

  it("an MBR boot signature or a GPT header (512- or 4096-byte sectors) is bootable", () => {
    const mbr = head();
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    expect(notBootable(mbr)).toBeUndefined();
    for (const at of [512, 4096]) {
      const gpt = head();
      gpt.write("EFI PART", at, "latin1");
      expect(notBootable(gpt)).toBeUndefined();
    }
  });

  it("zeros (a fresh volume) and a LUKS header are not, each said so", () => {
    expect(notBootable(head())).toMatch(/no boot sector \(no MBR boot signature 55 AA at byte 510, no GPT header\)/);
    const luks = head();
    Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]).copy(luks, 0);
    luks[510] = 0x55;
    luks[511] = 0xaa;
    expect(notBootable(luks)).toMatch(/LUKS header: a machine's firmware cannot unlock it/);
  });
});
