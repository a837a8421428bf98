package dataplane

import (
	"sync"

	"github.com/cilium/ebpf/rlimit"

	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/resolve"
	"github.com/meshredirect/meshredirect/tc"
)

// The names the agent and the CLI need from the packages below dataplane,
// so that nothing above it imports tc, maps or asm: the kernel is reached
// through this package only (the import-graph test in internal/layers
// keeps it so).

// Mode chooses how programs are attached: tcx links or legacy tc filters.
type Mode = tc.Mode

// The attach modes.
const (
	ModeAuto   = tc.ModeAuto
	ModeLegacy = tc.ModeLegacy
	ModeTCX    = tc.ModeTCX
)

// ParseMode returns the attach mode called s: "auto", "tc" (or "legacy")
// or "tcx".
func ParseMode(s string) (Mode, error) { return tc.ParseMode(s) }

// Direction is a TC hook of an interface: ingress or egress.
type Direction = tc.Direction

// The two hooks.
const (
	Ingress = tc.Ingress
	Egress  = tc.Egress
)

// Attachment is one of our programs found on a hook.
type Attachment = tc.Attachment

// Verdict is what a program did with a packet; Counter counts the packets
// and bytes of one verdict, summed over CPUs.
type (
	Verdict = maps.Verdict
	Counter = maps.Counter
)

// Verdicts returns every verdict, in the order the programs number them.
func Verdicts() []Verdict { return maps.Verdicts() }

// Defaults of Config.
const (
	DefaultPinDir         = maps.DefaultPinDir
	DefaultPodsMaxEntries = maps.DefaultPodsMaxEntries
	DefaultPriority       = tc.DefaultPriority
	DefaultProcSysNet     = "/proc/sys/net"
)

// ErrMapFull is returned by Enrol when the endpoints map has no room for a
// pod's entries.
var ErrMapFull = maps.ErrMapFull

var (
	memlockOnce sync.Once
	memlockErr  error
)

// liftMemlock lifts RLIMIT_MEMLOCK for this process, once: kernels before
// 5.11 charge BPF maps and programs against it (64 KiB by default); later
// ones charge the memory cgroup, and cilium/ebpf then leaves the limit
// alone. Every entry point that loads a program (a feature probe counts)
// calls it first; where it fails, the load that needed it says so.
func liftMemlock() error {
	memlockOnce.Do(func() { memlockErr = rlimit.RemoveMemlock() })
	return memlockErr
}

// Where a pod is on the node: package resolve, through this door too.
type (
	// Locator finds each pod's host interface from its IPs.
	Locator = resolve.Resolver
	// LocatorConfig says where the node's netns and the netns bind
	// mounts are.
	LocatorConfig = resolve.Config
	// PodInterface is a pod's host interface, its index and the MAC of
	// the pod's end.
	PodInterface = resolve.Interface
)

// ErrPodNotFound is wrapped by Locator.Resolve when no interface of the
// node leads to a pod's IPs (yet: the CNI may still be wiring it).
var ErrPodNotFound = resolve.ErrNotFound

// NewLocator returns a Locator reading the node's netns over rtnetlink.
func NewLocator(cfg LocatorConfig) (*Locator, error) { return resolve.New(cfg) }
