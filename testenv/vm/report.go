package vm

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Status is how a test ended.
type Status string

// The statuses a test binary run with -test.v reports, and one for a test
// that started and never reported (its binary panicked, timed out or was
// killed).
const (
	Pass       Status = "PASS"
	Fail       Status = "FAIL"
	Skip       Status = "SKIP"
	Unfinished Status = "UNFINISHED"
)

// TestResult is one test or subtest as its binary reported it.
type TestResult struct {
	Name     string
	Status   Status
	Duration time.Duration
	// Output holds the lines the test logged, in order: for a failure the
	// messages and verifier logs, for a skip its reason, for an unfinished
	// test everything up to the end of the binary's output (a timeout's
	// goroutine dump).
	Output []string
}

// PackageRun is one test binary's run in a guest.
type PackageRun struct {
	Package  string
	Tests    []TestResult
	ExitCode int           // -1 when it could not run or was killed
	Duration time.Duration // as the guest measured it
	Finished bool          // its end marker arrived
	Output   []string      // every line it wrote
}

// Counts returns how many tests (subtests included, as gotestsum counts)
// passed, failed and skipped; an unfinished test counts as failed.
func (p *PackageRun) Counts() (pass, fail, skip int) {
	for _, t := range p.Tests {
		switch t.Status {
		case Pass:
			pass++
		case Skip:
			skip++
		default:
			fail++
		}
	}
	return pass, fail, skip
}

// OK reports whether the binary ran to the end, exited 0, and no test
// failed.
func (p *PackageRun) OK() bool {
	_, fail, _ := p.Counts()
	return p.Finished && p.ExitCode == 0 && fail == 0
}

// GuestRun is everything one guest reported on its output port.
type GuestRun struct {
	Release string            // uname -r
	Version string            // uname -v
	Modules map[string]string // module -> "ok" or the error loading it
	Setup   []string          // what went wrong before the tests
	// Modprobe holds, per package, the modules (or aliases) the kernel
	// asked for on demand while it ran, which the guest did not have.
	Modprobe map[string][]string
	Packages []*PackageRun
	Done     bool // the init got to the end of the plan
}

// Package returns the run of the named package, or nil.
func (g *GuestRun) Package(name string) *PackageRun {
	for _, p := range g.Packages {
		if p.Package == name {
			return p
		}
	}
	return nil
}

// GuestParser reads a guest's output stream line by line (a Marker line, or
// a line of the current test binary's output).
type GuestParser struct {
	run *GuestRun
	cur *PackageRun
}

// NewGuestParser returns a parser with an empty GuestRun.
func NewGuestParser() *GuestParser {
	return &GuestParser{run: &GuestRun{Modules: map[string]string{}, Modprobe: map[string][]string{}}}
}

// Line takes one line, without its newline. It returns the marker's text
// (after Marker) when the line was one, for progress messages.
func (gp *GuestParser) Line(line string) (marker string) {
	line = strings.TrimRight(line, "\r")
	text, ok := strings.CutPrefix(line, Marker)
	if !ok {
		if gp.cur != nil {
			gp.cur.Output = append(gp.cur.Output, line)
		}
		return ""
	}
	verb, rest, _ := strings.Cut(text, " ")
	r := gp.run
	switch verb {
	case "kernel":
		r.Release, r.Version, _ = strings.Cut(rest, " ")
	case "module":
		name, result, _ := strings.Cut(rest, " ")
		r.Modules[name] = result
	case "setup":
		r.Setup = append(r.Setup, rest)
	case "modprobe":
		pkg, names, _ := strings.Cut(rest, " ")
		r.Modprobe[pkg] = append(r.Modprobe[pkg], strings.Fields(names)...)
	case "begin":
		gp.finish()
		gp.cur = &PackageRun{Package: rest, ExitCode: -1}
		r.Packages = append(r.Packages, gp.cur)
	case "end":
		if gp.cur == nil {
			break
		}
		f := strings.Fields(rest)
		for _, kv := range f[min(1, len(f)):] {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "exit":
				gp.cur.ExitCode, _ = strconv.Atoi(v)
			case "seconds":
				s, _ := strconv.ParseFloat(v, 64)
				gp.cur.Duration = time.Duration(s * float64(time.Second))
			}
		}
		gp.cur.Finished = true
		gp.finish()
	case "done":
		gp.finish()
		r.Done = true
	}
	return text
}

// Result returns what was read so far, with the output of a binary still
// running (the guest hung or died) parsed as far as it went.
func (gp *GuestParser) Result() *GuestRun {
	gp.finish()
	return gp.run
}

func (gp *GuestParser) finish() {
	if gp.cur != nil {
		gp.cur.Tests = ParseTestOutput(gp.cur.Output)
		gp.cur = nil
	}
}

// ParseGuestOutput reads a whole output stream.
func ParseGuestOutput(r io.Reader) (*GuestRun, error) {
	gp := NewGuestParser()
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 16<<20)
	for s.Scan() {
		gp.Line(s.Text())
	}
	return gp.Result(), s.Err()
}

var (
	// "=== RUN   TestX/sub", and PAUSE, CONT, NAME (go1.20+: the test that
	// the next lines belong to).
	testEvent = regexp.MustCompile(`^=== (RUN|PAUSE|CONT|NAME)\s+(\S+)\s*$`)
	// "    --- FAIL: TestX/sub (0.01s)", indented by 4 per subtest level.
	testResult = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): (\S+) \((\d+(?:\.\d+)?)s\)\s*$`)
)

// ParseTestOutput reads the output of a test binary run with -test.v and
// returns every test and subtest that reported a result, in the order
// they did, followed by those that started and never reported.
//
// Each line of output is given to the test the stream last named (=== RUN,
// CONT or NAME), which is how go test -v attributes streamed log lines; a
// line indented deeper than a --- result line just before it belongs to
// that result (how a test's log is printed when it was held back, as for
// a subtest of a parallel test).
func ParseTestOutput(lines []string) []TestResult {
	var (
		results  []TestResult
		output   = map[string][]string{}
		started  []string
		reported = map[string]bool{}
		cur      string
		after    = -1 // index in results of the --- line just read
		indent   int
	)
	for _, line := range lines {
		if m := testEvent.FindStringSubmatch(line); m != nil {
			cur, after = m[2], -1
			if m[1] == "RUN" {
				started = append(started, cur)
			}
			continue
		}
		if m := testResult.FindStringSubmatch(line); m != nil {
			secs, _ := strconv.ParseFloat(m[4], 64)
			results = append(results, TestResult{
				Name:     m[3],
				Status:   Status(m[2]),
				Duration: time.Duration(secs * float64(time.Second)),
			})
			reported[m[3]] = true
			after, indent = len(results)-1, len(m[1])
			continue
		}
		if after >= 0 && leadingSpace(line) > indent {
			results[after].Output = append(results[after].Output, line)
			continue
		}
		after = -1
		if cur != "" && !isPackageLine(line) {
			output[cur] = append(output[cur], line)
		}
	}
	for i := range results {
		results[i].Output = append(output[results[i].Name], results[i].Output...)
	}
	for _, name := range started {
		if !reported[name] {
			reported[name] = true
			results = append(results, TestResult{Name: name, Status: Unfinished, Output: output[name]})
		}
	}
	return results
}

// isPackageLine reports the lines a test binary prints once, at the end.
func isPackageLine(line string) bool {
	switch line {
	case "PASS", "FAIL":
		return true
	}
	return strings.HasPrefix(line, "coverage: ")
}

func leadingSpace(s string) int {
	return len(s) - len(strings.TrimLeft(s, " \t"))
}
