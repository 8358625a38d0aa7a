#!/usr/bin/env bash
# The one generator of the generated artifacts: schema.json from the field definitions, then
# sdk/nodejs from schema.json by `pulumi package gen-sdk`. Needs the tools (scripts/bootstrap.sh)
# and a built provider (npm run build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
node provider/dist/scripts/gen-schema.js schema.json >/dev/null
rm -rf sdk/nodejs
PULUMI_HOME="${PULUMI_HOME:-$BAREMETAL_CACHE/pulumi-home}" pulumi package gen-sdk schema.json --language nodejs --out sdk >/dev/null
echo "generated schema.json and sdk/nodejs"
