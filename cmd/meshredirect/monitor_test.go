package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
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
	dir, _, coll := pinnedPrograms(t)

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

// TestMonitorCommandReportsLost: when drops come faster than the command
// reads (here, many times the ring buffer's room in one test run), it says
// on stderr how many events the programs counted lost, and stdout keeps
// only events.
func TestMonitorCommandReportsLost(t *testing.T) {
	dir, set, coll := pinnedPrograms(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	var stdout, stderr testutil.SyncBuffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	cmd.SetArgs([]string{"monitor", "-o", "json", "--pin-dir", dir, "--node-name", ""})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	// Drops once the monitor is attached: its deadline is set.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if mon, err := set.Monitor.Get(); err == nil && mon.DropsUntil > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the monitor never set its deadline")
		}
	}
	frame := make([]byte, 14+10)
	binary.BigEndian.PutUint16(frame[12:], 0x8100)
	runs := 20 * maps.EventsSize / int(maps.EventRecordSize)
	if _, err := coll.Programs[mrasm.AppOutbound].Run(&ebpf.RunOptions{Data: frame, Context: mrasm.SkBuff{}, Repeat: uint32(runs)}); err != nil {
		t.Fatal(err)
	}
	var said string
	for deadline := time.Now().Add(5 * time.Second); said == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		said, _, _ = strings.Cut(stderr.String(), "\n")
	}
	cancel()
	<-done
	var n int
	if _, err := fmt.Sscanf(said, "%d events lost since the monitor started", &n); err != nil || n <= 0 || n >= runs {
		t.Errorf("stderr %q after %d drops: want the count of events lost (%v)", stderr.String(), runs, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("stdout line %q is not an event", line)
		}
	}
}

// pinnedPrograms pins this build's maps in a private bpffs, as an agent
// does, and loads its programs with them: what monitor reads is what they
// write. It returns the pin directory.
func pinnedPrograms(t *testing.T) (string, *maps.Set, *ebpf.Collection) {
	t.Helper()
	testutil.RequirePrivileged(t)
	dir := filepath.Join(testutil.BPFFS(t), "meshredirect")
	set, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { set.Close() })
	coll, err := ebpf.NewCollectionWithOptions(mrasm.CollectionSpec(mrasm.DefaultOptions()), ebpf.CollectionOptions{MapReplacements: set.Maps()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coll.Close)
	return dir, set, coll
}
