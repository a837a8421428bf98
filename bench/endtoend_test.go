package main

import (
	"testing"

	"github.com/meshredirect/meshredirect/bench/report"
)

func TestStarved(t *testing.T) {
	max := e2eRun{Path: report.PathMaxQPS, Connections: 4, QPS: -1}
	fixed := e2eRun{Path: report.PathFixedQPS, Connections: 4, QPS: 1000}
	for _, tc := range []struct {
		spec  e2eRun
		run   report.Run
		want  bool
		about string
	}{
		{max, report.Run{CPUShare: f64(0.97)}, false, "a max-QPS run that had its CPU"},
		{max, report.Run{CPUShare: f64(0.2)}, true, "a max-QPS run with a fifth of its CPU"},
		{max, report.Run{CPUShare: f64(0.7)}, true, "a max-QPS run with 70% of its CPU"},
		{fixed, report.Run{QPS: f64(998), CPUShare: f64(0.17)}, false, "a fixed-rate run at its rate (its CPU share is low by design)"},
		{fixed, report.Run{QPS: f64(470), CPUShare: f64(0.1)}, true, "a fixed-rate run at half its rate"},
	} {
		if got := starved(tc.run, tc.spec); got != tc.want {
			t.Errorf("%s: starved = %v, want %v", tc.about, got, tc.want)
		}
	}
}

// TestPerRole: each role's CPU per request is its own cgroup's usage
// between the readings, in roleUsage's order (proxy, client, server).
func TestPerRole(t *testing.T) {
	proxy, client, server := perRole([3]uint64{100, 200, 300}, [3]uint64{1100, 700, 400}, 10)
	if *proxy != 100 || *client != 50 || *server != 10 {
		t.Errorf("per request: proxy %v, client %v, server %v; want 100, 50, 10", *proxy, *client, *server)
	}
}
