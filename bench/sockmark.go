package main

import (
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	mrasm "github.com/meshredirect/meshredirect/asm"
)

// inpodMark is the mark in-pod ztunnel sets on its sockets (SO_MARK 0x539,
// 1337), which Istio's in-pod rules skip so that ztunnel's own traffic is
// not captured again.
const inpodMark = 0x539

// bpfSock mirrors the start of the kernel's struct bpf_sock, the context of
// cgroup/sock_create programs.
type bpfSock struct {
	BoundDevIf uint32
	Family     uint32
	Type       uint32
	Protocol   uint32
	Mark       uint32
}

// markSockets attaches, to cgroup cg, a cgroup/sock_create program that
// sets mark on every socket created in it: the stand-in has no option to
// set SO_MARK, and ztunnel in-pod marks every socket it opens. The link is
// closed at the end.
func markSockets(e *env, cg *cgroup, mark uint32) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "bench_sockmark",
		Type:       ebpf.CGroupSock,
		AttachType: ebpf.AttachCGroupInetSockCreate,
		License:    mrasm.License,
		Instructions: asm.Instructions{
			// r1 = struct bpf_sock *: sk->mark = mark; return 1 (allow).
			asm.Mov.Imm(asm.R2, int32(mark)),
			asm.StoreMem(asm.R1, int16(unsafe.Offsetof(bpfSock{}.Mark)), asm.R2, asm.Word),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	if err != nil {
		e.Fatalf("load the socket-mark program for cgroup %s: %v", cg.path, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.path, Attach: ebpf.AttachCGroupInetSockCreate, Program: prog})
	if err != nil {
		prog.Close()
		e.Fatalf("attach the socket-mark program to cgroup %s: %v", cg.path, err)
	}
	e.Cleanup(func() {
		if err := l.Close(); err != nil {
			e.Errorf("detach the socket-mark program from cgroup %s: %v", cg.path, err)
		}
		prog.Close()
	})
}
