package report

import (
	"math"
	"sort"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{1, 1, 100}, 1},
	} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := Median(nil); !math.IsNaN(got) {
		t.Errorf("Median(nil) = %v, want NaN", got)
	}
	in := []float64{3, 1, 2}
	Median(in)
	if in[0] != 3 || in[1] != 1 {
		t.Errorf("median sorted its argument: %v", in)
	}
}

func kernelRun(mode, path string, round int, ns float64) Run {
	return Run{Mode: mode, Workload: WorkloadKernel, Path: path, Round: round, NsPerPacket: f64(ns)}
}

func e2eRunOf(mode string, conns, round int, qps, cpu, p99 float64) Run {
	return Run{Mode: mode, Workload: WorkloadE2E, Path: PathMaxQPS, Connections: conns, Round: round,
		QPS: f64(qps), CPUusPerReq: f64(cpu), P99us: f64(p99), P50us: f64(1), P90us: f64(1)}
}

// TestRatiosArePairedByRound: the ratio is the median of per-round ratios,
// not the ratio of medians, and a round one side lacks is left out.
func TestRatiosArePairedByRound(t *testing.T) {
	runs := []Run{
		// Round 1 of both is slow (a noisy round), round 2 fast: per-round
		// ratios 0.5, 0.5, 0.25; ratio of medians would be 300/900.
		kernelRun("ebpf", PathClientProxy, 1, 500), kernelRun("ipt", PathClientProxy, 1, 1000),
		kernelRun("ebpf", PathClientProxy, 2, 300), kernelRun("ipt", PathClientProxy, 2, 600),
		kernelRun("ebpf", PathClientProxy, 3, 100), kernelRun("ipt", PathClientProxy, 3, 400),
		// Round 4 has no baseline: not paired.
		kernelRun("ebpf", PathClientProxy, 4, 9999),
		// Another path, which only ebpf has: no ratio.
		kernelRun("ebpf", PathProxyClient, 1, 100),
	}
	// A starved round is left out as if it did not exist.
	starvedRun := kernelRun("ebpf", PathClientProxy, 5, 1)
	starvedRun.Starved = true
	runs = append(runs, starvedRun, kernelRun("ipt", PathClientProxy, 5, 1000))
	ratios := ComputeRatios(runs, []string{"ipt"})
	if len(ratios) != 1 {
		t.Fatalf("got %d ratios, want 1: %+v", len(ratios), ratios)
	}
	r := ratios[0]
	if r.Mode != "ebpf" || r.Baseline != "ipt" || r.Path != PathClientProxy || r.Rounds != 3 {
		t.Errorf("ratio %+v: want ebpf/ipt on %s over 3 rounds", r, PathClientProxy)
	}
	if r.NsRatioMedian == nil || *r.NsRatioMedian != 0.5 {
		t.Errorf("ns ratio median = %v, want 0.5", r.NsRatioMedian)
	}
	if r.QPSRatioMedian != nil {
		t.Errorf("a kernel-path ratio has a QPS ratio: %v", *r.QPSRatioMedian)
	}
	if r.RatioMin != 0.25 || r.RatioMax != 0.5 {
		t.Errorf("spread %v..%v, want 0.25..0.5", r.RatioMin, r.RatioMax)
	}
}

func TestRatiosEndToEnd(t *testing.T) {
	runs := []Run{
		e2eRunOf("ebpf", 4, 1, 1100, 90, 50), e2eRunOf("ipt", 4, 1, 1000, 100, 100),
		e2eRunOf("ebpf", 4, 2, 900, 100, 100), e2eRunOf("ipt", 4, 2, 1000, 100, 100),
		// Another connection count is another ratio.
		e2eRunOf("ebpf", 16, 1, 2000, 50, 10), e2eRunOf("ipt", 16, 1, 1000, 100, 10),
	}
	ratios := ComputeRatios(runs, []string{"ipt", "ebpf"})
	sort.Slice(ratios, func(i, j int) bool {
		if ratios[i].Baseline != ratios[j].Baseline {
			return ratios[i].Baseline > ratios[j].Baseline
		}
		return ratios[i].Connections < ratios[j].Connections
	})
	if len(ratios) != 4 {
		t.Fatalf("got %d ratios, want 4 (two connection counts, both ways): %+v", len(ratios), ratios)
	}
	r := ratios[0]
	if r.Mode != "ebpf" || r.Connections != 4 || r.Rounds != 2 {
		t.Fatalf("first ratio %+v", r)
	}
	if *r.QPSRatioMedian != 1.0 || *r.CPURatioMedian != 0.95 || *r.P99RatioMedian != 0.75 || r.NsRatioMedian != nil {
		t.Errorf("ratios qps %v cpu %v p99 %v ns %v, want 1.0, 0.95, 0.75, null",
			*r.QPSRatioMedian, *r.CPURatioMedian, *r.P99RatioMedian, r.NsRatioMedian)
	}
	if ratios[1].Connections != 16 || *ratios[1].QPSRatioMedian != 2 {
		t.Errorf("c=16 ratio %+v, want qps ratio 2", ratios[1])
	}
}

// TestRatiosNewConnections: the new-connections workload is paired like
// end to end, on connections per second, kept apart from end to end's
// runs of the same connections, and apart by family.
func TestRatiosNewConnections(t *testing.T) {
	conn := func(mode, family string, round int, cps, cpu float64) Run {
		r := e2eRunOf(mode, 4, round, cps, cpu, 1)
		r.Workload, r.Family = WorkloadConnect, family
		return r
	}
	runs := []Run{
		conn("ebpf", FamilyIPv4, 1, 3000, 300), conn("ipt", FamilyIPv4, 1, 2000, 450),
		conn("ebpf", FamilyIPv4, 2, 2800, 300), conn("ipt", FamilyIPv4, 2, 2000, 500),
		conn("ebpf", FamilyIPv6, 1, 1000, 300), conn("ipt", FamilyIPv6, 1, 2000, 300),
		e2eRunOf("ebpf", 4, 1, 10000, 90, 1), e2eRunOf("ipt", 4, 1, 9000, 100, 1),
	}
	got := map[string]Ratio{}
	for _, r := range ComputeRatios(runs, []string{"ipt"}) {
		got[r.Workload+" "+familyOf(r.Family)] = r
	}
	if len(got) != 3 {
		t.Fatalf("got ratios %v, want new connections over each family and end to end", got)
	}
	r := got[WorkloadConnect+" "+FamilyIPv4]
	if r.QPSRatioMedian == nil || math.Abs(*r.QPSRatioMedian-1.45) > 1e-9 || r.Rounds != 2 || r.RatioMin != 1.4 || r.RatioMax != 1.5 {
		t.Errorf("new connections over IPv4: %+v, want a median of 1.45 from 1.4 and 1.5 over 2 rounds", r)
	}
	if r6 := got[WorkloadConnect+" "+FamilyIPv6]; r6.QPSRatioMedian == nil || *r6.QPSRatioMedian != 0.5 {
		t.Errorf("new connections over IPv6: %+v, want 0.5", r6)
	}
}
