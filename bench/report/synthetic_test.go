package report

import (
	"math"
	"sort"
	"strings"
	"testing"
)

// TestRenderSynthetic: a run with everything (ten modes, both families,
// SYN segments, new connections, p99.9, segments per request) draws every
// section and every chart, and nothing says it was not measured.
func TestRenderSynthetic(t *testing.T) {
	md, dir := renderTo(t, syntheticResults())
	for _, want := range []string{
		"## Goals", "## Two comparisons", "## Kernel path", "### Kernel path: per request", "#### Node mode", "#### In-pod mode",
		"### Kernel path: per hop", "#### IPv4 established segments", "#### IPv6 SYN segments",
		"### End to end: node mode", "### End to end: in-pod mode", "IPv6 against `nftables-inpod`",
		"### Where the CPU per request goes", "| mode | baseline | family | c | stand-ins | load generator | server | all |", "## New connections per second", "## Latency at a fixed rate",
		"| mode | p50 | p90 | p99 | p99.9 | CPU µs per request |", "saturation p99 measures that queue",
		"## IPv4 and IPv6", "## Per program", "### `iptables-inpod`", "nat REDIRECT",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the report has no %q", want)
		}
	}
	if n := strings.Count(md, "1-minute load average when these runs started"); n < 5 {
		t.Errorf("the load average is shown with %d sections, want kernel path, end to end, connections, latency, IPv6", n)
	}
	if i := strings.Index(strings.ToLower(md), "not measured in this run"); i >= 0 {
		t.Errorf("a run that measured everything says %q", md[max(0, i-200):i+40])
	}
	if strings.Contains(md, "TPROXY variant") {
		t.Error("iptables-inpod ran REDIRECT rules but the report calls them the TPROXY variant")
	}
	linked := checkCharts(t, md, dir)
	var got []string
	for f := range linked {
		got = append(got, f)
	}
	sort.Strings(got)
	want := []string{"connect.png", "e2e-cpu-inpod.png", "e2e-cpu-node.png", "e2e-qps-inpod.png", "e2e-qps-node.png", "family.png",
		"kernel-hop-ipv4-established.png", "kernel-hop-ipv4-syn.png", "kernel-hop-ipv6-established.png", "kernel-hop-ipv6-syn.png",
		"kernel-request-inpod.png", "kernel-request-node.png", "latency.png"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("charts linked:\n%v\nwant\n%v", got, want)
	}
}

// goalsByName evaluates the goals of res by their first column.
func goalsByName(t *testing.T, res *Results) map[string]goalRow {
	t.Helper()
	out := map[string]goalRow{}
	for _, g := range (&reporter{res: res}).evalGoals() {
		if _, dup := out[g.goal]; dup {
			t.Errorf("goal %q twice", g.goal)
		}
		out[g.goal] = g
	}
	return out
}

// TestGoals judges the synthetic run's hand-made figures: each goal met or
// missed as its numbers say, a miss pointing at where the cost is.
func TestGoals(t *testing.T) {
	goals := goalsByName(t, syntheticResults())
	for _, tc := range []struct {
		goal  string
		state goalState
		// has is in the measured cells (met) or the pointer (missed).
		has string
	}{
		{"in-pod, IPv4: `ebpf-inpod` QPS ≥ 1.2x `iptables-inpod` at every concurrency", goalMet, "c=1 1.30 [1.25–1.35]"},
		{"in-pod, IPv6: `ebpf-inpod` QPS ≥ 1.2x `iptables-inpod` at every concurrency", goalMissed, "c=64 at 1.10x"},
		{"in-pod, IPv4: `ebpf-inpod` CPU per request ≤ 0.8x `iptables-inpod` at every concurrency", goalMet, "c=64 0.77"},
		{"in-pod, IPv6: `ebpf-inpod` CPU per request ≤ 0.8x `iptables-inpod` at every concurrency", goalMissed, "[kernel path per request](#kernel-path-per-request)"},
		{"in-pod, IPv4: `ebpf-inpod` QPS no worse than `nftables-inpod` (≥ 1.0x) at every concurrency", goalMet, "c=4 1.04"},
		{"in-pod, IPv6: `ebpf-inpod` QPS no worse than `nftables-inpod` (≥ 1.0x) at every concurrency", goalMissed, "c=64 at 0.88x"},
		{"in-pod, IPv4: `ebpf-inpod` new connections per second ≥ 1.3x `iptables-inpod`", goalMet, "c=16 1.40"},
		{"node, IPv4: `ebpf-tcx` new connections per second ≥ 1.3x `iptables-node`", goalMissed, "SYN segments on the kernel path: client->proxy 0.30x"},
		{"in-pod kernel path: every hop of `ebpf-inpod` ≤ 0.5x `iptables-inpod` on the same hop (IPv4 established)", goalMet, "client->proxy 0.30"},
		{"in-pod kernel path: every hop of `ebpf-inpod` ≤ 0.5x `iptables-inpod` on the same hop (IPv6 SYN)", goalMissed, "client->proxy at 0.60x"},
		{"node kernel path: every hop of `ebpf-tcx` ≤ 0.4x `iptables-node` on the same hop (IPv4 SYN)", goalMet, "proxy 0.30"},
		{"node kernel path: `ebpf-tcx` client->proxy no more than `direct` (plain forwarding to the server), IPv4 established", goalMet, "198 ns vs 300 ns"},
		{"node, IPv4: `ebpf-tcx` QPS ≥ 0.97x `explicit` (routing, no capture)", goalMet, "c=1 1.05"},
		{"IPv6: every ratio of `ebpf-inpod` against `iptables-inpod` within 10% of IPv4's (IPv6/IPv4 in 0.90–1.10)", goalMissed, "CPU per request, c=64: IPv6's ratio is 1.18 of IPv4's"},
		{"IPv6: every ratio of `ebpf-tcx` against `iptables-node` within 10% of IPv4's (IPv6/IPv4 in 0.90–1.10)", goalMet, "kernel path per request, SYN 1.00"},
		{"per program: `ztunnel_assign` ≤ 160 ns above an empty program on a SYN", goalMissed, "IPv4 SYN"},
	} {
		g, ok := goals[tc.goal]
		if !ok {
			t.Errorf("no goal %q", tc.goal)
			continue
		}
		if g.state != tc.state {
			t.Errorf("%s: %s, want state %d (measured %s)", tc.goal, g.verdict(), tc.state, g.measured)
			continue
		}
		where := g.measured
		if g.state == goalMissed {
			where = g.where
		}
		if !strings.Contains(where, tc.has) {
			t.Errorf("%s: %q has no %q", tc.goal, where, tc.has)
		}
	}
}

// TestGoalFollowsTheNumbers: one concurrency's QPS of in-pod eBPF falls to
// 1.15x its baseline, and the goal met above is missed there.
func TestGoalFollowsTheNumbers(t *testing.T) {
	res := syntheticResults()
	for i, r := range res.Runs {
		if r.Mode == ModeEBPFInpod && r.Workload == WorkloadE2E && r.Path == PathMaxQPS && r.Family == FamilyIPv4 && r.Connections == 16 {
			res.Runs[i].QPS = f64(*r.QPS * 1.15 / 1.3)
		}
	}
	g := goalsByName(t, res)["in-pod, IPv4: `ebpf-inpod` QPS ≥ 1.2x `iptables-inpod` at every concurrency"]
	if g.state != goalMissed || !strings.Contains(g.where, "c=16 at 1.15x") {
		t.Errorf("QPS at c=16 1.15x: %s (measured %s), want missed at c=16", g.verdict(), g.measured)
	}
}

// TestCPUAccounting: the kernel path's share of the CPU difference is
// segments per request × ns per hop, per mode, differenced, over the
// measured difference: by hand, at c=1 in IPv4, iptables-inpod uses
// 1e6/4000 = 250 µs per request, ebpf-inpod 1e6/5200 = 192.3 µs; both
// send 16 segments per request, at 700 and 210 ns per hop: 7.84 µs of
// the 57.7.
func TestCPUAccounting(t *testing.T) {
	r := &reporter{res: syntheticResults()}
	a, ok := r.account(ModeEBPFInpod, ModeIptablesInpod, FamilyIPv4, 1)
	if !ok {
		t.Fatal("no accounting for ebpf-inpod against iptables-inpod")
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"measured µs", a.measured.med, 250 - 1e6/5200.0},
		{"ns per hop, mode", a.hopMode, 210},
		{"ns per hop, baseline", a.hopBase, 700},
		{"estimate µs", a.estimate, 16 * (700 - 210) / 1000.0},
		{"share", a.share(), 7.84 / (250 - 1e6/5200.0)},
	} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestPerRequestTotals: the kernel path per request is the sum of a
// request's hops per round, and its ratio the median of per-round ratios.
func TestPerRequestTotals(t *testing.T) {
	r := &reporter{res: syntheticResults()}
	if got := statOfRounds(r.requestTotals(ModeIptablesNode, FamilyIPv4, SegmentEstablished)); got.med != 3600 {
		t.Errorf("iptables-node per request %v, want 4 hops × 900 = 3600", got.med)
	}
	if got := statOfRounds(r.requestTotals(ModeIptablesInpod, FamilyIPv4, SegmentEstablished)); got.med != 1400 {
		t.Errorf("iptables-inpod per request %v, want 2 hops × 700 = 1400", got.med)
	}
	x := r.totalRatio(ModeEBPFInpod, ModeIptablesInpod, FamilyIPv6, SegmentSYN)
	if math.Abs(x.med-0.5) > 1e-9 || math.Abs(x.lo-0.48) > 1e-9 || math.Abs(x.hi-0.52) > 1e-9 {
		t.Errorf("ebpf-inpod / iptables-inpod SYN per request %+v, want (1200+800)/4000 = 0.5 [0.48–0.52]", x)
	}
}

// TestOldResultsSayNotMeasured: the first edition's results
// (testdata/first-edition.json, committed on 2026-12-05: IPv4 only, no
// SYN, no new connections, no in-pod eBPF, Istio's TPROXY in-pod rules)
// draw a report that says what they did not measure, and none of the
// claims the data did not support.
func TestOldResultsSayNotMeasured(t *testing.T) {
	res, err := ReadResults("testdata/first-edition.json")
	if err != nil {
		t.Fatal(err)
	}
	md := string(markdown(res, "bench/results"))
	for _, want := range []string{
		"IPv6; SYN segments (connection setup): not measured in this run.",
		"## New connections per second\n\nNot measured in this run",
		"## IPv4 and IPv6\n\nIPv6: not measured in this run",
		"p99.9: not measured in this run.",
		"Segments per request: not measured in this run",
		"In-pod modes not measured in this run: `ebpf-inpod`, `nftables-inpod`.",
		"in-pod, IPv4: `ebpf-inpod` QPS ≥ 1.2x `iptables-inpod` at every concurrency | – (`ebpf-inpod` did not run) | not measured in this run |",
		"the TPROXY variant",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the first edition's report has no %q", want)
		}
	}
	for _, claim := range []string{"accounts for the end-to-end one", "floor of the kernel path", "is the floor"} {
		if strings.Contains(md, claim) {
			t.Errorf("the first edition's report still claims %q", claim)
		}
	}
}
