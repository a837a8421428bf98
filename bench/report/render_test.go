package report

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The committed results and the report drawn from them, from this
// package's directory.
const (
	latestJSON   = "../results/latest.json"
	benchmarksMD = "../../BENCHMARKS.md"
)

// TestCommittedReport: BENCHMARKS.md is what this package draws from the
// committed latest.json, so a change to the report's code comes with the
// report drawn again (make bench-report), and a run's report is never
// edited by hand.
func TestCommittedReport(t *testing.T) {
	res, err := ReadResults(latestJSON)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(benchmarksMD)
	if err != nil {
		t.Fatal(err)
	}
	// As make bench-report links them: bench/results seen from the root.
	got := markdown(res, "bench/results")
	if n, g, w := firstDiff(got, want); n > 0 {
		t.Fatalf("BENCHMARKS.md differs from the report drawn from %s (make bench-report draws it again); first at line %d:\ndrawn:     %q\ncommitted: %q", latestJSON, n, g, w)
	}
}

// TestResultsRoundTrip: the types hold every key of the committed
// latest.json, so that nothing a run recorded is lost by reading it.
func TestResultsRoundTrip(t *testing.T) {
	want, err := os.ReadFile(latestJSON)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ReadResults(latestJSON)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "latest.json")
	if err := WriteResults(path, res); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n, g, w := firstDiff(got, want); n > 0 {
		t.Errorf("%s read and written again differs; first at line %d:\nwritten: %q\nread:    %q", latestJSON, n, g, w)
	}
}

// TestRender writes the report and the three charts, linked relative to
// the report.
func TestRender(t *testing.T) {
	res, err := ReadResults(latestJSON)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := Output{Markdown: filepath.Join(dir, "BENCHMARKS.md"), Charts: filepath.Join(dir, "charts")}
	if err := Render(res, out); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(out.Markdown)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"kernel-path.png", "e2e-qps.png", "e2e-p99.png"} {
		if !bytes.Contains(md, []byte("](charts/"+name+")")) {
			t.Errorf("the report does not link charts/%s", name)
		}
		f, err := os.Open(filepath.Join(out.Charts, name))
		if err != nil {
			t.Error(err)
			continue
		}
		if _, err := png.DecodeConfig(f); err != nil {
			t.Errorf("chart %s: %v", name, err)
		}
		f.Close()
	}
}

// firstDiff returns the first line (from 1) where got and want differ,
// with both lines; 0 if they are the same.
func firstDiff(got, want []byte) (int, string, string) {
	if bytes.Equal(got, want) {
		return 0, "", ""
	}
	gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; ; i++ {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w || i >= len(gl) || i >= len(wl) {
			return i + 1, g, w
		}
	}
}
