#!/usr/bin/env bash
# Fails when schema.json or sdk/ differ from what scripts/generate.sh makes of the current code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/generate.sh >/dev/null
if ! git diff --quiet -- schema.json sdk || [ -n "$(git ls-files --others --exclude-standard -- schema.json sdk)" ]; then
  echo "schema.json or sdk/ is stale: run 'bash scripts/generate.sh' and commit the result" >&2
  git --no-pager diff --stat -- schema.json sdk >&2
  git ls-files --others --exclude-standard -- schema.json sdk >&2
  exit 1
fi
echo "schema.json and sdk/ are up to date"
# The service API: CI rejects an incompatible change to a released version.
npx tsx scripts/openapi.ts check
