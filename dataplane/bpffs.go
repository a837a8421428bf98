package dataplane

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/internal/bpffs"
	"github.com/meshredirect/meshredirect/maps"
)

// BPFFSRoot is where a bpffs is mounted on a node.
const BPFFSRoot = "/sys/fs/bpf"

// Whether Open may mount a bpffs at BPFFSRoot when the pin directory is
// not on one.
const (
	// MountBPFFSAuto mounts only where the mount is the host's: in the
	// mount namespace of PID 1. In a container (the DaemonSet runs with
	// hostPID, so PID 1 is the host's init) a mount would stay inside the
	// container and vanish with it, taking the pins along: there Open
	// stops and says what to do instead.
	MountBPFFSAuto = "auto"
	// MountBPFFSAlways always mounts (tests, private mount namespaces).
	MountBPFFSAlways = "always"
	// MountBPFFSNever never mounts.
	MountBPFFSNever = "never"
)

// openMaps opens the pinned maps, mounting a bpffs first if the pin
// directory is not on one and the mode allows it.
func openMaps(cfg Config) (*maps.Set, error) {
	opts := maps.Options{PinDir: cfg.pinDir(), PodsMaxEntries: cfg.PodsMaxEntries, ReplaceIncompatible: cfg.ReplaceIncompatiblePins}
	set, err := maps.Open(opts)
	if !errors.Is(err, maps.ErrNotBPFFS) {
		return set, err
	}
	mode := cfg.MountBPFFS
	if mode == "" {
		mode = MountBPFFSAuto
	}
	if !strings.HasPrefix(cfg.pinDir()+"/", BPFFSRoot+"/") {
		return nil, err
	}
	hint := "mount one on the host: mount -t bpf bpf /sys/fs/bpf (systemd: the sys-fs-bpf.mount unit), then start the agent again"
	switch mode {
	case MountBPFFSNever:
		return nil, fmt.Errorf("%w; %s", err, hint)
	case MountBPFFSAuto:
		host, herr := inHostMountNamespace()
		if herr != nil || !host {
			return nil, fmt.Errorf("%w; this process is not in the host's mount namespace, where a mount would outlive it: %s", err, hint)
		}
	case MountBPFFSAlways:
	default:
		return nil, fmt.Errorf("mount bpffs: unknown mode %q (want auto, always or never)", mode)
	}
	if merr := bpffs.Mount(BPFFSRoot); merr != nil {
		return nil, fmt.Errorf("%w; %v; %s", err, merr, hint)
	}
	if cfg.Log != nil {
		cfg.Log.Info("mounted a bpffs for the pins", "at", BPFFSRoot)
	}
	return maps.Open(opts)
}

// inHostMountNamespace reports whether this process shares PID 1's mount
// namespace.
func inHostMountNamespace() (bool, error) {
	var self, init unix.Stat_t
	if err := unix.Stat("/proc/self/ns/mnt", &self); err != nil {
		return false, err
	}
	if err := unix.Stat("/proc/1/ns/mnt", &init); err != nil {
		return false, err
	}
	return self.Ino == init.Ino && self.Dev == init.Dev, nil
}
