package asm

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
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
