package kubeapi

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A control plane's directory holds ~120 MB (etcd preallocates its WAL). Stop removes it, but a
// test binary that dies (a -timeout panic, a SIGKILL) cannot: its children die with it through
// Pdeathsig and the directory stays. So each directory names its owner in ownerFile, and Start
// removes the directories of owners that are gone.
const ownerFile = "owner"

// writeOwner records this process in dir as "<pid> <start time>"; the start time tells a
// reused pid from the owner.
func writeOwner(dir string) error {
	pid := os.Getpid()
	return os.WriteFile(filepath.Join(dir, ownerFile), fmt.Appendf(nil, "%d %s", pid, procStart(pid)), 0o600)
}

// removeStale removes the control plane directories in parent whose owner is no longer running.
// Directories without an owner file are left alone: they may be another process's, just made.
func removeStale(parent string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, "kubeapi-*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) != 2 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil || procStart(pid) == f[1] {
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

// procStart returns the start time of pid in clock ticks since boot (field 22 of
// /proc/<pid>/stat, see proc(5)), or "" if there is no such process or it is a zombie: a test
// binary killed under a parent that does not reap it at once stays one for a while.
func procStart(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// comm, field 2, may contain spaces and parentheses: count fields after the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return ""
	}
	return f[19]
}
