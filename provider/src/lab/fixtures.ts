/**
 * Deterministic fixture data of the lab: every id, UUID, serial number and MAC address is derived
 * from the BMC index `b` (1-based) and the system index `s` (1-based), so two labs started with
 * the same options serve byte-identical inventories.
 *
 * - MAC addresses are locally administered unicast addresses (first octet 0x02): 02:1a:b0:BB:SS:NN.
 * - UUIDs have the fixed prefix 6c616200 ("lab") and encode kind, BMC and system.
 * - No IP address appears anywhere in the fixtures (none is needed); if one ever does, it must
 *   come from 192.0.2.0/24 (TEST-NET-1, RFC 5737) and only inside JSON data.
 */

/** Upper bound of BMCs per lab and of systems per BMC (one octet each in the MACs). */
export const MAX_INDEX = 255;

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, "0");
}

export const UUID_KIND = { serviceRoot: 1, manager: 2, system: 3, chassis: 4 } as const;

/** A fixed UUID for (kind, BMC, system). */
export function labUuid(kind: number, bmc: number, system = 0): string {
  return `6c616200-${hex(bmc, 4)}-4${hex(system, 3)}-8${hex(kind, 3)}-${hex(bmc * 0x10000 + system, 12)}`;
}

/** MAC of NIC `nic` (1-based) of system `s` on BMC `b`: locally administered, 02:1a:b0:BB:SS:NN (upper case, as BMCs write them). */
export function labMac(b: number, s: number, nic: number): string {
  return ["02", "1A", "B0", hex(b, 2), hex(s, 2), hex(nic, 2)].join(":").toUpperCase();
}

export function labSerial(b: number, s: number): string {
  return `LAB${String(b).padStart(3, "0")}S${String(s).padStart(3, "0")}`;
}

/** Serial number of the one disk of system `s` on BMC `b`. */
export function labDiskSerial(b: number, s: number): string {
  return `LABD${String(b).padStart(3, "0")}S${String(s).padStart(3, "0")}`;
}

/** What a system is made of: two profiles that alternate with the system index (odd: small, even: large). */
export interface HardwareProfile {
  name: "small" | "large";
  sku: string;
  cpuSockets: number;
  coresPerSocket: number;
  threadsPerCore: number;
  cpuModel: string;
  cpuMaxSpeedMHz: number;
  dimms: number;
  dimmMiB: number;
  nics: number;
  nicSpeedMbps: number;
  /** The one disk (an SSD): what a deploy writes to. */
  diskModel: string;
  diskBytes: number;
  /** A resource class a scheduler could key on (for later multi-tenancy tests). */
  resourceClass: string;
}

export const PROFILES: Record<HardwareProfile["name"], HardwareProfile> = {
  small: {
    name: "small",
    sku: "LAB-S1",
    cpuSockets: 1,
    coresPerSocket: 16,
    threadsPerCore: 2,
    cpuModel: "Lab x86-64 16-Core Processor @ 2.40GHz",
    cpuMaxSpeedMHz: 2400,
    dimms: 4,
    dimmMiB: 16384,
    nics: 2,
    nicSpeedMbps: 25000,
    diskModel: "Lab SSD 480G",
    diskBytes: 480_103_981_056,
    resourceClass: "baremetal-small",
  },
  large: {
    name: "large",
    sku: "LAB-L1",
    cpuSockets: 2,
    coresPerSocket: 32,
    threadsPerCore: 2,
    cpuModel: "Lab x86-64 32-Core Processor @ 2.00GHz",
    cpuMaxSpeedMHz: 2000,
    dimms: 8,
    dimmMiB: 32768,
    nics: 2,
    nicSpeedMbps: 100000,
    diskModel: "Lab SSD 960G",
    diskBytes: 960_197_124_096,
    resourceClass: "baremetal-large",
  },
};

export function profileOf(s: number): HardwareProfile {
  return s % 2 === 1 ? PROFILES.small : PROFILES.large;
}

export function memoryGiB(p: HardwareProfile): number {
  return (p.dimms * p.dimmMiB) / 1024;
}

// ---------------------------------------------------------------------------------------------
// Tenants (for later multi-tenancy tests): fixed project ids and caller personas.

export interface LabProject {
  id: string;
  name: string;
  description: string;
}

/** The system project (Keystone system scope), the service project, and two tenants. */
export const LAB_PROJECTS: readonly LabProject[] = [
  { id: "system", name: "system", description: "Stands for a system-scoped token (see provider/src/core/policy-defaults.ts)." },
  { id: "service", name: "service", description: "The service project (rule:service_role)." },
  { id: "lab-tenant-a", name: "tenant-a", description: "Tenant A: owns the odd-numbered lab machines." },
  { id: "lab-tenant-b", name: "tenant-b", description: "Tenant B: owns the even-numbered lab machines." },
];

/** Caller personas as provider configuration overlays (`baremetal:project`, `baremetal:roles`). */
export const LAB_PERSONAS: Readonly<Record<string, { project: string; roles: string[] }>> = {
  "system-admin": { project: "system", roles: ["admin"] },
  "system-reader": { project: "system", roles: ["reader"] },
  service: { project: "service", roles: ["service"] },
  "tenant-a-admin": { project: "lab-tenant-a", roles: ["admin"] },
  "tenant-a-member": { project: "lab-tenant-a", roles: ["member"] },
  "tenant-a-reader": { project: "lab-tenant-a", roles: ["reader"] },
  "tenant-b-member": { project: "lab-tenant-b", roles: ["member"] },
};

/** Owner of the n-th machine of the lab (1-based, counted across BMCs): A for odd, B for even. */
export function ownerOf(n: number): string {
  return n % 2 === 1 ? "lab-tenant-a" : "lab-tenant-b";
}
