package report

import (
	"fmt"
	"math"
	"sort"
)

// sel selects the runs of one measurement: a workload's path, family,
// kernel-path segment and connections. Every mode has one run of it per
// round.
type sel struct {
	workload, path, family, segment string
	conns                           int
}

// kernelSel selects the kernel-path runs of one hop.
func kernelSel(path, family, segment string) sel {
	return sel{workload: WorkloadKernel, path: path, family: family, segment: segment}
}

// e2eSel selects the end-to-end runs of one kind at one concurrency.
func e2eSel(path, family string, conns int) sel {
	return sel{workload: WorkloadE2E, path: path, family: family, conns: conns}
}

func (s sel) match(r Run) bool {
	return r.Workload == s.workload && r.Path == s.path && familyOf(r.Family) == s.family &&
		segmentOf(r.Workload, r.Segment) == s.segment && r.Connections == s.conns && !r.Starved
}

// byRound returns mode's figure in each round of s (starved runs left out).
func byRound(runs []Run, mode string, s sel, field func(Run) *float64) map[int]float64 {
	out := map[int]float64{}
	for _, r := range runs {
		if r.Mode == mode && s.match(r) {
			if v := field(r); v != nil && !math.IsNaN(*v) {
				out[r.Round] = *v
			}
		}
	}
	return out
}

// stat is a median over rounds with its spread; n = 0 when nothing was
// measured.
type stat struct {
	med, lo, hi float64
	n           int
}

func statOf(xs []float64) stat {
	if len(xs) == 0 {
		return stat{med: math.NaN(), lo: math.NaN(), hi: math.NaN()}
	}
	lo, hi := minMax(xs)
	return stat{med: Median(xs), lo: lo, hi: hi, n: len(xs)}
}

func statOfRounds(m map[int]float64) stat {
	xs := make([]float64, 0, len(m))
	for _, v := range m {
		xs = append(xs, v)
	}
	return statOf(xs)
}

// ok reports whether anything was measured.
func (s stat) ok() bool { return s.n > 0 }

// cell is "median [min–max]" with format f for each, or "–".
func (s stat) cell(f string) string {
	if !s.ok() {
		return "–"
	}
	return fmt.Sprintf(f+" ["+f+"–"+f+"]", s.med, s.lo, s.hi)
}

// pairedRatios is the per-round ratio a/b of two rounds maps, over the
// rounds both have (b positive).
func pairedRatios(a, b map[int]float64) []float64 {
	var out []float64
	for _, round := range sortedRounds(a) {
		if y, ok := b[round]; ok && y > 0 {
			out = append(out, a[round]/y)
		}
	}
	return out
}

// pairedDiffs is the per-round difference a-b over the rounds both have.
func pairedDiffs(a, b map[int]float64) []float64 {
	var out []float64
	for _, round := range sortedRounds(a) {
		if y, ok := b[round]; ok {
			out = append(out, a[round]-y)
		}
	}
	return out
}

func sortedRounds(m map[int]float64) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// ratio is the median of per-round ratios mode/base of a figure of s.
func (r *reporter) ratio(mode, base string, s sel, field func(Run) *float64) stat {
	return statOf(pairedRatios(byRound(r.res.Runs, mode, s, field), byRound(r.res.Runs, base, s, field)))
}

// median is the median over rounds of mode's figure of s.
func (r *reporter) median(mode string, s sel, field func(Run) *float64) stat {
	return statOfRounds(byRound(r.res.Runs, mode, s, field))
}

// requestHops are the kernel-path hops one request of mode crosses. A
// node-level proxy is reached and left through the node: four hops
// (client->proxy, proxy->server and back). In-pod proxies cross the node
// once each way, proxy to proxy: the two node crossings (the other two
// legs are loopback inside a pod). Without a proxy (direct) a request
// crosses once each way, client to server: the same two arrivals.
func requestHops(mode string) []string {
	if IsInPod(mode) || mode == ModeDirect {
		return []string{PathClientProxy, PathServerProxy}
	}
	return KernelPaths
}

// measuredHops are the hops of a request of mode measured for family and
// segment.
func (r *reporter) measuredHops(mode, family, segment string) []string {
	var out []string
	for _, h := range requestHops(mode) {
		if len(byRound(r.res.Runs, mode, kernelSel(h, family, segment), nsField)) > 0 {
			out = append(out, h)
		}
	}
	return out
}

// requestTotals is mode's kernel-path cost of one request by round: the
// sum of its measured hops' ns per packet, in the rounds that have all.
func (r *reporter) requestTotals(mode, family, segment string) map[int]float64 {
	hops := r.measuredHops(mode, family, segment)
	if len(hops) == 0 {
		return nil
	}
	out := map[int]float64{}
	count := map[int]int{}
	for _, h := range hops {
		for round, v := range byRound(r.res.Runs, mode, kernelSel(h, family, segment), nsField) {
			out[round] += v
			count[round]++
		}
	}
	for round, n := range count {
		if n != len(hops) {
			delete(out, round)
		}
	}
	return out
}

// families are the IP families the runs measured, IPv4 first.
func (r *reporter) families() []string {
	seen := map[string]bool{}
	for _, run := range r.res.Runs {
		seen[familyOf(run.Family)] = true
	}
	var out []string
	for _, f := range []string{FamilyIPv4, FamilyIPv6} {
		if seen[f] {
			out = append(out, f)
		}
	}
	return out
}

// segments are the kernel-path segments the runs measured, established
// first.
func (r *reporter) segments() []string {
	seen := map[string]bool{}
	for _, run := range r.res.Runs {
		if run.Workload == WorkloadKernel {
			seen[segmentOf(run.Workload, run.Segment)] = true
		}
	}
	var out []string
	for _, s := range []string{SegmentEstablished, SegmentSYN} {
		if seen[s] {
			out = append(out, s)
		}
	}
	return out
}

// hasSegment reports whether the runs measured a kernel-path segment.
func (r *reporter) hasSegment(seg string) bool {
	for _, s := range r.segments() {
		if s == seg {
			return true
		}
	}
	return false
}

// hasFamily reports whether the runs measured a family.
func (r *reporter) hasFamily(f string) bool {
	for _, x := range r.families() {
		if x == f {
			return true
		}
	}
	return false
}

// connPaths are the paths and concurrencies of the runs of workload.
func (r *reporter) workloadConns(workload, path string) []int {
	seen := map[int]bool{}
	for _, run := range r.res.Runs {
		if run.Workload == workload && run.Path == path {
			seen[run.Connections] = true
		}
	}
	var out []int
	for c := range seen {
		out = append(out, c)
	}
	sort.Ints(out)
	return out
}

// workloadPaths are the paths of the runs of workload, in order of first
// appearance.
func (r *reporter) workloadPaths(workload string) []string {
	var out []string
	seen := map[string]bool{}
	for _, run := range r.res.Runs {
		if run.Workload == workload && !seen[run.Path] {
			seen[run.Path] = true
			out = append(out, run.Path)
		}
	}
	return out
}

// ranWorkload reports whether mode has runs of workload.
func (r *reporter) ranWorkload(mode, workload string) bool {
	for _, run := range r.res.Runs {
		if run.Mode == mode && run.Workload == workload {
			return true
		}
	}
	return false
}

func p50Field(r Run) *float64  { return r.P50us }
func p90Field(r Run) *float64  { return r.P90us }
func p99Field(r Run) *float64  { return r.P99us }
func p999Field(r Run) *float64 { return r.P999us }
func segsField(r Run) *float64 { return r.SegmentsPerReq }
