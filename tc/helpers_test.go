package tc_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	gotc "github.com/florianl/go-tc"
	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/tc"
)

// Addresses of the test networks: 198.18.0.0/15 is for benchmarking
// (RFC 2544) and never routed.
var (
	ipA = net.IPv4(198, 18, 0, 1).To4()
	ipB = net.IPv4(198, 18, 0, 2).To4()
)

// testNet is two fresh network namespaces joined by a veth pair:
// A (198.18.0.1, veth "mr-a") <-> B (198.18.0.2, veth "mr-b"). The
// namespaces, and with them the veths, go when the test ends.
type testNet struct {
	nsA, nsB netns.NsHandle
	hA, hB   *vnl.Handle
	// a and b are the veth's index in A and in B.
	a, b int
}

func mustTestNet(tb testing.TB) *testNet {
	tb.Helper()
	n := &testNet{nsA: testutil.NewNetns(tb), nsB: testutil.NewNetns(tb)}
	n.hA = mustHandle(tb, n.nsA)
	n.hB = mustHandle(tb, n.nsB)

	veth := &vnl.Veth{
		LinkAttrs:     vnl.LinkAttrs{Name: "mr-a"},
		PeerName:      "mr-b",
		PeerNamespace: vnl.NsFd(int(n.nsB)),
	}
	if err := n.hA.LinkAdd(veth); err != nil {
		tb.Fatalf("add veth pair: %v", err)
	}
	la := mustLinkByName(tb, n.hA, "mr-a")
	lb := mustLinkByName(tb, n.hB, "mr-b")
	n.a, n.b = la.Attrs().Index, lb.Attrs().Index

	for _, s := range []struct {
		h         *vnl.Handle
		l         vnl.Link
		ip, peer  net.IP
		peerLink  vnl.Link
		whichSide string
	}{
		{n.hA, la, ipA, ipB, lb, "A"},
		{n.hB, lb, ipB, ipA, la, "B"},
	} {
		addr := &vnl.Addr{IPNet: &net.IPNet{IP: s.ip, Mask: net.CIDRMask(30, 32)}}
		if err := s.h.AddrAdd(s.l, addr); err != nil {
			tb.Fatalf("add address in %s: %v", s.whichSide, err)
		}
		if err := s.h.LinkSetUp(s.l); err != nil {
			tb.Fatalf("set veth up in %s: %v", s.whichSide, err)
		}
		// A permanent neighbour: no ARP, so no packet of a flow waits
		// for (or is dropped by) address resolution.
		if err := s.h.NeighAdd(&vnl.Neigh{
			LinkIndex:    s.l.Attrs().Index,
			Family:       unix.AF_INET,
			State:        vnl.NUD_PERMANENT,
			IP:           s.peer,
			HardwareAddr: s.peerLink.Attrs().HardwareAddr,
		}); err != nil {
			tb.Fatalf("add neighbour in %s: %v", s.whichSide, err)
		}
	}
	return n
}

// mustExtraVeth adds a veth pair with both ends in ns and returns the
// index of the first end.
func mustExtraVeth(tb testing.TB, h *vnl.Handle, name, peer string) int {
	tb.Helper()
	if err := h.LinkAdd(&vnl.Veth{LinkAttrs: vnl.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
		tb.Fatalf("add veth pair %s: %v", name, err)
	}
	l := mustLinkByName(tb, h, name)
	if err := h.LinkSetUp(l); err != nil {
		tb.Fatalf("set %s up: %v", name, err)
	}
	return l.Attrs().Index
}

func mustHandle(tb testing.TB, ns netns.NsHandle) *vnl.Handle {
	tb.Helper()
	h, err := vnl.NewHandleAt(ns)
	if err != nil {
		tb.Fatalf("netlink handle in netns: %v", err)
	}
	tb.Cleanup(h.Close)
	return h
}

func mustLinkByName(tb testing.TB, h *vnl.Handle, name string) vnl.Link {
	tb.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		tb.Fatalf("find %s: %v", name, err)
	}
	return l
}

// bpffsRoot is where tests make their pin directories: /sys/fs/bpf when it
// is a bpffs, else a private bpffs mounted by TestMain.
var bpffsRoot string

const pinDirPattern = "meshredirect-tc-test-*"

// mustPinDir returns a fresh pin directory on bpffs. When the test ends,
// after its other cleanups, it fails the test if anything is left in it
// (a leaked pin or marker), then removes it all.
func mustPinDir(tb testing.TB) string {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	if bpffsRoot == "" {
		testutil.SkipOrFail(tb, "no bpf filesystem to pin in")
	}
	dir, err := os.MkdirTemp(bpffsRoot, pinDirPattern)
	if err != nil {
		tb.Fatalf("create pin directory: %v", err)
	}
	tb.Cleanup(func() {
		entries, err := os.ReadDir(dir)
		if err != nil {
			tb.Errorf("read pin directory: %v", err)
		}
		for _, e := range entries {
			tb.Errorf("leaked in the pin directory: %s", e.Name())
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				tb.Errorf("remove %s: %v", e.Name(), err)
			}
		}
		if err := os.Remove(dir); err != nil {
			tb.Errorf("remove pin directory: %v", err)
		}
	})
	return dir
}

// mustManager returns a Manager for ns, closed when the test ends.
func mustManager(tb testing.TB, ns netns.NsHandle, cfg tc.Config) *tc.Manager {
	tb.Helper()
	cfg.NetnsFD = int(ns)
	m, err := tc.New(cfg)
	if err != nil {
		tb.Fatalf("new manager: %v", err)
	}
	tb.Cleanup(func() {
		if err := m.Close(); err != nil {
			tb.Errorf("close manager: %v", err)
		}
	})
	return m
}

// requireTCX skips (or, under CI, fails) a test on a kernel without tcx.
func requireTCX(tb testing.TB) {
	tb.Helper()
	dir := mustPinDir(tb)
	m, err := tc.New(tc.Config{Mode: tc.ModeTCX, PinDir: dir})
	if errors.Is(err, ebpf.ErrNotSupported) {
		// A kernel feature, not a privilege: skip even under CI, where the
		// kernel matrix runs these tests on kernels without tcx.
		tb.Skip("tcx needs kernel 6.6+")
	}
	if err != nil {
		tb.Fatal(err)
	}
	m.Close()
}

// The test packets: a UDP payload starting with flowMagic and a sequence
// number, both in host byte order. IPv4 without options, so the payload
// is at a fixed offset of the frame.
const (
	flowMagic   = 0x6d727463 // "mrtc"
	flowPort    = 4789 + 1000
	payloadOff  = 14 + 20 + 8
	payloadSize = 64
)

// mustMarksMap returns an array with a counter per sequence number.
func mustMarksMap(tb testing.TB, n int) *ebpf.Map {
	tb.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: uint32(n)})
	if err != nil {
		tb.Fatalf("create marks map: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// mustMarkProgram returns a SchedCLS program that counts each test packet
// in marks, by its sequence number, and returns verdict, which must pass
// the packet: -1 (TC_ACT_UNSPEC / TCX_NEXT) or 0 (TC_ACT_OK / TCX_PASS).
func mustMarkProgram(tb testing.TB, marks *ebpf.Map, verdict int32) *ebpf.Program {
	tb.Helper()
	const (
		skbData    = 76 // offsetof(struct __sk_buff, data)
		skbDataEnd = 80 // offsetof(struct __sk_buff, data_end)
	)
	insns := asm.Instructions{
		// r2 = data, r3 = data_end; need the frame up to the sequence.
		asm.LoadMem(asm.R2, asm.R1, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, payloadOff+8),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		// IPv4 (ethertype 0x0800, read little-endian), UDP, our magic.
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, 0x0008, "out"),
		asm.LoadMem(asm.R4, asm.R2, 14+9, asm.Byte),
		asm.JNE.Imm(asm.R4, unix.IPPROTO_UDP, "out"),
		asm.LoadMem(asm.R4, asm.R2, payloadOff, asm.Word),
		asm.JNE.Imm(asm.R4, flowMagic, "out"),
		// marks[seq] += 1
		asm.LoadMem(asm.R4, asm.R2, payloadOff+4, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R4, asm.Word),
		asm.LoadMapPtr(asm.R1, marks.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.Word),
		asm.Mov.Imm(asm.R0, verdict).WithSymbol("out"),
		asm.Return(),
	}
	return mustProgram(tb, "mark", insns)
}

// mustPassProgram returns a SchedCLS program that passes every packet on
// (TC_ACT_UNSPEC).
func mustPassProgram(tb testing.TB, name string) *ebpf.Program {
	tb.Helper()
	return mustProgram(tb, name, asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()})
}

func mustProgram(tb testing.TB, name string, insns asm.Instructions) *ebpf.Program {
	tb.Helper()
	prog, err := newProgram(name, insns)
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		tb.Fatalf("load program %s: %+v", name, ve)
	}
	if err != nil {
		tb.Fatalf("load program %s: %v", name, err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// mustXDPProgram returns a program of a type that cannot go on a TC hook.
func mustXDPProgram(tb testing.TB) *ebpf.Program {
	tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "xdp_pass",
		Type:         ebpf.XDP,
		License:      "Apache-2.0",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		tb.Fatalf("load XDP program: %v", err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}

func newPassProgram(name string) (*ebpf.Program, error) {
	return newProgram(name, asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()})
}

func newProgram(name string, insns asm.Instructions) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.SchedCLS,
		License:      "Apache-2.0",
		Instructions: insns,
	})
}

func programID(tb testing.TB, prog *ebpf.Program) ebpf.ProgramID {
	tb.Helper()
	info, err := prog.Info()
	if err != nil {
		tb.Fatalf("program info: %v", err)
	}
	id, ok := info.ID()
	if !ok {
		tb.Fatal("kernel does not report program IDs")
	}
	return id
}

// flowResult is what a UDP flow from A to B carried.
type flowResult struct {
	sent     int
	received int
	// seen are the sequence numbers received.
	seen []bool
}

// runFlow sends packets UDP packets from A to B, at a steady pace, while
// during runs; during must return once stop is closed. It returns when
// the receiver has been quiet for a moment after the last packet.
func runFlow(tb testing.TB, n *testNet, packets int, during func(stop <-chan struct{})) flowResult {
	tb.Helper()
	var rx, txc *net.UDPConn
	testutil.MustDo(tb, n.nsB, func() error {
		var err error
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ipB, Port: flowPort})
		return err
	})
	defer rx.Close()
	// The default receive buffer (rmem_max) would drop a burst while the
	// reader is descheduled; as root, force a big one.
	if err := setsockoptInt(rx, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
		tb.Fatalf("set receive buffer: %v", err)
	}
	testutil.MustDo(tb, n.nsA, func() error {
		var err error
		txc, err = net.DialUDP("udp4", &net.UDPAddr{IP: ipA}, &net.UDPAddr{IP: ipB, Port: flowPort})
		return err
	})
	defer txc.Close()

	waitPath(tb, txc, rx)

	res := flowResult{seen: make([]bool, packets)}
	var sendersDone atomic.Bool
	recvDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		for {
			// Once the sender is done, half a second of quiet ends the
			// flow.
			rx.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			nr, err := rx.Read(buf)
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				if sendersDone.Load() {
					recvDone <- nil
					return
				}
				continue
			case err != nil:
				recvDone <- err
				return
			}
			if nr < 8 || binary.NativeEndian.Uint32(buf) != flowMagic {
				continue
			}
			seq := binary.NativeEndian.Uint32(buf[4:])
			if int(seq) < packets && !res.seen[seq] {
				res.seen[seq] = true
				res.received++
			}
		}
	}()

	stop := make(chan struct{})
	duringDone := make(chan struct{})
	go func() {
		defer close(duringDone)
		if during != nil {
			during(stop)
		}
	}()

	payload := make([]byte, payloadSize)
	binary.NativeEndian.PutUint32(payload, flowMagic)
	var sendErr error
	for seq := 0; seq < packets; seq++ {
		binary.NativeEndian.PutUint32(payload[4:], uint32(seq))
		if _, err := txc.Write(payload); err != nil {
			sendErr = fmt.Errorf("send packet %d: %w", seq, err)
			break
		}
		res.sent++
		// About 20 packets a millisecond: steady, and far below what
		// a veth and the receiver's buffer take.
		if seq%20 == 19 {
			time.Sleep(500 * time.Microsecond)
		}
	}
	close(stop)
	<-duringDone
	sendersDone.Store(true)
	if err := <-recvDone; err != nil {
		tb.Fatalf("receive: %v", err)
	}
	if sendErr != nil {
		tb.Fatal(sendErr)
	}
	return res
}

// waitPath sends probes (packets without flowMagic, which the programs do
// not count) until one arrives. A veth brought up before its peer has no
// carrier, so dev_activate leaves its transmit queue the noop qdisc, which
// drops everything; it transmits once linkwatch handles the carrier change,
// which it may put off for up to a second (net/core/link_watch.c). A flow
// started before that loses its first packets, which is not what the tests
// are after.
func waitPath(tb testing.TB, tx, rx *net.UDPConn) {
	tb.Helper()
	probe := make([]byte, 8)
	buf := make([]byte, 2048)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := tx.Write(probe); err != nil {
			tb.Fatalf("send probe: %v", err)
		}
		rx.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		for {
			nr, err := rx.Read(buf)
			if err != nil {
				break
			}
			if nr == len(probe) && binary.NativeEndian.Uint32(buf) == 0 {
				// Drain the other probes in flight, then go.
				rx.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				for {
					if _, err := rx.Read(buf); err != nil {
						return
					}
				}
			}
		}
	}
	tb.Fatal("no probe went through from A to B in 5s")
}

func setsockoptInt(c *net.UDPConn, opt, value int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, value)
	}); err != nil {
		return err
	}
	return serr
}

// marks reads the counters of sequence numbers 0..n-1.
func marks(tb testing.TB, m *ebpf.Map, n int) []uint32 {
	tb.Helper()
	out := make([]uint32, n)
	for i := range out {
		if err := m.Lookup(uint32(i), &out[i]); err != nil {
			tb.Fatalf("read mark %d: %v", i, err)
		}
	}
	return out
}

// checkFlow fails the test unless every packet sent was received and
// counted by a program at each hook in hooks.
func checkFlow(tb testing.TB, res flowResult, hooks map[string]*ebpf.Map) {
	tb.Helper()
	if res.received != res.sent {
		var lost []int
		for seq := 0; seq < res.sent; seq++ {
			if !res.seen[seq] {
				lost = append(lost, seq)
			}
		}
		tb.Errorf("sent %d packets, received %d: %d lost (%s)", res.sent, res.received, len(lost), ranges(lost))
	}
	for hook, m := range hooks {
		ms := marks(tb, m, len(res.seen))
		var missed, twice int
		for seq, seen := range res.seen {
			if seq >= res.sent {
				break
			}
			switch {
			case seen && ms[seq] == 0:
				missed++
			case ms[seq] > 1:
				twice++
			}
		}
		if missed > 0 {
			tb.Errorf("%s: %d packets passed without meeting a program (a gap)", hook, missed)
		}
		tb.Logf("%s: %d packets, %d of them met two programs (both attached at once)", hook, res.sent, twice)
	}
}

// foreign is what another tool put on an interface, with go-tc, as Cilium
// would: its own clsact, and a bpf filter.
type foreign struct {
	tc      *gotc.Tc
	ifindex int
}

func mustForeignTC(tb testing.TB, ns netns.NsHandle, ifindex int) *foreign {
	tb.Helper()
	t, err := gotc.Open(&gotc.Config{NetNS: int(ns)})
	if err != nil {
		tb.Fatalf("open go-tc: %v", err)
	}
	tb.Cleanup(func() { t.Close() })
	if err := t.SetOption(netlink.ExtendedAcknowledge, true); err != nil {
		tb.Fatal(err)
	}
	return &foreign{tc: t, ifindex: ifindex}
}

func (f *foreign) addClsact(tb testing.TB) {
	tb.Helper()
	if err := f.tc.Qdisc().Add(&gotc.Object{
		Msg:       gotc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(f.ifindex), Handle: 0xFFFF0000, Parent: gotc.HandleIngress},
		Attribute: gotc.Attribute{Kind: "clsact"},
	}); err != nil {
		tb.Fatalf("add foreign clsact: %v", err)
	}
}

func (f *foreign) addIngressQdisc(tb testing.TB) {
	tb.Helper()
	if err := f.tc.Qdisc().Add(&gotc.Object{
		Msg:       gotc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(f.ifindex), Handle: 0xFFFF0000, Parent: gotc.HandleIngress},
		Attribute: gotc.Attribute{Kind: "ingress"},
	}); err != nil {
		tb.Fatalf("add foreign ingress qdisc: %v", err)
	}
}

func parent(dir tc.Direction) uint32 {
	if dir == tc.Egress {
		return 0xFFFFFFF3
	}
	return 0xFFFFFFF2
}

// addFilter adds a direct-action bpf filter, protocol all.
func (f *foreign) addFilter(tb testing.TB, dir tc.Direction, prio uint16, handle uint32, name string, prog *ebpf.Program) {
	tb.Helper()
	f.addFilterProto(tb, dir, prio, handle, 0x0300, name, prog) // ETH_P_ALL, network byte order
}

// addFilterProto adds a direct-action bpf filter for protocol proto (in
// network byte order).
func (f *foreign) addFilterProto(tb testing.TB, dir tc.Direction, prio uint16, handle uint32, proto uint16, name string, prog *ebpf.Program) {
	tb.Helper()
	fd := uint32(prog.FD())
	flags := uint32(gotc.BpfActDirect)
	if err := f.tc.Filter().Add(&gotc.Object{
		Msg: gotc.Msg{
			Family:  unix.AF_UNSPEC,
			Ifindex: uint32(f.ifindex),
			Handle:  handle,
			Parent:  parent(dir),
			Info:    uint32(prio)<<16 | uint32(proto),
		},
		Attribute: gotc.Attribute{Kind: "bpf", BPF: &gotc.Bpf{FD: &fd, Name: &name, Flags: &flags}},
	}); err != nil {
		tb.Fatalf("add foreign filter %q: %v", name, err)
	}
}

// deleteFilters deletes every filter at priority prio of the hook.
func (f *foreign) deleteFilters(tb testing.TB, dir tc.Direction, prio uint16) {
	tb.Helper()
	for _, fi := range f.filters(tb, dir) {
		if fi.prio != prio {
			continue
		}
		if err := f.tc.Filter().Delete(&gotc.Object{
			Msg: gotc.Msg{
				Family:  unix.AF_UNSPEC,
				Ifindex: uint32(f.ifindex),
				Handle:  fi.handle,
				Parent:  parent(dir),
				Info:    fi.info,
			},
			Attribute: gotc.Attribute{Kind: "bpf"},
		}); err != nil {
			tb.Fatalf("delete foreign filter %q: %v", fi.name, err)
		}
	}
}

// filterInfo is a filter as a test sees it.
type filterInfo struct {
	prio   uint16
	handle uint32
	info   uint32
	name   string
	progID ebpf.ProgramID
}

// filters lists the hook's bpf filters (not the per-priority headers).
func (f *foreign) filters(tb testing.TB, dir tc.Direction) []filterInfo {
	tb.Helper()
	objs, err := f.tc.Filter().Get(&gotc.Msg{Family: unix.AF_UNSPEC, Ifindex: uint32(f.ifindex), Parent: parent(dir)})
	if err != nil {
		tb.Fatalf("list filters: %v", err)
	}
	var out []filterInfo
	for _, o := range objs {
		if o.Handle == 0 || o.BPF == nil {
			continue
		}
		fi := filterInfo{prio: uint16(o.Info >> 16), handle: o.Handle, info: o.Info}
		if o.BPF.Name != nil {
			fi.name = *o.BPF.Name
		}
		if o.BPF.ID != nil {
			fi.progID = ebpf.ProgramID(*o.BPF.ID)
		}
		out = append(out, fi)
	}
	return out
}

// qdisc returns the kind of the interface's qdisc at ffff:fff1, or "".
func (f *foreign) qdisc(tb testing.TB) string {
	tb.Helper()
	objs, err := f.tc.Qdisc().Get()
	if err != nil {
		tb.Fatalf("list qdiscs: %v", err)
	}
	for _, o := range objs {
		if int(o.Ifindex) == f.ifindex && o.Parent == gotc.HandleIngress {
			return o.Kind
		}
	}
	return ""
}

// tcxPrograms lists the programs on a tcx hook, in order.
func tcxPrograms(tb testing.TB, ns netns.NsHandle, ifindex int, dir tc.Direction) []ebpf.ProgramID {
	tb.Helper()
	at := ebpf.AttachTCXIngress
	if dir == tc.Egress {
		at = ebpf.AttachTCXEgress
	}
	var res *link.QueryResult
	testutil.MustDo(tb, ns, func() error {
		var err error
		res, err = link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if errors.Is(err, unix.EINVAL) || errors.Is(err, ebpf.ErrNotSupported) {
			// Before 6.6 the kernel knows no tcx attach type: no tcx
			// program can be there.
			res, err = &link.QueryResult{}, nil
		}
		return err
	})
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// mustForeignTCX attaches prog as another tool would: a tcx link of its
// own, not in our pin directory, kept until the test ends.
func mustForeignTCX(tb testing.TB, ns netns.NsHandle, ifindex int, dir tc.Direction, prog *ebpf.Program) link.Link {
	tb.Helper()
	at := ebpf.AttachTCXIngress
	if dir == tc.Egress {
		at = ebpf.AttachTCXEgress
	}
	var l link.Link
	testutil.MustDo(tb, ns, func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
		return err
	})
	tb.Cleanup(func() { l.Close() })
	return l
}

// ranges writes sorted numbers as ranges: "3-5 9".
func ranges(ns []int) string {
	var b strings.Builder
	for i := 0; i < len(ns); {
		j := i
		for j+1 < len(ns) && ns[j+1] == ns[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		if i == j {
			fmt.Fprintf(&b, "%d", ns[i])
		} else {
			fmt.Fprintf(&b, "%d-%d", ns[i], ns[j])
		}
		i = j + 1
	}
	return b.String()
}
