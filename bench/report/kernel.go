package report

import (
	"fmt"
	"sort"
	"strings"
)

// kernelModes returns the modes with kernel-path runs, in table order.
func (r *reporter) kernelModes() []string { return modesWith(r.res, WorkloadKernel) }

// kernelCase is one family and segment of the kernel path.
type kernelCase struct{ family, segment string }

func (k kernelCase) String() string { return k.family + " " + k.segment }

// slug names k's chart.
func (k kernelCase) slug() string { return strings.ToLower(k.family + "-" + k.segment) }

// kernelCases are the families and segments the kernel path measured.
func (r *reporter) kernelCases() []kernelCase {
	var out []kernelCase
	for _, seg := range []string{SegmentEstablished, SegmentSYN} {
		for _, f := range []string{FamilyIPv4, FamilyIPv6} {
			for _, run := range r.res.Runs {
				if run.Workload == WorkloadKernel && familyOf(run.Family) == f && segmentOf(run.Workload, run.Segment) == seg {
					out = append(out, kernelCase{f, seg})
					break
				}
			}
		}
	}
	return out
}

// notMeasuredCases says which families and segments the kernel path did
// not measure.
func (r *reporter) notMeasuredCases() {
	var miss []string
	if !r.hasFamily(FamilyIPv6) {
		miss = append(miss, "IPv6")
	}
	if !r.hasSegment(SegmentSYN) {
		miss = append(miss, "SYN segments (connection setup)")
	}
	if len(miss) > 0 {
		r.p("%s: not measured in this run.", strings.Join(miss, "; "))
		r.p("")
	}
}

func (r *reporter) kernel() {
	r.p("## Kernel path")
	r.p("")
	modes := r.kernelModes()
	if len(modes) == 0 {
		r.p("Not measured in this run.")
		r.p("")
		return
	}
	r.p("TCP segments of a flow the benchmark holds open through each mode (so that conntrack, connmarks, socket lookups and")
	r.p("programs see what they see for real traffic) are injected as if they arrived on a host veth: `BPF_PROG_TEST_RUN` with")
	r.p("`BPF_F_TEST_XDP_LIVE_FRAMES` and an XDP program that returns `XDP_PASS`, the interface's ifindex in the `xdp_md`")
	r.p("context, %d frames per run, on a thread pinned to CPU %d. The kernel hands each frame to the stack as the interface's",
		r.res.Config.KernelPackets, r.res.Machine.PinnedCPU)
	r.p("driver would (tc ingress, netfilter, routing, forwarding, redirects, and in the same call the softirq work they")
	r.p("queue). The segments carry a bad TCP checksum: they cross everything and are dropped by the destination's TCP layer,")
	r.p("whose `TcpInCsumErrors` (read in every namespace of the copy) proves where each run's segments went: a run counts only")
	r.p("if all of them landed in the expected namespace and none elsewhere. The figure is the kernel's own time per frame")
	r.p("(the test run's `duration`). An established segment is an ACK of the open flow; a SYN is a connection's first")
	r.p("segment (a new conntrack entry, NAT or a listener's socket lookup).")
	r.p("")
	r.p("The hops of a proxied request: `client->proxy` (the client's segment arrives on its host veth), `proxy->server` (the")
	r.p("proxy's upstream segment arrives on ztunnel's host veth), `server->proxy` (the server's reply arrives on its host")
	r.p("veth), `proxy->client` (the proxy's reply arrives on ztunnel's host veth). In the in-pod modes the proxies are in the")
	r.p("pods: a request crosses the node once, from the client pod's proxy to the server pod's (`client->proxy`), and its")
	r.p("reply once the other way (`server->proxy`); its other legs are loopback inside a pod, on no host veth. For `direct`")
	r.p("the same two arrivals go straight to their destination (plain forwarding).")
	r.p("")
	r.load(func(run Run) bool { return run.Workload == WorkloadKernel })
	r.notMeasuredCases()
	r.kernelPerRequest()
	r.kernelPerHop()
	r.effects()
	r.proofs()
}

// kernelPerRequest: the sum of a request's hops, per comparison.
func (r *reporter) kernelPerRequest() {
	cases := r.kernelCases()
	r.p("### Kernel path: per request")
	r.p("")
	r.p("The sum of the hops one request crosses (node modes: four; in-pod modes and `direct`: two), per round; median over")
	r.p("%d rounds [min–max]. The injection itself (the frame restored and dropped by XDP, no stack) costs %.0f ns of each hop.",
		r.res.Config.KernelRounds, r.res.Machine.InjectFloorNs)
	r.p("")
	for _, c := range r.comparisons() {
		r.p("#### %s", c.name)
		r.p("")
		var km []string
		for _, m := range c.modes {
			if r.ranWorkload(m, WorkloadKernel) {
				km = append(km, m)
			}
		}
		if len(km) == 0 {
			r.p("Not measured in this run.")
			r.p("")
			continue
		}
		if m := r.missing(append([]string{c.subject}, c.baselines...)...); m != "" {
			r.p("%s: not measured in this run.", m)
			r.p("")
		}
		var head []string
		for _, k := range cases {
			head = append(head, k.String())
		}
		r.p("ns per request:")
		r.p("")
		r.p("| mode | hops | %s |", strings.Join(head, " | "))
		r.p("|---|---|%s", strings.Repeat("---:|", len(head)))
		for _, m := range km {
			var cells []string
			for _, k := range cases {
				cells = append(cells, statOfRounds(r.requestTotals(m, k.family, k.segment)).cell("%.0f"))
			}
			r.p("| `%s` | %d | %s |", m, len(requestHops(m)), strings.Join(cells, " | "))
		}
		r.p("")
		for _, base := range c.baselines {
			if !r.ranWorkload(base, WorkloadKernel) {
				continue
			}
			var rows []string
			for _, m := range km {
				if m == base {
					continue
				}
				var cells []string
				for _, k := range cases {
					cells = append(cells, r.totalRatio(m, base, k.family, k.segment).cell("%.2f"))
				}
				rows = append(rows, fmt.Sprintf("| `%s` | %s |", m, strings.Join(cells, " | ")))
			}
			r.table(fmt.Sprintf("Against `%s`: median of per-round ratios of the per-request totals [min–max] (lower is better).", base),
				append([]string{"mode"}, head...), "---|"+strings.Repeat("---:|", len(head)), rows)
		}
		r.chartLinks("kernel-request-"+c.slug+".png", "kernel path per request, "+strings.ToLower(c.name))
	}
}

// totalRatio is the median of per-round ratios of the per-request totals.
func (r *reporter) totalRatio(mode, base, family, segment string) stat {
	return statOf(pairedRatios(r.requestTotals(mode, family, segment), r.requestTotals(base, family, segment)))
}

// kernelPerHop: ns per packet on each hop, and each mode against the rules
// of its comparison.
func (r *reporter) kernelPerHop() {
	r.p("### Kernel path: per hop")
	r.p("")
	r.p("Median over %d rounds [min–max] of ns per packet on each hop; below each table the ratios against the rules of the", r.res.Config.KernelRounds)
	r.p("mode's comparison (median of per-round ratios [min–max]; in parentheses the same with the injection floor taken off")
	r.p("both sides: the cost of the hop alone).")
	r.p("")
	for _, k := range r.kernelCases() {
		r.p("#### %s segments", k)
		r.p("")
		r.p("| mode | %s |", strings.Join(KernelPaths, " | "))
		r.p("|---|%s", strings.Repeat("---:|", len(KernelPaths)))
		for _, m := range r.kernelModes() {
			var cells []string
			for _, path := range KernelPaths {
				cells = append(cells, r.median(m, kernelSel(path, k.family, k.segment), nsField).cell("%.0f"))
			}
			r.p("| `%s` | %s |", m, strings.Join(cells, " | "))
		}
		r.p("")
		for _, c := range r.comparisons() {
			for _, base := range c.baselines {
				if !r.ranWorkload(base, WorkloadKernel) {
					continue
				}
				var rows []string
				for _, m := range c.modes {
					if m == base || !r.ranWorkload(m, WorkloadKernel) {
						continue
					}
					var cells []string
					for _, path := range KernelPaths {
						cells = append(cells, r.ratioCell(m, base, kernelSel(path, k.family, k.segment)))
					}
					rows = append(rows, fmt.Sprintf("| `%s` | %s |", m, strings.Join(cells, " | ")))
				}
				r.table(fmt.Sprintf("%s against `%s`:", c.name, base), append([]string{"mode"}, KernelPaths...),
					"---|"+strings.Repeat("---:|", len(KernelPaths)), rows)
			}
		}
		r.chartLinks("kernel-hop-"+k.slug()+".png", "ns per packet by hop and mode, "+k.String())
	}
}

// ratioCell is the ratio of mode against base on one hop, with its
// spread and the floor-subtracted ratio.
func (r *reporter) ratioCell(mode, base string, s sel) string {
	x := r.ratio(mode, base, s, nsField)
	if !x.ok() {
		return "–"
	}
	floor := r.res.Machine.InjectFloorNs
	net := func(run Run) *float64 {
		if run.NsPerPacket == nil {
			return nil
		}
		return f64(*run.NsPerPacket - floor)
	}
	return fmt.Sprintf("%s (%.2f)", x.cell("%.2f"), r.ratio(mode, base, s, net).med)
}

// diff is the median per-round difference ns(mode) - ns(base) on a hop.
func (r *reporter) diff(mode, base string, s sel) (float64, bool) {
	xs := pairedDiffs(byRound(r.res.Runs, mode, s, nsField), byRound(r.res.Runs, base, s, nsField))
	if len(xs) == 0 {
		return 0, false
	}
	return Median(xs), true
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
		if r.ranWorkload(p.mode, WorkloadKernel) && r.ranWorkload(p.base, WorkloadKernel) {
			pairs = append(pairs, p)
		}
	}
	if len(pairs) == 0 {
		return
	}
	r.p("### What each choice changes")
	r.p("")
	r.p("IPv4 established segments: median of per-round differences in ns per packet (positive: the first costs more) and")
	r.p("the ratio.")
	r.p("")
	r.p("| change | %s |", strings.Join(KernelPaths, " | "))
	r.p("|---|%s", strings.Repeat("---:|", len(KernelPaths)))
	for _, p := range pairs {
		var cells []string
		for _, path := range KernelPaths {
			s := kernelSel(path, FamilyIPv4, SegmentEstablished)
			d, ok := r.diff(p.mode, p.base, s)
			ratio := r.ratio(p.mode, p.base, s, nsField)
			if !ok || !ratio.ok() {
				cells = append(cells, "–")
				continue
			}
			cells = append(cells, fmt.Sprintf("%+.0f ns (%.2fx)", d, ratio.med))
		}
		r.p("| %s | %s |", p.what, strings.Join(cells, " | "))
	}
	r.p("")
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
