package asm

import (
	"encoding/binary"
	"unsafe"
)

// SkBuff mirrors the kernel's struct __sk_buff (include/uapi/linux/bpf.h),
// the context of tc programs. The programs read its fields by the offsets
// below; tests pass it to BPF_PROG_TEST_RUN as the context.
type SkBuff struct {
	Len            uint32
	PktType        uint32
	Mark           uint32
	QueueMapping   uint32
	Protocol       uint32
	VlanPresent    uint32
	VlanTCI        uint32
	VlanProto      uint32
	Priority       uint32
	IngressIfindex uint32
	Ifindex        uint32
	TCIndex        uint32
	CB             [5]uint32
	Hash           uint32
	TCClassid      uint32
	Data           uint32
	DataEnd        uint32
	NapiID         uint32
	Family         uint32
	RemoteIP4      uint32
	LocalIP4       uint32
	RemoteIP6      [4]uint32
	LocalIP6       [4]uint32
	RemotePort     uint32
	LocalPort      uint32
	DataMeta       uint32
	FlowKeys       uint64
	Tstamp         uint64
	WireLen        uint32
	GSOSegs        uint32
	Sk             uint64
	GSOSize        uint32
	TstampType     uint8
	_              [3]byte
	HWTstamp       uint64
}

// Offsets of the __sk_buff fields that the programs use.
const (
	skbLen            = int16(unsafe.Offsetof(SkBuff{}.Len))
	skbPktType        = int16(unsafe.Offsetof(SkBuff{}.PktType))
	skbMark           = int16(unsafe.Offsetof(SkBuff{}.Mark))
	skbVlanPresent    = int16(unsafe.Offsetof(SkBuff{}.VlanPresent))
	skbIngressIfindex = int16(unsafe.Offsetof(SkBuff{}.IngressIfindex))
	skbIfindex        = int16(unsafe.Offsetof(SkBuff{}.Ifindex))
	skbData           = int16(unsafe.Offsetof(SkBuff{}.Data))
	skbDataEnd        = int16(unsafe.Offsetof(SkBuff{}.DataEnd))
)

// packetHost is PACKET_HOST (include/uapi/linux/if_packet.h): a packet
// for this host, the only type the IP layer accepts.
const packetHost = 0

// bpfSock mirrors the start of the kernel's struct bpf_sock, enough to read
// the state of a socket returned by a lookup helper.
type bpfSock struct {
	BoundDevIf uint32
	Family     uint32
	Type       uint32
	Protocol   uint32
	Mark       uint32
	Priority   uint32
	SrcIP4     uint32
	SrcIP6     [4]uint32
	SrcPort    uint32
	DstPort    uint16
	_          uint16
	DstIP4     uint32
	DstIP6     [4]uint32
	State      uint32
}

const sockState = int16(unsafe.Offsetof(bpfSock{}.State))

// Socket states (include/net/tcp_states.h). A connected UDP socket is
// TCP_ESTABLISHED too.
const (
	tcpEstablished = 1
	tcpTimeWait    = 6
	tcpListen      = 10
)

// sockTupleV4 and sockTupleV6 mirror the two halves of struct bpf_sock_tuple;
// the lookup helpers tell them apart by size.
type sockTupleV4 struct {
	Saddr [4]byte
	Daddr [4]byte
	Sport [2]byte
	Dport [2]byte
}

type sockTupleV6 struct {
	Saddr [16]byte
	Daddr [16]byte
	Sport [2]byte
	Dport [2]byte
}

const (
	tupleV4Size  = int32(unsafe.Sizeof(sockTupleV4{}))
	tupleV6Size  = int32(unsafe.Sizeof(sockTupleV6{}))
	tupleV4Sport = int16(unsafe.Offsetof(sockTupleV4{}.Sport))
	tupleV4Dport = int16(unsafe.Offsetof(sockTupleV4{}.Dport))
	tupleV6Sport = int16(unsafe.Offsetof(sockTupleV6{}.Sport))
	tupleV6Dport = int16(unsafe.Offsetof(sockTupleV6{}.Dport))
)

// tc verdicts (include/uapi/linux/pkt_cls.h).
const (
	// ActUnspec (TC_ACT_UNSPEC, TCX_NEXT) is how the programs pass a packet:
	// the next TC filter or tcx program, if another tool has one on the same
	// hook, still sees it; with none left the packet goes on as with ActOK.
	ActUnspec = -1
	// ActOK passes the packet on and ends the hook's classification.
	ActOK = 0
	// ActShot drops the packet.
	ActShot = 2
	// ActRedirect is what bpf_redirect and bpf_redirect_peer return on success.
	ActRedirect = 7
)

// Helper flags.
const (
	// bpfCurrentNetns asks a socket lookup helper for the netns of skb->dev.
	bpfCurrentNetns = -1
)

// Packet header layout: Ethernet, IPv4, IPv6 and the L4 port fields.
const (
	ethHlen     = 14
	ethOffDst   = 0
	ethOffProto = 12

	ipv4MinHlen  = 20
	ipv4OffVIHL  = 0
	ipv4OffFrag  = 6
	ipv4OffProto = 9
	ipv4OffCsum  = 10
	ipv4OffSaddr = 12
	ipv4OffDaddr = 16

	ipv6Hlen     = 40
	ipv6OffVer   = 0
	ipv6OffNext  = 6
	ipv6OffSaddr = 8
	ipv6OffDaddr = 24

	// Every IPv6 extension header starts with next header and length.
	ipv6ExtOffNext = 0
	ipv6ExtOffLen  = 1
	// A fragment header is 8 bytes; bytes 2-3 hold the offset and flags.
	ipv6FragHlen   = 8
	ipv6FragOffOff = 2

	tcpOffFlags = 13
	tcpOffCsum  = 16
	tcpHlen     = 20
	tcpFlagSYN  = 0x02
	tcpFlagACK  = 0x10

	l4OffSport = 0
	l4OffDport = 2
	l4PortsLen = 4
	udpHlen    = 8
	udpOffCsum = 6
)

// EtherTypes.
const (
	ethPIPv4   = 0x0800
	ethPIPv6   = 0x86dd
	ethP8021Q  = 0x8100
	ethP8021AD = 0x88a8
	ethPARP    = 0x0806
)

// ARP over Ethernet for IPv4 (RFC 826): the fields read after the Ethernet
// header, and the length of the whole message.
const (
	arpOffPtype = 2  // protocol type: 0x0800
	arpOffHlen  = 4  // hardware address length: 6
	arpOffPlen  = 5  // protocol address length: 4
	arpOffSpa   = 14 // sender protocol address
	arpLen      = 28
)

// ICMPv6 types a pod may not send, or whose target is checked
// (RFC 4861): router advertisements and redirects are a router's,
// neighbour advertisements claim an address.
const (
	icmp6RouterSolicit = 133
	icmp6RouterAdvert  = 134
	icmp6NeighAdvert   = 136
	icmp6Redirect      = 137
	// icmp6NDTargetOff is where a neighbour advertisement's target address
	// starts, from the ICMPv6 header.
	icmp6NDTargetOff = 8
	// ndHopLimit is the hop limit of every neighbour discovery message:
	// one that crossed a router has less, and is not on-link.
	ndHopLimit    = 255
	ipv6OffHopLim = 7
)

// IP protocol numbers, and the IPv6 extension headers that the parser walks.
const (
	ipprotoHopOpts  = 0
	ipprotoICMP     = 1
	ipprotoTCP      = 6
	ipprotoUDP      = 17
	ipprotoRouting  = 43
	ipprotoFragment = 44
	ipprotoAH       = 51
	ipprotoICMPv6   = 58
	ipprotoDstOpts  = 60
)

// DNS port as pods send it.
const portDNS = 53

// be16 returns the value that a 16-bit load of the big-endian (network
// order) v yields on this host: the programs compare packet fields without
// swapping them.
func be16(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

// v4MappedWord is the native 32-bit value of bytes 8-11 of a v4-mapped IPv6
// address (00 00 ff ff).
func v4MappedWord() int32 {
	return int32(binary.NativeEndian.Uint32([]byte{0, 0, 0xff, 0xff}))
}

// nativeWord is the value a 32-bit load of b (four bytes of a packet or of
// a tuple) yields on this host.
func nativeWord(b [4]byte) int32 {
	return int32(binary.NativeEndian.Uint32(b[:]))
}
