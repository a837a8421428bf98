package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cgroup is a cgroup v2 directory the benchmark made. Each copy of the
// topology gets one, with a child per role (proxy, server, client), so
// that cpu.stat of the copy's cgroup sums everything the copy ran.
type cgroup struct {
	path string
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted:
// /sys/fs/cgroup on a unified machine, /sys/fs/cgroup/unified on a hybrid
// one (this VM: the v1 controllers stay where they are, and cpu.stat's
// usage_usec exists in every v2 cgroup without the cpu controller).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// ... mount-point ... - fstype source options
		fields := strings.Fields(s.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("find the cgroup v2 mount: none in /proc/self/mountinfo (mount -t cgroup2 none /sys/fs/cgroup/unified)")
}

// newCgroup creates the cgroup at path (its parent must exist) and
// registers its removal: every process in it is killed first.
func newCgroup(e *env, path string) *cgroup {
	if err := os.Mkdir(path, 0o755); err != nil {
		e.Fatalf("create cgroup %s: %v", path, err)
	}
	cg := &cgroup{path: path}
	e.Cleanup(func() {
		if err := cg.remove(); err != nil {
			e.Errorf("%v", err)
		}
	})
	return cg
}

// child creates a child cgroup.
func (cg *cgroup) child(e *env, name string) *cgroup {
	return newCgroup(e, filepath.Join(cg.path, name))
}

// open returns a file descriptor of the cgroup's directory, for
// CLONE_INTO_CGROUP (a process born in the cgroup, so that its first
// socket already carries what the cgroup's programs set).
func (cg *cgroup) open() (*os.File, error) {
	f, err := os.Open(cg.path)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", cg.path, err)
	}
	return f, nil
}

// usage returns cpu.stat's usage_usec: the CPU time of every process
// that has been in the cgroup or its children, user and system.
func (cg *cgroup) usage() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(cg.path, "cpu.stat"))
	if err != nil {
		return 0, fmt.Errorf("read cpu.stat of cgroup %s: %w", cg.path, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("read cpu.stat of cgroup %s: no usage_usec", cg.path)
}

// remove kills what still runs in the cgroup (cgroup.kill, 5.14+; a
// SIGKILL to each process before) and removes it, waiting a little for
// the processes to go.
func (cg *cgroup) remove() error {
	if _, err := os.Stat(cg.path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(cg.path, "cgroup.kill"), []byte("1"), 0o644); err != nil {
		cg.killEach()
	}
	var err error
	for i := 0; i < 100; i++ {
		if err = os.Remove(cg.path); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", cg.path, err)
}

// killEach sends SIGKILL to each process listed in cgroup.procs.
func (cg *cgroup) killEach() {
	b, _ := os.ReadFile(filepath.Join(cg.path, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
	}
}
