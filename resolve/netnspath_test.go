package resolve

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/testenv"
)

// mustSleep starts `sleep` in pod's netns; it is killed when the test ends
// (before the node is torn down, so that it does not hold the netns).
func mustSleep(t *testing.T, pod *testenv.Pod) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := pod.Start(cmd); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	t.Cleanup(func() { stop(cmd) })
	return cmd
}

func stop(cmd *exec.Cmd) {
	if cmd.ProcessState == nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

// mustPeerNsid resolves pod and returns its netns id in the node's netns.
func mustPeerNsid(t *testing.T, res *Resolver, pod *testenv.Pod) int {
	t.Helper()
	got, err := res.Resolve([]netip.Addr{pod.IPv4, pod.IPv6})
	if err != nil {
		t.Fatal(err)
	}
	return got.PeerNetnsID
}

func TestNetnsPath(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a := node.AddPod("a", testenv.Ambient)
	b := node.AddPod("b", testenv.Ambient)
	// No bind mount directories: only /proc is searched.
	res := mustResolver(t, node, Config{NetnsDirs: []string{}})
	nsidA, nsidB := mustPeerNsid(t, res, a), mustPeerNsid(t, res, b)
	if nsidA == nsidB {
		t.Fatalf("pods a and b have the same netns id %d", nsidA)
	}

	sleepA := mustSleep(t, a)
	sleepB := mustSleep(t, b)
	for _, tc := range []struct {
		nsid int
		cmd  *exec.Cmd
	}{{nsidA, sleepA}, {nsidB, sleepB}, {nsidA, sleepA}} { // the last one from the cache
		path, err := res.NetnsPath(tc.nsid)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("/proc/%d/ns/net", tc.cmd.Process.Pid); path != want {
			t.Errorf("NetnsPath(%d) = %s, want %s", tc.nsid, path, want)
		}
	}

	// Both namespaces are cached, by inode.
	for _, cmd := range []*exec.Cmd{sleepA, sleepB} {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid), &st); err != nil {
			t.Fatal(err)
		}
		if _, ok := res.nsids[nsKey{dev: st.Dev, ino: st.Ino}]; !ok {
			t.Errorf("netns of pid %d (inode %d) not cached: %v", cmd.Process.Pid, st.Ino, res.nsids)
		}
	}

	// The process goes; another takes its place: the cached namespace is
	// found through the new one.
	stop(sleepA)
	if _, err := res.NetnsPath(nsidA); !errors.Is(err, ErrNotFound) {
		t.Errorf("NetnsPath(%d) with no process in the netns: %v, want %v", nsidA, err, ErrNotFound)
	}
	sleepA2 := mustSleep(t, a)
	path, err := res.NetnsPath(nsidA)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("/proc/%d/ns/net", sleepA2.Process.Pid); path != want {
		t.Errorf("NetnsPath(%d) after a restart = %s, want %s", nsidA, path, want)
	}

	start := time.Now()
	_, err = res.NetnsPath(9999)
	t.Logf("%v (a search of every candidate took %v)", err, time.Since(start))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("NetnsPath(9999): %v, want %v", err, ErrNotFound)
	}
}

// TestNetnsPathBindMount finds a netns through a bind mount, as `ip netns`
// and container runtimes make them, in preference to /proc.
func TestNetnsPathBindMount(t *testing.T) {
	node := testenv.NewNode(t, testenv.NodeOptions{})
	a := node.AddPod("a", testenv.Ambient)
	dir := t.TempDir()
	// A file that is no namespace, which the search passes over.
	if err := os.WriteFile(filepath.Join(dir, "aaa-not-a-netns"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "pod-a")
	if err := os.WriteFile(mnt, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(a.Path(), mnt, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount netns of pod a on %s: %v", mnt, err)
	}
	// Before the node's teardown (cleanups run last in, first out): the
	// mount holds the netns.
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	mustSleep(t, a)

	res := mustResolver(t, node, Config{NetnsDirs: []string{filepath.Join(dir, "missing"), dir}})
	nsid := mustPeerNsid(t, res, a)
	path, err := res.NetnsPath(nsid)
	if err != nil {
		t.Fatal(err)
	}
	if path != mnt {
		t.Errorf("NetnsPath(%d) = %s, want the bind mount %s", nsid, path, mnt)
	}
}
