package dataplane

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSysctlDir: keys are read and written under the directory the
// configuration names (--proc-sys-net), not under /proc/sys/net, and a
// directory without the net sysctls is refused with a hint.
func TestSysctlDir(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "ipv4", "conf", "all")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(conf, "rp_filter"), []byte("2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sys := Config{ProcSysNet: dir}.sysctls()
	if err := sys.check(); err != nil {
		t.Errorf("check %s: %v", dir, err)
	}
	if v, err := sys.readInt("ipv4/conf/all/rp_filter"); err != nil || v != 2 {
		t.Errorf("readInt = %d, %v; want 2", v, err)
	}
	if err := sys.write(map[string]string{"ipv4/conf/all/rp_filter": "0"}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(conf, "rp_filter")); err != nil || string(b) != "0" {
		t.Errorf("%s/ipv4/conf/all/rp_filter = %q, %v; want 0", dir, b, err)
	}
	err := sys.write(map[string]string{"ipv4/conf/eth9/rp_filter": "0"})
	if want := "write " + filepath.Join(dir, "ipv4/conf/eth9/rp_filter"); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("write to a missing interface: %v, want an error naming %s", err, want)
	}

	if got := (Config{}).sysctls(); got != "/proc/sys/net" {
		t.Errorf("default %q, want /proc/sys/net", got)
	}
	empty := Config{ProcSysNet: t.TempDir()}.sysctls()
	if err := empty.check(); err == nil || !strings.Contains(err.Error(), "is the host's /proc/sys/net mounted at "+string(empty)+"?") {
		t.Errorf("check of an empty directory: %v", err)
	}
}
