package layers_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/meshredirect/meshredirect/internal/layers"
)

// TestImportGraph reads the module's import graph with `go list` and fails
// on every edge the layering forbids.
func TestImportGraph(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to read the import graph: %v", err)
	}
	out, err := exec.Command(goBin, "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", layers.Module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	graph := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		graph[f[0]] = f[1:]
	}
	if len(graph) < 10 {
		t.Fatalf("go list found %d packages; the module has more", len(graph))
	}
	for _, v := range layers.Check(graph) {
		t.Error(v)
	}
	// Every product package the rule places still exists: a stale entry
	// would let a renamed package escape.
	for rel := range layers.Allowed {
		if _, ok := graph[layers.Module+"/"+rel]; !ok {
			t.Errorf("layers.Allowed places %s, which is not in the module", rel)
		}
	}
}

// TestCheckFindsForbiddenEdges: the check fails on the edges it exists to
// stop, and not on the harnesses or free imports.
func TestCheckFindsForbiddenEdges(t *testing.T) {
	m := func(rel string) string { return layers.Module + "/" + rel }
	for _, tc := range []struct {
		name  string
		graph map[string][]string
		want  string
	}{
		{"agent → tc", map[string][]string{m("agent"): {m("tc")}}, "agent imports tc"},
		{"agent → cilium/ebpf/link", map[string][]string{m("agent"): {"github.com/cilium/ebpf/link"}}, "agent imports github.com/cilium/ebpf"},
		{"cmd → maps", map[string][]string{m("cmd/meshredirect"): {m("maps")}}, "cmd/meshredirect imports maps"},
		{"cmd → vishvananda/netlink", map[string][]string{m("cmd/meshredirect"): {"github.com/vishvananda/netlink"}}, "cmd/meshredirect imports github.com/vishvananda/netlink"},
		{"dataplane → agent (upward)", map[string][]string{m("dataplane"): {m("agent")}}, "dataplane imports agent"},
		{"tc → dataplane (upward)", map[string][]string{m("tc"): {m("dataplane")}}, "tc imports dataplane"},
		{"agent → testenv", map[string][]string{m("agent"): {m("testenv")}}, "agent imports testenv"},
		{"zds → tc", map[string][]string{m("zds"): {m("tc")}}, "zds imports tc"},
		{"zds → agent (upward)", map[string][]string{m("zds"): {m("agent")}}, "zds imports agent"},
		{"zds → cilium/ebpf/asm", map[string][]string{m("zds"): {"github.com/cilium/ebpf/asm"}}, "zds imports github.com/cilium/ebpf"},
		{"a package nobody placed", map[string][]string{m("newthing"): nil}, "newthing: a product package the rule does not place"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := layers.Check(tc.graph)
			if len(got) != 1 || !strings.HasPrefix(got[0], tc.want) {
				t.Errorf("Check = %q, want one line starting %q", got, tc.want)
			}
		})
	}
	free := map[string][]string{
		m("agent"):                  {m("dataplane"), m("zds"), "k8s.io/client-go/kubernetes", "net/netip"},
		m("zds"):                    {"google.golang.org/protobuf/encoding/protowire", "golang.org/x/sys/unix"},
		m("testenv"):                {m("tc"), m("zds"), "github.com/vishvananda/netlink"},
		m("bench"):                  {m("asm"), "github.com/cilium/ebpf"},
		m("dataplane"):              {m("tc"), "github.com/cilium/ebpf/link"},
		"example.com/other/package": {m("tc")},
	}
	if got := layers.Check(free); len(got) != 0 {
		t.Errorf("Check = %q on allowed edges, want nothing", got)
	}
}
