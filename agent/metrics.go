package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/zds"
)

// metrics are the agent's own Prometheus metrics. The programs' per-verdict
// counters are exported by a collector over the stats map (statsCollector).
type metrics struct {
	podsEnrolled      prometheus.Gauge
	enrolErrors       *prometheus.CounterVec
	unenrolErrors     *prometheus.CounterVec
	reconcileDuration prometheus.Histogram
	ztunnelReady      prometheus.Gauge
	cniRequests       *prometheus.CounterVec
	cniDuration       *prometheus.HistogramVec
}

// Results of the CNI plugin's requests, the label of
// meshredirect_cni_requests_total: the plugin fails the pod's ADD on every
// result but ok (it retries starting itself).
const (
	cniResultOK         = "ok"          // answered (captured or not)
	cniResultError      = "error"       // the agent could not do what was asked
	cniResultBadRequest = "bad_request" // the plugin's request could not be read
	cniResultStarting   = "starting"    // an ADD before the first reconcile
)

// Reasons of enrolment errors, the label of meshredirect_enrol_errors_total.
const (
	reasonInterfaceNotFound = "interface_not_found"
	reasonResolve           = "resolve"
	reasonMapFull           = "map_full"
	reasonAttach            = "attach"
	reasonAnnotate          = "annotate"
	reasonDataplane         = "dataplane"
	reasonZtunnel           = "ztunnel"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		podsEnrolled: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "meshredirect", Name: "pods_enrolled",
			Help: "Pods of this node whose traffic is captured.",
		}),
		enrolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshredirect", Name: "enrol_errors_total",
			Help: "Failed attempts to enrol a pod, by reason (interface_not_found, map_full, attach, annotate, ...).",
		}, []string{"reason"}),
		unenrolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshredirect", Name: "unenrol_errors_total",
			Help: "Failed attempts to unenrol a pod, by reason.",
		}, []string{"reason"}),
		reconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "meshredirect", Name: "reconcile_duration_seconds",
			Help:    "Time a full reconcile of the node's datapath against the API took.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		ztunnelReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "meshredirect", Name: "ztunnel_ready",
			Help: "1 while a Ready ztunnel serves this node; 0 means captured traffic is dropped (or passed with fail open).",
		}),
		cniRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "meshredirect", Name: "cni_requests_total",
			Help: "Requests of the chained CNI plugin, by command (add, del, check) and result (ok, error, bad_request, starting).",
		}, []string{"command", "result"}),
		cniDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "meshredirect", Name: "cni_request_duration_seconds",
			Help: "Time the agent took to answer the CNI plugin, by command: an ADD's is part of the pod's start.",
			// 1 ms to 16 s: an ADD waits for the capture, and for ztunnel's
			// ack in in-pod mode.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"command"}),
	}
	if reg != nil {
		reg.MustRegister(m.podsEnrolled, m.enrolErrors, m.unenrolErrors, m.reconcileDuration, m.ztunnelReady,
			m.cniRequests, m.cniDuration)
	}
	return m
}

// registerMetrics registers every metric of the agent with reg (nil: none):
// its own, the programs' counters read by stats at each scrape, and, in
// in-pod mode (zdsStats not nil), the ZDS server's. The one place that says
// what the agent exports: TestMetricNames lists it for the chart's alerts
// and dashboard.
func registerMetrics(reg prometheus.Registerer, stats func() (map[dataplane.Verdict]dataplane.Counter, error), zdsStats func() zds.Stats) *metrics {
	m := newMetrics(reg)
	if reg == nil {
		return m
	}
	reg.MustRegister(newStatsCollector(stats))
	if zdsStats != nil {
		reg.MustRegister(newZDSCollector(zdsStats))
	}
	return m
}
