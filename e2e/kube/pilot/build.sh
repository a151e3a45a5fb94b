#!/usr/bin/env bash
# Builds Istio's pilot-discovery at the istio.io/istio version this repository
# pins in go.mod, for the differential and interop tests in e2e/kube/pilot.
# Idempotent: when the binary is present it only prints its path.
#
#   ISTIO_VERSION  istio.io/istio version (default: `go list -m istio.io/istio`
#                  in this repository)
#   AMBIT_CACHE    cache root (default $HOME/.cache/ambit)
#
# The binary lands in $AMBIT_CACHE/pilot-discovery-$ISTIO_VERSION/, never in
# the repository. The last line of stdout is the binary's path.
# The first run compiles pilot-discovery: ~8 minutes on 2 cores.
set -euo pipefail

log() { echo "e2e/kube/pilot/build.sh: $*" >&2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AMBIT_CACHE="${AMBIT_CACHE:-$HOME/.cache/ambit}"
if [ -z "${ISTIO_VERSION:-}" ]; then
	ISTIO_VERSION="$(cd "$here" && go list -m -f '{{.Version}}' istio.io/istio)"
fi
DIR="$AMBIT_CACHE/pilot-discovery-$ISTIO_VERSION"
BIN="$DIR/pilot-discovery"

if [ -x "$BIN" ]; then
	echo "$BIN"
	exit 0
fi

mkdir -p "$AMBIT_CACHE"
# Concurrent test packages may all find the binary missing: one builds, the
# others wait here and then find it present.
exec 9>"$AMBIT_CACHE/.pilot-build.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
	log "another build is running; waiting for it..."
	flock 9
fi
if [ -x "$BIN" ]; then
	echo "$BIN"
	exit 0
fi

tmp="$AMBIT_CACHE/.pilot-discovery-$ISTIO_VERSION.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
log "building pilot-discovery $ISTIO_VERSION (first time only, ~8 min)..."
# Outside any module or workspace so nothing touches the caller's go.mod.
(cd "$AMBIT_CACHE" && GOWORK=off GOBIN="$tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 \
	go install -trimpath -ldflags "-s -w" "istio.io/istio/pilot/cmd/pilot-discovery@$ISTIO_VERSION")
mkdir -p "$DIR"
mv -f "$tmp/pilot-discovery" "$BIN"
log "built pilot-discovery in $(($(date +%s) - start))s -> $BIN"
echo "$BIN"
