package chart

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chartutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// istioModule is Istio's source as the Go module proxy serves it: the pseudo-version names
// commit eed52ebb66ad of release-1.31, the commit tagged 1.31.0. The test downloads it into the
// module cache (GOMODCACHE, outside the repository) to render Istio's own charts; no package
// imports it, and no go.mod lists it.
const istioModule = "istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad"

// ztunnelValuesFile is the values file the README installs Istio's ztunnel chart with.
const ztunnelValuesFile = "../../istio/ztunnel-values.yaml"

// istioNamespace is where the README installs Istio's charts (and istiod's chart trusts the
// ztunnel ServiceAccount of its own namespace).
const istioNamespace = "istio-system"

var istioDownload struct {
	once sync.Once
	dir  string // the module's directory in the module cache
	err  error
}

// istioCharts returns the directory of Istio's Helm charts (manifests/charts) of istioModule,
// downloading the module once per test binary. Where it cannot be downloaded (no network, no
// go command) the test skips, and fails under CI=true.
func istioCharts(tb testing.TB) string {
	tb.Helper()
	istioDownload.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			istioDownload.err = fmt.Errorf("find the go command: %w", err)
			return
		}
		// Run outside any module, so that no go.mod or go.sum is touched; the module cache
		// keeps the download for the next run.
		dir, err := os.MkdirTemp("", "istio-download-")
		if err != nil {
			istioDownload.err = err
			return
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command(goBin, "mod", "download", "-json", istioModule)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GO111MODULE=on", "GOFLAGS=")
		start := time.Now()
		out, err := cmd.Output()
		var mod struct{ Dir, Error string }
		if jerr := json.Unmarshal(out, &mod); jerr == nil && mod.Error != "" {
			err = fmt.Errorf("%s", mod.Error)
		}
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = strings.TrimSpace(string(ee.Stderr))
			}
			istioDownload.err = fmt.Errorf("go mod download %s: %w %s", istioModule, err, stderr)
			return
		}
		tb.Logf("%s in %s (%v)", istioModule, mod.Dir, time.Since(start).Round(time.Millisecond))
		istioDownload.dir = mod.Dir
	})
	if istioDownload.err != nil {
		reason := fmt.Sprintf("needs Istio's charts from the Go module proxy: %v", istioDownload.err)
		if os.Getenv("CI") == "true" {
			tb.Fatalf("%s (CI=true: this test must run)", reason)
		}
		tb.Skip(reason)
	}
	return filepath.Join(istioDownload.dir, "manifests", "charts")
}

// meshredirectDefaults are the values of meshredirect's chart that must agree with how Istio's
// charts install ztunnel (TestEveryFlagHasAValue ties them to the agent's own defaults).
type meshredirectDefaults struct {
	ZDSSocket         string   `json:"zdsSocket"`
	ZtunnelSelector   string   `json:"ztunnelSelector"`
	ZtunnelMode       string   `json:"ztunnelMode"`
	ExcludeNamespaces []string `json:"excludeNamespaces"`
}

func readMeshredirectDefaults(tb testing.TB) meshredirectDefaults {
	tb.Helper()
	vals, err := chartutil.ReadValuesFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	var d meshredirectDefaults
	b, err := json.Marshal(vals.AsMap())
	if err == nil {
		err = json.Unmarshal(b, &d)
	}
	if err != nil {
		tb.Fatalf("read meshredirect's values: %v", err)
	}
	return d
}

// envValue returns the value the container's variable name ends up with (Kubernetes lets the
// last of duplicates win), and whether it is set.
func envValue(c *corev1.Container, name string) (string, bool) {
	value, found := "", false
	for _, e := range c.Env {
		if e.Name == name {
			value, found = e.Value, true
		}
	}
	return value, found
}

// TestIstioCharts renders Istio's own charts (1.31.0, from the Go module proxy) as the README's
// "Installing on a cluster" installs them, and checks what meshredirect's in-pod mode relies on:
// ztunnel in in-pod mode, connecting to the ZDS socket in the host directory the agent serves it
// in, in pods the agent's selector matches, in a namespace the agent never captures and istiod
// trusts; istiod with ambient on, with no istio-cni.
func TestIstioCharts(t *testing.T) {
	charts := istioCharts(t)
	mr := readMeshredirectDefaults(t)
	if mr.ZtunnelMode != "inpod" {
		t.Fatalf("meshredirect's chart defaults to ztunnelMode %q: the README installs in-pod mode with its defaults", mr.ZtunnelMode)
	}
	sockDir := path.Dir(mr.ZDSSocket)
	selector, err := labels.Parse(mr.ZtunnelSelector)
	if err != nil {
		t.Fatalf("meshredirect's ztunnelSelector %q: %v", mr.ZtunnelSelector, err)
	}
	ztunnelFile, err := chartutil.ReadValuesFile(ztunnelValuesFile)
	if err != nil {
		t.Fatal(err)
	}

	var serviceAccount string
	for _, tt := range []struct {
		name   string
		values map[string]any
		env    map[string]string // variables the values file sets, and their values
	}{
		{name: "chart defaults"},
		{name: "deploy/istio/ztunnel-values.yaml", values: ztunnelFile.AsMap(), env: map[string]string{"INPOD_PORT_REUSE": "false"}},
	} {
		t.Run("ztunnel "+tt.name, func(t *testing.T) {
			r, err := Render(filepath.Join(charts, "ztunnel"), Options{ReleaseName: "ztunnel", Namespace: istioNamespace, Values: tt.values, Lax: true})
			if err != nil {
				t.Fatal(err)
			}
			var ds appsv1.DaemonSet
			decode(t, r.Find("DaemonSet"), &ds)
			if ds.Namespace != istioNamespace || !slices.Contains(mr.ExcludeNamespaces, ds.Namespace) {
				t.Errorf("ztunnel's DaemonSet in namespace %q: want %q, one of meshredirect's excludeNamespaces %v", ds.Namespace, istioNamespace, mr.ExcludeNamespaces)
			}
			if podLabels := labels.Set(ds.Spec.Template.Labels); !selector.Matches(podLabels) {
				t.Errorf("ztunnel's pod labels %v: meshredirect's ztunnelSelector %q does not match them", podLabels, mr.ZtunnelSelector)
			}
			spec := ds.Spec.Template.Spec
			serviceAccount = spec.ServiceAccountName
			if len(spec.Containers) != 1 {
				t.Fatalf("ztunnel's pod has %d containers, want 1", len(spec.Containers))
			}
			c := &spec.Containers[0]
			if v, _ := envValue(c, "INPOD_ENABLED"); v != "true" {
				t.Errorf("ztunnel's INPOD_ENABLED is %q: want \"true\" (in-pod mode, ZDS)", v)
			}
			// ztunnel connects to INPOD_UDS, by default /var/run/ztunnel/ztunnel.sock
			// (ztunnel's src/config.rs); the chart does not set it.
			if v, ok := envValue(c, "INPOD_UDS"); ok && v != mr.ZDSSocket {
				t.Errorf("ztunnel's INPOD_UDS is %q: meshredirect serves ZDS at %q", v, mr.ZDSSocket)
			} else if !ok && mr.ZDSSocket != "/var/run/ztunnel/ztunnel.sock" {
				t.Errorf("ztunnel connects to /var/run/ztunnel/ztunnel.sock (INPOD_UDS unset); meshredirect serves ZDS at %q", mr.ZDSSocket)
			}
			for name, want := range tt.env {
				if v, ok := envValue(c, name); !ok || v != want {
					t.Errorf("ztunnel's %s is %q (set: %v): the values file sets %q", name, v, ok, want)
				}
			}

			// The socket's directory: a hostPath volume of the same host directory, mounted
			// read-write at the same path, so that ztunnel's socket path is the agent's.
			var volume string
			for _, v := range spec.Volumes {
				if v.HostPath != nil && path.Clean(v.HostPath.Path) == sockDir {
					volume = v.Name
				}
			}
			if volume == "" {
				t.Fatalf("ztunnel's pod has no hostPath volume of %s (meshredirect's ZDS socket directory); volumes: %v", sockDir, volumeNames(spec.Volumes))
			}
			var mounted bool
			for _, m := range c.VolumeMounts {
				if m.Name == volume {
					mounted = true
					if path.Clean(m.MountPath) != sockDir || m.ReadOnly || m.SubPath != "" {
						t.Errorf("ztunnel mounts the host's %s at %s (readOnly %v, subPath %q): want it read-write at %s", sockDir, m.MountPath, m.ReadOnly, m.SubPath, sockDir)
					}
				}
			}
			if !mounted {
				t.Errorf("ztunnel's container does not mount the volume %s (the host's %s)", volume, sockDir)
			}
		})
	}

	t.Run("istiod profile=ambient", func(t *testing.T) {
		r, err := Render(filepath.Join(charts, "istio-control", "istio-discovery"), Options{
			ReleaseName: "istiod", Namespace: istioNamespace, Values: map[string]any{"profile": "ambient"}, Lax: true})
		if err != nil {
			t.Fatal(err)
		}
		var dep appsv1.Deployment
		for i := range r.Objects {
			if o := &r.Objects[i]; o.Kind == "Deployment" && o.Name == "istiod" {
				decode(t, o, &dep)
			}
		}
		if len(dep.Spec.Template.Spec.Containers) != 1 {
			t.Fatalf("istiod's Deployment has %d containers, want 1", len(dep.Spec.Template.Spec.Containers))
		}
		c := &dep.Spec.Template.Spec.Containers[0]
		if v, _ := envValue(c, "PILOT_ENABLE_AMBIENT"); v != "true" {
			t.Errorf("istiod's PILOT_ENABLE_AMBIENT is %q with profile=ambient: want \"true\"", v)
		}
		// istiod hands certificates to ztunnel for the pods of its node only if it trusts
		// ztunnel's ServiceAccount.
		trusted, _ := envValue(c, "CA_TRUSTED_NODE_ACCOUNTS")
		if want := istioNamespace + "/" + serviceAccount; serviceAccount == "" || !slices.Contains(strings.Split(trusted, ","), want) {
			t.Errorf("istiod's CA_TRUSTED_NODE_ACCOUNTS is %q: want it to hold ztunnel's ServiceAccount %q", trusted, want)
		}
		// Nothing of istio-cni is installed by istiod's chart: its pilot.cni is for sidecars.
		for _, o := range r.Objects {
			if o.Kind == "DaemonSet" {
				t.Errorf("istiod's chart renders a DaemonSet %s: the README installs no node agent but meshredirect's and ztunnel", o.Name)
			}
		}
	})
}

func volumeNames(vs []corev1.Volume) []string {
	var names []string
	for _, v := range vs {
		names = append(names, v.Name)
	}
	return names
}
