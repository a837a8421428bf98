package report

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
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

// TestRender writes the report from the committed results and every
// chart it links, each a PNG, each linked relative to the report.
func TestRender(t *testing.T) {
	res, err := ReadResults(latestJSON)
	if err != nil {
		t.Fatal(err)
	}
	md, dir := renderTo(t, res)
	checkCharts(t, md, dir)
}

// renderTo renders res into a temporary directory, the charts in its
// charts/ directory, and returns the report and the chart directory.
func renderTo(t *testing.T, res *Results) (string, string) {
	t.Helper()
	dir := t.TempDir()
	out := Output{Markdown: filepath.Join(dir, "BENCHMARKS.md"), Charts: filepath.Join(dir, "charts")}
	if err := Render(res, out); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(out.Markdown)
	if err != nil {
		t.Fatal(err)
	}
	return string(md), out.Charts
}

var chartLink = regexp.MustCompile(`\]\(charts/([^)]+\.png)\)`)

// checkCharts: every chart the report links is a PNG in dir, every PNG in
// dir is linked; returns the linked files.
func checkCharts(t *testing.T, md, dir string) map[string]bool {
	t.Helper()
	linked := map[string]bool{}
	for _, m := range chartLink.FindAllStringSubmatch(md, -1) {
		linked[m[1]] = true
		f, err := os.Open(filepath.Join(dir, m[1]))
		if err != nil {
			t.Errorf("the report links charts/%s: %v", m[1], err)
			continue
		}
		if _, err := png.DecodeConfig(f); err != nil {
			t.Errorf("chart %s: %v", m[1], err)
		}
		f.Close()
	}
	if len(linked) == 0 {
		t.Error("the report links no chart")
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	for _, f := range files {
		if !linked[filepath.Base(f)] {
			t.Errorf("chart %s is drawn but the report does not link it", filepath.Base(f))
		}
	}
	return linked
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
