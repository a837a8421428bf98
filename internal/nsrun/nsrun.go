// Package nsrun runs a function inside another network namespace.
//
// setns(2) moves one OS thread, not a goroutine: the function runs on a
// goroutine of its own, locked to its thread for the whole call. When the
// thread cannot go back to where it was, it stays locked, so that the Go
// runtime retires it with the goroutine instead of running other
// goroutines in the wrong namespace.
package nsrun

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Run calls fn on a locked OS thread inside the network namespace that the
// file descriptor ns refers to, and returns fn's error. Sockets that fn
// opens stay in that namespace whichever thread uses them later. When the
// thread is in that namespace already, fn runs without setns, which also
// spares the need for CAP_SYS_ADMIN.
func Run(ns int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread's namespace, not the process's: a goroutine may run
		// on a thread that someone moved elsewhere.
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the current thread's netns: %w", err)
			return
		}
		defer orig.Close()
		if same(int(orig.Fd()), ns) {
			err := fn()
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns: %w", err))
			return // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// same reports whether the descriptors a and b refer to one namespace.
func same(a, b int) bool {
	var sa, sb unix.Stat_t
	if unix.Fstat(a, &sa) != nil || unix.Fstat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
