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

func newBox(tb testing.TB, w Wiring) *box {
	tb.Helper()
	b := &box{node: NewNode(tb, NodeOptions{Wiring: w})}
	b.client = b.node.AddPod("client", Ambient)
	b.server = b.node.AddPod("server", Ambient)
	b.plain = b.node.AddPod("plain", NotAmbient)
	b.zt = b.node.AddZtunnel()
	b.peer = b.node.AddPeerNode("node2")
	b.remote = b.peer.AddPod("remote", NotAmbient)
	return b
}

// forEachWiring runs test as a subtest per wiring, named after it. A
// wiring whose plugins are missing skips (fails under CI) before test runs.
func forEachWiring(t *testing.T, test func(t *testing.T, w Wiring)) {
	t.Helper()
	for _, w := range Wirings {
		t.Run(w.String(), func(t *testing.T) {
			if w != WiringVeth {
				requirePlugins(t, w)
			}
			test(t, w)
		})
	}
}

func TestWiringString(t *testing.T) {
	for w, want := range map[Wiring]string{WiringVeth: "veth", WiringPTP: "ptp", WiringBridge: "bridge", 7: "Wiring(7)"} {
		if got := w.String(); got != want {
			t.Errorf("Wiring(%d).String() = %q, want %q", int(w), got, want)
		}
	}
	var zero NodeOptions
	if zero.Wiring != WiringVeth {
		t.Errorf("the zero NodeOptions wire with %s, want veth", zero.Wiring)
	}
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
	// The plugin wirings' gateways: the last host address of the /20,
	// which no pod of such a node gets.
	if g4, g6 := gatewayIPs(1); g4.String() != "198.18.31.254" || g6.String() != "fd10:6d72:0:1::ffe" {
		t.Errorf("gatewayIPs(1) = %s, %s", g4, g6)
	}
	if last4, _ := podIPs(1, MaxPodsPerNode-1); last4.String() != "198.18.31.253" {
		t.Errorf("the last pod of a plugin-wired node 1 = %s", last4)
	}
	if ll := linkLocalEUI64(net.HardwareAddr{0xee, 0xee, 0xc6, 0x12, 0x10, 0x01}); ll.String() != "fe80::ecee:c6ff:fe12:1001" {
		t.Errorf("linkLocalEUI64 = %s", ll)
	}
}

// TestPodWiring checks that a pod is wired as its node's wiring wires it,
// and that what Pod reports matches the kernel's view.
func TestPodWiring(t *testing.T) {
	forEachWiring(t, func(t *testing.T, w Wiring) {
		node := NewNode(t, NodeOptions{Wiring: w})
		pod := node.AddPod("client", Ambient)
		other := node.AddPod("server", NotAmbient)
		t.Logf("%s: host veth %s (ifindex %d, MAC %s), eth0 MAC %s, gateways %s %s at %s",
			w, pod.HostVeth, pod.HostVethIndex, pod.HostVethMAC, pod.MAC, pod.GatewayV4, pod.GatewayV6, pod.GatewayMAC)

		if node.Wiring != w || !pod.Ambient || pod.Node != node || node.Pod("client") != pod {
			t.Errorf("fields: wiring %s, ambient %v node %p (want %p)", node.Wiring, pod.Ambient, pod.Node, node)
		}
		wantName := 15 // veth + 11 hex digits
		if w != WiringVeth {
			wantName = 12 // the plugins' veth + 8 hex digits
		}
		if !strings.HasPrefix(pod.HostVeth, "veth") || len(pod.HostVeth) != wantName || pod.HostVeth == other.HostVeth {
			t.Errorf("host veth name %q, want veth + %d hex digits, not %s's", pod.HostVeth, wantName-4, other.Name)
		}
		// Where the node's routes to the pod lead, and which prefixes the
		// pod's addresses have.
		via, bits4, bits6 := pod.HostVethIndex, 32, 128
		switch w {
		case WiringVeth:
			if pod.GatewayV4 != GatewayV4 || pod.GatewayV6 != linkLocalEUI64(pod.HostVethMAC) || node.GatewayIPv4.IsValid() {
				t.Errorf("gateways %s %s (node %s), want %s and the host veth's link-local", pod.GatewayV4, pod.GatewayV6, node.GatewayIPv4, GatewayV4)
			}
		default:
			bits4, bits6 = node.PodCIDRv4.Bits(), node.PodCIDRv6.Bits()
			if pod.GatewayV4 != node.GatewayIPv4 || pod.GatewayV6 != node.GatewayIPv6 ||
				!node.PodCIDRv4.Contains(pod.GatewayV4) || !node.PodCIDRv6.Contains(pod.GatewayV6) {
				t.Errorf("gateways %s %s, want the node's %s %s in its pod CIDRs", pod.GatewayV4, pod.GatewayV6, node.GatewayIPv4, node.GatewayIPv6)
			}
		}

		// Node side: the host veth with its ifindex and MAC, the routes to
		// the pod, the gateway addresses where the wiring puts them.
		if err := node.Do(func() error {
			l, err := netlink.LinkByName(pod.HostVeth)
			if err != nil {
				return err
			}
			if l.Attrs().Index != pod.HostVethIndex || l.Type() != "veth" || !bytes.Equal(l.Attrs().HardwareAddr, pod.HostVethMAC) {
				return fmt.Errorf("%s: index %d type %s MAC %s, want %d veth %s",
					pod.HostVeth, l.Attrs().Index, l.Type(), l.Attrs().HardwareAddr, pod.HostVethIndex, pod.HostVethMAC)
			}
			gwLink := l // where the node holds the pod's gateways
			switch w {
			case WiringVeth, WiringPTP:
				if !bytes.Equal(pod.GatewayMAC, pod.HostVethMAC) {
					return fmt.Errorf("gateway MAC %s, want the host veth's %s", pod.GatewayMAC, pod.HostVethMAC)
				}
			case WiringBridge:
				br, err := netlink.LinkByName(BridgeName)
				if err != nil {
					return err
				}
				if node.Bridge != BridgeName || br.Type() != "bridge" || l.Attrs().MasterIndex != br.Attrs().Index {
					return fmt.Errorf("%s: master %d, want %s (%s, ifindex %d)", pod.HostVeth, l.Attrs().MasterIndex, node.Bridge, br.Type(), br.Attrs().Index)
				}
				if !bytes.Equal(pod.GatewayMAC, br.Attrs().HardwareAddr) {
					return fmt.Errorf("gateway MAC %s, want the bridge's %s", pod.GatewayMAC, br.Attrs().HardwareAddr)
				}
				via, gwLink = br.Attrs().Index, br
			}
			var global []string
			addrs, err := netlink.AddrList(gwLink, unix.AF_UNSPEC)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if !a.IP.IsLinkLocalUnicast() {
					global = append(global, a.IPNet.String())
				}
			}
			var want []string
			switch w {
			case WiringPTP:
				want = []string{node.GatewayIPv4.String() + "/32", node.GatewayIPv6.String() + "/128"}
			case WiringBridge:
				want = []string{
					netip.PrefixFrom(node.GatewayIPv4, bits4).String(),
					netip.PrefixFrom(node.GatewayIPv6, bits6).String(),
				}
			}
			if !slices.Equal(sorted(global), sorted(want)) {
				return fmt.Errorf("%s has addresses %v, want %v", gwLink.Attrs().Name, global, want)
			}
			for _, a := range []netip.Addr{pod.IPv4, pod.IPv6} {
				routes, err := netlink.RouteGet(a.AsSlice())
				if err != nil {
					return err
				}
				if routes[0].LinkIndex != via {
					return fmt.Errorf("route to %s via ifindex %d, want %d", a, routes[0].LinkIndex, via)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}

		// The node's settings are testenv's, whatever the plugins wrote
		// (both write ip_forward and IPv6 forwarding at every ADD).
		gwDev := pod.HostVeth
		if w == WiringBridge {
			gwDev = BridgeName
		}
		mustDo(t, node, func() error {
			for k, want := range map[string]string{
				"net/ipv4/ip_forward":                           "1",
				"net/ipv6/conf/all/forwarding":                  "1",
				"net/ipv4/conf/all/rp_filter":                   "2",
				"net/ipv4/conf/default/rp_filter":               "2",
				"net/ipv4/conf/" + gwDev + "/rp_filter":         "2",
				"net/ipv6/conf/" + pod.HostVeth + "/accept_dad": "0",
			} {
				b, err := os.ReadFile("/proc/sys/" + k)
				if err != nil {
					return err
				}
				if got := strings.TrimSpace(string(b)); got != want {
					return fmt.Errorf("%s = %s, want %s", k, got, want)
				}
			}
			return nil
		})

		// Pod side: eth0, peer of the host veth, with the MAC, the
		// addresses and default routes via the gateways, which resolve to
		// GatewayMAC.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		for _, dst := range []netip.Addr{node.IPv4, node.IPv6} {
			// Via the gateways: fills the pod's neighbour table.
			if err := pod.Ping(ctx, dst); err != nil {
				t.Error(err)
			}
		}
		if err := pod.Do(func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if !bytes.Equal(l.Attrs().HardwareAddr, pod.MAC) || l.Attrs().ParentIndex != pod.HostVethIndex {
				return fmt.Errorf("eth0 MAC %s peer %d, want %s %d", l.Attrs().HardwareAddr, l.Attrs().ParentIndex, pod.MAC, pod.HostVethIndex)
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
			want := []string{netip.PrefixFrom(pod.IPv4, bits4).String(), netip.PrefixFrom(pod.IPv6, bits6).String()}
			if !slices.Equal(sorted(got), sorted(want)) {
				return fmt.Errorf("eth0 addresses %v, want %v", got, want)
			}
			for _, c := range []struct {
				dst netip.Addr
				gw  netip.Addr
			}{{netip.MustParseAddr("203.0.113.1"), pod.GatewayV4}, {netip.MustParseAddr("2001:db8::1"), pod.GatewayV6}} {
				routes, err := netlink.RouteGet(c.dst.AsSlice())
				if err != nil {
					return err
				}
				if gw, _ := netip.AddrFromSlice(routes[0].Gw); gw.Unmap() != c.gw {
					return fmt.Errorf("route to %s via %s, want %s", c.dst, routes[0].Gw, c.gw)
				}
				family := unix.AF_INET
				if c.gw.Is6() {
					family = unix.AF_INET6
				}
				neighs, err := netlink.NeighList(l.Attrs().Index, family)
				if err != nil {
					return err
				}
				found := false
				for _, n := range neighs {
					if ip, _ := netip.AddrFromSlice(n.IP); ip.Unmap() == c.gw {
						found = bytes.Equal(n.HardwareAddr, pod.GatewayMAC)
						if !found {
							return fmt.Errorf("gateway %s resolves to %s, want %s", c.gw, n.HardwareAddr, pod.GatewayMAC)
						}
					}
				}
				if !found {
					return fmt.Errorf("no neighbour entry for gateway %s", c.gw)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

func mustDo(t *testing.T, n *Node, fn func() error) {
	t.Helper()
	if err := n.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// endpoint is something a test reaches: a pod, or a node by its node IPs.
type endpoint struct {
	ns     *Namespace
	v4, v6 netip.Addr
}

func podEnd(p *Pod) endpoint   { return endpoint{&p.Namespace, p.IPv4, p.IPv6} }
func nodeEnd(n *Node) endpoint { return endpoint{&n.Namespace, n.IPv4, n.IPv6} }

func (e endpoint) ip(v6 bool) netip.Addr {
	if v6 {
		return e.v6
	}
	return e.v4
}

// TestReachability: on every wiring, pods reach each other through the
// node (same node and across nodes; on a bridge, the same node's pods
// through the bridge alone) and the nodes themselves, over IPv4 and IPv6,
// with ping, TCP and UDP, and the receiver sees the sender's own address
// (no NAT anywhere).
func TestReachability(t *testing.T) {
	forEachWiring(t, func(t *testing.T, w Wiring) {
		b := newBox(t, w)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()

		echos := map[*Namespace]*Echo{}
		for _, ns := range []*Namespace{&b.server.Namespace, &b.plain.Namespace, &b.remote.Namespace, &b.client.Namespace,
			&b.zt.Namespace, &b.node.Namespace, &b.peer.Namespace} {
			echos[ns] = ns.StartEcho(7777)
		}
		for _, c := range []struct {
			name     string
			from, to endpoint
		}{
			{"same node", podEnd(b.client), podEnd(b.server)},
			{"ambient to plain", podEnd(b.client), podEnd(b.plain)},
			{"to ztunnel pod", podEnd(b.client), podEnd(b.zt)},
			{"ztunnel pod to pod", podEnd(b.zt), podEnd(b.server)},
			{"cross node", podEnd(b.client), podEnd(b.remote)},
			{"cross node back", podEnd(b.remote), podEnd(b.server)},
			{"to own node IP", podEnd(b.client), nodeEnd(b.node)},
			{"to the other node IP", podEnd(b.client), nodeEnd(b.peer)},
			{"other node's pod to node IP", podEnd(b.remote), nodeEnd(b.node)},
			{"other node to pod", nodeEnd(b.peer), podEnd(b.server)},
		} {
			t.Run(c.name, func(t *testing.T) {
				for _, v6 := range []bool{false, true} {
					dst, src := c.to.ip(v6), c.from.ip(v6)
					if err := c.from.ns.Ping(ctx, dst); err != nil {
						t.Error(err)
					}
					for _, proto := range []string{"tcp", "udp"} {
						local := roundTrip(t, ctx, c.from.ns, proto, netip.AddrPortFrom(dst, 7777))
						if local.Addr() != src {
							t.Errorf("%s to %s: sent from %s, want %s", proto, dst, local, src)
						}
						if !echos[c.to.ns].saw(local) {
							t.Errorf("%s to %s: the server did not see %s (saw %v)", proto, dst, local, echos[c.to.ns].Peers())
						}
					}
				}
			})
		}
	})
}

// saw reports whether the server received something from peer.
func (e *Echo) saw(peer netip.AddrPort) bool {
	return slices.Contains(e.Peers(), peer)
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

// TestNodeReachesPods: the node itself reaches its pods (a kubelet probe)
// and the peer node's pods, over TCP and UDP. Which source address the pod
// sees is the kernel's choice for the outgoing interface: the node IPs on
// veth wiring (the host veths have no address), the gateway addresses on
// ptp (on every host veth) and bridge (on the bridge). To the other node's
// pods it is the node IPs (out of eth0) on every wiring.
func TestNodeReachesPods(t *testing.T) {
	forEachWiring(t, func(t *testing.T, w Wiring) {
		b := newBox(t, w)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		echo := b.server.StartEcho(8080)
		remoteEcho := b.remote.StartEcho(8080)

		wantSrc := nodeEnd(b.node)
		if w != WiringVeth {
			wantSrc = endpoint{v4: b.node.GatewayIPv4, v6: b.node.GatewayIPv6}
		}
		for _, c := range []struct {
			name     string
			to       *Pod
			echo     *Echo
			from     *Node
			want     endpoint
			wantNote string
		}{
			{"own pod", b.server, echo, b.node, wantSrc, "the node's source for its pods"},
			{"other node's pod", b.remote, remoteEcho, b.node, nodeEnd(b.node), "the node IP"},
			{"from the other node", b.server, echo, b.peer, nodeEnd(b.peer), "the other node's IP"},
		} {
			t.Run(c.name, func(t *testing.T) {
				for _, v6 := range []bool{false, true} {
					dst := podEnd(c.to).ip(v6)
					if err := c.from.Ping(ctx, dst); err != nil {
						t.Error(err)
					}
					for _, proto := range []string{"tcp", "udp"} {
						src := roundTrip(t, ctx, &c.from.Namespace, proto, netip.AddrPortFrom(dst, 8080))
						if !c.echo.saw(src) {
							t.Errorf("%s to %s from %s: the pod did not see %s (saw %v)", proto, dst, c.from.Name, src, c.echo.Peers())
						}
						if want := c.want.ip(v6); src.Addr() != want {
							t.Errorf("%s to %s from %s came from %s, want %s (%s)", proto, dst, c.from.Name, src, want, c.wantNote)
						} else {
							t.Logf("%s to %s from %s: source %s", proto, dst, c.from.Name, src.Addr())
						}
					}
				}
			})
		}
	})
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
// On the plugin wirings it also proves that the bridge, the plugins' veths
// and their state (host-local's files, libcni's cache) go, that of a
// deleted pod and that of pods left to the teardown.
func TestCleanupLeavesNothing(t *testing.T) {
	forEachWiring(t, func(t *testing.T, w Wiring) {
		before := snapshotRoot(t)
		obs := newObserver(t)
		t.Run("build", func(t *testing.T) {
			b := newBox(t, w)
			gone := b.node.AddPod("gone", Ambient)
			b.server.StartEcho(9000)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			roundTrip(t, ctx, &b.remote.Namespace, "tcp", netip.AddrPortFrom(b.server.IPv4, 9000))
			obs.watch(t, b.node.cluster)
			if n := obs.alive(t); n != 9 { // fabric, 2 nodes, 6 pods
				t.Fatalf("observer sees %d namespaces, want 9", n)
			}
			gone.Delete()
			if w != WiringVeth {
				// The state is there to be removed.
				if held := b.node.HeldAddresses(); len(held) != 8 { // 4 pods
					t.Errorf("host-local holds %v, want 4 pods' addresses", held)
				}
				if after := snapshotRoot(t); len(after.cniState) != len(before.cniState)+2 {
					t.Errorf("CNI state %v, want two nodes' more than %v", after.cniState, before.cniState)
				}
			}
		})
		obs.waitGone(t)
		before.mustEqual(t, snapshotRoot(t))
	})
}

// TestCleanupAfterFailure: a test that fails or panics in the middle of
// building (with sockets open in a pod) leaves nothing either.
func TestCleanupAfterFailure(t *testing.T) {
	forEachWiring(t, func(t *testing.T, w Wiring) {
		for _, mode := range []string{"fatal", "panic"} {
			t.Run(mode, func(t *testing.T) {
				before := snapshotRoot(t)
				obs := newObserver(t)
				f := &fakeTB{TB: t}
				panicked := f.run(func(tb testing.TB) {
					node := NewNode(tb, NodeOptions{Wiring: w})
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
	})
}

// TestHundredPods builds a node with 100 pods (AddPods: concurrent ADDs on
// the plugin wirings), checks them, and reports how long building and
// tearing down took.
func TestHundredPods(t *testing.T) {
	forEachWiring(t, func(t *testing.T, w Wiring) {
		for _, pods := range []int{1, 100} {
			t.Run(fmt.Sprint(pods), func(t *testing.T) {
				obs := newObserver(t)
				var built, checked time.Time
				start := time.Now()
				t.Run("build", func(t *testing.T) {
					node := NewNode(t, NodeOptions{Wiring: w})
					names := make([]string, pods)
					for i := range names {
						names[i] = fmt.Sprintf("pod-%03d", i)
					}
					all := node.AddPods(Ambient, names...)
					built = time.Now()
					veths := map[int]bool{}
					for i, p := range all {
						v4, v6 := podIPs(node.Index, i+1)
						if p.Name != names[i] || p.IPv4 != v4 || p.IPv6 != v6 || veths[p.HostVethIndex] || node.Pod(p.Name) != p {
							t.Errorf("pod %d: %s %s %s host veth %d, want %s %s %s and a host veth of its own",
								i, p.Name, p.IPv4, p.IPv6, p.HostVethIndex, names[i], v4, v6)
						}
						veths[p.HostVethIndex] = true
						// One bridge: one gateway MAC, that of the bridge
						// after the concurrent ADDs.
						wantMAC := p.HostVethMAC
						if w == WiringBridge {
							wantMAC = all[len(all)-1].GatewayMAC
						}
						if !bytes.Equal(p.GatewayMAC, wantMAC) {
							t.Errorf("pod %d: gateway MAC %s, want %s", i, p.GatewayMAC, wantMAC)
						}
					}
					if w == WiringBridge {
						mustDo(t, node, func() error {
							br, err := netlink.LinkByName(BridgeName)
							if err == nil && !bytes.Equal(br.Attrs().HardwareAddr, all[0].GatewayMAC) {
								err = fmt.Errorf("the bridge's MAC is %s, the pods' gateway MAC %s", br.Attrs().HardwareAddr, all[0].GatewayMAC)
							}
							return err
						})
					}
					if held := node.HeldAddresses(); w != WiringVeth && len(held) != 2*pods {
						t.Errorf("host-local holds %d addresses, want %d", len(held), 2*pods)
					}
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
				t.Logf("%s node + %d pods: build %v (%v per pod), cleanup %v, namespaces destroyed %v later", w,
					pods, built.Sub(start).Round(time.Millisecond), (built.Sub(start) / time.Duration(pods)).Round(time.Microsecond),
					cleaned.Sub(checked).Round(time.Millisecond), gone.Sub(cleaned).Round(time.Millisecond))
			})
		}
	})
}

// TestDeletePod: a deleted pod's veth, routes and namespace go at once (on
// the plugin wirings, by the plugin's DEL, which also releases its
// addresses); the other pods stay; a pod added again under the same name
// gets new addresses and is reached as the others.
func TestDeletePod(t *testing.T) {
	forEachWiring(t, func(t *testing.T, w Wiring) {
		obs := newObserver(t)
		node := NewNode(t, NodeOptions{Wiring: w})
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
			for _, a := range []netip.Addr{gone.IPv4, gone.IPv6} {
				if r, err := netlink.RouteGet(a.AsSlice()); err == nil && r[0].LinkIndex == gone.HostVethIndex {
					return fmt.Errorf("route to %s still via %s", a, gone.HostVeth)
				}
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		if held := node.HeldAddresses(); w != WiringVeth && !slices.Equal(held, []netip.Addr{stays.IPv4, stays.IPv6}) {
			t.Errorf("host-local holds %v after the delete, want %s and %s", held, stays.IPv4, stays.IPv6)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if err := node.Ping(ctx, stays.IPv6); err != nil {
			t.Error(err)
		}

		// A pod added after the delete gets a fresh name and address.
		again := node.AddPod("gone", Ambient)
		if again.IPv4 == gone.IPv4 || again.IPv4 == stays.IPv4 || again.IPv6 == gone.IPv6 {
			t.Errorf("new pod reuses address %s or %s", again.IPv4, again.IPv6)
		}
		if held := node.HeldAddresses(); w != WiringVeth && len(held) != 4 {
			t.Errorf("host-local holds %v, want the two pods' addresses", held)
		}
		echo := again.StartEcho(80)
		for _, v6 := range []bool{false, true} {
			dst := podEnd(again).ip(v6)
			for _, from := range []*Namespace{&node.Namespace, &stays.Namespace} {
				if err := from.Ping(ctx, dst); err != nil {
					t.Error(err)
				}
				for _, proto := range []string{"tcp", "udp"} {
					if src := roundTrip(t, ctx, from, proto, netip.AddrPortFrom(dst, 80)); !echo.saw(src) {
						t.Errorf("%s to the new pod %s: it did not see %s", proto, dst, src)
					}
				}
			}
		}
	})
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
	forEachWiring(t, func(t *testing.T, w Wiring) {
		reused := -1
		t.Run("node", func(t *testing.T) {
			node := NewNode(t, NodeOptions{Wiring: w})
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
	})
}
