#!/usr/bin/env bash
# Builds and installs what a real node needs besides the Kubernetes binaries:
# containerd, ctr and containerd-shim-runc-v2 (built from source with CGO off),
# crictl (built from source) and runc (Debian's package). Also builds
# kubelet, kube-proxy and kube-scheduler through ../build.sh. Idempotent:
# everything present is skipped, so a warm run returns in well under a second.
#
#   CONTAINERD_VERSION  containerd to build (default v2.4.2)
#   CRICTL_VERSION      cri-tools to build crictl from (default v1.37.0)
#   KUBE_VERSION        passed to ../build.sh (default there)
#   AMBIT_CACHE         cache root (default $HOME/.cache/ambit)
#
# containerd, ctr and the shim land in
# $AMBIT_CACHE/containerd-$CONTAINERD_VERSION/bin, crictl in
# $AMBIT_CACHE/crictl-$CRICTL_VERSION/bin, never in the repository.
# Progress goes to stderr; the last two lines of stdout are those directories.
# Cold on 2 busy cores: containerd ~11 min, ctr and the shim ~1, crictl a few;
# kubelet, kube-proxy and kube-scheduler ~2 each in ../build.sh once the API
# server's build cache is warm.
set -euo pipefail

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
AMBIT_CACHE="${AMBIT_CACHE:-$HOME/.cache/ambit}"

CONTAINERD_DIR="$AMBIT_CACHE/containerd-$CONTAINERD_VERSION/bin"
CRICTL_DIR="$AMBIT_CACHE/crictl-$CRICTL_VERSION/bin"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "e2e/kube/realnode/build.sh: $*" >&2; }

install_runc() {
	if command -v runc >/dev/null 2>&1; then
		return 0
	fi
	log "installing runc from Debian..."
	local sudo=""
	if [ "$(id -u)" != 0 ]; then
		if ! command -v sudo >/dev/null 2>&1; then
			log "runc is missing and installing it needs root: run 'apt-get install runc' as root"
			exit 1
		fi
		sudo="sudo"
	fi
	export DEBIAN_FRONTEND=noninteractive
	if ! $sudo apt-get install -y --no-install-recommends runc >/dev/null; then
		$sudo apt-get update >/dev/null
		$sudo apt-get install -y --no-install-recommends runc >/dev/null
	fi
}

# go_build_into DEST_DIR MODULE VERSION LDFLAGS TAGS CMD...: builds each
# MODULE/CMD at VERSION with go install from the cache root (outside any
# module), statically, into DEST_DIR. Only missing commands are built.
go_build_into() {
	local dest=$1 module=$2 version=$3 ldflags=$4 tags=$5
	shift 5
	local c missing=()
	for c in "$@"; do
		[ -x "$dest/$(basename "$c")" ] || missing+=("$c")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	mkdir -p "$dest"
	local tmp start
	tmp="$(mktemp -d "$AMBIT_CACHE/.realnode-build.XXXXXX")"
	for c in "${missing[@]}"; do
		start=$(date +%s)
		log "building $(basename "$c") $version (first time only)..."
		GOBIN="$tmp" GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 \
			go install -trimpath -tags "$tags" -ldflags "$ldflags" "$module/$c@$version"
		mv -f "$tmp/$(basename "$c")" "$dest/$(basename "$c")"
		log "built $(basename "$c") in $(($(date +%s) - start))s -> $dest/$(basename "$c")"
	done
	rm -rf "$tmp"
}

mkdir -p "$AMBIT_CACHE"
cd "$AMBIT_CACHE"
exec 9>"$AMBIT_CACHE/.realnode-build.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
	log "another build is running; waiting for it..."
	flock 9
fi

install_runc

cpkg=github.com/containerd/containerd/v2
go_build_into "$CONTAINERD_DIR" "$cpkg" "$CONTAINERD_VERSION" \
	"-s -w -X $cpkg/version.Version=$CONTAINERD_VERSION -X $cpkg/version.Package=$cpkg" \
	"urfave_cli_no_docs osusergo netgo static_build" \
	cmd/containerd cmd/ctr
# The shim is built as upstream builds it: without the gRPC TTRPC shims.
go_build_into "$CONTAINERD_DIR" "$cpkg" "$CONTAINERD_VERSION" \
	"-s -w -X $cpkg/version.Version=$CONTAINERD_VERSION -X $cpkg/version.Package=$cpkg" \
	"urfave_cli_no_docs osusergo netgo static_build no_grpc" \
	cmd/containerd-shim-runc-v2

tpkg=sigs.k8s.io/cri-tools
go_build_into "$CRICTL_DIR" "$tpkg" "$CRICTL_VERSION" \
	"-s -w -X $tpkg/pkg/version.Version=${CRICTL_VERSION#v}" "" \
	cmd/crictl

# kubelet, kube-proxy and kube-scheduler come from the same Kubernetes tree
# as the API server (its own lock and cache).
KUBE_BINARIES="kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy" \
	bash "$here/../build.sh" >/dev/null

echo "$CONTAINERD_DIR"
echo "$CRICTL_DIR"
