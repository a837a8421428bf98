package testenv

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/tc"
)

// DeliverWithRedirectPeer makes the node deliver what is routed to pods as
// Cilium and Calico's eBPF dataplane do: a program on the tc ingress of the
// node's eth0 and of every pod's host veth sends a packet for one of pods
// straight into that pod's netns with bpf_redirect_peer (kernel 5.10), its
// MACs rewritten as routing would. Such a packet never meets the node's
// routing, its netfilter hooks, nor the egress hook of the pod's host veth:
// a capture that sits there does not see it, one inside the pod does. The
// programs go when the test ends. pinDir, on a bpffs, keeps the markers of
// the clsact qdiscs the programs need.
func (n *Node) DeliverWithRedirectPeer(pinDir string, pods ...*Pod) {
	n.tb.Helper()
	// Legacy tc filters, which every kernel with bpf_redirect_peer has.
	m, err := tc.New(tc.Config{NetnsPath: n.Path(), Mode: tc.ModeLegacy, PinDir: pinDir, Priority: 40000})
	if err != nil {
		n.tb.Fatalf("redirect peer: open tc in %s: %v", n.what, err)
	}
	n.tb.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "redirect_peer", Type: ebpf.SchedCLS, License: "Apache-2.0",
		Instructions: redirectPeerProgram(pods),
	})
	if err != nil {
		n.tb.Fatalf("redirect peer: load the program: %v", err)
	}
	n.tb.Cleanup(func() { prog.Close() })
	ifaces := []string{"eth0"}
	for _, p := range n.Pods() {
		ifaces = append(ifaces, p.HostVeth)
	}
	for _, name := range ifaces {
		var index int
		if err := n.Do(func() error {
			ifc, err := net.InterfaceByName(name)
			if err == nil {
				index = ifc.Index
			}
			return err
		}); err != nil {
			n.tb.Fatalf("redirect peer: find %s in %s: %v", name, n.what, err)
		}
		if _, err := m.Attach(index, tc.Ingress, "redirect_peer", prog); err != nil {
			n.tb.Fatalf("redirect peer: attach to %s in %s: %v", name, n.what, err)
		}
		n.tb.Cleanup(func() { m.Detach(index, tc.Ingress) })
	}
}

// redirectPeerProgram compares an IPv4 or IPv6 packet's destination with
// each pod's addresses; on a match it writes the pod's eth0 MAC as the
// destination and its gateway's as the source, and redirects to the host
// veth's peer. Anything else goes on as usual.
func redirectPeerProgram(pods []*Pod) asm.Instructions {
	const (
		rData, rEnd = asm.R7, asm.R8
		ethLen      = 14
	)
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(rData, asm.R6, 76, asm.Word), // skb->data
		asm.LoadMem(rEnd, asm.R6, 80, asm.Word),  // skb->data_end
		asm.Mov.Reg(asm.R2, rData),
		asm.Add.Imm(asm.R2, ethLen+20),
		asm.JGT.Reg(asm.R2, rEnd, "rp_pass"),
		// The EtherType, read as a little-endian half word.
		asm.LoadMem(asm.R2, rData, 12, asm.Half),
		asm.JEq.Imm(asm.R2, 0x0008, "rp_v4"),
		asm.JNE.Imm(asm.R2, 0xdd86, "rp_pass"),
		asm.Mov.Reg(asm.R2, rData),
		asm.Add.Imm(asm.R2, ethLen+40),
		asm.JGT.Reg(asm.R2, rEnd, "rp_pass"),
		asm.Ja.Label("rp_v6"),
		asm.Mov.Reg(asm.R2, asm.R2).WithSymbol("rp_v4"),
	}
	word := func(b []byte) int64 { return int64(int32(binary.LittleEndian.Uint32(b))) }
	for i, p := range pods {
		match := fmt.Sprintf("rp_pod%d", i)
		v4 := p.IPv4.As4()
		insns = append(insns,
			asm.LoadMem(asm.R2, rData, ethLen+16, asm.Word),
			asm.JEq.Imm32(asm.R2, int32(word(v4[:])), match),
		)
	}
	insns = append(insns, asm.Ja.Label("rp_pass"))
	insns = append(insns, asm.Mov.Reg(asm.R2, asm.R2).WithSymbol("rp_v6"))
	for i, p := range pods {
		v6 := p.IPv6.As16()
		next := fmt.Sprintf("rp_v6_next%d", i)
		for off := 0; off < 16; off += 4 {
			insns = append(insns,
				asm.LoadMem(asm.R2, rData, int16(ethLen+24+off), asm.Word),
				asm.JNE.Imm32(asm.R2, int32(word(v6[off:off+4])), next),
			)
		}
		insns = append(insns,
			asm.Ja.Label(fmt.Sprintf("rp_pod%d", i)),
			asm.Mov.Reg(asm.R2, asm.R2).WithSymbol(next),
		)
	}
	insns = append(insns, asm.Ja.Label("rp_pass"))
	for i, p := range pods {
		insns = append(insns, asm.Mov.Reg(asm.R2, asm.R2).WithSymbol(fmt.Sprintf("rp_pod%d", i)))
		for j, b := range append(append([]byte{}, p.MAC...), p.GatewayMAC...) {
			insns = append(insns, asm.StoreImm(rData, int16(j), int64(b), asm.Byte))
		}
		insns = append(insns,
			asm.Mov.Imm(asm.R1, int32(p.HostVethIndex)),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirectPeer.Call(),
			asm.Return(),
		)
	}
	return append(insns,
		asm.Mov.Imm(asm.R0, -1).WithSymbol("rp_pass"), // TC_ACT_UNSPEC
		asm.Return(),
	)
}
