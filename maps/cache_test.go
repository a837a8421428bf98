package maps_test

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
)

// colliding returns n IPv4 addresses that all have the cache slot of first.
func colliding(first netip.Addr, n int) []netip.Addr {
	want := maps.SlotOf(maps.KeyFor(first))
	out := []netip.Addr{first}
	for a := 1; len(out) < n; a++ {
		for b := 0; b < 256 && len(out) < n; b += 37 {
			// The slot of a.b.c.d is (a|b<<8) ^ (c|d<<8) ^ 0xffff.
			cd := uint32(a|b<<8) ^ want ^ 0xffff
			addr := netip.AddrFrom4([4]byte{byte(a), byte(b), byte(cd), byte(cd >> 8)})
			if addr != first {
				out = append(out, addr)
			}
		}
	}
	for _, a := range out {
		if maps.SlotOf(maps.KeyFor(a)) != want {
			panic("colliding: " + a.String() + " is not in the slot")
		}
	}
	return out
}

func TestSlotOfSpreadsASubnet(t *testing.T) {
	// A /16 of pods, or 65536 consecutive IPv6 addresses, never collide.
	seen := map[uint32]netip.Addr{}
	for i := 0; i < 1<<16; i++ {
		a := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
		s := maps.SlotOf(maps.KeyFor(a))
		if prev, ok := seen[s]; ok {
			t.Fatalf("%s and %s share slot %d", prev, a, s)
		}
		seen[s] = a
	}
	clear(seen)
	base := netip.MustParseAddr("fd10:6d72:0:1::").As16()
	for i := 0; i < 1<<16; i++ {
		b := base
		b[14], b[15] = byte(i>>8), byte(i)
		a := netip.AddrFrom16(b)
		s := maps.SlotOf(maps.KeyFor(a))
		if prev, ok := seen[s]; ok {
			t.Fatalf("%s and %s share slot %d", prev, a, s)
		}
		seen[s] = a
	}
}

// TestCacheFollowsTheMap puts and deletes addresses, many of them sharing a
// slot, in a random order, and after every step finds each address the way
// the programs do (Lookup: the slot, then the map if the slot says so):
// exactly the map's entries are found, with their values.
func TestCacheFollowsTheMap(t *testing.T) {
	testutil.RequirePrivileged(t)
	set, err := maps.Open(maps.Options{PodsMaxEntries: 256})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()

	addrs := colliding(netip.MustParseAddr("198.18.16.5"), 6)
	addrs = append(addrs, colliding(netip.MustParseAddr("198.18.17.9"), 3)...)
	addrs = append(addrs, netip.MustParseAddr("fd10:6d72:0:1::5"), netip.MustParseAddr("fd10:6d72:0:1::6"))
	model := map[netip.Addr]maps.Endpoint{}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := 0; step < 400; step++ {
		a := addrs[rng.IntN(len(addrs))]
		if rng.IntN(3) == 0 {
			if err := set.Endpoints.Delete(a); err != nil {
				t.Fatal(err)
			}
			delete(model, a)
		} else {
			ep := maps.Endpoint{Ifindex: uint32(step + 1), Flags: maps.EndpointPod}
			if err := set.Endpoints.Put(a, ep); err != nil {
				t.Fatal(err)
			}
			model[a] = ep
		}
		for _, b := range addrs {
			got, ok, err := set.Endpoints.Lookup(b)
			if err != nil {
				t.Fatal(err)
			}
			want, in := model[b]
			if ok != in || got != want {
				t.Fatalf("step %d: Lookup(%s) = %+v, %v; the map says %+v, %v", step, b, got, ok, want, in)
			}
		}
	}
	if n, err := set.Endpoints.Sync(); err != nil || n != 0 {
		t.Errorf("Sync of a cache in step rewrote %d slots (%v), want 0", n, err)
	}
}

// TestSyncHealsTheCache: a writer killed between the map and the slot
// leaves an address only the map knows, or a slot the map no longer backs;
// Sync (run by every Open of pins) mends both.
func TestSyncHealsTheCache(t *testing.T) {
	dir := pinDir(t)
	set, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	onlyInMap := netip.MustParseAddr("198.18.16.7")
	if err := set.Endpoints.Map.Put(maps.KeyFor(onlyInMap), maps.Endpoint{Ifindex: 7, Flags: maps.EndpointPod}); err != nil {
		t.Fatal(err)
	}
	stale := netip.MustParseAddr("198.18.16.8")
	k := maps.KeyFor(stale)
	if err := set.Endpoints.Cache.Put(maps.SlotOf(k), maps.Slot{Key: k, Endpoint: maps.Endpoint{Ifindex: 8, Flags: maps.EndpointPod}}); err != nil {
		t.Fatal(err)
	}
	set.Close()

	set, err = maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if ep, ok, _ := set.Endpoints.Lookup(onlyInMap); !ok || ep.Ifindex != 7 {
		t.Errorf("after reopen %s is not found through the cache", onlyInMap)
	}
	if _, ok, _ := set.Endpoints.Lookup(stale); ok {
		t.Errorf("after reopen the cache still holds %s, which the map lacks", stale)
	}
}

// TestLegacyPinsRemoved: an upgrade from layout 1 leaves no pods or node
// pin behind (programs attached with those maps keep them until replaced).
func TestLegacyPinsRemoved(t *testing.T) {
	dir := pinDir(t)
	first, err := maps.Open(maps.Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	for _, name := range []string{"pods", "node"} {
		// Any pinned object will do for the name: pin an endpoints map.
		m, err := maps.Open(maps.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Endpoints.Map.Pin(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	set, err := maps.Open(maps.Options{PinDir: dir, ReplaceIncompatible: true})
	if err != nil {
		t.Fatal(err)
	}
	set.Close()
	for _, name := range []string{"pods", "node"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("legacy pin %s is still there: %v", name, err)
		}
	}
}
