package dataplane_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshredirect/meshredirect/dataplane"
	"github.com/meshredirect/meshredirect/maps"
	"github.com/meshredirect/meshredirect/tc"
	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// forBoth runs fn once for IPv4 and once for IPv6.
func forBoth(t *testing.T, fn func(t *testing.T, v6 bool)) {
	for _, v6 := range []bool{false, true} {
		name := "IPv4"
		if v6 {
			name = "IPv6"
		}
		t.Run(name, func(t *testing.T) { fn(t, v6) })
	}
}

// Flow 1: ambient client to ambient server on the same node goes through
// 15001, and the server sees the client's own IP.
func TestSameNodeAmbientToAmbient(t *testing.T) {
	b := newBox(t, boxOptions{})
	echo := b.server.StartEcho(echoPort)
	forBoth(t, func(t *testing.T, v6 bool) {
		dst := netip.AddrPortFrom(ipOf(b.server, v6), echoPort)
		local := exchange(t, &b.client.Namespace, v6, dst)
		r := b.record(t, local, dst)
		if r.Listener != ztunnel.PortOutbound {
			t.Errorf("went through %d, want %d", r.Listener, ztunnel.PortOutbound)
		}
		if r.ClientToServer != 64<<10 || r.ServerToClient != 64<<10 {
			t.Errorf("the stand-in carried %d/%d bytes, want 65536 each way", r.ClientToServer, r.ServerToClient)
		}
		if !containsPeer(echo.Peers(), local) {
			t.Errorf("the server did not see the client's own address %s: %v", local, echo.Peers())
		}
	})
}

// Flow 2: a client outside the mesh to an ambient server goes through 15006.
func TestNonAmbientToAmbient(t *testing.T) {
	b := newBox(t, boxOptions{})
	echo := b.server.StartEcho(echoPort)
	forBoth(t, func(t *testing.T, v6 bool) {
		dst := netip.AddrPortFrom(ipOf(b.server, v6), echoPort)
		local := exchange(t, &b.plain.Namespace, v6, dst)
		if r := b.record(t, local, dst); r.Listener != ztunnel.PortInbound {
			t.Errorf("went through %d, want %d", r.Listener, ztunnel.PortInbound)
		}
		if !containsPeer(echo.Peers(), local) {
			t.Errorf("the server did not see the client's address %s: %v", local, echo.Peers())
		}
	})
}

// Flow 3: the second node reaches an ambient server through 15008 (HBONE).
func TestHBONEFromOtherNode(t *testing.T) {
	b := newBox(t, boxOptions{})
	b.server.StartEcho(echoPort)
	forBoth(t, func(t *testing.T, v6 bool) {
		hbone := netip.AddrPortFrom(ipOf(b.server, v6), ztunnel.PortHBONE)
		target := netip.AddrPortFrom(ipOf(b.server, v6), echoPort)
		err := b.remote.Do(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := ztunnel.DialHBONE(ctx, hbone.String(), target.String())
			if err != nil {
				return err
			}
			defer c.Close()
			msg := []byte("through HBONE")
			if _, err := c.Write(msg); err != nil {
				return err
			}
			got := make([]byte, len(msg))
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
			if string(got) != string(msg) {
				return fmt.Errorf("echo %q, want %q", got, msg)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := b.zts.WaitFor(ctx, func(r ztunnel.Record) bool {
			return r.Listener == ztunnel.PortHBONE && unmap(r.Target) == target && r.Source.Addr().Unmap() == ipOf(b.remote, v6)
		})
		if err != nil {
			t.Fatalf("no HBONE record: %v; records %+v", err, b.zts.Records())
		}
		if unmap(r.OrigDst) != hbone {
			t.Errorf("HBONE original destination %s, want %s", r.OrigDst, hbone)
		}
	})
}

// Flow 4: an ambient client to a host on the second node, outside the mesh,
// goes through 15001.
func TestAmbientToOtherNode(t *testing.T) {
	b := newBox(t, boxOptions{})
	echo := b.remote.StartEcho(echoPort)
	forBoth(t, func(t *testing.T, v6 bool) {
		dst := netip.AddrPortFrom(ipOf(b.remote, v6), echoPort)
		local := exchange(t, &b.client.Namespace, v6, dst)
		if r := b.record(t, local, dst); r.Listener != ztunnel.PortOutbound {
			t.Errorf("went through %d, want %d", r.Listener, ztunnel.PortOutbound)
		}
		if !containsPeer(echo.Peers(), local) {
			t.Errorf("the remote host did not see the client's address %s: %v", local, echo.Peers())
		}
	})
}

// Flow 5: the node itself (a kubelet probe, from the node IP) reaches an
// ambient pod directly.
func TestProbeFromNodeNotRedirected(t *testing.T) {
	b := newBox(t, boxOptions{})
	echo := b.server.StartEcho(echoPort)
	forBoth(t, func(t *testing.T, v6 bool) {
		before := b.stats(t)
		dst := netip.AddrPortFrom(ipOf(b.server, v6), echoPort)
		local := exchange(t, &b.node.Namespace, v6, dst)
		if local.Addr() != ipOf(&testenv.Pod{IPv4: b.node.IPv4, IPv6: b.node.IPv6}, v6) {
			t.Fatalf("the probe came from %s, not the node IP", local.Addr())
		}
		b.noRecordFrom(t, local.Addr())
		if !containsPeer(echo.Peers(), local) {
			t.Errorf("the server did not see the node's address")
		}
		after := b.stats(t)
		if after[maps.VerdictPassed].Packets == before[maps.VerdictPassed].Packets {
			t.Error("the passed counter did not move")
		}
	})
}

// Flow 6: DNS from an ambient pod goes to 15053 with DNS capture on, and
// to the real server untouched with it off.
func TestDNS(t *testing.T) {
	answers := []netip.Addr{netip.MustParseAddr("198.19.255.53"), netip.MustParseAddr("fd10:6d72:0:ffff::53")}
	for _, capture := range []bool{true, false} {
		t.Run(fmt.Sprintf("capture=%v", capture), func(t *testing.T) {
			b := newBox(t, boxOptions{cfg: dataplane.Config{CaptureDNS: capture}, dnsAnswer: answers})
			// The real DNS server is the remote host; it echoes the query,
			// which a client tells from the stand-in's answer.
			b.remote.StartEcho(53)
			forBoth(t, func(t *testing.T, v6 bool) {
				server := netip.AddrPortFrom(ipOf(b.remote, v6), 53)
				reply, from := dnsQuery(t, b.client, v6, server)
				if from != server {
					t.Errorf("reply from %s, want %s", from, server)
				}
				answered := len(reply.Answers) == 1
				if capture != answered {
					t.Errorf("capture=%v but the reply has %d answers (the stand-in answers, the echo does not)", capture, len(reply.Answers))
				}
				if capture {
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					defer cancel()
					if _, err := b.zts.WaitFor(ctx, func(r ztunnel.Record) bool {
						return r.Listener == ztunnel.PortDNS && unmap(r.OrigDst) == server
					}); err != nil {
						t.Errorf("no DNS record: %v", err)
					}
				} else {
					b.noRecordFrom(t, ipOf(b.client, v6))
				}
			})
		})
	}
}

// Flow 7: with ztunnel not ready the ambient pods' traffic is dropped and
// the other pods' is untouched; ready again, new connections work.
func TestZtunnelNotReadyFailsClosed(t *testing.T) {
	b := newBox(t, boxOptions{})
	b.remote.StartEcho(echoPort)
	forBoth(t, func(t *testing.T, v6 bool) {
		dst := netip.AddrPortFrom(ipOf(b.remote, v6), echoPort)
		must(t, b.dp.SetZtunnelReady(false))
		before := b.stats(t)
		if _, err := tryExchange(&b.client.Namespace, v6, dst, time.Second); err == nil {
			t.Fatal("an ambient pod reached the remote host while ztunnel was not ready")
		}
		if d := b.stats(t)[maps.VerdictDroppedNoZtunnel].Packets - before[maps.VerdictDroppedNoZtunnel].Packets; d == 0 {
			t.Error("no packet counted as dropped for want of ztunnel")
		}
		exchange(t, &b.plain.Namespace, v6, dst) // outside the mesh: untouched

		must(t, b.dp.SetZtunnelReady(true))
		local := exchange(t, &b.client.Namespace, v6, dst)
		b.record(t, local, dst)
	})
}

// Flow 8: after unenrolment traffic goes direct, and our filters and map
// entries are gone.
func TestUnenroll(t *testing.T) {
	b := newBox(t, boxOptions{})
	b.remote.StartEcho(echoPort)
	must(t, b.dp.Unenroll(podOf(b.client)))
	forBoth(t, func(t *testing.T, v6 bool) {
		dst := netip.AddrPortFrom(ipOf(b.remote, v6), echoPort)
		local := exchange(t, &b.client.Namespace, v6, dst)
		b.noRecordFrom(t, local.Addr())
	})
	all, err := b.dp.Attachments()
	must(t, err)
	for _, a := range all {
		if a.Ifindex == b.client.HostVethIndex {
			t.Errorf("still attached to the client's veth: %s", a)
		}
	}
	entries, err := b.dp.Maps().Pods.All()
	must(t, err)
	for _, ip := range []netip.Addr{b.client.IPv4, b.client.IPv6} {
		if _, ok := entries[ip]; ok {
			t.Errorf("pods map still holds %s", ip)
		}
	}
	// The server is still captured.
	b.server.StartEcho(echoPort)
	dst := netip.AddrPortFrom(b.server.IPv4, echoPort)
	local := exchange(t, &b.plain.Namespace, false, dst)
	b.record(t, local, dst)
}

// Flow 9: with 100 ambient pods on the node, every sampled flow between them
// goes through ztunnel.
func TestHundredPods(t *testing.T) {
	b := newBox(t, boxOptions{extraPods: 98})
	pods := b.node.Pods()
	var ambient []*testenv.Pod
	for _, p := range pods {
		if p.Ambient {
			ambient = append(ambient, p)
		}
	}
	if len(ambient) != 100 {
		t.Fatalf("%d ambient pods, want 100", len(ambient))
	}
	entries, err := b.dp.Maps().Pods.All()
	must(t, err)
	if len(entries) != 200 {
		t.Errorf("pods map has %d entries, want 200", len(entries))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10; i++ {
		src, dst := ambient[rng.IntN(len(ambient))], ambient[rng.IntN(len(ambient))]
		if src == dst {
			continue
		}
		v6 := i%2 == 1
		dst.StartEcho(echoPort + i)
		to := netip.AddrPortFrom(ipOf(dst, v6), uint16(echoPort+i))
		local := exchange(t, &src.Namespace, v6, to)
		if r := b.record(t, local, to); r.Listener != ztunnel.PortOutbound {
			t.Errorf("%s -> %s went through %d", src.Name, dst.Name, r.Listener)
		}
	}
}

// TestReconcile removes what belongs to no desired pod and restores what a
// desired pod lacks.
func TestReconcile(t *testing.T) {
	b := newBox(t, boxOptions{})
	// The client left the mesh while nobody watched; the server lost its
	// map entries.
	must(t, b.dp.Maps().Pods.Delete(b.server.IPv4))
	res, err := b.dp.Reconcile([]dataplane.Pod{podOf(b.server)})
	must(t, err)
	if len(res.Enrolled) != 1 || len(res.Deleted) != 2 || len(res.Detached) != 2 {
		t.Errorf("reconcile: %+v", res)
	}
	entries, _ := b.dp.Maps().Pods.All()
	if len(entries) != 2 {
		t.Errorf("entries after reconcile: %v", entries)
	}
	res, err = b.dp.Reconcile([]dataplane.Pod{podOf(b.server)})
	must(t, err)
	if len(res.Enrolled)+len(res.Deleted)+len(res.Detached) != 0 || res.Unchanged != 1 {
		t.Errorf("a second reconcile changed something: %+v", res)
	}
	b.server.StartEcho(echoPort)
	dst := netip.AddrPortFrom(b.server.IPv6, echoPort)
	b.record(t, exchange(t, &b.client.Namespace, true, dst), dst)
}

// TestAttachModes runs the same-node flow with tcx links and with legacy
// filters.
func TestAttachModes(t *testing.T) {
	for _, mode := range []tc.Mode{tc.ModeTCX, tc.ModeLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			b := newBox(t, boxOptions{cfg: dataplane.Config{AttachMode: mode}})
			all, err := b.dp.Attachments()
			must(t, err)
			for _, a := range all {
				if a.Mode != mode {
					t.Errorf("attachment %s in mode %s", a, a.Mode)
				}
			}
			b.server.StartEcho(echoPort)
			dst := netip.AddrPortFrom(b.server.IPv4, echoPort)
			b.record(t, exchange(t, &b.client.Namespace, false, dst), dst)
		})
	}
}

// TestRedirectWithoutPeer runs flows 1 and 2 with bpf_redirect instead of
// bpf_redirect_peer, the path of kernels before 5.10.
func TestRedirectWithoutPeer(t *testing.T) {
	off := false
	b := newBox(t, boxOptions{cfg: dataplane.Config{RedirectPeer: &off}})
	b.server.StartEcho(echoPort)
	forBoth(t, func(t *testing.T, v6 bool) {
		dst := netip.AddrPortFrom(ipOf(b.server, v6), echoPort)
		if r := b.record(t, exchange(t, &b.client.Namespace, v6, dst), dst); r.Listener != ztunnel.PortOutbound {
			t.Errorf("client: through %d", r.Listener)
		}
		if r := b.record(t, exchange(t, &b.plain.Namespace, v6, dst), dst); r.Listener != ztunnel.PortInbound {
			t.Errorf("plain: through %d", r.Listener)
		}
	})
}

// containsPeer reports whether a peer came from p's address (the stand-in
// connects with the client's IP, from a port of its own).
func containsPeer(peers []netip.AddrPort, p netip.AddrPort) bool {
	for _, q := range peers {
		if q.Addr().Unmap() == p.Addr().Unmap() {
			return true
		}
	}
	return false
}

// dnsQuery sends an A (or AAAA) query from pod to server over UDP and
// returns the parsed reply and where it came from.
func dnsQuery(t *testing.T, pod *testenv.Pod, v6 bool, server netip.AddrPort) (dnsmessage.Message, netip.AddrPort) {
	t.Helper()
	qtype := dnsmessage.TypeA
	netw := "udp4"
	if v6 {
		qtype, netw = dnsmessage.TypeAAAA, "udp6"
	}
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: 0x4d52, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("svc.example."), Type: qtype, Class: dnsmessage.ClassINET}}}
	wire, err := q.Pack()
	must(t, err)
	var reply dnsmessage.Message
	var from netip.AddrPort
	err = func() error {
		c, err := pod.ListenPacket(netw, ":0")
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 1500)
		for attempt := 0; attempt < 3; attempt++ {
			if _, err := c.WriteTo(wire, udpAddr(server)); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, addr, err := c.ReadFrom(buf)
			if err != nil {
				continue
			}
			from = unmap(addrPort(addr))
			return reply.Unpack(buf[:n])
		}
		return fmt.Errorf("no reply from %s", server)
	}()
	must(t, err)
	return reply, from
}

func udpAddr(a netip.AddrPort) *net.UDPAddr { return net.UDPAddrFromAddrPort(a) }

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.UDPAddr).AddrPort() }

// TestReversePathFilter: with strict reverse path filtering on the node,
// ztunnel's packets with its clients' addresses still leave the node (flows
// 2 and 4 need that), ztunnel's veth is the only interface that filters
// less than before, and the others keep their effective value.
func TestReversePathFilter(t *testing.T) {
	b := newBox(t, boxOptions{rpFilter: 1})
	b.server.StartEcho(echoPort)
	b.remote.StartEcho(echoPort)
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(b.server.IPv4, echoPort), netip.AddrPortFrom(b.remote.IPv4, echoPort)} {
		src := &b.plain.Namespace
		if dst.Addr() == b.remote.IPv4 {
			src = &b.client.Namespace
		}
		b.record(t, exchange(t, src, false, dst), dst)
	}
	must(t, b.node.Do(func() error {
		entries, err := os.ReadDir("/proc/sys/net/ipv4/conf")
		if err != nil {
			return err
		}
		for _, e := range entries {
			raw, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + e.Name() + "/rp_filter")
			if err != nil {
				return err
			}
			v, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
			switch e.Name() {
			case "all", b.zt.HostVeth:
				if v != 0 {
					t.Errorf("%s rp_filter = %d, want 0", e.Name(), v)
				}
			default:
				if v < 1 {
					t.Errorf("%s rp_filter = %d: it filters less than before (1)", e.Name(), v)
				}
			}
		}
		return nil
	}))
}
