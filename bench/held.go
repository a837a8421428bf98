package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// held is a TCP connection from the client pod to the benchmark's own
// listener in the server pod, open while the kernel path is measured: the
// injected segments copy its tuples, so that every mode's conntrack,
// connmarks, socket lookups and programs see a segment of an established
// flow.
type held struct {
	client, server net.Conn
	// Leg1 is the client's connection as the client sees it (client:C ->
	// server:HoldPort); Leg2 the connection that reaches the server
	// (source:P -> server:HoldPort): the proxy's upstream in the node-level
	// modes, the same as Leg1 in direct mode.
	Leg1, Leg2 tuple
	// Crossing is, for the in-pod modes, the connection that crosses the
	// node: from the client pod's proxy to the server pod's proxy (its
	// HBONE listener, 15008).
	Crossing tuple
}

// tuple is a TCP connection, from its initiator's side.
type tuple struct {
	Src, Dst netip.AddrPort
}

func (t tuple) String() string { return t.Src.String() + " -> " + t.Dst.String() }

// reverse returns the tuple of the other direction.
func (t tuple) reverse() tuple { return tuple{Src: t.Dst, Dst: t.Src} }

// holdConnection opens the held connection of a copy over family and
// finds its legs: from the server's accepted socket and from the
// stand-ins' records, which also prove that the connection went through
// the proxy.
func holdConnection(e *env, c *Copy, family string) *held {
	network, server := "tcp4", c.Server.IPv4
	if family == report.FamilyIPv6 {
		// tcp6 listens IPv6 only (IPV6_V6ONLY), beside the tcp4 listener.
		network, server = "tcp6", c.Server.IPv6
	}
	l, err := c.Server.Listen(network, fmt.Sprintf(":%d", HoldPort))
	if err != nil {
		e.Fatalf("copy %s: listen on the server's port %d (%s): %v", c.Mode, HoldPort, family, err)
	}
	e.Cleanup(func() { l.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := l.Accept()
		if err == nil {
			accepted <- conn
		}
	}()
	dst := netip.AddrPortFrom(server, HoldPort)
	cl, err := c.Client.Dial(network, dst.String())
	if err != nil {
		e.Fatalf("copy %s: dial %s from the client: %v", c.Mode, dst, err)
	}
	e.Cleanup(func() { cl.Close() })
	var sv net.Conn
	select {
	case sv = <-accepted:
	case <-time.After(5 * time.Second):
		e.Fatalf("copy %s: the server did not accept the held connection", c.Mode)
	}
	e.Cleanup(func() { sv.Close() })
	// A byte each way, so that every proxy on the way has carried data.
	if _, err := cl.Write([]byte{1}); err != nil {
		e.Fatalf("copy %s: write on the held connection: %v", c.Mode, err)
	}
	b := make([]byte, 1)
	sv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := sv.Read(b); err != nil {
		e.Fatalf("copy %s: read on the held connection: %v", c.Mode, err)
	}
	sv.Write(b)
	cl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := cl.Read(b); err != nil {
		e.Fatalf("copy %s: read the echo on the held connection: %v", c.Mode, err)
	}

	h := &held{client: cl, server: sv}
	h.Leg1 = tuple{Src: addrPort(cl.LocalAddr()), Dst: dst}
	h.Leg2 = tuple{Src: addrPort(sv.RemoteAddr()), Dst: dst}
	switch {
	case c.Mode == report.ModeDirect:
		if h.Leg2 != h.Leg1 {
			e.Fatalf("copy %s: the server saw %s, the client sent %s: something is in the way", c.Mode, h.Leg2, h.Leg1)
		}
	case report.IsInPod(c.Mode):
		h.Crossing = inpodCrossing(e, c, h)
	default:
		r := findRecord(e, c, func(r ztunnel.Record) bool { return unmap(r.Source) == h.Leg1.Src })
		if r.Listener != ztunnel.PortOutbound || unmap(r.Upstream) != h.Leg2.Src {
			e.Fatalf("copy %s: the held connection did not go through ztunnel's :15001 to the server (record %+v, server saw %s)", c.Mode, r, h.Leg2.Src)
		}
	}
	return h
}

// findRecord fetches the records of the copy's stand-in and returns the
// first that match says is the one.
func findRecord(e *env, c *Copy, match func(ztunnel.Record) bool) ztunnel.Record {
	pod := c.Standins[0].pod
	recs, err := standinRecords(pod)
	if err != nil {
		e.Fatalf("copy %s: %v", c.Mode, err)
	}
	for _, r := range recs {
		if match(r) {
			return r
		}
	}
	e.Fatalf("copy %s: no record of the held connection in the stand-in of pod %s (%d records)", c.Mode, pod.Name, len(recs))
	return ztunnel.Record{}
}

// standinRecords reads the records of the stand-in in pod through its
// admin listener, dialled from inside the pod's netns.
func standinRecords(pod *testenv.Pod) ([]ztunnel.Record, error) {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return pod.DialContext(ctx, "tcp4", addr)
		}},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/records", adminPort))
	if err != nil {
		return nil, fmt.Errorf("read the records of the stand-in in pod %s: %w", pod.Name, err)
	}
	defer resp.Body.Close()
	var recs []ztunnel.Record
	if err := json.NewDecoder(resp.Body).Decode(&recs); err != nil {
		return nil, fmt.Errorf("decode the records of the stand-in in pod %s: %w", pod.Name, err)
	}
	return recs, nil
}

func addrPort(a net.Addr) netip.AddrPort { return unmap(a.(*net.TCPAddr).AddrPort()) }

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
