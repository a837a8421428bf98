#!/usr/bin/env bash
# build.sh builds kube-apiserver and etcd for testenv/kubeapi, and kubelet, kube-controller-manager
# and kube-scheduler for testenv/realnode, into a cache directory outside the repository and prints
# that directory on stdout.
#
# The binaries come from the Go module proxy only (k8s.io/kubernetes and etcd's server module,
# pinned in go.mod beside this file). A cold build takes 10-20 minutes, ~2.5 GB of memory and
# ~3.8 GB of Go caches (the node's three binaries add ~3 min to a cold build); when the stamp matches it returns at once. Two runs never build at the
# same time: the second waits on the lock, then finds the stamp written by the first.
#
# Environment:
#   MESHREDIRECT_KUBE_CACHE  where the binaries go
#                            (default ${XDG_CACHE_HOME:-$HOME/.cache}/meshredirect/kube/v1.37.2;
#                            testenv/kubeapi looks in the same place)
set -euo pipefail

readonly version=v1.37.2
readonly bins=(kube-apiserver etcd kubelet kube-controller-manager kube-scheduler)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MESHREDIRECT_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshredirect/kube/$version}"

# Everything that decides what the binaries are: the pinned modules, this script (flags), the
# etcd main and the Go toolchain (GOTOOLCHAIN may pick another one from go.mod).
cd "$here"
export GOWORK=off
stamp="$(
	{
		cat go.mod go.sum build.sh cmd/etcd/main.go
		go env GOVERSION
	} | sha256sum | cut -d' ' -f1
)"

fresh() {
	for bin in "${bins[@]}"; do
		[[ -x "$cache/$bin" ]] || return 1
	done
	[[ -f "$cache/stamp" ]] &&
		[[ "$(<"$cache/stamp")" == "$stamp" ]]
}

if fresh; then
	echo "$cache"
	exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
	echo "kubebins: another build holds $cache/.lock; waiting" >&2
	flock 9
fi
# The build we waited for may have produced exactly what we need.
if fresh; then
	echo "$cache"
	exit 0
fi

tmp="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "kubebins: building ${bins[*]} $version into $cache (a cold Go cache takes 6-20 min)" >&2
start=$SECONDS
# -buildvcs=false: the etcd main lives in this repository, and a checkout without git (or owned
# by another user) would otherwise fail the build. gitMajor/gitMinor make /version complete.
CGO_ENABLED=0 go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" \
	-o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kubelet \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	./cmd/etcd

# Replace each binary with a rename so a test that is starting one never sees half a file, and
# write the stamp last so an interrupted build is never taken as done.
rm -f "$cache/stamp"
for bin in "${bins[@]}"; do
	mv -f "$tmp/$bin" "$cache/$bin"
done
echo "$stamp" >"$cache/stamp"
echo "kubebins: built in $((SECONDS - start)) s" >&2
echo "$cache"
