package main

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/meshredirect/meshredirect/internal/bpffs"
)

// env is the testenv.TB of the benchmark program: it collects cleanups and
// runs them last in, first out, once, whether the program ends, fails or
// is interrupted; a fatal error unwinds to run() as a panic of type fatal.
type env struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	closing  bool
	// done is closed once the cleanups have run: a second close (Ctrl-C
	// while the program unwinds, or the other way round) waits for it, so
	// that the process never exits halfway through the cleanups.
	done chan struct{}
}

// fatal is the panic value of env.Fatal.
type fatal string

func (f fatal) Error() string { return string(f) }

// Helper, Cleanup, Fatal, Fatalf and Errorf make env a testenv.TB.
func (e *env) Helper() {}

func (e *env) Cleanup(fn func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleanups = append(e.cleanups, fn)
}

func (e *env) Fatal(args ...any) { panic(fatal(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))) }

func (e *env) Fatalf(f string, args ...any) { panic(fatal(fmt.Sprintf(f, args...))) }

func (e *env) Errorf(f string, args ...any) {
	e.mu.Lock()
	e.failed = true
	e.mu.Unlock()
	fmt.Fprintf(os.Stderr, "bench: "+f+"\n", args...)
}

// check fails on a non-nil error.
func (e *env) check(err error) {
	if err != nil {
		e.Fatal(err)
	}
}

// close runs the cleanups, last registered first. A cleanup that panics
// is reported and the others still run.
func (e *env) close() {
	e.mu.Lock()
	if e.done == nil {
		e.done = make(chan struct{})
	}
	done := e.done
	if e.closing {
		e.mu.Unlock()
		<-done
		return
	}
	e.closing = true
	cleanups := e.cleanups
	e.cleanups = nil
	e.mu.Unlock()
	defer close(done)
	for i := len(cleanups) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if r := recover(); r != nil {
					e.Errorf("cleanup: %v", r)
				}
			}()
			cleanups[i]()
		}()
	}
}

// bpffs mounts a private bpffs for the pins of the eBPF copies, so that
// the machine's /sys/fs/bpf is never touched; it is unmounted at the end.
func (e *env) bpffs() string {
	dir, unmount, err := bpffs.MountPrivate("meshredirect-bench-bpffs-")
	if err != nil {
		e.Fatalf("%v", err)
	}
	e.Cleanup(func() {
		if err := unmount(); err != nil {
			e.Errorf("%v", err)
		}
	})
	return dir
}
