// Command pause is the process of a Kubernetes pod sandbox, as
// registry.k8s.io/pause is, for a real node with no registry to pull from
// (internal/ociimage builds its image, meshredirect.test/pause).
//
// The sandbox's process holds the pod's namespaces open while the pod's
// containers come and go; it does nothing else. It blocks until SIGINT or
// SIGTERM and then exits 0. With shareProcessNamespace it is PID 1 of the
// pod's PID namespace, and orphans are re-parented to it, so it reaps them
// (wait4 on every SIGCHLD) lest they stay zombies until the pod goes.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "pause: %v, exiting\n", sig)
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child: signals coalesce, so one SIGCHLD may
// stand for several.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil { // none exited yet (0), or no children at all (ECHILD)
			return
		}
	}
}
