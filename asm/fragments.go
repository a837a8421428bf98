package asm

import (
	"fmt"

	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// Register conventions shared by every program and fragment:
//
//	R6  the context (*__sk_buff), for the whole program
//	R7  skb->data: the start of the Ethernet header
//	R8  skb->data_end
//	R9  after parsing, the start of the L4 header (not yet bounds-checked
//	    beyond what the parser says); later reused for an ifindex or a socket
//	R3  on entry to the labels a parser jumps to: the L4 protocol number
//
// R7 and R8 stay valid across the helpers used here: none of them changes
// packet data (bpf_helper_changes_pkt_data in the kernel).
const (
	regCtx     = asm.R6
	regData    = asm.R7
	regDataEnd = asm.R8
	regL4      = asm.R9
	regProto   = asm.R3
)

// Stack slots, as offsets from the frame pointer.
const (
	// stackKey is the 4-byte key of array map lookups.
	stackKey = -4
	// stackFlags keeps an endpoint's flags across helper calls.
	stackFlags = -8
	// stackProto keeps a small value (the L4 protocol, whether a socket
	// was established) across helper calls.
	stackProto = -12
	// stackPodKey is a 16-byte endpoints map key.
	stackPodKey = -32
	// stackTuple is a struct bpf_sock_tuple (36 bytes for IPv6).
	stackTuple = -72
)

// maxIPv6ExtHeaders bounds the IPv6 extension header walk. Linux itself has no
// limit; a chain longer than this from an ambient pod cannot be classified and
// is dropped as a parse error. Six covers every combination RFC 8200 §4.1
// recommends (hop-by-hop, destination options, routing, fragment, AH,
// destination options).
const maxIPv6ExtHeaders = 6

// at attaches label to the first instruction of insns. If that instruction
// already carries a label, a jump to it carries the new one.
func at(label string, insns ...asm.Instruction) asm.Instructions {
	if len(insns) == 0 {
		panic("asm: label " + label + " on an empty block")
	}
	if sym := insns[0].Symbol(); sym != "" {
		return append(asm.Instructions{asm.Ja.Label(sym).WithSymbol(label)}, insns...)
	}
	out := append(asm.Instructions(nil), insns...)
	out[0] = out[0].WithSymbol(label)
	return out
}

// concat joins instruction blocks.
func concat(blocks ...asm.Instructions) asm.Instructions {
	var out asm.Instructions
	for _, b := range blocks {
		out = append(out, b...)
	}
	return out
}

// loadPacket saves the context in R6 and loads the packet bounds into R7 and R8.
func loadPacket() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(regCtx, asm.R1),
		asm.LoadMem(regData, regCtx, skbData, asm.Word),
		asm.LoadMem(regDataEnd, regCtx, skbDataEnd, asm.Word),
	}
}

// loadZtunnel points dst at the ztunnel map's only value. An array of one
// entry gives the program its value's address directly (BPF_PSEUDO_MAP_VALUE,
// Linux 5.2): no lookup, no NULL check.
func loadZtunnel(dst asm.Register) asm.Instruction {
	return asm.LoadMapValue(dst, 0, 0).WithReference(maps.ZtunnelName)
}

// ethLabels are where parseEthernet goes.
type ethLabels struct {
	v4, v6 string
	// arp: an ARP frame.
	arp string
	// other: a frame of another EtherType (LLDP, MPLS, PPPoE, ...).
	other string
	// vlan: a frame with a VLAN tag, in-band or in skb metadata. The kernel
	// drops such frames on a veth without VLAN devices, but a program that
	// guards the mesh says so itself rather than rely on it.
	vlan string
	// short: fewer than 14 bytes.
	short string
}

// parseEthernet checks that the Ethernet header is present and branches on
// its EtherType. On exit R7..R8 bound at least 14 bytes.
func parseEthernet(l ethLabels) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R0, regData),
		asm.Add.Imm(asm.R0, ethHlen),
		asm.JGT.Reg(asm.R0, regDataEnd, l.short),

		asm.LoadMem(asm.R1, regCtx, skbVlanPresent, asm.Word),
		asm.JNE.Imm(asm.R1, 0, l.vlan),

		asm.LoadMem(asm.R1, regData, ethOffProto, asm.Half),
		asm.JEq.Imm(asm.R1, be16(ethPIPv4), l.v4),
		asm.JEq.Imm(asm.R1, be16(ethPIPv6), l.v6),
		asm.JEq.Imm(asm.R1, be16(ethPARP), l.arp),
		asm.JEq.Imm(asm.R1, be16(ethP8021Q), l.vlan),
		asm.JEq.Imm(asm.R1, be16(ethP8021AD), l.vlan),
		asm.Ja.Label(l.other),
	}
}

// parseIPv4 validates the IPv4 header (version 4, IHL of 5 or more, the whole
// header with its options inside the frame) and sets R9 to the L4 header.
func parseIPv4(bad string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R0, regData),
		asm.Add.Imm(asm.R0, ethHlen+ipv4MinHlen),
		asm.JGT.Reg(asm.R0, regDataEnd, bad),

		// R1 = version and IHL.
		asm.LoadMem(asm.R1, regData, ethHlen+ipv4OffVIHL, asm.Byte),
		asm.Mov.Reg(asm.R2, asm.R1),
		asm.And.Imm(asm.R2, 0xf0),
		asm.JNE.Imm(asm.R2, 0x40, bad),
		asm.And.Imm(asm.R1, 0x0f),
		asm.JLT.Imm(asm.R1, 5, bad),

		// R9 = L4 header, after any options (IHL is in 32-bit words).
		asm.LSh.Imm(asm.R1, 2),
		asm.Mov.Reg(regL4, regData),
		asm.Add.Imm(regL4, ethHlen),
		asm.Add.Reg(regL4, asm.R1),
		asm.JGT.Reg(regL4, regDataEnd, bad),
	}
}

// l4Labels are where the L4 step of a parser goes, with R3 = protocol.
type l4Labels struct {
	// icmp: ICMP (IPv4) or ICMPv6 (IPv6), a first or only fragment; R9
	// points at its header.
	icmp string
	// l4: a first or only fragment of any other protocol; R9 points at its
	// header (not yet bounds-checked).
	l4 string
	// fragment: a later fragment, without an L4 header; R3 is the
	// protocol its first fragment carried.
	fragment string
	// bad: an extension header chain that is truncated or too long.
	bad string
}

// ipv4L4 reads the protocol of a parsed IPv4 header and tells a later fragment
// (fragment offset not zero) from one that carries the L4 header.
func ipv4L4(l l4Labels) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(regProto, regData, ethHlen+ipv4OffProto, asm.Byte),
		asm.LoadMem(asm.R1, regData, ethHlen+ipv4OffFrag, asm.Half),
		asm.And.Imm(asm.R1, be16(0x1fff)),
		asm.JNE.Imm(asm.R1, 0, l.fragment),
		asm.JEq.Imm(regProto, ipprotoICMP, l.icmp),
		asm.Ja.Label(l.l4),
	}
}

// parseIPv6 validates the fixed IPv6 header (version 6, 40 bytes present).
func parseIPv6(bad string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R0, regData),
		asm.Add.Imm(asm.R0, ethHlen+ipv6Hlen),
		asm.JGT.Reg(asm.R0, regDataEnd, bad),
		asm.LoadMem(asm.R1, regData, ethHlen+ipv6OffVer, asm.Byte),
		asm.And.Imm(asm.R1, 0xf0),
		asm.JNE.Imm(asm.R1, 0x60, bad),
	}
}

// ipv6L4 walks at most maxIPv6ExtHeaders extension headers (hop-by-hop,
// routing, destination options, AH, fragment) to the upper-layer protocol,
// leaving R3 = protocol and R9 = its header. The walk is unrolled: every step
// is its own block, so that the verifier of old kernels, without bounded
// loops, accepts it too. prefix keeps its labels unique.
func ipv6L4(prefix string, l l4Labels) asm.Instructions {
	step := func(i int) string { return fmt.Sprintf("%s_ext%d", prefix, i) }
	insns := asm.Instructions{
		asm.LoadMem(regProto, regData, ethHlen+ipv6OffNext, asm.Byte),
		asm.Mov.Reg(regL4, regData),
		asm.Add.Imm(regL4, ethHlen+ipv6Hlen),
	}
	for i := 0; i < maxIPv6ExtHeaders; i++ {
		opts := fmt.Sprintf("%s_opts%d", prefix, i)
		ah := fmt.Sprintf("%s_ah%d", prefix, i)
		frag := fmt.Sprintf("%s_frag%d", prefix, i)
		insns = append(insns, concat(
			at(step(i),
				asm.JEq.Imm(regProto, ipprotoTCP, l.l4),
				asm.JEq.Imm(regProto, ipprotoUDP, l.l4),
				asm.JEq.Imm(regProto, ipprotoICMPv6, l.icmp),
				asm.JEq.Imm(regProto, ipprotoHopOpts, opts),
				asm.JEq.Imm(regProto, ipprotoRouting, opts),
				asm.JEq.Imm(regProto, ipprotoDstOpts, opts),
				asm.JEq.Imm(regProto, ipprotoFragment, frag),
				asm.JEq.Imm(regProto, ipprotoAH, ah),
				// Any other protocol: no more headers to walk.
				asm.Ja.Label(l.l4),
			),
			// Hop-by-hop, routing, destination options: length in 8-byte
			// units, not counting the first 8 bytes.
			at(opts, asm.Mov.Reg(asm.R0, regL4)),
			asm.Instructions{
				asm.Add.Imm(asm.R0, 8),
				asm.JGT.Reg(asm.R0, regDataEnd, l.bad),
				asm.LoadMem(regProto, regL4, ipv6ExtOffNext, asm.Byte),
				asm.LoadMem(asm.R1, regL4, ipv6ExtOffLen, asm.Byte),
				asm.Add.Imm(asm.R1, 1),
				asm.LSh.Imm(asm.R1, 3),
				asm.Add.Reg(regL4, asm.R1),
				asm.Ja.Label(step(i + 1)),
			},
			// AH: length in 4-byte units, not counting the first 8 bytes
			// (RFC 4302 §2.2).
			at(ah, asm.Mov.Reg(asm.R0, regL4)),
			asm.Instructions{
				asm.Add.Imm(asm.R0, 8),
				asm.JGT.Reg(asm.R0, regDataEnd, l.bad),
				asm.LoadMem(regProto, regL4, ipv6ExtOffNext, asm.Byte),
				asm.LoadMem(asm.R1, regL4, ipv6ExtOffLen, asm.Byte),
				asm.Add.Imm(asm.R1, 2),
				asm.LSh.Imm(asm.R1, 2),
				asm.Add.Reg(regL4, asm.R1),
				asm.Ja.Label(step(i + 1)),
			},
			// Fragment: a later fragment (offset not zero) has no upper-layer
			// header; a first fragment goes on with the next header.
			at(frag, asm.Mov.Reg(asm.R0, regL4)),
			asm.Instructions{
				asm.Add.Imm(asm.R0, ipv6FragHlen),
				asm.JGT.Reg(asm.R0, regDataEnd, l.bad),
				asm.LoadMem(regProto, regL4, ipv6ExtOffNext, asm.Byte),
				asm.LoadMem(asm.R1, regL4, ipv6FragOffOff, asm.Half),
				asm.And.Imm(asm.R1, be16(0xfff8)),
				asm.Add.Imm(regL4, ipv6FragHlen),
				asm.JEq.Imm(asm.R1, 0, step(i+1)),
				asm.Ja.Label(l.fragment),
			},
		)...)
	}
	// After the last header the walk allows, only an upper-layer protocol
	// may follow: another extension header means a chain longer than the
	// walk, which cannot be classified.
	last := step(maxIPv6ExtHeaders)
	return append(insns, at(last,
		asm.JEq.Imm(regProto, ipprotoTCP, l.l4),
		asm.JEq.Imm(regProto, ipprotoUDP, l.l4),
		asm.JEq.Imm(regProto, ipprotoICMPv6, l.icmp),
		asm.JEq.Imm(regProto, ipprotoHopOpts, l.bad),
		asm.JEq.Imm(regProto, ipprotoRouting, l.bad),
		asm.JEq.Imm(regProto, ipprotoDstOpts, l.bad),
		asm.JEq.Imm(regProto, ipprotoFragment, l.bad),
		asm.JEq.Imm(regProto, ipprotoAH, l.bad),
		asm.Ja.Label(l.l4),
	)...)
}

// podKeyFromPacket writes the endpoints map key of the address at packet offset
// field (from the start of the IP header) to the stack at stackPodKey: the
// IPv6 address as is, an IPv4 address v4-mapped.
func podKeyFromPacket(v6 bool, field int16) asm.Instructions {
	pkt := int16(ethHlen) + field
	if v6 {
		return asm.Instructions{
			asm.LoadMem(asm.R1, regData, pkt, asm.DWord),
			asm.StoreMem(asm.RFP, stackPodKey, asm.R1, asm.DWord),
			asm.LoadMem(asm.R1, regData, pkt+8, asm.DWord),
			asm.StoreMem(asm.RFP, stackPodKey+8, asm.R1, asm.DWord),
		}
	}
	return asm.Instructions{
		asm.StoreImm(asm.RFP, stackPodKey, 0, asm.Word),
		asm.StoreImm(asm.RFP, stackPodKey+4, 0, asm.Word),
		asm.StoreImm(asm.RFP, stackPodKey+8, int64(v4MappedWord()), asm.Word),
		asm.LoadMem(asm.R1, regData, pkt, asm.Word),
		asm.StoreMem(asm.RFP, stackPodKey+12, asm.R1, asm.Word),
	}
}

// rewriteDstMAC copies the 6-byte MAC at src+off (a map value) over the
// destination MAC of the frame. Needs the Ethernet header bounds-checked.
func rewriteDstMAC(src asm.Register, off int16) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, src, off, asm.Word),
		asm.StoreMem(regData, ethOffDst, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, src, off+4, asm.Half),
		asm.StoreMem(regData, ethOffDst+4, asm.R1, asm.Half),
	}
}

// countVerdict adds the packet to the per-CPU counter of v. It needs R6 and
// clobbers R0-R5. Per-CPU values need no atomics: tc programs run with
// bottom halves disabled, so nothing else on this CPU updates them meanwhile.
func countVerdict(v maps.Verdict) asm.Instructions {
	done := "count_" + v.String() + "_done"
	return asm.Instructions{
		asm.StoreImm(asm.RFP, stackKey, int64(v), asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(maps.StatsName),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, done),
		asm.LoadMem(asm.R1, asm.R0, maps.CounterOffPackets, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, maps.CounterOffPackets, asm.R1, asm.DWord),
		asm.LoadMem(asm.R2, regCtx, skbLen, asm.Word),
		asm.LoadMem(asm.R1, asm.R0, maps.CounterOffBytes, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R2),
		asm.StoreMem(asm.R0, maps.CounterOffBytes, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R0, asm.R0).WithSymbol(done),
	}
}

// exit is a verdict block: report the packet to a monitor (an attached one),
// count it under v and return action.
func exit(label string, v maps.Verdict, action int32) asm.Instructions {
	return at(label, concat(
		report(label, v, action == ActShot),
		countVerdict(v),
		asm.Instructions{asm.Mov.Imm(asm.R0, action), asm.Return()},
	)...)
}

// redirectTo reports and counts the packet under v and hands it to the interface whose
// index is in R9: into its peer's netns with bpf_redirect_peer when peer is
// set (only from an ingress hook), else out of it with bpf_redirect.
//
// Into the peer, the packet keeps the type the host side gave it, and the
// peer's IP layer drops anything but PACKET_HOST. A frame for another MAC
// (on a bridge: for the other pod or the bridge's gateway, flooded or not)
// is PACKET_OTHERHOST on the host veth; kernels since 6.7 (and the stable
// kernels it went back to) scrub the packet on a peer redirect, which makes
// it PACKET_HOST, but 5.10 does not: every captured flow of a bridge node
// failed there. So the program makes it PACKET_HOST itself, with
// bpf_skb_change_type, only when it is not.
func redirectTo(v maps.Verdict, peer bool) asm.Instructions {
	if !peer {
		return concat(report(v.String(), v, false), countVerdict(v), asm.Instructions{
			asm.Mov.Reg(asm.R1, regL4),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirect.Call(),
			asm.Return(),
		})
	}
	return concat(report(v.String(), v, false), countVerdict(v), asm.Instructions{
		asm.LoadMem(asm.R1, regCtx, skbPktType, asm.Word),
		asm.JEq.Imm(asm.R1, packetHost, "redirect_peer"),
		asm.Mov.Reg(asm.R1, regCtx),
		asm.Mov.Imm(asm.R2, packetHost),
		asm.FnSkbChangeType.Call(),
		asm.Mov.Reg(asm.R1, regL4).WithSymbol("redirect_peer"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirectPeer.Call(),
		asm.Return(),
	})
}

// Labels of the verdict blocks the programs end with, and of the blocks
// that several of a program's paths jump to.
const (
	labelPass            = "verdict_pass"
	labelParseErr        = "verdict_parse_error"
	labelNoZtunnel       = "verdict_no_ztunnel"
	labelSpoofed         = "verdict_spoofed"
	labelDroppedProtocol = "verdict_dropped_protocol"
	labelDroppedFragment = "verdict_dropped_fragment"
	labelDroppedPolicy   = "verdict_dropped_policy"
	labelDroppedRelay    = "verdict_dropped_relay"
	labelNoSocket        = "verdict_no_socket"
	labelCapture         = "capture"
	labelNotReady        = "capture_not_ready"
)
