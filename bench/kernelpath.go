package main

import (
	"fmt"

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
	frame  []byte
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
func injections(c *Copy, h *held) (out []injection, skipped []string) {
	add := func(path string, pod *testenv.Pod, flow tuple, expect string) {
		out = append(out, injection{Path: path, Pod: pod, Flow: flow, Expect: expect,
			frame: ackFrame(pod.HostVethMAC, pod.MAC, flow)})
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
	ok      bool
}

// measure injects inj's frame repeat times into copy c and checks where
// the segments landed.
func (in *injector) measure(c *Copy, inj injection, repeat int) (measured, error) {
	before, err := readLanding(c)
	if err != nil {
		return measured{}, err
	}
	ns, err := in.inject(&c.Node.Namespace, inj.Pod.HostVethIndex, inj.frame, repeat)
	if err != nil {
		return measured{}, fmt.Errorf("copy %s, path %s: %w", c.Mode, inj.Path, err)
	}
	after, err := readLanding(c)
	if err != nil {
		return measured{}, err
	}
	d, best := after.delta(before)
	m := measured{ns: ns, landed: best, packets: d[best], deltas: d}
	// Every segment where it belongs, none elsewhere.
	m.ok = best == inj.Expect && d[best] >= uint64(repeat)
	for k, v := range d {
		if k != inj.Expect && v != 0 {
			m.ok = false
		}
	}
	return m, nil
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
		v1, err := verdicts(c)
		if err != nil {
			return nil, err
		}
		p := report.Proof{Mode: c.Mode, Path: inj.Path, Inject: "tc ingress of " + inj.Pod.HostVeth + " (" + inj.Pod.Name + "'s host veth)",
			Packet: "TCP ACK " + inj.Flow.String() + ", bad checksum", Expected: inj.Expect, Landed: m.deltas, OK: m.ok}
		if v1 != nil {
			p.Counters = map[string]uint64{}
			for k, n := range v1 {
				if n != v0[k] {
					p.Counters["verdict "+k] = n - v0[k]
				}
			}
		}
		out = append(out, p)
	}
	return out, nil
}
