package main

import (
	"testing"

	"github.com/meshredirect/meshredirect/bench/report"
)

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

// TestWide: -e2e-max-rounds adds a round while some QPS ratio's per-round
// spread is above -spread, and not otherwise.
func TestWide(t *testing.T) {
	run := func(mode string, round int, qps float64) report.Run {
		return report.Run{Mode: mode, Workload: report.WorkloadE2E, Path: report.PathMaxQPS, Connections: 1, Round: round, QPS: f64(qps)}
	}
	base := report.ModeIptablesNode
	narrow := []report.Run{run("m", 1, 1000), run(base, 1, 1000), run("m", 2, 1050), run(base, 2, 1000)}
	if wide(narrow, 0.15, 3) {
		t.Errorf("ratios 1.00 and 1.05 (spread 5%%) are wide at 15%%")
	}
	spread := append(narrow, run("m", 3, 1400), run(base, 3, 1000))
	if !wide(spread, 0.15, 4) {
		t.Errorf("ratios 1.00, 1.05 and 1.40 (spread 38%%) are not wide at 15%%")
	}
	if wide(narrow[:2], 0.15, 2) {
		t.Errorf("one round is wide")
	}
}
