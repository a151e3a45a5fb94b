#!/usr/bin/env bash
# Builds the Kubernetes control-plane binaries the e2e tests run against and
# installs etcd from Debian. Idempotent: everything already present is skipped,
# so a warm run returns in well under a second.
#
#   KUBE_VERSION   Kubernetes version to build (default v1.37.2)
#   AMBIT_CACHE    cache root (default $HOME/.cache/ambit)
#   KUBE_BINARIES  space-separated commands to build
#                  (default "kube-apiserver kube-controller-manager kubectl
#                  kube-scheduler kubelet kube-proxy"; the last three serve
#                  e2e/kube/realnode)
#
# Binaries land in $AMBIT_CACHE/kube-$KUBE_VERSION/bin, never in the repository,
# with a link to etcd so the directory also serves as KUBEBUILDER_ASSETS.
# The last line of stdout is that directory.
# The first run compiles kube-apiserver from source: ~10 minutes on 2 cores.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
AMBIT_CACHE="${AMBIT_CACHE:-$HOME/.cache/ambit}"
KUBE_BINARIES="${KUBE_BINARIES:-kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy}"

BIN_DIR="$AMBIT_CACHE/kube-$KUBE_VERSION/bin"
SRC_DIR="$AMBIT_CACHE/kubernetes-src-$KUBE_VERSION"

log() { echo "e2e/kube/build.sh: $*" >&2; }

install_etcd() {
	if command -v etcd >/dev/null 2>&1; then
		return 0
	fi
	log "installing etcd from Debian (etcd-server)..."
	local sudo=""
	if [ "$(id -u)" != 0 ]; then
		if ! command -v sudo >/dev/null 2>&1; then
			log "etcd is missing and installing it needs root: run 'apt-get install etcd-server' as root"
			exit 1
		fi
		sudo="sudo"
	fi
	export DEBIAN_FRONTEND=noninteractive
	if ! $sudo apt-get install -y --no-install-recommends etcd-server >/dev/null; then
		$sudo apt-get update >/dev/null
		$sudo apt-get install -y --no-install-recommends etcd-server >/dev/null
	fi
	# Debian's package starts a system etcd on 2379; the tests run their own.
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		$sudo systemctl disable --now etcd >/dev/null 2>&1 || true
	fi
}

missing_binaries() {
	local b out=""
	for b in $KUBE_BINARIES; do
		[ -x "$BIN_DIR/$b" ] || out="$out $b"
	done
	echo "$out"
}

# prepare_source copies k8s.io/kubernetes out of the module cache into a
# writable tree whose go.mod requires the published staging modules instead of
# replacing them with ./staging paths.
prepare_source() {
	if [ -f "$SRC_DIR/.ambit-prepared" ]; then
		return 0
	fi
	log "fetching k8s.io/kubernetes@$KUBE_VERSION source..."
	local json dir
	json="$(GOWORK=off GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION")"
	dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
	if [ -z "$dir" ] || [ ! -d "$dir" ]; then
		log "go mod download gave no Dir for k8s.io/kubernetes@$KUBE_VERSION:"
		printf '%s\n' "$json" >&2
		exit 1
	fi
	local tmp="$SRC_DIR.tmp.$$"
	rm -rf "$tmp"
	mkdir -p "$(dirname "$SRC_DIR")"
	cp -r "$dir" "$tmp"
	chmod -R u+w "$tmp"
	rm -f "$tmp"/go.work "$tmp"/go.work.sum

	# k8s.io/X v0.0.0 => ./staging/src/k8s.io/X becomes a require of the
	# published staging module at the matching v0.minor.patch.
	local staging_version="v0.${KUBE_VERSION#v1.}"
	local mods
	mods="$(grep -oE 'k8s\.io/[A-Za-z0-9._/-]+ => \./staging/src/k8s\.io/[A-Za-z0-9._/-]+' "$tmp/go.mod" | awk '{print $1}' | sort -u)"
	local args=() m
	for m in $mods; do
		args+=("-dropreplace=$m")
		# Only modules the main module requires get a version; the others
		# (samples, code-generator) were replaced but never imported.
		if grep -qE "^[[:space:]]+$m v" "$tmp/go.mod"; then
			args+=("-require=$m@$staging_version")
		fi
	done
	if [ "${#args[@]}" -gt 0 ]; then
		(cd "$tmp" && GOWORK=off go mod edit "${args[@]}")
	fi
	# The staging copies must not be seen as part of the main module's packages
	# any more; they are nested modules (own go.mod) so Go ignores them already.
	touch "$tmp/.ambit-prepared"
	rm -rf "$SRC_DIR"
	mv "$tmp" "$SRC_DIR"
}

build_binaries() {
	local missing
	missing="$(missing_binaries)"
	if [ -z "$missing" ]; then
		return 0
	fi
	prepare_source
	mkdir -p "$BIN_DIR"
	local minor="${KUBE_VERSION#v1.}"
	minor="${minor%%.*}"
	local pkg="k8s.io/component-base/version"
	local ldflags="-s -w"
	ldflags="$ldflags -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	# The same variables exist in client-go's copy used by kubectl.
	local cpkg="k8s.io/client-go/pkg/version"
	ldflags="$ldflags -X $cpkg.gitVersion=$KUBE_VERSION -X $cpkg.gitMajor=1 -X $cpkg.gitMinor=$minor"
	local b start
	for b in $missing; do
		start=$(date +%s)
		log "building $b $KUBE_VERSION (first time only; kube-apiserver takes ~10 min on 2 idle cores)..."
		(cd "$SRC_DIR" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 \
			go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/.$b.tmp.$$" "./cmd/$b")
		mv -f "$BIN_DIR/.$b.tmp.$$" "$BIN_DIR/$b"
		log "built $b in $(($(date +%s) - start))s -> $BIN_DIR/$b"
	done
}

# Run the go commands outside any module or workspace so nothing touches the
# caller's go.mod/go.sum.
mkdir -p "$AMBIT_CACHE"
cd "$AMBIT_CACHE"
# Concurrent test packages may all find the binaries missing: one builds,
# the others wait here and then find everything present.
exec 9>"$AMBIT_CACHE/.kube-build.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
	log "another build is running; waiting for it..."
	flock 9
fi
install_etcd
build_binaries
# envtest finds etcd next to kube-apiserver (KUBEBUILDER_ASSETS=$BIN_DIR).
[ -e "$BIN_DIR/etcd" ] || ln -s "$(command -v etcd)" "$BIN_DIR/etcd"
echo "$BIN_DIR"
