package maps

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// ErrIncompatiblePin is returned when a pinned map does not match the spec this
// build expects: an older or newer layout, or another endpoints map size.
var ErrIncompatiblePin = errors.New("pinned map is incompatible")

// ErrNotBPFFS is returned when the pin directory is not on a bpffs mount.
var ErrNotBPFFS = errors.New("not on a bpf filesystem")

// Options configure [Open].
type Options struct {
	// PinDir is the bpffs directory of the pins. Empty means no pinning: the
	// maps live as long as the process holds them (tests, dump).
	PinDir string
	// PodsMaxEntries is the capacity of the endpoints map; zero means the
	// default.
	PodsMaxEntries uint32
	// ReplaceIncompatible replaces a pinned map whose spec differs (another
	// layout version, another size) with a new, empty one, instead of
	// failing. Programs attached with the old map keep it until they are
	// replaced: capture goes on while the new map is filled.
	ReplaceIncompatible bool
}

// Set holds the maps of a node.
type Set struct {
	Endpoints *Endpoints
	Ztunnel   *ZtunnelMap
	Relays    *Relays
	Stats     *Stats
	DNSOrig   *DNSOrig
	DNSTCP    *DNSOrig
	// Events is the ring buffer the programs write monitor events to;
	// Monitor says when they do. OpenPinned leaves both nil on a node whose
	// agent predates them.
	Events  *ebpf.Map
	Monitor *MonitorMap

	// Created lists the reference names of the maps that Open created, as
	// opposed to re-opened from pins.
	Created []string
	// Replaced lists, for each incompatible pin that Open replaced, why.
	Replaced []string
}

// Open creates the maps, or re-opens their pins under opts.PinDir when they
// exist. A pin whose type, sizes, flags or layout version differ from this
// build's spec is never reused: Open fails with an error wrapping
// ErrIncompatiblePin that names the pin.
func Open(opts Options) (*Set, error) {
	if err := removeMemlock(); err != nil {
		return nil, err
	}
	specs := Specs(opts.PodsMaxEntries)
	if opts.PinDir != "" {
		if err := ensurePinDir(opts.PinDir); err != nil {
			return nil, err
		}
	}

	opened := make(map[string]*ebpf.Map, len(specs))
	s := &Set{}
	fail := func(err error) (*Set, error) {
		for _, m := range opened {
			m.Close()
		}
		return nil, err
	}
	replace := func(name string, why error) (*ebpf.Map, bool, error) {
		path := filepath.Join(opts.PinDir, name)
		if err := os.Remove(path); err != nil {
			return nil, false, fmt.Errorf("replace %s: %w", path, err)
		}
		s.Replaced = append(s.Replaced, why.Error())
		return openOne(opts.PinDir, name, specs[name])
	}
	for _, name := range sortedNames(specs) {
		m, created, err := openOne(opts.PinDir, name, specs[name])
		if errors.Is(err, ErrIncompatiblePin) && opts.ReplaceIncompatible {
			m, created, err = replace(name, err)
		}
		if err != nil {
			return fail(err)
		}
		opened[name] = m
		if created {
			s.Created = append(s.Created, name)
		}
	}
	// The cache is only valid with the map it was filled from: a new
	// endpoints map (another size) gets a new cache too, while programs
	// attached earlier keep the old pair until they are replaced.
	if slices.Contains(s.Created, EndpointsName) && !slices.Contains(s.Created, CacheName) && opts.PinDir != "" {
		old := opened[CacheName]
		m, _, err := replace(CacheName, fmt.Errorf("pinned map %s: %w: it caches an endpoints map that was replaced",
			filepath.Join(opts.PinDir, CacheName), ErrIncompatiblePin))
		if err != nil {
			return fail(err)
		}
		old.Close()
		opened[CacheName] = m
		s.Created = append(s.Created, CacheName)
	}
	if opts.PinDir != "" && opts.ReplaceIncompatible {
		// An earlier layout's pins: their maps live on while programs
		// attached with them do, which this build replaces.
		for _, name := range legacyPins {
			os.Remove(filepath.Join(opts.PinDir, name))
		}
	}
	s.Endpoints = &Endpoints{Map: opened[EndpointsName], Cache: opened[CacheName]}
	s.Ztunnel = &ZtunnelMap{opened[ZtunnelName]}
	s.Relays = &Relays{opened[RelaysName]}
	s.Stats = &Stats{opened[StatsName]}
	s.DNSOrig = &DNSOrig{opened[DNSOrigName]}
	s.DNSTCP = &DNSOrig{opened[DNSTCPName]}
	s.Events = opened[EventsName]
	s.Monitor = &MonitorMap{opened[MonitorName]}
	if !slices.Contains(s.Created, CacheName) {
		// Heal a cache that an earlier writer left out of step (it was
		// killed between a map write and a slot write); rewrites nothing
		// when the two agree.
		if _, err := s.Endpoints.Sync(); err != nil {
			return fail(err)
		}
	}
	return s, nil
}

// ErrNoPins is returned by OpenPinned when a map is not pinned: no agent
// has run on this node (or uninstall removed everything).
var ErrNoPins = errors.New("no meshredirect pins")

// OpenPinned opens the pinned maps under dir without ever creating one, for
// tools that look at a node (status) while an agent may or may not run. A
// missing pin is an error wrapping ErrNoPins, but for the DNS maps, which
// an older agent did not make (their fields are then nil maps), and the
// events and monitor maps (Events and Monitor.Map nil); an
// incompatible one wraps ErrIncompatiblePin.
func OpenPinned(dir string) (*Set, error) {
	if err := removeMemlock(); err != nil {
		return nil, err
	}
	opened := map[string]*ebpf.Map{}
	fail := func(err error) (*Set, error) {
		for _, m := range opened {
			m.Close()
		}
		return nil, err
	}
	for name, spec := range Specs(0) {
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) && (name == DNSOrigName || name == DNSTCPName || name == EventsName || name == MonitorName) {
			// Added beside the pins of an older agent by the first agent
			// that has them: until it runs, a node has none.
			continue
		}
		if errors.Is(err, os.ErrNotExist) {
			return fail(fmt.Errorf("%w under %s (has the agent run on this node? is bpffs mounted at /sys/fs/bpf?)", ErrNoPins, dir))
		}
		if err != nil {
			return fail(fmt.Errorf("open pinned map %s: %w", path, err))
		}
		opened[name] = m
		if name == EndpointsName {
			// Any size the agent was configured with.
			spec = spec.Copy()
			spec.MaxEntries = m.MaxEntries()
		}
		if err := compatible(spec, m); err != nil {
			return fail(fmt.Errorf("pinned map %s: %w", path, err))
		}
	}
	return &Set{Endpoints: &Endpoints{Map: opened[EndpointsName], Cache: opened[CacheName]},
		Ztunnel: &ZtunnelMap{opened[ZtunnelName]}, Relays: &Relays{opened[RelaysName]}, Stats: &Stats{opened[StatsName]},
		DNSOrig: &DNSOrig{opened[DNSOrigName]}, DNSTCP: &DNSOrig{opened[DNSTCPName]},
		Events: opened[EventsName], Monitor: &MonitorMap{opened[MonitorName]}}, nil
}

// Maps returns the maps by reference name, the form that
// ebpf.CollectionOptions.MapReplacements takes.
func (s *Set) Maps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		EndpointsName: s.Endpoints.Map,
		CacheName:     s.Endpoints.Cache,
		ZtunnelName:   s.Ztunnel.Map,
		RelaysName:    s.Relays.Map,
		StatsName:     s.Stats.Map,
		DNSOrigName:   s.DNSOrig.Map,
		DNSTCPName:    s.DNSTCP.Map,
		EventsName:    s.Events,
		MonitorName:   s.Monitor.Map,
	}
}

// Close releases the file descriptors. Pinned maps stay in the kernel.
func (s *Set) Close() error {
	var errs []error
	for name, m := range s.Maps() {
		if m == nil {
			continue
		}
		if err := m.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close map %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Unpin removes the pins of all the maps from dir (and those of earlier
// layouts), and dir itself when it is empty afterwards. Missing pins are not
// an error.
func Unpin(dir string) error {
	var errs []error
	for _, name := range append(sortedNames(Specs(0)), legacyPins...) {
		path := filepath.Join(dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin %s: %w", path, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		errs = append(errs, fmt.Errorf("remove pin directory %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

func openOne(dir, name string, spec *ebpf.MapSpec) (m *ebpf.Map, created bool, err error) {
	if dir == "" {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			return nil, false, fmt.Errorf("create map %s: %w", name, err)
		}
		return m, true, nil
	}

	path := filepath.Join(dir, name)
	m, err = ebpf.LoadPinnedMap(path, nil)
	switch {
	case err == nil:
		if err := compatible(spec, m); err != nil {
			m.Close()
			return nil, false, fmt.Errorf("pinned map %s: %w (remove the pin, or run 'meshredirect uninstall', to start afresh)", path, err)
		}
		return m, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, false, fmt.Errorf("open pinned map %s: %w", path, err)
	}

	m, err = ebpf.NewMap(spec)
	if err != nil {
		return nil, false, fmt.Errorf("create map %s: %w", name, err)
	}
	if err := m.Pin(path); err != nil {
		m.Close()
		return nil, false, fmt.Errorf("pin map %s at %s: %w", name, path, err)
	}
	return m, true, nil
}

// compatible reports how a pinned map differs from spec. Unlike
// MapSpec.Compatible it also compares the kernel name, which carries the
// layout version.
func compatible(spec *ebpf.MapSpec, m *ebpf.Map) error {
	var diffs []string
	if err := spec.Compatible(m); err != nil {
		diffs = append(diffs, strings.TrimSuffix(err.Error(), ": "+ebpf.ErrMapIncompatible.Error()))
	}
	info, err := m.Info()
	if err != nil {
		return fmt.Errorf("read map info: %w", err)
	}
	if info.Name != spec.Name {
		diffs = append(diffs, fmt.Sprintf("name %q, this build wants %q (another layout version)", info.Name, spec.Name))
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrIncompatiblePin, strings.Join(diffs, "; "))
}

var (
	memlockOnce sync.Once
	memlockErr  error
)

// removeMemlock lifts RLIMIT_MEMLOCK for this process, once: kernels
// before 5.11 charge BPF maps and programs against it (64 KiB by default,
// too little for the pods map); later kernels charge the memory cgroup and
// cilium/ebpf leaves the limit alone.
func removeMemlock() error {
	memlockOnce.Do(func() {
		if err := rlimit.RemoveMemlock(); err != nil {
			memlockErr = fmt.Errorf("lift RLIMIT_MEMLOCK for BPF maps (kernel before 5.11): %w", err)
		}
	})
	return memlockErr
}

func ensurePinDir(dir string) error {
	// The nearest existing directory must be on a bpffs: where none is
	// mounted, /sys/fs/bpf is an empty directory of sysfs, and a mkdir
	// there fails with a message that says nothing of bpffs.
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(existing, &st); err != nil {
		return fmt.Errorf("stat %s: %w", existing, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin directory %s: %s is %w (mount one: mount -t bpf bpf /sys/fs/bpf)", dir, existing, ErrNotBPFFS)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	return nil
}

func sortedNames(specs map[string]*ebpf.MapSpec) []string {
	names := make([]string, 0, len(specs))
	for n := range specs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
