package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshredirect/meshredirect/cni"
)

// TestCNIKubeconfigInstalled: with API access to give, the agent installs
// the plugin's kubeconfig (mode 0600) before the conflist entry that names
// it, leaves it alone while the token stays, rewrites it when the token
// rotates, and uninstalling the plugin removes it.
func TestCNIKubeconfigInstalled(t *testing.T) {
	confDir := t.TempDir()
	primary, err := os.ReadFile("../cni/testdata/10-ptp.conflist")
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(confDir, "10-ptp.conflist"), primary, 0o644))
	token := "first"
	a := &Agent{log: slog.New(slog.DiscardHandler), cfg: Config{ExcludedNamespaces: DefaultExcludedNamespaces,
		CNI: CNIConfig{Socket: "/run/cni.sock", Install: true, ConfDir: confDir,
			APIAccess: func() (cni.APIAccess, error) {
				return cni.APIAccess{Server: "https://10.96.0.1:443", CA: []byte("ca"), Token: token}, nil
			}}}}
	in := a.installer()
	path := filepath.Join(confDir, cni.KubeconfigName)
	if in.Kubeconfig != path {
		t.Fatalf("kubeconfig at %q, want %q (the default)", in.Kubeconfig, path)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.keepCNIInstalled(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ok, _ := in.Installed(); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the plugin was not installed within 10s")
		}
	}
	cancel()
	<-done

	st, err := os.Stat(path)
	must(err)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig mode %v, want 0600", st.Mode().Perm())
	}
	if got, err := cni.ReadKubeconfig(path); err != nil || got.Token != "first" || got.Server != "https://10.96.0.1:443" {
		t.Errorf("kubeconfig holds %+v, %v", got, err)
	}
	raw, err := os.ReadFile(filepath.Join(confDir, "10-ptp.conflist"))
	must(err)
	if !json.Valid(raw) || !bytes.Contains(raw, []byte(`"kubeconfig": "`+path+`"`)) {
		t.Errorf("the plugin's entry does not name its kubeconfig:\n%s", raw)
	}

	a.writeCNIKubeconfig(path)
	again, err := os.Stat(path)
	must(err)
	if !os.SameFile(st, again) {
		t.Error("the same token rewrote the kubeconfig")
	}
	token = "rotated"
	a.writeCNIKubeconfig(path)
	if got, err := cni.ReadKubeconfig(path); err != nil || got.Token != "rotated" {
		t.Errorf("after the token rotated, the kubeconfig holds %+v, %v", got, err)
	}

	must((cni.Installer{ConfDir: confDir}).Uninstall())
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("kubeconfig still there after uninstall: %v", err)
	}
}

// TestCNINoKubeconfigOutsideACluster: without API access to give (the
// agent runs outside a cluster), the entry names no kubeconfig.
func TestCNINoKubeconfigOutsideACluster(t *testing.T) {
	a := &Agent{cfg: Config{CNI: CNIConfig{ConfDir: t.TempDir(), Kubeconfig: "/somewhere"}}}
	if in := a.installer(); in.Kubeconfig != "" {
		t.Errorf("installer would write a kubeconfig at %s", in.Kubeconfig)
	}
}

// TestInClusterAPIAccess: the plugin gets the API server from the
// Service environment (an IPv6 one in brackets) and the ServiceAccount's
// files, the token without its newline.
func TestInClusterAPIAccess(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("eyJ.tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	got, err := InClusterAPIAccess(dir)()
	if err != nil || got.Server != "https://[fd00:10:96::1]:443" || string(got.CA) != "PEM" || got.Token != "eyJ.tok" {
		t.Errorf("got %+v, %v", got, err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := InClusterAPIAccess(dir)(); err == nil {
		t.Error("no error outside a pod")
	}
}
