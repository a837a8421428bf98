package cni

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var testAccess = APIAccess{Server: "https://10.96.0.1:443", CA: []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), Token: "eyJhbGciOi.token"}

// TestKubeconfigRoundTrip: what WriteKubeconfig writes (mode 0600, for it
// holds a token) ReadKubeconfig reads back; the same access again writes
// nothing, a rotated token rewrites the file, and no temporary file stays.
func TestKubeconfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, KubeconfigName)
	if wrote, err := WriteKubeconfig(path, testAccess); err != nil || !wrote {
		t.Fatalf("first write: wrote %v, %v", wrote, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	got, err := ReadKubeconfig(path)
	if err != nil || !reflect.DeepEqual(got, testAccess) {
		t.Fatalf("read back %+v, %v; want %+v", got, err, testAccess)
	}
	if wrote, err := WriteKubeconfig(path, testAccess); err != nil || wrote {
		t.Errorf("same access again: wrote %v, %v; want nothing written", wrote, err)
	}
	rotated := testAccess
	rotated.Token = "eyJhbGciOi.rotated"
	if wrote, err := WriteKubeconfig(path, rotated); err != nil || !wrote {
		t.Errorf("rotated token: wrote %v, %v", wrote, err)
	}
	if got, err := ReadKubeconfig(path); err != nil || got.Token != rotated.Token {
		t.Errorf("after rotation: %+v, %v", got, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want the kubeconfig alone: %v", len(entries), entries)
	}
}

// TestReadKubeconfigRefuses: a kubeconfig that does not give a server, a
// CA and a token is an error that names the file and what is missing.
func TestReadKubeconfigRefuses(t *testing.T) {
	good := string(testAccess.Kubeconfig())
	for _, c := range []struct {
		name, content, want string
	}{
		{"not JSON", "apiVersion: v1\nkind: Config\n", "parse kubeconfig"},
		{"no such context", strings.Replace(good, `"current-context": "meshredirect-cni"`, `"current-context": "other"`, 1), `no context "other"`},
		{"no CA", strings.Replace(good, `"certificate-authority-data"`, `"certificate-authority"`, 1), "no server or certificate-authority-data"},
		{"no token", strings.Replace(good, `"token"`, `"tokenFile"`, 1), "has no token"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), KubeconfigName)
			if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := ReadKubeconfig(path)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %v, want one naming %s and saying %q", err, path, c.want)
			}
		})
	}
	if _, err := ReadKubeconfig(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing kubeconfig read without error")
	}
}

// TestUninstallRemovesKubeconfig: uninstalling the plugin removes its
// kubeconfig, at the default path and at the one its entry names.
func TestUninstallRemovesKubeconfig(t *testing.T) {
	dir := confDir(t, "10-ptp.conflist")
	elsewhere := filepath.Join(t.TempDir(), "plugin-kubeconfig")
	in := Installer{ConfDir: dir, Entry: entry, Kubeconfig: elsewhere}
	for _, p := range []string{elsewhere, filepath.Join(dir, KubeconfigName)} {
		if _, err := WriteKubeconfig(p, testAccess); err != nil {
			t.Fatal(err)
		}
	}
	path, err := in.Install()
	if err != nil {
		t.Fatal(err)
	}
	list, _ := plugins(t, path)
	if got := list[len(list)-1]["kubeconfig"]; got != elsewhere {
		t.Errorf("entry's kubeconfig %v, want %s", got, elsewhere)
	}
	// The uninstall command knows only the directories: the entry says
	// where the kubeconfig is.
	if err := (Installer{ConfDir: dir}).Uninstall(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{elsewhere, filepath.Join(dir, KubeconfigName)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after uninstall (%v)", p, err)
		}
	}
}
