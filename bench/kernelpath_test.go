package main

import (
	"net"
	"testing"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/testenv"
)

// TestInjections pins down where each mode's paths are injected and
// where their segments must land.
func TestInjections(t *testing.T) {
	pod := func(name string) *testenv.Pod {
		return &testenv.Pod{Name: name, MAC: net.HardwareAddr{0x0a, 0x58, 0, 0, 0, 1}, HostVethMAC: net.HardwareAddr{0xee, 0xee, 0, 0, 0, 1}}
	}
	h := &held{
		Leg1:     tuple{Src: mustAP("198.18.16.1:10001"), Dst: mustAP("198.18.16.2:9090")},
		Leg2:     tuple{Src: mustAP("198.18.16.1:30001"), Dst: mustAP("198.18.16.2:9090")},
		Crossing: tuple{Src: mustAP("198.18.16.1:10002"), Dst: mustAP("198.18.16.2:15008")},
	}
	type want struct{ pod, expect string }
	for _, tc := range []struct {
		mode    string
		paths   map[string]want
		skipped int
	}{
		{report.ModeDirect, map[string]want{
			report.PathClientProxy: {"client", "server"}, report.PathProxyServer: {"ztunnel", "server"},
			report.PathServerProxy: {"server", "client"}, report.PathProxyClient: {"ztunnel", "client"}}, 0},
		{report.ModeIptablesNode, map[string]want{
			report.PathClientProxy: {"client", "ztunnel"}, report.PathProxyServer: {"ztunnel", "server"},
			report.PathServerProxy: {"server", "ztunnel"}, report.PathProxyClient: {"ztunnel", "client"}}, 0},
		{report.ModeEBPFTCX, map[string]want{
			report.PathClientProxy: {"client", "ztunnel"}, report.PathProxyServer: {"ztunnel", "server"},
			report.PathServerProxy: {"server", "ztunnel"}, report.PathProxyClient: {"ztunnel", "client"}}, 0},
		{report.ModeIptablesInpod, map[string]want{
			report.PathClientProxy: {"client", "server"}, report.PathServerProxy: {"server", "client"}}, 2},
		{report.ModeNftablesInpod, map[string]want{
			report.PathClientProxy: {"client", "server"}, report.PathServerProxy: {"server", "client"}}, 2},
		{report.ModeEBPFInpod, map[string]want{
			report.PathClientProxy: {"client", "server"}, report.PathServerProxy: {"server", "client"}}, 2},
	} {
		c := &Copy{Mode: tc.mode, Client: pod("client"), Server: pod("server"), Ztunnel: pod("ztunnel")}
		injs, skipped := injections(c, h)
		if len(injs) != len(tc.paths) || len(skipped) != tc.skipped {
			t.Errorf("%s: %d paths and %d skipped, want %d and %d", tc.mode, len(injs), len(skipped), len(tc.paths), tc.skipped)
		}
		for _, inj := range injs {
			w, ok := tc.paths[inj.Path]
			if !ok || inj.Pod.Name != w.pod || inj.Expect != w.expect {
				t.Errorf("%s %s: injected on %s's veth, landing in %s; want %+v", tc.mode, inj.Path, inj.Pod.Name, inj.Expect, w)
			}
		}
		// The node-level modes' proxy legs use the proxy's own tuples.
		for _, inj := range injs {
			if tc.mode == report.ModeEBPFTCX && inj.Path == report.PathServerProxy && inj.Flow != h.Leg2.reverse() {
				t.Errorf("%s: server->proxy injects %s, want the upstream leg's reply %s", tc.mode, inj.Flow, h.Leg2.reverse())
			}
			if report.IsInPod(tc.mode) && inj.Path == report.PathClientProxy && inj.Flow != h.Crossing {
				t.Errorf("%s: client->proxy injects %s, want the crossing %s", tc.mode, inj.Flow, h.Crossing)
			}
		}
	}
}
