package report

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
		r.p("During the max-QPS runs the copy used a median %.2f of its pinned CPU (lowest %.2f). A run that did not get its", Median(shares), lo)
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
	for _, base := range []string{ModeIptablesNode, ModeIptablesInpod, ModeNftablesInpod, ModeExplicit, ModeDirect} {
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
