package asm_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// podFuzzSeeds are frames of the in-pod tables: the pod's DNS queries,
// HBONE, ztunnel's DNS replies on lo.
func podFuzzSeeds(tb testing.TB) [][]byte {
	return [][]byte{
		packet{src: clientV4, dst: dnsV4, proto: layers.IPProtocolUDP, sport: 40000, dport: 53}.build(tb),
		packet{src: clientV6, dst: dnsV6, proto: layers.IPProtocolUDP, sport: 40000, dport: 53}.build(tb),
		packet{src: clientV4, dst: dnsV4, dport: 53}.build(tb),
		packet{src: remoteV4, dst: clientV4, dport: 15008}.build(tb),
		packet{src: remoteV6, dst: clientV6, dport: 8080, ack: true}.build(tb),
		packet{src: remoteV6, dst: clientV6, proto: layers.IPProtocolUDP, dport: mrasm.PortDNS}.build(tb),
		packet{src: loopbackV4, dst: clientV4, proto: layers.IPProtocolUDP, sport: mrasm.PortDNS, dport: 40000}.build(tb),
		packet{src: loopbackV6, dst: clientV6, proto: layers.IPProtocolUDP, sport: mrasm.PortDNS, dport: 40000}.build(tb),
		packet{src: clientV6, dst: dnsV6, sport: 40000, dport: 53}.build(tb),
		packet{src: clientV4, dst: dnsV4, sport: 40000, dport: 53, ack: true}.build(tb),
		packet{src: clientV6, dst: dnsV6, sport: 40000, dport: 53, ack: true}.build(tb),
		packet{src: loopbackV4, dst: clientV4, sport: mrasm.PortDNS, dport: 40000, ack: true}.build(tb),
		packet{src: loopbackV6, dst: clientV6, sport: mrasm.PortDNS, dport: 40000, synack: true}.build(tb),
	}
}

// The fuzz state's bits: the mark (its two lowest bits choose none,
// TProxyMark, ztunnel's, or the state itself), ztunnel's flags, the pod's
// flags and whether ztunnel's listeners are open.
const (
	fuzzDNS           = 0x100
	fuzzUDPDrop       = 0x200
	fuzzPodBypassDNS  = 0x400
	fuzzPodBypassIn   = 0x800
	fuzzPodUDPDrop    = 0x1000
	fuzzNoListeners   = 0x2000
	fuzzPodStateFlags = fuzzPodBypassDNS | fuzzPodBypassIn | fuzzPodUDPDrop
)

func fuzzMark(state uint32) uint32 {
	return []uint32{0, mrasm.TProxyMark, mrasm.ZtunnelMark, state}[state%4]
}

// fuzzPodProgram runs the in-pod program name on random frames, built for
// the client, in a netns with ztunnel's listeners (15001, 15006, 15008 on
// the wildcard, 15053 TCP and UDP on localhost as ztunnel binds them) or
// in one without, and asserts that:
//   - the outcome (verdict counted and action returned) is the model's
//     (pod_model_test.go);
//   - what passes belongs to a class §5 lets pass (podMeshRule);
//   - the frame comes out as the model says, byte for byte, and the mark
//     is set only on what pod_egress captures.
func fuzzPodProgram(f *testing.F, name string, allowed map[int32]bool) {
	for _, s := range append(fuzzSeeds(f), podFuzzSeeds(f)...) {
		f.Add(s, uint32(0))
		f.Add(s, uint32(1|fuzzDNS))
	}
	fx := newPodFixture(f, -1)
	open, closed := newAssignNetns(f), newAssignNetns(f)
	for _, fam := range []string{"4", "6"} {
		for _, p := range []int{mrasm.PortOutbound, mrasm.PortInbound, mrasm.PortHBONE} {
			open.listen(f, "tcp"+fam, p)
		}
		open.listenLoopback(f, "tcp"+fam, mrasm.PortDNS)
		open.listenLoopback(f, "udp"+fam, mrasm.PortDNS)
	}
	prog := fx.coll.Programs[name]
	f.Fuzz(func(t *testing.T, frame []byte, state uint32) {
		if len(frame) < 14 {
			return // BPF_PROG_TEST_RUN takes no less than an Ethernet header
		}
		mark := fuzzMark(state)
		flags := maps.ZtunnelReady
		if state&fuzzDNS != 0 {
			flags |= maps.ZtunnelCaptureDNS
		}
		if state&fuzzUDPDrop != 0 {
			flags |= maps.ZtunnelUDPDrop
		}
		var podFlags uint16
		for bit, fl := range map[uint32]uint16{fuzzPodBypassDNS: maps.EndpointBypassDNS, fuzzPodBypassIn: maps.EndpointBypassInbound, fuzzPodUDPDrop: maps.EndpointUDPDrop} {
			if state&bit != 0 {
				podFlags |= fl
			}
		}
		fx.setZtunnel(t, flags)
		fx.enrol(t, clientIfindex, clientMAC, podFlags, clientV4, clientV6)
		ns := open
		if state&fuzzNoListeners != 0 {
			ns = closed
		}
		w := fx.podWorld(t, ns == open)
		want := w.podOutcome(name, frame, mark)
		wantFrame := w.podFrame(name, frame, mark)

		// The record of the frame's source, as a client: only a query
		// pod_loopback gives ztunnel's DNS socket may write it.
		source, isIP := frameSource(frame)
		var recordBefore, recordAfter, tcpBefore, tcpAfter netip.AddrPort
		var hadRecord, hasRecord, hadTCP, hasTCP bool
		if isIP {
			recordBefore, hadRecord = w.dnsOrig(source)
			tcpBefore, hadTCP = w.dnsTCP(source)
		}

		out := make([]byte, len(frame)+64)
		var ctxOut mrasm.SkBuff
		before := fx.stats(t)
		var ret uint32
		var err error
		testutil.MustDo(t, ns.ns, func() error {
			ret, err = prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out, Context: mrasm.SkBuff{Mark: mark}, ContextOut: &ctxOut})
			return nil
		})
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
		if got != want {
			t.Fatalf("%s gave %s (%s), the model %s (%s)\n mark %#x state %#x frame %x", name, got.verdict, action(got.ret), want.verdict, action(want.ret), mark, state, frame)
		}
		if got.ret == mrasm.ActUnspec {
			if err := podMeshRule(w, name, frame, mark); err != nil {
				t.Fatalf("%s passed a frame §5 does not let pass: %v\n frame %x", name, err, frame)
			}
		}
		if out = out[:len(frame)]; !bytes.Equal(out, wantFrame) {
			t.Fatalf("%s (%s) wrote other bytes than the model:\n in    %x\n out   %x\n model %x", name, got.verdict, frame, out, wantFrame)
		}
		if isIP {
			recordAfter, hasRecord = w.dnsOrig(source)
			tcpAfter, hasTCP = w.dnsTCP(source)
		}
		if client, orig, ok := w.dnsTCPConnectOf(frame, mark); name == mrasm.PodLoopback && ok {
			if tcpAfter != orig || !hasTCP {
				t.Fatalf("the DNS connection of %s to %s left the record %s (%v)", client, orig, tcpAfter, hasTCP)
			}
		} else if tcpAfter != tcpBefore || hasTCP != hadTCP {
			t.Fatalf("%s (%s) changed the TCP record of %s from %s (%v) to %s (%v)", name, got.verdict, source, tcpBefore, hadTCP, tcpAfter, hasTCP)
		}
		if client, orig, ok := w.dnsQueryOf(frame, mark); name == mrasm.PodLoopback && ok {
			if recordAfter != orig || !hasRecord {
				t.Fatalf("the query of %s to %s left the record %s (%v)", client, orig, recordAfter, hasRecord)
			}
		} else if recordAfter != recordBefore || hasRecord != hadRecord {
			t.Fatalf("%s (%s) changed the record of %s from %s (%v) to %s (%v)", name, got.verdict, source, recordBefore, hadRecord, recordAfter, hasRecord)
		}
		wantMark := mark
		if got == oLoopback {
			wantMark = mark&^mrasm.TProxyMask | mrasm.TProxyMark
		}
		if ctxOut.Mark != wantMark {
			t.Fatalf("%s (%s) left mark %#x, want %#x", name, got.verdict, ctxOut.Mark, wantMark)
		}
	})
}

// podWorld is the fixture's state as the in-pod model sees it.
func (f *fixture) podWorld(tb testing.TB, listeners bool) world {
	w := f.world(tb, mrasm.PodEgress)
	w.pod, w.inPod, w.listeners = podIPs, true, listeners
	w.dnsOrig = func(client netip.AddrPort) (netip.AddrPort, bool) {
		orig, err := f.maps.DNSOrig.Get(client)
		if err != nil && !errors.Is(err, maps.ErrNotFound) {
			tb.Fatal(err)
		}
		return orig, err == nil
	}
	w.dnsTCP = func(client netip.AddrPort) (netip.AddrPort, bool) {
		orig, err := f.maps.DNSTCP.Get(client)
		if err != nil && !errors.Is(err, maps.ErrNotFound) {
			tb.Fatal(err)
		}
		return orig, err == nil
	}
	return w
}

// frameSource is the source address and port of an IP frame (port 0 when
// the frame has none).
func frameSource(frame []byte) (netip.AddrPort, bool) {
	p := parse(frame)
	if p.bad || p.etherType != 0x0800 && p.etherType != 0x86dd {
		return netip.AddrPort{}, false
	}
	sport, _, _ := ports(frame, p.ip.l4)
	return netip.AddrPortFrom(p.ip.src, sport), true
}

// podMeshRule checks a frame that an in-pod program passed against the
// classes §5 lets pass, with no knowledge of how the program decides:
//   - pod_egress: ztunnel's own packets (mark 0x539), and app_outbound's
//     classes with the pod's own addresses;
//   - pod_loopback: what pod_egress did not capture (no TProxyMark), and
//     ICMP;
//   - pod_ingress: TCP only to HBONE (15008) or to the pod when it bypasses
//     inbound capture; no UDP to ztunnel's DNS proxy; the rest as
//     app_inbound lets it in from another node.
func podMeshRule(w world, prog string, frame []byte, mark uint32) error {
	p := parse(frame)
	x := p.ip
	isIP := (p.etherType == 0x0800 || p.etherType == 0x86dd) && !p.bad
	switch prog {
	case mrasm.PodEgress:
		if mark&mrasm.ZtunnelMarkMask == mrasm.ZtunnelMark {
			return nil
		}
		return meshRule(w, mrasm.AppOutbound, frame, selfIfindex)
	case mrasm.PodLoopback:
		if mark&mrasm.TProxyMask != mrasm.TProxyMark {
			return nil
		}
		if isIP && !x.later && (!x.v6 && x.proto == 1 || x.v6 && x.proto == 58) {
			return nil
		}
		return fmt.Errorf("a captured frame (protocol %d) passed", x.proto)
	}
	if isIP && !x.later {
		_, dport, _ := ports(frame, x.l4)
		switch {
		case x.proto == 6 && dport != 15008 && !(w.own(x.dst) && w.has(x.dst, maps.EndpointBypassInbound)):
			return fmt.Errorf("TCP to %s port %d", x.dst, dport)
		case x.proto == 6:
			return nil
		case x.proto == 17 && dport == mrasm.PortDNS:
			return fmt.Errorf("UDP to ztunnel's DNS proxy")
		}
	}
	return meshRule(w, mrasm.AppInbound, frame, uplinkIfindex)
}

func FuzzPodEgress(f *testing.F) {
	fuzzPodProgram(f, mrasm.PodEgress, map[int32]bool{mrasm.ActUnspec: true, mrasm.ActShot: true, mrasm.ActRedirect: true})
}

func FuzzPodLoopback(f *testing.F) {
	fuzzPodProgram(f, mrasm.PodLoopback, map[int32]bool{mrasm.ActUnspec: true, mrasm.ActOK: true, mrasm.ActShot: true})
}

func FuzzPodIngress(f *testing.F) {
	fuzzPodProgram(f, mrasm.PodIngress, map[int32]bool{mrasm.ActUnspec: true, mrasm.ActOK: true, mrasm.ActShot: true})
}
