package report

import (
	"math"
	"sort"
)

// f64 returns a pointer to v, for the nullable fields.
func f64(v float64) *float64 { return &v }

// Median returns the median of xs (the mean of the two middle values for
// an even count); NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// runKey identifies the runs a ratio pairs: same workload, path,
// connections and round.
type runKey struct {
	workload, path, family, segment string
	connections                     int
}

// familyOf is a run's family, IPv4 when the file did not say.
func familyOf(f string) string {
	if f == "" {
		return FamilyIPv4
	}
	return f
}

// segmentOf is a kernel-path run's segment, established when the file did
// not say; none for the other workloads.
func segmentOf(workload, s string) string {
	if s == "" && workload == WorkloadKernel {
		return SegmentEstablished
	}
	return s
}

// ComputeRatios pairs every mode's runs with each baseline's runs of the
// same workload, path, connections and round, and returns the medians of
// the per-round ratios. A pair needs both runs with the figure; rounds
// without both are left out (and counted out of Rounds).
func ComputeRatios(runs []Run, baselines []string) []Ratio {
	by := map[runKey]map[string]map[int]Run{} // key -> mode -> round -> run
	var modes []string
	seen := map[string]bool{}
	for _, r := range runs {
		if r.Starved {
			continue
		}
		k := runKey{r.Workload, r.Path, familyOf(r.Family), segmentOf(r.Workload, r.Segment), r.Connections}
		if by[k] == nil {
			by[k] = map[string]map[int]Run{}
		}
		if by[k][r.Mode] == nil {
			by[k][r.Mode] = map[int]Run{}
		}
		by[k][r.Mode][r.Round] = r
		if !seen[r.Mode] {
			seen[r.Mode] = true
			modes = append(modes, r.Mode)
		}
	}
	keys := make([]runKey, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.workload != b.workload {
			return a.workload > b.workload // kernel-path first
		}
		if a.path != b.path {
			return a.path < b.path
		}
		if a.family != b.family {
			return a.family < b.family
		}
		if a.segment != b.segment {
			return a.segment < b.segment
		}
		return a.connections < b.connections
	})
	var out []Ratio
	for _, base := range baselines {
		for _, k := range keys {
			baseRuns, ok := by[k][base]
			if !ok {
				continue
			}
			for _, mode := range modes {
				if mode == base {
					continue
				}
				modeRuns, ok := by[k][mode]
				if !ok {
					continue
				}
				if r, ok := pairRatio(mode, base, k, modeRuns, baseRuns); ok {
					out = append(out, r)
				}
			}
		}
	}
	return out
}

// pairRatio computes one Ratio from the runs of mode and base by round.
func pairRatio(mode, base string, k runKey, modeRuns, baseRuns map[int]Run) (Ratio, bool) {
	var qps, ns, cpu, p99 []float64
	rounds := make([]int, 0, len(modeRuns))
	for round := range modeRuns {
		rounds = append(rounds, round)
	}
	sort.Ints(rounds)
	for _, round := range rounds {
		m, b := modeRuns[round], baseRuns[round]
		if _, ok := baseRuns[round]; !ok {
			continue
		}
		if x, ok := div(m.QPS, b.QPS); ok {
			qps = append(qps, x)
		}
		if x, ok := div(m.NsPerPacket, b.NsPerPacket); ok {
			ns = append(ns, x)
		}
		if x, ok := div(m.CPUusPerReq, b.CPUusPerReq); ok {
			cpu = append(cpu, x)
		}
		if x, ok := div(m.P99us, b.P99us); ok {
			p99 = append(p99, x)
		}
	}
	r := Ratio{Mode: mode, Baseline: base, Workload: k.workload, Path: k.path, Family: k.family, Segment: k.segment, Connections: k.connections}
	// The kernel path's figure is ns per packet; end to end and new
	// connections', requests (connections) per second.
	main := ns
	if k.workload != WorkloadKernel {
		main = qps
	}
	if len(main) == 0 {
		return r, false
	}
	r.Rounds = len(main)
	r.RatioMin, r.RatioMax = minMax(main)
	if len(qps) > 0 {
		r.QPSRatioMedian = f64(Median(qps))
	}
	if len(ns) > 0 {
		r.NsRatioMedian = f64(Median(ns))
	}
	if len(cpu) > 0 {
		r.CPURatioMedian = f64(Median(cpu))
	}
	if len(p99) > 0 {
		r.P99RatioMedian = f64(Median(p99))
	}
	return r, true
}

// div returns a/b when both are set and b is positive.
func div(a, b *float64) (float64, bool) {
	if a == nil || b == nil || *b <= 0 || math.IsNaN(*a) || math.IsNaN(*b) {
		return 0, false
	}
	return *a / *b, true
}

func minMax(xs []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return lo, hi
}
