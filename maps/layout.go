package maps

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"unsafe"
)

// Key is the key of the endpoints map and of a cache slot: an IP address in
// 16 bytes, an IPv4 address in its v4-mapped form (::ffff:a.b.c.d), so that
// one map holds both families and the programs build a key with two stores.
type Key [16]byte

// KeyFor returns the key of addr.
func KeyFor(addr netip.Addr) Key {
	return Key(addr.As16())
}

// Addr returns the address the key stands for, IPv4 unmapped.
func (k Key) Addr() netip.Addr {
	return netip.AddrFrom16(k).Unmap()
}

// Endpoint is the value of the endpoints map: what an address of this node
// is to the programs. An address can have several roles at once (a node
// address that is also a DNS resolver).
type Endpoint struct {
	// Ifindex is, for an ambient pod, the index of its host-side veth in
	// the node's netns; zero for other roles.
	Ifindex uint32
	// MAC is, for an ambient pod, the address of its eth0: the destination
	// MAC of packets that ztunnel hands back to the pod.
	MAC [6]byte
	// Flags are the address's roles (EndpointPod, EndpointNode,
	// EndpointResolver) and, for a pod, its own policy
	// (EndpointBypassInbound, EndpointBypassDNS, EndpointUDPDrop).
	Flags uint16
}

// Byte offsets of the fields of [Endpoint], read by the programs.
const (
	EndpointOffIfindex = int16(unsafe.Offsetof(Endpoint{}.Ifindex))
	EndpointOffMAC     = int16(unsafe.Offsetof(Endpoint{}.MAC))
	EndpointOffFlags   = int16(unsafe.Offsetof(Endpoint{}.Flags))
	EndpointSize       = uint32(unsafe.Sizeof(Endpoint{}))
)

// Flags of [Endpoint].
const (
	// EndpointPod: an ambient pod of this node; Ifindex and MAC are set.
	EndpointPod uint16 = 1 << iota
	// EndpointNode: an address of the node itself (its host IPs, a CNI's
	// gateway on a bridge or on host veths). A pod's TCP to it passes only
	// when it belongs to a connection the node opened (a probe's reply).
	EndpointNode
	// EndpointResolver: a DNS resolver that pods may query under the strict
	// UDP policy.
	EndpointResolver
	// EndpointBypassInbound (pod): inbound plaintext TCP is not captured
	// (ambient.istio.io/bypass-inbound-capture: "true"); HBONE still is.
	EndpointBypassInbound
	// EndpointBypassDNS (pod): its DNS is never sent to ztunnel's DNS proxy
	// (ambient.istio.io/bypass-dns-capture: "true").
	EndpointBypassDNS
	// EndpointUDPDrop (pod): the strict UDP policy applies to this pod
	// whatever the node's policy.
	EndpointUDPDrop
)

// IsPod reports whether e is an ambient pod's entry.
func (e Endpoint) IsPod() bool { return e.Flags&EndpointPod != 0 }

// Slot is a value of the endpoints cache: one address and its [Endpoint],
// at the index [SlotOf] gives the address. The programs look an address up
// here first: an array lookup, which the verifier inlines into a few
// instructions, where a hash lookup costs a helper call and a hash (the
// benchmark's building blocks: 0.5 ns against 5.5 ns above an empty
// program on a quiet machine, 1 against 31 on a loaded one). Only when the slot holds
// another address and Overflow is set do they look in the endpoints map.
type Slot struct {
	Key Key
	Endpoint
	// Overflow is non-zero when addresses other than Key with this slot's
	// index are in the endpoints map: a lookup that misses the slot must
	// then ask the map.
	Overflow uint32
}

// Byte offsets of the fields of [Slot], read by the programs.
const (
	SlotOffKey      = int16(unsafe.Offsetof(Slot{}.Key))
	SlotOffEndpoint = int16(unsafe.Offsetof(Slot{}.Endpoint))
	SlotOffOverflow = int16(unsafe.Offsetof(Slot{}.Overflow))
	SlotSize        = uint32(unsafe.Sizeof(Slot{}))
)

// CacheSlots is the number of slots of the endpoints cache (2 MiB of
// slots). An index keeps the low 16 bits of an address's words folded
// together, so the addresses of one /16 (IPv4) or of one run of 65536
// consecutive addresses (IPv6, as IPAM plugins hand them out) never share a
// slot.
const CacheSlots = 1 << 16

// SlotOf returns the index of k's slot in the endpoints cache: the four
// 32-bit words of the key, loaded in host byte order as the programs load
// them, XORed together, then the high half XORed into the low half. The
// programs compute the same (asm's slotIndex); a test checks that both
// agree.
func SlotOf(k Key) uint32 {
	var x uint32
	for i := 0; i < 16; i += 4 {
		x ^= binary.NativeEndian.Uint32(k[i : i+4])
	}
	x ^= x >> 16
	return x & (CacheSlots - 1)
}

// Ztunnel is the single value of the ztunnel map: the node's proxy.
type Ztunnel struct {
	// Ifindex is the index of ztunnel's host-side veth in the node's netns.
	Ifindex uint32
	// MAC is the address of ztunnel's eth0.
	MAC [6]byte
	// Flags is a set of the Ztunnel* flags below.
	Flags uint16
	// IPv4 is ztunnel's pod IPv4 address, v4-mapped; zero if it has none.
	// The assign program passes packets addressed to ztunnel itself.
	IPv4 [16]byte
	// IPv6 is ztunnel's pod IPv6 address; zero if it has none.
	IPv6 [16]byte
	// NetnsID is the id of ztunnel's netns as the node's netns knows it
	// (its host veth's IFLA_LINK_NETNSID), valid with ZtunnelNetnsID: the
	// app programs look up ztunnel's sockets by it (bpf_skc_lookup_tcp's
	// netns argument) to tell ztunnel's connections with a pod's source
	// from the node's own.
	NetnsID uint32
}

// Byte offsets of the fields of [Ztunnel], read by the programs.
const (
	ZtunnelOffIfindex = int16(unsafe.Offsetof(Ztunnel{}.Ifindex))
	ZtunnelOffMAC     = int16(unsafe.Offsetof(Ztunnel{}.MAC))
	ZtunnelOffFlags   = int16(unsafe.Offsetof(Ztunnel{}.Flags))
	ZtunnelOffIPv4    = int16(unsafe.Offsetof(Ztunnel{}.IPv4))
	ZtunnelOffIPv6    = int16(unsafe.Offsetof(Ztunnel{}.IPv6))
	ZtunnelOffNetnsID = int16(unsafe.Offsetof(Ztunnel{}.NetnsID))
	ZtunnelSize       = uint32(unsafe.Sizeof(Ztunnel{}))
)

// Flags of [Ztunnel].
const (
	// ZtunnelReady is set while a Ready ztunnel serves this node. Without it,
	// captured traffic is dropped (fail closed) unless ZtunnelFailOpen is set.
	ZtunnelReady uint16 = 1 << iota
	// ZtunnelCaptureDNS sends pods' DNS (UDP and TCP to port 53) to
	// ztunnel's DNS proxy on 15053.
	ZtunnelCaptureDNS
	// ZtunnelFailOpen lets captured traffic pass while ztunnel is not ready.
	ZtunnelFailOpen
	// ZtunnelUDPDrop is the node's strict UDP policy: pods' UDP (and
	// inbound ICMP) is dropped, except DNS to and from the resolvers.
	ZtunnelUDPDrop
	// ZtunnelNetnsID says that NetnsID is set.
	ZtunnelNetnsID
)

// RelayPorts is the single value of the relays map: a bitmap of the UDP
// ports on which the node decapsulates what it receives and forwards the
// inner packet (the ports of its VXLAN, Geneve and FOU tunnels), bit
// port%8 of byte port/8, the port in host order. A pod's UDP to one of the
// node's addresses on such a port is dropped: passed, the node would
// forward whatever the pod put inside, past ztunnel.
type RelayPorts [65536 / 8]byte

// Set marks port as a relay.
func (r *RelayPorts) Set(port uint16) { r[port/8] |= 1 << (port % 8) }

// Has reports whether port is a relay.
func (r *RelayPorts) Has(port uint16) bool { return r[port/8]&(1<<(port%8)) != 0 }

// Ports lists the relay ports.
func (r *RelayPorts) Ports() []uint16 {
	var out []uint16
	for p := 0; p < 65536; p++ {
		if r.Has(uint16(p)) {
			out = append(out, uint16(p))
		}
	}
	return out
}

// Counter is the per-CPU value of the stats map.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Byte offsets of the fields of [Counter], updated by the programs.
const (
	CounterOffPackets = int16(unsafe.Offsetof(Counter{}.Packets))
	CounterOffBytes   = int16(unsafe.Offsetof(Counter{}.Bytes))
)

// Verdict is the key of the stats map: what a program did with a packet.
type Verdict uint32

// Verdicts, one counter each. Their numbers are the stats map's keys: new
// verdicts are added at the end.
const (
	// VerdictRedirectedOut: an ambient pod's packet sent to ztunnel (app outbound).
	VerdictRedirectedOut Verdict = iota
	// VerdictRedirectedIn: a packet for an ambient pod sent to ztunnel (app inbound).
	VerdictRedirectedIn
	// VerdictBypass: a packet from ztunnel delivered to a pod without capture.
	VerdictBypass
	// VerdictPassed: a packet the rules let through untouched.
	VerdictPassed
	// VerdictDroppedNoZtunnel: captured while ztunnel was not ready (fail closed).
	VerdictDroppedNoZtunnel
	// VerdictAssigned: a socket of ztunnel's was assigned to the packet.
	VerdictAssigned
	// VerdictNoSocket: a captured packet for which ztunnel has no socket.
	VerdictNoSocket
	// VerdictParseError: a packet that could not be classified safely, dropped.
	VerdictParseError
	// VerdictAssignFailed: a socket was found but bpf_sk_assign refused it
	// (the socket was closing, or a SO_REUSEPORT listener before Linux
	// 6.5). A packet of an established socket is still marked and passed,
	// for the stack's own lookup; a listener's is dropped.
	VerdictAssignFailed
	// VerdictMarked: a captured TCP segment of an existing flow, marked for
	// local delivery to the socket that ztunnel's stack finds by its tuple.
	VerdictMarked
	// VerdictDroppedSpoofed: a packet whose source address is not its
	// sender's: from a pod, one the endpoints map does not give to its
	// veth; towards a pod or ztunnel, an ambient pod's address that did not
	// come from that pod through ztunnel.
	VerdictDroppedSpoofed
	// VerdictDroppedProtocol: an IP protocol no proxy carries (SCTP, GRE,
	// IPIP, ESP, ...) or an EtherType other than IPv4, IPv6 and ARP.
	VerdictDroppedProtocol
	// VerdictDroppedFragment: a later fragment of a protocol other than UDP
	// and ICMP (its first fragment went to ztunnel or was dropped).
	VerdictDroppedFragment
	// VerdictDroppedPolicy: UDP or ICMP dropped by the strict UDP policy.
	VerdictDroppedPolicy
	// VerdictDroppedRelay: a pod's UDP to a tunnel port of the node, which
	// would decapsulate it and forward what was inside.
	VerdictDroppedRelay

	numVerdicts
)

// Verdicts lists every verdict in stats map order.
func Verdicts() []Verdict {
	vs := make([]Verdict, numVerdicts)
	for i := range vs {
		vs[i] = Verdict(i)
	}
	return vs
}

var verdictNames = [numVerdicts]string{
	"redirected_out", "redirected_in", "bypass", "passed", "dropped_no_ztunnel",
	"assigned", "no_socket", "parse_error", "assign_failed", "marked",
	"dropped_spoofed", "dropped_protocol", "dropped_fragment", "dropped_policy",
	"dropped_relay",
}

// String returns the verdict's name as used in metrics and status output.
func (v Verdict) String() string {
	if v < numVerdicts {
		return verdictNames[v]
	}
	return fmt.Sprintf("verdict(%d)", uint32(v))
}

// MAC converts a hardware address to the 6-byte form of the map values.
func MAC(hw net.HardwareAddr) ([6]byte, error) {
	var mac [6]byte
	if len(hw) != len(mac) {
		return mac, fmt.Errorf("hardware address %q is not an Ethernet MAC", hw)
	}
	copy(mac[:], hw)
	return mac, nil
}

// Monitor is the single value of the monitor map: until when the programs
// write events to the events ring buffer, as bpf_ktime_get_ns deadlines
// (CLOCK_MONOTONIC nanoseconds). Zero, or a time past, means no monitor of
// that kind is attached: a program then pays one load and one compare at an
// exit, and no helper call. A monitor extends its deadline while it runs
// (see [MonitorMap.Extend]), so one killed with SIGKILL stops costing
// within MonitorLease.
type Monitor struct {
	// DropsUntil: the exits that drop a packet write an event.
	DropsUntil uint64
	// VerdictsUntil: the exits that do not drop write an event too. A
	// monitor of every verdict sets both deadlines.
	VerdictsUntil uint64
	// Lost counts the events the programs could not write because the
	// ring buffer was full (its reader slower than the packets). Only the
	// programs add to it; a monitor reports how much it grew while it ran.
	Lost uint64
}

// Byte offsets of the fields of [Monitor], read by the programs.
const (
	MonitorOffDropsUntil    = int16(unsafe.Offsetof(Monitor{}.DropsUntil))
	MonitorOffVerdictsUntil = int16(unsafe.Offsetof(Monitor{}.VerdictsUntil))
	MonitorOffLost          = int16(unsafe.Offsetof(Monitor{}.Lost))
)

// EventHeader starts every record of the events ring buffer; the first
// EventCapLen bytes of the packet (at most) follow it, from its Ethernet
// header, CapLen of them valid.
type EventHeader struct {
	// Timestamp is bpf_ktime_get_ns when the program wrote the event.
	Timestamp uint64
	// Ifindex is skb->ifindex: the device the program runs on, in its
	// network namespace (a pod's for the in-pod programs).
	Ifindex uint32
	// Len is skb->len, the whole packet's length.
	Len uint32
	// Mark is skb->mark at the exit.
	Mark uint32
	// Verdict is the verdict the packet was counted under.
	Verdict Verdict
	// CapLen is how many bytes of the packet follow; zero when
	// bpf_skb_load_bytes failed.
	CapLen uint16
	// Program is the program's number (asm.ProgramName names it).
	Program uint8
	// Dropped is 1 when the program returned TC_ACT_SHOT.
	Dropped uint8
	_       uint32
}

// Byte offsets of the fields of [EventHeader], written by the programs.
const (
	EventOffTimestamp = int16(unsafe.Offsetof(EventHeader{}.Timestamp))
	EventOffIfindex   = int16(unsafe.Offsetof(EventHeader{}.Ifindex))
	EventOffLen       = int16(unsafe.Offsetof(EventHeader{}.Len))
	EventOffMark      = int16(unsafe.Offsetof(EventHeader{}.Mark))
	EventOffVerdict   = int16(unsafe.Offsetof(EventHeader{}.Verdict))
	EventOffCapLen    = int16(unsafe.Offsetof(EventHeader{}.CapLen))
	EventOffProgram   = int16(unsafe.Offsetof(EventHeader{}.Program))
	EventOffDropped   = int16(unsafe.Offsetof(EventHeader{}.Dropped))
	EventOffPad       = int16(unsafe.Offsetof(EventHeader{}.Dropped) + 1)
	EventHeaderSize   = int16(unsafe.Sizeof(EventHeader{}))
)

// EventCapLen is the most bytes of a packet an event carries: an Ethernet
// header, IPv6 with a few extension headers, and TCP with options.
const EventCapLen = 128

// EventRecordSize is the size of every record the programs reserve.
const EventRecordSize = uint32(EventHeaderSize) + EventCapLen
