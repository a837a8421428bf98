package tc_test

import (
	"fmt"
	"log"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/meshredirect/meshredirect/internal/testutil"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/tc"
)

// Hook a program to both sides of a pod's host veth, list what is
// attached, and take it away again. The agent does the same with the
// programs of package asm.
func Example() {
	// Any SchedCLS program; this one passes every packet on to whatever
	// comes after it on the hook (TC_ACT_UNSPEC).
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "pass",
		Type:         ebpf.SchedCLS,
		License:      "Apache-2.0",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer prog.Close()

	// The host's namespace; Config.NetnsPath reaches into a pod's. tcx
	// links where the kernel has them (6.6+), bpf filters elsewhere.
	m, err := tc.New(tc.Config{Mode: tc.ModeAuto})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()

	const veth = 12 // the pod's host veth
	for _, dir := range []tc.Direction{tc.Ingress, tc.Egress} {
		// Attaching again later replaces the program atomically.
		if _, err := m.Attach(veth, dir, "pass", prog); err != nil {
			log.Fatal(err) // "attach filter to veth12ab ingress: ..."
		}
	}

	all, err := m.ListAll()
	if err != nil {
		log.Fatal(err)
	}
	for _, a := range all {
		fmt.Println(a) // veth12ab(12) ingress tcx prog 345 pass link 9 pinned at /sys/fs/bpf/meshredirect/tc/tcx-nsc1-if12-ingress
	}

	// Closing the Manager leaves the programs attached; Detach removes
	// them, and the clsact qdisc if it was ours.
	for _, dir := range []tc.Direction{tc.Ingress, tc.Egress} {
		if err := m.Detach(veth, dir); err != nil {
			log.Fatal(err)
		}
	}
}

// TestExample runs Example on a node of its own (a new netns whose
// interface 12 is a veth called veth12ab, a private bpffs at
// /sys/fs/bpf), so that what it shows is run, not only compiled.
func TestExample(t *testing.T) {
	testutil.Isolated(t, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth12ab", Index: 12}, PeerName: "eth0"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth12ab with index 12: %w", err)
		}
		if err := netlink.LinkSetUp(veth); err != nil {
			return fmt.Errorf("set veth12ab up: %w", err)
		}
		Example()
		return nil
	})
}
