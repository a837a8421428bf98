// Command kernel-matrix runs the privileged test binaries on other kernels
// than the machine's own, each booted with qemu (software emulation when
// there is no KVM), and prints a pass/fail/skip table per kernel and
// package. It exits 1 if a test failed, a package failed, or a guest hung
// or died on any kernel, and 2 if it could not run at all.
//
//	go run ./testenv/cmd/kernel-matrix -kernels bookworm,trixie -summary kernels.md
//
// Kernels are Debian suites, whose current linux-image-<flavour> is
// downloaded once into the cache (apt-get download with an apt
// configuration of its own; nothing is installed on the host), or
// directories holding an unpacked kernel package. A warm run touches no
// network: -refresh asks the archive for newer kernels.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshredirect/meshredirect/testenv"
	"github.com/meshredirect/meshredirect/testenv/vm"
)

// guestInit is the package built as the guest's /init.
const guestInit = "github.com/meshredirect/meshredirect/testenv/vm/guestinit"

type config struct {
	kernels     []string
	pkgs        []string
	modules     []string
	flavour     string
	cacheDir    string
	logDir      string
	summary     string
	timeout     time.Duration
	testTimeout time.Duration
	memory      int
	cpus        int
	parallel    int
	refresh     bool
	kvm         bool
	memlock     bool
	busybox     bool
	cmdline     string
	install     bool
	run         string
	testArgs    []string
	mirror      string
	security    string
	floor       vm.Floor
	floorFile   string
	writeFloor  string
}

func main() {
	cfg, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernel-matrix:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernel-matrix:", err)
	}
	os.Exit(code)
}

func parseFlags() (*config, error) {
	cache, _ := os.UserCacheDir()
	if cache == "" {
		cache = os.TempDir()
	}
	var (
		cfg                              config
		kernels, pkgs, modules, testArgs string
	)
	flag.StringVar(&kernels, "kernels", "bookworm,trixie",
		"comma-separated kernels: Debian suites (bullseye 5.10, bookworm 6.1, trixie and bookworm-backports 6.12), or directories of an unpacked linux-image package")
	flag.StringVar(&pkgs, "pkgs", "./asm,./maps,./tc,./dataplane,./testenv",
		"comma-separated packages whose tests run in the guest; one that does not exist (yet) or has no tests is skipped")
	flag.StringVar(&modules, "modules", strings.Join(vm.DefaultModules, ","),
		"comma-separated kernel modules (names or aliases) to load in the guest, with their dependencies")
	flag.StringVar(&cfg.flavour, "flavour", "amd64", "Debian kernel flavour: linux-image-<flavour> (amd64, cloud-amd64)")
	flag.StringVar(&cfg.cacheDir, "cache", filepath.Join(cache, "meshredirect"), "where kernels and modules archives are kept between runs")
	flag.StringVar(&cfg.logDir, "logs", "", "where each kernel's console.log and output.log go (default <cache>/kernel-matrix-logs)")
	flag.StringVar(&cfg.summary, "summary", "", "also write the markdown table to this file")
	flag.DurationVar(&cfg.timeout, "timeout", 20*time.Minute, "per kernel: kill a guest still running after this long (boot and all packages)")
	flag.DurationVar(&cfg.testTimeout, "test-timeout", 10*time.Minute, "per package: the test binary's -test.timeout in the guest")
	flag.IntVar(&cfg.memory, "memory", 1024, "guest memory in MiB")
	// One CPU: under TCG a second one barely speeds a guest up, two guests
	// of one CPU each use a 2-core machine better, and 6.12 guests with two
	// died of an int3 oops in text_poke_bp (patching the static key that
	// attaching tcx turns on) in 2 of 3 runs of ./tc: emulated cross-CPU
	// code patching, not the kernel. With one CPU, never.
	flag.IntVar(&cfg.cpus, "cpus", 1, "guest CPUs (keep 1 under software emulation: with 2, 6.12 guests oops while patching kernel code)")
	flag.IntVar(&cfg.parallel, "parallel", 0, "kernels booted at once (default: the host's CPUs divided by -cpus: each guest keeps one host CPU busy per guest CPU)")
	flag.BoolVar(&cfg.refresh, "refresh", false, "ask the Debian archive for each suite's current kernel, even if one is cached")
	flag.BoolVar(&cfg.kvm, "kvm", false, "use KVM instead of software emulation (where nested virtualization works: here /dev/kvm exists but guests hang)")
	flag.BoolVar(&cfg.memlock, "memlock-unlimited", false, "lift RLIMIT_MEMLOCK in the guest (by default the tests get the kernel's own: 64 KiB before 5.16, against which 5.10 charges BPF maps)")
	flag.BoolVar(&cfg.busybox, "busybox", true, "put a static busybox and its applets (sh, readlink, ip...) in the guest, for tests that exec a tool")
	flag.StringVar(&cfg.cmdline, "cmdline", "", "more kernel command line (loglevel=7 to see the boot on console.log)")
	flag.BoolVar(&cfg.install, "install", true, "apt-get install what the host lacks: qemu-system-x86, kmod (depmod), busybox-static")
	flag.StringVar(&cfg.run, "run", "", "only run the tests matching this regular expression (-test.run)")
	flag.StringVar(&testArgs, "test-args", "", "more space-separated arguments for every test binary (-test.short, -test.count=2)")
	flag.StringVar(&cfg.mirror, "mirror", "http://deb.debian.org/debian", "Debian archive")
	flag.StringVar(&cfg.floorFile, "floor", "",
		"fail unless each package passes at least the floor file's count on each kernel (\"kernel package least-passed\" lines), reports some test, and exists; not applied with -run")
	flag.StringVar(&cfg.writeFloor, "write-floor", "", "write this run's passed counts to this file as the next floor")
	flag.StringVar(&cfg.security, "security", "http://deb.debian.org/debian-security", "Debian security archive")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: kernel-matrix [flags]\n\nRuns the privileged tests on other kernels in qemu and prints a table.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	cfg.kernels, cfg.pkgs, cfg.modules = splitList(kernels), splitList(pkgs), splitList(modules)
	cfg.testArgs = strings.Fields(testArgs)
	if len(cfg.kernels) == 0 || len(cfg.pkgs) == 0 {
		return nil, errors.New("-kernels and -pkgs must name at least one each")
	}
	if cfg.floorFile != "" && cfg.run == "" {
		f, err := os.Open(cfg.floorFile)
		if err != nil {
			return nil, fmt.Errorf("-floor: %w", err)
		}
		cfg.floor, err = vm.ReadFloor(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("-floor %s: %w", cfg.floorFile, err)
		}
	}
	if cfg.logDir == "" {
		cfg.logDir = filepath.Join(cfg.cacheDir, "kernel-matrix-logs")
	}
	if cfg.parallel <= 0 {
		cfg.parallel = runtime.NumCPU() / max(1, cfg.cpus)
	}
	cfg.parallel = max(1, cfg.parallel)
	return &cfg, nil
}

func run(ctx context.Context, cfg *config) (int, error) {
	start := time.Now()
	root, err := moduleRoot()
	if err != nil {
		return 2, err
	}
	if err := os.MkdirAll(cfg.cacheDir, 0o755); err != nil {
		return 2, err
	}
	if cfg.install {
		if err := vm.EnsureTools(ctx, os.Stderr, cfg.busybox); err != nil {
			return 2, err
		}
	}
	work, err := os.MkdirTemp(cfg.cacheDir, "work-")
	if err != nil {
		return 2, err
	}
	defer os.RemoveAll(work)

	// Each kernel is fetched (the network) while the tests build (the CPU),
	// and boots as soon as both are done and a slot is free.
	var (
		runs     = make([]*vm.KernelRun, len(cfg.kernels))
		built    = make(chan struct{})
		names    []string
		buildErr error
		workload = filepath.Join(work, "workload.cpio")
		slots    = make(chan struct{}, cfg.parallel)
		wg       sync.WaitGroup
	)
	for i, name := range cfg.kernels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := fetchKernel(ctx, cfg, name)
			runs[i] = r
			<-built
			r.Packages = names
			if buildErr != nil || r.Err != nil {
				return
			}
			slots <- struct{}{}
			defer func() { <-slots }()
			boot(ctx, cfg, r, workload, filepath.Join(work, fmt.Sprintf("initrd-%d.cpio", i)))
		}()
	}
	buildErr = func() error {
		tests, initBin, err := build(ctx, cfg, root, work)
		if err != nil {
			return err
		}
		if len(tests) == 0 {
			return fmt.Errorf("none of the packages %s has tests to run", strings.Join(cfg.pkgs, ", "))
		}
		for _, t := range tests {
			names = append(names, t.Name)
		}
		return writeWorkload(cfg, workload, initBin, tests)
	}()
	close(built)
	wg.Wait()
	if buildErr != nil {
		return 2, buildErr
	}

	vm.WriteFailures(os.Stdout, runs)
	fmt.Println()
	vm.WriteMarkdown(os.Stdout, runs)
	if cfg.summary != "" {
		f, err := os.Create(cfg.summary)
		if err != nil {
			return 2, err
		}
		vm.WriteMarkdown(f, runs)
		if err := f.Close(); err != nil {
			return 2, err
		}
	}
	var pass, fail, skip int
	ok := true
	for _, r := range runs {
		a, b, c := r.Counts()
		pass, fail, skip = pass+a, fail+b, skip+c
		ok = ok && r.OK()
	}
	fmt.Printf("\nlogs: %s; whole run %s\n", cfg.logDir, time.Since(start).Round(100*time.Millisecond))
	fmt.Printf("kernels: %d passed, %d failed, %d skipped\n", pass, fail, skip)
	switch {
	case cfg.floor != nil:
		problems := cfg.floor.Check(runs)
		for _, p := range problems {
			fmt.Printf("below the floor (%s): %s\n", cfg.floorFile, p)
		}
		if len(problems) == 0 {
			fmt.Printf("every package is at or above its floor (%s)\n", cfg.floorFile)
		}
		ok = ok && len(problems) == 0
	case cfg.floorFile != "":
		fmt.Printf("the floor (%s) is not applied: -run chose the tests\n", cfg.floorFile)
	}
	if cfg.writeFloor != "" {
		var b strings.Builder
		if err := vm.WriteFloor(&b, runs); err != nil {
			return 1, fmt.Errorf("-write-floor: %w", err)
		}
		if err := os.WriteFile(cfg.writeFloor, []byte(b.String()), 0o644); err != nil {
			return 1, err
		}
	}
	if !ok {
		return 1, nil
	}
	return 0, nil
}

// fetchKernel resolves one -kernels entry to a kernel, downloading it if
// it is not cached.
func fetchKernel(ctx context.Context, cfg *config, name string) *vm.KernelRun {
	r := &vm.KernelRun{Name: name, LogDir: filepath.Join(cfg.logDir, sanitize(name))}
	start := time.Now()
	if strings.ContainsRune(name, '/') {
		r.Kernel, r.Err = vm.LocalKernel(ctx, name)
	} else {
		r.Kernel, r.Err = vm.DebianKernel(ctx, name, vm.DebianOptions{
			CacheDir: cfg.cacheDir,
			Mirror:   cfg.mirror,
			Security: cfg.security,
			Flavour:  cfg.flavour,
			Refresh:  cfg.refresh,
			Log:      prefixed(name),
		})
	}
	r.Fetch = time.Since(start)
	if r.Err == nil {
		fmt.Fprintf(os.Stderr, "%s: %s %s (%s) ready in %.1fs\n", name, r.Kernel.Package, r.Kernel.Version, r.Kernel.Release, r.Fetch.Seconds())
	}
	return r
}

// build compiles the guest's init and a static test binary per package
// that exists and has tests.
func build(ctx context.Context, cfg *config, root, work string) ([]vm.TestBinary, string, error) {
	start := time.Now()
	initBin := filepath.Join(work, "init")
	if err := goCommand(ctx, root, "build", "-trimpath", "-ldflags=-s -w", "-o", initBin, guestInit); err != nil {
		return nil, "", fmt.Errorf("build the guest's init: %w", err)
	}
	var tests []vm.TestBinary
	var failed []string
	for _, pkg := range cfg.pkgs {
		name := strings.TrimPrefix(path.Clean(filepath.ToSlash(pkg)), "./")
		dir := filepath.Join(root, filepath.FromSlash(name))
		if tf, _ := filepath.Glob(filepath.Join(dir, "*_test.go")); len(tf) == 0 {
			if cfg.floor != nil {
				// Under a floor every package named must run: a mistyped
				// one would otherwise pass by testing nothing.
				fmt.Fprintf(os.Stderr, "%s: no such package or no tests\n", pkg)
				failed = append(failed, pkg)
				continue
			}
			fmt.Fprintf(os.Stderr, "skipping %s: no such package or no tests (yet)\n", pkg)
			continue
		}
		bin := filepath.Join(work, "bin", sanitize(name)+".test")
		// -ldflags=-s -w: a fifth smaller, and the initramfs is copied
		// byte by byte by an emulated CPU. Stack traces keep their names.
		if err := goCommand(ctx, root, "test", "-c", "-ldflags=-s -w", "-o", bin, "./"+name); err != nil {
			fmt.Fprintf(os.Stderr, "build tests of %s: %v\n", pkg, err)
			failed = append(failed, pkg)
			continue
		}
		t := vm.TestBinary{Name: name, Binary: bin}
		if st, err := os.Stat(filepath.Join(dir, "testdata")); err == nil && st.IsDir() {
			t.Testdata = filepath.Join(dir, "testdata")
		}
		tests = append(tests, t)
	}
	fmt.Fprintf(os.Stderr, "built init and %d test binaries in %.1fs\n", len(tests), time.Since(start).Seconds())
	if len(failed) > 0 {
		return nil, "", fmt.Errorf("tests of %s do not build (or do not exist)", strings.Join(failed, ", "))
	}
	return tests, initBin, nil
}

func writeWorkload(cfg *config, file, initBin string, tests []vm.TestBinary) error {
	wl := &vm.Workload{
		Init:  initBin,
		Plan:  vm.Plan{Env: []string{"CI=true", "MESHREDIRECT_TEST_VM=1"}, KillAfterSeconds: 60, MemlockUnlimited: cfg.memlock},
		Tests: tests,
		Args:  []string{"-test.v", "-test.timeout=" + cfg.testTimeout.String()},
	}
	if cfg.busybox {
		wl.Busybox = vm.Busybox
	}
	// The ptp and bridge wirings need the reference plugins (make
	// cni-bins); without them those nodes are skipped in the guest.
	if dir, err := testenv.ReferencePlugins(); err == nil {
		wl.CNIPlugins = dir
	} else {
		fmt.Fprintf(os.Stderr, "no reference CNI plugins (%v): the ptp and bridge wirings are skipped in the guests; make cni-bins builds them\n", err)
	}
	if cfg.run != "" {
		wl.Args = append(wl.Args, "-test.run="+cfg.run)
	}
	wl.Args = append(wl.Args, cfg.testArgs...)
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := wl.Write(f); err != nil {
		f.Close()
		return fmt.Errorf("write the initramfs: %w", err)
	}
	return f.Close()
}

// boot builds the kernel's initramfs (its cached modules archive, then the
// workload) and runs the guest.
func boot(ctx context.Context, cfg *config, r *vm.KernelRun, workload, initrd string) {
	log := prefixed(r.Name)
	start := time.Now()
	modules, order, err := vm.CachedModulesArchive(cfg.cacheDir, r.Kernel, cfg.modules)
	if err != nil {
		r.Err = err
		return
	}
	if err := vm.ConcatFiles(initrd, modules, workload); err != nil {
		r.Err = err
		return
	}
	r.Fetch += time.Since(start)
	fmt.Fprintf(log, "booting %s with modules %s (timeout %s)\n", r.Kernel.Release, strings.Join(order, " "), cfg.timeout)
	m := &vm.Machine{
		Kernel:    r.Kernel,
		Initrd:    initrd,
		MemoryMiB: cfg.memory,
		CPUs:      cfg.cpus,
		LogDir:    r.LogDir,
		Timeout:   cfg.timeout,
		KVM:       cfg.kvm,
		Cmdline:   cfg.cmdline,
		OnMarker: func(marker string) {
			fmt.Fprintf(log, "%s (%.1fs)\n", marker, time.Since(start).Seconds())
		},
	}
	r.Boot, r.Err = m.Run(ctx)
	if r.Boot == nil {
		return
	}
	fmt.Fprintf(log, "guest ran %.1fs (%s)\n", r.Boot.Elapsed.Seconds(), r.Boot.Accel)
	if len(r.Boot.Guest.Modprobe) > 0 {
		if ix, err := vm.ReadModuleIndex(r.Kernel.Modules); err == nil {
			r.Providers = map[string]string{}
			for _, names := range r.Boot.Guest.Modprobe {
				for _, n := range names {
					r.Providers[n] = ix.Provider(n)
				}
			}
		}
	}
}

// goCommand runs the go tool in the module's root with CGO_ENABLED=0: the
// guest has no libc.
func goCommand(ctx context.Context, root string, args ...string) error {
	goTool := "go"
	if g := os.Getenv("GO"); g != "" {
		goTool = g
	}
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", args[0], err, out)
	}
	return nil
}

// moduleRoot finds the directory of go.mod from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod here or above: run kernel-matrix in the repository")
		}
		dir = parent
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func sanitize(s string) string {
	return strings.Trim(strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' {
			return '_'
		}
		return r
	}, s), "_.")
}

// prefixed writes progress lines to standard error, each prefixed with the
// kernel's name.
func prefixed(name string) io.Writer { return &prefixWriter{name: name} }

type prefixWriter struct {
	mu   sync.Mutex
	name string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			fmt.Fprintf(os.Stderr, "%s: %s", p.name, l)
		}
	}
	return len(b), nil
}
