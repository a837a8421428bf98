package asm

import (
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// ztunnel's DNS proxy binds 127.0.0.1:15053 and [::1]:15053, without
// IP_TRANSPARENT (istio/ztunnel src/config.rs, dns_proxy_addr): a query
// that pod_loopback gives it with bpf_sk_assign arrives on that socket, and
// the reply leaves it from 127.0.0.1:15053 to the client's address and
// port, through lo, back in on lo's ingress. The client's socket is
// connected to the resolver it asked (glibc's resolver connects its UDP
// socket), and the kernel's UDP lookup matches a connected socket's peer:
// a reply from 127.0.0.1:15053 finds no socket, and the lookup times out.
// iptables gets this for free from conntrack (the REDIRECT's reverse NAT);
// pod_loopback does it with the dnsorig map (maps.SockAddr both ways):
//
//   - recordDNSQuery, when a captured UDP query gets ztunnel's DNS socket:
//     client (the query's source address and port) -> original destination
//     (its destination address and port), overwritten by each query from
//     the same socket;
//   - dnsReply, for an unmarked UDP datagram on lo from the family's
//     loopback address, port 15053, without IP options or extension
//     headers and not a fragment: its destination is a client; when the map
//     has it, its source becomes the recorded destination, with the IPv4
//     header checksum and the UDP checksum updated incrementally
//     (bpf_l3_csum_replace, bpf_l4_csum_replace with BPF_F_PSEUDO_HDR for
//     the address; BPF_F_MARK_MANGLED_0, so that an IPv4 datagram without
//     a checksum keeps none and a computed zero is sent as 0xffff).
//
// Records are never deleted by the program: the A and AAAA queries of one
// lookup share a socket, and each reply needs the record. The LRU evicts
// them (maps.DNSOrigMaxEntries says why its size is enough).
//
// A record is only made from a packet pod_egress marked, so from the pod's
// own source: nothing from outside the pod reaches lo with TProxyMark. A
// reply is only rewritten from the loopback address's port 15053, which
// only ztunnel holds in the pod, and only back to a recorded client.

// Stack slots of the DNS record: key and value of the dnsorig map.
const (
	stackDNSClient = -112
	stackDNSOrig   = stackDNSClient + int16(maps.SockAddrSize)
)

// Helper flags of bpf_l3_csum_replace and bpf_l4_csum_replace
// (include/uapi/linux/bpf.h).
const (
	bpfFPseudoHdr    = 1 << 4
	bpfFMarkMangled0 = 1 << 5
)

// sockAddrFromPacket writes the address at field (from the L3 header) and
// the port at portOff (from the L4 header in R9) as a maps.SockAddr at the
// stack slot at. The fixed IP header and the ports must be bounds-checked.
// Clobbers R1.
func (f family) sockAddrFromPacket(at int16, field, portOff int16) asm.Instructions {
	var insns asm.Instructions
	if f.v6 {
		for off := int16(0); off < 16; off += 4 {
			insns = append(insns,
				asm.LoadMem(asm.R1, regData, ethHlen+field+off, asm.Word),
				asm.StoreMem(asm.RFP, at+maps.SockAddrOffAddr+off, asm.R1, asm.Word),
			)
		}
	} else {
		insns = asm.Instructions{
			asm.StoreImm(asm.RFP, at+maps.SockAddrOffAddr, 0, asm.Word),
			asm.StoreImm(asm.RFP, at+maps.SockAddrOffAddr+4, 0, asm.Word),
			asm.StoreImm(asm.RFP, at+maps.SockAddrOffAddr+8, int64(v4MappedWord()), asm.Word),
			asm.LoadMem(asm.R1, regData, ethHlen+field, asm.Word),
			asm.StoreMem(asm.RFP, at+maps.SockAddrOffAddr+12, asm.R1, asm.Word),
		}
	}
	return append(insns,
		asm.LoadMem(asm.R1, regL4, portOff, asm.Half),
		asm.StoreMem(asm.RFP, at+maps.SockAddrOffPort, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, at+maps.SockAddrOffPort+2, 0, asm.Half),
	)
}

// dnsRecordFromPacket writes a DNS record of the packet at the stack
// slots: its client (source address and port) at stackDNSClient, the key,
// and its original destination (destination address and port) at
// stackDNSOrig, the value. The fixed IP header and the ports (from R9) must
// be bounds-checked. Clobbers R1.
func (f family) dnsRecordFromPacket() asm.Instructions {
	return concat(
		f.sockAddrFromPacket(stackDNSClient, f.saddr, l4OffSport),
		f.sockAddrFromPacket(stackDNSOrig, f.daddr, l4OffDport),
	)
}

// putDNSRecord stores the record at stackDNSClient -> stackDNSOrig in the
// map called name, replacing one of the same client (BPF_ANY). Clobbers
// R0-R5.
func putDNSRecord(name string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, 0).WithReference(name),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackDNSClient),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(stackDNSOrig)),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
	}
}

// lookupDNSRecord looks up the client at stackDNSClient in the map called
// name and jumps to miss without a record; with one, R0 points at the
// recorded original destination (a maps.SockAddr). Clobbers R0-R5.
func lookupDNSRecord(name, miss string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, 0).WithReference(name),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackDNSClient),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, miss),
	}
}

// recordDNSQuery is entered at label with ztunnel's DNS socket in R0 (the
// lookup's reference) and a captured UDP query, its ports bounds-checked
// from R9 (the parser's checks still hold: the socket lookup changes no
// packet data, and R0 may not be used to check again): it records client -> original destination in the dnsorig map
// and jumps to assign with the socket in R0 again. The record is made
// before bpf_sk_assign: a query the kernel then refuses leaves a record
// that no reply will use.
func (f family) recordDNSQuery(label, assign string) asm.Instructions {
	return concat(
		at(label, f.dnsRecordFromPacket()...),
		// R9 keeps the socket across the call; the packet is not read
		// again on this path.
		asm.Instructions{asm.Mov.Reg(regL4, asm.R0)},
		putDNSRecord(maps.DNSOrigName),
		asm.Instructions{
			asm.Mov.Reg(asm.R0, regL4),
			asm.Ja.Label(assign),
		},
	)
}

// dnsReply is pod_loopback's code for an unmarked packet, from label: a
// reply of ztunnel's DNS proxy to a recorded client gets the source the
// client asked; anything else passes untouched.
func dnsReply(label string) asm.Instructions {
	insns := at(label,
		asm.Mov.Reg(asm.R0, regData),
		asm.Add.Imm(asm.R0, ethHlen),
		asm.JGT.Reg(asm.R0, regDataEnd, labelPass),
		asm.LoadMem(asm.R1, regData, ethOffProto, asm.Half),
		asm.JEq.Imm(asm.R1, be16(ethPIPv4), "pl_reply_v4"),
		asm.JEq.Imm(asm.R1, be16(ethPIPv6), "pl_reply_v6"),
		asm.Ja.Label(labelPass),
	)
	for _, f := range families {
		insns = append(insns, dnsReplyFamily(f)...)
	}
	return append(insns, at(labelRewriteFailed, asm.Ja.Label(labelParseErr))...)
}

// labelRewriteFailed is where pod_loopback goes when a helper refuses to
// rewrite a packet: dropped as a parse error.
const labelRewriteFailed = "pl_rewrite_failed"

// dnsProto is what differs between DNS over UDP and over TCP for
// pod_loopback's rewrites: the map of records, the header's length and
// where its checksum is, and the checksum helpers' flags
// (BPF_F_MARK_MANGLED_0 for UDP, whose checksum of zero means none).
type dnsProto struct {
	name      string
	proto     int32
	record    string
	hlen      int16
	csumOff   int16
	csumFlags int32
}

var (
	dnsUDP = dnsProto{name: "udp", proto: ipprotoUDP, record: maps.DNSOrigName, hlen: udpHlen, csumOff: udpOffCsum, csumFlags: bpfFMarkMangled0}
	dnsTCP = dnsProto{name: "tcp", proto: ipprotoTCP, record: maps.DNSTCPName, hlen: tcpHlen, csumOff: tcpOffCsum}
)

// dnsReplyFamily matches and rewrites a DNS reply of family f, over UDP or
// TCP.
func dnsReplyFamily(f family) asm.Instructions {
	l4 := int16(ethHlen) + int16(f.hlen)
	lo := f.loopbackLastWord()
	l := func(name string) string { return f.label("pl_reply", name) }
	// The IP header without options or extension headers, not a
	// fragment, from the loopback address.
	match := asm.Instructions{
		asm.Mov.Reg(asm.R0, regData),
		asm.Add.Imm(asm.R0, int32(l4)),
		asm.JGT.Reg(asm.R0, regDataEnd, labelPass),
	}
	if f.v6 {
		match = append(match,
			asm.LoadMem(asm.R1, regData, ethHlen+ipv6OffVer, asm.Byte),
			asm.And.Imm(asm.R1, 0xf0),
			asm.JNE.Imm(asm.R1, 0x60, labelPass),
			asm.LoadMem(asm.R1, regData, ethHlen+f.saddr, asm.Word),
			asm.JNE.Imm32(asm.R1, 0, labelPass),
			asm.LoadMem(asm.R1, regData, ethHlen+f.saddr+4, asm.Word),
			asm.JNE.Imm32(asm.R1, 0, labelPass),
			asm.LoadMem(asm.R1, regData, ethHlen+f.saddr+8, asm.Word),
			asm.JNE.Imm32(asm.R1, 0, labelPass),
			asm.LoadMem(asm.R2, regData, ethHlen+ipv6OffNext, asm.Byte),
		)
	} else {
		match = append(match,
			asm.LoadMem(asm.R1, regData, ethHlen+ipv4OffVIHL, asm.Byte),
			asm.JNE.Imm(asm.R1, 0x45, labelPass),
			asm.LoadMem(asm.R1, regData, ethHlen+ipv4OffFrag, asm.Half),
			asm.And.Imm(asm.R1, be16(0x3fff)), // more fragments, or an offset
			asm.JNE.Imm(asm.R1, 0, labelPass),
			asm.LoadMem(asm.R2, regData, ethHlen+ipv4OffProto, asm.Byte),
		)
	}
	match = append(match,
		asm.LoadMem(asm.R1, regData, ethHlen+f.saddr+f.addrLen()-4, asm.Word),
		asm.JNE.Imm32(asm.R1, nativeWord(lo), labelPass),
		asm.JEq.Imm(asm.R2, ipprotoUDP, l("udp")),
		asm.JEq.Imm(asm.R2, ipprotoTCP, l("tcp")),
		asm.Ja.Label(labelPass),
	)
	insns := at("pl_reply_"+f.name, match...)
	for _, p := range []dnsProto{dnsUDP, dnsTCP} {
		insns = append(insns, f.dnsReplyProto(p, l(p.name))...)
	}
	return insns
}

// dnsReplyProto is dnsReplyFamily's code for protocol p, from label: the
// L4 header from port 15053 to a client with a record in p's map gets the
// recorded address and port as its source.
func (f family) dnsReplyProto(p dnsProto, label string) asm.Instructions {
	l4 := int16(ethHlen) + int16(f.hlen)
	// The client: the reply's destination. Its record, copied to the
	// stack, where bpf_skb_store_bytes reads it.
	insns := at(label,
		asm.Mov.Reg(asm.R0, regData),
		asm.Add.Imm(asm.R0, int32(l4+p.hlen)),
		asm.JGT.Reg(asm.R0, regDataEnd, labelPass),
		asm.Mov.Reg(regL4, regData),
		asm.Add.Imm(regL4, int32(l4)),
		asm.LoadMem(asm.R1, regL4, l4OffSport, asm.Half),
		asm.JNE.Imm(asm.R1, be16(PortDNS), labelPass),
	)
	insns = concat(insns,
		f.sockAddrFromPacket(stackDNSClient, f.daddr, l4OffDport),
		lookupDNSRecord(p.record, labelPass),
	)
	for off := int16(0); off < int16(maps.SockAddrSize); off += 4 {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.R0, off, asm.Word),
			asm.StoreMem(asm.RFP, stackDNSOrig+off, asm.R1, asm.Word),
		)
	}
	return concat(insns,
		f.proxySockAddr(stackDNSProxy),
		f.rewriteSockAddr(p, f.saddr, l4OffSport, stackDNSProxy, stackDNSOrig),
		asm.Instructions{asm.Ja.Label(labelPass)},
	)
}

// stackDNSProxy holds ztunnel's DNS proxy address as a maps.SockAddr (the
// family's loopback address, port 15053), the other side of a rewrite. It
// shares stackTuple's room: no rewrite needs a tuple at the same time.
const stackDNSProxy = stackTuple

// proxySockAddr writes ztunnel's DNS proxy address of family f as a
// maps.SockAddr at the stack slot at.
func (f family) proxySockAddr(at int16) asm.Instructions {
	var mapped int64
	if !f.v6 {
		mapped = int64(v4MappedWord())
	}
	return asm.Instructions{
		asm.StoreImm(asm.RFP, at+maps.SockAddrOffAddr, 0, asm.Word),
		asm.StoreImm(asm.RFP, at+maps.SockAddrOffAddr+4, 0, asm.Word),
		asm.StoreImm(asm.RFP, at+maps.SockAddrOffAddr+8, mapped, asm.Word),
		asm.StoreImm(asm.RFP, at+maps.SockAddrOffAddr+12, int64(nativeWord(f.loopbackLastWord())), asm.Word),
		asm.StoreImm(asm.RFP, at+maps.SockAddrOffPort, int64(be16(PortDNS)), asm.Half),
		asm.StoreImm(asm.RFP, at+maps.SockAddrOffPort+2, 0, asm.Half),
	}
}

// rewriteSockAddr changes the address at field (an offset from the IP
// header: the source or the destination) and the port at portOff (from
// the L4 header) of a packet of protocol p from the maps.SockAddr at the
// stack slot from to the one at to, and updates the checksums
// incrementally: the IPv4 header's (bpf_l3_csum_replace) and p's, which
// covers both through its pseudo-header (bpf_l4_csum_replace with
// BPF_F_PSEUDO_HDR for the address; for IPv6 the 16 bytes' difference
// first, with bpf_csum_diff, applied with a size of zero). The packet has
// no IPv4 options or IPv6 extension headers: its L4 header is right after
// the fixed IP header. A helper that fails jumps to labelRewriteFailed.
//
// The helpers change the packet: R7, R8 and R9 are no longer valid after
// this, and the packet must be loaded again to be read.
func (f family) rewriteSockAddr(p dnsProto, field, portOff int16, from, to int16) asm.Instructions {
	l4 := int16(ethHlen) + int16(f.hlen)
	csum := l4 + p.csumOff
	fromAddr := from + maps.SockAddrOffAddr + 16 - f.addrLen()
	toAddr := to + maps.SockAddrOffAddr + 16 - f.addrLen()
	csumReplace := func(fn asm.BuiltinFunc, off int16, flags int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, regCtx),
			asm.Mov.Imm(asm.R2, int32(off)),
			asm.Mov.Imm(asm.R5, flags),
			fn.Call(),
			asm.JNE.Imm(asm.R0, 0, labelRewriteFailed),
		}
	}
	store := func(off int16, from int16, size int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, regCtx),
			asm.Mov.Imm(asm.R2, int32(off)),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, int32(from)),
			asm.Mov.Imm(asm.R4, size),
			asm.Mov.Imm(asm.R5, 0),
			asm.FnSkbStoreBytes.Call(),
			asm.JNE.Imm(asm.R0, 0, labelRewriteFailed),
		}
	}
	var insns asm.Instructions
	if f.v6 {
		insns = concat(
			asm.Instructions{
				asm.Mov.Reg(asm.R1, asm.RFP),
				asm.Add.Imm(asm.R1, int32(fromAddr)),
				asm.Mov.Imm(asm.R2, 16),
				asm.Mov.Reg(asm.R3, asm.RFP),
				asm.Add.Imm(asm.R3, int32(toAddr)),
				asm.Mov.Imm(asm.R4, 16),
				asm.Mov.Imm(asm.R5, 0),
				asm.FnCsumDiff.Call(),
				asm.Mov.Imm(asm.R3, 0),
				asm.Mov.Reg(asm.R4, asm.R0),
			},
			csumReplace(asm.FnL4CsumReplace, csum, bpfFPseudoHdr|p.csumFlags),
		)
	} else {
		insns = concat(
			asm.Instructions{
				asm.LoadMem(asm.R3, asm.RFP, fromAddr, asm.Word),
				asm.LoadMem(asm.R4, asm.RFP, toAddr, asm.Word),
			},
			csumReplace(asm.FnL3CsumReplace, ethHlen+ipv4OffCsum, 4),
			asm.Instructions{
				asm.LoadMem(asm.R3, asm.RFP, fromAddr, asm.Word),
				asm.LoadMem(asm.R4, asm.RFP, toAddr, asm.Word),
			},
			csumReplace(asm.FnL4CsumReplace, csum, bpfFPseudoHdr|p.csumFlags|4),
		)
	}
	return concat(insns,
		asm.Instructions{
			asm.LoadMem(asm.R3, asm.RFP, from+maps.SockAddrOffPort, asm.Half),
			asm.LoadMem(asm.R4, asm.RFP, to+maps.SockAddrOffPort, asm.Half),
		},
		csumReplace(asm.FnL4CsumReplace, csum, p.csumFlags|2),
		store(ethHlen+field, toAddr, int32(f.addrLen())),
		store(l4+portOff, to+maps.SockAddrOffPort, 2),
	)
}

// dnsTCPConnect is entered at label with a captured DNS connection request
// (a SYN to port 53, DNS capture on, the pod not opted out), its TCP flags
// bounds-checked from R9. It records client -> original destination in the
// dnstcp map (a SYN from the same client port replaces the record), makes
// the destination ztunnel's DNS proxy (127.0.0.1:15053, [::1]:15053),
// loads the packet again and jumps to next with R9 at its TCP header,
// flags bounds-checked. A SYN with IPv4 options or IPv6 extension headers,
// or shorter than a TCP header, is dropped (no_socket): the rewrite wants
// the TCP header right after the fixed IP header, and a pod's own stack
// sends neither.
func (f family) dnsTCPConnect(label, next string) asm.Instructions {
	return concat(
		at(label, f.checkBounds(labelNoSocket)...),
		f.jumpIfOptions(labelNoSocket),
		tcpHeader(labelNoSocket),
		f.dnsRecordFromPacket(),
		putDNSRecord(maps.DNSTCPName),
		f.proxySockAddr(stackDNSProxy),
		f.rewriteSockAddr(dnsTCP, f.daddr, l4OffDport, stackDNSOrig, stackDNSProxy),
		asm.Instructions{
			asm.LoadMem(regData, regCtx, skbData, asm.Word),
			asm.LoadMem(regDataEnd, regCtx, skbDataEnd, asm.Word),
			asm.Mov.Reg(regL4, regData),
			asm.Add.Imm(regL4, int32(ethHlen+f.hlen)),
		},
		l4Bounds(tcpOffFlags+1, labelNoSocket),
		asm.Instructions{asm.Ja.Label(next)},
	)
}

// tcpHeader jumps to short unless the fixed TCP header (R9) is in the
// frame: the checksum rewritten is in it, and a helper refusing a segment
// half-way would leave it half rewritten.
func tcpHeader(short string) asm.Instructions {
	return l4Bounds(tcpHlen, short)
}

// dnsTCPSegment is entered at label with a marked TCP segment to port 53
// that is not a connection request, its TCP flags bounds-checked from R9:
// when the dnstcp map records its source as a client connected to its
// destination, the destination becomes ztunnel's DNS proxy as in
// dnsTCPConnect. It goes on marked (pl_marked) either way: the stack's own
// lookup finds its socket.
func (f family) dnsTCPSegment(label string) asm.Instructions {
	insns := concat(
		at(label, f.checkBounds(labelNoSocket)...),
		f.jumpIfOptions("pl_marked"),
		tcpHeader("pl_marked"),
		f.dnsRecordFromPacket(),
		lookupDNSRecord(maps.DNSTCPName, "pl_marked"),
	)
	// The record must name this destination: a record of another
	// connection from the same port (its SYN replaced it) is not this
	// segment's.
	for off := int16(0); off < int16(maps.SockAddrSize); off += 4 {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.R0, off, asm.Word),
			asm.LoadMem(asm.R2, asm.RFP, stackDNSOrig+off, asm.Word),
			asm.JNE.Reg(asm.R1, asm.R2, "pl_marked"),
		)
	}
	return concat(insns,
		f.proxySockAddr(stackDNSProxy),
		f.rewriteSockAddr(dnsTCP, f.daddr, l4OffDport, stackDNSOrig, stackDNSProxy),
		asm.Instructions{asm.Ja.Label("pl_marked")},
	)
}
