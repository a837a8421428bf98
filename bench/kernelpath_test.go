package main

import (
	"net"
	"slices"
	"testing"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/testenv"
)

// TestInjections pins down where each mode's paths are injected and
// where their segments must land, for both families: an ACK of the held
// flow on every path, SYNs (from new source ports, never the held one's)
// on the paths that carry a connection's setup forward.
func TestInjections(t *testing.T) {
	pod := func(name string) *testenv.Pod {
		return &testenv.Pod{Name: name, MAC: net.HardwareAddr{0x0a, 0x58, 0, 0, 0, 1}, HostVethMAC: net.HardwareAddr{0xee, 0xee, 0, 0, 0, 1}}
	}
	helds := map[string]*held{
		report.FamilyIPv4: {
			Leg1:     tuple{Src: mustAP("198.18.16.1:10001"), Dst: mustAP("198.18.16.2:9090")},
			Leg2:     tuple{Src: mustAP("198.18.16.1:30001"), Dst: mustAP("198.18.16.2:9090")},
			Crossing: tuple{Src: mustAP("198.18.16.1:10002"), Dst: mustAP("198.18.16.2:15008")},
		},
		report.FamilyIPv6: {
			Leg1:     tuple{Src: mustAP("[fd00:10:244::1]:10001"), Dst: mustAP("[fd00:10:244::2]:9090")},
			Leg2:     tuple{Src: mustAP("[fd00:10:244::1]:30001"), Dst: mustAP("[fd00:10:244::2]:9090")},
			Crossing: tuple{Src: mustAP("[fd00:10:244::1]:10002"), Dst: mustAP("[fd00:10:244::2]:15008")},
		},
	}
	// Every held flow's port is left out of every SYN run: the legs
	// share the client's address and the server's port.
	heldPorts := map[string][]uint16{report.FamilyIPv4: {10001, 10002, 30001}, report.FamilyIPv6: {10001, 10002, 30001}}
	type want struct{ pod, expect string }
	nodeLevel := map[string]want{
		report.PathClientProxy: {"client", "ztunnel"}, report.PathProxyServer: {"ztunnel", "server"},
		report.PathServerProxy: {"server", "ztunnel"}, report.PathProxyClient: {"ztunnel", "client"}}
	for _, tc := range []struct {
		mode    string
		paths   map[string]want
		syns    int
		skipped int
	}{
		{report.ModeDirect, map[string]want{
			report.PathClientProxy: {"client", "server"}, report.PathProxyServer: {"ztunnel", "server"},
			report.PathServerProxy: {"server", "client"}, report.PathProxyClient: {"ztunnel", "client"}}, 2, 0},
		{report.ModeIptablesNode, nodeLevel, 2, 0},
		{report.ModeEBPFTCX, nodeLevel, 2, 0},
		{report.ModeIptablesInpod, map[string]want{
			report.PathClientProxy: {"client", "server"}, report.PathServerProxy: {"server", "client"}}, 1, 2},
		{report.ModeNftablesInpod, map[string]want{
			report.PathClientProxy: {"client", "server"}, report.PathServerProxy: {"server", "client"}}, 1, 2},
		{report.ModeEBPFInpod, map[string]want{
			report.PathClientProxy: {"client", "server"}, report.PathServerProxy: {"server", "client"}}, 1, 2},
	} {
		for fam, h := range helds {
			c := &Copy{Mode: tc.mode, Client: pod("client"), Server: pod("server"), Ztunnel: pod("ztunnel")}
			injs, skipped := injections(c, h)
			if len(injs) != len(tc.paths)+tc.syns || len(skipped) != tc.skipped {
				t.Errorf("%s %s: %d injections and %d skipped, want %d and %d", tc.mode, fam, len(injs), len(skipped), len(tc.paths)+tc.syns, tc.skipped)
			}
			syns := 0
			for _, inj := range injs {
				w, ok := tc.paths[inj.Path]
				if !ok || inj.Pod.Name != w.pod || inj.Expect != w.expect || inj.Family != fam {
					t.Errorf("%s %s %s %s: injected on %s's veth, landing in %s; want %+v", tc.mode, fam, inj.Path, inj.Segment, inj.Pod.Name, inj.Expect, w)
				}
				switch inj.Segment {
				case report.SegmentEstablished:
					if inj.vary != nil || inj.frame[tcpOffset(inj.Flow)+13] != tcpACK {
						t.Errorf("%s %s %s: the established segment is not a plain ACK", tc.mode, fam, inj.Path)
					}
				case report.SegmentSYN:
					syns++
					// The SYN copies its path's held flow but for the
					// source port, which the injector varies from
					// synPorts on, leaving the held flow's own out.
					var ack injection
					for _, a := range injs {
						if a.Path == inj.Path && a.Segment == report.SegmentEstablished {
							ack = a
						}
					}
					if inj.Path != report.PathClientProxy && inj.Path != report.PathProxyServer {
						t.Errorf("%s %s: SYNs on %s, a reply path", tc.mode, fam, inj.Path)
					}
					if inj.vary == nil || !slices.Equal(inj.vary.Skip, heldPorts[fam]) || inj.vary.First != synPorts ||
						inj.Flow.Src.Addr() != ack.Flow.Src.Addr() || inj.Flow.Dst != ack.Flow.Dst || inj.Pod != ack.Pod ||
						inj.frame[tcpOffset(inj.Flow)+13] != tcpSYN {
						t.Errorf("%s %s %s: SYN %s varied %+v; want the flow of %s from new ports", tc.mode, fam, inj.Path, inj.Flow, inj.vary, ack.Flow)
					}
				default:
					t.Errorf("%s %s %s: segment %q", tc.mode, fam, inj.Path, inj.Segment)
				}
			}
			if syns != tc.syns {
				t.Errorf("%s %s: %d SYN paths, want %d", tc.mode, fam, syns, tc.syns)
			}
			// The node-level modes' proxy legs use the proxy's own tuples.
			for _, inj := range injs {
				if inj.Segment != report.SegmentEstablished {
					continue
				}
				if tc.mode == report.ModeEBPFTCX && inj.Path == report.PathServerProxy && inj.Flow != h.Leg2.reverse() {
					t.Errorf("%s: server->proxy injects %s, want the upstream leg's reply %s", tc.mode, inj.Flow, h.Leg2.reverse())
				}
				if report.IsInPod(tc.mode) && inj.Path == report.PathClientProxy && inj.Flow != h.Crossing {
					t.Errorf("%s: client->proxy injects %s, want the crossing %s", tc.mode, inj.Flow, h.Crossing)
				}
			}
		}
	}
}

// TestSYNPackets: a SYN run injects at most one SYN per source port left.
func TestSYNPackets(t *testing.T) {
	syn := injection{vary: &synVary{First: synPorts}}
	if got := syn.packets(200000, maxSYNs); got != maxSYNs {
		t.Errorf("SYN run of 200000: %d packets, want %d", got, maxSYNs)
	}
	if got := syn.packets(30000, maxSYNs); got != 30000 {
		t.Errorf("SYN run of 30000: %d packets", got)
	}
	if got := syn.packets(30000, 20000); got != 20000 {
		t.Errorf("SYN run of 30000 with room for 20000: %d packets", got)
	}
	if got := (injection{}).packets(200000, 20000); got != 200000 {
		t.Errorf("ACK run of 200000: %d packets", got)
	}
}
