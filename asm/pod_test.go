package asm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// The in-pod programs run for the client: its addresses are built into
// them. The fixture's other addresses keep their roles (server: another
// ambient pod of the node; node, gateway: the node's; remote: another node).
var podIPs = []netip.Addr{clientV4, clientV6}

// newPodFixture loads the in-pod programs for the client, with hostNetns
// as the node's netns id, on the maps of a node fixture.
func newPodFixture(tb testing.TB, hostNetns int32) *fixture {
	tb.Helper()
	f := newFixture(tb, mrasm.DefaultOptions())
	spec, err := mrasm.PodCollectionSpec(mrasm.PodConfig{IPs: podIPs, HostNetnsID: hostNetns}, mrasm.DefaultOptions())
	if err != nil {
		tb.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: f.maps.Maps()})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("load in-pod programs: %-30v", ve)
		}
		tb.Fatalf("load in-pod programs: %v", err)
	}
	tb.Cleanup(func() { coll.Close() })
	return &fixture{maps: f.maps, coll: coll, ingressOK: f.ingressOK, events: f.events}
}

// Outcomes of the in-pod programs. BPF_PROG_TEST_RUN does not run at a real
// tc ingress, so the kernel refuses bpf_sk_assign there: assign_failed shows
// that the lookup found the socket (dropped for a listener, passed on for
// an established socket), as in TestZtunnelAssign.
var (
	oLoopback   = outcome{maps.VerdictRedirectedOut, mrasm.ActRedirect}
	oMarked     = outcome{maps.VerdictMarked, mrasm.ActOK}
	oNoSocket   = outcome{maps.VerdictNoSocket, mrasm.ActShot}
	oToListener = outcome{maps.VerdictAssignFailed, mrasm.ActShot}
	oToSocket   = outcome{maps.VerdictAssignFailed, mrasm.ActOK}
)

// loMAC is lo's address, the destination MAC of what pod_egress redirects.
var loMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// podRow is one rule of §5 (in-pod) for one of the in-pod programs.
type podRow struct {
	name  string
	prog  string
	frame func(testing.TB) []byte
	// mark is skb->mark on entry.
	mark uint32
	// ztFlags replace ZtunnelReady when not zero.
	ztFlags uint16
	// podFlags are the client's, besides EndpointPod.
	podFlags uint16
	// listeners are opened in the pod's stand-in netns; loopbackDNS binds
	// the 15053 ones to 127.0.0.1 / ::1, as ztunnel does by default.
	listeners   []listener
	loopbackDNS bool
	want        outcome
	// fam names the family of a row made by podRows.
	fam string
}

func (r podRow) run(t *testing.T, f *fixture, v6 bool) {
	t.Helper()
	f.setZtunnelOrReady(t, r.ztFlags)
	f.enrolClient(t, r.podFlags)
	a := newAssignNetns(t)
	fam := map[bool]string{false: "4", true: "6"}[v6]
	for _, l := range r.listeners {
		if l.port == mrasm.PortDNS && r.loopbackDNS {
			a.listenLoopback(t, l.proto+fam, l.port)
			continue
		}
		a.listen(t, l.proto+fam, l.port)
	}
	in := r.frame(t)
	res := a.runProg(t, f, r.prog, in, r.mark)
	check(t, in, res, podExpect(r.want, r.mark))
}

// podExpect is what check wants of an in-pod outcome on a packet that
// entered with mark.
func podExpect(o outcome, mark uint32) expect {
	e := expect{ret: o.ret, verdict: o.verdict, mark: mark}
	if o == oLoopback {
		e.mac = loMAC
		e.mark = mark&^mrasm.TProxyMask | mrasm.TProxyMark
	}
	return e
}

// listenLoopback opens a listener of network on port bound to the family's
// loopback address.
func (a *assignNetns) listenLoopback(t testing.TB, network string, port int) {
	t.Helper()
	host := "127.0.0.1"
	if network[len(network)-1] == '6' {
		host = "::1"
	}
	var closer func() error
	testutil.MustDo(t, a.ns, func() error {
		lc := net.ListenConfig{}
		addr := net.JoinHostPort(host, fmt.Sprint(port))
		if network[:3] == "tcp" {
			l, err := lc.Listen(context.Background(), network, addr)
			if err != nil {
				return err
			}
			closer = l.Close
			return nil
		}
		c, err := lc.ListenPacket(context.Background(), network, addr)
		if err != nil {
			return err
		}
		closer = c.Close
		return nil
	})
	t.Cleanup(func() { closer() })
}

// podRows expands templates into IPv4 and IPv6 rows.
func podRows(name, prog string, mk func(v6 bool) podRow) []podRow {
	var rows []podRow
	for _, v6 := range []bool{false, true} {
		r := mk(v6)
		r.name, r.prog, r.fam = name, prog, map[bool]string{false: "IPv4", true: "IPv6"}[v6]
		rows = append(rows, r)
	}
	return rows
}

var (
	tcp4    = []listener{{"tcp", mrasm.PortOutbound}}
	inbound = []listener{{"tcp", mrasm.PortInbound}}
	allPod  = []listener{{"tcp", mrasm.PortOutbound}, {"tcp", mrasm.PortInbound}, {"tcp", mrasm.PortHBONE}, {"tcp", mrasm.PortDNS}, {"udp", mrasm.PortDNS}}
)

func podEgressCases() []podRow {
	var rows []podRow
	add := func(name string, mk func(v6 bool) podRow) { rows = append(rows, podRows(name, mrasm.PodEgress, mk)...) }
	from := func(v6 bool) netip.Addr { return pick(v6, clientV4, clientV6) }
	to := func(v6 bool, a4, a6 netip.Addr) netip.Addr { return pick(v6, a4, a6) }
	dnsOn := maps.ZtunnelReady | maps.ZtunnelCaptureDNS
	strict := maps.ZtunnelReady | maps.ZtunnelUDPDrop

	// ztunnel's own sockets: SO_MARK 0x539, before anything else.
	add("ztunnel's packet (mark 0x539) passes untouched, whatever its source", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: pick(v6, remoteV4, remoteV6), dst: to(v6, serverV4, serverV6), dport: 15008}), mark: mrasm.ZtunnelMark, want: oPass}
	})
	add("ztunnel's mark with other bits above the mask passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}), mark: 0x7000 | mrasm.ZtunnelMark, want: oPass}
	})
	add("another mark (0x538) is no pass: a SYN goes to ztunnel", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}), mark: 0x538, want: oLoopback}
	})
	add("TProxyMark on eth0 is no pass: a forged SYN is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: pick(v6, remoteV4, remoteV6), dst: to(v6, serverV4, serverV6)}), mark: mrasm.TProxyMark, want: oSpoofed}
	})
	add("the mark's other bits are kept on capture", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}), mark: 0x12345000, want: oLoopback}
	})

	// The source check, against the pod's own addresses.
	add("a SYN with another pod's source is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: pick(v6, serverV4, serverV6), dst: to(v6, remoteV4, remoteV6)}), want: oSpoofed}
	})
	add("a SYN with the node's source is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: pick(v6, nodeV4, nodeV6), dst: to(v6, remoteV4, remoteV6)}), want: oSpoofed}
	})
	add("UDP with a forged source is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: pick(v6, remoteV4, remoteV6), dst: to(v6, plainV4, plainV6), proto: layers.IPProtocolUDP, dport: 7}), want: oSpoofed}
	})
	add("DNS with a forged source is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: pick(v6, serverV4, serverV6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), ztFlags: dnsOn, want: oSpoofed}
	})
	add("ICMP with a forged source is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: pick(v6, nodeV4, nodeV6), dst: to(v6, remoteV4, remoteV6), proto: icmpOf(v6)}), want: oSpoofed}
	})
	add("a later fragment of UDP with a forged source is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(later(packet{src: pick(v6, serverV4, serverV6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolUDP}, v6)), want: oSpoofed}
	})
	add("an ACK to the node with a forged source is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: pick(v6, serverV4, serverV6), dst: to(v6, nodeV4, nodeV6), sport: 8080, dport: 45000, ack: true}), want: oSpoofed}
	})

	// TCP to every destination: to lo, marked, for ztunnel's 15001.
	for _, d := range []struct {
		name   string
		a4, a6 netip.Addr
	}{{"a host on another node", remoteV4, remoteV6}, {"an ambient pod of the same node", serverV4, serverV6},
		{"a Service IP", serviceV4, serviceV6}, {"the node's IP", nodeV4, nodeV6}} {
		add("a SYN to "+d.name+" goes to lo, marked", func(v6 bool) podRow {
			return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, d.a4, d.a6), dport: 8080}), want: oLoopback}
		})
		add("an ACK to "+d.name+" goes to lo, marked", func(v6 bool) podRow {
			return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, d.a4, d.a6), dport: 8080, ack: true}), want: oLoopback}
		})
	}
	add("an ACK to a NodePort goes to lo (the node's netns id is unknown: never the node's)", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, nodeV4, nodeV6), dport: 30080, ack: true}), want: oLoopback}
	})
	add("a first fragment of TCP goes to lo", func(v6 bool) podRow {
		p := packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), moreFragments: true}
		if v6 {
			p.ext = []layers.IPProtocol{layers.IPProtocolIPv6Fragment}
		}
		return podRow{frame: frameOf(p), want: oLoopback}
	})
	add("a pod that bypasses inbound capture answers its direct inbound connections directly", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), sport: 8080, dport: 40000, synack: true}), podFlags: maps.EndpointBypassInbound, want: oPass}
	})
	add("a pod that bypasses inbound capture still connects out through ztunnel", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}), podFlags: maps.EndpointBypassInbound, want: oLoopback}
	})

	// DNS and other UDP.
	add("DNS goes to lo with DNS capture on", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), ztFlags: dnsOn, want: oLoopback}
	})
	add("DNS over TCP goes to lo with DNS capture on", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), dport: 53}), ztFlags: dnsOn, want: oLoopback}
	})
	add("DNS of a pod that bypasses DNS capture passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), ztFlags: dnsOn, podFlags: maps.EndpointBypassDNS, want: oPass}
	})
	add("DNS passes with DNS capture off", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), want: oPass}
	})
	add("other UDP passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolUDP, dport: 443, payload: make([]byte, 1200)}), want: oPass}
	})
	add("UDP to a tunnel port of the node is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, nodeV4, nodeV6), proto: layers.IPProtocolUDP, dport: 4789}), want: oRelay}
	})
	add("strict UDP policy: UDP is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolUDP, dport: 443}), ztFlags: strict, want: oPolicy}
	})
	add("the pod's own strict UDP policy drops its UDP", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolUDP, dport: 443}), podFlags: maps.EndpointUDPDrop, want: oPolicy}
	})
	add("strict UDP policy: DNS to a resolver passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), ztFlags: strict, want: oPass}
	})
	add("strict UDP policy: DNS to a resolver with a source route is dropped", func(v6 bool) podRow {
		p := packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}
		if v6 {
			p.ext = []layers.IPProtocol{layers.IPProtocolIPv6Routing}
		} else {
			p.ipv4Options = lsrr(remoteV4)
		}
		return podRow{frame: frameOf(p), ztFlags: strict, want: oPolicy}
	})
	add("a later fragment of UDP from the pod passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(later(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolUDP}, v6)), want: oPass}
	})
	add("a later fragment of TCP is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(later(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}, v6)), want: oFragment}
	})

	// ICMP, ND, ARP, other protocols and EtherTypes.
	add("ICMP echo passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: icmpOf(v6)}), want: oPass}
	})
	add("SCTP is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolSCTP}), want: oProtocol}
	})
	add("GRE is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolGRE}), want: oProtocol}
	})
	add("a VLAN-tagged SYN is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), vlan: true}), want: oParseErr}
	})
	one := func(name string, frame func(testing.TB) []byte, want outcome) {
		rows = append(rows, podRow{name: name, prog: mrasm.PodEgress, frame: frame, want: want})
	}
	one("IPv6 with seven extension headers is dropped", frameOf(packet{src: clientV6, dst: remoteV6, ext: append(sixExtHeaders(), layers.IPProtocolIPv6HopByHop)}), oParseErr)
	one("IPv4 with options goes to lo", frameOf(packet{src: clientV4, dst: remoteV4, ipv4Options: optionsOf(10)}), oLoopback)
	one("MPLS is dropped", func(testing.TB) []byte { return etherFrame(0x8847) }, oProtocol)
	one("a neighbour solicitation from a link-local address passes", func(tb testing.TB) []byte { return neighborSolicitation(tb, clientLL) }, oPass)
	one("a neighbour advertisement for the pod's own address passes", func(tb testing.TB) []byte { return nd(tb, 136, clientV6, gatewayLL, clientV6, 255) }, oPass)
	one("a neighbour advertisement for another pod's address is dropped", func(tb testing.TB) []byte { return nd(tb, 136, clientLL, gatewayLL, serverV6, 255) }, oSpoofed)
	one("a router advertisement is dropped", func(tb testing.TB) []byte { return nd(tb, 134, clientLL, allNodes, netip.Addr{}, 255) }, oSpoofed)
	one("ARP from the pod's own address passes", func(tb testing.TB) []byte { return arpFrom(tb, clientV4, layers.EthernetTypeIPv4) }, oPass)
	one("an ARP probe passes", func(tb testing.TB) []byte { return arpFrom(tb, netip.Addr{}, layers.EthernetTypeIPv4) }, oPass)
	one("ARP claiming another pod's address is dropped", func(tb testing.TB) []byte { return arpFrom(tb, serverV4, layers.EthernetTypeIPv4) }, oSpoofed)
	return rows
}

func podLoopbackCases() []podRow {
	var rows []podRow
	add := func(name string, mk func(v6 bool) podRow) {
		rows = append(rows, podRows(name, mrasm.PodLoopback, mk)...)
	}
	from := func(v6 bool) netip.Addr { return pick(v6, clientV4, clientV6) }
	to := func(v6 bool, a4, a6 netip.Addr) netip.Addr { return pick(v6, a4, a6) }
	dnsOn := maps.ZtunnelReady | maps.ZtunnelCaptureDNS
	const m = mrasm.TProxyMark

	add("an unmarked SYN on lo passes untouched", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}), listeners: tcp4, want: oPass}
	})
	add("ztunnel's mark on lo passes untouched", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}), mark: mrasm.ZtunnelMark, listeners: tcp4, want: oPass}
	})
	add("TProxyMark outside the mask's bits is no capture", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}), mark: 0x4000, listeners: tcp4, want: oPass}
	})
	add("a marked SYN goes to the outbound listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), dport: 8080}), mark: m, listeners: tcp4, want: oToListener}
	})
	add("a marked SYN with other mark bits goes to the outbound listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), dport: 8080}), mark: 0x5000 | m, listeners: tcp4, want: oToListener}
	})
	add("a marked SYN never goes to the inbound listeners", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), dport: 15008}), mark: m,
			listeners: []listener{{"tcp", mrasm.PortInbound}, {"tcp", mrasm.PortHBONE}}, want: oNoSocket}
	})
	add("no listener in the pod: a marked SYN is dropped (fail closed)", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}), mark: m, want: oNoSocket}
	})
	add("a marked ACK is left marked for the stack's own lookup", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), ack: true}), mark: m, want: oMarked}
	})
	add("a marked DNS query goes to the DNS socket bound to the wildcard", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), mark: m, ztFlags: dnsOn,
			listeners: []listener{{"udp", mrasm.PortDNS}}, want: oToListener}
	})
	add("a marked DNS query goes to the DNS socket bound to localhost (ztunnel's default)", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), mark: m, ztFlags: dnsOn,
			listeners: []listener{{"udp", mrasm.PortDNS}}, loopbackDNS: true, want: oToListener}
	})
	// A marked DNS query over TCP, captured, goes to the DNS listener
	// bound to localhost with its destination rewritten:
	// TestPodDNSOverTCP's rows.
	add("a marked DNS query over TCP with capture off goes to the outbound listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), dport: 53}), mark: m,
			listeners: []listener{{"tcp", mrasm.PortDNS}, {"tcp", mrasm.PortOutbound}}, loopbackDNS: true, want: oToListener}
	})
	add("a marked DNS query over TCP with capture off never goes to the DNS listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), dport: 53}), mark: m,
			listeners: []listener{{"tcp", mrasm.PortDNS}}, loopbackDNS: true, want: oNoSocket}
	})
	add("a marked DNS query of a pod that bypasses DNS capture gets no socket", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), mark: m, ztFlags: dnsOn,
			podFlags: maps.EndpointBypassDNS, listeners: []listener{{"udp", mrasm.PortDNS}}, want: oNoSocket}
	})
	add("marked UDP other than DNS gets no socket", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolUDP, dport: 443}), mark: m, ztFlags: dnsOn,
			listeners: []listener{{"udp", mrasm.PortDNS}}, want: oNoSocket}
	})
	add("no DNS socket: a marked DNS query is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}), mark: m, ztFlags: dnsOn, want: oNoSocket}
	})
	add("marked ICMP passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: icmpOf(v6)}), mark: m, want: oPass}
	})
	add("a marked protocol other than TCP and UDP is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6), proto: layers.IPProtocolGRE}), mark: m, listeners: tcp4, want: oNoSocket}
	})
	add("a marked later fragment is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(later(packet{src: from(v6), dst: to(v6, remoteV4, remoteV6)}, v6)), mark: m, listeners: tcp4, want: oNoSocket}
	})
	rows = append(rows, podRow{name: "a marked ARP frame is dropped", prog: mrasm.PodLoopback, mark: m,
		frame: func(tb testing.TB) []byte { return arpRequest(tb, clientV4) }, want: oNoSocket})
	rows = append(rows, podRow{name: "an unmarked ARP frame passes", prog: mrasm.PodLoopback,
		frame: func(tb testing.TB) []byte { return arpRequest(tb, clientV4) }, want: oPass})
	return rows
}

func podIngressCases() []podRow {
	var rows []podRow
	add := func(name string, mk func(v6 bool) podRow) {
		rows = append(rows, podRows(name, mrasm.PodIngress, mk)...)
	}
	to := func(v6 bool) netip.Addr { return pick(v6, clientV4, clientV6) }
	from := func(v6 bool, a4, a6 netip.Addr) netip.Addr { return pick(v6, a4, a6) }
	strict := maps.ZtunnelReady | maps.ZtunnelUDPDrop

	add("HBONE to 15008 passes (ztunnel's own listener)", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), dport: 15008}), listeners: allPod, want: oPass}
	})
	add("HBONE from an ambient pod of the node passes (ztunnel's connection from its netns)", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, serverV4, serverV6), dst: to(v6), dport: 15008}), listeners: allPod, want: oPass}
	})
	add("HBONE to a pod that bypasses inbound capture passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), dport: 15008}), podFlags: maps.EndpointBypassInbound, want: oPass}
	})
	add("a SYN from another node goes to the inbound listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), dport: 8080}), listeners: inbound, want: oToListener}
	})
	add("a SYN never goes to the outbound listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), dport: 8080}), listeners: tcp4, want: oNoSocket}
	})
	add("no inbound listener: a SYN is dropped (fail closed)", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), dport: 8080}), want: oNoSocket}
	})
	add("a SYN to the pod's own 15001 goes to the inbound listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), dport: mrasm.PortOutbound}), listeners: allPod, want: oToListener}
	})
	add("an ACK without a socket goes to the inbound listener, never to the application's (SYN cookies)", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), sport: 40000, dport: 8080, ack: true}), listeners: inbound, want: oToListener}
	})
	add("TCP from an ambient pod of the node is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, serverV4, serverV6), dst: to(v6), dport: 8080}), listeners: inbound, want: oSpoofed}
	})
	add("TCP with the pod's own address from outside is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: to(v6), dst: to(v6), sport: 1234, dport: 8080}), listeners: inbound, want: oSpoofed}
	})
	add("TCP with the node's address and no socket of the node's goes to the inbound listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, nodeV4, nodeV6), dst: to(v6), dport: 8080}), listeners: inbound, want: oToListener}
	})
	add("a pod that bypasses inbound capture gets plaintext TCP directly", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), dport: 8080}), podFlags: maps.EndpointBypassInbound, want: oPass}
	})
	add("a pod that bypasses inbound capture still drops an ambient pod's forged TCP", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, serverV4, serverV6), dst: to(v6), dport: 8080}), podFlags: maps.EndpointBypassInbound, want: oSpoofed}
	})
	add("another pod's bypass flag does not apply to TCP for its address", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: from(v6, plainV4, plainV6), dport: 8080}), listeners: inbound, want: oToListener}
	})
	add("UDP passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), proto: layers.IPProtocolUDP, sport: 443, dport: 40000}), want: oPass}
	})
	add("UDP to the pod's port 53 passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), proto: layers.IPProtocolUDP, dport: 53}), ztFlags: maps.ZtunnelReady | maps.ZtunnelCaptureDNS, want: oPass}
	})
	add("UDP to ztunnel's DNS proxy (15053) is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), proto: layers.IPProtocolUDP, dport: mrasm.PortDNS}), want: oPolicy}
	})
	add("TCP to ztunnel's DNS proxy (15053) goes to the inbound listener", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), dport: mrasm.PortDNS}), listeners: allPod, want: oToListener}
	})
	add("strict UDP policy: UDP is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), proto: layers.IPProtocolUDP, sport: 443, dport: 40000}), ztFlags: strict, want: oPolicy}
	})
	add("strict UDP policy: a DNS reply from a resolver passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, dnsV4, dnsV6), dst: to(v6), proto: layers.IPProtocolUDP, sport: 53, dport: 33000}), ztFlags: strict, want: oPass}
	})
	add("the pod's own strict UDP policy drops UDP to it", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), proto: layers.IPProtocolUDP, sport: 443, dport: 40000}), podFlags: maps.EndpointUDPDrop, want: oPolicy}
	})
	add("ICMP passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), proto: icmpOf(v6)}), want: oPass}
	})
	add("strict UDP policy: ICMP is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), proto: icmpOf(v6)}), ztFlags: strict, want: oPolicy}
	})
	add("SCTP is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), proto: layers.IPProtocolSCTP}), want: oProtocol}
	})
	add("a later fragment of UDP passes", func(v6 bool) podRow {
		return podRow{frame: frameOf(later(packet{src: from(v6, dnsV4, dnsV6), dst: to(v6), proto: layers.IPProtocolUDP, payload: make([]byte, 600)}, v6)), want: oPass}
	})
	add("a later fragment of TCP is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(later(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6)}, v6)), want: oFragment}
	})
	add("a VLAN-tagged SYN is dropped", func(v6 bool) podRow {
		return podRow{frame: frameOf(packet{src: from(v6, remoteV4, remoteV6), dst: to(v6), vlan: true}), listeners: inbound, want: oParseErr}
	})
	rows = append(rows,
		podRow{name: "ARP passes", prog: mrasm.PodIngress, frame: func(tb testing.TB) []byte { return arpRequest(tb, nodeV4) }, want: oPass},
		podRow{name: "MPLS is dropped", prog: mrasm.PodIngress, frame: func(testing.TB) []byte { return etherFrame(0x8847) }, want: oProtocol},
		podRow{name: "IPv4 with options goes to the inbound listener", prog: mrasm.PodIngress, listeners: inbound,
			frame: frameOf(packet{src: remoteV4, dst: clientV4, ipv4Options: optionsOf(10)}), want: oToListener},
		podRow{name: "IPv6 with seven extension headers is dropped", prog: mrasm.PodIngress,
			frame: frameOf(packet{src: remoteV6, dst: clientV6, ext: append(sixExtHeaders(), layers.IPProtocolIPv6HopByHop)}), want: oParseErr},
		podRow{name: "strict UDP policy: neighbour discovery passes", prog: mrasm.PodIngress, ztFlags: strict,
			frame: func(tb testing.TB) []byte { return nd(tb, 135, gatewayLL, solicited, clientV6, 255) }, want: oPass},
	)
	return rows
}

func TestPodPrograms(t *testing.T) {
	f := newPodFixture(t, -1)
	for _, cases := range [][]podRow{podEgressCases(), podLoopbackCases(), podIngressCases()} {
		for _, r := range cases {
			name := r.prog + "/" + r.name
			if r.fam != "" {
				name += "/" + r.fam
			}
			t.Run(name, func(t *testing.T) { r.run(t, f, r.fam == "IPv6") })
		}
	}
}

// TestPodProgramsLoad loads the in-pod programs under the project's
// licence string, for a dual-stack, an IPv4-only and an IPv6-only pod, and
// reports their sizes.
func TestPodProgramsLoad(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, cfg := range []mrasm.PodConfig{
		{IPs: podIPs, HostNetnsID: 3},
		{IPs: podIPs[:1], HostNetnsID: -1},
		{IPs: podIPs[1:], HostNetnsID: 0},
	} {
		spec, err := mrasm.PodCollectionSpec(cfg, mrasm.DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		coll, err := ebpf.NewCollection(spec)
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				t.Fatalf("%v: %-40v", cfg, ve)
			}
			t.Fatalf("%v: %v", cfg, err)
		}
		for _, p := range mrasm.PodPrograms() {
			ps := spec.Programs[p.Name]
			if ps.License != "Apache-2.0" || ps.Type != ebpf.SchedCLS {
				t.Errorf("%s: licence %q, type %s", p.Name, ps.License, ps.Type)
			}
			info, err := coll.Programs[p.Name].Info()
			if err != nil {
				t.Fatal(err)
			}
			verified, _ := info.VerifiedInstructions()
			t.Logf("%v %-12s %4d instructions, %6d verified", cfg.IPs, p.Name, len(ps.Instructions), verified)
		}
		coll.Close()
	}
	for _, bad := range []mrasm.PodConfig{{}, {IPs: []netip.Addr{clientV4, serverV4}}, {IPs: []netip.Addr{{}}}} {
		if _, err := mrasm.PodCollectionSpec(bad, mrasm.DefaultOptions()); err == nil {
			t.Errorf("PodCollectionSpec(%v) built programs", bad.IPs)
		}
	}
}
