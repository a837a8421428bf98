package tc

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	gotc "github.com/florianl/go-tc"
	"github.com/mdlayher/netlink"
)

// Direction is a TC hook of an interface.
type Direction string

// The two hooks of an interface.
const (
	// Ingress sees the packets the interface receives.
	Ingress Direction = "ingress"
	// Egress sees the packets the interface sends.
	Egress Direction = "egress"
)

func (d Direction) valid() bool { return d == Ingress || d == Egress }

func (d Direction) rank() int {
	if d == Ingress {
		return 0
	}
	return 1
}

// Mode is how a program is hooked to an interface.
type Mode int

const (
	// ModeAuto uses tcx links where the kernel has them (6.6+) and legacy
	// bpf filters elsewhere. Only a [Config] holds it; attachments are in
	// one of the two others.
	ModeAuto Mode = iota
	// ModeLegacy attaches bpf filters in direct-action mode under a clsact
	// qdisc (kernel 4.5+).
	ModeLegacy
	// ModeTCX attaches tcx links (kernel 6.6+), pinned so that they outlive
	// the process.
	ModeTCX
)

// String returns "auto", "tc" or "tcx", the names [ParseMode] accepts.
func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeLegacy:
		return "tc"
	case ModeTCX:
		return "tcx"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// MarshalText implements encoding.TextMarshaler: a Mode reads as its name
// in JSON and logs.
func (m Mode) MarshalText() ([]byte, error) {
	if !m.valid() {
		return nil, fmt.Errorf("invalid attach mode %d", int(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseMode.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

func (m Mode) valid() bool { return m == ModeAuto || m == ModeLegacy || m == ModeTCX }

// ParseMode returns the mode called s: "auto", "tc" (or "legacy") or "tcx".
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "auto", "":
		return ModeAuto, nil
	case "tc", "legacy":
		return ModeLegacy, nil
	case "tcx":
		return ModeTCX, nil
	}
	return 0, fmt.Errorf("unknown attach mode %q (want auto, tc or tcx)", s)
}

// DefaultPriority is the priority of our legacy filters unless
// [Config.Priority] says otherwise.
//
// Filters run in increasing priority, and ours must run early: a packet of
// an ambient pod must reach our program before a later filter can redirect
// or drop it (DESIGN.md §1, the security rule). Priority 1 is Cilium's
// (bpf-filter-priority, handle 1, replaced in place on every Cilium start),
// and a priority is one tcf_proto: sharing it, even at another handle, would
// put our filter in the way of a "tc filter del ... pref 1" meant for Cilium.
// 2 is therefore the earliest priority no well-known tool uses. Where Cilium
// runs its filter comes first whatever we choose; use tcx there, or
// configure Cilium's priority.
const DefaultPriority = 2

// DefaultHandle is the handle of our legacy filters unless [Config.Handle]
// says otherwise. Handles only need to differ within one priority, which is
// ours alone; 1 is what tc itself would give the first bpf filter.
const DefaultHandle = 1

// DefaultPinDir is the bpffs directory of the tcx link pins and clsact
// markers unless [Config.PinDir] says otherwise. It sits beside the map pins
// of package maps (/sys/fs/bpf/meshredirect).
const DefaultPinDir = "/sys/fs/bpf/meshredirect/tc"

// FilterNamePrefix starts the name of every bpf filter this package
// attaches; it is how our filters are told from other tools'.
const FilterNamePrefix = "meshredirect:"

// ErrForeignFilter is returned when the priority and handle a Manager is
// configured to use hold a filter that is not ours.
var ErrForeignFilter = errors.New("priority and handle are taken by a filter that is not meshredirect's")

// ErrNotClsact is returned when an interface has an ingress qdisc instead of
// clsact: it has no egress hook, and replacing it is not ours to do.
var ErrNotClsact = errors.New("interface has an ingress qdisc, not clsact")

// Config configures a [Manager]. The zero value works on the calling
// thread's network namespace, in ModeAuto, with the defaults above.
type Config struct {
	// NetnsPath is the network namespace to work in, as a file
	// (/proc/<pid>/ns/net, /run/netns/<name>). At most one of NetnsPath and
	// NetnsFD may be set; with neither, the namespace of the thread calling
	// New is used.
	NetnsPath string
	// NetnsFD is an open network namespace to work in. New duplicates it,
	// so the caller may close its own. Zero means unset (descriptor 0 is
	// never a namespace in a daemon).
	NetnsFD int
	// Mode is the attach mode; ModeAuto picks the best the kernel has.
	Mode Mode
	// Priority of our legacy filters; zero means DefaultPriority.
	Priority uint16
	// Handle of our legacy filters; zero means DefaultHandle.
	Handle uint32
	// PinDir is the bpffs directory for tcx link pins and the markers of
	// the clsact qdiscs we created; empty means DefaultPinDir. It is
	// created if missing, and must be on a bpf filesystem in legacy mode
	// too. One directory may serve every namespace: pin names carry the
	// namespace's cookie.
	PinDir string
}

// Manager attaches programs to the interfaces of one network namespace.
// Its methods may be called from several goroutines; they run one at a time.
type Manager struct {
	mu       sync.Mutex
	ns       *netnsRef
	rtnl     *rtnl
	tc       *gotc.Tc
	mode     Mode
	priority uint16
	handle   uint32
	pinDir   string
	retry    retrier
}

// New returns a Manager for the network namespace cfg names. It resolves
// ModeAuto with a feature probe, and fails with an error wrapping
// ebpf.ErrNotSupported when ModeTCX is forced on a kernel older than 6.6.
func New(cfg Config) (*Manager, error) {
	if !cfg.Mode.valid() {
		return nil, fmt.Errorf("new tc manager: invalid attach mode %d", int(cfg.Mode))
	}
	m := &Manager{
		priority: cfg.Priority,
		handle:   cfg.Handle,
		pinDir:   cfg.PinDir,
		retry:    defaultRetrier,
	}
	if m.priority == 0 {
		m.priority = DefaultPriority
	}
	if m.handle == 0 {
		m.handle = DefaultHandle
	}
	if m.pinDir == "" {
		m.pinDir = DefaultPinDir
	}

	mode, err := resolveMode(cfg.Mode)
	if err != nil {
		return nil, err
	}
	m.mode = mode

	if err := ensurePinDir(m.pinDir); err != nil {
		return nil, err
	}

	m.ns, err = openNetns(cfg.NetnsPath, cfg.NetnsFD)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Manager, error) {
		m.Close()
		return nil, err
	}
	m.rtnl, err = dialRTNL(m.ns)
	if err != nil {
		return fail(err)
	}
	if err := m.ns.identify(m.rtnl); err != nil {
		return fail(err)
	}
	m.tc, err = gotc.Open(&gotc.Config{NetNS: m.ns.fd()})
	if err != nil {
		return fail(fmt.Errorf("open rtnetlink socket in %s: %w", m.ns, err))
	}
	if err := m.tc.SetOption(netlink.ExtendedAcknowledge, true); err != nil {
		return fail(fmt.Errorf("enable extended acknowledgements: %w", err))
	}
	return m, nil
}

// Mode returns the mode Attach uses: ModeLegacy or ModeTCX.
func (m *Manager) Mode() Mode { return m.mode }

// Attach hooks prog, a SchedCLS program, to the dir hook of the interface
// ifindex, in the Manager's mode, and returns the attachment.
//
// If one of ours is there already, it is replaced without a moment in
// which the hook has no program of ours: the legacy filter in place, the tcx
// link by BPF_LINK_UPDATE. One of ours in the other mode is removed after
// the new one is attached. name names the legacy filter
// (FilterNamePrefix+name); empty means the program's own name.
//
// In legacy mode, the first attachment to an interface without a clsact
// qdisc creates one, which stops the interface's transmissions for a moment
// (see releaseClsact). Nothing else Attach does disturbs traffic: a
// migration to tcx leaves our clsact in place, empty, for Detach to remove.
//
// An error after the new attachment was made (removing the old one failed)
// is returned with the new attachment.
func (m *Manager) Attach(ifindex int, dir Direction, name string, prog *ebpf.Program) (Attachment, error) {
	if err := checkArgs(ifindex, dir); err != nil {
		return Attachment{}, fmt.Errorf("attach to if%d %s: %w", ifindex, dir, err)
	}
	if prog == nil {
		return Attachment{}, fmt.Errorf("attach to if%d %s: nil program", ifindex, dir)
	}
	if prog.Type() != ebpf.SchedCLS {
		return Attachment{}, fmt.Errorf("attach to if%d %s: program type %s, want %s", ifindex, dir, prog.Type(), ebpf.SchedCLS)
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	ifc, err := m.lookupInterface(ifindex)
	if err != nil {
		return Attachment{}, fmt.Errorf("attach to if%d %s: %w", ifindex, dir, err)
	}
	info, err := prog.Info()
	if err != nil {
		return Attachment{}, fmt.Errorf("attach to %s %s: read program info: %w", ifc, dir, err)
	}
	if name == "" {
		name = info.Name
	}

	var a Attachment
	switch m.mode {
	case ModeTCX:
		a, err = m.attachLink(ifc, dir, prog)
		if err != nil {
			return Attachment{}, err
		}
		// Only now that the link runs: remove our filter, if this hook had
		// one (a migration from legacy). The clsact stays, even if ours
		// and empty: see releaseClsact for why only Detach removes it.
		err = m.removeFilters(ifc, dir, nil)
	default:
		a, err = m.attachFilter(ifc, dir, name, prog)
		if err != nil {
			return Attachment{}, err
		}
		err = m.removeLink(ifc, dir)
	}
	a.ProgramName = info.Name
	if err != nil {
		return a, fmt.Errorf("attach to %s %s: remove the previous attachment: %w", ifc, dir, err)
	}
	return a, nil
}

// Detach removes our attachments, filters and tcx links, from the dir hook
// of the interface ifindex, and then the clsact qdisc if we created it and
// no filter of anyone is left on it. Filters, links and qdiscs of other
// tools stay. Detaching a hook with nothing of ours, or an interface that
// no longer exists, is not an error: the records of a vanished interface
// (pins, markers) are removed.
//
// Deleting a qdisc stops the interface's transmissions for a moment (see
// releaseClsact); Detach is for interfaces that leave capture, not for the
// routine of an agent.
func (m *Manager) Detach(ifindex int, dir Direction) error {
	if err := checkArgs(ifindex, dir); err != nil {
		return fmt.Errorf("detach from if%d %s: %w", ifindex, dir, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	ifc, err := m.lookupInterface(ifindex)
	switch {
	case errors.Is(err, ErrNoInterface):
		return m.forgetInterface(ifindex, dir)
	case err != nil:
		return fmt.Errorf("detach from if%d %s: %w", ifindex, dir, err)
	}
	return errors.Join(
		m.removeLink(ifc, dir),
		m.removeFilters(ifc, dir, nil),
		m.releaseClsact(ifc),
	)
}

// forgetInterface removes the pins and markers of a vanished interface.
func (m *Manager) forgetInterface(ifindex int, dir Direction) error {
	ifc := iface{index: ifindex}
	var errs []error
	errs = append(errs, m.removeLink(ifc, dir))
	if err := removeMarker(m.markerPath(ifindex)); err != nil {
		errs = append(errs, fmt.Errorf("detach from %s %s: %w", ifc, dir, err))
	}
	return errors.Join(errs...)
}

// Close releases the Manager's sockets and namespace reference. What was
// attached stays attached: legacy filters live with their interface, tcx
// links with their pins.
func (m *Manager) Close() error {
	var errs []error
	if m.tc != nil {
		errs = append(errs, m.tc.Close())
		m.tc = nil
	}
	if m.rtnl != nil {
		errs = append(errs, m.rtnl.Close())
		m.rtnl = nil
	}
	if m.ns != nil {
		errs = append(errs, m.ns.Close())
		m.ns = nil
	}
	return errors.Join(errs...)
}

func checkArgs(ifindex int, dir Direction) error {
	if ifindex <= 0 {
		return fmt.Errorf("invalid interface index %d", ifindex)
	}
	if !dir.valid() {
		return fmt.Errorf("invalid direction %q (want %s or %s)", string(dir), Ingress, Egress)
	}
	return nil
}

func resolveMode(mode Mode) (Mode, error) {
	switch mode {
	case ModeLegacy:
		return ModeLegacy, nil
	case ModeTCX:
		if err := haveTCX(); err != nil {
			return 0, fmt.Errorf("attach mode tcx: %w (needs kernel 6.6+; use mode tc)", err)
		}
		return ModeTCX, nil
	}
	err := haveTCX()
	switch {
	case err == nil:
		return ModeTCX, nil
	case errors.Is(err, ebpf.ErrNotSupported):
		return ModeLegacy, nil
	}
	return 0, fmt.Errorf("attach mode auto: %w", err)
}

func ensurePinDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w (is bpffs mounted at /sys/fs/bpf?)", dir, err)
	}
	if err := checkBPFFS(dir); err != nil {
		return err
	}
	return nil
}
