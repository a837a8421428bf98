package ztunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// dnsLoop answers the queries that arrive on a 15053 socket.
func (s *Server) dnsLoop(st *site, c *net.UDPConn) {
	defer s.wg.Done()
	port := addrPort(c.LocalAddr()).Port()
	buf := make([]byte, 65535)
	oob := make([]byte, 512)
	for {
		n, oobn, _, from, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("read dns query", "err", err)
			}
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		dst, err := origDst(oob[:oobn])
		if err != nil {
			s.log.Error("dns query without original destination", "from", from, "err", err)
			continue
		}
		s.answer(st, c, int(port), from, dst, buf[:n])
	}
}

// origDst returns the original destination from IP_ORIGDSTADDR or
// IPV6_ORIGDSTADDR.
func origDst(oob []byte) (netip.AddrPort, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parse control messages: %w", err)
	}
	for _, m := range msgs {
		sa, err := unix.ParseOrigDstAddr(&m)
		if err != nil {
			continue
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
		case *unix.SockaddrInet6:
			return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)), nil
		}
	}
	return netip.AddrPort{}, errors.New("no IP_ORIGDSTADDR control message")
}

// answer records a query and replies to it from its original destination.
func (s *Server) answer(st *site, c *net.UDPConn, port int, from, dst netip.AddrPort, query []byte) {
	id := s.rec.begin(Record{Listener: port, Proto: "dns", Source: from, OrigDst: dst, Pod: st.podInfo()})
	reply, q, err := s.resolve(query)
	s.rec.update(id, func(r *Record) { r.DNS = q })
	if err == nil {
		err = s.sendFrom(st, c, port, dst, from, reply)
	}
	if err != nil {
		s.log.Warn("dns", "from", from, "dst", dst, "err", err)
		reply = nil
	}
	s.rec.end(id, int64(len(query)), int64(len(reply)), err)
}

// serveDNSTCP answers the queries of a DNS-over-TCP connection accepted on
// 15053 (RFC 7766: each message behind a two-byte length), as ztunnel's DNS
// proxy does; the original destination is the accepted socket's local
// address. The connection's record counts the queries' and replies' bytes.
func (s *Server) serveDNSTCP(st *site, port int, c *net.TCPConn) {
	defer s.untrack(c)
	src, dst := addrPort(c.RemoteAddr()), origDstTCP(c)
	id := s.rec.begin(Record{Listener: port, Proto: "dns-tcp", Source: src, OrigDst: dst, Pod: st.podInfo()})
	var in, out int64
	var err error
	for {
		var hdr [2]byte
		if _, err = io.ReadFull(c, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			break
		}
		query := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err = io.ReadFull(c, query); err != nil {
			break
		}
		in += int64(len(query)) + 2
		reply, q, rerr := s.resolve(query)
		s.rec.update(id, func(r *Record) { r.DNS = q })
		if rerr != nil {
			err = rerr
			break
		}
		msg := binary.BigEndian.AppendUint16(nil, uint16(len(reply)))
		if _, err = c.Write(append(msg, reply...)); err != nil {
			break
		}
		out += int64(len(msg) + len(reply))
	}
	s.rec.end(id, in, out, err)
}

// resolve builds the reply to a query.
func (s *Server) resolve(query []byte) ([]byte, *DNSQuery, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, nil, fmt.Errorf("parse dns query: %w", err)
	}
	q, err := p.Question()
	if err != nil {
		return nil, nil, fmt.Errorf("parse dns question: %w", err)
	}
	rec := &DNSQuery{Name: q.Name.String(), Type: q.Type.String()}
	m := dnsmessage.Message{
		Header: dnsmessage.Header{
			ID:                 h.ID,
			Response:           true,
			Authoritative:      true,
			RecursionDesired:   h.RecursionDesired,
			RecursionAvailable: true,
		},
		Questions: []dnsmessage.Question{q},
	}
	addrs, ok := s.dns[canonicalName(q.Name.String())]
	if !ok {
		addrs, ok = s.opts.DNSAnswer, len(s.opts.DNSAnswer) > 0
	}
	if !ok {
		m.RCode = dnsmessage.RCodeNameError
	}
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 30}
	for _, a := range addrs {
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AResource{A: a.As4()}})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			m.Answers = append(m.Answers, dnsmessage.Resource{Header: rh, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
		default:
			continue
		}
		rec.Answers = append(rec.Answers, a)
	}
	rec.RCode = m.RCode.String()
	b, err := m.Pack()
	if err != nil {
		return nil, rec, fmt.Errorf("pack dns reply: %w", err)
	}
	return b, rec, nil
}

// sendFrom sends msg to to with src as its source address and port. When
// src's port is the listener's (the query was sent to the listener's port,
// whatever the address), the listener itself sends with IP_PKTINFO
// (IPV6_PKTINFO) naming the source address, which a transparent socket may
// do for an address that is not local. Otherwise (a query to port 53 handed
// to the listener by bpf_sk_assign) the reply needs that other port too: it
// goes out of a transparent socket bound to src.
//
// In a pod the listener is bound to a loopback address and is not
// transparent, as ztunnel's: it replies from that address and its port.
func (s *Server) sendFrom(st *site, c *net.UDPConn, port int, src, to netip.AddrPort, msg []byte) error {
	if st.pod != nil {
		// As ztunnel does in a pod: from the listener's own loopback
		// address and port, whatever the query was sent to. Giving the
		// reply the resolver's address back is the datapath's work
		// (iptables REDIRECT's conntrack for istio-cni, pod_loopback's
		// rewrite for meshredirect).
		if _, err := c.WriteToUDPAddrPort(msg, to); err != nil {
			return fmt.Errorf("send dns reply from %s to %s: %w", c.LocalAddr(), to, err)
		}
		return nil
	}
	if int(src.Port()) == port {
		var oob []byte
		if src.Addr().Is4() {
			oob = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: src.Addr().As4()})
		} else {
			oob = unix.PktInfo6(&unix.Inet6Pktinfo{Addr: src.Addr().As16()})
		}
		if _, _, err := c.WriteMsgUDPAddrPort(msg, oob, to); err != nil {
			return fmt.Errorf("send dns reply from %s to %s: %w", src, to, err)
		}
		return nil
	}
	rc, err := s.replySocket(st, src)
	if err != nil {
		return err
	}
	defer rc.Close()
	if _, err := rc.WriteToUDPAddrPort(msg, to); err != nil {
		return fmt.Errorf("send dns reply from %s to %s: %w", src, to, err)
	}
	return nil
}

// replySocket opens a transparent UDP socket bound to src, for one reply.
// It is not kept: a socket bound to the DNS server's address would be what
// the assign program's bpf_sk_lookup_udp finds for the next query to that
// server, ahead of the listener, and nobody reads it.
func (s *Server) replySocket(st *site, src netip.AddrPort) (*net.UDPConn, error) {
	lc := &net.ListenConfig{Control: (optTransparent | optFreebind | optReuseAddr | st.opts).control()}
	var pc net.PacketConn
	err := st.run(func() (err error) {
		pc, err = lc.ListenPacket(s.ctx, network("udp", src.Addr()), src.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open dns reply socket at %s: %w", src, err)
	}
	return pc.(*net.UDPConn), nil
}
