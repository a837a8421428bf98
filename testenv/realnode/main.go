package realnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// insideEnv marks the test binary that [Main] re-executed inside the node's namespaces.
const insideEnv = "MESHREDIRECT_REALNODE_INSIDE"

// errOutside is why a node cannot start in a process [Main] did not set up.
var errOutside = errors.New("not inside the node's namespaces: call realnode.Main from TestMain")

// Main runs the package's tests in a network and mount namespace of their own, as a real node's
// processes would run on a machine of their own. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(realnode.Main(m)) }
//
// The first call re-executes the test binary under `unshare --net --mount --propagation private`
// and returns its exit code. In the re-executed binary it brings up loopback, makes / rshared
// (the chart's HostToContainer mounts need a shared or slave /; this machine's / is private),
// creates the directories [Start] mounts a tmpfs on where the machine lacks them, runs the
// tests and removes those directories again. The namespaces end with the last process in them,
// so even a crash leaves neither a link nor a mount behind.
//
// Without root or unshare the tests run where they are and [Start] skips them (fails under
// CI=true) with the reason.
func Main(m *testing.M) int {
	if os.Getenv(insideEnv) == "" {
		unshare, err := exec.LookPath("unshare")
		if os.Geteuid() != 0 || err != nil {
			return m.Run()
		}
		cmd := exec.Command(unshare, append([]string{"--net", "--mount", "--propagation", "private", "--", os.Args[0]}, os.Args[1:]...)...)
		cmd.Env = append(os.Environ(), insideEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		err = cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "realnode: re-run the tests in a namespace of their own: %v\n", err)
			return 1
		}
		return 0
	}
	made, err := prepareNamespace()
	if err != nil {
		fmt.Fprintf(os.Stderr, "realnode: prepare the node's namespaces: %v\n", err)
		return 1
	}
	code := m.Run()
	for _, d := range slices.Backward(made) {
		if err := os.Remove(d); err != nil {
			fmt.Fprintf(os.Stderr, "realnode: remove %s, created for the node: %v\n", d, err)
			code = 1
		}
	}
	return code
}

// inside reports whether this process is the one [Main] re-executed in the node's namespaces.
func inside() bool { return os.Getenv(insideEnv) == "1" }

// privateDirs get a tmpfs of their own for each node (see [Node.mount]): everything
// containerd, the kubelet, the CNI plugins and the agent write outside the node's own
// directory. /var/run is a link to /run here and on Debian; /run also holds the pods' netns
// bind mounts, the ZDS and CNI sockets and containerd's shim sockets.
var privateDirs = []string{"/run", "/var/lib/kubelet", "/etc/cni", "/opt/cni", "/var/log", "/etc/ambient-config"}

// prepareNamespace brings up loopback, makes / rshared and creates the missing privateDirs,
// returning those it created on the machine's disk.
func prepareNamespace() ([]string, error) {
	if err := exec.Command("ip", "link", "set", "lo", "up").Run(); err != nil {
		return nil, fmt.Errorf("bring up loopback: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SHARED, ""); err != nil {
		return nil, fmt.Errorf("make / rshared: %w", err)
	}
	var made []string
	for _, dir := range privateDirs {
		created, err := mkdirAll(dir)
		made = append(made, created...)
		if err != nil {
			return made, err
		}
	}
	return made, nil
}

// mount puts a fresh tmpfs on each of privateDirs and a bpffs of the node's own on
// /sys/fs/bpf, so that each node starts empty.
func (n *Node) mount(context.Context) error {
	for _, dir := range privateDirs {
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
		}
		n.mounts = append(n.mounts, dir)
	}
	if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount a bpffs of the node's own on /sys/fs/bpf: %w", err)
	}
	n.mounts = append(n.mounts, "/sys/fs/bpf")
	return nil
}

// unmount undoes mount. MNT_DETACH: the pods' netns bind mounts under /run go with it.
func (n *Node) unmount() error {
	var errs []error
	for _, dir := range slices.Backward(n.mounts) {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", dir, err))
		}
	}
	n.mounts = nil
	return errors.Join(errs...)
}

// mkdirAll creates dir and its missing parents, returning those it created, deepest last.
func mkdirAll(dir string) ([]string, error) {
	var missing []string
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
	}
	slices.Reverse(missing)
	for i, d := range missing {
		if err := os.Mkdir(d, 0o755); err != nil {
			return missing[:i], fmt.Errorf("create %s: %w", d, err)
		}
	}
	return missing, nil
}
