#!/usr/bin/env bash
# bench/run.sh [bench flags]: what `make bench` and `make bench-quick` run.
# As root: installs what the benchmark needs and a fresh machine may lack
# (iptables, ipset, nftables: Debian packages), builds the benchmark and the ztunnel
# stand-in into bin/, and runs the benchmark from the repository's root.
#
#   bench/run.sh           # the full run (about 35 minutes here)
#   bench/run.sh -quick    # the same output in under 10 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
GO=${GO:-go}

if [ "$(id -u)" != 0 ]; then
	echo "bench: run me as root (network namespaces, cgroups, iptables, BPF)" >&2
	exit 1
fi
need=()
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v ipset >/dev/null 2>&1 || need+=(ipset)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if ((${#need[@]})); then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The scale phase runs the real agent against a real kube-apiserver and
# chains the reference CNI plugins: both built from source through the
# module proxy and cached under ~/.cache/meshredirect (instant when warm;
# a few minutes cold), as `make kube-bins cni-bins` does.
case " $* " in
*" -skip-scale "*) ;;
*)
	hack/kubebins/build.sh >/dev/null
	hack/cniplugins/build.sh >/dev/null
	;;
esac

CGO_ENABLED=0 $GO build -o bin/ztunnel-standin ./testenv/cmd/ztunnel-standin
CGO_ENABLED=0 $GO build -o bin/bench ./bench
exec bin/bench -standin bin/ztunnel-standin "$@"
