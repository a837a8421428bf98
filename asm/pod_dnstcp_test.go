package asm_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
)

// TestPodDNSOverTCP holds pod_loopback's NAT of DNS over TCP to its rows:
// ztunnel's DNS proxy listens on 127.0.0.1:15053 and [::1]:15053 without
// IP_TRANSPARENT, so a captured connection to a resolver is made one to
// the proxy (the destination of every segment of a recorded connection
// rewritten, checksums updated), and the proxy's segments get the
// resolver's address and port back. Records are made only from what
// pod_egress marked, and only for a connection request. Each row runs
// once per family; the expected frame is built with checksums computed
// from scratch.
func TestPodDNSOverTCP(t *testing.T) {
	f := newPodFixture(t, -1)
	pod := newAssignNetns(t)
	for _, fam := range []string{"4", "6"} {
		pod.listenLoopback(t, "tcp"+fam, mrasm.PortDNS)
		pod.listen(t, "tcp"+fam, mrasm.PortOutbound)
	}
	bare := newAssignNetns(t)
	dnsOn := maps.ZtunnelReady | maps.ZtunnelCaptureDNS
	client := func(v6 bool) netip.Addr { return pick(v6, clientV4, clientV6) }
	resolver := func(v6 bool) netip.Addr { return pick(v6, dnsV4, dnsV6) }
	proxy := func(v6 bool) netip.AddrPort {
		return netip.AddrPortFrom(pick(v6, loopbackV4, loopbackV6), mrasm.PortDNS)
	}
	type rewrite int
	const (
		none rewrite = iota
		toProxy
		fromResolver
	)
	type row struct {
		name     string
		prog     string
		flags    uint16
		podFlags uint16
		mark     uint32
		noProxy  bool
		// record is put in the dnstcp map before the run (client port,
		// original destination port; zero: none); udpRecord in dnsorig.
		record, udpRecord [2]uint16
		frame             func(v6 bool) packet
		want              outcome
		rewrite           rewrite
		// recorded is the client port's record after the run (its
		// original destination port; zero: none).
		recorded uint16
	}
	seg := func(port uint16, ack bool) func(bool) packet {
		return func(v6 bool) packet {
			return packet{src: client(v6), dst: resolver(v6), sport: port, dport: 53, ack: ack, payload: []byte("a query")}
		}
	}
	reply := func(sport, port uint16, synack bool) func(bool) packet {
		return func(v6 bool) packet {
			return packet{src: proxy(v6).Addr(), dst: client(v6), sport: sport, dport: port, ack: !synack, synack: synack, payload: []byte("an answer of odd length")}
		}
	}
	m := uint32(mrasm.TProxyMark)
	rows := []row{
		{name: "a captured DNS connection request is recorded and sent to the proxy", prog: mrasm.PodLoopback, flags: dnsOn, mark: m,
			frame: seg(42000, false), want: oToListener, rewrite: toProxy, recorded: 53},
		{name: "a request from the same port replaces the record", prog: mrasm.PodLoopback, flags: dnsOn, mark: m,
			record: [2]uint16{42001, 5353}, frame: seg(42001, false), want: oToListener, rewrite: toProxy, recorded: 53},
		{name: "no proxy listening: the request is dropped, rewritten and recorded", prog: mrasm.PodLoopback, flags: dnsOn, mark: m, noProxy: true,
			frame: seg(42002, false), want: oNoSocket, rewrite: toProxy, recorded: 53},
		{name: "a segment of a recorded connection is sent to the proxy, left marked", prog: mrasm.PodLoopback, mark: m,
			record: [2]uint16{42003, 53}, frame: seg(42003, true), want: oMarked, rewrite: toProxy, recorded: 53},
		{name: "a segment of a recorded connection follows it with capture off now", prog: mrasm.PodLoopback, flags: maps.ZtunnelReady, mark: m,
			record: [2]uint16{42004, 53}, frame: seg(42004, true), want: oMarked, rewrite: toProxy, recorded: 53},
		{name: "a segment whose record names another destination is not touched", prog: mrasm.PodLoopback, mark: m,
			record: [2]uint16{42005, 5353}, frame: seg(42005, true), want: oMarked, recorded: 5353},
		{name: "a segment without a record is not touched", prog: mrasm.PodLoopback, mark: m,
			frame: seg(42006, true), want: oMarked},
		{name: "a UDP record does not make a TCP segment the proxy's", prog: mrasm.PodLoopback, mark: m,
			udpRecord: [2]uint16{42007, 53}, frame: seg(42007, true), want: oMarked},
		{name: "a request with DNS capture off goes to the outbound listener, no record", prog: mrasm.PodLoopback, mark: m,
			frame: seg(42008, false), want: oToListener},
		{name: "a request of a pod that bypasses DNS capture goes to the outbound listener, no record", prog: mrasm.PodLoopback, flags: dnsOn, mark: m,
			podFlags: maps.EndpointBypassDNS, frame: seg(42009, false), want: oToListener},
		{name: "an unmarked request on lo creates no record", prog: mrasm.PodLoopback, flags: dnsOn,
			frame: seg(42010, false), want: oPass},
		{name: "a request leaving eth0 is recorded by pod_loopback only", prog: mrasm.PodEgress, flags: dnsOn,
			frame: seg(42011, false), want: oLoopback},
		{name: "a request from outside creates no record", prog: mrasm.PodIngress, flags: dnsOn,
			frame: func(v6 bool) packet { return packet{src: resolver(v6), dst: client(v6), sport: 42012, dport: 53} }, want: oNoSocket /* no 15006 here */},
		{name: "the proxy's SYN-ACK gets the resolver's source", prog: mrasm.PodLoopback,
			record: [2]uint16{42013, 53}, frame: reply(mrasm.PortDNS, 42013, true), want: oPass, rewrite: fromResolver, recorded: 53},
		{name: "the proxy's answer gets the resolver's source, with its mark too", prog: mrasm.PodLoopback, mark: mrasm.ZtunnelMark,
			record: [2]uint16{42014, 53}, frame: reply(mrasm.PortDNS, 42014, false), want: oPass, rewrite: fromResolver, recorded: 53},
		{name: "a reply to a connection to another port gets that port", prog: mrasm.PodLoopback,
			record: [2]uint16{42015, 5353}, frame: reply(mrasm.PortDNS, 42015, false), want: oPass, rewrite: fromResolver, recorded: 5353},
		{name: "a reply without a TCP record passes unchanged (a UDP record is not one)", prog: mrasm.PodLoopback,
			udpRecord: [2]uint16{42016, 53}, frame: reply(mrasm.PortDNS, 42016, false), want: oPass},
		{name: "a segment from the loopback address's other port is not touched", prog: mrasm.PodLoopback,
			record: [2]uint16{42017, 53}, frame: reply(15054, 42017, false), want: oPass, recorded: 53},
	}
	for _, r := range rows {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/%s", r.name, map[bool]string{false: "IPv4", true: "IPv6"}[v6]), func(t *testing.T) {
				f.setZtunnelOrReady(t, r.flags)
				f.enrolClient(t, r.podFlags)
				p := r.frame(v6)
				key := dnsClient(p, client(v6))
				putDNSRecord(t, f.maps.DNSTCP, client(v6), resolver(v6), r.record)
				putDNSRecord(t, f.maps.DNSOrig, client(v6), resolver(v6), r.udpRecord)
				in := p.build(t)
				if err := tcpChecksumsOK(in, v6); err != nil {
					t.Fatalf("the row's frame: %v", err)
				}
				ns := pod
				if r.noProxy {
					ns = bare
				}
				res := ns.runProg(t, f, r.prog, in, r.mark)
				checkOutcome(t, res, r.want)
				out := res.out[:len(in)]
				want := bytes.Clone(in)
				switch r.rewrite {
				case toProxy:
					want = rewriteTCP(in, v6, false, proxy(v6))
				case fromResolver:
					want = rewriteTCP(in, v6, true, netip.AddrPortFrom(resolver(v6), r.recorded))
				}
				if r.want == oLoopback {
					copy(want, loMAC)
				}
				if !bytes.Equal(out, want) {
					t.Errorf("frame\n in   %x\n out  %x\n want %x", in, out, want)
				}
				if err := tcpChecksumsOK(out, v6); err != nil {
					t.Errorf("after the run: %v\n frame %x", err, out)
				}
				checkDNSRecord(t, f.maps.DNSTCP, key, resolver(v6), r.recorded)
				f.maps.DNSTCP.Delete(maps.SockAddrOf(key))
				f.maps.DNSOrig.Delete(maps.SockAddrOf(key))
			})
		}
	}
}

// rewriteTCP is a TCP frame (no IPv4 options or IPv6 extension headers)
// with its source (source) or destination address and port made to's, the
// checksums computed from scratch.
func rewriteTCP(frame []byte, v6, source bool, to netip.AddrPort) []byte {
	out := bytes.Clone(frame)
	l4, addr, port := 34, 30, 2
	if v6 {
		l4, addr = 54, 38
	}
	if source {
		addr, port = addr-4, 0
		if v6 {
			addr = 22
		}
	}
	if v6 {
		a := to.Addr().As16()
		copy(out[addr:], a[:])
	} else {
		a := to.Addr().As4()
		copy(out[addr:], a[:])
		setIPv4Checksum(out)
	}
	binary.BigEndian.PutUint16(out[l4+port:], to.Port())
	out[l4+16], out[l4+17] = 0, 0
	binary.BigEndian.PutUint16(out[l4+16:], ^segmentSum(out, v6, protoTCP, tcpOf(out, v6)))
	return out
}

// tcpChecksumsOK recomputes the IPv4 header checksum and the TCP checksum
// of a frame.
func tcpChecksumsOK(frame []byte, v6 bool) error {
	if !v6 {
		if err := ipv4ChecksumOK(frame); err != nil {
			return err
		}
	}
	if s := segmentSum(frame, v6, protoTCP, tcpOf(frame, v6)); s != 0xffff {
		return fmt.Errorf("TCP checksum is wrong (sum %#04x)", s)
	}
	return nil
}

// tcpOf is the TCP segment of a frame, by the IP header's length fields.
func tcpOf(frame []byte, v6 bool) []byte {
	if v6 {
		return frame[54 : 54+int(binary.BigEndian.Uint16(frame[18:]))]
	}
	return frame[34 : 14+int(binary.BigEndian.Uint16(frame[16:]))]
}
