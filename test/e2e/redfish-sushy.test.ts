/**
 * Our Redfish client against sushy-tools (OpenStack's Redfish emulator, a BMC written by somebody
 * else): virtual media, which sushy really implements (it downloads the image URL).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { RedfishClient } from "../../provider/src/drivers/redfish/client";
import { type SushyInstance, startSushy } from "../harness/sushy";

jest.setTimeout(60_000);

describe("virtual media against sushy-tools", () => {
  let bmc: SushyInstance;
  let images: Server;
  let imageUrl: string;
  let client: RedfishClient;
  let downloads = 0;

  beforeAll(async () => {
    bmc = await startSushy({ systems: 1, username: "vm-admin", password: "vm-password" });
    // The image server sushy downloads from: a small fake ISO on loopback.
    images = createServer((req, res) => {
      downloads++;
      res.writeHead(200, { "Content-Type": "application/octet-stream" });
      res.end(Buffer.alloc(64 * 1024, 0x41));
    });
    await new Promise<void>((r) => images.listen(0, "127.0.0.1", () => r()));
    imageUrl = `http://127.0.0.1:${(images.address() as AddressInfo).port}/deploy.iso`;
    client = new RedfishClient({ endpoint: bmc.url, username: "vm-admin", password: "vm-password" });
  });

  afterAll(async () => {
    await client?.close();
    await new Promise((r) => images?.close(r));
    await bmc?.stop();
  });

  const requestCount = (method: string) => (bmc.log().match(new RegExp(`${method} /redfish\\S*VirtualMedia\\S* HTTP`, "g")) ?? []).length;

  it("finds the CD drive, inserts an image idempotently, and ejects it", async () => {
    const { path, media } = await client.findVirtualMedia(bmc.systemIds[0]);
    expect(path).toBe(`/redfish/v1/Systems/${bmc.systemIds[0]}/VirtualMedia/Cd`);
    expect(media.MediaTypes).toContain("CD");

    expect(await client.insertMedia(path, imageUrl)).toBe(true);
    const inserted = (await bmc.http.get(path)).data;
    expect(inserted).toMatchObject({ Inserted: true, Image: imageUrl });
    expect(downloads).toBeGreaterThanOrEqual(1);

    const posts = requestCount("POST");
    expect(await client.insertMedia(path, imageUrl)).toBe(false); // already there: no second insert
    expect(requestCount("POST")).toBe(posts);

    expect(await client.ejectMedia(path)).toBe(true);
    expect((await bmc.http.get(path)).data.Inserted).toBe(false);
    expect(await client.ejectMedia(path)).toBe(false);
  });
});
