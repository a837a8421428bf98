package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type pflagFlag = pflag.Flag

// TestAgentFlagsFailEarly: a wrong flag or value stops the agent before it
// touches anything, with a message that names the flag.
func TestAgentFlagsFailEarly(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"agent"}, "no node name: set --node-name or NODE_NAME"},
		{[]string{"agent", "--node-name", "n1", "--attach-mode", "fast"}, "invalid --attach-mode"},
		{[]string{"agent", "--node-name", "n1", "--redirect-peer", "maybe"}, "invalid --redirect-peer"},
		{[]string{"agent", "--node-name", "n1", "--node-ip", "300.1.1.1"}, `invalid --node-ip "300.1.1.1"`},
		{[]string{"agent", "--node-name", "n1", "--log-format", "xml"}, "invalid --log-format"},
		{[]string{"agent", "--node-name", "n1", "--log-level", "loud"}, "invalid --log-level"},
		{[]string{"agent", "--node-name", "n1", "--ztunnel-mode", "sidecar"}, "invalid --ztunnel-mode"},
		{[]string{"agent", "--node-name", "n1", "--pods-max-entries", "0"}, "invalid --pods-max-entries 0"},
		{[]string{"agent", "--node-name", "n1", "--resync-period", "1ms"}, "invalid --resync-period"},
		{[]string{"agent", "--node-name", "n1", "--no-such-flag"}, "unknown flag: --no-such-flag"},
	} {
		_, err := runCmd(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}

// TestHelpExplainsEveryFlag: every flag of every command has a usage text,
// and --help shows the defaults.
func TestHelpExplainsEveryFlag(t *testing.T) {
	root := newRootCmd()
	for _, cmd := range root.Commands() {
		cmd.Flags().VisitAll(func(f *pflagFlag) {
			if len(strings.TrimSpace(f.Usage)) < 10 {
				t.Errorf("%s --%s: usage %q explains nothing", cmd.Name(), f.Name, f.Usage)
			}
		})
	}
	out, err := runCmd(t, "agent", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"--capture-dns", "--fail-open", `(default "app=ztunnel")`, "(default 65536)", "/etc/ambient-config/config.json"} {
		if !strings.Contains(out, s) {
			t.Errorf("agent --help lacks %q", s)
		}
	}
}

// TestProcSysNetFlag: --proc-sys-net reaches the dataplane's configuration
// (the DaemonSet mounts the host's /proc/sys/net at /host/proc/sys/net, as
// runc refuses mounts under /proc) and defaults to /proc/sys/net; uninstall,
// which sets in-pod pods' sysctls back, has it too.
func TestProcSysNetFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "/proc/sys/net"},
		{[]string{"--proc-sys-net=/host/proc/sys/net"}, "/host/proc/sys/net"},
	} {
		var f agentFlags
		cmd := &cobra.Command{Use: "agent"}
		f.register(cmd)
		if err := cmd.ParseFlags(append([]string{"--node-name=n1"}, c.args...)); err != nil {
			t.Fatal(err)
		}
		cfg, err := f.config()
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Dataplane.ProcSysNet; got != c.want {
			t.Errorf("%v: Dataplane.ProcSysNet = %q, want %q", c.args, got, c.want)
		}
	}
	if fl := newUninstallCmd().Flags().Lookup("proc-sys-net"); fl == nil || fl.DefValue != "/proc/sys/net" {
		t.Errorf("uninstall --proc-sys-net: %+v, want a flag defaulting to /proc/sys/net", fl)
	}
}
