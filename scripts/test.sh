#!/usr/bin/env bash
# The README's test command (`npm test`): installs what it needs, builds, fails when schema.json
# or sdk/ are stale, then runs every test (unit, harness and e2e through the real pulumi CLI
# against sushy-tools). Extra arguments go to jest (e.g. a path filter).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
prepare_tools_and_packages
npx --no-install tsc -p provider
bash scripts/check-generated.sh
bash scripts/build-sdk.sh
npx --no-install tsc -p tsconfig.json --noEmit
report="$(mktemp)"
status=0
npx --no-install jest --ci --json --outputFile="$report" "$@" || status=$?
# One plain closing line that any reader understands.
node -e '
const r = JSON.parse(require("node:fs").readFileSync(process.argv[1], "utf8"));
const line = `${r.numPassedTests} passed, ${r.numFailedTests} failed` + (r.numPendingTests ? `, ${r.numPendingTests} skipped` : "");
console.log(line);
' "$report" || true
rm -f "$report"
exit "$status"
