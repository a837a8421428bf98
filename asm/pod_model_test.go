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
			return oMarked // the stack's own lookup finds its socket
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
// from the family's loopback address, port 15053, with no IPv4 options or
// IPv6 extension header, not a fragment.
func dnsReplyOf(frame []byte) (client netip.AddrPort, v6, ok bool) {
	p := parse(frame)
	x := p.ip
	switch {
	case p.etherType == 0x0800 && !p.bad:
		if frame[14] != 0x45 || be16At(frame, 20)&0x3fff != 0 || x.proto != 17 || x.src != netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
			return client, false, false
		}
	case p.etherType == 0x86dd && !p.bad:
		if frame[20] != 17 || x.src != netip.IPv6Loopback() {
			return client, false, false
		}
	default:
		return client, false, false
	}
	if x.l4+8 > len(frame) {
		return client, false, false
	}
	sport, dport, _ := ports(frame, x.l4)
	if sport != 15053 {
		return client, false, false
	}
	return netip.AddrPortFrom(x.dst, dport), x.v6, true
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

// podLoopbackFrame is the frame pod_loopback leaves: a DNS reply to a
// client with a record gets the recorded destination as its source, the
// checksums updated as the kernel's bpf_l3_csum_replace and
// bpf_l4_csum_replace update them (RFC 1624, eqn. 3; BPF_F_MARK_MANGLED_0:
// an IPv4 UDP checksum of zero stays zero, a computed zero becomes 0xffff).
func (w world) podLoopbackFrame(frame []byte, mark uint32) []byte {
	out := bytes.Clone(frame)
	if mark&mrasm.TProxyMask == mrasm.TProxyMark {
		return out
	}
	client, v6, ok := dnsReplyOf(frame)
	if !ok || w.dnsOrig == nil {
		return out
	}
	orig, ok := w.dnsOrig(client)
	if !ok {
		return out
	}
	// The record's 16 bytes, or their last 4 over IPv4 (a record made by
	// an IPv4 query is v4-mapped).
	a := orig.Addr().As16()
	oldAddr, newAddr := []byte{127, 0, 0, 1}, a[12:]
	saddr, l4 := 26, 34
	if v6 {
		oldAddr, newAddr = netip.IPv6Loopback().AsSlice(), a[:]
		saddr, l4 = 22, 54
	} else {
		binary.BigEndian.PutUint16(out[24:], csumReplace(be16At(out, 24), oldAddr, newAddr))
	}
	newPort := binary.BigEndian.AppendUint16(nil, orig.Port())
	mangled := func(sum uint16) uint16 {
		if sum == 0 {
			return 0xffff
		}
		return sum
	}
	if sum := be16At(out, l4+6); sum != 0 {
		sum = mangled(csumReplace(sum, oldAddr, newAddr))
		sum = mangled(csumReplace(sum, []byte{0x3a, 0xcd}, newPort))
		binary.BigEndian.PutUint16(out[l4+6:], sum)
	}
	copy(out[saddr:], newAddr)
	copy(out[l4:], newPort)
	return out
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
