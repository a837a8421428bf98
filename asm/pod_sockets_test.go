package asm_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// TestPodConnections checks the in-pod rows that ask the kernel which
// sockets exist. One netns stands in for the pod's (the programs run on its
// loopback, so their own-netns lookups see its sockets: ztunnel's and the
// application's), another for the node's, known to the pod's by a netns id,
// which is built into the programs (PodConfig.HostNetnsID).
func TestPodConnections(t *testing.T) {
	pod := newAssignNetns(t)
	node := newAssignNetns(t)
	// The node's addresses are local in the pod's stand-in too: there they
	// are the local end of ztunnel's transparent sockets.
	for _, a := range []*assignNetns{node, pod} {
		testutil.MustDo(t, a.ns, func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			for _, ip := range []netip.Addr{nodeV4, nodeV6} {
				if err := netlink.AddrAdd(lo, hostAddr(ip)); err != nil {
					return fmt.Errorf("add %s to lo: %w", ip, err)
				}
			}
			return nil
		})
	}
	var nsid int
	testutil.MustDo(t, pod.ns, func() error {
		id, err := netlink.GetNetNsIdByFd(int(node.ns))
		if err == nil && id < 0 {
			err = netlink.SetNetNsIdByFd(int(node.ns), 7)
			id = 7
		}
		nsid = id
		return err
	})
	f := newPodFixture(t, int32(nsid))
	unknown := newPodFixture(t, -1)
	nodeIP := func(v6 bool) netip.Addr { return pick(v6, nodeV4, nodeV6) }
	client := func(v6 bool) netip.Addr { return pick(v6, clientV4, clientV6) }
	remote := func(v6 bool) netip.Addr { return pick(v6, remoteV4, remoteV6) }

	type row struct {
		name string
		prog string
		// setup makes the connections and returns the packet's tuple.
		setup       func(t *testing.T, v6 bool) tuple
		ack, synack bool
		options     bool
		mark        uint32
		listeners   []listener
		unknownNode bool
		want        outcome
	}
	probe := func(t *testing.T, v6 bool) conn {
		// kubelet, in the node's netns, connected to the pod's 8080.
		return node.dial(t, netip.AddrPortFrom(nodeIP(v6), 0), netip.AddrPortFrom(client(v6), 8080))
	}
	probeReply := func(t *testing.T, v6 bool) tuple {
		c := probe(t, v6)
		return tuple{c.acceptor.Addr(), c.dialer.Addr(), c.acceptor.Port(), c.dialer.Port()}
	}
	probeRequest := func(t *testing.T, v6 bool) tuple {
		c := probe(t, v6)
		return tuple{c.dialer.Addr(), c.acceptor.Addr(), c.dialer.Port(), c.acceptor.Port()}
	}
	rows := []row{
		{name: "pod_egress: the reply to a kubelet probe passes", prog: mrasm.PodEgress, setup: probeReply, ack: true, want: oPass},
		{name: "pod_egress: the SYN-ACK to a kubelet probe passes", prog: mrasm.PodEgress, setup: probeReply, synack: true, want: oPass},
		{name: "pod_egress: the reply to a kubelet probe with IP options or extension headers goes to lo", prog: mrasm.PodEgress, setup: probeReply, ack: true, options: true, want: oLoopback},
		{name: "pod_egress: the reply to a kubelet probe goes to lo when the node's netns id is unknown", prog: mrasm.PodEgress, setup: probeReply, ack: true, unknownNode: true, want: oLoopback},
		{name: "pod_egress: an ACK to a listener of the node goes to lo", prog: mrasm.PodEgress, ack: true, want: oLoopback,
			setup: func(t *testing.T, v6 bool) tuple {
				c := node.dial(t, netip.AddrPortFrom(nodeIP(v6), 0), netip.AddrPortFrom(nodeIP(v6), 10250))
				return tuple{client(v6), nodeIP(v6), 41000, c.acceptor.Port()}
			}},
		{name: "pod_egress: an ACK of the pod's connection to the node through ztunnel goes to lo, even when the node holds the tuple", prog: mrasm.PodEgress, ack: true, want: oLoopback,
			setup: func(t *testing.T, v6 bool) tuple {
				// ztunnel (in the pod's netns) holds the pod's connection to
				// the node's port 80 with the node's address as its local end.
				c := pod.dial(t, netip.AddrPortFrom(client(v6), 0), netip.AddrPortFrom(nodeIP(v6), 80))
				node.dial(t, c.dialer, netip.AddrPortFrom(nodeIP(v6), 80))
				return tuple{c.dialer.Addr(), nodeIP(v6), c.dialer.Port(), 80}
			}},
		{name: "pod_ingress: a kubelet probe passes", prog: mrasm.PodIngress, setup: probeRequest, listeners: inbound, want: oPass},
		{name: "pod_ingress: a kubelet probe's ACK passes", prog: mrasm.PodIngress, setup: probeRequest, ack: true, listeners: inbound, want: oPass},
		{name: "pod_ingress: a kubelet probe goes to ztunnel when the node's netns id is unknown", prog: mrasm.PodIngress, setup: probeRequest, unknownNode: true, listeners: inbound, want: oToListener},
		{name: "pod_ingress: a SYN with the node's source and a listener's port of the node goes to ztunnel", prog: mrasm.PodIngress, listeners: inbound, want: oToListener,
			setup: func(t *testing.T, v6 bool) tuple {
				c := node.dial(t, netip.AddrPortFrom(nodeIP(v6), 0), netip.AddrPortFrom(nodeIP(v6), 10250))
				return tuple{nodeIP(v6), client(v6), c.acceptor.Port(), 8080}
			}},
		{name: "pod_ingress: a reply to ztunnel's outbound connection passes", prog: mrasm.PodIngress, ack: true, listeners: inbound, want: oPass,
			setup: func(t *testing.T, v6 bool) tuple {
				c := pod.dial(t, netip.AddrPortFrom(client(v6), 0), netip.AddrPortFrom(remote(v6), 0))
				return tuple{c.acceptor.Addr(), c.dialer.Addr(), c.acceptor.Port(), c.dialer.Port()}
			}},
		{name: "pod_ingress: a SYN on an established tuple goes to its socket", prog: mrasm.PodIngress, listeners: inbound, want: oToSocket,
			setup: func(t *testing.T, v6 bool) tuple {
				c := pod.dial(t, netip.AddrPortFrom(client(v6), 0), netip.AddrPortFrom(remote(v6), 0))
				return tuple{c.acceptor.Addr(), c.dialer.Addr(), c.acceptor.Port(), c.dialer.Port()}
			}},
		{name: "pod_ingress: an ACK on a TIME_WAIT tuple passes (the TIME_WAIT socket answers it)", prog: mrasm.PodIngress, ack: true, listeners: inbound, want: oPass,
			setup: func(t *testing.T, v6 bool) tuple {
				sport, dport := pod.timeWait(t, remote(v6), client(v6))
				return tuple{remote(v6), client(v6), sport, dport}
			}},
		{name: "pod_ingress: a SYN on a TIME_WAIT tuple goes to the inbound listener, never past it", prog: mrasm.PodIngress, listeners: inbound, want: oToListener,
			setup: func(t *testing.T, v6 bool) tuple {
				sport, dport := pod.timeWait(t, remote(v6), client(v6))
				return tuple{remote(v6), client(v6), sport, dport}
			}},
		{name: "pod_ingress: an ACK to the application's listener without a connection goes to the inbound listener", prog: mrasm.PodIngress, ack: true, listeners: inbound, want: oToListener,
			setup: func(t *testing.T, v6 bool) tuple {
				c := pod.dial(t, netip.AddrPortFrom(client(v6), 0), netip.AddrPortFrom(client(v6), 0))
				return tuple{remote(v6), client(v6), 40000, c.acceptor.Port()}
			}},
		{name: "pod_loopback: a marked SYN on a TIME_WAIT tuple goes to the outbound listener", prog: mrasm.PodLoopback, mark: mrasm.TProxyMark, listeners: tcp4, want: oToListener,
			setup: func(t *testing.T, v6 bool) tuple {
				sport, dport := pod.timeWait(t, client(v6), remote(v6))
				return tuple{client(v6), remote(v6), sport, dport}
			}},
		{name: "pod_loopback: a marked SYN on an established tuple goes to its socket", prog: mrasm.PodLoopback, mark: mrasm.TProxyMark, listeners: tcp4, want: oToSocket,
			setup: func(t *testing.T, v6 bool) tuple {
				c := pod.dial(t, netip.AddrPortFrom(remote(v6), 0), netip.AddrPortFrom(client(v6), 0))
				return tuple{c.dialer.Addr(), c.acceptor.Addr(), c.dialer.Port(), c.acceptor.Port()}
			}},
	}
	for _, r := range rows {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/%s", r.name, map[bool]string{false: "IPv4", true: "IPv6"}[v6]), func(t *testing.T) {
				fx := f
				if r.unknownNode {
					fx = unknown
				}
				fx.setZtunnel(t, maps.ZtunnelReady)
				fam := map[bool]string{false: "4", true: "6"}[v6]
				tp := r.setup(t, v6)
				for _, l := range r.listeners {
					pod.listen(t, l.proto+fam, l.port)
				}
				p := packet{src: tp.src, dst: tp.dst, sport: tp.sport, dport: tp.dport, ack: r.ack, synack: r.synack}
				if r.options {
					if v6 {
						p.ext = []layers.IPProtocol{layers.IPProtocolIPv6Routing}
					} else {
						p.ipv4Options = lsrr(remoteV4)
					}
				}
				in := p.build(t)
				var res result
				testutil.MustDo(t, pod.ns, func() error {
					res = fx.runCtx(t, r.prog, in, mrasm.SkBuff{Mark: r.mark})
					return nil
				})
				check(t, in, res, podExpect(r.want, r.mark))
			})
		}
	}
}
