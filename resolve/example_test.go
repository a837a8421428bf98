package resolve_test

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/meshredirect/meshredirect/internal/testutil"

	"github.com/meshredirect/meshredirect/resolve"
)

// Example finds a dual-stack pod's veth and MAC on the node, and a path to
// its network namespace; ErrNotFound means "not wired yet (or any more):
// try again later".
func Example() {
	// The node's netns is this process's (the agent runs with
	// hostNetwork); NodeNetns names another, such as /proc/1/ns/net.
	r, err := resolve.New(resolve.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()

	pod := []netip.Addr{netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00:10:244:1::7")}
	iface, err := r.Resolve(pod)
	switch {
	case errors.Is(err, resolve.ErrNotFound):
		fmt.Println("retry later:", err)
		return
	case err != nil:
		fmt.Println(err)
		return
	}
	fmt.Println(iface.Name, iface.Ifindex, iface.PeerMAC, iface.Via)

	path, err := r.NetnsPath(iface.PeerNetnsID)
	fmt.Println(path, err)
}

// TestExample runs Example in a netns of its own, so that what it shows is
// run, not only compiled: no interface leads to the pod, which is the
// "retry later" branch.
func TestExample(t *testing.T) {
	testutil.Isolated(t, func() error {
		Example()
		return nil
	})
}
