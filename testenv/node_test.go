package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// box is the environment most tests use: two nodes, ambient and plain
// pods, a ztunnel pod.
type box struct {
	node, peer                        *Node
	client, server, plain, zt, remote *Pod
}

func newBox(tb testing.TB) *box {
	tb.Helper()
	b := &box{node: NewNode(tb, NodeOptions{})}
	b.client = b.node.AddPod("client", Ambient)
	b.server = b.node.AddPod("server", Ambient)
	b.plain = b.node.AddPod("plain", NotAmbient)
	b.zt = b.node.AddZtunnel()
	b.peer = b.node.AddPeerNode("node2")
	b.remote = b.peer.AddPod("remote", NotAmbient)
	return b
}

func TestAddressPlan(t *testing.T) {
	v4, v6 := PodCIDRs(1)
	if v4.String() != "198.18.16.0/20" || v6.String() != "fd10:6d72:0:1::/64" {
		t.Errorf("PodCIDRs(1) = %s, %s", v4, v6)
	}
	v4, v6 = PodCIDRs(MaxNodes)
	if v4.Overlaps(ServiceV4) || v6.Overlaps(ServiceV6) || v4.Overlaps(NodeNetworkV4) {
		t.Errorf("PodCIDRs(%d) = %s, %s overlaps services or the fabric", MaxNodes, v4, v6)
	}
	for n := 1; n <= MaxNodes; n++ {
		v4, v6 := PodCIDRs(n)
		if !ClusterV4.Contains(v4.Addr()) || !ClusterV6.Contains(v6.Addr()) {
			t.Errorf("PodCIDRs(%d) = %s, %s outside the cluster ranges", n, v4, v6)
		}
		last4, last6 := podIPs(n, MaxPodsPerNode)
		if !v4.Contains(last4) || !v6.Contains(last6) {
			t.Errorf("pod %d of node %d = %s, %s outside %s, %s", MaxPodsPerNode, n, last4, last6, v4, v6)
		}
	}
	p4, p6 := podIPs(2, 300)
	if p4.String() != "198.18.33.44" || p6.String() != "fd10:6d72:0:2::12c" {
		t.Errorf("podIPs(2, 300) = %s, %s", p4, p6)
	}
	if ll := linkLocalEUI64(net.HardwareAddr{0xee, 0xee, 0xc6, 0x12, 0x10, 0x01}); ll.String() != "fe80::ecee:c6ff:fe12:1001" {
		t.Errorf("linkLocalEUI64 = %s", ll)
	}
}

// TestPodWiring checks that a pod is wired as a point-to-point CNI wires
// it, and that what Pod reports matches the kernel's view.
func TestPodWiring(t *testing.T) {
	node := NewNode(t, NodeOptions{})
	pod := node.AddPod("client", Ambient)

	if !strings.HasPrefix(pod.HostVeth, "veth") || len(pod.HostVeth) != 15 {
		t.Errorf("host veth name %q, want veth + 11 hex digits", pod.HostVeth)
	}
	if !pod.Ambient || pod.Node != node || node.Pod("client") != pod {
		t.Errorf("pod fields: ambient %v node %p (want %p)", pod.Ambient, pod.Node, node)
	}

	// Node side: the host veth with its ifindex and host routes.
	if err := node.Do(func() error {
		l, err := netlink.LinkByName(pod.HostVeth)
		if err != nil {
			return err
		}
		if l.Attrs().Index != pod.HostVethIndex || l.Type() != "veth" {
			return fmt.Errorf("%s: index %d type %s, want %d veth", pod.HostVeth, l.Attrs().Index, l.Type(), pod.HostVethIndex)
		}
		for _, a := range []netip.Addr{pod.IPv4, pod.IPv6} {
			routes, err := netlink.RouteGet(a.AsSlice())
			if err != nil {
				return err
			}
			if routes[0].LinkIndex != pod.HostVethIndex {
				return fmt.Errorf("route to %s via ifindex %d, want %d", a, routes[0].LinkIndex, pod.HostVethIndex)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Pod side: eth0 with the MAC, the addresses and default routes via the
	// link-local gateways.
	if err := pod.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if !bytes.Equal(l.Attrs().HardwareAddr, pod.MAC) {
			return fmt.Errorf("eth0 MAC %s, want %s", l.Attrs().HardwareAddr, pod.MAC)
		}
		addrs, err := netlink.AddrList(l, unix.AF_UNSPEC)
		if err != nil {
			return err
		}
		var got []string
		for _, a := range addrs {
			if !a.IP.IsLinkLocalUnicast() {
				got = append(got, a.IPNet.String())
			}
		}
		want := []string{pod.IPv4.String() + "/32", pod.IPv6.String() + "/128"}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			return fmt.Errorf("eth0 addresses %v, want %v", got, want)
		}
		for _, c := range []struct {
			dst netip.Addr
			gw  netip.Addr
		}{{netip.MustParseAddr("203.0.113.1"), GatewayV4}, {netip.MustParseAddr("2001:db8::1"), pod.GatewayV6}} {
			routes, err := netlink.RouteGet(c.dst.AsSlice())
			if err != nil {
				return err
			}
			if gw, _ := netip.AddrFromSlice(routes[0].Gw); gw.Unmap() != c.gw {
				return fmt.Errorf("route to %s via %s, want %s", c.dst, routes[0].Gw, c.gw)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestReachability: pods reach each other through the node (same node and
// across nodes), over IPv4 and IPv6, with ping, TCP and UDP, and the
// receiver sees the sender's own address (no NAT anywhere).
func TestReachability(t *testing.T) {
	b := newBox(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	echos := map[*Pod]*Echo{}
	for _, p := range []*Pod{b.server, b.plain, b.remote, b.client} {
		echos[p] = p.StartEcho(7777)
	}
	for _, c := range []struct {
		name     string
		from, to *Pod
	}{
		{"same node", b.client, b.server},
		{"ambient to plain", b.client, b.plain},
		{"to ztunnel pod", b.client, b.zt},
		{"cross node", b.client, b.remote},
		{"cross node back", b.remote, b.server},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, dst := range []netip.Addr{c.to.IPv4, c.to.IPv6} {
				if err := c.from.Ping(ctx, dst); err != nil {
					t.Error(err)
				}
				echo := echos[c.to]
				if echo == nil {
					continue
				}
				src := c.from.IPv4
				if dst.Is6() {
					src = c.from.IPv6
				}
				for _, proto := range []string{"tcp", "udp"} {
					peer := roundTrip(t, ctx, &c.from.Namespace, proto, netip.AddrPortFrom(dst, 7777))
					if peer.Addr() != src {
						t.Errorf("%s to %s: server saw %s, want %s", proto, dst, peer, src)
					}
				}
			}
		})
	}
}

// roundTrip sends a message to an echo server from ns and returns the
// address the server saw it from.
func roundTrip(t *testing.T, ctx context.Context, ns *Namespace, proto string, dst netip.AddrPort) netip.AddrPort {
	t.Helper()
	network := proto + "4"
	if dst.Addr().Is6() {
		network = proto + "6"
	}
	c, err := ns.DialContext(ctx, network, dst.String())
	if err != nil {
		t.Errorf("dial %s %s: %v", network, dst, err)
		return netip.AddrPort{}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("hello " + dst.String())
	if _, err := c.Write(msg); err != nil {
		t.Errorf("write %s %s: %v", network, dst, err)
		return netip.AddrPort{}
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("echo %s %s: got %q, %v", network, dst, got, err)
	}
	var local netip.AddrPort
	switch a := c.LocalAddr().(type) {
	case *net.TCPAddr:
		local = unmap(a.AddrPort())
	case *net.UDPAddr:
		local = unmap(a.AddrPort())
	}
	return local
}

// TestNodeReachesPods: the node itself reaches its pods (a kubelet probe),
// from its node IP, and the peer node's pods.
func TestNodeReachesPods(t *testing.T) {
	b := newBox(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	echo := b.server.StartEcho(8080)
	remoteEcho := b.remote.StartEcho(8080)

	for _, dst := range []netip.Addr{b.server.IPv4, b.server.IPv6} {
		if err := b.node.Ping(ctx, dst); err != nil {
			t.Error(err)
		}
		src := roundTrip(t, ctx, &b.node.Namespace, "tcp", netip.AddrPortFrom(dst, 8080))
		want := b.node.IPv4
		if dst.Is6() {
			want = b.node.IPv6
		}
		if src.Addr() != want {
			t.Errorf("probe of %s came from %s, want the node IP %s", dst, src, want)
		}
	}
	if got := echo.Peers(); len(got) != 2 || got[0].Addr() != b.node.IPv4 || got[1].Addr() != b.node.IPv6 {
		t.Errorf("server saw %v, want the node IPs", got)
	}
	// A pod reaches the other node itself, and the other node its pods.
	if err := b.client.Ping(ctx, b.peer.IPv4); err != nil {
		t.Error(err)
	}
	roundTrip(t, ctx, &b.node.Namespace, "tcp", netip.AddrPortFrom(b.remote.IPv6, 8080))
	if got := remoteEcho.Peers(); len(got) != 1 || got[0].Addr() != b.node.IPv6 {
		t.Errorf("remote pod saw %v, want %s", got, b.node.IPv6)
	}
}

// TestStartInNamespace: a process started with Start lives in the pod's
// namespace, and Path names that namespace for other processes.
func TestStartInNamespace(t *testing.T) {
	node := NewNode(t, NodeOptions{})
	pod := node.AddPod("p", NotAmbient)
	var st unix.Stat_t
	if err := unix.Fstat(int(pod.Netns), &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)

	var out bytes.Buffer
	cmd := exec.Command("readlink", "/proc/self/ns/net")
	cmd.Stdout = &out
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != want {
		t.Errorf("child in %s, want %s", got, want)
	}
	if target, err := os.Readlink(pod.Path()); err != nil || target != want {
		t.Errorf("Path() %s -> %s, %v; want %s", pod.Path(), target, err, want)
	}
}

// TestCleanupLeavesNothing builds two nodes with traffic between them, lets
// the test end, and proves that every namespace is destroyed and the root
// namespace is as it was.
func TestCleanupLeavesNothing(t *testing.T) {
	before := snapshotRoot(t)
	obs := newObserver(t)
	t.Run("build", func(t *testing.T) {
		b := newBox(t)
		b.server.StartEcho(9000)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		roundTrip(t, ctx, &b.remote.Namespace, "tcp", netip.AddrPortFrom(b.server.IPv4, 9000))
		obs.watch(t, b.node.cluster)
		if n := obs.alive(t); n != 8 { // fabric, 2 nodes, 5 pods
			t.Fatalf("observer sees %d namespaces, want 8", n)
		}
	})
	obs.waitGone(t)
	before.mustEqual(t, snapshotRoot(t))
}

// TestCleanupAfterFailure: a test that fails or panics in the middle of
// building (with sockets open in a pod) leaves nothing either.
func TestCleanupAfterFailure(t *testing.T) {
	for _, mode := range []string{"fatal", "panic"} {
		t.Run(mode, func(t *testing.T) {
			before := snapshotRoot(t)
			obs := newObserver(t)
			f := &fakeTB{TB: t}
			panicked := f.run(func(tb testing.TB) {
				node := NewNode(tb, NodeOptions{})
				node.AddPod("a", Ambient).StartEcho(80)
				node.AddPeerNode("node2").AddPod("b", Ambient)
				obs.watch(t, node.cluster)
				if mode == "panic" {
					panic("boom")
				}
				node.AddPod("a", Ambient) // the name is taken: Fatalf
				t.Error("AddPod with a duplicate name returned")
			})
			if panicked != (mode == "panic") || !f.failed && mode == "fatal" {
				t.Errorf("panicked %v failed %v", panicked, f.failed)
			}
			obs.waitGone(t)
			before.mustEqual(t, snapshotRoot(t))
		})
	}
}

// TestHundredPods builds a node with 100 pods, checks a few of them, and
// reports how long building and tearing down took.
func TestHundredPods(t *testing.T) {
	for _, pods := range []int{1, 100} {
		t.Run(fmt.Sprint(pods), func(t *testing.T) {
			obs := newObserver(t)
			var built, checked time.Time
			start := time.Now()
			t.Run("build", func(t *testing.T) {
				node := NewNode(t, NodeOptions{})
				all := make([]*Pod, pods)
				for i := range all {
					all[i] = node.AddPod(fmt.Sprintf("pod-%03d", i), Ambient)
				}
				built = time.Now()
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				first, last := all[0], all[len(all)-1]
				for _, dst := range []netip.Addr{first.IPv4, first.IPv6} {
					if err := last.Ping(ctx, dst); err != nil {
						t.Error(err)
					}
				}
				if len(node.Pods()) != pods {
					t.Errorf("node has %d pods, want %d", len(node.Pods()), pods)
				}
				obs.watch(t, node.cluster)
				checked = time.Now()
			})
			cleaned := time.Now()
			obs.waitGone(t)
			gone := time.Now()
			t.Logf("node + %d pods: build %v (%v per pod), cleanup %v, namespaces destroyed %v later",
				pods, built.Sub(start).Round(time.Millisecond), (built.Sub(start) / time.Duration(pods)).Round(time.Microsecond),
				cleaned.Sub(checked).Round(time.Millisecond), gone.Sub(cleaned).Round(time.Millisecond))
		})
	}
}

// TestDeletePod: a deleted pod's veth, routes and namespace go at once; the
// other pods stay.
func TestDeletePod(t *testing.T) {
	obs := newObserver(t)
	node := NewNode(t, NodeOptions{})
	gone := node.AddPod("gone", Ambient)
	stays := node.AddPod("stays", Ambient)
	var c cluster
	c.namespaces = []netns.NsHandle{gone.Netns}
	obs.watch(t, &c)

	gone.Delete()
	if got := node.Pods(); len(got) != 1 || got[0] != stays || node.Pod("gone") != nil {
		t.Errorf("pods after delete: %v", got)
	}
	obs.waitGone(t)
	if err := node.Do(func() error {
		if _, err := netlink.LinkByName(gone.HostVeth); err == nil {
			return fmt.Errorf("%s still exists", gone.HostVeth)
		}
		if r, err := netlink.RouteGet(gone.IPv4.AsSlice()); err == nil && r[0].LinkIndex == gone.HostVethIndex {
			return fmt.Errorf("route to %s still via %s", gone.IPv4, gone.HostVeth)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := node.Ping(ctx, stays.IPv6); err != nil {
		t.Error(err)
	}
	// A pod added after the delete gets a fresh name and address.
	if again := node.AddPod("gone", Ambient); again.IPv4 == gone.IPv4 || again.IPv4 == stays.IPv4 {
		t.Errorf("new pod reuses address %s", again.IPv4)
	}
}

// TestDeletePodClosesOnce: a deleted pod's namespace handle is closed once.
// Teardown closing its number again would close whatever the process opened
// with that number since: another test's socket or namespace.
func TestDeletePodClosesOnce(t *testing.T) {
	devnull, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(devnull)
	var want unix.Stat_t
	if err := unix.Fstat(devnull, &want); err != nil {
		t.Fatal(err)
	}
	reused := -1
	t.Run("node", func(t *testing.T) {
		node := NewNode(t, NodeOptions{})
		p := node.AddPod("gone", Ambient)
		fd := int(p.Netns)
		p.Delete()
		// The freed number, taken again by an unrelated file.
		if err := unix.Dup3(devnull, fd, unix.O_CLOEXEC); err != nil {
			t.Fatalf("dup onto fd %d: %v", fd, err)
		}
		reused = fd
	})
	if reused < 0 {
		return
	}
	defer unix.Close(reused)
	var got unix.Stat_t
	if err := unix.Fstat(reused, &got); err != nil || got.Rdev != want.Rdev || got.Ino != want.Ino {
		t.Fatalf("fd %d, reused after the pod was deleted, was closed or replaced by the node's teardown: %v", reused, err)
	}
}
