package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

var memlock sync.Once

// InCI reports whether the tests run under CI (CI=true), where a test that
// lacks what it needs must fail instead of skipping, so that CI can never go
// green without running it.
func InCI() bool {
	return os.Getenv("CI") == "true"
}

// InVM reports whether the test runs as a guest of the kernel matrix
// (testenv/vm), which sets MESHREDIRECT_TEST_VM=1: its initramfs holds the
// test binaries and kernel modules, not the machine's command-line tools.
func InVM() bool {
	return os.Getenv("MESHREDIRECT_TEST_VM") == "1"
}

// RequireTool returns the path of the command name, or skips the test when
// it is missing: under CI it fails instead, except in a kernel matrix guest,
// which has no tools (the test runs natively in make test).
func RequireTool(tb testing.TB, name, why string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	MissingPrerequisite(tb, fmt.Sprintf("needs %s %s", name, why))
	return ""
}

// MissingPrerequisite stops a test that lacks something the machine should
// provide (a command, a built binary), with reason: it skips, fails under
// CI, and skips again in a kernel matrix guest, which has neither tools nor
// built binaries (the test runs natively in make test).
func MissingPrerequisite(tb testing.TB, reason string) {
	tb.Helper()
	if InVM() {
		tb.Skip(reason + " (not in the kernel matrix guest; runs natively in make test)")
	}
	SkipOrFail(tb, reason)
}

// SkipOrFail skips the test with reason, or fails it under CI.
func SkipOrFail(tb testing.TB, reason string) {
	tb.Helper()
	if InCI() {
		tb.Fatalf("%s (CI=true: this test must run)", reason)
	}
	tb.Skip(reason)
}

// RequirePrivileged skips (or, under CI, fails) a test that needs to load BPF
// programs and change network namespaces, when the process lacks CAP_BPF,
// CAP_NET_ADMIN and CAP_SYS_ADMIN. It also lifts RLIMIT_MEMLOCK, which
// kernels before 5.11 charge BPF maps and programs against.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	memlock.Do(func() { rlimit.RemoveMemlock() })
	for _, c := range []struct {
		capability int
		name       string
	}{{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}, {unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"}, {unix.CAP_BPF, "CAP_BPF"}} {
		if !hasCapability(c.capability) {
			SkipOrFail(tb, "needs "+c.name+" (run the tests as root)")
			return
		}
	}
}

// hasCapability reports whether capability is in the effective set.
func hasCapability(capability int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[capability/32].Effective&(1<<(uint(capability)%32)) != 0
}
