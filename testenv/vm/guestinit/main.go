// Command guestinit is the init of the test VMs that package vm boots: it
// runs as PID 1 from the initramfs, prepares what the privileged tests
// expect of a machine, runs the test binaries of the plan that the host put
// in the initramfs, writes their output to the second serial port between
// marker lines, and restarts the machine, which qemu (-no-reboot) takes as
// the end of the run. It must be built with CGO_ENABLED=0: the initramfs
// has no libc.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshredirect/meshredirect/testenv/vm"
)

func main() {
	if filepath.Base(os.Args[0]) == "modprobe" {
		os.Exit(modprobe(os.Args[1:]))
	}
	// Whatever happens, the machine goes down, so that the host sees the
	// end of the run now rather than at its timeout. Standard output is
	// the console (/dev/console in the initramfs): the host keeps it in
	// console.log.
	defer restart()

	if err := mountAll(); err != nil {
		fmt.Println("guestinit:", err)
		return
	}
	out, err := openOutput(vm.GuestOutput)
	if err != nil {
		fmt.Println("guestinit:", err)
		return
	}
	defer out.drain()

	var uts unix.Utsname
	unix.Uname(&uts)
	out.marker("kernel %s %s", unix.ByteSliceToString(uts.Release[:]), unix.ByteSliceToString(uts.Version[:]))

	plan, err := readPlan("/" + vm.GuestPlanPath)
	if err != nil {
		out.marker("setup %v", err)
		return
	}
	if err := loopbackUp(); err != nil {
		out.marker("setup %v", err)
	}
	loadModules(out)
	if plan.MemlockUnlimited {
		inf := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &inf); err != nil {
			out.marker("setup lift RLIMIT_MEMLOCK: %v", err)
		}
	}

	for _, p := range plan.Packages {
		run(out, plan, p)
		reportModprobe(out, p.Name)
	}
	out.marker("done")
}

// mountAll mounts what a test expects of a booted machine. The bpffs is at
// /sys/fs/bpf, as .ci/run mounts one on the host.
func mountAll() error {
	for _, m := range []struct {
		source, target, fstype, data string
		optional                     bool
	}{
		{"proc", "/proc", "proc", "", false},
		{"sysfs", "/sys", "sysfs", "", false},
		{"devtmpfs", "/dev", "devtmpfs", "", false},
		{"bpf", "/sys/fs/bpf", "bpf", "mode=0700", false},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777", false},
		{"tmpfs", "/run", "tmpfs", "mode=0755", false},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", "", true},
		{"debugfs", "/sys/kernel/debug", "debugfs", "", true},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.source, m.target, m.fstype, 0, m.data); err != nil {
			if m.optional {
				fmt.Printf("guestinit: mount %s on %s: %v\n", m.fstype, m.target, err)
				continue
			}
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	for _, d := range []string{"/root", "/var/run/netns"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// /dev/fd and friends, which devtmpfs does not make.
	for name, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		os.Symlink(target, name)
	}
	return nil
}

func readPlan(file string) (*vm.Plan, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	var p vm.Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("read plan %s: %w", file, err)
	}
	return &p, nil
}

// loopbackUp brings up lo in the initial network namespace, as every
// booted machine has it (the tests make their own namespaces, but a
// library may dial 127.0.0.1 in this one).
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	return nil
}

// loadModules loads the modules listed in load.txt, in that order (the
// host put each one's dependencies before it). A module already there is
// fine; a failure is reported and the tests run anyway, to show what
// fails without it.
func loadModules(out *output) {
	list, err := os.ReadFile("/" + vm.GuestModulesDir + "/load.txt")
	if err != nil {
		out.marker("setup no module list: %v", err)
		return
	}
	for _, name := range strings.Fields(string(list)) {
		err := loadModule("/" + vm.GuestModulesDir + "/" + name + ".ko")
		if err == nil || err == unix.EEXIST {
			out.marker("module %s ok", name)
		} else {
			out.marker("module %s %v", name, err)
		}
	}
}

func loadModule(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// run runs one test binary, with its output going to the serial port, and
// frames it with begin and end markers.
func run(out *output, plan *vm.Plan, p vm.GuestPackage) {
	out.marker("begin %s", p.Name)
	start := time.Now()
	cmd := exec.Command(p.Binary, p.Args...)
	cmd.Dir = p.Dir
	cmd.Env = append([]string{"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root", "TMPDIR=/tmp"}, plan.Env...)
	cmd.Stdout = out
	cmd.Stderr = out
	code := 0
	err := cmd.Start()
	if err == nil {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var timeout <-chan time.Time
		if limit := testTimeout(p.Args); limit > 0 {
			timeout = time.After(limit + time.Duration(plan.KillAfterSeconds)*time.Second)
		}
		select {
		case err = <-done:
		case <-timeout:
			cmd.Process.Kill()
			err = <-done
			fmt.Fprintf(out, "\nguestinit: killed %s: still running %v after its -test.timeout\n", p.Name, time.Duration(plan.KillAfterSeconds)*time.Second)
		}
	}
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() >= 0 {
			code = ee.ExitCode()
		} else {
			fmt.Fprintf(out, "\nguestinit: run %s: %v\n", p.Name, err)
		}
	}
	out.marker("end %s exit=%d seconds=%.2f", p.Name, code, time.Since(start).Seconds())
}

// testTimeout reads -test.timeout from the arguments.
func testTimeout(args []string) time.Duration {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.timeout="); ok {
			d, _ := time.ParseDuration(v)
			return d
		}
	}
	return 0
}

// output is the serial port the tests write to. It remembers whether the
// last byte written ended a line, so that a marker always starts one.
type output struct {
	f       *os.File
	midLine bool
}

// openOutput opens the serial port raw: with the tty's default output
// processing, every \n would reach the host as \r\n.
func openOutput(dev string) (*output, error) {
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s for the tests' output: %w", dev, err)
	}
	if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
		t.Oflag &^= unix.OPOST
		unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
	}
	return &output{f: f}, nil
}

func (o *output) Write(b []byte) (int, error) {
	if len(b) > 0 {
		o.midLine = b[len(b)-1] != '\n'
	}
	return o.f.Write(b)
}

func (o *output) marker(format string, args ...any) {
	var b bytes.Buffer
	if o.midLine {
		b.WriteByte('\n')
	}
	b.WriteString(vm.Marker)
	fmt.Fprintf(&b, format, args...)
	b.WriteByte('\n')
	o.Write(b.Bytes())
}

// drain waits until the UART has sent everything written (tcdrain): the
// restart would otherwise cut off the end of the output.
func (o *output) drain() {
	unix.IoctlSetInt(int(o.f.Fd()), unix.TCSBRK, 1)
}

func restart() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	// Only reached if reboot failed; PID 1 must not exit (the kernel would
	// panic, which also ends the run, but noisily).
	select {}
}

// modprobe is what the kernel runs, as /sbin/modprobe, to load a module on
// demand (request_module: a qdisc by its name, a netlink family, an
// address family). The guest has only the modules the host loaded before
// the tests, so it can load nothing: it notes the request, which init
// reports after the package that caused it, and fails as modprobe does
// for an unknown module.
func modprobe(args []string) int {
	var names []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			names = append(names, a)
		}
	}
	f, err := os.OpenFile(vm.GuestModprobeLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return 1
	}
	defer f.Close()
	fmt.Fprintln(f, strings.Join(names, " "))
	return 1
}

// reportModprobe reports the modules the kernel asked for while pkg ran.
func reportModprobe(out *output, pkg string) {
	b, err := os.ReadFile(vm.GuestModprobeLog)
	if err != nil {
		return
	}
	os.Remove(vm.GuestModprobeLog)
	seen := map[string]bool{}
	var names []string
	for _, n := range strings.Fields(string(b)) {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	if len(names) > 0 {
		out.marker("modprobe %s %s", pkg, strings.Join(names, " "))
	}
}
