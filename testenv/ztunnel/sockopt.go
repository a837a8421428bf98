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
	// optReusePort is SO_REUSEPORT: ztunnel's in-pod listeners have it
	// unless INPOD_PORT_REUSE=false (src/inpod/config.rs).
	optReusePort
	// optMark sets SO_MARK to Mark, as ztunnel marks every socket it
	// opens in a pod's namespace (src/inpod/config.rs).
	optMark
	// optDualStack leaves IPV6_V6ONLY off: one [::] socket takes both
	// families, as ztunnel's in-pod wildcard listeners do.
	optDualStack
)

// Mark is the SO_MARK that ztunnel sets on its sockets in a pod's network
// namespace (DEFAULT_INPOD_MARK, 1337, in src/config.rs), so that the
// pod's redirection lets them through.
const Mark = 0x539

// control returns a net.Dialer or net.ListenConfig Control function setting
// opts before bind. IPV6_V6ONLY is set on every IPv6 socket unless
// optDualStack: in node mode the stand-in opens separate IPv4 and IPv6
// sockets.
func (opts sockopts) control() func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		v6 := network == "tcp6" || network == "udp6"
		type opt struct {
			level, name int
			what        string
			value       int
		}
		var set []opt
		if opts&optReuseAddr != 0 {
			set = append(set, opt{unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR", 1})
		}
		if opts&optReusePort != 0 {
			set = append(set, opt{unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT", 1})
		}
		if opts&optMark != 0 {
			set = append(set, opt{unix.SOL_SOCKET, unix.SO_MARK, "SO_MARK", Mark})
		}
		switch {
		case v6:
			set = append(set, opt{unix.SOL_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY", 1})
			if opts&optDualStack != 0 {
				set[len(set)-1].value = 0
			}
			if opts&optTransparent != 0 {
				set = append(set, opt{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT", 1})
			}
			if opts&optFreebind != 0 {
				set = append(set, opt{unix.SOL_IPV6, unix.IPV6_FREEBIND, "IPV6_FREEBIND", 1})
			}
			if opts&optOrigDst != 0 {
				set = append(set, opt{unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR", 1})
			}
		default:
			if opts&optTransparent != 0 {
				set = append(set, opt{unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT", 1})
			}
			if opts&optFreebind != 0 {
				set = append(set, opt{unix.SOL_IP, unix.IP_FREEBIND, "IP_FREEBIND", 1})
			}
			if opts&optOrigDst != 0 {
				set = append(set, opt{unix.SOL_IP, unix.IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR", 1})
			}
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range set {
				if err := unix.SetsockoptInt(int(fd), o.level, o.name, o.value); err != nil {
					serr = fmt.Errorf("set %s on %s socket: %w", o.what, network, err)
					if o.name == unix.IP_TRANSPARENT || o.name == unix.IPV6_TRANSPARENT || o.name == unix.SO_MARK {
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
		return fmt.Errorf("in netns: %w", err)
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
func (s *Server) dialFrom(ctx context.Context, st *site, src netip.Addr, dst netip.AddrPort) (*net.TCPConn, error) {
	opts := optReuseAddr | st.opts
	if st.pod != nil && src == dst.Addr() {
		// ztunnel connects without binding when the source is the
		// destination (proxy::freebind_connect).
		src = netip.Addr{}
	}
	if src.IsValid() {
		opts |= optTransparent | optFreebind
	}
	d := &net.Dialer{
		Timeout: s.opts.DialTimeout,
		Control: opts.control(),
	}
	d.SetMultipathTCP(false)
	if src.IsValid() && src.Is4() == dst.Addr().Is4() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	var c net.Conn
	err := st.run(func() (err error) {
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
