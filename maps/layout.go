package maps

import (
	"fmt"
	"net"
	"net/netip"
	"unsafe"
)

// PodKey is the key of the pods map: an IP address in 16 bytes, an IPv4
// address in its v4-mapped form (::ffff:a.b.c.d), so that one hash map holds
// both families and the programs build the key with two stores.
type PodKey [16]byte

// KeyFor returns the pods map key of addr.
func KeyFor(addr netip.Addr) PodKey {
	return PodKey(addr.As16())
}

// Addr returns the address the key stands for, IPv4 unmapped.
func (k PodKey) Addr() netip.Addr {
	return netip.AddrFrom16(k).Unmap()
}

// Pod is the value of the pods map: where a pod of this node is reached.
type Pod struct {
	// Ifindex is the index of the pod's host-side veth in the node's netns.
	Ifindex uint32
	// MAC is the address of the pod's eth0, the destination MAC of packets
	// that ztunnel hands back to the pod.
	MAC [6]byte
	// Flags is reserved for per-pod options; no program reads it yet.
	Flags uint16
}

// Byte offsets of the fields of [Pod], read by the programs.
const (
	PodOffIfindex = int16(unsafe.Offsetof(Pod{}.Ifindex))
	PodOffMAC     = int16(unsafe.Offsetof(Pod{}.MAC))
	PodOffFlags   = int16(unsafe.Offsetof(Pod{}.Flags))
	PodSize       = uint32(unsafe.Sizeof(Pod{}))
)

// Ztunnel is the single value of the ztunnel map: the node's proxy.
type Ztunnel struct {
	// Ifindex is the index of ztunnel's host-side veth in the node's netns.
	Ifindex uint32
	// MAC is the address of ztunnel's eth0.
	MAC [6]byte
	// Flags is a set of ZtunnelReady, ZtunnelCaptureDNS and ZtunnelFailOpen.
	Flags uint16
	// IPv4 is ztunnel's pod IPv4 address, v4-mapped; zero if it has none.
	// The assign program passes packets addressed to ztunnel itself.
	IPv4 [16]byte
	// IPv6 is ztunnel's pod IPv6 address; zero if it has none.
	IPv6 [16]byte
}

// Byte offsets of the fields of [Ztunnel], read by the programs.
const (
	ZtunnelOffIfindex = int16(unsafe.Offsetof(Ztunnel{}.Ifindex))
	ZtunnelOffMAC     = int16(unsafe.Offsetof(Ztunnel{}.MAC))
	ZtunnelOffFlags   = int16(unsafe.Offsetof(Ztunnel{}.Flags))
	ZtunnelOffIPv4    = int16(unsafe.Offsetof(Ztunnel{}.IPv4))
	ZtunnelOffIPv6    = int16(unsafe.Offsetof(Ztunnel{}.IPv6))
	ZtunnelSize       = uint32(unsafe.Sizeof(Ztunnel{}))
)

// Flags of [Ztunnel].
const (
	// ZtunnelReady is set while a Ready ztunnel serves this node. Without it,
	// captured traffic is dropped (fail closed) unless ZtunnelFailOpen is set.
	ZtunnelReady uint16 = 1 << iota
	// ZtunnelCaptureDNS sends pods' DNS (UDP port 53) to ztunnel's port 15053
	// instead of letting it pass.
	ZtunnelCaptureDNS
	// ZtunnelFailOpen lets captured traffic pass while ztunnel is not ready.
	ZtunnelFailOpen
)

// NodeAddr is a value of the node map: the node's address that kubelet
// probes come from, v4-mapped in the IPv4 slot. All zero means unset.
type NodeAddr struct {
	Addr [16]byte
}

// Indexes of the node map.
const (
	NodeIPv4 uint32 = 0
	NodeIPv6 uint32 = 1
)

// NodeOffAddr is the byte offset of the address in a [NodeAddr].
const NodeOffAddr = int16(unsafe.Offsetof(NodeAddr{}.Addr))

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

// Verdicts, one counter each.
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
	// (the socket was closing). A packet of an established socket is still
	// marked and passed, for the stack's own lookup; a listener's is dropped.
	VerdictAssignFailed
	// VerdictMarked: a captured TCP segment of an existing flow, marked for
	// local delivery to the socket that ztunnel's stack finds by its tuple.
	VerdictMarked
	// VerdictDroppedSpoofed: a pod's packet that would start a flow with a
	// source address the pods map does not give to its veth, dropped.
	VerdictDroppedSpoofed

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
	"dropped_spoofed",
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
