package tc

import (
	"errors"
	"fmt"

	gotc "github.com/florianl/go-tc"
	"golang.org/x/sys/unix"
)

// Where clsact lives (include/uapi/linux/pkt_sched.h): the qdisc hangs at
// TC_H_CLSACT (the same value as TC_H_INGRESS, which is why an ingress
// qdisc and clsact exclude each other) with handle ffff:, and its two hooks
// are its classes ffff:fff2 and ffff:fff3.
const (
	clsactParent  = gotc.HandleIngress // TC_H_CLSACT
	clsactHandle  = 0xFFFF0000         // ffff:
	ingressParent = 0xFFFFFFF2         // TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
	egressParent  = 0xFFFFFFF3         // TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)
)

// hookParent is the parent of the filters of a hook.
func hookParent(dir Direction) uint32 {
	if dir == Egress {
		return egressParent
	}
	return ingressParent
}

func clsactObject(ifindex int) *gotc.Object {
	return &gotc.Object{
		Msg: gotc.Msg{
			Family:  unix.AF_UNSPEC,
			Ifindex: uint32(ifindex),
			Handle:  clsactHandle,
			Parent:  clsactParent,
		},
		Attribute: gotc.Attribute{Kind: "clsact"},
	}
}

// ensureClsact makes sure the interface has a clsact qdisc. One that exists
// is left as it is; one we create is recorded with a marker, so that
// releaseClsact may delete it later, in this process or the next.
func (m *Manager) ensureClsact(ifc iface) error {
	// A qdisc can vanish between a failed create and the dump that looks
	// for it; a couple of rounds settle that race.
	for range 3 {
		// NLM_F_CREATE|NLM_F_EXCL: create, or fail with EEXIST; never
		// replace what is there (and what hangs off it).
		err := m.retry.do(func() error { return m.tc.Qdisc().Add(clsactObject(ifc.index)) })
		switch {
		case err == nil:
			if err := createMarker(m.markerPath(ifc.index)); err != nil {
				// Unrecorded, the qdisc would stay for ever; it is new
				// and ours, so take it away again, if still empty.
				if empty, derr := m.hooksEmpty(ifc); derr == nil && empty {
					_ = m.deleteClsact(ifc)
				}
				return fmt.Errorf("ensure clsact qdisc on %s: %w", ifc, err)
			}
			return nil
		case !errors.Is(err, unix.EEXIST):
			return fmt.Errorf("create clsact qdisc on %s: %w", ifc, err)
		}

		kind, err := m.ingressQdisc(ifc)
		if err != nil {
			return err
		}
		switch kind {
		case "clsact":
			return nil
		case "":
			continue
		default:
			return fmt.Errorf("ensure clsact qdisc on %s: %w (kind %q; remove it, or use tcx)", ifc, ErrNotClsact, kind)
		}
	}
	return fmt.Errorf("ensure clsact qdisc on %s: the qdisc at ffff:fff1 keeps changing", ifc)
}

// ingressQdisc returns the kind of the qdisc at TC_H_CLSACT on the
// interface: "clsact", "ingress" or "" for none.
func (m *Manager) ingressQdisc(ifc iface) (string, error) {
	msgs, err := m.rtnl.dump(unix.RTM_GETQDISC, tcmsg{}.marshal())
	if err != nil {
		return "", fmt.Errorf("list qdiscs of %s: %w", ifc, err)
	}
	for _, msg := range msgs {
		if msg.Header.Type != unix.RTM_NEWQDISC {
			continue
		}
		t, attrs, err := parseTcmsg(msg.Data)
		if err != nil {
			return "", fmt.Errorf("list qdiscs of %s: %w", ifc, err)
		}
		// The kernel dumps every interface's qdiscs (tc_dump_qdisc
		// ignores tcm_ifindex); iproute2 filters like this too.
		if t.ifindex != ifc.index || t.parent != clsactParent {
			continue
		}
		kind, _, err := parseKind(attrs)
		if err != nil {
			return "", fmt.Errorf("list qdiscs of %s: %w", ifc, err)
		}
		return kind, nil
	}
	return "", nil
}

// releaseClsact deletes the interface's clsact qdisc if we created it and
// no filter is left on either of its hooks, ours or anyone's. A marker
// whose qdisc is gone, or replaced by another kind, is dropped.
//
// Only Detach calls it, because adding or deleting any root or ingress
// qdisc, clsact included, on an interface that is up deactivates the
// interface's transmit queues for a grace period (qdisc_graft calls
// dev_deactivate in net/sched/sch_api.c): packets the interface sends
// meanwhile are dropped. TestMigrationNoGap lost about a millisecond of
// a flow per qdisc change before migrations stopped deleting the qdisc.
//
// Between the check and the deletion another tool could add a filter,
// which would go with the qdisc; rtnetlink has no conditional delete. The
// window is a few microseconds on a qdisc only we ever used.
func (m *Manager) releaseClsact(ifc iface) error {
	marker := m.markerPath(ifc.index)
	if ok, err := markerExists(marker); err != nil || !ok {
		return err
	}
	kind, err := m.ingressQdisc(ifc)
	if err != nil {
		return err
	}
	if kind != "clsact" {
		return removeMarker(marker)
	}
	empty, err := m.hooksEmpty(ifc)
	if err != nil || !empty {
		return err
	}
	if err := m.deleteClsact(ifc); err != nil {
		return err
	}
	return removeMarker(marker)
}

// hooksEmpty reports whether neither hook of the interface's clsact holds
// a filter, in any chain.
func (m *Manager) hooksEmpty(ifc iface) (bool, error) {
	for _, dir := range []Direction{Ingress, Egress} {
		fs, err := m.filters(ifc, dir)
		if err != nil {
			return false, err
		}
		if len(fs) > 0 {
			return false, nil
		}
	}
	return true, nil
}

func (m *Manager) deleteClsact(ifc iface) error {
	err := m.retry.do(func() error { return m.tc.Qdisc().Delete(clsactObject(ifc.index)) })
	// Already gone: ENOENT ("Cannot find specified qdisc on specified
	// device") if the interface never had an ingress queue, EINVAL
	// ("Invalid handle") if it had one, now holding the noop qdisc.
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete clsact qdisc of %s: %w", ifc, err)
	}
	return nil
}
