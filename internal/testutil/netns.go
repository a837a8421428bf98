package testutil

import (
	"runtime"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/meshredirect/meshredirect/internal/nsrun"
)

// NewNetns creates an anonymous network namespace and returns a handle to it,
// closed (and so the namespace freed, once nothing else holds it) when the
// test ends. The calling thread's namespace is left as it was.
func NewNetns(tb testing.TB) netns.NsHandle {
	tb.Helper()
	RequirePrivileged(tb)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the new namespace: never unlock it, so
		// the runtime throws it away with the goroutine.
		runtime.LockOSThread()
		tb.Fatalf("return to original netns: %v", err)
	}
	tb.Cleanup(func() { ns.Close() })
	return ns
}

// Do runs fn inside ns and returns fn's error (see nsrun.Run).
func Do(ns netns.NsHandle, fn func() error) error {
	return nsrun.Run(int(ns), fn)
}

// MustDo is Do that fails the test on error.
func MustDo(tb testing.TB, ns netns.NsHandle, fn func() error) {
	tb.Helper()
	if err := Do(ns, fn); err != nil {
		tb.Fatal(err)
	}
}
