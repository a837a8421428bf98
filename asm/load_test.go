package asm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
)

// TestProgramsLoad loads every program, in both redirect variants, through
// the verifier with the project's licence string, and reports what the
// verifier walked. A refusal prints the tail of the verifier log.
func TestProgramsLoad(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, peer := range []bool{true, false} {
		spec := mrasm.CollectionSpec(mrasm.Options{RedirectPeer: peer})
		for _, p := range mrasm.Programs() {
			ps := spec.Programs[p.Name]
			if ps.License != "Apache-2.0" {
				t.Errorf("%s: licence %q", p.Name, ps.License)
			}
			if ps.Type != ebpf.SchedCLS {
				t.Errorf("%s: type %s, want SchedCLS", p.Name, ps.Type)
			}
		}
		coll, err := ebpf.NewCollection(spec)
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				t.Fatalf("redirect_peer=%v: %-40v", peer, ve)
			}
			t.Fatalf("redirect_peer=%v: %v", peer, err)
		}
		for _, p := range mrasm.Programs() {
			info, err := coll.Programs[p.Name].Info()
			if err != nil {
				t.Fatal(err)
			}
			verified, _ := info.VerifiedInstructions()
			t.Logf("redirect_peer=%v %-15s %3d instructions, %5d verified", peer, p.Name, len(spec.Programs[p.Name].Instructions), verified)
			if info.Name != p.Name {
				t.Errorf("kernel name %q, want %q", info.Name, p.Name)
			}
		}
		coll.Close()
	}
}

// TestGPLOnlyHelperIsRefused proves that loading under "Apache-2.0" is a
// real check: the kernel refuses a GPL-only helper (bpf_trace_printk) in a
// program with that licence, so TestProgramsLoad passing means the programs
// call none.
func TestGPLOnlyHelperIsRefused(t *testing.T) {
	testutil.RequirePrivileged(t)
	fmtStr := "x\x00\x00\x00"
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: mrasm.License,
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -8, int64(fmtStr[0]), asm.Word),
			asm.Mov.Reg(asm.R1, asm.RFP),
			asm.Add.Imm(asm.R1, -8),
			asm.Mov.Imm(asm.R2, 4),
			asm.FnTracePrintk.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err == nil {
		prog.Close()
		t.Fatal("the kernel loaded a GPL-only helper under the Apache-2.0 licence string")
	}
	if !strings.Contains(err.Error(), "GPL") {
		t.Errorf("refused for another reason: %v", err)
	}
}

// TestOneLabelPerInstruction guards the generator: every jump target exists
// and the listing has no dangling reference (cilium/ebpf would fail later,
// with a less helpful message).
func TestOneLabelPerInstruction(t *testing.T) {
	for _, p := range mrasm.Programs() {
		insns := p.Instructions(mrasm.DefaultOptions())
		syms, err := insns.SymbolOffsets()
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		for _, ins := range insns {
			if ref := ins.Reference(); ref != "" && ins.IsLoadFromMap() == false && !ins.IsFunctionCall() {
				if _, ok := syms[ref]; !ok {
					t.Errorf("%s: jump to undefined label %q", p.Name, ref)
				}
			}
		}
	}
}
