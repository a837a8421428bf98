package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/tc"
)

// Status is what `meshredirect status` shows: the node's datapath as the
// kernel and the pins hold it, whether or not an agent runs.
type Status struct {
	Kernel   string   `json:"kernel"`
	Features Features `json:"features"`
	// NodeAddresses are the node's own addresses in the endpoints map:
	// a pod's TCP to one of them passes only as a reply of the node's own
	// connection.
	NodeAddresses []string `json:"nodeAddresses"`
	// Resolvers are the DNS resolvers the strict UDP policy lets pods
	// query.
	Resolvers []string `json:"resolvers"`
	// RelayPorts are the node's UDP tunnel ports, to which a pod's
	// datagrams are dropped.
	RelayPorts []uint16      `json:"relayPorts"`
	Ztunnel    ZtunnelStatus `json:"ztunnel"`
	Pods       []PodStatus   `json:"pods"`
	// InPod are the pods captured inside their own netns (in-pod mode),
	// found from the kernel alone; absent on a node without any.
	InPod    []InPodStatus           `json:"inPod,omitempty"`
	Programs []ProgramStatus         `json:"programs"`
	Verdicts map[string]maps.Counter `json:"verdicts"`
	// Problems are inconsistencies worth a look (a pod without its
	// programs, programs without a pod, ztunnel not ready, ...).
	Problems []string `json:"problems"`
}

// Features are the kernel features the datapath picks at run time.
type Features struct {
	RedirectPeer bool `json:"redirectPeer"`
	TCX          bool `json:"tcx"`
	// AttachModes are the modes of the attachments found (tc, tcx).
	AttachModes []string `json:"attachModes"`
}

// ZtunnelStatus is the ztunnel map's entry.
type ZtunnelStatus struct {
	Interface  string   `json:"interface"`
	Ifindex    int      `json:"ifindex"`
	MAC        string   `json:"mac"`
	IPs        []string `json:"ips"`
	Ready      bool     `json:"ready"`
	CaptureDNS bool     `json:"captureDNS"`
	FailOpen   bool     `json:"failOpen"`
	// UDP is the node's UDP policy: "pass" (Istio's) or "drop" (strict).
	UDP string `json:"udp"`
	// NetnsID is ztunnel's netns id as the node's netns knows it; -1 when
	// unknown.
	NetnsID int `json:"netnsID"`
}

// PodStatus is one enrolled pod: its entries in the endpoints map grouped
// by host veth, the programs on that veth, and the veth's counters.
type PodStatus struct {
	// Namespace and Name come from the API (the agent's NodeStatus fills
	// them); empty when it is not reachable.
	Namespace string   `json:"namespace,omitempty"`
	Name      string   `json:"name,omitempty"`
	IPs       []string `json:"ips"`
	Interface string   `json:"interface"`
	Ifindex   int      `json:"ifindex"`
	// Mode is the attach mode of its programs: tc, tcx, or "missing".
	Mode string `json:"mode"`
	// Policy is the pod's own capture policy (bypass-inbound-capture,
	// bypass-dns-capture, udp=drop); empty for none.
	Policy string `json:"policy,omitempty"`
	// PacketsOut and PacketsIn are the veth's counters: packets the pod
	// sent (the app_outbound program saw each one) and packets sent to
	// it. The per-verdict split is node-wide (Verdicts).
	PacketsOut uint64 `json:"packetsOut"`
	PacketsIn  uint64 `json:"packetsIn"`
}

// InPodStatus is one pod captured in its own network namespace (in-pod
// mode): a netns, other than the node's and ztunnel's, that holds our
// programs or our policy routing, or an address that is a pod in the
// endpoints map without programs on its host veth.
type InPodStatus struct {
	// Namespace and Name come from the API (the agent's NodeStatus fills
	// them); empty when it is not reachable.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// IPs are the netns's addresses that are pods in the endpoints map,
	// else all its global addresses.
	IPs []string `json:"ips"`
	// Netns is the path the netns was found at: a bind mount, or
	// /proc/<pid>/ns/net of a process in it.
	Netns string `json:"netns"`
	// Interface is the pod's interface in its netns (eth0).
	Interface string `json:"interface"`
	// Mode is the attach mode of its programs: tc, tcx, or "missing"
	// when not all three in-pod programs are attached.
	Mode     string         `json:"mode"`
	Programs []InPodProgram `json:"programs"`
	// PolicyRouting says whether the mark rule and `local default dev
	// lo` of table 100 are there, both families: without them captured
	// packets do not reach ztunnel's sockets in the pod.
	PolicyRouting bool `json:"policyRouting"`
	// Policy is the pod's own capture policy, as PodStatus.Policy.
	Policy string `json:"policy,omitempty"`
	// Ztunnel says whether ztunnel took the pod: "acked" when the pod
	// carries ambient.istio.io/redirection=enabled (the agent sets it in
	// in-pod mode only after ztunnel acknowledged the pod over ZDS), "not
	// acked" when it does not, empty when the API was not asked.
	Ztunnel string `json:"ztunnel,omitempty"`
}

// InPodProgram is one of our programs attached inside a pod's netns.
type InPodProgram struct {
	Name      string `json:"name"`
	ID        uint32 `json:"id"`
	Interface string `json:"interface"`
	Direction string `json:"direction"`
	Mode      string `json:"mode"`
}

// ProgramStatus is one program found attached.
type ProgramStatus struct {
	Name        string    `json:"name"`
	ID          uint32    `json:"id"`
	Tag         string    `json:"tag"`
	LoadedAt    time.Time `json:"loadedAt,omitzero"`
	Attachments int       `json:"attachments"`
	// Current says whether its instructions are those this binary
	// generates for this kernel: false after an upgrade until the new agent
	// has replaced it.
	Current bool `json:"current"`
}

// InspectOptions say where to look.
type InspectOptions struct {
	// NodeNetns is the path of the node's network namespace; empty means
	// this thread's.
	NodeNetns string
	// PinDir is the bpffs directory of the pins; empty means
	// DefaultPinDir.
	PinDir string
	// NetnsDirs are the directories of netns bind mounts searched, with
	// /proc/*/ns/net, for pods captured in-pod; nil means
	// resolve.DefaultNetnsDirs.
	NetnsDirs []string
	// AssignFailedWait is how long status waits to see whether a non-zero
	// assign_failed count rises; zero means a second.
	AssignFailedWait time.Duration
}

func (o InspectOptions) assignFailedWait() time.Duration {
	if o.AssignFailedWait == 0 {
		return time.Second
	}
	return o.AssignFailedWait
}

// Inspect reads the node's datapath from the kernel and the pins, whether
// or not an agent runs: what `meshredirect status` shows. It changes
// nothing. The pods are sorted by interface index; the agent names them
// from the API.
func Inspect(ctx context.Context, o InspectOptions) (Status, error) {
	liftMemlock()
	cfg := Config{NodeNetns: o.NodeNetns, PinDir: o.PinDir}
	st := Status{Verdicts: map[string]maps.Counter{}}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		st.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	opts, err := mrasm.Detect()
	if err != nil {
		return st, err
	}
	st.Features.RedirectPeer = opts.RedirectPeer
	st.Features.TCX = tc.HaveTCX()

	set, err := maps.OpenPinned(cfg.pinDir())
	if err != nil {
		return st, err
	}
	defer set.Close()
	node, err := openNetns(o.NodeNetns)
	if err != nil {
		return st, err
	}
	defer node.Close()
	m, err := tc.New(cfg.tcConfig(o.NodeNetns))
	if err != nil {
		return st, err
	}
	defer m.Close()
	attachments, err := m.ListAll()
	if err != nil {
		return st, err
	}
	entries, err := set.Endpoints.All()
	if err != nil {
		return st, err
	}

	scans, err := scanNetns(cfg, o.NetnsDirs)
	if err != nil {
		st.Problems = append(st.Problems, fmt.Sprintf("pods' netns not all read, in-pod pods may be missing: %v", err))
	}

	in := inspection{st: &st, set: set, node: node, attachments: attachments, entries: entries,
		scans: scans, inPodIPs: map[netip.Addr]bool{}}
	for _, step := range []func() error{in.addresses, in.inPod, in.ztunnel, in.pods} {
		if err := step(); err != nil {
			return st, err
		}
	}
	st.Programs = programStatus(attachments)
	return st, in.verdicts(ctx, o.assignFailedWait())
}

// inspection is what Inspect has read, which its steps turn into a Status.
type inspection struct {
	st          *Status
	set         *maps.Set
	node        *nsLink
	attachments []tc.Attachment
	entries     map[netip.Addr]maps.Endpoint
	// scans are the netns other than the node's; inPodIPs the endpoints
	// map's pods that inPod found in one of them.
	scans    []netnsScan
	inPodIPs map[netip.Addr]bool
}

func (in inspection) problem(format string, args ...any) {
	in.st.Problems = append(in.st.Problems, fmt.Sprintf(format, args...))
}

// addresses fills the node's addresses, resolvers and tunnel ports.
func (in inspection) addresses() error {
	st := in.st
	for ip, e := range in.entries {
		if e.Flags&maps.EndpointNode != 0 {
			st.NodeAddresses = append(st.NodeAddresses, ip.String())
		}
		if e.Flags&maps.EndpointResolver != 0 {
			st.Resolvers = append(st.Resolvers, ip.String())
		}
	}
	sort.Strings(st.NodeAddresses)
	sort.Strings(st.Resolvers)
	var err error
	if st.RelayPorts, err = in.set.Relays.Get(); err != nil {
		return err
	}
	if len(st.NodeAddresses) == 0 {
		in.problem("no node address in the endpoints map: kubelet probes' replies go to ztunnel")
	}
	return nil
}

// ztunnel fills ztunnel's entry and says what its state does to traffic.
func (in inspection) ztunnel() error {
	zt, err := in.set.Ztunnel.Get()
	if err != nil {
		return err
	}
	z := ZtunnelStatus{Ifindex: int(zt.Ifindex), MAC: fmtMAC(zt.MAC),
		Ready: zt.Flags&maps.ZtunnelReady != 0, CaptureDNS: zt.Flags&maps.ZtunnelCaptureDNS != 0, FailOpen: zt.Flags&maps.ZtunnelFailOpen != 0,
		UDP: "pass", NetnsID: -1}
	if zt.Flags&maps.ZtunnelUDPDrop != 0 {
		z.UDP = "drop"
	}
	if zt.Flags&maps.ZtunnelNetnsID != 0 {
		z.NetnsID = int(zt.NetnsID)
	} else if zt.Ifindex != 0 {
		in.problem("ztunnel's netns id is unknown: the node's replies to ztunnel's connections made with a pod's address reach the pod, not ztunnel")
	}
	for _, raw := range [][16]byte{zt.IPv4, zt.IPv6} {
		if raw != ([16]byte{}) {
			z.IPs = append(z.IPs, netip.AddrFrom16(raw).Unmap().String())
		}
	}
	if l, err := in.node.link(int(zt.Ifindex)); err == nil {
		z.Interface = l.name
	} else if zt.Ifindex != 0 {
		in.problem("ztunnel's veth (ifindex %d) is gone", zt.Ifindex)
	}
	switch {
	case zt.Ifindex == 0 && !in.nodeModePods():
		// In-pod mode only: ztunnel lives in each pod, not in this map.
	case zt.Ifindex == 0:
		in.problem("no ztunnel set up: ambient pods' traffic is dropped")
	case !z.Ready && !z.FailOpen:
		in.problem("ztunnel not ready: ambient pods' traffic is dropped (fail closed)")
	case !z.Ready:
		in.problem("ztunnel not ready: ambient pods' traffic passes uncaptured (fail open)")
	}
	in.st.Ztunnel = z
	return nil
}

// pods fills the enrolled pods, by host veth, with their programs and
// counters, and the attach modes found; a pod without both programs, or
// programs without a pod, is a problem.
func (in inspection) pods() error {
	st := in.st
	byIf := map[int]*PodStatus{}
	for ip, e := range in.entries {
		if !e.IsPod() || in.inPodIPs[ip] {
			continue
		}
		p := byIf[int(e.Ifindex)]
		if p == nil {
			p = &PodStatus{Ifindex: int(e.Ifindex), Policy: policyOf(e.Flags).String()}
			byIf[int(e.Ifindex)] = p
		}
		p.IPs = append(p.IPs, ip.String())
	}
	modes := map[string]bool{}
	for _, a := range in.attachments {
		modes[a.Mode.String()] = true
	}
	for mode := range modes {
		if !slices.Contains(st.Features.AttachModes, mode) {
			st.Features.AttachModes = append(st.Features.AttachModes, mode)
		}
	}
	sort.Strings(st.Features.AttachModes)
	for ifindex, p := range byIf {
		sort.Strings(p.IPs)
		if l, err := in.node.link(ifindex); err == nil {
			p.Interface = l.name
			if s := l.stats; s != nil {
				// The host veth receives what the pod sends.
				p.PacketsOut, p.PacketsIn = s.rxPackets, s.txPackets
			}
		} else {
			in.problem("endpoints map entries %v point at ifindex %d, which is gone", p.IPs, ifindex)
		}
		p.Mode = podMode(in.attachments, ifindex)
		if p.Mode == "missing" {
			in.problem("pod %v on %s has its map entries but not both programs", p.IPs, p.Interface)
		}
		st.Pods = append(st.Pods, *p)
	}
	sort.Slice(st.Pods, func(i, j int) bool { return st.Pods[i].Ifindex < st.Pods[j].Ifindex })
	for _, a := range in.attachments {
		prog := programOf(a)
		if (prog == mrasm.AppOutbound || prog == mrasm.AppInbound) && byIf[a.Ifindex] == nil {
			in.problem("%s on %s belongs to no enrolled pod (the agent removes it at its next reconcile)", prog, a.Ifname)
		}
		if a.Defunct {
			in.problem("defunct tcx link %s (its interface is gone)", a.PinPath)
		}
	}
	return nil
}

// nodeModePods tells whether the endpoints map has pods other than those
// captured in-pod.
func (in inspection) nodeModePods() bool {
	for ip, e := range in.entries {
		if e.IsPod() && !in.inPodIPs[ip] {
			return true
		}
	}
	return false
}

// inPod fills the pods captured in their own netns, and says which have
// their map entries without their programs, or programs without the
// policy routing that delivers what they capture.
func (in inspection) inPod() error {
	st := in.st
	// Host veths that carry node mode's programs: their pods are node
	// mode's, whatever their netns holds.
	nodeMode := map[int]bool{}
	for _, a := range in.attachments {
		if p := programOf(a); p == mrasm.AppOutbound || p == mrasm.AppInbound {
			nodeMode[a.Ifindex] = true
		}
	}
	modes := map[string]bool{}
	for _, s := range in.scans {
		if s.ztunnel() {
			continue
		}
		ips := s.podIPs(in.entries)
		if slices.ContainsFunc(ips, func(ip netip.Addr) bool { return nodeMode[int(in.entries[ip].Ifindex)] }) {
			continue
		}
		if !s.ours(in.entries) && len(ips) == 0 {
			continue
		}
		p := InPodStatus{Netns: s.path, PolicyRouting: s.policyRouting()}
		for _, ip := range ips {
			in.inPodIPs[ip] = true
			p.IPs = append(p.IPs, ip.String())
		}
		if len(ips) > 0 {
			p.Policy = policyOf(in.entries[ips[0]].Flags).String()
		} else {
			for _, a := range s.addrs {
				p.IPs = append(p.IPs, a.ip.String())
			}
		}
		sort.Strings(p.IPs)
		hooks := map[string]bool{}
		var podModes []string
		for _, a := range s.attachments {
			name := programOf(a)
			p.Programs = append(p.Programs, InPodProgram{Name: name, ID: uint32(a.ProgramID), Interface: a.Ifname,
				Direction: string(a.Direction), Mode: a.Mode.String()})
			if a.Defunct {
				continue
			}
			if a.Ifindex != mrasm.LoopbackIfindex && p.Interface == "" {
				p.Interface = a.Ifname
			}
			for _, h := range podHooks {
				if h.name == name && h.dir == a.Direction {
					hooks[h.name] = true
				}
			}
			if !slices.Contains(podModes, a.Mode.String()) {
				podModes = append(podModes, a.Mode.String())
			}
			modes[a.Mode.String()] = true
		}
		if p.Interface == "" {
			for _, a := range s.addrs {
				if len(ips) == 0 || slices.Contains(ips, a.ip) {
					p.Interface = s.ifnames[a.index]
					break
				}
			}
		}
		sort.Strings(podModes)
		p.Mode = strings.Join(podModes, "+")
		var missing []string
		for _, h := range podHooks {
			if !hooks[h.name] {
				missing = append(missing, h.name)
			}
		}
		if len(missing) > 0 {
			p.Mode = "missing"
		}
		switch {
		case len(ips) > 0 && len(missing) > 0:
			in.problem("in-pod pod %v (netns %s) has its map entries but not its programs %s: its traffic is not captured",
				p.IPs, s.path, strings.Join(missing, ", "))
		case len(ips) == 0:
			in.problem("in-pod capture in netns %s (%v) belongs to no enrolled pod", s.path, p.IPs)
		}
		if len(hooks) > 0 && !p.PolicyRouting {
			in.problem("in-pod pod %v (netns %s) has its programs but not the policy routing (fwmark %#x lookup %d, local default dev lo table %d, both families): captured packets do not reach ztunnel's sockets",
				p.IPs, s.path, mrasm.TProxyMark, mrasm.TProxyTable, mrasm.TProxyTable)
		}
		st.InPod = append(st.InPod, p)
	}
	sort.Slice(st.InPod, func(i, j int) bool { return strings.Join(st.InPod[i].IPs, ",") < strings.Join(st.InPod[j].IPs, ",") })
	for mode := range modes {
		if !slices.Contains(st.Features.AttachModes, mode) {
			st.Features.AttachModes = append(st.Features.AttachModes, mode)
		}
	}
	return nil
}

// verdicts fills the counters. A non-zero assign_failed is read again
// after wait: one that still rises means ztunnel's sockets refuse
// assignment now (SO_REUSEPORT listeners before Linux 6.5), and new
// connections are dropped.
func (in inspection) verdicts(ctx context.Context, wait time.Duration) error {
	counters, err := in.set.Stats.Read()
	if err != nil {
		return err
	}
	for v, c := range counters {
		in.st.Verdicts[v.String()] = c
	}
	n := counters[maps.VerdictAssignFailed].Packets
	if n == 0 {
		return nil
	}
	select {
	case <-ctx.Done():
	case <-time.After(wait):
	}
	if again, err := in.set.Stats.Read(); err == nil && again[maps.VerdictAssignFailed].Packets > n {
		in.st.Verdicts[maps.VerdictAssignFailed.String()] = again[maps.VerdictAssignFailed]
		in.problem("assign_failed is rising (%d, then %d): ztunnel's sockets refuse bpf_sk_assign "+
			"(a listener with SO_REUSEPORT on a kernel before 6.5?) and new connections are dropped", n, again[maps.VerdictAssignFailed].Packets)
	}
	return nil
}

// policyOf is the pod policy an endpoint's flags hold.
func policyOf(flags uint16) Policy {
	return Policy{
		BypassInbound: flags&maps.EndpointBypassInbound != 0,
		BypassDNS:     flags&maps.EndpointBypassDNS != 0,
		UDPDrop:       flags&maps.EndpointUDPDrop != 0,
	}
}

func podMode(attachments []tc.Attachment, ifindex int) string {
	var modes []string
	dirs := 0
	for _, a := range attachments {
		if a.Ifindex == ifindex && !a.Defunct {
			dirs++
			if !slices.Contains(modes, a.Mode.String()) {
				modes = append(modes, a.Mode.String())
			}
		}
	}
	if dirs < 2 || len(modes) == 0 {
		return "missing"
	}
	sort.Strings(modes)
	out := modes[0]
	for _, m := range modes[1:] {
		out += "+" + m
	}
	return out
}

// programStatus describes each attached program and whether it is this
// build's (its kernel tag matches the instructions generated here).
func programStatus(attachments []tc.Attachment) []ProgramStatus {
	want := buildTags()
	byID := map[ebpf.ProgramID]*ProgramStatus{}
	var order []ebpf.ProgramID
	for _, a := range attachments {
		ps := byID[a.ProgramID]
		if ps == nil {
			ps = &ProgramStatus{ID: uint32(a.ProgramID), Name: a.ProgramName}
			if prog, err := ebpf.NewProgramFromID(a.ProgramID); err == nil {
				if info, err := prog.Info(); err == nil {
					ps.Name, ps.Tag = info.Name, info.Tag
					if d, ok := info.LoadTime(); ok {
						ps.LoadedAt = bootTime().Add(d)
					}
				}
				prog.Close()
			}
			ps.Current = ps.Tag != "" && want[ps.Name+"/"+ps.Tag]
			byID[a.ProgramID] = ps
			order = append(order, a.ProgramID)
		}
		ps.Attachments++
	}
	out := make([]ProgramStatus, 0, len(order))
	for _, id := range order {
		out = append(out, *byID[id])
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Name < out[j].Name || out[i].Name == out[j].Name && out[i].ID < out[j].ID
	})
	return out
}

// buildTags returns "name/tag" of every program this binary generates, in
// both redirect variants, as the kernel tags them: loaded here with
// throwaway maps (the kernel's tag leaves map references out, so their size
// does not matter) and read back.
func buildTags() map[string]bool {
	out := map[string]bool{}
	liftMemlock()
	for _, peer := range []bool{true, false} {
		coll, err := ebpf.NewCollection(mrasm.CollectionSpec(mrasm.Options{RedirectPeer: peer, PodsMaxEntries: 1}))
		if err != nil {
			continue
		}
		for name, prog := range coll.Programs {
			if info, err := prog.Info(); err == nil {
				out[name+"/"+info.Tag] = true
			}
		}
		coll.Close()
	}
	return out
}

// bootTime is when the machine booted (program load times count from it).
func bootTime() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}
	}
	return time.Now().Add(-time.Duration(ts.Nano()))
}

func fmtMAC(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}
