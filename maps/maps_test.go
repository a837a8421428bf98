package maps_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// TestLayout pins the byte layout that the programs read: a change here must
// be a deliberate change of maps.LayoutVersion.
func TestLayout(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(PodKey)", unsafe.Sizeof(maps.PodKey{}), 16},
		{"sizeof(Pod)", unsafe.Sizeof(maps.Pod{}), 12},
		{"Pod.Ifindex", uintptr(maps.PodOffIfindex), 0},
		{"Pod.MAC", uintptr(maps.PodOffMAC), 4},
		{"Pod.Flags", uintptr(maps.PodOffFlags), 10},
		{"sizeof(Ztunnel)", unsafe.Sizeof(maps.Ztunnel{}), 44},
		{"Ztunnel.MAC", uintptr(maps.ZtunnelOffMAC), 4},
		{"Ztunnel.Flags", uintptr(maps.ZtunnelOffFlags), 10},
		{"Ztunnel.IPv4", uintptr(maps.ZtunnelOffIPv4), 12},
		{"Ztunnel.IPv6", uintptr(maps.ZtunnelOffIPv6), 28},
		{"sizeof(NodeAddr)", unsafe.Sizeof(maps.NodeAddr{}), 16},
		{"sizeof(Counter)", unsafe.Sizeof(maps.Counter{}), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if maps.PodOffMAC%4 != 0 || maps.ZtunnelOffMAC%4 != 0 {
		t.Error("the programs load a MAC with a 4-byte and a 2-byte load: keep it 4-byte aligned")
	}
}

func TestKeyFor(t *testing.T) {
	v4 := netip.MustParseAddr("198.18.1.10")
	k := maps.KeyFor(v4)
	want := maps.PodKey{10: 0xff, 11: 0xff, 12: 198, 13: 18, 14: 1, 15: 10}
	if k != want {
		t.Errorf("KeyFor(%s) = %x, want %x (v4-mapped)", v4, k, want)
	}
	if got := k.Addr(); got != v4 {
		t.Errorf("Addr() = %s, want %s", got, v4)
	}
	v6 := netip.MustParseAddr("fd10:6d72::10")
	if got := maps.KeyFor(v6).Addr(); got != v6 {
		t.Errorf("round trip of %s gave %s", v6, got)
	}
}

func TestVerdictNames(t *testing.T) {
	seen := map[string]bool{}
	for _, v := range maps.Verdicts() {
		name := v.String()
		if strings.HasPrefix(name, "verdict(") || seen[name] {
			t.Errorf("verdict %d has no unique name: %q", uint32(v), name)
		}
		seen[name] = true
	}
}

// pinDir returns a pin directory on a private bpffs; Unpin must leave
// nothing of it.
func pinDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(testutil.BPFFS(t), "meshredirect")
	t.Cleanup(func() {
		if err := maps.Unpin(dir); err != nil {
			t.Errorf("unpin: %v", err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin directory %s left behind", dir)
		}
	})
	return dir
}

func TestPinAndReopen(t *testing.T) {
	dir := pinDir(t)
	first, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Created) != 4 {
		t.Errorf("first open created %v, want all four maps", first.Created)
	}
	for _, name := range []string{"pods", "ztunnel", "node", "stats"} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("pin %s: %v", name, err)
		}
		_ = info
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("pin directory mode %v (%v), want 0700", st.Mode().Perm(), err)
	}
	ip := netip.MustParseAddr("198.18.1.10")
	pod := maps.Pod{Ifindex: 7, MAC: [6]byte{2, 0, 0, 0, 0, 7}}
	if err := first.Pods.Put(ip, pod); err != nil {
		t.Fatal(err)
	}
	first.Close()

	// A second process (here: a second Open) finds the entry.
	second, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if len(second.Created) != 0 {
		t.Errorf("reopen created %v, want none", second.Created)
	}
	got, err := second.Pods.Get(ip)
	if err != nil || got != pod {
		t.Errorf("after reopen Get(%s) = %+v, %v; want %+v", ip, got, err, pod)
	}
}

func TestIncompatiblePinIsRefused(t *testing.T) {
	for _, c := range []struct {
		name   string
		mutate func(*ebpf.MapSpec)
		want   string
	}{
		{"another value size", func(s *ebpf.MapSpec) { s.ValueSize += 4 }, "ValueSize"},
		{"another layout version", func(s *ebpf.MapSpec) { s.Name = "mr_pods_v0" }, "layout version"},
		{"another capacity", func(s *ebpf.MapSpec) { s.MaxEntries = 1024 }, "MaxEntries"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := pinDir(t)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			spec := maps.Specs(0)[maps.PodsName].Copy()
			c.mutate(spec)
			old, err := ebpf.NewMap(spec)
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			if err := old.Pin(filepath.Join(dir, maps.PodsName)); err != nil {
				t.Fatal(err)
			}

			set, err := maps.Open(maps.Options{PinDir: dir})
			if err == nil {
				set.Close()
				t.Fatal("Open reused an incompatible pin")
			}
			if !errors.Is(err, maps.ErrIncompatiblePin) {
				t.Errorf("error %v does not wrap ErrIncompatiblePin", err)
			}
			for _, part := range []string{filepath.Join(dir, maps.PodsName), c.want, "uninstall"} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not mention %q", err, part)
				}
			}
			// Nothing half-made: the other maps were closed, the pin is
			// still the old map.
			if _, err := os.Stat(filepath.Join(dir, maps.PodsName)); err != nil {
				t.Errorf("the incompatible pin was removed: %v", err)
			}
		})
	}
}

func TestPinDirNotOnBPFFS(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := t.TempDir()
	_, err := maps.Open(maps.Options{PinDir: dir})
	if !errors.Is(err, maps.ErrNotBPFFS) {
		t.Fatalf("Open on %s: %v, want ErrNotBPFFS", dir, err)
	}
	if !strings.Contains(err.Error(), "mount -t bpf") {
		t.Errorf("error %q gives no hint how to fix it", err)
	}
}

func TestAccessors(t *testing.T) {
	testutil.RequirePrivileged(t)
	set, err := maps.Open(maps.Options{PodsMaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()

	// Pods: put, get, all, delete (twice: idempotent), a full map.
	ips := []netip.Addr{netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("fd10:6d72:1::10")}
	for i, ip := range ips {
		if err := set.Pods.Put(ip, maps.Pod{Ifindex: uint32(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := set.Pods.All()
	if err != nil || len(all) != 2 || all[ips[1]].Ifindex != 2 {
		t.Errorf("All() = %v, %v", all, err)
	}
	for i := 0; i < 2; i++ {
		if err := set.Pods.Delete(ips[0]); err != nil {
			t.Errorf("delete #%d: %v", i+1, err)
		}
	}
	if _, err := set.Pods.Get(ips[0]); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	for i := 0; i < 3; i++ {
		if err := set.Pods.Put(netip.AddrFrom4([4]byte{198, 18, 9, byte(i)}), maps.Pod{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := set.Pods.Put(netip.MustParseAddr("198.18.9.200"), maps.Pod{}); err == nil {
		t.Error("Put into a full pods map succeeded")
	} else if !strings.Contains(err.Error(), "198.18.9.200") {
		t.Errorf("error %q does not name the IP", err)
	}

	// Ztunnel.
	zt := maps.Ztunnel{Ifindex: 9, Flags: maps.ZtunnelReady | maps.ZtunnelCaptureDNS}
	if err := set.Ztunnel.Set(zt); err != nil {
		t.Fatal(err)
	}
	if got, err := set.Ztunnel.Get(); err != nil || got != zt {
		t.Errorf("ztunnel = %+v, %v", got, err)
	}

	// Node: both families, unset, wrong family.
	v4, v6 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("fd10:6d72::1")
	if err := set.Node.Set(v4, v6); err != nil {
		t.Fatal(err)
	}
	if g4, g6, err := set.Node.Get(); err != nil || g4 != v4 || g6 != v6 {
		t.Errorf("node = %s %s %v", g4, g6, err)
	}
	if err := set.Node.Set(v4, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if _, g6, _ := set.Node.Get(); g6.IsValid() {
		t.Errorf("IPv6 slot not cleared: %s", g6)
	}
	if err := set.Node.Set(v6, netip.Addr{}); err == nil {
		t.Error("an IPv6 address was accepted as the IPv4 one")
	}

	// Stats: per-CPU values summed.
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	perCPU := make([]maps.Counter, cpus)
	for i := range perCPU {
		perCPU[i] = maps.Counter{Packets: 1, Bytes: 100}
	}
	if err := set.Stats.Put(uint32(maps.VerdictPassed), perCPU); err != nil {
		t.Fatal(err)
	}
	stats, err := set.Stats.Read()
	if err != nil {
		t.Fatal(err)
	}
	if got := stats[maps.VerdictPassed]; got.Packets != uint64(cpus) || got.Bytes != uint64(100*cpus) {
		t.Errorf("passed = %+v, want %d packets", got, cpus)
	}
	if len(stats) != len(maps.Verdicts()) {
		t.Errorf("Read returned %d verdicts, want %d", len(stats), len(maps.Verdicts()))
	}
}

func TestOpenPinned(t *testing.T) {
	dir := pinDir(t)
	if _, err := maps.OpenPinned(dir); !errors.Is(err, maps.ErrNoPins) {
		t.Fatalf("OpenPinned with nothing pinned: %v, want ErrNoPins", err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("OpenPinned created the pin directory")
	}
	set, err := maps.Open(maps.Options{PinDir: dir, PodsMaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	must := netip.MustParseAddr("198.18.1.1")
	if err := set.Pods.Put(must, maps.Pod{Ifindex: 3}); err != nil {
		t.Fatal(err)
	}
	set.Close()
	ro, err := maps.OpenPinned(dir)
	if err != nil {
		t.Fatalf("OpenPinned of a 1024-entry pods map: %v", err)
	}
	defer ro.Close()
	if p, err := ro.Pods.Get(must); err != nil || p.Ifindex != 3 {
		t.Errorf("entry through OpenPinned: %+v %v", p, err)
	}
}

func TestReplaceIncompatible(t *testing.T) {
	dir := pinDir(t)
	old, err := maps.Open(maps.Options{PinDir: dir, PodsMaxEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	ip := netip.MustParseAddr("198.18.1.1")
	if err := old.Pods.Put(ip, maps.Pod{Ifindex: 3}); err != nil {
		t.Fatal(err)
	}

	set, err := maps.Open(maps.Options{PinDir: dir, PodsMaxEntries: 2048, ReplaceIncompatible: true})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if len(set.Replaced) != 1 || !strings.Contains(set.Replaced[0], "MaxEntries") {
		t.Errorf("Replaced = %v", set.Replaced)
	}
	if set.Pods.MaxEntries() != 2048 {
		t.Errorf("new pods map holds %d", set.Pods.MaxEntries())
	}
	if _, err := set.Pods.Get(ip); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("the new map is not empty: %v", err)
	}
	// The old map lives on for whoever still holds it (attached programs).
	if p, err := old.Pods.Get(ip); err != nil || p.Ifindex != 3 {
		t.Errorf("old map after replacement: %+v %v", p, err)
	}
	ro, err := maps.OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	ro.Close()
}
