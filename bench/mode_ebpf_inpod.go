package main

import (
	"fmt"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/tc"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// setupEBPFInpod puts meshredirect's in-pod mode (DESIGN §6) on the copy,
// as the agent would, with tcx links: node addresses and relay ports, then
// the client and the server enrolled in their own netns
// (dataplane.EnrollInPod: programs on the pod's eth0 and lo, policy
// routing to the stand-in's sockets there). Nothing on the node, no
// iptables or nftables rule anywhere. Everything is uninstalled at the
// end.
func (c *Copy) setupEBPFInpod(e *env, bpffs string) {
	cfg := dataplane.Config{
		NodeNetns:  c.Node.Path(),
		PinDir:     pinDir(bpffs, c.Mode),
		AttachMode: tc.ModeTCX,
	}
	dp := c.openDataplane(e, cfg)
	ports, err := dp.RelayPorts()
	e.check(err)
	e.check(dp.SetRelayPorts(ports))
	for _, p := range c.ambientPods() {
		e.check(dp.EnrollInPod(scenario.PodOf(p)))
	}
	c.Scripts = append(c.Scripts, script{Where: "node", Steps: []step{
		{Cmd: "# meshredirect dataplane, in-pod mode: attach mode tcx, nothing on the node, no iptables or nftables rule anywhere"},
	}})
	for _, p := range c.ambientPods() {
		c.Scripts = append(c.Scripts, script{Where: p.Name, Steps: []step{
			{Cmd: fmt.Sprintf("# pod_egress on tcx egress and pod_ingress on tcx ingress of eth0, pod_loopback on tcx ingress of lo (%s's addresses)", p.Name)},
			{Cmd: "# policy routing of the captured packets to the stand-in's sockets in this netns (dataplane.EnrollInPod)"},
		}})
	}
}
