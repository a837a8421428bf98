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

// BenchmarkPrograms measures ns per packet of each program with
// BPF_PROG_TEST_RUN, on a connection request (SYN) and on a segment of an
// established flow, IPv4 and IPv6, beside an empty program in the same
// process: the test run harness itself costs about 15 ns here, so the figure
// that means something is the difference ("above-empty-ns/pkt"), the median
// over rounds that alternate the two. Each packet is the typical one of its
// program: an ambient pod's to a host elsewhere (app_outbound), a remote
// host's to an ambient pod (app_inbound), ztunnel's to an ambient pod
// (ztunnel_ingress), a remote host's to ztunnel (ztunnel_egress), a
// captured one at ztunnel (ztunnel_assign, whose SYN finds a listener in the
// netns it runs in). Pin the process to one CPU (taskset -c 1) for stable
// numbers.
//
//	go test ./asm -run '^$' -bench Programs -benchtime 2000000x
func BenchmarkPrograms(b *testing.B) {
	testutil.RequirePrivileged(b)
	fx := newFixture(b, mrasm.DefaultOptions())
	// The fixture monitors drops, for the packet tests: a node runs with no
	// monitor (BenchmarkMonitor measures one).
	if err := fx.maps.Monitor.Set(maps.Monitor{}); err != nil {
		b.Fatal(err)
	}
	empty := emptyProgram(b)
	a := newAssignNetns(b)
	a.listen(b, "tcp4", mrasm.PortOutbound)
	a.listen(b, "tcp6", mrasm.PortOutbound)

	for _, v6 := range []bool{false, true} {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		for _, seg := range []struct {
			name string
			ack  bool
		}{{"SYN", false}, {"established", true}} {
			frames := map[string][]byte{
				mrasm.AppOutbound:    packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, remoteV4, remoteV6), ack: seg.ack}.build(b),
				mrasm.AppInbound:     packet{src: pick(v6, remoteV4, remoteV6), dst: pick(v6, clientV4, clientV6), dport: 8080, ack: seg.ack}.build(b),
				mrasm.ZtunnelIngress: packet{src: pick(v6, remoteV4, remoteV6), dst: pick(v6, clientV4, clientV6), srcMAC: ztMAC, ack: seg.ack}.build(b),
				mrasm.ZtunnelEgress:  packet{src: pick(v6, remoteV4, remoteV6), dst: pick(v6, ztV4, ztV6), dport: 15008, ack: seg.ack}.build(b),
				mrasm.ZtunnelAssign:  packet{src: pick(v6, clientV4, clientV6), dst: pick(v6, remoteV4, remoteV6), ack: seg.ack}.build(b),
			}
			for _, p := range mrasm.Programs() {
				frame := frames[p.Name]
				ctx := mrasm.SkBuff{}
				if p.Name == mrasm.AppInbound && fx.ingressOK {
					// Forwarded from another node: the common case.
					ctx.IngressIfindex = uplinkIfindex
				}
				b.Run(p.Name+"/"+fam+"_TCP_"+seg.name, func(b *testing.B) {
					testutil.MustDo(b, a.ns, func() error {
						measure(b, fx.coll.Programs[p.Name], empty, frame, ctx)
						return nil
					})
				})
			}
		}
	}
	fx.setZtunnel(b, maps.ZtunnelReady)
}

// measure runs prog and empty on frame (with ctx as the __sk_buff) in
// alternating rounds and reports the medians.
func measure(b *testing.B, prog, empty *ebpf.Program, frame []byte, ctx mrasm.SkBuff) {
	const rounds = 10
	per := b.N / rounds
	if per < 1 {
		per = 1
	}
	var progNs, emptyNs, diff []float64
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		e, err := runFor(empty, frame, ctx, per)
		if err != nil {
			b.Fatal(err)
		}
		p, err := runFor(prog, frame, ctx, per)
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

// runFor runs prog n times in one BPF_PROG_TEST_RUN and returns the time per
// run. The kernel's own figure (Program.Benchmark) takes no context, so the
// call is timed here; its fixed cost (a syscall, a buffer) is nothing
// against n runs, and the same for the empty program.
func runFor(prog *ebpf.Program, frame []byte, ctx mrasm.SkBuff, n int) (time.Duration, error) {
	start := time.Now()
	if _, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: ctx, Repeat: uint32(n)}); err != nil {
		return 0, err
	}
	return time.Since(start) / time.Duration(n), nil
}

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
