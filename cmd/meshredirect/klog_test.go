package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/klog/v2"
)

// TestKlogThroughSlog ("klog through slog"): what client-go logs through
// klog comes out of the agent's JSON handler, one JSON object a line with
// klog's message and level, and nothing reaches stderr as plain text.
func TestKlogThroughSlog(t *testing.T) {
	// The agent's handler writes to os.Stderr, as klog does by default:
	// every line of the file must be JSON.
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stderr := os.Stderr
	os.Stderr = f
	t.Cleanup(func() { os.Stderr = stderr; klog.ClearLogger() })

	log, err := newLogger("json", "info")
	if err != nil {
		t.Fatal(err)
	}
	routeKlog(log)
	klog.Info("watch of pods restarted")
	klog.InfoS("throttled request", "latency", "1.5s")
	klog.Error("watch of pods failed")
	klog.ErrorS(errors.New("connection refused"), "list namespaces")
	klog.V(4).Info("debug chatter of client-go") // klog's -v is 0: dropped
	klog.Flush()
	os.Stderr = stderr

	out, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	type line struct {
		Level, Msg, Latency, Err string
	}
	var got []line
	for _, l := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		var v struct {
			Level   string `json:"level"`
			Msg     string `json:"msg"`
			Latency string `json:"latency"`
			Err     string `json:"err"`
		}
		if err := json.Unmarshal(l, &v); err != nil {
			t.Fatalf("a line on stderr is not JSON (%v): %s\nall of stderr:\n%s", err, l, out)
		}
		got = append(got, line{v.Level, v.Msg, v.Latency, v.Err})
	}
	want := []line{
		{Level: "INFO", Msg: "watch of pods restarted"},
		{Level: "INFO", Msg: "throttled request", Latency: "1.5s"},
		{Level: "ERROR", Msg: "watch of pods failed"},
		{Level: "ERROR", Msg: "list namespaces", Err: "connection refused"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d lines on stderr, want %d:\n%s", len(got), len(want), out)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}
