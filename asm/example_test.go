package asm_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/meshredirect/meshredirect/internal/testutil"

	"github.com/cilium/ebpf"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
)

// Generate the programs for this kernel, load them with pinned maps, and
// enrol one pod IP. Attaching them is package tc's job.
func Example() {
	opts, err := mrasm.Detect() // bpf_redirect_peer where the kernel has it
	if err != nil {
		panic(err)
	}
	set, err := maps.Open(maps.Options{PinDir: maps.DefaultPinDir})
	if err != nil {
		panic(err)
	}
	defer set.Close()

	coll, err := ebpf.NewCollectionWithOptions(mrasm.CollectionSpec(opts),
		ebpf.CollectionOptions{MapReplacements: set.Maps()})
	if err != nil {
		panic(err)
	}
	defer coll.Close()

	pod := maps.Endpoint{Ifindex: 12, MAC: [6]byte{0x02, 0, 0, 0, 0, 0x12}, Flags: maps.EndpointPod}
	if err := set.Endpoints.Put(netip.MustParseAddr("198.18.1.12"), pod); err != nil {
		panic(err)
	}
	for _, p := range mrasm.Programs() {
		fmt.Println(p.Name, "->", p.Attach)
	}
}

// TestExample runs Example on a node of its own (a new netns, a private
// bpffs at /sys/fs/bpf), so that what it shows is run, not only compiled.
func TestExample(t *testing.T) {
	testutil.Isolated(t, func() error {
		Example()
		return nil
	})
}
