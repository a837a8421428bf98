package asm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

func TestZtunnelIngress(t *testing.T) {
	f := newFixture(t, mrasm.DefaultOptions())
	for _, c := range ztunnelIngressCases() {
		t.Run(c.name, func(t *testing.T) { c.run(t, f, mrasm.ZtunnelIngress) })
	}
}

func ztunnelIngressCases() []caseRow {
	var rows []caseRow
	add := func(r ...caseRow) { rows = append(rows, r...) }
	add(bothFamilies("to an ambient pod: straight to that pod", func(v6 bool) caseRow {
		return caseRow{rule: "a packet for an ambient pod of this node", frame: frameOf(packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, serverV4, serverV6), srcMAC: ztMAC}),
			ingress: ztIfindex, want: oBypass}
	})...)
	add(bothFamilies("a reply to an ambient client: straight to that pod", func(v6 bool) caseRow {
		return caseRow{frame: frameOf(packet{src: pick(v6, remoteV4, remoteV6), dst: pick(v6, clientV4, clientV6), sport: 80, dport: 40000, srcMAC: ztMAC}),
			ingress: ztIfindex, want: oBypass}
	})...)
	add(bothFamilies("UDP (a DNS answer) to an ambient pod: straight to that pod", func(v6 bool) caseRow {
		return caseRow{frame: frameOf(packet{src: pick(v6, dnsV4, dnsV6), dst: pick(v6, clientV4, clientV6), proto: layers.IPProtocolUDP, sport: 53, dport: 33000, srcMAC: ztMAC}),
			ingress: ztIfindex, want: oBypass}
	})...)
	add(bothFamilies("to a pod outside the mesh: normal routing", func(v6 bool) caseRow {
		return caseRow{rule: "anything else (other nodes, the node, pods outside the mesh)",
			frame: frameOf(packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, plainV4, plainV6), srcMAC: ztMAC}), ingress: ztIfindex, want: oPass}
	})...)
	add(bothFamilies("to the node: normal routing", func(v6 bool) caseRow {
		return caseRow{frame: frameOf(packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, nodeV4, nodeV6), srcMAC: ztMAC}), ingress: ztIfindex, want: oPass}
	})...)
	add(bothFamilies("to another node: normal routing", func(v6 bool) caseRow {
		return caseRow{frame: frameOf(packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, remoteV4, remoteV6), srcMAC: ztMAC}), ingress: ztIfindex, want: oPass}
	})...)
	add(caseRow{name: "IPv4 with options to an ambient pod: straight to that pod", ingress: ztIfindex,
		frame: frameOf(packet{src: remoteV4, dst: serverV4, ipv4Options: optionsOf(10), srcMAC: ztMAC}), want: oBypass})
	add(caseRow{name: "IPv6 with extension headers to an ambient pod: straight to that pod", ingress: ztIfindex,
		frame: frameOf(packet{src: remoteV6, dst: serverV6, ext: sixExtHeaders(), srcMAC: ztMAC}), want: oBypass})
	add(caseRow{name: "ARP passes", ingress: ztIfindex, frame: func(tb testing.TB) []byte { return arpRequest(tb, ztV4) }, want: oPass})
	add(caseRow{name: "ztunnel not ready changes nothing for ztunnel's own packets", ingress: ztIfindex, noZtunnel: true,
		frame: frameOf(packet{src: clientV4, dst: serverV4, srcMAC: ztMAC}), want: oBypass})
	return rows
}

func TestZtunnelEgress(t *testing.T) {
	f := newFixture(t, mrasm.DefaultOptions())
	if !f.ingressOK {
		t.Skip("BPF_PROG_TEST_RUN takes skb->ingress_ifindex from Linux 5.15; ztunnel_egress reads it")
	}
	for _, c := range ztunnelEgressCases() {
		t.Run(c.name, func(t *testing.T) { c.run(t, f, mrasm.ZtunnelEgress) })
	}
}

func ztunnelEgressCases() []caseRow {
	var rows []caseRow
	add := func(r ...caseRow) { rows = append(rows, r...) }
	add(bothFamilies("an ambient pod's packet from its own veth passes", func(v6 bool) caseRow {
		return caseRow{rule: "an ambient pod's packet that entered the node through that pod's veth (its UDP to ztunnel's IP)",
			frame: frameOf(packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, ztV4, ztV6), proto: layers.IPProtocolUDP, dport: 15053}), ingress: clientIfindex, want: oPass}
	})...)
	add(bothFamilies("an ambient pod's address from another veth is dropped", func(v6 bool) caseRow {
		return caseRow{rule: "an ambient pod's address from anywhere else (a forged source, a frame another pod sent to ztunnel's MAC)",
			frame: frameOf(packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, ztV4, ztV6), dport: 15001}), ingress: plainIfindex, want: oSpoofed}
	})...)
	add(bothFamilies("an ambient pod's address from another node is dropped", func(v6 bool) caseRow {
		return caseRow{frame: frameOf(packet{src: pick(v6, serverV4, serverV6), dst: pick(v6, remoteV4, remoteV6), dport: 80}), ingress: uplinkIfindex, want: oSpoofed}
	})...)
	add(bothFamilies("an ambient pod's address from the node itself is dropped", func(v6 bool) caseRow {
		return caseRow{frame: frameOf(packet{src: pick(v6, serverV4, serverV6), dst: pick(v6, ztV4, ztV6), dport: 15001}), ingress: 0, want: oSpoofed}
	})...)
	add(bothFamilies("HBONE from another node passes", func(v6 bool) caseRow {
		return caseRow{rule: "anything else (HBONE from other nodes, the node's traffic, captured inbound traffic)",
			frame: frameOf(packet{src: pick(v6, remoteV4, remoteV6), dst: pick(v6, ztV4, ztV6), dport: 15008}), ingress: uplinkIfindex, want: oPass}
	})...)
	add(bothFamilies("captured inbound traffic for an ambient pod passes", func(v6 bool) caseRow {
		return caseRow{frame: frameOf(packet{src: pick(v6, plainV4, plainV6), dst: pick(v6, serverV4, serverV6), dport: 8080}), ingress: plainIfindex, want: oPass}
	})...)
	add(bothFamilies("the node's packets pass", func(v6 bool) caseRow {
		return caseRow{frame: frameOf(packet{src: pick(v6, nodeV4, nodeV6), dst: pick(v6, ztV4, ztV6), dport: 15021}), ingress: 0, want: oPass}
	})...)
	add(caseRow{name: "ARP passes", ingress: plainIfindex, frame: func(tb testing.TB) []byte { return arpRequest(tb, clientV4) }, want: oPass})
	return rows
}

// assignNetns is a network namespace standing in for ztunnel's: the test's
// addresses are local on its loopback, and listeners of ztunnel's ports can
// be opened in it. The assign program is run inside it, so its socket
// lookups (BPF_F_CURRENT_NETNS: the netns of the test run's device) see
// exactly these sockets.
type assignNetns struct {
	ns netns.NsHandle
}

func newAssignNetns(t testing.TB) *assignNetns {
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
		for _, a := range []netip.Addr{ztV4, ztV6, clientV4, clientV6, remoteV4, remoteV6} {
			bits := 32
			if a.Is6() {
				bits = 128
			}
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
			if a.Is6() {
				addr.Flags = unix.IFA_F_NODAD // usable at once, no duplicate address detection
			}
			if err := netlink.AddrAdd(lo, addr); err != nil {
				return fmt.Errorf("add %s to lo: %w", a, err)
			}
		}
		return nil
	})
	return &assignNetns{ns: ns}
}

// listen opens a listener of network (tcp4, tcp6, udp4, udp6) on port in the
// netns, closed when the test ends.
func (a *assignNetns) listen(t testing.TB, network string, port int) {
	t.Helper()
	var closer func() error
	testutil.MustDo(t, a.ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		addr := net.JoinHostPort("", strconv.Itoa(port))
		switch network {
		case "tcp4", "tcp6":
			l, err := lc.Listen(context.Background(), network, addr)
			if err != nil {
				return err
			}
			closer = l.Close
		default:
			c, err := lc.ListenPacket(context.Background(), network, addr)
			if err != nil {
				return err
			}
			closer = c.Close
		}
		return nil
	})
	t.Cleanup(func() { closer() })
}

// connect opens a TCP connection inside the netns from client to server
// (both local there) and returns the client's port.
func (a *assignNetns) connect(t testing.TB, from, to netip.Addr) (sport, dport uint16) {
	t.Helper()
	testutil.MustDo(t, a.ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		l, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(to.String(), "0"))
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
		d.SetMultipathTCP(false)
		// IPv6 addresses become routable a moment after they were added
		// (addrconf completes them from a work queue, even with NODAD):
		// retry while the route is not there yet.
		var c net.Conn
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			c, err = d.Dial("tcp", l.Addr().String())
			if !errors.Is(err, unix.ENETUNREACH) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			return err
		}
		t.Cleanup(func() { c.Close() })
		s, err := l.Accept()
		if err != nil {
			return err
		}
		t.Cleanup(func() { s.Close() })
		sport = uint16(c.LocalAddr().(*net.TCPAddr).Port)
		dport = uint16(l.Addr().(*net.TCPAddr).Port)
		return nil
	})
	return sport, dport
}

// listenOn opens a TCP listener bound to addr (not the wildcard address).
func (a *assignNetns) listenOn(t testing.TB, network string, addr netip.Addr, port int) {
	t.Helper()
	testutil.MustDo(t, a.ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		var l net.Listener
		var err error
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			l, err = lc.Listen(context.Background(), network, netip.AddrPortFrom(addr, uint16(port)).String())
			if !errors.Is(err, unix.EADDRNOTAVAIL) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	})
}

// timeWait makes a connection from "from" to "to" inside the netns whose
// accepting side closes first, so that the netns keeps a TIME_WAIT socket
// for it, and returns the connection's ports.
func (a *assignNetns) timeWait(t testing.TB, from, to netip.Addr) (sport, dport uint16) {
	t.Helper()
	testutil.MustDo(t, a.ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		l, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(to.String(), "0"))
		if err != nil {
			return err
		}
		defer l.Close()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
		d.SetMultipathTCP(false)
		var c net.Conn
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			c, err = d.Dial("tcp", l.Addr().String())
			if !errors.Is(err, unix.ENETUNREACH) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			return err
		}
		s, err := l.Accept()
		if err != nil {
			c.Close()
			return err
		}
		sport = uint16(c.LocalAddr().(*net.TCPAddr).Port)
		dport = uint16(l.Addr().(*net.TCPAddr).Port)
		s.Close()
		time.Sleep(20 * time.Millisecond) // the FIN reaches the client
		c.Close()
		time.Sleep(20 * time.Millisecond) // the client's FIN puts the server's side in TIME_WAIT
		return nil
	})
	return sport, dport
}

// run runs the assign program inside the netns.
func (a *assignNetns) run(t testing.TB, f *fixture, frame []byte) result {
	t.Helper()
	return a.runProg(t, f, mrasm.ZtunnelAssign, frame, 0)
}

// runProg runs the program name on frame, with skb->mark mark, inside the
// netns.
func (a *assignNetns) runProg(t testing.TB, f *fixture, name string, frame []byte, mark uint32) result {
	t.Helper()
	var res result
	testutil.MustDo(t, a.ns, func() error {
		res = f.runCtx(t, name, frame, mrasm.SkBuff{Mark: mark})
		return nil
	})
	return res
}

// assignedTo is the outcome of a packet for which the lookup found a socket.
// BPF_PROG_TEST_RUN does not run at a real tc ingress, so the kernel refuses
// bpf_sk_assign there (the end-to-end tests prove the assignment itself):
// the refusal shows that the lookup found the socket. A packet refused by an
// established socket is marked and passed, for the stack's own lookup to
// find that socket; one refused by a listener is dropped.
func assignedTo(established bool) expect {
	if established {
		return expect{ret: mrasm.ActOK, verdict: maps.VerdictAssignFailed, mark: mrasm.TProxyMark}
	}
	return expect{ret: mrasm.ActShot, verdict: maps.VerdictAssignFailed}
}

// listener is a socket of ztunnel's: proto "tcp" or "udp", and its port.
type listener struct {
	proto string
	port  int
}

// noSocket: a captured packet without a socket is dropped, never passed on
// (ztunnel's netns may forward).
var noSocket = expect{ret: mrasm.ActShot, verdict: maps.VerdictNoSocket}

func TestZtunnelAssign(t *testing.T) {
	f := newFixture(t, mrasm.DefaultOptions())
	outbound := func(v6 bool) netip.Addr { return pick(v6, clientV4, clientV6) } // an enrolled pod
	inbound := func(v6 bool) netip.Addr { return pick(v6, remoteV4, remoteV6) }  // anyone else
	fam := func(v6 bool) string {
		if v6 {
			return "6"
		}
		return "4"
	}

	type row struct {
		name string
		// listeners to open in ztunnel's stand-in netns
		listeners []listener
		pkt       func(v6 bool) packet
		dnsOn     bool
		// podFlags are the client's (the enrolled pod's) besides EndpointPod.
		podFlags uint16
		want     expect
	}
	rows := []row{
		{name: "SYN from an enrolled pod goes to the outbound listener", listeners: []listener{{"tcp", 15001}},
			pkt: func(v6 bool) packet { return packet{src: outbound(v6), dst: pick(v6, serverV4, serverV6), dport: 8080} }, want: assignedTo(false)},
		{name: "SYN from an enrolled pod never goes to the inbound listeners", listeners: []listener{{"tcp", 15006}, {"tcp", 15008}},
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, serverV4, serverV6), dport: 15008}
			}, want: noSocket},
		{name: "SYN from elsewhere goes to the inbound listener", listeners: []listener{{"tcp", 15006}},
			pkt: func(v6 bool) packet { return packet{src: inbound(v6), dst: pick(v6, serverV4, serverV6), dport: 8080} }, want: assignedTo(false)},
		{name: "SYN from elsewhere to 15008 goes to the HBONE listener", listeners: []listener{{"tcp", 15008}},
			pkt: func(v6 bool) packet { return packet{src: inbound(v6), dst: pick(v6, serverV4, serverV6), dport: 15008} }, want: assignedTo(false)},
		{name: "SYN from elsewhere to another port never goes to the HBONE listener", listeners: []listener{{"tcp", 15008}, {"tcp", 15001}},
			pkt: func(v6 bool) packet { return packet{src: inbound(v6), dst: pick(v6, serverV4, serverV6), dport: 8080} }, want: noSocket},
		{name: "a captured packet to a port ztunnel listens on is not given to that listener", listeners: []listener{{"tcp", 15020}},
			pkt: func(v6 bool) packet { return packet{src: inbound(v6), dst: pick(v6, serverV4, serverV6), dport: 15020} }, want: noSocket},
		{name: "no listener: no socket", listeners: nil,
			pkt: func(v6 bool) packet { return packet{src: outbound(v6), dst: pick(v6, serverV4, serverV6)} }, want: noSocket},
		{name: "DNS with DNS capture on goes to the DNS listener", listeners: []listener{{"udp", 15053}}, dnsOn: true,
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}
			}, want: assignedTo(false)},
		{name: "DNS over TCP with DNS capture on goes to the DNS listener", listeners: []listener{{"tcp", 15053}, {"tcp", 15001}}, dnsOn: true,
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, dnsV4, dnsV6), dport: 53}
			}, want: assignedTo(false)},
		{name: "DNS over TCP with DNS capture off goes to the outbound listener", listeners: []listener{{"tcp", 15001}},
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, dnsV4, dnsV6), dport: 53}
			}, want: assignedTo(false)},
		{name: "DNS over TCP of a pod that bypasses DNS capture goes to the outbound listener", listeners: []listener{{"tcp", 15001}}, dnsOn: true,
			podFlags: maps.EndpointBypassDNS,
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, dnsV4, dnsV6), dport: 53}
			}, want: assignedTo(false)},
		{name: "DNS of a pod that bypasses DNS capture does not go to the DNS listener", listeners: []listener{{"udp", 15053}}, dnsOn: true,
			podFlags: maps.EndpointBypassDNS,
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}
			}, want: noSocket},
		{name: "a query to a pod's port 53 from elsewhere never reaches the DNS proxy", listeners: []listener{{"udp", 15053}}, dnsOn: true,
			pkt: func(v6 bool) packet {
				return packet{src: inbound(v6), dst: pick(v6, serverV4, serverV6), proto: layers.IPProtocolUDP, dport: 53}
			}, want: noSocket},
		{name: "UDP other than DNS gets no socket", listeners: []listener{{"udp", 15053}, {"udp", 15001}}, dnsOn: true,
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, remoteV4, remoteV6), proto: layers.IPProtocolUDP, dport: 443}
			}, want: noSocket},
		{name: "DNS with DNS capture off does not go to the DNS listener", listeners: []listener{{"udp", 15053}},
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, dnsV4, dnsV6), proto: layers.IPProtocolUDP, dport: 53}
			}, want: noSocket},
		{name: "packets to ztunnel's own IP were not captured: passed", listeners: []listener{{"tcp", 15006}, {"tcp", 15001}},
			pkt: func(v6 bool) packet { return packet{src: inbound(v6), dst: pick(v6, ztV4, ztV6), dport: 15021} }, want: passed},
		{name: "an ACK of an existing flow is marked for ztunnel's stack, without a lookup", listeners: []listener{{"tcp", 15001}},
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, serverV4, serverV6), dport: 8080, ack: true}
			}, want: expect{ret: mrasm.ActOK, verdict: maps.VerdictMarked, mark: mrasm.TProxyMark}},
		{name: "an ACK to ztunnel's own IP is not marked", listeners: nil,
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, ztV4, ztV6), dport: 15001, ack: true}
			}, want: passed},
		{name: "ICMP passes", listeners: []listener{{"tcp", 15001}},
			pkt: func(v6 bool) packet {
				p := layers.IPProtocolICMPv4
				if v6 {
					p = layers.IPProtocolICMPv6
				}
				return packet{src: outbound(v6), dst: pick(v6, serverV4, serverV6), proto: p}
			}, want: passed},
		{name: "a captured later fragment is dropped (no ports to look up)", listeners: []listener{{"tcp", 15001}},
			pkt: func(v6 bool) packet {
				p := packet{src: outbound(v6), dst: pick(v6, serverV4, serverV6), fragOffset: 20}
				if v6 {
					p.ext = []layers.IPProtocol{layers.IPProtocolIPv6Fragment}
				}
				return p
			}, want: noSocket},
		{name: "a captured protocol other than TCP and UDP is dropped", listeners: []listener{{"tcp", 15001}},
			pkt: func(v6 bool) packet {
				return packet{src: outbound(v6), dst: pick(v6, serverV4, serverV6), proto: layers.IPProtocolGRE}
			}, want: noSocket},
	}
	for _, r := range rows {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/IPv%s", r.name, fam(v6)), func(t *testing.T) {
				flags := maps.ZtunnelReady
				if r.dnsOn {
					flags |= maps.ZtunnelCaptureDNS
				}
				f.setZtunnel(t, flags)
				f.enrolClient(t, r.podFlags)
				a := newAssignNetns(t)
				for _, l := range r.listeners {
					a.listen(t, l.proto+fam(v6), l.port)
				}
				in := r.pkt(v6).build(t)
				check(t, in, a.run(t, f, in), r.want)
			})
		}
	}

	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("a listener bound to one address is not found by the wildcard lookup/IPv%s", fam(v6)), func(t *testing.T) {
			f.setZtunnel(t, maps.ZtunnelReady)
			a := newAssignNetns(t)
			a.listenOn(t, "tcp"+fam(v6), pick(v6, remoteV4, remoteV6), mrasm.PortOutbound)
			in := packet{src: outbound(v6), dst: pick(v6, remoteV4, remoteV6)}.build(t)
			check(t, in, a.run(t, f, in), noSocket)
		})
		t.Run(fmt.Sprintf("a SYN reusing a TIME_WAIT tuple goes to the listener, not the TIME_WAIT socket/IPv%s", fam(v6)), func(t *testing.T) {
			f.setZtunnel(t, maps.ZtunnelReady)
			a := newAssignNetns(t)
			a.listen(t, "tcp"+fam(v6), mrasm.PortOutbound)
			// ztunnel's side of a proxied connection that closed first:
			// it keeps the tuple in TIME_WAIT.
			sport, dport := a.timeWait(t, outbound(v6), inbound(v6))
			in := packet{src: outbound(v6), dst: inbound(v6), sport: sport, dport: dport}.build(t)
			check(t, in, a.run(t, f, in), assignedTo(false))
		})
		t.Run(fmt.Sprintf("a SYN reusing the tuple of an established connection goes to its socket, marked/IPv%s", fam(v6)), func(t *testing.T) {
			f.setZtunnel(t, maps.ZtunnelReady)
			a := newAssignNetns(t)
			// ztunnel's connection to a remote server, made from the
			// client's address: the server's reply carries that tuple.
			a.listen(t, "tcp"+fam(v6), mrasm.PortOutbound)
			sport, dport := a.connect(t, outbound(v6), inbound(v6))
			in := packet{src: inbound(v6), dst: outbound(v6), sport: dport, dport: sport}.build(t)
			check(t, in, a.run(t, f, in), assignedTo(true))
		})
	}
}
