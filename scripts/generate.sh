#!/usr/bin/env bash
# The one generator of the generated artifacts: schema.json from the field definitions, then
# sdk/nodejs from schema.json by `pulumi package gen-sdk`, then the CDK bindings (sdk/cdk). Needs the tools (scripts/bootstrap.sh)
# and a built provider (npm run build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
node provider/dist/scripts/gen-schema.js schema.json >/dev/null
# The compiled SDK (sdk/nodejs/bin, not committed) that e2e tests load stays usable: it is rebuilt
# from the new sources when it was there (other work running tests meanwhile keeps an SDK).
had_bin=0
[ -d sdk/nodejs/bin ] && had_bin=1
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
PULUMI_HOME="${PULUMI_HOME:-$BAREMETAL_CACHE/pulumi-home}" pulumi package gen-sdk schema.json --language nodejs --out "$tmp" >/dev/null
mkdir -p sdk/nodejs
find sdk/nodejs -mindepth 1 -maxdepth 1 ! -name bin -exec rm -rf {} +
cp -a "$tmp/nodejs/." sdk/nodejs/
if [ "$had_bin" = 1 ]; then bash scripts/build-sdk.sh >/dev/null; fi
# sdk/cdk/cdktf and sdk/cdk/cdktn: the CDK bindings, from the same field definitions (Terraform schema).
npx --no-install tsx scripts/gen-cdk.ts >/dev/null
echo "generated schema.json, sdk/nodejs and sdk/cdk"
