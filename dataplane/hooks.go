package dataplane

import (
	"fmt"

	"github.com/meshredirect/meshredirect/tc"
)

// The operator's tools (meshredirect list and detach) work on the hooks
// of any netns without loading the programs or opening the maps: they must
// work on a node where nothing else of meshredirect is left.

// ListAttachments lists our attachments in the netns cfg.NodeNetns names:
// on the interface called iface, or on every interface when iface is empty.
func ListAttachments(cfg Config, iface string) ([]Attachment, error) {
	liftMemlock()
	m, err := tc.New(cfg.tcConfig(cfg.NodeNetns))
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if iface == "" {
		return m.ListAll()
	}
	ifindex, err := interfaceIndex(cfg.NodeNetns, iface)
	if err != nil {
		return nil, err
	}
	return m.List(ifindex)
}

// Detach takes our programs off the given hooks of the interface called
// iface in the netns cfg.NodeNetns names (both hooks when dirs is empty).
// Other tools' filters and links stay, and the clsact qdisc goes only if we
// created it and it is left empty.
func Detach(cfg Config, iface string, dirs ...Direction) error {
	liftMemlock()
	if len(dirs) == 0 {
		dirs = []Direction{Ingress, Egress}
	}
	m, err := tc.New(cfg.tcConfig(cfg.NodeNetns))
	if err != nil {
		return err
	}
	defer m.Close()
	ifindex, err := interfaceIndex(cfg.NodeNetns, iface)
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := m.Detach(ifindex, d); err != nil {
			return fmt.Errorf("detach from %s %s: %w", iface, d, err)
		}
	}
	return nil
}

// ParseDirection returns the hook called s: "ingress" or "egress".
func ParseDirection(s string) (Direction, error) {
	switch d := Direction(s); d {
	case Ingress, Egress:
		return d, nil
	}
	return "", fmt.Errorf("invalid direction %q: want ingress or egress", s)
}

// interfaceIndex returns the index of the interface called name in the
// netns at path (this thread's when empty).
func interfaceIndex(path, name string) (int, error) {
	h, err := openNetns(path)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.linkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find interface %s in %s: %w", name, h, err)
	}
	return l.index, nil
}
