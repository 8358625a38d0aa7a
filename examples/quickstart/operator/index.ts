import * as pulumi from "@pulumi/pulumi";
import * as baremetal from "@pulumi-baremetal/sdk";

// The operator's stack: the machines of one Redfish BMC become nodes of the shared inventory.
// BMC credentials come from the provider configuration (baremetal:bmcUsername/bmcPassword);
// every stack of the installation uses the same baremetal:inventoryUrl.
const config = new pulumi.Config();
const bmcAddress = config.require("bmcAddress");
const systemIds = config.requireObject<string[]>("systemIds");
const owners = config.requireObject<string[]>("owners");
const lessees = config.getObject<Array<string | null>>("lessees") ?? [];

const nodes = systemIds.map(
  (systemId, i) =>
    new baremetal.compute.Node(`rack1-node${i + 1}`, {
      bmc: { address: bmcAddress, systemId },
      // No declared power state: once the nodes are in the pool, deployments drive their power.
      owner: owners[i % owners.length],
      lessee: lessees[i] ?? undefined,
      resourceClass: "baremetal-small",
      traits: ["CUSTOM_QUICKSTART"],
    }),
);

export const facts = nodes.map((n) => ({
  id: n.id,
  owner: n.owner,
  lessee: n.lessee,
  manufacturer: n.manufacturer,
  model: n.model,
  serialNumber: n.serialNumber,
  cpuCount: n.cpuCount,
  memoryGiB: n.memoryGiB,
  macAddresses: n.macAddresses,
  powerState: n.currentPowerState,
  provisionState: n.provisionState,
}));
