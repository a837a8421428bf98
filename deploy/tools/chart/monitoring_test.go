package chart

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	dashboardFile = "files/dashboard.json"
	// agentMetricsFile lists every series name the agent exports, written from its registry by
	// the agent's TestMetricNames.
	agentMetricsFile = "../../../agent/testdata/metric-names.txt"
)

// externalMetrics are the series the alerts and the dashboard use that the agent does not
// export: Prometheus' own up, and kube-state-metrics' DaemonSet status (kube-prometheus-stack
// installs it), for agents that are absent or not Ready.
var externalMetrics = []string{"up", "kube_daemonset_status_desired_number_scheduled", "kube_daemonset_status_number_ready"}

// monitoringValues turns every monitoring object on.
const monitoringValues = `monitoring: {podMonitor: {enabled: true, labels: {release: kube-prometheus-stack}},
  prometheusRule: {enabled: true, labels: {release: kube-prometheus-stack}, alertLabels: {team: mesh}},
  dashboard: {enabled: true}}`

// podMonitor and prometheusRule are the fields of the Prometheus Operator's CRDs
// (monitoring.coreos.com/v1) the chart sets; decoding strictly into them refuses a misspelt
// or misplaced field, as the CRDs' structural schemas would.
type podMonitor struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		PodMetricsEndpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
				Action       string   `json:"action"`
			} `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// TestMonitoringObjects renders each monitoring object alone and checks its shape; none is
// rendered by default (a cluster without the Prometheus Operator's CRDs would refuse them).
func TestMonitoringObjects(t *testing.T) {
	for _, o := range mustRender(t, Options{}).Objects {
		if o.Kind == "PodMonitor" || o.Kind == "PrometheusRule" || o.Kind == "ConfigMap" {
			t.Errorf("%s rendered by default", o.Kind)
		}
	}
	t.Run("podMonitor", func(t *testing.T) {
		r := mustRender(t, Options{Values: values(t, "monitoring: {podMonitor: {enabled: true, labels: {release: kps}}}")})
		var pm podMonitor
		decode(t, r.Find("PodMonitor"), &pm)
		if pm.APIVersion != "monitoring.coreos.com/v1" || pm.Metadata.Namespace != Namespace || pm.Metadata.Labels["release"] != "kps" {
			t.Errorf("PodMonitor head %s %s %v", pm.APIVersion, pm.Metadata.Namespace, pm.Metadata.Labels)
		}
		ds, c := daemonSet(t, r)
		for k, v := range pm.Spec.Selector.MatchLabels {
			if ds.Spec.Template.Labels[k] != v {
				t.Errorf("PodMonitor selects %s=%s, the agent's pods have %v", k, v, ds.Spec.Template.Labels)
			}
		}
		if !slices.Equal(pm.Spec.NamespaceSelector.MatchNames, []string{Namespace}) {
			t.Errorf("namespaceSelector %v", pm.Spec.NamespaceSelector.MatchNames)
		}
		if len(pm.Spec.PodMetricsEndpoints) != 1 {
			t.Fatalf("%d endpoints", len(pm.Spec.PodMetricsEndpoints))
		}
		ep := pm.Spec.PodMetricsEndpoints[0]
		if ep.Port != c.Ports[0].Name || ep.Path != "/metrics" || ep.Interval != "30s" {
			t.Errorf("endpoint %+v, want port %s /metrics every 30s", ep, c.Ports[0].Name)
		}
		if len(ep.Relabelings) != 1 || ep.Relabelings[0].TargetLabel != "node" || ep.Relabelings[0].SourceLabels[0] != "__meta_kubernetes_pod_node_name" {
			t.Errorf("relabelings %+v, want the node label", ep.Relabelings)
		}
		if r.Find("PrometheusRule") != nil || r.Find("ConfigMap") != nil {
			t.Error("other monitoring objects rendered")
		}
	})
	t.Run("prometheusRule", func(t *testing.T) {
		r := mustRender(t, Options{Values: values(t, "{failOpen: true, monitoring: {prometheusRule: {enabled: true, alertLabels: {team: mesh}}}}")})
		rule := decodeRule(t, r)
		var alerts []string
		for _, g := range rule.Spec.Groups {
			for _, ru := range g.Rules {
				alerts = append(alerts, ru.Alert)
				if ru.Labels["severity"] == "" || ru.Labels["team"] != "mesh" {
					t.Errorf("%s: labels %v, want a severity and alertLabels", ru.Alert, ru.Labels)
				}
				if ru.Annotations["summary"] == "" || ru.Annotations["description"] == "" {
					t.Errorf("%s: no summary or description", ru.Alert)
				}
				if ru.Alert == "MeshredirectZtunnelNotReady" && !strings.Contains(ru.Annotations["summary"], "passed outside the mesh") {
					t.Errorf("with failOpen the summary says %q", ru.Annotations["summary"])
				}
			}
		}
		want := []string{"MeshredirectAgentNotReady", "MeshredirectAgentDown", "MeshredirectZtunnelNotReady", "MeshredirectZDSDisconnected",
			"MeshredirectZDSFlapping", "MeshredirectEnrolErrors", "MeshredirectCNIAddErrors", "MeshredirectDropsRising"}
		if !slices.Equal(alerts, want) {
			t.Errorf("alerts %v, want %v", alerts, want)
		}
		if r.Find("PodMonitor") != nil || r.Find("ConfigMap") != nil {
			t.Error("other monitoring objects rendered")
		}
	})
	t.Run("dashboard", func(t *testing.T) {
		r := mustRender(t, Options{Values: values(t, "monitoring: {dashboard: {enabled: true, namespace: monitoring}}")})
		var cm corev1.ConfigMap
		decode(t, r.Find("ConfigMap"), &cm)
		if cm.Namespace != "monitoring" || cm.Labels["grafana_dashboard"] != "1" {
			t.Errorf("ConfigMap %s/%s labels %v, want monitoring and grafana_dashboard=1", cm.Namespace, cm.Name, cm.Labels)
		}
		file, err := os.ReadFile(chartDir + "/" + dashboardFile)
		if err != nil {
			t.Fatal(err)
		}
		if got := cm.Data["meshredirect.json"]; got != strings.TrimRight(string(file), "\n") {
			t.Errorf("the ConfigMap's dashboard differs from %s", dashboardFile)
		}
	})
}

func decodeRule(t *testing.T, r *Rendered) *prometheusRule {
	t.Helper()
	var rule prometheusRule
	decode(t, r.Find("PrometheusRule"), &rule)
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Metadata.Namespace != Namespace || len(rule.Spec.Groups) == 0 {
		t.Fatalf("PrometheusRule %s in %q, %d groups", rule.APIVersion, rule.Metadata.Namespace, len(rule.Spec.Groups))
	}
	return &rule
}

// grafanaVars are Grafana's variables in the dashboard's queries, replaced by what Grafana
// would put there before the queries are parsed.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m")

// dashboardQueries returns every PromQL expression of the dashboard: panels' targets and the
// variables' queries that are PromQL (label_values(...) is Grafana's, its argument is PromQL).
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(chartDir + "/" + dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string
		Panels []struct {
			Title   string
			Type    string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Name, Type string
				Query      json.RawMessage
			}
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	out := map[string]string{}
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			out[p.Title+"#"+string(rune('A'+i))] = grafanaVars.Replace(tg.Expr)
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.+), *[a-z_]+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct{ Query string }
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(selector, label)", v.Name, q.Query)
		}
		out["variable "+v.Name] = m[1]
	}
	return out
}

// TestMonitoringPromQL parses every expression of the alerts and of the dashboard with
// Prometheus' own parser, and checks that every metric they select is one the agent exports
// (agent/testdata/metric-names.txt, from its registry) or one of externalMetrics.
func TestMonitoringPromQL(t *testing.T) {
	raw, err := os.ReadFile(agentMetricsFile)
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, n := range strings.Fields(string(raw)) {
		known[n] = true
	}
	for _, n := range externalMetrics {
		known[n] = true
	}
	exprs := dashboardQueries(t)
	for _, g := range decodeRule(t, mustRender(t, Options{Values: values(t, monitoringValues)})).Spec.Groups {
		for _, r := range g.Rules {
			exprs["alert "+r.Alert] = r.Expr
		}
	}
	p := parser.NewParser(parser.Options{})
	used := map[string]bool{}
	for where, e := range exprs {
		expr, err := p.ParseExpr(e)
		if err != nil {
			t.Errorf("%s: %q: %v", where, e, err)
			continue
		}
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				if vs.Name == "" {
					t.Errorf("%s: a selector without a metric name: %s", where, vs)
				}
				used[vs.Name] = true
				if !known[vs.Name] {
					t.Errorf("%s: %s is not a metric the agent exports (%s)", where, vs.Name, agentMetricsFile)
				}
			}
			return nil
		})
	}
	// Every metric of the agent's own is on the dashboard or in an alert, except the ones
	// that only say the same thing twice.
	for n := range known {
		if strings.HasPrefix(n, "meshredirect_") && !used[n] && !strings.HasSuffix(n, "_sum") && !strings.HasSuffix(n, "_count") {
			t.Errorf("%s is neither on the dashboard nor in an alert", n)
		}
	}
	t.Logf("%d expressions, %d metrics", len(exprs), len(used))
}
