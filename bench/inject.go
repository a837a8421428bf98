package main

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/testenv"
)

// injector injects frames with BPF_PROG_TEST_RUN in live-frame mode
// (BPF_F_TEST_XDP_LIVE_FRAMES, 5.18+): an XDP program that returns
// XDP_PASS runs on each frame "received" on the interface given by the
// context's ingress_ifindex, and the kernel builds an skb of it and hands
// it to the stack (netif_receive_skb_list) as that interface's driver
// would: tc ingress, netfilter, routing, forwarding, redirects and,
// within the same call, the softirq work they queue.
//
// The kernel recycles the frames' pages without copying the data again,
// and the stack changes a frame in place on its way (the TTL when it
// forwards, the MAC header when it transmits), so the XDP program first
// writes the whole frame back: a few stores, the same for every path.
type injector struct {
	e     *env
	cpu   int
	progs map[string]*injectProg // by action, frame and variation
}

// injectProg is an injector's XDP program, with the counter of the frames
// it sent of a SYN run (nil otherwise).
type injectProg struct {
	prog    *ebpf.Program
	counter *ebpf.Map
}

// XDP actions of the injector's programs.
const (
	xdpDrop = 1
	xdpPass = 2
)

func newInjector(e *env, cpu int) *injector {
	return &injector{e: e, cpu: cpu, progs: map[string]*injectProg{}}
}

// program returns the XDP program that restores frame and returns
// action: XDP_PASS to inject it, XDP_DROP to measure the injection's own
// cost (the floor under every path). With vary (a SYN run), it also
// writes each frame's own source port and sequence number (synVary),
// counting frames in a one-entry array map.
func (in *injector) program(frame []byte, action int32, vary *synVary) (*injectProg, error) {
	key := fmt.Sprint(action, vary) + string(frame)
	if p, ok := in.progs[key]; ok {
		return p, nil
	}
	ip := &injectProg{}
	// r1 = struct xdp_md *: r2 = data, r3 = data_end; if data + len >
	// data_end, pass as is; else r6 = data (kept across the helper call)
	// and store the frame 8, 4, 2, 1 bytes at a time (little-endian
	// immediates give the bytes in order).
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, int32(len(frame))),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.Mov.Reg(asm.R6, asm.R2),
	}
	for off := 0; off < len(frame); {
		switch n := len(frame) - off; {
		case n >= 8:
			insns = append(insns, asm.LoadImm(asm.R5, int64(binary.LittleEndian.Uint64(frame[off:])), asm.DWord),
				asm.StoreMem(asm.R2, int16(off), asm.R5, asm.DWord))
			off += 8
		case n >= 4:
			insns = append(insns, asm.Mov.Imm32(asm.R5, int32(binary.LittleEndian.Uint32(frame[off:]))),
				asm.StoreMem(asm.R2, int16(off), asm.R5, asm.Word))
			off += 4
		case n >= 2:
			insns = append(insns, asm.Mov.Imm32(asm.R5, int32(binary.LittleEndian.Uint16(frame[off:]))),
				asm.StoreMem(asm.R2, int16(off), asm.R5, asm.Half))
			off += 2
		default:
			insns = append(insns, asm.Mov.Imm32(asm.R5, int32(frame[off])),
				asm.StoreMem(asm.R2, int16(off), asm.R5, asm.Byte))
			off++
		}
	}
	if vary != nil {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_syns", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			return nil, fmt.Errorf("create the injector's frame counter: %w", err)
		}
		in.e.Cleanup(func() { m.Close() })
		ip.counter = m
		insns = append(insns, varySYN(m, *vary)...)
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, action).WithSymbol("pass"), asm.Return())
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "bench_inject", Type: ebpf.XDP, License: mrasm.License, Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("load the injector's XDP program: %w", err)
	}
	in.e.Cleanup(func() { prog.Close() })
	ip.prog = prog
	in.progs[key] = ip
	return ip, nil
}

// varySYN gives the frame at r6 (its bounds checked) the source port of
// frame i, i the counter in m (incremented), and the matching sequence
// number: synVary.port and synVary.vary in eBPF. One CPU runs the frames
// of a run, one after the other: a plain increment is enough.
func varySYN(m *ebpf.Map, v synVary) asm.Instructions {
	return slices.Concat(asm.Instructions{
		// r0 = &counter, or pass the frame as it is.
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		// r7 = i, counter = i + 1.
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
		asm.Mov.Reg(asm.R8, asm.R7),
		asm.Add.Imm(asm.R8, 1),
		asm.StoreMem(asm.R0, 0, asm.R8, asm.Word),
		// r7 = port: First + i, one more for each port skipped.
		asm.Add.Imm(asm.R7, int32(v.First)),
	}, skipPorts(v.Skip), asm.Instructions{
		// r8 = 0xffff - port: the sequence number's low half.
		asm.Mov.Imm(asm.R8, 0xffff),
		asm.Sub.Reg(asm.R8, asm.R7),
		asm.HostTo(asm.BE, asm.R7, asm.Half),
		asm.HostTo(asm.BE, asm.R8, asm.Half),
		asm.StoreMem(asm.R6, int16(v.Off), asm.R7, asm.Half),
		asm.StoreMem(asm.R6, int16(v.Off+6), asm.R8, asm.Half),
	})
}

// skipPorts adds one to the port in r7 for each port of skip (ascending)
// at or below it.
func skipPorts(skip []uint16) asm.Instructions {
	var insns asm.Instructions
	for i, p := range skip {
		next := fmt.Sprintf("skip%d", i)
		insns = append(insns,
			asm.JLT.Imm(asm.R7, int32(p), next),
			asm.Add.Imm(asm.R7, 1),
			// A no-op to land on.
			asm.Mov.Reg(asm.R7, asm.R7).WithSymbol(next))
	}
	return insns
}

// xdpMD mirrors the kernel's struct xdp_md, the context of the test run.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// progRunAttr mirrors the BPF_PROG_TEST_RUN part of union bpf_attr. The
// raw syscall is used for its duration field: the kernel's own timing,
// per frame, which leaves out the time the thread was scheduled out
// between batches (bpf_test_timer_continue), so that other work on the
// machine does not count.
type progRunAttr struct {
	ProgFD, Retval           uint32
	DataSizeIn, DataSizeOut  uint32
	DataIn, DataOut          uint64
	Repeat, Duration         uint32
	CtxSizeIn, CtxSizeOut    uint32
	CtxIn, CtxOut            uint64
	Flags, CPU, BatchSize, _ uint32
}

const bpfProgTestRun = 10 // BPF_PROG_TEST_RUN

// inject sends frame repeat times as if it arrived on ifindex, from a
// thread inside ns pinned to the injector's CPU, and returns the kernel's
// ns per frame.
func (in *injector) inject(ns *testenv.Namespace, ifindex int, frame []byte, repeat int, vary *synVary) (float64, error) {
	return in.run(ns, ifindex, frame, repeat, xdpPass, vary)
}

// floor is what injecting costs by itself: the same frame, restored and
// dropped by the XDP program, so that nothing of the stack runs.
func (in *injector) floor(ns *testenv.Namespace, ifindex int, frame []byte, repeat int) (float64, error) {
	return in.run(ns, ifindex, frame, repeat, xdpDrop, nil)
}

func (in *injector) run(ns *testenv.Namespace, ifindex int, frame []byte, repeat int, action int32, vary *synVary) (float64, error) {
	ip, err := in.program(frame, action, vary)
	if err != nil {
		return 0, err
	}
	if ip.counter != nil {
		// Every run starts at its first port.
		if err := ip.counter.Put(uint32(0), uint32(0)); err != nil {
			return 0, fmt.Errorf("reset the injector's frame counter: %w", err)
		}
	}
	prog := ip.prog
	var perFrame uint32
	err = ns.Do(func() error {
		restore, err := pin(in.cpu)
		if err != nil {
			return err
		}
		defer restore()
		ctx := xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}
		attr := progRunAttr{
			ProgFD:     uint32(prog.FD()),
			DataSizeIn: uint32(len(frame)),
			DataIn:     uint64(uintptr(unsafe.Pointer(&frame[0]))),
			Repeat:     uint32(repeat),
			CtxSizeIn:  uint32(unsafe.Sizeof(ctx)),
			CtxIn:      uint64(uintptr(unsafe.Pointer(&ctx))),
			Flags:      unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		}
		for try := 0; ; try++ {
			_, _, errno := unix.Syscall(unix.SYS_BPF, bpfProgTestRun, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
			runtime.KeepAlive(frame)
			runtime.KeepAlive(&ctx)
			if errno == unix.EINTR && try < 5 {
				continue
			}
			if errno != 0 {
				return fmt.Errorf("inject on ifindex %d (BPF_PROG_TEST_RUN, live frames): %w", ifindex, errno)
			}
			break
		}
		perFrame = attr.Duration
		return nil
	})
	return float64(perFrame), err
}

// pin pins the calling (locked) thread to cpu and returns what restores
// its previous affinity.
func pin(cpu int) (func(), error) {
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, fmt.Errorf("read CPU affinity: %w", err)
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	return func() { unix.SchedSetaffinity(0, &old) }, nil
}
