package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/tc"
)

// Config configures a Dataplane. The zero value works: default pin
// directory, endpoints map size and filter priority, tcx where the kernel
// has it, bpf_redirect_peer where the kernel has it, DNS capture off, UDP
// passed, fail closed.
type Config struct {
	// NodeNetns is the path of the node's network namespace; empty means
	// the namespace of the thread calling Open (the agent runs in the
	// host's). Tests point it at a node in a box.
	NodeNetns string
	// PinDir is the bpffs directory of the pins; empty means
	// maps.DefaultPinDir. The maps are pinned in it, the tcx links and
	// qdisc markers in its "tc" subdirectory.
	PinDir string
	// PodsMaxEntries is the capacity of the endpoints map (one entry per
	// pod IP and node address); zero means maps.DefaultPodsMaxEntries.
	PodsMaxEntries uint32
	// AttachMode chooses tcx links or legacy tc filters; ModeAuto picks tcx
	// on kernels that have it (6.6+).
	AttachMode tc.Mode
	// Priority of the legacy filters; zero means tc.DefaultPriority.
	Priority uint16
	// RedirectPeer forces bpf_redirect_peer on (true) or off (false); nil
	// detects it.
	RedirectPeer *bool
	// CaptureDNS sends pods' DNS (UDP and TCP to port 53) to ztunnel's
	// DNS proxy on 15053.
	CaptureDNS bool
	// StrictUDP is the strict UDP policy (--udp=drop): pods' UDP is
	// dropped, except DNS to and from the resolvers (SetResolvers), and so
	// is ICMP to them. The default passes UDP and ICMP, as Istio does.
	StrictUDP bool
	// FailOpen lets captured traffic pass while ztunnel is not ready,
	// instead of dropping it.
	FailOpen bool
	// ReplaceIncompatiblePins replaces pinned maps of another layout or
	// size with new ones (the agent rebuilds their entries) instead of
	// failing.
	ReplaceIncompatiblePins bool
	// MountBPFFS says whether to mount a bpffs at /sys/fs/bpf when the pin
	// directory is not on one: MountBPFFSAuto (the default), Always, Never.
	MountBPFFS string
	// Log receives a line per change; nil discards.
	Log *slog.Logger
}

func (c Config) pinDir() string {
	if c.PinDir == "" {
		return maps.DefaultPinDir
	}
	return c.PinDir
}

func (c Config) tcPinDir() string { return filepath.Join(c.pinDir(), "tc") }

// Dataplane is the datapath of one node. Its methods may be called from
// several goroutines; they run one at a time.
type Dataplane struct {
	mu   sync.Mutex
	cfg  Config
	log  *slog.Logger
	opts mrasm.Options
	maps *maps.Set
	coll *ebpf.Collection
	// progIDs are the IDs of the programs this process loaded, by name:
	// an attachment with another ID was made by an earlier process.
	progIDs map[string]ebpf.ProgramID
	// node attaches in the node's network namespace.
	node *tc.Manager
	// nodeNS and nl are the node's network namespace and a netlink handle
	// in it, usable from any thread.
	nodeNS netns.NsHandle
	nl     *netlink.Handle
	// ztunnel is what SetZtunnel last set up; zero before.
	ztunnel Ztunnel
}

// Open loads the programs, opens or creates the pinned maps and prepares to
// attach in the node's network namespace.
func Open(cfg Config) (*Dataplane, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts, err := mrasm.Detect()
	if err != nil {
		return nil, err
	}
	if cfg.RedirectPeer != nil {
		opts.RedirectPeer = *cfg.RedirectPeer
	}
	opts.PodsMaxEntries = cfg.PodsMaxEntries

	set, err := openMaps(cfg)
	if err != nil {
		return nil, err
	}
	d := &Dataplane{cfg: cfg, log: log, opts: opts, maps: set, progIDs: map[string]ebpf.ProgramID{}, nodeNS: -1}
	fail := func(err error) (*Dataplane, error) {
		d.Close()
		return nil, err
	}
	if cfg.NodeNetns == "" {
		d.nodeNS, err = netns.Get()
	} else {
		d.nodeNS, err = netns.GetFromPath(cfg.NodeNetns)
	}
	if err != nil {
		return fail(fmt.Errorf("open the node's netns: %w", err))
	}
	if d.nl, err = netlink.NewHandleAt(d.nodeNS); err != nil {
		return fail(fmt.Errorf("netlink in the node's netns: %w", err))
	}
	if len(set.Created) > 0 {
		log.Info("created maps", "pins", cfg.pinDir(), "maps", set.Created)
	}
	for _, r := range set.Replaced {
		log.Warn("replaced a pinned map of another layout or size; the agent refills it, and programs attached with the old one keep it until they are replaced", "why", r)
	}

	d.coll, err = ebpf.NewCollectionWithOptions(mrasm.CollectionSpec(opts), ebpf.CollectionOptions{MapReplacements: set.Maps()})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fail(fmt.Errorf("load programs: %-20v", ve))
		}
		return fail(fmt.Errorf("load programs: %w", err))
	}
	for name, prog := range d.coll.Programs {
		info, err := prog.Info()
		if err != nil {
			return fail(fmt.Errorf("read info of program %s: %w", name, err))
		}
		id, _ := info.ID()
		d.progIDs[name] = id
	}

	d.node, err = tc.New(tc.Config{NetnsFD: int(d.nodeNS), Mode: cfg.AttachMode, Priority: cfg.Priority, PinDir: cfg.tcPinDir()})
	if err != nil {
		return fail(fmt.Errorf("open tc manager for the node: %w", err))
	}

	// A ztunnel set up by an earlier process is still in the map.
	if zt, err := set.Ztunnel.Get(); err == nil && zt.Ifindex != 0 {
		d.ztunnel = Ztunnel{HostIfindex: int(zt.Ifindex)}
	}
	log.Info("dataplane open", "redirect_peer", opts.RedirectPeer, "attach_mode", d.node.Mode().String(),
		"capture_dns", cfg.CaptureDNS, "strict_udp", cfg.StrictUDP, "fail_open", cfg.FailOpen)
	return d, nil
}

// MapsReplaced reports whether Open replaced incompatible pinned maps: their
// new copies are empty until refilled.
func (d *Dataplane) MapsReplaced() bool { return len(d.maps.Replaced) > 0 }

// Options returns the program variants this Dataplane loaded.
func (d *Dataplane) Options() mrasm.Options { return d.opts }

// Maps returns the maps, for status and metrics.
func (d *Dataplane) Maps() *maps.Set { return d.maps }

// AttachMode returns the attach mode in use (legacy or tcx).
func (d *Dataplane) AttachMode() tc.Mode { return d.node.Mode() }

// Attachments lists our attachments in the node's network namespace.
func (d *Dataplane) Attachments() ([]tc.Attachment, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.node.ListAll()
}

// Close releases the file descriptors. Everything attached or pinned stays:
// an agent that stops must not unprotect the pods.
func (d *Dataplane) Close() error {
	var errs []error
	if d.node != nil {
		errs = append(errs, d.node.Close())
	}
	if d.coll != nil {
		d.coll.Close()
	}
	if d.maps != nil {
		errs = append(errs, d.maps.Close())
	}
	if d.nl != nil {
		d.nl.Close()
	}
	if d.nodeNS.IsOpen() {
		d.nodeNS.Close()
	}
	return errors.Join(errs...)
}

// attach attaches program name to ifindex's hook unless this process's
// program is already there, through m.
func (d *Dataplane) attach(m *tc.Manager, ifindex int, dir tc.Direction, name string) error {
	current, err := m.List(ifindex)
	if err != nil {
		return err
	}
	for _, a := range current {
		if a.Direction == dir && a.ProgramID == d.progIDs[name] && a.Mode == m.Mode() {
			return nil
		}
	}
	_, err = m.Attach(ifindex, dir, name, d.coll.Programs[name])
	return err
}

// Attach puts one of the programs, by name, on a hook of an interface of the
// node: an operator's tool (meshredirect attach). The agent enrols pods
// instead, which also fills the maps.
func (d *Dataplane) Attach(ifindex int, program string, dir tc.Direction) (tc.Attachment, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	prog, ok := d.coll.Programs[program]
	if !ok {
		_, err := mrasm.LookupProgram(program)
		return tc.Attachment{}, err
	}
	return d.node.Attach(ifindex, dir, program, prog)
}

// Detach takes our program off a hook of an interface of the node.
func (d *Dataplane) Detach(ifindex int, dir tc.Direction) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.node.Detach(ifindex, dir)
}

// Interface finds an interface of the node by name.
func (d *Dataplane) Interface(name string) (int, error) {
	l, err := d.nl.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find interface %s: %w", name, err)
	}
	return l.Attrs().Index, nil
}
