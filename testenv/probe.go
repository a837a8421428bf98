package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Ping sends ICMP or ICMPv6 echo requests from the namespace to dst, one
// every 250 ms, until a matching reply comes or ctx ends (2 seconds without
// a deadline). It uses a raw socket, so it works as root whatever
// net.ipv4.ping_group_range says.
func (ns *Namespace) Ping(ctx context.Context, dst netip.Addr) error {
	network, laddr, proto := "ip4:icmp", "0.0.0.0", 1
	var echo, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, laddr, proto = "ip6:ipv6-icmp", "::", 58
		echo, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var c *icmp.PacketConn
	if err := ns.Do(func() (err error) {
		c, err = icmp.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return fmt.Errorf("ping %s: %w", dst, err)
	}
	defer c.Close()

	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Second)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	id, seq := int(rand.Uint32()&0xffff), 1
	msg := icmp.Message{Type: echo, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("testenv")}}
	// The kernel computes the ICMPv6 checksum on raw sockets: no pseudo
	// header needed.
	b, err := msg.Marshal(nil)
	if err != nil {
		return fmt.Errorf("ping %s: %w", dst, err)
	}
	// Like ping(8), send again every 250 ms until a reply comes: a first
	// request can be lost while a neighbour entry is resolved.
	buf := make([]byte, 1500)
	for {
		if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return fmt.Errorf("ping %s from %s: %w", dst, ns.what, err)
		}
		rd := time.Now().Add(250 * time.Millisecond)
		if rd.After(deadline) {
			rd = deadline
		}
		c.SetReadDeadline(rd)
		if ok, err := ns.readEchoReply(ctx, c, buf, proto, reply, id, seq, dst); ok || err != nil {
			return err
		}
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			return fmt.Errorf("ping %s from %s: no reply", dst, ns.what)
		}
	}
}

// readEchoReply reads until the echo reply it waits for (true), the read
// deadline (false) or an error.
func (ns *Namespace) readEchoReply(ctx context.Context, c *icmp.PacketConn, buf []byte, proto int, reply icmp.Type, id, seq int, dst netip.Addr) (bool, error) {
	for {
		n, peer, err := c.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
			return false, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return false, fmt.Errorf("ping %s from %s: no reply: %w", dst, ns.what, err)
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		from, _ := netip.AddrFromSlice(peer.(*net.IPAddr).IP)
		if ok && e.ID == id && e.Seq == seq && from.Unmap() == dst {
			return true, nil
		}
	}
}

// Echo is an echo server in a namespace: TCP over IPv4 and IPv6 (each
// connection gets back what it sends, until it closes its side) and UDP
// (each datagram is sent back). It records who connected, so that a test can
// tell which source address a connection arrived with.
type Echo struct {
	// Port is the port the server listens on, TCP and UDP, v4 and v6.
	Port int

	mu      sync.Mutex
	closed  bool
	peers   []netip.AddrPort
	closers map[io.Closer]bool
	wg      sync.WaitGroup
}

// StartEcho starts an echo server on port (tcp4, tcp6, udp4, udp6, all
// addresses) in the namespace. It fails the test if a socket cannot be
// opened, and is closed when the test ends.
func (ns *Namespace) StartEcho(port int) *Echo {
	ns.tb.Helper()
	e, err := ns.startEcho(port)
	if err != nil {
		ns.tb.Fatal(err)
	}
	ns.tb.Cleanup(e.Close)
	return e
}

func (ns *Namespace) startEcho(port int) (*Echo, error) {
	e := &Echo{Port: port, closers: map[io.Closer]bool{}}
	// Open every socket first, then serve: a port taken fails the whole.
	var listeners []net.Listener
	var conns []net.PacketConn
	fail := func(network string, err error) (*Echo, error) {
		for c := range e.closers {
			c.Close()
		}
		return nil, fmt.Errorf("start echo on %s port %d: %w", network, port, err)
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		l, err := ns.Listen(network, fmt.Sprintf(":%d", port))
		if err != nil {
			return fail(network, err)
		}
		e.closers[l] = true
		listeners = append(listeners, l)
	}
	for _, network := range []string{"udp4", "udp6"} {
		c, err := ns.ListenPacket(network, fmt.Sprintf(":%d", port))
		if err != nil {
			return fail(network, err)
		}
		e.closers[c] = true
		conns = append(conns, c)
	}
	e.wg.Add(len(listeners) + len(conns))
	for _, l := range listeners {
		go e.acceptLoop(l)
	}
	for _, c := range conns {
		go e.udpLoop(c)
	}
	return e, nil
}

// Peers returns the remote addresses of the connections and datagrams the
// server received, in order of arrival.
func (e *Echo) Peers() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.peers)
}

// Close stops the server and closes its connections.
func (e *Echo) Close() {
	e.mu.Lock()
	e.closed = true
	for c := range e.closers {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

func (e *Echo) track(c io.Closer, peer netip.AddrPort) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		c.Close()
		return false
	}
	e.peers = append(e.peers, peer)
	if _, ok := c.(net.PacketConn); !ok {
		e.closers[c] = true
		e.wg.Add(1)
	}
	return true
}

func (e *Echo) acceptLoop(l net.Listener) {
	defer e.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		if !e.track(c, unmap(peer)) {
			return
		}
		go func() {
			defer e.wg.Done()
			io.Copy(c, c)
			c.Close()
			e.mu.Lock()
			delete(e.closers, c)
			e.mu.Unlock()
		}()
	}
}

// udpLoop answers each datagram from the address it was sent to, as a UDP
// server on a host of several addresses must: left to routing, the source
// of the answer would be the outgoing interface's address, which a
// connected client drops when it is not the one it sent to (a pod asking
// its node's IP, answered from the gateway address of a ptp or bridge
// node).
func (e *Echo) udpLoop(c net.PacketConn) {
	defer e.wg.Done()
	var read func([]byte) (int, net.IP, net.Addr, error)
	var write func([]byte, net.IP, net.Addr) error
	if c.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
		pc := ipv4.NewPacketConn(c)
		pc.SetControlMessage(ipv4.FlagDst, true)
		read = func(b []byte) (int, net.IP, net.Addr, error) {
			n, cm, from, err := pc.ReadFrom(b)
			if cm == nil {
				return n, nil, from, err
			}
			return n, cm.Dst, from, err
		}
		write = func(b []byte, src net.IP, to net.Addr) error {
			_, err := pc.WriteTo(b, &ipv4.ControlMessage{Src: src}, to)
			return err
		}
	} else {
		pc := ipv6.NewPacketConn(c)
		pc.SetControlMessage(ipv6.FlagDst, true)
		read = func(b []byte) (int, net.IP, net.Addr, error) {
			n, cm, from, err := pc.ReadFrom(b)
			if cm == nil {
				return n, nil, from, err
			}
			return n, cm.Dst, from, err
		}
		write = func(b []byte, src net.IP, to net.Addr) error {
			_, err := pc.WriteTo(b, &ipv6.ControlMessage{Src: src}, to)
			return err
		}
	}
	buf := make([]byte, 65535)
	for {
		n, dst, from, err := read(buf)
		if err != nil {
			return
		}
		if !e.track(c, unmap(from.(*net.UDPAddr).AddrPort())) {
			return
		}
		// An address the namespace does not own (a datagram steered to
		// the server) cannot be a source: then routing picks one.
		if dst == nil || write(buf[:n], dst, from) != nil {
			c.WriteTo(buf[:n], from)
		}
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
