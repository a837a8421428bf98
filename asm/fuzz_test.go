package asm_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
)

// fuzzSeeds are frames of every kind the tables use, as a starting corpus;
// testdata/fuzz keeps more, found by earlier runs.
func fuzzSeeds(tb testing.TB) [][]byte {
	seeds := [][]byte{
		arpRequest(tb, clientV4),
		neighborSolicitation(tb, clientV6),
		packet{src: clientV4, dst: remoteV4}.build(tb),
		packet{src: clientV6, dst: remoteV6}.build(tb),
		packet{src: clientV4, dst: dnsV4, proto: layers.IPProtocolUDP, dport: 53}.build(tb),
		packet{src: clientV6, dst: dnsV6, proto: layers.IPProtocolUDP, dport: 53, ext: sixExtHeaders()}.build(tb),
		packet{src: clientV4, dst: remoteV4, ipv4Options: optionsOf(10), moreFragments: true}.build(tb),
		packet{src: remoteV4, dst: serverV4, fragOffset: 9}.build(tb),
		packet{src: nodeV4, dst: serverV4}.build(tb),
		packet{src: remoteV6, dst: serverV6, proto: layers.IPProtocolGRE}.build(tb),
		packet{src: clientV4, dst: remoteV4, vlan: true}.build(tb),
	}
	return seeds
}

// fuzzProgram runs name on random frames with the fixture's configuration
// (client and server enrolled, ztunnel ready) and asserts the invariants:
// the verdict is one the program may give; no byte but the destination MAC
// ever changes, and when it does, it becomes the MAC the redirect needs.
func fuzzProgram(f *testing.F, name string, allowed map[int32]bool, macs []net.HardwareAddr) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, uint32(0))
	}
	fx := newFixture(f, mrasm.DefaultOptions())
	prog := fx.coll.Programs[name]
	f.Fuzz(func(t *testing.T, frame []byte, ingress uint32) {
		if len(frame) < 14 {
			return // BPF_PROG_TEST_RUN takes no less than an Ethernet header
		}
		// Ingress interfaces that mean something to the programs, and others.
		ingress = []uint32{0, ztIfindex, uplinkIfindex, plainIfindex}[ingress%4]
		if !fx.ingressOK {
			ingress = 0 // the kernel's test runner refuses it before 5.15
		}
		out := make([]byte, len(frame)+64)
		var ctxOut mrasm.SkBuff
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
	for _, target := range []string{"FuzzAppOutbound", "FuzzAppInbound", "FuzzZtunnelIngress", "FuzzZtunnelAssign"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range fuzzSeeds(t) {
			for ingress := uint32(0); ingress < 4; ingress++ {
				body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nuint32(%d)\n", s, ingress)
				name := filepath.Join(dir, fmt.Sprintf("seed-%02d-%d", i, ingress))
				if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}
