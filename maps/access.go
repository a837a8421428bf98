package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned by lookups of an entry that does not exist.
var ErrNotFound = ebpf.ErrKeyNotExist

// Pods is the pods map: every enrolled pod IP of this node.
type Pods struct{ *ebpf.Map }

// Put adds or replaces the entry of ip.
func (p *Pods) Put(ip netip.Addr, pod Pod) error {
	if !ip.IsValid() {
		return fmt.Errorf("put pod entry: invalid IP")
	}
	if err := p.Map.Put(KeyFor(ip), pod); err != nil {
		if errors.Is(err, unix.E2BIG) {
			// The kernel's E2BIG, which cilium/ebpf words "key too big".
			return fmt.Errorf("put pod entry %s: %w (the pods map holds %d entries; raise --pods-max-entries): %w", ip, ErrMapFull, p.Map.MaxEntries(), err)
		}
		return fmt.Errorf("put pod entry %s: %w", ip, err)
	}
	return nil
}

// ErrMapFull is wrapped by Pods.Put when the pods map has no room.
var ErrMapFull = errors.New("the pods map is full")

// Get returns the entry of ip, or an error wrapping ErrNotFound.
func (p *Pods) Get(ip netip.Addr) (Pod, error) {
	var pod Pod
	if err := p.Map.Lookup(KeyFor(ip), &pod); err != nil {
		return Pod{}, fmt.Errorf("look up pod entry %s: %w", ip, err)
	}
	return pod, nil
}

// Delete removes the entry of ip. Deleting a missing entry is not an error,
// so that unenrolment can be repeated.
func (p *Pods) Delete(ip netip.Addr) error {
	if err := p.Map.Delete(KeyFor(ip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete pod entry %s: %w", ip, err)
	}
	return nil
}

// All returns every entry of the map.
func (p *Pods) All() (map[netip.Addr]Pod, error) {
	out := make(map[netip.Addr]Pod)
	var (
		key PodKey
		pod Pod
	)
	it := p.Map.Iterate()
	for it.Next(&key, &pod) {
		out[key.Addr()] = pod
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate pods map: %w", err)
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

// Node is the node map: the node's own addresses.
type Node struct{ *ebpf.Map }

// Set writes the node's IPv4 and IPv6 addresses. An invalid address clears
// its slot; an address of the wrong family is an error.
func (n *Node) Set(v4, v6 netip.Addr) error {
	if v4.IsValid() && !v4.Unmap().Is4() {
		return fmt.Errorf("set node IPv4 address: %s is not IPv4", v4)
	}
	if v6.IsValid() && (!v6.Is6() || v6.Is4In6()) {
		return fmt.Errorf("set node IPv6 address: %s is not IPv6", v6)
	}
	for _, slot := range []struct {
		idx  uint32
		addr netip.Addr
	}{{NodeIPv4, v4}, {NodeIPv6, v6}} {
		var val NodeAddr
		if slot.addr.IsValid() {
			val.Addr = slot.addr.As16()
		}
		if err := n.Map.Put(slot.idx, val); err != nil {
			return fmt.Errorf("set node address %s: %w", slot.addr, err)
		}
	}
	return nil
}

// Get returns the node's addresses; an unset one is the zero netip.Addr.
func (n *Node) Get() (v4, v6 netip.Addr, err error) {
	var val NodeAddr
	if err := n.Map.Lookup(NodeIPv4, &val); err != nil {
		return v4, v6, fmt.Errorf("look up node IPv4 address: %w", err)
	}
	if val != (NodeAddr{}) {
		v4 = netip.AddrFrom16(val.Addr).Unmap()
	}
	if err := n.Map.Lookup(NodeIPv6, &val); err != nil {
		return v4, v6, fmt.Errorf("look up node IPv6 address: %w", err)
	}
	if val != (NodeAddr{}) {
		v6 = netip.AddrFrom16(val.Addr)
	}
	return v4, v6, nil
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
