package main

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
)

// block is a building block of the programs, alone in a tc program, to
// attribute the programs' cost: what a map lookup of each kind and the
// verdict counter cost above an empty program.
type block struct {
	name  string
	build func(m blockMaps) asm.Instructions
}

// blockMaps are the maps the blocks look up: the endpoints map (a hash
// with 16-byte keys, as meshredirect's), a hash map with 4-byte IPv4 keys
// (what an IPv4-only map would cost), the endpoints cache (an array the
// programs index with a hash of the address), the ztunnel array and a
// per-CPU counter array.
type blockMaps struct {
	pods, pods4, cache, ztunnel, stats *ebpf.Map
	// slot is the cache slot of key4's address.
	slot uint32
	// key4 is an IPv4 address that both endpoints maps hold, in network order
	// as the packet carries it.
	key4 uint32
}

// blocks lists the building blocks.
func blocks() []block {
	ret := asm.Instructions{asm.Mov.Imm(asm.R0, mrasm.ActUnspec), asm.Return()}
	lookup := func(m *ebpf.Map, keyOff int16) asm.Instructions {
		return asm.Instructions{
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, int32(keyOff)),
			asm.FnMapLookupElem.Call(),
		}
	}
	return []block{
		{"endpoints map lookup (hash, 16-byte key: the IPv4 address v4-mapped), hit", func(m blockMaps) asm.Instructions {
			insns := asm.Instructions{
				asm.StoreImm(asm.RFP, -16, 0, asm.Word),
				asm.StoreImm(asm.RFP, -12, 0, asm.Word),
				asm.StoreImm(asm.RFP, -8, int64(int32(binary.LittleEndian.Uint32([]byte{0, 0, 0xff, 0xff}))), asm.Word),
				asm.StoreImm(asm.RFP, -4, int64(int32(m.key4)), asm.Word),
			}
			return append(append(insns, lookup(m.pods, -16)...), ret...)
		}},
		{"hash lookup with a 4-byte key (an IPv4-only endpoints map), hit", func(m blockMaps) asm.Instructions {
			insns := asm.Instructions{asm.StoreImm(asm.RFP, -4, int64(int32(m.key4)), asm.Word)}
			return append(append(insns, lookup(m.pods4, -4)...), ret...)
		}},
		{"endpoints cache lookup (array indexed by the address's slot: inlined by the verifier), hit", func(m blockMaps) asm.Instructions {
			insns := asm.Instructions{asm.StoreImm(asm.RFP, -4, int64(int32(m.slot)), asm.Word)}
			return append(append(insns, lookup(m.cache, -4)...), ret...)
		}},
		{"ztunnel map lookup (array: inlined by the verifier)", func(m blockMaps) asm.Instructions {
			insns := asm.Instructions{asm.StoreImm(asm.RFP, -4, 0, asm.Word)}
			return append(append(insns, lookup(m.ztunnel, -4)...), ret...)
		}},
		{"verdict counter (per-CPU array lookup, packets and bytes added)", func(m blockMaps) asm.Instructions {
			insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1), asm.StoreImm(asm.RFP, -4, 1, asm.Word)}
			insns = append(insns, lookup(m.stats, -4)...)
			insns = append(insns,
				asm.JEq.Imm(asm.R0, 0, "done"),
				asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
				asm.Add.Imm(asm.R1, 1),
				asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
				asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // skb->len
				asm.LoadMem(asm.R1, asm.R0, 8, asm.DWord),
				asm.Add.Reg(asm.R1, asm.R2),
				asm.StoreMem(asm.R0, 8, asm.R1, asm.DWord),
				asm.Mov.Imm(asm.R0, mrasm.ActUnspec).WithSymbol("done"),
				asm.Return(),
			)
			return insns
		}},
	}
}

// newBlockMaps creates the blocks' maps, with the copy's pods in them.
func newBlockMaps(e *env, c *Copy) blockMaps {
	mk := func(spec *ebpf.MapSpec) *ebpf.Map {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			e.Fatalf("create map %s for the blocks: %v", spec.Name, err)
		}
		e.Cleanup(func() { m.Close() })
		return m
	}
	var m blockMaps
	m.pods = mk(&ebpf.MapSpec{Name: "bench_pods", Type: ebpf.Hash, KeySize: 16, ValueSize: maps.EndpointSize, MaxEntries: maps.DefaultPodsMaxEntries})
	m.pods4 = mk(&ebpf.MapSpec{Name: "bench_pods4", Type: ebpf.Hash, KeySize: 4, ValueSize: maps.EndpointSize, MaxEntries: maps.DefaultPodsMaxEntries})
	m.cache = mk(maps.Specs(maps.DefaultPodsMaxEntries)[maps.CacheName].Copy())
	m.ztunnel = mk(&ebpf.MapSpec{Name: "bench_zt", Type: ebpf.Array, KeySize: 4, ValueSize: 64, MaxEntries: 1})
	m.stats = mk(&ebpf.MapSpec{Name: "bench_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 8})
	for _, p := range []*Copy{c} {
		for _, ip := range []struct{ a [4]byte }{{p.Client.IPv4.As4()}, {p.Server.IPv4.As4()}} {
			k16 := make([]byte, 16)
			k16[10], k16[11] = 0xff, 0xff
			copy(k16[12:], ip.a[:])
			v := make([]byte, maps.EndpointSize)
			if err := m.pods.Put(k16, v); err != nil {
				e.Fatalf("fill the blocks' endpoints map: %v", err)
			}
			if err := m.pods4.Put(ip.a[:], v); err != nil {
				e.Fatalf("fill the blocks' IPv4 endpoints map: %v", err)
			}
		}
	}
	a := c.Server.IPv4.As4()
	m.slot = maps.SlotOf(maps.KeyFor(c.Server.IPv4))
	m.key4 = binary.LittleEndian.Uint32(a[:]) // stored as the packet's bytes
	return m
}

// loadBlock loads a block as a tc program.
func loadBlock(b block, m blockMaps) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "bench_block", Type: ebpf.SchedCLS, License: mrasm.License, Instructions: b.build(m)})
	if err != nil {
		return nil, fmt.Errorf("load block %q: %w", b.name, err)
	}
	return p, nil
}
