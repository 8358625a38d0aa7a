// The Terraform/OpenTofu plugin as one file (provider/dist/terraform-provider.js), run by
// provider/bin/terraform-provider-baremetal. OpenTofu starts the provider anew for every phase
// (validate, plan, apply...), so its start-up counts: one bundled file starts about a third
// faster than the same code as a tree of modules (500 -> 335 ms measured; bench/engines.ts).
// Native add-ons and optional native back ends stay outside the bundle, as in the module tree.
import { build } from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..");
await build({
  entryPoints: [join(repo, "provider/src/adapters/terraform/main.ts")],
  outfile: join(repo, "provider/dist/terraform-provider.js"),
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  sourcemap: "linked",
  external: ["cpu-features", "pg-native", "*.node"],
  logLevel: "warning",
});
