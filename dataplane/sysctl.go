package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// sysctlDir is the directory of the net sysctls: /proc/sys/net, or the
// host's mounted elsewhere (Config.ProcSysNet) in a container, where the
// runtime mounts /proc/sys read-only and refuses a mount under /proc (runc
// checks the destination). Keys are relative to it: "ipv4/conf/lo/rp_filter".
//
// Wherever it is mounted, a file under it is the sysctl of the netns of the
// thread that opens it: the kernel resolves net sysctls in current's netns
// (net_ctl_header_lookup), and through a bind mount the lookup is the same
// one. So the writes made in nsLink.Do land in that netns, and one mount
// serves the node's netns, ztunnel's and every pod's.
type sysctlDir string

func (d sysctlDir) path(key string) string { return filepath.Join(string(d), key) }

func (d sysctlDir) read(key string) (string, error) {
	b, err := os.ReadFile(d.path(key))
	return strings.TrimSpace(string(b)), err
}

func (d sysctlDir) readInt(key string) (int, error) {
	s, err := d.read(key)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(s)
}

// write sets every key to its value, all of them even when one fails.
func (d sysctlDir) write(kv map[string]string) error {
	var errs []error
	for k, v := range kv {
		path := d.path(k)
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("write %s: %w", path, err))
		}
	}
	return errors.Join(errs...)
}

// check says, before anything is touched, whether d holds the net sysctls.
func (d sysctlDir) check() error {
	if _, err := os.Stat(d.path("ipv4/conf/all/rp_filter")); err != nil {
		return fmt.Errorf("find the net sysctls: %w (is the host's /proc/sys/net mounted at %s?)", err, string(d))
	}
	return nil
}
