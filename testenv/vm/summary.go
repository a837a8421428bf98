package vm

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// KernelRun is what one kernel came to: the tests it ran, or why it ran
// none.
type KernelRun struct {
	// Name is what was asked for ("bookworm"); Kernel what it resolved to,
	// nil if it could not be had.
	Name   string
	Kernel *Kernel
	// Packages are the packages that should have run, in order.
	Packages []string
	// Err is why the kernel was not booted, or qemu failed.
	Err  error
	Boot *Boot
	// Fetch is the time taken to have the kernel (download and unpack, or
	// nothing when cached) and its modules archive.
	Fetch time.Duration
	// LogDir holds console.log and output.log.
	LogDir string
	// Providers maps what the kernel asked modprobe for in the guest to
	// the module that provides it ("" if none does).
	Providers map[string]string
}

// Label names the kernel in the table.
func (r *KernelRun) Label() string {
	if r.Kernel != nil && r.Kernel.Label != "" {
		return r.Kernel.Label
	}
	return r.Name
}

// OK reports whether every package ran to the end with no failure.
func (r *KernelRun) OK() bool {
	if r.Err != nil || r.Boot == nil || r.Boot.TimedOut || r.Boot.QEMUError != nil || !r.Boot.Guest.Done {
		return false
	}
	for _, name := range r.Packages {
		if p := r.Boot.Guest.Package(name); p == nil || !p.OK() {
			return false
		}
	}
	return true
}

// Counts adds up the tests of every package.
func (r *KernelRun) Counts() (pass, fail, skip int) {
	if r.Boot == nil {
		return 0, 0, 0
	}
	for _, p := range r.Boot.Guest.Packages {
		a, b, c := p.Counts()
		pass, fail, skip = pass+a, fail+b, skip+c
	}
	return pass, fail, skip
}

// vmResult says how the guest as a whole ended.
func (r *KernelRun) vmResult() string {
	switch {
	case r.Err != nil:
		return "error: " + oneLine(r.Err.Error())
	case r.Boot.TimedOut:
		return fmt.Sprintf("**hung**: killed after %s", r.Boot.Elapsed.Round(time.Second))
	case r.Boot.QEMUError != nil:
		return "error: " + oneLine(r.Boot.QEMUError.Error())
	case !r.Boot.Guest.Done:
		return "**guest died** (see console.log)"
	case !r.OK():
		return "**FAIL**"
	}
	return "ok"
}

// packageResult says how one package ended on this kernel.
func (r *KernelRun) packageResult(p *PackageRun) string {
	_, fail, _ := p.Counts()
	switch {
	case !p.Finished && r.Boot.TimedOut:
		return "**hung** (VM killed)"
	case !p.Finished:
		return "**died** (VM went down)"
	case p.ExitCode != 0 && fail == 0:
		return fmt.Sprintf("**FAIL** (exit %d, no test failed: see output)", p.ExitCode)
	case p.ExitCode != 0 || fail > 0:
		return "**FAIL**"
	}
	return "ok"
}

// WriteMarkdown writes the summary table: a row per kernel and package,
// and a row per kernel for the whole VM (boot, every package, power off),
// with qemu's wall time.
func WriteMarkdown(w io.Writer, runs []*KernelRun) {
	fmt.Fprintln(w, "| kernel | package | pass | fail | skip | time | result |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|---|")
	for _, r := range runs {
		label := r.Label()
		if r.Boot != nil {
			for _, name := range r.Packages {
				p := r.Boot.Guest.Package(name)
				if p == nil {
					fmt.Fprintf(w, "| %s | %s | | | | | not run |\n", label, name)
					continue
				}
				pass, fail, skip := p.Counts()
				took := "" // the guest's clock stopped with it
				if p.Finished {
					took = fmt.Sprintf("%.1fs", p.Duration.Seconds())
				}
				fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %s | %s |\n", label, name, pass, fail, skip, took, r.packageResult(p))
			}
		}
		pass, fail, skip := r.Counts()
		elapsed := ""
		if r.Boot != nil {
			elapsed = fmt.Sprintf("%.1fs", r.Boot.Elapsed.Seconds())
		}
		fmt.Fprintf(w, "| %s | *whole VM* | %d | %d | %d | %s | %s |\n", label, pass, fail, skip, elapsed, r.vmResult())
	}
}

// WriteFailures writes, for every kernel, the complete output of each
// failed or unfinished test, the output of a package that failed with no
// failed test (a panic in TestMain, a leak check), the modules that did
// not load, and the end of the console of a guest that died or hung.
func WriteFailures(w io.Writer, runs []*KernelRun) {
	for _, r := range runs {
		missing := false
		if r.Boot != nil {
			for p := range r.Boot.Guest.Modprobe {
				missing = missing || len(r.missingModules(p)) > 0
			}
		}
		if r.OK() && !missing {
			continue
		}
		fmt.Fprintf(w, "\n==== %s: %s\n", r.Label(), strings.ReplaceAll(r.vmResult(), "**", ""))
		if r.Err != nil {
			fmt.Fprintln(w, r.Err)
		}
		if r.Boot != nil && r.Boot.QEMUError != nil {
			fmt.Fprintln(w, r.Boot.QEMUError)
		}
		if r.Kernel != nil {
			fmt.Fprintf(w, "kernel %s %s %s; logs in %s\n", r.Kernel.Package, r.Kernel.Version, r.Kernel.Release, r.LogDir)
		}
		if r.Boot == nil {
			continue
		}
		g := r.Boot.Guest
		for _, m := range slices.Sorted(maps.Keys(g.Modules)) {
			if res := g.Modules[m]; res != "ok" {
				fmt.Fprintf(w, "module %s did not load: %s\n", m, res)
			}
		}
		for _, s := range g.Setup {
			fmt.Fprintf(w, "setup: %s\n", s)
		}
		for _, p := range slices.Sorted(maps.Keys(g.Modprobe)) {
			if wanted := r.missingModules(p); len(wanted) > 0 {
				fmt.Fprintf(w, "while %s ran, the kernel asked for modules the guest does not have (add them to -modules): %s\n", p, strings.Join(wanted, ", "))
			}
		}
		for _, p := range g.Packages {
			if p.OK() {
				continue
			}
			failed := 0
			for _, t := range p.Tests {
				if t.Status == Fail || t.Status == Unfinished {
					failed++
					fmt.Fprintf(w, "\n--- %s %s: %s\n", t.Status, p.Package, t.Name)
					for _, l := range t.Output {
						fmt.Fprintln(w, l)
					}
				}
			}
			if failed == 0 {
				fmt.Fprintf(w, "\n--- %s (exit %d) with no failed test; its last lines:\n", p.Package, p.ExitCode)
				for _, l := range p.Output[max(0, len(p.Output)-60):] {
					fmt.Fprintln(w, l)
				}
			}
		}
		if len(r.Boot.ConsoleTail) > 0 {
			fmt.Fprintf(w, "\n--- end of console.log:\n%s\n", strings.Join(r.Boot.ConsoleTail, "\n"))
		}
	}
}

// missingModules lists what the kernel asked modprobe for while pkg ran
// that one of its modules provides: a request that no module answers
// (bpf_preload, which mounting a bpffs asks for on kernels built without
// it) fails the same way on a real machine.
func (r *KernelRun) missingModules(pkg string) []string {
	var wanted []string
	for _, name := range r.Boot.Guest.Modprobe[pkg] {
		m, known := r.Providers[name]
		switch {
		case known && m == "":
			continue
		case m != "" && m != name:
			name += " (module " + m + ")"
		}
		wanted = append(wanted, name)
	}
	return wanted
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
