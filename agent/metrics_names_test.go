package agent

import (
	"context"
	"errors"
	"flag"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshredirect/meshredirect/cni"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/zds"
)

// metricNamesFile lists every series name the agent can export, one a line:
// the chart's alerts and dashboard may use only these
// (deploy/tools/chart's TestMonitoringMetricsExist reads it).
const metricNamesFile = "testdata/metric-names.txt"

var updateMetricNames = flag.Bool("update-metric-names", false, "rewrite "+metricNamesFile+" from the agent's registry")

// recorder is a Registerer that remembers what was registered, so that the
// names of vectors without a child yet are known too.
type recorder struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registerer.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// fqName reads a descriptor's name: Desc has no accessor, and its String
// is `Desc{fqName: "name", ...}`.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// agentMetricNames returns every series name of the agent's registry as a
// Prometheus server stores them (a histogram's _bucket, _sum and _count).
func agentMetricNames(t *testing.T) []string {
	reg := NewRegistry()
	rec := &recorder{Registerer: reg}
	stats := func() (map[dataplane.Verdict]dataplane.Counter, error) {
		out := map[dataplane.Verdict]dataplane.Counter{}
		for _, v := range dataplane.Verdicts() {
			out[v] = dataplane.Counter{}
		}
		return out, nil
	}
	registerMetrics(rec, stats, func() zds.Stats { return zds.Stats{} })
	names := map[string]bool{}
	add := func(name string, histogram bool) {
		if histogram {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = true
			}
			return
		}
		names[name] = true
	}
	// The agent's own collectors, vectors included.
	for _, c := range rec.collectors {
		_, hist := c.(prometheus.Histogram)
		_, histVec := c.(*prometheus.HistogramVec)
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("no name in %s", d)
			}
			add(m[1], hist || histVec)
		}
	}
	// Everything gathered: the Go and process collectors, the constant
	// metrics of the stats and ZDS collectors.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetType().String() {
		case "HISTOGRAM":
			add(mf.GetName(), true)
		case "SUMMARY":
			add(mf.GetName(), false)
			names[mf.GetName()+"_sum"], names[mf.GetName()+"_count"] = true, true
		default:
			add(mf.GetName(), false)
		}
	}
	var out []string
	for n := range names {
		// The Go collector's names follow the toolchain's runtime/metrics,
		// not the agent: the chart uses none of them.
		if !strings.HasPrefix(n, "go_") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// TestMetricNames keeps testdata/metric-names.txt equal to what the agent
// registers (go test ./agent -run TestMetricNames -update-metric-names
// rewrites it), so that the chart's tests can check the names its alerts
// and dashboard use without a list kept by hand.
func TestMetricNames(t *testing.T) {
	got := strings.Join(agentMetricNames(t), "\n") + "\n"
	if *updateMetricNames {
		if err := os.WriteFile(metricNamesFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(metricNamesFile)
	if err != nil {
		t.Fatalf("%v (run go test ./agent -run TestMetricNames -update-metric-names)", err)
	}
	if string(want) != got {
		t.Errorf("%s is not what the agent registers: run go test ./agent -run TestMetricNames -update-metric-names\ngot:\n%s", metricNamesFile, got)
	}
	for _, name := range []string{"meshredirect_cni_requests_total", "meshredirect_cni_request_duration_seconds_bucket",
		"meshredirect_zds_connected", "meshredirect_datapath_packets_total", "meshredirect_enrol_errors_total"} {
		if !strings.Contains(got, name+"\n") {
			t.Errorf("%s not among the agent's metrics", name)
		}
	}
}

// TestCNIMetrics: every request of the plugin is counted by command and
// result, and timed, whatever the agent answers.
func TestCNIMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := &Agent{m: newMetrics(reg)}
	ok := func(_ context.Context, _ cni.PodRequest) (cni.Reply, error) { return cni.Reply{Captured: true}, nil }
	fail := func(_ context.Context, _ cni.PodRequest) (cni.Reply, error) { return cni.Reply{}, errors.New("boom") }
	mux := http.NewServeMux()
	mux.HandleFunc(cni.PathAdd, a.cniHandler("add", ok))
	mux.HandleFunc(cni.PathDel, a.cniHandler("del", fail))
	mux.HandleFunc(cni.PathCheck, a.cniHandler("check", ok))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	post := func(path, body string, want int) {
		t.Helper()
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("POST %s %s: %d, want %d", path, body, resp.StatusCode, want)
		}
	}
	pod := `{"namespace":"ns","name":"web-0"}`
	post(cni.PathAdd, pod, http.StatusServiceUnavailable) // not ready yet
	a.ready.Store(true)
	post(cni.PathAdd, pod, http.StatusOK)
	post(cni.PathAdd, pod, http.StatusOK)
	post(cni.PathAdd, `{`, http.StatusBadRequest)
	post(cni.PathDel, pod, http.StatusInternalServerError)
	post(cni.PathCheck, pod, http.StatusOK)

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counted := map[string]float64{} // command/result
	observed := map[string]uint64{} // command
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			l := m.GetLabel() // sorted by name
			switch mf.GetName() {
			case "meshredirect_cni_requests_total":
				counted[l[0].GetValue()+"/"+l[1].GetValue()] = m.GetCounter().GetValue()
			case "meshredirect_cni_request_duration_seconds":
				observed[l[0].GetValue()] = m.GetHistogram().GetSampleCount()
			}
		}
	}
	want := map[string]float64{
		"add/" + cniResultStarting: 1, "add/" + cniResultOK: 2, "add/" + cniResultBadRequest: 1,
		"del/" + cniResultError: 1, "check/" + cniResultOK: 1,
	}
	if !maps.Equal(counted, want) {
		t.Errorf("meshredirect_cni_requests_total by command/result: %v, want %v", counted, want)
	}
	if want := map[string]uint64{"add": 4, "del": 1, "check": 1}; !maps.Equal(observed, want) {
		t.Errorf("observations of meshredirect_cni_request_duration_seconds by command: %v, want %v", observed, want)
	}
}
