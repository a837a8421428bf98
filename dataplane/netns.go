package dataplane

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNetns runs fn on a locked OS thread inside ns, for what netlink handles
// cannot do from outside (writing /proc/sys/net, which shows the netns of
// the thread that opens it). If the thread cannot return to its netns it is
// never unlocked, so the Go runtime retires it with the goroutine.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// retryDump runs a netlink dump until it is not interrupted by a concurrent
// change (NLM_F_DUMP_INTR, which vishvananda/netlink reports as
// ErrDumpInterrupted with partial results), at most five times.
func retryDump(dump func() error) error {
	var err error
	for i := 0; i < 5; i++ {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
}
