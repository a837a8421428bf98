package tc_test

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	gocmp "github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/tc"
)

var modes = []tc.Mode{tc.ModeLegacy, tc.ModeTCX}

func requireMode(tb testing.TB, mode tc.Mode) {
	tb.Helper()
	testutil.RequirePrivileged(tb)
	if mode == tc.ModeTCX {
		requireTCX(tb)
	}
}

// hookOf returns the namespace and interface of the hook a flow from A to
// B crosses in direction dir: egress of A's veth, ingress of B's.
func (n *testNet) hookOf(dir tc.Direction) (ns netns.NsHandle, ifindex int, name string) {
	if dir == tc.Ingress {
		return n.nsB, n.b, "mr-b"
	}
	return n.nsA, n.a, "mr-a"
}

// TestAttachReplaceDetach attaches a program, replaces it, and detaches it,
// on both hooks, in both modes, checking each step in the kernel (filters,
// tcx programs, qdisc, pins) and with packets.
func TestAttachReplaceDetach(t *testing.T) {
	for _, mode := range modes {
		for _, dir := range []tc.Direction{tc.Ingress, tc.Egress} {
			t.Run(mode.String()+"/"+string(dir), func(t *testing.T) {
				requireMode(t, mode)
				n := mustTestNet(t)
				ns, ifindex, ifname := n.hookOf(dir)
				m := mustManager(t, ns, tc.Config{Mode: mode, PinDir: mustPinDir(t)})
				kernel := mustForeignTC(t, ns, ifindex) // to look, not to touch
				if m.Mode() != mode {
					t.Fatalf("Mode() = %s, want %s", m.Mode(), mode)
				}

				marks1, marks2 := mustMarksMap(t, 100), mustMarksMap(t, 100)
				p1 := mustMarkProgram(t, marks1, -1)
				p2 := mustMarkProgram(t, marks2, 0)

				// Attach.
				a1, err := m.Attach(ifindex, dir, "first", p1)
				if err != nil {
					t.Fatalf("attach: %v", err)
				}
				want := tc.Attachment{
					Ifindex: ifindex, Ifname: ifname, Direction: dir, Mode: mode,
					ProgramID: programID(t, p1), ProgramName: "mark",
				}
				if mode == tc.ModeLegacy {
					want.Name, want.Priority, want.Handle = "first", tc.DefaultPriority, tc.DefaultHandle
				} else {
					if a1.LinkID == 0 || a1.PinPath == "" {
						t.Fatalf("tcx attachment without link or pin: %+v", a1)
					}
					if _, err := os.Stat(a1.PinPath); err != nil {
						t.Fatalf("pin: %v", err)
					}
					want.LinkID, want.PinPath = a1.LinkID, a1.PinPath
				}
				if diff := gocmp.Diff(want, a1); diff != "" {
					t.Fatalf("attachment (-want +got):\n%s", diff)
				}
				checkList(t, m, ifindex, want)
				checkHook(t, kernel, n, dir, mode, want.ProgramID)
				if got := kernel.qdisc(t); mode == tc.ModeLegacy && got != "clsact" || mode == tc.ModeTCX && got != "" {
					t.Errorf("qdisc %q in mode %s", got, mode)
				}
				res := runFlow(t, n, 50, nil)
				checkFlow(t, res, map[string]*ebpf.Map{"first": marks1})

				// Replace: the same slot (priority and handle, or link and
				// pin), another program.
				a2, err := m.Attach(ifindex, dir, "second", p2)
				if err != nil {
					t.Fatalf("replace: %v", err)
				}
				want.ProgramID = programID(t, p2)
				if mode == tc.ModeLegacy {
					want.Name = "second"
				}
				if diff := gocmp.Diff(want, a2); diff != "" {
					t.Fatalf("attachment after replace (-want +got):\n%s", diff)
				}
				checkList(t, m, ifindex, want)
				checkHook(t, kernel, n, dir, mode, want.ProgramID)
				before := marks(t, marks1, 50)
				res = runFlow(t, n, 50, nil)
				checkFlow(t, res, map[string]*ebpf.Map{"second": marks2})
				if diff := gocmp.Diff(before, marks(t, marks1, 50)); diff != "" {
					t.Errorf("the replaced program still ran (-before +after):\n%s", diff)
				}

				// Detach: nothing of ours is left, not even the qdisc we made.
				if err := m.Detach(ifindex, dir); err != nil {
					t.Fatalf("detach: %v", err)
				}
				checkList(t, m, ifindex)
				checkHook(t, kernel, n, dir, mode, 0)
				if got := kernel.qdisc(t); got != "" {
					t.Errorf("qdisc %q left after detach", got)
				}
				if a1.PinPath != "" {
					if _, err := os.Stat(a1.PinPath); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("pin left after detach: %v", err)
					}
				}
				// Detaching again is not an error.
				if err := m.Detach(ifindex, dir); err != nil {
					t.Fatalf("detach again: %v", err)
				}
			})
		}
	}
}

// checkList fails the test unless m.List(ifindex) returns exactly want.
func checkList(tb testing.TB, m *tc.Manager, ifindex int, want ...tc.Attachment) {
	tb.Helper()
	got, err := m.List(ifindex)
	if err != nil {
		tb.Fatalf("list: %v", err)
	}
	if diff := gocmp.Diff(want, got, cmpEmpty); diff != "" {
		tb.Fatalf("List(%d) (-want +got):\n%s", ifindex, diff)
	}
}

var cmpEmpty = gocmp.Comparer(func(a, b []tc.Attachment) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return gocmp.Equal(a, b)
})

// checkHook fails the test unless the kernel shows our program id (0: none)
// on the hook, in mode, and nothing of ours in the other mode.
func checkHook(tb testing.TB, kernel *foreign, n *testNet, dir tc.Direction, mode tc.Mode, id ebpf.ProgramID) {
	tb.Helper()
	ns, _, _ := n.hookOf(dir)
	var filterIDs, tcxIDs []ebpf.ProgramID
	for _, f := range kernel.filters(tb, dir) {
		if strings.HasPrefix(f.name, tc.FilterNamePrefix) {
			filterIDs = append(filterIDs, f.progID)
		}
	}
	tcxIDs = tcxPrograms(tb, ns, kernel.ifindex, dir)
	var wantFilters, wantTCX []ebpf.ProgramID
	if id != 0 && mode == tc.ModeLegacy {
		wantFilters = []ebpf.ProgramID{id}
	}
	if id != 0 && mode == tc.ModeTCX {
		wantTCX = []ebpf.ProgramID{id}
	}
	if !gocmp.Equal(wantFilters, filterIDs, cmpIDs) || !gocmp.Equal(wantTCX, tcxIDs, cmpIDs) {
		tb.Fatalf("hook %s: our filters %v, tcx programs %v; want %v and %v", dir, filterIDs, tcxIDs, wantFilters, wantTCX)
	}
}

var cmpIDs = gocmp.Comparer(func(a, b []ebpf.ProgramID) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
})

// TestForeignFiltersSurvive puts another tool's clsact and filters (and,
// with tcx, a tcx link) on an interface; attaching and detaching ours
// leaves all of them as they were, and listing shows only ours.
func TestForeignFiltersSurvive(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			requireMode(t, mode)
			n := mustTestNet(t)
			m := mustManager(t, n.nsB, tc.Config{Mode: mode, PinDir: mustPinDir(t)})
			other := mustForeignTC(t, n.nsB, n.b)

			// Cilium's slot: priority 1, handle 1, on both hooks, under a
			// clsact it made. And a second foreign filter after ours.
			other.addClsact(t)
			foreignProg := mustPassProgram(t, "cil_from_cont")
			for _, dir := range []tc.Direction{tc.Ingress, tc.Egress} {
				other.addFilter(t, dir, 1, 1, "cil_from_container", foreignProg)
				other.addFilter(t, dir, 100, 7, "other_tool", foreignProg)
			}
			var foreignLinks []ebpf.ProgramID
			if mode == tc.ModeTCX {
				mustForeignTCX(t, n.nsB, n.b, tc.Ingress, foreignProg)
				foreignLinks = tcxPrograms(t, n.nsB, n.b, tc.Ingress)
			}
			beforeIn, beforeEg := other.filters(t, tc.Ingress), other.filters(t, tc.Egress)

			ours := mustPassProgram(t, "ours")
			for _, dir := range []tc.Direction{tc.Ingress, tc.Egress} {
				if _, err := m.Attach(n.b, dir, "ours", ours); err != nil {
					t.Fatalf("attach %s: %v", dir, err)
				}
			}
			list, err := m.List(n.b)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 2 {
				t.Fatalf("List returned %d attachments, want our 2: %v", len(list), list)
			}
			for _, a := range list {
				if a.ProgramID != programID(t, ours) || a.Mode != mode {
					t.Errorf("listed an attachment that is not ours: %v", a)
				}
			}
			if mode == tc.ModeTCX {
				// Ours went first (head), the other tool's stays.
				got := tcxPrograms(t, n.nsB, n.b, tc.Ingress)
				want := append([]ebpf.ProgramID{programID(t, ours)}, foreignLinks...)
				if !gocmp.Equal(want, got, cmpIDs) {
					t.Errorf("tcx programs on ingress %v, want %v", got, want)
				}
			}

			for _, dir := range []tc.Direction{tc.Ingress, tc.Egress} {
				if err := m.Detach(n.b, dir); err != nil {
					t.Fatalf("detach %s: %v", dir, err)
				}
			}
			if diff := gocmp.Diff(beforeIn, other.filters(t, tc.Ingress), gocmp.AllowUnexported(filterInfo{})); diff != "" {
				t.Errorf("foreign ingress filters changed (-before +after):\n%s", diff)
			}
			if diff := gocmp.Diff(beforeEg, other.filters(t, tc.Egress), gocmp.AllowUnexported(filterInfo{})); diff != "" {
				t.Errorf("foreign egress filters changed (-before +after):\n%s", diff)
			}
			if got := other.qdisc(t); got != "clsact" {
				t.Errorf("foreign clsact gone: qdisc %q", got)
			}
			if mode == tc.ModeTCX {
				if got := tcxPrograms(t, n.nsB, n.b, tc.Ingress); !gocmp.Equal(foreignLinks, got, cmpIDs) {
					t.Errorf("tcx programs after detach %v, want the foreign %v", got, foreignLinks)
				}
			}
		})
	}
}

// TestForeignQdiscNeverRemoved: an empty clsact that someone else made
// stays after our filters come and go.
func TestForeignQdiscNeverRemoved(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := mustTestNet(t)
	m := mustManager(t, n.nsB, tc.Config{Mode: tc.ModeLegacy, PinDir: mustPinDir(t)})
	other := mustForeignTC(t, n.nsB, n.b)
	other.addClsact(t)

	prog := mustPassProgram(t, "ours")
	if _, err := m.Attach(n.b, tc.Ingress, "ours", prog); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(n.b, tc.Ingress); err != nil {
		t.Fatal(err)
	}
	if got := other.qdisc(t); got != "clsact" {
		t.Fatalf("foreign clsact removed: qdisc %q", got)
	}
	if _, err := m.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := other.qdisc(t); got != "clsact" {
		t.Fatalf("foreign clsact removed by Prune: qdisc %q", got)
	}
}

// TestOurQdiscOutlivedByForeignFilter: we create the clsact, another tool
// adds a filter to it; Detach leaves the qdisc (not empty). Once the other
// filter is gone, Prune still leaves it (the interface is live), and the
// next Detach removes it (ours, empty).
func TestOurQdiscOutlivedByForeignFilter(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := mustTestNet(t)
	m := mustManager(t, n.nsB, tc.Config{Mode: tc.ModeLegacy, PinDir: mustPinDir(t)})
	other := mustForeignTC(t, n.nsB, n.b)

	prog := mustPassProgram(t, "ours")
	if _, err := m.Attach(n.b, tc.Egress, "ours", prog); err != nil {
		t.Fatal(err)
	}
	other.addFilter(t, tc.Ingress, 1, 1, "late_comer", prog)
	if err := m.Detach(n.b, tc.Egress); err != nil {
		t.Fatal(err)
	}
	if got := other.qdisc(t); got != "clsact" {
		t.Fatalf("clsact holding a foreign filter was removed: qdisc %q", got)
	}
	if fs := other.filters(t, tc.Ingress); len(fs) != 1 || fs[0].name != "late_comer" {
		t.Fatalf("foreign filter did not survive: %v", fs)
	}

	other.deleteFilters(t, tc.Ingress, 1)
	if _, err := m.Prune(); err != nil {
		t.Fatal(err)
	}
	if got := other.qdisc(t); got != "clsact" {
		t.Fatalf("Prune touched a live interface: qdisc %q", got)
	}
	if err := m.Detach(n.b, tc.Egress); err != nil {
		t.Fatal(err)
	}
	if got := other.qdisc(t); got != "" {
		t.Fatalf("our empty clsact not removed by Detach: qdisc %q", got)
	}
}

// TestForeignFilterInOurSlot: a filter of someone else at our priority and
// handle is an error, and is left alone.
func TestForeignFilterInOurSlot(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := mustTestNet(t)
	m := mustManager(t, n.nsB, tc.Config{Mode: tc.ModeLegacy, PinDir: mustPinDir(t)})
	other := mustForeignTC(t, n.nsB, n.b)
	other.addClsact(t)
	theirs := mustPassProgram(t, "theirs")
	other.addFilter(t, tc.Ingress, tc.DefaultPriority, tc.DefaultHandle, "squatter", theirs)

	_, err := m.Attach(n.b, tc.Ingress, "ours", mustPassProgram(t, "ours"))
	if !errors.Is(err, tc.ErrForeignFilter) {
		t.Fatalf("attach over a foreign filter: %v, want ErrForeignFilter", err)
	}
	t.Logf("error: %v", err)
	fs := other.filters(t, tc.Ingress)
	if len(fs) != 1 || fs[0].name != "squatter" || fs[0].progID != programID(t, theirs) {
		t.Fatalf("foreign filter changed: %v", fs)
	}
	checkList(t, m, n.b)
}

// TestKernelErrorIsKept: when the kernel refuses, the error names the
// interface and the hook and carries the kernel's own message.
func TestKernelErrorIsKept(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := mustTestNet(t)
	m := mustManager(t, n.nsB, tc.Config{Mode: tc.ModeLegacy, PinDir: mustPinDir(t)})
	other := mustForeignTC(t, n.nsB, n.b)
	other.addClsact(t)
	// Our priority, another handle, another protocol (IPv4 only): the
	// kernel will not put a protocol-all filter in that tcf_proto.
	other.addFilterProto(t, tc.Ingress, tc.DefaultPriority, 5, 0x0008, "ipv4_only", mustPassProgram(t, "theirs"))

	_, err := m.Attach(n.b, tc.Ingress, "ours", mustPassProgram(t, "ours"))
	if err == nil {
		t.Fatal("attach succeeded")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"attach filter to mr-b ingress: ", "message: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

// TestIngressQdisc: an ingress qdisc (not clsact) is not ours to replace;
// legacy attach says so, tcx does not need a qdisc.
func TestIngressQdisc(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			requireMode(t, mode)
			n := mustTestNet(t)
			m := mustManager(t, n.nsB, tc.Config{Mode: mode, PinDir: mustPinDir(t)})
			other := mustForeignTC(t, n.nsB, n.b)
			other.addIngressQdisc(t)

			_, err := m.Attach(n.b, tc.Ingress, "ours", mustPassProgram(t, "ours"))
			switch mode {
			case tc.ModeLegacy:
				if !errors.Is(err, tc.ErrNotClsact) {
					t.Fatalf("attach: %v, want ErrNotClsact", err)
				}
			case tc.ModeTCX:
				if err != nil {
					t.Fatal(err)
				}
				if err := m.Detach(n.b, tc.Ingress); err != nil {
					t.Fatal(err)
				}
			}
			if got := other.qdisc(t); got != "ingress" {
				t.Fatalf("ingress qdisc touched: now %q", got)
			}
		})
	}
}

// TestListExactly attaches in both modes on several interfaces beside
// foreign filters and links; List and ListAll return exactly ours.
func TestListExactly(t *testing.T) {
	requireMode(t, tc.ModeTCX)
	n := mustTestNet(t)
	pinDir := mustPinDir(t)
	legacy := mustManager(t, n.nsA, tc.Config{Mode: tc.ModeLegacy, PinDir: pinDir})
	tcx := mustManager(t, n.nsA, tc.Config{Mode: tc.ModeTCX, PinDir: pinDir})
	x := mustExtraVeth(t, n.hA, "mr-x0", "mr-x1")
	x1 := mustLinkByName(t, n.hA, "mr-x1").Attrs().Index

	theirs := mustPassProgram(t, "theirs")
	other := mustForeignTC(t, n.nsA, n.a)
	other.addClsact(t)
	other.addFilter(t, tc.Egress, 1, 1, "cil_to_container", theirs)
	mustForeignTCX(t, n.nsA, x, tc.Ingress, theirs)

	p1, p2, p3 := mustPassProgram(t, "p1"), mustPassProgram(t, "p2"), mustPassProgram(t, "p3")
	var want []tc.Attachment
	for _, at := range []struct {
		m       *tc.Manager
		ifindex int
		dir     tc.Direction
		prog    *ebpf.Program
	}{
		{legacy, n.a, tc.Ingress, p1},
		{tcx, x, tc.Egress, p2},
		{tcx, x1, tc.Ingress, p3},
		{legacy, x1, tc.Egress, p3},
	} {
		a, err := at.m.Attach(at.ifindex, at.dir, "", at.prog)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, a)
	}

	// ListAll's order: interface index, then ingress before egress.
	slices.SortStableFunc(want, func(a, b tc.Attachment) int {
		return cmp.Compare(a.Ifindex, b.Ifindex)
	})
	for _, m := range []*tc.Manager{legacy, tcx} {
		all, err := m.ListAll()
		if err != nil {
			t.Fatal(err)
		}
		if diff := gocmp.Diff(want, all); diff != "" {
			t.Errorf("ListAll (-want +got):\n%s", diff)
		}
	}
	checkList(t, legacy, n.a, mustFind(t, want, n.a)...)
	checkList(t, tcx, x, mustFind(t, want, x)...)
	checkList(t, tcx, x1, mustFind(t, want, x1)...)
	checkList(t, tcx, 1) // lo

	for _, a := range want {
		if err := legacy.Detach(a.Ifindex, a.Direction); err != nil {
			t.Fatal(err)
		}
	}
	all, err := tcx.ListAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 0 {
		t.Fatalf("ListAll after detaching everything: %v", all)
	}
	if fs := other.filters(t, tc.Egress); len(fs) != 1 {
		t.Fatalf("foreign filter gone: %v", fs)
	}
}

// TestNetnsByPathAndCurrent: a Manager finds its namespace by path, or
// takes the calling thread's.
func TestNetnsByPathAndCurrent(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := mustTestNet(t)
	pinDir := mustPinDir(t)
	prog := mustPassProgram(t, "ours")

	byPath, err := tc.New(tc.Config{NetnsPath: fmt.Sprintf("/proc/self/fd/%d", int(n.nsA)), PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer byPath.Close()
	a, err := byPath.Attach(n.a, tc.Ingress, "", prog)
	if err != nil {
		t.Fatal(err)
	}
	if a.Ifname != "mr-a" {
		t.Fatalf("attached to %q, want mr-a in netns A", a.Ifname)
	}

	var current *tc.Manager
	testutil.MustDo(t, n.nsA, func() error {
		var err error
		current, err = tc.New(tc.Config{PinDir: pinDir})
		return err
	})
	defer current.Close()
	checkList(t, current, n.a, a)
	if err := current.Detach(n.a, tc.Ingress); err != nil {
		t.Fatal(err)
	}
	checkList(t, byPath, n.a)

	if _, err := tc.New(tc.Config{NetnsPath: "/proc/self/ns/mnt", PinDir: pinDir}); err == nil {
		t.Fatal("a mount namespace accepted as a network namespace")
	}
}

// TestBadArguments: mistakes of the caller are errors that say what was
// wrong, and change nothing.
func TestBadArguments(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := mustTestNet(t)
	m := mustManager(t, n.nsA, tc.Config{PinDir: mustPinDir(t)})
	prog := mustPassProgram(t, "ours")
	xdp := mustXDPProgram(t)
	for _, c := range []struct {
		name    string
		ifindex int
		dir     tc.Direction
		prog    *ebpf.Program
		want    string
	}{
		{"no interface", 9999, tc.Ingress, prog, "attach to if9999 ingress: interface 9999: no such interface"},
		{"bad direction", n.a, "sideways", prog, `invalid direction "sideways"`},
		{"nil program", n.a, tc.Egress, nil, "nil program"},
		{"wrong type", n.a, tc.Egress, xdp, "program type XDP"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := m.Attach(c.ifindex, c.dir, "", c.prog)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want it to contain %q", err, c.want)
			}
		})
	}
	if all, err := m.ListAll(); err != nil || len(all) != 0 {
		t.Fatalf("ListAll: %v, %v", all, err)
	}
}

// mustFind returns the attachments of the interface ifindex, in their
// order in as.
func mustFind(tb testing.TB, as []tc.Attachment, ifindex int) []tc.Attachment {
	tb.Helper()
	var out []tc.Attachment
	for _, a := range as {
		if a.Ifindex == ifindex {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		tb.Fatalf("no attachment on interface %d in %v", ifindex, as)
	}
	return out
}
