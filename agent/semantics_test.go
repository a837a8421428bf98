package agent_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/agent"
	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/kubeapi"
	"github.com/meshredirect/meshredirect/testenv/scenario"
)

// TestSemantics runs every flow of DESIGN §5 that involves a socket
// (scenario.Semantics) on nodes of the three wirings (hand-made veths, the
// reference ptp plugin, the reference bridge plugin), both families, with
// the agent driving the datapath from the real API server: pods and their
// annotations (bypass-dns-capture, bypass-inbound-capture, udp=drop) in the
// API, DNS capture on, the remote host's DNS server as resolver. Each TCP
// flow counts as captured only with the stand-in's record of it.
func TestSemantics(t *testing.T) {
	testutil.RequirePrivileged(t)
	srv := kubeapi.Shared(t)
	for _, w := range testenv.Wirings {
		t.Run(w.String(), func(t *testing.T) {
			e := newEnvWith(t, srv, scenario.Options{Wiring: w, PolicyPods: true,
				DNSAnswer: []netip.Addr{testenv.ServiceIPv4(53), testenv.ServiceIPv6(53)}})
			b := e.box
			e.labelNamespace(e.ns, agent.ModeAmbient)
			e.startAgent(func(c *agent.Config) {
				c.Dataplane.CaptureDNS = true
				c.DNSResolvers = b.Resolvers()
			})
			e.waitPolicies("every ambient pod enrolled with its policy")
			runSemantics(t, b)
		})
	}
}

// waitPolicies waits until the endpoints map holds both addresses of every
// ambient pod of the box with the flags of its policy.
func (e *env) waitPolicies(what string) {
	e.t.Helper()
	b := e.box
	set := e.maps()
	e.waitFor(what, 20*time.Second, func() bool {
		pods, err := set.Endpoints.Pods()
		if err != nil {
			return false
		}
		for _, p := range []*testenv.Pod{b.Client, b.Server, b.DNSBypass, b.Strict, b.BypassIn} {
			for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
				ep, ok := pods[ip]
				if !ok || ep.Flags != flagsOf(b.Policies[p.Name]) {
					return false
				}
			}
		}
		return true
	})
}

// runSemantics runs every flow of scenario.Semantics on b, both families,
// a subtest a flow.
func runSemantics(t *testing.T, b *scenario.Box) {
	for _, f := range scenario.Semantics() {
		t.Run(f.ID+" "+f.Name, func(t *testing.T) {
			for _, v6 := range []bool{false, true} {
				if o := f.Run(b, v6); !f.OK(o) {
					t.Errorf("%s: path %q, want %q: %v", scenario.Family(v6), o.Path, f.Expect, o.Err)
				}
			}
		})
	}
}

// flagsOf are the endpoint flags of a pod with policy pol.
func flagsOf(pol dataplane.Policy) uint16 {
	f := maps.EndpointPod
	if pol.BypassInbound {
		f |= maps.EndpointBypassInbound
	}
	if pol.BypassDNS {
		f |= maps.EndpointBypassDNS
	}
	if pol.UDPDrop {
		f |= maps.EndpointUDPDrop
	}
	return f
}
