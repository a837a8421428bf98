package main

import "testing"

func TestRotate(t *testing.T) {
	got := rotate([]string{"a", "b", "c"}, 4)
	if want := []string{"b", "c", "a"}; !equal(got, want) {
		t.Errorf("rotate = %v, want %v", got, want)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
