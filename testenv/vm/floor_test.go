package vm

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// guestOf builds a guest run from the output of each package, framed by
// markers as the guest's init frames it, so that the floor reads counts the
// way a real run makes them.
func guestOf(name string, pkgs map[string]string, order ...string) *KernelRun {
	var b strings.Builder
	for _, p := range order {
		fmt.Fprintf(&b, "%sbegin %s\n%s\n%send %s exit=0 seconds=1.0\n", Marker, p, pkgs[p], Marker, p)
	}
	b.WriteString(Marker + "done\n")
	g, err := ParseGuestOutput(strings.NewReader(b.String()))
	if err != nil {
		panic(err)
	}
	return &KernelRun{Name: name, Packages: order, Boot: &Boot{Guest: g}}
}

const (
	twoPass = "=== RUN   TestA\n--- PASS: TestA (0.00s)\n=== RUN   TestB\n--- PASS: TestB (0.00s)\nPASS"
	allSkip = "=== RUN   TestA\n    a_test.go:1: needs root\n--- SKIP: TestA (0.00s)\n=== RUN   TestB\n--- SKIP: TestB (0.00s)\nPASS"
	noTests = "testing: warning: no tests to run\nPASS"
)

func TestFloorCheck(t *testing.T) {
	floor, err := ReadFloor(strings.NewReader("# comment\nbookworm asm 2\nbookworm tc 1 # trailing\n\ntrixie asm 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		runs []*KernelRun
		want []string
	}{
		{"at the floor", []*KernelRun{guestOf("bookworm", map[string]string{"asm": twoPass, "tc": twoPass}, "asm", "tc")}, nil},
		{"all skipped", []*KernelRun{guestOf("bookworm", map[string]string{"asm": twoPass, "tc": allSkip}, "asm", "tc")},
			[]string{"bookworm: tc passed 0 tests (2 skipped, 0 failed), fewer than its floor of 1"}},
		{"reports nothing", []*KernelRun{guestOf("bookworm", map[string]string{"asm": twoPass, "tc": noTests}, "asm", "tc")},
			[]string{"bookworm: tc reported no test"}},
		{"package dropped", []*KernelRun{guestOf("bookworm", map[string]string{"asm": twoPass}, "asm")},
			[]string{"bookworm: tc did not run, and the floor expects 1 passed tests"}},
		{"package without a floor", []*KernelRun{guestOf("trixie", map[string]string{"asm": twoPass, "maps": twoPass}, "asm", "maps")},
			[]string{"trixie: maps has no floor (add it to the floor file: -write-floor)"}},
		{"kernel without a floor", []*KernelRun{guestOf("bullseye", map[string]string{"asm": twoPass}, "asm")},
			[]string{"bullseye: no floor for this kernel (add its lines to the floor file: -write-floor)"}},
		{"guest that died is the run's failure, not the floor's", []*KernelRun{{Name: "bookworm", Packages: []string{"asm"}}}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if diff := cmp.Diff(c.want, floor.Check(c.runs)); diff != "" {
				t.Errorf("Check (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWriteFloorReadsBack(t *testing.T) {
	runs := []*KernelRun{
		guestOf("bookworm", map[string]string{"asm": twoPass, "tc": allSkip}, "asm"),
		guestOf("trixie", map[string]string{"asm": twoPass}, "asm"),
	}
	var b strings.Builder
	if err := WriteFloor(&b, runs); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFloor(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("%v in\n%s", err, b.String())
	}
	if diff := cmp.Diff(Floor{"bookworm": {"asm": 2}, "trixie": {"asm": 2}}, got); diff != "" {
		t.Errorf("floor read back (-want +got):\n%s", diff)
	}
	if problems := got.Check(runs); len(problems) != 0 {
		t.Errorf("a run is below the floor it wrote: %v", problems)
	}
	// A package that passed nothing cannot be a floor: it would be 0.
	if err := WriteFloor(&b, []*KernelRun{guestOf("bookworm", map[string]string{"tc": allSkip}, "tc")}); err == nil {
		t.Error("wrote a floor of 0 for a package whose tests all skipped")
	}
}

func TestReadFloorRefuses(t *testing.T) {
	for _, in := range []string{"bookworm asm", "bookworm asm x", "bookworm asm 0", "bookworm asm 1\nbookworm asm 2", "a b 1 2"} {
		if _, err := ReadFloor(strings.NewReader(in)); err == nil {
			t.Errorf("ReadFloor(%q) accepted it", in)
		}
	}
}

// TestFloorFileOfTheMatrix: the floor make test-kernels uses reads, and
// has a line for every kernel and package the Makefile's KERNELS and
// KERNEL_PKGS run.
func TestFloorFileOfTheMatrix(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string][]string{}
	for _, line := range strings.Split(string(mk), "\n") {
		if k, v, ok := strings.Cut(line, " ?= "); ok && (k == "KERNELS" || k == "KERNEL_PKGS" || k == "KERNEL_FLOOR") {
			vars[k] = strings.Split(strings.TrimSpace(v), ",")
		}
	}
	if len(vars["KERNELS"]) == 0 || len(vars["KERNEL_PKGS"]) == 0 || len(vars["KERNEL_FLOOR"]) != 1 {
		t.Fatalf("the Makefile's KERNELS, KERNEL_PKGS and KERNEL_FLOOR: %q", vars)
	}
	f, err := os.Open("../../" + vars["KERNEL_FLOOR"][0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	floor, err := ReadFloor(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range vars["KERNELS"] {
		for _, p := range vars["KERNEL_PKGS"] {
			if floor[k][strings.TrimPrefix(p, "./")] == 0 {
				t.Errorf("no floor for %s on %s", p, k)
			}
		}
	}
}
