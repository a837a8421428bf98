package zds

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultPath is where ztunnel looks for the agent's socket unless its
// INPOD_UDS setting says otherwise (istio/ztunnel src/config.rs).
const DefaultPath = "/var/run/ztunnel/ztunnel.sock"

// DefaultAckTimeout bounds every read and write on a connection, as istio-cni
// bounds them (readWriteDeadline in istio/istio
// cni/pkg/nodeagent/ztunnelserver_linux.go).
const DefaultAckTimeout = 5 * time.Second

var (
	// ErrNoZtunnel is returned by Add and Del when no ztunnel is connected.
	// The workload stays in (or leaves) the server's set all the same: the
	// next ztunnel to connect receives it in its snapshot.
	ErrNoZtunnel = errors.New("no ztunnel connected")
	// ErrDisconnected is wrapped by the error of a request whose connection
	// ended before its ack (ztunnel left, timed out or was replaced).
	ErrDisconnected = errors.New("ztunnel connection ended")
	// ErrServerClosed is returned by calls on a closed Server.
	ErrServerClosed = errors.New("zds server closed")
	// errDeleted ends an Add that a Del overtook before it was sent.
	errDeleted = errors.New("workload deleted before it was sent")
)

// AckError is ztunnel refusing a request: it acked with an error message.
type AckError struct {
	Kind     string // "add", "keep" or "del"
	Workload string // the pod as namespace/name, or its uid when unknown
	UID      string
	Message  string // what ztunnel said
}

func (e *AckError) Error() string {
	return fmt.Sprintf("ztunnel refused %s for pod %s (uid %s): %s", e.Kind, e.Workload, e.UID, e.Message)
}

// Workload is an ambient pod as the agent hands it to ztunnel.
type Workload struct {
	UID  string
	Info WorkloadInfo
	// Netns is the path of the pod's network namespace (/proc/<pid>/ns/net,
	// /var/run/netns/<name>). It is opened each time the workload is sent
	// and closed once sent, so the server holds no descriptor between sends.
	Netns string
}

// String names the pod as namespace/name, or by uid when unnamed.
func (w Workload) String() string {
	if w.Info.Name == "" {
		return w.UID
	}
	return w.Info.Namespace + "/" + w.Info.Name
}

// Backoff is how long the server waits before sending again a workload that
// ztunnel refused (or whose netns could not be opened): Initial after the
// first failure, doubling up to Max. The retries last as long as the
// connection; a new connection starts again from its snapshot.
type Backoff struct {
	Initial time.Duration // 0 means 1s
	Max     time.Duration // 0 means 30s
}

func (b Backoff) after(failures int) time.Duration {
	d, limit := b.Initial, b.Max
	if d <= 0 {
		d = time.Second
	}
	if limit <= 0 {
		limit = 30 * time.Second
	}
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// ServerOptions configure Listen.
type ServerOptions struct {
	// Path of the socket; DefaultPath when empty. Its directory is created.
	Path string
	// AckTimeout bounds the hello, every write and every wait for an ack;
	// DefaultAckTimeout when 0. A connection that misses it is dropped.
	AckTimeout time.Duration
	// Logger receives what happens on connections; nothing is logged when nil.
	Logger *slog.Logger
	// RetryBackoff paces the resending of refused workloads.
	RetryBackoff Backoff
}

// Stats counts what a Server did since Listen.
type Stats struct {
	Connections    uint64 // connections accepted
	Connected      bool   // a ztunnel is connected (its hello was V1)
	HellosRejected uint64 // connections closed for a missing or bad hello
	Adds           uint64 // add requests sent
	Keeps          uint64 // keep requests sent
	Dels           uint64 // del requests sent
	Acks           uint64 // acks received, with or without an error
	AckErrors      uint64 // acks that carried an error
	AckTimeouts    uint64 // connections dropped for an ack that did not come
	Disconnects    uint64 // current connections that ended, leaving no ztunnel connected
	SnapshotsSent  uint64 // snapshot_sent requests acked
	Workloads      int    // workloads in the set
}

// Server is the agent's side of ZDS: it keeps the set of workloads and
// keeps the connected ztunnel in step with it. Its methods are safe for
// concurrent use.
type Server struct {
	path    string
	timeout time.Duration
	log     *slog.Logger
	backoff Backoff
	ln      *net.UnixListener

	closeOnce sync.Once
	wg        sync.WaitGroup // Serve and connection goroutines

	mu      sync.Mutex
	closed  bool
	set     map[string]*entry
	ver     uint64         // last version given to an Add
	cur     *conn          // the connection past its hello, or nil
	conns   map[*conn]bool // every open connection, to close them on Close
	changed chan struct{}  // closed and replaced when cur or its readiness changes
	stats   Stats
}

// entry is a workload in the set, with what the current connection made of
// it (reset when a new ztunnel connects).
type entry struct {
	w        Workload
	ver      uint64 // bumped by every Add of the uid
	sentVer  uint64 // version the current ztunnel acked (add or keep); 0 if none
	err      error  // last failure on the current connection
	failures int    // consecutive failures, for the backoff
}

// Listen creates the socket directory, removes a socket left by an earlier
// agent, and listens for ztunnel on a SOCK_SEQPACKET socket. Call Serve to
// accept and Close to stop.
func Listen(opts ServerOptions) (*Server, error) {
	path := opts.Path
	if path == "" {
		path = DefaultPath
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create ZDS socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listen for ztunnel on %s: the path exists and is not a socket (refusing to remove it)", path)
		}
		// A socket left by an agent that did not exit cleanly: nobody
		// listens on it any more, or its listener is being replaced by us.
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale ZDS socket %s: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listen for ztunnel on %s: %w", path, err)
	}
	// Close removes the file itself, after the connections are gone.
	ln.SetUnlinkOnClose(false)
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	timeout := opts.AckTimeout
	if timeout <= 0 {
		timeout = DefaultAckTimeout
	}
	return &Server{
		path:    path,
		timeout: timeout,
		log:     logger.With("socket", path),
		backoff: opts.RetryBackoff,
		ln:      ln,
		set:     map[string]*entry{},
		conns:   map[*conn]bool{},
		changed: make(chan struct{}),
	}, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Serve accepts ztunnel connections until ctx is done or Close is called;
// ctx ending closes the server as Close does. One ztunnel is served at a
// time: a connection whose hello is V1 replaces the previous one (ztunnel
// restarted) and is sent a snapshot of the whole set. Serve returns nil once
// the server is closed and its connections have ended.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	stop := context.AfterFunc(ctx, func() { s.shutdown() })
	defer stop()
	var pause time.Duration
	for {
		uc, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE and the like: wait rather than spin.
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.log.Error("accept ztunnel connection", "error", err, "retry_in", pause)
			time.Sleep(pause)
			continue
		}
		pause = 0
		c := newConn(uc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			uc.Close()
			return nil
		}
		s.conns[c] = true
		s.stats.Connections++
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

// Close stops accepting, closes the connection, waits for the server's
// goroutines and removes the socket file. It is safe to call more than once.
func (s *Server) Close() error {
	s.shutdown()
	s.wg.Wait()
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove ZDS socket %s: %w", s.path, err)
	}
	return nil
}

func (s *Server) shutdown() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		s.ln.Close()
		for _, c := range conns {
			c.fail(fmt.Errorf("%w: %w", ErrDisconnected, ErrServerClosed))
		}
	})
}

// Add records w in the set (replacing a workload of the same uid) and, when a
// ztunnel is connected, sends it and returns once ztunnel acked it. An Add
// during a snapshot waits until the snapshot is sent. With no ztunnel
// connected it returns ErrNoZtunnel at once; a refusal is an *AckError. In
// every case w stays in the set: a refused workload is sent again with
// backoff, and the next connection's snapshot carries it.
func (s *Server) Add(ctx context.Context, w Workload) error {
	if err := w.check(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	e := s.set[w.UID]
	if e == nil {
		e = &entry{}
		s.set[w.UID] = e
	}
	s.ver++
	e.w, e.ver = w, s.ver
	c := s.cur
	if c == nil {
		s.mu.Unlock()
		return fmt.Errorf("send add for pod %s (uid %s): %w", w, w.UID, ErrNoZtunnel)
	}
	wt := c.await(w.UID, e.ver, false)
	s.mu.Unlock()
	if err := s.wait(ctx, c, wt); err != nil {
		return fmt.Errorf("send add for pod %s (uid %s) to ztunnel: %w", w, w.UID, err)
	}
	return nil
}

// Del removes the workload from the set and, when a ztunnel is connected that
// was sent it, sends del and returns once ztunnel acked it. Without a
// ztunnel it returns nil: the next snapshot leaves the workload out, which
// makes ztunnel drop it.
func (s *Server) Del(ctx context.Context, uid string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	name := uid
	if e := s.set[uid]; e != nil {
		name = e.w.String()
		delete(s.set, uid)
	}
	c := s.cur
	if c == nil {
		s.mu.Unlock()
		return nil
	}
	c.settle(uid, ^uint64(0), false, errDeleted) // Adds still waiting are moot
	wt := c.await(uid, 0, true)
	s.mu.Unlock()
	if err := s.wait(ctx, c, wt); err != nil {
		return fmt.Errorf("send del for pod %s (uid %s) to ztunnel: %w", name, uid, err)
	}
	return nil
}

// wait waits for a waiter registered on c to be settled.
func (s *Server) wait(ctx context.Context, c *conn, wt *waiter) error {
	select {
	case err := <-wt.done:
		return err
	case <-c.done:
		select {
		case err := <-wt.done: // settled just before the end
			return err
		default:
			return c.err
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Connected reports whether a ztunnel is connected (its hello was V1); its
// snapshot may still be under way.
func (s *Server) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur != nil
}

// WaitConnected waits until a ztunnel is connected and has acked its
// snapshot.
func (s *Server) WaitConnected(ctx context.Context) error {
	for {
		s.mu.Lock()
		ready, changed, closed := s.cur != nil && s.cur.ready, s.changed, s.closed
		s.mu.Unlock()
		switch {
		case ready:
			return nil
		case closed:
			return ErrServerClosed
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("wait for ztunnel on %s: %w", s.path, ctx.Err())
		}
	}
}

// Acked reports whether the connected ztunnel acked the workload at its
// latest Add (an add, or a keep in the snapshot), and the last failure to
// send it on this connection (an *AckError, or the netns failing to open).
// It is false for an unknown uid and when no ztunnel is connected.
func (s *Server) Acked(uid string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.set[uid]
	if e == nil {
		return false, nil
	}
	return s.cur != nil && e.sentVer == e.ver, e.err
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Connected = s.cur != nil
	st.Workloads = len(s.set)
	return st
}

// notifyLocked wakes WaitConnected callers.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// conn is one ztunnel connection. Two goroutines serve it: handle, the only
// one that writes (so requests and acks pair up, one in flight), and read,
// the only one that reads after the hello (so a ztunnel that leaves while
// nothing is in flight is noticed at once).
type conn struct {
	uc    *net.UnixConn
	resps chan Response // from read to handle
	gone  chan struct{} // closed when read ends
	done  chan struct{} // closed when handle ends; err is set by then

	failOnce sync.Once
	err      error // why the connection ended (wraps ErrDisconnected)

	// Guarded by Server.mu.
	ready   bool                 // snapshot acked
	sent    map[string]string    // uids ztunnel may hold (acked add or keep, or a refused add) → pod name
	dels    map[string]int       // refused dels of a uid, for the backoff
	dirty   map[string]bool      // uids to bring in step after the snapshot
	retry   map[string]time.Time // refused uids, and when to try again
	waiters map[string][]*waiter
	kick    chan struct{}
}

// waiter is an Add or Del call waiting for its request to be acked.
type waiter struct {
	ver  uint64 // an Add: settled by the ack of this version or a later one
	del  bool
	done chan error
}

func newConn(uc *net.UnixConn) *conn {
	return &conn{
		uc:      uc,
		resps:   make(chan Response, 1),
		gone:    make(chan struct{}),
		done:    make(chan struct{}),
		sent:    map[string]string{},
		dels:    map[string]int{},
		dirty:   map[string]bool{},
		retry:   map[string]time.Time{},
		waiters: map[string][]*waiter{},
		kick:    make(chan struct{}, 1),
	}
}

// fail ends the connection for err; the first reason sticks.
func (c *conn) fail(err error) {
	c.failOnce.Do(func() {
		c.err = err
		c.uc.Close()
	})
}

// await registers a waiter for uid and wakes handle (Server.mu held).
func (c *conn) await(uid string, ver uint64, del bool) *waiter {
	wt := &waiter{ver: ver, del: del, done: make(chan error, 1)}
	c.waiters[uid] = append(c.waiters[uid], wt)
	c.dirty[uid] = true
	c.wake()
	return wt
}

func (c *conn) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// settle answers the waiters of uid: the Adds of version ver or older (or
// the Dels, when del) get err (Server.mu held).
func (c *conn) settle(uid string, ver uint64, del bool, err error) {
	ws := c.waiters[uid]
	keep := ws[:0]
	for _, wt := range ws {
		if wt.del == del && (del || wt.ver <= ver) {
			wt.done <- err
			continue
		}
		keep = append(keep, wt)
	}
	if len(keep) == 0 {
		delete(c.waiters, uid)
	} else {
		c.waiters[uid] = keep
	}
}

// check refuses a workload ztunnel could never accept, before it enters the
// set.
func (w Workload) check() error {
	if w.UID == "" {
		return fmt.Errorf("add pod %s: empty uid", w)
	}
	b, err := Request{Add: &AddWorkload{UID: w.UID, WorkloadInfo: &w.Info}}.Marshal()
	if err != nil {
		return fmt.Errorf("add pod %s (uid %s): %w", w, w.UID, err)
	}
	if len(b) > MaxMessageSize {
		return fmt.Errorf("add pod %s (uid %s): the request is %d bytes, more than ztunnel's %d-byte packets", w, w.UID, len(b), MaxMessageSize)
	}
	return nil
}

// handle serves one connection from its hello to its end.
func (s *Server) handle(c *conn) {
	defer s.wg.Done()
	log := s.log.With("conn", fmt.Sprintf("%p", c))
	err := s.converse(c, log)
	if !errors.Is(err, ErrDisconnected) {
		err = fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	c.fail(err)
	s.mu.Lock()
	delete(s.conns, c)
	if s.cur == c {
		// Not when a newer connection replaced c: a ztunnel is still
		// connected then (its restart's hello closes the old one).
		s.cur = nil
		s.stats.Disconnects++
		s.notifyLocked()
	}
	s.mu.Unlock()
	close(c.done)
	log.Info("ztunnel connection ended", "reason", c.err.Error())
}

// converse is the protocol: hello, snapshot, then one request at a time as
// the set changes. It returns why the connection must end.
func (s *Server) converse(c *conn, log *slog.Logger) error {
	uids, err := s.hello(c, log)
	if err != nil {
		return err
	}
	if err := s.snapshot(c, uids, log); err != nil {
		return err
	}
	for {
		if err := s.step(c, log); err != nil {
			return err
		}
	}
}

// hello reads ztunnel's hello and, when it is V1, makes c the current
// connection (closing the previous one) and starts its reader. It returns
// the uids the snapshot is to carry.
func (s *Server) hello(c *conn, log *slog.Logger) ([]string, error) {
	buf := make([]byte, MaxMessageSize)
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	c.uc.SetReadDeadline(time.Now().Add(s.timeout))
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(buf, oob)
	closeRights(oob[:oobn])
	c.uc.SetReadDeadline(time.Time{})
	var h Hello
	switch {
	case err != nil:
		err = fmt.Errorf("read hello: %w", err)
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
		err = fmt.Errorf("hello longer than %d bytes", MaxMessageSize)
	default:
		if err = h.Unmarshal(buf[:n]); err == nil && h.Version != V1 {
			err = fmt.Errorf("hello with version %d, want %d (V1)", h.Version, V1)
		}
	}
	if err != nil {
		s.mu.Lock()
		s.stats.HellosRejected++
		s.mu.Unlock()
		log.Error("refuse ztunnel connection", "error", err)
		return nil, err
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrServerClosed
	}
	old := s.cur
	s.cur = c
	uids := make([]string, 0, len(s.set))
	for uid, e := range s.set {
		e.sentVer, e.err, e.failures = 0, nil, 0
		uids = append(uids, uid)
	}
	s.notifyLocked()
	s.wg.Add(1) // handle is counted, so this cannot race Close's Wait
	s.mu.Unlock()
	sort.Strings(uids)
	if old != nil {
		old.fail(fmt.Errorf("%w: replaced by a new ztunnel connection", ErrDisconnected))
		log.Info("new ztunnel connection replaces the previous one")
	}
	log.Info("ztunnel connected", "version", int32(h.Version), "workloads", len(uids))
	go s.read(c)
	return uids, nil
}

// snapshot sends every workload of uids still in the set (add, or keep when
// its netns cannot be opened), then snapshot_sent. A refused add is logged,
// counted and retried after the snapshot, with backoff.
func (s *Server) snapshot(c *conn, uids []string, log *slog.Logger) error {
	for _, uid := range uids {
		s.mu.Lock()
		e := s.set[uid]
		var w Workload
		var ver uint64
		if e != nil {
			w, ver = e.w, e.ver
		}
		s.mu.Unlock()
		if e == nil {
			continue // deleted since the connection began
		}
		f, err := os.Open(w.Netns)
		if err != nil {
			// The pod may be gone or its netns not reachable from here;
			// ztunnel keeps what it has, and a later Add sends it in full.
			log.Warn("cannot open netns for the snapshot; sending keep", "pod", w.String(), "uid", uid, "netns", w.Netns, "error", err)
			ack, err := s.roundTrip(c, Request{Keep: &KeepWorkload{UID: uid}}, nil, log)
			if err != nil {
				return fmt.Errorf("send keep for pod %s (uid %s): %w", w, uid, err)
			}
			s.record(c, w, ver, "keep", ack, true, nil, log)
			continue
		}
		ack, err := s.roundTrip(c, Request{Add: &AddWorkload{UID: uid, WorkloadInfo: &w.Info}}, f, log)
		f.Close()
		if err != nil {
			return fmt.Errorf("send add for pod %s (uid %s): %w", w, uid, err)
		}
		s.record(c, w, ver, "add", ack, true, nil, log)
	}
	ack, err := s.roundTrip(c, Request{SnapshotSent: &SnapshotSent{}}, nil, log)
	if err != nil {
		return fmt.Errorf("send snapshot_sent: %w", err)
	}
	if ack != "" {
		// Nothing to resend: ztunnel has what it was sent, and the
		// updates that follow still apply.
		log.Error("ztunnel refused snapshot_sent", "error", ack)
	}
	s.mu.Lock()
	if ack == "" {
		s.stats.SnapshotsSent++
	}
	c.ready = true
	s.notifyLocked()
	s.mu.Unlock()
	log.Info("snapshot sent to ztunnel", "workloads", len(uids))
	return nil
}

// step brings one uid in step after the snapshot (add, del, or nothing left
// to do), or waits for something to do.
func (s *Server) step(c *conn, log *slog.Logger) error {
	s.mu.Lock()
	now := time.Now()
	var next time.Time
	for uid, at := range c.retry {
		if !at.After(now) {
			c.dirty[uid] = true
			delete(c.retry, uid)
		} else if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	uid, found := "", false
	for u := range c.dirty {
		uid, found = u, true
		break
	}
	if !found {
		s.mu.Unlock()
		return s.idle(c, next)
	}
	delete(c.dirty, uid)
	e := s.set[uid]
	name, sent := c.sent[uid]
	switch {
	case e != nil && e.sentVer == e.ver:
		c.settle(uid, e.ver, false, nil)
		c.settle(uid, 0, true, nil) // a Del overtaken by an Add
		s.mu.Unlock()
		return nil
	case e != nil:
		w, ver := e.w, e.ver
		c.settle(uid, 0, true, nil)
		s.mu.Unlock()
		return s.sendAdd(c, w, ver, log)
	case sent:
		s.mu.Unlock()
		return s.sendDel(c, uid, name, log)
	default:
		c.settle(uid, 0, true, nil) // ztunnel never had it
		s.mu.Unlock()
		return nil
	}
}

// idle waits for work: an Add or Del, a retry coming due, or the end of the
// connection. An ack that arrives now answers nothing: a protocol error.
func (s *Server) idle(c *conn, next time.Time) error {
	var due <-chan time.Time
	if !next.IsZero() {
		t := time.NewTimer(time.Until(next))
		defer t.Stop()
		due = t.C
	}
	select {
	case <-c.kick:
		return nil
	case <-due:
		return nil
	case r := <-c.resps:
		return fmt.Errorf("%w: ztunnel sent a response (%+v) with no request in flight (protocol error)", ErrDisconnected, r.Ack)
	case <-c.gone:
		return c.err
	}
}

func (s *Server) sendAdd(c *conn, w Workload, ver uint64, log *slog.Logger) error {
	f, err := os.Open(w.Netns)
	if err != nil {
		s.record(c, w, ver, "add", "", false, fmt.Errorf("open netns %s: %w", w.Netns, err), log)
		return nil
	}
	ack, err := s.roundTrip(c, Request{Add: &AddWorkload{UID: w.UID, WorkloadInfo: &w.Info}}, f, log)
	f.Close()
	if err != nil {
		return fmt.Errorf("send add for pod %s (uid %s): %w", w, w.UID, err)
	}
	s.record(c, w, ver, "add", ack, true, nil, log)
	return nil
}

func (s *Server) sendDel(c *conn, uid, name string, log *slog.Logger) error {
	ack, err := s.roundTrip(c, Request{Del: &DelWorkload{UID: uid}}, nil, log)
	if err != nil {
		return fmt.Errorf("send del for pod %s (uid %s): %w", name, uid, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ack == "" {
		delete(c.sent, uid)
		delete(c.dels, uid)
		c.settle(uid, 0, true, nil)
		return nil
	}
	c.dels[uid]++
	d := s.backoff.after(c.dels[uid])
	c.retry[uid] = time.Now().Add(d)
	log.Error("ztunnel refused del", "pod", name, "uid", uid, "error", ack, "retry_in", d)
	c.settle(uid, 0, true, &AckError{Kind: "del", Workload: name, UID: uid, Message: ack})
	return nil
}

// record notes the outcome of an add or keep of w at version ver: ack is
// ztunnel's answer, sent whether anything reached ztunnel, failed a failure
// before sending. A failure is retried with backoff.
func (s *Server) record(c *conn, w Workload, ver uint64, kind, ack string, sent bool, failed error, log *slog.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != c {
		return // replaced meanwhile; the new connection sends its own snapshot
	}
	if sent {
		// A refused add may still have left state in ztunnel: a later
		// Del sends del all the same.
		c.sent[w.UID] = w.String()
	}
	if ack != "" {
		failed = &AckError{Kind: kind, Workload: w.String(), UID: w.UID, Message: ack}
	}
	e := s.set[w.UID]
	if failed == nil {
		if e != nil && e.ver == ver {
			e.sentVer, e.err, e.failures = ver, nil, 0
		}
		c.settle(w.UID, ver, false, nil)
		return
	}
	if e != nil {
		e.err = failed
		e.failures++
		if e.ver == ver {
			d := s.backoff.after(e.failures)
			c.retry[w.UID] = time.Now().Add(d)
			log.Error("send workload to ztunnel", "kind", kind, "pod", w.String(), "uid", w.UID, "error", failed, "retry_in", d)
		}
	}
	c.settle(w.UID, ver, false, failed)
}

// roundTrip sends one request (with f's descriptor, if any) and waits for
// its ack; it returns ztunnel's error message ("" for success). An error
// means the connection is unusable: it could not be written, ztunnel left,
// sent something other than an ack, or did not answer within the timeout.
func (s *Server) roundTrip(c *conn, r Request, f *os.File, log *slog.Logger) (string, error) {
	kind := r.Kind()
	b, err := r.Marshal()
	if err != nil {
		return "", err
	}
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	c.uc.SetWriteDeadline(time.Now().Add(s.timeout))
	_, _, err = c.uc.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return "", fmt.Errorf("%w: write %s: %w", ErrDisconnected, kind, err)
	}
	s.mu.Lock()
	switch kind {
	case "add":
		s.stats.Adds++
	case "keep":
		s.stats.Keeps++
	case "del":
		s.stats.Dels++
	}
	s.mu.Unlock()

	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case resp := <-c.resps:
		if resp.Ack == nil {
			return "", fmt.Errorf("%w: ztunnel answered %s without an ack (protocol error)", ErrDisconnected, kind)
		}
		s.mu.Lock()
		s.stats.Acks++
		if resp.Ack.Error != "" {
			s.stats.AckErrors++
		}
		s.mu.Unlock()
		return resp.Ack.Error, nil
	case <-c.gone:
		return "", c.err
	case <-t.C:
		s.mu.Lock()
		s.stats.AckTimeouts++
		s.mu.Unlock()
		err := fmt.Errorf("%w: no ack for %s within %v", ErrDisconnected, kind, s.timeout)
		log.Error("drop ztunnel connection", "error", err)
		return "", err
	}
}

// read receives every packet after the hello. ztunnel only ever answers,
// so each is an ack for handle, or a protocol error handle notices; reading
// all the time also notices at once a ztunnel that leaves.
func (s *Server) read(c *conn) {
	defer s.wg.Done()
	defer close(c.gone)
	buf := make([]byte, MaxMessageSize)
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	for {
		n, oobn, flags, _, err := c.uc.ReadMsgUnix(buf, oob)
		closeRights(oob[:oobn])
		if err != nil {
			c.fail(fmt.Errorf("%w: read: %w", ErrDisconnected, err))
			return
		}
		var r Response
		if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			c.fail(fmt.Errorf("%w: ztunnel sent a packet longer than %d bytes", ErrDisconnected, MaxMessageSize))
			return
		}
		if err := r.Unmarshal(buf[:n]); err != nil {
			c.fail(fmt.Errorf("%w: %w", ErrDisconnected, err))
			return
		}
		select {
		case c.resps <- r:
		case <-c.done:
			return
		}
	}
}

// closeRights closes the descriptors of any SCM_RIGHTS in oob: ztunnel sends
// none, and one sent anyway must not leak.
func closeRights(oob []byte) {
	fds, _ := parseRights(oob)
	for _, fd := range fds {
		unix.Close(fd)
	}
}
