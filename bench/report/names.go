package report

// Mode names, as latest.json records them. The eBPF modes are
// meshredirect's dataplane with an attach mode (legacy tc filters or tcx
// links) and a redirect helper (bpf_redirect_peer, or bpf_redirect with a
// MAC rewrite). The in-pod modes run ztunnel's listeners in each pod's
// netns (one stand-in process with -zds, the same in all three) and differ
// in the capture alone: Istio's current rules with iptables
// (cni/pkg/iptables/testdata/default.golden: nat REDIRECT to 15001, 15006
// and 15053, mangle connmark 0x539 -> 0x111, raw CT zone 1 for DNS) or
// with nftables (cni/pkg/nftables/testdata/default.golden), read in
// istio/istio at commit 86c9f01fd735, or meshredirect's in-pod programs
// (ebpf-inpod, tcx, no rule anywhere).
const (
	ModeDirect         = "direct"
	ModeExplicit       = "explicit"
	ModeIptablesNode   = "iptables-node"
	ModeIptablesInpod  = "iptables-inpod"
	ModeNftablesInpod  = "nftables-inpod"
	ModeEBPFInpod      = "ebpf-inpod"
	ModeEBPFTC         = "ebpf-tc"
	ModeEBPFTCX        = "ebpf-tcx"
	ModeEBPFTCRedirect = "ebpf-tc-redirect"
	ModeEBPFTCXRedir   = "ebpf-tcx-redirect"
)

// IsEBPF reports whether mode is one of meshredirect's.
func IsEBPF(mode string) bool {
	switch mode {
	case ModeEBPFTC, ModeEBPFTCX, ModeEBPFTCRedirect, ModeEBPFTCXRedir, ModeEBPFInpod:
		return true
	}
	return false
}

// IsInPod reports whether mode puts ztunnel's listeners in each pod's
// network namespace (Istio 1.21+): two proxies per request, one node
// crossing each way.
func IsInPod(mode string) bool {
	switch mode {
	case ModeIptablesInpod, ModeNftablesInpod, ModeEBPFInpod:
		return true
	}
	return false
}

// Families: the IP family of a run's traffic.
const (
	FamilyIPv4 = "IPv4"
	FamilyIPv6 = "IPv6"
)

// Segments a kernel-path run injects.
const (
	// SegmentEstablished is an ACK of a connection the copy holds open.
	SegmentEstablished = "established"
	// SegmentSYN is a connection's first segment: a new conntrack entry,
	// the socket lookup of a listener.
	SegmentSYN = "SYN"
)

// Workloads: what a run measured.
const (
	// WorkloadKernel is the kernel path: packets injected on a host veth
	// with XDP live frames, ns per packet until the destination's TCP layer.
	WorkloadKernel = "kernel-path"
	// WorkloadE2E is HTTP through the stand-in with fortio.
	WorkloadE2E = "end-to-end"
	// WorkloadConnect is new connections per second: each request on a
	// connection of its own (no keep-alive), through the stand-in.
	WorkloadConnect = "new-connections"
)

// The kernel paths, named by the hop of a proxied request they measure.
const (
	PathClientProxy = "client->proxy"
	PathProxyServer = "proxy->server"
	PathServerProxy = "server->proxy"
	PathProxyClient = "proxy->client"
)

// KernelPaths lists the kernel paths in the order of a request's hops,
// the order of the tables' columns.
var KernelPaths = []string{PathClientProxy, PathProxyServer, PathServerProxy, PathProxyClient}

// End-to-end "paths": which kind of fortio run.
const (
	// PathMaxQPS is a run at the highest rate fortio reaches (-qps -1).
	PathMaxQPS = "max-qps"
	// PathFixedQPS is a run at a fixed rate, for latency percentiles.
	PathFixedQPS = "fixed-qps"
)
