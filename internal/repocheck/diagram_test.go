package repocheck

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// TestDiagramsGenerated: each committed picture of docs/ (the README's packet paths of each
// mode) is what Graphviz's dot draws from its source beside it, so that a change to the source
// without `make diagram`, or an SVG edited by hand, fails. dot's output is the same from run to
// run for one Graphviz version and font set (the sources name DejaVu Sans).
func TestDiagramsGenerated(t *testing.T) {
	sources, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.dot"))
	if err != nil {
		t.Fatal(err)
	}
	if len(sources) == 0 {
		t.Fatal("no docs/*.dot: the README's datapath pictures have no source")
	}
	dot := testutil.RequireTool(t, "dot", "(Graphviz: apt-get install graphviz) to draw docs/*.dot")
	version, _ := exec.Command(dot, "-V").CombinedOutput()
	for _, src := range sources {
		svg := strings.TrimSuffix(src, ".dot") + ".svg"
		t.Run(filepath.Base(src), func(t *testing.T) {
			cmd := exec.Command(dot, "-Tsvg", src)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			want, err := cmd.Output()
			if err != nil {
				t.Fatalf("dot -Tsvg %s: %v\n%s", src, err, stderr.String())
			}
			if stderr.Len() > 0 {
				t.Errorf("dot -Tsvg %s warns:\n%s", src, stderr.String())
			}
			got, err := os.ReadFile(svg)
			if err != nil {
				t.Fatalf("%v (make diagram draws it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s is not what dot draws from %s: run make diagram and commit it (this dot: %s)",
					svg, src, strings.TrimSpace(string(version)))
			}
		})
	}
}
