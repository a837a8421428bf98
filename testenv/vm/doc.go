// Package vm runs test binaries on other kernels than the machine's own: it
// fetches a Debian kernel, builds a small initramfs around the test binaries
// (a newc cpio archive written here, a Go init, the kernel modules the tests
// need), boots it with qemu-system-x86_64, and reads the tests' output back
// over a serial port.
//
// The guest is as small as software emulation (TCG, no KVM) makes
// worthwhile: no disk, no network, no shell. Its init (package guestinit)
// mounts proc, sysfs, devtmpfs, bpffs and a tmpfs, loads the modules in
// dependency order, runs each test binary with CI=true and -test.v, and
// restarts the machine, which qemu (-no-reboot) takes as the end.
//
// The serial ports:
//
//	ttyS0  the kernel console and init's own messages (console.log)
//	ttyS1  the test binaries' output, framed by Marker lines (output.log)
//
// Kept apart, a kernel message can never land inside a test's output.
package vm
