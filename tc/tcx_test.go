package tc_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/tc"
)

// TestPinnedLinkOutlivesProcess: a tcx link attached and pinned by a
// process that then exits stays attached, with its program; a new Manager
// (a restarted agent) finds it, and Detach removes it.
func TestPinnedLinkOutlivesProcess(t *testing.T) {
	requireMode(t, tc.ModeTCX)
	n := mustTestNet(t)
	pinDir := mustPinDir(t)

	nsFD, err := unix.Dup(int(n.nsB))
	if err != nil {
		t.Fatal(err)
	}
	nsFile := os.NewFile(uintptr(nsFD), "netns B")
	defer nsFile.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		helperEnv+"=1",
		helperPinDir+"="+pinDir,
		fmt.Sprintf("%s=%d", helperIfindex, n.b),
	)
	cmd.ExtraFiles = []*os.File{nsFile} // descriptor 3: helperNetnsFD
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper process: %v\n%s", err, stderr.String())
	}
	var made tc.Attachment
	if err := json.Unmarshal(stdout.Bytes(), &made); err != nil {
		t.Fatalf("helper output %q: %v", stdout.String(), err)
	}
	t.Logf("helper (pid %d, exited) attached %v", cmd.Process.Pid, made)

	// The process is gone; the link and its program are not.
	m := mustManager(t, n.nsB, tc.Config{Mode: tc.ModeTCX, PinDir: pinDir})
	checkList(t, m, n.b, made)
	if got := tcxPrograms(t, n.nsB, n.b, tc.Ingress); len(got) != 1 || got[0] != made.ProgramID {
		t.Fatalf("tcx programs on ingress %v, want the helper's %d", got, made.ProgramID)
	}
	res := runFlow(t, n, 100, nil)
	checkFlow(t, res, nil)

	// A restarted agent upgrading the program updates the same link.
	marks := mustMarksMap(t, 100)
	a, err := m.Attach(n.b, tc.Ingress, "mark", mustMarkProgram(t, marks, -1))
	if err != nil {
		t.Fatal(err)
	}
	if a.LinkID != made.LinkID || a.PinPath != made.PinPath {
		t.Fatalf("upgrade made a new link %v, want the helper's %v updated", a, made)
	}
	res = runFlow(t, n, 100, nil)
	checkFlow(t, res, map[string]*ebpf.Map{"upgraded": marks})

	if err := m.Detach(n.b, tc.Ingress); err != nil {
		t.Fatal(err)
	}
	if got := tcxPrograms(t, n.nsB, n.b, tc.Ingress); len(got) != 0 {
		t.Fatalf("tcx programs after detach: %v", got)
	}
	// With the link gone, nothing holds the helper's program any more.
	waitProgramFreed(t, made.ProgramID)
}

func waitProgramFreed(tb testing.TB, id ebpf.ProgramID) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		prog, err := ebpf.NewProgramFromID(id)
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err == nil {
			prog.Close()
		}
		if time.Now().After(deadline) {
			tb.Fatalf("program %d still exists after its link was detached (%v)", id, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDefunctLink deletes the interface under our tcx links and records
// what the kernel does: the links live on, pinned, attached to nothing,
// and report interface index 0. ListAll shows them as defunct, Prune
// removes them (from any namespace), and Detach of the vanished
// interface removes its pins too. The clsact marker of a legacy filter on
// the vanished interface goes with Prune.
func TestDefunctLink(t *testing.T) {
	requireMode(t, tc.ModeTCX)
	n := mustTestNet(t)
	pinDir := mustPinDir(t)
	m := mustManager(t, n.nsA, tc.Config{Mode: tc.ModeTCX, PinDir: pinDir})
	legacy := mustManager(t, n.nsA, tc.Config{Mode: tc.ModeLegacy, PinDir: pinDir})
	mB := mustManager(t, n.nsB, tc.Config{Mode: tc.ModeTCX, PinDir: pinDir})
	prog := mustPassProgram(t, "ours")

	x0 := mustExtraVeth(t, n.hA, "mr-x0", "mr-x1")
	x1 := mustLinkByName(t, n.hA, "mr-x1").Attrs().Index
	z := mustExtraVeth(t, n.hB, "mr-z0", "mr-z1")
	var pins []string
	for _, at := range []struct {
		m       *tc.Manager
		ifindex int
		dir     tc.Direction
	}{
		{m, x0, tc.Ingress}, {m, x0, tc.Egress}, {legacy, x1, tc.Ingress}, {mB, z, tc.Egress},
	} {
		a, err := at.m.Attach(at.ifindex, at.dir, "ours", prog)
		if err != nil {
			t.Fatal(err)
		}
		if a.PinPath != "" {
			pins = append(pins, a.PinPath)
		}
	}
	// The ones that stay: on A's live veth.
	live, err := m.Attach(n.a, tc.Ingress, "ours", prog)
	if err != nil {
		t.Fatal(err)
	}

	// Deleting mr-x0 takes its peer mr-x1 along; mr-z0 goes in B.
	if err := n.hA.LinkDel(mustLinkByName(t, n.hA, "mr-x0")); err != nil {
		t.Fatal(err)
	}
	if err := n.hB.LinkDel(mustLinkByName(t, n.hB, "mr-z0")); err != nil {
		t.Fatal(err)
	}

	// What the kernel does with the links.
	for _, pin := range pins {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			t.Fatalf("the pin of a link whose interface is gone: %v", err)
		}
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.TCX().Ifindex != 0 {
			t.Errorf("link %d reports interface %d after the interface was deleted, want 0", info.ID, info.TCX().Ifindex)
		}
		uerr := l.Update(prog)
		if !errors.Is(uerr, unix.ENOLINK) {
			t.Errorf("update of a defunct link: %v, want ENOLINK", uerr)
		}
		t.Logf("after deleting the interface: link %d still pinned, program %d, interface index %d; update: %v",
			info.ID, info.Program, info.TCX().Ifindex, uerr)
		l.Close()
	}

	// ListAll (of A) shows A's defunct links, not B's; List of the
	// vanished interface fails; the live attachment is still there.
	all, err := m.ListAll()
	if err != nil {
		t.Fatal(err)
	}
	var defunct int
	for _, a := range all {
		switch {
		case a.Defunct && a.Ifindex == x0 && a.Ifname == "":
			defunct++
		case a.Defunct:
			t.Errorf("unexpected defunct attachment %v", a)
		case a.Ifindex != n.a:
			t.Errorf("unexpected attachment %v", a)
		}
	}
	if defunct != 2 || len(all) != 3 {
		t.Errorf("ListAll: %v, want 2 defunct links on if%d and the live one", all, x0)
	}
	if _, err := m.List(x0); err == nil {
		t.Error("List of a vanished interface succeeded")
	}

	// Prune, from A, removes the defunct links of A and of B.
	pruned, err := m.Prune()
	if err != nil {
		t.Fatal(err)
	}
	if len(pruned) != 3 {
		t.Errorf("pruned %v, want the 3 defunct links", pruned)
	}
	for _, pin := range pins {
		if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin %s left after Prune: %v", pin, err)
		}
	}
	checkList(t, m, n.a, live)

	// Detach of a vanished interface removes its pins.
	y := mustExtraVeth(t, n.hA, "mr-y0", "mr-y1")
	a, err := m.Attach(y, tc.Ingress, "ours", prog)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.hA.LinkDel(mustLinkByName(t, n.hA, "mr-y0")); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(y, tc.Ingress); err != nil {
		t.Fatalf("detach from a vanished interface: %v", err)
	}
	if _, err := os.Stat(a.PinPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin %s left after Detach: %v", a.PinPath, err)
	}

	if err := m.Detach(n.a, tc.Ingress); err != nil {
		t.Fatal(err)
	}
}
