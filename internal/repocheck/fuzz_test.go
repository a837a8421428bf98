package repocheck

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestMakeFuzzesEveryTarget: each Fuzz function in the module is in the
// Makefile's FUZZ_TARGETS, so make test runs it; and each entry there names
// one that exists. (make test once ran 7 of 9 targets.)
func TestMakeFuzzesEveryTarget(t *testing.T) {
	root := "../.."
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	// FUZZ_TARGETS ?= ./pkg:Name:count ... with backslash continuations.
	text := strings.ReplaceAll(string(mk), "\\\n", " ")
	m := regexp.MustCompile(`(?m)^FUZZ_TARGETS \?=(.*)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("no FUZZ_TARGETS in the Makefile")
	}
	var listed []string
	for _, f := range strings.Fields(m[1]) {
		parts := strings.Split(f, ":")
		if len(parts) != 3 {
			t.Errorf("FUZZ_TARGETS entry %q is not ./pkg:Name:count", f)
			continue
		}
		listed = append(listed, strings.TrimPrefix(parts[0], "./")+"."+parts[1])
	}

	fuzzFunc := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(\w+ \*testing\.F\)`)
	var found []string
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		for _, m := range fuzzFunc.FindAllStringSubmatch(string(src), -1) {
			found = append(found, filepath.ToSlash(rel)+"."+m[1])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) < 10 {
		t.Fatalf("found %d fuzz targets in the module: %v", len(found), found)
	}
	for _, f := range found {
		if !slices.Contains(listed, f) {
			t.Errorf("fuzz target %s is not in the Makefile's FUZZ_TARGETS: make test does not run it", f)
		}
	}
	for _, l := range listed {
		if !slices.Contains(found, l) {
			t.Errorf("FUZZ_TARGETS names %s, which does not exist", l)
		}
	}
	t.Logf("%d fuzz targets, all run by make test", len(found))
}
