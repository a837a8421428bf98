package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/version"
)

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors and meshredirect_build_info, for Config.Metrics and Serve.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newBuildInfo(version.Get()))
	return reg
}

// statsCollector exports the programs' per-verdict counters, read from the
// stats map at each scrape (summed over CPUs).
type statsCollector struct {
	read    func() (map[dataplane.Verdict]dataplane.Counter, error)
	packets *prometheus.Desc
	bytes   *prometheus.Desc
}

func newStatsCollector(read func() (map[dataplane.Verdict]dataplane.Counter, error)) *statsCollector {
	return &statsCollector{
		read: read,
		packets: prometheus.NewDesc("meshredirect_datapath_packets_total",
			"Packets the redirection programs handled, by verdict ("+verdictNames()+").",
			[]string{"verdict"}, nil),
		bytes: prometheus.NewDesc("meshredirect_datapath_bytes_total",
			"Bytes of the packets the redirection programs handled, by verdict.",
			[]string{"verdict"}, nil),
	}
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	counters, err := c.read()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.packets, err)
		return
	}
	for v, n := range counters {
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(n.Packets), v.String())
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(n.Bytes), v.String())
	}
}

// Handler serves /metrics from gatherer, /healthz (the process is alive and
// its kernel objects answer) and /readyz (the caches synced and the first
// reconcile is done).
func (a *Agent) Handler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := a.dp.Stats(); err != nil {
			http.Error(w, "stats map unreadable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Ready() {
			http.Error(w, "not ready: waiting for the informer caches and the first reconcile", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Serve runs the HTTP server of Handler on addr until ctx ends.
func (a *Agent) Serve(ctx context.Context, addr string, gatherer prometheus.Gatherer) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: a.Handler(gatherer), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	a.log.Info("serving /metrics, /healthz and /readyz", "addr", l.Addr().String())
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// verdictNames lists the verdicts for the metrics' help, as the programs
// number them.
func verdictNames() string {
	var names []string
	for _, v := range dataplane.Verdicts() {
		names = append(names, v.String())
	}
	return strings.Join(names, ", ")
}
