package vm

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// DefaultModules are the kernel modules the privileged tests need: veth
// pairs, the clsact qdisc, bpf filters, the bridge testenv joins its nodes
// with, the VXLAN device of the security tests' overlay, the Geneve device
// and FOU receiver whose ports the dataplane reads as the node's tunnel
// ports, the socket diagnostics (inet_diag, tcp_diag) the semantics flows
// list ztunnel's sockets with, and the netlink families that vishvananda/netlink opens in every
// handle (NETLINK_XFRM, NETLINK_NETFILTER), which a full system would load
// on demand. clsact lives in sch_ingress, named here rather than by an
// alias: 5.10 and 6.1 have the alias sch_clsact, 6.12 only net-sch-clsact.
// A module the kernel has built in is skipped.
var DefaultModules = []string{"veth", "sch_ingress", "cls_bpf", "bridge", "vxlan", "geneve", "fou", "inet_diag", "tcp_diag", "xfrm_user", "nfnetlink"}

// ModuleIndex is what depmod wrote for one kernel: where each module is,
// what it depends on, its aliases, and which modules are built in.
type ModuleIndex struct {
	dir     string              // lib/modules/<release>
	path    map[string]string   // module name -> path relative to dir
	deps    map[string][]string // module name -> names it needs
	alias   map[string]string   // alias -> module name
	globs   [][2]string         // alias patterns (pci:v*d*...) and their module
	builtin map[string]bool
}

// ReadModuleIndex reads modules.dep, modules.alias and modules.builtin of
// the modules directory dir (lib/modules/<release>).
func ReadModuleIndex(dir string) (*ModuleIndex, error) {
	ix := &ModuleIndex{dir: dir, path: map[string]string{}, deps: map[string][]string{}, alias: map[string]string{}, builtin: map[string]bool{}}
	err := eachLine(filepath.Join(dir, "modules.dep"), func(line string) {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		name := moduleName(mod)
		ix.path[name] = mod
		for _, d := range strings.Fields(deps) {
			ix.deps[name] = append(ix.deps[name], moduleName(d))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read module dependencies: %w (was depmod run for this kernel?)", err)
	}
	// The other two are optional: without them, only plain names resolve.
	eachLine(filepath.Join(dir, "modules.alias"), func(line string) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "alias" {
			if strings.ContainsAny(f[1], "*?[") {
				ix.globs = append(ix.globs, [2]string{f[1], normalizeModule(f[2])})
			} else {
				ix.alias[normalizeModule(f[1])] = normalizeModule(f[2])
			}
		}
	})
	eachLine(filepath.Join(dir, "modules.builtin"), func(line string) {
		ix.builtin[moduleName(line)] = true
	})
	return ix, nil
}

// Load returns the modules to load, in an order in which each one's
// dependencies come before it, for the given module names or aliases.
// Modules built into the kernel are left out; a name that is neither a
// module nor built in is an error naming it.
func (ix *ModuleIndex) Load(names []string) ([]string, error) {
	var order []string
	seen := map[string]bool{}
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		for _, d := range ix.deps[name] {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		if _, ok := ix.path[name]; !ok {
			return fmt.Errorf("module %s (needed by %s) is not in modules.dep", name, strings.Join(chain, " <- "))
		}
		order = append(order, name)
		return nil
	}
	for _, n := range names {
		name, err := ix.resolve(n)
		if err != nil {
			return nil, err
		}
		if name == "" {
			continue // built in
		}
		if err := visit(name, []string{n}); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// resolve maps a module name or alias to a module name, or "" when the
// kernel has it built in.
func (ix *ModuleIndex) resolve(n string) (string, error) {
	name := normalizeModule(n)
	for range 2 {
		if ix.builtin[name] {
			return "", nil
		}
		if _, ok := ix.path[name]; ok {
			return name, nil
		}
		a, ok := ix.alias[name]
		if !ok {
			break
		}
		name = a
	}
	return "", fmt.Errorf("module %s: neither built into this kernel nor in %s", n, ix.dir)
}

// Provider returns the module that provides a name the kernel asked
// modprobe for (a module name or an alias such as net-pf-16-proto-6), or
// "" if none does.
func (ix *ModuleIndex) Provider(name string) string {
	if m, err := ix.resolve(name); err == nil {
		return m
	}
	for _, g := range ix.globs {
		if ok, _ := path.Match(g[0], name); ok {
			return g[1]
		}
	}
	return ""
}

// Read returns the module's object, decompressed: the guest loads it with
// finit_module and no flags, which works on every kernel, whereas
// in-kernel decompression needs 6.0 and CONFIG_MODULE_DECOMPRESS.
func (ix *ModuleIndex) Read(name string) ([]byte, error) {
	rel, ok := ix.path[name]
	if !ok {
		return nil, fmt.Errorf("module %s is not in modules.dep", name)
	}
	file := filepath.Join(ix.dir, rel)
	switch filepath.Ext(file) {
	case ".ko":
		return os.ReadFile(file)
	case ".gz":
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", file, err)
		}
		return io.ReadAll(zr)
	case ".xz":
		return decompressWith(file, "xz", "xz-utils")
	case ".zst":
		return decompressWith(file, "zstd", "zstd")
	}
	return nil, fmt.Errorf("module %s: unknown compression of %s", name, file)
}

// decompressWith runs a decompressor found on the host, rather than
// adding a Go dependency to the module for a test tool.
func decompressWith(file, tool, debianPackage string) ([]byte, error) {
	if _, err := exec.LookPath(tool); err != nil {
		return nil, fmt.Errorf("decompress %s: %w (apt-get install %s)", file, err, debianPackage)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(tool, "-dc", file)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w: %s", file, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// moduleName turns "kernel/net/sched/cls_bpf.ko.xz" into "cls_bpf".
func moduleName(p string) string {
	base := filepath.Base(strings.TrimSpace(p))
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return normalizeModule(base)
}

// normalizeModule spells a module name as the kernel does: '-' and '_'
// are the same in module names.
func normalizeModule(n string) string { return strings.ReplaceAll(n, "-", "_") }

// eachLine calls fn with every line of the file.
func eachLine(file string, fn func(string)) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		fn(s.Text())
	}
	return s.Err()
}

// ModulesArchive writes a cpio archive of the modules to load for names,
// decompressed, as modules/<name>.ko, and modules/load.txt listing them in
// load order. It returns the load order.
func ModulesArchive(w io.Writer, ix *ModuleIndex, names []string) ([]string, error) {
	order, err := ix.Load(names)
	if err != nil {
		return nil, err
	}
	cw := NewCPIOWriter(w)
	if err := cw.Dir(GuestModulesDir, 0o755); err != nil {
		return nil, err
	}
	for _, m := range order {
		obj, err := ix.Read(m)
		if err != nil {
			return nil, err
		}
		if err := cw.File(GuestModulesDir+"/"+m+".ko", 0o644, obj); err != nil {
			return nil, err
		}
	}
	if err := cw.File(GuestModulesDir+"/load.txt", 0o644, []byte(strings.Join(order, "\n")+"\n")); err != nil {
		return nil, err
	}
	return order, cw.Close()
}
