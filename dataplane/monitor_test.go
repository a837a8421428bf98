package dataplane_test

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// record builds a record of the events ring buffer as a program writes it:
// the header, then the first bytes of frame (at most maps.EventCapLen).
func record(verdict maps.Verdict, program uint8, frame []byte) []byte {
	capLen := min(len(frame), maps.EventCapLen)
	raw := make([]byte, maps.EventRecordSize)
	binary.NativeEndian.PutUint64(raw[maps.EventOffTimestamp:], maps.KtimeNow())
	binary.NativeEndian.PutUint32(raw[maps.EventOffIfindex:], 7)
	binary.NativeEndian.PutUint32(raw[maps.EventOffLen:], uint32(len(frame)))
	binary.NativeEndian.PutUint32(raw[maps.EventOffVerdict:], uint32(verdict))
	binary.NativeEndian.PutUint16(raw[maps.EventOffCapLen:], uint16(capLen))
	raw[maps.EventOffProgram] = program
	raw[maps.EventOffDropped] = 1
	copy(raw[maps.EventHeaderSize:], frame[:capLen])
	return raw
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDecodeEvent decodes records of the packets the programs drop: the
// 5-tuple of each IP family and protocol, what an IPv6 extension header
// chain, a VLAN tag, a later fragment or a cut capture leave of it.
func TestDecodeEvent(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	eth := func(et layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: mac, DstMAC: mac, EthernetType: et}
	}
	v4 := func(p layers.IPProtocol) *layers.IPv4 {
		return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: p, SrcIP: net.IP{198, 18, 1, 10}, DstIP: net.IP{198, 18, 2, 40}}
	}
	v6 := func(p layers.IPProtocol) *layers.IPv6 {
		return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: p,
			SrcIP: net.ParseIP("fd10:6d72:1::10"), DstIP: net.ParseIP("fd10:6d72:2::40")}
	}
	tcp := func(ip gopacket.NetworkLayer) *layers.TCP {
		l := &layers.TCP{SrcPort: 40000, DstPort: 8080, SYN: true, Window: 1000}
		l.SetNetworkLayerForChecksum(ip)
		return l
	}
	udp := func(ip gopacket.NetworkLayer) *layers.UDP {
		l := &layers.UDP{SrcPort: 53000, DstPort: 53}
		l.SetNetworkLayerForChecksum(ip)
		return l
	}
	var (
		ip4, ip6 = v4(layers.IPProtocolTCP), v6(layers.IPProtocolTCP)
		u4, u6   = v4(layers.IPProtocolUDP), v6(layers.IPProtocolUDP)
		frag     = v4(layers.IPProtocolTCP)
		hbh      = v6(layers.IPProtocolIPv6HopByHop)
	)
	frag.FragOffset = 100
	hbhLayer := &layers.IPv6HopByHop{}
	hbhLayer.NextHeader = layers.IPProtocolUDP
	hbhLayer.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: make([]byte, 4)}}
	hbhUDP := udp(hbh)
	long := serialize(t, eth(layers.EthernetTypeIPv4), u4, udp(u4), gopacket.Payload(make([]byte, 1200)))

	for _, c := range []struct {
		name  string
		frame []byte
		// cut keeps only the first cut bytes of the frame (as a short
		// packet would have).
		cut   int
		tuple string
		check func(dataplane.Event) bool
	}{
		{name: "IPv4 TCP", frame: serialize(t, eth(layers.EthernetTypeIPv4), ip4, tcp(ip4)),
			tuple: "TCP 198.18.1.10:40000 -> 198.18.2.40:8080", check: func(e dataplane.Event) bool { return slices.Equal(e.TCPFlags, []string{"SYN"}) }},
		{name: "IPv6 TCP", frame: serialize(t, eth(layers.EthernetTypeIPv6), ip6, tcp(ip6)),
			tuple: "TCP [fd10:6d72:1::10]:40000 -> [fd10:6d72:2::40]:8080"},
		{name: "IPv6 UDP", frame: serialize(t, eth(layers.EthernetTypeIPv6), u6, udp(u6)),
			tuple: "UDP [fd10:6d72:1::10]:53000 -> [fd10:6d72:2::40]:53"},
		{name: "IPv6 UDP after hop-by-hop", frame: serialize(t, eth(layers.EthernetTypeIPv6), hbh, hbhLayer, hbhUDP),
			tuple: "UDP [fd10:6d72:1::10]:53000 -> [fd10:6d72:2::40]:53"},
		{name: "ICMP", frame: serialize(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}),
			tuple: "ICMP 198.18.1.10 -> 198.18.2.40 type 8 code 0"},
		{name: "GRE", frame: serialize(t, eth(layers.EthernetTypeIPv4), v4(layers.IPProtocolGRE), gopacket.Payload(make([]byte, 8))),
			tuple: "proto 47 198.18.1.10 -> 198.18.2.40"},
		{name: "later fragment", frame: serialize(t, eth(layers.EthernetTypeIPv4), frag, gopacket.Payload(make([]byte, 8))),
			tuple: "TCP 198.18.1.10 -> 198.18.2.40", check: func(e dataplane.Event) bool { return e.Fragment }},
		{name: "VLAN tag", frame: serialize(t, eth(layers.EthernetTypeDot1Q), &layers.Dot1Q{VLANIdentifier: 5, Type: layers.EthernetTypeIPv4}, ip4, tcp(ip4)),
			tuple: "TCP 198.18.1.10:40000 -> 198.18.2.40:8080", check: func(e dataplane.Event) bool { return e.VLAN }},
		{name: "packet cut in its IPv4 header", frame: serialize(t, eth(layers.EthernetTypeIPv4), ip4, tcp(ip4)), cut: 30,
			tuple: "ethertype 0x0800", check: func(e dataplane.Event) bool { return e.Truncated == "IPv4 header" }},
		{name: "packet cut in its TCP header", frame: serialize(t, eth(layers.EthernetTypeIPv4), ip4, tcp(ip4)), cut: 40,
			tuple: "TCP 198.18.1.10 -> 198.18.2.40", check: func(e dataplane.Event) bool { return e.Truncated == "TCP header" }},
		{name: "ARP", frame: serialize(t, eth(layers.EthernetTypeARP), &layers.ARP{AddrType: 1, Protocol: 0x800, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: 1, SourceHwAddress: mac, SourceProtAddress: []byte{1, 2, 3, 4}, DstHwAddress: mac, DstProtAddress: []byte{1, 2, 3, 5}}),
			tuple: "ethertype 0x0806"},
		{name: "longer than the capture", frame: long, tuple: "UDP 198.18.1.10:53000 -> 198.18.2.40:53",
			check: func(e dataplane.Event) bool { return e.Len == len(long) && e.Captured == maps.EventCapLen }},
	} {
		t.Run(c.name, func(t *testing.T) {
			frame := c.frame
			if c.cut != 0 {
				frame = frame[:c.cut]
			}
			e, err := dataplane.DecodeEvent(record(maps.VerdictDroppedSpoofed, 1, frame), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if got := e.Tuple(); got != c.tuple {
				t.Errorf("tuple %q, want %q", got, c.tuple)
			}
			if e.Program != "app_outbound" || e.Verdict != "dropped_spoofed" || !e.Dropped || e.Ifindex != 7 {
				t.Errorf("header decoded as %s %s dropped=%v ifindex %d", e.Program, e.Verdict, e.Dropped, e.Ifindex)
			}
			if time.Since(e.Time) > time.Second || time.Since(e.Time) < 0 {
				t.Errorf("event dated %s, now is %s", e.Time, time.Now())
			}
			if c.check != nil && !c.check(e) {
				t.Errorf("decoded %+v", e)
			}
		})
	}
	if _, err := dataplane.DecodeEvent(make([]byte, 10), time.Now()); err == nil {
		t.Error("a record shorter than the header decoded")
	}
}

// TestMonitorShowsDrops runs Monitor against a node in a box whose ztunnel
// is not ready: the client's connection to the remote host is dropped, and
// the monitor shows app_outbound's dropped_no_ztunnel with the connection's
// 5-tuple. Cancelling the context ends it.
func TestMonitorShowsDrops(t *testing.T) {
	b := newBox(t, scenario.Options{})
	b.Echo(b.Remote, scenario.EchoPort)
	must(t, b.DP.SetZtunnelReady(false))

	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu     sync.Mutex
		events []dataplane.Event
		done   = make(chan error, 1)
	)
	go func() {
		done <- dataplane.Monitor(ctx, dataplane.MonitorOptions{PinDir: b.Config.PinDir}, func(e dataplane.Event) error {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
			return nil
		})
	}()
	// The drops count from when the monitor's deadline is set.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m, err := b.DP.Maps().Monitor.Get()
		must(t, err)
		if m.DropsUntil > maps.KtimeNow() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the monitor set no deadline")
		}
	}
	dst := netip.AddrPortFrom(b.Remote.IPv4, scenario.EchoPort)
	if _, err := scenario.Exchange(&b.Client.Namespace, false, dst, 500*time.Millisecond); err == nil {
		t.Fatal("the connection went through with ztunnel not ready")
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Monitor: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Monitor did not return after its context was cancelled")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range events {
		if e.Program == "app_outbound" && e.Verdict == "dropped_no_ztunnel" && e.Dropped && e.Proto == "TCP" &&
			e.Src == b.Client.IPv4 && e.Dst == b.Remote.IPv4 && e.DstPort == scenario.EchoPort && slices.Contains(e.TCPFlags, "SYN") {
			t.Logf("event: %s", e)
			return
		}
	}
	t.Errorf("no event of the dropped SYN among %d events: %v", len(events), events)
}
