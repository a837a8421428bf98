package agent_test

import (
	"testing"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/internal/version"
)

// TestBuildInfoMetric: the agent's registry exports
// meshredirect_build_info{version,commit,goversion} 1, the labels this
// binary's version.Get.
func TestBuildInfoMetric(t *testing.T) {
	mfs, err := agent.NewRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	info := version.Get()
	want := map[string]string{"version": info.Version, "commit": info.Commit, "goversion": info.GoVersion}
	for _, mf := range mfs {
		if mf.GetName() != "meshredirect_build_info" {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("meshredirect_build_info has %d series, want 1", len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if len(got) != len(want) || got["version"] != want["version"] || got["commit"] != want["commit"] || got["goversion"] != want["goversion"] {
			t.Errorf("meshredirect_build_info labels %v, want %v", got, want)
		}
		if v := m.GetGauge().GetValue(); v != 1 {
			t.Errorf("meshredirect_build_info = %v, want 1", v)
		}
		return
	}
	t.Fatal("no meshredirect_build_info in the agent's registry")
}
