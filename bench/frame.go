package main

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// TCP flags of the frames.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// Frame layout: Ethernet, then IPv4 (20 bytes) or IPv6 (40), then a TCP
// header of 20 bytes without options.
const (
	ethLen  = 14
	ipv4Len = 20
	ipv6Len = 40
	tcpLen  = 20
)

// tcpOffset is where the TCP header starts in a frame of family t.
func tcpOffset(t tuple) int {
	if t.Src.Addr().Is4() {
		return ethLen + ipv4Len
	}
	return ethLen + ipv6Len
}

// injectFrame builds a frame the kernel path injects: Ethernet (to the
// host veth's MAC, from the pod's, so that the stack takes it as the host
// veth's own, PACKET_HOST), IPv4 with a valid header checksum or IPv6 (by
// t's addresses), and a TCP segment of the flow t, an ACK or a SYN
// (flags), whose checksum is wrong on purpose: the segment crosses tc,
// netfilter, routing and the redirect like any other, and is dropped by
// the destination's TCP layer, which counts it in TcpInCsumErrors (short
// segments are verified at once, before the socket lookup: tcp_v4_rcv and
// tcp_v6_rcv, skb_checksum_init; both families count in the one TCP MIB
// of the netns, /proc/net/snmp's Tcp InCsumErrors).
//
// A SYN's sequence number ends in 0xffff minus its source port, so that
// the sum of the two 16-bit words is the same whatever the port: the
// injector writes a new port (and the matching sequence number) into each
// frame it sends (synVary), and the checksum field, unchanged, stays
// wrong for every one of them.
func injectFrame(dstMAC, srcMAC net.HardwareAddr, t tuple, flags byte) []byte {
	b := tcpFrame(dstMAC, srcMAC, t, flags)
	tcp := b[tcpOffset(t):]
	if flags&tcpSYN != 0 {
		binary.BigEndian.PutUint16(tcp[6:8], 0xffff-t.Src.Port())
		tcp[16], tcp[17] = 0, 0
		binary.BigEndian.PutUint16(tcp[16:18], segmentChecksum(t.Src.Addr(), t.Dst.Addr(), tcp))
	}
	good := binary.BigEndian.Uint16(tcp[16:18])
	bad := ^good
	if bad == good || bad == 0 || bad == 0xffff {
		// 0 and 0xffff are the same one's-complement value; keep clear.
		bad = good + 1
	}
	binary.BigEndian.PutUint16(tcp[16:18], bad)
	return b
}

// ackFrame is the injected ACK of t (see injectFrame).
func ackFrame(dstMAC, srcMAC net.HardwareAddr, t tuple) []byte {
	return injectFrame(dstMAC, srcMAC, t, tcpACK)
}

// programFrame is a TCP segment of t (IPv4 or IPv6, by t's addresses) with
// the given flags and valid checksums, for the per-program measure: the
// programs read no checksum, but what they pass stays well-formed.
func programFrame(dstMAC, srcMAC net.HardwareAddr, t tuple, flags byte) []byte {
	return tcpFrame(dstMAC, srcMAC, t, flags)
}

// tcpFrame builds a TCP segment of t with the given flags and every
// checksum right.
func tcpFrame(dstMAC, srcMAC net.HardwareAddr, t tuple, flags byte) []byte {
	off := tcpOffset(t)
	b := make([]byte, off+tcpLen)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	if t.Src.Addr().Is4() {
		binary.BigEndian.PutUint16(b[12:14], 0x0800)
		ip := b[ethLen:off]
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:4], ipv4Len+tcpLen)
		binary.BigEndian.PutUint16(ip[4:6], 0x4d52)
		binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
		ip[8] = 64
		ip[9] = 6
		src, dst := t.Src.Addr().As4(), t.Dst.Addr().As4()
		copy(ip[12:16], src[:])
		copy(ip[16:20], dst[:])
		binary.BigEndian.PutUint16(ip[10:12], checksum(ip))
	} else {
		binary.BigEndian.PutUint16(b[12:14], 0x86dd)
		ip := b[ethLen:off]
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:6], tcpLen)
		ip[6] = 6
		ip[7] = 64
		src, dst := t.Src.Addr().As16(), t.Dst.Addr().As16()
		copy(ip[8:24], src[:])
		copy(ip[24:40], dst[:])
	}
	tcp := b[off:]
	binary.BigEndian.PutUint16(tcp[0:2], t.Src.Port())
	binary.BigEndian.PutUint16(tcp[2:4], t.Dst.Port())
	binary.BigEndian.PutUint32(tcp[4:8], 0x6d720001)
	if flags&tcpACK != 0 {
		binary.BigEndian.PutUint32(tcp[8:12], 0x6d720002)
	}
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:16], 502)
	binary.BigEndian.PutUint16(tcp[16:18], segmentChecksum(t.Src.Addr(), t.Dst.Addr(), tcp))
	return b
}

// checksum is the Internet checksum of b.
func checksum(b []byte) uint16 {
	return ^fold(sum(0, b))
}

// segmentChecksum is the TCP checksum of seg (its checksum field taken as
// zero) between src and dst, with the pseudo-header of their family
// (RFC 793, RFC 8200 section 8.1).
func segmentChecksum(src, dst netip.Addr, seg []byte) uint16 {
	var pseudo []byte
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		pseudo = make([]byte, 12)
		copy(pseudo[0:4], s[:])
		copy(pseudo[4:8], d[:])
		pseudo[9] = 6
		binary.BigEndian.PutUint16(pseudo[10:12], uint16(len(seg)))
	} else {
		s, d := src.As16(), dst.As16()
		pseudo = make([]byte, 40)
		copy(pseudo[0:16], s[:])
		copy(pseudo[16:32], d[:])
		binary.BigEndian.PutUint32(pseudo[32:36], uint32(len(seg)))
		pseudo[39] = 6
	}
	c := make([]byte, len(seg))
	copy(c, seg)
	c[16], c[17] = 0, 0
	return ^fold(sum(sum(0, pseudo), c))
}

func sum(acc uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	return acc
}

func fold(acc uint32) uint16 {
	for acc > 0xffff {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// synVary is how the injector varies a SYN frame's source port, so that
// each frame is a new connection: frame i of a run gets port First + i,
// one more for each port of Skip at or below it (the held connections'
// own ports from that address to that destination, whose conntrack
// entries and sockets a SYN must not hit), and the sequence number's low
// half 0xffff minus the port (see injectFrame).
type synVary struct {
	// Off is the TCP header's offset in the frame.
	Off int
	// First is the first port.
	First uint16
	// Skip are the ports to leave out, ascending, each above First, at
	// most maxSkips.
	Skip []uint16
}

// synPorts is the first source port of the SYN runs: below it, the
// well-known ports; from it, at most maxSYNs ports up to 65535.
const synPorts = 1024

// maxSkips is the most ports a SYN run leaves out: the held flows' (two
// legs and, in-pod, the crossing).
const maxSkips = 3

// maxSYNs is the most SYNs one run injects: one source port each, from
// synPorts to 65535 but the ones skipped.
const maxSYNs = 65535 - synPorts + 1 - maxSkips

// port returns the source port of frame i.
func (v synVary) port(i int) uint16 {
	p := int(v.First) + i
	for _, s := range v.Skip {
		if p >= int(s) {
			p++
		}
	}
	return uint16(p)
}

// vary writes frame i's port and sequence number into f, as the
// injector's XDP program does (for tests, which compare the two).
func (v synVary) vary(f []byte, i int) {
	p := v.port(i)
	binary.BigEndian.PutUint16(f[v.Off:v.Off+2], p)
	binary.BigEndian.PutUint16(f[v.Off+6:v.Off+8], 0xffff-p)
}
