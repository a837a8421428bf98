package ztunnel

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nsrun"
)

// sockopts are the options the stand-in's sockets need.
type sockopts int

const (
	// optTransparent lets a socket receive connections and datagrams for
	// addresses that are not local (bpf_sk_assign, TPROXY) and send from
	// them (IP_TRANSPARENT / IPV6_TRANSPARENT; CAP_NET_ADMIN).
	optTransparent sockopts = 1 << iota
	// optFreebind lets a socket bind an address that is not local
	// (IP_FREEBIND / IPV6_FREEBIND). With optTransparent it is redundant
	// for bind, but ztunnel sets both, and it also covers the address
	// family check in bind for v6 sockets.
	optFreebind
	// optOrigDst asks for the original destination of each datagram
	// (IP_RECVORIGDSTADDR / IPV6_RECVORIGDSTADDR).
	optOrigDst
	// optReuseAddr is SO_REUSEADDR.
	optReuseAddr
)

// control returns a net.Dialer or net.ListenConfig Control function setting
// opts before bind. IPV6_V6ONLY is set on every IPv6 socket: the stand-in
// opens separate IPv4 and IPv6 sockets, as ztunnel does.
func (opts sockopts) control() func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		v6 := network == "tcp6" || network == "udp6"
		type opt struct {
			level, name int
			what        string
		}
		var set []opt
		if opts&optReuseAddr != 0 {
			set = append(set, opt{unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR"})
		}
		switch {
		case v6:
			set = append(set, opt{unix.SOL_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY"})
			if opts&optTransparent != 0 {
				set = append(set, opt{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"})
			}
			if opts&optFreebind != 0 {
				set = append(set, opt{unix.SOL_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND"})
			}
			if opts&optOrigDst != 0 {
				set = append(set, opt{unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR"})
			}
		default:
			if opts&optTransparent != 0 {
				set = append(set, opt{unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"})
			}
			if opts&optFreebind != 0 {
				set = append(set, opt{unix.SOL_IP, unix.IP_FREEBIND, "IP_FREEBIND"})
			}
			if opts&optOrigDst != 0 {
				set = append(set, opt{unix.SOL_IP, unix.IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR"})
			}
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range set {
				if err := unix.SetsockoptInt(int(fd), o.level, o.name, 1); err != nil {
					serr = fmt.Errorf("set %s on %s socket: %w", o.what, network, err)
					if o.name == unix.IP_TRANSPARENT || o.name == unix.IPV6_TRANSPARENT {
						serr = fmt.Errorf("%w (needs CAP_NET_ADMIN)", serr)
					}
					return
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// inNetns runs fn inside ns, or right here when ns is not set. Sockets
// opened by fn stay in ns whichever thread uses them later.
func inNetns(ns netns.NsHandle, fn func() error) error {
	if ns <= 0 {
		return fn()
	}
	if err := nsrun.Run(int(ns), fn); err != nil {
		return fmt.Errorf("in ztunnel's netns: %w", err)
	}
	return nil
}

// network returns "tcp4" or "tcp6" (proto "tcp"), "udp4" or "udp6" for a.
func network(proto string, a netip.Addr) string {
	if a.Is4() {
		return proto + "4"
	}
	return proto + "6"
}

// dialFrom connects to dst from src (any port): a transparent, freebind
// socket, so src need not be an address of the namespace. With src not
// valid (or of the other family), the kernel picks the source.
func (s *Server) dialFrom(ctx context.Context, src netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	d := &net.Dialer{
		Timeout: s.opts.DialTimeout,
		Control: (optTransparent | optFreebind | optReuseAddr).control(),
	}
	d.SetMultipathTCP(false)
	if src.IsValid() && src.Is4() == dst.Addr().Is4() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	var c net.Conn
	err := inNetns(s.opts.Netns, func() (err error) {
		c, err = d.DialContext(ctx, network("tcp", dst.Addr()), dst.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// addrPort returns a TCP or UDP address as an unmapped netip.AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
