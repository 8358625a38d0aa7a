import * as pulumi from "@pulumi/pulumi";
import * as baremetal from "@pulumi-baremetal/sdk";

// A tenant's stack: its provider configuration names its project and roles (baremetal:project,
// baremetal:roles); the policy lets it allocate only nodes its project owns or leases.
const config = new pulumi.Config();

const allocation = new baremetal.compute.Allocation("web", {
  resourceClass: "baremetal-small",
  traits: ["CUSTOM_QUICKSTART"],
});

const deployment = new baremetal.compute.Deployment("web", {
  allocationId: allocation.allocationId,
  imageUrl: config.require("imageUrl"),
  imageChecksum: config.require("imageChecksum"),
});

export const node = allocation.nodeName;
export const nodeId = allocation.nodeId;
export const state = deployment.provisionState;
