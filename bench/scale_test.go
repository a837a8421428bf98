package main

import (
	"os"
	"testing"
	"time"
)

// TestPercentilesNearestRank: p50, p99 and max by nearest rank, whatever
// the order of the samples.
func TestPercentilesNearestRank(t *testing.T) {
	var xs []float64
	for i := 200; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	p50, p99, mx := percentiles(xs)
	if p50 != 100 || p99 != 198 || mx != 200 {
		t.Fatalf("percentiles of 1..200: p50 %v, p99 %v, max %v; want 100, 198, 200", p50, p99, mx)
	}
	if p50, p99, mx := percentiles([]float64{7}); p50 != 7 || p99 != 7 || mx != 7 {
		t.Fatalf("percentiles of one sample 7: %v %v %v", p50, p99, mx)
	}
}

// TestReadUsageIsResidentMemoryAndCPU: readUsage reports what the agent's
// figures claim: resident memory that grows when pages are touched (not
// merely allocated address space) and CPU time that grows by the time
// spent computing.
func TestReadUsageIsResidentMemoryAndCPU(t *testing.T) {
	u0, err := readUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Touch 64 MiB.
	b := make([]byte, 64<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	// Burn 300 ms of CPU.
	x := 0
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
		x++
	}
	u1, err := readUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if grew := u1.rssKiB - u0.rssKiB; grew < 48<<10 {
		t.Errorf("VmRSS grew by %d KiB after touching 64 MiB (from %d to %d KiB)", grew, u0.rssKiB, u1.rssKiB)
	}
	if u1.hwmKiB < u1.rssKiB {
		t.Errorf("VmHWM %d KiB below VmRSS %d KiB", u1.hwmKiB, u1.rssKiB)
	}
	if used := u1.cpu - u0.cpu; used < 200*time.Millisecond {
		t.Errorf("CPU time grew by %s after 300 ms of computing", used)
	}
	if u1.threads < 1 {
		t.Errorf("threads %d", u1.threads)
	}
	_ = b[x%len(b)]
}
