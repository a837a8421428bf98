package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// QEMU is the emulator binary (Debian package qemu-system-x86).
const QEMU = "qemu-system-x86_64"

// qboot is a minimal firmware that Debian's qemu-system-data ships.
const qboot = "/usr/share/qemu/qboot.rom"

// Machine is one boot of a kernel with an initramfs.
type Machine struct {
	Kernel *Kernel
	Initrd string
	// MemoryMiB and CPUs size the guest.
	MemoryMiB, CPUs int
	// Cmdline is added to the kernel command line.
	Cmdline string
	// LogDir receives console.log (ttyS0: the kernel and init) and
	// output.log (ttyS1: the tests).
	LogDir string
	// Timeout kills the guest, hung or too slow, this long after qemu
	// starts.
	Timeout time.Duration
	// KVM runs the guest with hardware virtualization instead of software
	// emulation (TCG). It is not chosen by the presence of /dev/kvm: where
	// nested virtualization is broken, /dev/kvm opens and the guest hangs
	// in early boot (so on the machines this project runs on).
	KVM bool
	// OnMarker is called with each marker line as it arrives, for progress.
	OnMarker func(marker string)
}

// Boot is what became of a Machine's run.
type Boot struct {
	Guest    *GuestRun
	Elapsed  time.Duration // qemu's wall time
	TimedOut bool
	// Accel is how the guest ran: "kvm", or "tcg" (software emulation).
	Accel string
	// QEMUError is set when qemu itself failed: it exited non-zero, or
	// could not start.
	QEMUError error
	// ConsoleTail is the end of console.log, for a guest that died.
	ConsoleTail []string
}

// Run boots the machine and waits for it to power off, or for its
// timeout. The tests' output is parsed as it streams out of the serial
// port, so that a guest killed at its timeout still reports what it got
// through.
func (m *Machine) Run(ctx context.Context) (*Boot, error) {
	if err := os.MkdirAll(m.LogDir, 0o755); err != nil {
		return nil, err
	}
	consoleLog := filepath.Join(m.LogDir, "console.log")
	outputLog, err := os.Create(filepath.Join(m.LogDir, "output.log"))
	if err != nil {
		return nil, err
	}
	defer outputLog.Close()

	accel, cpu := "tcg", "max"
	if m.KVM {
		accel, cpu = "kvm", "host"
	}
	cmdline := strings.Join([]string{
		"console=ttyS0,115200", "panic=-1", "oops=panic", "rdinit=/init",
		// Under emulation every speculation barrier is expensive, and
		// nothing in the guest is secret.
		"mitigations=off",
		// The emulated TSC is steady enough; without this, the clocksource
		// watchdog may fall back to the slow HPET.
		"tsc=reliable",
		"quiet", "loglevel=4", m.Cmdline,
	}, " ")
	args := []string{
		"-machine", "pc,accel=" + accel, "-cpu", cpu,
		"-smp", strconv.Itoa(m.CPUs), "-m", strconv.Itoa(m.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", m.Kernel.Image, "-initrd", m.Initrd, "-append", cmdline,
	}
	if _, err := os.Stat(qboot); err == nil {
		// qboot does just what booting with -kernel needs, a second sooner
		// than SeaBIOS under emulation.
		args = append(args, "-bios", qboot)
	}
	args = append(args,
		// ttyS0, then ttyS1 on standard output, read below.
		"-serial", "file:"+consoleLog,
		"-serial", "stdio",
		"-monitor", "none",
	)

	ctx, cancel := context.WithTimeout(ctx, m.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, QEMU, args...)
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	os.WriteFile(filepath.Join(m.LogDir, "qemu.args"), []byte(QEMU+" '"+strings.Join(args, "' '")+"'\n"), 0o644)

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w (apt-get install qemu-system-x86)", QEMU, err)
	}
	gp := NewGuestParser()
	r := bufio.NewReaderSize(io.TeeReader(stdout, outputLog), 64<<10)
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			if mk := gp.Line(strings.TrimSuffix(line, "\n")); mk != "" && m.OnMarker != nil {
				m.OnMarker(mk)
			}
		}
		if err != nil {
			break
		}
	}
	werr := cmd.Wait()
	b := &Boot{Guest: gp.Result(), Elapsed: time.Since(start), Accel: accel}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		b.TimedOut = true
	} else if werr != nil {
		b.QEMUError = fmt.Errorf("%s: %w: %s", QEMU, werr, strings.TrimSpace(stderr.String()))
	}
	if !b.Guest.Done {
		b.ConsoleTail = consoleTail(consoleLog)
	}
	return b, nil
}

// consoleTail returns what explains a guest's death: the console from the
// first oops, BUG or panic on (a stack trace is useless without its first
// lines), or else its last lines.
func consoleTail(file string) []string {
	b, err := os.ReadFile(file)
	if err != nil {
		return []string{err.Error()}
	}
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(string(b), "\r", ""), "\n"), "\n")
	for i, l := range lines {
		for _, sign := range []string{"Oops:", "BUG:", "kernel BUG", "general protection fault", "Kernel panic"} {
			if strings.Contains(l, sign) {
				return lines[i:min(len(lines), i+150)]
			}
		}
	}
	return lines[max(0, len(lines)-40):]
}

// Busybox is where Debian's busybox-static installs a static busybox.
const Busybox = "/bin/busybox"

// EnsureTools installs, with apt-get, what the host lacks to run guests:
// qemu-system-x86 for the emulator, kmod for depmod (Debian's kernel
// packages leave modules.dep to their postinst), and, if busybox is set,
// busybox-static for the guest's tools. It needs root on a Debian machine;
// otherwise it says what to install.
func EnsureTools(ctx context.Context, log io.Writer, busybox bool) error {
	var missing []string
	if _, err := exec.LookPath(QEMU); err != nil {
		missing = append(missing, "qemu-system-x86")
	}
	if _, err := depmodPath(); err != nil {
		missing = append(missing, "kmod")
	}
	if busybox && checkStatic(Busybox) != nil {
		missing = append(missing, "busybox-static")
	}
	if len(missing) == 0 {
		return nil
	}
	if unix.Geteuid() != 0 {
		return fmt.Errorf("missing tools (apt-get install %s)", strings.Join(missing, " "))
	}
	fmt.Fprintf(log, "installing %s\n", strings.Join(missing, " "))
	for _, args := range [][]string{
		{"update", "-qq"},
		append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...),
	} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w: %s", args[0], err, out)
		}
	}
	if _, err := exec.LookPath(QEMU); err != nil {
		return err
	}
	if busybox {
		if err := checkStatic(Busybox); err != nil {
			return err
		}
	}
	_, err := depmodPath()
	return err
}

// depmodPath finds depmod, which is in /sbin, not always in PATH.
func depmodPath() (string, error) {
	if p, err := exec.LookPath("depmod"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/depmod", "/sbin/depmod"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("depmod not found (apt-get install kmod)")
}
