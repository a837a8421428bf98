package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
)

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestDumpJSON(t *testing.T) {
	testutil.RequirePrivileged(t)
	out, err := runCmd(t, "dump", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var progs []dataplane.ProgramInfo
	if err := json.Unmarshal([]byte(out), &progs); err != nil {
		t.Fatalf("dump --json is not JSON: %v\n%s", err, out)
	}
	want := []string{"app_outbound", "app_inbound", "ztunnel_ingress", "ztunnel_egress", "ztunnel_assign"}
	if len(progs) != len(want) {
		t.Fatalf("%d programs, want %d", len(progs), len(want))
	}
	for i, p := range progs {
		if p.Name != want[i] || p.Instructions == 0 || p.VerifiedInstructions == 0 || p.Attach == "" {
			t.Errorf("program %d: %+v", i, p)
		}
	}
	// The keys are the ones the issue asks for.
	var raw []map[string]any
	json.Unmarshal([]byte(out), &raw)
	for _, k := range []string{"name", "instructions", "verified_instructions", "attach"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("key %q missing", k)
		}
	}
}

func TestDumpListing(t *testing.T) {
	testutil.RequirePrivileged(t)
	out, err := runCmd(t, "dump", "--redirect-peer=false")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"app_outbound:", "ztunnel_assign:", "FnRedirect", "verified by the kernel", "redirect_peer false"} {
		if !strings.Contains(out, s) {
			t.Errorf("listing lacks %q", s)
		}
	}
	if strings.Contains(out, "FnRedirectPeer") {
		t.Error("--redirect-peer=false still calls bpf_redirect_peer")
	}
}

func TestDumpRejectsBadFlag(t *testing.T) {
	_, err := runCmd(t, "dump", "--redirect-peer=maybe")
	if err == nil || !strings.Contains(err.Error(), "auto, true or false") {
		t.Errorf("bad --redirect-peer: %v", err)
	}
}
