/**
 * EncryptionKey through the real engine against a real OpenStack Barbican and a real KMIP server
 * (PyKMIP, mutual TLS), for two tenants whose callers are members, not admins: each creates keys
 * in its own project; the key managers hold them (checked with our drivers as the owner); a
 * tenant importing the other's key is refused by the key manager itself, naming the key; destroy
 * destroys the keys; no key material and no credential ever reaches the state.
 */
import { createBarbicanDriver } from "../../provider/src/drivers/barbican";
import { createKmipDriver } from "../../provider/src/drivers/kmip/driver";
import type { KeyManagerDriver } from "../../provider/src/drivers/kinds/keymanager";
import { type BarbicanInstance, startBarbican } from "../harness/barbican";
import { type KmipServerInstance, startKmipServer } from "../harness/kmip";
import { type PulumiProject, SDK_IMPORT } from "../harness/pulumi";
import { tenantStack } from "../harness/storage-stack";

jest.setTimeout(300_000);

const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
${SDK_IMPORT}
const a = new baremetal.keys.EncryptionKey("db", { keyManager: "barbican", labels: { volume: "db" } });
const b = new baremetal.keys.EncryptionKey("logs", { keyManager: "kmip", bits: 256 });
export const barbicanKey = a.keyId;
export const kmipKey = b.keyId;
export const states = [a.state, b.state];
export const projects = [a.project, b.project];
`;

describe("encryption keys in Barbican and KMIP, by tenant members, through the engine", () => {
  let barbican: BarbicanInstance;
  let kmip: KmipServerInstance;
  const stacks: Record<string, PulumiProject> = {};
  const asOwner: KeyManagerDriver[] = [];

  const driversFor = (project: string) => {
    const drivers = {
      barbican: createBarbicanDriver({ address: barbican.url, project }),
      kmip: createKmipDriver({ address: `kmip://127.0.0.1:${kmip.port}`, project, caBundle: kmip.ca, clientCertificate: kmip.clients[project].cert, clientKey: kmip.clients[project].key }),
    };
    asOwner.push(drivers.barbican, drivers.kmip);
    return drivers;
  };

  beforeAll(async () => {
    [barbican, kmip] = await Promise.all([startBarbican(), startKmipServer({ identities: ["project-a", "project-b"] })]);
    for (const project of ["project-a", "project-b"]) {
      stacks[project] = await tenantStack(`keys-${project}`, PROGRAM, {
        project,
        keyManagers: { barbican: { driver: "barbican", address: barbican.url }, kmip: { driver: "kmip", address: `kmip://127.0.0.1:${kmip.port}`, caBundle: kmip.ca } },
        keyManagerCredentials: { kmip: { clientCertificate: kmip.clients[project].cert, clientKey: kmip.clients[project].key } },
      });
    }
  });

  afterAll(async () => {
    for (const p of Object.values(stacks)) await p.pulumi(["destroy", "--yes", "--skip-preview"], { allowFail: true });
    for (const p of Object.values(stacks)) p.remove();
    await Promise.all(asOwner.map((d) => d.close()));
    await Promise.all([barbican?.stop(), kmip?.stop()]);
  });

  it("members of two projects create keys in both key managers; each key is its project's", async () => {
    await Promise.all(Object.values(stacks).map((p) => p.pulumi(["up", "--yes", "--skip-preview"])));
    for (const project of ["project-a", "project-b"]) {
      const out = (await stacks[project].outputs()) as { barbicanKey: string; kmipKey: string; states: string[]; projects: string[] };
      expect(out.states).toEqual(["active", "active"]);
      expect(out.projects).toEqual([project, project]);
      const own = driversFor(project);
      expect(await own.barbican.describeKey(out.barbicanKey)).toMatchObject({ project, bits: 512, state: "active" });
      expect((await own.barbican.getKeyMaterial(out.barbicanKey)).length).toBe(64);
      expect(await own.kmip.describeKey(out.kmipKey)).toMatchObject({ bits: 256, state: "active" });
      expect((await own.kmip.getKeyMaterial(out.kmipKey)).length).toBe(32);
      await stacks[project].pulumi(["preview", "--expect-no-changes"]);
    }
  });

  it("no key material, no client key and no token in any state", async () => {
    for (const project of ["project-a", "project-b"]) {
      const out = (await stacks[project].outputs()) as { barbicanKey: string; kmipKey: string };
      const own = driversFor(project);
      const exported = JSON.stringify(await stacks[project].exportStack());
      for (const material of [await own.barbican.getKeyMaterial(out.barbicanKey), await own.kmip.getKeyMaterial(out.kmipKey)]) {
        expect(exported).not.toContain(material.toString("hex"));
        expect(exported).not.toContain(material.toString("base64"));
      }
      expect(exported).not.toContain(kmip.clients[project].key.split("\n")[1]);
    }
  });

  it("a tenant importing the other's key is refused by the key manager, naming the key", async () => {
    const a = (await stacks["project-a"].outputs()) as { barbicanKey: string; kmipKey: string };
    const b = stacks["project-b"];
    for (const [manager, id] of [["barbican", a.barbicanKey], ["kmip", a.kmipKey]]) {
      const r = await b.pulumi(["import", "baremetal:keys:EncryptionKey", `stolen-${manager}`, id, "--yes", "--skip-preview"], { allowFail: true });
      expect(r.code).not.toBe(0);
      expect(r.stdout + r.stderr).toContain(id);
      expect(r.stdout + r.stderr).toMatch(/project-b/);
      expect(r.stdout + r.stderr).toMatch(/denied|refused|not allowed|forbidden|permission/i);
    }
  });

  it("destroy destroys the keys in the key managers", async () => {
    const out = (await stacks["project-a"].outputs()) as { barbicanKey: string; kmipKey: string };
    await stacks["project-a"].pulumi(["destroy", "--yes", "--skip-preview"]);
    const own = driversFor("project-a");
    expect(await own.barbican.describeKey(out.barbicanKey)).toBeUndefined();
    expect(await own.kmip.describeKey(out.kmipKey)).toBeUndefined();
  });
});
