package kubeapi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Version is the Kubernetes release that hack/kubebins/build.sh builds; both name their cache
// directory after it, so keep the two in step.
const Version = "v1.37.2"

// ErrNoBinaries is returned by [Binaries] (wrapped, with the directory searched) when
// kube-apiserver or etcd has not been built.
var ErrNoBinaries = errors.New("kube-apiserver and etcd not built")

// CacheDir returns the directory that hack/kubebins/build.sh builds into:
// $MESHREDIRECT_KUBE_CACHE if set, else ${XDG_CACHE_HOME:-$HOME/.cache}/meshredirect/kube/<Version>.
func CacheDir() string {
	if dir := os.Getenv("MESHREDIRECT_KUBE_CACHE"); dir != "" {
		return dir
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		base = filepath.Join(os.Getenv("HOME"), ".cache")
	}
	return filepath.Join(base, "meshredirect", "kube", Version)
}

// Binaries returns the paths of kube-apiserver and etcd in [CacheDir], or an error wrapping
// [ErrNoBinaries] if either is missing or not executable.
func Binaries() (apiserver, etcd string, err error) {
	dir := CacheDir()
	apiserver = filepath.Join(dir, "kube-apiserver")
	etcd = filepath.Join(dir, "etcd")
	for _, bin := range []string{apiserver, etcd} {
		fi, err := os.Stat(bin)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return "", "", fmt.Errorf("find %s: %w (run `make kube-bins` or hack/kubebins/build.sh)", bin, ErrNoBinaries)
		}
	}
	return apiserver, etcd, nil
}
