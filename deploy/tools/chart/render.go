package chart

import (
	"bytes"
	"fmt"
	"path"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
)

const (
	// Namespace is where the documented install puts the agent, and the namespace of the
	// plain manifest.
	Namespace = "meshredirect-system"
	// ReleaseName is the documented release name; with it the objects are named "meshredirect".
	ReleaseName = "meshredirect"
	// KubeVersion is the Kubernetes version the chart is rendered for: the one the tests' API
	// server runs (testenv/kubeapi.Version), checked against the chart's kubeVersion range.
	KubeVersion = "v1.37.2"
)

// Options say what to render. The zero value renders the documented install:
// release "meshredirect" in "meshredirect-system" with the chart's default values.
type Options struct {
	// Values override the chart's values.yaml, as `helm install -f` or `--set` would.
	Values map[string]any
	// ReleaseName defaults to [ReleaseName].
	ReleaseName string
	// Namespace defaults to [Namespace].
	Namespace string
	// Lax runs the templates as `helm install` does, a missing value being empty, instead of
	// in strict mode: for charts written for that, as Istio's are (they test for values that
	// may not exist).
	Lax bool
	// SkipSchema renders values that values.schema.json refuses, as `helm template
	// --skip-schema-validation` does: for the tests that hand them to the agent, which must
	// refuse them too.
	SkipSchema bool
}

// Object is one rendered Kubernetes object.
type Object struct {
	// Source is the template it came from, as in `helm template`: "meshredirect/templates/daemonset.yaml".
	Source string
	// Kind, Name and APIVersion are read from the object's head.
	Kind, Name, APIVersion string
	// YAML is the object's text, without a document separator.
	YAML string
}

// Rendered is a chart rendered for one release.
type Rendered struct {
	// Objects in Helm's install order (namespaces, then service accounts, RBAC, workloads).
	Objects []Object
	// Notes is the rendered NOTES.txt, which `helm install` prints.
	Notes string
}

// Load reads the chart in dir.
func Load(dir string) (*chart.Chart, error) {
	ch, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	return ch, nil
}

// Render renders the chart in dir as `helm template` does: values coalesced with values.yaml
// and checked against values.schema.json, the templates executed in strict mode (a reference
// to a value that does not exist is an error, unless opts.Lax), the objects sorted in install order.
func Render(dir string, opts Options) (*Rendered, error) {
	ch, err := Load(dir)
	if err != nil {
		return nil, err
	}
	if opts.ReleaseName == "" {
		opts.ReleaseName = ReleaseName
	}
	if opts.Namespace == "" {
		opts.Namespace = Namespace
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = chartutil.KubeVersion{Version: KubeVersion, Major: "1", Minor: "37"}
	if c := ch.Metadata.KubeVersion; c != "" && !chartutil.IsCompatibleRange(c, KubeVersion) {
		return nil, fmt.Errorf("render chart %s: it requires kubeVersion %s, not %s", ch.Name(), c, KubeVersion)
	}
	vals, err := chartutil.ToRenderValuesWithSchemaValidation(ch, opts.Values,
		chartutil.ReleaseOptions{Name: opts.ReleaseName, Namespace: opts.Namespace, Revision: 1, IsInstall: true}, caps, opts.SkipSchema)
	if err != nil {
		return nil, fmt.Errorf("render chart %s: %w", ch.Name(), err)
	}
	files, err := engine.Engine{Strict: !opts.Lax}.Render(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render chart %s: %w", ch.Name(), err)
	}
	var out Rendered
	for name, text := range files {
		if path.Base(name) == "NOTES.txt" {
			out.Notes = text
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("render chart %s: %w", ch.Name(), err)
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("render chart %s: %d hooks, which the plain manifest cannot express", ch.Name(), len(hooks))
	}
	for _, m := range manifests {
		if opts.Lax && onlyComments(m.Content) {
			continue // Helm sends such a document to the API server as nothing
		}
		if m.Head == nil || m.Head.Metadata == nil {
			return nil, fmt.Errorf("render chart %s: %s: an object without kind or metadata:\n%s", ch.Name(), m.Name, m.Content)
		}
		out.Objects = append(out.Objects, Object{
			Source:     m.Name,
			Kind:       m.Head.Kind,
			Name:       m.Head.Metadata.Name,
			APIVersion: m.Head.Version,
			YAML:       strings.TrimSpace(m.Content) + "\n",
		})
	}
	return &out, nil
}

// onlyComments reports whether a rendered document holds nothing but YAML comments and blank
// lines, as the templates of Istio's charts leave where a condition renders no object.
func onlyComments(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// Find returns the rendered object of kind, or nil.
func (r *Rendered) Find(kind string) *Object {
	for i := range r.Objects {
		if r.Objects[i].Kind == kind {
			return &r.Objects[i]
		}
	}
	return nil
}

// manifestHeader opens deploy/meshredirect.yaml.
const manifestHeader = `# meshredirect: the node agent (a DaemonSet) and its RBAC, in the namespace %[1]s.
#
# Generated by ` + "`make manifests`" + ` (deploy/tools/render) from the Helm chart
# deploy/charts/meshredirect with its default values: do not edit, change the
# chart and run make manifests. A test fails when this file and the chart differ.
#
#   kubectl apply -f deploy/meshredirect.yaml
#
# The namespace is labelled for the "privileged" Pod Security level: the agent
# uses the host's network and PID namespaces, hostPath volumes and capabilities
# (deploy/README.md says which and why).
`

// namespaceYAML is the namespace the plain manifest creates; with Helm, --create-namespace does.
const namespaceYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels:
    app.kubernetes.io/part-of: meshredirect
    pod-security.kubernetes.io/enforce: privileged
    pod-security.kubernetes.io/warn: privileged
`

// Manifest renders the chart in dir into the single file of deploy/meshredirect.yaml (with
// the zero Options: the default values): a header, the namespace, and every object, each
// after a "# Source:" line as in `helm template`.
func Manifest(dir string, opts Options) ([]byte, error) {
	r, err := Render(dir, opts)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	ns := opts.Namespace
	if ns == "" {
		ns = Namespace
	}
	fmt.Fprintf(&b, manifestHeader, ns)
	fmt.Fprintf(&b, "---\n"+namespaceYAML, ns)
	for _, o := range r.Objects {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s", o.Source, o.YAML)
	}
	return b.Bytes(), nil
}
