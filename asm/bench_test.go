package asm_test

import (
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// BenchmarkPrograms measures ns per packet of each program on a typical IPv4
// and IPv6 TCP packet with BPF_PROG_TEST_RUN, beside an empty program in the
// same process: the test run harness itself costs about 15 ns here, so the
// figure that means something is the difference ("above-empty-ns/pkt"), the
// median over rounds that alternate the two. Pin the process to one CPU
// (taskset -c 1) for stable numbers.
//
//	go test ./asm -run '^$' -bench Programs -benchtime 2000000x
func BenchmarkPrograms(b *testing.B) {
	testutil.RequirePrivileged(b)
	fx := newFixture(b, mrasm.DefaultOptions())
	empty := emptyProgram(b)

	// ztunnel_assign's typical packet is a segment of an established flow;
	// a connection request (SYN), which costs two socket lookups, is
	// measured apart.
	for _, v6 := range []bool{false, true} {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		frames := map[string][]byte{
			mrasm.AppOutbound:    packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, remoteV4, remoteV6)}.build(b),
			mrasm.AppInbound:     packet{src: pick(v6, remoteV4, remoteV6), dst: pick(v6, serverV4, serverV6), dport: 8080}.build(b),
			mrasm.ZtunnelIngress: packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, serverV4, serverV6), srcMAC: ztMAC}.build(b),
		}
		frames[mrasm.ZtunnelAssign] = packet{src: pick(v6, remoteV4, remoteV6), dst: pick(v6, clientV4, clientV6), ack: true}.build(b)
		for _, p := range mrasm.Programs() {
			frame := frames[p.Name]
			b.Run(p.Name+"/"+fam+"_TCP", func(b *testing.B) { measure(b, fx.coll.Programs[p.Name], empty, frame) })
		}
		b.Run(mrasm.ZtunnelAssign+"/"+fam+"_TCP_SYN", func(b *testing.B) {
			a := newAssignNetns(b)
			a.listen(b, "tcp"+map[bool]string{false: "4", true: "6"}[v6], mrasm.PortOutbound)
			syn := packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, remoteV4, remoteV6)}.build(b)
			testutil.MustDo(b, a.ns, func() error {
				measure(b, fx.coll.Programs[mrasm.ZtunnelAssign], empty, syn)
				return nil
			})
		})
	}
	fx.setZtunnel(b, maps.ZtunnelReady)
}

// measure runs prog and empty on frame in alternating rounds and reports the
// medians.
func measure(b *testing.B, prog, empty *ebpf.Program, frame []byte) {
	const rounds = 10
	per := b.N / rounds
	if per < 1 {
		per = 1
	}
	var progNs, emptyNs, diff []float64
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		_, e, err := empty.Benchmark(frame, per, nil)
		if err != nil {
			b.Fatal(err)
		}
		_, p, err := prog.Benchmark(frame, per, nil)
		if err != nil {
			b.Fatal(err)
		}
		emptyNs = append(emptyNs, ns(e))
		progNs = append(progNs, ns(p))
		diff = append(diff, ns(p)-ns(e))
	}
	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(progNs), "ns/pkt")
	b.ReportMetric(median(emptyNs), "empty-ns/pkt")
	b.ReportMetric(median(diff), "above-empty-ns/pkt")
}

func ns(d time.Duration) float64 { return float64(d.Nanoseconds()) }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// emptyProgram returns a tc program that only returns: the harness's floor.
func emptyProgram(tb testing.TB) *ebpf.Program {
	tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      mrasm.License,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, mrasm.ActUnspec), asm.Return()},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}
