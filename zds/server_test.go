package zds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// testServer is a Server serving on a socket in a temporary directory, with
// its log kept for the test to read.
type testServer struct {
	*Server
	log *testutil.SyncBuffer
}

// mustServer listens and serves until the test ends; Close is checked then.
func mustServer(tb testing.TB, opts ServerOptions) *testServer {
	tb.Helper()
	logs := &testutil.SyncBuffer{}
	if opts.Path == "" {
		opts.Path = filepath.Join(tb.TempDir(), "run", "ztunnel.sock")
	}
	if opts.AckTimeout == 0 {
		opts.AckTimeout = 5 * time.Second
	}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Listen(opts)
	if err != nil {
		tb.Fatalf("Listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background()) }()
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
		// ErrServerClosed: the test ended before Serve began.
		if err := <-served; err != nil && !errors.Is(err, ErrServerClosed) {
			tb.Errorf("Serve: %v", err)
		}
		if tb.Failed() {
			tb.Logf("server log:\n%s", logs)
		}
	})
	return &testServer{s, logs}
}

// mustDial connects a ztunnel stand-in; every receive is bounded so that a
// broken server fails the test instead of hanging it.
func mustDial(tb testing.TB, path string) *Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		tb.Fatalf("Dial: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// received is a request as the ztunnel stand-in saw it, with the identity
// of the netns it came with.
type received struct {
	kind, uid string
	info      *WorkloadInfo
	netns     fileID
}

type fileID struct{ dev, ino uint64 }

func (c *Client) mustRecv(tb testing.TB) received {
	tb.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r, f, err := c.Recv()
	if err != nil {
		tb.Fatalf("Recv: %v", err)
	}
	got := received{kind: r.Kind()}
	switch {
	case r.Add != nil:
		got.uid, got.info = r.Add.UID, r.Add.WorkloadInfo
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			tb.Fatalf("fstat the received netns: %v", err)
		}
		got.netns = fileID{st.Dev, st.Ino}
		f.Close()
	case r.Keep != nil:
		got.uid = r.Keep.UID
	case r.Del != nil:
		got.uid = r.Del.UID
	}
	return got
}

func (c *Client) mustAck(tb testing.TB, errMsg string) {
	tb.Helper()
	if err := c.Ack(errMsg); err != nil {
		tb.Fatalf("Ack: %v", err)
	}
}

// mustNoRecv checks that nothing arrives for a while: the server waits for
// an ack before it sends anything else.
func (c *Client) mustNoRecv(tb testing.TB, d time.Duration) {
	tb.Helper()
	c.SetDeadline(time.Now().Add(d))
	r, f, err := c.Recv()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		if f != nil {
			f.Close()
		}
		tb.Fatalf("Recv = %s, %v; want nothing before the ack", r.Kind(), err)
	}
}

// mustEOF checks that the server closed the connection.
func (c *Client) mustEOF(tb testing.TB) {
	tb.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if r, _, err := c.Recv(); !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET) {
		tb.Fatalf("Recv = %s, %v; want the connection closed", r.Kind(), err)
	}
}

// mustNetns returns the path of a network namespace of its own (so a test
// can tell the pods' namespaces apart by inode) and its identity. Without
// the privilege to create one it falls back to the test's own namespace.
func mustNetns(tb testing.TB) (string, fileID) {
	tb.Helper()
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result)
	go func() {
		// The thread is left locked, so the runtime discards it with its
		// namespace when the goroutine ends.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, err}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		ch <- result{fd, err}
	}()
	r := <-ch
	path := "/proc/self/ns/net"
	if r.err == nil {
		path = fmt.Sprintf("/proc/self/fd/%d", r.fd)
		tb.Cleanup(func() { unix.Close(r.fd) })
	} else {
		tb.Logf("no netns of its own (%v): using the test's", r.err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		tb.Fatalf("stat %s: %v", path, err)
	}
	return path, fileID{st.Dev, st.Ino}
}

// pod is a workload with a netns of its own.
type pod struct {
	w  Workload
	id fileID
}

func mustPod(tb testing.TB, name string) pod {
	tb.Helper()
	path, id := mustNetns(tb)
	return pod{Workload{UID: "uid-" + name, Info: WorkloadInfo{Name: name, Namespace: "default", ServiceAccount: "sa-" + name}, Netns: path}, id}
}

// wantAdd checks that got is the add of p with p's netns.
func wantAdd(tb testing.TB, got received, p pod) {
	tb.Helper()
	if got.kind != "add" || got.uid != p.w.UID || got.info == nil || *got.info != p.w.Info || got.netns != p.id {
		tb.Fatalf("received %+v (info %+v), want add of %s with netns %v", got, got.info, p.w.UID, p.id)
	}
}

func wantKind(tb testing.TB, got received, kind, uid string) {
	tb.Helper()
	if got.kind != kind || got.uid != uid {
		tb.Fatalf("received %s %q, want %s %q", got.kind, got.uid, kind, uid)
	}
}

// addAsync runs Add in the background; the channel gets its result.
func addAsync(s *testServer, w Workload) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.Add(context.Background(), w) }()
	return ch
}

func delAsync(s *testServer, uid string) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.Del(context.Background(), uid) }()
	return ch
}

func mustResult(tb testing.TB, ch <-chan error) error {
	tb.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		tb.Fatal("the call did not return")
		return nil
	}
}

// notReturned checks that a call is still waiting (for its ack).
func notReturned(tb testing.TB, ch <-chan error) {
	tb.Helper()
	select {
	case err := <-ch:
		tb.Fatalf("returned %v before its ack", err)
	case <-time.After(50 * time.Millisecond):
	}
}

func mustWaitConnected(tb testing.TB, s *testServer) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.WaitConnected(ctx); err != nil {
		tb.Fatalf("WaitConnected: %v", err)
	}
}

// waitFor polls cond until it holds.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mustConnectEmpty connects a ztunnel to a server with no workloads and
// acks its (empty) snapshot.
func mustConnectEmpty(tb testing.TB, s *testServer) *Client {
	tb.Helper()
	c := mustDial(tb, s.Path())
	wantKind(tb, c.mustRecv(tb), "snapshot_sent", "")
	c.mustAck(tb, "")
	mustWaitConnected(tb, s)
	return c
}

// TestHello: only a V1 hello makes a connection ztunnel's; anything else is
// logged and the connection closed.
func TestHello(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hello []byte // nil: send nothing
		ok    bool
		log   string
	}{
		{"V1", []byte{0x08, 0x01}, true, "ztunnel connected"},
		{"version 2", []byte{0x08, 0x02}, false, "hello with version 2"},
		{"NOT_USED", []byte{0x10, 0x01}, false, "hello with version 0"},
		{"garbage", []byte{0x0a, 0x05}, false, "decode ZdsHello"},
		{"silence", nil, false, "read hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustServer(t, ServerOptions{AckTimeout: 500 * time.Millisecond})
			raw, err := net.Dial("unixpacket", s.Path())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			if tc.hello != nil {
				if _, err := raw.Write(tc.hello); err != nil {
					t.Fatal(err)
				}
			}
			c := &Client{conn: raw.(*net.UnixConn)}
			if tc.ok {
				wantKind(t, c.mustRecv(t), "snapshot_sent", "")
				c.mustAck(t, "")
				mustWaitConnected(t, s)
			} else {
				c.mustEOF(t)
				if st := s.Stats(); st.HellosRejected != 1 || st.Connected {
					t.Errorf("Stats = %+v, want 1 hello rejected and nobody connected", st)
				}
				if err := s.Add(context.Background(), mustPod(t, "web-0").w); !errors.Is(err, ErrNoZtunnel) {
					t.Errorf("Add after a refused hello = %v, want ErrNoZtunnel", err)
				}
			}
			waitFor(t, "the log line", func() bool { return strings.Contains(s.log.String(), tc.log) })
		})
	}
}

// TestSnapshot: a new connection gets every known workload as add, with its
// own netns, strictly one at a time, then snapshot_sent.
func TestSnapshot(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	pods := []pod{mustPod(t, "web-0"), mustPod(t, "web-1"), mustPod(t, "web-2")}
	for _, p := range pods {
		if err := s.Add(context.Background(), p.w); !errors.Is(err, ErrNoZtunnel) {
			t.Fatalf("Add without ztunnel = %v, want ErrNoZtunnel", err)
		}
	}
	c := mustDial(t, s.Path())
	for _, p := range pods { // in uid order
		wantAdd(t, c.mustRecv(t), p)
		c.mustNoRecv(t, 30*time.Millisecond)
		if ok, _ := s.Acked(p.w.UID); ok {
			t.Errorf("Acked(%s) before its ack", p.w.UID)
		}
		c.mustAck(t, "")
	}
	wantKind(t, c.mustRecv(t), "snapshot_sent", "")
	if s.Stats().SnapshotsSent != 0 {
		t.Error("snapshot counted before its ack")
	}
	c.mustAck(t, "")
	mustWaitConnected(t, s)
	for _, p := range pods {
		if ok, err := s.Acked(p.w.UID); !ok || err != nil {
			t.Errorf("Acked(%s) = %v, %v; want true, nil", p.w.UID, ok, err)
		}
	}
	want := Stats{Connections: 1, Connected: true, Adds: 3, Acks: 4, SnapshotsSent: 1, Workloads: 3}
	if st := s.Stats(); st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
}

// TestAddAfterSnapshot: Add sends add with the pod's netns and returns only
// once ztunnel acked it.
func TestAddAfterSnapshot(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	c := mustConnectEmpty(t, s)
	p := mustPod(t, "web-0")
	done := addAsync(s, p.w)
	wantAdd(t, c.mustRecv(t), p)
	notReturned(t, done)
	c.mustAck(t, "")
	if err := mustResult(t, done); err != nil {
		t.Fatalf("Add: %v", err)
	}
	if ok, err := s.Acked(p.w.UID); !ok || err != nil {
		t.Errorf("Acked = %v, %v; want true, nil", ok, err)
	}
	// An Add of a known uid sends it again (its info may have changed).
	p.w.Info.ServiceAccount = "other"
	done = addAsync(s, p.w)
	wantAdd(t, c.mustRecv(t), p)
	c.mustAck(t, "")
	if err := mustResult(t, done); err != nil {
		t.Fatalf("second Add: %v", err)
	}
	if st := s.Stats(); st.Adds != 2 || st.Workloads != 1 {
		t.Errorf("Stats = %+v, want 2 adds of 1 workload", st)
	}
}

// TestAddDuringSnapshotWaits: an Add made while the snapshot is being sent
// waits for snapshot_sent, then goes out as an add of its own.
func TestAddDuringSnapshotWaits(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	a, b := mustPod(t, "a"), mustPod(t, "b")
	s.Add(context.Background(), a.w)
	c := mustDial(t, s.Path())
	wantAdd(t, c.mustRecv(t), a)
	done := addAsync(s, b.w)
	notReturned(t, done)
	c.mustAck(t, "")
	wantKind(t, c.mustRecv(t), "snapshot_sent", "")
	notReturned(t, done)
	c.mustAck(t, "")
	wantAdd(t, c.mustRecv(t), b)
	c.mustAck(t, "")
	if err := mustResult(t, done); err != nil {
		t.Fatalf("Add: %v", err)
	}
}

// TestKeepForUnopenableNetns: a workload whose netns cannot be opened at
// snapshot time is sent as keep (no descriptor), the others as add.
func TestKeepForUnopenableNetns(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	good := mustPod(t, "good")
	gone := Workload{UID: "uid-gone", Info: WorkloadInfo{Name: "gone", Namespace: "default"}, Netns: filepath.Join(t.TempDir(), "no-such-netns")}
	s.Add(context.Background(), good.w)
	s.Add(context.Background(), gone)
	c := mustDial(t, s.Path())
	wantKind(t, c.mustRecv(t), "keep", gone.UID)
	c.mustAck(t, "")
	wantAdd(t, c.mustRecv(t), good)
	c.mustAck(t, "")
	wantKind(t, c.mustRecv(t), "snapshot_sent", "")
	c.mustAck(t, "")
	mustWaitConnected(t, s)
	if ok, err := s.Acked(gone.UID); !ok || err != nil {
		t.Errorf("Acked(kept) = %v, %v; want true, nil", ok, err)
	}
	if st := s.Stats(); st.Keeps != 1 || st.Adds != 1 {
		t.Errorf("Stats = %+v, want 1 keep and 1 add", st)
	}
	if !strings.Contains(s.log.String(), "sending keep") {
		t.Errorf("the keep is not logged")
	}
	// After the snapshot, an unopenable netns is an Add error, not a keep.
	late := gone
	late.UID = "uid-late"
	if err := s.Add(context.Background(), late); err == nil || !strings.Contains(err.Error(), "open netns") {
		t.Errorf("Add with an unopenable netns = %v, want an open netns error", err)
	}
	c.mustNoRecv(t, 30*time.Millisecond)
}

// TestDel: Del sends del (uid in field 2) for what ztunnel has and waits for
// the ack; for what it never had, or with no ztunnel, it sends nothing.
func TestDel(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	c := mustConnectEmpty(t, s)
	p := mustPod(t, "web-0")
	done := addAsync(s, p.w)
	c.mustRecv(t)
	c.mustAck(t, "")
	mustResult(t, done)

	done = delAsync(s, p.w.UID)
	wantKind(t, c.mustRecv(t), "del", p.w.UID)
	notReturned(t, done)
	c.mustAck(t, "")
	if err := mustResult(t, done); err != nil {
		t.Fatalf("Del: %v", err)
	}
	if err := s.Del(context.Background(), "uid-never-added"); err != nil {
		t.Errorf("Del of an unknown uid = %v", err)
	}
	c.mustNoRecv(t, 30*time.Millisecond)
	if st := s.Stats(); st.Dels != 1 || st.Workloads != 0 {
		t.Errorf("Stats = %+v, want 1 del and no workload", st)
	}
}

// TestReconnectGetsFullSnapshot: after ztunnel restarts, the new connection
// gets the current set: what was added while it was away, not what was
// deleted.
func TestReconnectGetsFullSnapshot(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	a, b, c3 := mustPod(t, "a"), mustPod(t, "b"), mustPod(t, "c")
	s.Add(context.Background(), a.w)
	s.Add(context.Background(), b.w)
	c1 := mustDial(t, s.Path())
	for range 2 {
		c1.mustRecv(t)
		c1.mustAck(t, "")
	}
	wantKind(t, c1.mustRecv(t), "snapshot_sent", "")
	c1.mustAck(t, "")
	mustWaitConnected(t, s)
	c1.Close()
	waitFor(t, "the server to notice ztunnel left", func() bool { return !s.Connected() })
	if ok, _ := s.Acked(a.w.UID); ok {
		t.Errorf("Acked with no ztunnel connected")
	}
	if err := s.Add(context.Background(), c3.w); !errors.Is(err, ErrNoZtunnel) {
		t.Errorf("Add = %v, want ErrNoZtunnel", err)
	}
	if err := s.Del(context.Background(), a.w.UID); err != nil {
		t.Errorf("Del with no ztunnel = %v, want nil", err)
	}
	c2 := mustDial(t, s.Path())
	for _, p := range []pod{b, c3} {
		wantAdd(t, c2.mustRecv(t), p)
		c2.mustAck(t, "")
	}
	wantKind(t, c2.mustRecv(t), "snapshot_sent", "")
	c2.mustAck(t, "")
	mustWaitConnected(t, s)
	if st := s.Stats(); st.Connections != 2 || st.SnapshotsSent != 2 || st.Disconnects != 1 {
		t.Errorf("Stats = %+v, want 2 connections, 2 snapshots and 1 disconnect", st)
	}
}

// TestSecondConnectionReplacesFirst: a new ztunnel connection replaces the
// current one, which is closed, and gets the snapshot.
func TestSecondConnectionReplacesFirst(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	p := mustPod(t, "web-0")
	s.Add(context.Background(), p.w)
	c1 := mustDial(t, s.Path())
	c1.mustRecv(t)
	c1.mustAck(t, "")
	c1.mustRecv(t)
	c1.mustAck(t, "")
	c2 := mustDial(t, s.Path())
	wantAdd(t, c2.mustRecv(t), p)
	c1.mustEOF(t)
	c2.mustAck(t, "")
	wantKind(t, c2.mustRecv(t), "snapshot_sent", "")
	c2.mustAck(t, "")
	mustWaitConnected(t, s)
	done := delAsync(s, p.w.UID)
	wantKind(t, c2.mustRecv(t), "del", p.w.UID)
	c2.mustAck(t, "")
	if err := mustResult(t, done); err != nil {
		t.Fatalf("Del on the new connection: %v", err)
	}
	// ztunnel stayed connected throughout: a replaced connection is no
	// disconnect (the alert on meshredirect_zds_connection_events_total).
	if st := s.Stats(); st.Disconnects != 0 || st.Connections != 2 {
		t.Errorf("Stats = %+v, want 2 connections and no disconnect", st)
	}
}

// TestAckErrorRetried: ztunnel refusing an add is reported (AckError, Stats,
// log, Acked), and the add is sent again after the backoff until ztunnel
// takes it; during the snapshot, the retry comes after snapshot_sent.
func TestAckErrorRetried(t *testing.T) {
	for _, during := range []bool{false, true} {
		t.Run(map[bool]string{false: "after snapshot", true: "during snapshot"}[during], func(t *testing.T) {
			s := mustServer(t, ServerOptions{RetryBackoff: Backoff{Initial: 50 * time.Millisecond, Max: 100 * time.Millisecond}})
			p := mustPod(t, "web-0")
			var c *Client
			var done <-chan error
			if during {
				s.Add(context.Background(), p.w)
				c = mustDial(t, s.Path())
			} else {
				c = mustConnectEmpty(t, s)
				done = addAsync(s, p.w)
			}
			wantAdd(t, c.mustRecv(t), p)
			c.mustAck(t, "failed to create inpod proxy")
			if during {
				wantKind(t, c.mustRecv(t), "snapshot_sent", "")
				c.mustAck(t, "")
			} else {
				err := mustResult(t, done)
				var ackErr *AckError
				if !errors.As(err, &ackErr) || ackErr.Workload != "default/web-0" || ackErr.Message != "failed to create inpod proxy" {
					t.Fatalf("Add = %v, want an *AckError for default/web-0", err)
				}
			}
			if ok, err := s.Acked(p.w.UID); ok || err == nil {
				t.Errorf("Acked = %v, %v; want false and the refusal", ok, err)
			}
			if st := s.Stats(); st.AckErrors != 1 {
				t.Errorf("Stats = %+v, want 1 ack error", st)
			}
			if l := s.log.String(); !strings.Contains(l, "failed to create inpod proxy") || !strings.Contains(l, "default/web-0") {
				t.Errorf("the refusal is not logged with the pod:\n%s", l)
			}
			// The retry waits for the backoff, then ztunnel refuses again
			// and accepts the third time.
			start := time.Now()
			wantAdd(t, c.mustRecv(t), p)
			if d := time.Since(start); d < 30*time.Millisecond {
				t.Errorf("retried after %v, before the backoff", d)
			}
			c.mustAck(t, "still failing")
			wantAdd(t, c.mustRecv(t), p)
			c.mustAck(t, "")
			waitFor(t, "Acked", func() bool { ok, err := s.Acked(p.w.UID); return ok && err == nil })
			c.mustNoRecv(t, 150*time.Millisecond) // no retry once taken
			if st := s.Stats(); st.AckErrors != 2 {
				t.Errorf("Stats = %+v, want 2 ack errors", st)
			}
		})
	}
}

// TestAckTimeoutDropsConnection: a ztunnel that does not ack in time is
// disconnected, the pending Add fails, and the drop is logged.
func TestAckTimeoutDropsConnection(t *testing.T) {
	s := mustServer(t, ServerOptions{AckTimeout: 150 * time.Millisecond})
	c := mustConnectEmpty(t, s)
	p := mustPod(t, "web-0")
	done := addAsync(s, p.w)
	wantAdd(t, c.mustRecv(t), p)
	err := mustResult(t, done)
	if !errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "no ack") || !strings.Contains(err.Error(), "default/web-0") {
		t.Fatalf("Add = %v, want a timeout naming the pod", err)
	}
	c.mustEOF(t)
	if st := s.Stats(); st.AckTimeouts != 1 || st.Connected {
		t.Errorf("Stats = %+v, want 1 ack timeout and nobody connected", st)
	}
	if !strings.Contains(s.log.String(), "no ack for add") {
		t.Errorf("the timeout is not logged")
	}
}

// TestNoZtunnel: with no ztunnel, Add returns ErrNoZtunnel at once and keeps
// the workload; Del returns nil.
func TestNoZtunnel(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	p := mustPod(t, "web-0")
	start := time.Now()
	err := s.Add(context.Background(), p.w)
	if !errors.Is(err, ErrNoZtunnel) || !strings.Contains(err.Error(), "default/web-0") {
		t.Fatalf("Add = %v, want ErrNoZtunnel naming the pod", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Add took %v", d)
	}
	if st := s.Stats(); st.Workloads != 1 || st.Connected {
		t.Errorf("Stats = %+v, want the workload kept and nobody connected", st)
	}
	if ok, err := s.Acked(p.w.UID); ok || err != nil {
		t.Errorf("Acked = %v, %v", ok, err)
	}
	if err := s.Add(context.Background(), Workload{}); err == nil || errors.Is(err, ErrNoZtunnel) {
		t.Errorf("Add without uid = %v, want a refusal", err)
	}
}

// TestZtunnelGoneMidAdd: ztunnel leaving while an add waits for its ack
// fails the Add at once (not at the ack timeout), naming the pod.
func TestZtunnelGoneMidAdd(t *testing.T) {
	s := mustServer(t, ServerOptions{AckTimeout: time.Minute})
	c := mustConnectEmpty(t, s)
	p := mustPod(t, "web-0")
	done := addAsync(s, p.w)
	c.mustRecv(t)
	c.Close()
	err := mustResult(t, done)
	if !errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "default/web-0") {
		t.Fatalf("Add = %v, want ErrDisconnected naming the pod", err)
	}
	if st := s.Stats(); st.Workloads != 1 {
		t.Errorf("Stats = %+v, want the workload kept for the next snapshot", st)
	}
}

// TestCloseLeavesNothing: Close ends Serve and the connection, removes the
// socket file and leaves no goroutine behind.
func TestCloseLeavesNothing(t *testing.T) {
	pods := []pod{mustPod(t, "web-0"), mustPod(t, "web-1")}
	path := filepath.Join(t.TempDir(), "ztunnel.sock")
	before, fds := runtime.NumGoroutine(), openFDs(t)
	s, err := Listen(ServerOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background()) }()
	c, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := c.Recv(); err != nil {
		t.Fatal(err)
	}
	c.Ack("")
	if err := s.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
	pending := addAsync(&testServer{Server: s}, pods[0].w)
	if _, f, err := c.Recv(); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := mustResult(t, served); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	if err := mustResult(t, pending); !errors.Is(err, ErrDisconnected) {
		t.Errorf("pending Add = %v, want ErrDisconnected", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
	if err := s.Add(context.Background(), pods[1].w); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Add after Close = %v, want ErrServerClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	c.Close()
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
	if after := openFDs(t); after != fds {
		t.Errorf("%d descriptors open after Close, %d before Listen", after, fds)
	}
}

// TestDelDuringSnapshot: a Del made while the snapshot is being sent keeps
// the deleted workload out of the rest of the snapshot, and a workload
// already sent gets its del after snapshot_sent (keep and add only come
// before it).
func TestDelDuringSnapshot(t *testing.T) {
	s := mustServer(t, ServerOptions{})
	a, b := mustPod(t, "a"), mustPod(t, "b")
	s.Add(context.Background(), a.w)
	s.Add(context.Background(), b.w)
	c := mustDial(t, s.Path())
	wantAdd(t, c.mustRecv(t), a)
	delA, delB := delAsync(s, a.w.UID), delAsync(s, b.w.UID)
	waitFor(t, "both deleted from the set", func() bool { return s.Stats().Workloads == 0 })
	c.mustAck(t, "")
	wantKind(t, c.mustRecv(t), "snapshot_sent", "")
	c.mustAck(t, "")
	wantKind(t, c.mustRecv(t), "del", a.w.UID)
	c.mustAck(t, "")
	for _, ch := range []<-chan error{delA, delB} {
		if err := mustResult(t, ch); err != nil {
			t.Errorf("Del: %v", err)
		}
	}
	c.mustNoRecv(t, 30*time.Millisecond) // no del for b: ztunnel never had it
}

// TestDelRefusedRetried: a del ztunnel refuses is an *AckError and is sent
// again after the backoff.
func TestDelRefusedRetried(t *testing.T) {
	s := mustServer(t, ServerOptions{RetryBackoff: Backoff{Initial: 20 * time.Millisecond}})
	c := mustConnectEmpty(t, s)
	p := mustPod(t, "web-0")
	done := addAsync(s, p.w)
	c.mustRecv(t)
	c.mustAck(t, "")
	mustResult(t, done)
	done = delAsync(s, p.w.UID)
	wantKind(t, c.mustRecv(t), "del", p.w.UID)
	c.mustAck(t, "busy")
	var ackErr *AckError
	if err := mustResult(t, done); !errors.As(err, &ackErr) || ackErr.Kind != "del" || ackErr.Workload != "default/web-0" {
		t.Fatalf("Del = %v, want an *AckError for the del of default/web-0", err)
	}
	wantKind(t, c.mustRecv(t), "del", p.w.UID)
	c.mustAck(t, "")
	c.mustNoRecv(t, 60*time.Millisecond)
}

// TestServeEndsWithContext: cancelling Serve's context closes the server.
func TestServeEndsWithContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ztunnel.sock")
	s, err := Listen(ServerOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	c := mustDial(t, path)
	c.mustRecv(t)
	cancel()
	if err := mustResult(t, served); err != nil {
		t.Errorf("Serve = %v", err)
	}
	c.mustEOF(t)
}

// TestListenSocketPath: Listen creates the directory, replaces a stale
// socket and refuses to remove anything that is not a socket.
func TestListenSocketPath(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	for _, tc := range []struct {
		name, path string
		ok         bool
	}{
		{"new directory", filepath.Join(dir, "a", "b", "ztunnel.sock"), true},
		{"stale socket", stale, true},
		{"regular file", mustRegularFile(t, filepath.Join(dir, "file")), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Listen(ServerOptions{Path: tc.path})
			if !tc.ok {
				if err == nil {
					s.Close()
					t.Fatal("Listen succeeded")
				}
				if _, err := os.Stat(tc.path); err != nil {
					t.Errorf("the file was removed: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Listen: %v", err)
			}
			t.Cleanup(func() { s.Close() })
		})
	}
}

func mustRegularFile(tb testing.TB, path string) string {
	tb.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}
