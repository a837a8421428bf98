package main

import (
	"fmt"
	"net/netip"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/tc"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// ebpfConfig returns the dataplane configuration of an eBPF mode.
func ebpfConfig(mode string) (attach tc.Mode, peer bool) {
	switch mode {
	case report.ModeEBPFTC:
		return tc.ModeLegacy, true
	case report.ModeEBPFTCX:
		return tc.ModeTCX, true
	case report.ModeEBPFTCRedirect:
		return tc.ModeLegacy, false
	default:
		return tc.ModeTCX, false
	}
}

// setupEBPF puts meshredirect's dataplane on the copy, as the agent
// would: node IPs, ztunnel set and ready, the client and the server
// enrolled. Its pins live in the copy's directory of the private bpffs.
// Everything is uninstalled at the end.
func (c *Copy) setupEBPF(e *env, bpffs string) {
	attach, peer := ebpfConfig(c.Mode)
	cfg := dataplane.Config{
		NodeNetns:    c.Node.Path(),
		PinDir:       pinDir(bpffs, c.Mode),
		AttachMode:   attach,
		RedirectPeer: &peer,
	}
	dp := c.openDataplane(e, cfg)
	zt := c.Ztunnel
	e.check(dp.SetZtunnel(dataplane.Ztunnel{Name: "istio-system/ztunnel", Netns: zt.Path(),
		HostIfindex: zt.HostVethIndex, IPs: []netip.Addr{zt.IPv4, zt.IPv6}}))
	e.check(dp.SetZtunnelReady(true))
	for _, p := range []string{"client", "server"} {
		e.check(dp.Enroll(scenario.PodOf(c.Node.Pod(p))))
	}
	helper := "bpf_redirect_peer"
	if !peer {
		helper = "bpf_redirect + MAC rewrite"
	}
	c.Scripts = append(c.Scripts, script{Where: "node", Steps: []step{
		{Cmd: fmt.Sprintf("# meshredirect dataplane: attach mode %s, %s, no iptables rule anywhere", attach, helper)},
		{Cmd: fmt.Sprintf("# app_outbound on tc ingress and app_inbound on tc egress of %s (client) and %s (server)", c.Client.HostVeth, c.Server.HostVeth)},
		{Cmd: fmt.Sprintf("# ztunnel_ingress on tc ingress of %s (ztunnel)", zt.HostVeth)},
		{Cmd: "sysctl -w net.ipv4.conf.<ztunnel veth>.rp_filter=0"},
	}}, script{Where: "ztunnel", Steps: []step{
		{Cmd: "# ztunnel_assign on tc ingress of eth0"},
		{Cmd: "ip rule add fwmark 0x400/0xfff lookup 100"},
		{Cmd: "ip route add local 0.0.0.0/0 dev lo table 100"},
	}})
}

// openDataplane opens the copy's dataplane with cfg, as the agent would
// at start (the node's addresses set), and uninstalls it at the end.
func (c *Copy) openDataplane(e *env, cfg dataplane.Config) *dataplane.Dataplane {
	dp, err := dataplane.Open(cfg)
	if err != nil {
		e.Fatalf("copy %s: open the dataplane: %v", c.Mode, err)
	}
	c.DP = dp
	zt := c.Ztunnel
	e.Cleanup(func() {
		dp.Close()
		if err := dataplane.Uninstall(cfg, zt.Path()); err != nil {
			e.Errorf("copy %s: uninstall the dataplane: %v", c.Mode, err)
		}
	})
	nodeAddrs, err := dp.NodeAddresses()
	e.check(err)
	e.check(dp.SetNodeAddresses(nodeAddrs))
	return dp
}
