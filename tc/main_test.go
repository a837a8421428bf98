package tc_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"testing"

	"github.com/meshredirect/meshredirect/internal/bpffs"
	"github.com/meshredirect/meshredirect/tc"
)

// helperEnv makes the test binary a helper process instead of running the
// tests: TestPinnedLinkOutlivesProcess re-executes itself with it, to
// attach and pin a link in a process that then exits.
const helperEnv = "MESHREDIRECT_TC_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(runTests(m))
}

// runTests runs the tests, and then fails if they leaked: pin directories
// left on bpffs, or file descriptors left open (links, programs, sockets,
// namespaces).
func runTests(m *testing.M) int {
	unmount, err := setUpBPFFS()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	// Warm up what the runtime and the libraries open once and keep
	// (the netpoller), so that only leaks count.
	if c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err == nil {
		c.Close()
	}
	before := openFDs()

	code := m.Run()

	if bpffsRoot != "" {
		leaked, _ := filepath.Glob(filepath.Join(bpffsRoot, pinDirPattern))
		for _, dir := range leaked {
			fmt.Fprintf(os.Stderr, "leaked pin directory %s\n", dir)
			code = 1
		}
	}
	if after := openFDs(); after > before {
		fmt.Fprintf(os.Stderr, "leaked %d file descriptors (%d open before the tests, %d after)\n", after-before, before, after)
		code = 1
	}
	if err := unmount(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}

// setUpBPFFS picks where tests pin: /sys/fs/bpf if it is a bpffs (CI mounts
// one), else a private bpffs mounted on a temporary directory, never
// visible at /sys/fs/bpf, and unmounted after the tests. Unprivileged, it
// does nothing: the tests that pin skip.
func setUpBPFFS() (unmount func() error, err error) {
	nothing := func() error { return nil }
	if bpffs.Is("/sys/fs/bpf") {
		bpffsRoot = "/sys/fs/bpf"
		return nothing, nil
	}
	if os.Geteuid() != 0 {
		return nothing, nil
	}
	dir, unmount, err := bpffs.MountPrivate("meshredirect-tc-bpffs-")
	if err != nil {
		return nil, err
	}
	bpffsRoot = dir
	return unmount, nil
}

func openFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(entries)
}

// Environment of the helper process.
const (
	helperPinDir  = "MESHREDIRECT_TC_TEST_PIN_DIR"
	helperIfindex = "MESHREDIRECT_TC_TEST_IFINDEX"
	// The helper's network namespace is its descriptor 3
	// (exec.Cmd.ExtraFiles[0]).
	helperNetnsFD = 3
)

// helperMain attaches a pass program to the ingress of the interface in
// the namespace it was given, as a tcx link pinned in the pin directory,
// prints the attachment as JSON, and exits without detaching.
func helperMain() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	ifindex, err := strconv.Atoi(os.Getenv(helperIfindex))
	if err != nil {
		return fail(err)
	}
	m, err := tc.New(tc.Config{NetnsFD: helperNetnsFD, Mode: tc.ModeTCX, PinDir: os.Getenv(helperPinDir)})
	if err != nil {
		return fail(err)
	}
	defer m.Close()
	prog, err := newPassProgram("helper_pass")
	if err != nil {
		return fail(err)
	}
	defer prog.Close()
	a, err := m.Attach(ifindex, tc.Ingress, "helper_pass", prog)
	if err != nil {
		return fail(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(a); err != nil {
		return fail(err)
	}
	return 0
}
