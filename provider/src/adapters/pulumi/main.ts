/**
 * Entry point of the `pulumi-resource-baremetal` plugin: serve on loopback and print the port on
 * stdout (the engine reads that line); the engine's address comes as the last argument.
 */
import { serve } from "./server";

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => !a.startsWith("-"));
  const engineAddress = args[args.length - 1];
  const { port } = await serve(engineAddress);
  process.stdout.write(`${port}\n`);
}

main().catch((e) => {
  process.stderr.write(`pulumi-resource-baremetal: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
