package kubeapi

import (
	"bytes"
	"errors"
	"os"
	"strings"

	"github.com/meshredirect/meshredirect/testenv/proc"
)

// errPortTaken marks a start that lost the race for a port picked by freePort to another
// process; Start tries again with new ports.
var errPortTaken = errors.New("port taken")

// portTaken reports whether a child that exited early did so because a port was in use.
func portTaken(c *proc.Process) bool {
	b, err := os.ReadFile(c.LogPath)
	return err == nil && bytes.Contains(b, []byte("address already in use"))
}

// childEnv is the environment for a child: this process's, less what would reconfigure it
// behind the flags' back (etcd reads every ETCD_* variable as a flag).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "ETCD_") || strings.HasPrefix(kv, "KUBECONFIG=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
