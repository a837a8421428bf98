package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const cgroupFS = "/sys/fs/cgroup"

// cgroupRoot is the kubelet's --cgroup-root: the pods' cgroups go under it in every hierarchy,
// away from the machine's own, and are removed at the end. The PID keeps two test binaries
// apart.
func cgroupRoot() string { return fmt.Sprintf("/meshredirect-realnode-%d", os.Getpid()) }

// makeCgroups creates the cgroup root in every hierarchy (the kubelet refuses a root that does
// not exist). On cgroup v1 a new cpuset has no CPUs or memory nodes until given its parent's.
func (n *Node) makeCgroups(context.Context) error {
	if _, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers")); err == nil {
		dir := filepath.Join(cgroupFS, cgroupRoot())
		n.cgroups = append(n.cgroups, dir)
		return os.Mkdir(dir, 0o755)
	}
	entries, err := os.ReadDir(cgroupFS)
	if err != nil {
		return err
	}
	for _, e := range entries {
		h := filepath.Join(cgroupFS, e.Name())
		if fi, err := os.Lstat(h); err != nil || !fi.IsDir() {
			continue // cpu,cpuacct links
		}
		dir := filepath.Join(h, cgroupRoot())
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		n.cgroups = append(n.cgroups, dir)
		if e.Name() == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("set %s of %s: %w", f, dir, err)
				}
			}
		}
	}
	return nil
}

// killPods kills every process in the node's cgroups (the pods' containers and sandboxes) and
// waits until they are gone.
func (n *Node) killPods() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := n.podPIDs()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pods' processes %v still running after SIGKILL", pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// podPIDs lists the processes in the node's cgroups.
func (n *Node) podPIDs() []int {
	var pids []int
	for _, root := range n.cgroups {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for f := range strings.FieldsSeq(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroups removes the node's cgroups, deepest first.
func (n *Node) removeCgroups() error {
	var errs []error
	for _, root := range n.cgroups {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for _, d := range slices.Backward(dirs) {
			if err := removeCgroup(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroup removes one empty cgroup, retrying while the kernel still holds a dying task.
func removeCgroup(dir string) error {
	var err error
	for range 50 {
		if err = syscall.Rmdir(dir); err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

// nodeProcesses returns the processes of the node's mount namespace but this one, with their
// command lines (arguments joined by spaces). Zombies and kernel threads, which have no command
// line, are left out.
func nodeProcesses() (map[int]string, error) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return nil, err
	}
	entries, _ := os.ReadDir("/proc")
	procs := map[int]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if mnt, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); mnt != self {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if len(cmdline) > 0 {
			procs[pid] = string(bytes.ReplaceAll(bytes.TrimRight(cmdline, "\x00"), []byte{0}, []byte{' '}))
		}
	}
	return procs, nil
}

// killShims kills the containerd shims of this mount namespace: they outlive containerd by
// design (a containerd restart must not stop containers) and are no one's child.
func killShims() error {
	var left []int
	for range 100 {
		procs, err := nodeProcesses()
		if err != nil {
			return err
		}
		left = left[:0]
		for pid, cmdline := range procs {
			if strings.Contains(cmdline, "containerd-shim") {
				left = append(left, pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if len(left) == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("containerd shims %v still running after SIGKILL", left)
}

// leftProcesses reports any process but this one still in the node's mount namespace: every
// process the node started must be gone once it stopped.
func leftProcesses() error {
	procs, err := nodeProcesses()
	if err != nil {
		return err
	}
	var left []string
	for pid, cmdline := range procs {
		left = append(left, fmt.Sprintf("%d (%s)", pid, cmdline))
	}
	if len(left) > 0 {
		slices.Sort(left)
		return fmt.Errorf("processes left in the node's mount namespace: %s", strings.Join(left, ", "))
	}
	return nil
}
