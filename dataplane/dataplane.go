package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"

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
	// ProcSysNet is where the net sysctls are read and written (rp_filter
	// of the node and ztunnel's netns, lo's and TIME_WAIT's in pods'):
	// the host's /proc/sys/net, mounted elsewhere in a container, whose
	// runtime refuses mounts under /proc. Empty means DefaultProcSysNet.
	// Its files show the netns of the thread that opens them, wherever it
	// is mounted.
	ProcSysNet string
	// Log receives a line per change; nil discards.
	Log *slog.Logger
}

func (c Config) pinDir() string {
	if c.PinDir == "" {
		return maps.DefaultPinDir
	}
	return c.PinDir
}

func (c Config) sysctls() sysctlDir {
	if c.ProcSysNet == "" {
		return DefaultProcSysNet
	}
	return sysctlDir(c.ProcSysNet)
}

func (c Config) tcPinDir() string { return TCPinDir(c.pinDir()) }

// TCPinDir is where, under the pin directory pinDir, the tcx links and the
// clsact qdisc markers are pinned: the pin layout is spelled here only.
func TCPinDir(pinDir string) string { return filepath.Join(pinDir, "tc") }

// tcConfig is the tc manager's configuration for the netns at path (the
// node's, ztunnel's or, for uninstall, any).
func (c Config) tcConfig(path string) tc.Config {
	return tc.Config{NetnsPath: path, Mode: c.AttachMode, Priority: c.Priority, PinDir: c.tcPinDir()}
}

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
	// nl is the node's network namespace and a route netlink socket in
	// it, usable from any thread.
	nl *nsLink
	// inpod is what EnrollInPod attached, by the pod's netns path.
	inpod map[string]inPodState
	// loopback is pod_loopback, which every in-pod pod shares; nil until
	// the first EnrollInPod.
	loopback *ebpf.Program
	// ztunnel is what SetZtunnel last set up; zero before.
	ztunnel Ztunnel
}

// Open loads the programs, opens or creates the pinned maps and prepares to
// attach in the node's network namespace.
func Open(cfg Config) (*Dataplane, error) {
	liftMemlock()
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

	// Before anything is made: a missing mount would otherwise show when
	// ztunnel comes, with maps created and programs attached.
	if err := cfg.sysctls().check(); err != nil {
		return nil, err
	}
	set, err := openMaps(cfg)
	if err != nil {
		return nil, err
	}
	d := &Dataplane{cfg: cfg, log: log, opts: opts, maps: set, progIDs: map[string]ebpf.ProgramID{}}
	fail := func(err error) (*Dataplane, error) {
		d.Close()
		return nil, err
	}
	if d.nl, err = openNetns(cfg.NodeNetns); err != nil {
		return fail(fmt.Errorf("the node's netns: %w", err))
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

	tcCfg := cfg.tcConfig("")
	tcCfg.NetnsFD = d.nl.fd()
	d.node, err = tc.New(tcCfg)
	if err != nil {
		return fail(fmt.Errorf("open tc manager for the node: %w", err))
	}

	if err := d.writeConfigFlags(); err != nil {
		return fail(fmt.Errorf("write the configuration into the ztunnel map: %w", err))
	}
	// A ztunnel set up by an earlier process is still in the map.
	if zt, err := set.Ztunnel.Get(); err == nil && zt.Ifindex != 0 {
		d.ztunnel = Ztunnel{HostIfindex: int(zt.Ifindex)}
	}
	log.Info("dataplane open", "redirect_peer", opts.RedirectPeer, "attach_mode", d.node.Mode().String(),
		"capture_dns", cfg.CaptureDNS, "strict_udp", cfg.StrictUDP, "fail_open", cfg.FailOpen)
	return d, nil
}

// Options returns the program variants this Dataplane loaded.
func (d *Dataplane) Options() mrasm.Options { return d.opts }

// Maps returns the maps, for tests and benchmarks that run the programs on
// them; the agent uses Stats and PodEntries.
func (d *Dataplane) Maps() *maps.Set { return d.maps }

// Stats reads the programs' per-verdict counters, summed over CPUs.
func (d *Dataplane) Stats() (map[Verdict]Counter, error) { return d.maps.Stats.Read() }

// PodEntries returns the endpoints map's pod entries: each enrolled IP and
// the index of the host interface it is enrolled on.
func (d *Dataplane) PodEntries() (map[netip.Addr]int, error) {
	entries, err := d.maps.Endpoints.Pods()
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]int, len(entries))
	for ip, ep := range entries {
		out[ip] = int(ep.Ifindex)
	}
	return out, nil
}

// AttachMode returns the attach mode in use (legacy or tcx).
func (d *Dataplane) AttachMode() Mode { return d.node.Mode() }

// Attachments lists our attachments in the node's network namespace.
func (d *Dataplane) Attachments() ([]Attachment, error) {
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
	if d.loopback != nil {
		d.loopback.Close()
	}
	if d.maps != nil {
		errs = append(errs, d.maps.Close())
	}
	if d.nl != nil {
		d.nl.Close()
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

// Interface finds an interface of the node by name.
func (d *Dataplane) Interface(name string) (int, error) {
	l, err := d.nl.linkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find interface %s in %s: %w", name, d.nl, err)
	}
	return l.index, nil
}
