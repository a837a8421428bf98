package main

// setupExplicit makes ztunnel the next hop of the client's and the
// server's traffic with policy routing alone (testenv's SteerToZtunnel):
// no iptables rule, no program. The client dials the stand-in's outbound
// port (15001) at the server's address, so that the stand-in carries the
// connection exactly as it carries a captured one (same listener, same
// splice, same transparent upstream) and the server listens on 15001 too.
//
// Why not the stand-in's own address: it refuses a connection whose
// original destination is one of its listeners (it would loop). Why not
// HBONE (CONNECT on 15008): fortio's client cannot tunnel through CONNECT,
// and HTTP/2 framing would add the proxy's work, not take the kernel's
// away.
func (c *Copy) setupExplicit(e *env) {
	c.Node.SteerToZtunnel(c.Client, c.Server)
	c.Scripts = append(c.Scripts, script{Where: "node", Steps: []step{
		{Cmd: "ip route add default via " + ip4(c.Ztunnel.IPv4) + " dev " + c.Ztunnel.HostVeth + " onlink table 200"},
		{Cmd: "ip rule add iif " + c.Client.HostVeth + " lookup 200 pref 100"},
		{Cmd: "ip rule add iif " + c.Server.HostVeth + " lookup 200 pref 100"},
		{Cmd: "ip rule add iif eth0 to " + c.Node.PodCIDRv4.String() + " lookup 200 pref 100"},
	}}, script{Where: "ztunnel", Steps: []step{
		{Cmd: "ip route add local 0.0.0.0/0 dev lo table 100"},
		{Cmd: "ip rule add iif eth0 lookup 100 pref 100"},
	}})
}
