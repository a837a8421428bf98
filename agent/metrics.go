package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's own Prometheus metrics. The programs' per-verdict
// counters are exported by a collector over the stats map (statsCollector).
type metrics struct {
	podsEnrolled      prometheus.Gauge
	enrolErrors       *prometheus.CounterVec
	unenrolErrors     *prometheus.CounterVec
	reconcileDuration prometheus.Histogram
	ztunnelReady      prometheus.Gauge
}

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
	}
	if reg != nil {
		reg.MustRegister(m.podsEnrolled, m.enrolErrors, m.unenrolErrors, m.reconcileDuration, m.ztunnelReady)
	}
	return m
}
