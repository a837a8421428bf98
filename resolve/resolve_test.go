package resolve

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/testenv"
)

// TestMain checks that the tests leave no socket or namespace open: the
// Resolver's netlink socket, the netns files NetnsPath opens, the handles
// the tests make. (Other descriptors belong to the test binary: -cpuprofile
// keeps its file open past m.Run.)
func TestMain(m *testing.M) {
	before := openFDs()
	code := m.Run()
	if code == 0 {
		// Sockets of exited netns-hopping goroutines close on their own
		// schedule; give them a moment.
		deadline := time.Now().Add(2 * time.Second)
		after := openFDs()
		for len(after) > len(before) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			after = openFDs()
		}
		if len(after) > len(before) {
			fmt.Fprintf(os.Stderr, "leaked %d file descriptors: before the tests %v, after %v\n", len(after)-len(before), before, after)
			code = 1
		}
	}
	os.Exit(code)
}

// openFDs lists the process's file descriptors that are sockets or
// namespaces, with what they refer to.
func openFDs() []string {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var fds []string
	for _, e := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if strings.HasPrefix(target, "socket:") || strings.HasPrefix(target, "net:") {
			fds = append(fds, e.Name()+"="+target)
		}
	}
	return fds
}

// mustResolver opens a Resolver on node's netns, closed when the test ends.
func mustResolver(tb testing.TB, node *testenv.Node, cfg Config) *Resolver {
	tb.Helper()
	cfg.NodeNetns = node.Path()
	r, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Errorf("close resolver: %v", err)
		}
	})
	return r
}

// mustHandle opens a netlink handle in ns, closed when the test ends.
func mustHandle(tb testing.TB, ns netns.NsHandle) *netlink.Handle {
	tb.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		tb.Fatalf("netlink in netns: %v", err)
	}
	tb.Cleanup(h.Close)
	return h
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// Addresses the tests route on the node themselves: in testenv's cluster
// ranges (only ever configured in namespaces the tests make), past the
// last node's pod CIDR and below the service range.
var (
	bridgeV4 = netip.MustParsePrefix("198.19.250.0/24")
	bridgeV6 = netip.MustParsePrefix("fd10:6d72:0:fffa::/64")
	spareV4  = netip.MustParsePrefix("198.19.251.0/24")
	spareV6  = netip.MustParsePrefix("fd10:6d72:0:fffb::/64")
)

func nth(p netip.Prefix, i int) netip.Addr {
	a := p.Addr()
	for range i {
		a = a.Next()
	}
	return a
}

func mustRoute(tb testing.TB, h *netlink.Handle, r *netlink.Route) {
	tb.Helper()
	if err := h.RouteAdd(r); err != nil {
		tb.Fatalf("add route %v: %v", r, err)
	}
	tb.Cleanup(func() { h.RouteDel(r) })
}

func mustLink(tb testing.TB, h *netlink.Handle, l netlink.Link) netlink.Link {
	tb.Helper()
	if err := h.LinkAdd(l); err != nil {
		tb.Fatalf("add %s %s: %v", l.Type(), l.Attrs().Name, err)
	}
	tb.Cleanup(func() { h.LinkDel(l) })
	got, err := h.LinkByName(l.Attrs().Name)
	if err != nil {
		tb.Fatalf("find %s: %v", l.Attrs().Name, err)
	}
	if err := h.LinkSetUp(got); err != nil {
		tb.Fatalf("set %s up: %v", l.Attrs().Name, err)
	}
	return got
}

// mustNotVeth adds a device that is not a veth: a dummy, or an ifb on
// kernels without the dummy driver (this VM's).
func mustNotVeth(tb testing.TB, h *netlink.Handle, name string) netlink.Link {
	tb.Helper()
	var l netlink.Link = &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := h.LinkAdd(l); errors.Is(err, unix.EOPNOTSUPP) {
		l = &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name}}
		err = h.LinkAdd(l)
		if err != nil {
			tb.Fatalf("add dummy or ifb %s: %v", name, err)
		}
	} else if err != nil {
		tb.Fatalf("add dummy %s: %v", name, err)
	}
	tb.Cleanup(func() { h.LinkDel(l) })
	got, err := h.LinkByName(name)
	if err != nil {
		tb.Fatalf("find %s: %v", name, err)
	}
	if err := h.LinkSetUp(got); err != nil {
		tb.Fatalf("set %s up: %v", name, err)
	}
	return got
}

func wantInterface(t *testing.T, got Interface, pod *testenv.Pod, via string) {
	t.Helper()
	if got.Ifindex != pod.HostVethIndex || got.Name != pod.HostVeth {
		t.Errorf("interface %s (ifindex %d), want %s (ifindex %d)", got.Name, got.Ifindex, pod.HostVeth, pod.HostVethIndex)
	}
	if got.PeerMAC.String() != pod.MAC.String() {
		t.Errorf("peer MAC %s, want %s (eth0 of %s)", got.PeerMAC, pod.MAC, pod.Name)
	}
	if got.PeerNetnsID < 0 || got.PeerIfindex <= 0 {
		t.Errorf("peer netns id %d, ifindex %d", got.PeerNetnsID, got.PeerIfindex)
	}
	if got.Via != via {
		t.Errorf("via %q, want %q", got.Via, via)
	}
}

func TestResolve(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a := node.AddPod("a", testenv.Ambient)
	b := node.AddPod("b", testenv.NotAmbient)
	r := mustResolver(t, node, Config{})

	for _, tc := range []struct {
		name string
		pod  *testenv.Pod
		ips  []netip.Addr
	}{
		{"ipv4 only", a, []netip.Addr{a.IPv4}},
		{"ipv6 only", a, []netip.Addr{a.IPv6}},
		{"dual stack", a, []netip.Addr{a.IPv4, a.IPv6}},
		{"dual stack, ipv6 first", b, []netip.Addr{b.IPv6, b.IPv4}},
		{"ipv4-mapped and repeated", b, []netip.Addr{netip.AddrFrom16(b.IPv4.As16()), b.IPv4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Resolve(tc.ips)
			if err != nil {
				t.Fatal(err)
			}
			wantInterface(t, got, tc.pod, ViaRoute)
		})
	}
}

// TestResolveCallerNetns opens the Resolver from a thread in the node's
// netns, without a path.
func TestResolveCallerNetns(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a := node.AddPod("a", testenv.Ambient)
	var r *Resolver
	if err := node.Do(func() (err error) {
		r, err = New(Config{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := r.Resolve([]netip.Addr{a.IPv4, a.IPv6})
	if err != nil {
		t.Fatal(err)
	}
	wantInterface(t, got, a, ViaRoute)
}

func TestResolveErrors(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a := node.AddPod("a", testenv.Ambient)
	b := node.AddPod("b", testenv.Ambient)
	node2 := node.AddPeerNode("node2")
	remote := node2.AddPod("remote", testenv.Ambient)
	h := mustHandle(t, node.Netns)
	res := mustResolver(t, node, Config{})

	// node2 has a default route, as real nodes do.
	h2 := mustHandle(t, node2.Netns)
	eth0, err := h2.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	mustRoute(t, h2, &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("198.18.0.254")})
	mustRoute(t, h2, &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("fd10:6d72::fe"), Family: unix.AF_INET6})
	res2 := mustResolver(t, node2, Config{})

	// A device that is not a veth, with host routes.
	dummy := mustNotVeth(t, h, "dummy0")
	kind := dummy.Type()
	// A veth pair inside the node: a veth, but no pod's.
	inner := mustLink(t, h, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "inner0"}, PeerName: "inner1"})
	for i, dev := range []netlink.Link{dummy, inner} {
		for _, p := range []netip.Prefix{host(nth(spareV4, 10+i)), host(nth(spareV6, 10+i))} {
			mustRoute(t, h, &netlink.Route{LinkIndex: dev.Attrs().Index, Dst: ipNet(p), Scope: netlink.SCOPE_LINK})
		}
	}
	// Calico's blackhole for its block, and the other unusable types.
	for i, typ := range []int{unix.RTN_BLACKHOLE, unix.RTN_UNREACHABLE, unix.RTN_PROHIBIT} {
		for _, p := range []netip.Prefix{
			netip.PrefixFrom(nth(spareV4, 64*(i+1)), 26),
			netip.PrefixFrom(nth(spareV6, 0x10000*(i+1)), 112),
		} {
			mustRoute(t, h, &netlink.Route{Dst: ipNet(p), Type: typ})
		}
	}

	for _, tc := range []struct {
		name    string
		on      *Resolver // res if nil
		ips     []netip.Addr
		want    error
		mention []string
	}{
		{"no route ipv4", nil, []netip.Addr{testenv.ServiceIPv4(1)}, ErrNotFound, []string{testenv.ServiceIPv4(1).String()}},
		{"no route ipv6", nil, []netip.Addr{testenv.ServiceIPv6(1)}, ErrNotFound, []string{testenv.ServiceIPv6(1).String()}},
		{"one of two has no route", nil, []netip.Addr{a.IPv4, testenv.ServiceIPv6(1)}, ErrNotFound, []string{a.IPv4.String(), testenv.ServiceIPv6(1).String()}},
		{"blackhole ipv4", nil, []netip.Addr{nth(spareV4, 65)}, ErrNotFound, []string{"blackhole"}},
		{"blackhole ipv6", nil, []netip.Addr{nth(spareV6, 0x10001)}, ErrNotFound, []string{"blackhole"}},
		{"unreachable", nil, []netip.Addr{nth(spareV4, 129), nth(spareV6, 0x20001)}, ErrNotFound, []string{"unreachable"}},
		{"prohibit", nil, []netip.Addr{nth(spareV4, 193), nth(spareV6, 0x30001)}, ErrNotFound, []string{"prohibit"}},
		{"pod of another node: via gateway", nil, []netip.Addr{remote.IPv4, remote.IPv6}, ErrNotFound, []string{"gateway", remote.Node.IPv4.String()}},
		{"only the default route", res2, []netip.Addr{testenv.ServiceIPv4(1), testenv.ServiceIPv6(1)}, ErrNotFound, []string{"default route"}},
		{"unused pod IP behind a default route", res2, []netip.Addr{nth(node2.PodCIDRv4, 50)}, ErrNotFound, []string{"default route"}},
		{"dummy", nil, []netip.Addr{nth(spareV4, 10), nth(spareV6, 10)}, ErrNotVeth, []string{"dummy0", kind}},
		{"veth with its peer in the node", nil, []netip.Addr{nth(spareV4, 11)}, ErrNotVeth, []string{"inner0", "node's own netns"}},
		{"node eth0: a veth whose peer's netns lacks the IP", nil, []netip.Addr{netip.MustParseAddr("198.18.0.200")}, ErrNotVeth, []string{"eth0", "does not hold"}},
		{"node IP", nil, []netip.Addr{node.IPv4}, ErrNotVeth, []string{"address of the node"}},
		{"dummy beats not found", nil, []netip.Addr{testenv.ServiceIPv4(1), nth(spareV6, 10)}, ErrNotVeth, []string{"dummy0"}},
		{"two pods as one", nil, []netip.Addr{a.IPv4, b.IPv6}, ErrMismatch, []string{a.HostVeth, b.HostVeth, a.IPv4.String(), b.IPv6.String()}},
		{"no IPs", nil, nil, nil, []string{"no pod IPs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			on := tc.on
			if on == nil {
				on = res
			}
			got, err := on.Resolve(tc.ips)
			if err == nil {
				t.Fatalf("resolved to %+v, want an error", got)
			}
			t.Log(err)
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			for _, s := range []error{ErrNotFound, ErrNotVeth, ErrMismatch} {
				if s != tc.want && errors.Is(err, s) {
					t.Errorf("error %v is also %v", err, s)
				}
			}
			for _, ip := range tc.ips {
				if !strings.Contains(err.Error(), ip.String()) {
					t.Errorf("error %q does not name pod IP %s", err, ip)
				}
			}
			for _, s := range tc.mention {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func TestResolveDeletedPod(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a := node.AddPod("a", testenv.Ambient)
	res := mustResolver(t, node, Config{})
	ips := []netip.Addr{a.IPv4, a.IPv6}
	if _, err := res.Resolve(ips); err != nil {
		t.Fatal(err)
	}
	a.Delete()
	_, err := res.Resolve(ips)
	t.Log(err)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("error %v, want %v", err, ErrNotFound)
	}
}

func TestResolveClosed(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a := node.AddPod("a", testenv.Ambient)
	res, err := New(Config{NodeNetns: node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Close(); err != nil {
		t.Fatal(err)
	}
	if err := res.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if _, err := res.Resolve([]netip.Addr{a.IPv4}); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("resolve after close: %v, want an error other than ErrNotFound", err)
	}
	if _, err := res.NetnsPath(0); err == nil {
		t.Error("NetnsPath after close: no error")
	}
}

func TestNewBadNetns(t *testing.T) {
	testenv.NewNode(t, testenv.NodeOptions{}) // for the privilege gate
	for _, path := range []string{"/nonexistent/netns", "/proc/self/status"} {
		if r, err := New(Config{NodeNetns: path}); err == nil {
			r.Close()
			t.Errorf("New with node netns %s: no error", path)
		} else {
			t.Log(err)
		}
	}
}

// TestResolveManyPods resolves 100 dual-stack pods, one after another and
// then from 8 goroutines at once, and reports the time per resolve.
func TestResolveManyPods(t *testing.T) {
	const n = 100
	node := testenv.NewNode(t, testenv.NodeOptions{})
	pods := make([]*testenv.Pod, n)
	for i := range pods {
		pods[i] = node.AddPod(fmt.Sprintf("pod%d", i), testenv.Ambient)
	}
	res := mustResolver(t, node, Config{})

	check := func(p *testenv.Pod) error {
		got, err := res.Resolve([]netip.Addr{p.IPv4, p.IPv6})
		if err != nil {
			return err
		}
		if got.Ifindex != p.HostVethIndex || got.PeerMAC.String() != p.MAC.String() {
			return fmt.Errorf("pod %s resolved to %s (ifindex %d, MAC %s), want %s (ifindex %d, MAC %s)",
				p.Name, got.Name, got.Ifindex, got.PeerMAC, p.HostVeth, p.HostVethIndex, p.MAC)
		}
		return nil
	}
	start := time.Now()
	for _, p := range pods {
		if err := check(p); err != nil {
			t.Fatal(err)
		}
	}
	serial := time.Since(start)

	const workers = 8
	errc := make(chan error, workers)
	start = time.Now()
	for w := range workers {
		go func() {
			for i := w; i < n; i += workers {
				if err := check(pods[i]); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range workers {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	parallel := time.Since(start)
	t.Logf("%d dual-stack pods: %v per resolve one at a time, %v per resolve with %d goroutines",
		n, serial/n, parallel/n, workers)
}

// BenchmarkResolve measures one dual-stack resolve among 100 pods.
func BenchmarkResolve(b *testing.B) {
	node := testenv.NewNode(b, testenv.NodeOptions{})
	var last *testenv.Pod
	for i := range 100 {
		last = node.AddPod(fmt.Sprintf("pod%d", i), testenv.Ambient)
	}
	res := mustResolver(b, node, Config{})
	ips := []netip.Addr{last.IPv4, last.IPv6}
	for b.Loop() {
		if _, err := res.Resolve(ips); err != nil {
			b.Fatal(err)
		}
	}
}

// TestResolveWhileDeleting resolves pods while they are being deleted: each
// answer is either the pod's veth or ErrNotFound, whichever step of the
// lookup the deletion overtakes.
func TestResolveWhileDeleting(t *testing.T) {
	const n = 20
	node := testenv.NewNode(t, testenv.NodeOptions{})
	pods := make([]*testenv.Pod, n)
	for i := range pods {
		pods[i] = node.AddPod(fmt.Sprintf("pod%d", i), testenv.Ambient)
	}
	res := mustResolver(t, node, Config{})

	done := make(chan struct{})
	errc := make(chan error, 2)
	var notFound, found [2]int
	for w := range 2 {
		go func() {
			for {
				select {
				case <-done:
					errc <- nil
					return
				default:
				}
				for _, p := range pods {
					got, err := res.Resolve([]netip.Addr{p.IPv4, p.IPv6})
					switch {
					case errors.Is(err, ErrNotFound):
						notFound[w]++
					case err != nil:
						errc <- fmt.Errorf("pod %s: %w", p.Name, err)
						return
					case got.Ifindex != p.HostVethIndex || got.PeerMAC.String() != p.MAC.String():
						errc <- fmt.Errorf("pod %s resolved to %+v", p.Name, got)
						return
					default:
						found[w]++
					}
				}
			}
		}()
	}
	for _, p := range pods {
		time.Sleep(time.Millisecond)
		p.Delete()
	}
	close(done)
	for range 2 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d resolved, %d not found", found[0]+found[1], notFound[0]+notFound[1])
}

// TestGone pins down the kernel's answers that gone relies on: a request
// naming a netns id that does not exist fails with EINVAL, with or without
// an extended ack message that says so.
func TestGone(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	res := mustResolver(t, node, Config{})
	const bogus = 9999
	for name, err := range map[string]error{
		"address dump ipv4": second(addresses(res.conn, bogus, unix.AF_INET)),
		"address dump ipv6": second(addresses(res.conn, bogus, unix.AF_INET6)),
		"link by netns id":  second(getLink(res.conn, 1, bogus)),
		"link by index":     second(getLink(res.conn, 9999, -1)),
	} {
		if !gone(err) {
			t.Errorf("%s: %v is not gone", name, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }
