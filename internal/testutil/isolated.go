package testutil

import (
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/bpffs"
)

// Isolated runs fn on an OS thread of its own, in a new network namespace
// (only lo, down) and a new mount namespace whose /sys/fs/bpf is a private
// bpffs: code written for a real node, with the node's default paths and
// its own netns, runs there without touching the machine's interfaces or
// pins. The package examples run this way, so that what they show is run
// and not only compiled.
//
// The thread never leaves the two namespaces: it stays locked and the Go
// runtime retires it when fn returns, taking the namespaces and the bpffs
// with it. Goroutines that fn starts run elsewhere, in the machine's
// namespaces: fn must do its work itself.
func Isolated(tb testing.TB, fn func() error) {
	tb.Helper()
	RequirePrivileged(tb)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("panic: %v", r)
			}
		}()
		if err := unix.Unshare(unix.CLONE_NEWNET | unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("unshare network and mount namespaces: %w", err)
			return
		}
		// Mounts made here must not propagate back to the machine.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			errc <- fmt.Errorf("make / private in the new mount namespace: %w", err)
			return
		}
		if err := bpffs.Mount("/sys/fs/bpf"); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
}
