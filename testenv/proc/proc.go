// Package proc runs the long-lived processes of a test environment (a control plane, a
// container runtime, a kubelet): each in its own process group with its output in a log file,
// killed if the test binary dies, stopped with SIGTERM then SIGKILL.
package proc

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// stopGrace is how long a child gets between SIGTERM and SIGKILL.
const stopGrace = 10 * time.Second

// Spawner starts processes from one OS thread that it keeps locked for the life of the
// children. Pdeathsig fires when the *thread* that forked the child exits, not the process
// (prctl(2) PR_SET_PDEATHSIG), and the Go runtime ends a thread whenever a goroutine exits
// while locked to it, as tests that enter a network namespace on a locked thread do. Forking
// from an arbitrary goroutine's thread would let such a test kill the control plane, and would
// put the child in whatever network namespace that thread happened to be in.
type Spawner struct {
	reqs chan *exec.Cmd
	errs chan error
}

func NewSpawner() *Spawner {
	sp := &Spawner{reqs: make(chan *exec.Cmd), errs: make(chan error)}
	started := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(started)
		for cmd := range sp.reqs {
			sp.errs <- cmd.Start()
		}
		// Only reached once every child has been waited for (see close): the thread may
		// now serve other goroutines again.
		runtime.UnlockOSThread()
	}()
	<-started
	return sp
}

func (sp *Spawner) Start(cmd *exec.Cmd) error {
	sp.reqs <- cmd
	return <-sp.errs
}

// Close ends the Spawner's goroutine. Call it only after every child has exited.
func (sp *Spawner) Close() { close(sp.reqs) }

// Process is one running control-plane process with its output in a log file.
type Process struct {
	Name    string        // as given to Start, for messages
	Cmd     *exec.Cmd     // Cmd.Process.Pid is the process (and its group)
	LogPath string        // stdout and stderr
	done    chan struct{} // closed when the process has exited and been waited for
	err     error         // cmd.Wait's result, valid after done
}

// Start runs bin with args in its own process group, killed if this test binary dies,
// with stdout and stderr going to dir/<name>.log.
func Start(sp *Spawner, dir, name, bin string, args, env []string) (*Process, error) {
	logPath := filepath.Join(dir, name+".log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s log: %w", name, err)
	}
	defer log.Close() // the child holds its own copy

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group: a ^C to `go test` reaches only the test binary, which then stops
		// apiserver before etcd, in that order (see Server.Stop).
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := sp.Start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &Process{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// Done is closed when the process has exited and been waited for.
func (c *Process) Done() <-chan struct{} { return c.done }

// Exited reports whether the process has ended, without blocking.
func (c *Process) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// ExitError describes how the child ended, with the tail of its log.
func (c *Process) ExitError() error {
	return fmt.Errorf("%s exited early (%v):\n%s", c.Name, c.err, c.Tail())
}

// Stop sends SIGTERM to the child's process group, then SIGKILL after stopGrace, and waits.
// It returns an error only if the child had to be killed.
func (c *Process) Stop() error {
	if c.Exited() {
		return nil
	}
	pgid := c.Cmd.Process.Pid // Setpgid made the child its group's leader
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(stopGrace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-c.done
	return fmt.Errorf("stop %s: killed after %v without exiting on SIGTERM:\n%s", c.Name, stopGrace, c.Tail())
}

// tailLines is how much of a child's log an error carries.
const tailLines = 40

// Tail returns the last lines of the child's log.
func (c *Process) Tail() string {
	return TailFile(c.LogPath, tailLines)
}

// TailFile returns the last lines of the file at path (at most its last 16 KiB).
func TailFile(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(read log: %v)", err)
	}
	defer f.Close()
	const max = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(fi.Size()-max, io.SeekStart)
	}
	buf, _ := io.ReadAll(f)
	buf = bytes.TrimRight(buf, "\n")
	all := strings.Split(string(buf), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
