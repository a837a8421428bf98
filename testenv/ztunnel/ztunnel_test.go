package ztunnel

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshredirect/meshredirect/testenv"
)

// exchange writes msg on c, reads the echo back and closes c's write side,
// then waits for EOF: a whole echo conversation with a half close.
func exchange(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: got %q, %v; want %q", got, err, msg)
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			t.Fatalf("close write: %v", err)
		}
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half close: %q, %v; want EOF", rest, err)
	}
}

// TestTransparentAccept: a connection to an address nobody owns is
// accepted by the stand-in, whose record shows that address as the
// original destination and the client as the source; the forward fails
// (nobody is there) and the client is reset.
func TestTransparentAccept(t *testing.T) {
	e := newEnv(t)
	s := e.start(t, Options{DialTimeout: time.Second})
	ctx := testContext(t)
	for _, fam := range families() {
		t.Run(fam.name, func(t *testing.T) {
			svc := testenv.ServiceIPv4(10)
			if fam.v6 {
				svc = testenv.ServiceIPv6(10)
			}
			dst := netip.AddrPortFrom(svc, PortOutbound)
			c, err := e.client.DialContext(ctx, network("tcp", svc), dst.String())
			if err != nil {
				t.Fatalf("dial %s: the stand-in did not accept: %v", dst, err)
			}
			defer c.Close()
			src := addrPort(c.LocalAddr())
			if got := addrPort(c.RemoteAddr()); got != dst {
				t.Errorf("client connected to %s, want %s", got, dst)
			}
			r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src && r.Done() })
			if err != nil {
				t.Fatal(err)
			}
			if r.Listener != PortOutbound || r.OrigDst != dst || r.Target != dst || r.Err == "" {
				t.Errorf("record %+v: want listener %d, original destination %s, an error", r, PortOutbound, dst)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 || !strings.Contains(err.Error(), "reset") {
				t.Errorf("client read %d, %v; want a reset", n, err)
			}
		})
	}
}

// TestForwardKeepsClientSource: on 15001 and 15006 the stand-in connects to
// the original destination from the client's address, so the server sees
// the client; bytes are counted each way.
func TestForwardKeepsClientSource(t *testing.T) {
	e := newEnv(t)
	s := e.start(t, Options{})
	ctx := testContext(t)
	for _, port := range []int{PortOutbound, PortInbound} {
		echo := e.server.StartEcho(port)
		for _, fam := range families() {
			t.Run(fmt.Sprintf("%d/%s", port, fam.name), func(t *testing.T) {
				dst := netip.AddrPortFrom(ip(e.server, fam.v6), uint16(port))
				c, err := e.client.DialContext(ctx, network("tcp", dst.Addr()), dst.String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				src := addrPort(c.LocalAddr())
				msg := strings.Repeat("x", 100000) // more than a socket buffer's worth
				exchange(t, c, msg)

				r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src && r.Done() })
				if err != nil {
					t.Fatal(err)
				}
				want := Record{
					ID: r.ID, Listener: port, Proto: "tcp", Source: src, OrigDst: dst, Target: dst,
					Upstream: r.Upstream, ClientToServer: int64(len(msg)), ServerToClient: int64(len(msg)),
					Start: r.Start, End: r.End,
				}
				if fmt.Sprint(r) != fmt.Sprint(want) {
					t.Errorf("record\n%+v\nwant\n%+v", r, want)
				}
				if r.Upstream.Addr() != src.Addr() {
					t.Errorf("stand-in connected from %s, want the client's %s", r.Upstream, src.Addr())
				}
				peers := echo.Peers()
				if len(peers) == 0 || peers[len(peers)-1] != r.Upstream {
					t.Errorf("server saw %v, want %s last", peers, r.Upstream)
				}
			})
		}
	}
}

// TestSelfIsRefused: a client that dials the stand-in's own address is
// refused, not forwarded to itself.
func TestSelfIsRefused(t *testing.T) {
	e := newEnv(t)
	s := e.start(t, Options{})
	ctx := testContext(t)
	dst := netip.AddrPortFrom(e.zt.IPv4, PortOutbound)
	// The reset may beat the dialler's check of its connect: either way.
	if c, err := e.client.DialContext(ctx, "tcp4", dst.String()); err == nil {
		defer c.Close()
	}
	r, err := s.WaitFor(ctx, func(r Record) bool { return r.Done() })
	if err != nil {
		t.Fatal(err)
	}
	if r.OrigDst != dst || !strings.Contains(r.Err, "loop") {
		t.Errorf("record %+v: want a refusal", r)
	}
	if n := len(s.Records()); n != 1 {
		t.Errorf("%d records, want 1", n)
	}
}

// TestHBONE: CONNECT streams to a pod, from a pod of the same node dialling
// ztunnel and from a pod of the other node whose connection to the server's
// port 15008 is captured, with the client's address as source or, with
// HBONEOwnSource, ztunnel's own.
func TestHBONE(t *testing.T) {
	e := newEnv(t)
	echo := e.server.StartEcho(8080)
	ctx := testContext(t)
	for _, own := range []bool{false, true} {
		s, err := Start(Options{Netns: e.zt.Netns, HBONEOwnSource: own})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name  string
			from  *testenv.Pod
			proxy func(v6 bool) netip.Addr // the address the client dials on 15008
		}{
			{"same node via ztunnel", e.client, func(v6 bool) netip.Addr { return ip(e.zt, v6) }},
			{"cross node captured", e.remote, func(v6 bool) netip.Addr { return ip(e.server, v6) }},
		} {
			for _, fam := range families() {
				t.Run(fmt.Sprintf("own=%v/%s/%s", own, c.name, fam.name), func(t *testing.T) {
					proxy := netip.AddrPortFrom(c.proxy(fam.v6), PortHBONE)
					target := netip.AddrPortFrom(ip(e.server, fam.v6), 8080)
					var hc net.Conn
					if err := c.from.Do(func() (err error) {
						hc, err = DialHBONE(ctx, proxy.String(), target.String())
						return err
					}); err != nil {
						t.Fatal(err)
					}
					defer hc.Close()
					if hc.RemoteAddr().String() != target.String() {
						t.Errorf("RemoteAddr %s, want %s", hc.RemoteAddr(), target)
					}
					src := addrPort(hc.LocalAddr())
					exchange(t, hc, "hello through hbone")

					r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src && r.Done() })
					if err != nil {
						t.Fatal(err)
					}
					if r.Listener != PortHBONE || r.Proto != "hbone" || r.OrigDst != proxy || r.Target != target ||
						r.ClientToServer != 19 || r.ServerToClient != 19 || r.Err != "" {
						t.Errorf("record %+v: want listener 15008, original destination %s, target %s, 19 bytes each way", r, proxy, target)
					}
					wantFrom := ip(c.from, fam.v6)
					if own {
						wantFrom = ip(e.zt, fam.v6)
					}
					peers := echo.Peers()
					if r.Upstream.Addr() != wantFrom || len(peers) == 0 || peers[len(peers)-1] != r.Upstream {
						t.Errorf("server saw %v, stand-in connected from %s; want %s", peers, r.Upstream, wantFrom)
					}
				})
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHBONEErrors: a CONNECT to a target nobody listens on, or with an
// authority that is not ip:port, fails with the stand-in's status and a
// record of the error.
func TestHBONEErrors(t *testing.T) {
	e := newEnv(t)
	s := e.start(t, Options{DialTimeout: 2 * time.Second})
	ctx := testContext(t)
	proxy := netip.AddrPortFrom(e.zt.IPv4, PortHBONE).String()
	for _, c := range []struct{ target, status string }{
		{netip.AddrPortFrom(e.server.IPv4, 9).String(), "502"},
		{"server.example:80", "hbone target"},
	} {
		err := e.client.Do(func() error {
			hc, err := DialHBONE(ctx, proxy, c.target)
			if err == nil {
				hc.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), c.status) {
			t.Errorf("CONNECT %s: %v, want an error with %q", c.target, err, c.status)
		}
	}
	// The malformed authority is refused by the client before it is sent.
	if rs := s.Records(); len(rs) != 1 || rs[0].Err == "" || rs[0].Target.Port() != 9 {
		t.Errorf("records %+v, want one failed CONNECT to port 9", rs)
	}
}

func dnsQuery(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	q := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 0x6d72, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}},
	}
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDNS: queries to a DNS server address nobody owns are answered by the
// stand-in from that address, with the configured answers, and recorded.
func TestDNS(t *testing.T) {
	e := newEnv(t)
	name := "server.default.svc.cluster.local."
	s := e.start(t, Options{DNS: map[string][]netip.Addr{
		"Server.Default.svc.cluster.local": {e.server.IPv4, e.server.IPv6},
	}})
	ctx := testContext(t)
	for _, fam := range families() {
		server := netip.AddrPortFrom(testenv.ServiceIPv4(53), PortDNS)
		if fam.v6 {
			server = netip.AddrPortFrom(testenv.ServiceIPv6(53), PortDNS)
		}
		for _, c := range []struct {
			name  string
			typ   dnsmessage.Type
			rcode dnsmessage.RCode
			want  []netip.Addr
		}{
			{name, dnsmessage.TypeA, dnsmessage.RCodeSuccess, []netip.Addr{e.server.IPv4}},
			{name, dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, []netip.Addr{e.server.IPv6}},
			{"nobody.example.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
		} {
			t.Run(fmt.Sprintf("%s/%s/%s", fam.name, c.name, c.typ), func(t *testing.T) {
				pc, err := e.client.ListenPacket(network("udp", server.Addr()), ":0")
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				src := netip.AddrPortFrom(ip(e.client, fam.v6), addrPort(pc.LocalAddr()).Port())
				if _, err := pc.WriteTo(dnsQuery(t, c.name, c.typ), net.UDPAddrFromAddrPort(server)); err != nil {
					t.Fatal(err)
				}
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 1500)
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					t.Fatalf("no reply: %v", err)
				}
				if got := addrPort(from); got != server {
					t.Errorf("reply from %s, want the server address the client asked, %s", got, server)
				}
				var m dnsmessage.Message
				if err := m.Unpack(buf[:n]); err != nil {
					t.Fatal(err)
				}
				var got []netip.Addr
				for _, a := range m.Answers {
					switch b := a.Body.(type) {
					case *dnsmessage.AResource:
						got = append(got, netip.AddrFrom4(b.A))
					case *dnsmessage.AAAAResource:
						got = append(got, netip.AddrFrom16(b.AAAA))
					}
				}
				if m.ID != 0x6d72 || m.RCode != c.rcode || fmt.Sprint(got) != fmt.Sprint(c.want) {
					t.Errorf("reply id %#x rcode %v answers %v; want rcode %v answers %v", m.ID, m.RCode, got, c.rcode, c.want)
				}
				r, err := s.WaitFor(ctx, func(r Record) bool { return r.Source == src && r.Done() })
				if err != nil {
					t.Fatal(err)
				}
				if r.Listener != PortDNS || r.Proto != "dns" || r.OrigDst != server || r.Err != "" || r.DNS == nil ||
					r.DNS.Name != c.name || r.DNS.Type != c.typ.String() || r.DNS.RCode != c.rcode.String() ||
					fmt.Sprint(r.DNS.Answers) != fmt.Sprint(c.want) || r.ServerToClient != int64(n) {
					t.Errorf("record %+v %+v", r, r.DNS)
				}
			})
		}
	}
}

// TestDNSFixedAnswer: DNSAnswer answers any name.
func TestDNSFixedAnswer(t *testing.T) {
	e := newEnv(t)
	fixed := testenv.ServiceIPv4(99)
	e.start(t, Options{DNSAnswer: []netip.Addr{fixed}})
	c, err := e.client.Dial("udp4", netip.AddrPortFrom(testenv.ServiceIPv4(53), PortDNS).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(dnsQuery(t, "anything.example.", dnsmessage.TypeA))
	buf := make([]byte, 1500)
	n, err := c.Read(buf) // a connected socket: only the asked address may answer
	if err != nil {
		t.Fatal(err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(buf[:n]); err != nil || len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AResource).A != fixed.As4() {
		t.Errorf("reply %+v, %v; want %s", m.Answers, err, fixed)
	}
}

// TestDNSReplyFromOtherPort: a query bpf_sk_assign hands over from port 53
// is answered from port 53, not from the listener's port: the reply goes
// out of a transparent socket bound to the original destination. Policy
// routing cannot change ports, so this drives the reply path directly.
func TestDNSReplyFromOtherPort(t *testing.T) {
	e := newEnv(t)
	s := e.start(t, Options{})
	for _, fam := range families() {
		t.Run(fam.name, func(t *testing.T) {
			server := netip.AddrPortFrom(testenv.ServiceIPv4(53), 53)
			if fam.v6 {
				server = netip.AddrPortFrom(testenv.ServiceIPv6(53), 53)
			}
			pc, err := e.client.ListenPacket(network("udp", server.Addr()), ":0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			to := netip.AddrPortFrom(ip(e.client, fam.v6), addrPort(pc.LocalAddr()).Port())
			if err := s.sendFrom(s.node, nil, PortDNS, server, to, []byte("reply")); err != nil {
				t.Fatal(err)
			}
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			n, from, err := pc.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "reply" || addrPort(from) != server {
				t.Errorf("got %q from %v, %v; want \"reply\" from %s", buf[:n], from, err, server)
			}
		})
	}
}

// TestRecordsJSON: the records round-trip through JSON.
func TestRecordsJSON(t *testing.T) {
	e := newEnv(t)
	s := e.start(t, Options{DNSAnswer: []netip.Addr{e.server.IPv4}})
	e.server.StartEcho(PortOutbound)
	ctx := testContext(t)
	c, err := e.client.DialContext(ctx, "tcp4", netip.AddrPortFrom(e.server.IPv4, PortOutbound).String())
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, c, "json")
	c.Close()
	u, err := e.client.Dial("udp4", netip.AddrPortFrom(testenv.ServiceIPv4(53), PortDNS).String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.Write(dnsQuery(t, "a.example.", dnsmessage.TypeA))
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	u.Read(make([]byte, 512))
	if _, err := s.WaitFor(ctx, func(r Record) bool { return r.ID == 2 && r.Done() }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WaitFor(ctx, func(r Record) bool { return r.ID == 1 && r.Done() }); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := s.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var got []Record
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("decode %s: %v", buf.Bytes(), err)
	}
	want := s.Records()
	if len(got) != 2 || fmt.Sprint(got[0].Source, got[0].Upstream, got[1].DNS.Answers) != fmt.Sprint(want[0].Source, want[0].Upstream, want[1].DNS.Answers) ||
		!got[0].End.Equal(want[0].End) {
		t.Errorf("JSON round trip:\n%s\ngot %+v\nwant %+v", buf.Bytes(), got, want)
	}
	if !strings.Contains(buf.String(), `"listener": 15001`) || strings.Contains(buf.String(), `"target": ""`) {
		t.Errorf("JSON:\n%s", buf.Bytes())
	}
}

// TestCloseLeavesNothing: Close, with flows still open on every kind of
// listener, ends every goroutine and frees every port.
func TestCloseLeavesNothing(t *testing.T) {
	e := newEnv(t)
	e.server.StartEcho(PortOutbound)
	e.server.StartEcho(8080)
	ctx := testContext(t)
	settle := func() int {
		time.Sleep(50 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	before := settle()

	s, err := Start(Options{Netns: e.zt.Netns, DNSAnswer: []netip.Addr{e.server.IPv4}})
	if err != nil {
		t.Fatal(err)
	}
	// An open proxied connection and an open HBONE stream.
	c, err := e.client.DialContext(ctx, "tcp6", netip.AddrPortFrom(e.server.IPv6, PortOutbound).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("open"))
	io.ReadFull(c, make([]byte, 4))
	var hc net.Conn
	if err := e.client.Do(func() (err error) {
		hc, err = DialHBONE(ctx, netip.AddrPortFrom(e.zt.IPv4, PortHBONE).String(), netip.AddrPortFrom(e.server.IPv4, 8080).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	hc.Write([]byte("open"))
	io.ReadFull(hc, make([]byte, 4))
	u, err := e.client.Dial("udp4", netip.AddrPortFrom(testenv.ServiceIPv4(53), PortDNS).String())
	if err != nil {
		t.Fatal(err)
	}
	u.Write(dnsQuery(t, "a.example.", dnsmessage.TypeA))
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := u.Read(make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	u.Close()

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The clients see their flows end.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("proxied connection still open after Close")
	}
	hc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := hc.Read(make([]byte, 1)); err == nil {
		t.Error("HBONE stream still open after Close")
	}
	c.Close()
	hc.Close()
	for _, r := range s.Records() {
		if !r.Done() {
			t.Errorf("record still open after Close: %+v", r)
		}
	}

	deadline := time.Now().Add(5 * time.Second)
	for n := settle(); n > before; n = settle() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
	}

	// Every port is free: plain listeners (no SO_REUSEADDR on the UDP
	// ones, so an old socket would be in the way) can bind them.
	err = e.zt.Do(func() error {
		for _, fam := range []string{"4", "6"} {
			for _, port := range []int{PortOutbound, PortInbound, PortHBONE} {
				l, err := net.Listen("tcp"+fam, fmt.Sprintf(":%d", port))
				if err != nil {
					return err
				}
				l.Close()
			}
			pc, err := net.ListenPacket("udp"+fam, fmt.Sprintf(":%d", PortDNS))
			if err != nil {
				return err
			}
			pc.Close()
		}
		return nil
	})
	if err != nil {
		t.Errorf("rebind after Close: %v", err)
	}
	// And a new stand-in starts on them.
	s2, err := Start(Options{Netns: e.zt.Netns})
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
}

// TestStartErrors: Start fails cleanly when a port is taken.
func TestStartErrors(t *testing.T) {
	e := newEnv(t)
	l, err := e.zt.ListenPacket("udp6", fmt.Sprintf(":%d", PortDNS))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	before := runtime.NumGoroutine()
	if _, err := Start(Options{Netns: e.zt.Netns}); err == nil || !strings.Contains(err.Error(), "udp6 port 15053") {
		t.Errorf("Start with 15053 taken: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after a failed Start, %d before", n, before)
	}
}
