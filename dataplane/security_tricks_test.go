package dataplane_test

import (
	"net"
	"net/netip"
	"slices"

	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// trick is one way a pod might try to get a packet past ztunnel: the
// frames it sends (built with the trick's mark), what the app program must
// count them as, and whether they may arrive (the documented exceptions).
type trick struct {
	name   string
	frames func(m mark) []frame

	// want lists the verdicts the app program may give the trick's frames.
	want []maps.Verdict
	// exception: what §5 lets pass (UDP, ICMP, DNS with capture off),
	// which must arrive: it proves that the sniffers see what gets through.
	exception bool
	// malformed: a forged or broken frame that a kernel forwarding it
	// before our program (the second node's, in the inbound direction) may
	// drop; then no counter moves. Outbound, every frame reaches the program.
	malformed bool
	// captureDNS turns DNS capture on while the trick is sent.
	captureDNS bool
	// toZtunnel: the frame is addressed to ztunnel itself, where it may
	// arrive.
	toZtunnel bool
	// mayArrive: the frame passes as §5 lets it, and may reach the peer
	// or not (whether a relay on the node forwards it is the node's
	// business: UDP to the peer itself passes anyway).
	mayArrive bool
	// forged: the frames carry a source address that is not the
	// sender's.
	forged bool
	// note explains an outcome in the table.
	note string
}

// trickEnv is what one direction's tricks of one family need.
type trickEnv struct {
	v6 bool
	// outbound: an ambient pod sends (its frames meet app_outbound);
	// otherwise a peer sends to an ambient pod (app_inbound).
	outbound bool
	// src is the sender's address, dst the target's.
	src, dst netip.Addr
	// node is the ambient pods' node's IP, senderNode the sender's node's.
	node, senderNode netip.Addr
	// ztunnel is ztunnel's IP; other is another ambient pod's IP (of the
	// sender's node outbound, of the target's inbound).
	ztunnel, other netip.Addr
	// srcBoth and tunnelBoth are the sender's IPv4 and IPv6 addresses and
	// those of the remote host, where tunnels' inner packets go.
	srcBoth, tunnelBoth [2]netip.Addr
	// vxlanMAC, when set, is the node's VXLAN device's MAC.
	vxlanMAC net.HardwareAddr
	// sourceRouting says the node accepts source routes (IPv4
	// accept_source_route, IPv6 SRv6): it relays what carries one.
	sourceRouting bool
	// vacant, when valid, is an address of the sender's node's pod CIDR
	// that no pod has: a forged source that looks like a pod's.
	vacant netip.Addr
	// nodeConn, when valid, is the node's end of a TCP connection the node
	// opened to the sender's port nodeConnPort, as a kubelet probe does:
	// its segments from the sender are the one TCP to the node that
	// app_outbound passes, and only without IP options or extension
	// headers.
	nodeConn     netip.AddrPort
	nodeConnPort uint16
}

func (e trickEnv) capture() maps.Verdict {
	if e.outbound {
		return maps.VerdictRedirectedOut
	}
	return maps.VerdictRedirectedIn
}

// spoofed is an address that neither the pod nor any node owns.
func (e trickEnv) spoofed() netip.Addr {
	if e.v6 {
		return netip.MustParseAddr("fd10:6d72:0:ffff::77")
	}
	return netip.MustParseAddr("198.19.255.77")
}

func (e trickEnv) family() string { return scenario.Family(e.v6) }

// etype is the family's EtherType.
func (e trickEnv) etype() uint16 {
	if e.v6 {
		return etherIPv6
	}
	return etherIPv4
}

// packet is the trick's basic IP packet from src to dst: its mark in the
// header, upper-layer bytes l4 of protocol proto.
func (e trickEnv) packet(m mark, proto uint8, l4 []byte) ipPacket {
	return ipPacket{src: e.src, dst: e.dst, proto: proto, l4: l4, id: m.id, flow: m.flow}
}

func (e trickEnv) sport(m mark) uint16 { return uint16(40000 + m.idx) }

func (e trickEnv) syn(m mark, dport uint16) []byte {
	return tcpSYN(e.src, e.dst, e.sport(m), dport, m.tag)
}

func (e trickEnv) udp(m mark, sport, dport uint16) []byte {
	return udpDatagram(e.src, e.dst, sport, dport, m.tag)
}

// inner is a marked UDP packet from the sender to the tunnel destination,
// of the family v6, for tunnels to carry.
func (e trickEnv) inner(m mark, v6 bool) []byte {
	src, dst := e.srcBoth[0], e.tunnelBoth[0]
	if v6 {
		src, dst = e.srcBoth[1], e.tunnelBoth[1]
	}
	return ipPacket{src: src, dst: dst, proto: protoUDP, l4: udpDatagram(src, dst, 40000, 9, m.tag), id: m.id, flow: m.flow}.bytes()
}

func one(f frame) []frame { return []frame{f} }

// tricks lists every trick of one direction and family. The name of each
// is its subtest's.
func (e trickEnv) tricks() []trick {
	capture := e.capture()
	captured := []maps.Verdict{capture}
	parseError := []maps.Verdict{maps.VerdictParseError}
	passed := []maps.Verdict{maps.VerdictPassed}
	protocol := []maps.Verdict{maps.VerdictDroppedProtocol}
	laterDropped := []maps.Verdict{maps.VerdictDroppedFragment}
	fam := e.family()
	ipHdr := 20
	if e.v6 {
		ipHdr = 40
	}
	var ts []trick
	add := func(t trick) { ts = append(ts, t) }
	simple := func(name string, proto uint8, l4 func(m mark) []byte) trick {
		return trick{name: name, want: captured, frames: func(m mark) []frame { return one(ipFrame(e.packet(m, proto, l4(m)))) }}
	}

	passes := func(name string, proto uint8, l4 func(m mark) []byte) trick {
		return trick{name: name, want: passed, exception: true, frames: func(m mark) []frame { return one(ipFrame(e.packet(m, proto, l4(m)))) }}
	}
	dropped := func(name string, want []maps.Verdict, proto uint8, l4 func(m mark) []byte) trick {
		return trick{name: name, want: want, frames: func(m mark) []frame { return one(ipFrame(e.packet(m, proto, l4(m)))) }}
	}

	// Plain protocols.
	add(simple("TCP SYN", protoTCP, func(m mark) []byte { return e.syn(m, 8080) }))
	add(simple("TCP ACK with data", protoTCP, func(m mark) []byte {
		return tcpSegment(e.src, e.dst, e.sport(m), 8080, tcpACKFlag|tcpPSHFlag, m.tag)
	}))
	add(passes("UDP to a random port (exception: UDP passes)", protoUDP, func(m mark) []byte { return e.udp(m, e.sport(m), 47113) }))
	if e.outbound {
		add(trick{name: "UDP to 53, DNS capture on", want: captured, captureDNS: true,
			frames: func(m mark) []frame { return one(ipFrame(e.packet(m, protoUDP, e.udp(m, e.sport(m), 53)))) }})
		add(passes("UDP to 53, DNS capture off (exception)", protoUDP, func(m mark) []byte { return e.udp(m, e.sport(m), 53) }))
	} else {
		// DNS capture is for the pod's own queries: inbound UDP passes.
		add(trick{name: "UDP from 53, DNS capture on (exception: not the pod's query)", want: passed, exception: true, captureDNS: true,
			frames: func(m mark) []frame { return one(ipFrame(e.packet(m, protoUDP, e.udp(m, 53, e.sport(m))))) }})
		add(passes("UDP from 53, DNS capture off (exception)", protoUDP, func(m mark) []byte { return e.udp(m, 53, e.sport(m)) }))
		add(trick{name: "UDP to 53, DNS capture on (exception: a query to the pod's own server)", want: passed, exception: true, captureDNS: true,
			frames: func(m mark) []frame { return one(ipFrame(e.packet(m, protoUDP, e.udp(m, e.sport(m), 53)))) }})
	}
	icmp := uint8(protoICMP)
	if e.v6 {
		icmp = protoICMPv6
	}
	add(trick{name: "ICMP echo (exception)", want: passed, exception: true,
		frames: func(m mark) []frame {
			return one(ipFrame(e.packet(m, icmp, icmpEcho(e.src, e.dst, uint16(m.idx), m.tag))))
		}})

	// Other protocols: tunnels and the like.
	greInner := func(v6 bool) func(m mark) []byte {
		return func(m mark) []byte {
			t := uint16(etherIPv4)
			if v6 {
				t = etherIPv6
			}
			return append([]byte{0, 0, byte(t >> 8), byte(t)}, e.inner(m, v6)...)
		}
	}
	add(dropped("GRE (47)", protocol, protoGRE, greInner(e.v6)))
	add(dropped("IPv4 in IP (4)", protocol, protoIPIP, func(m mark) []byte { return e.inner(m, false) }))
	add(dropped("IPv6 in IP (41)", protocol, protoIPv6, func(m mark) []byte { return e.inner(m, true) }))
	add(dropped("ESP (50)", protocol, protoESP, func(m mark) []byte { return append([]byte{0, 0, 1, 0, 0, 0, 0, 1}, m.tag...) }))
	add(dropped("SCTP (132)", protocol, protoSCTP, func(m mark) []byte {
		h := make([]byte, 12)
		be.PutUint16(h[0:], e.sport(m))
		be.PutUint16(h[2:], 8080)
		return append(h, m.tag...)
	}))
	add(dropped("unassigned protocol (200)", protocol, protoUnassigned, func(m mark) []byte { return m.tag }))
	if e.v6 {
		add(dropped("no next header (59) with data after it", protocol, protoNoNext, func(m mark) []byte { return m.tag }))
	}

	// IPv4 options.
	if !e.v6 {
		withOptions := func(name string, opts []byte) trick {
			return trick{name: name, want: captured, frames: func(m mark) []frame {
				p := e.packet(m, protoTCP, e.syn(m, 8080))
				p.options = opts
				return one(ipFrame(p))
			}}
		}
		add(withOptions("options: NOP padding (IHL 6)", nopOptions(4)))
		add(withOptions("options: record route", recordRoute(3)))
		add(withOptions("options: timestamp", timestampOption(4)))
		add(withOptions("options: IHL 15 (40 bytes of NOPs)", nopOptions(40)))
		add(withOptions("options: IHL 15 (record route filling them)", recordRoute(9)))
		dnsBehindOptions := trick{name: "options: IHL 15 with UDP to 53 behind them, DNS capture on", want: captured, captureDNS: true,
			frames: func(m mark) []frame {
				p := e.packet(m, protoUDP, e.udp(m, e.sport(m), 53))
				p.options = nopOptions(40)
				return one(ipFrame(p))
			}}
		if !e.outbound {
			// Inbound UDP passes: capture is for the pod's own queries.
			dnsBehindOptions.want, dnsBehindOptions.exception = passed, true
		}
		add(dnsBehindOptions)
	}

	// Fragments. IPv4 and IPv6 alike: the upper-layer bytes cut at 8-byte
	// boundaries.
	fragments := func(p ipPacket, m mark, pieces ...[2]int) []frame {
		if e.v6 {
			return ipv6Fragments(p, uint32(m.id)<<8|uint32(m.idx), pieces...)
		}
		return ipv4Fragments(p, pieces...)
	}
	bigPayload := func(m mark) []byte {
		return append(append(append([]byte(nil), m.tag...), make([]byte, 48)...), m.tag...)
	}
	tcpBig := func(m mark) ipPacket {
		return e.packet(m, protoTCP, tcpSYN(e.src, e.dst, e.sport(m), 8080, bigPayload(m)))
	}
	udpBig := func(m mark, dport uint16) ipPacket {
		sport := e.sport(m)
		if dport == 53 && !e.outbound {
			sport, dport = 53, sport // a DNS reply
		}
		return e.packet(m, protoUDP, udpDatagram(e.src, e.dst, sport, dport, bigPayload(m)))
	}
	frag := func(name string, want []maps.Verdict, build func(m mark) []frame) trick {
		return trick{name: name, want: want, frames: build}
	}
	udpFrag := func(name string, build func(m mark) []frame) trick {
		return trick{name: name + " (exception: UDP passes)", want: passed, exception: true, frames: build}
	}
	// A later fragment of TCP has no ports to proxy by: its first went to
	// ztunnel, it is dropped. A TCP header cut by the first fragment's end
	// cannot be classified: a parse error.
	capturedOrDropped := []maps.Verdict{capture, maps.VerdictDroppedFragment}
	cutOrDropped := []maps.Verdict{maps.VerdictParseError, maps.VerdictDroppedFragment}
	if !e.outbound {
		// Inbound, a TCP header with its ports is enough to capture.
		cutOrDropped = []maps.Verdict{maps.VerdictParseError, capture, maps.VerdictDroppedFragment}
	}
	add(frag("first fragment of TCP", captured, func(m mark) []frame { return fragments(tcpBig(m), m, [2]int{0, 40}) }))
	add(frag("later fragment of TCP", laterDropped, func(m mark) []frame { return fragments(tcpBig(m), m, [2]int{40, 84}) }))
	add(udpFrag("first fragment of UDP", func(m mark) []frame { return fragments(udpBig(m, 47113), m, [2]int{0, 32}) }))
	add(udpFrag("later fragment of UDP", func(m mark) []frame { return fragments(udpBig(m, 47113), m, [2]int{32, 72}) }))
	add(udpFrag("later fragment of DNS, DNS capture off", func(m mark) []frame {
		return fragments(udpBig(m, 53), m, [2]int{32, 72})
	}))
	add(frag("both fragments of TCP", capturedOrDropped, func(m mark) []frame {
		return fragments(tcpBig(m), m, [2]int{0, 40}, [2]int{40, 84})
	}))
	add(frag("tiny first fragment (TCP flags in the second)", cutOrDropped, func(m mark) []frame {
		return fragments(tcpBig(m), m, [2]int{0, 8}, [2]int{8, 84})
	}))
	add(frag("overlapping fragments of TCP", capturedOrDropped, func(m mark) []frame {
		return fragments(tcpBig(m), m, [2]int{0, 40}, [2]int{24, 64}, [2]int{56, 84})
	}))
	add(udpFrag("overlapping fragments of UDP (second rewrites the payload)", func(m mark) []frame {
		return fragments(udpBig(m, 47113), m, [2]int{0, 24}, [2]int{8, 72})
	}))
	add(trick{name: "later fragment claiming ICMP (exception: ICMP passes in any fragment)", want: passed, exception: true,
		note: "reassembled only with an ICMP first fragment",
		frames: func(m mark) []frame {
			return fragments(e.packet(m, icmp, icmpEcho(e.src, e.dst, uint16(m.idx), bigPayload(m))), m, [2]int{32, 72})
		}})
	if e.v6 {
		add(frag("atomic fragment (offset 0, no more fragments)", captured, func(m mark) []frame {
			p := tcpBig(m)
			p.ext = []ext{fragmentHeader(0, false, uint32(m.idx))}
			return one(ipFrame(p))
		}))
		add(frag("first fragment whose chain goes on past it", []maps.Verdict{maps.VerdictParseError, maps.VerdictDroppedFragment}, func(m mark) []frame {
			// Fragment, then destination options of 16 bytes of which the
			// first fragment holds 8: the upper-layer header is in the
			// second (RFC 7112 forbids it).
			l4 := append([]byte{protoTCP, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, e.syn(m, 8080)...)
			p := e.packet(m, protoDstOpts, l4)
			return ipv6Fragments(p, uint32(m.idx), [2]int{0, 8}, [2]int{8, len(l4)})
		}))
	}

	// IPv6 extension headers.
	if e.v6 {
		withExt := func(name string, want []maps.Verdict, exts ...ext) trick {
			return trick{name: name, want: want, frames: func(m mark) []frame {
				p := e.packet(m, protoTCP, e.syn(m, 8080))
				p.ext = exts
				return one(ipFrame(p))
			}}
		}
		six := []ext{hopByHop(), dstOpts(), routingHeader(0, 0), fragmentHeader(0, false, 7), authHeader(), dstOpts()}
		add(withExt("hop-by-hop options", captured, hopByHop()))
		add(withExt("destination options", captured, dstOpts()))
		add(withExt("routing header (type 0, no segment left)", captured, routingHeader(0, 0)))
		add(withExt("authentication header", captured, authHeader()))
		add(withExt("chain of 6 extension headers", captured, six...))
		add(withExt("chain of 7 extension headers", parseError, append(slices.Clone(six), dstOpts())...))
		add(trick{name: "chain of 7 extension headers before UDP to 53, DNS capture off", want: parseError,
			frames: func(m mark) []frame {
				p := e.packet(m, protoUDP, e.udp(m, e.sport(m), 53))
				if !e.outbound {
					p.l4 = e.udp(m, 53, e.sport(m))
				}
				p.ext = append(slices.Clone(six), hopByHop())
				return one(ipFrame(p))
			}})
		add(trick{name: "extension chain cut by the end of the frame", want: parseError, malformed: true,
			frames: func(m mark) []frame {
				p := e.packet(m, protoTCP, nil)
				p.ext = []ext{hopByHop(), dstOpts()}
				b := p.bytes()
				return one(frame{body: b[:len(b)-4]})
			}})
	}

	// Truncated headers.
	add(trick{name: "frame ends inside the IP header (every length)", want: parseError, malformed: true,
		frames: func(m mark) []frame {
			whole := ipFrame(e.packet(m, protoTCP, e.syn(m, 8080))).body
			var out []frame
			for n := 1; n < ipHdr; n++ {
				out = append(out, frame{etype: e.etype(), body: whole[:n]})
			}
			return out
		}})
	if !e.v6 {
		add(trick{name: "IHL 15 but the frame ends after 20 bytes of header", want: parseError, malformed: true,
			frames: func(m mark) []frame {
				p := e.packet(m, protoTCP, nil)
				p.ihl = 15
				return one(ipFrame(p))
			}})
		add(trick{name: "IHL below 5", want: parseError, malformed: true,
			frames: func(m mark) []frame {
				p := e.packet(m, protoTCP, e.syn(m, 8080))
				p.ihl = 4
				return one(ipFrame(p))
			}})
	}
	// Outbound, a TCP segment needs its flags read, a datagram its ports:
	// a parse error without them. Inbound, a TCP segment with its ports is
	// captured (ztunnel's side drops what has no flags), and UDP passes
	// unread.
	if e.outbound {
		add(trick{name: "frame ends inside the TCP header", want: parseError,
			frames: func(m mark) []frame { return one(ipFrame(e.packet(m, protoTCP, e.syn(m, 8080)[:10]))) }})
		add(trick{name: "frame ends inside the UDP header (53 on both ports, DNS capture off)", want: parseError,
			frames: func(m mark) []frame { return one(ipFrame(e.packet(m, protoUDP, e.udp(m, 53, 53)[:3]))) }})
	} else {
		add(trick{name: "frame ends inside the TCP header", want: captured,
			frames: func(m mark) []frame { return one(ipFrame(e.packet(m, protoTCP, e.syn(m, 8080)[:10]))) }})
		add(trick{name: "frame ends inside the UDP header (exception: UDP passes)", want: passed, exception: true,
			frames: func(m mark) []frame { return one(ipFrame(e.packet(m, protoUDP, e.udp(m, 53, 53)[:3]))) }})
	}
	add(trick{name: "IP version differs from the EtherType", want: parseError, malformed: true,
		frames: func(m mark) []frame {
			p := e.packet(m, protoTCP, e.syn(m, 8080))
			if e.v6 {
				p.version = 4
			} else {
				p.version = 6
			}
			f := ipFrame(p)
			f.etype = e.etype()
			return one(f)
		}})

	// Link layer.
	tagged := func(name string, tags ...vlanTag) trick {
		want, note := parseError, ""
		if !e.outbound {
			// A router never forwards a tag: the tagged frame meets our
			// program only as the untagged packet a kernel made of it
			// (a VID 0 tag is stripped, any other dropped).
			want, note = []maps.Verdict{maps.VerdictParseError, capture}, "tag gone before our program"
		}
		return trick{name: name, want: want, note: note, malformed: true, frames: func(m mark) []frame {
			f := ipFrame(e.packet(m, protoTCP, e.syn(m, 8080)))
			f.tags = tags
			return one(f)
		}}
	}
	add(tagged("802.1Q tag (VID 100)", vlanTag{ether8021Q, 100}))
	add(tagged("802.1Q priority tag (VID 0)", vlanTag{ether8021Q, 0}))
	add(tagged("QinQ 802.1ad (VIDs 100, 200)", vlanTag{ether8021AD, 100}, vlanTag{ether8021Q, 200}))
	add(tagged("QinQ 802.1ad (VIDs 0, 0)", vlanTag{ether8021AD, 0}, vlanTag{ether8021Q, 0}))
	add(trick{name: "MPLS", want: protocol, malformed: true,
		frames: func(m mark) []frame {
			lse := []byte{0, 0x06, 0x41, 64} // label 100, bottom of stack, TTL 64
			return one(frame{etype: etherMPLS, body: append(lse, ipFrame(e.packet(m, protoTCP, e.syn(m, 8080))).body...)})
		}})
	add(trick{name: "IP in 802.2 LLC/SNAP", want: protocol, malformed: true,
		frames: func(m mark) []frame {
			ip := ipFrame(e.packet(m, protoTCP, e.syn(m, 8080)))
			snap := []byte{0xaa, 0xaa, 0x03, 0, 0, 0, byte(e.etype() >> 8), byte(e.etype())}
			body := append(snap, ip.body...)
			return one(frame{etype: uint16(len(body)), body: body})
		}})

	// Addresses.
	// Outbound, a SYN from an address the endpoints map does not give to
	// the sender's veth is dropped before ztunnel could take it for the
	// address's owner. Inbound, ztunnel checks the peer, but an ambient
	// pod's address that did not come through ztunnel is forged.
	spoofed := captured
	if e.outbound {
		spoofed = []maps.Verdict{maps.VerdictDroppedSpoofed}
	}
	from := func(name string, src netip.Addr, malformed bool) trick {
		return trick{name: name, want: spoofed, malformed: malformed, forged: true, frames: func(m mark) []frame {
			p := e.packet(m, protoTCP, tcpSYN(src, e.dst, e.sport(m), 8080, m.tag))
			p.src = src
			return one(ipFrame(p))
		}}
	}
	add(from("spoofed source (neither the pod's nor a node's)", e.spoofed(), true))
	add(from("the sender's node's IP as source", e.senderNode, true))
	if !e.outbound {
		add(trick{name: "an ambient pod's IP as source", want: []maps.Verdict{maps.VerdictDroppedSpoofed}, malformed: true, forged: true,
			frames: func(m mark) []frame {
				p := e.packet(m, protoTCP, tcpSYN(e.other, e.dst, e.sport(m), 8080, m.tag))
				p.src = e.other
				return one(ipFrame(p))
			}})
	}
	if e.outbound {
		add(from("another ambient pod's IP as source", e.other, false))
		// What §5 lets pass by design, DNS (with capture off too) and
		// ICMP, passes only with the pod's own source: with another
		// pod's, or one no pod has, it is dropped before any rule that
		// lets it pass or sends it to ztunnel.
		type source struct {
			name string
			src  netip.Addr
		}
		forgedSources := []source{{"another ambient pod's IP", e.other}}
		if e.vacant.IsValid() {
			forgedSources = append(forgedSources, source{"an address of the pod CIDR that no pod has", e.vacant})
		}
		for _, forged := range forgedSources {
			src := forged.src
			dns := func(m mark) []frame {
				p := e.packet(m, protoUDP, udpDatagram(src, e.dst, e.sport(m), 53, m.tag))
				p.src = src
				return one(ipFrame(p))
			}
			add(trick{name: "UDP to 53 from " + forged.name + ", DNS capture off", want: spoofed, forged: true, frames: dns})
			add(trick{name: "UDP to 53 from " + forged.name + ", DNS capture on", want: spoofed, forged: true, captureDNS: true, frames: dns})
			add(trick{name: "ICMP echo from " + forged.name, want: spoofed, forged: true,
				frames: func(m mark) []frame {
					p := e.packet(m, icmp, icmpEcho(src, e.dst, uint16(m.idx), m.tag))
					p.src = src
					return one(ipFrame(p))
				}})
		}
		add(trick{name: "to ztunnel's own IP", want: captured, toZtunnel: true,
			frames: func(m mark) []frame {
				p := e.packet(m, protoTCP, tcpSYN(e.src, e.ztunnel, e.sport(m), 8080, m.tag))
				p.dst = e.ztunnel
				return one(ipFrame(p))
			}})
		add(trick{name: "UDP to ztunnel's own IP", want: passed, toZtunnel: true,
			frames: func(m mark) []frame {
				p := e.packet(m, protoUDP, udpDatagram(e.src, e.ztunnel, e.sport(m), 47113, m.tag))
				p.dst = e.ztunnel
				return one(ipFrame(p))
			}})
	}
	add(trick{name: "TTL (hop limit) 1", want: captured, malformed: true,
		frames: func(m mark) []frame {
			p := e.packet(m, protoTCP, e.syn(m, 8080))
			p.ttl = 1
			return one(ipFrame(p))
		}})

	// Relays: ask the node to send the packet on. TCP to the node goes to
	// ztunnel (unless it answers the node's own connection, with no option
	// or extension header); UDP passes, as UDP to any host does, and the
	// route changes nothing of that; a tunnel protocol is dropped.
	if e.outbound {
		// arrives: the node forwards it to the remote host (source routing
		// on), where a passed datagram must turn up.
		toNode := func(name string, want []maps.Verdict, build func(m mark) ipPacket) trick {
			t := trick{name: name, want: want, frames: func(m mark) []frame { return one(ipFrame(build(m))) }}
			t.mayArrive = e.sourceRouting && slices.Equal(want, passed)
			return t
		}
		add(toNode("TCP ACK to the node's IP with a source route via the remote host", captured, func(m mark) ipPacket {
			p := e.packet(m, protoTCP, tcpSegment(e.src, e.node, e.sport(m), 8080, tcpACKFlag, m.tag))
			p.dst = e.node
			if e.v6 {
				p.ext = []ext{routingHeader(4, 1, e.dst, e.node)}
			} else {
				p.options = looseSourceRoute(e.dst)
			}
			return p
		}))
		if e.nodeConn.IsValid() {
			// A probe's reply passes only without a route in it: on the
			// node's own tuple, a source route goes to ztunnel like any
			// other segment to the node, or the node would relay it.
			name := "TCP ACK of the node's own connection to the pod (a probe's reply) with a source route via the remote host"
			if e.v6 {
				name = "TCP ACK of the node's own connection to the pod (a probe's reply) with a segment routing header via the remote host"
			}
			add(toNode(name, captured, func(m mark) ipPacket {
				node := e.nodeConn.Addr()
				p := e.packet(m, protoTCP, tcpSegment(e.src, node, e.nodeConnPort, e.nodeConn.Port(), tcpACKFlag, m.tag))
				p.dst = node
				if e.v6 {
					p.ext = []ext{routingHeader(4, 1, e.dst, node)}
				} else {
					p.options = looseSourceRoute(e.dst)
				}
				return p
			}))
		}
		if e.v6 {
			t := toNode("UDP to the node's IP with a type 0 routing header via the remote host (Linux never relays type 0)", passed, func(m mark) ipPacket {
				p := e.packet(m, protoUDP, e.udp(m, e.sport(m), 47113))
				p.dst = e.node
				p.ext = []ext{routingHeader(0, 1, e.dst)}
				return p
			})
			add(t)
			add(toNode("UDP to the node's IP with a segment routing header via the remote host", passed, func(m mark) ipPacket {
				p := e.packet(m, protoUDP, e.udp(m, e.sport(m), 47113))
				p.dst = e.node
				p.ext = []ext{routingHeader(4, 1, e.dst, e.node)}
				return p
			}))
		} else {
			add(toNode("UDP to the node's IP with a loose source route via the remote host", passed, func(m mark) ipPacket {
				p := e.packet(m, protoUDP, e.udp(m, e.sport(m), 47113))
				p.dst = e.node
				p.options = looseSourceRoute(e.dst)
				return p
			}))
			add(trick{name: "UDP to ztunnel's IP with a loose source route via the remote host", want: passed, toZtunnel: true,
				frames: func(m mark) []frame {
					p := e.packet(m, protoUDP, e.udp(m, e.sport(m), 47113))
					p.dst = e.ztunnel
					p.options = looseSourceRoute(e.dst)
					return one(ipFrame(p))
				}})
		}
		add(toNode("IP in IP to the node's IP, inner packet to the remote host", protocol, func(m mark) ipPacket {
			p := e.packet(m, protoIPIP, e.inner(m, false))
			if e.v6 {
				p.proto = protoIPv6
				p.l4 = e.inner(m, true)
			}
			p.dst = e.node
			return p
		}))
		add(toNode("VXLAN to the node's IP (no VXLAN device there), inner packet to the remote host", passed, func(m mark) ipPacket {
			return e.vxlanToNode(m, e.v6)
		}))
	}
	for i := range ts {
		ts[i].name = fam + "/" + ts[i].name
	}
	return ts
}

// vxlanToNode is a VXLAN packet (VNI 42, port 4789) to the node's IP whose
// inner frame carries a marked UDP packet (IPv6 if innerV6) to the remote
// host, addressed to the node's VXLAN device if it has one.
func (e trickEnv) vxlanToNode(m mark, innerV6 bool) ipPacket {
	dstMAC := e.vxlanMAC
	if dstMAC == nil {
		dstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}
	}
	inner := frame{body: e.inner(m, innerV6)}.ether(dstMAC, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01})
	vx := append([]byte{0x08, 0, 0, 0, 0, 0, 42, 0}, inner...)
	p := e.packet(m, protoUDP, udpDatagram(e.src, e.node, e.sport(m), 4789, vx))
	p.dst = e.node
	return p
}
