package asm

import (
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// family holds what the per-family code of a program needs to know: the
// offsets of the addresses in the IP header and the size of a socket tuple.
// Each program is generated once per family (its labels prefixed with the
// family's name), so no path has to branch on the family again, and the
// verifier knows on each path how much header the parser checked.
type family struct {
	v6           bool
	name         string
	hlen         int32 // the fixed header: 20 or 40 bytes
	saddr, daddr int16 // offsets from the start of the IP header
	tupleSize    int32
	tupleSport   int16
	tupleDport   int16
}

var (
	ipv4 = family{name: "v4", hlen: ipv4MinHlen, saddr: ipv4OffSaddr, daddr: ipv4OffDaddr,
		tupleSize: tupleV4Size, tupleSport: tupleV4Sport, tupleDport: tupleV4Dport}
	ipv6 = family{v6: true, name: "v6", hlen: ipv6Hlen, saddr: ipv6OffSaddr, daddr: ipv6OffDaddr,
		tupleSize: tupleV6Size, tupleSport: tupleV6Sport, tupleDport: tupleV6Dport}
	families = []family{ipv4, ipv6}
)

// label names a block of this family's code.
func (f family) label(prog, name string) string { return prog + "_" + f.name + "_" + name }

// addrLen is the address size in bytes.
func (f family) addrLen() int16 {
	if f.v6 {
		return 16
	}
	return 4
}

// parse validates the IP header (see parseIPv4, parseIPv6).
func (f family) parse(bad string) asm.Instructions {
	if f.v6 {
		return parseIPv6(bad)
	}
	return parseIPv4(bad)
}

// l4 walks to the upper-layer header (see ipv4L4, ipv6L4).
func (f family) l4(prefix string, l l4Labels) asm.Instructions {
	if f.v6 {
		return ipv6L4(prefix, l)
	}
	return ipv4L4(l)
}

// checkBounds jumps to short unless the fixed IP header is in the frame.
// The parser checked it already on the way here; the verifier wants it
// again where it cannot tie that check to this path.
func (f family) checkBounds(short string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R0, regData),
		asm.Add.Imm(asm.R0, ethHlen+f.hlen),
		asm.JGT.Reg(asm.R0, regDataEnd, short),
	}
}

// l4Bounds jumps to short unless the n bytes from the L4 header (R9) on
// are in the frame. Clobbers R0.
func l4Bounds(n int32, short string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R0, regL4),
		asm.Add.Imm(asm.R0, n),
		asm.JGT.Reg(asm.R0, regDataEnd, short),
	}
}

// jumpIfSYN jumps to label for a connection request: a TCP segment with
// SYN and without ACK. The TCP flags must be bounds-checked from R9.
// Clobbers R1.
func jumpIfSYN(label string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, regL4, tcpOffFlags, asm.Byte),
		asm.And.Imm(asm.R1, tcpFlagSYN|tcpFlagACK),
		asm.JEq.Imm(asm.R1, tcpFlagSYN, label),
	}
}

// jumpUnlessSYN jumps to label for a TCP segment that is not a connection
// request (see jumpIfSYN). Clobbers R1.
func jumpUnlessSYN(label string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, regL4, tcpOffFlags, asm.Byte),
		asm.And.Imm(asm.R1, tcpFlagSYN|tcpFlagACK),
		asm.JNE.Imm(asm.R1, tcpFlagSYN, label),
	}
}

// tcpOrUDP jumps to tcp or udp by the L4 protocol (R3); any other protocol
// is dropped (dropped_protocol).
func tcpOrUDP(tcp, udp string) asm.Instructions {
	return asm.Instructions{
		asm.JEq.Imm(regProto, ipprotoTCP, tcp),
		asm.JEq.Imm(regProto, ipprotoUDP, udp),
		asm.Ja.Label(labelDroppedProtocol),
	}
}

// jumpIfOptions jumps to label when the IP header carries IPv4 options or
// IPv6 extension headers: R9 (the L4 header) is not right after the fixed
// header. A packet that passes on an exception made for its destination
// (a probe's reply, DNS to a resolver) must carry none: a source route
// (IPv4 LSRR/SSRR, an IPv6 routing header) would let the node relay it
// elsewhere.
func (f family) jumpIfOptions(label string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, regL4),
		asm.Sub.Reg(asm.R1, regData),
		asm.JNE.Imm(asm.R1, ethHlen+f.hlen, label),
	}
}

// lookupEndpoint finds the endpoint of the address at field (an offset
// into the IP header, whose fixed part must be bounds-checked on this path)
// the way DESIGN's endpoints cache works: its slot first (an array lookup
// that the verifier inlines), and the endpoints map only when the slot
// holds another address and its Overflow says the map has more. Found: it
// falls through with R0 pointing at the [maps.Endpoint]. Not found: it
// jumps to miss. Clobbers R0-R5.
func (f family) lookupEndpoint(prefix string, field int16, miss string) asm.Instructions {
	slotMiss := prefix + "_slot_miss"
	found := prefix + "_found"
	pkt := int16(ethHlen) + field

	// R2 = the slot index, as maps.SlotOf computes it: the key's four
	// words XORed (an IPv4 key's first two are zero, its third the
	// v4-mapped marker), the high half folded into the low.
	var insns asm.Instructions
	if f.v6 {
		insns = asm.Instructions{
			asm.LoadMem(asm.R2, regData, pkt, asm.Word),
			asm.LoadMem(asm.R1, regData, pkt+4, asm.Word),
			asm.Xor.Reg32(asm.R2, asm.R1),
			asm.LoadMem(asm.R1, regData, pkt+8, asm.Word),
			asm.Xor.Reg32(asm.R2, asm.R1),
			asm.LoadMem(asm.R1, regData, pkt+12, asm.Word),
			asm.Xor.Reg32(asm.R2, asm.R1),
		}
	} else {
		insns = asm.Instructions{
			asm.LoadMem(asm.R2, regData, pkt, asm.Word),
			asm.Xor.Imm32(asm.R2, v4MappedWord()),
		}
	}
	insns = append(insns,
		asm.Mov.Reg32(asm.R1, asm.R2),
		asm.RSh.Imm32(asm.R1, 16),
		asm.Xor.Reg32(asm.R2, asm.R1),
		asm.And.Imm32(asm.R2, maps.CacheSlots-1),
		asm.StoreMem(asm.RFP, stackKey, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(maps.CacheName),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, miss),
	)

	// Is the slot's key this address?
	if f.v6 {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.R0, maps.SlotOffKey, asm.DWord),
			asm.LoadMem(asm.R2, regData, pkt, asm.DWord),
			asm.JNE.Reg(asm.R1, asm.R2, slotMiss),
			asm.LoadMem(asm.R1, asm.R0, maps.SlotOffKey+8, asm.DWord),
			asm.LoadMem(asm.R2, regData, pkt+8, asm.DWord),
			asm.JNE.Reg(asm.R1, asm.R2, slotMiss),
		)
	} else {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.R0, maps.SlotOffKey+12, asm.Word),
			asm.LoadMem(asm.R2, regData, pkt, asm.Word),
			asm.JNE.Reg(asm.R1, asm.R2, slotMiss),
			asm.LoadMem(asm.R1, asm.R0, maps.SlotOffKey+8, asm.Word),
			// A 32-bit compare: a 64-bit one sign-extends the immediate.
			asm.JNE.Imm32(asm.R1, v4MappedWord(), slotMiss),
			asm.LoadMem(asm.R1, asm.R0, maps.SlotOffKey, asm.DWord),
			asm.JNE.Imm(asm.R1, 0, slotMiss),
		)
	}
	insns = append(insns,
		asm.Add.Imm(asm.R0, int32(maps.SlotOffEndpoint)),
		asm.Ja.Label(found),
	)

	// Another address holds the slot: the map knows the rest, if any.
	return concat(
		insns,
		at(slotMiss,
			asm.LoadMem(asm.R1, asm.R0, maps.SlotOffOverflow, asm.Word),
			asm.JEq.Imm(asm.R1, 0, miss),
		),
		podKeyFromPacket(f.v6, field),
		asm.Instructions{
			asm.LoadMapPtr(asm.R1, 0).WithReference(maps.EndpointsName),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, stackPodKey),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, miss),
		},
		at(found, asm.Mov.Reg(asm.R0, asm.R0)),
	)
}

// checkSource is the source check of what a pod sends: the packet's source
// address must be one the endpoints map gives to an ambient pod on this
// very interface (skb->ifindex), or it jumps to spoofed. On the way on,
// the pod's flags are in the stackFlags slot. Clobbers R0-R5.
func (f family) checkSource(prefix, spoofed string) asm.Instructions {
	return concat(
		f.checkBounds(labelParseErr),
		f.lookupEndpoint(prefix, f.saddr, spoofed),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.StoreMem(asm.RFP, stackFlags, asm.R1, asm.Word),
			asm.And.Imm(asm.R1, int32(maps.EndpointPod)),
			asm.JEq.Imm(asm.R1, 0, spoofed),
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffIfindex, asm.Word),
			asm.LoadMem(asm.R2, regCtx, skbIfindex, asm.Word),
			asm.JNE.Reg(asm.R1, asm.R2, spoofed),
		},
	)
}

// tupleFromPacket writes the packet's own socket tuple (its addresses and
// ports, as the lookup helpers take them from the receiver's point of view)
// to stackTuple; reversed, the tuple of the packet's sender (its source as
// the local end). The ports must be bounds-checked from R9.
func (f family) tupleFromPacket(reversed bool) asm.Instructions {
	var insns asm.Instructions
	n := f.addrLen()
	src, dst := f.saddr, f.daddr
	sport, dport := int16(l4OffSport), int16(l4OffDport)
	if reversed {
		src, dst, sport, dport = dst, src, dport, sport
	}
	for off := int16(0); off < n; off += 4 {
		insns = append(insns,
			asm.LoadMem(asm.R1, regData, ethHlen+src+off, asm.Word),
			asm.StoreMem(asm.RFP, stackTuple+off, asm.R1, asm.Word),
			asm.LoadMem(asm.R1, regData, ethHlen+dst+off, asm.Word),
			asm.StoreMem(asm.RFP, stackTuple+n+off, asm.R1, asm.Word),
		)
	}
	return append(insns,
		asm.LoadMem(asm.R1, regL4, sport, asm.Half),
		asm.StoreMem(asm.RFP, stackTuple+f.tupleSport, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, regL4, dport, asm.Half),
		asm.StoreMem(asm.RFP, stackTuple+f.tupleDport, asm.R1, asm.Half),
	)
}

// wildcardTuple writes a tuple of zero addresses and source port with
// destination port port: a listener lookup as Istio made it, which finds
// the socket bound to the wildcard address on that port (ztunnel's), and
// is cheaper than one with the packet's addresses.
func (f family) wildcardTuple(port uint16) asm.Instructions {
	var insns asm.Instructions
	for off := int32(0); off < f.tupleSize; off += 4 {
		insns = append(insns, asm.StoreImm(asm.RFP, stackTuple+int16(off), 0, asm.Word))
	}
	return append(insns, asm.StoreImm(asm.RFP, stackTuple+f.tupleDport, int64(be16(port)), asm.Half))
}

// skcLookupTCP calls bpf_skc_lookup_tcp with the tuple at stackTuple, in the
// netns whose id is in R4 (bpfCurrentNetns: the netns of skb->dev). R0 is
// the socket or NULL; a socket must be released.
func (f family) skcLookupTCP() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, regCtx),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackTuple),
		asm.Mov.Imm(asm.R3, f.tupleSize),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkcLookupTcp.Call(),
	}
}

// exactSocket looks up the socket of the program's own netns for the
// packet's exact tuple (bpf_skc_lookup_tcp: a request socket too, so a
// retransmitted SYN finds it). Without one it jumps to none; a listener
// jumps to listener and a socket in TIME_WAIT to timeWait, each with the
// socket in R0, to be released. Any other socket falls through in R0, with
// stackProto = 1 (established, for assignSocket). The fixed IP header and
// the ports must be bounds-checked. Clobbers R0-R5.
func (f family) exactSocket(none, listener, timeWait string) asm.Instructions {
	return concat(
		f.tupleFromPacket(false),
		asm.Instructions{asm.Mov.Imm(asm.R4, bpfCurrentNetns)},
		f.skcLookupTCP(),
		asm.Instructions{
			asm.JEq.Imm(asm.R0, 0, none),
			asm.LoadMem(asm.R1, asm.R0, sockState, asm.Word),
			asm.JEq.Imm(asm.R1, tcpListen, listener),
			asm.JEq.Imm(asm.R1, tcpTimeWait, timeWait),
			asm.StoreImm(asm.RFP, stackProto, 1, asm.Word),
		},
	)
}

// socketState looks up the tuple at stackTuple in the netns whose id is in
// R4 and jumps to none without a socket; with one, it releases it and
// leaves its state (TCP_LISTEN, TCP_TIME_WAIT, ...) in R2. Clobbers R0-R5
// and stackProto.
func (f family) socketState(none string) asm.Instructions {
	return concat(
		f.skcLookupTCP(),
		asm.Instructions{
			asm.JEq.Imm(asm.R0, 0, none),
			// The state is read before the release, which ends the
			// reference; the stack keeps it across the call.
			asm.LoadMem(asm.R2, asm.R0, sockState, asm.Word),
			asm.StoreMem(asm.RFP, stackProto, asm.R2, asm.Word),
			asm.Mov.Reg(asm.R1, asm.R0),
			asm.FnSkRelease.Call(),
			asm.LoadMem(asm.R2, asm.RFP, stackProto, asm.Word),
		},
	)
}

// skLookupUDP calls bpf_sk_lookup_udp with the tuple at stackTuple in the
// netns of skb->dev.
func (f family) skLookupUDP() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, regCtx),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackTuple),
		asm.Mov.Imm(asm.R3, f.tupleSize),
		asm.Mov.Imm(asm.R4, bpfCurrentNetns),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkLookupUdp.Call(),
	}
}

// netnsKind says which network namespace a socket lookup searches.
type netnsKind int

const (
	// netnsCurrent: the netns of skb->dev, the program's own.
	netnsCurrent netnsKind = iota
	// netnsZtunnelMap: ztunnel's, by the netns id the ztunnel map holds
	// when its ZtunnelNetnsID flag says so; no lookup without it.
	netnsZtunnelMap
	// netnsID: the netns of a fixed id (an id as the program's netns
	// knows it), built into the program.
	netnsID
	// netnsUnknown: no lookup; nothing is ever found.
	netnsUnknown
)

// netnsRef is where a socket lookup looks.
type netnsRef struct {
	kind netnsKind
	id   int32 // for netnsID
}

// hostNetns is the netns of id, or none when id is negative (unknown): a
// negative id would make the helpers search the program's own netns.
func hostNetns(id int32) netnsRef {
	if id < 0 {
		return netnsRef{kind: netnsUnknown}
	}
	return netnsRef{kind: netnsID, id: id}
}

// socketIn jumps to found when ns holds a TCP socket that is not a listener
// for the tuple at stackTuple, and goes on after the block otherwise.
// Clobbers R0-R5.
func (f family) socketIn(prefix string, ns netnsRef, found string) asm.Instructions {
	none := prefix + "_none"
	var netns asm.Instructions
	switch ns.kind {
	case netnsUnknown:
		return at(none, asm.Mov.Reg(asm.R0, asm.R0))
	case netnsCurrent:
		netns = asm.Instructions{asm.Mov.Imm(asm.R4, bpfCurrentNetns)}
	case netnsID:
		netns = asm.Instructions{asm.Mov.Imm(asm.R4, ns.id)}
	case netnsZtunnelMap:
		netns = asm.Instructions{
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R2, asm.R1, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R2, int32(maps.ZtunnelNetnsID)),
			asm.JEq.Imm(asm.R2, 0, none),
			asm.LoadMem(asm.R4, asm.R1, maps.ZtunnelOffNetnsID, asm.Word),
		}
	}
	return concat(
		netns,
		f.socketState(none),
		asm.Instructions{
			asm.JNE.Imm(asm.R2, tcpListen, found),
			asm.Ja.Label(none),
		},
		at(none, asm.Mov.Reg(asm.R0, asm.R0)),
	)
}

// flagsOf puts the endpoint flags of the address at field (an offset from
// the L3 header) in the stackFlags slot: zero for an address the endpoints
// map does not hold. Clobbers R0-R5.
func (f family) flagsOf(prefix string, field int16) asm.Instructions {
	none := prefix + "_none"
	done := prefix + "_done"
	return concat(
		f.checkBounds(labelParseErr),
		f.lookupEndpoint(prefix, field, none),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.R0, maps.EndpointOffFlags, asm.Half),
			asm.StoreMem(asm.RFP, stackFlags, asm.R1, asm.Word),
			asm.Ja.Label(done),
		},
		at(none, asm.StoreImm(asm.RFP, stackFlags, 0, asm.Word)),
		at(done, asm.Mov.Reg(asm.R0, asm.R0)),
	)
}
