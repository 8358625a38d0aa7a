/**
 * OpenStack config drive images: what cloud-init's ConfigDrive datasource (and Ironic's
 * configdrive) read. An ISO 9660 image labelled `config-2` (cloud-init finds it by blkid
 * LABEL=config-2) holding, under both `openstack/latest/` and the dated
 * `openstack/2012-08-10/`:
 *
 *   meta_data.json      uuid (cloud-init's instance-id), hostname and name, public_keys, metaData
 *   user_data           when userData is given, as is
 *   network_data.json   when networkData is given
 *   vendor_data2.json   when vendorData2 is given: the "dynamic" vendor data of Nova's metadata
 *                       service (one object per vendor namespace); cloud-init reads it from the
 *                       same version directory as the rest, keeps it out of user data, and
 *                       leaves namespaces it does not know to the image's own agents. Ours is
 *                       `baremetal` (the volumes a Deployment delivers, with their LUKS keys).
 *
 * The dated directory is the one openstacksdk's configdrive builder (which Ironic's tooling
 * uses) writes next to `latest`. cloud-init takes the newest version it knows that the drive has
 * (2012-08-10 is in every release's list) and falls back to `latest`; it reads every file,
 * network_data.json included, from that one directory, so both get the same files.
 *
 * JSON is written with sorted keys and the image with fixed timestamps, so the same input
 * always gives the same bytes (and an unchanged drive never shows as a diff).
 */
import { buildIso, type IsoFile } from "../../core/iso9660";
import { validationError } from "../../core/errors";

export interface ConfigDriveInput {
  /** The instance id cloud-init sees (meta_data.json `uuid`). */
  uuid: string;
  hostname?: string;
  /** Written as `user_data`, e.g. a `#cloud-config` document or a script. */
  userData?: string;
  /** OpenStack network_data.json: an object, or a string holding one as JSON. */
  networkData?: unknown;
  /** More meta_data.json keys (e.g. `meta`, `availability_zone`). */
  metaData?: Record<string, unknown>;
  /** Key name to OpenSSH public key (meta_data.json `public_keys`). */
  publicKeys?: Record<string, string>;
  /** vendor_data2.json: vendor namespace -> its object (e.g. `{ baremetal: { volumes: [...] } }`). */
  vendorData2?: Record<string, unknown>;
}

export const CONFIG_DRIVE_LABEL = "config-2";
export const CONFIG_DRIVE_VERSIONS = ["2012-08-10", "latest"] as const;

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export function buildConfigDrive(input: ConfigDriveInput): Buffer {
  const files = configDriveFiles(input);
  const isoFiles: IsoFile[] = CONFIG_DRIVE_VERSIONS.flatMap((v) =>
    Object.entries(files).map(([name, data]) => ({ path: `openstack/${v}/${name}`, data })),
  );
  return buildIso({ volumeId: CONFIG_DRIVE_LABEL, files: isoFiles });
}

/** The files of one version directory, by name. */
export function configDriveFiles(input: ConfigDriveInput): Record<string, Buffer> {
  const { uuid, hostname, userData, networkData, metaData, publicKeys, vendorData2 } = input;
  if (typeof uuid !== "string" || uuid.trim() === "") throw validationError("uuid", "uuid must be a non-empty string (cloud-init's instance-id)");
  if (hostname !== undefined && (typeof hostname !== "string" || !HOSTNAME.test(hostname))) {
    throw validationError("hostname", `hostname ${JSON.stringify(hostname)} is not a host name: dot-separated labels of letters, digits and "-"`);
  }
  if (userData !== undefined && typeof userData !== "string") throw validationError("userData", "userData must be a string");
  if (metaData !== undefined && !isObject(metaData)) throw validationError("metaData", "metaData must be an object");
  if (vendorData2 !== undefined) {
    if (!isObject(vendorData2)) throw validationError("vendorData2", "vendorData2 must map vendor namespaces to objects");
    for (const [ns, v] of Object.entries(vendorData2)) {
      if (!isObject(v)) throw validationError(`vendorData2.${ns}`, `vendorData2.${ns} must be an object (one per vendor namespace)`);
    }
  }
  if (publicKeys !== undefined) {
    if (!isObject(publicKeys)) throw validationError("publicKeys", "publicKeys must map key names to public keys");
    for (const [name, key] of Object.entries(publicKeys)) {
      if (typeof key !== "string" || key.trim() === "") throw validationError(`publicKeys.${name}`, `publicKeys.${name} must be a non-empty public key string`);
    }
  }

  // The dedicated inputs own their keys: the same key in metaData would be ambiguous.
  const owned = new Map<string, [input: string, value: unknown]>([["uuid", ["uuid", uuid]]]);
  if (hostname !== undefined) owned.set("hostname", ["hostname", hostname]).set("name", ["hostname", hostname]);
  if (publicKeys !== undefined) owned.set("public_keys", ["publicKeys", publicKeys]);
  for (const key of Object.keys(metaData ?? {})) {
    const by = owned.get(key)?.[0];
    if (by) throw validationError(`metaData.${key}`, `metaData.${key} is set by the ${by} input; drop it from metaData`);
  }
  const meta = { ...metaData, ...Object.fromEntries([...owned].map(([key, [, value]]) => [key, value])) };
  const files: Record<string, Buffer> = { "meta_data.json": json(meta, "metaData") };
  if (userData !== undefined) files.user_data = Buffer.from(userData, "utf8");
  if (networkData !== undefined) files["network_data.json"] = json(parseNetworkData(networkData), "networkData");
  if (vendorData2 !== undefined) files["vendor_data2.json"] = json(vendorData2, "vendorData2");
  return files;
}

function parseNetworkData(value: unknown): Record<string, unknown> {
  let parsed = value;
  if (typeof value === "string") {
    try {
      parsed = JSON.parse(value);
    } catch (e) {
      throw validationError("networkData", `networkData is a string but not JSON (${(e as Error).message}); give an object or its JSON text`);
    }
  }
  if (!isObject(parsed)) throw validationError("networkData", "networkData must be an object (OpenStack network_data.json: links, networks, services)");
  return parsed;
}

/** JSON with keys sorted at every level, so equal values give equal bytes. */
function json(value: unknown, property: string): Buffer {
  const sorted = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sorted);
    const plain = isObject(v) && [Object.prototype, null].includes(Object.getPrototypeOf(v));
    if (!plain) return v; // numbers, strings, ... and objects with their own toJSON (Date)
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]));
  };
  let text: string | undefined;
  try {
    text = JSON.stringify(sorted(value));
  } catch (e) {
    throw validationError(property, `${property} cannot be written as JSON: ${(e as Error).message}`);
  }
  return Buffer.from(text, "utf8");
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
