package report

import "fmt"

// programs is the per-program table (BPF_PROG_TEST_RUN) and its building
// blocks.
func (r *reporter) programs() {
	if len(r.res.Programs) == 0 {
		return
	}
	r.p("## Per program")
	r.p("")
	r.p("`BPF_PROG_TEST_RUN` of each program, beside an empty tc program (`r0 = TC_ACT_UNSPEC; exit`) in the same process on")
	r.p("the same pinned thread, in rounds that alternate the two (as `asm/bench_test.go` does); the figure is the median of the")
	r.p("per-round differences. The programs have their own maps, filled as a copy's are (client and server enrolled, ztunnel")
	r.p("ready). Instructions: generated; verified: what the verifier walked (`verified_insns`, 5.16+). %d rounds of %d runs.",
		r.res.Config.ProgramRounds, r.res.Config.ProgramRepeats)
	r.p("")
	r.p("Each program runs on the interface it is attached to (`skb->ifindex`, and `skb->ingress_ifindex` where the packet")
	r.p("entered the node), so the source and destination checks take the path they take on a node; each case is run once")
	r.p("first and must count the verdict shown, the path measured. `ztunnel_assign` runs in the ztunnel netns of an eBPF copy,")
	r.p("where the stand-in listens: on a SYN, `BPF_PROG_TEST_RUN` is no tc ingress hook, so `bpf_sk_assign` refuses after")
	r.p("every lookup has been made (`assign_failed`); the refusal itself is a few instructions.")
	r.p("")
	r.p("| program | packet | segment | IPv4 ns above empty | IPv6 ns above empty | verdict | IPv4 ns | empty ns | instructions | verified |")
	r.p("|---|---|---|---:|---:|---|---:|---:|---:|---:|")
	type key struct{ name, segment string }
	v6 := map[key]Program{}
	for _, p := range r.res.Programs {
		if p.Family == "IPv6" {
			v6[key{p.Name, p.Segment}] = p
		}
	}
	for _, p := range r.res.Programs {
		if p.Family == "IPv6" {
			continue
		}
		six := "–"
		if q, ok := v6[key{p.Name, p.Segment}]; ok {
			six = fmt.Sprintf("%.1f", q.NsAboveEmpty)
		}
		r.p("| `%s` | %s | %s | %.1f | %s | `%s` | %.1f | %.1f | %d | %d |", p.Name, p.Packet, p.Segment, p.NsAboveEmpty, six, p.Verdict,
			p.NsPerPacket, p.EmptyNs, p.Instructions, p.VerifiedInstructions)
	}
	r.p("")
	r.p("### Building blocks")
	r.p("")
	r.p("Each alone in a tc program, measured the same way, to attribute the programs' cost.")
	r.p("")
	r.p("| block | ns above empty | instructions |")
	r.p("|---|---:|---:|")
	for _, p := range r.res.Blocks {
		r.p("| %s | %.1f | %d |", p.Name, p.NsAboveEmpty, p.Instructions)
	}
	r.p("")
}
