//lint:file-ignore SA1019 see hbone.go: the stand-in still serves HBONE with golang.org/x/net/http2.

package ztunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/http2"
)

// ztunnel's listener ports, as Istio's ztunnel opens them (the same values
// as package asm's, kept apart so that the stand-in depends on nothing of
// the dataplane).
const (
	PortOutbound = 15001
	PortInbound  = 15006
	PortHBONE    = 15008
	PortDNS      = 15053
)

// Options configures Start.
type Options struct {
	// Netns is ztunnel's network namespace: the listeners and every
	// outbound socket are opened on a thread inside it. Zero (or any
	// value <= 0, such as netns.None()) means the calling thread's
	// namespace: the choice of the binary, which runs inside ztunnel's
	// namespace already. The handle must stay open until Close.
	Netns netns.NsHandle

	// DNS maps names ("svc.example.", case and final dot ignored) to the
	// addresses the DNS listener answers with: the IPv4 ones for A
	// queries, the IPv6 ones for AAAA.
	DNS map[string][]netip.Addr
	// DNSAnswer answers every name DNS does not hold. Without it, such
	// names get NXDOMAIN.
	DNSAnswer []netip.Addr

	// HBONEOwnSource makes the stand-in connect to a CONNECT target from
	// its own address instead of the HBONE connection's source address.
	HBONEOwnSource bool

	// DialTimeout bounds each outbound connect; 5 seconds if zero.
	DialTimeout time.Duration

	// AdminAddr, if set, is an address ("127.0.0.1:15000") in ztunnel's
	// namespace where the stand-in serves GET /records (the records as a
	// JSON array, as WriteJSON writes them), GET /zds (ZDS and Pods, in
	// in-pod mode) and GET /healthz.
	AdminAddr string

	// Logger receives a line per flow and per error; nothing if nil.
	Logger *slog.Logger

	// ZDS, if set, is the path of the node agent's ZDS socket
	// (/var/run/ztunnel/ztunnel.sock in Istio): the stand-in runs in
	// in-pod mode. It opens no listeners in Netns (but the admin one);
	// it dials ZDS (redialling until Close) and opens each added pod's
	// listeners inside the pod's namespace. See the package doc.
	ZDS string
	// NoPortReuse opens pods' listeners without SO_REUSEPORT, as ztunnel
	// with INPOD_PORT_REUSE=false does (with SO_REUSEADDR on the TCP
	// ones instead). Linux before 6.5 refuses bpf_sk_assign to a
	// listener with SO_REUSEPORT.
	NoPortReuse bool
	// AckError, if set, is asked before the stand-in acts on each ZDS
	// request: a non-empty answer is sent as the ack's error instead,
	// and the request is not acted on (a refused add opens nothing).
	AckError func(ZDSRequest) string
}

// Server is a running stand-in.
type Server struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	h2     *http2.Server
	rec    *recorder
	dns    map[string][]netip.Addr

	node *site // node mode: ztunnel's namespace

	mu        sync.Mutex
	closed    bool
	listeners []io.Closer
	conns     map[io.Closer]*pod // accepted and outbound connections, and the pod they serve (nil in node mode)
	wg        sync.WaitGroup

	inpod *inpod // nil in node mode
}

// site is where a flow's sockets are opened: ztunnel's namespace in node
// mode, a pod's in in-pod mode.
type site struct {
	ns   netns.NsHandle // <= 0: the calling thread's
	opts sockopts       // added to every socket opened there (optMark in a pod)
	pod  *pod           // nil in node mode
}

// podInfo names the pod a flow of this site serves, for its Record.
func (st *site) podInfo() PodInfo {
	if st.pod == nil {
		return PodInfo{}
	}
	return st.pod.info
}

// Start opens the listeners (15001, 15006, 15008 TCP and 15053 UDP and TCP,
// each on 0.0.0.0 and ::) and serves them until Close. With Options.ZDS it
// starts in in-pod mode instead: it dials ZDS and returns at once.
func Start(opts Options) (*Server, error) {
	return startWith(opts, dialZDS)
}

// startWith is Start with the ZDS client to use in in-pod mode.
func startWith(opts Options, dial zdsDialer) (*Server, error) {
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	s := &Server{
		opts:  opts,
		log:   opts.Logger,
		h2:    &http2.Server{},
		rec:   newRecorder(),
		dns:   map[string][]netip.Addr{},
		conns: map[io.Closer]*pod{},
		node:  &site{ns: opts.Netns},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for name, addrs := range opts.DNS {
		s.dns[canonicalName(name)] = addrs
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	lc := &net.ListenConfig{Control: (optTransparent | optReuseAddr).control()}
	lc.SetMultipathTCP(false)
	ulc := &net.ListenConfig{Control: (optTransparent | optReuseAddr | optOrigDst).control()}
	if opts.ZDS != "" {
		s.inpod = &inpod{
			dial:    dial,
			pods:    map[string]*pod{},
			failed:  map[string]PodState{},
			changed: make(chan struct{}),
		}
	}
	err := inNetns(opts.Netns, func() error {
		for _, fam := range []string{"4", "6"} {
			if opts.ZDS != "" {
				break // in-pod: the pods' namespaces get the listeners
			}
			for _, port := range []int{PortOutbound, PortInbound, PortHBONE, PortDNS} {
				l, err := lc.Listen(s.ctx, "tcp"+fam, fmt.Sprintf(":%d", port))
				if err != nil {
					return fmt.Errorf("listen on tcp%s port %d: %w", fam, port, err)
				}
				s.listeners = append(s.listeners, l)
				s.wg.Add(1)
				go s.acceptLoop(s.node, port, l.(*net.TCPListener))
			}
			c, err := ulc.ListenPacket(s.ctx, "udp"+fam, fmt.Sprintf(":%d", PortDNS))
			if err != nil {
				return fmt.Errorf("listen on udp%s port %d: %w", fam, PortDNS, err)
			}
			s.listeners = append(s.listeners, c)
			s.wg.Add(1)
			go s.dnsLoop(s.node, c.(*net.UDPConn))
		}
		if opts.AdminAddr != "" {
			// lc's sockets are IPv6-only (the stand-in opens its listeners once per
			// family), so an IPv4 address needs an IPv4 socket.
			network := "tcp"
			if ap, err := netip.ParseAddrPort(opts.AdminAddr); err == nil && ap.Addr().Is4() {
				network = "tcp4"
			}
			l, err := lc.Listen(s.ctx, network, opts.AdminAddr)
			if err != nil {
				return fmt.Errorf("listen for admin on %s: %w", opts.AdminAddr, err)
			}
			s.serveAdmin(l)
		}
		return nil
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("start ztunnel stand-in: %w", err)
	}
	if opts.ZDS != "" {
		s.wg.Add(1)
		go s.runZDS(opts.ZDS)
	}
	return s, nil
}

// serveAdmin serves /records and /healthz on l until Close.
func (s *Server) serveAdmin(l net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /records", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		s.WriteJSON(w)
	})
	mux.HandleFunc("GET /zds", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			ZDS  ZDSState   `json:"zds"`
			Pods []PodState `json:"pods"`
		}{s.ZDS(), s.Pods()})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.listeners = append(s.listeners, srv)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		srv.Serve(l)
	}()
}

// Close stops the listeners, closes every connection the stand-in carries
// and waits for all its goroutines to end.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	var errs []error
	for _, l := range s.listeners {
		if err := l.Close(); !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.closePods()
	s.wg.Wait()
	return errors.Join(errs...)
}

// Drain stops the stand-in as ztunnel stops on SIGTERM: it stops accepting
// (closes its listeners, in in-pod mode those in every pod), lets the
// flows in progress finish, for at most timeout, and closes. A client that
// connects meanwhile has its SYN dropped (no listener) and sent again by
// its kernel, to whatever listens by then.
func (s *Server) Drain(timeout time.Duration) error {
	s.mu.Lock()
	closers := slices.Clone(s.listeners)
	if s.inpod != nil {
		for _, p := range s.inpod.pods {
			closers = append(closers, p.listeners...)
		}
	}
	s.mu.Unlock()
	for _, l := range closers {
		l.Close()
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			break
		}
	}
	return s.Close()
}

// track registers a connection for Close to close; false (with c closed)
// once the server is closing. untrack forgets and closes it.
func (s *Server) track(st *site, c io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || (st.pod != nil && st.pod.gone) {
		c.Close()
		return false
	}
	s.conns[c] = st.pod
	return true
}

func (s *Server) untrack(c io.Closer) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// enter counts the calling goroutine in the WaitGroup (it must call
// s.wg.Done when it ends), unless the server is closing. The check and the
// Add are under the mutex Close sets closed under, so no Add can follow
// Close's Wait.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// goTracked runs fn on a goroutine counted by the WaitGroup, unless the
// server is closing.
func (s *Server) goTracked(fn func()) bool {
	if !s.enter() {
		return false
	}
	go func() {
		defer s.wg.Done()
		fn()
	}()
	return true
}

func (s *Server) acceptLoop(st *site, port int, l *net.TCPListener) {
	defer s.wg.Done()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("accept", "port", port, "err", err)
			}
			return
		}
		if !s.track(st, c) {
			if st.pod != nil {
				continue // the pod is going: its listener closes next
			}
			return
		}
		handle := s.proxy
		switch port {
		case PortHBONE:
			handle = s.serveHBONE
		case PortDNS:
			handle = s.serveDNSTCP
		}
		if !s.goTracked(func() { handle(st, port, c) }) {
			s.untrack(c)
			return
		}
	}
}

// proxy carries a connection accepted on 15001 or 15006 to its original
// destination, from the client's address.
func (s *Server) proxy(st *site, port int, c *net.TCPConn) {
	defer s.untrack(c)
	src, dst := addrPort(c.RemoteAddr()), origDstTCP(c)
	id := s.rec.begin(Record{Listener: port, Proto: "tcp", Source: src, OrigDst: dst, Target: dst, Pod: st.podInfo()})
	if s.isSelf(st, dst) {
		s.reject(id, c, fmt.Errorf("original destination %s is the stand-in's own listener: not forwarding (it would loop)", dst))
		return
	}
	if st.pod != nil && port == PortOutbound {
		s.outboundInPod(st, id, c, dst)
		return
	}
	up, err := s.dialFrom(s.ctx, st, src.Addr(), dst)
	if err != nil {
		s.reject(id, c, fmt.Errorf("connect to %s from %s: %w", dst, src.Addr(), err))
		return
	}
	if !s.track(st, up) {
		s.rec.end(id, 0, 0, errors.New("stand-in closing"))
		return
	}
	defer s.untrack(up)
	s.rec.update(id, func(r *Record) { r.Upstream = addrPort(up.LocalAddr()) })
	s.log.Debug("proxy", "port", port, "src", src, "dst", dst)
	c2s, s2c, err := splice(c, up)
	s.rec.end(id, c2s, s2c, err)
}

// reject ends a flow that could not be forwarded: the client gets a reset,
// as ztunnel's clients do.
func (s *Server) reject(id int, c *net.TCPConn, err error) {
	s.log.Warn("reject", "err", err)
	c.SetLinger(0)
	s.rec.end(id, 0, 0, err)
}

// splice copies a to b and b to a until both have ended (each side's EOF is
// passed on as a half close), and returns the byte counts and the first
// error. Copies between two *net.TCPConn use splice(2).
func splice(a, b duplex) (ab, ba int64, err error) {
	var wg sync.WaitGroup
	var errAB, errBA error
	wg.Add(1)
	go func() {
		defer wg.Done()
		ab, errAB = io.Copy(b, a)
		if errAB != nil {
			// Unblock the other direction: this flow is broken.
			a.Close()
			b.Close()
			return
		}
		b.CloseWrite()
	}()
	ba, errBA = io.Copy(a, b)
	if errBA != nil {
		a.Close()
		b.Close()
	} else {
		a.CloseWrite()
	}
	wg.Wait()
	// The direction that failed first closed both sockets; the other
	// direction's error is then only "use of closed connection".
	switch {
	case errAB != nil && !errors.Is(errAB, net.ErrClosed):
		err = errAB
	case errBA != nil && !errors.Is(errBA, net.ErrClosed):
		err = errBA
	default:
		err = errors.Join(errAB, errBA)
	}
	return ab, ba, err
}

// duplex is a connection whose write side closes on its own: a
// *net.TCPConn (io.Copy between two of them uses splice(2)) or an HBONE
// stream.
type duplex interface {
	net.Conn
	CloseWrite() error
}

// isSelf reports whether dst is one of the stand-in's listeners at an
// address of its namespace: a client that dialled ztunnel itself.
func (s *Server) isSelf(st *site, dst netip.AddrPort) bool {
	switch dst.Port() {
	case PortOutbound, PortInbound, PortHBONE, PortDNS:
	default:
		return false
	}
	if dst.Addr().IsLoopback() || dst.Addr().IsUnspecified() {
		return true
	}
	var self bool
	st.run(func() error {
		addrs, err := net.InterfaceAddrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == dst.Addr() {
					self = true
				}
			}
		}
		return err
	})
	return self
}

func canonicalName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, ".")) + "."
}
