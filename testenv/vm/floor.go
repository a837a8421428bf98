package vm

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Floor holds the least number of tests each package must pass on each
// kernel, keyed by the kernel's name as -kernels gives it ("bookworm") and
// then by package ("dataplane"). A matrix whose tests all skip, or lose a
// package, still exits 0 by its own counts; the floor is what makes it
// fail.
type Floor map[string]map[string]int

// ReadFloor reads a floor file: one "kernel package least-passed" line per
// kernel and package, '#' starting a comment.
func ReadFloor(r io.Reader) (Floor, error) {
	f := Floor{}
	s := bufio.NewScanner(r)
	for n := 1; s.Scan(); n++ {
		line, _, _ := strings.Cut(s.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 {
			return nil, fmt.Errorf("floor line %d: want \"kernel package least-passed\", have %q", n, s.Text())
		}
		least, err := strconv.Atoi(fields[2])
		if err != nil || least < 1 {
			return nil, fmt.Errorf("floor line %d: %q is not a positive count", n, fields[2])
		}
		kernel, pkg := fields[0], fields[1]
		if f[kernel] == nil {
			f[kernel] = map[string]int{}
		}
		if _, dup := f[kernel][pkg]; dup {
			return nil, fmt.Errorf("floor line %d: %s %s is given twice", n, kernel, pkg)
		}
		f[kernel][pkg] = least
	}
	return f, s.Err()
}

// Check returns what falls below the floor in runs: a package that
// reported no test at all, a package that passed fewer tests than its
// floor, a kernel or package the floor does not know (a new one needs a
// floor: -write-floor), and a package the floor expects on a kernel that
// ran without it (dropped from -pkgs, or its tests no longer build). A
// kernel that did not boot is not checked here: the run fails for it
// already.
func (f Floor) Check(runs []*KernelRun) []string {
	var problems []string
	for _, r := range runs {
		if r.Boot == nil || !r.Boot.Guest.Done {
			continue
		}
		want, known := f[r.Name]
		if !known {
			problems = append(problems, fmt.Sprintf("%s: no floor for this kernel (add its lines to the floor file: -write-floor)", r.Name))
		}
		for _, name := range r.Packages {
			var pass, fail, skip int
			if p := r.Boot.Guest.Package(name); p != nil {
				pass, fail, skip = p.Counts()
			}
			least, ok := want[name]
			switch {
			case pass+fail+skip == 0:
				problems = append(problems, fmt.Sprintf("%s: %s reported no test", r.Name, name))
			case known && !ok:
				problems = append(problems, fmt.Sprintf("%s: %s has no floor (add it to the floor file: -write-floor)", r.Name, name))
			case pass < least:
				problems = append(problems, fmt.Sprintf("%s: %s passed %d tests (%d skipped, %d failed), fewer than its floor of %d", r.Name, name, pass, skip, fail, least))
			}
		}
		for _, name := range slices.Sorted(maps.Keys(want)) {
			if !slices.Contains(r.Packages, name) {
				problems = append(problems, fmt.Sprintf("%s: %s did not run, and the floor expects %d passed tests", r.Name, name, want[name]))
			}
		}
	}
	return problems
}

// WriteFloor writes the floor file of runs: each package's passed count on
// each kernel that ran to the end, as the floor for the next runs.
func WriteFloor(w io.Writer, runs []*KernelRun) error {
	if _, err := fmt.Fprintln(w, "# kernel package least-passed: written by kernel-matrix -write-floor from a full run;\n# make test-kernels fails when a package passes fewer tests on a kernel (all skipped, lost, mistyped)."); err != nil {
		return err
	}
	for _, r := range runs {
		if r.Boot == nil || !r.Boot.Guest.Done {
			return fmt.Errorf("%s did not run to the end: no floor written", r.Name)
		}
		for _, name := range r.Packages {
			p := r.Boot.Guest.Package(name)
			if p == nil {
				return fmt.Errorf("%s: %s did not run: no floor written", r.Name, name)
			}
			pass, _, _ := p.Counts()
			if pass == 0 {
				return fmt.Errorf("%s: %s passed no test: a floor of 0 would check nothing", r.Name, name)
			}
			if _, err := fmt.Fprintf(w, "%s %s %d\n", r.Name, name, pass); err != nil {
				return err
			}
		}
	}
	return nil
}
