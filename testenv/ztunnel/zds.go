package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ztunnel's reconnect delays (src/inpod/workloadmanager.rs): a failed dial
// doubles the delay from 10ms up to 15s; a connection that ends is
// redialled at once.
const (
	zdsFirstBackoff = 10 * time.Millisecond
	zdsMaxBackoff   = 15 * time.Second
)

// runZDS dials the node agent's ZDS socket and serves its requests until
// Close, redialling whenever the connection ends. Pods stay served across
// connections: ztunnel keeps its proxies while disconnected and reconciles
// them with the next snapshot.
func (s *Server) runZDS(path string) {
	defer s.wg.Done()
	backoff := zdsFirstBackoff
	for s.ctx.Err() == nil {
		c, err := s.inpod.dial(s.ctx, path)
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			backoff = min(2*backoff, zdsMaxBackoff)
			s.updateZDS(func(st *ZDSState) {
				st.Failures++
				st.LastError = err.Error()
			})
			s.log.Warn("zds dial", "path", path, "err", err, "retry", backoff)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		backoff = zdsFirstBackoff
		s.updateZDS(func(st *ZDSState) {
			st.Connected = true
			st.Connects++
		})
		err = s.serveZDS(c)
		s.updateZDS(func(st *ZDSState) {
			st.Connected = false
			if err != nil && s.ctx.Err() == nil {
				st.LastError = err.Error()
			}
		})
		if err != nil && s.ctx.Err() == nil {
			s.log.Warn("zds connection ended", "err", err)
		}
	}
}

// serveZDS serves one ZDS connection until it fails or Close. Each request
// is acted on, then acked.
func (s *Server) serveZDS(c zdsConn) error {
	stop := context.AfterFunc(s.ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	// The pods named before snapshot_sent on this connection; the others
	// go when it arrives (statemanager.rs reconcile).
	var snapshotSent bool
	named := map[string]bool{}
	for {
		req, ns, err := c.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && s.ctx.Err() == nil {
				// A request it cannot read: ztunnel nacks it and drops
				// the connection (workloadmanager.rs process).
				c.Ack("failure to read message: " + err.Error())
			}
			return fmt.Errorf("receive zds request: %w", err)
		}
		s.updateZDS(func(st *ZDSState) {
			switch req.Op {
			case "add":
				st.Adds++
			case "keep":
				st.Keeps++
			case "del":
				st.Dels++
			case "snapshot_sent":
				st.Snapshots++
			}
		})
		ack := ""
		if s.opts.AckError != nil {
			ack = s.opts.AckError(req)
		}
		if ack != "" {
			if ns != nil {
				ns.Close()
			}
			s.log.Info("zds: acking with an error (AckError)", "op", req.Op, "uid", req.Pod.UID, "ack", ack)
		} else {
			ack = s.actZDS(req, ns, &snapshotSent, named)
		}
		err = c.Ack(ack)
		s.updateZDS(func(st *ZDSState) {
			if err != nil {
				st.LastError = err.Error()
				return
			}
			st.Acks++
			if ack != "" {
				st.ErrorAcks++
				st.LastError = ack
			}
		})
		if err != nil {
			return fmt.Errorf("ack zds %s: %w", req.Op, err)
		}
	}
}

// actZDS carries out one request (statemanager.rs process_msg) and returns
// the ack's error text.
func (s *Server) actZDS(req ZDSRequest, ns *os.File, snapshotSent *bool, named map[string]bool) string {
	switch req.Op {
	case "add":
		if ns == nil {
			return fmt.Sprintf("add of pod %s without a netns", req.Pod.UID)
		}
		if !*snapshotSent {
			named[req.Pod.UID] = true
		}
		if err := s.addPod(req.Pod, ns); err != nil {
			s.log.Error("zds add", "uid", req.Pod.UID, "err", err)
			return err.Error()
		}
	case "keep":
		if *snapshotSent {
			// ztunnel treats this as a protocol error.
			return fmt.Sprintf("keep of pod %s after snapshot_sent", req.Pod.UID)
		}
		named[req.Pod.UID] = true
	case "del":
		if !*snapshotSent {
			delete(named, req.Pod.UID)
		}
		s.delPod(req.Pod.UID)
	case "snapshot_sent":
		if *snapshotSent {
			return "snapshot_sent received twice"
		}
		*snapshotSent = true
		for _, p := range s.Pods() {
			if !named[p.UID] {
				s.log.Info("zds: pod not in the snapshot", "uid", p.UID)
				s.delPod(p.UID)
			}
		}
	default:
		return fmt.Sprintf("unknown zds request %q", req.Op)
	}
	return ""
}

// outboundInPod carries a connection accepted on a pod's 15001 to its
// original destination from inside the pod, with the pod's own address as
// source (proxy::freebind_connect with no source): over HBONE to the
// destination's 15008 when the stand-in serves the pod that holds it, as
// ztunnel does for a workload of the mesh (outbound.rs build_request), in
// plaintext otherwise (passthrough).
func (s *Server) outboundInPod(st *site, id int, c *net.TCPConn, dst netip.AddrPort) {
	target := dst
	if s.servedPod(dst.Addr()) != nil {
		target = netip.AddrPortFrom(dst.Addr(), PortHBONE)
		s.rec.update(id, func(r *Record) { r.Tunnel = target })
	}
	raw, err := s.dialFrom(s.ctx, st, netip.Addr{}, target)
	if err != nil {
		s.reject(id, c, fmt.Errorf("connect to %s: %w", target, err))
		return
	}
	// Tracked from here, so that a del of the pod ends the HBONE
	// exchange as well as the flow.
	if !s.track(st, raw) {
		s.rec.end(id, 0, 0, errors.New("stand-in closing"))
		return
	}
	defer s.untrack(raw)
	s.rec.update(id, func(r *Record) { r.Upstream = addrPort(raw.LocalAddr()) })
	var up duplex = raw
	if target != dst {
		ctx, cancel := context.WithTimeout(s.ctx, s.opts.DialTimeout)
		hc, err := HBONE(ctx, raw, dst.String())
		cancel()
		if err != nil {
			s.reject(id, c, fmt.Errorf("hbone to %s via %s: %w", dst, target, err))
			return
		}
		up = hc.(duplex)
		defer hc.Close()
	}
	c2s, s2c, err := splice(c, up)
	s.rec.end(id, c2s, s2c, err)
}

// origDstTCP returns an accepted connection's original destination, as
// ztunnel does in both modes (src/socket.rs orig_dst_addr_or_default):
// SO_ORIGINAL_DST (SOL_IP), which also answers for an IPv4 connection on
// a dual-stack [::] listener (ipv6_getsockopt hands SOL_IP to
// ip_getsockopt), then IP6T_SO_ORIGINAL_DST (SOL_IPV6) for IPv6; where
// both fail the local address. The kernel says ENOENT when conntrack has
// no entry for the connection (no NAT in the namespace: bpf_sk_assign,
// TPROXY, policy routing) and ENOPROTOOPT when conntrack is not loaded at
// all; an entry with no NAT (TPROXY beside other rules) gives the local
// address back. What iptables or nftables REDIRECT rewrote (the local
// address becomes 127.0.0.1 or ::1 and the listener's port) only the
// conntrack entry still knows.
func origDstTCP(c *net.TCPConn) netip.AddrPort {
	local := addrPort(c.LocalAddr())
	rc, err := c.SyscallConn()
	if err != nil {
		return local
	}
	var dst netip.AddrPort
	rc.Control(func(fd uintptr) { dst = soOriginalDst(fd) })
	if !dst.IsValid() {
		return local
	}
	return dst
}

// soOriginalDst asks conntrack for the original destination of the
// connection on fd: IPv4 first, then IPv6. The zero AddrPort when neither
// knows it.
func soOriginalDst(fd uintptr) netip.AddrPort {
	// The kernel writes a sockaddr_in (sockaddr_in6) into a buffer of that
	// size; x/sys/unix has no getter for it.
	var sa [unix.SizeofSockaddrInet6]byte
	n := uint32(unix.SizeofSockaddrInet4)
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, unix.SO_ORIGINAL_DST,
		uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&n)), 0); e == 0 {
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa[0]))
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), ntohs(a.Port))
	}
	n = uint32(unix.SizeofSockaddrInet6)
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IPV6, ip6tSoOriginalDst,
		uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&n)), 0); e == 0 {
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sa[0]))
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), ntohs(a.Port))
	}
	return netip.AddrPort{}
}

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h),
// which x/sys/unix lacks.
const ip6tSoOriginalDst = 80

// ntohs turns a port in network order, as a sockaddr holds it, around.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
