#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make bench` need, idempotently.
# Debian packages are installed only when missing; Go tools are built once per
# pinned version into $AMBIT_CACHE (default $HOME/.cache/ambit) and reused.
set -euo pipefail

cache="${AMBIT_CACHE:-$HOME/.cache/ambit}"
mkdir -p "$cache/bin"

# Debian packages: command -> package.
declare -A apt_pkgs=(
  [nft]=nftables
  [iptables]=iptables
  [ip]=iproute2
  [iperf3]=iperf3
  [tcpdump]=tcpdump
  [curl]=curl
)
missing=()
for cmd in "${!apt_pkgs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${apt_pkgs[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install Debian packages: ${missing[*]}" >&2
    echo "install-deps: run 'sudo make test' or install them yourself" >&2
    exit 1
  fi
  echo "install-deps: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go tools, pinned. Each is built once per version.
go_tool() { # name module version
  local name=$1 module=$2 version=$3
  local dest="$cache/bin/$name-$version"
  if [ ! -x "$dest" ]; then
    echo "install-deps: building $name $version"
    local tmp
    tmp=$(mktemp -d)
    GOBIN="$tmp" GOFLAGS=-mod=mod go install "$module@$version"
    mv "$tmp/$name" "$dest"
    rm -rf "$tmp"
  fi
  ln -sf "$dest" "$cache/bin/$name"
}
go_tool staticcheck honnef.co/go/tools/cmd/staticcheck v0.8.2

# The Kubernetes control plane (etcd from Debian; kube-apiserver,
# kube-controller-manager, kubectl, kube-scheduler and kubelet built from
# source), a real node's runtime (containerd and crictl built from source,
# runc from Debian) and Istio's pilot-discovery for the Kubernetes-mode
# tests. All are cached by version; the first build takes tens of minutes on
# two cores, later runs nothing.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/../e2e/kube/build.sh" >/dev/null
bash "$here/../e2e/kube/realnode/build.sh" >/dev/null
bash "$here/../e2e/kube/pilot/build.sh" >/dev/null
