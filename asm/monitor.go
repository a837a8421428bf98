package asm

import (
	"fmt"

	"github.com/cilium/ebpf/asm"

	"github.com/meshredirect/meshredirect/maps"
)

// The monitor (meshredirect monitor, dataplane.Monitor) sees what the
// programs do through events that the programs write to the events ring
// buffer at their exits, only while the monitor map's deadline for that
// kind of exit lies ahead:
//
//   - An exit that drops checks DropsUntil; any other checks VerdictsUntil.
//     The check is a direct load from the map's value (BPF_PSEUDO_MAP_VALUE,
//     as the ztunnel map is read): with no monitor, an exit costs three
//     instructions more and no helper call. bpf_ktime_get_ns is called only
//     when the deadline is set.
//   - The event is a fixed-size record reserved in the ring buffer
//     (bpf_ringbuf_reserve, Linux 5.8; one that finds no room is counted in
//     maps.Monitor.Lost): a maps.EventHeader and the first
//     maps.EventCapLen bytes of the packet (bpf_skb_load_bytes). The 5-tuple
//     is read from those bytes in user space, so the programs need no
//     parser state at their exits, and a packet dropped as a parse error is
//     shown as it was.
//   - None of the helpers is GPL-only (bpf_ktime_get_ns,
//     bpf_ringbuf_reserve and _submit, bpf_skb_load_bytes): the programs
//     keep their licence. The load tests load them under it.
//
// A monitor killed without cleaning up costs nothing once its deadline
// passes (maps.MonitorLease): nobody has to reset the flag.

// programNumbers numbers the programs in events (maps.EventHeader.Program);
// zero is no program.
var programNumbers = [...]string{
	1: AppOutbound, 2: AppInbound, 3: ZtunnelIngress, 4: ZtunnelEgress, 5: ZtunnelAssign,
	6: PodEgress, 7: PodLoopback, 8: PodIngress,
}

// ProgramName returns the name of the program numbered n in an event.
func ProgramName(n uint8) string {
	if int(n) < len(programNumbers) && programNumbers[n] != "" {
		return programNumbers[n]
	}
	return fmt.Sprintf("program(%d)", n)
}

func programNumber(name string) uint8 {
	for n, p := range programNumbers {
		if p == name && p != "" {
			return uint8(n)
		}
	}
	panic("asm: no number for program " + name)
}

// programSlot marks the instruction of report that stores the program's
// number: report is built without knowing which program it ends, and
// numbered fills the number in.
type programSlot struct{}

// numbered writes the number of program name into its report blocks.
func numbered(name string, insns asm.Instructions) asm.Instructions {
	n := programNumber(name)
	for i := range insns {
		if insns[i].Metadata.Get(programSlot{}) != nil {
			insns[i].Constant = int64(n)
		}
	}
	return insns
}

// report writes an event of verdict v to the events ring buffer if a
// monitor wants it: one of dropped packets when dropped is set, one of
// every verdict otherwise. label (unique in the program) prefixes its own
// labels. It needs R6 and clobbers R0-R5, R7 and R8: the verdict blocks
// need neither the packet pointers nor anything else there.
func report(label string, v maps.Verdict, dropped bool) asm.Instructions {
	done := label + "_report_done"
	deadline, droppedByte := maps.MonitorOffVerdictsUntil, int64(0)
	if dropped {
		deadline, droppedByte = maps.MonitorOffDropsUntil, 1
	}
	setProgram := asm.StoreImm(asm.R7, maps.EventOffProgram, 0, asm.Byte)
	setProgram.Metadata.Set(programSlot{}, true)
	return asm.Instructions{
		// R7 = the deadline; none: no monitor.
		asm.LoadMapValue(asm.R1, 0, 0).WithReference(maps.MonitorName),
		asm.LoadMem(asm.R7, asm.R1, deadline, asm.DWord),
		asm.JEq.Imm(asm.R7, 0, done),
		// R8 = now; a deadline past: the monitor is gone.
		asm.FnKtimeGetNs.Call(),
		asm.JGE.Reg(asm.R0, asm.R7, done),
		asm.Mov.Reg(asm.R8, asm.R0),

		// R7 = the record; none when the ring buffer is full.
		asm.LoadMapPtr(asm.R1, 0).WithReference(maps.EventsName),
		asm.Mov.Imm(asm.R2, int32(maps.EventRecordSize)),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, label+"_report_lost"),
		asm.Mov.Reg(asm.R7, asm.R0),

		asm.StoreMem(asm.R7, maps.EventOffTimestamp, asm.R8, asm.DWord),
		asm.LoadMem(asm.R1, regCtx, skbIfindex, asm.Word),
		asm.StoreMem(asm.R7, maps.EventOffIfindex, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, regCtx, skbMark, asm.Word),
		asm.StoreMem(asm.R7, maps.EventOffMark, asm.R1, asm.Word),
		asm.StoreImm(asm.R7, maps.EventOffVerdict, int64(v), asm.Word),
		setProgram,
		asm.StoreImm(asm.R7, maps.EventOffDropped, droppedByte, asm.Byte),
		// The reserved memory holds earlier records: no stale bytes go out.
		asm.StoreImm(asm.R7, maps.EventOffPad, 0, asm.Word),

		// R4 = the bytes to capture: the packet, at most EventCapLen.
		asm.LoadMem(asm.R4, regCtx, skbLen, asm.Word),
		asm.StoreMem(asm.R7, maps.EventOffLen, asm.R4, asm.Word),
		asm.JLE.Imm(asm.R4, maps.EventCapLen, label+"_report_caplen"),
		asm.Mov.Imm(asm.R4, maps.EventCapLen),
		asm.StoreMem(asm.R7, maps.EventOffCapLen, asm.R4, asm.Half).WithSymbol(label + "_report_caplen"),
		// bpf_skb_load_bytes takes no length of zero, and the verifier
		// wants that proven: a JLT narrows the range on every kernel, a
		// JEQ not on old ones.
		asm.JLT.Imm(asm.R4, 1, label+"_report_submit"),
		asm.Mov.Reg(asm.R1, regCtx),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R7),
		asm.Add.Imm(asm.R3, int32(maps.EventHeaderSize)),
		asm.FnSkbLoadBytes.Call(),
		asm.JEq.Imm(asm.R0, 0, label+"_report_submit"),
		asm.StoreImm(asm.R7, maps.EventOffCapLen, 0, asm.Half),

		asm.Mov.Reg(asm.R1, asm.R7).WithSymbol(label + "_report_submit"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRingbufSubmit.Call(),
		asm.Ja.Label(done),

		// No room: count the event lost, so that the monitor can say how
		// many it did not see. Atomic: every CPU adds to the one entry.
		asm.LoadMapValue(asm.R1, 0, 0).WithReference(maps.MonitorName).WithSymbol(label + "_report_lost"),
		asm.Mov.Imm(asm.R2, 1),
		asm.AddAtomic.Mem(asm.R1, asm.R2, asm.DWord, maps.MonitorOffLost),

		// bpf_ringbuf_submit returns nothing: R0 is written, not read.
		asm.Mov.Imm(asm.R0, 0).WithSymbol(done),
	}
}
