package asm_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// packet describes a test frame by its fields; build serializes it with
// gopacket. Zero fields take defaults that make a valid TCP SYN.
type packet struct {
	src, dst     netip.Addr
	proto        layers.IPProtocol
	sport, dport uint16
	srcMAC       net.HardwareAddr
	dstMAC       net.HardwareAddr

	// ipv4Options are added to the IPv4 header (raising its IHL).
	ipv4Options []layers.IPv4Option
	// fragOffset (in 8-byte units) and moreFragments make an IPv4 fragment,
	// or with an IPv6 fragment header in ext, an IPv6 one.
	fragOffset    uint16
	moreFragments bool
	// ext is the chain of IPv6 extension headers before the L4 header.
	ext []layers.IPProtocol
	// ack makes a TCP segment of an established flow (ACK, no SYN) instead
	// of a connection request; synack a connection's answer (SYN+ACK).
	ack, synack bool
	// hopLimit is the IPv6 hop limit or IPv4 TTL; zero means 64.
	hopLimit uint8
	// vlan adds an 802.1Q tag in the frame.
	vlan bool
	// badVersion writes a wrong IP version nibble; shortIHL an IHL below 5.
	badVersion, shortIHL bool
	payload              []byte
}

var (
	gatewayMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
	podSrcMAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x99}
)

func (p packet) family6() bool { return p.dst.Is6() && !p.dst.Is4In6() }

func (p packet) build(tb testing.TB) []byte {
	tb.Helper()
	srcMAC, dstMAC := p.srcMAC, p.dstMAC
	if srcMAC == nil {
		srcMAC = podSrcMAC
	}
	if dstMAC == nil {
		dstMAC = gatewayMAC
	}
	proto := p.proto
	if proto == 0 {
		proto = layers.IPProtocolTCP
	}

	var stack []gopacket.SerializableLayer
	ethType := layers.EthernetTypeIPv4
	if p.family6() {
		ethType = layers.EthernetTypeIPv6
	}
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: ethType}
	if p.vlan {
		eth.EthernetType = layers.EthernetTypeDot1Q
		stack = append(stack, eth, &layers.Dot1Q{VLANIdentifier: 100, Type: ethType})
	} else {
		stack = append(stack, eth)
	}

	var netLayer gopacket.NetworkLayer
	if p.family6() {
		ip := &layers.IPv6{Version: 6, HopLimit: p.ttl(), SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice(), NextHeader: proto}
		if p.badVersion {
			ip.Version = 4
		}
		netLayer = ip
		stack = append(stack, ip)
		if len(p.ext) > 0 {
			ip.NextHeader = p.ext[0]
			for i, kind := range p.ext {
				next := proto
				if i+1 < len(p.ext) {
					next = p.ext[i+1]
				}
				stack = append(stack, ipv6Ext(kind, next, p.fragOffset, p.moreFragments))
			}
		}
	} else {
		ip := &layers.IPv4{Version: 4, TTL: p.ttl(), Protocol: proto, SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice(),
			Options: p.ipv4Options, FragOffset: p.fragOffset}
		if p.moreFragments {
			ip.Flags |= layers.IPv4MoreFragments
		}
		if p.badVersion {
			ip.Version = 6
		}
		netLayer = ip
		stack = append(stack, ip)
	}

	sport, dport := p.sport, p.dport
	if sport == 0 {
		sport = 40000
	}
	if dport == 0 {
		dport = 80
	}
	switch proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: !p.ack || p.synack, ACK: p.ack || p.synack, Window: 64240, Seq: 1}
		tcp.SetNetworkLayerForChecksum(netLayer)
		stack = append(stack, tcp)
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		udp.SetNetworkLayerForChecksum(netLayer)
		stack = append(stack, udp)
	case layers.IPProtocolICMPv4:
		stack = append(stack, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1})
	case layers.IPProtocolICMPv6:
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}
		icmp.SetNetworkLayerForChecksum(netLayer)
		stack = append(stack, icmp, &layers.ICMPv6Echo{Identifier: 1, SeqNumber: 1})
	default:
		// Another protocol (GRE, ...): an opaque payload follows.
	}
	payload := p.payload
	if payload == nil {
		payload = []byte("meshredirect")
	}
	stack = append(stack, gopacket.Payload(payload))

	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, stack...); err != nil {
		tb.Fatalf("serialize packet: %v", err)
	}
	out := buf.Bytes()
	if p.shortIHL && !p.family6() {
		off := ethHeaderLen(p)
		out[off] = out[off]&0xf0 | 4
	}
	return out
}

func (p packet) ttl() uint8 {
	if p.hopLimit == 0 {
		return 64
	}
	return p.hopLimit
}

func ethHeaderLen(p packet) int {
	if p.vlan {
		return 18
	}
	return 14
}

// ipv6Ext returns one IPv6 extension header. gopacket serializes hop-by-hop
// and destination options itself; routing, fragment and AH it can only
// decode, so extHeader writes those from their fields.
func ipv6Ext(kind, next layers.IPProtocol, fragOffset uint16, more bool) gopacket.SerializableLayer {
	switch kind {
	case layers.IPProtocolIPv6HopByHop:
		h := &layers.IPv6HopByHop{}
		h.NextHeader = next
		h.Options = []*layers.IPv6HopByHopOption{{OptionType: 0x01, OptionLength: 4, OptionData: make([]byte, 4)}} // PadN
		return h
	case layers.IPProtocolIPv6Destination:
		h := &layers.IPv6Destination{}
		h.NextHeader = next
		h.Options = []*layers.IPv6DestinationOption{{OptionType: 0x01, OptionLength: 12, OptionData: make([]byte, 12)}}
		return h
	case layers.IPProtocolIPv6Routing:
		// Type 0 with no addresses left: 8 bytes, length field 0.
		return extHeader{next: next, kind: kind, body: []byte{0, 0, 0, 0, 0, 0}}
	case layers.IPProtocolIPv6Fragment:
		offMore := fragOffset << 3
		if more {
			offMore |= 1
		}
		body := make([]byte, 6)
		binary.BigEndian.PutUint16(body[0:2], offMore)
		binary.BigEndian.PutUint32(body[2:6], 0x1234)
		return extHeader{next: next, kind: kind, body: body, fixedLen: true}
	case layers.IPProtocolAH:
		// 12 bytes of header (SPI, sequence) and 12 of ICV: 24 bytes, length
		// field (24/4)-2 = 4.
		return extHeader{next: next, kind: kind, body: make([]byte, 22), ahLen: true}
	}
	panic("no such IPv6 extension header in the test builder")
}

// extHeader serializes an IPv6 extension header from its fields: next header,
// the length byte (in the unit its kind uses), and the rest of its body.
type extHeader struct {
	next, kind layers.IPProtocol
	body       []byte
	fixedLen   bool // fragment: the length byte is reserved (0)
	ahLen      bool // AH: length in 4-byte units minus 2
}

func (e extHeader) LayerType() gopacket.LayerType { return gopacket.LayerTypePayload }

func (e extHeader) SerializeTo(b gopacket.SerializeBuffer, _ gopacket.SerializeOptions) error {
	bytes, err := b.PrependBytes(2 + len(e.body))
	if err != nil {
		return err
	}
	total := 2 + len(e.body)
	bytes[0] = byte(e.next)
	switch {
	case e.fixedLen:
		bytes[1] = 0
	case e.ahLen:
		bytes[1] = byte(total/4 - 2)
	default:
		bytes[1] = byte(total/8 - 1)
	}
	copy(bytes[2:], e.body)
	return nil
}

// arpRequest is a who-has from a pod for its gateway.
func arpRequest(tb testing.TB, src netip.Addr) []byte {
	tb.Helper()
	eth := &layers.Ethernet{SrcMAC: podSrcMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: podSrcMAC, SourceProtAddress: src.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: []byte{169, 254, 1, 1}}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, arp); err != nil {
		tb.Fatalf("serialize ARP: %v", err)
	}
	return buf.Bytes()
}

// neighborSolicitation is an IPv6 neighbour discovery packet from a pod.
func neighborSolicitation(tb testing.TB, src netip.Addr) []byte {
	tb.Helper()
	target := netip.MustParseAddr("fe80::1")
	dst := netip.MustParseAddr("ff02::1:ff00:1")
	eth := &layers.Ethernet{SrcMAC: podSrcMAC, DstMAC: net.HardwareAddr{0x33, 0x33, 0xff, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	icmp.SetNetworkLayerForChecksum(ip)
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice(),
		Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: podSrcMAC}}}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, ns); err != nil {
		tb.Fatalf("serialize neighbour solicitation: %v", err)
	}
	return buf.Bytes()
}

// arpFrom is an ARP message with sender protocol address spa (zero: an
// address probe) and protocol type ptype (0x0800 for IPv4).
func arpFrom(tb testing.TB, spa netip.Addr, ptype layers.EthernetType) []byte {
	tb.Helper()
	sender := []byte{0, 0, 0, 0}
	if spa.IsValid() {
		sender = spa.AsSlice()
	}
	eth := &layers.Ethernet{SrcMAC: podSrcMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: ptype, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: podSrcMAC, SourceProtAddress: sender,
		DstHwAddress: make([]byte, 6), DstProtAddress: []byte{169, 254, 1, 1}}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, arp); err != nil {
		tb.Fatalf("serialize ARP: %v", err)
	}
	return buf.Bytes()
}

// nd is an ICMPv6 message of type typ from src to dst with the given hop
// limit; neighbour solicitations and advertisements carry target.
func nd(tb testing.TB, typ uint8, src, dst, target netip.Addr, hopLimit uint8) []byte {
	tb.Helper()
	eth := &layers.Ethernet{SrcMAC: podSrcMAC, DstMAC: net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: hopLimit, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	icmp.SetNetworkLayerForChecksum(ip)
	// Reserved/flags (4 bytes), then the target for NS, NA and redirects.
	body := make([]byte, 4, 20)
	if target.IsValid() {
		body = append(body, target.AsSlice()...)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, gopacket.Payload(body)); err != nil {
		tb.Fatalf("serialize ICMPv6: %v", err)
	}
	return buf.Bytes()
}

// etherFrame is a frame of another EtherType with a small payload.
func etherFrame(etherType uint16) []byte {
	f := append(append([]byte{}, gatewayMAC...), podSrcMAC...)
	f = binary.BigEndian.AppendUint16(f, etherType)
	return append(f, make([]byte, 46)...)
}

// lsrr is an IPv4 loose source route option through via (RFC 791): a
// packet that carries it and passes is forwarded on by a node with
// accept_source_route on.
func lsrr(via netip.Addr) []layers.IPv4Option {
	data := append([]byte{4}, via.AsSlice()...)
	return []layers.IPv4Option{{OptionType: 0x83, OptionLength: 7, OptionData: data}, {OptionType: 0}}
}
