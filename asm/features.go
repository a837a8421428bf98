package asm

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Detect returns the options this kernel supports: bpf_redirect_peer where
// the kernel has it (5.10+), bpf_redirect elsewhere.
func Detect() (Options, error) {
	opts := DefaultOptions()
	err := features.HaveProgramHelper(ebpf.SchedCLS, asm.FnRedirectPeer)
	switch {
	case err == nil:
	case errors.Is(err, ebpf.ErrNotSupported):
		opts.RedirectPeer = false
	default:
		return opts, fmt.Errorf("probe bpf_redirect_peer: %w (run as root, or with CAP_BPF and CAP_NET_ADMIN)", err)
	}
	return opts, nil
}

// AssignsReuseport reports whether this kernel's bpf_sk_assign takes a
// listener with SO_REUSEPORT (Linux 6.5, "bpf, net: Support SO_REUSEPORT
// sockets with bpf_sk_assign"). Before, it refuses one, and ztunnel's
// listeners must be opened without it (ztunnel's INPOD_PORT_REUSE=false).
// The kernel's release is read, as the helper's behaviour has no probe.
func AssignsReuseport() bool {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(uts.Release[:]), 6, 5)
}

// kernelAtLeast tells whether release ("6.1.0-18-amd64") is at least
// major.minor.
func kernelAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}
