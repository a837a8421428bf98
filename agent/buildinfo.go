package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshredirect/meshredirect/internal/version"
)

// newBuildInfo returns meshredirect_build_info, always 1, whose labels say
// which build runs: a dashboard joins it to see versions across nodes during
// a rollout (the convention of Prometheus's own *_build_info).
func newBuildInfo(info version.Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "meshredirect_build_info",
		Help:        "The build of the running agent: its version, commit and Go version as labels; always 1.",
		ConstLabels: prometheus.Labels{"version": info.Version, "commit": info.Commit, "goversion": info.GoVersion},
	})
	g.Set(1)
	return g
}
