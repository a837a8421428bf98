package dataplane_test

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Frames of the security tests, written byte by byte: the tricks need
// headers that no serializer writes on purpose (an IHL that lies, options
// that run past the frame, overlapping fragments, a chain of seven IPv6
// extension headers, a frame cut inside a header).

// IP protocol numbers (IANA).
const (
	protoHopOpts    = 0
	protoICMP       = 1
	protoIPIP       = 4
	protoTCP        = 6
	protoUDP        = 17
	protoIPv6       = 41
	protoRouting    = 43
	protoFragment   = 44
	protoGRE        = 47
	protoESP        = 50
	protoAH         = 51
	protoICMPv6     = 58
	protoNoNext     = 59
	protoDstOpts    = 60
	protoSCTP       = 132
	protoUnassigned = 200 // 143-252 are unassigned
)

// EtherTypes.
const (
	etherIPv4   = 0x0800
	etherIPv6   = 0x86dd
	ether8021Q  = 0x8100
	ether8021AD = 0x88a8
	etherMPLS   = 0x8847
)

var be = binary.BigEndian

// checksum is the Internet checksum (RFC 1071) of the concatenated parts.
func checksum(parts ...[]byte) uint16 {
	var sum uint32
	var buf []byte
	for _, p := range parts {
		buf = append(buf, p...)
	}
	for i := 0; i+1 < len(buf); i += 2 {
		sum += uint32(buf[i])<<8 | uint32(buf[i+1])
	}
	if len(buf)%2 == 1 {
		sum += uint32(buf[len(buf)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// pseudoHeader is the IPv4 or IPv6 pseudo-header of TCP, UDP and ICMPv6
// checksums.
func pseudoHeader(src, dst netip.Addr, proto uint8, length int) []byte {
	if src.Is4() {
		h := make([]byte, 12)
		copy(h[0:4], src.AsSlice())
		copy(h[4:8], dst.AsSlice())
		h[9] = proto
		be.PutUint16(h[10:], uint16(length))
		return h
	}
	h := make([]byte, 40)
	copy(h[0:16], src.AsSlice())
	copy(h[16:32], dst.AsSlice())
	be.PutUint32(h[32:], uint32(length))
	h[39] = proto
	return h
}

// tcpSYN is a connection request carrying payload (a SYN may carry data).
func tcpSYN(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	return tcpSegment(src, dst, sport, dport, tcpSYNFlag, payload)
}

// TCP flags.
const (
	tcpSYNFlag = 0x02
	tcpACKFlag = 0x10
	tcpPSHFlag = 0x08
)

// tcpSegment is a TCP segment with the given flags, carrying payload.
func tcpSegment(src, dst netip.Addr, sport, dport uint16, flags byte, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	be.PutUint16(h[0:], sport)
	be.PutUint16(h[2:], dport)
	be.PutUint32(h[4:], 0x5ec0_0001)
	if flags&tcpACKFlag != 0 {
		be.PutUint32(h[8:], 0x0ac0_0001)
	}
	h[12] = 5 << 4
	h[13] = flags
	be.PutUint16(h[14:], 64240)
	seg := append(h, payload...)
	be.PutUint16(seg[16:], checksum(pseudoHeader(src, dst, protoTCP, len(seg)), seg))
	return seg
}

// udpDatagram is a UDP header and payload with its checksum.
func udpDatagram(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	d := make([]byte, 8, 8+len(payload))
	be.PutUint16(d[0:], sport)
	be.PutUint16(d[2:], dport)
	d = append(d, payload...)
	be.PutUint16(d[4:], uint16(len(d)))
	cs := checksum(pseudoHeader(src, dst, protoUDP, len(d)), d)
	if cs == 0 {
		cs = 0xffff
	}
	be.PutUint16(d[6:], cs)
	return d
}

// icmpEcho is an ICMP or ICMPv6 echo request.
func icmpEcho(src, dst netip.Addr, id uint16, payload []byte) []byte {
	m := make([]byte, 8, 8+len(payload))
	m[0] = 8 // echo request
	if src.Is6() {
		m[0] = 128
	}
	be.PutUint16(m[4:], id)
	be.PutUint16(m[6:], 1)
	m = append(m, payload...)
	if src.Is6() {
		be.PutUint16(m[2:], checksum(pseudoHeader(src, dst, protoICMPv6, len(m)), m))
	} else {
		be.PutUint16(m[2:], checksum(m))
	}
	return m
}

// ext is one IPv6 extension header: its kind and its bytes after the next
// header and length bytes (the length byte is worked out from its kind).
type ext struct {
	kind uint8
	body []byte
}

func hopByHop() ext { return ext{protoHopOpts, []byte{1, 4, 0, 0, 0, 0}} } // PadN
func dstOpts() ext  { return ext{protoDstOpts, []byte{1, 4, 0, 0, 0, 0}} }

// routingHeader is a routing header of type typ (0: the deprecated source
// route, 4: segment routing) listing addrs, with segmentsLeft of them still
// to visit.
func routingHeader(typ, segmentsLeft uint8, addrs ...netip.Addr) ext {
	body := []byte{typ, segmentsLeft, 0, 0, 0, 0}
	if typ == 4 && len(addrs) > 0 {
		body[2] = uint8(len(addrs) - 1) // last entry
	}
	for _, a := range addrs {
		body = append(body, a.AsSlice()...)
	}
	return ext{protoRouting, body}
}

// authHeader is an AH of 24 bytes (12 of them ICV).
func authHeader() ext {
	body := make([]byte, 22)
	be.PutUint32(body[2:], 0x100) // SPI
	be.PutUint32(body[6:], 1)     // sequence
	return ext{protoAH, body}
}

// fragmentHeader is an IPv6 fragment header; offset is in 8-byte units.
func fragmentHeader(offset uint16, more bool, id uint32) ext {
	body := make([]byte, 6)
	v := offset << 3
	if more {
		v |= 1
	}
	be.PutUint16(body[0:], v)
	be.PutUint32(body[2:], id)
	return ext{protoFragment, body}
}

// ipPacket describes an IPv4 or IPv6 packet (the family of src).
type ipPacket struct {
	src, dst netip.Addr
	proto    uint8 // the upper-layer protocol
	l4       []byte
	ttl      uint8  // 0: 64
	id       uint16 // IPv4 identification
	flow     uint32 // IPv6 flow label

	// IPv4 only.
	options []byte // padded with End of Options to a multiple of 4
	fragOff uint16 // in 8-byte units
	more    bool
	ihl     int // when not 0, written instead of the true IHL

	// IPv6 only: extension headers before the upper-layer header.
	ext []ext

	// version, when not 0, is written instead of the true one.
	version int
}

func (p ipPacket) bytes() []byte {
	if p.src.Is6() {
		return p.ipv6()
	}
	return p.ipv4()
}

func (p ipPacket) ipv4() []byte {
	opts := append([]byte(nil), p.options...)
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	h := make([]byte, 20+len(opts))
	ihl, version := 5+len(opts)/4, 4
	if p.ihl != 0 {
		ihl = p.ihl
	}
	if p.version != 0 {
		version = p.version
	}
	h[0] = byte(version<<4 | ihl)
	be.PutUint16(h[2:], uint16(len(h)+len(p.l4)))
	be.PutUint16(h[4:], p.id)
	frag := p.fragOff & 0x1fff
	if p.more {
		frag |= 0x2000
	}
	be.PutUint16(h[6:], frag)
	h[8] = p.ttl
	if h[8] == 0 {
		h[8] = 64
	}
	h[9] = p.proto
	copy(h[12:16], p.src.AsSlice())
	copy(h[16:20], p.dst.AsSlice())
	copy(h[20:], opts)
	be.PutUint16(h[10:], checksum(h))
	return append(h, p.l4...)
}

func (p ipPacket) ipv6() []byte {
	var chain []byte
	next := p.proto
	for i := len(p.ext) - 1; i >= 0; i-- {
		e := p.ext[i]
		hdr := append([]byte{next, 0}, e.body...)
		switch e.kind {
		case protoFragment:
			hdr[1] = 0 // reserved
		case protoAH:
			hdr[1] = byte(len(hdr)/4 - 2)
		default:
			hdr[1] = byte(len(hdr)/8 - 1)
		}
		chain = append(hdr, chain...)
		next = e.kind
	}
	h := make([]byte, 40)
	version := 6
	if p.version != 0 {
		version = p.version
	}
	be.PutUint32(h[0:], uint32(version)<<28|p.flow&0xfffff)
	be.PutUint16(h[4:], uint16(len(chain)+len(p.l4)))
	h[6] = next
	h[7] = p.ttl
	if h[7] == 0 {
		h[7] = 64
	}
	copy(h[8:24], p.src.AsSlice())
	copy(h[24:40], p.dst.AsSlice())
	return append(append(h, chain...), p.l4...)
}

// vlanTag is an 802.1Q or 802.1ad tag.
type vlanTag struct {
	tpid, vid uint16
}

// frame is what a trick sends: an EtherType (0: the IP version of body
// decides), VLAN tags, and what follows the Ethernet header. The sender adds
// the addresses.
type frame struct {
	etype uint16
	tags  []vlanTag
	body  []byte
}

func ipFrame(p ipPacket) frame { return frame{body: p.bytes()} }

func (f frame) ether(dst, src net.HardwareAddr) []byte {
	etype := f.etype
	if etype == 0 {
		etype = etherIPv4
		if len(f.body) > 0 && f.body[0]>>4 == 6 {
			etype = etherIPv6
		}
	}
	b := append(append([]byte(nil), dst...), src...)
	for _, tag := range f.tags {
		b = be.AppendUint16(b, tag.tpid)
		b = be.AppendUint16(b, tag.vid)
	}
	b = be.AppendUint16(b, etype)
	return append(b, f.body...)
}

// ipv4Fragments cuts the upper-layer bytes of p into IPv4 fragments at
// the given byte offsets (multiples of 8); each piece is [from, to).
func ipv4Fragments(p ipPacket, pieces ...[2]int) []frame {
	var out []frame
	for _, pc := range pieces {
		q := p
		q.l4 = p.l4[pc[0]:pc[1]]
		q.fragOff = uint16(pc[0] / 8)
		q.more = pc[1] < len(p.l4)
		out = append(out, ipFrame(q))
	}
	return out
}

// ipv6Fragments is ipv4Fragments with IPv6 fragment headers (after p.ext).
func ipv6Fragments(p ipPacket, id uint32, pieces ...[2]int) []frame {
	var out []frame
	for _, pc := range pieces {
		q := p
		q.l4 = p.l4[pc[0]:pc[1]]
		q.ext = append(append([]ext(nil), p.ext...), fragmentHeader(uint16(pc[0]/8), pc[1] < len(p.l4), id))
		out = append(out, ipFrame(q))
	}
	return out
}

// nopOptions is n bytes of No Operation options.
func nopOptions(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 1
	}
	return b
}

// recordRoute is a record route option with room for slots addresses.
func recordRoute(slots int) []byte {
	b := []byte{7, byte(3 + 4*slots), 4}
	return append(b, make([]byte, 4*slots)...)
}

// looseSourceRoute is an LSRR option whose next hop is via.
func looseSourceRoute(via netip.Addr) []byte {
	return append([]byte{0x83, 7, 4}, via.AsSlice()...)
}

// timestampOption is a timestamp option (flag 0: timestamps only) with
// room for slots of them.
func timestampOption(slots int) []byte {
	b := []byte{0x44, byte(4 + 4*slots), 5, 0}
	return append(b, make([]byte, 4*slots)...)
}
