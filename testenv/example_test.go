package testenv_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// Example builds a node with two ambient pods, a plain one, ztunnel and a
// second node, starts the ztunnel stand-in, and checks that a connection
// went through it. It runs inside a test function (t is its *testing.T).
func Example() {
	var t testing.TB // func TestX(t *testing.T) { ... }

	node := testenv.NewNode(t, testenv.NodeOptions{})
	client := node.AddPod("client", testenv.Ambient)
	server := node.AddPod("server", testenv.Ambient)
	node.AddPod("plain", testenv.NotAmbient)
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

	echo := server.StartEcho(ztunnel.PortOutbound)
	c, err := client.Dial("tcp6", netip.AddrPortFrom(server.IPv6, ztunnel.PortOutbound).String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	r, err := zts.WaitFor(context.Background(), func(r ztunnel.Record) bool { return r.Done() })
	fmt.Println(r.Listener, r.Source.Addr() == client.IPv6, echo.Peers(), err)
	fmt.Println(remote.Ping(context.Background(), server.IPv4))
}
