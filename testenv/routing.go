package testenv

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/internal/testutil"
)

// PolicyRouting is what a network namespace holds of meshredirect's policy
// routing (DESIGN §5, asm.TProxyMark): the rules, of either family, that
// carry TProxyMark or look up TProxyTable, and the routes of either family
// in TProxyTable. The dataplane puts `fwmark TProxyMark/TProxyMask lookup
// TProxyTable` and `local default dev lo table TProxyTable`, once per family,
// in ztunnel's netns (node mode) and in each captured pod's (in-pod mode).
// It is read here through github.com/vishvananda/netlink, not through the
// dataplane's own rtnetlink code, so that a test does not ask the code it
// checks. Plain `ip rule` lists IPv4 rules only: each family is dumped on
// its own.
type PolicyRouting struct {
	// Rules and Routes hold, per family ([0] IPv4, [1] IPv6), what was
	// found, as `ip rule` and `ip route` print it.
	Rules, Routes [2][]string
	// full says, per family, whether the rule and the route are exactly
	// the dataplane's.
	rule, route [2]bool
}

// families are the two the dataplane installs its policy routing for, in
// PolicyRouting's order.
var families = [2]struct {
	nl   int
	name string
}{{netlink.FAMILY_V4, "IPv4"}, {netlink.FAMILY_V6, "IPv6"}}

// ReadPolicyRouting reads meshredirect's policy routing in the netns ns.
func ReadPolicyRouting(ns netns.NsHandle) (PolicyRouting, error) {
	var p PolicyRouting
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return p, fmt.Errorf("open netlink in netns %d: %w", int(ns), err)
	}
	defer h.Close()
	for i, fam := range families {
		rules, err := retryDump(func() ([]netlink.Rule, error) { return h.RuleList(fam.nl) })
		if err != nil {
			return p, fmt.Errorf("list %s rules: %w", fam.name, err)
		}
		for _, r := range rules {
			if r.Mark != mrasm.TProxyMark && r.Table != mrasm.TProxyTable {
				continue
			}
			p.Rules[i] = append(p.Rules[i], ruleString(r))
			if r.Mark == mrasm.TProxyMark && r.Mask != nil && *r.Mask == mrasm.TProxyMask && r.Table == mrasm.TProxyTable {
				p.rule[i] = true
			}
		}
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(fam.nl, &netlink.Route{Table: mrasm.TProxyTable}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return p, fmt.Errorf("list %s routes of table %d: %w", fam.name, mrasm.TProxyTable, err)
		}
		for _, r := range routes {
			dev := fmt.Sprint(r.LinkIndex)
			if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
				dev = l.Attrs().Name
			}
			dst := "default"
			if r.Dst != nil {
				dst = r.Dst.String()
				if ones, _ := r.Dst.Mask.Size(); ones == 0 {
					dst = "default"
				}
			}
			p.Routes[i] = append(p.Routes[i], fmt.Sprintf("%s %s dev %s table %d", routeType(r.Type), dst, dev, r.Table))
			if r.Type == unix.RTN_LOCAL && dst == "default" && dev == "lo" {
				p.route[i] = true
			}
		}
	}
	return p, nil
}

// retryDump runs dump again while the kernel reports that the netns
// changed under it (NLM_F_DUMP_INTR): a dump that was interrupted may
// miss entries.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for range 5 {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return dump()
}

func ruleString(r netlink.Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", r.Priority)
	if r.Mark != 0 || r.Mask != nil {
		fmt.Fprintf(&b, " fwmark %#x", r.Mark)
		if r.Mask != nil {
			fmt.Fprintf(&b, "/%#x", *r.Mask)
		}
	}
	fmt.Fprintf(&b, " lookup %d", r.Table)
	return b.String()
}

func routeType(t int) string {
	switch t {
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_UNICAST:
		return "unicast"
	}
	return fmt.Sprintf("type-%d", t)
}

// Empty tells whether nothing of the policy routing is there, in either
// family.
func (p PolicyRouting) Empty() bool {
	return len(p.Rules[0])+len(p.Rules[1])+len(p.Routes[0])+len(p.Routes[1]) == 0
}

// Complete tells whether the dataplane's rule and route are there in both
// families.
func (p PolicyRouting) Complete() bool {
	return p.rule == [2]bool{true, true} && p.route == [2]bool{true, true}
}

// String lists what is there, one line per rule and route with its
// family: "IPv6 rule 32765: fwmark 0x400/0xfff lookup 100".
func (p PolicyRouting) String() string {
	var lines []string
	for i, fam := range families {
		for _, r := range p.Rules[i] {
			lines = append(lines, fam.name+" rule "+r)
		}
		for _, r := range p.Routes[i] {
			lines = append(lines, fam.name+" route "+r)
		}
	}
	if len(lines) == 0 {
		return "(none)"
	}
	return strings.Join(lines, "\n")
}

// Missing lists what of the dataplane's rule and route, per family, is not
// there: "IPv6 rule fwmark 0x400/0xfff lookup 100".
func (p PolicyRouting) Missing() []string {
	var missing []string
	for i, fam := range families {
		if !p.rule[i] {
			missing = append(missing, fmt.Sprintf("%s rule fwmark %#x/%#x lookup %d", fam.name, mrasm.TProxyMark, mrasm.TProxyMask, mrasm.TProxyTable))
		}
		if !p.route[i] {
			missing = append(missing, fmt.Sprintf("%s route local default dev lo table %d", fam.name, mrasm.TProxyTable))
		}
	}
	return missing
}

// MustPolicyRouting reads the policy routing of the netns ns, failing the
// test on error. what names the netns in the message.
func MustPolicyRouting(tb TB, ns netns.NsHandle, what string) PolicyRouting {
	tb.Helper()
	p, err := ReadPolicyRouting(ns)
	if err != nil {
		tb.Fatalf("read the policy routing of %s: %v", what, err)
	}
	return p
}

// CheckPolicyRouting fails the test unless the netns ns (named what in
// messages) holds the dataplane's complete policy routing when enrolled,
// or nothing of it when not.
func CheckPolicyRouting(tb TB, ns netns.NsHandle, what string, enrolled bool) {
	tb.Helper()
	p := MustPolicyRouting(tb, ns, what)
	switch {
	case enrolled && !p.Complete():
		tb.Errorf("%s lacks %s; it holds:\n%s", what, strings.Join(p.Missing(), ", "), p)
	case !enrolled && !p.Empty():
		tb.Errorf("policy routing left in %s:\n%s", what, p)
	}
}

// InPodSysctls are the sysctls in-pod enrolment sets in a pod's netns
// (relative to /proc/sys), with the values it sets: lo accepts packets
// with a local source and a loopback destination, and no TIME_WAIT.
var InPodSysctls = map[string]string{
	"net/ipv4/conf/lo/accept_local":   "1",
	"net/ipv4/conf/lo/route_localnet": "1",
	"net/ipv4/tcp_max_tw_buckets":     "0",
}

// ReadSysctls reads, in the netns ns, the sysctls named by the keys of
// keys (relative to /proc/sys; the values are not used), failing the test
// on error.
func ReadSysctls(tb TB, ns netns.NsHandle, keys map[string]string) map[string]string {
	tb.Helper()
	v := map[string]string{}
	err := testutil.Do(ns, func() error {
		for k := range keys {
			b, err := os.ReadFile(filepath.Join("/proc/sys", k))
			if err != nil {
				return err
			}
			v[k] = strings.TrimSpace(string(b))
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("read sysctls in netns %d: %v", int(ns), err)
	}
	return v
}

// CheckSysctls fails the test for each sysctl of want whose value in the
// netns ns (named what) is not want's.
func CheckSysctls(tb TB, ns netns.NsHandle, what string, want map[string]string) {
	tb.Helper()
	got := ReadSysctls(tb, ns, want)
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] {
			tb.Errorf("%s: %s is %s, want %s", what, k, got[k], want[k])
		}
	}
}
