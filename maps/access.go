package maps

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned by lookups of an entry that does not exist.
var ErrNotFound = ebpf.ErrKeyNotExist

// Endpoints is the endpoints map and its cache: every address of this node
// that the programs must know, an ambient pod's or the node's own. The map
// is the truth; the cache holds, in each slot, one address of the map whose
// index is that slot (see [Slot]). Its methods keep the two in step; they
// are safe for concurrent use by one process, which must be the only
// writer (the agent).
type Endpoints struct {
	// Map is the hash map of every entry.
	Map *ebpf.Map
	// Cache is the array of slots in front of it.
	Cache *ebpf.Map

	mu sync.Mutex
}

// ErrMapFull is wrapped by Endpoints.Put when the endpoints map has no room.
var ErrMapFull = errors.New("the endpoints map is full")

// Put adds or replaces the entry of addr.
//
// The map is written first, then the slot: a program that reads the slot
// between the two finds it empty or holding another address, and asks the
// map, which has the entry already.
func (e *Endpoints) Put(addr netip.Addr, ep Endpoint) error {
	if !addr.IsValid() || addr.Unmap().IsUnspecified() {
		return fmt.Errorf("put endpoint %s: not an address", addr)
	}
	k := KeyFor(addr)
	if err := e.Map.Put(k, ep); err != nil {
		if errors.Is(err, unix.E2BIG) {
			// The kernel's E2BIG, which cilium/ebpf words "key too big".
			return fmt.Errorf("put endpoint %s: %w (the endpoints map holds %d entries; raise --pods-max-entries): %w", addr, ErrMapFull, e.Map.MaxEntries(), err)
		}
		return fmt.Errorf("put endpoint %s: %w", addr, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	i := SlotOf(k)
	s, err := e.slot(i)
	if err != nil {
		return err
	}
	switch {
	case s.Key == k || s.Key == (Key{}):
		s.Key, s.Endpoint = k, ep
	case s.Overflow == 0:
		s.Overflow = 1
	default:
		return nil
	}
	return e.setSlot(i, s)
}

// Get returns the entry of addr, or an error wrapping ErrNotFound.
func (e *Endpoints) Get(addr netip.Addr) (Endpoint, error) {
	var ep Endpoint
	if err := e.Map.Lookup(KeyFor(addr), &ep); err != nil {
		return Endpoint{}, fmt.Errorf("look up endpoint %s: %w", addr, err)
	}
	return ep, nil
}

// Delete removes the entry of addr. Deleting a missing entry is not an
// error, so that unenrolment can be repeated.
//
// The slot goes first, then the map entry. When the slot held addr and other
// addresses share its index, one of them takes the slot, in two writes: an
// empty slot with Overflow set (every lookup of that index asks the map,
// which holds them all), then the new occupant, so that no program reads a
// slot half of one address and half of another.
func (e *Endpoints) Delete(addr netip.Addr) error {
	k := KeyFor(addr)
	e.mu.Lock()
	defer e.mu.Unlock()
	i := SlotOf(k)
	s, err := e.slot(i)
	if err != nil {
		return err
	}
	if s.Key == k {
		var next Slot
		if s.Overflow != 0 {
			others, err := e.sharing(i, k)
			if err != nil {
				return err
			}
			if len(others) > 0 {
				if err := e.setSlot(i, Slot{Overflow: 1}); err != nil {
					return err
				}
				next = others[0]
				if len(others) > 1 {
					next.Overflow = 1
				}
			}
		}
		if err := e.setSlot(i, next); err != nil {
			return err
		}
	}
	if err := e.Map.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s: %w", addr, err)
	}
	if s.Key != k && s.Overflow != 0 {
		// addr may have been the last address in the map alone.
		others, err := e.sharing(i, s.Key)
		if err != nil {
			return err
		}
		if len(others) == 0 {
			s.Overflow = 0
			return e.setSlot(i, s)
		}
	}
	return nil
}

// All returns every entry of the map.
func (e *Endpoints) All() (map[netip.Addr]Endpoint, error) {
	out := make(map[netip.Addr]Endpoint)
	var (
		key Key
		ep  Endpoint
	)
	it := e.Map.Iterate()
	for it.Next(&key, &ep) {
		out[key.Addr()] = ep
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate endpoints map: %w", err)
	}
	return out, nil
}

// Pods returns the entries of ambient pods.
func (e *Endpoints) Pods() (map[netip.Addr]Endpoint, error) {
	all, err := e.All()
	if err != nil {
		return nil, err
	}
	for a, ep := range all {
		if !ep.IsPod() {
			delete(all, a)
		}
	}
	return all, nil
}

// Lookup finds addr the way the programs do: in its slot, and in the map
// only when the slot holds another address and says the map has more. It
// exists so that tests can check the cache against the map.
func (e *Endpoints) Lookup(addr netip.Addr) (Endpoint, bool, error) {
	k := KeyFor(addr)
	s, err := e.slot(SlotOf(k))
	if err != nil {
		return Endpoint{}, false, err
	}
	if s.Key == k {
		return s.Endpoint, true, nil
	}
	if s.Overflow == 0 {
		return Endpoint{}, false, nil
	}
	ep, err := e.Get(addr)
	if errors.Is(err, ErrNotFound) {
		return Endpoint{}, false, nil
	}
	return ep, err == nil, err
}

// Sync makes the cache agree with the map where it does not (an earlier
// writer stopped between the two, or the cache is new): each address of the
// map is reachable through its slot, and no slot holds an address the map
// lacks. A slot that already holds a valid occupant keeps it, so a cache in
// step is left untouched. It returns how many slots it rewrote.
func (e *Endpoints) Sync() (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	all, err := e.All()
	if err != nil {
		return 0, err
	}
	bySlot := map[uint32][]Key{}
	for a := range all {
		k := KeyFor(a)
		bySlot[SlotOf(k)] = append(bySlot[SlotOf(k)], k)
	}
	current, err := e.slots()
	if err != nil {
		return 0, err
	}
	rewritten := 0
	for i := uint32(0); i < CacheSlots; i++ {
		keys := bySlot[i]
		want := Slot{}
		if len(keys) > 0 {
			occupant := keys[0]
			for _, k := range keys {
				if k == current[i].Key {
					occupant = k
					break
				}
				if bytes.Compare(k[:], occupant[:]) < 0 {
					occupant = k
				}
			}
			want = Slot{Key: occupant, Endpoint: all[occupant.Addr()]}
			if len(keys) > 1 {
				want.Overflow = 1
			}
		}
		if current[i] == want {
			continue
		}
		if current[i].Key != want.Key && current[i].Key != (Key{}) && want.Key != (Key{}) {
			if err := e.setSlot(i, Slot{Overflow: 1}); err != nil {
				return rewritten, err
			}
		}
		if err := e.setSlot(i, want); err != nil {
			return rewritten, err
		}
		rewritten++
	}
	return rewritten, nil
}

// sharing returns the entries of the map other than exclude whose slot is i.
func (e *Endpoints) sharing(i uint32, exclude Key) ([]Slot, error) {
	var (
		out []Slot
		key Key
		ep  Endpoint
	)
	it := e.Map.Iterate()
	for it.Next(&key, &ep) {
		if key != exclude && SlotOf(key) == i {
			out = append(out, Slot{Key: key, Endpoint: ep})
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate endpoints map: %w", err)
	}
	return out, nil
}

func (e *Endpoints) slot(i uint32) (Slot, error) {
	var s Slot
	if err := e.Cache.Lookup(i, &s); err != nil {
		return Slot{}, fmt.Errorf("read endpoints cache slot %d: %w", i, err)
	}
	return s, nil
}

func (e *Endpoints) setSlot(i uint32, s Slot) error {
	if err := e.Cache.Put(i, s); err != nil {
		return fmt.Errorf("write endpoints cache slot %d: %w", i, err)
	}
	return nil
}

// slots reads the whole cache, in batches where the kernel has them.
func (e *Endpoints) slots() ([]Slot, error) {
	out := make([]Slot, CacheSlots)
	keys := make([]uint32, 4096)
	vals := make([]Slot, 4096)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := e.Cache.BatchLookup(&cursor, keys, vals, nil)
		for j := 0; j < n; j++ {
			out[keys[j]] = vals[j]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read endpoints cache: %w", err)
		}
	}
	for i := range out {
		s, err := e.slot(uint32(i))
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}

// ZtunnelMap is the ztunnel map: the node's proxy, one entry.
type ZtunnelMap struct{ *ebpf.Map }

// Set replaces the ztunnel entry.
func (z *ZtunnelMap) Set(zt Ztunnel) error {
	if err := z.Map.Put(uint32(0), zt); err != nil {
		return fmt.Errorf("set ztunnel entry: %w", err)
	}
	return nil
}

// Get returns the ztunnel entry (all zero when none was set).
func (z *ZtunnelMap) Get() (Ztunnel, error) {
	var zt Ztunnel
	if err := z.Map.Lookup(uint32(0), &zt); err != nil {
		return Ztunnel{}, fmt.Errorf("look up ztunnel entry: %w", err)
	}
	return zt, nil
}

// Relays is the relays map: the node's UDP tunnel ports.
type Relays struct{ *ebpf.Map }

// Set replaces the relay ports: one write of the whole bitmap.
func (r *Relays) Set(ports []uint16) error {
	var v RelayPorts
	for _, p := range ports {
		v.Set(p)
	}
	if err := r.Map.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("set relay ports: %w", err)
	}
	return nil
}

// Get returns the relay ports.
func (r *Relays) Get() ([]uint16, error) {
	var v RelayPorts
	if err := r.Map.Lookup(uint32(0), &v); err != nil {
		return nil, fmt.Errorf("look up relay ports: %w", err)
	}
	return v.Ports(), nil
}

// Stats is the stats map: packets and bytes per verdict, per CPU.
type Stats struct{ *ebpf.Map }

// Read returns the counters of every verdict summed over all CPUs.
func (s *Stats) Read() (map[Verdict]Counter, error) {
	out := make(map[Verdict]Counter, numVerdicts)
	for _, v := range Verdicts() {
		var perCPU []Counter
		if err := s.Map.Lookup(uint32(v), &perCPU); err != nil {
			return nil, fmt.Errorf("read stats of %s: %w", v, err)
		}
		var sum Counter
		for _, c := range perCPU {
			sum.Packets += c.Packets
			sum.Bytes += c.Bytes
		}
		out[v] = sum
	}
	return out, nil
}

// MonitorMap is the monitor map: until when the programs write events.
type MonitorMap struct{ *ebpf.Map }

// MonitorLease is how far ahead [MonitorMap.Extend] sets a deadline: a
// monitor extends it every MonitorLease/2, so a monitor that dies without
// cleaning up stops costing the programs within MonitorLease.
const MonitorLease = 2 * time.Second

// Get returns the monitor entry.
func (m *MonitorMap) Get() (Monitor, error) {
	var v Monitor
	if err := m.Map.Lookup(uint32(0), &v); err != nil {
		return Monitor{}, fmt.Errorf("look up monitor entry: %w", err)
	}
	return v, nil
}

// Set replaces the monitor entry.
func (m *MonitorMap) Set(v Monitor) error {
	if err := m.Map.Put(uint32(0), v); err != nil {
		return fmt.Errorf("set monitor entry: %w", err)
	}
	return nil
}

// Extend moves the deadline of drops (and of every verdict, with
// verdicts) to MonitorLease from now, unless it is later already: several
// monitors share the entry, and none shortens another's deadline. Two
// monitors extending at once may lose one's write, but the other's
// deadline is then as late, and the next extension comes well before it.
// It returns the entry as it read it: Lost, for the monitor's report. A
// program that counts a lost event between the read and the write has its
// count undone (microseconds, once a second): Lost is a floor.
func (m *MonitorMap) Extend(verdicts bool) (Monitor, error) {
	v, err := m.Get()
	if err != nil {
		return Monitor{}, err
	}
	read := v
	until := KtimeNow() + uint64(MonitorLease)
	v.DropsUntil = max(v.DropsUntil, until)
	if verdicts {
		v.VerdictsUntil = max(v.VerdictsUntil, until)
	}
	return read, m.Set(v)
}

// KtimeNow is bpf_ktime_get_ns from user space: CLOCK_MONOTONIC in
// nanoseconds.
func KtimeNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// CLOCK_MONOTONIC is always there on Linux.
		panic(fmt.Sprintf("clock_gettime(CLOCK_MONOTONIC): %v", err))
	}
	return uint64(ts.Nano())
}
