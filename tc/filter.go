package tc

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	gotc "github.com/florianl/go-tc"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TCA_BPF_* (include/uapi/linux/pkt_cls.h); golang.org/x/sys/unix lacks
// them and go-tc keeps its own unexported.
const (
	tcaBPFFD            = 6
	tcaBPFName          = 7
	tcaBPFFlags         = 8
	tcaBPFID            = 11
	tcaBPFFlagActDirect = 1 // TCA_BPF_FLAG_ACT_DIRECT: the program's return value is the verdict
)

// filterProtocol is the protocol of our filters, ETH_P_ALL in network byte
// order as tcm_info holds it: the program sees every frame, ARP and IPv6
// included, and decides itself.
const filterProtocol = uint32(unix.ETH_P_ALL>>8 | (unix.ETH_P_ALL&0xff)<<8)

// filter is one entry of a filter dump. Each priority (a tcf_proto) is
// dumped once with handle 0 and no options, then once per filter.
type filter struct {
	tcmsg
	kind   string
	chain  uint32
	name   string // TCA_BPF_NAME
	progID ebpf.ProgramID
	direct bool
}

func (f filter) priority() uint16 { return uint16(f.info >> 16) }

// ours reports whether the filter is one of meshredirect's.
func (f filter) ours() bool {
	return f.kind == "bpf" && f.handle != 0 && strings.HasPrefix(f.name, FilterNamePrefix)
}

// attachFilter replaces, or adds, our filter at the configured priority and
// handle of the hook, and then removes any other filter of ours from the
// hook (left at another priority by an earlier configuration).
func (m *Manager) attachFilter(ifc iface, dir Direction, name string, prog *ebpf.Program) (Attachment, error) {
	if err := m.ensureClsact(ifc); err != nil {
		return Attachment{}, fmt.Errorf("attach filter to %s %s: %w", ifc, dir, err)
	}
	fs, err := m.filters(ifc, dir)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach filter to %s %s: %w", ifc, dir, err)
	}
	slot := filter{tcmsg: tcmsg{
		ifindex: ifc.index,
		handle:  m.handle,
		parent:  hookParent(dir),
		info:    uint32(m.priority)<<16 | filterProtocol,
	}, kind: "bpf"}
	for _, f := range fs {
		if f.chain == 0 && f.priority() == m.priority && f.handle == m.handle && !f.ours() {
			return Attachment{}, fmt.Errorf("attach filter to %s %s: %w (priority %d handle %#x holds %s filter %q; configure another priority)",
				ifc, dir, ErrForeignFilter, m.priority, m.handle, f.kind, f.name)
		}
	}

	if err := m.replaceFilter(slot, FilterNamePrefix+name, prog); err != nil {
		return Attachment{}, fmt.Errorf("attach filter to %s %s: %w", ifc, dir, err)
	}
	if err := m.removeFilters(ifc, dir, &slot); err != nil {
		return Attachment{}, err
	}

	a := Attachment{
		Ifindex:   ifc.index,
		Ifname:    ifc.name,
		Direction: dir,
		Mode:      ModeLegacy,
		Name:      name,
		Priority:  m.priority,
		Handle:    m.handle,
	}
	if info, err := prog.Info(); err == nil {
		a.ProgramID, _ = info.ID()
	}
	return a, nil
}

// replaceFilter sends RTM_NEWTFILTER with NLM_F_CREATE|NLM_F_REPLACE, as
// "tc filter replace" does: it creates the filter, or swaps the program of
// the one at the same priority, protocol and handle in one step
// (cls_bpf_change replaces the old cls_bpf_prog under RCU), so packets meet
// either the old program or the new one, never none.
func (m *Manager) replaceFilter(slot filter, name string, prog *ebpf.Program) error {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.TCA_KIND, "bpf")
	ae.Nested(unix.TCA_OPTIONS, func(nae *netlink.AttributeEncoder) error {
		nae.Uint32(tcaBPFFD, uint32(prog.FD()))
		nae.String(tcaBPFName, name)
		nae.Uint32(tcaBPFFlags, tcaBPFFlagActDirect)
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return fmt.Errorf("encode filter: %w", err)
	}
	return m.rtnl.execute(unix.RTM_NEWTFILTER, netlink.Create|netlink.Replace, append(slot.marshal(), attrs...))
}

// removeFilters deletes every filter of ours from the hook but keep.
func (m *Manager) removeFilters(ifc iface, dir Direction, keep *filter) error {
	fs, err := m.filters(ifc, dir)
	if err != nil {
		return fmt.Errorf("detach filter from %s %s: %w", ifc, dir, err)
	}
	var errs []error
	for _, f := range fs {
		if !f.ours() {
			continue
		}
		if keep != nil && f.chain == 0 && f.info == keep.info && f.handle == keep.handle {
			continue
		}
		if err := m.deleteFilter(f); err != nil {
			errs = append(errs, fmt.Errorf("detach filter from %s %s: %w", ifc, dir, err))
		}
	}
	return errors.Join(errs...)
}

// deleteFilter deletes one filter by priority, protocol and handle. The
// handle is never 0, which would delete every filter at the priority.
func (m *Manager) deleteFilter(f filter) error {
	if f.handle == 0 {
		return fmt.Errorf("refusing to delete filter handle 0 at priority %d (that is every filter there)", f.priority())
	}
	obj := &gotc.Object{
		Msg: gotc.Msg{
			Family:  unix.AF_UNSPEC,
			Ifindex: uint32(f.ifindex),
			Handle:  f.handle,
			Parent:  f.parent,
			Info:    f.info,
		},
		Attribute: gotc.Attribute{Kind: f.kind},
	}
	if f.chain != 0 {
		obj.Chain = &f.chain
	}
	err := m.retry.do(func() error { return m.tc.Filter().Delete(obj) })
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete filter %q priority %d handle %#x: %w", f.name, f.priority(), f.handle, err)
	}
	return nil
}

// filters dumps the hook's filters, all of them, in every chain. A missing
// clsact qdisc means no filters.
func (m *Manager) filters(ifc iface, dir Direction) ([]filter, error) {
	msgs, err := m.rtnl.dump(unix.RTM_GETTFILTER, tcmsg{ifindex: ifc.index, parent: hookParent(dir)}.marshal())
	if err != nil {
		return nil, fmt.Errorf("list filters of %s %s: %w", ifc, dir, err)
	}
	var fs []filter
	for _, msg := range msgs {
		if msg.Header.Type != unix.RTM_NEWTFILTER {
			continue
		}
		f, err := parseFilter(msg.Data)
		if err != nil {
			return nil, fmt.Errorf("list filters of %s %s: %w", ifc, dir, err)
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// parseFilter decodes what we need of a filter and skips everything else.
func parseFilter(b []byte) (filter, error) {
	t, attrs, err := parseTcmsg(b)
	if err != nil {
		return filter{}, err
	}
	f := filter{tcmsg: t}
	var opts []byte
	f.kind, opts, err = parseKind(attrs)
	if err != nil {
		return filter{}, err
	}
	ad, err := netlink.NewAttributeDecoder(attrs)
	if err != nil {
		return filter{}, fmt.Errorf("decode filter attributes: %w", err)
	}
	for ad.Next() {
		if ad.Type() == unix.TCA_CHAIN {
			f.chain = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return filter{}, fmt.Errorf("decode filter attributes: %w", err)
	}
	if f.kind != "bpf" || len(opts) == 0 {
		return f, nil
	}

	ad, err = netlink.NewAttributeDecoder(opts)
	if err != nil {
		return filter{}, fmt.Errorf("decode bpf filter options: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case tcaBPFName:
			f.name = ad.String()
		case tcaBPFID:
			f.progID = ebpf.ProgramID(ad.Uint32())
		case tcaBPFFlags:
			f.direct = ad.Uint32()&tcaBPFFlagActDirect != 0
		}
	}
	if err := ad.Err(); err != nil {
		return filter{}, fmt.Errorf("decode bpf filter options: %w", err)
	}
	return f, nil
}

// parseKind returns TCA_KIND and the raw TCA_OPTIONS of a qdisc or filter.
func parseKind(attrs []byte) (kind string, opts []byte, err error) {
	ad, err := netlink.NewAttributeDecoder(attrs)
	if err != nil {
		return "", nil, fmt.Errorf("decode tc attributes: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.TCA_KIND:
			kind = ad.String()
		case unix.TCA_OPTIONS:
			opts = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return "", nil, fmt.Errorf("decode tc attributes: %w", err)
	}
	return kind, opts, nil
}
