# shellcheck shell=bash
# Shared steps of the README's two commands (scripts/test.sh, scripts/quickstart.sh). Sourced.

# Tools (cached outside the clone; all of them, or the bootstrap steps named), then the
# project's npm packages with Node 24 on PATH.
prepare_tools_and_packages() {
  bash scripts/bootstrap.sh "$@"
  # shellcheck source=scripts/env.sh
  source scripts/env.sh
  # `npm ci` only when the lock file changed since the last install: a warm run skips it.
  if [[ ! -d node_modules ]] || ! cmp -s package-lock.json node_modules/.installed-lock; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.installed-lock
  fi
}

# The provider (provider/dist) and the compiled SDK (sdk/nodejs/bin).
build_provider_and_sdk() {
  npx --no-install tsc -p provider
  bash scripts/build-sdk.sh
}
