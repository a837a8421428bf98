package report

import (
	"encoding/json"
	"testing"
)

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
	res.Ratios = ComputeRatios(res.Runs, []string{"ipt"})
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
