package scenario

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshredirect/meshredirect/testenv"
)

// DNSPort is where the box's DNS server listens on the remote host.
const DNSPort = 53

// BigName is the name the DNS server answers with a reply larger than any
// link's MTU (BigReplySize bytes of TXT): the reply arrives fragmented.
const (
	BigName      = "big.svc.example."
	BigReplySize = 4000
)

// DNSServer is a DNS server (UDP and TCP, IPv4 and IPv6) on the remote
// host: it answers any A or AAAA question with the remote host's address,
// and BigName with BigReplySize bytes of TXT records.
type DNSServer struct {
	answer  []netip.Addr
	closers []io.Closer
	wg      sync.WaitGroup
	mu      sync.Mutex
	// Queries counts the queries it answered, by transport ("udp", "tcp").
	Queries map[string]int
}

// DNS starts (once) the box's DNS server on the remote host's port 53.
func (b *Box) DNS() *DNSServer {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dns != nil {
		return b.dns
	}
	s := &DNSServer{answer: []netip.Addr{b.Remote.IPv4, b.Remote.IPv6}, Queries: map[string]int{}}
	ns := &b.Remote.Namespace
	b.tb.Cleanup(s.Close)
	for _, network := range []string{"udp4", "udp6"} {
		c, err := ns.ListenPacket(network, fmt.Sprintf(":%d", DNSPort))
		if err != nil {
			b.tb.Fatalf("start the DNS server on %s: %v", network, err)
		}
		s.closers = append(s.closers, c)
		s.wg.Add(1)
		go s.serveUDP(c)
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		l, err := ns.Listen(network, fmt.Sprintf(":%d", DNSPort))
		if err != nil {
			b.tb.Fatalf("start the DNS server on %s: %v", network, err)
		}
		s.closers = append(s.closers, l)
		s.wg.Add(1)
		go s.serveTCP(l)
	}
	b.dns = s
	return s
}

// Close stops the server.
func (s *DNSServer) Close() {
	for _, c := range s.closers {
		c.Close()
	}
	s.wg.Wait()
}

func (s *DNSServer) count(transport string) {
	s.mu.Lock()
	s.Queries[transport]++
	s.mu.Unlock()
}

func (s *DNSServer) serveUDP(c net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		reply, err := s.reply(buf[:n])
		if err != nil {
			continue
		}
		s.count("udp")
		c.WriteTo(reply, from)
	}
}

func (s *DNSServer) serveTCP(l net.Listener) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			for {
				query, err := readTCPMessage(c)
				if err != nil {
					return
				}
				reply, err := s.reply(query)
				if err != nil {
					return
				}
				s.count("tcp")
				if _, err := c.Write(tcpMessage(reply)); err != nil {
					return
				}
			}
		}()
	}
}

// reply answers a query: A/AAAA with the remote host's address, BigName
// with TXT strings of 250 bytes up to BigReplySize.
func (s *DNSServer) reply(query []byte) ([]byte, error) {
	var q dnsmessage.Message
	if err := q.Unpack(query); err != nil || len(q.Questions) != 1 {
		return nil, errors.New("not a query")
	}
	question := q.Questions[0]
	r := dnsmessage.Message{Header: dnsmessage.Header{ID: q.ID, Response: true, Authoritative: true, RecursionDesired: q.RecursionDesired},
		Questions: q.Questions}
	hdr := dnsmessage.ResourceHeader{Name: question.Name, Type: question.Type, Class: dnsmessage.ClassINET, TTL: 30}
	switch {
	case strings.EqualFold(question.Name.String(), BigName):
		hdr.Type = dnsmessage.TypeTXT
		chunk := strings.Repeat("m", 250)
		for size := 0; size < BigReplySize; size += len(chunk) + 1 {
			r.Answers = append(r.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.TXTResource{TXT: []string{chunk}}})
		}
	case question.Type == dnsmessage.TypeA:
		r.Answers = append(r.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AResource{A: s.answer[0].As4()}})
	case question.Type == dnsmessage.TypeAAAA:
		r.Answers = append(r.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AAAAResource{AAAA: s.answer[1].As16()}})
	}
	return r.Pack()
}

// tcpMessage frames a DNS message for TCP (RFC 7766): a two-byte length.
func tcpMessage(m []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(m))), m...)
}

func readTCPMessage(r io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	_, err := io.ReadFull(r, m)
	return m, err
}

// QueryName sends a query for name (A for IPv4, AAAA for IPv6; TXT for
// BigName) from inside src to server, over UDP or TCP, and returns the
// reply, its sender (UDP; the server for TCP) and its size.
func QueryName(src *testenv.Namespace, v6, tcp bool, server netip.AddrPort, name string) (dnsmessage.Message, netip.AddrPort, int, error) {
	qtype := dnsmessage.TypeA
	if v6 {
		qtype = dnsmessage.TypeAAAA
	}
	if name == BigName {
		qtype = dnsmessage.TypeTXT
	}
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: uint16(time.Now().UnixNano()), RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: qtype, Class: dnsmessage.ClassINET}}}
	wire, err := q.Pack()
	if err != nil {
		return dnsmessage.Message{}, netip.AddrPort{}, 0, err
	}
	var reply dnsmessage.Message
	if tcp {
		network := "tcp4"
		if v6 {
			network = "tcp6"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := src.DialContext(ctx, network, server.String())
		if err != nil {
			return reply, netip.AddrPort{}, 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write(tcpMessage(wire)); err != nil {
			return reply, netip.AddrPort{}, 0, err
		}
		m, err := readTCPMessage(bufio.NewReader(c))
		if err != nil {
			return reply, netip.AddrPort{}, 0, fmt.Errorf("read the reply over TCP: %w", err)
		}
		return reply, server, len(m), reply.Unpack(m)
	}
	network := "udp4"
	if v6 {
		network = "udp6"
	}
	c, err := src.ListenPacket(network, ":0")
	if err != nil {
		return reply, netip.AddrPort{}, 0, err
	}
	defer c.Close()
	buf := make([]byte, 65535)
	for attempt := 0; attempt < 3; attempt++ {
		if _, err := c.WriteTo(wire, net.UDPAddrFromAddrPort(server)); err != nil {
			return reply, netip.AddrPort{}, 0, err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, addr, err := c.ReadFrom(buf)
		if err != nil {
			continue
		}
		if err := reply.Unpack(buf[:n]); err != nil {
			return reply, netip.AddrPort{}, n, err
		}
		return reply, Unmap(addr.(*net.UDPAddr).AddrPort()), n, nil
	}
	return reply, netip.AddrPort{}, 0, fmt.Errorf("no DNS reply from %s", server)
}

// Closer is a TCP server that answers a line with "bye\n" and closes the
// connection first: the other end's proxy keeps the tuple in TIME_WAIT.
type Closer struct {
	Port int
	ls   []net.Listener
	wg   sync.WaitGroup
}

// StartCloser starts a Closer on port of ns (IPv4 and IPv6), closed when
// tb ends.
func StartCloser(tb testenv.TB, ns *testenv.Namespace, port int) *Closer {
	tb.Helper()
	c := &Closer{Port: port}
	for _, network := range []string{"tcp4", "tcp6"} {
		l, err := ns.Listen(network, fmt.Sprintf(":%d", port))
		if err != nil {
			tb.Fatal(err)
		}
		c.ls = append(c.ls, l)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer conn.Close()
					conn.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err := bufio.NewReader(conn).ReadString('\n'); err == nil {
						io.WriteString(conn, "bye\n")
					}
				}()
			}
		}()
	}
	tb.Cleanup(func() {
		for _, l := range c.ls {
			l.Close()
		}
		c.wg.Wait()
	})
	return c
}
