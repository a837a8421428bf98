package agent_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshredirect/meshredirect/agent"
)

// scrape fetches /metrics and returns the value of every sample, keyed by
// its name and labels as the text format writes them.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	must(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndex(line, " ")
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	must(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// TestMetricsWhileTrafficFlows scrapes the agent's /metrics while traffic
// goes through ztunnel: the datapath counters move, the gauges say what is
// enrolled and whether ztunnel is ready; /healthz and /readyz answer.
func TestMetricsWhileTrafficFlows(t *testing.T) {
	e := newEnv(t)
	e.labelNamespace(e.ns, agent.ModeAmbient)
	reg := agent.NewRegistry()
	a := e.startAgent(func(c *agent.Config) { c.Metrics = reg })
	srv := newMetricsServer(t, a, reg)
	set := e.maps()
	e.waitFor("client and server enrolled", 10*time.Second, func() bool { return e.enrolled(set, e.box.Client) && e.enrolled(set, e.box.Server) })

	if code := get(t, srv+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d", code)
	}
	if code := get(t, srv+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}

	before := scrape(t, srv)
	s := startStream(t, e.box)
	time.Sleep(time.Second)
	mid := scrape(t, srv)
	time.Sleep(time.Second)
	res := s.finish(t, set)
	after := scrape(t, srv)
	res.atLeast(t, 1)
	if t.Failed() {
		t.FailNow()
	}

	out := `meshredirect_datapath_packets_total{verdict="redirected_out"}`
	marked := `meshredirect_datapath_packets_total{verdict="marked"}`
	for _, name := range []string{out, marked, `meshredirect_datapath_bytes_total{verdict="redirected_out"}`} {
		if !(before[name] < mid[name] && mid[name] < after[name]) {
			t.Errorf("%s did not move while traffic flowed: %v, %v, %v", name, before[name], mid[name], after[name])
		}
	}
	for name, want := range map[string]float64{
		"meshredirect_pods_enrolled": 2,
		"meshredirect_ztunnel_ready": 1,
	} {
		if got, ok := after[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if after["meshredirect_reconcile_duration_seconds_count"] < 1 {
		t.Error("no reconcile was timed")
	}
	t.Logf("during the stream: %d requests; redirected_out +%.0f, marked +%.0f packets", res.ok, after[out]-before[out], after[marked]-before[marked])
}

// newMetricsServer serves the agent's handler for the test and returns its
// URL.
func newMetricsServer(t *testing.T, a *agent.Agent, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(a.Handler(reg))
	t.Cleanup(srv.Close)
	return srv.URL
}
