package chart

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/strvals"
	"sigs.k8s.io/yaml"
)

const (
	deployReadme = "../../README.md"
	chartReadme  = "../../charts/meshredirect/README.md"
)

// readmeRow is a row of a values table: the values it names and the default column.
type readmeRow struct {
	keys     []string
	defaults string
}

// valuesRows reads the rows of the tables of a README whose first column names values
// (`a.b`, or `a.b`, `a.c` sharing a row).
func valuesRows(t *testing.T, path string) []readmeRow {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	key := regexp.MustCompile("`([a-zA-Z][a-zA-Z0-9]*(?:\\.[a-zA-Z0-9]+)*)`")
	var rows []readmeRow
	inValues := false
	for _, line := range strings.Split(string(raw), "\n") {
		switch {
		case strings.HasPrefix(line, "| value |"):
			inValues = true
		case !strings.HasPrefix(line, "|"):
			inValues = false
		}
		if !inValues || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, " | ")
		if len(cells) < 3 {
			continue
		}
		var keys []string
		for _, m := range key.FindAllStringSubmatch(cells[0], -1) {
			keys = append(keys, m[1])
		}
		// The first table has a flag column before the default.
		def := cells[1]
		if strings.HasPrefix(cells[1], "`--") || cells[1] == "(appended)" {
			def = cells[2]
		}
		rows = append(rows, readmeRow{keys, def})
	}
	return rows
}

// lookup returns the value at a dotted path of vals, and whether it is there.
func lookup(vals map[string]any, path string) (any, bool) {
	var cur any = vals
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// TestReadmeValuesTables checks deploy/README.md's and the chart README's values tables
// against values.yaml: every value they name exists, a default written as one literal per
// value (`65536`, `[kube-system, istio-system]`) is the chart's, and every top-level value
// of values.yaml is in each table, and so is every key of a map that the tables split by key
// (`image.repository`, ...: a new `image.digest` needs a row too).
func TestReadmeValuesTables(t *testing.T) {
	ch, err := Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	// `helm show readme` prints the chart's README.md, which the loader keeps among its files.
	if !slices.ContainsFunc(ch.Files, func(f *chart.File) bool { return f.Name == "README.md" }) {
		t.Errorf("the chart has no README.md for helm show readme")
	}
	vals := chartutil.Values(ch.Values)
	literal := regexp.MustCompile("`([^`]*)`")
	for _, path := range []string{deployReadme, chartReadme} {
		t.Run(path, func(t *testing.T) {
			rows := valuesRows(t, path)
			named := map[string]bool{}
			split := map[string]bool{} // top-level values whose keys the rows name one by one
			checked := 0
			for _, r := range rows {
				for _, k := range r.keys {
					if strings.HasPrefix(k, "serviceAccount.") && k != "serviceAccount.create" {
						k = "serviceAccount" // `.name`, `.annotations` in the same cell
					}
					top, _, nested := strings.Cut(k, ".")
					named[top] = true
					if nested {
						split[top] = true
					}
					if _, ok := lookup(vals, k); !ok && !strings.HasPrefix(k, "serviceAccount") {
						t.Errorf("%s names %s, which values.yaml does not have", path, k)
					}
				}
				defs := literal.FindAllStringSubmatch(r.defaults, -1)
				if len(defs) != len(r.keys) || strings.Contains(r.defaults, "(") {
					continue // written in words: "the chart's appVersion", "RollingUpdate, maxUnavailable 1"
				}
				for i, k := range r.keys {
					want, _ := lookup(vals, k)
					var got any
					if err := yaml.Unmarshal([]byte(defs[i][1]), &got); err != nil {
						t.Errorf("%s: %s: default %q: %v", path, k, defs[i][1], err)
						continue
					}
					if !reflect.DeepEqual(normalize(got), normalize(want)) {
						t.Errorf("%s: %s defaults to `%s`, values.yaml has %v", path, k, defs[i][1], want)
					}
					checked++
				}
			}
			for k := range vals {
				if !named[k] {
					t.Errorf("%s has no row for the value %s", path, k)
				}
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var tables strings.Builder // the tables' rows: a value named in prose has no row
			for _, line := range strings.Split(string(raw), "\n") {
				if strings.HasPrefix(line, "| `") {
					tables.WriteString(line + "\n")
				}
			}
			for top := range split {
				m, _ := vals[top].(map[string]any)
				for sub := range m {
					// `top.sub`, or `.sub` in a row that names top's other keys.
					if !strings.Contains(tables.String(), "`"+top+"."+sub) && !strings.Contains(tables.String(), "`."+sub) {
						t.Errorf("%s has no row for the value %s.%s", path, top, sub)
					}
				}
			}
			if checked < 20 {
				t.Errorf("%s: only %d defaults checked", path, checked)
			}
		})
	}
}

// normalize makes YAML numbers of both sides float64 and nil maps and slices empty.
func normalize(v any) any {
	switch v := v.(type) {
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case map[string]any:
		out := map[string]any{}
		for k, x := range v {
			out[k] = normalize(x)
		}
		return out
	case []any:
		out := []any{}
		for _, x := range v {
			out = append(out, normalize(x))
		}
		return out
	}
	return v
}

// TestReadmesTellTheTruth: statements of the READMEs and the chart's own notes that have
// been wrong before, checked against the chart.
func TestReadmesTellTheTruth(t *testing.T) {
	docs := []string{deployReadme, chartReadme, "../../../README.md", chartDir + "/values.yaml", chartDir + "/templates/NOTES.txt"}
	for _, path := range docs {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Join(strings.Fields(string(raw)), " ")
		for _, wrong := range []*regexp.Regexp{
			// A new size replaces the pinned map (replaceIncompatiblePins defaults to true).
			regexp.MustCompile(`(?i)podsMaxEntries[^.]*(needs|requires) (an )?uninstall`),
			regexp.MustCompile(`(?i)pods-max-entries[^.]*(needs|requires) (an )?uninstall`),
			regexp.MustCompile("`cni.install` \\| `--cni-install` \\| `false`"),
			// make image writes an OCI image layout (internal/ociimage), not docker save's format.
			regexp.MustCompile(`(?i)docker archive`),
			// The image is built for amd64 and arm64 (ociimage.ReleaseArches); only the
			// nodeSelector pins amd64, because arm64 is untested.
			regexp.MustCompile(`(?i)(on|for) x86-64`),
			// With the agent down the plugin still starts pods that are not ambient,
			// deciding from the API (cmd/meshredirect-cni/agentdown_test.go).
			regexp.MustCompile(`(?i)fails every new pod`),
		} {
			if m := wrong.FindString(text); m != "" {
				t.Errorf("%s says %q", path, m)
			}
		}
	}
}

// TestArchPinLifted checks the READMEs' way of running on arm64 nodes, which the chart's
// nodeSelector keeps out by default (arm64 is built but untested): each README gives the same
// --set, and Helm parses it into the null that removes the key (TestValues renders that).
func TestArchPinLifted(t *testing.T) {
	const set = `nodeSelector.kubernetes\.io/arch=null`
	for _, path := range []string{deployReadme, chartReadme, "../../../README.md"} {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(raw), "--set '"+set+"'") {
			t.Errorf("%s does not say how to lift the amd64 pin (--set '%s')", path, set)
		}
	}
	got, err := strvals.Parse(set)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"nodeSelector": map[string]any{"kubernetes.io/arch": nil}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("helm --set %s gives %v, want %v", set, got, want)
	}
}
