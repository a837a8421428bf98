package asm

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// License is the licence string of every program. The programs call no
// GPL-only helper, so the kernel accepts the project's own licence.
const License = "Apache-2.0"

// Program names: the keys of CollectionSpec.Programs and the names the kernel
// shows (at most 15 bytes).
const (
	AppOutbound    = "app_outbound"
	AppInbound     = "app_inbound"
	ZtunnelIngress = "ztunnel_ingress"
	ZtunnelEgress  = "ztunnel_egress"
	ZtunnelAssign  = "ztunnel_assign"
)

// Direction is the TC hook a program is attached to.
type Direction string

// The two TC hooks.
const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Options select variants of the programs.
type Options struct {
	// RedirectPeer uses bpf_redirect_peer (kernel 5.10+) from ingress hooks,
	// which moves a packet straight into the peer's netns without a second
	// pass through the backlog. Without it the programs use bpf_redirect to
	// the veth's egress, which works on any kernel but costs more.
	RedirectPeer bool
	// PodsMaxEntries is the capacity of the endpoints map; zero means the
	// default.
	PodsMaxEntries uint32
}

// DefaultOptions are the options for a kernel with every feature.
func DefaultOptions() Options {
	return Options{RedirectPeer: true}
}

// Program describes one of the five programs.
type Program struct {
	// Name is the program's name, one of the constants above.
	Name string
	// Direction is the TC hook it belongs on.
	Direction Direction
	// Attach says where, in words.
	Attach string
	build  func(Options) asm.Instructions
}

// Programs lists the five programs in the order a packet meets them.
func Programs() []Program {
	return []Program{
		{AppOutbound, Ingress, "tc ingress of an ambient pod's host veth", appOutbound},
		{AppInbound, Egress, "tc egress of an ambient pod's host veth", func(Options) asm.Instructions { return appInbound() }},
		{ZtunnelIngress, Ingress, "tc ingress of ztunnel's host veth", ztunnelIngress},
		{ZtunnelEgress, Egress, "tc egress of ztunnel's host veth", func(Options) asm.Instructions { return ztunnelEgress() }},
		{ZtunnelAssign, Ingress, "tc ingress of eth0 in ztunnel's netns", func(Options) asm.Instructions { return ztunnelAssign() }},
	}
}

// LookupProgram returns the program called name.
func LookupProgram(name string) (Program, error) {
	for _, p := range Programs() {
		if p.Name == name {
			return p, nil
		}
	}
	return Program{}, fmt.Errorf("no program called %q (want one of %s, %s, %s, %s, %s)",
		name, AppOutbound, AppInbound, ZtunnelIngress, ZtunnelEgress, ZtunnelAssign)
}

// Instructions generates the program's instructions.
func (p Program) Instructions(opts Options) asm.Instructions {
	return at(p.Name, numbered(p.Name, p.build(opts))...)
}

// Spec returns the program's spec; its map references are the names of
// package maps.
func (p Program) Spec(opts Options) *ebpf.ProgramSpec {
	return &ebpf.ProgramSpec{
		Name:         p.Name,
		Type:         ebpf.SchedCLS,
		Instructions: p.Instructions(opts),
		License:      License,
	}
}

// CollectionSpec returns the programs and the maps they use.
// Load it with ebpf.NewCollectionWithOptions, passing maps opened by
// maps.Open as MapReplacements to share pinned maps.
func CollectionSpec(opts Options) *ebpf.CollectionSpec {
	spec := &ebpf.CollectionSpec{
		Maps:     maps.Specs(opts.PodsMaxEntries),
		Programs: make(map[string]*ebpf.ProgramSpec),
	}
	for _, p := range Programs() {
		spec.Programs[p.Name] = p.Spec(opts)
	}
	return spec
}
