package report

import (
	"fmt"
	"math"
	"strings"
)

// kernelRatio is the median ns ratio of mode against base on path.
func (r *reporter) kernelRatio(mode, base, path string) (float64, bool) {
	x, ok := findRatio(r.res.Ratios, mode, base, WorkloadKernel, path, 0)
	if !ok || x.NsRatioMedian == nil {
		return 0, false
	}
	return *x.NsRatioMedian, true
}

// worstKernelRatio returns mode's highest ratio against base over the
// paths both have, and that path.
func (r *reporter) worstKernelRatio(mode, base string) (float64, string, int) {
	worst, wpath, n := -1.0, "", 0
	for _, path := range KernelPaths {
		if v, ok := r.kernelRatio(mode, base, path); ok {
			n++
			if v > worst {
				worst, wpath = v, path
			}
		}
	}
	return worst, wpath, n
}

// bestKernelMode returns the eBPF mode whose worst ratio against base is
// lowest.
func (r *reporter) bestKernelMode(base string) (string, float64, string) {
	best, bv, bp := "", math.Inf(1), ""
	for _, m := range r.ebpfModes() {
		if v, p, n := r.worstKernelRatio(m, base); n > 0 && v < bv {
			best, bv, bp = m, v, p
		}
	}
	return best, bv, bp
}

func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**missed**"
}

func (r *reporter) goals() {
	r.p("## Goals")
	r.p("")
	r.p("| goal | measured | |")
	r.p("|---|---|---|")
	for _, g := range []struct {
		base  string
		limit float64
	}{{ModeIptablesNode, 0.4}, {ModeIptablesInpod, 0.5}} {
		if !r.has(g.base) {
			continue
		}
		m, v, path := r.bestKernelMode(g.base)
		if m == "" {
			continue
		}
		var cells []string
		for _, p := range KernelPaths {
			if x, ok := r.kernelRatio(m, g.base, p); ok {
				cells = append(cells, fmt.Sprintf("%s %.2f", p, x))
			}
		}
		r.p("| kernel path: best eBPF mode ≤ %.1fx `%s` on every path it has | `%s`: %s (worst: %s, %.2fx) | %s |",
			g.limit, g.base, m, strings.Join(cells, ", "), path, v, verdict(v <= g.limit))
	}
	if r.has(ModeDirect) {
		best, bv := "", math.Inf(1)
		for _, m := range r.ebpfModes() {
			if v, ok := r.kernelRatio(m, ModeDirect, PathClientProxy); ok && v < bv {
				best, bv = m, v
			}
		}
		if best != "" {
			d, _ := medianOf(r.res.Runs, ModeDirect, WorkloadKernel, PathClientProxy, 0, nsField)
			e, _ := medianOf(r.res.Runs, best, WorkloadKernel, PathClientProxy, 0, nsField)
			r.p("| kernel path: client->proxy no more than `direct` (plain forwarding to the server) | `%s` %.0f ns vs %.0f ns: %.2fx | %s |",
				best, e, d, bv, verdict(bv <= 1.0))
		}
	}
	agent := ModeEBPFTCX
	if !r.has(agent) && len(r.ebpfModes()) > 0 {
		agent = r.ebpfModes()[0]
	}
	for _, g := range []struct {
		base  string
		limit float64
	}{{ModeIptablesNode, 1.0}, {ModeIptablesInpod, 1.0}, {ModeExplicit, 0.97}} {
		if !r.has(g.base) || !r.has(agent) {
			continue
		}
		var cells []string
		okQPS, okCPU := true, true
		n := 0
		for _, c := range r.res.Config.Connections {
			x, ok := findRatio(r.res.Ratios, agent, g.base, WorkloadE2E, PathMaxQPS, c)
			if !ok || x.QPSRatioMedian == nil {
				continue
			}
			n++
			cpu := math.NaN()
			if x.CPURatioMedian != nil {
				cpu = *x.CPURatioMedian
			}
			cells = append(cells, fmt.Sprintf("c=%d %.2f [%.2f–%.2f] (CPU %.2f)", c, *x.QPSRatioMedian, x.RatioMin, x.RatioMax, cpu))
			okQPS = okQPS && *x.QPSRatioMedian >= g.limit
			okCPU = okCPU && !(cpu > 1.0)
		}
		if n == 0 {
			continue
		}
		r.p("| end to end: `%s` QPS ≥ %.2fx `%s` (paired medians), CPU per request no higher | %s | QPS %s, CPU %s |",
			agent, g.limit, g.base, strings.Join(cells, "; "), verdict(okQPS), verdict(okCPU))
	}
	if len(r.res.Programs) > 0 {
		r.programGoals()
	}
	r.p("")
	r.p("QPS cells: the median of per-round ratios [lowest–highest round] and the median CPU-per-request ratio. A goal")
	r.p("missed is missed: the sections below show by how much and where the cost is.")
	r.p("")
}

// programGoal is a limit on one program's ns above an empty program, on
// one kind of segment (empty: both), in both families.
type programGoal struct {
	name, segment string
	limit         float64
}

// programGoals are issue 13's: every check kept, made cheap.
var programGoals = []programGoal{
	{"app_outbound", "", 15},
	{"app_inbound", "", 15},
	{"ztunnel_ingress", "", 42},
	{"ztunnel_assign", "SYN", 160},
	{"ztunnel_assign", "established", 10},
}

// programGoals reports each program against its goal, IPv4 and IPv6.
func (r *reporter) programGoals() {
	for _, g := range programGoals {
		var cells []string
		ok, n := true, 0
		for _, p := range r.res.Programs {
			if p.Name != g.name || (g.segment != "" && p.Segment != g.segment) {
				continue
			}
			n++
			cells = append(cells, fmt.Sprintf("%s %s %.1f", p.Family, p.Segment, p.NsAboveEmpty))
			ok = ok && p.NsAboveEmpty <= g.limit
		}
		if n == 0 {
			continue
		}
		on := "on a SYN and on an established segment"
		if g.segment == "SYN" {
			on = "on a SYN"
		} else if g.segment != "" {
			on = "on an established segment"
		}
		r.p("| per program: `%s` ≤ %.0f ns above an empty program %s | %s | %s |", g.name, g.limit, on, strings.Join(cells, ", "), verdict(ok))
	}
}
