package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// Namespace is a network namespace made by testenv: a node's or a pod's.
// Node and Pod embed it, so that node.Do, pod.Dial and the like read as
// "in this node", "from this pod".
type Namespace struct {
	// Netns is the namespace's handle. It stays open until the test ends;
	// do not close it.
	Netns netns.NsHandle

	tb   TB
	what string // "pod client on node1", for error messages
}

// Do runs fn on a locked OS thread inside the namespace and returns its
// error. Sockets fn opens stay in the namespace whichever thread uses them
// later; goroutines fn starts do not run in it.
func (ns *Namespace) Do(fn func() error) error {
	if err := testutil.Do(ns.Netns, fn); err != nil {
		return fmt.Errorf("in %s: %w", ns.what, err)
	}
	return nil
}

// Path returns a path to the namespace that other processes can open while
// this test runs (setns, nsenter --net=PATH): /proc/<pid>/fd/<handle>.
func (ns *Namespace) Path() string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns.Netns))
}

// Start starts cmd inside the namespace: the child is forked from a thread
// that is in the namespace and so begins its life there (it sees the
// machine's /sys, unlike under `ip netns exec`).
func (ns *Namespace) Start(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// dialer and listenConfig turn MPTCP off: Go listeners use MPTCP by default
// since Go 1.24, and an MPTCP socket is not what a pod's application or
// ztunnel opens (nor can it go into a sockmap).
func dialer() *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(false)
	return d
}

func listenConfig() *net.ListenConfig {
	lc := &net.ListenConfig{}
	lc.SetMultipathTCP(false)
	return lc
}

// Dial connects from the namespace to address ("tcp4", "tcp6", "udp4",
// "udp6", ...), with a 5 second timeout and MPTCP off.
func (ns *Namespace) Dial(network, address string) (net.Conn, error) {
	return ns.DialContext(context.Background(), network, address)
}

// DialContext is Dial with a context.
func (ns *Namespace) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = dialer().DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen opens a stream listener in the namespace (MPTCP off).
func (ns *Namespace) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() (err error) {
		l, err = listenConfig().Listen(context.Background(), network, address)
		return err
	})
	return l, err
}

// ListenPacket opens a packet listener in the namespace.
func (ns *Namespace) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := ns.Do(func() (err error) {
		c, err = listenConfig().ListenPacket(context.Background(), network, address)
		return err
	})
	return c, err
}

// newNetns creates an anonymous network namespace, brings its loopback up
// and returns its handle with a netlink handle inside it; both are the
// caller's to close. It fails the test on error, leaving nothing open.
func newNetns(tb TB) (netns.NsHandle, *netlink.Handle) {
	tb.Helper()
	ns := netns.None()
	var nlh *netlink.Handle
	// On a goroutine of its own, so that a thread that cannot go back to
	// its namespace dies with that goroutine instead of carrying the test
	// on in the wrong namespace.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		ns, err = netns.New()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("create netns: %w", err)
			return
		}
		// The netlink socket is made here, inside the new namespace, to
		// save a second round trip through setns.
		h, herr := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err := netns.Set(orig); err != nil {
			if herr == nil {
				h.Close()
			}
			errc <- fmt.Errorf("return to original netns: %w", err)
			return // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		if herr != nil {
			errc <- fmt.Errorf("open netlink in new netns: %w", herr)
			return
		}
		nlh = h
		errc <- nil
	}()
	err := <-errc
	if err == nil {
		lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1, Name: "lo"}}
		if err = nlh.LinkSetUp(lo); err != nil {
			nlh.Close()
			err = fmt.Errorf("set lo up: %w", err)
		}
	}
	if err != nil {
		if ns.IsOpen() {
			ns.Close()
		}
		tb.Fatal(err)
	}
	return ns, nlh
}

// sysctls writes /proc/sys settings; call it inside the namespace they are
// for (/proc/sys/net follows the calling thread's namespace).
func sysctls(kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		p := filepath.Join("/proc/sys", kv[i])
		if err := os.WriteFile(p, []byte(kv[i+1]), 0o644); err != nil {
			return fmt.Errorf("set sysctl %s=%s: %w", kv[i], kv[i+1], err)
		}
	}
	return nil
}

// waitIPv6 waits until the IPv6 addresses addrs are usable in h's
// namespace; if link is not nil, also until link has its link-local address
// and addrs, none tentative (the kernel answers neighbour solicitations on
// an interface only for addresses of that interface that are not). The kernel
// makes an IPv6 address live (its local route, the end of the tentative
// state) from a workqueue once the link is up (addrconf_dad_work), even
// without duplicate address detection: until then a packet for the address
// is not delivered, and a test's first packet could be lost.
func waitIPv6(h *netlink.Handle, link netlink.Link, addrs ...netip.Addr) error {
	deadline := time.Now().Add(5 * time.Second)
	for pause := 50 * time.Microsecond; ; pause = min(2*pause, 5*time.Millisecond) {
		ready := true
		for _, a := range addrs {
			routes, err := h.RouteGet(a.AsSlice())
			if err != nil || len(routes) == 0 || routes[0].Type != unix.RTN_LOCAL {
				ready = false
			}
		}
		if ready && link != nil {
			ready = false
			list, err := h.AddrList(link, unix.AF_INET6)
			if errors.Is(err, netlink.ErrDumpInterrupted) {
				// The addresses changed during the dump (addrconf at
				// work): look again.
				time.Sleep(pause)
				continue
			}
			if err != nil {
				return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
			}
			live := map[netip.Addr]bool{}
			for _, a := range list {
				ip, _ := netip.AddrFromSlice(a.IP)
				if a.Flags&unix.IFA_F_TENTATIVE == 0 {
					live[ip] = true
					if ip.IsLinkLocalUnicast() {
						ready = true
					}
				}
			}
			for _, a := range addrs {
				ready = ready && live[a]
			}
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for IPv6 addresses %v to be usable: timed out", addrs)
		}
		time.Sleep(pause)
	}
}
