package chart

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/meshredirect/meshredirect/testenv/kubeapi"
)

func TestMain(m *testing.M) {
	code := kubeapi.Main(m, kubeapi.Options{})
	binCleanup()
	os.Exit(code)
}

// fieldManager is the manager of the tests' applies.
const fieldManager = "meshredirect-test"

// cluster applies objects to the shared API server as its admin, collecting the warnings the
// server sends back.
type cluster struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper

	mu       sync.Mutex
	warnings []string
}

func (c *cluster) HandleWarningHeader(_ int, _ string, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.warnings = append(c.warnings, text)
}

// takeWarnings returns the warnings since the last call.
func (c *cluster) takeWarnings() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.warnings
	c.warnings = nil
	return w
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	srv := kubeapi.Shared(t)
	c := &cluster{}
	cfg := &rest.Config{
		Host:            srv.Host,
		BearerToken:     srv.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: srv.CA},
		UserAgent:       fieldManager,
		WarningHandler:  c,
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	if c.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	return c
}

// toUnstructured decodes one YAML object.
func toUnstructured(tb testing.TB, text string) *unstructured.Unstructured {
	tb.Helper()
	js, err := yaml.YAMLToJSON([]byte(text))
	if err != nil {
		tb.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		tb.Fatal(err)
	}
	return u
}

// apply server-side applies obj (dry run unless real) with strict field validation, and
// returns the object as the server would have stored it.
func (c *cluster) apply(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	body, err := obj.MarshalJSON()
	if err != nil {
		return nil, err
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: &force, FieldValidation: metav1.FieldValidationStrict}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, opts)
}

// createNamespace makes ns for real (a dry-run object cannot go into a namespace that is not
// there), with labels.
func (c *cluster) createNamespace(t *testing.T, ns string, labels map[string]string) {
	t.Helper()
	obj := &unstructured.Unstructured{}
	obj.SetAPIVersion("v1")
	obj.SetKind("Namespace")
	obj.SetName(ns)
	obj.SetLabels(labels)
	if _, err := c.apply(t.Context(), obj, false); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
}

// TestDryRun applies every object of the plain manifest, and of the chart rendered with every
// value changed, as a server-side dry run: the API server validates each field (strictly:
// an unknown or duplicate field is an error) and runs admission, and nothing is stored.
func TestDryRun(t *testing.T) {
	c := newCluster(t)
	manifest, err := Manifest(chartDir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var defaults []string
	for _, doc := range strings.Split(string(manifest), "\n---\n")[1:] {
		defaults = append(defaults, doc)
	}
	other := mustRender(t, Options{Values: values(t, nonDefaultValues), ReleaseName: "mesh", Namespace: "mesh-other"})
	var changed []string
	for _, o := range other.Objects {
		changed = append(changed, o.YAML)
	}
	uninstall, err := os.ReadFile(uninstallPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, namespace string
		docs            []string
		want            []string
	}{
		{"deploy/meshredirect.yaml", Namespace, defaults, []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}},
		{"every value changed", "mesh-other", changed, []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}},
		{"deploy/meshredirect-uninstall.yaml", "meshredirect-uninstall", strings.Split(string(uninstall), "\n---\n"), []string{"Namespace", "DaemonSet"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c.createNamespace(t, tt.namespace, nil)
			c.takeWarnings()
			var applied []string
			for _, doc := range tt.docs {
				obj := toUnstructured(t, doc)
				got, err := c.apply(t.Context(), obj, true)
				if err != nil {
					t.Errorf("apply %s %s: %v", obj.GetKind(), obj.GetName(), err)
					continue
				}
				applied = append(applied, obj.GetKind())
				// Nothing sent was dropped or changed: every field is in the server's object
				// (which adds its defaults).
				if path, diff := subset(obj.Object, got.Object, ""); diff != "" {
					t.Errorf("%s %s: the server changed %s: %s", obj.GetKind(), obj.GetName(), path, diff)
				}
				if w := c.takeWarnings(); len(w) > 0 {
					t.Errorf("%s %s: warnings: %q", obj.GetKind(), obj.GetName(), w)
				}
			}
			if !slices.Equal(applied, tt.want) {
				t.Errorf("applied %v, want %v", applied, tt.want)
			}
		})
	}
}

// subset reports where want has a field got lacks or holds differently: got may have more
// (the server's defaults), lists must have the same length.
func subset(want, got any, path string) (string, string) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return path, fmt.Sprintf("sent a map, got %T", got)
		}
		for k, v := range w {
			gv, ok := g[k]
			if !ok {
				return path + "." + k, "missing"
			}
			if p, d := subset(v, gv, path+"."+k); d != "" {
				return p, d
			}
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return path, fmt.Sprintf("sent %v, got %v", want, got)
		}
		for i := range w {
			if p, d := subset(w[i], g[i], fmt.Sprintf("%s[%d]", path, i)); d != "" {
				return p, d
			}
		}
	default:
		if sameQuantity(want, got, path) {
			return "", ""
		}
		if !reflect.DeepEqual(want, got) {
			return path, fmt.Sprintf("sent %v (%T), got %v (%T)", want, want, got, got)
		}
	}
	return "", ""
}

// sameQuantity says whether want and got, at path in a ResourceQuota's spec.hard, are the same
// quantity written two ways: the server writes quantities in canonical form ("1000" as "1k").
func sameQuantity(want, got any, path string) bool {
	if !strings.HasPrefix(path, ".spec.hard.") {
		return false
	}
	w, werr := resource.ParseQuantity(fmt.Sprint(want))
	g, gerr := resource.ParseQuantity(fmt.Sprint(got))
	return werr == nil && gerr == nil && w.Cmp(g) == 0
}

// TestBidirectionalRefused shows why the bpffs mount is HostToContainer: the API server
// allows Bidirectional propagation only to privileged containers.
func TestBidirectionalRefused(t *testing.T) {
	c := newCluster(t)
	c.createNamespace(t, Namespace, nil)
	ds := toUnstructured(t, mustRender(t, Options{}).Find("DaemonSet").YAML)
	containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	agent := containers[0].(map[string]any)
	for _, m := range agent["volumeMounts"].([]any) {
		if m := m.(map[string]any); m["name"] == "bpffs" {
			m["mountPropagation"] = "Bidirectional"
		}
	}
	if err := unstructured.SetNestedSlice(ds.Object, containers, "spec", "template", "spec", "containers"); err != nil {
		t.Fatal(err)
	}
	_, err := c.apply(t.Context(), ds, true)
	if err == nil || !strings.Contains(err.Error(), "only to privileged containers") {
		t.Errorf("apply with a Bidirectional bpffs mount: %v, want it refused for a container that is not privileged", err)
	}
}

// TestPodSecurity records what the agent's pod needs beyond the Pod Security "baseline"
// level, as the API server's admission says it: host namespaces, hostPath volumes, the
// capabilities, AppArmor unconfined, the SELinux type; never "privileged".
func TestPodSecurity(t *testing.T) {
	c := newCluster(t)
	const ns = "mesh-baseline"
	c.createNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/warn": "baseline"})
	ds := toUnstructured(t, mustRender(t, Options{Namespace: ns}).Find("DaemonSet").YAML)
	c.takeWarnings()
	if _, err := c.apply(t.Context(), ds, true); err != nil {
		t.Fatal(err)
	}
	warnings := strings.Join(c.takeWarnings(), "\n")
	t.Logf("baseline: %s", warnings)
	for _, want := range []string{
		"host namespaces (hostNetwork=true, hostPID=true)",
		"hostPath volumes",
		"non-default capabilities",
		`"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE" in`,
		"AppArmor",
		"seLinuxOptions",
	} {
		if !strings.Contains(warnings, want) {
			t.Errorf("baseline warnings lack %q", want)
		}
	}
	if strings.Contains(warnings, "privileged (") {
		t.Errorf("baseline warnings say the pod is privileged")
	}
}

// TestKubeVersion keeps the version the chart is rendered for the API server's.
func TestKubeVersion(t *testing.T) {
	if KubeVersion != kubeapi.Version {
		t.Errorf("chart.KubeVersion %s, testenv/kubeapi.Version %s", KubeVersion, kubeapi.Version)
	}
}
