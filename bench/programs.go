package main

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
)

// programCase is one program on one packet.
type programCase struct {
	name, family, segment, packet string
	frame                         []byte
	// ctx is the __sk_buff the run gets: the interface the program is
	// attached to (skb->ifindex: the source check and the destination
	// check compare it), where the packet entered (skb->ingress_ifindex).
	ctx mrasm.SkBuff
	// ns is where the run happens: the node's netns, or ztunnel's for
	// ztunnel_assign, which looks up sockets in the calling thread's netns
	// (the stand-in's listeners are there).
	ns *testenv.Namespace
	// want is the verdict the run must count: the path measured is the
	// one the packet takes on a node (a SYN captured, not dropped).
	want maps.Verdict
}

// programCases are each program's typical packets, a connection request
// (SYN) and a segment of an established flow, for IPv4 and IPv6, each run
// on the interface the program is attached to.
func programCases(c *Copy, assignNS *testenv.Namespace) []programCase {
	node := &c.Node.Namespace
	eth0 := uint32(ifindexOf(node, "eth0"))
	var cases []programCase
	for _, v6 := range []bool{false, true} {
		fam := "IPv4"
		remote := netip.MustParseAddr("198.19.0.40") // a host beyond the node
		client, server, zt := c.Client.IPv4, c.Server.IPv4, c.Ztunnel.IPv4
		if v6 {
			fam = "IPv6"
			remote = netip.MustParseAddr("fd10:6d72:0:fffe::40")
			client, server, zt = c.Client.IPv6, c.Server.IPv6, c.Ztunnel.IPv6
		}
		ap := func(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
		for _, seg := range []struct {
			name  string
			flags byte
		}{{"SYN", 0x02}, {"established", 0x10}} {
			frame := func(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort) []byte {
				return programFrame(dstMAC, srcMAC, tuple{src, dst}, seg.flags)
			}
			marked := maps.VerdictAssignFailed // BPF_PROG_TEST_RUN is no tc ingress: bpf_sk_assign refuses, after the lookups
			if seg.name == "established" {
				marked = maps.VerdictMarked
			}
			cases = append(cases,
				programCase{name: mrasm.AppOutbound, packet: "client -> host beyond the node", want: maps.VerdictRedirectedOut, ns: node,
					ctx:   mrasm.SkBuff{Ifindex: uint32(c.Client.HostVethIndex)},
					frame: frame(c.Client.HostVethMAC, c.Client.MAC, ap(client, 40000), ap(remote, 80))},
				programCase{name: mrasm.AppInbound, packet: "host beyond the node -> server:8080", want: maps.VerdictRedirectedIn, ns: node,
					ctx:   mrasm.SkBuff{Ifindex: uint32(c.Server.HostVethIndex), IngressIfindex: eth0},
					frame: frame(c.Server.MAC, c.Server.HostVethMAC, ap(remote, 40000), ap(server, HTTPPort))},
				programCase{name: mrasm.ZtunnelIngress, packet: "ztunnel -> server, for the client", want: maps.VerdictBypass, ns: node,
					ctx:   mrasm.SkBuff{Ifindex: uint32(c.Ztunnel.HostVethIndex)},
					frame: frame(c.Client.HostVethMAC, c.Ztunnel.MAC, ap(client, 40000), ap(server, HTTPPort))},
				programCase{name: mrasm.ZtunnelEgress, packet: "host beyond the node -> ztunnel:15008 (HBONE)", want: maps.VerdictPassed, ns: node,
					ctx:   mrasm.SkBuff{Ifindex: uint32(c.Ztunnel.HostVethIndex), IngressIfindex: eth0},
					frame: frame(c.Ztunnel.MAC, c.Ztunnel.HostVethMAC, ap(remote, 40000), ap(zt, 15008))},
				programCase{name: mrasm.ZtunnelAssign, packet: "client -> host beyond the node, captured", want: marked, ns: assignNS,
					frame: frame(c.Ztunnel.MAC, c.Client.HostVethMAC, ap(client, 40001), ap(remote, 80))},
			)
			for i := len(cases) - 5; i < len(cases); i++ {
				cases[i].family, cases[i].segment = fam, seg.name
			}
		}
	}
	return cases
}

// measurePrograms measures each program, as loaded with bpf_redirect_peer,
// on programCases with BPF_PROG_TEST_RUN, beside an empty tc program in the
// same process and on the same pinned thread, in rounds that alternate the
// two (as asm/bench_test.go does): the harness costs more than most
// programs, so the figure that means something is the median of the
// per-round differences. The maps are the programs' own, unpinned, filled
// as copy c is (client and server enrolled, the node's addresses, ztunnel
// ready). ztunnel_assign's runs happen in the ztunnel netns of an eBPF
// copy, where the stand-in listens. Each case is run once first and must
// count its expected verdict.
func measurePrograms(e *env, c *Copy, assignNS *testenv.Namespace, cpu, rounds, repeat int) (progs, blockRuns []report.Program) {
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "bench_empty",
		Type:         ebpf.SchedCLS,
		License:      mrasm.License,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, mrasm.ActUnspec), asm.Return()},
	})
	if err != nil {
		e.Fatalf("load the empty program: %v", err)
	}
	defer empty.Close()

	var out []report.Program
	coll, set := loadPrograms(e, c, true)
	for _, pc := range programCases(c, assignNS) {
		prog := coll.Programs[pc.name]
		p := report.Program{Name: pc.name, Family: pc.family, Segment: pc.segment, Packet: pc.packet, Rounds: rounds}
		p.Instructions = len(mrasm.CollectionSpec(mrasm.DefaultOptions()).Programs[pc.name].Instructions)
		if info, err := prog.Info(); err == nil {
			p.VerifiedInstructions, _ = info.VerifiedInstructions()
		}
		v, err := verdictOf(set, pc.ns, prog, pc.frame, pc.ctx)
		if err != nil {
			e.Fatalf("run program %s: %v", pc.name, err)
		}
		if v != pc.want {
			e.Fatalf("program %s on %s %s (%s) counted %s, want %s: the measure would not be of the path a node takes", pc.name, pc.family, pc.segment, pc.packet, v, pc.want)
		}
		p.Verdict = v.String()
		p.NsPerPacket, p.EmptyNs, p.NsAboveEmpty, err = aboveEmpty(pc.ns, cpu, prog, empty, pc.frame, pc.ctx, rounds, repeat)
		if err != nil {
			e.Fatalf("measure program %s: %v", pc.name, err)
		}
		out = append(out, p)
	}
	coll.Close()
	set.Close()

	// The building blocks, to attribute the programs' cost.
	bm := newBlockMaps(e, c)
	frame := programFrame(c.Client.HostVethMAC, c.Ztunnel.MAC, tuple{netip.AddrPortFrom(c.Client.IPv4, 40000), netip.AddrPortFrom(c.Server.IPv4, HTTPPort)}, 0x10)
	for _, b := range blocks() {
		prog, err := loadBlock(b, bm)
		if err != nil {
			e.Fatal(err)
		}
		p := report.Program{Name: b.name, Packet: "TCP ACK client -> server", Rounds: rounds, Instructions: len(b.build(bm))}
		if info, err := prog.Info(); err == nil {
			p.VerifiedInstructions, _ = info.VerifiedInstructions()
		}
		p.NsPerPacket, p.EmptyNs, p.NsAboveEmpty, err = aboveEmpty(&c.Node.Namespace, cpu, prog, empty, frame, mrasm.SkBuff{}, rounds, repeat)
		prog.Close()
		if err != nil {
			e.Fatalf("measure block %q: %v", b.name, err)
		}
		blockRuns = append(blockRuns, p)
	}
	return out, blockRuns
}

// verdictOf runs prog once on frame from a thread in ns and returns the
// verdict its counter moved.
func verdictOf(set *maps.Set, ns *testenv.Namespace, prog *ebpf.Program, frame []byte, ctx mrasm.SkBuff) (maps.Verdict, error) {
	before, err := set.Stats.Read()
	if err != nil {
		return 0, err
	}
	err = ns.Do(func() error {
		_, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: ctx})
		return err
	})
	if err != nil {
		return 0, err
	}
	after, err := set.Stats.Read()
	if err != nil {
		return 0, err
	}
	for v, c := range after {
		if c.Packets != before[v].Packets {
			return v, nil
		}
	}
	return 0, fmt.Errorf("no verdict counted")
}

// aboveEmpty runs prog and empty on frame (ctx as the __sk_buff) in
// alternating rounds, from a thread in ns pinned to cpu, and returns the
// medians of prog's ns, the empty program's and of the per-round
// differences. Each round is one BPF_PROG_TEST_RUN of repeat runs, timed
// around the call (the kernel's own figure comes without a context): the
// call's fixed cost is nothing against a million runs, and the same for
// both programs.
func aboveEmpty(ns *testenv.Namespace, cpu int, prog, empty *ebpf.Program, frame []byte, ctx mrasm.SkBuff, rounds, repeat int) (progMed, emptyMed, diffMed float64, err error) {
	run := func(p *ebpf.Program) (float64, error) {
		start := time.Now()
		if _, err := p.Run(&ebpf.RunOptions{Data: frame, Context: ctx, Repeat: uint32(repeat)}); err != nil {
			return 0, err
		}
		return float64(time.Since(start).Nanoseconds()) / float64(repeat), nil
	}
	err = ns.Do(func() error {
		restore, err := pin(cpu)
		if err != nil {
			return err
		}
		defer restore()
		var progNs, emptyNs, diff []float64
		for r := 0; r < rounds; r++ {
			en, err := run(empty)
			if err != nil {
				return fmt.Errorf("run the empty program: %w", err)
			}
			pn, err := run(prog)
			if err != nil {
				return fmt.Errorf("run the program: %w", err)
			}
			emptyNs = append(emptyNs, en)
			progNs = append(progNs, pn)
			diff = append(diff, pn-en)
		}
		progMed, emptyMed, diffMed = report.Median(progNs), report.Median(emptyNs), report.Median(diff)
		return nil
	})
	return progMed, emptyMed, diffMed, err
}

// ifindexOf is the index of interface name in ns.
func ifindexOf(ns *testenv.Namespace, name string) int {
	idx := 0
	ns.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			idx = ifi.Index
		}
		return err
	})
	return idx
}

// loadPrograms loads the programs with their own unpinned maps, filled
// like copy c's.
func loadPrograms(e *env, c *Copy, peer bool) (*ebpf.Collection, *maps.Set) {
	set, err := maps.Open(maps.Options{})
	if err != nil {
		e.Fatalf("create maps for the program measure: %v", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(mrasm.CollectionSpec(mrasm.Options{RedirectPeer: peer}),
		ebpf.CollectionOptions{MapReplacements: set.Maps()})
	if err != nil {
		set.Close()
		e.Fatalf("load the programs for the program measure: %v", err)
	}
	zmac, _ := maps.MAC(c.Ztunnel.MAC)
	e.check(set.Ztunnel.Set(maps.Ztunnel{Ifindex: uint32(c.Ztunnel.HostVethIndex), MAC: zmac, Flags: maps.ZtunnelReady,
		IPv4: c.Ztunnel.IPv4.As16(), IPv6: c.Ztunnel.IPv6.As16()}))
	for _, ip := range []netip.Addr{c.Node.IPv4, c.Node.IPv6} {
		e.check(set.Endpoints.Put(ip, maps.Endpoint{Flags: maps.EndpointNode}))
	}
	for _, p := range []*testenv.Pod{c.Client, c.Server} {
		mac, _ := maps.MAC(p.MAC)
		for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
			e.check(set.Endpoints.Put(ip, maps.Endpoint{Ifindex: uint32(p.HostVethIndex), MAC: mac, Flags: maps.EndpointPod}))
		}
	}
	return coll, set
}
