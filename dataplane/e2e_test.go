package dataplane_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/tc"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// newBox builds a node in a box with the dataplane on it, pinned in a
// private bpffs.
func newBox(t *testing.T, o scenario.Options) *scenario.Box {
	t.Helper()
	testutil.RequirePrivileged(t)
	o.PinDir = filepath.Join(testutil.BPFFS(t), "meshredirect")
	return scenario.New(t, o)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// runFlow runs one flow of issue 4 for IPv4 and IPv6 and asserts it took
// the expected path with its bytes intact.
func runFlow(t *testing.T, b *scenario.Box, f scenario.Flow) {
	for _, v6 := range []bool{false, true} {
		t.Run(scenario.Family(v6), func(t *testing.T) {
			o := f.Run(b, v6)
			if !f.OK(o) {
				t.Errorf("flow %s (%s): path %q, want %q; error: %v", f.ID, f.Name, o.Path, f.Expect, o.Err)
			}
		})
	}
}

func flow(t *testing.T, id string) scenario.Flow {
	for _, f := range scenario.Flows() {
		if f.ID == id {
			return f
		}
	}
	t.Fatalf("no flow %s", id)
	return scenario.Flow{}
}

// TestFlows runs every flow of issue 4 on one box, in order, as `make
// demo` does; flows that need another configuration have tests of their own
// below as well.
func TestFlows(t *testing.T) {
	b := newBox(t, scenario.Options{DNSAnswer: dnsAnswers})
	for _, f := range scenario.Flows() {
		if f.ID == "9" {
			continue // TestHundredPods
		}
		t.Run(f.ID+" "+f.Name, func(t *testing.T) { runFlow(t, b, f) })
	}
}

var dnsAnswers = []netip.Addr{netip.MustParseAddr("198.19.255.53"), netip.MustParseAddr("fd10:6d72:0:ffff::53")}

// Flow 5, beyond the path: the passed counter moves, nothing else does
// but the pass of the reply.
func TestProbeCountedAsPassed(t *testing.T) {
	b := newBox(t, scenario.Options{})
	before, err := b.DP.Maps().Stats.Read()
	must(t, err)
	runFlow(t, b, flow(t, "5"))
	after, err := b.DP.Maps().Stats.Read()
	must(t, err)
	if after[maps.VerdictPassed].Packets == before[maps.VerdictPassed].Packets {
		t.Error("the passed counter did not move")
	}
	for _, v := range []maps.Verdict{maps.VerdictRedirectedIn, maps.VerdictRedirectedOut} {
		if after[v] != before[v] {
			t.Errorf("%s moved for a probe from the node", v)
		}
	}
}

// Flow 6 with DNS capture configured on from the start.
func TestDNSCaptureConfigured(t *testing.T) {
	b := newBox(t, scenario.Options{Dataplane: dataplane.Config{CaptureDNS: true}, DNSAnswer: dnsAnswers})
	runFlow(t, b, flow(t, "6a"))
	zt, err := b.DP.Maps().Ztunnel.Get()
	must(t, err)
	if zt.Flags&maps.ZtunnelCaptureDNS == 0 {
		t.Error("the capture flag is not set")
	}
}

// Flow 7: while ztunnel is not ready, the drops are counted.
func TestZtunnelNotReadyCountsDrops(t *testing.T) {
	b := newBox(t, scenario.Options{})
	before, err := b.DP.Maps().Stats.Read()
	must(t, err)
	runFlow(t, b, flow(t, "7a"))
	after, err := b.DP.Maps().Stats.Read()
	must(t, err)
	if after[maps.VerdictDroppedNoZtunnel].Packets == before[maps.VerdictDroppedNoZtunnel].Packets {
		t.Error("no packet counted as dropped for want of ztunnel")
	}
}

// Flow 7 with fail open: not ready, the ambient pod goes direct.
func TestFailOpen(t *testing.T) {
	b := newBox(t, scenario.Options{Dataplane: dataplane.Config{FailOpen: true}})
	b.Echo(b.Remote, scenario.EchoPort)
	must(t, b.DP.SetZtunnelReady(false))
	dst := netip.AddrPortFrom(b.Remote.IPv4, scenario.EchoPort)
	local, err := scenario.Exchange(&b.Client.Namespace, false, dst, 5e9)
	must(t, err)
	if len(b.RecordsFrom(local.Addr())) != 0 {
		t.Error("went through ztunnel although it is not ready")
	}
}

// Flow 9: 100 ambient pods on one node.
func TestHundredPods(t *testing.T) {
	b := newBox(t, scenario.Options{ExtraPods: 98})
	if n := len(b.AmbientPods()); n != 100 {
		t.Fatalf("%d ambient pods, want 100", n)
	}
	entries, err := b.DP.Maps().Endpoints.Pods()
	must(t, err)
	if len(entries) != 200 {
		t.Errorf("the endpoints map has %d pod entries, want 200", len(entries))
	}
	runFlow(t, b, flow(t, "9"))
}

// TestReconcile removes what belongs to no desired pod and restores what a
// desired pod lacks.
func TestReconcile(t *testing.T) {
	b := newBox(t, scenario.Options{})
	// The client left the mesh while nobody watched; the server lost an
	// entry.
	must(t, b.DP.Maps().Endpoints.Delete(b.Server.IPv4))
	res, err := b.DP.Reconcile([]dataplane.Pod{scenario.PodOf(b.Server)}, nil)
	must(t, err)
	if len(res.Enrolled) != 1 || len(res.Deleted) != 2 || len(res.Detached) != 2 {
		t.Errorf("reconcile: %+v", res)
	}
	entries, err := b.DP.Maps().Endpoints.Pods()
	must(t, err)
	if len(entries) != 2 {
		t.Errorf("entries after reconcile: %v", entries)
	}
	res, err = b.DP.Reconcile([]dataplane.Pod{scenario.PodOf(b.Server)}, nil)
	must(t, err)
	if len(res.Enrolled)+len(res.Deleted)+len(res.Detached) != 0 || res.Unchanged != 1 {
		t.Errorf("a second reconcile changed something: %+v", res)
	}
	runFlow(t, b, flow(t, "2"))
}

// TestReopen: a second Dataplane (a restarted agent) finds the pins and the
// attachments, replaces the programs with its own and reconciles; traffic
// goes on through ztunnel.
func TestReopen(t *testing.T) {
	b := newBox(t, scenario.Options{})
	before, err := b.DP.Attachments()
	must(t, err)
	must(t, b.DP.Close())

	dp, err := dataplane.Open(b.Config)
	must(t, err)
	b.DP = dp
	var pods []dataplane.Pod
	for _, p := range b.AmbientPods() {
		pods = append(pods, scenario.PodOf(p))
	}
	res, err := dp.Reconcile(pods, nil)
	must(t, err)
	if len(res.Enrolled) != 2 || len(res.Deleted)+len(res.Detached) != 0 {
		t.Errorf("reconcile after reopen: %+v", res)
	}
	after, err := dp.Attachments()
	must(t, err)
	if len(after) != len(before) {
		t.Errorf("%d attachments before, %d after: %v", len(before), len(after), after)
	}
	runFlow(t, b, flow(t, "1"))
}

// TestAttachModes runs flow 1 with tcx links and with legacy filters.
func TestAttachModes(t *testing.T) {
	for _, mode := range []tc.Mode{tc.ModeTCX, tc.ModeLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			if mode == tc.ModeTCX {
				m, err := tc.New(tc.Config{Mode: tc.ModeTCX, PinDir: filepath.Join(testutil.BPFFS(t), "tc")})
				if errors.Is(err, ebpf.ErrNotSupported) {
					t.Skip("tcx needs kernel 6.6+") // a kernel feature: skipped even under CI
				}
				must(t, err)
				m.Close()
			}
			b := newBox(t, scenario.Options{Dataplane: dataplane.Config{AttachMode: mode}})
			all, err := b.DP.Attachments()
			must(t, err)
			for _, a := range all {
				if a.Mode != mode {
					t.Errorf("attachment %s in mode %s", a, a.Mode)
				}
			}
			runFlow(t, b, flow(t, "1"))
		})
	}
}

// TestRedirectWithoutPeer runs flows 1, 2 and 4 with bpf_redirect instead of
// bpf_redirect_peer, the path of kernels before 5.10.
func TestRedirectWithoutPeer(t *testing.T) {
	off := false
	b := newBox(t, scenario.Options{Dataplane: dataplane.Config{RedirectPeer: &off}})
	for _, id := range []string{"1", "2", "4"} {
		t.Run(id, func(t *testing.T) { runFlow(t, b, flow(t, id)) })
	}
}

// TestReversePathFilter: with strict reverse path filtering on the node,
// ztunnel's packets with its clients' addresses still leave the node (flows
// 2 and 4 need that), ztunnel's veth is the only interface that filters
// less than before, and the others keep their effective value.
//
// With Config.ProcSysNet a bind mount of /proc/sys/net elsewhere, as in the
// DaemonSet (/host/proc/sys/net: runc refuses mounts under /proc), the same
// holds: the files show the netns of the thread that opens them, so the
// writes made in the node's netns land there, not in the netns of whoever
// made the mount.
func TestReversePathFilter(t *testing.T) {
	t.Run("proc", func(t *testing.T) { testReversePathFilter(t, "") })
	t.Run("bind mount elsewhere", func(t *testing.T) {
		testutil.RequirePrivileged(t)
		dir := t.TempDir()
		must(t, unix.Mount("/proc/sys/net", dir, "", unix.MS_BIND, ""))
		t.Cleanup(func() {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		testReversePathFilter(t, dir)
	})
}

func testReversePathFilter(t *testing.T, procSysNet string) {
	b := newBox(t, scenario.Options{RPFilter: 1, Dataplane: dataplane.Config{ProcSysNet: procSysNet}})
	for _, id := range []string{"2", "4"} {
		t.Run(id, func(t *testing.T) { runFlow(t, b, flow(t, id)) })
	}
	// Read through /proc/sys/net itself, in the node's netns.
	must(t, b.Node.Do(func() error {
		entries, err := os.ReadDir("/proc/sys/net/ipv4/conf")
		if err != nil {
			return err
		}
		for _, e := range entries {
			raw, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + e.Name() + "/rp_filter")
			if err != nil {
				return err
			}
			v, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
			switch e.Name() {
			case "all", b.Ztunnel.HostVeth:
				if v != 0 {
					t.Errorf("%s rp_filter = %d, want 0", e.Name(), v)
				}
			default:
				if v < 1 {
					t.Errorf("%s rp_filter = %d: it filters less than before (1)", e.Name(), v)
				}
			}
		}
		return nil
	}))
}

// TestUninstallLeavesNothing: after Uninstall no attachment, pin, or rule
// or route of ztunnel's policy routing (either family) is left, and
// ztunnel's netns has TIME_WAIT again.
func TestUninstallLeavesNothing(t *testing.T) {
	b := newBox(t, scenario.Options{})
	// The checkers see both families, and ztunnel's sysctls: all of it is
	// there before.
	testenv.CheckPolicyRouting(t, b.Ztunnel.Netns, "ztunnel's netns before uninstall", true)
	tw := map[string]string{"net/ipv4/tcp_max_tw_buckets": "0"}
	testenv.CheckSysctls(t, b.Ztunnel.Netns, "ztunnel's netns before uninstall", tw)
	must(t, b.DP.Close())
	must(t, dataplane.Uninstall(b.Config, b.Ztunnel.Path()))
	if entries, err := os.ReadDir(b.Config.PinDir); err == nil {
		t.Errorf("pin directory left with %v", entries)
	}
	// Filters are found by name, whatever the pin directory says.
	for _, ns := range []string{b.Node.Path(), b.Ztunnel.Path()} {
		m, err := tc.New(tc.Config{NetnsPath: ns, PinDir: t.TempDir() + "/tc"})
		if err != nil {
			// A plain directory is no bpffs: list through a private one.
			m, err = tc.New(tc.Config{NetnsPath: ns, PinDir: filepath.Join(testutil.BPFFS(t), "tc")})
		}
		must(t, err)
		all, err := m.ListAll()
		m.Close()
		must(t, err)
		if len(all) != 0 {
			t.Errorf("attachments left in %s: %v", ns, all)
		}
	}
	// ztunnel's netns has its rules and routes no more, in either family.
	testenv.CheckPolicyRouting(t, b.Ztunnel.Netns, "ztunnel's netns", false)
	// TIME_WAIT is back: the node's tcp_max_tw_buckets, which a new netns
	// starts with.
	testenv.CheckSysctls(t, b.Ztunnel.Netns, "ztunnel's netns", testenv.ReadSysctls(t, b.Node.Netns, tw))
}
