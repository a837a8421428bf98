package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunFailsWithoutBinaries: `make image` cannot exit 0 having built
// nothing: with no binaries (a build that failed or went elsewhere) the
// command fails, naming the missing binary, and leaves no archive behind.
func TestRunFailsWithoutBinaries(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "image.tar")
	err := run([]string{"-bin", filepath.Join(dir, "bin"), "-images", "agent", "-o", out}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "meshredirect") {
		t.Errorf("run with no binaries: error %v, want one naming the agent's binary", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("run with no binaries left %s", out)
	}
	for _, args := range [][]string{
		{"-bin", dir},                                // no -o
		{"-o", out, "-created", "yesterday"},         // not Unix seconds
		{"-o", out, "-images", "agent", "-arch", ""}, // no arch
	} {
		if err := run(args, io.Discard); err == nil {
			t.Errorf("run %v succeeded, want an error", args)
		}
	}
}
