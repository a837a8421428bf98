package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/meshredirect/meshredirect/testenv"
)

// script is what a mode installs in one namespace, kept as the commands
// an operator would type, so that BENCHMARKS.md can print exactly what
// each mode ran.
type script struct {
	// Where names the namespace: "node", "ztunnel", "client", "server".
	Where string
	Steps []step
}

// step is one command. Cmd is split on spaces and run inside the
// namespace (forked from a thread in it); "sysctl -w k=v" is written to
// /proc/sys in-process. Stdin, if set, is the command's input (an
// iptables-restore ruleset).
type step struct {
	Cmd   string
	Stdin string
}

// String renders the script as shell.
func (s script) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# in the %s's network namespace\n", s.Where)
	for _, st := range s.Steps {
		if st.Stdin != "" {
			fmt.Fprintf(&b, "%s <<'EOF'\n%sEOF\n", st.Cmd, st.Stdin)
			continue
		}
		b.WriteString(st.Cmd + "\n")
	}
	return b.String()
}

// run runs every step in ns, stopping at the first failure.
func (s script) run(ns *testenv.Namespace) error {
	for _, st := range s.Steps {
		if err := st.run(ns); err != nil {
			return fmt.Errorf("in the %s's netns: %w", s.Where, err)
		}
	}
	return nil
}

func (st step) run(ns *testenv.Namespace) error {
	if kv, ok := strings.CutPrefix(st.Cmd, "sysctl -w "); ok {
		return ns.Do(func() error { return writeSysctl(kv) })
	}
	argv := strings.Fields(st.Cmd)
	cmd := exec.Command(argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if st.Stdin != "" {
		cmd.Stdin = strings.NewReader(st.Stdin)
	}
	if err := ns.Start(cmd); err != nil {
		return fmt.Errorf("start %q: %w", st.Cmd, err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%q: %w: %s", st.Cmd, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// writeSysctl writes "net.ipv4.conf.all.rp_filter=0" (dots or slashes)
// to /proc/sys; call it inside the namespace it is for.
func writeSysctl(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok {
		return fmt.Errorf("sysctl %q: want key=value", kv)
	}
	path := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		return fmt.Errorf("sysctl -w %s: %w", kv, err)
	}
	return nil
}

// rpFilterOff turns IPv4 reverse path filtering off on every interface of
// ns (and "all" and "default"): proxies send with their clients'
// addresses, and every mode gets the same setting so that none pays for a
// check the others skip.
func rpFilterOff(ns *testenv.Namespace) error {
	return ns.Do(func() error {
		entries, err := os.ReadDir("/proc/sys/net/ipv4/conf")
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := writeSysctl("net/ipv4/conf/" + e.Name() + "/rp_filter=0"); err != nil {
				return err
			}
		}
		return nil
	})
}
