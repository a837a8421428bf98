#!/usr/bin/env bash
# build.sh builds the reference CNI plugins (ptp, bridge, host-local, and loopback,
# which a container runtime calls for every pod) of
# github.com/containernetworking/plugins, pinned in go.mod beside this file,
# into a cache directory outside the repository and prints that directory.
# When the stamp matches it returns at once; two runs never build at once.
#
# Environment:
#   MESHREDIRECT_CNI_CACHE  where the binaries go
#                           (default ${XDG_CACHE_HOME:-$HOME/.cache}/meshredirect/cni/<version>)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
export GOWORK=off
version="$(go list -m -f '{{.Version}}' github.com/containernetworking/plugins)"
cache="${MESHREDIRECT_CNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshredirect/cni/$version}"
stamp="$({ cat go.mod go.sum build.sh; go env GOVERSION; } | sha256sum | cut -d' ' -f1)"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$cache"
	exit 0
fi
echo "cniplugins: building ptp, bridge, host-local, loopback $version into $cache" >&2
tmp="$(mktemp -d "$cache/.build-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/" \
	github.com/containernetworking/plugins/plugins/main/ptp \
	github.com/containernetworking/plugins/plugins/main/bridge \
	github.com/containernetworking/plugins/plugins/ipam/host-local \
	github.com/containernetworking/plugins/plugins/main/loopback
mv "$tmp"/ptp "$tmp"/bridge "$tmp"/host-local "$tmp"/loopback "$cache/"
echo "$stamp" >"$cache/stamp"
echo "$cache"
