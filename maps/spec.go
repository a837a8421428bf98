package maps

import (
	"strconv"
	"unsafe"

	"github.com/cilium/ebpf"
)

// Names by which programs reference the maps, and the file names of their pins.
const (
	EndpointsName = "endpoints"
	CacheName     = "epcache"
	ZtunnelName   = "ztunnel"
	RelaysName    = "relays"
	StatsName     = "stats"
	DNSOrigName   = "dnsorig"
	DNSTCPName    = "dnstcp"
	EventsName    = "events"
	MonitorName   = "monitor"
)

// A map added to Specs needs no new LayoutVersion: Open creates its pin
// beside the others, and an agent of the same version without it leaves
// it alone (dnsorig and dnstcp were added so in version 2, events and
// monitor later).
//
// LayoutVersion is part of every map's kernel name. Bump it whenever a key or
// value changes meaning, even at the same size: an agent then refuses pins of
// the older layout instead of reading them wrongly.
//
// Version 2 replaced the pods and node maps of version 1 with the endpoints
// map and its cache, which hold the node's own addresses beside its pods'.
const LayoutVersion = 2

// legacyPins are the pin names of earlier layouts: replaced by this one,
// removed with it.
var legacyPins = []string{"pods", "node"}

// DefaultPodsMaxEntries is the default capacity of the endpoints map: one
// entry per pod IP and node address, so 65536 is 32768 dual-stack pods, far
// above any node's pod limit.
const DefaultPodsMaxEntries = 65536

// DefaultPinDir is where the maps are pinned unless configured otherwise.
const DefaultPinDir = "/sys/fs/bpf/meshredirect"

// Specs returns the specs of the maps, keyed by reference name. A
// podsMaxEntries of zero means DefaultPodsMaxEntries.
func Specs(podsMaxEntries uint32) map[string]*ebpf.MapSpec {
	if podsMaxEntries == 0 {
		podsMaxEntries = DefaultPodsMaxEntries
	}
	return map[string]*ebpf.MapSpec{
		EndpointsName: {
			Name:       kernelName("endpoints"),
			Type:       ebpf.Hash,
			KeySize:    uint32(unsafe.Sizeof(Key{})),
			ValueSize:  EndpointSize,
			MaxEntries: podsMaxEntries,
		},
		CacheName: {
			Name:       kernelName("epcache"),
			Type:       ebpf.Array,
			KeySize:    4,
			ValueSize:  SlotSize,
			MaxEntries: CacheSlots,
		},
		ZtunnelName: {
			Name:       kernelName("ztunnel"),
			Type:       ebpf.Array,
			KeySize:    4,
			ValueSize:  ZtunnelSize,
			MaxEntries: 1,
		},
		RelaysName: {
			Name:       kernelName("relays"),
			Type:       ebpf.Array,
			KeySize:    4,
			ValueSize:  uint32(unsafe.Sizeof(RelayPorts{})),
			MaxEntries: 1,
		},
		DNSOrigName: {
			Name:       kernelName("dnsorig"),
			Type:       ebpf.LRUHash,
			KeySize:    SockAddrSize,
			ValueSize:  SockAddrSize,
			MaxEntries: DNSOrigMaxEntries,
		},
		DNSTCPName: {
			Name:       kernelName("dnstcp"),
			Type:       ebpf.LRUHash,
			KeySize:    SockAddrSize,
			ValueSize:  SockAddrSize,
			MaxEntries: DNSTCPMaxEntries,
		},
		EventsName: {
			Name:       kernelName("events"),
			Type:       ebpf.RingBuf,
			MaxEntries: EventsSize,
		},
		MonitorName: {
			Name:       kernelName("monitor"),
			Type:       ebpf.Array,
			KeySize:    4,
			ValueSize:  uint32(unsafe.Sizeof(Monitor{})),
			MaxEntries: 1,
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

// EventsSize is the size of the events ring buffer (a power of two, a
// multiple of the page size): about 1560 events of EventRecordSize (each
// with the ring buffer's own 8-byte header), which a reader draining it
// every few milliseconds fills only in a flood. An event that finds no room
// is lost, and counted in the monitor map (Monitor.Lost): the monitor
// shows what fits, and says how many did not.
const EventsSize = 256 << 10

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
