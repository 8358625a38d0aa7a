// The quickstart as a cdktf stack: the operator enrols a machine of a Redfish BMC as a node of the
// shared inventory, owned by a tenant project; the tenant allocates a node of its project and
// deploys an image on it. The same job as examples/quickstart (operator/ and tenant/), in one
// Terraform configuration with two configurations of the baremetal provider.
//
// `npx tsx main.ts` synthesizes it into cdktf.out/stacks/quickstart/cdk.tf.json (no cdktf CLI
// needed); `tofu init` + `tofu apply` in that directory run it. What differs between
// installations (the BMC, its credentials, the inventory) is a Terraform variable, given at apply
// time (TF_VAR_bmc_password=... or a .tfvars file), so no secret is ever written into the
// synthesized configuration.
import { App, LocalBackend, TerraformOutput, TerraformStack, TerraformVariable } from "cdktf";
import { Construct } from "constructs";
import { allocation, deployment, node, provider } from "@pulumi-baremetal/cdk/cdktf";

/** The tenant project that owns the enrolled node, and its role (manager may deploy). */
const TENANT = "lab-tenant-a";

export class QuickstartStack extends TerraformStack {
  constructor(scope: Construct, id: string) {
    super(scope, id);
    // State next to the synthesized configuration (cdktf.out/stacks/quickstart/, where tofu runs;
    // synthesizing again keeps it). The default would be an absolute path of the machine that synthesized.
    new LocalBackend(this, { path: "terraform.tfstate" });

    const v = (name: string, description: string, extra: { sensitive?: boolean; default?: string } = {}) =>
      new TerraformVariable(this, name, { type: "string", description, ...extra }).stringValue;
    const bmcAddress = v("bmc_address", "The Redfish BMC's URL, e.g. https://10.0.0.5 (the embedded lab prints it).");
    const systemId = v("system_id", "The Redfish system (machine) of that BMC to enrol.");
    const bmcUsername = v("bmc_username", "BMC user name.");
    const bmcPassword = v("bmc_password", "BMC password.", { sensitive: true });
    const imageStoreUrl = v("image_store_url", "Where deployments upload their config drives (URL with credentials).", { sensitive: true });
    const inventoryUrl = v("inventory_url", "The installation's shared inventory (e.g. sqlite:///path/inventory.db).", { sensitive: true });
    const imageUrl = v("image_url", "The image to deploy.", { default: "http://images.lab.example/ubuntu-24.04-deploy.iso" });
    const imageChecksum = v("image_checksum", "Its checksum.", { default: `sha256:${"5a".repeat(32)}` });

    // The operator: no project, so the installation's operator (enrols nodes, any owner).
    const operator = new provider.BaremetalProvider(this, "operator", {
      alias: "operator",
      bmcUsername,
      bmcPassword,
      imageStoreUrl,
      inventoryUrl,
    });
    // The tenant: its project and role, checked by the multi-tenancy policy.
    const tenant = new provider.BaremetalProvider(this, "tenant", {
      alias: "tenant",
      bmcUsername,
      bmcPassword,
      imageStoreUrl,
      inventoryUrl,
      project: TENANT,
      roles: ["manager"],
    });

    const rackNode = new node.Node(this, "rack1_node1", {
      provider: operator,
      bmc: { address: bmcAddress, systemId },
      owner: TENANT,
      resourceClass: "baremetal-small",
      traits: ["CUSTOM_QUICKSTART"],
    });

    // The allocation does not name the node (the scheduler picks one of the project's nodes of
    // that class and traits), so it waits for the enrolment explicitly.
    const web = new allocation.Allocation(this, "web", {
      provider: tenant,
      resourceClass: "baremetal-small",
      traits: ["CUSTOM_QUICKSTART"],
      dependsOn: [rackNode],
    });

    const deployed = new deployment.Deployment(this, "web_deployment", {
      provider: tenant,
      allocationId: web.allocationId,
      imageUrl,
      imageChecksum,
    });

    new TerraformOutput(this, "node_id", { value: rackNode.id });
    new TerraformOutput(this, "node_name", { value: web.nodeName });
    new TerraformOutput(this, "provision_state", { value: deployed.provisionState });
  }
}

const app = new App();
new QuickstartStack(app, "quickstart");
app.synth();
