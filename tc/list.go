package tc

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Attachment is one of our programs on one hook of one interface.
type Attachment struct {
	// Ifindex and Ifname are the interface. Ifname is empty when the
	// interface is gone (a defunct link).
	Ifindex int
	Ifname  string
	// Direction is the hook.
	Direction Direction
	// Mode is ModeLegacy or ModeTCX.
	Mode Mode
	// ProgramID and ProgramName are the attached program; the name is the
	// kernel's (at most 15 bytes), empty if the program could not be read.
	ProgramID   ebpf.ProgramID
	ProgramName string

	// Name is the filter's name without FilterNamePrefix, as given to
	// Attach (legacy filters only: tcx links carry no name).
	Name string
	// Priority and Handle place a legacy filter on its hook.
	Priority uint16
	Handle   uint32

	// LinkID and PinPath are a tcx link and its pin.
	LinkID  link.ID
	PinPath string
	// Defunct marks a tcx link whose interface is gone: the pin keeps the
	// link (and its program) alive, attached to nothing. Prune removes it.
	Defunct bool
}

// String describes the attachment on one line, the way a status command
// shows it.
func (a Attachment) String() string {
	var b strings.Builder
	ifname := a.Ifname
	if ifname == "" {
		ifname = "?"
	}
	fmt.Fprintf(&b, "%s(%d) %s %s prog %d", ifname, a.Ifindex, a.Direction, a.Mode, a.ProgramID)
	if a.ProgramName != "" {
		fmt.Fprintf(&b, " %s", a.ProgramName)
	}
	switch a.Mode {
	case ModeLegacy:
		fmt.Fprintf(&b, " filter %q priority %d handle %#x", FilterNamePrefix+a.Name, a.Priority, a.Handle)
	case ModeTCX:
		fmt.Fprintf(&b, " link %d pinned at %s", a.LinkID, a.PinPath)
	}
	if a.Defunct {
		b.WriteString(" (defunct: interface gone)")
	}
	return b.String()
}

// List returns our attachments on the interface ifindex: legacy filters
// and tcx links, on both hooks, ingress first. Filters and links of other
// tools are not listed.
func (m *Manager) List(ifindex int) ([]Attachment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()

	ifc, err := m.lookupInterface(ifindex)
	if err != nil {
		return nil, fmt.Errorf("list attachments of if%d: %w", ifindex, err)
	}
	out, err := m.pinnedAttachments(ifc, ifindex)
	if err != nil {
		return nil, err
	}
	fs, err := m.ourFilterAttachments(ifc)
	if err != nil {
		return nil, err
	}
	out = append(out, fs...)
	sortAttachments(out)
	return out, nil
}

// ListAll returns our attachments on every interface of the namespace,
// and the defunct tcx links whose interface was in it, in the order of the
// interface indexes and, per interface, ingress first.
func (m *Manager) ListAll() ([]Attachment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()

	ifcs, err := m.rtnl.links()
	if err != nil {
		return nil, err
	}
	byIndex := make(map[int]iface, len(ifcs))
	var out []Attachment
	for _, ifc := range ifcs {
		byIndex[ifc.index] = ifc
		fs, err := m.ourFilterAttachments(ifc)
		if err != nil {
			return nil, err
		}
		out = append(out, fs...)
	}

	pins, paths, err := m.pinNames()
	if err != nil {
		return nil, err
	}
	for i, p := range pins {
		if p.marker || p.netns != m.ns.id {
			continue
		}
		ifc, ok := byIndex[p.ifindex]
		if !ok {
			ifc = iface{index: p.ifindex}
		}
		a, err := m.pinnedAttachment(ifc, p.dir, paths[i])
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	sortAttachments(out)
	return out, nil
}

// Prune removes what our attachments left behind when their interfaces
// went away, and returns the defunct links it removed:
//
//   - tcx links in the pin directory, of any namespace, whose interface
//     is gone (the namespace may be gone too);
//   - the clsact markers of this namespace whose interface is gone.
//
// It leaves live interfaces alone, even a clsact of ours that holds no
// filter any more: deleting a qdisc disturbs traffic, which only Detach
// may do.
//
// Markers of other, vanished, namespaces cannot be told from those of live
// ones, and are left; they are empty directories. Uninstalling removes the
// pin directory.
func (m *Manager) Prune() ([]Attachment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()

	pins, paths, err := m.pinNames()
	if err != nil {
		return nil, err
	}
	ifcs, err := m.rtnl.links()
	if err != nil {
		return nil, err
	}
	byIndex := make(map[int]iface, len(ifcs))
	for _, ifc := range ifcs {
		byIndex[ifc.index] = ifc
	}

	var (
		pruned []Attachment
		errs   []error
	)
	for i, p := range pins {
		switch {
		case !p.marker:
			l, info, err := loadLink(paths[i])
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("prune: %w", err))
				continue
			}
			if linkDefunct(info) {
				a := linkAttachment(iface{index: p.ifindex}, p.dir, paths[i], info)
				a.ProgramName = programName(info.Program)
				if err := l.Unpin(); err != nil {
					errs = append(errs, fmt.Errorf("prune defunct tcx link %s: %w", paths[i], err))
				} else {
					pruned = append(pruned, a)
				}
			}
			l.Close()
		case p.netns == m.ns.id:
			if _, ok := byIndex[p.ifindex]; ok {
				continue
			}
			if err := removeMarker(paths[i]); err != nil {
				errs = append(errs, fmt.Errorf("prune: %w", err))
			}
		}
	}
	return pruned, errors.Join(errs...)
}

// pinnedAttachment describes our pinned tcx link of a hook.
// pinnedAttachments describes the link pins of one interface. Their
// names are known (linkPinPath), so it looks them up rather than reading
// the whole pin directory: the agent lists an interface twice at every
// enrolment, and reading a directory of two pins per enrolled pod made
// enrolling n pods O(n²) (at 1,000 pods, 8 s of the agent's 22 s of CPU;
// an enrolment's capture took 5.9 ms at the median, 1.7 ms without it:
// the bench's scale phase).
func (m *Manager) pinnedAttachments(ifc iface, ifindex int) ([]Attachment, error) {
	if _, err := os.Stat(m.pinDir); err != nil {
		return nil, fmt.Errorf("read pin directory %s: %w", m.pinDir, err)
	}
	var out []Attachment
	for _, dir := range []Direction{Ingress, Egress} {
		path := m.linkPinPath(ifindex, dir)
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("list attachments of %s %s: %w", ifc, dir, err)
		}
		a, err := m.pinnedAttachment(ifc, dir, path)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func (m *Manager) pinnedAttachment(ifc iface, dir Direction, path string) (Attachment, error) {
	l, info, err := loadLink(path)
	if err != nil {
		return Attachment{}, fmt.Errorf("list attachments of %s %s: %w", ifc, dir, err)
	}
	defer l.Close()
	a := linkAttachment(ifc, dir, path, info)
	if a.Defunct {
		a.Ifname = ""
	}
	a.ProgramName = programName(info.Program)
	return a, nil
}

// ourFilterAttachments describes our legacy filters on both hooks.
func (m *Manager) ourFilterAttachments(ifc iface) ([]Attachment, error) {
	var out []Attachment
	for _, dir := range []Direction{Ingress, Egress} {
		fs, err := m.filters(ifc, dir)
		if err != nil {
			return nil, err
		}
		for _, f := range fs {
			if !f.ours() {
				continue
			}
			out = append(out, Attachment{
				Ifindex:     ifc.index,
				Ifname:      ifc.name,
				Direction:   dir,
				Mode:        ModeLegacy,
				ProgramID:   f.progID,
				ProgramName: programName(f.progID),
				Name:        strings.TrimPrefix(f.name, FilterNamePrefix),
				Priority:    f.priority(),
				Handle:      f.handle,
			})
		}
	}
	return out, nil
}

// programName returns the kernel's name of a program, or "" if it cannot
// be read (it may have been replaced and freed meanwhile).
func programName(id ebpf.ProgramID) string {
	if id == 0 {
		return ""
	}
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return ""
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return ""
	}
	return info.Name
}

// sortAttachments orders attachments by interface index, direction
// (ingress first), mode (legacy first), priority and handle.
func sortAttachments(as []Attachment) {
	slices.SortFunc(as, func(a, b Attachment) int {
		return cmp.Or(
			cmp.Compare(a.Ifindex, b.Ifindex),
			cmp.Compare(a.Direction.rank(), b.Direction.rank()),
			cmp.Compare(a.Mode, b.Mode),
			cmp.Compare(a.Priority, b.Priority),
			cmp.Compare(a.Handle, b.Handle),
		)
	})
}

// lookupInterface resolves an interface index of the namespace.
func (m *Manager) lookupInterface(ifindex int) (iface, error) {
	return m.rtnl.link(ifindex)
}
