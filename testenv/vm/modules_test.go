package vm

import (
	"bytes"
	"compress/gzip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeModules writes the indexes depmod would write for a small kernel:
// bridge needs stp needs llc, vxlan needs the UDP tunnel modules,
// xfrm_user needs xfrm_algo, sch_ingress has
// the clsact aliases of 6.12, and nfnetlink is built in.
func fakeModules(tb testing.TB) string {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "lib", "modules", "6.12.57+deb13-amd64")
	mustWrite(tb, filepath.Join(dir, "modules.dep"), strings.Join([]string{
		"kernel/drivers/net/veth.ko:",
		"kernel/net/sched/sch_ingress.ko:",
		"kernel/net/sched/cls_bpf.ko.gz:",
		"kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko",
		"kernel/net/802/stp.ko: kernel/net/llc/llc.ko",
		"kernel/net/llc/llc.ko:",
		"kernel/drivers/net/vxlan/vxlan.ko: kernel/net/ipv6/ip6_udp_tunnel.ko kernel/net/ipv4/udp_tunnel.ko",
		"kernel/drivers/net/geneve.ko: kernel/net/ipv6/ip6_udp_tunnel.ko kernel/net/ipv4/udp_tunnel.ko",
		"kernel/net/ipv4/fou.ko: kernel/net/ipv6/ip6_udp_tunnel.ko kernel/net/ipv4/udp_tunnel.ko",
		"kernel/net/ipv6/ip6_udp_tunnel.ko:",
		"kernel/net/ipv4/udp_tunnel.ko:",
		"kernel/net/ipv4/inet_diag.ko:",
		"kernel/net/ipv4/tcp_diag.ko: kernel/net/ipv4/inet_diag.ko",
		"kernel/net/xfrm/xfrm_user.ko: kernel/net/xfrm/xfrm_algo.ko",
		"kernel/net/xfrm/xfrm_algo.ko:",
		"kernel/drivers/net/wireguard/wire-guard.ko:",
	}, "\n")+"\n")
	mustWrite(tb, filepath.Join(dir, "modules.alias"), "alias net-sch-clsact sch_ingress\nalias net-pf-16-proto-6 xfrm_user\nalias pci:v00008086d*sv*sd*bc*sc*i* e1000e\n")
	mustWrite(tb, filepath.Join(dir, "modules.builtin"), "kernel/net/netfilter/nfnetlink.ko\n")
	for _, m := range []string{"drivers/net/veth", "net/sched/sch_ingress", "net/bridge/bridge", "net/802/stp", "net/llc/llc", "drivers/net/vxlan/vxlan", "drivers/net/geneve", "net/ipv4/fou", "net/ipv6/ip6_udp_tunnel", "net/ipv4/udp_tunnel", "net/ipv4/inet_diag", "net/ipv4/tcp_diag", "net/xfrm/xfrm_user", "net/xfrm/xfrm_algo"} {
		mustWrite(tb, filepath.Join(dir, "kernel", m+".ko"), "ELF "+filepath.Base(m))
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("ELF cls_bpf"))
	zw.Close()
	mustWrite(tb, filepath.Join(dir, "kernel/net/sched/cls_bpf.ko.gz"), gz.String())
	return dir
}

func TestModuleLoadOrder(t *testing.T) {
	ix, err := ReadModuleIndex(fakeModules(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		ask  []string
		want []string
	}{
		{"dependencies come first", []string{"bridge"}, []string{"llc", "stp", "bridge"}},
		{"each module once", []string{"stp", "bridge", "llc"}, []string{"llc", "stp", "bridge"}},
		{"an alias names its module", []string{"net-sch-clsact", "sch_ingress"}, []string{"sch_ingress"}},
		{"a built-in module is left out", []string{"veth", "nfnetlink"}, []string{"veth"}},
		{"dashes and underscores are the same", []string{"wire_guard", "xfrm-user"}, []string{"wire_guard", "xfrm_algo", "xfrm_user"}},
		{"the defaults", DefaultModules, []string{"veth", "sch_ingress", "cls_bpf", "llc", "stp", "bridge", "ip6_udp_tunnel", "udp_tunnel", "vxlan", "geneve", "fou", "inet_diag", "tcp_diag", "xfrm_algo", "xfrm_user"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ix.Load(c.ask)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("Load(%q) (-want +got):\n%s", c.ask, diff)
			}
		})
	}
	if _, err := ix.Load([]string{"sch_clsact"}); err == nil || !strings.Contains(err.Error(), "sch_clsact") {
		t.Errorf("Load(sch_clsact), an alias this kernel lacks = %v; want an error naming it", err)
	}
}

func TestModuleProvider(t *testing.T) {
	ix, err := ReadModuleIndex(fakeModules(t))
	if err != nil {
		t.Fatal(err)
	}
	for ask, want := range map[string]string{
		"net-pf-16-proto-6":                       "xfrm_user",
		"pci:v00008086d000015B8sv0sd0bc02sc00i00": "e1000e",
		"bridge":    "bridge",
		"net-pf-99": "",
	} {
		if got := ix.Provider(ask); got != want {
			t.Errorf("Provider(%q) = %q, want %q", ask, got, want)
		}
	}
}

func TestModulesArchive(t *testing.T) {
	ix, err := ReadModuleIndex(fakeModules(t))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	order, err := ModulesArchive(&buf, ix, []string{"cls_bpf", "bridge"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range readCPIO(t, buf.Bytes()) {
		got[e.Name] = e.Data
	}
	want := map[string]string{
		"modules":            "",
		"modules/cls_bpf.ko": "ELF cls_bpf", // decompressed
		"modules/llc.ko":     "ELF llc",
		"modules/stp.ko":     "ELF stp",
		"modules/bridge.ko":  "ELF bridge",
		"modules/load.txt":   "cls_bpf\nllc\nstp\nbridge\n",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("archive (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"cls_bpf", "llc", "stp", "bridge"}, order); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
}
