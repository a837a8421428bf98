package testenv_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// TestExample is the package's example, run: it builds a node with two
// ambient pods, a plain one, ztunnel and a second node, starts the ztunnel
// stand-in, and checks that a connection from an ambient pod to the other
// node's pod went through it.
func TestExample(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := testenv.NewNode(t, testenv.NodeOptions{})
	client := node.AddPod("client", testenv.Ambient)
	server := node.AddPod("server", testenv.Ambient)
	plain := node.AddPod("plain", testenv.NotAmbient)
	zt := node.AddZtunnel()
	remote := node.AddPeerNode("node2").AddPod("remote", testenv.NotAmbient)

	// Capture: the dataplane under test enrols client and server by
	// (IPv4/IPv6, HostVethIndex, MAC); without it, routing stands in.
	node.SteerToZtunnel(client, server)
	zts, err := ztunnel.Start(ztunnel.Options{Netns: zt.Netns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { zts.Close() })

	// Steering delivers to ztunnel's netns without a port rewrite (that is
	// the dataplane's job), so the server listens on the outbound port.
	dst := netip.AddrPortFrom(remote.IPv6, ztunnel.PortOutbound)
	echo := remote.StartEcho(int(dst.Port()))
	c, err := client.Dial("tcp6", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := zts.WaitFor(ctx, func(r ztunnel.Record) bool { return r.Done() })
	if err != nil {
		t.Fatalf("no record of the connection in the stand-in: %v", err)
	}
	t.Log(r.Listener, r.Source, r.OrigDst, echo.Peers())
	if r.Listener != ztunnel.PortOutbound || r.Source.Addr() != client.IPv6 || r.OrigDst != dst {
		t.Errorf("the stand-in recorded %d from %s to %s, want the outbound listener from %s to %s", r.Listener, r.Source, r.OrigDst, client.IPv6, dst)
	}

	// A pod out of the mesh reaches its node directly (steering takes to
	// ztunnel all of an ambient pod's traffic, and all that enters from
	// the fabric for the node's pods).
	if err := plain.Ping(ctx, node.IPv4); err != nil {
		t.Errorf("ping the node from the plain pod: %v", err)
	}
}
