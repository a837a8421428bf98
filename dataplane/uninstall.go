package dataplane

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/resolve"
	"github.com/meshredirect/meshredirect/tc"
)

// Uninstall removes everything meshredirect made on the node: every program
// attachment of ours in the node's netns and in each of the given network
// namespaces, ztunnel's (FindZtunnelNetns) and those of pods captured
// in-pod (FindInPodNetns), whose policy routing goes too and whose sysctls
// are set back (lo's accept_local and route_localnet to 0, tcp_max_tw_buckets to the node's);
// then the tcx link pins and qdisc markers, and the maps' pins. It works
// whether or not an agent runs (a running agent puts back what it
// reconciles), and repeating it is harmless.
func Uninstall(cfg Config, netns ...string) error {
	liftMemlock()
	var errs []error
	detachAll := func(tcCfg tc.Config) {
		m, err := tc.New(tcCfg)
		if err != nil {
			if tcCfg.NetnsPath != "" && errors.Is(err, os.ErrNotExist) {
				return // a pod's netns gone meanwhile took its programs
			}
			errs = append(errs, err)
			return
		}
		defer m.Close()
		all, err := m.ListAll()
		if err != nil {
			errs = append(errs, err)
		}
		// The capture stops before what receives it goes: pod_egress
		// (the last of podHooks) first, as detachPodPrograms does.
		slices.SortStableFunc(all, func(a, b tc.Attachment) int { return hookRank(b) - hookRank(a) })
		for _, a := range all {
			if err := m.Detach(a.Ifindex, a.Direction); err != nil && !isGone(err) {
				errs = append(errs, err)
			}
		}
		if _, err := m.Prune(); err != nil {
			errs = append(errs, err)
		}
	}
	pinDir := cfg.tcPinDir()
	detachAll(cfg.tcConfig(cfg.NodeNetns))
	node, err := openNetns(cfg.NodeNetns)
	if err != nil {
		errs = append(errs, err)
	}
	for _, path := range netns {
		detachAll(cfg.tcConfig(path))
		if err := removeLocalDelivery(path); err != nil {
			errs = append(errs, err)
		}
		if node != nil {
			if err := resetPodSysctls(cfg.sysctls(), node, path); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if node != nil {
		node.Close()
	}
	if err := os.RemoveAll(pinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", pinDir, err))
	}
	if err := maps.Unpin(cfg.pinDir()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// hookRank orders attachments for detaching: the in-pod hooks by their
// place in podHooks, every other one after them.
func hookRank(a tc.Attachment) int {
	return slices.IndexFunc(podHooks, func(h podHook) bool { return h.name == programOf(a) && h.dir == a.Direction })
}

// removeLocalDelivery removes, from the netns at path, what
// ensureLocalDelivery added (in ztunnel's netns, or an in-pod pod's). A netns
// that is gone has nothing left to remove.
func removeLocalDelivery(path string) error {
	h, err := openNetns(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer h.Close()
	var errs []error
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		rules, err := h.rules(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list rules in %s: %w", path, err))
			continue
		}
		for _, r := range rules {
			mark, mask := ruleMark(r)
			if mark != mrasm.TProxyMark || ruleTable(r) != mrasm.TProxyTable {
				continue
			}
			// The selectors we set and the priority the kernel gave it:
			// this rule and no other.
			table := ruleTable(r)
			del := &rtnetlink.RuleMessage{
				Family: r.Family,
				Table:  r.Table,
				Action: r.Action,
				Attributes: &rtnetlink.RuleAttributes{
					Priority: r.Attributes.Priority,
					FwMark:   &mark,
					FwMask:   mask,
					Table:    &table,
				},
			}
			if err := h.deleteRule(del); err != nil {
				errs = append(errs, fmt.Errorf("delete rule fwmark %#x lookup %d in %s: %w", mark, table, path, err))
			}
		}
		routes, err := h.routes(fam, mrasm.TProxyTable)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes of table %d in %s: %w", mrasm.TProxyTable, path, err))
			continue
		}
		for _, r := range routes {
			if err := h.deleteRoute(r); err != nil {
				errs = append(errs, fmt.Errorf("delete route %s table %d in %s: %w", routeDst(r), mrasm.TProxyTable, path, err))
			}
		}
	}
	return errors.Join(errs...)
}

// FindZtunnelNetns finds the network namespaces of the ztunnels the
// datapath was set up for, from the kernel alone (uninstall must work
// without the API and without an agent): the interfaces of the node
// carrying ztunnel_ingress are ztunnel's host veths, and their peers'
// netns ids lead to a path, searched in netnsDirs and /proc.
func FindZtunnelNetns(cfg Config, netnsDirs []string) ([]string, error) {
	liftMemlock()
	m, err := tc.New(cfg.tcConfig(cfg.NodeNetns))
	if err != nil {
		return nil, err
	}
	defer m.Close()
	all, err := m.ListAll()
	if err != nil {
		return nil, err
	}
	r, err := resolve.New(resolve.Config{NodeNetns: cfg.NodeNetns, NetnsDirs: netnsDirs})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	node, err := openNetns(cfg.NodeNetns)
	if err != nil {
		return nil, err
	}
	defer node.Close()
	var (
		paths []string
		errs  []error
	)
	for _, a := range all {
		if programOf(a) != mrasm.ZtunnelIngress {
			continue
		}
		nsid, err := peerNetnsID(node, a.Ifindex)
		if err == nil {
			var path string
			if path, err = r.NetnsPath(nsid); err == nil {
				paths = append(paths, path)
				continue
			}
		}
		errs = append(errs, fmt.Errorf("ztunnel's veth %s: %w", a.Ifname, err))
	}
	return paths, errors.Join(errs...)
}

// peerNetnsID returns the netns id (as the node's netns numbers them) of
// the peer of veth ifindex.
func peerNetnsID(node *nsLink, ifindex int) (int, error) {
	l, err := node.link(ifindex)
	if err != nil {
		return 0, fmt.Errorf("find interface %d in %s: %w", ifindex, node, err)
	}
	if l.peerNsid < 0 {
		return 0, fmt.Errorf("interface %s: its peer is in the same netns", l.name)
	}
	return l.peerNsid, nil
}
