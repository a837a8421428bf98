package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/testenv"
)

// injection is one path of one copy: which host veth the segments arrive
// on, which flow they belong to, and where they must land.
type injection struct {
	Path string
	// Pod is the pod whose host veth the segments arrive on.
	Pod *testenv.Pod
	// Flow is the segments' tuple.
	Flow tuple
	// Expect is the namespace whose TCP layer must count them.
	Expect string
	// Family is the flow's IP family; Segment an ACK of the held flow
	// (report.SegmentEstablished) or SYNs of new ones (report.SegmentSYN,
	// each frame from a source port of its own: vary).
	Family, Segment string
	frame           []byte
	vary            *synVary
}

// injections returns the paths of copy c for its held connection h.
//
//   - Node-level modes (iptables-node, eBPF): client->proxy is the
//     client's segment arriving on its host veth (leg 1, to ztunnel);
//     proxy->server ztunnel's upstream segment arriving on ztunnel's host
//     veth (leg 2, to the server); server->proxy the server's reply (leg 2,
//     to ztunnel); proxy->client ztunnel's reply to the client (leg 1).
//   - direct: the same four arrivals with no mesh: leg 1 both ways, from
//     the pods' veths and from ztunnel's (plain forwarding between the
//     same interfaces, the floor every path is compared with).
//   - in-pod modes (iptables-inpod, nftables-inpod, ebpf-inpod): the
//     proxies live in the pods, so a request crosses the node once, from
//     the client pod's proxy to the server pod's HBONE listener
//     (client->proxy: the segment arrives on the client's host veth and
//     lands in the server pod's netns, at the stand-in's :15008 there),
//     and a reply once the other way (server->proxy: from the server
//     pod's :15008 to the client pod's proxy); proxy->server and
//     proxy->client are loopback hops inside a pod, which no host veth
//     sees: not measured. The same hops in the three modes, the capture
//     in the pods being what differs.
//
// Every path gets the held flow's ACKs; the paths that carry a request's
// connection setup forward (client->proxy, proxy->server) get SYNs too,
// from the same addresses to the same port, each from a port of its own
// (the reply paths would carry SYN-ACKs, of the entries the SYNs made).
func injections(c *Copy, h *held) (out []injection, skipped []string) {
	add := func(path string, pod *testenv.Pod, flow tuple, expect string) {
		fam := familyOf(flow.Src.Addr())
		out = append(out, injection{Path: path, Pod: pod, Flow: flow, Expect: expect, Family: fam,
			Segment: report.SegmentEstablished, frame: ackFrame(pod.HostVethMAC, pod.MAC, flow)})
		if path != report.PathClientProxy && path != report.PathProxyServer {
			return
		}
		syn := tuple{Src: netip.AddrPortFrom(flow.Src.Addr(), synPorts), Dst: flow.Dst}
		out = append(out, injection{Path: path, Pod: pod, Flow: syn, Expect: expect, Family: fam,
			Segment: report.SegmentSYN, frame: injectFrame(pod.HostVethMAC, pod.MAC, syn, tcpSYN),
			vary: &synVary{Off: tcpOffset(syn), First: synPorts, Skip: h.ports()}})
	}
	switch {
	case c.Mode == report.ModeDirect:
		add(report.PathClientProxy, c.Client, h.Leg1, "server")
		add(report.PathProxyServer, c.Ztunnel, h.Leg1, "server")
		add(report.PathServerProxy, c.Server, h.Leg1.reverse(), "client")
		add(report.PathProxyClient, c.Ztunnel, h.Leg1.reverse(), "client")
	case report.IsInPod(c.Mode):
		add(report.PathClientProxy, c.Client, h.Crossing, "server")
		add(report.PathServerProxy, c.Server, h.Crossing.reverse(), "client")
		for _, p := range []string{report.PathProxyServer, report.PathProxyClient} {
			skipped = append(skipped, fmt.Sprintf("kernel path %s of %s: a loopback hop inside the pod's netns, on no host veth", p, c.Mode))
		}
	default:
		add(report.PathClientProxy, c.Client, h.Leg1, "ztunnel")
		add(report.PathProxyServer, c.Ztunnel, h.Leg2, "server")
		add(report.PathServerProxy, c.Server, h.Leg2.reverse(), "ztunnel")
		add(report.PathProxyClient, c.Ztunnel, h.Leg1.reverse(), "client")
	}
	return out, skipped
}

// measured is one kernel-path measurement.
type measured struct {
	ns      float64
	landed  string
	packets uint64
	deltas  map[string]uint64
	// entries are, after a SYN run, the unreplied conntrack entries it
	// made (and that measure deleted) in each namespace: one per SYN
	// where conntrack runs, and in iptables-node one more per tunnel
	// flow (VXLAN's UDP source port follows the inner flow's hash).
	entries map[string]uint64
	ok      bool
}

// familyOf names a's IP family.
func familyOf(a netip.Addr) string {
	if a.Is4() {
		return report.FamilyIPv4
	}
	return report.FamilyIPv6
}

// packets returns how many frames a run of inj injects: repeat, or for
// SYNs at most syns (one per source port left, and room in the
// conntrack table: synLimit).
func (inj injection) packets(repeat, syns int) int {
	if inj.vary != nil && repeat > syns {
		return syns
	}
	return repeat
}

// synLimit is the most SYNs a run injects: one per source port left
// (maxSYNs), and no more than a third of nf_conntrack_max (per netns; a
// SYN makes two entries in iptables-node's node, its own and its
// tunnel's), so that no SYN finds the table full and is dropped.
func synLimit() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if errors.Is(err, os.ErrNotExist) {
		return maxSYNs, nil // no conntrack at all
	}
	if err != nil {
		return 0, fmt.Errorf("read nf_conntrack_max: %w", err)
	}
	ctMax, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read nf_conntrack_max: %w", err)
	}
	if ctMax > 0 && ctMax/3 < maxSYNs {
		return ctMax / 3, nil
	}
	return maxSYNs, nil
}

// measure injects inj's frame repeat times into copy c and checks where
// the segments landed. A SYN run's conntrack entries (one per SYN, never
// replied to) are deleted after it, in every namespace of the copy, so
// that runs do not fill the table (nf_conntrack_max, per netns) and each
// run's SYNs meet the same table; the held connection's entries stay.
func (in *injector) measure(c *Copy, inj injection, repeat int) (measured, error) {
	before, err := readLanding(c)
	if err != nil {
		return measured{}, err
	}
	ns, err := in.inject(&c.Node.Namespace, inj.Pod.HostVethIndex, inj.frame, repeat, inj.vary)
	if err != nil {
		return measured{}, fmt.Errorf("copy %s, path %s: %w", c.Mode, inj.Path, err)
	}
	after, err := readLanding(c)
	if err != nil {
		return measured{}, err
	}
	m := landed(after, before, inj.Expect, repeat)
	m.ns = ns
	if inj.vary != nil {
		if m.entries, err = deleteSYNEntries(c); err != nil {
			return measured{}, err
		}
		m.ok = m.ok && checkEntries(m.entries, repeat)
	}
	return m, nil
}

// landed compares the counts after a run with those before: every
// segment where it belongs (expect), none elsewhere.
func landed(after, before landing, expect string, repeat int) measured {
	d, best := after.delta(before)
	m := measured{landed: best, packets: d[best], deltas: d}
	m.ok = best == expect && d[best] >= uint64(repeat)
	for k, v := range d {
		if k != expect && v != 0 {
			m.ok = false
		}
	}
	return m
}

// prove runs a short injection of every path of c and records where the
// segments landed, with the programs' verdict counters of an eBPF copy.
func (in *injector) prove(c *Copy, injs []injection, repeat int) ([]report.Proof, error) {
	var out []report.Proof
	for _, inj := range injs {
		v0, err := verdicts(c)
		if err != nil {
			return nil, err
		}
		m, err := in.measure(c, inj, repeat)
		if err != nil {
			return nil, err
		}
		p, err := in.proof(c, inj, m, v0, repeat)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// checkEntries: where conntrack runs, every SYN made an entry of its own
// (no namespace has some but fewer than repeat: a SYN that met an entry
// would be no new connection).
func checkEntries(entries map[string]uint64, repeat int) bool {
	for _, n := range entries {
		if n != 0 && n < uint64(repeat) {
			return false
		}
	}
	return true
}

// ports returns the source ports of h's flows, ascending: the ports a SYN
// run leaves out, so that no SYN hits a held flow's conntrack entry or
// socket (the legs share the client's address and the server's port).
func (h *held) ports() []uint16 {
	var out []uint16
	for _, t := range []tuple{h.Leg1, h.Leg2, h.Crossing} {
		if p := t.Src.Port(); p >= synPorts && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// proof records m, with the verdict counters' change since v0 and the
// conntrack entries the SYNs made, as the report's Proof.
func (in *injector) proof(c *Copy, inj injection, m measured, v0 map[string]uint64, repeat int) (report.Proof, error) {
	v1, err := verdicts(c)
	if err != nil {
		return report.Proof{}, err
	}
	what := "TCP ACK " + inj.Flow.String() + ", bad checksum"
	if inj.vary != nil {
		what = fmt.Sprintf("TCP SYN %s, source ports %d-%d (one per SYN, not the held flows' %v), bad checksum",
			inj.Flow, inj.vary.port(0), inj.vary.port(repeat-1), inj.vary.Skip)
	}
	p := report.Proof{Mode: c.Mode, Path: inj.Path, Family: inj.Family, Segment: inj.Segment,
		Inject: "tc ingress of " + inj.Pod.HostVeth + " (" + inj.Pod.Name + "'s host veth)",
		Packet: what, Expected: inj.Expect, Landed: m.deltas, OK: m.ok}
	if v1 != nil || len(m.entries) > 0 {
		p.Counters = map[string]uint64{}
	}
	for k, n := range v1 {
		if n != v0[k] {
			p.Counters["verdict "+k] = n - v0[k]
		}
	}
	for ns, n := range m.entries {
		if n != 0 {
			p.Counters["unreplied conntrack entries in the "+ns+"'s netns"] = n
		}
	}
	return p, nil
}
