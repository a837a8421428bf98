package report

import (
	"fmt"
	"sort"
	"strings"
)

// kernelModes returns the modes with kernel-path runs, in table order.
func (r *reporter) kernelModes() []string { return modesWith(r.res, WorkloadKernel) }

func (r *reporter) kernel() {
	modes := r.kernelModes()
	if len(modes) == 0 {
		return
	}
	rounds := r.res.Config.KernelRounds
	r.p("## Kernel path")
	r.p("")
	r.p("TCP ACKs of an established flow (a connection the benchmark holds open through each mode, so that conntrack,")
	r.p("connmarks, socket lookups and programs see what they see for real traffic) are injected as if they arrived on a host")
	r.p("veth: `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` and an XDP program that returns `XDP_PASS`, the")
	r.p("interface's ifindex in the `xdp_md` context, %d frames per run, on a thread pinned to CPU %d. The kernel hands each",
		r.res.Config.KernelPackets, r.res.Machine.PinnedCPU)
	r.p("frame to the stack as the interface's driver would (tc ingress, netfilter, routing, forwarding, redirects, and in the")
	r.p("same call the softirq work they queue). The segments carry a bad TCP checksum: they cross everything and are dropped")
	r.p("by the destination's TCP layer, whose `TcpInCsumErrors` (nstat's name for `/proc/net/snmp` Tcp InCsumErrors, read in")
	r.p("every namespace of the copy) proves where each run's segments went: a run counts only if all of them landed in the")
	r.p("expected namespace and none elsewhere. The figure is the kernel's own time per frame (the test run's `duration`).")
	r.p("")
	r.p("The paths are the hops of a proxied request: `client->proxy` (the client's segment arrives on its host veth),")
	r.p("`proxy->server` (the proxy's upstream segment arrives on ztunnel's host veth), `server->proxy` (the server's reply")
	r.p("arrives on its host veth), `proxy->client` (the proxy's reply arrives on ztunnel's host veth). For `direct` the same")
	r.p("arrivals go straight to their destination (plain forwarding between the same interfaces). For the in-pod modes")
	r.p("(`iptables-inpod`, `nftables-inpod`, `ebpf-inpod`) the proxies are in the pods: a request crosses the node once, from")
	r.p("the client pod's proxy to the server pod's HBONE listener (15008), where the pod's capture delivers it to the proxy's")
	r.p("socket (`client->proxy`), and a reply once the other way (`server->proxy`); their other two hops are loopback inside a")
	r.p("pod, on no host veth. The same hops, the same stand-in in the same place, in all three.")
	r.p("")
	r.p("### ns per packet")
	r.p("")
	r.p("Median over %d rounds [min–max]; the injection itself (the frame restored and dropped by the XDP program, no stack)", rounds)
	r.p("costs %.0f ns of each figure.", r.res.Machine.InjectFloorNs)
	r.p("")
	r.p("| mode | %s |", strings.Join(KernelPaths, " | "))
	r.p("|---|%s", strings.Repeat("---:|", len(KernelPaths)))
	for _, m := range modes {
		var cells []string
		for _, path := range KernelPaths {
			cells = append(cells, r.nsCell(m, path))
		}
		r.p("| `%s` | %s |", m, strings.Join(cells, " | "))
	}
	r.p("")
	r.p("![ns per packet by path and mode](%s/kernel-path.png)", r.charts)
	r.p("")
	for _, base := range []string{ModeIptablesNode, ModeIptablesInpod, ModeNftablesInpod, ModeDirect} {
		if !r.has(base) {
			continue
		}
		r.p("### Against `%s`", base)
		r.p("")
		r.p("Median of the per-round ratio ns(mode) / ns(%s) [min–max over rounds]; in parentheses the same with the injection", base)
		r.p("floor taken off both sides (the cost of the path alone).")
		r.p("")
		r.p("| mode | %s |", strings.Join(KernelPaths, " | "))
		r.p("|---|%s", strings.Repeat("---:|", len(KernelPaths)))
		for _, m := range modes {
			if m == base {
				continue
			}
			var cells []string
			for _, path := range KernelPaths {
				cells = append(cells, r.ratioCell(m, base, path))
			}
			r.p("| `%s` | %s |", m, strings.Join(cells, " | "))
		}
		r.p("")
	}
	r.effects()
	r.proofs()
}

// nsCell is "median [min–max]" of mode's ns on path, or "–".
func (r *reporter) nsCell(mode, path string) string {
	var xs []float64
	for _, run := range r.res.Runs {
		if run.Mode == mode && run.Workload == WorkloadKernel && run.Path == path && run.NsPerPacket != nil {
			xs = append(xs, *run.NsPerPacket)
		}
	}
	if len(xs) == 0 {
		return "–"
	}
	lo, hi := minMax(xs)
	return fmt.Sprintf("%.0f [%.0f–%.0f]", Median(xs), lo, hi)
}

// ratioCell is the ratio of mode against base on path, with its spread
// and the floor-subtracted ratio.
func (r *reporter) ratioCell(mode, base, path string) string {
	x, ok := findRatio(r.res.Ratios, mode, base, WorkloadKernel, path, 0)
	if !ok || x.NsRatioMedian == nil {
		return "–"
	}
	net := r.netRatio(mode, base, path)
	return fmt.Sprintf("%.2f [%.2f–%.2f] (%.2f)", *x.NsRatioMedian, x.RatioMin, x.RatioMax, net)
}

// netRatio is the median per-round ratio with the injection floor taken
// off both figures.
func (r *reporter) netRatio(mode, base, path string) float64 {
	floor := r.res.Machine.InjectFloorNs
	byRound := map[int]float64{}
	for _, run := range r.res.Runs {
		if run.Mode == base && run.Workload == WorkloadKernel && run.Path == path && run.NsPerPacket != nil {
			byRound[run.Round] = *run.NsPerPacket - floor
		}
	}
	var xs []float64
	for _, run := range r.res.Runs {
		if run.Mode == mode && run.Workload == WorkloadKernel && run.Path == path && run.NsPerPacket != nil {
			if b, ok := byRound[run.Round]; ok && b > 0 {
				xs = append(xs, (*run.NsPerPacket-floor)/b)
			}
		}
	}
	return Median(xs)
}

// effects shows what each choice of meshredirect changes on the kernel
// path: the redirect helper, the attach mode.
func (r *reporter) effects() {
	type pair struct{ mode, base, what string }
	var pairs []pair
	for _, p := range []pair{
		{ModeEBPFTCXRedir, ModeEBPFTCX, "`bpf_redirect` + MAC rewrite instead of `bpf_redirect_peer` (tcx)"},
		{ModeEBPFTCRedirect, ModeEBPFTC, "`bpf_redirect` + MAC rewrite instead of `bpf_redirect_peer` (legacy tc)"},
		{ModeEBPFTC, ModeEBPFTCX, "legacy tc filters instead of tcx links (`bpf_redirect_peer`)"},
		{ModeEBPFTCX, ModeDirect, "meshredirect (tcx, `bpf_redirect_peer`) instead of no mesh at all"},
	} {
		if r.has(p.mode) && r.has(p.base) {
			pairs = append(pairs, p)
		}
	}
	if len(pairs) == 0 {
		return
	}
	r.p("### What each choice changes")
	r.p("")
	r.p("Median of per-round differences in ns per packet (positive: the first costs more) and the ratio.")
	r.p("")
	r.p("| change | %s |", strings.Join(KernelPaths, " | "))
	r.p("|---|%s", strings.Repeat("---:|", len(KernelPaths)))
	for _, p := range pairs {
		var cells []string
		for _, path := range KernelPaths {
			d, ok := r.diff(p.mode, p.base, path)
			ratio, rok := r.kernelRatio(p.mode, p.base, path)
			if !ok || !rok {
				cells = append(cells, "–")
				continue
			}
			cells = append(cells, fmt.Sprintf("%+.0f ns (%.2fx)", d, ratio))
		}
		r.p("| %s | %s |", p.what, strings.Join(cells, " | "))
	}
	r.p("")
}

// diff is the median per-round difference ns(mode) - ns(base) on path.
func (r *reporter) diff(mode, base, path string) (float64, bool) {
	by := map[int]float64{}
	for _, run := range r.res.Runs {
		if run.Mode == base && run.Workload == WorkloadKernel && run.Path == path && run.NsPerPacket != nil {
			by[run.Round] = *run.NsPerPacket
		}
	}
	var xs []float64
	for _, run := range r.res.Runs {
		if run.Mode == mode && run.Workload == WorkloadKernel && run.Path == path && run.NsPerPacket != nil {
			if b, ok := by[run.Round]; ok {
				xs = append(xs, *run.NsPerPacket-b)
			}
		}
	}
	if len(xs) == 0 {
		return 0, false
	}
	return Median(xs), true
}

func (r *reporter) proofs() {
	if len(r.res.Proofs) == 0 {
		return
	}
	r.p("### Where the packets landed")
	r.p("")
	r.p("A check run of 1000 segments per mode and path before the timed rounds (every timed run is checked the same way):")
	r.p("the change of `TcpInCsumErrors` in each namespace of the copy, and for the eBPF modes the programs' verdict counters.")
	r.p("")
	r.p("| mode | path | injected on | segment | expected | TcpInCsumErrors (client, server, ztunnel, node) | programs' verdicts | |")
	r.p("|---|---|---|---|---|---|---|---|")
	for _, p := range r.res.Proofs {
		var counters []string
		for k, v := range p.Counters {
			counters = append(counters, fmt.Sprintf("%s %d", strings.TrimPrefix(k, "verdict "), v))
		}
		sort.Strings(counters)
		c := strings.Join(counters, ", ")
		if c == "" {
			c = "–"
		}
		ok := "ok"
		if !p.OK {
			ok = "**wrong**"
		}
		r.p("| `%s` | %s | %s | %s | %s | %d, %d, %d, %d | %s | %s |", p.Mode, p.Path, p.Inject, p.Packet, p.Expected,
			p.Landed["client"], p.Landed["server"], p.Landed["ztunnel"], p.Landed["node"], c, ok)
	}
	r.p("")
}
