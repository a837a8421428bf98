package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshredirect/meshredirect/internal/version"
)

// TestVersionCommand: `meshredirect version` prints the version, commit, Go
// version and platform, as text or JSON, and --version the one line.
func TestVersionCommand(t *testing.T) {
	info := version.Get()
	out, err := runCmd(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"version:  " + info.Version, "commit:   " + info.Commit, "go:       " + info.GoVersion, "platform: " + info.Platform} {
		if !strings.Contains(out, s+"\n") {
			t.Errorf("version lacks %q:\n%s", s, out)
		}
	}
	out, err = runCmd(t, "version", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got version.Info
	if err := json.Unmarshal([]byte(out), &got); err != nil || got != info {
		t.Errorf("version -o json = %s (%v), want %+v", out, err, info)
	}
	if _, err := runCmd(t, "version", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "invalid --output") {
		t.Errorf("version -o yaml: error %v, want invalid --output", err)
	}
	out, err = runCmd(t, "--version")
	if err != nil {
		t.Fatal(err)
	}
	if out != info.String()+"\n" {
		t.Errorf("--version = %q, want %q", out, info.String()+"\n")
	}
}
