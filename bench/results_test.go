package main

import (
	"encoding/json"
	"math"
	"net/netip"
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
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
	in := []float64{3, 1, 2}
	median(in)
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
	ratios := computeRatios(runs, []string{"ipt"})
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
	ratios := computeRatios(runs, []string{"ipt", "ebpf"})
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

// TestJSONShape checks latest.json's keys: those the issue names, present
// in every run (null where a figure does not apply).
func TestJSONShape(t *testing.T) {
	res := Results{
		Machine: Machine{LoadAvg: []float64{0.5, 0.4, 0.3}},
		Runs: []Run{
			kernelRun("ebpf", PathClientProxy, 1, 500), kernelRun("ipt", PathClientProxy, 1, 1000),
			e2eRunOf("ebpf", 4, 1, 1100, 90, 50), e2eRunOf("ipt", 4, 1, 1000, 100, 100),
		},
		Programs: []Program{{Name: "app_outbound", NsAboveEmpty: 3, VerifiedInstructions: 100}},
	}
	res.Ratios = computeRatios(res.Runs, []string{"ipt"})
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"machine":  {"loadavg"},
		"runs":     {"mode", "workload", "path", "connections", "round", "qps", "p50_us", "p90_us", "p99_us", "ns_per_packet", "cpu_us_per_req"},
		"ratios":   {"mode", "baseline", "workload", "path", "connections", "qps_ratio_median", "ns_ratio_median", "rounds"},
		"programs": {"name", "ns_above_empty", "verified_instructions"},
	}
	for section, keys := range want {
		v, ok := doc[section]
		if !ok {
			t.Errorf("no %q in the document", section)
			continue
		}
		objs, ok := v.([]any)
		if !ok {
			objs = []any{v}
		}
		if len(objs) == 0 {
			t.Errorf("%q is empty", section)
		}
		for i, o := range objs {
			m := o.(map[string]any)
			for _, k := range keys {
				if _, ok := m[k]; !ok {
					t.Errorf("%s[%d] has no key %q", section, i, k)
				}
			}
		}
	}
	runs := doc["runs"].([]any)
	if k := runs[0].(map[string]any); k["qps"] != nil || k["ns_per_packet"] == nil {
		t.Errorf("kernel-path run: qps %v (want null), ns_per_packet %v", k["qps"], k["ns_per_packet"])
	}
	if e := runs[2].(map[string]any); e["ns_per_packet"] != nil || e["qps"] == nil {
		t.Errorf("end-to-end run: ns_per_packet %v (want null), qps %v", e["ns_per_packet"], e["qps"])
	}
	if la := doc["machine"].(map[string]any)["loadavg"].([]any); len(la) != 3 {
		t.Errorf("loadavg %v, want three figures", la)
	}
}

func TestRotate(t *testing.T) {
	got := rotate([]string{"a", "b", "c"}, 4)
	if want := []string{"b", "c", "a"}; !equal(got, want) {
		t.Errorf("rotate = %v, want %v", got, want)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestAckFrame: the injected segment's IPv4 checksum is right and its TCP
// checksum wrong, so that the stack accepts it up to TCP.
func TestAckFrame(t *testing.T) {
	tp := tuple{Src: mustAP("198.18.16.1:40000"), Dst: mustAP("198.18.16.2:9090")}
	f := ackFrame([]byte{1, 2, 3, 4, 5, 6}, []byte{6, 5, 4, 3, 2, 1}, tp)
	if len(f) != 54 {
		t.Fatalf("frame of %d bytes, want 54", len(f))
	}
	if checksum(f[14:34]) != 0 {
		t.Errorf("IPv4 header checksum does not verify")
	}
	seg := f[34:]
	got := uint16(seg[16])<<8 | uint16(seg[17])
	if got == tcpChecksum(tp.Src.Addr(), tp.Dst.Addr(), seg) {
		t.Errorf("TCP checksum is right; it must be wrong")
	}
	s := synFrame([]byte{1, 2, 3, 4, 5, 6}, []byte{6, 5, 4, 3, 2, 1}, tp)
	if got := uint16(s[50])<<8 | uint16(s[51]); got != tcpChecksum(tp.Src.Addr(), tp.Dst.Addr(), s[34:]) || s[47] != 0x02 {
		t.Errorf("SYN frame: flags %#x, checksum %#x", s[47], got)
	}
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestStarved(t *testing.T) {
	max := e2eRun{Path: PathMaxQPS, Connections: 4, QPS: -1}
	fixed := e2eRun{Path: PathFixedQPS, Connections: 4, QPS: 1000}
	for _, tc := range []struct {
		spec  e2eRun
		run   Run
		want  bool
		about string
	}{
		{max, Run{CPUShare: f64(0.97)}, false, "a max-QPS run that had its CPU"},
		{max, Run{CPUShare: f64(0.2)}, true, "a max-QPS run with a fifth of its CPU"},
		{max, Run{CPUShare: f64(0.7)}, true, "a max-QPS run with 70% of its CPU"},
		{fixed, Run{QPS: f64(998), CPUShare: f64(0.17)}, false, "a fixed-rate run at its rate (its CPU share is low by design)"},
		{fixed, Run{QPS: f64(470), CPUShare: f64(0.1)}, true, "a fixed-rate run at half its rate"},
	} {
		if got := starved(tc.run, tc.spec); got != tc.want {
			t.Errorf("%s: starved = %v, want %v", tc.about, got, tc.want)
		}
	}
}
