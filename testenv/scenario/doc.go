// Package scenario puts meshredirect's dataplane on a node in a box and runs
// the flows of DESIGN.md through it, each one observed (which ztunnel
// listener carried it, if any; how many bytes came back intact). The
// end-to-end tests assert on the observations and `make demo` prints them.
package scenario
