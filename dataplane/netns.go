package dataplane

import (
	"errors"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meshredirect/meshredirect/internal/nsrun"
)

// inNetns runs fn inside ns, for what netlink handles cannot do from
// outside (writing /proc/sys/net, which shows the netns of the thread that
// opens it).
func inNetns(ns netns.NsHandle, fn func() error) error {
	return nsrun.Run(int(ns), fn)
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
