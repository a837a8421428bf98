package asm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// conn is a TCP connection made inside a netns of the test: the dialer's
// and the acceptor's addresses.
type conn struct {
	dialer, acceptor netip.AddrPort
}

// dial opens a TCP connection in a (whose loopback holds both addresses)
// from "from" (port 0: any) to "to", kept open until the test ends.
func (a *assignNetns) dial(t testing.TB, from, to netip.AddrPort) conn {
	t.Helper()
	var c conn
	testutil.MustDo(t, a.ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		l, err := lc.Listen(context.Background(), "tcp", to.String())
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(from)}
		d.SetMultipathTCP(false)
		var dc net.Conn
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			dc, err = d.Dial("tcp", l.Addr().String())
			if !errors.Is(err, unix.ENETUNREACH) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			return err
		}
		t.Cleanup(func() { dc.Close() })
		s, err := l.Accept()
		if err != nil {
			return err
		}
		t.Cleanup(func() { s.Close() })
		c = conn{dialer: dc.LocalAddr().(*net.TCPAddr).AddrPort(), acceptor: l.Addr().(*net.TCPAddr).AddrPort()}
		return nil
	})
	c.dialer = netip.AddrPortFrom(c.dialer.Addr().Unmap(), c.dialer.Port())
	c.acceptor = netip.AddrPortFrom(c.acceptor.Addr().Unmap(), c.acceptor.Port())
	return c
}

// TestNodeConnections checks the rows of §5 that ask the kernel which
// sockets exist: a pod's TCP to the node passes only as the reply of a
// connection the node itself opened (a probe), never when ztunnel holds
// the tuple (its own connection to the node, made with the pod's address),
// nor with IP options or extension headers; and the node's TCP to a pod
// goes back to ztunnel when it answers ztunnel's connection.
//
// The programs run in a netns standing in for the node (BPF_PROG_TEST_RUN
// runs them on its loopback, so the node's socket lookups see its sockets);
// a second netns stands in for ztunnel's, known to the node's by a netns
// id, as the agent writes it into the ztunnel map.
func TestNodeConnections(t *testing.T) {
	f := newFixture(t, mrasm.DefaultOptions())
	node := newAssignNetns(t)
	zt := newAssignNetns(t)
	for _, a := range []*assignNetns{node, zt} {
		testutil.MustDo(t, a.ns, func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			for _, ip := range []netip.Addr{nodeV4, nodeV6, gatewayV4, gatewayV6, serverV4, serverV6} {
				if err := netlink.AddrAdd(lo, hostAddr(ip)); err != nil {
					return fmt.Errorf("add %s to lo: %w", ip, err)
				}
			}
			return nil
		})
	}
	var nsid int
	testutil.MustDo(t, node.ns, func() error {
		id, err := netlink.GetNetNsIdByFd(int(zt.ns))
		if err == nil && id < 0 {
			err = netlink.SetNetNsIdByFd(int(zt.ns), 7)
			id = 7
		}
		nsid = id
		return err
	})
	mac, _ := maps.MAC(ztMAC)
	setZt := func(t *testing.T, flags uint16) {
		if err := f.maps.Ztunnel.Set(maps.Ztunnel{Ifindex: ztIfindex, MAC: mac, Flags: flags, IPv4: ztV4.As16(), IPv6: ztV6.As16(), NetnsID: uint32(nsid)}); err != nil {
			t.Fatal(err)
		}
	}

	type row struct {
		name string
		prog string
		// setup makes the connections and returns the packet's tuple.
		setup   func(t *testing.T, v6 bool) tuple
		ack     bool
		synack  bool
		options bool
		ingress uint32
		want    outcome
	}
	probe := func(nodeAddr func(bool) netip.Addr) func(t *testing.T, v6 bool) tuple {
		return func(t *testing.T, v6 bool) tuple {
			// The node (kubelet) connected to the pod's port 8080.
			c := node.dial(t, netip.AddrPortFrom(nodeAddr(v6), 0), netip.AddrPortFrom(pick(v6, clientV4, clientV6), 8080))
			return tuple{c.acceptor.Addr(), c.dialer.Addr(), c.acceptor.Port(), c.dialer.Port()}
		}
	}
	nodeIP := func(v6 bool) netip.Addr { return pick(v6, nodeV4, nodeV6) }
	gateway := func(v6 bool) netip.Addr { return pick(v6, gatewayV4, gatewayV6) }
	rows := []row{
		{name: "the reply to a kubelet probe from the node IP passes", prog: mrasm.AppOutbound, setup: probe(nodeIP), ack: true, want: oPass},
		{name: "the SYN-ACK to a kubelet probe passes", prog: mrasm.AppOutbound, setup: probe(nodeIP), synack: true, want: oPass},
		{name: "the reply to a kubelet probe from a CNI gateway address passes", prog: mrasm.AppOutbound, setup: probe(gateway), ack: true, want: oPass},
		{name: "the reply to a kubelet probe with IP options or extension headers goes to ztunnel", prog: mrasm.AppOutbound,
			setup: probe(nodeIP), ack: true, options: true, want: oOut},
		{name: "an ACK to a listener of the node goes to ztunnel", prog: mrasm.AppOutbound, ack: true, want: oOut,
			setup: func(t *testing.T, v6 bool) tuple {
				// kubelet listens on 10250; nobody connected.
				c := node.dial(t, netip.AddrPortFrom(nodeIP(v6), 0), netip.AddrPortFrom(nodeIP(v6), 10250))
				return tuple{pick(v6, clientV4, clientV6), nodeIP(v6), 41000, c.acceptor.Port()}
			}},
		{name: "an ACK of the pod's connection to the node through ztunnel goes to ztunnel, even when the node holds the tuple", prog: mrasm.AppOutbound,
			ack: true, want: oOut,
			setup: func(t *testing.T, v6 bool) tuple {
				// ztunnel accepted the pod's connection to the node's port 80
				// and opened its own, with the pod's address, from the same
				// port (a rare coincidence of the ephemeral port, forced).
				pod := pick(v6, clientV4, clientV6)
				c := zt.dial(t, netip.AddrPortFrom(pod, 0), netip.AddrPortFrom(nodeIP(v6), 80))
				node.dial(t, c.dialer, netip.AddrPortFrom(nodeIP(v6), 80))
				return tuple{c.dialer.Addr(), nodeIP(v6), c.dialer.Port(), 80}
			}},
		{name: "the node's reply to ztunnel's connection made with the pod's address goes back to ztunnel", prog: mrasm.AppInbound,
			ack: true, ingress: 0, want: oIn,
			setup: func(t *testing.T, v6 bool) tuple {
				pod := pick(v6, serverV4, serverV6)
				c := zt.dial(t, netip.AddrPortFrom(pod, 0), netip.AddrPortFrom(nodeIP(v6), 8125))
				return tuple{nodeIP(v6), pod, 8125, c.dialer.Port()}
			}},
		{name: "a kubelet probe passes when ztunnel holds nothing for its tuple", prog: mrasm.AppInbound, ingress: 0, want: oPass,
			setup: func(t *testing.T, v6 bool) tuple {
				zt.dial(t, netip.AddrPortFrom(nodeIP(v6), 0), netip.AddrPortFrom(nodeIP(v6), 9090))
				return tuple{nodeIP(v6), pick(v6, serverV4, serverV6), 45000, 8080}
			}},
	}
	if !f.ingressOK {
		t.Log("BPF_PROG_TEST_RUN takes no skb->ingress_ifindex before Linux 5.15: the app_inbound rows run as from the node, which they are")
	}
	for _, r := range rows {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/%s", r.name, map[bool]string{false: "IPv4", true: "IPv6"}[v6]), func(t *testing.T) {
				setZt(t, maps.ZtunnelReady|maps.ZtunnelNetnsID)
				if r.prog == mrasm.AppInbound {
					f.enrol(t, clientIfindex+10, clientMAC, 0, clientV4, clientV6)
					f.enrol(t, selfIfindex, serverMAC, 0, serverV4, serverV6)
					t.Cleanup(func() {
						f.enrol(t, clientIfindex, clientMAC, 0, clientV4, clientV6)
						f.enrol(t, serverIfindex, serverMAC, 0, serverV4, serverV6)
					})
				}
				tp := r.setup(t, v6)
				p := packet{src: tp.src, dst: tp.dst, sport: tp.sport, dport: tp.dport, ack: r.ack, synack: r.synack}
				if r.options {
					if v6 {
						p.ext = []layers.IPProtocol{layers.IPProtocolIPv6Routing}
					} else {
						p.ipv4Options = lsrr(remoteV4)
					}
				}
				in := p.build(t)
				want := expect{ret: r.want.ret, verdict: r.want.verdict}
				if r.want.ret == mrasm.ActRedirect {
					want.mac = ztMAC
				}
				var res result
				testutil.MustDo(t, node.ns, func() error {
					res = f.run(t, r.prog, in, r.ingress)
					return nil
				})
				check(t, in, res, want)
			})
		}
	}

	// Without the netns id the agent could not find, ztunnel's connections
	// cannot be told from the node's: a probe still passes.
	t.Run("without ztunnel's netns id the node's connections pass", func(t *testing.T) {
		setZt(t, maps.ZtunnelReady)
		tp := probe(nodeIP)(t, false)
		in := packet{src: tp.src, dst: tp.dst, sport: tp.sport, dport: tp.dport, ack: true}.build(t)
		var res result
		testutil.MustDo(t, node.ns, func() error {
			res = f.run(t, mrasm.AppOutbound, in, 0)
			return nil
		})
		check(t, in, res, expect{ret: oPass.ret, verdict: oPass.verdict})
	})
}

// hostAddr is ip as a /32 or /128 netlink address, usable at once.
func hostAddr(ip netip.Addr) *netlink.Addr {
	bits := ip.BitLen()
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
	if ip.Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}
