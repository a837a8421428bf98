package scenario

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/ztunnel"
)

// Ports of the semantics flows' servers.
const (
	// NodePort is where a server of the node itself listens (a hostNetwork
	// pod's, node-exporter's 9100).
	NodePort = 9100
	// CloserPort is where the remote host's Closer listens.
	CloserPort = 9200
	// UDPPort is where the echo servers' UDP side is used.
	UDPPort = 9300
)

// Semantics are the flows of DESIGN §5 that involve a real socket, for a
// box with policy pods (Options.PolicyPods) whose datapath captures DNS
// (DataplaneConfig.CaptureDNS, or the agent's --capture-dns) and passes UDP
// by default. Each must hold on every wiring, in both families.
func Semantics() []Flow {
	out := ViaZtunnel(ztunnel.PortOutbound)
	in := ViaZtunnel(ztunnel.PortInbound)
	return []Flow{
		// From an ambient pod.
		{ID: "s1", Name: "ambient pod -> ambient pod, same node", Expect: out, Run: func(b *Box, v6 bool) Observation {
			b.Echo(b.Server, EchoPort)
			return Observe(b, &b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Server, v6), EchoPort))
		}},
		{ID: "s2", Name: "ambient pod -> pod outside the mesh, same node", Expect: out, Run: func(b *Box, v6 bool) Observation {
			b.Echo(b.Plain, EchoPort)
			return Observe(b, &b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Plain, v6), EchoPort))
		}},
		{ID: "s3", Name: "ambient pod -> host on another node", Expect: out, Run: func(b *Box, v6 bool) Observation {
			b.Echo(b.Remote, EchoPort)
			return Observe(b, &b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Remote, v6), EchoPort))
		}},
		{ID: "s4", Name: "ambient pod -> a server of the node on its IP (status.hostIP)", Expect: out, Run: func(b *Box, v6 bool) Observation {
			return toNode(b, v6, nodeIP(b, v6))
		}},
		{ID: "s5", Name: "ambient pod -> a hostNetwork server on the pod's gateway address (the node's IP on veth nodes)", Expect: out,
			Run: func(b *Box, v6 bool) Observation { return toNode(b, v6, gatewayOrNodeIP(b, v6)) }},
		{ID: "s6", Name: "reconnect at once from the tuple of a connection the server closed first, tcp_rfc1337=0", Expect: out,
			Run: func(b *Box, v6 bool) Observation { return timeWaitReconnect(b, v6, false) }},
		{ID: "s7", Name: "reconnect at once from the tuple of a connection the server closed first, tcp_rfc1337=1", Expect: out,
			Run: func(b *Box, v6 bool) Observation { return timeWaitReconnect(b, v6, true) }},
		{ID: "s8", Name: "DNS over UDP, capture on", Expect: ViaZtunnel(ztunnel.PortDNS),
			Run: func(b *Box, v6 bool) Observation { return dnsVia(b, &b.Client.Namespace, v6, false, "svc.example.") }},
		{ID: "s9", Name: "DNS over TCP, capture on", Expect: ViaZtunnel(ztunnel.PortDNS),
			Run: func(b *Box, v6 bool) Observation { return dnsVia(b, &b.Client.Namespace, v6, true, "svc.example.") }},
		{ID: "s10", Name: "DNS of a pod that bypasses DNS capture", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation { return dnsVia(b, &b.DNSBypass.Namespace, v6, false, "svc.example.") }},
		{ID: "s11", Name: "a DNS reply larger than the MTU arrives whole (fragments)", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation { return dnsVia(b, &b.DNSBypass.Namespace, v6, false, BigName) }},
		{ID: "s12", Name: "UDP, QUIC-sized datagrams, ambient pod -> host on another node and back", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Remote, UDPPort)
				return udpStream(&b.Client.Namespace, v6, netip.AddrPortFrom(IP(b.Remote, v6), UDPPort), 200)
			}},
		{ID: "s13", Name: "UDP, QUIC-sized datagrams, host on another node -> ambient pod and back", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation {
				b.Echo(b.Server, UDPPort)
				return udpStream(&b.Remote.Namespace, v6, netip.AddrPortFrom(IP(b.Server, v6), UDPPort), 200)
			}},
		{ID: "s14", Name: "UDP from a pod under the strict UDP policy", Expect: Dropped, Run: func(b *Box, v6 bool) Observation {
			b.Echo(b.Remote, UDPPort)
			o := udpStream(&b.Strict.Namespace, v6, netip.AddrPortFrom(IP(b.Remote, v6), UDPPort), 5)
			if o.Path == Direct {
				return Observation{Path: Direct, Err: errors.New("a datagram of the strict pod got through")}
			}
			return Observation{Path: Dropped}
		}},
		{ID: "s15", Name: "DNS to a resolver from a pod under the strict UDP policy", Expect: Direct,
			Run: func(b *Box, v6 bool) Observation { return dnsVia(b, &b.Strict.Namespace, v6, false, "svc.example.") }},
		{ID: "s16", Name: "ping from an ambient pod to a host on another node", Expect: Direct, Run: func(b *Box, v6 bool) Observation {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			if err := b.Client.Ping(ctx, IP(b.Remote, v6)); err != nil {
				return Observation{Err: err}
			}
			return Observation{Path: Direct}
		}},

		// To an ambient pod.
		{ID: "s17", Name: "pod outside the mesh -> ambient pod", Expect: in, Run: func(b *Box, v6 bool) Observation {
			b.Echo(b.Server, EchoPort)
			return Observe(b, &b.Plain.Namespace, v6, netip.AddrPortFrom(IP(b.Server, v6), EchoPort))
		}},
		{ID: "s18", Name: "host on another node -> ambient pod", Expect: in, Run: func(b *Box, v6 bool) Observation {
			b.Echo(b.Server, EchoPort)
			return Observe(b, &b.Remote.Namespace, v6, netip.AddrPortFrom(IP(b.Server, v6), EchoPort))
		}},
		{ID: "s19", Name: "another node -> ambient pod, HBONE", Expect: ViaZtunnel(ztunnel.PortHBONE), Run: func(b *Box, v6 bool) Observation {
			b.Echo(b.Server, EchoPort)
			return hbone(b, v6)
		}},
		{ID: "s20", Name: "kubelet-like probe: the node -> ambient pod, the kernel picking the source", Expect: Direct, Run: probe},
		{ID: "s21", Name: "host on another node -> a pod that bypasses inbound capture", Expect: Direct, Run: func(b *Box, v6 bool) Observation {
			b.Echo(b.BypassIn, EchoPort)
			return Observe(b, &b.Remote.Namespace, v6, netip.AddrPortFrom(IP(b.BypassIn, v6), EchoPort))
		}},
	}
}

func nodeIP(b *Box, v6 bool) netip.Addr {
	if v6 {
		return b.Node.IPv6
	}
	return b.Node.IPv4
}

// gatewayOrNodeIP is the client's gateway address on a ptp or bridge node
// (an address of the node), the node's IP on a node of hand-made veths,
// whose gateway nothing owns.
func gatewayOrNodeIP(b *Box, v6 bool) netip.Addr {
	gw := b.Node.GatewayIPv4
	if v6 {
		gw = b.Node.GatewayIPv6
	}
	if !gw.IsValid() {
		return nodeIP(b, v6)
	}
	return gw
}

// toNode exchanges bytes from the client with a server of the node (its
// own netns, all addresses: a hostNetwork pod's), and checks that the
// server saw the client's own address: ztunnel connected with it.
func toNode(b *Box, v6 bool, dst netip.Addr) Observation {
	echo := b.EchoIn(&b.Node.Namespace, "node", NodePort)
	o := Observe(b, &b.Client.Namespace, v6, netip.AddrPortFrom(dst, NodePort))
	if o.Err == nil && !SawAddr(echo, IP(b.Client, v6)) {
		o.Err = fmt.Errorf("the node's server did not see the client's own address: %v", echo.Peers())
	}
	return o
}

// probe is the node connecting to an ambient pod without choosing its
// source, as the kubelet does: it must reach the pod directly, from the
// node's IP on a node of hand-made veths and from the gateway address on a
// ptp or bridge node.
func probe(b *Box, v6 bool) Observation {
	echo := b.Echo(b.Server, EchoPort)
	o := Observe(b, &b.Node.Namespace, v6, netip.AddrPortFrom(IP(b.Server, v6), EchoPort))
	if o.Err == nil && !SawAddr(echo, gatewayOrNodeIP(b, v6)) {
		o.Err = fmt.Errorf("the pod did not see a connection from %s: %v", gatewayOrNodeIP(b, v6), echo.Peers())
	}
	return o
}

// dnsVia queries the remote host's DNS server for name from src, and
// reports the path from the stand-in's records (its DNS proxy answers
// captured queries itself): a reply must come from the server's address,
// with answers, whole.
func dnsVia(b *Box, src *testenv.Namespace, v6, tcp bool, name string) Observation {
	b.DNS()
	server := netip.AddrPortFrom(IP(b.Remote, v6), DNSPort)
	seen := len(b.Standin.Records())
	reply, from, n, err := QueryName(src, v6, tcp, server, name)
	if err != nil {
		return Observation{Err: err}
	}
	o := Observation{Path: Direct, Bytes: int64(n)}
	if from != server {
		o.Err = fmt.Errorf("reply from %s, want %s", from, server)
	}
	if len(reply.Answers) == 0 {
		o.Err = errors.New("the reply has no answer")
	}
	if name == BigName && n < BigReplySize {
		o.Err = fmt.Errorf("the reply has %d bytes, want more than %d", n, BigReplySize)
	}
	if slices.ContainsFunc(b.Standin.Records()[seen:], func(r ztunnel.Record) bool {
		if r.Listener != ztunnel.PortDNS {
			return false
		}
		if b.InPod && tcp {
			// In a pod, DNS over TCP reaches ztunnel's listener on
			// the loopback address by NAT, without conntrack: ztunnel
			// (like the stand-in) sees the listener's own address as
			// the destination, and answers from its own resolvers.
			// The record names the pod the connection came from.
			return r.Pod.UID != "" && Unmap(r.OrigDst).Addr().IsLoopback() && r.OrigDst.Port() == ztunnel.PortDNS
		}
		return Unmap(r.OrigDst) == server
	}) {
		o.Path = ViaZtunnel(ztunnel.PortDNS)
	}
	return o
}

// QUICSize is the size of the UDP stream's datagrams: QUIC's initial
// packets are at least 1200 bytes.
const QUICSize = 1200

// udpStream sends n numbered datagrams of QUICSize bytes from src to an
// echo server at dst, one every millisecond, and counts those that come
// back intact: Direct only if every one did, Dropped if none did.
func udpStream(src *testenv.Namespace, v6 bool, dst netip.AddrPort, n int) Observation {
	network := "udp4"
	if v6 {
		network = "udp6"
	}
	c, err := src.Dial(network, dst.String())
	if err != nil {
		return Observation{Err: err}
	}
	defer c.Close()
	// The reader stops when every datagram came back, or when none came
	// for quietAfter once all were sent: a slow machine (the kernel
	// matrix's emulated CPUs) may pause longer than that while sending,
	// which must not end the count.
	const quietAfter = 3 * time.Second
	var sent atomic.Bool
	got := make(chan int, n)
	go func() {
		defer close(got)
		buf := make([]byte, 2*QUICSize)
		for received := 0; received < n; {
			c.SetReadDeadline(time.Now().Add(quietAfter))
			k, err := c.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) && !sent.Load() {
				continue
			}
			if err != nil {
				return
			}
			if k == QUICSize {
				got <- int(buf[0])<<8 | int(buf[1])
				received++
			}
		}
	}()
	msg := make([]byte, QUICSize)
	for i := 0; i < n; i++ {
		msg[0], msg[1] = byte(i>>8), byte(i)
		if _, err := c.Write(msg); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			return Observation{Err: err}
		}
		time.Sleep(time.Millisecond)
	}
	sent.Store(true)
	seen := map[int]bool{}
	for i := range got {
		seen[i] = true
	}
	o := Observation{Bytes: int64(2 * len(seen) * QUICSize)}
	switch len(seen) {
	case n:
		o.Path = Direct
	case 0:
		o.Path = Dropped
	default:
		o.Err = fmt.Errorf("%d of %d datagrams came back", len(seen), n)
	}
	return o
}

// timeWaitReconnect connects the client to a server that closes first, so
// that ztunnel's side towards the client closes first too (and would keep
// the tuple in TIME_WAIT, where the client's kernel cannot see it), then
// connects again from the same client port at once, with tcp_rfc1337 set in
// ztunnel's netns. The new connection must be set up at once, its SYN
// answered the first time: any retransmission, or a connect slower than
// 200 ms, is an error. (Met by a TIME_WAIT socket, the SYN is answered with
// an ACK and a reset dance, or with tcp_rfc1337=1 not at all; given to the
// listener while a TIME_WAIT socket holds the tuple, Linux 6.11+ drops it.)
func timeWaitReconnect(b *Box, v6, rfc1337 bool) Observation {
	val := "0"
	if rfc1337 {
		val = "1"
	}
	// The rfc1337 of the netns where ztunnel's side of the connection
	// lives, where the TIME_WAIT socket is.
	zt := b.ZtunnelOf(b.Client)
	if err := zt.Do(func() error { return writeSysctl("net/ipv4/tcp_rfc1337", val) }); err != nil {
		return Observation{Err: err}
	}
	if b.closers == nil {
		b.closers = StartCloser(b.tb, &b.Remote.Namespace, CloserPort)
	}
	dst := netip.AddrPortFrom(IP(b.Remote, v6), CloserPort)

	first, _, err := closeFirst(b, v6, netip.AddrPort{}, dst)
	if err != nil {
		return Observation{Err: fmt.Errorf("first connection: %w", err)}
	}
	if err := waitClosed(zt, v6, first, dst); err != nil {
		return Observation{Err: err}
	}
	second, info, err := closeFirst(b, v6, first, dst)
	if err != nil {
		return Observation{Err: fmt.Errorf("reconnect from %s: %w", first, err)}
	}
	o := Observation{Path: Direct}
	if r, err := b.Record(second, dst, time.Second); err == nil {
		o.Path = ViaZtunnel(r.Listener)
	}
	switch {
	case info.retrans > 0:
		o.Err = fmt.Errorf("reconnect from %s: %d retransmissions, the SYN was not answered at once (connect took %s)", first, info.retrans, info.connect)
	case info.connect > 200*time.Millisecond:
		o.Err = fmt.Errorf("reconnect from %s took %s", first, info.connect)
	}
	return o
}

type connInfo struct {
	connect time.Duration
	retrans uint32
}

// closeFirst connects from the client (from local, if valid) to a Closer,
// sends a line, reads the answer and the server's close, closes, and
// returns its local address, how long the connect took and the
// retransmissions TCP_INFO counted.
func closeFirst(b *Box, v6 bool, local, dst netip.AddrPort) (netip.AddrPort, connInfo, error) {
	var info connInfo
	network := "tcp4"
	if v6 {
		network = "tcp6"
	}
	var c net.Conn
	err := b.Client.Do(func() error {
		d := &net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return serr
		}}
		d.SetMultipathTCP(false)
		if local.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(local)
		}
		start := time.Now()
		var err error
		c, err = d.Dial(network, dst.String())
		info.connect = time.Since(start)
		return err
	})
	if err != nil {
		return netip.AddrPort{}, info, err
	}
	defer c.Close()
	la := Unmap(c.LocalAddr().(*net.TCPAddr).AddrPort())
	rc, _ := c.(*net.TCPConn).SyscallConn()
	rc.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			info.retrans = ti.Total_retrans
		}
	})
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return la, info, err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return la, info, err
	}
	if string(got) != "bye\n" {
		return la, info, fmt.Errorf("got %q, want \"bye\\n\"", got)
	}
	return la, info, nil
}

// waitClosed waits until ztunnel's side of the connection from client to
// server has closed: no socket of ztunnel's holds the tuple in another
// state than TIME_WAIT (the agent keeps none: tcp_max_tw_buckets is 0 in
// ztunnel's netns; a box without that would show one).
func waitClosed(zt *testenv.Pod, v6 bool, client, server netip.AddrPort) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		open := false
		err := zt.Do(func() error {
			socks, err := tcpSockets(v6)
			if err != nil {
				return err
			}
			for _, s := range socks {
				if s.state != tcpTimeWait && s.local == server && s.remote == client {
					open = true
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !open {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ztunnel's side of %s -> %s did not close", client, server)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func writeSysctl(key, val string) error {
	return writeFile("/proc/sys/"+key, val)
}

func writeFile(path, val string) error {
	return os.WriteFile(path, []byte(val), 0o644)
}

// tcpTimeWait is TCP_TIME_WAIT (include/net/tcp_states.h).
const tcpTimeWait = 6

type tcpSocket struct {
	state         uint8
	local, remote netip.AddrPort
}

// tcpSockets lists the TCP sockets of the calling thread's netns, of one
// family, with sock_diag.
func tcpSockets(v6 bool) ([]tcpSocket, error) {
	fam := uint8(unix.AF_INET)
	if v6 {
		fam = unix.AF_INET6
	}
	socks, err := netlink.SocketDiagTCP(fam)
	if err != nil {
		return nil, fmt.Errorf("list TCP sockets: %w", err)
	}
	out := make([]tcpSocket, 0, len(socks))
	for _, s := range socks {
		src, _ := netip.AddrFromSlice(s.ID.Source)
		dst, _ := netip.AddrFromSlice(s.ID.Destination)
		out = append(out, tcpSocket{state: s.State,
			local:  netip.AddrPortFrom(src.Unmap(), s.ID.SourcePort),
			remote: netip.AddrPortFrom(dst.Unmap(), s.ID.DestinationPort)})
	}
	return out, nil
}
