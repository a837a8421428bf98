package main

import (
	"fmt"
	"strings"
)

func (r *reporter) endToEnd() {
	modes := modesWith(r.res, WorkloadE2E)
	if len(modes) == 0 {
		return
	}
	cfg := r.res.Config
	r.p("## End to end")
	r.p("")
	r.p("HTTP/1.1 GETs through the stand-in, fortio v1.68.2 used as a library (its fast client, keep-alive, 1 µs histogram")
	r.p("resolution: fortio's `-r 0.000001`) in the client pod against fortio's echo server in the server pod. Every process of a")
	r.p("copy (load generator, server, stand-ins) runs in the copy's own cgroup v2 and is pinned to CPU %d, so the copy gets", r.res.Machine.PinnedCPU)
	r.p("one CPU: max QPS is what one CPU does, and CPU per request is the cgroup's `cpu.stat` usage_usec over the run divided")
	r.p("by the requests (load generator and server included: the same in every mode). %d rounds of %s runs, modes interleaved.",
		cfg.E2ERounds, cfg.E2EDuration)
	r.p("")
	r.p("### Max QPS and CPU per request")
	r.p("")
	r.p("Median over rounds: QPS, and µs of CPU per request in parentheses.")
	r.p("")
	var head []string
	for _, c := range cfg.Connections {
		head = append(head, fmt.Sprintf("c=%d", c))
	}
	r.p("| mode | %s |", strings.Join(head, " | "))
	r.p("|---|%s", strings.Repeat("---:|", len(head)))
	for _, m := range modes {
		var cells []string
		for _, c := range cfg.Connections {
			q, n := medianOf(r.res.Runs, m, WorkloadE2E, PathMaxQPS, c, qpsField)
			u, _ := medianOf(r.res.Runs, m, WorkloadE2E, PathMaxQPS, c, cpuField)
			if n == 0 {
				cells = append(cells, "–")
				continue
			}
			cells = append(cells, fmt.Sprintf("%.0f (%.1f)", q, u))
		}
		r.p("| `%s` | %s |", m, strings.Join(cells, " | "))
	}
	r.p("")
	var shares []float64
	for _, run := range r.res.Runs {
		if run.Workload == WorkloadE2E && run.Path == PathMaxQPS && run.CPUShare != nil {
			shares = append(shares, *run.CPUShare)
		}
	}
	retries, starvedRuns, total := 0, 0, 0
	for _, run := range r.res.Runs {
		if run.Workload == WorkloadE2E {
			total++
			retries += run.Retries
			if run.Starved {
				starvedRuns++
			}
		}
	}
	if len(shares) > 0 {
		lo, _ := minMax(shares)
		r.p("During the max-QPS runs the copy used a median %.2f of its pinned CPU (lowest %.2f). A run that did not get its", median(shares), lo)
		r.p("CPU (a max-QPS run below %.1f of it: every process of the copy is on that CPU, so it is CPU-bound; a fixed-rate run", r.res.Config.MinCPUShare)
		r.p("more than 10%% short of its rate) was starved by other work on the machine and is run again, at most twice:")
		r.p("%d retries in this run; %d of %d runs still starved, kept in the JSON (`starved`) and left out of every median", retries, starvedRuns, total)
		r.p("and ratio.")
		r.p("")
	}
	r.p("![QPS by connections](%s/e2e-qps.png) ![p99 by connections](%s/e2e-p99.png)", r.charts, r.charts)
	r.p("")
	r.p("### Latency at %.0f QPS, %d connections", cfg.FixedQPS, cfg.FixedQPSConns)
	r.p("")
	r.p("| mode | p50 µs | p90 µs | p99 µs | CPU µs per request |")
	r.p("|---|---:|---:|---:|---:|")
	for _, m := range modes {
		f := func(field func(Run) *float64) string {
			v, n := medianOf(r.res.Runs, m, WorkloadE2E, PathFixedQPS, cfg.FixedQPSConns, field)
			if n == 0 {
				return "–"
			}
			return fmt.Sprintf("%.0f", v)
		}
		r.p("| `%s` | %s | %s | %s | %s |", m, f(func(x Run) *float64 { return x.P50us }), f(func(x Run) *float64 { return x.P90us }),
			f(func(x Run) *float64 { return x.P99us }), f(cpuField))
	}
	r.p("")
	for _, base := range []string{ModeIptablesNode, ModeIptablesInpod, ModeExplicit, ModeDirect} {
		if !r.has(base) {
			continue
		}
		r.p("### Against `%s`", base)
		r.p("")
		r.p("Median of per-round ratios: QPS (higher is better) / CPU per request (lower is better) / p99 (lower is better);")
		r.p("the last column is the fixed-rate run.")
		r.p("")
		head := append([]string{}, head...)
		head = append(head, fmt.Sprintf("%.0f QPS", cfg.FixedQPS))
		r.p("| mode | %s |", strings.Join(head, " | "))
		r.p("|---|%s", strings.Repeat("---:|", len(head)))
		for _, m := range modes {
			if m == base {
				continue
			}
			var cells []string
			for _, c := range cfg.Connections {
				cells = append(cells, e2eRatioCell(r.res.Ratios, m, base, PathMaxQPS, c))
			}
			cells = append(cells, e2eRatioCell(r.res.Ratios, m, base, PathFixedQPS, cfg.FixedQPSConns))
			r.p("| `%s` | %s |", m, strings.Join(cells, " | "))
		}
		r.p("")
	}
}

func e2eRatioCell(ratios []Ratio, mode, base, path string, conns int) string {
	x, ok := findRatio(ratios, mode, base, WorkloadE2E, path, conns)
	if !ok {
		return "–"
	}
	g := func(v *float64) string {
		if v == nil {
			return "–"
		}
		return fmt.Sprintf("%.2f", *v)
	}
	return g(x.QPSRatioMedian) + " / " + g(x.CPURatioMedian) + " / " + g(x.P99RatioMedian)
}

func (r *reporter) programs() {
	if len(r.res.Programs) == 0 {
		return
	}
	r.p("## Per program")
	r.p("")
	r.p("`BPF_PROG_TEST_RUN` of each program, beside an empty tc program (`r0 = TC_ACT_UNSPEC; exit`) in the same process on")
	r.p("the same pinned thread, in rounds that alternate the two (as `asm/bench_test.go` does); the figure is the median of the")
	r.p("per-round differences. The programs have their own maps, filled as a copy's are (client and server enrolled, ztunnel")
	r.p("ready). Instructions: generated; verified: what the verifier walked (`verified_insns`, 5.16+). %d rounds of %d runs.",
		r.res.Config.ProgramRounds, r.res.Config.ProgramRepeats)
	r.p("")
	r.p("Each program runs on the interface it is attached to (`skb->ifindex`, and `skb->ingress_ifindex` where the packet")
	r.p("entered the node), so the source and destination checks take the path they take on a node; each case is run once")
	r.p("first and must count the verdict shown, the path measured. `ztunnel_assign` runs in the ztunnel netns of an eBPF copy,")
	r.p("where the stand-in listens: on a SYN, `BPF_PROG_TEST_RUN` is no tc ingress hook, so `bpf_sk_assign` refuses after")
	r.p("every lookup has been made (`assign_failed`); the refusal itself is a few instructions.")
	r.p("")
	r.p("| program | packet | segment | IPv4 ns above empty | IPv6 ns above empty | verdict | IPv4 ns | empty ns | instructions | verified |")
	r.p("|---|---|---|---:|---:|---|---:|---:|---:|---:|")
	type key struct{ name, segment string }
	v6 := map[key]Program{}
	for _, p := range r.res.Programs {
		if p.Family == "IPv6" {
			v6[key{p.Name, p.Segment}] = p
		}
	}
	for _, p := range r.res.Programs {
		if p.Family == "IPv6" {
			continue
		}
		six := "–"
		if q, ok := v6[key{p.Name, p.Segment}]; ok {
			six = fmt.Sprintf("%.1f", q.NsAboveEmpty)
		}
		r.p("| `%s` | %s | %s | %.1f | %s | `%s` | %.1f | %.1f | %d | %d |", p.Name, p.Packet, p.Segment, p.NsAboveEmpty, six, p.Verdict,
			p.NsPerPacket, p.EmptyNs, p.Instructions, p.VerifiedInstructions)
	}
	r.p("")
	r.p("### Building blocks")
	r.p("")
	r.p("Each alone in a tc program, measured the same way, to attribute the programs' cost.")
	r.p("")
	r.p("| block | ns above empty | instructions |")
	r.p("|---|---:|---:|")
	for _, p := range r.res.Blocks {
		r.p("| %s | %.1f | %d |", p.Name, p.NsAboveEmpty, p.Instructions)
	}
	r.p("")
}
