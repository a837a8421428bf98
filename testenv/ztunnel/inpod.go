package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/nsrun"
)

// PodInfo names an ambient pod as a ZDS add names it (its uid and
// workload_info).
type PodInfo struct {
	UID            string `json:"uid"`
	Name           string `json:"name,omitempty"`
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
}

// PodState is what the stand-in knows of a pod in in-pod mode.
type PodState struct {
	PodInfo
	// Up says that the pod's listeners are open in its network namespace.
	Up bool
	// Err says why the last add of the pod failed (Up is then false).
	Err string
	// Listeners are the local addresses of the pod's listeners (TCP and
	// UDP).
	Listeners []netip.AddrPort
	// Addrs are the pod's addresses, read from its namespace at add: the
	// stand-in's outbound tunnels over HBONE to a pod holding the
	// original destination.
	Addrs []netip.Addr
	// Netns identifies the pod's network namespace (its inode).
	Netns uint64
}

// ZDSRequest is a ZDS request as the stand-in received it, for
// Options.AckError.
type ZDSRequest struct {
	// Op is "add", "keep", "del" or "snapshot_sent".
	Op string
	// Pod is the pod the request names: the uid for add, keep and del,
	// and workload_info for add.
	Pod PodInfo
}

// ZDSState is the stand-in's side of its ZDS connection, counted since
// Start.
type ZDSState struct {
	// Connected says that a connection is up (dialled and hello sent).
	Connected bool
	// Connects counts the connections made; Failures the failed dials.
	Connects, Failures int
	// Adds, Keeps, Dels and Snapshots count the requests received.
	Adds, Keeps, Dels, Snapshots int
	// Acks counts the acks sent, ErrorAcks those with an error.
	Acks, ErrorAcks int
	// LastError is the last dial, receive or ack error, or the last error
	// acked.
	LastError string
}

// zdsConn is a ZDS connection as the stand-in uses it: package zds's
// Client (see zdsclient.go), or a test's fake.
type zdsConn interface {
	// Recv returns the next request and, for an add, the pod's network
	// namespace (the caller closes it).
	Recv() (ZDSRequest, *os.File, error)
	// Ack answers the last request: "" for success.
	Ack(errMsg string) error
	Close() error
}

// zdsDialer connects to the node agent's ZDS socket and says hello.
type zdsDialer func(ctx context.Context, path string) (zdsConn, error)

// inpod is the stand-in's state in in-pod mode, under Server.mu.
type inpod struct {
	dial    zdsDialer
	pods    map[string]*pod
	failed  map[string]PodState // pods whose last add failed
	state   ZDSState
	changed chan struct{}
}

// pod is an ambient pod the stand-in serves: its listeners and the
// namespace its sockets are opened in.
type pod struct {
	info      PodInfo
	ino, dev  uint64
	addrs     []netip.Addr
	site      *site
	listeners []io.Closer
	laddrs    []netip.AddrPort

	mu   sync.Mutex
	ns   *os.File // closed once gone
	gone bool     // set under both Server.mu and mu
}

// run calls fn inside the pod's namespace, on a duplicate of its
// descriptor, so that del may close the pod's own at any time.
func (p *pod) run(fn func() error) error {
	p.mu.Lock()
	if p.gone {
		p.mu.Unlock()
		return fmt.Errorf("pod %s is gone", p.info.UID)
	}
	fd, err := unix.FcntlInt(p.ns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("dup netns of pod %s: %w", p.info.UID, err)
	}
	defer unix.Close(fd)
	if err := nsrun.Run(fd, fn); err != nil {
		return fmt.Errorf("in netns of pod %s: %w", p.info.UID, err)
	}
	return nil
}

// run calls fn where the site's sockets are opened.
func (st *site) run(fn func() error) error {
	if st.pod != nil {
		return st.pod.run(fn)
	}
	return inNetns(st.ns, fn)
}

func (ip *inpod) notify() {
	close(ip.changed)
	ip.changed = make(chan struct{})
}

// podListenOpts are the options of a pod's listeners: ztunnel's
// InPodSocketPortReuseFactory sets SO_REUSEPORT (INPOD_PORT_REUSE, on by
// default) and no SO_REUSEADDR; without port reuse it binds with Rust's
// std::net::TcpListener, which sets SO_REUSEADDR (UdpSocket does not).
func (s *Server) podListenOpts(tcp bool) sockopts {
	opts := optMark
	switch {
	case !s.opts.NoPortReuse:
		opts |= optReusePort
	case tcp:
		opts |= optReuseAddr
	}
	return opts
}

// openPod opens a pod's listeners inside its namespace, as ztunnel does in
// in-pod mode (src/config.rs, src/proxy/*.rs, src/dns/server.rs): 15001,
// 15006 and 15008 on the wildcard [::] (one dual-stack socket; 0.0.0.0
// when the namespace has no IPv6), IP_TRANSPARENT; 15053 TCP and UDP on
// 127.0.0.1 and, when lo has IPv6, ::1, not transparent. Every socket has
// SO_MARK 0x539. The UDP DNS socket also asks for each datagram's original
// destination (IP_RECVORIGDSTADDR), for its records only: it replies from
// its own loopback address, as ztunnel does (iptables REDIRECT's conntrack,
// or meshredirect's pod_loopback, gives the reply the resolver's address
// back).
func (s *Server) openPod(p *pod) error {
	var ls []io.Closer
	type acceptor struct {
		port int
		l    *net.TCPListener
	}
	var tcp []acceptor
	var udp []*net.UDPConn
	err := p.run(func() error {
		lc := &net.ListenConfig{Control: (optTransparent | optDualStack | s.podListenOpts(true)).control()}
		lc.SetMultipathTCP(false)
		for _, port := range []int{PortOutbound, PortInbound, PortHBONE} {
			l, err := lc.Listen(s.ctx, "tcp6", fmt.Sprintf("[::]:%d", port))
			if errors.Is(err, unix.EAFNOSUPPORT) {
				// ztunnel binds 0.0.0.0 with IPv6 off (IPV6_ENABLED=false).
				var err4 error
				l, err4 = lc.Listen(s.ctx, "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
				if err4 != nil {
					return fmt.Errorf("listen on tcp port %d: %w", port, errors.Join(err, err4))
				}
			} else if err != nil {
				return fmt.Errorf("listen on tcp port %d: %w", port, err)
			}
			ls = append(ls, l)
			tcp = append(tcp, acceptor{port, l.(*net.TCPListener)})
		}
		dnsAddrs := []string{"127.0.0.1"}
		if b, err := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6"); err == nil && strings.TrimSpace(string(b)) != "1" {
			dnsAddrs = append(dnsAddrs, "::1")
		}
		dlc := &net.ListenConfig{Control: s.podListenOpts(true).control()}
		dlc.SetMultipathTCP(false)
		ulc := &net.ListenConfig{Control: (optOrigDst | s.podListenOpts(false)).control()}
		for _, a := range dnsAddrs {
			addr := net.JoinHostPort(a, fmt.Sprint(PortDNS))
			l, err := dlc.Listen(s.ctx, "tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on tcp %s: %w", addr, err)
			}
			ls = append(ls, l)
			tcp = append(tcp, acceptor{PortDNS, l.(*net.TCPListener)})
			c, err := ulc.ListenPacket(s.ctx, "udp", addr)
			if err != nil {
				return fmt.Errorf("listen on udp %s: %w", addr, err)
			}
			ls = append(ls, c)
			udp = append(udp, c.(*net.UDPConn))
		}
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return fmt.Errorf("read the pod's addresses: %w", err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.IsGlobalUnicast() {
					p.addrs = append(p.addrs, ip.Unmap())
				}
			}
		}
		return nil
	})
	if err != nil {
		for _, l := range ls {
			l.Close()
		}
		return err
	}
	p.listeners = ls
	for _, a := range tcp {
		p.laddrs = append(p.laddrs, addrPort(a.l.Addr()))
	}
	for _, c := range udp {
		p.laddrs = append(p.laddrs, addrPort(c.LocalAddr()))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		for _, l := range ls {
			l.Close()
		}
		return errors.New("stand-in closing")
	}
	for _, a := range tcp {
		s.wg.Add(1)
		go s.acceptLoop(p.site, a.port, a.l)
	}
	for _, c := range udp {
		s.wg.Add(1)
		go s.dnsLoop(p.site, c)
	}
	return nil
}

// addPod serves a pod: ZDS add. A pod already served in the same namespace
// is left as it is; in another namespace (its sandbox was made anew) it is
// replaced (statemanager.rs add_workload_inner). ns is taken over.
func (s *Server) addPod(info PodInfo, ns *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		ns.Close()
		return fmt.Errorf("stat netns of pod %s: %w", info.UID, err)
	}
	s.mu.Lock()
	old := s.inpod.pods[info.UID]
	s.mu.Unlock()
	if old != nil {
		if old.ino == st.Ino && old.dev == st.Dev {
			ns.Close()
			return nil
		}
		s.delPod(info.UID)
	}
	p := &pod{info: info, ino: st.Ino, dev: st.Dev, ns: ns}
	p.site = &site{opts: optMark, pod: p}
	if err := s.openPod(p); err != nil {
		p.gone = true
		ns.Close()
		s.mu.Lock()
		s.inpod.failed[info.UID] = PodState{PodInfo: info, Err: err.Error(), Netns: st.Ino}
		s.inpod.notify()
		s.mu.Unlock()
		return fmt.Errorf("start proxy for pod %s: %w", info.UID, err)
	}
	s.mu.Lock()
	delete(s.inpod.failed, info.UID)
	s.inpod.pods[info.UID] = p
	s.inpod.notify()
	s.mu.Unlock()
	s.log.Info("pod added", "uid", info.UID, "pod", info.Namespace+"/"+info.Name, "addrs", p.addrs)
	return nil
}

// delPod stops serving a pod: its listeners and every connection it
// carries are closed at once, as ztunnel drains a deleted pod's proxy
// (DrainMode::Immediate in statemanager.rs). It reports whether the pod
// was served.
func (s *Server) delPod(uid string) bool {
	s.mu.Lock()
	p := s.inpod.pods[uid]
	delete(s.inpod.pods, uid)
	delete(s.inpod.failed, uid)
	var conns []io.Closer
	if p != nil {
		for c, owner := range s.conns {
			if owner == p {
				conns = append(conns, c)
			}
		}
		p.mu.Lock()
		p.gone = true
		p.ns.Close()
		p.mu.Unlock()
	}
	s.inpod.notify()
	s.mu.Unlock()
	if p == nil {
		return false
	}
	for _, l := range p.listeners {
		l.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	s.log.Info("pod deleted", "uid", uid)
	return true
}

// closePods stops serving every pod (Close).
func (s *Server) closePods() {
	if s.inpod == nil {
		return
	}
	s.mu.Lock()
	uids := make([]string, 0, len(s.inpod.pods))
	for uid := range s.inpod.pods {
		uids = append(uids, uid)
	}
	s.mu.Unlock()
	for _, uid := range uids {
		s.delPod(uid)
	}
}

// servedPod returns the pod that holds a, if the stand-in serves it.
func (s *Server) servedPod(a netip.Addr) *pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.inpod.pods {
		if slices.Contains(p.addrs, a) {
			return p
		}
	}
	return nil
}

// Pods returns the pods the stand-in serves in in-pod mode, and those
// whose last add failed, sorted by uid; nil in node mode.
func (s *Server) Pods() []PodState {
	pods, _ := s.podsSnapshot()
	return pods
}

func (s *Server) podsSnapshot() ([]PodState, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inpod == nil {
		return nil, nil
	}
	var pods []PodState
	for _, p := range s.inpod.pods {
		pods = append(pods, PodState{
			PodInfo: p.info, Up: true, Netns: p.ino,
			Listeners: slices.Clone(p.laddrs), Addrs: slices.Clone(p.addrs),
		})
	}
	for _, f := range s.inpod.failed {
		pods = append(pods, f)
	}
	slices.SortFunc(pods, func(a, b PodState) int { return strings.Compare(a.UID, b.UID) })
	return pods, s.inpod.changed
}

// WaitPods waits until match is true of Pods (or ctx ends) and returns
// them.
func (s *Server) WaitPods(ctx context.Context, match func([]PodState) bool) ([]PodState, error) {
	for {
		pods, changed := s.podsSnapshot()
		if changed == nil {
			return nil, errors.New("wait for pods: the stand-in is in node mode")
		}
		if match(pods) {
			return pods, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return pods, fmt.Errorf("wait for pods: %w (pods %v)", ctx.Err(), pods)
		}
	}
}

// WaitPod waits until the pod with that uid is served with its listeners
// up (or ctx ends).
func (s *Server) WaitPod(ctx context.Context, uid string) (PodState, error) {
	var found PodState
	_, err := s.WaitPods(ctx, func(pods []PodState) bool {
		for _, p := range pods {
			if p.UID == uid && p.Up {
				found = p
				return true
			}
		}
		return false
	})
	if err != nil {
		return PodState{}, fmt.Errorf("wait for pod %s: %w", uid, err)
	}
	return found, nil
}

// ZDS returns the state of the stand-in's ZDS connection; zero in node
// mode.
func (s *Server) ZDS() ZDSState {
	st, _ := s.zdsSnapshot()
	return st
}

func (s *Server) zdsSnapshot() (ZDSState, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inpod == nil {
		return ZDSState{}, nil
	}
	return s.inpod.state, s.inpod.changed
}

// WaitZDS waits until match is true of the ZDS state (or ctx ends) and
// returns it.
func (s *Server) WaitZDS(ctx context.Context, match func(ZDSState) bool) (ZDSState, error) {
	for {
		st, changed := s.zdsSnapshot()
		if changed == nil {
			return st, errors.New("wait for zds: the stand-in is in node mode")
		}
		if match(st) {
			return st, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return st, fmt.Errorf("wait for zds: %w (state %+v)", ctx.Err(), st)
		}
	}
}

// updateZDS changes the ZDS state and wakes the waiters.
func (s *Server) updateZDS(fn func(st *ZDSState)) {
	s.mu.Lock()
	fn(&s.inpod.state)
	s.inpod.notify()
	s.mu.Unlock()
}
