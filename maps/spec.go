package maps

import (
	"strconv"
	"unsafe"

	"github.com/cilium/ebpf"
)

// Names by which programs reference the maps, and the file names of their pins.
const (
	PodsName    = "pods"
	ZtunnelName = "ztunnel"
	NodeName    = "node"
	StatsName   = "stats"
)

// LayoutVersion is part of every map's kernel name. Bump it whenever a key or
// value changes meaning, even at the same size: an agent then refuses pins of
// the older layout instead of reading them wrongly.
const LayoutVersion = 1

// DefaultPodsMaxEntries is the default capacity of the pods map: one entry per
// pod IP, so 65536 is 32768 dual-stack pods, far above any node's pod limit.
const DefaultPodsMaxEntries = 65536

// DefaultPinDir is where the maps are pinned unless configured otherwise.
const DefaultPinDir = "/sys/fs/bpf/meshredirect"

// Specs returns the specs of the four maps, keyed by reference name. A
// podsMaxEntries of zero means DefaultPodsMaxEntries.
func Specs(podsMaxEntries uint32) map[string]*ebpf.MapSpec {
	if podsMaxEntries == 0 {
		podsMaxEntries = DefaultPodsMaxEntries
	}
	return map[string]*ebpf.MapSpec{
		PodsName: {
			Name:       kernelName("pods"),
			Type:       ebpf.Hash,
			KeySize:    uint32(unsafe.Sizeof(PodKey{})),
			ValueSize:  PodSize,
			MaxEntries: podsMaxEntries,
		},
		ZtunnelName: {
			Name:       kernelName("ztunnel"),
			Type:       ebpf.Array,
			KeySize:    4,
			ValueSize:  ZtunnelSize,
			MaxEntries: 1,
		},
		NodeName: {
			Name:       kernelName("node"),
			Type:       ebpf.Array,
			KeySize:    4,
			ValueSize:  uint32(unsafe.Sizeof(NodeAddr{})),
			MaxEntries: 2,
		},
		StatsName: {
			Name:       kernelName("stats"),
			Type:       ebpf.PerCPUArray,
			KeySize:    4,
			ValueSize:  uint32(unsafe.Sizeof(Counter{})),
			MaxEntries: StatsMaxEntries,
		},
	}
}

// StatsMaxEntries is the stats map's size: room for verdicts added later, so
// that a new verdict keeps the pin compatible (an agent reads only the
// verdicts it knows, and a program only counts its own).
const StatsMaxEntries = 32

// A verdict beyond the stats map would never be counted: this fails to
// compile when there are more verdicts than entries.
var _ [StatsMaxEntries - numVerdicts]struct{}

// kernelName is the name the kernel shows for a map (at most 15 bytes).
func kernelName(short string) string {
	return "mr_" + short + "_v" + strconv.Itoa(LayoutVersion)
}
