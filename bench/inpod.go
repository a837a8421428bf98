package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	mrasm "github.com/meshredirect/meshredirect/asm"
	"github.com/meshredirect/meshredirect/bench/report"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
	"github.com/meshredirect/meshredirect/zds"
)

// The in-pod modes (iptables-inpod, nftables-inpod, ebpf-inpod) differ
// only in the capture: every one runs the same stand-in, one process in
// ztunnel's pod and in the copy's proxy cgroup, in ztunnel's in-pod mode
// (-zds): the benchmark serves the ZDS socket, as the node agent does, and
// hands it the client and the server, in whose network namespaces it opens
// its listeners (15001, 15006, 15008 on [::], 15053 on loopback), every
// socket marked 0x539. A request crosses the node once: the client pod's
// 15001 tunnels it (HBONE) to the server pod's 15008.

// ambientPods are the pods a copy captures.
func (c *Copy) ambientPods() []*testenv.Pod { return []*testenv.Pod{c.Client, c.Server} }

// podAddr is p's address of family f.
func podAddr(p *testenv.Pod, f family) netip.Addr {
	if f.name == "v6" {
		return p.IPv6
	}
	return p.IPv4
}

// podUID is the uid the copy gives a pod over ZDS.
func podUID(p *testenv.Pod) string { return "bench-" + p.Name }

// startInPodStandin serves ZDS in a directory of its own, starts the
// stand-in with -zds in ztunnel's pod, and hands it the client and the
// server, returning once it has acked both (its listeners are open in
// them: ztunnel acks an add after opening them).
func (c *Copy) startInPodStandin(e *env, o buildOptions) {
	dir, err := os.MkdirTemp("", "meshredirect-bench-zds-")
	if err != nil {
		e.Fatalf("copy %s: %v", c.Mode, err)
	}
	e.Cleanup(func() { os.RemoveAll(dir) })
	srv, err := zds.Listen(zds.ServerOptions{Path: filepath.Join(dir, "ztunnel.sock")})
	if err != nil {
		e.Fatalf("copy %s: serve ZDS: %v", c.Mode, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx)
	}()
	e.Cleanup(func() {
		cancel()
		srv.Close()
		<-done
	})
	args := []string{"-zds", filepath.Join(dir, "ztunnel.sock")}
	if !mrasm.AssignsReuseport() {
		// bpf_sk_assign takes no SO_REUSEPORT listener before Linux 6.5:
		// ztunnel's INPOD_PORT_REUSE=false, for every in-pod mode alike.
		args = append(args, "-no-port-reuse")
	}
	c.startStandin(e, c.Ztunnel, o, args...)
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if err := srv.WaitConnected(wctx); err != nil {
		e.Fatalf("copy %s: the stand-in did not connect to ZDS: %v%s", c.Mode, err, c.standinStderr())
	}
	for _, p := range c.ambientPods() {
		w := zds.Workload{UID: podUID(p), Info: zds.WorkloadInfo{Name: p.Name, Namespace: "default", ServiceAccount: "default"}, Netns: p.Path()}
		if err := srv.Add(wctx, w); err != nil {
			e.Fatalf("copy %s: hand pod %s to the stand-in: %v%s", c.Mode, p.Name, err, c.standinStderr())
		}
	}
	c.ZDS = srv
}

// standinStderr returns the last lines the stand-in wrote on standard
// error, for an error message.
func (c *Copy) standinStderr() string {
	if len(c.Standins) == 0 {
		return ""
	}
	p := c.Standins[0].proc
	return fmt.Sprintf("\n%s:\n%s", p.name, lastLines(p.stderr.String(), 5))
}

// inpodCrossing finds, for an in-pod copy, the connection of the held
// connection h that crosses the node: the client pod's 15001 took the
// client's connection (its original destination the server's address, by
// SO_ORIGINAL_DST under REDIRECT) and tunnelled it from the client's
// address to the server pod's 15008, which carried it to the server.
func inpodCrossing(e *env, c *Copy, h *held) tuple {
	server := c.Server.IPv4
	if h.Leg1.Dst.Addr().Is6() {
		server = c.Server.IPv6
	}
	out := findRecord(e, c, func(r ztunnel.Record) bool { return unmap(r.Source) == h.Leg1.Src })
	in := findRecord(e, c, func(r ztunnel.Record) bool { return unmap(r.Source) == unmap(out.Upstream) })
	if out.Listener != ztunnel.PortOutbound || out.Pod.UID != podUID(c.Client) || unmap(out.OrigDst) != h.Leg1.Dst ||
		unmap(out.Tunnel) != netip.AddrPortFrom(server, ztunnel.PortHBONE) ||
		in.Listener != ztunnel.PortHBONE || in.Pod.UID != podUID(c.Server) || unmap(in.Target) != h.Leg1.Dst || unmap(in.Upstream) != h.Leg2.Src {
		e.Fatalf("copy %s: the held connection did not go client pod's :15001 -> (HBONE) server pod's :15008 -> server (records %+v, %+v; server saw %s)", c.Mode, out, in, h.Leg2.Src)
	}
	return tuple{Src: unmap(out.Upstream), Dst: unmap(out.Tunnel)}
}

// proveThroughStandin checks, before the end-to-end runs, that a request
// of copy c (an HTTP GET from the client pod to the URL the load
// generator uses) went through the stand-in: a record from the client's
// address with the server's address and port as original destination,
// bytes carried both ways, and for an in-pod copy the server pod's 15008
// carrying it on to the server. It returns a one-line summary.
func proveThroughStandin(c *Copy, family string) (string, error) {
	if !hasProxy(c.Mode) {
		return c.Mode + ": no proxy", nil
	}
	server := c.Server.IPv4
	if family == report.FamilyIPv6 {
		server = c.Server.IPv6
	}
	dst := netip.AddrPortFrom(server, uint16(c.ServerPort()))
	var local netip.AddrPort
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := c.Client.DialContext(ctx, network, addr)
			if err == nil {
				local = addrPort(conn.LocalAddr())
			}
			return conn, err
		}}}
	resp, err := hc.Get("http://" + dst.String() + "/")
	if err != nil {
		return "", fmt.Errorf("copy %s: GET %s from the client: %w", c.Mode, dst, err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs, err := standinRecords(c.Standins[0].pod)
		if err != nil {
			return "", fmt.Errorf("copy %s: %w", c.Mode, err)
		}
		var out, in *ztunnel.Record
		for i, r := range recs {
			switch {
			case unmap(r.Source) == local:
				out = &recs[i]
			case out != nil && unmap(r.Source) == unmap(out.Upstream):
				in = &recs[i]
			}
		}
		ok := out != nil && out.Done() && out.Err == "" && unmap(out.OrigDst) == dst && out.ClientToServer > 0 && out.ServerToClient > 0
		if ok && report.IsInPod(c.Mode) {
			ok = in != nil && in.Done() && in.Listener == ztunnel.PortHBONE && unmap(in.Target) == dst && in.ServerToClient > 0
		}
		if ok {
			s := fmt.Sprintf("%s: %s -> :%d (original destination %s, %d/%d bytes)", c.Mode, local, out.Listener, dst, out.ClientToServer, out.ServerToClient)
			if in != nil && report.IsInPod(c.Mode) {
				s += fmt.Sprintf(" -> server pod's :%d -> %s", in.Listener, unmap(in.Target))
			}
			return s, nil
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, r := range recs {
				fmt.Fprintf(&b, "\n  %+v", r)
			}
			return "", fmt.Errorf("copy %s: the request %s -> %s has no complete record in the stand-in's (want original destination %s, bytes both ways)%s", c.Mode, local, dst, dst, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
