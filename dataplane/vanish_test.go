package dataplane

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshredirect/meshredirect/internal/testutil"
	"github.com/meshredirect/meshredirect/tc"
	"github.com/meshredirect/meshredirect/testenv"
)

// newVanishNode builds a node with one pod and opens a dataplane on it.
func newVanishNode(t *testing.T) (*testenv.Node, *testenv.Pod, *Dataplane, Config) {
	t.Helper()
	testutil.RequirePrivileged(t)
	node := testenv.NewNode(t, testenv.NodeOptions{})
	pod := node.AddPod("pod", testenv.Ambient)
	cfg := Config{NodeNetns: node.Path(), PinDir: filepath.Join(testutil.BPFFS(t), "meshredirect")}
	dp, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.Close()
		if err := Uninstall(cfg); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	return node, pod, dp, cfg
}

func podOf(p *testenv.Pod) Pod {
	return Pod{Name: "default/" + p.Name, IPs: []netip.Addr{p.IPv4, p.IPv6}, HostIfindex: p.HostVethIndex, MAC: p.MAC}
}

// nothingLeft fails unless the dataplane holds no entry, no attachment and
// no link pin.
func nothingLeft(t *testing.T, dp *Dataplane, cfg Config) {
	t.Helper()
	entries, err := dp.maps.Endpoints.Pods()
	if err != nil || len(entries) != 0 {
		t.Errorf("pod entries: %v %v", entries, err)
	}
	all, err := dp.Attachments()
	if err != nil || len(all) != 0 {
		t.Errorf("attachments: %v %v", all, err)
	}
	pins, _ := os.ReadDir(cfg.tcPinDir())
	for _, p := range pins {
		if strings.HasPrefix(p.Name(), "tcx-") {
			t.Errorf("link pin left: %s", p.Name())
		}
	}
}

// TestInterfaceVanishesDuringEnrolment: the pod's veth goes away after its
// map entries are written and before its programs are attached. The
// enrolment fails with ErrInterfaceGone and leaves nothing behind.
func TestInterfaceVanishesDuringEnrolment(t *testing.T) {
	for _, mode := range []tc.Mode{tc.ModeAuto, tc.ModeLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			_, pod, dp, cfg := newVanishNode(t)
			dp.cfg.AttachMode = mode
			testHookBeforeAttach = func(Pod) { pod.Delete() }
			defer func() { testHookBeforeAttach = nil }()
			err := dp.Enroll(podOf(pod))
			if !errors.Is(err, ErrInterfaceGone) {
				t.Fatalf("Enroll: %v, want ErrInterfaceGone", err)
			}
			nothingLeft(t, dp, cfg)
		})
	}
}

// TestUnenrolAfterNetnsGone: the pod's netns (and its veth with it) is
// gone when the pod is unenrolled. Unenrol succeeds and removes the map
// entries and any link pin of the vanished veth.
func TestUnenrolAfterNetnsGone(t *testing.T) {
	_, pod, dp, cfg := newVanishNode(t)
	p := podOf(pod)
	if err := dp.Enroll(p); err != nil {
		t.Fatal(err)
	}
	pod.Delete()
	if err := dp.Unenroll(p); err != nil {
		t.Fatalf("Unenroll of a pod whose netns is gone: %v", err)
	}
	nothingLeft(t, dp, cfg)
	if err := dp.Unenroll(p); err != nil {
		t.Errorf("a second Unenroll: %v", err)
	}
}
