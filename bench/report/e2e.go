package report

import (
	"fmt"
	"math"
	"strings"
)

// concurrencies are the max-QPS runs' connection counts.
func (r *reporter) concurrencies() []int {
	if len(r.res.Config.Connections) > 0 {
		return r.res.Config.Connections
	}
	return r.workloadConns(WorkloadE2E, PathMaxQPS)
}

func connHead(conns []int) []string {
	var head []string
	for _, c := range conns {
		head = append(head, fmt.Sprintf("c=%d", c))
	}
	return head
}

func (r *reporter) endToEnd() {
	r.p("## End to end")
	r.p("")
	modes := modesWith(r.res, WorkloadE2E)
	if len(modes) == 0 {
		r.p("Not measured in this run.")
		r.p("")
		return
	}
	cfg := r.res.Config
	r.p("HTTP/1.1 GETs through the stand-in, fortio v1.68.2 used as a library (its fast client, keep-alive, 1 µs histogram")
	r.p("resolution: fortio's `-r 0.000001`) in the client pod against fortio's echo server in the server pod. Every process of a")
	r.p("copy (load generator, server, stand-ins) runs in the copy's own cgroup v2 and is pinned to CPU %d, so the copy gets", r.res.Machine.PinnedCPU)
	r.p("one CPU: max QPS is what one CPU does, and CPU per request is the cgroup's `cpu.stat` usage_usec over the run divided")
	r.p("by the requests (load generator and server included: the same in every mode). %d rounds of %s runs, modes interleaved.",
		cfg.E2ERounds, cfg.E2EDuration)
	r.p("")
	r.load(func(run Run) bool { return run.Workload == WorkloadE2E })
	r.starvation()
	if !r.hasFamily(FamilyIPv6) {
		r.p("IPv6: not measured in this run.")
		r.p("")
	}
	for _, c := range r.comparisons() {
		r.maxQPS(c)
	}
	r.cpuAccounting()
}

// starvation says how the max-QPS runs used their CPU and how many were
// run again.
func (r *reporter) starvation() {
	var shares []float64
	retries, starvedRuns, total := 0, 0, 0
	for _, run := range r.res.Runs {
		if run.Workload != WorkloadE2E && run.Workload != WorkloadConnect {
			continue
		}
		total++
		retries += run.Retries
		if run.Starved {
			starvedRuns++
		}
		if run.Path == PathMaxQPS && run.CPUShare != nil {
			shares = append(shares, *run.CPUShare)
		}
	}
	if len(shares) == 0 {
		return
	}
	lo, _ := minMax(shares)
	r.p("During the max-QPS runs the copy used a median %.2f of its pinned CPU (lowest %.2f). A run that did not get its", Median(shares), lo)
	r.p("CPU (a max-QPS run below %.1f of it: every process of the copy is on that CPU, so it is CPU-bound; a fixed-rate run", r.res.Config.MinCPUShare)
	r.p("more than 10%% short of its rate) was starved by other work on the machine and is run again, at most twice:")
	r.p("%d retries in this run; %d of %d runs still starved, kept in the JSON (`starved`) and left out of every median", retries, starvedRuns, total)
	r.p("and ratio.")
	r.p("")
}

// maxQPS is one comparison's max-QPS table and its ratios, by family.
func (r *reporter) maxQPS(c comparison) {
	conns := r.concurrencies()
	r.p("### End to end: %s", strings.ToLower(c.name))
	r.p("")
	var modes []string
	for _, m := range c.modes {
		if r.ranWorkload(m, WorkloadE2E) {
			modes = append(modes, m)
		}
	}
	if len(modes) == 0 {
		r.p("Not measured in this run.")
		r.p("")
		return
	}
	if m := r.missing(append([]string{c.subject}, c.baselines...)...); m != "" {
		r.p("%s: not measured in this run.", m)
		r.p("")
	}
	for _, fam := range r.families() {
		r.p("%s, max QPS: median over rounds, and µs of CPU per request in parentheses.", fam)
		r.p("")
		r.rateTables(modes, c.baselines, WorkloadE2E, conns, func(n int) sel { return e2eSel(PathMaxQPS, fam, n) },
			fam+" against `%s`: median of per-round ratios [min–max], QPS (higher is better) / CPU per request (lower is better).")
	}
	r.chartLinks("e2e-qps-"+c.slug+".png", "QPS against "+c.baselines[0]+" by connections",
		"e2e-cpu-"+c.slug+".png", "CPU per request against "+c.baselines[0]+" by connections")
}

// rateTables writes the medians of a rate (QPS, connections/s) and its
// CPU per request for modes at each concurrency of conns (the runs of
// at(n)), then for each baseline that ran workload the modes' ratios to
// it, under a caption made from title and the baseline.
func (r *reporter) rateTables(modes, baselines []string, workload string, conns []int, at func(n int) sel, title string) {
	head := connHead(conns)
	r.p("| mode | %s |", strings.Join(head, " | "))
	r.p("|---|%s", strings.Repeat("---:|", len(head)))
	for _, m := range modes {
		var cells []string
		for _, n := range conns {
			q, u := r.median(m, at(n), qpsField), r.median(m, at(n), cpuField)
			if !q.ok() {
				cells = append(cells, "–")
				continue
			}
			cells = append(cells, fmt.Sprintf("%.0f (%.1f)", q.med, u.med))
		}
		r.p("| `%s` | %s |", m, strings.Join(cells, " | "))
	}
	r.p("")
	for _, base := range baselines {
		if !r.ranWorkload(base, workload) {
			continue
		}
		var rows []string
		for _, m := range modes {
			if m == base {
				continue
			}
			var cells []string
			for _, n := range conns {
				q, u := r.ratio(m, base, at(n), qpsField), r.ratio(m, base, at(n), cpuField)
				if !q.ok() {
					cells = append(cells, "–")
					continue
				}
				cells = append(cells, q.cell("%.2f")+" / "+u.cell("%.2f"))
			}
			rows = append(rows, fmt.Sprintf("| `%s` | %s |", m, strings.Join(cells, " | ")))
		}
		r.table(fmt.Sprintf(title, base), append([]string{"mode"}, head...), "---|"+strings.Repeat("---:|", len(head)), rows)
	}
}

// accountingPairs are the (mode, baseline) pairs whose CPU per request
// the kernel path is held against.
func (r *reporter) accountingPairs() [][2]string {
	var out [][2]string
	for _, c := range r.comparisons() {
		for _, base := range c.baselines {
			if r.ranWorkload(c.subject, WorkloadE2E) && r.ranWorkload(base, WorkloadE2E) {
				out = append(out, [2]string{c.subject, base})
			}
		}
	}
	return out
}

// accounting is what the kernel path explains of one end-to-end CPU
// difference.
type accounting struct {
	// measured is the median per-round CPU per request of base minus
	// mode's, µs.
	measured stat
	// segsMode, segsBase are the segments sent per request.
	segsMode, segsBase stat
	// hopMode, hopBase are the mean ns per hop of a request's
	// established segments.
	hopMode, hopBase float64
	// estimate is segsBase×hopBase − segsMode×hopMode in µs: what the
	// kernel path saves per request if every segment costs one hop.
	estimate float64
}

// share is the part of the measured difference the estimate accounts for.
func (a accounting) share() float64 { return a.estimate / a.measured.med }

// account holds the kernel path against the CPU difference per request of
// mode and base at n connections; ok is false without segments per
// request or kernel-path figures.
func (r *reporter) account(mode, base, fam string, n int) (accounting, bool) {
	s := e2eSel(PathMaxQPS, fam, n)
	a := accounting{
		measured: statOf(pairedDiffs(byRound(r.res.Runs, base, s, cpuField), byRound(r.res.Runs, mode, s, cpuField))),
		segsMode: r.median(mode, s, segsField),
		segsBase: r.median(base, s, segsField),
	}
	hop := func(m string) float64 {
		t := statOfRounds(r.requestTotals(m, fam, SegmentEstablished))
		return t.med / float64(len(r.measuredHops(m, fam, SegmentEstablished)))
	}
	a.hopMode, a.hopBase = hop(mode), hop(base)
	if !a.measured.ok() || !a.segsMode.ok() || !a.segsBase.ok() || math.IsNaN(a.hopMode) || math.IsNaN(a.hopBase) {
		return a, false
	}
	a.estimate = (a.segsBase.med*a.hopBase - a.segsMode.med*a.hopMode) / 1000
	return a, true
}

// cpuAccounting relates the end-to-end CPU difference to the kernel path
// through the segments a request sends.
func (r *reporter) cpuAccounting() {
	r.p("### Where the CPU per request goes")
	r.p("")
	pairs := r.accountingPairs()
	if len(pairs) == 0 {
		r.p("No pair of meshredirect's mode and the rules of its comparison ran end to end: not measured in this run.")
		r.p("")
		return
	}
	measured := false
	for _, run := range r.res.Runs {
		if run.SegmentsPerReq != nil {
			measured = true
		}
	}
	if !measured {
		r.p("Segments per request: not measured in this run, so the share of the end-to-end CPU difference that the kernel")
		r.p("path accounts for is not computed. CPU per request includes the proxies', the load generator's and the server's")
		r.p("work; the kernel path is one part of it, and how large a part needs the segments a request sends.")
		r.p("")
		return
	}
	r.p("The CPU a mode saves per request (median of per-round differences, baseline minus mode) beside what the kernel path")
	r.p("predicts: segments per request (nstat's OutSegs of every namespace of the copy over the run, per request) times the")
	r.p("mean ns per hop of a request's established segments (kernel path per request / its hops), for each mode, differenced.")
	r.p("This counts every segment as one measured hop: in the in-pod modes the loopback legs inside the pods are segments")
	r.p("the kernel path does not measure, so there the prediction prices them as node crossings.")
	r.p("")
	r.p("| mode | baseline | family | c | CPU saved µs/request | segments/request (mode, baseline) | ns per hop (mode, baseline) | kernel path predicts µs | accounts for |")
	r.p("|---|---|---|---:|---:|---:|---:|---:|---:|")
	for _, pr := range pairs {
		for _, fam := range r.families() {
			for _, n := range r.concurrencies() {
				a, ok := r.account(pr[0], pr[1], fam, n)
				if !a.measured.ok() {
					continue
				}
				if !ok {
					r.p("| `%s` | `%s` | %s | %d | %s | not measured | | | |", pr[0], pr[1], fam, n, a.measured.cell("%.1f"))
					continue
				}
				share := fmt.Sprintf("%.0f%%", 100*a.share())
				if a.measured.med <= 0 {
					share = "– (no CPU saved)"
				}
				r.p("| `%s` | `%s` | %s | %d | %s | %.1f, %.1f | %.0f, %.0f | %.1f | %s |", pr[0], pr[1], fam, n, a.measured.cell("%.1f"),
					a.segsMode.med, a.segsBase.med, a.hopMode, a.hopBase, a.estimate, share)
			}
		}
	}
	r.p("")
	r.p("What the kernel path does not account for is in the processes: the proxies' socket calls and copies, the wake-ups")
	r.p("of the load generator, the server and the stand-ins, and the loopback legs of the in-pod modes.")
	r.p("")
	r.cpuByRole(pairs)
}

// roles are the copy's cgroups, with the field of each one's CPU per
// request, and the whole copy last.
var roles = []struct {
	name  string
	field func(Run) *float64
}{
	{"stand-ins", func(r Run) *float64 { return r.CPUusPerReqProxy }},
	{"load generator", func(r Run) *float64 { return r.CPUusPerReqClient }},
	{"server", func(r Run) *float64 { return r.CPUusPerReqServer }},
	{"all", cpuField},
}

// cpuByRole splits the CPU a mode saves per request by the copy's
// cgroups: where the saving is, and what no redirection can save.
func (r *reporter) cpuByRole(pairs [][2]string) {
	measured := false
	for _, run := range r.res.Runs {
		measured = measured || run.CPUusPerReqProxy != nil
	}
	if !measured {
		r.p("CPU per request by process: not measured in this run.")
		r.p("")
		return
	}
	r.p("The same CPU per request split by the copy's cgroups (median over rounds, µs; in brackets the median of per-round")
	r.p("differences, baseline minus mode). Kernel work is charged to whichever process runs it: a segment's way through")
	r.p("OUTPUT's rules and the loopback to the sender's syscall, the receive path's softirq mostly to whoever was on the CPU.")
	r.p("")
	r.p("| mode | baseline | family | c | stand-ins | load generator | server | all |")
	r.p("|---|---|---|---:|---:|---:|---:|---:|")
	for _, pr := range pairs {
		for _, fam := range r.families() {
			for _, n := range r.concurrencies() {
				s := e2eSel(PathMaxQPS, fam, n)
				var cells []string
				ok := false
				for _, role := range roles {
					m := r.median(pr[0], s, role.field)
					d := statOf(pairedDiffs(byRound(r.res.Runs, pr[1], s, role.field), byRound(r.res.Runs, pr[0], s, role.field)))
					if !m.ok() || !d.ok() {
						cells = append(cells, "–")
						continue
					}
					ok = true
					cells = append(cells, fmt.Sprintf("%.1f [%+.1f]", m.med, d.med))
				}
				if ok {
					r.p("| `%s` | `%s` | %s | %d | %s |", pr[0], pr[1], fam, n, strings.Join(cells, " | "))
				}
			}
		}
	}
	r.p("")
}

// connect is the new-connections workload.
func (r *reporter) connect() {
	r.p("## New connections per second")
	r.p("")
	modes := modesWith(r.res, WorkloadConnect)
	if len(modes) == 0 {
		r.p("Not measured in this run: every end-to-end request above reuses a kept-alive connection, so connection setup (the")
		r.p("SYN through `bpf_sk_assign` or through REDIRECT and conntrack) is not in these figures.")
		r.p("")
		return
	}
	r.p("Each request on a connection of its own (no keep-alive): the SYN through `bpf_sk_assign` or through REDIRECT and")
	r.p("conntrack, the proxy's accept and upstream connect, the close. QPS here is new connections per second (each carrying")
	r.p("one request), CPU per connection in parentheses; the copy pinned to one CPU as above.")
	r.p("")
	r.load(func(run Run) bool { return run.Workload == WorkloadConnect })
	for _, path := range r.workloadPaths(WorkloadConnect) {
		conns := r.workloadConns(WorkloadConnect, path)
		for _, c := range r.comparisons() {
			var cm []string
			for _, m := range c.modes {
				if r.ranWorkload(m, WorkloadConnect) {
					cm = append(cm, m)
				}
			}
			if len(cm) == 0 {
				r.p("%s: not measured in this run.", c.name)
				r.p("")
				continue
			}
			for _, fam := range r.families() {
				r.p("%s, %s (%s): connections per second, median over rounds (CPU µs per connection).", c.name, fam, path)
				r.p("")
				r.rateTables(cm, c.baselines, WorkloadConnect, conns, func(n int) sel {
					return sel{workload: WorkloadConnect, path: path, family: fam, conns: n}
				}, "Against `%s`: median of per-round ratios [min–max], connections/s (higher is better) / CPU per connection.")
			}
		}
	}
	r.chartLinks("connect.png", "new connections per second by mode")
}

// latency is the fixed-rate section: percentiles where the queue is
// short.
func (r *reporter) latency() {
	cfg := r.res.Config
	r.p("## Latency at a fixed rate")
	r.p("")
	var modes []string
	for _, m := range r.allModes() {
		for _, run := range r.res.Runs {
			if run.Mode == m && run.Workload == WorkloadE2E && run.Path == PathFixedQPS {
				modes = append(modes, m)
				break
			}
		}
	}
	if len(modes) == 0 {
		r.p("Not measured in this run.")
		r.p("")
		return
	}
	r.p("%.0f requests per second on %d connections, well below every mode's saturation; median over rounds [min–max], µs.", cfg.FixedQPS, cfg.FixedQPSConns)
	r.p("**Why not the latency at max QPS:** there the load generator keeps every connection's request outstanding and the")
	r.p("CPU never idles, so a request mostly waits behind the others (Little's law: latency ≈ connections / QPS): the")
	r.p("saturation p99 measures that queue, not the path.%s", r.littleExample())
	r.p("At a fixed rate below saturation the queue is mostly empty, and the percentiles measure the path a request takes.")
	r.p("")
	r.load(func(run Run) bool { return run.Workload == WorkloadE2E && run.Path == PathFixedQPS })
	p999 := false
	for _, run := range r.res.Runs {
		if run.Path == PathFixedQPS && run.P999us != nil {
			p999 = true
		}
	}
	if !p999 {
		r.p("p99.9: not measured in this run.")
		r.p("")
	}
	for _, c := range r.comparisons() {
		for _, fam := range r.families() {
			var rows []string
			for _, m := range modes {
				if !contains(c.modes, m) {
					continue
				}
				s := e2eSel(PathFixedQPS, fam, cfg.FixedQPSConns)
				if !r.median(m, s, p50Field).ok() {
					continue
				}
				rows = append(rows, fmt.Sprintf("| `%s` | %s | %s | %s | %s | %s |", m, r.median(m, s, p50Field).cell("%.0f"),
					r.median(m, s, p90Field).cell("%.0f"), r.median(m, s, p99Field).cell("%.0f"), r.median(m, s, p999Field).cell("%.0f"),
					r.median(m, s, cpuField).cell("%.0f")))
			}
			if len(rows) == 0 {
				continue
			}
			r.p("%s, %s:", c.name, fam)
			r.p("")
			r.p("| mode | p50 | p90 | p99 | p99.9 | CPU µs per request |")
			r.p("|---|---:|---:|---:|---:|---:|")
			for _, row := range rows {
				r.p("%s", row)
			}
			r.p("")
		}
	}
	r.chartLinks("latency.png", "latency percentiles at a fixed rate by mode")
}

// littleExample is Little's law on the largest concurrency of the first
// mode measured, beside its measured p50.
func (r *reporter) littleExample() string {
	conns := r.concurrencies()
	if len(conns) == 0 {
		return ""
	}
	n := conns[len(conns)-1]
	for _, m := range []string{ModeEBPFInpod, r.nodeAgentMode(), ModeIptablesInpod, ModeIptablesNode} {
		s := e2eSel(PathMaxQPS, FamilyIPv4, n)
		q, p50 := r.median(m, s, qpsField), r.median(m, s, p50Field)
		if q.ok() && p50.ok() && q.med > 0 {
			return fmt.Sprintf("\nFor `%s` at c=%d: %d / %.0f QPS = %.0f µs, and its measured p50 is %.0f µs.", m, n, n, q.med, 1e6*float64(n)/q.med, p50.med)
		}
	}
	return ""
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
