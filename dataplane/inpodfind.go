package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/resolve"
	"github.com/meshredirect/meshredirect/tc"
)

// Uninstall and status find the pods captured in-pod from the kernel alone
// (no API, no agent): every network namespace a bind mount in the netns
// directories or a process is in is a candidate, and it is a pod's of ours
// when our programs are attached there or when it holds our policy routing.

// netnsScan is what scanNetns read in one candidate netns.
type netnsScan struct {
	path string
	// attachments are ours in it: tcx links pinned for its cookie under
	// our pin directory, legacy filters with our name prefix.
	attachments []tc.Attachment
	// routing says, per family (0 IPv4, 1 IPv6), whether the mark rule
	// to TProxyTable and `local default dev lo` in that table are there.
	rule, route [2]bool
	// addrs are its global addresses, with the interfaces holding them.
	addrs []address
	// ifnames names its interfaces by index.
	ifnames map[int]string
}

// routed tells whether the netns has any of our policy routing: a rule
// with our mark or a local route in our table, of either family. A netns
// that kept one of them only (an uninstall that failed half way) is still
// found, so that a second uninstall removes it.
func (s netnsScan) routed() bool {
	return s.rule != [2]bool{} || s.route != [2]bool{}
}

// marked tells whether the netns has a rule with our mark and table, of
// either family: ours by the mark, where a lone `local default dev lo
// table 100` could be another installer's (istio-cni's in-pod TPROXY
// mode routed its pods so).
func (s netnsScan) marked() bool {
	return s.rule != [2]bool{}
}

// policyRouting tells whether the policy routing is complete, both
// families.
func (s netnsScan) policyRouting() bool {
	return s.rule == [2]bool{true, true} && s.route == [2]bool{true, true}
}

// ztunnel tells whether ztunnel's program is attached in the netns: the
// netns of a ztunnel of node mode, which has the policy routing too.
func (s netnsScan) ztunnel() bool {
	return slices.ContainsFunc(s.attachments, func(a tc.Attachment) bool {
		p := programOf(a)
		return p == mrasm.ZtunnelAssign || p == mrasm.ZtunnelEgress
	})
}

// podIPs returns the netns's addresses that are pods in entries.
func (s netnsScan) podIPs(entries map[netip.Addr]maps.Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, a := range s.addrs {
		if e, ok := entries[a.ip]; ok && e.IsPod() && !slices.Contains(out, a.ip) {
			out = append(out, a.ip)
		}
	}
	return out
}

// ours tells whether the netns holds in-pod capture of this install: our
// attachments, or our policy routing in a netns with an address that is a
// pod in our endpoints map (entries nil: the map is gone, a half-done
// uninstall, and any rule with our mark counts). The address check keeps other
// installs' pods out (a node in a box in another test, istio-cni).
func (s netnsScan) ours(entries map[netip.Addr]maps.Endpoint) bool {
	if len(s.attachments) > 0 {
		return true
	}
	if !s.routed() {
		return false
	}
	if entries == nil {
		return s.marked()
	}
	return len(s.podIPs(entries)) > 0
}

// scanNetns reads every candidate netns but the node's: bind mounts in
// netnsDirs (nil: resolve.DefaultNetnsDirs) and /proc/*/ns/net. A candidate
// that goes away meanwhile, or is not a netns, is skipped.
func scanNetns(cfg Config, netnsDirs []string) ([]netnsScan, error) {
	if netnsDirs == nil {
		netnsDirs = resolve.DefaultNetnsDirs
	}
	node, err := openNetns(cfg.NodeNetns)
	if err != nil {
		return nil, err
	}
	nodeKey, err := fdKey(node.fd())
	node.Close()
	if err != nil {
		return nil, fmt.Errorf("stat the node's netns: %w", err)
	}
	var (
		out  []netnsScan
		errs []error
	)
	for _, path := range resolve.Namespaces(netnsDirs, "") {
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil || [2]uint64{st.Dev, st.Ino} == nodeKey {
			continue
		}
		s, err := scanOne(cfg, path)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, errNotNetns) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read netns %s: %w", path, err))
			continue
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}

var errNotNetns = errors.New("not a network namespace")

func fdKey(fd int) ([2]uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return [2]uint64{}, err
	}
	return [2]uint64{st.Dev, st.Ino}, nil
}

func scanOne(cfg Config, path string) (netnsScan, error) {
	s := netnsScan{path: path, ifnames: map[int]string{}}
	h, err := openNetns(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return s, os.ErrNotExist
		}
		// A bind mount of something else in a netns directory.
		return s, fmt.Errorf("%w: %v", errNotNetns, err)
	}
	defer h.Close()
	links, err := h.links()
	if err != nil {
		return s, err
	}
	for _, l := range links {
		s.ifnames[l.index] = l.name
	}
	for i, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		rules, err := h.rules(fam)
		if err != nil {
			return s, err
		}
		for _, r := range rules {
			mark, _ := ruleMark(r)
			if mark == mrasm.TProxyMark && ruleTable(r) == mrasm.TProxyTable {
				s.rule[i] = true
			}
		}
		routes, err := h.routes(fam, mrasm.TProxyTable)
		if err != nil {
			return s, err
		}
		for _, r := range routes {
			if r.Type == unix.RTN_LOCAL && routeDst(r).Bits() == 0 && s.ifnames[int(r.Attributes.OutIface)] == "lo" {
				s.route[i] = true
			}
		}
		addrs, err := h.addresses(fam)
		if err != nil {
			return s, err
		}
		for _, a := range addrs {
			if a.scope == unix.RT_SCOPE_UNIVERSE && !a.ip.IsLoopback() && !a.ip.IsLinkLocalUnicast() {
				s.addrs = append(s.addrs, a)
			}
		}
	}
	m, err := tc.New(cfg.tcConfig(path))
	if err != nil {
		return s, fmt.Errorf("open tc manager: %w", err)
	}
	defer m.Close()
	if s.attachments, err = m.ListAll(); err != nil {
		return s, err
	}
	return s, nil
}

// FindInPodNetns finds, from the kernel alone, the network namespaces that
// hold in-pod capture of this install (cfg's pin directory): those of a
// bind mount in netnsDirs (nil: resolve.DefaultNetnsDirs) or of a process
// (/proc/<pid>/ns/net) that hold our programs, or our policy routing with
// one of their addresses in our endpoints map. The node's netns is left
// out; the netns of a ztunnel of node mode, which has the same routing,
// may be among them (Uninstall's cleanup of both is the same). Pass them
// to Uninstall.
func FindInPodNetns(cfg Config, netnsDirs []string) ([]string, error) {
	liftMemlock()
	entries := pinnedEntries(cfg)
	scans, err := scanNetns(cfg, netnsDirs)
	var paths []string
	for _, s := range scans {
		if s.ours(entries) {
			paths = append(paths, s.path)
		}
	}
	return paths, err
}

// pinnedEntries reads the pinned endpoints map; nil when it cannot be
// opened (not pinned, or of another layout).
func pinnedEntries(cfg Config) map[netip.Addr]maps.Endpoint {
	set, err := maps.OpenPinned(cfg.pinDir())
	if err != nil {
		return nil
	}
	defer set.Close()
	entries, err := set.Endpoints.All()
	if err != nil {
		return nil
	}
	if entries == nil {
		entries = map[netip.Addr]maps.Endpoint{}
	}
	return entries
}
