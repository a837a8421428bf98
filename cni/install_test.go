package cni

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// confDir copies the named fixtures of testdata into a fresh directory.
func confDir(t *testing.T, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join("testdata", n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// plugins returns the parsed plugin list of a conflist (or a .conf as a
// list of one) and its other fields.
func plugins(t *testing.T, path string) ([]map[string]any, map[string]any) {
	t.Helper()
	l, err := readConflist(path)
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]any{}
	for k, v := range l.fields {
		var x any
		json.Unmarshal(v, &x)
		fields[k] = x
	}
	return l.plugins, fields
}

var entry = map[string]any{"socket": "/var/run/meshredirect/cni.sock", "excludeNamespaces": []any{"kube-system", "istio-system"}}

// TestInstallOnCommonCNIs: the entry goes last in the primary CNI's list,
// every other plugin and field is kept as it was, a second install changes
// nothing, and uninstall gives the original list back.
func TestInstallOnCommonCNIs(t *testing.T) {
	for _, c := range []struct {
		fixture, want string
	}{
		{"10-ptp.conflist", "10-ptp.conflist"},
		{"10-calico.conflist", "10-calico.conflist"},
		{"05-cilium.conflist", "05-cilium.conflist"},
		{"10-bridge.conf", "10-bridge.conflist"}, // a .conf becomes a conflist
	} {
		t.Run(c.fixture, func(t *testing.T) {
			dir := confDir(t, c.fixture)
			before, beforeFields := plugins(t, filepath.Join(dir, c.fixture))
			in := Installer{ConfDir: dir, Entry: entry}

			path, err := in.Install()
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Base(path) != c.want {
				t.Errorf("wrote %s, want %s", filepath.Base(path), c.want)
			}
			if c.fixture != c.want {
				if _, err := os.Stat(filepath.Join(dir, c.fixture)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the .conf is still there beside the conflist: %v", err)
				}
			}
			after, afterFields := plugins(t, path)
			if len(after) != len(before)+1 {
				t.Fatalf("%d plugins after install, want %d", len(after), len(before)+1)
			}
			if !reflect.DeepEqual(after[:len(before)], before) {
				t.Errorf("the primary's plugins changed:\n before %v\n after  %v", before, after[:len(before)])
			}
			if !reflect.DeepEqual(afterFields, beforeFields) {
				t.Errorf("the list's fields changed: %v -> %v", beforeFields, afterFields)
			}
			last := after[len(after)-1]
			if last["type"] != PluginType || last["socket"] != entry["socket"] {
				t.Errorf("our entry: %v", last)
			}
			if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want the primary's 0600", st.Mode().Perm())
			}
			if ok, err := in.Installed(); !ok || err != nil {
				t.Errorf("Installed() = %v, %v", ok, err)
			}

			raw1, _ := os.ReadFile(path)
			if _, err := in.Install(); err != nil {
				t.Fatal(err)
			}
			raw2, _ := os.ReadFile(path)
			if string(raw1) != string(raw2) {
				t.Errorf("a second install changed the file:\n%s\n%s", raw1, raw2)
			}

			if err := in.Uninstall(); err != nil {
				t.Fatal(err)
			}
			undone, undoneFields := plugins(t, path)
			if !reflect.DeepEqual(undone, before) || !reflect.DeepEqual(undoneFields, beforeFields) {
				t.Errorf("uninstall did not give the original back:\n before %v %v\n after  %v %v", before, beforeFields, undone, undoneFields)
			}
			if ok, _ := in.Installed(); ok {
				t.Error("still installed after uninstall")
			}
			if err := in.Uninstall(); err != nil {
				t.Errorf("a second uninstall: %v", err)
			}
		})
	}
}

func TestPrimaryIsLexicallyFirst(t *testing.T) {
	dir := confDir(t, "10-calico.conflist", "05-cilium.conflist")
	os.WriteFile(filepath.Join(dir, "00-notes.txt"), []byte("not a config"), 0o644)
	p, err := Primary(dir)
	if err != nil || filepath.Base(p) != "05-cilium.conflist" {
		t.Errorf("Primary = %s, %v", p, err)
	}
	if _, err := (Installer{ConfDir: dir}).Install(); err != nil {
		t.Fatal(err)
	}
	if calico, _ := plugins(t, filepath.Join(dir, "10-calico.conflist")); len(calico) != 3 {
		t.Error("a configuration other than the primary was changed")
	}
}

func TestNoPrimaryYet(t *testing.T) {
	_, err := (Installer{ConfDir: t.TempDir()}).Install()
	if !errors.Is(err, ErrNoPrimary) {
		t.Errorf("Install with no configuration: %v, want ErrNoPrimary", err)
	}
}

func TestInstallCopiesTheBinary(t *testing.T) {
	dir, bin := confDir(t, "10-ptp.conflist"), t.TempDir()
	src := filepath.Join(t.TempDir(), "plugin")
	os.WriteFile(src, []byte("#!/bin/sh\n"), 0o700)
	in := Installer{ConfDir: dir, BinDir: bin, Binary: src}
	if _, err := in.Install(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(bin, PluginType))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("binary: %v %v", st, err)
	}
	if err := in.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bin, PluginType)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("binary left after uninstall: %v", err)
	}
}

func TestBrokenConfiguration(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "10-broken.conflist"), []byte(`{"plugins": [`), 0o644)
	if _, err := (Installer{ConfDir: dir}).Install(); err == nil {
		t.Error("installed into a broken configuration")
	}
	os.WriteFile(filepath.Join(dir, "10-broken.conflist"), []byte(`{"name": "x"}`), 0o644)
	if _, err := (Installer{ConfDir: dir}).Install(); err == nil {
		t.Error("installed into a configuration without plugins or type")
	}
}

// TestInstallKeepsUnrelatedConflist: turning foo.conf into a list must not
// overwrite a foo.conflist that sits beside it.
func TestInstallKeepsUnrelatedConflist(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "10-foo.conf")
	other := filepath.Join(dir, "10-foo.conflist")
	if err := os.WriteFile(conf, []byte(`{"cniVersion":"0.4.0","name":"foo","type":"ptp"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	otherBody := []byte(`{"cniVersion":"0.4.0","name":"other","plugins":[{"type":"bridge"}]}`)
	if err := os.WriteFile(other, otherBody, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Installer{ConfDir: dir, BinDir: t.TempDir()}.Install()
	if err == nil || !strings.Contains(err.Error(), "10-foo.conflist exists already") {
		t.Fatalf("Install: %v, want an error naming 10-foo.conflist", err)
	}
	if got, _ := os.ReadFile(other); string(got) != string(otherBody) {
		t.Errorf("10-foo.conflist was changed to %s", got)
	}
	if _, err := os.Stat(conf); err != nil {
		t.Errorf("10-foo.conf: %v", err)
	}
}
