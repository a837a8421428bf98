package asm

import (
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// ztunnelIngress builds the program on the ingress of ztunnel's host veth,
// which sees every packet ztunnel sends. A packet for an enrolled pod of this
// node is handed straight to that pod (its eth0 MAC as destination,
// bpf_redirect_peer into its netns): it must not be captured again on its way
// in. Anything else (other nodes, the API server, pods outside the mesh)
// follows normal routing.
func ztunnelIngress(opts Options) asm.Instructions {
	const (
		v4     = "zi_v4"
		v6     = "zi_v6"
		lookup = "zi_lookup"
	)
	return concat(
		loadPacket(),
		parseEthernet(ethLabels{v4: v4, v6: v6, other: labelPass, vlan: labelPass, short: labelPass}),

		podKeyOfFamily(v4, v6, lookup, labelPass, ipv4OffDaddr, ipv6OffDaddr),

		at(lookup, lookupPod()...),
		asm.Instructions{asm.JEq.Imm(asm.R0, 0, labelPass)},
		rewriteDstMAC(asm.R0, maps.PodOffMAC),
		asm.Instructions{asm.LoadMem(regL4, asm.R0, maps.PodOffIfindex, asm.Word)},
		redirectTo(maps.VerdictBypass, opts.RedirectPeer),

		exit(labelPass, maps.VerdictPassed, ActUnspec),
	)
}

// ztunnelAssign builds the program on the ingress of eth0 inside ztunnel's
// netns. It gives each captured packet to one of ztunnel's sockets, so that
// an unmodified ztunnel receives traffic for addresses that are not its own:
//
//   - A packet addressed to ztunnel's own IP was not captured: passed.
//   - A TCP segment that is not a connection request (SYN without ACK) is
//     only marked: ztunnel's stack finds the socket of its flow itself.
//   - An established socket for the packet's tuple (TCP: bpf_skc_lookup_tcp,
//     not a listener; UDP: bpf_sk_lookup_udp, connected) takes it: for a
//     SYN, a retransmission, or a new connection reusing a TIME_WAIT tuple.
//   - Else a listener by port: DNS (UDP to 53) with capture on -> 15053; a
//     packet from an enrolled pod of this node was captured on its way out
//     -> 15001; any other was captured on its way in -> 15008 if sent to
//     15008 (HBONE), else 15006. The pods map tells the direction, so no tag
//     has to survive the trip between netns.
//
// The socket is bpf_sk_assign'ed and the packet marked TProxyMark, which the
// netns' policy routing delivers locally. A captured packet that gets no
// socket (no listener, a protocol other than TCP and UDP, a later fragment,
// a truncated header) is dropped: passed on, a netns that forwards (it
// inherits the host's ip_forward when created) would route it to its
// destination unproxied.
func ztunnelAssign() asm.Instructions {
	return concat(
		loadPacket(),
		lookupZtunnel(labelPass),
		parseEthernet(ethLabels{v4: "za_v4", v6: "za_v6", other: labelPass, vlan: labelPass, short: labelPass}),
		assignFamily(false),
		assignFamily(true),
		assignSocket(),
		at("za_marked", setMark()...),
		exit("za_marked_count", maps.VerdictMarked, ActOK),
		exit(labelPass, maps.VerdictPassed, ActUnspec),
		exit("za_no_socket", maps.VerdictNoSocket, ActShot),
	)
}

// assignFamily parses one address family up to the ports, builds the socket
// tuple and the source's pods map key on the stack, and runs the socket
// lookups for TCP and UDP. It ends by jumping to za_assign (R0 = socket,
// R1 = 1 for an established socket) or to a verdict.
func assignFamily(v6 bool) asm.Instructions {
	fam, saddr, daddr, addrLen := "za_v4", int16(ipv4OffSaddr), int16(ipv4OffDaddr), int16(4)
	ztIP, tupleSize, tupleSport, tupleDport := maps.ZtunnelOffIPv4+12, tupleV4Size, tupleV4Sport, tupleV4Dport
	parse := parseIPv4(labelPass)
	if v6 {
		fam, saddr, daddr, addrLen = "za_v6", ipv6OffSaddr, ipv6OffDaddr, 16
		ztIP, tupleSize, tupleSport, tupleDport = maps.ZtunnelOffIPv6, tupleV6Size, tupleV6Sport, tupleV6Dport
		parse = parseIPv6(labelPass)
	}
	l4 := fam + "_l4"
	// Past the own-address check every packet was captured: one that gets
	// no socket here is dropped, never passed on, or ztunnel's stack (a
	// netns created with the host's ip_forward) could route it to its
	// destination unproxied.
	labels := l4Labels{icmp: labelPass, l4: l4, fragment: "za_no_socket", bad: "za_no_socket"}

	// Addressed to ztunnel itself: not captured.
	notOwn := asm.Instructions{loadZtunnel(asm.R1)}
	for off := int16(0); off < addrLen; off += 4 {
		notOwn = append(notOwn,
			asm.LoadMem(asm.R2, asm.R1, ztIP+off, asm.Word),
			asm.LoadMem(asm.R3, regData, ethHlen+daddr+off, asm.Word),
			asm.JNE.Reg(asm.R2, asm.R3, fam+"_captured"),
		)
	}
	notOwn = append(notOwn, asm.Ja.Label(labelPass))

	// The tuple as the packet carries it, and the source as a pods map key.
	tuple := asm.Instructions{}
	for off := int16(0); off < addrLen; off += 4 {
		tuple = append(tuple,
			asm.LoadMem(asm.R1, regData, ethHlen+saddr+off, asm.Word),
			asm.StoreMem(asm.RFP, stackTuple+off, asm.R1, asm.Word),
			asm.LoadMem(asm.R1, regData, ethHlen+daddr+off, asm.Word),
			asm.StoreMem(asm.RFP, stackTuple+addrLen+off, asm.R1, asm.Word),
		)
	}
	tuple = append(tuple,
		asm.LoadMem(asm.R1, regL4, l4OffSport, asm.Half),
		asm.StoreMem(asm.RFP, stackTuple+tupleSport, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, regL4, l4OffDport, asm.Half),
		asm.StoreMem(asm.RFP, stackTuple+tupleDport, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, stackProto, regProto, asm.Word),
	)

	return concat(
		at(fam, parse...),
		notOwn,
		at(fam+"_captured", ipv4OrIPv6L4(v6, fam, labels)...),

		// R3 = protocol, R9 = L4 header. Only TCP and UDP have sockets;
		// their ports must be in the frame. A TCP segment other than a
		// connection request (SYN without ACK) belongs to a socket that
		// ztunnel's stack finds by its tuple once the mark makes the packet
		// local, as with TPROXY: it needs no lookup here, which keeps the
		// per-packet cost of an established flow at a few instructions.
		at(l4,
			asm.JEq.Imm(regProto, ipprotoUDP, l4+"_ports"),
			asm.JNE.Imm(regProto, ipprotoTCP, "za_no_socket"),
			asm.Mov.Reg(asm.R0, regL4),
			asm.Add.Imm(asm.R0, tcpOffFlags+1),
			asm.JGT.Reg(asm.R0, regDataEnd, "za_no_socket"),
			asm.LoadMem(asm.R1, regL4, tcpOffFlags, asm.Byte),
			asm.And.Imm(asm.R1, tcpFlagSYN|tcpFlagACK),
			asm.JNE.Imm(asm.R1, tcpFlagSYN, "za_marked"),
		),
		at(l4+"_ports",
			asm.Mov.Reg(asm.R0, regL4),
			asm.Add.Imm(asm.R0, l4PortsLen),
			asm.JGT.Reg(asm.R0, regDataEnd, "za_no_socket"),
		),
		tuple,
		podKeyFromPacket(v6, saddr),

		lookupSocket(fam+"_tcp", false, tupleSize, fam+"_udp"),
		lookupSocket(fam+"_udp", true, tupleSize, "za_no_socket"),
	)
}

// ipv4OrIPv6L4 is the L4 step of the family.
func ipv4OrIPv6L4(v6 bool, prefix string, l l4Labels) asm.Instructions {
	if v6 {
		return ipv6L4(prefix, l)
	}
	return ipv4L4(l)
}

// lookupSocket looks up, for one family and protocol, first an established
// socket with the packet's own tuple, then ztunnel's listener on the port
// that the direction gives. Its code runs only for that protocol; a packet of
// another protocol goes on to next.
func lookupSocket(prefix string, udp bool, tupleSize int32, next string) asm.Instructions {
	fn, proto := asm.FnSkcLookupTcp, int32(ipprotoTCP)
	if udp {
		fn, proto = asm.FnSkLookupUdp, ipprotoUDP
	}
	tupleDport := tupleV4Dport
	if tupleSize == tupleV6Size {
		tupleDport = tupleV6Dport
	}
	dport := int16(stackTuple) + tupleDport
	listener := prefix + "_listener"
	inbound := prefix + "_inbound"
	byPort := prefix + "_by_port"
	call := func() asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, regCtx),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, stackTuple),
			asm.Mov.Imm(asm.R3, tupleSize),
			asm.Mov.Imm(asm.R4, bpfCurrentNetns),
			asm.Mov.Imm(asm.R5, 0),
			fn.Call(),
		}
	}

	// An established socket: a TCP listener found by the packet's own port
	// is not one (ztunnel's own ports must not answer for other addresses);
	// a UDP socket must be connected.
	established := asm.Instructions{
		asm.LoadMem(asm.R1, asm.RFP, stackProto, asm.Word),
		asm.JNE.Imm(asm.R1, proto, next),
	}
	established = append(established, call()...)
	established = append(established,
		asm.JEq.Imm(asm.R0, 0, listener),
		asm.LoadMem(asm.R1, asm.R0, sockState, asm.Word),
	)
	if udp {
		established = append(established, asm.JNE.Imm(asm.R1, tcpEstablished, prefix+"_release"))
	} else {
		established = append(established, asm.JEq.Imm(asm.R1, tcpListen, prefix+"_release"))
	}
	established = append(established,
		asm.Mov.Imm(asm.R1, 1),
		asm.Ja.Label("za_assign"),
	)

	release := at(prefix+"_release",
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.FnSkRelease.Call(),
		asm.Ja.Label(listener),
	)

	// The listener's port.
	ports := asm.Instructions{}
	if udp {
		ports = append(ports, at(listener,
			asm.LoadMem(asm.R1, asm.RFP, dport, asm.Half),
			asm.JNE.Imm(asm.R1, be16(portDNS), prefix+"_direction"),
			loadZtunnel(asm.R1),
			asm.LoadMem(asm.R1, asm.R1, maps.ZtunnelOffFlags, asm.Half),
			asm.And.Imm(asm.R1, int32(maps.ZtunnelCaptureDNS)),
			asm.JEq.Imm(asm.R1, 0, prefix+"_direction"),
			asm.StoreImm(asm.RFP, dport, int64(be16(PortDNS)), asm.Half),
			asm.Ja.Label(byPort),
		)...)
		ports = append(ports, at(prefix+"_direction", lookupPod()...)...)
	} else {
		ports = append(ports, at(listener, lookupPod()...)...)
	}
	ports = append(ports,
		asm.JEq.Imm(asm.R0, 0, inbound),
		asm.StoreImm(asm.RFP, dport, int64(be16(PortOutbound)), asm.Half),
		asm.Ja.Label(byPort),
	)
	ports = append(ports, at(inbound,
		asm.LoadMem(asm.R1, asm.RFP, dport, asm.Half),
		asm.JEq.Imm(asm.R1, be16(PortHBONE), byPort),
		asm.StoreImm(asm.RFP, dport, int64(be16(PortInbound)), asm.Half),
	)...)

	byPortLookup := at(byPort, call()...)
	byPortLookup = append(byPortLookup,
		asm.JEq.Imm(asm.R0, 0, "za_no_socket"),
		asm.Mov.Imm(asm.R1, 0),
		asm.Ja.Label("za_assign"),
	)

	return concat(
		at(prefix, established...),
		release,
		ports,
		byPortLookup,
	)
}

// assignSocket assigns the socket in R0 to the packet and releases the
// lookup's reference. R1 = 1 for an established socket: if the kernel refuses
// the assignment, the mark alone still delivers the packet locally and the
// stack's own lookup finds that socket. A packet refused by a listener is
// dropped: marked it would reach whatever listens on its original port,
// unmarked it could be forwarded.
func assignSocket() asm.Instructions {
	return concat(
		at("za_assign",
			asm.Mov.Reg(regL4, asm.R0),
			asm.StoreMem(asm.RFP, stackProto, asm.R1, asm.Word),
			asm.Mov.Reg(asm.R1, regCtx),
			asm.Mov.Reg(asm.R2, regL4),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnSkAssign.Call(),
			// R7 is free now: it keeps the result across the release.
			asm.Mov.Reg(regData, asm.R0),
			asm.Mov.Reg(asm.R1, regL4),
			asm.FnSkRelease.Call(),
			asm.JEq.Imm(regData, 0, "za_mark"),
		),
		countVerdict(maps.VerdictAssignFailed),
		asm.Instructions{
			asm.LoadMem(asm.R1, asm.RFP, stackProto, asm.Word),
			asm.JEq.Imm(asm.R1, 0, "za_refused"),
		},
		setMark(),
		asm.Instructions{asm.Mov.Imm(asm.R0, ActOK), asm.Return()},
		at("za_refused", asm.Mov.Imm(asm.R0, ActShot), asm.Return()),
		at("za_mark", setMark()...),
		countVerdict(maps.VerdictAssigned),
		asm.Instructions{asm.Mov.Imm(asm.R0, ActOK), asm.Return()},
	)
}

// setMark sets TProxyMark in the bits of TProxyMask, keeping the others.
func setMark() asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, regCtx, skbMark, asm.Word),
		asm.And.Imm(asm.R1, ^int32(TProxyMask)),
		asm.Or.Imm(asm.R1, TProxyMark),
		asm.StoreMem(regCtx, skbMark, asm.R1, asm.Word),
	}
}
