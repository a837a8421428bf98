package asm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// The loopback addresses, where ztunnel's DNS proxy listens and answers.
var (
	loopbackV4 = netip.MustParseAddr("127.0.0.1")
	loopbackV6 = netip.IPv6Loopback()
)

// TestPodDNSReplies checks that the replies of ztunnel's DNS proxy reach a
// connected client: ztunnel binds its DNS proxy to 127.0.0.1:15053 and
// [::1]:15053 without IP_TRANSPARENT, so it answers from there, and a
// client connected to the resolver it asked (glibc's is) would drop the
// reply. pod_loopback records each captured query's destination in the
// dnsorig map and gives the reply that source back, checksums included.
func TestPodDNSReplies(t *testing.T) {
	f := newPodFixture(t, -1)
	pod := newAssignNetns(t)
	for _, fam := range []string{"4", "6"} {
		pod.listenLoopback(t, "udp"+fam, mrasm.PortDNS)
	}
	dnsOn := maps.ZtunnelReady | maps.ZtunnelCaptureDNS
	type row struct {
		name  string
		prog  string
		flags uint16
		mark  uint32
		// record is put in the map before the run (client port, original
		// destination port; zero: none).
		record      [2]uint16
		frame       func(v6 bool) packet
		zeroUDPCsum bool
		want        outcome
		// recorded is the record the client port must have after the run
		// (its original destination port; zero: none).
		recorded uint16
	}
	client := func(v6 bool) netip.Addr { return pick(v6, clientV4, clientV6) }
	resolver := func(v6 bool) netip.Addr { return pick(v6, dnsV4, dnsV6) }
	lo := func(v6 bool) netip.Addr { return pick(v6, loopbackV4, loopbackV6) }
	query := func(port uint16) func(v6 bool) packet {
		return func(v6 bool) packet {
			return packet{src: client(v6), dst: resolver(v6), proto: layers.IPProtocolUDP, sport: port, dport: 53, payload: []byte("query")}
		}
	}
	reply := func(from func(bool) netip.Addr, sport, port uint16) func(v6 bool) packet {
		return func(v6 bool) packet {
			return packet{src: from(v6), dst: client(v6), proto: layers.IPProtocolUDP, sport: sport, dport: port, payload: []byte("an answer of odd length")}
		}
	}
	rows := []row{
		{name: "a captured DNS query records its original destination", prog: mrasm.PodLoopback, flags: dnsOn, mark: mrasm.TProxyMark,
			frame: query(41000), want: oToListener, recorded: 53},
		{name: "a later query from the same socket replaces the record", prog: mrasm.PodLoopback, flags: dnsOn, mark: mrasm.TProxyMark,
			record: [2]uint16{41001, 5353}, frame: query(41001), want: oToListener, recorded: 53},
		{name: "ztunnel's reply gets the source the client asked, checksums updated", prog: mrasm.PodLoopback, mark: mrasm.ZtunnelMark,
			record: [2]uint16{41002, 53}, frame: reply(lo, mrasm.PortDNS, 41002), want: oPass, recorded: 53},
		{name: "ztunnel's reply without its socket's mark is rewritten too", prog: mrasm.PodLoopback,
			record: [2]uint16{41003, 53}, frame: reply(lo, mrasm.PortDNS, 41003), want: oPass, recorded: 53},
		{name: "a reply to a query sent to another port gets that port", prog: mrasm.PodLoopback,
			record: [2]uint16{41004, 5353}, frame: reply(lo, mrasm.PortDNS, 41004), want: oPass, recorded: 5353},
		{name: "a reply without a UDP checksum keeps none (over IPv6: invalid before, invalid after)", prog: mrasm.PodLoopback,
			record: [2]uint16{41005, 53}, frame: reply(lo, mrasm.PortDNS, 41005), zeroUDPCsum: true, want: oPass, recorded: 53},
		{name: "a reply without a record passes unchanged", prog: mrasm.PodLoopback,
			frame: reply(lo, mrasm.PortDNS, 41006), want: oPass},
		{name: "a datagram from port 15053 of another address is not touched", prog: mrasm.PodLoopback,
			record: [2]uint16{41007, 53}, frame: reply(client, mrasm.PortDNS, 41007), want: oPass, recorded: 53},
		{name: "a datagram from the loopback address's other port is not touched", prog: mrasm.PodLoopback,
			record: [2]uint16{41008, 53}, frame: reply(lo, 15054, 41008), want: oPass, recorded: 53},
		{name: "a forged reply from outside creates no record", prog: mrasm.PodIngress,
			frame: reply(resolver, 53, 41009), want: oPass},
		{name: "a forged reply from outside to the pod's port 53 creates no record", prog: mrasm.PodIngress, flags: dnsOn,
			frame: func(v6 bool) packet { return reply(resolver, 41010, 53)(v6) }, want: oPass},
		{name: "an unmarked query on lo creates no record", prog: mrasm.PodLoopback, flags: dnsOn,
			frame: query(41011), want: oPass},
		{name: "a query with DNS capture off creates no record", prog: mrasm.PodLoopback, mark: mrasm.TProxyMark,
			frame: query(41012), want: oNoSocket},
		{name: "a query leaving eth0 is recorded by pod_loopback only", prog: mrasm.PodEgress, flags: dnsOn,
			frame: query(41013), want: oLoopback},
	}
	for _, r := range rows {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/%s", r.name, map[bool]string{false: "IPv4", true: "IPv6"}[v6]), func(t *testing.T) {
				f.setZtunnelOrReady(t, r.flags)
				p := r.frame(v6)
				key := dnsClient(p, client(v6))
				putDNSRecord(t, f.maps.DNSOrig, client(v6), resolver(v6), r.record)
				in := p.build(t)
				if r.zeroUDPCsum {
					l4 := 34
					if v6 {
						l4 = 54
					}
					in[l4+6], in[l4+7] = 0, 0
				}
				res := pod.runProg(t, f, r.prog, in, r.mark)
				checkOutcome(t, res, r.want)
				out := res.out[:len(in)]
				wantOut := bytes.Clone(in)
				if r.want == oLoopback {
					copy(wantOut, loMAC)
				}
				if r.prog == mrasm.PodLoopback && r.mark == 0 || r.mark == mrasm.ZtunnelMark {
					if orig, ok := dnsRewrite(p, r.record, v6, lo); ok {
						wantOut = rewriteSource(t, in, v6, orig)
					}
				}
				if !bytes.Equal(out, wantOut) {
					t.Errorf("frame\n in   %x\n out  %x\n want %x", in, out, wantOut)
				}
				if err := checksumsOK(out, v6); err != nil {
					t.Errorf("after the run: %v\n frame %x", err, out)
				}
				if r.zeroUDPCsum && binary.BigEndian.Uint16(udpOf(out, v6)[6:]) != 0 {
					t.Errorf("UDP checksum 0 became %#04x", binary.BigEndian.Uint16(udpOf(out, v6)[6:]))
				}
				checkDNSRecord(t, f.maps.DNSOrig, key, resolver(v6), r.recorded)
			})
		}
	}
}

// checkOutcome fails t unless the run was counted with the outcome want.
func checkOutcome(t testing.TB, res result, want outcome) {
	t.Helper()
	if got := (outcome{res.verdict, res.ret}); !res.counted || got != want {
		t.Errorf("gave %s (%s), want %s (%s)", res.verdict, action(res.ret), want.verdict, action(want.ret))
	}
}

// dnsClient is the client's end of p, a DNS packet to or from client: the
// key of its record.
func dnsClient(p packet, client netip.Addr) netip.AddrPort {
	if p.dst == client {
		return netip.AddrPortFrom(client, p.dport)
	}
	return netip.AddrPortFrom(client, p.sport)
}

// putDNSRecord puts a row's record in m: client port -> resolver and
// original destination port; none for a zero port.
func putDNSRecord(t testing.TB, m *maps.DNSOrig, client, resolver netip.Addr, record [2]uint16) {
	t.Helper()
	if record[0] == 0 {
		return
	}
	if err := m.Put(netip.AddrPortFrom(client, record[0]), netip.AddrPortFrom(resolver, record[1])); err != nil {
		t.Fatal(err)
	}
}

// checkDNSRecord fails t unless m records key -> resolver and port, or,
// for a zero port, holds no record of key.
func checkDNSRecord(t testing.TB, m *maps.DNSOrig, key netip.AddrPort, resolver netip.Addr, port uint16) {
	t.Helper()
	got, err := m.Get(key)
	want := netip.AddrPortFrom(resolver, port)
	switch {
	case port == 0 && !errors.Is(err, maps.ErrNotFound):
		t.Errorf("the client %s has a record: %s (%v)", key, got, err)
	case port != 0 && (err != nil || got != want):
		t.Errorf("the client %s has the record %s (%v), want %s", key, got, err, want)
	}
}

// dnsRewrite is the source a row's reply must get: the record's, when the
// reply comes from the loopback address's port 15053 to the recorded client.
func dnsRewrite(p packet, record [2]uint16, v6 bool, lo func(bool) netip.Addr) (netip.AddrPort, bool) {
	if record[0] == 0 || p.src != lo(v6) || p.sport != mrasm.PortDNS || p.dport != record[0] {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(pick(v6, dnsV4, dnsV6), record[1]), true
}

// rewriteSource is frame with the source orig, the checksums recomputed
// from scratch. A UDP checksum of zero stays zero: none over IPv4, and
// over IPv6 a datagram that was invalid already stays so
// (BPF_F_MARK_MANGLED_0 leaves a zero field alone).
func rewriteSource(tb testing.TB, frame []byte, v6 bool, orig netip.AddrPort) []byte {
	tb.Helper()
	out := bytes.Clone(frame)
	l4 := 34
	if v6 {
		l4 = 54
		a := orig.Addr().As16()
		copy(out[22:38], a[:])
	} else {
		a := orig.Addr().As4()
		copy(out[26:30], a[:])
		setIPv4Checksum(out)
	}
	binary.BigEndian.PutUint16(out[l4:], orig.Port())
	if binary.BigEndian.Uint16(frame[l4+6:]) != 0 {
		out[l4+6], out[l4+7] = 0, 0
		sum := ^segmentSum(out, v6, protoUDP, udpOf(out, v6))
		if sum == 0 {
			sum = 0xffff // RFC 768: a computed zero is sent as all ones
		}
		binary.BigEndian.PutUint16(out[l4+6:], sum)
	}
	return out
}

// checksumsOK recomputes the IPv4 header checksum and the UDP checksum of a
// frame (a UDP checksum of zero means none: the rows' only IPv6 one is
// made so on purpose).
func checksumsOK(frame []byte, v6 bool) error {
	l4 := 34
	if v6 {
		l4 = 54
	} else if err := ipv4ChecksumOK(frame); err != nil {
		return err
	}
	if binary.BigEndian.Uint16(frame[l4+6:]) == 0 {
		return nil
	}
	if s := segmentSum(frame, v6, protoUDP, udpOf(frame, v6)); s != 0xffff {
		return fmt.Errorf("UDP checksum %#04x is wrong (sum %#04x)", binary.BigEndian.Uint16(frame[l4+6:]), s)
	}
	return nil
}

// udpOf is the UDP datagram of a frame, by its length field (a short frame
// is padded to Ethernet's minimum).
func udpOf(frame []byte, v6 bool) []byte {
	l4 := 34
	if v6 {
		l4 = 54
	}
	return frame[l4 : l4+int(binary.BigEndian.Uint16(frame[l4+4:]))]
}

// The IP protocol numbers of the segments segmentSum sums.
const (
	protoTCP = 6
	protoUDP = 17
)

// segmentSum is the folded ones' complement sum of seg, the L4 segment of
// protocol proto in frame, with its pseudo-header (RFC 768; RFC 8200 §8.1):
// 0xffff when its checksum is right.
func segmentSum(frame []byte, v6 bool, proto byte, seg []byte) uint16 {
	var hdr []byte
	if v6 {
		hdr = append(hdr, frame[22:54]...)
		hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(seg)))
		hdr = append(hdr, 0, 0, 0, proto)
	} else {
		hdr = append(hdr, frame[26:34]...)
		hdr = append(hdr, 0, proto)
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(len(seg)))
	}
	return onesSum(uint32(onesSum(0, hdr)), seg)
}

// setIPv4Checksum computes the IPv4 header checksum of frame from scratch.
func setIPv4Checksum(frame []byte) {
	frame[24], frame[25] = 0, 0
	binary.BigEndian.PutUint16(frame[24:], ^onesSum(0, frame[14:34]))
}

// ipv4ChecksumOK checks the IPv4 header checksum of frame.
func ipv4ChecksumOK(frame []byte) error {
	if s := onesSum(0, frame[14:34]); s != 0xffff {
		return fmt.Errorf("IPv4 header checksum %#04x is wrong (sum %#04x)", binary.BigEndian.Uint16(frame[24:]), s)
	}
	return nil
}

// onesSum is the folded ones' complement sum of b (odd length padded with
// a zero byte), added to start.
func onesSum(start uint32, b []byte) uint16 {
	sum := start
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// TestPodDNSReplyOnHook runs the whole exchange through a real lo with
// pod_loopback on its tc ingress: a client connected to the resolver (as
// glibc's is) and ztunnel's DNS proxy bound to the loopback address's port
// 15053, which answers from there. With the client's record the reply
// reaches the client from the resolver's address and port; without one it
// is ignored, as it would be with no pod_loopback at all (the bug this
// fixes).
func TestPodDNSReplyOnHook(t *testing.T) {
	f := newPodFixture(t, -1)
	pod := newAssignNetns(t)
	testutil.MustDo(t, pod.ns, func() error {
		// A route to the resolvers, so that the client can connect: a veth
		// nothing answers on.
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		up, err := netlink.LinkByName("up0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(up); err != nil {
			return err
		}
		for _, a := range []netip.Addr{dnsV4, dnsV6} {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: hostAddr(a).IPNet}); err != nil {
				return fmt.Errorf("route to %s: %w", a, err)
			}
		}
		if err := netlink.QdiscAdd(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: mrasm.LoopbackIfindex,
			Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}); err != nil {
			return fmt.Errorf("add clsact to lo: %w", err)
		}
		return netlink.FilterAdd(&netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: mrasm.LoopbackIfindex, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 1, Protocol: unix.ETH_P_ALL},
			Fd:          f.coll.Programs[mrasm.PodLoopback].FD(), Name: "meshredirect-test", DirectAction: true,
		})
	})
	for _, v6 := range []bool{false, true} {
		network := map[bool]string{false: "udp4", true: "udp6"}[v6]
		resolver := netip.AddrPortFrom(pick(v6, dnsV4, dnsV6), 53)
		for _, recorded := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/recorded=%v", network, recorded), func(t *testing.T) {
				var client, proxy *net.UDPConn
				testutil.MustDo(t, pod.ns, func() error {
					var err error
					client, err = net.DialUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(pick(v6, clientV4, clientV6), 0)), net.UDPAddrFromAddrPort(resolver))
					if err != nil {
						return err
					}
					proxy, err = net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(pick(v6, loopbackV4, loopbackV6), mrasm.PortDNS)))
					return err
				})
				t.Cleanup(func() { client.Close(); proxy.Close() })
				local := client.LocalAddr().(*net.UDPAddr).AddrPort()
				if recorded {
					if err := f.maps.DNSOrig.Put(local, resolver); err != nil {
						t.Fatal(err)
					}
				}
				answer := []byte("an answer of odd length")
				if _, err := proxy.WriteToUDPAddrPort(answer, local); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 512)
				client.SetReadDeadline(time.Now().Add(time.Second))
				n, from, err := client.ReadFromUDPAddrPort(buf)
				switch {
				case recorded && err != nil:
					t.Fatalf("the client got no reply: %v", err)
				case recorded && (from != resolver || !bytes.Equal(buf[:n], answer)):
					t.Fatalf("the client got %q from %s, want %q from %s", buf[:n], from, answer, resolver)
				case !recorded && err == nil:
					t.Fatalf("the client got %q from %s without a record", buf[:n], from)
				}
			})
		}
	}
}
