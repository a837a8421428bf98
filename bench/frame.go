package main

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// ackFrame builds the frame the kernel path injects: Ethernet (to the
// host veth's MAC, from the pod's, so that the stack takes it as the host
// veth's own, PACKET_HOST), IPv4 with a valid header checksum, and a TCP
// ACK of the flow t whose checksum is wrong on purpose: the segment
// crosses tc, netfilter, routing and the redirect like any other, and is
// dropped by the destination's TCP layer, which counts it in
// TcpInCsumErrors (short segments are verified at once, tcp_v4_rcv).
func ackFrame(dstMAC, srcMAC net.HardwareAddr, t tuple) []byte {
	const ethLen, ipLen, tcpLen = 14, 20, 20
	b := make([]byte, ethLen+ipLen+tcpLen)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:14], 0x0800)

	ip := b[ethLen : ethLen+ipLen]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], ipLen+tcpLen)
	binary.BigEndian.PutUint16(ip[4:6], 0x4d52)
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ip[8] = 64
	ip[9] = 6
	src, dst := t.Src.Addr().As4(), t.Dst.Addr().As4()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip))

	tcp := b[ethLen+ipLen:]
	binary.BigEndian.PutUint16(tcp[0:2], t.Src.Port())
	binary.BigEndian.PutUint16(tcp[2:4], t.Dst.Port())
	binary.BigEndian.PutUint32(tcp[4:8], 0x6d720001)
	binary.BigEndian.PutUint32(tcp[8:12], 0x6d720002)
	tcp[12] = 5 << 4
	tcp[13] = 0x10 // ACK
	binary.BigEndian.PutUint16(tcp[14:16], 502)
	good := tcpChecksum(t.Src.Addr(), t.Dst.Addr(), tcp)
	binary.BigEndian.PutUint16(tcp[16:18], ^good) // anything but the right one
	if ^good == good {
		binary.BigEndian.PutUint16(tcp[16:18], good+1)
	}
	return b
}

// synFrame is a TCP SYN of t with a valid checksum, for the per-program
// measure of ztunnel_assign's connection-request path.
func synFrame(dstMAC, srcMAC net.HardwareAddr, t tuple) []byte {
	b := ackFrame(dstMAC, srcMAC, t)
	tcp := b[34:]
	tcp[13] = 0x02
	binary.BigEndian.PutUint32(tcp[8:12], 0)
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:18], tcpChecksum(t.Src.Addr(), t.Dst.Addr(), tcp))
	return b
}

// checksum is the Internet checksum of b.
func checksum(b []byte) uint16 {
	return ^fold(sum(0, b))
}

// tcpChecksum is the TCP checksum of seg (its checksum field zero)
// between IPv4 addresses src and dst.
func tcpChecksum(src, dst netip.Addr, seg []byte) uint16 {
	s, d := src.As4(), dst.As4()
	var pseudo [12]byte
	copy(pseudo[0:4], s[:])
	copy(pseudo[4:8], d[:])
	pseudo[9] = 6
	binary.BigEndian.PutUint16(pseudo[10:12], uint16(len(seg)))
	c := make([]byte, len(seg))
	copy(c, seg)
	c[16], c[17] = 0, 0
	return ^fold(sum(sum(0, pseudo[:]), c))
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

// programFrame is a TCP segment of t (IPv4 or IPv6, by t's addresses) with
// the given flags and valid checksums, for the per-program measure: the
// programs read no checksum, but what they pass stays well-formed.
func programFrame(dstMAC, srcMAC net.HardwareAddr, t tuple, flags byte) []byte {
	if t.Src.Addr().Is4() {
		b := ackFrame(dstMAC, srcMAC, t)
		tcp := b[34:]
		tcp[13] = flags
		tcp[16], tcp[17] = 0, 0
		binary.BigEndian.PutUint16(tcp[16:18], tcpChecksum(t.Src.Addr(), t.Dst.Addr(), tcp))
		return b
	}
	const ethLen, ipLen, tcpLen = 14, 40, 20
	b := make([]byte, ethLen+ipLen+tcpLen)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:14], 0x86dd)
	ip := b[ethLen : ethLen+ipLen]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:6], tcpLen)
	ip[6] = 6
	ip[7] = 64
	src, dst := t.Src.Addr().As16(), t.Dst.Addr().As16()
	copy(ip[8:24], src[:])
	copy(ip[24:40], dst[:])
	tcp := b[ethLen+ipLen:]
	binary.BigEndian.PutUint16(tcp[0:2], t.Src.Port())
	binary.BigEndian.PutUint16(tcp[2:4], t.Dst.Port())
	binary.BigEndian.PutUint32(tcp[4:8], 0x6d720001)
	if flags&0x10 != 0 {
		binary.BigEndian.PutUint32(tcp[8:12], 0x6d720002)
	}
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:16], 502)
	var pseudo [40]byte
	copy(pseudo[0:16], src[:])
	copy(pseudo[16:32], dst[:])
	binary.BigEndian.PutUint32(pseudo[32:36], tcpLen)
	pseudo[39] = 6
	binary.BigEndian.PutUint16(tcp[16:18], ^fold(sum(sum(0, pseudo[:]), tcp)))
	return b
}
