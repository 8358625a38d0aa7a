/**
 * Config drive images, read back the way a booting machine finds and reads them: blkid must
 * report TYPE=iso9660 LABEL=config-2 (cloud-init looks for exactly that), and the files must be
 * where cloud-init's ConfigDrive datasource reads them, checked with xorriso (Rock Ridge) and
 * isoinfo (Joliet). Debian packages from scripts/bootstrap.sh; a missing one fails the tests.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { buildConfigDrive, type ConfigDriveInput, configDriveFiles } from "./config-drive";

const ENV = { ...process.env, LANG: "C.UTF-8", LC_ALL: "C.UTF-8", PATH: `${process.env.PATH}:/usr/sbin:/sbin` };

function run(cmd: string, args: string[]): string {
  if (spawnSync("sh", ["-c", `command -v ${cmd}`], { env: ENV }).status !== 0) {
    throw new Error(`${cmd} is not installed: run scripts/bootstrap.sh (it installs the Debian packages xorriso and genisoimage)`);
  }
  const r = spawnSync(cmd, args, { env: ENV, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}:\n${r.stderr}${r.stdout}`);
  return r.stdout + r.stderr;
}

const NETWORK = {
  links: [{ id: "eth0", type: "phy", ethernet_mac_address: "52:54:00:12:34:56", mtu: 1500 }],
  networks: [{ id: "net0", link: "eth0", type: "ipv4", ip_address: "192.0.2.10", netmask: "255.255.255.0", routes: [] }],
  services: [{ type: "dns", address: "192.0.2.1" }],
};
const INPUT: ConfigDriveInput = {
  uuid: "1c5d6ea4-4f1b-4c5e-9a0b-2f4c1f0e7d11",
  hostname: "node-1.example.com",
  userData: "#cloud-config\npackages: [htop]\n",
  networkData: NETWORK,
  metaData: { availability_zone: "rack-a", meta: { role: "worker" } },
  publicKeys: { ops: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample ops@example" },
};

describe("buildConfigDrive, read back by blkid, xorriso and isoinfo", () => {
  let dir: string;
  let iso: string;
  let files: Map<string, Buffer>;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "config-drive-test-"));
    iso = join(dir, "config.iso");
    writeFileSync(iso, buildConfigDrive(INPUT));
    const out = join(dir, "extracted");
    run("xorriso", ["-osirrox", "on", "-indev", iso, "-extract", "/", out]);
    files = new Map(
      readdirSync(out, { recursive: true, encoding: "utf8" })
        .filter((p) => statSync(join(out, p)).isFile())
        .map((p) => [relative(out, join(out, p)), readFileSync(join(out, p))]),
    );
  });
  afterAll(() => {
    if (dir) execFileSync("chmod", ["-R", "u+w", dir]), rmSync(dir, { recursive: true, force: true });
  });

  it("is found by cloud-init's blkid probe: TYPE=iso9660, LABEL=config-2", () => {
    const lines = run("blkid", ["-p", "-o", "export", iso]).split("\n");
    expect(lines).toEqual(expect.arrayContaining(["TYPE=iso9660", "LABEL=config-2"]));
    expect(run("isoinfo", ["-d", "-i", iso])).toMatch(/^Volume id: config-2$/m);
  });

  it("has the same files under openstack/latest and openstack/2012-08-10, and nothing else", () => {
    const names = ["meta_data.json", "network_data.json", "user_data"];
    expect([...files.keys()].sort()).toEqual(["2012-08-10", "latest"].flatMap((v) => names.map((n) => `openstack/${v}/${n}`)));
    for (const n of names) expect(files.get(`openstack/2012-08-10/${n}`)!.equals(files.get(`openstack/latest/${n}`)!)).toBe(true);
  });

  it("has meta_data.json with uuid, hostname, name, public_keys and the extra metaData", () => {
    expect(JSON.parse(files.get("openstack/latest/meta_data.json")!.toString())).toEqual({
      uuid: INPUT.uuid,
      hostname: "node-1.example.com",
      name: "node-1.example.com",
      public_keys: INPUT.publicKeys,
      availability_zone: "rack-a",
      meta: { role: "worker" },
    });
  });

  it("has user_data as given and network_data.json as the object given", () => {
    expect(files.get("openstack/latest/user_data")!.toString()).toBe(INPUT.userData);
    expect(JSON.parse(files.get("openstack/latest/network_data.json")!.toString())).toEqual(NETWORK);
  });

  it("has the real, lower-case names in the Joliet tree too", () => {
    const listing = run("isoinfo", ["-J", "-f", "-i", iso]).trim().split("\n").sort();
    expect(listing).toEqual([
      "/openstack",
      "/openstack/2012-08-10",
      "/openstack/2012-08-10/meta_data.json",
      "/openstack/2012-08-10/network_data.json",
      "/openstack/2012-08-10/user_data",
      "/openstack/latest",
      "/openstack/latest/meta_data.json",
      "/openstack/latest/network_data.json",
      "/openstack/latest/user_data",
    ]);
  });

  it("gives the same bytes for the same input, whatever its key order, and a network_data string", () => {
    const image = buildConfigDrive(INPUT);
    const reordered: ConfigDriveInput = {
      publicKeys: INPUT.publicKeys,
      metaData: { meta: { role: "worker" }, availability_zone: "rack-a" },
      networkData: JSON.stringify({ services: NETWORK.services, networks: NETWORK.networks, links: NETWORK.links }),
      userData: INPUT.userData,
      hostname: INPUT.hostname,
      uuid: INPUT.uuid,
    };
    expect(buildConfigDrive(reordered).equals(image)).toBe(true);
    expect(buildConfigDrive({ ...INPUT, hostname: "node-2" }).equals(image)).toBe(false);
  });

  it("leaves out user_data and network_data.json when not given", () => {
    const minimal = join(dir, "minimal.iso");
    writeFileSync(minimal, buildConfigDrive({ uuid: "u-1" }));
    const listing = run("xorriso", ["-indev", minimal, "-find", "/", "-type", "f", "-exec", "lsdl"]);
    expect([...listing.matchAll(/^-r\S+ .* '(\/[^']+)'$/gm)].map((m) => m[1]).sort()).toEqual([
      "/openstack/2012-08-10/meta_data.json",
      "/openstack/latest/meta_data.json",
    ]);
    expect(run("isoinfo", ["-R", "-i", minimal, "-x", "/openstack/latest/meta_data.json"])).toBe('{"uuid":"u-1"}');
  });
});

describe("vendor_data2.json (the volumes a Deployment delivers)", () => {
  let dir: string;
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("is written next to meta_data.json in both version directories, keys sorted, read back by xorriso", () => {
    dir = mkdtempSync(join(tmpdir(), "config-drive-vd2-"));
    const vendor = { baremetal: { volumes: [{ volumeId: "project-a--db", lun: 1, luks: { keyManager: "barbican", keyId: "k-1", key: "AAEC" } }] } };
    const iso = join(dir, "vd2.iso");
    writeFileSync(iso, buildConfigDrive({ uuid: "u-2", vendorData2: vendor }));
    const listing = run("isoinfo", ["-J", "-f", "-i", iso]).trim().split("\n").sort();
    expect(listing).toEqual(expect.arrayContaining(["/openstack/2012-08-10/vendor_data2.json", "/openstack/latest/vendor_data2.json"]));
    const out = join(dir, "x");
    run("xorriso", ["-osirrox", "on", "-indev", iso, "-extract", "/openstack", out]);
    for (const v of ["latest", "2012-08-10"]) {
      const text = readFileSync(join(out, v, "vendor_data2.json"), "utf8");
      expect(JSON.parse(text)).toEqual(vendor);
      expect(text).toBe('{"baremetal":{"volumes":[{"luks":{"key":"AAEC","keyId":"k-1","keyManager":"barbican"},"lun":1,"volumeId":"project-a--db"}]}}');
    }
    execFileSync("chmod", ["-R", "u+w", dir]);
  });

  it("is left out when not given, and refuses a namespace that is not an object", () => {
    expect(Object.keys(configDriveFiles({ uuid: "u" }))).toEqual(["meta_data.json"]);
    expect(() => configDriveFiles({ uuid: "u", vendorData2: { baremetal: [1] as unknown as Record<string, unknown> } })).toThrow(
      expect.objectContaining({ code: "validation", property: "vendorData2.baremetal" }),
    );
  });
});

describe("buildConfigDrive input checks", () => {
  it.each<[string, Partial<ConfigDriveInput>, string, RegExp]>([
    ["an empty uuid", { uuid: "" }, "uuid", /uuid must be a non-empty string/],
    ["a malformed hostname", { hostname: "bad host" }, "hostname", /hostname "bad host" is not a host name/],
    ["networkData that is not JSON", { networkData: "{links: [" }, "networkData", /networkData is a string but not JSON/],
    ["networkData that is not an object", { networkData: "[1, 2]" }, "networkData", /networkData must be an object/],
    ["networkData that cannot be serialised", { networkData: { n: BigInt(1) } }, "networkData", /networkData cannot be written as JSON/],
    ["metaData that overrides uuid", { metaData: { uuid: "other" } }, "metaData.uuid", /metaData.uuid is set by the uuid input/],
    ["metaData that overrides name", { metaData: { name: "other" } }, "metaData.name", /metaData.name is set by the hostname input/],
    ["metaData that overrides public_keys", { metaData: { public_keys: {} } }, "metaData.public_keys", /set by the publicKeys input/],
    ["an empty public key", { publicKeys: { ops: "" } }, "publicKeys.ops", /publicKeys.ops must be a non-empty public key/],
  ])("rejects %s, naming the input", (_, change, property, why) => {
    expect(() => buildConfigDrive({ ...INPUT, ...change } as ConfigDriveInput)).toThrow(
      expect.objectContaining({ code: "validation", property, message: expect.stringMatching(why) }),
    );
  });

  it("lets metaData carry hostname and name when the hostname input is not given", () => {
    expect(() => buildConfigDrive({ uuid: "u", metaData: { hostname: "h", name: "n" } })).not.toThrow();
  });
});
