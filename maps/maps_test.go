package maps_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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
		{"sizeof(Key)", unsafe.Sizeof(maps.Key{}), 16},
		{"sizeof(Endpoint)", unsafe.Sizeof(maps.Endpoint{}), 12},
		{"Endpoint.Ifindex", uintptr(maps.EndpointOffIfindex), 0},
		{"Endpoint.MAC", uintptr(maps.EndpointOffMAC), 4},
		{"Endpoint.Flags", uintptr(maps.EndpointOffFlags), 10},
		{"sizeof(Slot)", unsafe.Sizeof(maps.Slot{}), 32},
		{"Slot.Key", uintptr(maps.SlotOffKey), 0},
		{"Slot.Endpoint", uintptr(maps.SlotOffEndpoint), 16},
		{"Slot.Overflow", uintptr(maps.SlotOffOverflow), 28},
		{"sizeof(Ztunnel)", unsafe.Sizeof(maps.Ztunnel{}), 48},
		{"Ztunnel.MAC", uintptr(maps.ZtunnelOffMAC), 4},
		{"Ztunnel.Flags", uintptr(maps.ZtunnelOffFlags), 10},
		{"Ztunnel.IPv4", uintptr(maps.ZtunnelOffIPv4), 12},
		{"Ztunnel.IPv6", uintptr(maps.ZtunnelOffIPv6), 28},
		{"Ztunnel.NetnsID", uintptr(maps.ZtunnelOffNetnsID), 44},
		{"sizeof(Counter)", unsafe.Sizeof(maps.Counter{}), 16},
		{"sizeof(SockAddr)", unsafe.Sizeof(maps.SockAddr{}), uintptr(maps.SockAddrSize)},
		{"SockAddr.Addr", unsafe.Offsetof(maps.SockAddr{}.Addr), uintptr(maps.SockAddrOffAddr)},
		{"SockAddr.Port", unsafe.Offsetof(maps.SockAddr{}.Port), uintptr(maps.SockAddrOffPort)},
		{"SockAddrSize", uintptr(maps.SockAddrSize), 20},
		{"Monitor.DropsUntil", uintptr(maps.MonitorOffDropsUntil), 0},
		{"Monitor.VerdictsUntil", uintptr(maps.MonitorOffVerdictsUntil), 8},
		{"sizeof(EventHeader)", uintptr(maps.EventHeaderSize), 32},
		{"EventHeader.Verdict", uintptr(maps.EventOffVerdict), 20},
		{"EventHeader.CapLen", uintptr(maps.EventOffCapLen), 24},
		{"EventHeader.Program", uintptr(maps.EventOffProgram), 26},
		{"EventHeader.Dropped", uintptr(maps.EventOffDropped), 27},
		{"EventHeader padding", uintptr(maps.EventOffPad), 28},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if maps.EndpointOffMAC%4 != 0 || (maps.SlotOffEndpoint+maps.EndpointOffMAC)%4 != 0 || maps.ZtunnelOffMAC%4 != 0 {
		t.Error("the programs load a MAC with a 4-byte and a 2-byte load: keep it 4-byte aligned")
	}
}

func TestKeyFor(t *testing.T) {
	v4 := netip.MustParseAddr("198.18.1.10")
	k := maps.KeyFor(v4)
	want := maps.Key{10: 0xff, 11: 0xff, 12: 198, 13: 18, 14: 1, 15: 10}
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
	if len(first.Created) != 9 {
		t.Errorf("first open created %v, want all nine maps", first.Created)
	}
	for _, name := range []string{"endpoints", "epcache", "ztunnel", "relays", "stats", "dnsorig", "dnstcp", "events", "monitor"} {
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
	pod := maps.Endpoint{Ifindex: 7, MAC: [6]byte{2, 0, 0, 0, 0, 7}, Flags: maps.EndpointPod}
	if err := first.Endpoints.Put(ip, pod); err != nil {
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
	got, err := second.Endpoints.Get(ip)
	if err != nil || got != pod {
		t.Errorf("after reopen Get(%s) = %+v, %v; want %+v", ip, got, err, pod)
	}
	if got, ok, err := second.Endpoints.Lookup(ip); err != nil || !ok || got != pod {
		t.Errorf("after reopen the cache gives %+v, %v, %v; want %+v", got, ok, err, pod)
	}
}

func TestIncompatiblePinIsRefused(t *testing.T) {
	for _, c := range []struct {
		name   string
		mutate func(*ebpf.MapSpec)
		want   string
	}{
		{"another value size", func(s *ebpf.MapSpec) { s.ValueSize += 4 }, "ValueSize"},
		{"another layout version", func(s *ebpf.MapSpec) { s.Name = "mr_endpoints_v0" }, "layout version"},
		{"another capacity", func(s *ebpf.MapSpec) { s.MaxEntries = 1024 }, "MaxEntries"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := pinDir(t)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			spec := maps.Specs(0)[maps.EndpointsName].Copy()
			c.mutate(spec)
			old, err := ebpf.NewMap(spec)
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			if err := old.Pin(filepath.Join(dir, maps.EndpointsName)); err != nil {
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
			for _, part := range []string{filepath.Join(dir, maps.EndpointsName), c.want, "uninstall"} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not mention %q", err, part)
				}
			}
			// Nothing half-made: the other maps were closed, the pin is
			// still the old map.
			if _, err := os.Stat(filepath.Join(dir, maps.EndpointsName)); err != nil {
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

	// Endpoints: put, get, all, delete (twice: idempotent), a full map.
	ips := []netip.Addr{netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("fd10:6d72:1::10")}
	for i, ip := range ips {
		if err := set.Endpoints.Put(ip, maps.Endpoint{Ifindex: uint32(i + 1), Flags: maps.EndpointPod}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := set.Endpoints.All()
	if err != nil || len(all) != 2 || all[ips[1]].Ifindex != 2 {
		t.Errorf("All() = %v, %v", all, err)
	}
	if err := set.Endpoints.Put(netip.MustParseAddr("198.18.0.1"), maps.Endpoint{Flags: maps.EndpointNode}); err != nil {
		t.Fatal(err)
	}
	if pods, err := set.Endpoints.Pods(); err != nil || len(pods) != 2 {
		t.Errorf("Pods() = %v, %v; want the two pod entries only", pods, err)
	}
	if err := set.Endpoints.Delete(netip.MustParseAddr("198.18.0.1")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := set.Endpoints.Delete(ips[0]); err != nil {
			t.Errorf("delete #%d: %v", i+1, err)
		}
	}
	if _, err := set.Endpoints.Get(ips[0]); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if _, ok, _ := set.Endpoints.Lookup(ips[0]); ok {
		t.Error("the cache still finds a deleted address")
	}
	for i := 0; i < 3; i++ {
		if err := set.Endpoints.Put(netip.AddrFrom4([4]byte{198, 18, 9, byte(i)}), maps.Endpoint{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := set.Endpoints.Put(netip.MustParseAddr("198.18.9.200"), maps.Endpoint{}); err == nil {
		t.Error("Put into a full endpoints map succeeded")
	} else if !strings.Contains(err.Error(), "198.18.9.200") || !errors.Is(err, maps.ErrMapFull) {
		t.Errorf("error %q does not name the IP or wrap ErrMapFull", err)
	}
	for _, bad := range []netip.Addr{{}, netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
		if err := set.Endpoints.Put(bad, maps.Endpoint{}); err == nil {
			t.Errorf("Put(%v) succeeded", bad)
		}
	}

	// Ztunnel.
	zt := maps.Ztunnel{Ifindex: 9, Flags: maps.ZtunnelReady | maps.ZtunnelCaptureDNS}
	if err := set.Ztunnel.Set(zt); err != nil {
		t.Fatal(err)
	}
	if got, err := set.Ztunnel.Get(); err != nil || got != zt {
		t.Errorf("ztunnel = %+v, %v", got, err)
	}

	// Relays.
	if err := set.Relays.Set([]uint16{4789, 8472, 6081, 0, 65535}); err != nil {
		t.Fatal(err)
	}
	if got, err := set.Relays.Get(); err != nil || fmt.Sprint(got) != "[0 4789 6081 8472 65535]" {
		t.Errorf("relay ports = %v, %v", got, err)
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
	if err := set.Endpoints.Put(must, maps.Endpoint{Ifindex: 3}); err != nil {
		t.Fatal(err)
	}
	set.Close()
	ro, err := maps.OpenPinned(dir)
	if err != nil {
		t.Fatalf("OpenPinned of a 1024-entry pods map: %v", err)
	}
	defer ro.Close()
	if p, err := ro.Endpoints.Get(must); err != nil || p.Ifindex != 3 {
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
	if err := old.Endpoints.Put(ip, maps.Endpoint{Ifindex: 3}); err != nil {
		t.Fatal(err)
	}

	set, err := maps.Open(maps.Options{PinDir: dir, PodsMaxEntries: 2048, ReplaceIncompatible: true})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	// The endpoints map of another size, and with it its cache.
	if len(set.Replaced) != 2 || !strings.Contains(set.Replaced[0], "MaxEntries") || !strings.Contains(set.Replaced[1], "cache") {
		t.Errorf("Replaced = %v", set.Replaced)
	}
	if set.Endpoints.Map.MaxEntries() != 2048 {
		t.Errorf("new endpoints map holds %d", set.Endpoints.Map.MaxEntries())
	}
	if _, err := set.Endpoints.Get(ip); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("the new map is not empty: %v", err)
	}
	if _, ok, _ := set.Endpoints.Lookup(ip); ok {
		t.Error("the new cache still holds the old map's entry")
	}
	// The old pair lives on for whoever still holds it (attached programs).
	if p, ok, err := old.Endpoints.Lookup(ip); err != nil || !ok || p.Ifindex != 3 {
		t.Errorf("old pair after replacement: %+v %v %v", p, ok, err)
	}
	ro, err := maps.OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	ro.Close()
}

// TestDNSOrigAddedToOldPins opens pins of this layout version made before
// the dnsorig and dnstcp maps existed: Open keeps every other map and its
// entries and creates the new pins beside them; Put and Get round-trip
// both families in both maps.
func TestDNSOrigAddedToOldPins(t *testing.T) {
	dir := pinDir(t)
	first, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("198.18.1.10")
	if err := first.Endpoints.Put(ip, maps.Endpoint{Flags: maps.EndpointNode}); err != nil {
		t.Fatal(err)
	}
	first.Close()
	for _, name := range []string{maps.DNSOrigName, maps.DNSTCPName} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	// status on a node whose agent is older: the other pins open.
	old, err := maps.OpenPinned(dir)
	if err != nil {
		t.Fatalf("open the pins of an agent without the DNS maps: %v", err)
	}
	if old.DNSOrig.Map != nil || old.DNSTCP.Map != nil {
		t.Error("DNS maps opened where there are none")
	}
	old.Close()
	second, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if !slices.Equal(second.Created, []string{maps.DNSOrigName, maps.DNSTCPName}) || len(second.Replaced) != 0 {
		t.Errorf("reopen created %v and replaced %v, want only dnsorig and dnstcp created", second.Created, second.Replaced)
	}
	if _, err := second.Endpoints.Get(ip); err != nil {
		t.Errorf("the endpoints map lost its entry: %v", err)
	}
	for _, c := range [][2]string{{"198.18.1.10:40000", "10.96.0.10:53"}, {"[fd10::10]:40000", "[fd00::a]:53"}} {
		client, orig := netip.MustParseAddrPort(c[0]), netip.MustParseAddrPort(c[1])
		for _, m := range []*maps.DNSOrig{second.DNSOrig, second.DNSTCP} {
			if _, err := m.Get(client); !errors.Is(err, maps.ErrNotFound) {
				t.Errorf("Get(%s) before Put: %v, want ErrNotFound", client, err)
			}
			if err := m.Put(client, orig); err != nil {
				t.Fatal(err)
			}
			if got, err := m.Get(client); err != nil || got != orig {
				t.Errorf("Get(%s) = %s, %v; want %s", client, got, err, orig)
			}
		}
	}
	pinned, err := maps.OpenPinned(dir)
	if err != nil {
		t.Fatalf("OpenPinned: %v", err)
	}
	pinned.Close()
}

// TestMonitorAddedToOldPins: on a node whose pins predate the events and
// monitor maps (upgraded in place), OpenPinned opens the others and says
// there is no monitor; Open creates both beside them; Unpin removes them.
func TestMonitorAddedToOldPins(t *testing.T) {
	dir := pinDir(t)
	first, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	for _, name := range []string{maps.EventsName, maps.MonitorName} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	old, err := maps.OpenPinned(dir)
	if err != nil {
		t.Fatalf("open the pins of an agent without the monitor: %v", err)
	}
	if old.Events != nil || old.Monitor.Map != nil {
		t.Error("monitor maps opened where there are none")
	}
	old.Close()
	second, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(second.Created, []string{maps.EventsName, maps.MonitorName}) || len(second.Replaced) != 0 {
		t.Errorf("reopen created %v and replaced %v, want only events and monitor created", second.Created, second.Replaced)
	}
	second.Close()
	if err := maps.Unpin(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after Unpin: %v", err)
	}
}

// TestMonitorExtend: a monitor moves its deadlines a lease ahead and never
// shortens another monitor's; the every-verdict deadline moves only when
// asked.
func TestMonitorExtend(t *testing.T) {
	set, err := maps.Open(maps.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	before := maps.KtimeNow()
	if _, err := set.Monitor.Extend(false); err != nil {
		t.Fatal(err)
	}
	m, _ := set.Monitor.Get()
	lease := uint64(maps.MonitorLease)
	if m.DropsUntil < before+lease || m.DropsUntil > maps.KtimeNow()+lease || m.VerdictsUntil != 0 {
		t.Errorf("after a drops monitor's extension: %+v, want drops a lease ahead of %d, verdicts 0", m, before)
	}
	later := m.DropsUntil + 10*lease
	if err := set.Monitor.Set(maps.Monitor{DropsUntil: later}); err != nil {
		t.Fatal(err)
	}
	if _, err := set.Monitor.Extend(true); err != nil {
		t.Fatal(err)
	}
	m, _ = set.Monitor.Get()
	if m.DropsUntil != later || m.VerdictsUntil < before+lease {
		t.Errorf("after an every-verdict monitor's extension: %+v, want drops kept at %d and verdicts a lease ahead", m, later)
	}
}
