package tc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	gotc "github.com/florianl/go-tc"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// The filters of the kernel dumps that TestParseFilter parses: what other
// tools put on both hooks of an interface, our prefix or not. Each is
// written out here from the commands that made it, not from the package's
// constants or encoder, so that the parser is held to what the kernel says.

// Protocols as tcm_info holds them: network byte order in the low 16 bits.
const (
	dumpProtoAll = 0x0300 // htons(ETH_P_ALL)
	dumpProtoIP  = 0x0008 // htons(ETH_P_IP)
)

// dumpHooks are the clsact hooks dumped, and their tcm_parent
// (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS or TC_H_MIN_EGRESS)).
var dumpHooks = []struct {
	name   string
	parent uint32
}{{"ingress", 0xFFFFFFF2}, {"egress", 0xFFFFFFF3}}

// dumpSlot is a priority of a hook holding one filter (u32: a hash table
// and a node). The kernel dumps it as a header (handle 0, TCA_KIND and
// TCA_CHAIN, no options) followed by its filters.
type dumpSlot struct {
	hook  string
	prio  uint16
	proto uint16
	chain uint32
	kind  string
	// handle is the filter's; 0 for u32, which numbers its own nodes.
	handle uint32
	// name is TCA_BPF_NAME; prog names the program in the dump's program
	// IDs; direct is TCA_BPF_FLAG_ACT_DIRECT.
	name   string
	prog   string
	direct bool
	ours   bool
	// cmd adds the filter with iproute2 (dev and the pin directory as
	// %[1]s and %[2]s); without it, the test adds it with go-tc.
	cmd string
}

// iproute2 names a filter of a pinned program "<base name of the
// pin>:[*fsobj]" (lib/bpf_legacy.c, bpf_load_common).
var dumpSlots = []dumpSlot{
	{
		hook: "ingress", prio: 7, proto: dumpProtoAll, kind: "bpf", handle: 1,
		name: "meshredirect:app_outbound:[*fsobj]", prog: "meshredirect:app_outbound", direct: true, ours: true,
		cmd: "filter add dev %[1]s ingress protocol all prio 7 handle 1 bpf direct-action pinned %[2]s/meshredirect:app_outbound",
	},
	{
		hook: "ingress", prio: 9, proto: dumpProtoIP, chain: 5, kind: "bpf", handle: 0x2a,
		name: "cil_from_container:[*fsobj]", prog: "cil_from_container",
		cmd: "filter add dev %[1]s ingress protocol ip prio 9 handle 0x2a chain 5 bpf pinned %[2]s/cil_from_container",
	},
	{
		hook: "ingress", prio: 20, proto: dumpProtoIP, kind: "u32",
		cmd: "filter add dev %[1]s ingress protocol ip prio 20 u32 match ip dst 198.18.0.1/32 action mirred egress mirror dev %[1]s",
	},
	{
		hook: "egress", prio: 3, proto: dumpProtoAll, chain: 2, kind: "bpf", handle: 7,
		name: "meshredirect:exact", prog: "meshredirect:exact", direct: true, ours: true,
	},
	{
		hook: "egress", prio: 4, proto: dumpProtoIP, kind: "u32",
		cmd: "filter add dev %[1]s egress protocol ip prio 4 u32 match ip protocol 17 0xff classid 1:1",
	},
}

// filterDump is a dump of both hooks of one interface: the kernel's
// messages, whole (netlink header included), per hook.
type filterDump struct {
	ifindex int
	progIDs map[string]ebpf.ProgramID
	msgs    map[string][][]byte
}

// checkFilterDump parses every message of the dump and checks each field
// against what made the filters.
func checkFilterDump(t *testing.T, d filterDump) {
	t.Helper()
	for _, h := range dumpHooks {
		headers, filters := map[uint16]int{}, map[uint16]int{}
		if len(d.msgs[h.name]) == 0 {
			t.Errorf("%s: the dump holds no message", h.name)
		}
		for i, msg := range d.msgs[h.name] {
			if len(msg) < unix.NLMSG_HDRLEN {
				t.Fatalf("%s message %d: %d bytes", h.name, i, len(msg))
			}
			if typ := binary.NativeEndian.Uint16(msg[4:]); typ != unix.RTM_NEWTFILTER {
				t.Errorf("%s message %d: type %d, want RTM_NEWTFILTER", h.name, i, typ)
				continue
			}
			got, err := parseFilter(msg[unix.NLMSG_HDRLEN:])
			if err != nil {
				t.Errorf("%s message %d: %v", h.name, i, err)
				continue
			}
			s, ok := findSlot(h.name, got.priority())
			if !ok {
				t.Errorf("%s message %d: parsed as %+v, priority() %d, where no filter was added", h.name, i, got, got.priority())
				continue
			}
			want := filter{
				tcmsg: tcmsg{ifindex: d.ifindex, parent: h.parent, info: uint32(s.prio)<<16 | uint32(s.proto)},
				kind:  s.kind,
				chain: s.chain,
			}
			wantOurs := false
			if got.handle == 0 {
				headers[s.prio]++
			} else {
				filters[s.prio]++
				want.handle = s.handle
				if s.handle == 0 {
					want.handle = got.handle // u32's own numbering; not 0, checked above
				}
				want.name, want.direct, wantOurs = s.name, s.direct, s.ours
				if s.prog != "" {
					want.progID = d.progIDs[s.prog]
					if want.progID == 0 {
						t.Fatalf("the dump has no program ID for %q", s.prog)
					}
				}
			}
			if got != want {
				t.Errorf("%s message %d (priority %d %s): parseFilter = %+v, want %+v", h.name, i, s.prio, s.kind, got, want)
			}
			if got.ours() != wantOurs {
				t.Errorf("%s message %d (priority %d %s, handle %#x, name %q): ours() = %v, want %v", h.name, i, s.prio, s.kind, got.handle, got.name, got.ours(), wantOurs)
			}
		}
		for _, s := range dumpSlots {
			if s.hook != h.name {
				continue
			}
			wantFilters := 1
			if s.kind == "u32" {
				wantFilters = 2 // the hash table 800: and the node 800::800
			}
			if headers[s.prio] != 1 || filters[s.prio] != wantFilters {
				t.Errorf("%s priority %d %s: %d headers and %d filters, want 1 and %d", h.name, s.prio, s.kind, headers[s.prio], filters[s.prio], wantFilters)
			}
		}
	}
}

func findSlot(hook string, prio uint16) (dumpSlot, bool) {
	for _, s := range dumpSlots {
		if s.hook == hook && s.prio == prio {
			return s, true
		}
	}
	return dumpSlot{}, false
}

var recordFilterDump = flag.Bool("record-filter-dump", false,
	"TestParseFilter/live writes its kernel dump to testdata/"+filterDumpFile+" and seeds FuzzParseFilter with it")

const filterDumpFile = "filter-dump.txt"

// TestParseFilter: parseFilter reads every field of filters the kernel
// dumped, ours and other tools' (bpf filters of other names, u32,
// the per-priority headers), from a dump recorded in testdata
// (no privileges needed) and from a live one.
func TestParseFilter(t *testing.T) {
	t.Run("recorded", func(t *testing.T) {
		if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
			t.Skip("the dump was recorded on a little-endian machine; netlink is in native byte order")
		}
		checkFilterDump(t, readFilterDump(t, filepath.Join("testdata", filterDumpFile)))
	})
	t.Run("live", func(t *testing.T) {
		d := liveFilterDump(t)
		checkFilterDump(t, d)
		if *recordFilterDump && !t.Failed() {
			writeFilterDump(t, d)
		}
	})
}

// liveFilterDump adds dumpSlots' filters to a veth in a fresh namespace,
// with iproute2's tc and with go-tc, and dumps them.
func liveFilterDump(t *testing.T) filterDump {
	tcPath := testutil.RequireTool(t, "tc", "(iproute2) to add filters as an operator would")
	// The kernel matrix's guest has busybox's tc, which knows no clsact
	// or bpf filters: only iproute2's will do.
	if v, _ := exec.Command(tcPath, "-V").CombinedOutput(); !strings.Contains(string(v), "iproute2") {
		testutil.MissingPrerequisite(t, fmt.Sprintf("needs iproute2's tc; %s is %q", tcPath, strings.TrimSpace(string(v))))
	}
	ns := testutil.NewNetns(t)
	h, err := vnl.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in netns: %v", err)
	}
	defer h.Close()
	const dev = "mr-p0"
	if err := h.LinkAdd(&vnl.Veth{LinkAttrs: vnl.LinkAttrs{Name: dev}, PeerName: "mr-p1"}); err != nil {
		t.Fatalf("add veth pair: %v", err)
	}
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("find %s: %v", dev, err)
	}
	d := filterDump{ifindex: l.Attrs().Index, progIDs: map[string]ebpf.ProgramID{}, msgs: map[string][][]byte{}}

	pins := testutil.BPFFS(t)
	progs := map[string]*ebpf.Program{}
	for _, s := range dumpSlots {
		if s.prog == "" {
			continue
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         "dump_pass",
			Type:         ebpf.SchedCLS,
			License:      "Apache-2.0",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
		})
		if err != nil {
			t.Fatalf("load program for %s: %v", s.prog, err)
		}
		t.Cleanup(func() { prog.Close() })
		info, err := prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, ok := info.ID()
		if !ok {
			t.Fatal("kernel does not report program IDs")
		}
		d.progIDs[s.prog] = id
		progs[s.prog] = prog
		if s.cmd != "" {
			path := filepath.Join(pins, s.prog)
			if err := prog.Pin(path); err != nil {
				t.Fatalf("pin program: %v", err)
			}
			t.Cleanup(func() { prog.Unpin() })
		}
	}

	runTC := func(args string) {
		t.Helper()
		testutil.MustDo(t, ns, func() error {
			out, err := exec.Command(tcPath, strings.Fields(args)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("tc %s: %v: %s", args, err, out)
			}
			return nil
		})
	}
	runTC("qdisc add dev " + dev + " clsact")
	gt, err := gotc.Open(&gotc.Config{NetNS: int(ns)})
	if err != nil {
		t.Fatalf("open go-tc: %v", err)
	}
	defer gt.Close()
	for _, s := range dumpSlots {
		if s.cmd != "" {
			runTC(fmt.Sprintf(s.cmd, dev, pins))
			continue
		}
		fd, flags, name, chain := uint32(progs[s.prog].FD()), uint32(gotc.BpfActDirect), s.name, s.chain
		if err := gt.Filter().Add(&gotc.Object{
			Msg: gotc.Msg{
				Family:  unix.AF_UNSPEC,
				Ifindex: uint32(d.ifindex),
				Handle:  s.handle,
				Parent:  dumpParent(s.hook),
				Info:    uint32(s.prio)<<16 | uint32(s.proto),
			},
			Attribute: gotc.Attribute{Kind: "bpf", Chain: &chain, BPF: &gotc.Bpf{FD: &fd, Name: &name, Flags: &flags}},
		}); err != nil {
			t.Fatalf("add filter %q with go-tc: %v", s.name, err)
		}
	}

	for _, hk := range dumpHooks {
		d.msgs[hk.name] = dumpFilters(t, ns, d.ifindex, hk.parent)
	}
	return d
}

func dumpParent(hook string) uint32 {
	for _, h := range dumpHooks {
		if h.name == hook {
			return h.parent
		}
	}
	panic("no hook " + hook)
}

// dumpFilters asks the kernel for the filters of a hook, in every chain,
// with an RTM_GETTFILTER dump request written out here byte by byte on a
// netlink socket of its own, and returns the replies whole.
func dumpFilters(t *testing.T, ns netns.NsHandle, ifindex int, parent uint32) [][]byte {
	t.Helper()
	const seq = 1
	var msgs [][]byte
	testutil.MustDo(t, ns, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("open netlink socket: %w", err)
		}
		defer unix.Close(fd)
		// struct nlmsghdr, then struct tcmsg (include/uapi/linux/rtnetlink.h):
		// family AF_UNSPEC and padding (zero), ifindex, handle (zero),
		// parent, info (zero).
		req := make([]byte, unix.NLMSG_HDRLEN+20)
		ne := binary.NativeEndian
		ne.PutUint32(req[0:], uint32(len(req)))
		ne.PutUint16(req[4:], unix.RTM_GETTFILTER)
		ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
		ne.PutUint32(req[8:], seq)
		ne.PutUint32(req[unix.NLMSG_HDRLEN+4:], uint32(ifindex))
		ne.PutUint32(req[unix.NLMSG_HDRLEN+12:], parent)
		if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("send RTM_GETTFILTER: %w", err)
		}
		buf := make([]byte, 1<<20)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return fmt.Errorf("receive filter dump: %w", err)
			}
			for b := buf[:n]; len(b) > 0; {
				if len(b) < unix.NLMSG_HDRLEN {
					return fmt.Errorf("%d bytes left, shorter than a netlink header", len(b))
				}
				l := int(ne.Uint32(b))
				typ, flags := ne.Uint16(b[4:]), ne.Uint16(b[6:])
				if l < unix.NLMSG_HDRLEN || l > len(b) {
					return fmt.Errorf("netlink message of length %d in %d bytes", l, len(b))
				}
				if ne.Uint32(b[8:]) != seq {
					return fmt.Errorf("reply of sequence %d, want %d", ne.Uint32(b[8:]), seq)
				}
				if flags&unix.NLM_F_DUMP_INTR != 0 {
					return fmt.Errorf("dump interrupted (NLM_F_DUMP_INTR) in a namespace nothing else changes")
				}
				switch typ {
				case unix.NLMSG_DONE:
					return nil
				case unix.NLMSG_ERROR:
					return fmt.Errorf("filter dump: %w", unix.Errno(-int32(ne.Uint32(b[unix.NLMSG_HDRLEN:]))))
				}
				msgs = append(msgs, bytes.Clone(b[:l]))
				b = b[min(nlmsgAlign(l), len(b)):]
			}
		}
	})
	return msgs
}

func nlmsgAlign(l int) int { return (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// The recorded dump: "#" lines are comments, "ifindex N" and "prog NAME
// ID" give the interface and the programs of the recording, and
// "ingress HEX" or "egress HEX" is one message of that hook's dump.

func readFilterDump(t *testing.T, path string) filterDump {
	t.Helper()
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	d := filterDump{progIDs: map[string]ebpf.ProgramID{}, msgs: map[string][][]byte{}}
	sc := bufio.NewScanner(file)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		var err error
		switch {
		case fields[0] == "ifindex" && len(fields) == 2:
			d.ifindex, err = strconv.Atoi(fields[1])
		case fields[0] == "prog" && len(fields) == 3:
			var id uint64
			id, err = strconv.ParseUint(fields[2], 10, 32)
			d.progIDs[fields[1]] = ebpf.ProgramID(id)
		case (fields[0] == "ingress" || fields[0] == "egress") && len(fields) == 2:
			var msg []byte
			msg, err = hex.DecodeString(fields[1])
			d.msgs[fields[0]] = append(d.msgs[fields[0]], msg)
		default:
			err = fmt.Errorf("unknown line")
		}
		if err != nil {
			t.Fatalf("%s:%d: %v", path, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return d
}

// writeFilterDump records a live dump in testdata, and each of its
// messages as a seed of FuzzParseFilter.
func writeFilterDump(t *testing.T, d filterDump) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	tcVersion, err := exec.Command("tc", "-V").Output()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Filter dumps of the clsact hooks of a veth, as the kernel sent them:\n")
	fmt.Fprintf(&b, "# whole netlink messages (nlmsghdr included), in hex, in native byte\n")
	fmt.Fprintf(&b, "# order (little-endian, x86_64). The filters are dumpSlots in\n")
	fmt.Fprintf(&b, "# filterdump_test.go, added with iproute2's tc and with go-tc, dumped with\n")
	fmt.Fprintf(&b, "# a hand-written RTM_GETTFILTER request (dumpFilters). Recorded with\n")
	fmt.Fprintf(&b, "#   go test ./tc -count=1 -run '^TestParseFilter$/^live$' -record-filter-dump\n")
	fmt.Fprintf(&b, "# on kernel %s, %s", unix.ByteSliceToString(uts.Release[:]), tcVersion)
	fmt.Fprintf(&b, "ifindex %d\n", d.ifindex)
	for _, s := range dumpSlots {
		if s.prog != "" {
			fmt.Fprintf(&b, "prog %s %d\n", s.prog, d.progIDs[s.prog])
		}
	}
	corpus := filepath.Join("testdata", "fuzz", "FuzzParseFilter")
	if err := os.MkdirAll(corpus, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, h := range dumpHooks {
		for i, msg := range d.msgs[h.name] {
			fmt.Fprintf(&b, "%s %x\n", h.name, msg)
			seed := filepath.Join(corpus, fmt.Sprintf("kernel-%s-%d", h.name, i))
			if err := os.WriteFile(seed, fuzzSeed(t, msg[unix.NLMSG_HDRLEN:]), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join("testdata", filterDumpFile), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
