package kubeapi

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
)

// shared is the one control plane of a test package that uses Main.
var shared struct {
	mu      sync.Mutex
	inMain  bool
	opts    Options
	srv     *Server
	err     error // why the shared server could not start; sticks for the whole run
	started bool
}

// Main runs a test package's tests with one control plane shared between them, to be called
// from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(kubeapi.Main(m, kubeapi.Options{...})) }
//
// The control plane starts on the first call to [Shared], so `go test -run` of tests that do
// not need it pays nothing; Main stops it after the last test and returns the exit code.
func Main(m *testing.M, opts Options) int {
	shared.mu.Lock()
	shared.inMain, shared.opts = true, opts
	shared.mu.Unlock()

	code := m.Run()

	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "kubeapi: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Shared returns the package's control plane started by [Main], starting it on first use. If
// the binaries have not been built it skips tb, or fails it when CI is true (CI must not pass
// without these tests); if the control plane fails to start it fails tb, and every later
// caller, with the apiserver's log.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	requireBinaries(tb)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		tb.Fatal("kubeapi.Shared needs TestMain to call kubeapi.Main")
	}
	if !shared.started {
		shared.started = true
		shared.srv, shared.err = Start(context.Background(), shared.opts)
	}
	if shared.err != nil {
		tb.Fatalf("start shared control plane: %v", shared.err)
	}
	return shared.srv
}

// StartForTest starts a control plane of tb's own and stops it when tb ends, skipping or
// failing tb as [Shared] does when the binaries are missing. Prefer [Shared]: each control
// plane costs seconds to start and ~330 MB of memory.
func StartForTest(tb testing.TB, opts Options) *Server {
	tb.Helper()
	requireBinaries(tb)
	s, err := Start(tb.Context(), opts)
	if err != nil {
		tb.Fatalf("start control plane: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("stop control plane: %v", err)
		}
	})
	return s
}

// requireBinaries skips tb when the binaries are missing, unless CI is true: then it fails,
// so that a CI run which forgot `make kube-bins` cannot pass by skipping.
func requireBinaries(tb testing.TB) {
	tb.Helper()
	_, _, err := Binaries()
	if err == nil {
		return
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		tb.Fatalf("%v; CI is set, so this cannot be skipped", err)
		return
	}
	tb.Skipf("%v", err)
}
