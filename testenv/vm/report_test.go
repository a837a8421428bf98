package vm

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// A guest's output stream as the init frames it: a package with a failed
// subtest (a verifier log), a skip, parallel subtests, then a package that
// panicked in the middle of a test (its timeout).
const guestStream = `@@kernel-matrix kernel 6.1.0-41-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-1
@@kernel-matrix module veth ok
@@kernel-matrix module sch_ingress ok
@@kernel-matrix module cls_bpf operation not permitted
@@kernel-matrix begin asm
=== RUN   TestLoad
=== RUN   TestLoad/app_outbound
=== RUN   TestLoad/ztunnel_assign
    load_test.go:40: load ztunnel_assign: program ztunnel_assign: load program: permission denied:
    	0: R1=ctx() R10=fp0
    	; 
    	1: (85) call bpf_sk_assign#124
    	unknown func bpf_sk_assign#124
=== NAME  TestLoad
    load_test.go:52: after the subtests
--- FAIL: TestLoad (0.02s)
    --- PASS: TestLoad/app_outbound (0.01s)
    --- FAIL: TestLoad/ztunnel_assign (0.01s)
=== RUN   TestTCX
    tcx_test.go:12: tcx needs kernel 6.6+
--- SKIP: TestTCX (0.00s)
=== RUN   TestParallel
=== RUN   TestParallel/a
=== PAUSE TestParallel/a
=== RUN   TestParallel/b
=== PAUSE TestParallel/b
=== CONT  TestParallel/a
    p_test.go:1: from a
=== CONT  TestParallel/b
    p_test.go:2: from b
=== NAME  TestParallel/a
    p_test.go:3: a again
--- PASS: TestParallel (0.00s)
    --- PASS: TestParallel/b (0.00s)
    --- FAIL: TestParallel/a (0.00s)
FAIL
@@kernel-matrix end asm exit=1 seconds=12.50
@@kernel-matrix modprobe asm net-pf-16-proto-6 bpf_preload
@@kernel-matrix begin maps
=== RUN   TestPin
--- PASS: TestPin (0.10s)
=== RUN   TestHang
panic: test timed out after 10m0s
	running tests:
		TestHang (10m0s)

goroutine 1 [running]:
no newline at the end`

func TestParseGuestOutput(t *testing.T) {
	// The guest's tty may add \r; the init also starts a marker on a new
	// line after output that did not end one.
	stream := strings.ReplaceAll(guestStream, "TestPin\n", "TestPin\r\n") + "\n@@kernel-matrix end maps exit=2 seconds=600.00\n@@kernel-matrix done\n"
	g, err := ParseGuestOutput(strings.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if g.Release != "6.1.0-41-amd64" || !g.Done {
		t.Errorf("release %q, done %v; want 6.1.0-41-amd64, true", g.Release, g.Done)
	}
	if diff := cmp.Diff(map[string]string{"veth": "ok", "sch_ingress": "ok", "cls_bpf": "operation not permitted"}, g.Modules); diff != "" {
		t.Errorf("modules (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string][]string{"asm": {"net-pf-16-proto-6", "bpf_preload"}}, g.Modprobe); diff != "" {
		t.Errorf("modprobe requests (-want +got):\n%s", diff)
	}

	asm := g.Package("asm")
	want := []TestResult{
		{Name: "TestLoad", Status: Fail, Duration: 20 * time.Millisecond, Output: []string{"    load_test.go:52: after the subtests"}},
		{Name: "TestLoad/app_outbound", Status: Pass, Duration: 10 * time.Millisecond},
		{Name: "TestLoad/ztunnel_assign", Status: Fail, Duration: 10 * time.Millisecond, Output: []string{
			"    load_test.go:40: load ztunnel_assign: program ztunnel_assign: load program: permission denied:",
			"    \t0: R1=ctx() R10=fp0",
			"    \t; ",
			"    \t1: (85) call bpf_sk_assign#124",
			"    \tunknown func bpf_sk_assign#124",
		}},
		{Name: "TestTCX", Status: Skip, Output: []string{"    tcx_test.go:12: tcx needs kernel 6.6+"}},
		{Name: "TestParallel", Status: Pass},
		{Name: "TestParallel/b", Status: Pass, Output: []string{"    p_test.go:2: from b"}},
		{Name: "TestParallel/a", Status: Fail, Output: []string{"    p_test.go:1: from a", "    p_test.go:3: a again"}},
	}
	if diff := cmp.Diff(want, asm.Tests); diff != "" {
		t.Errorf("asm tests (-want +got):\n%s", diff)
	}
	if pass, fail, skip := asm.Counts(); pass != 3 || fail != 3 || skip != 1 {
		t.Errorf("asm counts %d/%d/%d, want 3 passed, 3 failed, 1 skipped", pass, fail, skip)
	}
	if asm.ExitCode != 1 || asm.Duration != 12500*time.Millisecond || !asm.Finished || asm.OK() {
		t.Errorf("asm: exit %d, %v, finished %v, ok %v; want 1, 12.5s, true, false", asm.ExitCode, asm.Duration, asm.Finished, asm.OK())
	}

	maps := g.Package("maps")
	if len(maps.Tests) != 2 || maps.Tests[0].Status != Pass || maps.Tests[1].Status != Unfinished {
		t.Fatalf("maps tests = %+v; want TestPin passed, TestHang unfinished", maps.Tests)
	}
	// The unfinished test carries the timeout's panic, all of it.
	hang := strings.Join(maps.Tests[1].Output, "\n")
	for _, s := range []string{"panic: test timed out after 10m0s", "goroutine 1 [running]:", "no newline at the end"} {
		if !strings.Contains(hang, s) {
			t.Errorf("TestHang's output lacks %q:\n%s", s, hang)
		}
	}
	if maps.ExitCode != 2 {
		t.Errorf("maps exit code %d, want 2", maps.ExitCode)
	}
}

// TestParseGuestOutputCutShort is a guest that hung or died: the package
// it was running is parsed as far as it got, and is not finished.
func TestParseGuestOutputCutShort(t *testing.T) {
	stream := "@@kernel-matrix kernel 5.10.0-30-amd64 #1\n@@kernel-matrix begin asm\n=== RUN   TestA\n--- PASS: TestA (0.00s)\n=== RUN   TestB\n    b_test.go:9: still"
	g, err := ParseGuestOutput(strings.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	p := g.Package("asm")
	if g.Done || p == nil || p.Finished || p.ExitCode != -1 || p.OK() {
		t.Fatalf("got done %v, package %+v; want an unfinished asm with exit -1", g.Done, p)
	}
	if pass, fail, _ := p.Counts(); pass != 1 || fail != 1 {
		t.Errorf("counts %d passed %d failed, want 1 and 1 (TestB unfinished)", pass, fail)
	}
}

func TestWriteMarkdown(t *testing.T) {
	g, _ := ParseGuestOutput(strings.NewReader(guestStream + "\n@@kernel-matrix end maps exit=2 seconds=600.00\n@@kernel-matrix done\n"))
	okGuest, _ := ParseGuestOutput(strings.NewReader("@@kernel-matrix kernel 6.12.57+deb13-amd64 #1\n@@kernel-matrix begin asm\n=== RUN   TestA\n--- PASS: TestA (0.00s)\nPASS\n@@kernel-matrix end asm exit=0 seconds=1.25\n@@kernel-matrix done\n"))
	hung, _ := ParseGuestOutput(strings.NewReader("@@kernel-matrix begin asm\n=== RUN   TestA\n"))
	runs := []*KernelRun{
		{Name: "bookworm", Kernel: &Kernel{Label: "6.1.192 (bookworm)"}, Packages: []string{"asm", "maps"}, Boot: &Boot{Guest: g, Elapsed: 90 * time.Second},
			Providers: map[string]string{"net-pf-16-proto-6": "xfrm_user", "bpf_preload": ""}},
		{Name: "trixie", Kernel: &Kernel{Label: "6.12.57 (trixie)"}, Packages: []string{"asm"}, Boot: &Boot{Guest: okGuest, Elapsed: 15 * time.Second}},
		{Name: "bullseye", Packages: []string{"asm", "maps"}, Boot: &Boot{Guest: hung, Elapsed: 20 * time.Minute, TimedOut: true}},
		{Name: "sid", Packages: []string{"asm"}, Err: errors.New("debian suite sid: apt-get update: exit status 100")},
	}
	var b bytes.Buffer
	WriteMarkdown(&b, runs)
	want := `| kernel | package | pass | fail | skip | time | result |
|---|---|--:|--:|--:|--:|---|
| 6.1.192 (bookworm) | asm | 3 | 3 | 1 | 12.5s | **FAIL** |
| 6.1.192 (bookworm) | maps | 1 | 1 | 0 | 600.0s | **FAIL** |
| 6.1.192 (bookworm) | *whole VM* | 4 | 4 | 1 | 90.0s | **FAIL** |
| 6.12.57 (trixie) | asm | 1 | 0 | 0 | 1.2s | ok |
| 6.12.57 (trixie) | *whole VM* | 1 | 0 | 0 | 15.0s | ok |
| bullseye | asm | 0 | 1 | 0 |  | **hung** (VM killed) |
| bullseye | maps | | | | | not run |
| bullseye | *whole VM* | 0 | 1 | 0 | 1200.0s | **hung**: killed after 20m0s |
| sid | *whole VM* | 0 | 0 | 0 |  | error: debian suite sid: apt-get update: exit status 100 |
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("markdown (-want +got):\n%s", diff)
	}
	if runs[0].OK() || !runs[1].OK() || runs[2].OK() || runs[3].OK() {
		t.Errorf("OK() = %v %v %v %v, want false true false false", runs[0].OK(), runs[1].OK(), runs[2].OK(), runs[3].OK())
	}

	b.Reset()
	WriteFailures(&b, runs)
	for _, s := range []string{
		"--- FAIL asm: TestLoad/ztunnel_assign\n    load_test.go:40:",
		"unknown func bpf_sk_assign#124",
		"--- UNFINISHED maps: TestHang\npanic: test timed out",
		"module cls_bpf did not load: operation not permitted",
		"while asm ran, the kernel asked for modules the guest does not have (add them to -modules): net-pf-16-proto-6 (module xfrm_user)\n",
		"debian suite sid: apt-get update: exit status 100",
	} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("failures lack %q:\n%s", s, b.String())
		}
	}
	if strings.Contains(b.String(), "6.12.57") {
		t.Errorf("failures mention the kernel that passed:\n%s", b.String())
	}
	if strings.Contains(b.String(), "bpf_preload") {
		t.Errorf("failures mention bpf_preload, which no module of the kernel provides:\n%s", b.String())
	}
}
