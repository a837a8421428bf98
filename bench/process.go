package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshredirect/meshredirect/testenv"
)

// process is a program the benchmark started in a namespace and a cgroup:
// a stand-in, a server or a load generator. It is killed at the end.
type process struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *tail
	done   chan struct{}
	err    error
}

// startProcess starts argv inside ns, born in cgroup cg (CLONE_INTO_CGROUP)
// and pinned to cpu (taskset) when cpu >= 0, and waits until it prints
// "ready" on its standard output.
func startProcess(e *env, ns *testenv.Namespace, cg *cgroup, cpu int, name string, argv []string, extraEnv ...string) *process {
	if cpu >= 0 {
		argv = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cgf, err := cg.open()
	if err != nil {
		e.Fatal(err)
	}
	defer cgf.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    int(cgf.Fd()),
		Pdeathsig:   syscall.SIGKILL,
	}
	p := &process{name: name, cmd: cmd, stderr: &tail{max: 8 << 10}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		e.Fatalf("start %s: %v", name, err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.Fatalf("start %s: %v", name, err)
	}
	p.lines = make(chan string, 16)
	if err := ns.Start(cmd); err != nil {
		e.Fatalf("start %s (%s): %v", name, strings.Join(argv, " "), err)
	}
	go func() {
		// One reader for the process's whole life: lines are answers.
		s := bufio.NewScanner(out)
		s.Buffer(make([]byte, 64<<10), 4<<20)
		for s.Scan() {
			p.lines <- strings.TrimSpace(s.Text())
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	e.Cleanup(p.stop)
	line, err := p.readLine(20 * time.Second)
	if err != nil || line != "ready" {
		e.Fatalf("start %s: it did not say ready (got %q, %v): %s", name, line, err, p.stderr.String())
	}
	return p
}

// readLine reads a line of the process's output within timeout.
func (p *process) readLine(timeout time.Duration) (string, error) {
	select {
	case l := <-p.lines:
		return l, nil
	case <-p.done:
		return "", fmt.Errorf("%s exited: %v: %s", p.name, p.err, p.stderr.String())
	case <-time.After(timeout):
		return "", fmt.Errorf("%s: no answer in %s", p.name, timeout)
	}
}

// stop kills the process and waits for it.
func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}
