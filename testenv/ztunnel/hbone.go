//lint:file-ignore SA1019 the stand-in still speaks HBONE with golang.org/x/net/http2 (ServeConn on connections it accepted, NewClientConn on ones it dialled), which go1.26 deprecates for net/http's own HTTP/2; moving it over is a change of its own, tested as such.

package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// serveHBONE speaks HTTP/2 (prior knowledge, no TLS) on a connection
// accepted on 15008, a CONNECT stream per flow.
func (s *Server) serveHBONE(st *site, port int, c *net.TCPConn) {
	defer s.untrack(c)
	s.h2.ServeConn(c, &http2.ServeConnOpts{
		Context: s.ctx,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// http2 runs handlers on goroutines of its own, which
			// ServeConn does not wait for: count them, so that Close
			// does.
			if !s.enter() {
				http.Error(w, "stand-in closing", http.StatusServiceUnavailable)
				return
			}
			defer s.wg.Done()
			s.connect(st, port, c, w, r)
		}),
	})
}

// connect serves one CONNECT stream: it connects to the :authority and
// copies bytes both ways until the target closes its side (or either side
// fails).
func (s *Server) connect(st *site, port int, outer *net.TCPConn, w http.ResponseWriter, r *http.Request) {
	src, dst := addrPort(outer.RemoteAddr()), addrPort(outer.LocalAddr())
	id := s.rec.begin(Record{Listener: port, Proto: "hbone", Source: src, OrigDst: dst, Pod: st.podInfo()})
	fail := func(code int, err error) {
		s.log.Warn("hbone", "src", src, "authority", r.Host, "err", err)
		http.Error(w, err.Error(), code)
		s.rec.end(id, 0, 0, err)
	}
	if r.Method != http.MethodConnect {
		fail(http.StatusMethodNotAllowed, fmt.Errorf("hbone: method %s, want CONNECT", r.Method))
		return
	}
	target, err := netip.ParseAddrPort(r.Host)
	if err != nil {
		fail(http.StatusBadRequest, fmt.Errorf("hbone: authority %q is not ip:port: %w", r.Host, err))
		return
	}
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	s.rec.update(id, func(r *Record) { r.Target = target })
	from := src.Addr()
	if s.opts.HBONEOwnSource {
		from = netip.Addr{}
	}
	up, err := s.dialFrom(r.Context(), st, from, target)
	if err != nil {
		fail(http.StatusBadGateway, fmt.Errorf("hbone: connect to %s: %w", target, err))
		return
	}
	if !s.track(st, up) {
		fail(http.StatusServiceUnavailable, errors.New("stand-in closing"))
		return
	}
	defer s.untrack(up)
	s.rec.update(id, func(r *Record) { r.Upstream = addrPort(up.LocalAddr()) })
	w.WriteHeader(http.StatusOK)
	flusher := w.(http.Flusher)
	flusher.Flush()

	// Client to target, until the client ends its stream (a half close,
	// passed on) or the stream is closed below.
	var (
		c2s     int64
		errC2S  error
		closing atomic.Bool
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, err := io.Copy(up, r.Body)
		c2s = n
		if err != nil {
			if !closing.Load() {
				errC2S = err
				up.Close() // the flow is broken: end the other direction
			}
			return
		}
		up.CloseWrite()
	}()

	// Target to client. When the target closes its side the stream ends:
	// an HTTP/2 handler cannot end its response and go on reading the
	// request, so the client's direction ends with it.
	var s2c int64
	var err2 error
	buf := make([]byte, 32<<10)
	for {
		n, rerr := up.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				err2 = werr
				break
			}
			flusher.Flush()
			s2c += int64(n)
		}
		if rerr != nil {
			if rerr != io.EOF {
				err2 = rerr
			}
			break
		}
	}
	closing.Store(true)
	r.Body.Close() // unblocks the copy above if the client still sends
	up.Close()
	<-done
	if errC2S != nil && (err2 == nil || errors.Is(err2, net.ErrClosed)) {
		err2 = errC2S
	}
	s.rec.end(id, c2s, s2c, err2)
}

// DialHBONE connects to an HBONE listener at proxyAddr ("ip:port") and opens
// a CONNECT stream to target ("ip:port"), returning it as a net.Conn. The
// TCP connection is opened in the calling thread's network namespace: call
// it inside testenv's pod.Do to dial from a pod. ctx bounds the dial and the
// CONNECT exchange, not the stream.
func DialHBONE(ctx context.Context, proxyAddr, target string) (net.Conn, error) {
	d := &net.Dialer{}
	d.SetMultipathTCP(false)
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, fmt.Errorf("dial hbone proxy %s: %w", proxyAddr, err)
	}
	hc, err := HBONE(ctx, c, target)
	if err != nil {
		c.Close()
		return nil, err
	}
	return hc, nil
}

// HBONE opens a CONNECT stream to target over c, an established connection
// to an HBONE listener, and returns the stream as a net.Conn; closing it
// closes c. ctx bounds the CONNECT exchange, not the stream.
func HBONE(ctx context.Context, c net.Conn, target string) (net.Conn, error) {
	taddr, err := netip.ParseAddrPort(target)
	if err != nil {
		return nil, fmt.Errorf("hbone target %q: %w", target, err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		return nil, fmt.Errorf("hbone handshake with %s: %w", c.RemoteAddr(), err)
	}
	streamCtx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(streamCtx, http.MethodConnect, "http://"+taddr.String(), pr)
	if err != nil {
		cancel()
		cc.Close()
		return nil, fmt.Errorf("hbone connect %s: %w", target, err)
	}
	stop := context.AfterFunc(ctx, cancel)
	resp, err := cc.RoundTrip(req)
	stop()
	if err == nil && resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		err = fmt.Errorf("status %s: %s", resp.Status, msg)
	}
	if err != nil {
		cancel()
		pw.Close()
		cc.Close()
		return nil, fmt.Errorf("hbone connect %s via %s: %w", target, c.RemoteAddr(), err)
	}
	return &hboneConn{
		conn:   c,
		cc:     cc,
		body:   resp.Body,
		pw:     pw,
		cancel: cancel,
		target: net.TCPAddrFromAddrPort(taddr),
	}, nil
}

// hboneConn is a CONNECT stream as a net.Conn.
type hboneConn struct {
	conn   net.Conn
	cc     *http2.ClientConn
	body   io.ReadCloser
	pw     *io.PipeWriter
	cancel context.CancelFunc
	target net.Addr

	closeOnce sync.Once
	mu        sync.Mutex
	timer     *time.Timer
	expired   atomic.Bool
}

func (h *hboneConn) Read(b []byte) (int, error) {
	n, err := h.body.Read(b)
	if err != nil && h.expired.Load() {
		err = os.ErrDeadlineExceeded
	}
	return n, err
}

func (h *hboneConn) Write(b []byte) (int, error) {
	n, err := h.pw.Write(b)
	if err != nil && h.expired.Load() {
		err = os.ErrDeadlineExceeded
	}
	return n, err
}

// CloseWrite ends the client's side of the stream (END_STREAM): the target
// sees EOF and can still answer.
func (h *hboneConn) CloseWrite() error { return h.pw.Close() }

// Close ends the stream and closes the connection under it.
func (h *hboneConn) Close() error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		if h.timer != nil {
			h.timer.Stop()
		}
		h.mu.Unlock()
		h.pw.Close()
		h.body.Close()
		h.cancel()
		h.cc.Close()
		h.conn.Close()
	})
	return nil
}

// LocalAddr is the local address of the connection to the proxy.
func (h *hboneConn) LocalAddr() net.Addr { return h.conn.LocalAddr() }

// RemoteAddr is the CONNECT target.
func (h *hboneConn) RemoteAddr() net.Addr { return h.target }

// SetDeadline arms a deadline for the whole stream: when it passes, the
// stream is cancelled and pending and later reads and writes fail with
// os.ErrDeadlineExceeded. Unlike a TCP connection's, it cannot be undone
// once it has passed: it is a timeout for tests, not flow control.
func (h *hboneConn) SetDeadline(t time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	if t.IsZero() {
		return nil
	}
	h.timer = time.AfterFunc(time.Until(t), func() {
		h.expired.Store(true)
		h.cancel()
		h.pw.CloseWithError(os.ErrDeadlineExceeded)
	})
	return nil
}

// SetReadDeadline is SetDeadline.
func (h *hboneConn) SetReadDeadline(t time.Time) error { return h.SetDeadline(t) }

// SetWriteDeadline is SetDeadline.
func (h *hboneConn) SetWriteDeadline(t time.Time) error { return h.SetDeadline(t) }
