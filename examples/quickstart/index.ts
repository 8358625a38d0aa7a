import * as pulumi from "@pulumi/pulumi";
import * as baremetal from "@pulumi-baremetal/sdk";

// Where the machines are: one Redfish BMC (address) and the systems it manages. The BMC
// credentials come from the provider configuration (baremetal:bmcUsername / baremetal:bmcPassword).
const config = new pulumi.Config();
const bmcAddress = config.require("bmcAddress");
const systemIds = config.requireObject<string[]>("systemIds");

const nodes = systemIds.map(
  (systemId, i) =>
    new baremetal.compute.Node(`rack1-node${i + 1}`, {
      bmc: { address: bmcAddress, systemId },
      powerState: "on",
      bootDevice: "pxe",
      owner: "operator",
      resourceClass: "baremetal-small",
      traits: ["CUSTOM_QUICKSTART"],
    }),
);

export const facts = nodes.map((n) => ({
  systemUri: n.systemUri,
  manufacturer: n.manufacturer,
  model: n.model,
  serialNumber: n.serialNumber,
  cpuCount: n.cpuCount,
  memoryGiB: n.memoryGiB,
  macAddresses: n.macAddresses,
  powerState: n.currentPowerState,
  bootDevice: n.currentBootDevice,
  bootMode: n.currentBootMode,
}));
