package main

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
)

// programCase is one program on one packet.
type programCase struct {
	name, variant, packet string
	frame                 []byte
	// ns, if set, is where the run happens (ztunnel_assign looks up
	// sockets in the calling thread's netns).
	ns *testenv.Namespace
}

// measurePrograms measures each of the four programs, as loaded with
// bpf_redirect_peer and with bpf_redirect, on a typical IPv4 TCP segment
// with BPF_PROG_TEST_RUN, beside an empty tc program in the same process
// and on the same pinned thread, in rounds that alternate the two (as
// asm/bench_test.go does): the harness costs more than most programs, so
// the figure that means something is the median of the per-round
// differences. The maps are the programs' own, unpinned, filled as copy c
// is (client and server enrolled, ztunnel ready). ztunnel_assign's
// connection request (a SYN, two socket lookups and bpf_sk_assign) runs
// in the ztunnel netns of an eBPF copy, where the stand-in listens.
func measurePrograms(e *env, c *Copy, assignNS *testenv.Namespace, cpu, rounds, repeat int) (progs, blockRuns []Program) {
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

	remote := netip.MustParseAddr("198.19.0.40") // a host beyond the node
	ack := func(src, dst netip.Addr, dport uint16, srcMAC net.HardwareAddr) []byte {
		return ackFrame(c.Client.HostVethMAC, srcMAC, tuple{netip.AddrPortFrom(src, 40000), netip.AddrPortFrom(dst, dport)})
	}
	cases := []programCase{
		{name: mrasm.AppOutbound, packet: "TCP ACK client -> host beyond the node", frame: ack(c.Client.IPv4, remote, 80, c.Client.MAC)},
		{name: mrasm.AppInbound, packet: "TCP ACK host beyond the node -> server:8080", frame: ack(remote, c.Server.IPv4, HTTPPort, c.Client.MAC)},
		{name: mrasm.AppOutbound, packet: "TCP SYN client -> host beyond the node (a new flow: source checked in the pods map)",
			frame: synFrame(c.Client.HostVethMAC, c.Client.MAC, tuple{netip.AddrPortFrom(c.Client.IPv4, 40002), netip.AddrPortFrom(remote, 80)})},
		{name: mrasm.ZtunnelIngress, packet: "TCP ACK client -> server, from ztunnel", frame: ack(c.Client.IPv4, c.Server.IPv4, HTTPPort, c.Ztunnel.MAC)},
		{name: mrasm.ZtunnelAssign, packet: "TCP ACK host beyond the node -> client (a flow's segment)", frame: ack(remote, c.Client.IPv4, 40000, c.Client.MAC)},
		{name: mrasm.ZtunnelAssign, packet: "TCP SYN client -> host beyond the node (listener lookup, bpf_sk_assign)", ns: assignNS,
			frame: synFrame(c.Ztunnel.MAC, c.Client.HostVethMAC, tuple{netip.AddrPortFrom(c.Client.IPv4, 40001), netip.AddrPortFrom(remote, 80)})},
	}
	var out []Program
	for _, peer := range []bool{true, false} {
		coll, set := loadPrograms(e, c, peer)
		variant := "bpf_redirect_peer"
		if !peer {
			variant = "bpf_redirect"
		}
		for _, pc := range cases {
			if !peer && (pc.name == mrasm.ZtunnelAssign || strings.Contains(pc.packet, "SYN")) {
				continue // no redirect in it (the same program), or measured once
			}
			prog := coll.Programs[pc.name]
			p := Program{Name: pc.name, Packet: pc.packet + " [" + variant + "]", Rounds: rounds}
			if pc.name == mrasm.ZtunnelAssign {
				p.Packet = pc.packet
			}
			p.Instructions = len(mrasm.CollectionSpec(mrasm.Options{RedirectPeer: peer}).Programs[pc.name].Instructions)
			if info, err := prog.Info(); err == nil {
				p.VerifiedInstructions, _ = info.VerifiedInstructions()
			}
			ns := pc.ns
			if ns == nil {
				ns = &c.Node.Namespace
			}
			var err error
			p.NsPerPacket, p.EmptyNs, p.NsAboveEmpty, err = aboveEmpty(ns, cpu, prog, empty, pc.frame, rounds, repeat)
			if err != nil {
				e.Fatalf("measure program %s: %v", pc.name, err)
			}
			out = append(out, p)
		}
		coll.Close()
		set.Close()
	}

	// The building blocks, to attribute the programs' cost.
	bm := newBlockMaps(e, c)
	frame := cases[3].frame // client -> server
	for _, b := range blocks() {
		prog, err := loadBlock(b, bm)
		if err != nil {
			e.Fatal(err)
		}
		p := Program{Name: b.name, Packet: "TCP ACK client -> server", Rounds: rounds, Instructions: len(b.build(bm))}
		if info, err := prog.Info(); err == nil {
			p.VerifiedInstructions, _ = info.VerifiedInstructions()
		}
		p.NsPerPacket, p.EmptyNs, p.NsAboveEmpty, err = aboveEmpty(&c.Node.Namespace, cpu, prog, empty, frame, rounds, repeat)
		prog.Close()
		if err != nil {
			e.Fatalf("measure block %q: %v", b.name, err)
		}
		blockRuns = append(blockRuns, p)
	}
	return out, blockRuns
}

// aboveEmpty runs prog and empty on frame in alternating rounds, from a
// thread in ns pinned to cpu, and returns the medians of prog's ns, the
// empty program's and of the per-round differences.
func aboveEmpty(ns *testenv.Namespace, cpu int, prog, empty *ebpf.Program, frame []byte, rounds, repeat int) (progMed, emptyMed, diffMed float64, err error) {
	err = ns.Do(func() error {
		restore, err := pin(cpu)
		if err != nil {
			return err
		}
		defer restore()
		var progNs, emptyNs, diff []float64
		for r := 0; r < rounds; r++ {
			_, en, err := empty.Benchmark(frame, repeat, nil)
			if err != nil {
				return fmt.Errorf("run the empty program: %w", err)
			}
			_, pn, err := prog.Benchmark(frame, repeat, nil)
			if err != nil {
				return fmt.Errorf("run the program: %w", err)
			}
			emptyNs = append(emptyNs, float64(en.Nanoseconds()))
			progNs = append(progNs, float64(pn.Nanoseconds()))
			diff = append(diff, float64(pn.Nanoseconds()-en.Nanoseconds()))
		}
		progMed, emptyMed, diffMed = median(progNs), median(emptyNs), median(diff)
		return nil
	})
	return progMed, emptyMed, diffMed, err
}

// loadPrograms loads the four programs with their own unpinned maps,
// filled like copy c's.
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
