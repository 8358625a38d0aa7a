#!/usr/bin/env bash
# The README's main job (`npm run quickstart`): installs and builds what it needs (Node 24 and the
# Pulumi CLI only: no Python, no Debian packages), then runs `pulumi up` of examples/quickstart
# against the embedded lab's BMC on loopback (scripts/quickstart.ts).
# Pass --keep to leave the BMC running and the stack up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
prepare_tools_and_packages node pulumi
build_provider_and_sdk
# The example installs the SDK the way users do: as a package (file: dependency on the build).
(cd examples/quickstart && npm install --no-audit --no-fund --loglevel=error --no-package-lock)
exec npx --no-install tsx scripts/quickstart.ts "$@"
