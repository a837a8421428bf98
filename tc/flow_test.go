package tc_test

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/meshredirect/meshredirect/tc"
)

// flowPackets is the length of the flows that watch for gaps: about 1.5s
// at the pace runFlow keeps.
const flowPackets = 30000

// TestReplaceUnderFlow replaces the programs on both hooks of a flow (egress
// of the sender's veth, ingress of the receiver's) as fast as it can while
// the flow runs, in both modes. No packet may be lost, and every packet must
// have met a program at each hook: a replace never leaves a hook empty.
func TestReplaceUnderFlow(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			requireMode(t, mode)
			n := mustTestNet(t)
			pinDir := mustPinDir(t)
			mA := mustManager(t, n.nsA, tc.Config{Mode: mode, PinDir: pinDir})
			mB := mustManager(t, n.nsB, tc.Config{Mode: mode, PinDir: pinDir})

			marksA, marksB := mustMarksMap(t, flowPackets), mustMarksMap(t, flowPackets)
			// Two programs per hook that count the same way and pass
			// with different verdicts: every replace is a real change.
			progsA := []*ebpf.Program{mustMarkProgram(t, marksA, -1), mustMarkProgram(t, marksA, 0)}
			progsB := []*ebpf.Program{mustMarkProgram(t, marksB, -1), mustMarkProgram(t, marksB, 0)}
			if _, err := mA.Attach(n.a, tc.Egress, "mark", progsA[0]); err != nil {
				t.Fatal(err)
			}
			if _, err := mB.Attach(n.b, tc.Ingress, "mark", progsB[0]); err != nil {
				t.Fatal(err)
			}

			var replaces int
			res := runFlow(t, n, flowPackets, func(stop <-chan struct{}) {
				for i := 1; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := mA.Attach(n.a, tc.Egress, "mark", progsA[i%2]); err != nil {
						t.Error(err)
						return
					}
					if _, err := mB.Attach(n.b, tc.Ingress, "mark", progsB[i%2]); err != nil {
						t.Error(err)
						return
					}
					replaces++
				}
			})
			t.Logf("replaced both programs %d times during the flow", replaces)
			if replaces < 50 {
				t.Errorf("only %d replaces during the flow; the test proves little", replaces)
			}
			checkFlow(t, res, map[string]*ebpf.Map{"egress of A": marksA, "ingress of B": marksB})

			// Still exactly one attachment per hook.
			for _, h := range []struct {
				m       *tc.Manager
				ifindex int
			}{{mA, n.a}, {mB, n.b}} {
				list, err := h.m.List(h.ifindex)
				if err != nil {
					t.Fatal(err)
				}
				if len(list) != 1 {
					t.Errorf("after the replaces, %d attachments: %v", len(list), list)
				}
			}
			if err := mA.Detach(n.a, tc.Egress); err != nil {
				t.Fatal(err)
			}
			if err := mB.Detach(n.b, tc.Ingress); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMigrationNoGap moves both hooks of a flow from legacy filters to tcx
// links and back, again and again, while the flow runs. Every packet must
// meet a program at each hook (the new attachment is made before the old
// one goes), and none may be lost: the clsact qdisc we created stays
// through migrations (a qdisc change drops what the interface sends) and
// goes with Detach.
func TestMigrationNoGap(t *testing.T) {
	requireMode(t, tc.ModeTCX)
	n := mustTestNet(t)
	pinDir := mustPinDir(t)
	managers := map[tc.Mode][2]*tc.Manager{}
	for _, mode := range modes {
		managers[mode] = [2]*tc.Manager{
			mustManager(t, n.nsA, tc.Config{Mode: mode, PinDir: pinDir}),
			mustManager(t, n.nsB, tc.Config{Mode: mode, PinDir: pinDir}),
		}
	}
	marksA, marksB := mustMarksMap(t, flowPackets), mustMarksMap(t, flowPackets)
	progA, progB := mustMarkProgram(t, marksA, -1), mustMarkProgram(t, marksB, -1)
	attach := func(mode tc.Mode) error {
		if _, err := managers[mode][0].Attach(n.a, tc.Egress, "mark", progA); err != nil {
			return err
		}
		_, err := managers[mode][1].Attach(n.b, tc.Ingress, "mark", progB)
		return err
	}
	if err := attach(tc.ModeLegacy); err != nil {
		t.Fatal(err)
	}

	var migrations int
	last := tc.ModeLegacy
	res := runFlow(t, n, flowPackets, func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			next := tc.ModeTCX
			if last == tc.ModeTCX {
				next = tc.ModeLegacy
			}
			if err := attach(next); err != nil {
				t.Error(err)
				return
			}
			last = next
			migrations++
		}
	})
	t.Logf("migrated both hooks %d times during the flow, ending in %s", migrations, last)
	if migrations < 20 {
		t.Errorf("only %d migrations during the flow; the test proves little", migrations)
	}
	checkFlow(t, res, map[string]*ebpf.Map{"egress of A": marksA, "ingress of B": marksB})

	// The hooks hold exactly the last mode's attachment; the clsact we
	// made for the first legacy filter is still there.
	for i, h := range []struct {
		ifindex int
		dir     tc.Direction
	}{{n.a, tc.Egress}, {n.b, tc.Ingress}} {
		m := managers[last][i]
		list, err := m.List(h.ifindex)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].Mode != last {
			t.Errorf("after migrating to %s: %v", last, list)
		}
		ns, _, _ := n.hookOf(h.dir)
		kernel := mustForeignTC(t, ns, h.ifindex)
		if got := kernel.qdisc(t); got != "clsact" {
			t.Errorf("qdisc %q after migrating to %s", got, last)
		}

		// Migrate once more, outside the flow, so both directions end
		// checked, then detach.
		other := tc.ModeLegacy
		if last == tc.ModeLegacy {
			other = tc.ModeTCX
		}
		prog := progA
		if i == 1 {
			prog = progB
		}
		if _, err := managers[other][i].Attach(h.ifindex, h.dir, "mark", prog); err != nil {
			t.Fatal(err)
		}
		list, err = m.List(h.ifindex)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].Mode != other {
			t.Errorf("after migrating to %s: %v", other, list)
		}
		if err := managers[other][i].Detach(h.ifindex, h.dir); err != nil {
			t.Fatal(err)
		}
		if got := kernel.qdisc(t); got != "" {
			t.Errorf("qdisc %q left after detach", got)
		}
	}
}
