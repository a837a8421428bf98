package asm_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
)

// The in-pod programs (DESIGN.md §5 for in-pod mode, §6), stated a second
// time in plain Go over the frame's bytes, as model_test.go does for node
// mode. The in-pod world differs from the node's in three ways:
//   - the pod's own addresses are the ones built into the programs
//     (world.pod), compared byte for byte: no v4-mapped IPv6 address is
//     ever the pod's IPv4 address;
//   - what is captured goes to lo's ingress, marked, whatever ztunnel's
//     readiness (world.inPod): pod_loopback fails closed when ztunnel has no
//     listener in the pod;
//   - ztunnel's listeners are sockets of the pod's netns (world.listeners:
//     whether ztunnel opened them), found by pod_loopback and pod_ingress.
// The fuzz netns holds no connection, so no exact-tuple lookup finds a
// socket other than a listener, and the node's netns id is unknown: no TCP
// segment is ever the node's own.

// podEgress: ztunnel's own packets pass; the rest is app_outbound's table
// with the pod's own addresses and capture to lo.
func (w world) podEgress(frame []byte, mark uint32) outcome {
	if mark&mrasm.ZtunnelMarkMask == mrasm.ZtunnelMark {
		return oPass
	}
	return w.appOutbound(frame)
}

// podLoopback: a packet pod_egress marked goes to one of ztunnel's sockets
// or is dropped; everything else on lo passes.
func (w world) podLoopback(frame []byte, mark uint32) outcome {
	if mark&mrasm.TProxyMask != mrasm.TProxyMark {
		return oPass
	}
	p := parse(frame)
	if p.etherType != 0x0800 && p.etherType != 0x86dd || p.bad {
		return oNoSocket
	}
	x := p.ip
	icmp := (!x.v6 && x.proto == 1) || (x.v6 && x.proto == 58)
	switch {
	case x.later:
		return oNoSocket
	case icmp:
		return oPass
	case x.proto == 6:
		if x.l4+14 > len(frame) {
			return oNoSocket
		}
		if frame[x.l4+13]&0x12 != 0x02 {
			return oMarked // the stack's own lookup finds its socket (after dnsTCPRewrite)
		}
		if _, dport, _ := ports(frame, x.l4); w.dnsCaptured(x.src, dport) && !dnsTCPRewritable(frame) {
			return oNoSocket // the NAT to 15053 takes no options, extension headers or cut header
		}
		return w.listener() // 15053 for captured DNS, else 15001: both ztunnel's
	case x.proto == 17:
		_, dport, ok := ports(frame, x.l4)
		if ok && w.dnsCaptured(x.src, dport) {
			return w.listener()
		}
	}
	return oNoSocket
}

// dnsCaptured: a query to port 53 while DNS capture is on, from a pod that
// did not opt out.
func (w world) dnsCaptured(src netip.Addr, dport uint16) bool {
	return dport == 53 && w.ztFlags&maps.ZtunnelCaptureDNS != 0 && !w.has(src, maps.EndpointBypassDNS)
}

// listener is the outcome of a packet given to a listener of ztunnel's: in
// BPF_PROG_TEST_RUN the kernel refuses the assignment (assign_failed) and
// the program drops it; without the listener it is dropped too.
func (w world) listener() outcome {
	if w.listeners {
		return oToListener
	}
	return oNoSocket
}

// podIngress: HBONE passes; other TCP goes to ztunnel's 15006 unless it is
// forged with an ambient pod's source or the pod bypasses inbound capture;
// UDP to ztunnel's DNS proxy is dropped; the rest is app_inbound's.
func (w world) podIngress(frame []byte) outcome {
	p := parse(frame)
	x := p.ip
	if (p.etherType == 0x0800 || p.etherType == 0x86dd) && !p.bad && !x.later {
		switch x.proto {
		case 6:
			if x.l4+14 > len(frame) {
				return oParseErr
			}
			_, dport, _ := ports(frame, x.l4)
			switch {
			case dport == 15008:
				return oPass
			case w.isPod(x.src):
				return oSpoofed
			case w.own(x.dst) && w.has(x.dst, maps.EndpointBypassInbound):
				return oPass
			}
			return w.listener()
		case 17:
			_, dport, ok := ports(frame, x.l4)
			if !ok {
				return oParseErr
			}
			if dport == 15053 {
				return oPolicy
			}
		}
	}
	return w.appInbound(frame, 0)
}

// isPod reports whether the endpoints map gives a to an ambient pod.
func (w world) isPod(a netip.Addr) bool {
	ep, ok := w.lookup(a)
	return ok && ep.IsPod()
}

// ownPod is own for the in-pod world: one of the addresses built into the
// programs, byte for byte.
func (w world) ownPod(a netip.Addr) bool { return slices.Contains(w.pod, a) }

// podOutcome is the in-pod model's outcome for prog.
func (w world) podOutcome(prog string, frame []byte, mark uint32) outcome {
	switch prog {
	case mrasm.PodEgress:
		return w.podEgress(frame, mark)
	case mrasm.PodLoopback:
		return w.podLoopback(frame, mark)
	}
	return w.podIngress(frame)
}

// podFrame is the frame the model says prog leaves: pod_egress gives what
// it captures lo's MAC, pod_loopback rewrites ztunnel's DNS replies;
// nothing else changes.
func (w world) podFrame(prog string, frame []byte, mark uint32) []byte {
	switch {
	case prog == mrasm.PodLoopback:
		return w.podLoopbackFrame(frame, mark)
	case prog == mrasm.PodEgress && w.podEgress(frame, mark) == oLoopback:
		out := bytes.Clone(frame)
		copy(out, loMAC)
		return out
	}
	return bytes.Clone(frame)
}

// dnsReplyOf returns the client (destination address and port) of frame
// when it is a reply of ztunnel's DNS proxy as pod_loopback knows one: UDP
// or TCP (tcp) from the family's loopback address, port 15053, with no
// IPv4 options or IPv6 extension header, not a fragment, its L4 header
// whole.
func dnsReplyOf(frame []byte) (client netip.AddrPort, tcp, ok bool) {
	p := parse(frame)
	x := p.ip
	switch {
	case p.etherType == 0x0800 && !p.bad:
		if frame[14] != 0x45 || be16At(frame, 20)&0x3fff != 0 || x.src != netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
			return client, false, false
		}
	case p.etherType == 0x86dd && !p.bad:
		if x.src != netip.IPv6Loopback() {
			return client, false, false
		}
	default:
		return client, false, false
	}
	next := frame[23]
	if x.v6 {
		next = frame[20]
	}
	hlen := 8
	switch {
	case next == 6 && x.proto == 6:
		tcp, hlen = true, 20
	case next == 17 && x.proto == 17:
	default:
		return client, false, false
	}
	if x.l4+hlen > len(frame) {
		return client, false, false
	}
	sport, dport, _ := ports(frame, x.l4)
	if sport != 15053 {
		return client, false, false
	}
	return netip.AddrPortFrom(x.dst, dport), tcp, true
}

// dnsQueryOf returns the client and the original destination of a
// captured UDP DNS query that pod_loopback gives ztunnel's DNS socket.
func (w world) dnsQueryOf(frame []byte, mark uint32) (client, orig netip.AddrPort, ok bool) {
	if w.podLoopback(frame, mark) != oToListener {
		return client, orig, false
	}
	x := parse(frame).ip
	if x.proto != 17 {
		return client, orig, false
	}
	sport, dport, _ := ports(frame, x.l4)
	return netip.AddrPortFrom(x.src, sport), netip.AddrPortFrom(x.dst, dport), true
}

// dnsTCPRewritable: an IP frame whose TCP header is right after the fixed
// IP header (no IPv4 options, no IPv6 extension header) and whole.
func dnsTCPRewritable(frame []byte) bool {
	p := parse(frame)
	x := p.ip
	fixed := 34
	if x.v6 {
		fixed = 54
	}
	return !p.bad && x.proto == 6 && !x.later && x.l4 == fixed && x.l4+20 <= len(frame)
}

// dnsTCPConnectOf returns the client and the original destination of a
// captured DNS connection request that pod_loopback records and sends to
// ztunnel's DNS proxy (dnsTCPConnect), whether or not the proxy listens.
func (w world) dnsTCPConnectOf(frame []byte, mark uint32) (client, orig netip.AddrPort, ok bool) {
	if mark&mrasm.TProxyMask != mrasm.TProxyMark || !dnsTCPRewritable(frame) {
		return client, orig, false
	}
	x := parse(frame).ip
	sport, dport, _ := ports(frame, x.l4)
	if frame[x.l4+13]&0x12 != 0x02 || !w.dnsCaptured(x.src, dport) {
		return client, orig, false
	}
	return netip.AddrPortFrom(x.src, sport), netip.AddrPortFrom(x.dst, dport), true
}

// dnsTCPSegmentOf reports whether pod_loopback rewrites the destination of
// a marked TCP segment that is not a connection request
// (dnsTCPSegment): to port 53, its source recorded as a client connected
// to its destination.
func (w world) dnsTCPSegmentOf(frame []byte, mark uint32) bool {
	if mark&mrasm.TProxyMask != mrasm.TProxyMark || !dnsTCPRewritable(frame) || w.dnsTCP == nil {
		return false
	}
	x := parse(frame).ip
	sport, dport, _ := ports(frame, x.l4)
	if dport != 53 || frame[x.l4+13]&0x12 == 0x02 {
		return false
	}
	orig, ok := w.dnsTCP(netip.AddrPortFrom(x.src, sport))
	return ok && orig == netip.AddrPortFrom(x.dst, dport)
}

// rewriteAddrPort is frame with the address at addrOff and the port at
// portOff made to's, the checksums updated as bpf_l3_csum_replace and
// bpf_l4_csum_replace update them (RFC 1624, eqn. 3): the IPv4 header's,
// and the L4 checksum at csumOff, through its pseudo-header; with mangled
// (BPF_F_MARK_MANGLED_0, UDP) a checksum of zero stays zero and a computed
// zero becomes 0xffff.
func rewriteAddrPort(frame []byte, v6 bool, addrOff, portOff, csumOff int, to netip.AddrPort, mangled bool) []byte {
	out := bytes.Clone(frame)
	a := to.Addr().As16()
	n := 4
	newAddr := a[12:]
	if v6 {
		n, newAddr = 16, a[:]
	}
	oldAddr := bytes.Clone(out[addrOff : addrOff+n])
	if !v6 {
		binary.BigEndian.PutUint16(out[24:], csumReplace(be16At(out, 24), oldAddr, newAddr))
	}
	newPort := binary.BigEndian.AppendUint16(nil, to.Port())
	fix := func(sum uint16) uint16 {
		if mangled && sum == 0 {
			return 0xffff
		}
		return sum
	}
	if sum := be16At(out, csumOff); sum != 0 || !mangled {
		sum = fix(csumReplace(sum, oldAddr, newAddr))
		sum = fix(csumReplace(sum, out[portOff:portOff+2], newPort))
		binary.BigEndian.PutUint16(out[csumOff:], sum)
	}
	copy(out[addrOff:], newAddr)
	copy(out[portOff:], newPort)
	return out
}

// podLoopbackFrame is the frame pod_loopback leaves: a DNS reply to a
// client with a record gets the recorded destination as its source, the
// checksums updated as the kernel's bpf_l3_csum_replace and
// bpf_l4_csum_replace update them (RFC 1624, eqn. 3; BPF_F_MARK_MANGLED_0:
// an IPv4 UDP checksum of zero stays zero, a computed zero becomes 0xffff).
func (w world) podLoopbackFrame(frame []byte, mark uint32) []byte {
	v6 := parse(frame).ip.v6
	daddr, saddr, l4 := 30, 26, 34
	if v6 {
		daddr, saddr, l4 = 38, 22, 54
	}
	proxy := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), mrasm.PortDNS)
	if v6 {
		proxy = netip.AddrPortFrom(netip.IPv6Loopback(), mrasm.PortDNS)
	}
	if mark&mrasm.TProxyMask == mrasm.TProxyMark {
		if _, _, ok := w.dnsTCPConnectOf(frame, mark); ok || w.dnsTCPSegmentOf(frame, mark) {
			return rewriteAddrPort(frame, v6, daddr, l4+2, l4+16, proxy, false)
		}
		return bytes.Clone(frame)
	}
	client, tcp, ok := dnsReplyOf(frame)
	records := w.dnsOrig
	if tcp {
		records = w.dnsTCP
	}
	if !ok || records == nil {
		return bytes.Clone(frame)
	}
	orig, ok := records(client)
	if !ok {
		return bytes.Clone(frame)
	}
	if tcp {
		return rewriteAddrPort(frame, v6, saddr, l4, l4+16, orig, false)
	}
	return rewriteAddrPort(frame, v6, saddr, l4, l4+6, orig, true)
}

// csumReplace is the checksum sum after the bytes from became to: the
// kernel's csum_replace4 and inet_proto_csum_replace4, whose sum starts
// from ~csum_unfold(sum), never zero as a 32-bit value.
func csumReplace(sum uint16, from, to []byte) uint16 {
	acc := uint64(0xffff0000 | uint32(^sum))
	for i := 0; i < len(from); i += 2 {
		acc += uint64(^be16At(from, i))
	}
	for i := 0; i < len(to); i += 2 {
		acc += uint64(be16At(to, i))
	}
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

// be16At reads a big-endian 16-bit field.
func be16At(b []byte, off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }
