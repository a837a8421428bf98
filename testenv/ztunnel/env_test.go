package ztunnel

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/testenv"
)

// These tests need no eBPF: testenv's SteerToZtunnel (policy routing)
// stands in for the dataplane's capture. Routing cannot change ports, so the
// tests' servers listen on the stand-in's port numbers (15001, 15006, 15053)
// or the client dials 15008 itself; the original destination is still an
// address ztunnel does not own.

type env struct {
	node, peer             *testenv.Node
	client, server, remote *testenv.Pod
	zt                     *testenv.Pod
}

// newEnv builds two nodes (client, server and ztunnel on node1, remote on
// node2) with the client's and the server's traffic, and node2's traffic to
// node1's pods, steered to ztunnel.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{node: testenv.NewNode(t, testenv.NodeOptions{})}
	e.client = e.node.AddPod("client", testenv.Ambient)
	e.server = e.node.AddPod("server", testenv.Ambient)
	e.zt = e.node.AddZtunnel()
	e.peer = e.node.AddPeerNode("node2")
	e.remote = e.peer.AddPod("remote", testenv.NotAmbient)
	e.node.SteerToZtunnel(e.client, e.server)
	return e
}

// start runs a stand-in in the ztunnel pod, closed when the test ends.
func (e *env) start(t *testing.T, opts Options) *Server {
	t.Helper()
	opts.Netns = e.zt.Netns
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func families() []struct {
	name string
	v6   bool
} {
	return []struct {
		name string
		v6   bool
	}{{"v4", false}, {"v6", true}}
}

func ip(p *testenv.Pod, v6 bool) netip.Addr {
	if v6 {
		return p.IPv6
	}
	return p.IPv4
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
