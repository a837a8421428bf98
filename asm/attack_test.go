package asm_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	mrasm "github.com/meshredirect/meshredirect/asm"
)

// variant is an attacker's variant of a frame.
type variant struct {
	name  string
	frame []byte
}

// withSource rewrites the IP source address. Checksums are left as they
// are: the programs do not read them.
func withSource(frame []byte, src netip.Addr) []byte {
	out := append([]byte(nil), frame...)
	if binary.BigEndian.Uint16(out[12:14]) == 0x86dd {
		b := src.As16()
		copy(out[22:38], b[:])
	} else {
		b := src.As4()
		copy(out[26:30], b[:])
	}
	return out
}

// withIPv4Option inserts opt (a multiple of 4 bytes) after the fixed IPv4
// header, raising IHL and the total length.
func withIPv4Option(frame, opt []byte) []byte {
	hlen := int(frame[14]&0xf) * 4
	out := append([]byte(nil), frame[:14+hlen]...)
	out = append(out, opt...)
	out = append(out, frame[14+hlen:]...)
	out[14] = out[14]&0xf0 | byte((hlen+len(opt))/4)
	binary.BigEndian.PutUint16(out[16:18], binary.BigEndian.Uint16(frame[16:18])+uint16(len(opt)))
	return out
}

// withIPv6Ext inserts an extension header of kind (8 bytes, a routing
// header with a segment left, or padded options) right after the fixed
// IPv6 header.
func withIPv6Ext(frame []byte, kind byte) []byte {
	ext := make([]byte, 8)
	ext[0] = frame[20] // its next header: what the fixed header announced
	switch kind {
	case 43: // routing header, type 4 (segment routing) with one segment left
		ext = make([]byte, 24)
		ext[0], ext[1], ext[2], ext[3] = frame[20], 2, 4, 1
	case 44: // an atomic fragment: offset 0, no more fragments
	default: // hop-by-hop or destination options: PadN
		ext[2], ext[3] = 1, 4
	}
	out := append([]byte(nil), frame[:54]...)
	out[20] = kind
	binary.BigEndian.PutUint16(out[18:20], binary.BigEndian.Uint16(frame[18:20])+uint16(len(ext)))
	out = append(out, ext...)
	return append(out, frame[54:]...)
}

// IPv4 options that can relay a packet, or make it special, on the node.
var ipv4Options = []struct {
	name string
	opt  []byte
}{
	{"LSRR", []byte{0x83, 7, 4, 198, 18, 2, 40, 0}},
	{"SSRR", []byte{0x89, 7, 4, 198, 18, 2, 40, 0}},
	{"record route", []byte{0x07, 7, 4, 0, 0, 0, 0, 0}},
	{"router alert", []byte{0x94, 4, 0, 0}},
	{"timestamp", []byte{0x44, 8, 5, 0, 0, 0, 0, 0}},
}

// IPv6 extension headers that can relay a packet or hide what follows.
var ipv6Exts = []struct {
	name string
	kind byte
}{{"routing header", 43}, {"hop-by-hop options", 0}, {"destination options", 60}, {"an atomic fragment header", 44}}

// attackVariants returns what an attacker would try instead of frame: the
// same packet with a forged source (another ambient pod's, the node's, a
// remote host's, a pod's outside the mesh), and with every IP option or
// extension header that could get it relayed.
func attackVariants(frame []byte) []variant {
	et := binary.BigEndian.Uint16(frame[12:14])
	if et != 0x0800 && et != 0x86dd {
		return nil
	}
	v6 := et == 0x86dd
	var out []variant
	for _, src := range []struct {
		name string
		a4   netip.Addr
		a6   netip.Addr
	}{
		{"another ambient pod's", serverV4, serverV6},
		{"the node's", nodeV4, nodeV6},
		{"a remote host's", remoteV4, remoteV6},
		{"a pod's outside the mesh", plainV4, plainV6},
	} {
		out = append(out, variant{"with " + src.name + " source", withSource(frame, pick(v6, src.a4, src.a6))})
	}
	if v6 {
		for _, e := range ipv6Exts {
			out = append(out, variant{"behind " + e.name, withIPv6Ext(frame, e.kind)})
		}
	} else {
		for _, o := range ipv4Options {
			out = append(out, variant{"with the " + o.name + " option", withIPv4Option(frame, o.opt)})
		}
	}
	return out
}

// TestAttackerCorpus takes every row of the app tables that lets a packet
// pass, and tries what an attacker would send instead: the same packet
// with a forged source, the same packet in the other direction (through
// the other program, from every interface), and the same packet with each
// IP option or extension header that could relay it. Each variant must be
// what the model of §5 says (a pass exception never stretches to a
// variant), and whatever still passes must be a class §5 lets pass.
func TestAttackerCorpus(t *testing.T) {
	f := newFixture(t, mrasm.DefaultOptions())
	type source struct {
		prog string
		rows []caseRow
	}
	tried := 0
	for _, src := range []source{{mrasm.AppOutbound, appOutboundCases()}, {mrasm.AppInbound, appInboundCases()}} {
		for _, c := range src.rows {
			if c.want != oPass {
				continue
			}
			base := c.frame(t)
			type attempt struct {
				name    string
				prog    string
				frame   []byte
				ingress uint32
			}
			var attempts []attempt
			for _, v := range attackVariants(base) {
				attempts = append(attempts, attempt{v.name, src.prog, v.frame, c.ingress})
			}
			other := mrasm.AppInbound
			if src.prog == mrasm.AppInbound {
				other = mrasm.AppOutbound
			}
			for _, in := range []uint32{0, uplinkIfindex, plainIfindex} {
				attempts = append(attempts, attempt{fmt.Sprintf("in the other direction, from interface %d", in), other, base, in})
			}
			for _, a := range attempts {
				t.Run(c.name+"/"+a.name, func(t *testing.T) {
					f.setZtunnel(t, c.flags())
					self := selfOf(a.prog)
					f.enrol(t, selfIfindex, self.mac, c.podFlags, self.ips...)
					other := selfOf(mrasm.AppOutbound)
					if a.prog == mrasm.AppOutbound {
						other = selfOf(mrasm.AppInbound)
					}
					f.enrol(t, selfIfindex+10, other.mac, 0, other.ips...)
					t.Cleanup(func() {
						f.enrol(t, clientIfindex, clientMAC, 0, clientV4, clientV6)
						f.enrol(t, serverIfindex, serverMAC, 0, serverV4, serverV6)
					})
					ingress := a.ingress
					if !f.ingressOK {
						ingress = 0
					}
					res := f.run(t, a.prog, a.frame, ingress)
					want := f.model(t, a.prog, a.frame, ingress)
					got := outcome{verdict: res.verdict, ret: res.ret}
					if !res.counted || got != want {
						t.Fatalf("%s gave %s, the model of §5 %s", a.prog, got.verdict, want.verdict)
					}
					if got == oPass {
						if err := meshRule(f.world(t, a.prog), a.prog, a.frame, ingress); err != nil {
							t.Fatalf("%s passed a variant §5 does not let pass: %v", a.prog, err)
						}
					}
				})
				tried++
			}
		}
	}
	t.Logf("tried %d variants of the passing rows", tried)
	if tried < 100 {
		t.Errorf("only %d variants: the tables lost their pass rows?", tried)
	}
}

// TestPodAttackerCorpus is TestAttackerCorpus for the in-pod programs: every
// row of pod_egress's and pod_ingress's tables that lets a packet pass is
// tried with a forged source, with each IP option or extension header that
// could relay it, and through the other in-pod program, each time with
// ztunnel's listeners open in the pod's stand-in netns. Each variant must be
// what the in-pod model says, and whatever still passes must be a class §5
// lets pass.
func TestPodAttackerCorpus(t *testing.T) {
	f := newPodFixture(t, -1)
	pod := newAssignNetns(t)
	for _, fam := range []string{"4", "6"} {
		for _, p := range []int{mrasm.PortOutbound, mrasm.PortInbound, mrasm.PortHBONE} {
			pod.listen(t, "tcp"+fam, p)
		}
		pod.listenLoopback(t, "tcp"+fam, mrasm.PortDNS)
		pod.listenLoopback(t, "udp"+fam, mrasm.PortDNS)
	}
	tried := 0
	for _, rows := range [][]podRow{podEgressCases(), podIngressCases()} {
		for _, r := range rows {
			if r.want != oPass || r.mark&mrasm.ZtunnelMarkMask == mrasm.ZtunnelMark {
				continue // ztunnel's own packets pass whatever they carry
			}
			base := r.frame(t)
			other := mrasm.PodIngress
			if r.prog == mrasm.PodIngress {
				other = mrasm.PodEgress
			}
			type attempt struct {
				name, prog string
				frame      []byte
			}
			attempts := []attempt{{"through " + other, other, base}}
			for _, v := range attackVariants(base) {
				attempts = append(attempts, attempt{v.name, r.prog, v.frame})
			}
			for _, a := range attempts {
				t.Run(r.prog+"/"+r.name+"/"+r.fam+"/"+a.name, func(t *testing.T) {
					f.setZtunnelOrReady(t, r.ztFlags)
					f.enrolClient(t, r.podFlags)
					w := f.podWorld(t, true)
					want := w.podOutcome(a.prog, a.frame, r.mark)
					res := pod.runProg(t, f, a.prog, a.frame, r.mark)
					if got := (outcome{res.verdict, res.ret}); !res.counted || got != want {
						t.Fatalf("%s gave %s (%s), the model %s (%s)", a.prog, res.verdict, action(res.ret), want.verdict, action(want.ret))
					}
					if want == oPass {
						if err := podMeshRule(w, a.prog, a.frame, r.mark); err != nil {
							t.Fatalf("%s passed a variant §5 does not let pass: %v", a.prog, err)
						}
					}
				})
				tried++
			}
		}
	}
	t.Logf("tried %d variants of the in-pod passing rows", tried)
	if tried < 100 {
		t.Errorf("only %d variants: the in-pod tables lost their pass rows?", tried)
	}
}
