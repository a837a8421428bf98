package main

import (
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/dataplane"
)

// scaleSizes are the numbers of entries the per-packet cost is measured
// with; the smallest is the copy as built (its node addresses and its
// pods: a few entries), which stands for "1".
var scaleSizes = []int{1, 1000, 65536}

// ipsetName is the node-level rules' set of ambient pods' IPs; ipsetMaxElem
// is its capacity (ipset's default maxelem, which istio-cni kept).
const (
	ipsetName    = "ztunnel-pods-ips"
	ipsetMaxElem = 65536
)

// fillerIP returns the i-th address of the entries that only fill the map
// or the set: 100.64.0.0/10 (shared address space), which no copy uses.
func fillerIP(i int) netip.Addr {
	base := netip.MustParseAddr("100.64.0.1").As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// sizer sets the number of entries a copy's redirection looks pods up in.
type sizer interface {
	// base is how many entries the copy holds as built.
	base() int
	// resize makes the copy hold n entries (n >= base()).
	resize(n int) error
}

// mapSizer fills an eBPF copy's endpoints map with filler pods that point
// at the server's host veth, as the agent would write real ones
// (dataplane.PutEntries), and takes them out again.
type mapSizer struct {
	c      *Copy
	n0     int
	filled int
}

func newMapSizer(c *Copy) (*mapSizer, error) {
	all, err := c.DP.Maps().Endpoints.All()
	if err != nil {
		return nil, fmt.Errorf("copy %s: read the endpoints map: %w", c.Mode, err)
	}
	return &mapSizer{c: c, n0: len(all)}, nil
}

func (m *mapSizer) base() int { return m.n0 }

func (m *mapSizer) resize(n int) error {
	want := n - m.n0
	if want > m.filled {
		var pods []dataplane.Pod
		for i := m.filled; i < want; i++ {
			pods = append(pods, dataplane.Pod{Name: fmt.Sprintf("filler-%d", i), IPs: []netip.Addr{fillerIP(i)},
				HostIfindex: m.c.Server.HostVethIndex, MAC: m.c.Server.MAC})
		}
		if err := m.c.DP.PutEntries(pods); err != nil {
			return fmt.Errorf("copy %s: fill the endpoints map to %d entries: %w", m.c.Mode, n, err)
		}
	}
	for i := m.filled - 1; i >= want; i-- {
		if err := m.c.DP.Maps().Endpoints.Delete(fillerIP(i)); err != nil {
			return fmt.Errorf("copy %s: take filler %s out of the endpoints map: %w", m.c.Mode, fillerIP(i), err)
		}
	}
	m.filled = want
	all, err := m.c.DP.Maps().Endpoints.All()
	if err != nil {
		return err
	}
	if len(all) != n {
		return fmt.Errorf("copy %s: the endpoints map holds %d entries, want %d", m.c.Mode, len(all), n)
	}
	return nil
}

// ipsetSizer keeps one set per size in iptables-node's node netns, made
// once, and swaps the wanted one in under the name the rules match
// (ipset swap: the rule's reference stays, the contents change at once).
type ipsetSizer struct {
	c *Copy
	// holder names the set whose contents are those of each size.
	holder map[int]string
	live   int
}

func newIpsetSizer(e *env, c *Copy, sizes []int) (*ipsetSizer, error) {
	members := []string{ip4(c.Client.IPv4), ip4(c.Server.IPv4)}
	s := &ipsetSizer{c: c, holder: map[int]string{len(members): ipsetName}, live: len(members)}
	for _, n := range sizes {
		if n <= s.live {
			continue
		}
		name := fmt.Sprintf("scale-%d", n)
		var b strings.Builder
		fmt.Fprintf(&b, "create %s hash:ip maxelem %d\n", name, ipsetMaxElem)
		for _, m := range members {
			fmt.Fprintf(&b, "add %s %s\n", name, m)
		}
		for i := 0; i < n-len(members); i++ {
			fmt.Fprintf(&b, "add %s %s\n", name, fillerIP(i))
		}
		if err := (step{Cmd: "ipset restore", Stdin: b.String()}).run(&c.Node.Namespace); err != nil {
			return nil, fmt.Errorf("copy %s: make ipset %s of %d entries: %w", c.Mode, name, n, err)
		}
		s.holder[n] = name
	}
	return s, nil
}

func (s *ipsetSizer) base() int { return 2 }

func (s *ipsetSizer) resize(n int) error {
	if n == s.live {
		return nil
	}
	other := s.holder[n]
	if err := (step{Cmd: "ipset swap " + ipsetName + " " + other}).run(&s.c.Node.Namespace); err != nil {
		return fmt.Errorf("copy %s: %w", s.c.Mode, err)
	}
	// The live contents moved under the other name.
	s.holder[s.live], s.holder[n] = other, ipsetName
	s.live = n
	return nil
}

// runScalePackets measures the client->proxy hop of an eBPF copy and of
// iptables-node with each size, sizes interleaved round by round.
func runScalePackets(e *env, o options, bo buildOptions, sc *report.Scale) []string {
	var skipped []string
	bo.BPFFS = e.bpffs() // the main run's copies pin in theirs
	bo.E2E = false
	bo.Cgroup = bo.Cgroup.child(e, "scale")
	in := newInjector(e, o.cpu)
	type target struct {
		c   *Copy
		inj injection
		sz  sizer
	}
	var targets []target
	for _, mode := range []string{report.ModeEBPFTCX, report.ModeIptablesNode} {
		c := buildCopy(e, mode, bo)
		h := holdConnection(e, c, report.FamilyIPv4)
		list, _ := injections(c, h)
		var inj injection
		for _, x := range list {
			if x.Path == report.PathClientProxy && x.Segment == report.SegmentEstablished {
				inj = x
			}
		}
		var sz sizer
		var err error
		if c.DP != nil {
			var ms *mapSizer
			ms, err = newMapSizer(c)
			sz = ms
			sc.MapMaxEntries = c.DP.Maps().Endpoints.Map.MaxEntries()
		} else {
			sz, err = newIpsetSizer(e, c, scaleSizes)
			sc.IpsetMaxElem = ipsetMaxElem
		}
		e.check(err)
		targets = append(targets, target{c, inj, sz})
	}
	rounds := max(3, o.kernelRounds/2)
	logf("scale: per packet, %d rounds of %d packets per mode and size %v", rounds, o.kernelPackets, scaleSizes)
	for round := 1; round <= rounds; round++ {
		for i := range scaleSizes {
			n := scaleSizes[(i+round)%len(scaleSizes)]
			for _, t := range targets {
				entries := max(n, t.sz.base())
				e.check(t.sz.resize(entries))
				got, err := in.measure(t.c, t.inj, o.kernelPackets)
				e.check(err)
				if !got.ok {
					e.Fatalf("scale: copy %s with %d entries, round %d: %d of %d segments landed in the %s's netns, expected the %s's (%v)",
						t.c.Mode, entries, round, got.packets, o.kernelPackets, got.landed, t.inj.Expect, got.deltas)
				}
				sc.Packets = append(sc.Packets, report.ScalePacket{Mode: t.c.Mode, Entries: entries, Round: round, Ns: got.ns,
					Packets: o.kernelPackets, Landed: got.landed})
			}
		}
		fmt.Fprint(os.Stderr, ".")
	}
	fmt.Fprintln(os.Stderr)
	for _, t := range targets {
		e.check(t.sz.resize(t.sz.base()))
	}
	sc.PacketRatios = report.ScaleRatios(sc.Packets)
	return skipped
}
