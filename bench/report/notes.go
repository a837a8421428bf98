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
	if r.has(ModeEBPFTCX) && r.has(ModeDirect) {
		e, n := medianOf(r.res.Runs, ModeEBPFTCX, WorkloadKernel, PathClientProxy, 0, nsField)
		d, _ := medianOf(r.res.Runs, ModeDirect, WorkloadKernel, PathClientProxy, 0, nsField)
		if n > 0 {
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
		n, k := medianOf(r.res.Runs, ModeIptablesNode, WorkloadKernel, PathClientProxy, 0, nsField)
		d, _ := medianOf(r.res.Runs, ModeDirect, WorkloadKernel, PathClientProxy, 0, nsField)
		if k > 0 {
			r.p("- **What Istio's node-level rules add** to the same hop: %.0f ns over plain forwarding (%.0f vs %.0f): conntrack in", n-d, n, d)
			r.p("  the node (lookup, window tracking, connmark), ~7 mangle rules in PREROUTING and 2 in FORWARD, three policy rules")
			r.p("  before table 102, then in ztunnel's netns a mangle rule and a fwmark rule to make a foreign address local.")
		}
	}
	if r.has(ModeDirect) {
		d, _ := medianOf(r.res.Runs, ModeDirect, WorkloadKernel, PathClientProxy, 0, nsField)
		for _, m := range []string{ModeIptablesInpod, ModeNftablesInpod} {
			n, k := medianOf(r.res.Runs, m, WorkloadKernel, PathClientProxy, 0, nsField)
			if k == 0 {
				continue
			}
			r.p("- **In-pod rules, `%s`**, cost %.0f ns over plain forwarding on the node crossing (%.0f vs %.0f): the", m, n-d, n, d)
			r.p("  node's probe SNAT puts conntrack and NAT's hooks on the node's forwarding path, and the destination pod runs")
			r.p("  conntrack, its mangle and nat hooks (NAT only looks at a connection's first segment) before local delivery.")
		}
		if n, k := medianOf(r.res.Runs, ModeEBPFInpod, WorkloadKernel, PathClientProxy, 0, nsField); k > 0 {
			r.p("- **`ebpf-inpod`** on the same crossing: %.0f ns against %.0f for plain forwarding: no conntrack on the node or", n, d)
			r.p("  in the pod; the segment meets `pod_ingress` on the server pod's eth0, which passes it to the stand-in's 15008")
			r.p("  (the `passed` verdicts in the proofs).")
		}
	}
	if r.has(ModeEBPFTCXRedir) && r.has(ModeEBPFTCX) {
		if d, ok := r.diff(ModeEBPFTCXRedir, ModeEBPFTCX, PathClientProxy); ok {
			r.p("- **`bpf_redirect_peer` is the largest single choice**: `bpf_redirect` to the veth's egress costs %+.0f ns on", d)
			r.p("  client->proxy: the segment leaves through the host veth's transmit and the per-CPU backlog before it enters")
			r.p("  ztunnel's netns, where redirect_peer enters the peer's ingress directly; from ztunnel, `bpf_redirect` also takes")
			r.p("  the segment through the pod's host veth egress, where `app_inbound` runs once more and passes it (the `passed`")
			r.p("  verdicts in the proofs above), which redirect_peer skips. Every program that redirects sits at an ingress hook")
			r.p("  (the app's host veth, ztunnel's host veth), so every redirected path can use redirect_peer, and does.")
		}
	}
	if r.has(ModeEBPFTC) && r.has(ModeEBPFTCX) {
		two, ok2 := r.diff(ModeEBPFTC, ModeEBPFTCX, PathClientProxy)
		one, ok1 := r.diff(ModeEBPFTC, ModeEBPFTCX, PathProxyServer)
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

// e2eMeaning relates the end-to-end CPU per request to the kernel path.
func (r *reporter) e2eMeaning() {
	c := 16
	found := false
	for _, x := range r.res.Config.Connections {
		if x == c {
			found = true
		}
	}
	if !found && len(r.res.Config.Connections) > 0 {
		c = r.res.Config.Connections[len(r.res.Config.Connections)-1]
	}
	cpu := func(m string) (float64, bool) {
		v, n := medianOf(r.res.Runs, m, WorkloadE2E, PathMaxQPS, c, cpuField)
		return v, n > 0
	}
	d, okD := cpu(ModeDirect)
	e, okE := cpu(ModeEBPFTCX)
	n, okN := cpu(ModeIptablesNode)
	x, okX := cpu(ModeExplicit)
	if !okD || !okE {
		return
	}
	r.p("- **End to end, the proxy costs most and redirection shows.** CPU per request at c=%d (the whole copy on one CPU):", c)
	r.p("  `direct` %.0f µs (fortio and the server), `ebpf-tcx` %.0f µs: the stand-in's hop adds %.0f µs.", d, e, e-d)
	if okN {
		kn, _ := medianOf(r.res.Runs, ModeIptablesNode, WorkloadKernel, PathClientProxy, 0, nsField)
		ke, _ := medianOf(r.res.Runs, ModeEBPFTCX, WorkloadKernel, PathClientProxy, 0, nsField)
		per := (kn - ke) / 1000
		r.p("  `iptables-node` costs %.0f µs more per request; at %.1f µs more per segment on the kernel path that is about %.0f", n-e, per, (n-e)/per)
		r.p("  segments per request, what a keep-alive request and its response cost on two legs (data and ACKs each way on")
		r.p("  client<->proxy and proxy<->server, some coalesced): the kernel-path difference accounts for the end-to-end one.")
	}
	if okX {
		if e <= x {
			kd, _ := medianOf(r.res.Runs, ModeDirect, WorkloadKernel, PathClientProxy, 0, nsField)
			ke, _ := medianOf(r.res.Runs, ModeEBPFTCX, WorkloadKernel, PathClientProxy, 0, nsField)
			r.p("  `explicit` (no capture, policy routing only) costs %.0f µs, %.0f µs more than `ebpf-tcx`. Part of that is the", x, x-e)
			r.p("  node forwarding its segments as it forwards `direct`'s (%.2f µs per segment more than `bpf_redirect_peer` on", (kd-ke)/1000)
			r.p("  the kernel path); the rest is not explained by the kernel path and moves between runs on this machine.")
		} else {
			r.p("  `explicit` (no capture, policy routing only) costs %.0f µs, %.0f µs less than `ebpf-tcx`.", x, e-x)
		}
	}
	r.p("  With every process on one CPU, CPU per request and max QPS move together; at low concurrency QPS also")
	r.p("  depends on wake-up latency, and one-CPU runs of %s on a busy machine are the noisiest figures here.", r.res.Config.E2EDuration)
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
	for _, m := range r.res.Config.Modes {
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
			r.p("tunnel; only connection requests cross istioout/istioin. The kernel path measures established segments.")
		case ModeIptablesInpod:
			r.p("Istio's in-pod rules as Istio installs them today (istio-cni, ambient in-pod redirection by `nat` REDIRECT since")
			r.p("1.24, istio/istio #52622; the TPROXY variant was removed in 1.25): `cni/pkg/iptables/testdata/default.golden` for")
			r.p("IPv4 and the IPv6 half of `default_ipv6.golden`, istio/istio at commit %s, rule for rule, in both pods: nat", istioSnapshot)
			r.p("REDIRECT of outbound TCP to 15001, of inbound TCP (except HBONE's 15008) to 15006 and of DNS to 15053; mangle")
			r.p("connmark 0x539 → 0x111 and its restore; raw CT zone 1 for DNS. Beside them Istio's routing (`iptables_linux.go`:")
			r.p("fwmark 0x111 → table 100, a local route to `lo`), and on the node only the SNAT of kubelet's probes")
			r.p("(`hostprobe.golden`, `iptables.go` AppendHostRules), with the pods in its ipsets. The probe sources are Istio's")
			r.p("defaults, 169.254.7.127 and fd16:9254:7127:1337:ffff:ffff:ffff:ffff (the golden files' IPv6 one is a test value).")
			r.p("The stand-in runs as ztunnel does in-pod (one process in ztunnel's pod,")
			r.p("`-zds`: handed each pod over ZDS, it opens its listeners in the pod's netns, SO_MARK 0x539 on every socket) and")
			r.p("reads each redirected connection's original destination with `SO_ORIGINAL_DST`, as ztunnel does.")
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
	r.p("- IPv4 only; the datapath's IPv6 is covered by the tests, not by this benchmark.")
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
