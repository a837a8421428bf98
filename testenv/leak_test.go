package testenv

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// nsObserver proves that namespaces are gone, not just that their handles
// are closed: it gives each watched namespace an id (RTM_NEWNSID) inside an
// observer namespace of its own, and the kernel removes a namespace's ids
// everywhere when it destroys that namespace (net/core/net_namespace.c,
// unhash_nsid). Anything still holding a namespace (a handle, a socket, a
// thread, a process) keeps its id listed.
type nsObserver struct {
	ns  netns.NsHandle
	nl  *netlink.Handle
	ids int
}

// newObserver makes the observer; create it before the environment under
// test so that it outlives the environment's cleanups.
func newObserver(t *testing.T) *nsObserver {
	t.Helper()
	ns := testutil.NewNetns(t)
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("open netlink in observer: %v", err)
	}
	t.Cleanup(h.Close)
	return &nsObserver{ns: ns, nl: h}
}

// watch gives every namespace of the cluster an id in the observer.
func (o *nsObserver) watch(t *testing.T, c *cluster) {
	t.Helper()
	c.mu.Lock()
	handles := slices.Clone(c.namespaces)
	c.mu.Unlock()
	for _, h := range handles {
		o.ids++
		if err := o.nl.SetNetNsIdByFd(int(h), o.ids); err != nil {
			t.Fatalf("set nsid %d: %v", o.ids, err)
		}
	}
}

// alive counts the watched namespaces that still exist.
func (o *nsObserver) alive(t *testing.T) int {
	t.Helper()
	var n int
	testutil.MustDo(t, o.ns, func() error {
		req := nl.NewNetlinkRequest(unix.RTM_GETNSID, unix.NLM_F_DUMP)
		req.AddData(nl.NewRtGenMsg())
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNSID)
		n = len(msgs)
		return err
	})
	return n
}

// waitGone waits for every watched namespace to be destroyed (the kernel
// does it asynchronously, in cleanup_net).
func (o *nsObserver) waitGone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := o.alive(t)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d namespaces still exist after cleanup", n, o.ids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rootState is what the tests must leave unchanged in the machine's own
// namespace: its links and the named namespaces; and on its file system the
// plugin wirings' state: the nodes' directories and the machine's own CNI
// state (libcni's cache, host-local's default directory), which testenv
// never writes.
type rootState struct {
	links    []string
	named    []string
	cniState []string
}

func snapshotRoot(t *testing.T) rootState {
	t.Helper()
	var s rootState
	// The test goroutine is not locked to a thread, and every thread
	// testenv moves is moved back, so this lists the root namespace.
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list root links: %v", err)
	}
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		s.named = append(s.named, e.Name())
	}
	slices.Sort(s.links)
	// This process's: those of dead ones are swept at the first node.
	s.cniState, _ = filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-*", cniDirPrefix, os.Getpid())))
	filepath.WalkDir("/var/lib/cni", func(path string, _ fs.DirEntry, err error) error {
		if err == nil {
			s.cniState = append(s.cniState, path)
		}
		return nil
	})
	return s
}

func (s rootState) mustEqual(t *testing.T, after rootState) {
	t.Helper()
	if !slices.Equal(s.links, after.links) {
		t.Errorf("root netns links changed: before %v, after %v", s.links, after.links)
	}
	if !slices.Equal(s.named, after.named) {
		t.Errorf("named netns changed: before %v, after %v", s.named, after.named)
	}
	if !slices.Equal(s.cniState, after.cniState) {
		t.Errorf("CNI state changed: before %v, after %v", s.cniState, after.cniState)
	}
}

// fakeTB runs a test body the way package testing does (cleanups in
// reverse order, also after FailNow or a panic) without failing the real
// test, so that a test can check what a failing test leaves behind.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	f.failed = true
	f.mu.Unlock()
	f.TB.Logf("fake test error: "+format, args...)
}
func (f *fakeTB) Error(args ...any)                 { f.Errorf("%v", args...) }
func (f *fakeTB) FailNow()                          { f.Errorf("FailNow"); runtime.Goexit() }
func (f *fakeTB) Fatal(args ...any)                 { f.Errorf("%v", args...); runtime.Goexit() }
func (f *fakeTB) Fatalf(format string, args ...any) { f.Errorf(format, args...); runtime.Goexit() }
func (f *fakeTB) Skip(args ...any)                  { f.TB.Logf("fake skip: %v", args); runtime.Goexit() }
func (f *fakeTB) Skipf(format string, args ...any)  { f.TB.Logf(format, args...); runtime.Goexit() }
func (f *fakeTB) SkipNow()                          { runtime.Goexit() }

// run runs body on its own goroutine and reports whether it panicked.
func (f *fakeTB) run(body func(tb testing.TB)) (panicked bool) {
	done := make(chan bool)
	go func() {
		defer func() {
			done <- recover() != nil
		}()
		defer func() {
			for i := len(f.cleanups) - 1; i >= 0; i-- {
				f.cleanups[i]()
			}
		}()
		body(f)
	}()
	return <-done
}
