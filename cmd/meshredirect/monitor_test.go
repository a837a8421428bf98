package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

func TestMonitorRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--type", "drops"}, {"-o", "yaml"}} {
		_, err := runCmd(t, append([]string{"monitor"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "want") {
			t.Errorf("monitor %v: %v", args, err)
		}
	}
}

// TestMonitorCommand runs `monitor -o json` against pinned maps while this
// build's app_outbound, loaded with them, drops a VLAN-tagged frame
// (parse_error) too short for its IPv4 header: the command prints the drop as a JSON line, and returns
// when its context ends (as on SIGINT).
func TestMonitorCommand(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := filepath.Join(testutil.BPFFS(t), "meshredirect")
	set, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	coll, err := ebpf.NewCollectionWithOptions(mrasm.CollectionSpec(mrasm.DefaultOptions()), ebpf.CollectionOptions{MapReplacements: set.Maps()})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	var out testutil.SyncBuffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"monitor", "-o", "json", "--pin-dir", dir, "--node-name", ""})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	frame := make([]byte, 14+10)
	binary.BigEndian.PutUint16(frame[12:], 0x8100)
	binary.BigEndian.PutUint16(frame[16:], 0x0800)
	frame[18] = 0x45
	var line string
	for deadline := time.Now().Add(10 * time.Second); line == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := coll.Programs[mrasm.AppOutbound].Run(&ebpf.RunOptions{Data: frame, Context: mrasm.SkBuff{}}); err != nil {
			t.Fatal(err)
		}
		line, _, _ = strings.Cut(out.String(), "\n")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("monitor: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("monitor did not return after its context ended")
	}
	var ev map[string]any
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("monitor -o json printed %q: %v", out.String(), err)
	}
	if ev["program"] != "app_outbound" || ev["verdict"] != "parse_error" || ev["dropped"] != true ||
		ev["len"] != float64(len(frame)) || ev["vlan"] != true || ev["truncated"] != "IPv4 header" {
		t.Errorf("event %s", line)
	}
}
