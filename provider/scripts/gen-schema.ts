/**
 * The only writer of schema.json: the Pulumi package schema derived from the resource and config
 * field definitions. Usage: node provider/dist/scripts/gen-schema.js [out-file]
 */
import { writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { packageSchema } from "../src/adapters/pulumi/schema";

const out = resolve(process.argv[2] ?? resolve(__dirname, "../../../schema.json"));
writeFileSync(out, `${JSON.stringify(packageSchema(), null, 2)}\n`);
process.stdout.write(`wrote ${out}\n`);
