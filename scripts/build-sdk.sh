#!/usr/bin/env bash
# Compiles the generated Node.js SDK into sdk/nodejs/bin (not committed), laid out as the npm
# package users install: the compiled code plus package.json and README.
set -euo pipefail
cd "$(dirname "$0")/.."
npx --no-install tsc -p sdk/nodejs --skipLibCheck
cp sdk/nodejs/package.json sdk/nodejs/README.md sdk/nodejs/bin/
