// Package layers states which package of meshredirect may import which,
// and checks the module's import graph against it (layers_test.go runs the
// check on every `go test ./...`).
//
// The rule it keeps: dataplane is the only door into the kernel. Only
// dataplane imports the packages that load programs, open maps, attach to
// hooks and read the node's netlink (tc, maps, asm, resolve, cilium/ebpf and
// the netlink libraries); agent keeps Kubernetes, the CLI keeps flags and
// printing, and dependencies point one way:
//
//	cmd → agent → dataplane → {tc, maps, asm, resolve}
//
// zds (Istio's ZDS protocol with ztunnel: a Unix socket and protobuf
// messages, nothing of eBPF or netlink) sits beside dataplane at the bottom:
// agent may import it, and it imports no layer above or beside it.
//
// Test files, the test environment (testenv) and the benchmark (bench) are
// harnesses: they may reach any layer to set up and measure, and no product
// package may import them.
package layers

import (
	"fmt"
	"sort"
	"strings"
)

// Module is the module path of meshredirect.
const Module = "github.com/meshredirect/meshredirect"

// Watched are the imports the rule is about, beside the module's own
// packages: the libraries that reach the kernel. An import neither watched
// nor the module's own (the standard library, client-go, cobra,
// Prometheus) is free.
var Watched = []string{
	"github.com/cilium/ebpf",
	"github.com/florianl/go-tc",
	"github.com/mdlayher/netlink",
	"github.com/mdlayher/genetlink",
	"github.com/jsimonetti/rtnetlink",
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
}

// Allowed maps each product package (relative to Module) to the watched
// imports and module packages it may import. A product package missing
// here is a violation too: a new package states its place.
var Allowed = map[string][]string{
	"internal/nsrun":       nil,
	"internal/bpffs":       nil,
	"internal/nlmsg":       {"github.com/mdlayher/netlink", "github.com/jsimonetti/rtnetlink"},
	"internal/layers":      nil,
	"internal/repocheck":   nil,
	"internal/ociimage":    nil,
	"internal/version":     nil,
	"cni":                  nil,
	"zds":                  nil,
	"maps":                 {"github.com/cilium/ebpf"},
	"asm":                  {"maps", "github.com/cilium/ebpf"},
	"tc":                   {"internal/nsrun", "internal/nlmsg", "github.com/cilium/ebpf", "github.com/florianl/go-tc", "github.com/mdlayher/netlink", "github.com/jsimonetti/rtnetlink"},
	"resolve":              {"internal/nsrun", "internal/nlmsg", "github.com/mdlayher/netlink", "github.com/jsimonetti/rtnetlink"},
	"dataplane":            {"asm", "maps", "tc", "resolve", "internal/nsrun", "internal/nlmsg", "internal/bpffs", "github.com/cilium/ebpf", "github.com/mdlayher/netlink", "github.com/mdlayher/genetlink", "github.com/jsimonetti/rtnetlink"},
	"agent":                {"dataplane", "cni", "zds", "internal/version"},
	"cmd/meshredirect":     {"agent", "dataplane", "cni", "internal/version"},
	"cmd/meshredirect-cni": {"cni"},
}

// Harness reports whether pkg (relative to Module) is a test or measuring
// harness, to which the rule does not apply.
func Harness(pkg string) bool {
	for _, h := range []string{"testenv", "bench", "internal/testutil"} {
		if pkg == h || strings.HasPrefix(pkg, h+"/") {
			return true
		}
	}
	return false
}

// Check returns a line for every import in graph (package → its non-test
// imports, full import paths) that the rule forbids.
func Check(graph map[string][]string) []string {
	var out []string
	for pkg, imports := range graph {
		rel, ok := relative(pkg)
		if !ok || Harness(rel) {
			continue
		}
		allowed, known := Allowed[rel]
		if !known {
			out = append(out, fmt.Sprintf("%s: a product package the rule does not place (add it to layers.Allowed)", rel))
			continue
		}
		for _, imp := range imports {
			name, watched := watchedName(imp)
			if !watched {
				continue
			}
			if !permits(allowed, name) {
				out = append(out, fmt.Sprintf("%s imports %s", rel, name))
			}
		}
	}
	sort.Strings(out)
	return out
}

// relative returns pkg relative to Module, and whether it is the module's.
func relative(pkg string) (string, bool) {
	if rel, ok := strings.CutPrefix(pkg, Module+"/"); ok {
		return rel, true
	}
	return "", false
}

// watchedName returns how the rule names imp (a module package relative
// to Module, or the watched library it belongs to), and whether the rule
// is about it at all.
func watchedName(imp string) (string, bool) {
	if rel, ok := relative(imp); ok {
		return rel, true
	}
	for _, w := range Watched {
		if imp == w || strings.HasPrefix(imp, w+"/") {
			return w, true
		}
	}
	return "", false
}

func permits(allowed []string, name string) bool {
	for _, a := range allowed {
		if a == name {
			return true
		}
	}
	return false
}
