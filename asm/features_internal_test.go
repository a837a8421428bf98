package asm

import "testing"

func TestKernelAtLeast(t *testing.T) {
	for _, c := range []struct {
		release string
		want    bool
	}{
		{"6.5.0", true}, {"6.12.9-amd64", true}, {"7.0", true}, {"6.4.16", false},
		{"5.10.0-28-cloud-amd64", false}, {"6.1.0-18-amd64", false}, {"", false}, {"x.y", false},
	} {
		if got := kernelAtLeast(c.release, 6, 5); got != c.want {
			t.Errorf("kernelAtLeast(%q, 6, 5) = %v, want %v", c.release, got, c.want)
		}
	}
}
