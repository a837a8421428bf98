package vm

import (
	"bufio"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// TestBinary is a compiled test binary to run in the guest.
type TestBinary struct {
	Name     string // "asm": the package, as the report names it
	Binary   string // host path of the go test -c output
	Testdata string // host path of the package's testdata, or ""
}

// Workload is the part of the initramfs that is the same for every kernel:
// the init, the plan, the test binaries and their testdata, and a busybox.
type Workload struct {
	// Init is the host path of the guest's init (package guestinit, built
	// static).
	Init string
	// Busybox, if set, is the host path of a static busybox, installed as
	// /bin/busybox with a link for each applet, so that tests that exec a
	// common tool (readlink, ip, sh) find one.
	Busybox string
	// Plan is written with a GuestPackage added for each of Tests.
	Plan  Plan
	Tests []TestBinary
	// Args are given to every test binary.
	Args []string
	// CNIPlugins, if set, is a host directory with the reference CNI
	// plugins (ptp, bridge, host-local: static Go binaries), installed as
	// GuestCNIDir and named to the tests by MESHREDIRECT_CNI_CACHE, so that
	// nodes of the ptp and bridge wirings run in the guest too.
	CNIPlugins string
}

// cniPlugins are the plugins CNIPlugins must hold (testenv.ReferencePlugins).
var cniPlugins = []string{"ptp", "bridge", "host-local"}

// Write writes the workload as a cpio archive: /init, /vm/plan.json, and
// each test binary with its testdata under /pkg/<name>, the binary's
// working directory.
func (wl *Workload) Write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := NewCPIOWriter(bw)
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run", "root"} {
		if err := cw.Dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := cw.CopyFile("init", wl.Init); err != nil {
		return fmt.Errorf("add init to initramfs: %w", err)
	}
	if err := cw.Symlink(GuestModprobe, "/init"); err != nil {
		return err
	}
	if wl.Busybox != "" {
		if err := addBusybox(cw, wl.Busybox); err != nil {
			return err
		}
	}
	plan := wl.Plan
	if wl.CNIPlugins != "" {
		for _, p := range cniPlugins {
			host := filepath.Join(wl.CNIPlugins, p)
			if err := checkStatic(host); err != nil {
				return fmt.Errorf("add CNI plugin %s to initramfs: %w", p, err)
			}
			if err := cw.CopyFile(path.Join(GuestCNIDir, p), host); err != nil {
				return fmt.Errorf("add CNI plugin %s to initramfs: %w", p, err)
			}
		}
		plan.Env = append(plan.Env, "MESHREDIRECT_CNI_CACHE=/"+GuestCNIDir)
	}
	for _, t := range wl.Tests {
		dir := path.Join(GuestPkgDir, t.Name)
		bin := path.Join(dir, path.Base(t.Name)+".test")
		if err := cw.CopyFile(bin, t.Binary); err != nil {
			return fmt.Errorf("add %s to initramfs: %w", t.Name, err)
		}
		if t.Testdata != "" {
			if err := cw.CopyTree(path.Join(dir, "testdata"), t.Testdata); err != nil {
				return fmt.Errorf("add testdata of %s to initramfs: %w", t.Name, err)
			}
		}
		plan.Packages = append(plan.Packages, GuestPackage{Name: t.Name, Dir: "/" + dir, Binary: "/" + bin, Args: wl.Args})
	}
	b, err := json.MarshalIndent(plan, "", "  ")
	if err != nil {
		return err
	}
	if err := cw.File(GuestPlanPath, 0o644, b); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// addBusybox adds busybox and a link for each of its applets, except
// modprobe: the kernel's modprobe is init's (see GuestModprobe).
func addBusybox(cw *CPIOWriter, hostPath string) error {
	if err := checkStatic(hostPath); err != nil {
		return err
	}
	out, err := exec.Command(hostPath, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("list the applets of %s: %w", hostPath, err)
	}
	if err := cw.CopyFile("bin/busybox", hostPath); err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == GuestModprobe || applet == "bin/busybox" || applet == "init" || applet == "linuxrc" {
			continue
		}
		if err := cw.Symlink(applet, "/bin/busybox"); err != nil {
			return err
		}
	}
	return nil
}

// checkStatic makes sure a binary needs no dynamic loader: the guest has
// none.
func checkStatic(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is linked dynamically (apt-get install busybox-static)", file)
		}
	}
	return nil
}

// CachedModulesArchive returns the path of a cpio archive of the modules
// that names need on kernel k (see ModulesArchive), and their load order.
// It is built once per kernel and module list, and kept in cacheDir.
func CachedModulesArchive(cacheDir string, k *Kernel, names []string) (file string, order []string, err error) {
	sum := sha256.Sum256([]byte(k.Modules + "\x00" + strings.Join(names, ",")))
	file = filepath.Join(cacheDir, "initramfs", k.Release+"-modules-"+hex.EncodeToString(sum[:6])+".cpio")
	orderFile := file + ".order"
	if b, err := os.ReadFile(orderFile); err == nil {
		if _, err := os.Stat(file); err == nil {
			return file, strings.Fields(string(b)), nil
		}
	}
	ix, err := ReadModuleIndex(k.Modules)
	if err != nil {
		return "", nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return "", nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".modules-*.cpio")
	if err != nil {
		return "", nil, err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	order, err = ModulesArchive(bw, ix, names)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", nil, fmt.Errorf("modules for %s: %w", k.Release, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return "", nil, err
	}
	return file, order, writeFileAtomic(orderFile, []byte(strings.Join(order, "\n")+"\n"))
}

// ConcatFiles writes the files one after the other into dst. The kernel
// unpacks concatenated cpio archives as one initramfs.
func ConcatFiles(dst string, srcs ...string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	for _, s := range srcs {
		in, err := os.Open(s)
		if err != nil {
			out.Close()
			return err
		}
		_, err = io.Copy(out, in)
		in.Close()
		if err != nil {
			out.Close()
			return fmt.Errorf("write %s into %s: %w", s, dst, err)
		}
	}
	return out.Close()
}
