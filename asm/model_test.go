package asm_test

import (
	"encoding/binary"
	"net/netip"
	"slices"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
)

// This file is DESIGN.md §5 written a second time, in plain Go over the
// frame's bytes, independently of the programs: model(frame) says what the
// program must do with it. The packet tables check the model against the
// rows of §5 they spell out; the fuzz targets then check every program
// against the model on frames nobody wrote down, and the attack corpus
// checks that no variant of a passing packet passes where §5 does not let
// it.

// world is what the model knows of the node: the endpoints map, ztunnel's
// flags, and the sockets that the probe-reply rule asks about.
type world struct {
	endpoints map[netip.Addr]maps.Endpoint
	ztFlags   uint16
	ztIfindex uint32
	// self is skb->ifindex: the veth the program runs on.
	self uint32
	// nodeSocket and ztunnelSocket say whether the node's netns and
	// ztunnel's hold a non-listening TCP socket for a packet's tuple.
	nodeSocket, ztunnelSocket func(tuple) bool
	// relays are the node's UDP tunnel ports.
	relays []uint16
	// In-pod mode (pod_model_test.go): pod are the addresses built into
	// the programs, inPod sends what is captured to lo whatever ztunnel's
	// readiness, listeners says ztunnel's listeners are open in the pod.
	pod       []netip.Addr
	inPod     bool
	listeners bool
	// dnsOrig is the dnsorig map: the original destination of a client's
	// DNS query.
	dnsOrig func(client netip.AddrPort) (netip.AddrPort, bool)
	// dnsTCP is the dnstcp map: the original destination of a client's
	// DNS connection.
	dnsTCP func(client netip.AddrPort) (netip.AddrPort, bool)
}

// tuple is a packet's TCP addresses and ports.
type tuple struct {
	src, dst     netip.Addr
	sport, dport uint16
}

// outcome is what a program does with a frame.
type outcome struct {
	verdict maps.Verdict
	ret     int32
}

var (
	oPass      = outcome{maps.VerdictPassed, mrasm.ActUnspec}
	oParseErr  = outcome{maps.VerdictParseError, mrasm.ActShot}
	oSpoofed   = outcome{maps.VerdictDroppedSpoofed, mrasm.ActShot}
	oProtocol  = outcome{maps.VerdictDroppedProtocol, mrasm.ActShot}
	oFragment  = outcome{maps.VerdictDroppedFragment, mrasm.ActShot}
	oPolicy    = outcome{maps.VerdictDroppedPolicy, mrasm.ActShot}
	oRelay     = outcome{maps.VerdictDroppedRelay, mrasm.ActShot}
	oNoZtunnel = outcome{maps.VerdictDroppedNoZtunnel, mrasm.ActShot}
	oOut       = outcome{maps.VerdictRedirectedOut, mrasm.ActRedirect}
	oIn        = outcome{maps.VerdictRedirectedIn, mrasm.ActRedirect}
	oBypass    = outcome{maps.VerdictBypass, mrasm.ActRedirect}
)

// ip is a frame's IP layer as the model parses it.
type ip struct {
	v6         bool
	src, dst   netip.Addr
	proto      int
	l4         int  // offset of the L4 header in the frame
	later      bool // a later fragment
	options    bool // IPv4 options or IPv6 extension headers before l4
	hopLimit   int
	fragmentOK bool // an IPv6 later fragment with nothing but its fragment header
}

// parsed is the result of parsing a frame; bad is set when it cannot be
// classified (a parse error).
type parsed struct {
	etherType uint16
	ip        ip
	bad       bool
}

func parse(frame []byte) parsed {
	if len(frame) < 14 {
		return parsed{bad: true}
	}
	p := parsed{etherType: binary.BigEndian.Uint16(frame[12:14])}
	switch p.etherType {
	case 0x0800:
		p.ip, p.bad = parseV4(frame)
	case 0x86dd:
		p.ip, p.bad = parseV6(frame)
	}
	return p
}

func parseV4(frame []byte) (ip, bool) {
	if len(frame) < 34 || frame[14]>>4 != 4 || frame[14]&0xf < 5 {
		return ip{}, true
	}
	hlen := int(frame[14]&0xf) * 4
	if 14+hlen > len(frame) {
		return ip{}, true
	}
	r := ip{
		src:      netip.AddrFrom4([4]byte(frame[26:30])),
		dst:      netip.AddrFrom4([4]byte(frame[30:34])),
		proto:    int(frame[23]),
		l4:       14 + hlen,
		later:    binary.BigEndian.Uint16(frame[20:22])&0x1fff != 0,
		options:  hlen > 20,
		hopLimit: int(frame[22]),
	}
	return r, false
}

func parseV6(frame []byte) (ip, bool) {
	if len(frame) < 54 || frame[14]>>4 != 6 {
		return ip{}, true
	}
	r := ip{
		v6:       true,
		src:      netip.AddrFrom16([16]byte(frame[22:38])),
		dst:      netip.AddrFrom16([16]byte(frame[38:54])),
		hopLimit: int(frame[21]),
	}
	next, off := int(frame[20]), 54
	for i := 0; ; i++ {
		switch next {
		case 0, 43, 60, 51, 44: // hop-by-hop, routing, destination options, AH, fragment
		default:
			r.proto, r.l4, r.options = next, off, off != 54
			return r, false
		}
		if i == 6 {
			return ip{}, true // a chain longer than the walk
		}
		if off+8 > len(frame) {
			return ip{}, true
		}
		hdrNext := int(frame[off])
		switch next {
		case 44:
			if binary.BigEndian.Uint16(frame[off+2:off+4])&0xfff8 != 0 {
				r.proto, r.later, r.l4 = hdrNext, true, off+8
				r.fragmentOK = off == 54
				return r, false
			}
			off += 8
		case 51:
			off += (int(frame[off+1]) + 2) * 4
		default:
			off += (int(frame[off+1]) + 1) * 8
		}
		next = hdrNext
	}
}

// lookup is the endpoints map.
func (w world) lookup(a netip.Addr) (maps.Endpoint, bool) {
	ep, ok := w.endpoints[a.Unmap()]
	return ep, ok
}

// own reports whether a is an ambient pod's address on the program's veth.
func (w world) own(a netip.Addr) bool {
	if w.inPod {
		return w.ownPod(a)
	}
	ep, ok := w.lookup(a)
	return ok && ep.IsPod() && ep.Ifindex == w.self
}

func (w world) has(a netip.Addr, flag uint16) bool {
	ep, ok := w.lookup(a)
	return ok && ep.Flags&flag != 0
}

func (w world) strict(podFlags uint16) bool {
	return w.ztFlags&maps.ZtunnelUDPDrop != 0 || podFlags&maps.EndpointUDPDrop != 0
}

func (w world) capture(out outcome) outcome {
	switch {
	case w.inPod:
		return oLoopback
	case w.ztFlags&maps.ZtunnelReady != 0:
		return out
	case w.ztFlags&maps.ZtunnelFailOpen != 0:
		return oPass
	}
	return oNoZtunnel
}

func linkLocal6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() && a.IsLinkLocalUnicast() }

func ports(frame []byte, l4 int) (sport, dport uint16, ok bool) {
	if l4+4 > len(frame) {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(frame[l4:]), binary.BigEndian.Uint16(frame[l4+2:]), true
}

// appOutbound is §5's "from an ambient pod".
func (w world) appOutbound(frame []byte) outcome {
	p := parse(frame)
	switch {
	case p.etherType == 0x0806:
		if len(frame) < 14+28 {
			return oParseErr
		}
		if binary.BigEndian.Uint16(frame[16:18]) != 0x0800 || frame[18] != 6 || frame[19] != 4 {
			return oProtocol
		}
		spa := netip.AddrFrom4([4]byte(frame[28:32]))
		if spa.IsUnspecified() || w.own(spa) {
			return oPass
		}
		return oSpoofed
	case p.etherType == 0x8100 || p.etherType == 0x88a8:
		return oParseErr
	case p.etherType != 0x0800 && p.etherType != 0x86dd:
		return oProtocol
	case p.bad:
		return oParseErr
	}
	x := p.ip
	srcFlags := uint16(0)
	if ep, ok := w.lookup(x.src); ok {
		srcFlags = ep.Flags
	}
	icmp := (!x.v6 && x.proto == 1) || (x.v6 && x.proto == 58)
	if x.later {
		switch {
		case x.proto == 17:
			if !w.own(x.src) {
				return oSpoofed
			}
			if w.strict(srcFlags) {
				noOpts := !x.options
				if x.v6 {
					noOpts = x.fragmentOK
				}
				if noOpts && w.has(x.dst, maps.EndpointResolver) {
					return oPass
				}
				return oPolicy
			}
			return oPass
		case icmp:
			if !w.own(x.src) {
				return oSpoofed
			}
			return oPass
		}
		return oFragment
	}
	switch {
	case icmp && !x.v6:
		if !w.own(x.src) {
			return oSpoofed
		}
		return oPass
	case icmp:
		if x.l4+1 > len(frame) {
			return oParseErr
		}
		if !(x.src.IsLinkLocalUnicast() || x.src.IsUnspecified()) && !w.own(x.src) {
			return oSpoofed
		}
		switch frame[x.l4] {
		case 134, 137:
			return oSpoofed
		case 136:
			if x.options {
				return oSpoofed
			}
			if len(frame) < 14+40+24 {
				return oParseErr
			}
			target := netip.AddrFrom16([16]byte(frame[14+48 : 14+64]))
			if target.IsLinkLocalUnicast() || w.own(target) {
				return oPass
			}
			return oSpoofed
		}
		return oPass
	case x.proto == 6:
		if x.l4+14 > len(frame) {
			return oParseErr
		}
		flags := frame[x.l4+13] & 0x12
		if flags == 0x02 {
			if !w.own(x.src) {
				return oSpoofed
			}
			return w.capture(oOut)
		}
		sport, dport, _ := ports(frame, x.l4)
		t := tuple{x.src, x.dst, sport, dport}
		if !w.has(x.dst, maps.EndpointNode) {
			// A pod that bypasses inbound capture answers its direct
			// inbound connections directly.
			if w.own(x.src) && w.has(x.src, maps.EndpointBypassInbound) && (w.ztunnelSocket == nil || !w.ztunnelSocket(t)) {
				return oPass
			}
			return w.capture(oOut)
		}
		if x.options {
			return w.capture(oOut)
		}
		if !w.own(x.src) {
			return oSpoofed
		}
		if w.ztunnelSocket != nil && w.ztunnelSocket(t) {
			return w.capture(oOut)
		}
		if w.nodeSocket != nil && w.nodeSocket(t) {
			return oPass
		}
		return w.capture(oOut)
	case x.proto == 17:
		if !w.own(x.src) {
			return oSpoofed
		}
		_, dport, ok := ports(frame, x.l4)
		if !ok {
			return oParseErr
		}
		if w.has(x.dst, maps.EndpointNode) && slices.Contains(w.relays, dport) {
			return oRelay
		}
		if dport == 53 && w.ztFlags&maps.ZtunnelCaptureDNS != 0 && srcFlags&maps.EndpointBypassDNS == 0 {
			return w.capture(oOut)
		}
		if w.strict(srcFlags) {
			if dport == 53 && !x.options && w.has(x.dst, maps.EndpointResolver) {
				return oPass
			}
			return oPolicy
		}
		return oPass
	}
	return oProtocol
}

// appInbound is §5's "to an ambient pod"; ingress is skb->ingress_ifindex.
func (w world) appInbound(frame []byte, ingress uint32) outcome {
	if w.ztIfindex != 0 && ingress == w.ztIfindex {
		return oPass
	}
	p := parse(frame)
	switch {
	case p.etherType == 0x0806:
		return oPass
	case p.etherType == 0x8100 || p.etherType == 0x88a8:
		return oParseErr
	case p.etherType != 0x0800 && p.etherType != 0x86dd:
		return oProtocol
	case p.bad:
		return oParseErr
	}
	x := p.ip
	dstFlags := uint16(0)
	if ep, ok := w.lookup(x.dst); ok {
		dstFlags = ep.Flags
	}
	icmp := (!x.v6 && x.proto == 1) || (x.v6 && x.proto == 58)
	udpStrict := func(sourcePort53 bool, noOpts bool) outcome {
		if !w.strict(dstFlags) {
			return oPass
		}
		if sourcePort53 && noOpts && w.has(x.src, maps.EndpointResolver) {
			return oPass
		}
		return oPolicy
	}
	if x.later {
		switch {
		case x.proto == 17:
			noOpts := !x.options
			if x.v6 {
				noOpts = x.fragmentOK
			}
			return udpStrict(true, noOpts)
		case icmp:
			if w.strict(dstFlags) {
				return oPolicy
			}
			return oPass
		}
		return oFragment
	}
	switch {
	case icmp:
		if !w.strict(dstFlags) {
			return oPass
		}
		if !x.v6 {
			return oPolicy
		}
		if x.l4+1 > len(frame) {
			return oParseErr
		}
		if t := frame[x.l4]; t >= 133 && t <= 137 && x.hopLimit == 255 {
			return oPass
		}
		return oPolicy
	case x.proto == 17:
		if !w.strict(dstFlags) {
			return oPass
		}
		sport, _, ok := ports(frame, x.l4)
		if !ok {
			return oParseErr
		}
		return udpStrict(sport == 53, !x.options)
	case x.proto == 6:
		sport, dport, ok := ports(frame, x.l4)
		if !ok {
			return oParseErr
		}
		mine := w.own(x.dst)
		if !mine && !linkLocal6(x.dst) {
			return oPass
		}
		if !mine {
			dstFlags = 0
		}
		if ep, ok := w.lookup(x.src); ok && ep.IsPod() {
			return oSpoofed
		}
		if ingress == 0 {
			if w.ztunnelSocket != nil && w.ztunnelSocket(tuple{x.src, x.dst, sport, dport}) {
				return w.capture(oIn)
			}
			return oPass
		}
		if dport == 15008 {
			return w.capture(oIn)
		}
		if dstFlags&maps.EndpointBypassInbound != 0 {
			return oPass
		}
		return w.capture(oIn)
	}
	return oProtocol
}

// ztunnelIngress: ztunnel's packets for an ambient pod go straight to it.
func (w world) ztunnelIngress(frame []byte) outcome {
	p := parse(frame)
	if (p.etherType != 0x0800 && p.etherType != 0x86dd) || len(frame) < 14+hlenOf(p.etherType) {
		return oPass
	}
	dst := addrAt(frame, p.etherType, false)
	if ep, ok := w.lookup(dst); ok && ep.IsPod() {
		return oBypass
	}
	return oPass
}

// ztunnelEgress: what enters ztunnel's netns with an ambient pod's source
// came from that pod's veth.
func (w world) ztunnelEgress(frame []byte, ingress uint32) outcome {
	p := parse(frame)
	if (p.etherType != 0x0800 && p.etherType != 0x86dd) || len(frame) < 14+hlenOf(p.etherType) {
		return oPass
	}
	src := addrAt(frame, p.etherType, true)
	if ep, ok := w.lookup(src); ok && ep.IsPod() && ep.Ifindex != ingress {
		return oSpoofed
	}
	return oPass
}

func hlenOf(etherType uint16) int {
	if etherType == 0x86dd {
		return 40
	}
	return 20
}

func addrAt(frame []byte, etherType uint16, src bool) netip.Addr {
	if etherType == 0x86dd {
		if src {
			return netip.AddrFrom16([16]byte(frame[22:38]))
		}
		return netip.AddrFrom16([16]byte(frame[38:54]))
	}
	if src {
		return netip.AddrFrom4([4]byte(frame[26:30]))
	}
	return netip.AddrFrom4([4]byte(frame[30:34]))
}
