/**
 * terraform-provider-baremetal: the provider as an OpenTofu/Terraform plugin (protocol v6).
 * Started by OpenTofu for every command (validate, plan, apply...), through the launcher in
 * provider/bin, found in a filesystem mirror or a dev_overrides entry; refuses to run by hand.
 */
import { servePlugin } from "./plugin";
import { TerraformProvider } from "./server";

const provider = new TerraformProvider();
servePlugin(provider.handlers(), { onShutdown: () => provider.close() }).catch((e) => {
  process.stderr.write(`terraform-provider-baremetal: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
