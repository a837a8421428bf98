package chart

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

const platformsDir = "../../platforms"

// platforms are the values files of deploy/platforms, with what each must change.
var platforms = map[string]func(t *testing.T, r *Rendered, c *corev1.Container){
	"gke.yaml": func(t *testing.T, r *Rendered, c *corev1.Container) {
		assertArgs(t, c, "--cni-bin-dir=/home/kubernetes/bin", "--cni-conf-dir=/etc/cni/net.d")
		var q corev1.ResourceQuota
		decode(t, r.Find("ResourceQuota"), &q)
		scope := q.Spec.ScopeSelector
		if q.Namespace != Namespace || scope == nil || len(scope.MatchExpressions) != 1 ||
			scope.MatchExpressions[0].ScopeName != corev1.ResourceQuotaScopePriorityClass ||
			!slices.Equal(scope.MatchExpressions[0].Values, []string{"system-node-critical"}) || q.Spec.Hard.Pods().Value() < 1 {
			t.Errorf("ResourceQuota %+v, want one for system-node-critical pods in %s", q, Namespace)
		}
	},
	"k3s.yaml": func(t *testing.T, _ *Rendered, c *corev1.Container) {
		assertArgs(t, c, "--cni-conf-dir=/var/lib/rancher/k3s/agent/etc/cni/net.d", "--cni-bin-dir=/var/lib/rancher/k3s/data/current/bin")
	},
	"k3d.yaml": func(t *testing.T, _ *Rendered, c *corev1.Container) {
		assertArgs(t, c, "--cni-conf-dir=/var/lib/rancher/k3s/agent/etc/cni/net.d", "--cni-bin-dir=/bin")
	},
	"microk8s.yaml": func(t *testing.T, _ *Rendered, c *corev1.Container) {
		assertArgs(t, c, "--cni-conf-dir=/var/snap/microk8s/current/args/cni-network", "--cni-bin-dir=/var/snap/microk8s/current/opt/cni/bin")
	},
	"openshift.yaml": func(t *testing.T, r *Rendered, c *corev1.Container) {
		assertArgs(t, c, "--cni-install=false")
		if c.SecurityContext.AppArmorProfile != nil {
			t.Errorf("appArmorProfile %+v on RHEL CoreOS", c.SecurityContext.AppArmorProfile)
		}
		var role rbacv1.Role
		decode(t, r.Find("Role"), &role)
		want := []rbacv1.PolicyRule{{APIGroups: []string{"security.openshift.io"}, Resources: []string{"securitycontextconstraints"},
			ResourceNames: []string{"privileged"}, Verbs: []string{"use"}}}
		if !slices.EqualFunc(role.Rules, want, func(a, b rbacv1.PolicyRule) bool {
			return slices.Equal(a.APIGroups, b.APIGroups) && slices.Equal(a.Resources, b.Resources) &&
				slices.Equal(a.ResourceNames, b.ResourceNames) && slices.Equal(a.Verbs, b.Verbs)
		}) {
			t.Errorf("Role rules %+v, want %+v", role.Rules, want)
		}
		var rb rbacv1.RoleBinding
		decode(t, r.Find("RoleBinding"), &rb)
		if rb.RoleRef.Name != role.Name || len(rb.Subjects) != 1 || rb.Subjects[0].Name != "meshredirect" || rb.Subjects[0].Namespace != Namespace {
			t.Errorf("RoleBinding %+v does not bind %s to the agent's ServiceAccount", rb, role.Name)
		}
	},
	"cilium.yaml": func(t *testing.T, _ *Rendered, c *corev1.Container) {
		assertArgs(t, c, "--ztunnel-mode=inpod", "--priority=2", "--cni-install=true")
	},
}

func assertArgs(t *testing.T, c *corev1.Container, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(c.Args, w) {
			t.Errorf("args lack %s: %v", w, c.Args)
		}
	}
}

// renderPlatform renders the chart with deploy/platforms/name, as `-f` would.
func renderPlatform(t *testing.T, name string, opts Options) *Rendered {
	t.Helper()
	v, err := chartutil.ReadValuesFile(filepath.Join(platformsDir, name))
	if err != nil {
		t.Fatal(err)
	}
	opts.Values = v
	return mustRender(t, opts)
}

// TestPlatformValues renders the chart with each file of deploy/platforms and checks what the
// file is for; every file there must have a check.
func TestPlatformValues(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(platformsDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for name := range platforms {
		if !slices.Contains(names, name) {
			t.Errorf("no %s in %s", name, platformsDir)
		}
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			check, ok := platforms[name]
			if !ok {
				t.Fatalf("%s has no check in platforms", name)
			}
			r := renderPlatform(t, name, Options{})
			_, c := daemonSet(t, r)
			check(t, r, c)
		})
	}
}

// TestPlatformDryRun applies each platform's objects, and the monitoring ConfigMap, to the
// test API server as a server-side dry run. The PodMonitor and PrometheusRule need the
// Prometheus Operator's CRDs, which the server has not: TestMonitoringObjects checks their shape.
func TestPlatformDryRun(t *testing.T) {
	c := newCluster(t)
	for name := range platforms {
		t.Run(name, func(t *testing.T) {
			ns := "mesh-" + strings.TrimSuffix(name, ".yaml")
			c.createNamespace(t, ns, nil)
			c.takeWarnings()
			opts := Options{Namespace: ns}
			r := renderPlatform(t, name, opts)
			for _, o := range r.Objects {
				obj := toUnstructured(t, o.YAML)
				got, err := c.apply(t.Context(), obj, true)
				if err != nil {
					t.Errorf("apply %s %s: %v", o.Kind, o.Name, err)
					continue
				}
				if path, diff := subset(obj.Object, got.Object, ""); diff != "" {
					t.Errorf("%s %s: the server changed %s: %s", o.Kind, o.Name, path, diff)
				}
			}
			if w := c.takeWarnings(); len(w) > 0 {
				t.Errorf("warnings: %q", w)
			}
		})
	}
	t.Run("dashboard", func(t *testing.T) {
		c.createNamespace(t, Namespace, nil)
		r := mustRender(t, Options{Values: values(t, monitoringValues)})
		obj := toUnstructured(t, r.Find("ConfigMap").YAML)
		if _, err := c.apply(t.Context(), obj, true); err != nil {
			t.Errorf("apply the dashboard's ConfigMap: %v", err)
		}
	})
}

// TestMetricsPortIsAHostPort shows why maxSurge must be 0: on the host network the API server
// makes the metrics port of the agent's pod a host port (a Pod's defaulting; since Kubernetes
// 1.28 not in the DaemonSet's template), and the scheduler places no second pod with the same
// host port on a node. The pod is the DaemonSet's template, applied as a dry run.
func TestMetricsPortIsAHostPort(t *testing.T) {
	c := newCluster(t)
	c.createNamespace(t, Namespace, nil)
	ds := toUnstructured(t, mustRender(t, Options{}).Find("DaemonSet").YAML)
	spec, _, _ := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	pod := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": "meshredirect-agent", "namespace": Namespace},
		"spec":     spec,
	}}
	got, err := c.apply(t.Context(), pod, true)
	if err != nil {
		t.Fatal(err)
	}
	containers, _, _ := unstructured.NestedSlice(got.Object, "spec", "containers")
	ports := containers[0].(map[string]any)["ports"].([]any)
	if hp := ports[0].(map[string]any)["hostPort"]; hp != int64(15014) {
		t.Errorf("hostPort %v (%T), want 15014 set by the API server", hp, hp)
	}
}
