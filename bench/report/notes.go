package report

import (
	"fmt"
	"strings"
)

// meaning explains the numbers, with the figures of this run.
func (r *reporter) meaning() {
	r.p("## What the numbers mean")
	r.p("")
	floor := r.res.Machine.InjectFloorNs
	// IPv4 established segments on the client->proxy hop: the figures the
	// explanations below quote.
	hop := func(mode string) (float64, bool) {
		s := r.median(mode, kernelSel(PathClientProxy, FamilyIPv4, SegmentEstablished), nsField)
		return s.med, s.ok()
	}
	if r.has(ModeEBPFTCX) && r.has(ModeDirect) {
		e, ok := hop(ModeEBPFTCX)
		d, okD := hop(ModeDirect)
		if ok && okD {
			cmp := "less than"
			if e > d {
				cmp = "more than"
			}
			r.p("- **A redirected segment costs %s a forwarded one.** `ebpf-tcx` client->proxy: %.0f ns; `direct` (the same segment", cmp, e)
			r.p("  forwarded to the server, no mesh): %.0f ns. With `bpf_redirect_peer` the segment leaves the client's host veth", d)
			r.p("  straight into ztunnel's netns (`skb_do_redirect` → the peer's ingress, in the same call): no route lookup, no")
			r.p("  forwarding, no neighbour output, no second trip through the veth's backlog, which ordinary forwarding pays.")
		}
	}
	if r.has(ModeIptablesNode) && r.has(ModeDirect) {
		n, ok := hop(ModeIptablesNode)
		d, okD := hop(ModeDirect)
		if ok && okD {
			r.p("- **What Istio's node-level rules add** to the same hop: %.0f ns over plain forwarding (%.0f vs %.0f): conntrack in", n-d, n, d)
			r.p("  the node (lookup, window tracking, connmark), ~7 mangle rules in PREROUTING and 2 in FORWARD, three policy rules")
			r.p("  before table 102, then in ztunnel's netns a mangle rule and a fwmark rule to make a foreign address local.")
		}
	}
	if d, okD := hop(ModeDirect); okD {
		for _, m := range []string{ModeIptablesInpod, ModeNftablesInpod} {
			n, ok := hop(m)
			if !ok {
				continue
			}
			r.p("- **In-pod rules, `%s`**, cost %.0f ns over plain forwarding on the node crossing (%.0f vs %.0f): the", m, n-d, n, d)
			r.p("  node's probe SNAT puts conntrack and NAT's hooks on the node's forwarding path, and the destination pod runs")
			r.p("  conntrack, its mangle and nat hooks (NAT only looks at a connection's first segment) before local delivery.")
		}
		if n, ok := hop(ModeEBPFInpod); ok {
			r.p("- **`ebpf-inpod`** on the same crossing: %.0f ns against %.0f for plain forwarding: no conntrack on the node or", n, d)
			r.p("  in the pod; the segment meets `pod_ingress` on the server pod's eth0, which passes it to the stand-in's 15008")
			r.p("  (the `passed` verdicts in the proofs).")
		}
	}
	if r.has(ModeEBPFTCXRedir) && r.has(ModeEBPFTCX) {
		if d, ok := r.diff(ModeEBPFTCXRedir, ModeEBPFTCX, kernelSel(PathClientProxy, FamilyIPv4, SegmentEstablished)); ok {
			r.p("- **`bpf_redirect_peer` is the largest single choice**: `bpf_redirect` to the veth's egress costs %+.0f ns on", d)
			r.p("  client->proxy: the segment leaves through the host veth's transmit and the per-CPU backlog before it enters")
			r.p("  ztunnel's netns, where redirect_peer enters the peer's ingress directly; from ztunnel, `bpf_redirect` also takes")
			r.p("  the segment through the pod's host veth egress, where `app_inbound` runs once more and passes it (the `passed`")
			r.p("  verdicts in the proofs above), which redirect_peer skips. Every program that redirects sits at an ingress hook")
			r.p("  (the app's host veth, ztunnel's host veth), so every redirected path can use redirect_peer, and does.")
		}
	}
	if r.has(ModeEBPFTC) && r.has(ModeEBPFTCX) {
		two, ok2 := r.diff(ModeEBPFTC, ModeEBPFTCX, kernelSel(PathClientProxy, FamilyIPv4, SegmentEstablished))
		one, ok1 := r.diff(ModeEBPFTC, ModeEBPFTCX, kernelSel(PathProxyServer, FamilyIPv4, SegmentEstablished))
		if ok1 && ok2 {
			r.p("- **tcx links rather than legacy tc filters**: legacy costs %+.0f ns on client->proxy and %+.0f ns on", two, one)
			r.p("  proxy->server. A segment to ztunnel meets two hooks (the app's host veth, ztunnel's eth0), a segment from ztunnel")
			r.p("  one (ztunnel's host veth: `bpf_redirect_peer` puts it into the pod's netns past the pod veth's egress hook), so")
			r.p("  that is about the same per hook: where tcx runs the program from the device's link list, legacy tc goes through")
			r.p("  the clsact qdisc (its per-CPU counters) and the classifier's filter walk.")
		}
	}
	if len(r.res.Programs) > 0 {
		var parts []string
		blocks := map[string]float64{}
		for _, p := range r.res.Programs {
			if p.Family == "IPv4" && p.Segment == "established" {
				parts = append(parts, fmt.Sprintf("`%s` %.0f ns", p.Name, p.NsAboveEmpty))
			}
		}
		for _, b := range r.res.Blocks {
			blocks[b.Name] = b.NsAboveEmpty
		}
		r.p("- **The programs are a small part of a path**: above an empty program, %s on an IPv4 segment of a flow.", strings.Join(parts, ", "))
		r.p("  A redirected segment meets one program at the app's veth (`app_outbound`) and one in ztunnel's netns")
		r.p("  (`ztunnel_assign`), a segment from ztunnel one (`ztunnel_ingress` on its host veth); what the node routes into")
		r.p("  ztunnel's netns (HBONE from other nodes) meets `ztunnel_egress`: what makes the path cheap is what the kernel no")
		r.p("  longer does (conntrack, netfilter chains, policy routing, forwarding), not the programs.")
		var hash16, hash4, cache, arr, cnt float64
		for k, v := range blocks {
			switch {
			case strings.HasPrefix(k, "endpoints map lookup"):
				hash16 = v
			case strings.HasPrefix(k, "hash lookup with a 4-byte key"):
				hash4 = v
			case strings.HasPrefix(k, "endpoints cache lookup"):
				cache = v
			case strings.HasPrefix(k, "ztunnel map lookup"):
				arr = v
			case strings.HasPrefix(k, "verdict counter"):
				cnt = v
			}
		}
		if len(blocks) > 0 {
			r.p("- **Where a program's nanoseconds go**: one hash lookup costs %.0f ns here (the endpoints map, 16-byte key; %.0f ns", hash16, hash4)
			r.p("  with a 4-byte key: the helper call and the bucket walk dominate, not the hashing); an array lookup the verifier")
			r.p("  inlines costs %.0f ns (the endpoints cache, indexed by a hash of the address the program computes itself), %.0f ns", cache, arr)
			r.p("  for the ztunnel map; the verdict counter %.0f ns. So the programs look an address up in the cache, compare the", cnt)
			r.p("  16-byte key stored in the slot, and call the hash map only when the slot holds another address and is marked")
			r.p("  as shared (`maps/doc.go`): a source check on every SYN, `ztunnel_ingress`'s lookup on every segment from ztunnel,")
			r.p("  `ztunnel_egress`'s on every packet routed into ztunnel and `ztunnel_assign`'s direction cost an inlined array")
			r.p("  access, not a helper call.")
			r.p("  `ztunnel_assign`'s SYN is dominated by its socket lookups (the established table to find a TIME_WAIT or a")
			r.p("  connection, then the listener by a wildcard tuple), each a helper call into the TCP hash tables.")
		}
	}
	if floor > 0 {
		r.p("- **The injection floor** (%.0f ns, the frame restored and dropped by XDP) is in every kernel-path figure; the ratios in", floor)
		r.p("  parentheses take it off, and are the cost of the paths alone.")
	}
	r.e2eMeaning()
	r.p("")
}

// e2eMeaning says what the end-to-end figures can and cannot tell.
func (r *reporter) e2eMeaning() {
	r.p("- **End to end, the proxies cost most.** CPU per request counts every process of the copy on one CPU: the load")
	r.p("  generator, the server and the stand-ins, and the kernel work of every segment. How much of a difference between two")
	r.p("  modes the kernel path explains is computed in %s", linkCPU)
	r.p("  where the segments per request were measured, and not claimed where they were not. Node and in-pod figures are")
	r.p("  not compared with each other: an in-pod request crosses two proxies.")
	r.p("- **Saturation p99 is queueing**: at max QPS a request waits behind the other connections' requests; the")
	r.p("  fixed-rate percentiles measure the path. With every process on one CPU, CPU per request and max QPS move")
	r.p("  together; at low concurrency QPS also depends on wake-up latency, and one-CPU runs of %s on a busy machine are", r.res.Config.E2EDuration)
	r.p("  the noisiest figures here.")
}

// istioSnapshot is the istio/istio commit whose in-pod rules the in-pod
// modes install (bench/mode_iptables_inpod.go, mode_nftables_inpod.go).
const istioSnapshot = "86c9f01fd735"

// rules prints what each mode ran.
func (r *reporter) rules() {
	if len(r.res.Scripts) == 0 {
		return
	}
	r.p("## What each mode ran")
	r.p("")
	r.p("Exactly the commands, in the namespaces of the mode's copy (addresses of this run: node 198.18.0.1, client")
	r.p("198.18.16.1, server 198.18.16.2, ztunnel 198.18.16.3). Every copy also turns IPv4 reverse path filtering off on")
	r.p("every interface of every namespace (proxies send with their clients' addresses; no mode pays for a check another skips).")
	r.p("")
	for _, m := range r.allModes() {
		scripts := r.res.Scripts[m]
		if scripts == "" {
			continue
		}
		r.p("### `%s`", m)
		r.p("")
		switch m {
		case ModeIptablesNode:
			r.p("Istio's node-level ambient rules (istio-cni 1.18–1.20, as istio/ztunnel's `scripts/node-redirect.sh` and")
			r.p("`ztunnel-redirect.sh` reproduce them), reproduced rule for rule. Simplified: VXLAN with Geneve's VNIs (1000, 1001)")
			r.p("and port (6081) stands in for Geneve, which this kernel lacks (`ip link add type geneve` fails); IPv4 only; no")
			r.p("kube-proxy chains (no Service here). Note what the rules do to an established flow: after ztunnel's first reply the")
			r.p("connection carries connmark 0x210, and later client segments take table 102 (mark 0x40) to ztunnel's veth, not the")
			r.p("tunnel; only connection requests cross istioout/istioin: the SYN path, where the kernel path measures it.")
		case ModeIptablesInpod:
			if !r.inpodTPROXY() {
				r.p("Istio's in-pod rules as Istio installs them today (istio-cni, ambient in-pod redirection by `nat` REDIRECT since")
				r.p("1.24, istio/istio #52622; the older TPROXY rules were removed in 1.25): `cni/pkg/iptables/testdata/default.golden` for")
				r.p("IPv4 and the IPv6 half of `default_ipv6.golden`, istio/istio at commit %s, rule for rule, in both pods: nat", istioSnapshot)
				r.p("REDIRECT of outbound TCP to 15001, of inbound TCP (except HBONE's 15008) to 15006 and of DNS to 15053; mangle")
				r.p("connmark 0x539 → 0x111 and its restore; raw CT zone 1 for DNS. Beside them Istio's routing (`iptables_linux.go`:")
				r.p("fwmark 0x111 → table 100, a local route to `lo`), and on the node only the SNAT of kubelet's probes")
				r.p("(`hostprobe.golden`, `iptables.go` AppendHostRules), with the pods in its ipsets. The probe sources are Istio's")
				r.p("defaults, 169.254.7.127 and fd16:9254:7127:1337:ffff:ffff:ffff:ffff (the golden files' IPv6 one is a test value).")
				r.p("The stand-in runs as ztunnel does in-pod (one process in ztunnel's pod,")
				r.p("`-zds`: handed each pod over ZDS, it opens its listeners in the pod's netns, SO_MARK 0x539 on every socket) and")
				r.p("reads each redirected connection's original destination with `SO_ORIGINAL_DST`, as ztunnel does.")
				break
			}
			r.p("Istio's in-pod rules (istio-cni 1.21–1.23, `cni/pkg/iptables`, the `tproxy.golden` set with marks 0x539/0x111) in")
			r.p("both pods, and the node's probe SNAT. This is the TPROXY variant Istio replaced with nat REDIRECT in 1.24 and removed")
			r.p("in 1.25. One change: outbound capture. Istio has")
			r.p("")
			r.p("```")
			for _, l := range inpodIstioOriginal {
				r.p("iptables %s", l)
			}
			r.p("```")
			r.p("")
			r.p("and ztunnel reads the original destination with `SO_ORIGINAL_DST`; the stand-in, like ztunnel's TPROXY listeners,")
			r.p("takes it from the accepted socket's local address, which REDIRECT rewrites to 127.0.0.1. So outbound segments are")
			r.p("marked 0x112 in mangle OUTPUT, routed to `lo` by that mark and TPROXYed to 15001 as they come back in on `lo` (the")
			r.p("lines with 0x112). Both put every outbound segment through `lo` once; REDIRECT would NAT it instead of a socket")
			r.p("lookup. ztunnel's SO_MARK 0x539 is set on the stand-in's sockets by a cgroup/sock_create program on the proxy cgroup.")
			r.p("As with Istio's REDIRECT, the proxy's SYN-ACK to the app (mark 0x539, over `lo`) gives the app's connection connmark")
			r.p("0x111, so its later segments are restored to 0x111 and delivered locally by table 100: only connection requests take")
			r.p("the 0x112 path.")
		case ModeNftablesInpod:
			r.p("The same rules with nftables, as istio-cni's nftables backend installs them: `cni/pkg/nftables/testdata/`")
			r.p("`default_ipv6.golden` (the dual-stack set; `default.golden` is its IPv4 lines), istio/istio at commit %s, with", istioSnapshot)
			r.p("`nft -f` in both pods (three inet tables: nat, mangle, raw), the same routing, and on the node the probes' SNAT of")
			r.p("`hostprobe_ipv6.golden` with its sets declared and `skuid 0` for the golden file's test uid. Same stand-in, same")
			r.p("placement as `iptables-inpod`.")
		case ModeEBPFInpod:
			r.p("meshredirect's in-pod mode (DESIGN.md §6), as the agent sets it up: `dataplane.EnrollInPod` for the client and the")
			r.p("server (tcx programs on each pod's eth0 and lo, `bpf_sk_assign` to the stand-in's sockets in the pod, policy")
			r.p("routing for local delivery), nothing on the node, no iptables or nftables rule anywhere. Same stand-in, same")
			r.p("placement as `iptables-inpod`: what differs between the three in-pod modes is the capture alone.")
		case ModeExplicit:
			r.p("No capture: policy routing makes ztunnel the next hop of the client's and the server's traffic, and the client dials")
			r.p("the stand-in's outbound port (15001) at the server's address (the server listens on 15001 too), so the stand-in")
			r.p("carries the connection through the same listener and splice as a captured one. The stand-in refuses a connection")
			r.p("to its own address (it would loop), and fortio cannot speak HBONE (HTTP/2 CONNECT on 15008), whose framing would")
			r.p("add proxy work besides. Measured end to end only. The rules are testenv's `SteerToZtunnel` (IPv6 twins not shown).")
		}
		r.p("")
		r.p("```sh")
		r.b.WriteString(scripts)
		r.p("```")
		r.p("")
	}
}

func (r *reporter) limits() {
	r.p("## Not measured, and limits")
	r.p("")
	for _, s := range r.res.Skipped {
		r.p("- %s.", s)
	}
	if !r.hasFamily(FamilyIPv6) {
		r.p("- IPv6: not measured in this run (IPv4 only); the datapath's IPv6 is covered by the tests.")
	}
	r.p("- The stand-in is not ztunnel: no mTLS. In node mode it splices plaintext and carries a same-node request in one")
	r.p("  hop; in the in-pod modes it does as ztunnel does in-pod, the client pod's 15001 tunnelling to the server pod's 15008")
	r.p("  over HBONE (plaintext HTTP/2 CONNECT), so their requests cross two proxies where the node-level modes cross one:")
	r.p("  compare the in-pod modes with each other (same stand-in, same placement), node-level modes with node-level ones.")
	r.p("- The kernel path injects from a thread in the node's namespace; cost charged there (softirq work of the veths and")
	r.p("  the redirects) is counted, work a real sender does in its own namespace (its socket, its qdisc) is not.")
	r.p("- Each pod's netns gets its own ephemeral port range (client 10000–29999, ztunnel 30000–44999, server 45000–60999):")
	r.p("  the proxies connect upstream with their client's address, and where a client's connection and a proxy's meet one")
	r.p("  namespace (the node's conntrack in `iptables-node`, the server pod in the in-pod modes, where the stand-in's")
	r.p("  connection to the server from the client's address meets the client's own) an equal port would put two connections")
	r.p("  on one tuple (seen as SYN challenges and 3 s stalls at 64 connections before the ranges were split).")
	r.p("- Per-program figures are a few ns each: on a busy machine they move by more than that between runs (the empty")
	r.p("  program itself moves); compare them within one run.")
	r.p("- In the iptables and nftables modes conntrack verifies no checksum and tracks windows liberally (`nf_conntrack_checksum=0`,")
	r.p("  `nf_conntrack_tcp_be_liberal=1`), so that injected segments count as the established flow they copy; a real")
	r.p("  segment from a local veth is not verified either (CHECKSUM_PARTIAL).")
	r.p("")
}

// inpodIstioOriginal is the line the TPROXY variant of iptables-inpod
// changed (results written before the REDIRECT rules), as Istio has it.
var inpodIstioOriginal = []string{
	"-t nat -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
}
