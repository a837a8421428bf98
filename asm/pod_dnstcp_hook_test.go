package asm_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// newHookPod builds a pod's netns as the agent wires one in in-pod mode,
// with the fixture's programs attached: the client's addresses on "eth0"
// (a veth whose peer nothing answers on), routes to the resolvers through
// it with their neighbours resolved, pod_egress on eth0's egress,
// pod_loopback on lo's ingress, and the policy routing of captured packets
// (fwmark TProxyMark/TProxyMask lookup TProxyTable, a local default route
// in that table, both families) with lo's accept_local on. routeLocalnet
// sets net.ipv4.conf.lo.route_localnet.
func newHookPod(t *testing.T, f *fixture, routeLocalnet bool) *assignNetns {
	t.Helper()
	ns := testutil.NewNetns(t)
	testutil.MustDo(t, ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "up1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, name := range []string{"eth0", "up1"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		for _, a := range []netip.Addr{clientV4, clientV6} {
			if err := netlink.AddrAdd(eth, hostAddr(a)); err != nil {
				return fmt.Errorf("add %s to eth0: %w", a, err)
			}
		}
		for _, a := range []netip.Addr{dnsV4, dnsV6} {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: hostAddr(a).IPNet, Scope: netlink.SCOPE_LINK}); err != nil {
				return fmt.Errorf("route to %s: %w", a, err)
			}
			// Resolved: the SYN leaves at once, as it does through a
			// CNI's gateway, instead of waiting for an answer nobody gives.
			if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: eth.Attrs().Index, IP: a.AsSlice(), State: netlink.NUD_PERMANENT,
				HardwareAddr: gatewayMAC, Family: map[bool]int{false: unix.AF_INET, true: unix.AF_INET6}[a.Is6()]}); err != nil {
				return fmt.Errorf("neighbour %s: %w", a, err)
			}
		}
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			rule := netlink.NewRule()
			rule.Family, rule.Mark, rule.Table = fam, mrasm.TProxyMark, mrasm.TProxyTable
			mask := uint32(mrasm.TProxyMask)
			rule.Mask = &mask
			if err := netlink.RuleAdd(rule); err != nil {
				return fmt.Errorf("add rule: %w", err)
			}
			dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
			if fam == unix.AF_INET6 {
				dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: dst, Table: mrasm.TProxyTable,
				Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Family: fam}); err != nil {
				return fmt.Errorf("add local route: %w", err)
			}
		}
		sysctls := map[string]string{"net/ipv4/conf/lo/accept_local": "1", "net/ipv4/conf/lo/route_localnet": "0"}
		if routeLocalnet {
			sysctls["net/ipv4/conf/lo/route_localnet"] = "1"
		}
		for k, v := range sysctls {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return err
			}
		}
		for _, a := range []struct {
			ifindex int
			parent  uint32
			prog    string
		}{{eth.Attrs().Index, netlink.HANDLE_MIN_EGRESS, mrasm.PodEgress}, {mrasm.LoopbackIfindex, netlink.HANDLE_MIN_INGRESS, mrasm.PodLoopback}} {
			if err := netlink.QdiscAdd(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: a.ifindex,
				Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}); err != nil {
				return fmt.Errorf("add clsact: %w", err)
			}
			if err := netlink.FilterAdd(&netlink.BpfFilter{
				FilterAttrs: netlink.FilterAttrs{LinkIndex: a.ifindex, Parent: a.parent, Priority: 1, Protocol: unix.ETH_P_ALL},
				Fd:          f.coll.Programs[a.prog].FD(), Name: "meshredirect-test", DirectAction: true,
			}); err != nil {
				return fmt.Errorf("attach %s: %w", a.prog, err)
			}
		}
		return nil
	})
	return &assignNetns{ns: ns}
}

// TestPodDNSOverTCPOnHook runs DNS over TCP through the real hooks, as in a
// pod: a client connects to a resolver (a made-up address routed out of
// eth0), pod_egress captures the SYN to lo, and pod_loopback gives it to
// a listener bound to 127.0.0.1:15053 or [::1]:15053 without
// IP_TRANSPARENT, as ztunnel's DNS proxy is. The connection must establish
// and carry a query and its answer both ways, the proxy seeing the
// loopback address as its own end (what iptables' REDIRECT gives it) and
// the client the resolver's.
//
// Without the NAT, the listener's request socket has the resolver's
// address as its own, and IPv4 refuses to route its SYN-ACK from that
// foreign source (ip_route_output_key_hash_rcu: a source that is not
// local, no FLOWI_FLAG_ANYSRC for a socket that is not transparent): the
// connection never establishes. With it, IPv4 needs
// net.ipv4.conf.lo.route_localnet=1: the redirect to lo's ingress drops
// the packet's dst, so ip_route_input_slow routes it, and it drops a
// destination in 127/8 as martian unless route_localnet is on for the
// interface it came in on. The subtest routeLocalnet=false shows that it
// fails without (IPv6 has no such rule for ::1 on lo).
func TestPodDNSOverTCPOnHook(t *testing.T) {
	f := newPodFixture(t, -1)
	f.setZtunnel(t, maps.ZtunnelReady|maps.ZtunnelCaptureDNS)
	f.enrol(t, clientIfindex, clientMAC, 0, clientV4, clientV6)
	for _, routeLocalnet := range []bool{true, false} {
		pod := newHookPod(t, f, routeLocalnet)
		for _, v6 := range []bool{false, true} {
			network := map[bool]string{false: "tcp4", true: "tcp6"}[v6]
			t.Run(fmt.Sprintf("%s/route_localnet=%v", network, routeLocalnet), func(t *testing.T) {
				proxyAddr := netip.AddrPortFrom(pick(v6, loopbackV4, loopbackV6), mrasm.PortDNS)
				resolver := netip.AddrPortFrom(pick(v6, dnsV4, dnsV6), 53)
				var ln net.Listener
				testutil.MustDo(t, pod.ns, func() error {
					var err error
					ln, err = net.Listen(network, proxyAddr.String())
					return err
				})
				t.Cleanup(func() { ln.Close() })
				type accepted struct {
					local, remote netip.AddrPort
					query         []byte
					err           error
				}
				got := make(chan accepted, 1)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						got <- accepted{err: err}
						return
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(3 * time.Second))
					q := make([]byte, 5)
					_, err = io.ReadFull(c, q)
					if err == nil {
						_, err = c.Write([]byte("an answer"))
					}
					got <- accepted{c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort(), q, err}
				}()

				martians := martianDestinations(t)
				var client net.Conn
				var err error
				testutil.MustDo(t, pod.ns, func() error {
					d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(pick(v6, clientV4, clientV6), 0))}
					d.SetMultipathTCP(false)
					client, err = d.DialContext(context.Background(), network, resolver.String())
					return nil
				})
				wantOK := v6 || routeLocalnet
				if !wantOK {
					if err == nil {
						client.Close()
						t.Fatalf("the connection to %s established without route_localnet", resolver)
					}
					// The kernel's count is the node's, all netns together:
					// it must have risen at least by the SYN and its
					// retransmissions.
					n := martianDestinations(t) - martians
					if n == 0 {
						t.Errorf("the SYN was lost, but no martian destination was counted")
					}
					t.Logf("without route_localnet: %v, %d martian destinations counted (in_martian_dst)", err, n)
					return
				}
				if err != nil {
					t.Fatalf("connect to %s: %v", resolver, err)
				}
				defer client.Close()
				if from := client.RemoteAddr().(*net.TCPAddr).AddrPort(); from != resolver {
					t.Errorf("the client is connected to %s, want %s", from, resolver)
				}
				client.SetDeadline(time.Now().Add(3 * time.Second))
				if _, err := client.Write([]byte("query")); err != nil {
					t.Fatal(err)
				}
				answer, err := io.ReadAll(client)
				if err != nil {
					t.Fatalf("read the answer: %v", err)
				}
				a := <-got
				if a.err != nil {
					t.Fatalf("the proxy: %v", a.err)
				}
				local := client.LocalAddr().(*net.TCPAddr).AddrPort()
				if a.local != proxyAddr || a.remote != local || !bytes.Equal(a.query, []byte("query")) || !bytes.Equal(answer, []byte("an answer")) {
					t.Errorf("the proxy saw %q on %s from %s, the client got %q; want %q on %s from %s, and %q",
						a.query, a.local, a.remote, answer, "query", proxyAddr, local, "an answer")
				}
				if orig, err := f.maps.DNSTCP.Get(local); err != nil || orig != resolver {
					t.Errorf("the client's record: %s (%v), want %s", orig, err, resolver)
				}
			})
		}
	}
}

// martianDestinations is the kernel's count of packets ip_route_input_slow
// dropped as martian destinations (in_martian_dst of
// /proc/net/stat/rt_cache, summed over the CPUs).
func martianDestinations(tb testing.TB) uint64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/net/stat/rt_cache")
	if err != nil {
		tb.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	col := -1
	for i, name := range strings.Fields(lines[0]) {
		if name == "in_martian_dst" {
			col = i
		}
	}
	if col < 0 {
		tb.Fatalf("no in_martian_dst in /proc/net/stat/rt_cache")
	}
	var n uint64
	for _, l := range lines[1:] {
		v, err := strconv.ParseUint(strings.Fields(l)[col], 16, 64)
		if err != nil {
			tb.Fatal(err)
		}
		n += v
	}
	return n
}
