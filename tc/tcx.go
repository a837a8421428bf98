package tc

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// haveTCX reports whether the kernel has tcx (6.6+): nil if it does, an
// error wrapping ebpf.ErrNotSupported if it does not, another error if the
// probe itself failed. The probe attaches a trivial program to an interface
// index that cannot exist: a kernel with tcx answers ENODEV, and AttachTCX
// turns any other failure on a kernel without it into ErrNotSupported (its
// own probe, which is not exported).
var haveTCX = sync.OnceValue(func() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "mr_tcx_probe",
		Type:         ebpf.SchedCLS,
		License:      "Apache-2.0",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("probe tcx: load program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: math.MaxInt32,
		Program:   prog,
		Attach:    ebpf.AttachTCXIngress,
	})
	switch {
	case err == nil:
		l.Close()
		return errors.New("probe tcx: attaching to a missing interface succeeded")
	case errors.Is(err, unix.ENODEV):
		return nil
	case errors.Is(err, ebpf.ErrNotSupported):
		return err
	}
	return fmt.Errorf("probe tcx: %w", err)
})

func tcxAttachType(dir Direction) ebpf.AttachType {
	if dir == Egress {
		return ebpf.AttachTCXEgress
	}
	return ebpf.AttachTCXIngress
}

// attachLink updates our pinned tcx link of the hook to prog, or creates,
// and pins, one. A pinned link whose interface is gone (defunct) is
// replaced by a new one.
func (m *Manager) attachLink(ifc iface, dir Direction, prog *ebpf.Program) (Attachment, error) {
	path := m.linkPinPath(ifc.index, dir)
	l, info, err := loadLink(path)
	switch {
	case err == nil && linkAttachedTo(info, ifc.index):
		// BPF_LINK_UPDATE swaps the program of the link in place
		// (tcx_link_update -> bpf_mprog_attach with BPF_F_REPLACE): the
		// hook never runs without one, and keeps its place among other
		// programs.
		err := m.retry.do(func() error { return l.Update(prog) })
		if err == nil {
			info, err = l.Info()
		}
		l.Close()
		if err != nil {
			return Attachment{}, fmt.Errorf("update tcx link of %s %s: %w", ifc, dir, err)
		}
		return linkAttachment(ifc, dir, path, info), nil
	case err == nil:
		// The pin outlived its interface (an interface with the same
		// index came later): drop it and start afresh.
		err := dropLink(l, info)
		l.Close()
		if err != nil {
			return Attachment{}, fmt.Errorf("attach tcx link to %s %s: %w", ifc, dir, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return Attachment{}, fmt.Errorf("attach tcx link to %s %s: %w", ifc, dir, err)
	}

	// BPF_LINK_CREATE resolves the interface index in the namespace of
	// the calling thread, so create the link from inside ours.
	err = m.ns.run(func() error {
		return m.retry.do(func() error {
			var err error
			l, err = link.AttachTCX(link.TCXOptions{
				Interface: ifc.index,
				Program:   prog,
				Attach:    tcxAttachType(dir),
				// First among the hook's programs: a pod's packet must
				// meet ours before another program can redirect it
				// (DESIGN.md §1). Anyone attaching at the head later
				// goes before us; tcx has no priorities.
				Anchor: link.Head(),
			})
			return err
		})
	})
	if err != nil {
		return Attachment{}, fmt.Errorf("attach tcx link to %s %s: %w", ifc, dir, err)
	}
	defer l.Close()
	// Until it is pinned, the link lives as long as this file descriptor:
	// if the process dies here, the kernel detaches it, and no unrecorded
	// link is left behind.
	if err := l.Pin(path); err != nil {
		return Attachment{}, fmt.Errorf("attach tcx link to %s %s: pin at %s: %w (is bpffs mounted at /sys/fs/bpf?)", ifc, dir, path, err)
	}
	info, err = l.Info()
	if err != nil {
		return Attachment{}, fmt.Errorf("attach tcx link to %s %s: %w", ifc, dir, err)
	}
	return linkAttachment(ifc, dir, path, info), nil
}

// removeLink detaches and unpins our tcx link of the hook, if there is one.
func (m *Manager) removeLink(ifc iface, dir Direction) error {
	path := m.linkPinPath(ifc.index, dir)
	l, info, err := loadLink(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach tcx link from %s %s: %w", ifc, dir, err)
	}
	defer l.Close()
	if err := dropLink(l, info); err != nil {
		return fmt.Errorf("detach tcx link from %s %s: %w", ifc, dir, err)
	}
	return nil
}

// dropLink detaches a pinned link and removes its pin. Detaching first,
// explicitly, matters: another process holding a descriptor of the link
// would otherwise keep it attached after the pin is gone.
func dropLink(l link.Link, info *link.Info) error {
	if !linkDefunct(info) {
		if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) {
			return err
		}
	}
	if err := l.Unpin(); err != nil {
		return err
	}
	return nil
}

// loadLink opens a pinned tcx link. A pin that is not a tcx link is not
// ours to touch.
func loadLink(path string) (link.Link, *link.Info, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return nil, nil, err
	}
	info, err := l.Info()
	if err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("read link info of %s: %w", path, err)
	}
	if info.Type != link.TCXType || info.TCX() == nil {
		l.Close()
		return nil, nil, fmt.Errorf("pin %s is a link of type %d, not tcx", path, info.Type)
	}
	return l, info, nil
}

// linkDefunct reports whether the link's interface is gone. When a device
// is unregistered, tcx_uninstall (kernel/bpf/tcx.c) unhooks its links and
// clears their device: the link lives on, attached to nothing, and reports
// interface index 0.
func linkDefunct(info *link.Info) bool {
	return info.TCX().Ifindex == 0
}

func linkAttachedTo(info *link.Info, ifindex int) bool {
	return !linkDefunct(info) && info.TCX().Ifindex == uint32(ifindex)
}

func linkAttachment(ifc iface, dir Direction, path string, info *link.Info) Attachment {
	return Attachment{
		Ifindex:   ifc.index,
		Ifname:    ifc.name,
		Direction: dir,
		Mode:      ModeTCX,
		ProgramID: info.Program,
		LinkID:    info.ID,
		PinPath:   path,
		Defunct:   linkDefunct(info),
	}
}

// HaveTCX reports whether the kernel has tcx links (6.6+), by the same
// probe ModeAuto uses.
func HaveTCX() bool { return haveTCX() == nil }
