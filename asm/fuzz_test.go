package asm_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
)

// fuzzSeeds are frames of every kind the tables use, as a starting corpus;
// testdata/fuzz keeps more, found by earlier runs.
func fuzzSeeds(tb testing.TB) [][]byte {
	seeds := [][]byte{
		arpRequest(tb, clientV4),
		arpFrom(tb, serverV4, layers.EthernetTypeIPv4),
		neighborSolicitation(tb, clientV6),
		nd(tb, 136, clientLL, gatewayLL, serverV6, 255),
		packet{src: clientV4, dst: remoteV4}.build(tb),
		packet{src: clientV6, dst: remoteV6}.build(tb),
		packet{src: clientV4, dst: nodeV4, ack: true}.build(tb),
		packet{src: clientV6, dst: gatewayV6, ack: true, ext: []layers.IPProtocol{layers.IPProtocolIPv6Routing}}.build(tb),
		packet{src: clientV4, dst: dnsV4, proto: layers.IPProtocolUDP, dport: 53}.build(tb),
		packet{src: clientV6, dst: dnsV6, proto: layers.IPProtocolUDP, dport: 53, ext: sixExtHeaders()}.build(tb),
		packet{src: clientV4, dst: remoteV4, ipv4Options: optionsOf(10), moreFragments: true}.build(tb),
		packet{src: clientV4, dst: dnsV4, proto: layers.IPProtocolUDP, ipv4Options: lsrr(remoteV4), dport: 53}.build(tb),
		later(packet{src: clientV6, dst: remoteV6, proto: layers.IPProtocolUDP}, true).build(tb),
		packet{src: remoteV4, dst: serverV4, fragOffset: 9}.build(tb),
		packet{src: nodeV4, dst: serverV4}.build(tb),
		packet{src: remoteV6, dst: serverV6, proto: layers.IPProtocolGRE}.build(tb),
		packet{src: clientV4, dst: remoteV4, vlan: true}.build(tb),
		etherFrame(0x8847),
	}
	return seeds
}

// fuzzIngress are the ingress interfaces a fuzzed frame may have entered
// through: the node itself, ztunnel, another node, a pod outside the mesh,
// the client's own veth.
var fuzzIngress = []uint32{0, ztIfindex, uplinkIfindex, plainIfindex, clientIfindex}

// fuzzProgram runs name on random frames, with the fixture's configuration
// (client, server, node addresses and resolvers in the endpoints map;
// ztunnel ready, DNS capture on or off, the strict UDP policy on or off)
// and asserts that:
//   - the outcome (verdict counted and action returned) is the model's of
//     §5 (model_test.go), for the programs it models;
//   - what passes belongs to a class §5 lets pass (meshRule), a check that
//     does not rest on the model;
//   - no byte but the destination MAC ever changes, and when it does, it
//     becomes the MAC the redirect needs.
func fuzzProgram(f *testing.F, name string, allowed map[int32]bool, macs []net.HardwareAddr) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, uint32(0))
	}
	fx := newFixture(f, mrasm.DefaultOptions())
	if name == mrasm.AppInbound {
		fx.enrol(f, clientIfindex+10, clientMAC, 0, clientV4, clientV6)
		fx.enrol(f, selfIfindex, serverMAC, 0, serverV4, serverV6)
	}
	prog := fx.coll.Programs[name]
	f.Fuzz(func(t *testing.T, frame []byte, state uint32) {
		if len(frame) < 14 {
			return // BPF_PROG_TEST_RUN takes no less than an Ethernet header
		}
		ingress := fuzzIngress[state%uint32(len(fuzzIngress))]
		if !fx.ingressOK {
			ingress = 0 // the kernel's test runner refuses it before 5.15
		}
		flags := maps.ZtunnelReady
		if state&0x100 != 0 {
			flags |= maps.ZtunnelCaptureDNS
		}
		if state&0x200 != 0 {
			flags |= maps.ZtunnelUDPDrop
		}
		fx.setZtunnel(t, flags)
		out := make([]byte, len(frame)+64)
		var ctxOut mrasm.SkBuff
		before := fx.stats(t)
		ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out, Context: mrasm.SkBuff{IngressIfindex: ingress}, ContextOut: &ctxOut})
		if errors.Is(err, unix.EINVAL) {
			return // refused by the kernel before the program ran (a cut IP header)
		}
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		if !allowed[int32(ret)] {
			t.Fatalf("verdict %s is not one %s may give", action(int32(ret)), name)
		}
		got := outcome{verdict: counted(t, before, fx.stats(t)), ret: int32(ret)}
		if name != mrasm.ZtunnelAssign {
			if want := fx.model(t, name, frame, ingress); got != want {
				t.Fatalf("%s gave %s (%s), the model of §5 %s (%s)\n frame %x", name, got.verdict, action(got.ret), want.verdict, action(want.ret), frame)
			}
		}
		if int32(ret) == mrasm.ActUnspec || int32(ret) == mrasm.ActOK && ctxOut.Mark&mrasm.TProxyMask == 0 {
			if err := meshRule(fx.world(t, name), name, frame, ingress); err != nil {
				t.Fatalf("%s passed a frame §5 does not let pass: %v\n frame %x", name, err, frame)
			}
		}
		out = out[:len(frame)]
		if !bytes.Equal(out[6:], frame[6:]) {
			t.Fatalf("bytes other than the destination MAC changed:\n in  %x\n out %x", frame, out)
		}
		if !bytes.Equal(out[:6], frame[:6]) {
			if int32(ret) != mrasm.ActRedirect {
				t.Fatalf("destination MAC changed to %s on a %s", net.HardwareAddr(out[:6]), action(int32(ret)))
			}
			ok := false
			for _, m := range macs {
				ok = ok || bytes.Equal(out[:6], m)
			}
			if !ok {
				t.Fatalf("destination MAC changed to %s, not to a MAC of the maps", net.HardwareAddr(out[:6]))
			}
		}
		if ctxOut.Mark&mrasm.TProxyMask != 0 && name != mrasm.ZtunnelAssign {
			t.Fatalf("%s set mark %#x", name, ctxOut.Mark)
		}
	})
}

// counted returns the one verdict whose counter moved between two reads.
func counted(t *testing.T, before, after map[maps.Verdict]maps.Counter) maps.Verdict {
	t.Helper()
	var moved []maps.Verdict
	for v, c := range after {
		if c.Packets != before[v].Packets {
			moved = append(moved, v)
		}
	}
	if len(moved) != 1 {
		t.Fatalf("verdicts counted: %v, want exactly one", moved)
	}
	return moved[0]
}

// meshRule checks a frame that a program let through unchanged against the
// classes §5 lets pass, with no knowledge of how the program decides:
//   - app_outbound: ARP with the pod's own sender address (or none);
//     ICMPv6 from a link-local or unspecified source; UDP or ICMP from the
//     pod's own address (by the strict policy, only DNS to a resolver).
//     No TCP: the fuzz fixture holds no socket a probe reply could belong
//     to.
//   - app_inbound: what ztunnel sent, ARP, UDP, ICMP, the node's own TCP,
//     and TCP not for the pod.
//   - ztunnel_egress: nothing with an ambient pod's source from another
//     interface than its veth.
//   - ztunnel_assign: nothing captured (addressed elsewhere than ztunnel's
//     own IPs) but ICMP and what is not TCP or UDP over IP.
func meshRule(w world, prog string, frame []byte, ingress uint32) error {
	p := parse(frame)
	x := p.ip
	icmp := (!x.v6 && x.proto == 1) || (x.v6 && x.proto == 58)
	isIP := (p.etherType == 0x0800 || p.etherType == 0x86dd) && !p.bad
	failOpen := w.ztFlags&maps.ZtunnelReady == 0 && w.ztFlags&maps.ZtunnelFailOpen != 0
	switch prog {
	case mrasm.AppOutbound:
		switch {
		case p.etherType == 0x0806 && len(frame) >= 42:
			spa := netip.AddrFrom4([4]byte(frame[28:32]))
			if spa.IsUnspecified() || w.own(spa) {
				return nil
			}
			return fmt.Errorf("ARP from %s", spa)
		case !isIP:
			return fmt.Errorf("EtherType %#04x", p.etherType)
		case x.v6 && icmp && (x.src.IsLinkLocalUnicast() || x.src.IsUnspecified()):
			return nil
		case !w.own(x.src):
			return fmt.Errorf("source %s is not the pod's", x.src)
		case icmp:
			return nil
		case x.proto == 17:
			if w.strict(0) && !w.has(x.dst, maps.EndpointResolver) {
				return fmt.Errorf("UDP to %s under the strict policy", x.dst)
			}
			if _, dport, ok := ports(frame, x.l4); ok && !x.later && w.has(x.dst, maps.EndpointNode) && slices.Contains(w.relays, dport) {
				return fmt.Errorf("UDP to the node's tunnel port %d", dport)
			}
			return nil
		case x.proto == 6 && failOpen:
			return nil // --fail-open: captured traffic passes while ztunnel is down
		case x.proto == 6 && w.has(x.src, maps.EndpointBypassInbound) && !w.has(x.dst, maps.EndpointNode) &&
			x.l4+14 <= len(frame) && frame[x.l4+13]&0x12 != 0x02:
			return nil // a bypassing pod's answer on a direct inbound connection
		}
		return fmt.Errorf("protocol %d from the pod", x.proto)
	case mrasm.AppInbound:
		if ingress != 0 && ingress == w.ztIfindex || p.etherType == 0x0806 || !isIP || icmp || x.proto == 17 {
			return nil
		}
		if x.proto == 6 && (ingress == 0 || !w.own(x.dst) || failOpen) {
			return nil
		}
		if _, dport, _ := ports(frame, x.l4); x.proto == 6 && dport != 15008 && w.has(x.dst, maps.EndpointBypassInbound) {
			return nil // the pod bypasses inbound capture
		}
		return fmt.Errorf("protocol %d to the pod from interface %d", x.proto, ingress)
	case mrasm.ZtunnelEgress:
		if !isIP {
			return nil
		}
		if ep, ok := w.lookup(x.src); ok && ep.IsPod() && ep.Ifindex != ingress {
			return fmt.Errorf("source %s from interface %d", x.src, ingress)
		}
		return nil
	case mrasm.ZtunnelAssign:
		if !isIP || icmp || x.proto != 6 && x.proto != 17 {
			return nil
		}
		for _, a := range []netip.Addr{ztV4, ztV6} {
			if x.dst == a {
				return nil
			}
		}
		return fmt.Errorf("captured %d to %s passed unmarked", x.proto, x.dst)
	}
	return nil
}

var appVerdicts = map[int32]bool{mrasm.ActUnspec: true, mrasm.ActShot: true, mrasm.ActRedirect: true}

func FuzzAppOutbound(f *testing.F) {
	fuzzProgram(f, mrasm.AppOutbound, appVerdicts, []net.HardwareAddr{ztMAC})
}

func FuzzAppInbound(f *testing.F) {
	fuzzProgram(f, mrasm.AppInbound, appVerdicts, []net.HardwareAddr{ztMAC})
}

// ztunnel's own packets are never dropped.
func FuzzZtunnelIngress(f *testing.F) {
	fuzzProgram(f, mrasm.ZtunnelIngress, map[int32]bool{mrasm.ActUnspec: true, mrasm.ActRedirect: true},
		[]net.HardwareAddr{clientMAC, serverMAC})
}

func FuzzZtunnelEgress(f *testing.F) {
	fuzzProgram(f, mrasm.ZtunnelEgress, map[int32]bool{mrasm.ActUnspec: true, mrasm.ActShot: true}, nil)
}

func FuzzZtunnelAssign(f *testing.F) {
	fuzzProgram(f, mrasm.ZtunnelAssign, map[int32]bool{mrasm.ActUnspec: true, mrasm.ActOK: true, mrasm.ActShot: true}, nil)
}

// TestStatsCountEveryPacket runs each seed through every program and checks
// that exactly one verdict counted it: the stats map accounts for all
// traffic.
func TestStatsCountEveryPacket(t *testing.T) {
	fx := newFixture(t, mrasm.DefaultOptions())
	for _, p := range mrasm.Programs() {
		for i, s := range fuzzSeeds(t) {
			res := fx.run(t, p.Name, s, uplinkIfindex)
			if !res.counted {
				t.Errorf("%s, seed %d: not counted under exactly one verdict", p.Name, i)
			}
		}
	}
}

// TestWriteFuzzCorpus writes the seeds into testdata/fuzz, the corpus that
// `go test` replays and `go test -fuzz` starts from. Run it after changing
// the seeds: MESHREDIRECT_WRITE_CORPUS=1 go test ./asm -run WriteFuzzCorpus
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("MESHREDIRECT_WRITE_CORPUS") != "1" {
		t.Skip("set MESHREDIRECT_WRITE_CORPUS=1 to rewrite testdata/fuzz")
	}
	for _, target := range []string{"FuzzAppOutbound", "FuzzAppInbound", "FuzzZtunnelIngress", "FuzzZtunnelEgress", "FuzzZtunnelAssign"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range fuzzSeeds(t) {
			for ingress := uint32(0); ingress < uint32(len(fuzzIngress)); ingress++ {
				body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nuint32(%d)\n", s, ingress)
				name := filepath.Join(dir, fmt.Sprintf("seed-%02d-%d", i, ingress))
				if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// The in-pod targets: their state chooses the mark (none, TProxyMark,
	// ztunnel's), ztunnel's and the pod's flags and the listeners.
	states := []uint32{0, 1 | fuzzDNS, 2, 1 | fuzzDNS | fuzzNoListeners, fuzzPodBypassIn | fuzzPodBypassDNS | fuzzUDPDrop}
	for _, target := range []string{"FuzzPodEgress", "FuzzPodLoopback", "FuzzPodIngress"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range append(fuzzSeeds(t), podFuzzSeeds(t)...) {
			for j, state := range states {
				body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nuint32(%d)\n", s, state)
				name := filepath.Join(dir, fmt.Sprintf("seed-%02d-%d", i, j))
				if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}
