package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// all5 is the chart's set; without removes capabilities from a set.
var all5 = uint64(1<<unix.CAP_BPF | 1<<unix.CAP_NET_ADMIN | 1<<unix.CAP_SYS_ADMIN | 1<<unix.CAP_SYS_RESOURCE | 1<<unix.CAP_SYS_PTRACE)

func without(set uint64, bits ...int) uint64 {
	for _, b := range bits {
		set &^= 1 << uint(b)
	}
	return set
}

// TestMissingCapabilities has a row per rule of Host.Needs.
func TestMissingCapabilities(t *testing.T) {
	k510, k511, k61, k54 := [2]int{5, 10}, [2]int{5, 11}, [2]int{6, 1}, [2]int{5, 4}
	const bpfKnown, bpfUnknown = unix.CAP_CHECKPOINT_RESTORE, unix.CAP_AUDIT_READ // 5.9+, 5.4
	for _, c := range []struct {
		name string
		host Host
		want []string
	}{
		{"the chart's five on 6.1", Host{Effective: all5, LastCap: bpfKnown, Kernel: k61}, nil},
		{"root on 6.1", Host{Effective: 1<<41 - 1, LastCap: bpfKnown, Kernel: k61}, nil},
		{"nothing on 6.1", Host{LastCap: bpfKnown, Kernel: k61}, []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}},
		{"nothing on 5.10", Host{LastCap: bpfKnown, Kernel: k510}, []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_PTRACE"}},
		{"no BPF on 6.1: SYS_ADMIN would do, the chart's contract does not", Host{Effective: without(all5, unix.CAP_BPF), LastCap: bpfKnown, Kernel: k61}, []string{"CAP_BPF"}},
		{"no BPF on a kernel without it", Host{Effective: without(all5, unix.CAP_BPF), LastCap: bpfUnknown, Kernel: k54}, nil},
		{"no SYS_ADMIN on a kernel without BPF", Host{Effective: without(all5, unix.CAP_BPF, unix.CAP_SYS_ADMIN), LastCap: bpfUnknown, Kernel: k54}, []string{"CAP_SYS_ADMIN"}},
		{"no NET_ADMIN", Host{Effective: without(all5, unix.CAP_NET_ADMIN), LastCap: bpfKnown, Kernel: k61}, []string{"CAP_NET_ADMIN"}},
		{"no SYS_ADMIN", Host{Effective: without(all5, unix.CAP_SYS_ADMIN), LastCap: bpfKnown, Kernel: k61}, []string{"CAP_SYS_ADMIN"}},
		{"no SYS_PTRACE", Host{Effective: without(all5, unix.CAP_SYS_PTRACE), LastCap: bpfKnown, Kernel: k61}, []string{"CAP_SYS_PTRACE"}},
		{"no SYS_RESOURCE on 5.11: memcg accounting", Host{Effective: without(all5, unix.CAP_SYS_RESOURCE), LastCap: bpfKnown, Kernel: k511}, nil},
		{"no SYS_RESOURCE on 5.10", Host{Effective: without(all5, unix.CAP_SYS_RESOURCE), LastCap: bpfKnown, Kernel: k510}, []string{"CAP_SYS_RESOURCE"}},
		{"no SYS_RESOURCE on 5.10, memlock unlimited", Host{Effective: without(all5, unix.CAP_SYS_RESOURCE), LastCap: bpfKnown, Kernel: k510, MemlockUnlimited: true}, nil},
		{"no SYS_RESOURCE, kernel unknown", Host{Effective: without(all5, unix.CAP_SYS_RESOURCE), LastCap: bpfKnown}, []string{"CAP_SYS_RESOURCE"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, m := range c.host.Missing() {
				got = append(got, m.Name)
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("missing %v, want %v", got, c.want)
			}
			err := c.host.Err()
			if (err == nil) != (len(c.want) == 0) {
				t.Fatalf("Err() = %v", err)
			}
			if err == nil {
				return
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(c.want) {
				t.Fatalf("%d lines, want one per capability:\n%s", len(lines), err)
			}
			for i, l := range lines {
				if !strings.HasPrefix(l, "missing capability "+c.want[i]+": needed to ") ||
					!strings.HasSuffix(l, " (the chart grants BPF, NET_ADMIN, SYS_ADMIN, SYS_RESOURCE with liftMemlock=true, SYS_PTRACE)") {
					t.Errorf("line %q", l)
				}
			}
		})
	}
}

// TestMissingCapabilityMessage pins the exact wording of one message.
func TestMissingCapabilityMessage(t *testing.T) {
	h := Host{Effective: without(all5, unix.CAP_NET_ADMIN), LastCap: unix.CAP_LAST_CAP, Kernel: [2]int{6, 18}}
	const want = "missing capability CAP_NET_ADMIN: needed to attach programs and set sysctls, routes and rules (the chart grants BPF, NET_ADMIN, SYS_ADMIN, SYS_RESOURCE with liftMemlock=true, SYS_PTRACE)"
	if err := h.Err(); err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

// TestMissingCapabilityMessageMemlock: on a kernel before 5.11 the message
// says which chart value grants CAP_SYS_RESOURCE, which the chart leaves out
// by default; from 5.11 the agent starts without it.
func TestMissingCapabilityMessageMemlock(t *testing.T) {
	h := Host{Effective: without(all5, unix.CAP_SYS_RESOURCE), LastCap: unix.CAP_LAST_CAP, Kernel: [2]int{5, 10}}
	const want = "missing capability CAP_SYS_RESOURCE: needed to lift RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps and programs to: " +
		"install the chart with liftMemlock=true (the chart grants BPF, NET_ADMIN, SYS_ADMIN, SYS_RESOURCE with liftMemlock=true, SYS_PTRACE)"
	if err := h.Err(); err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
	h.Kernel = [2]int{5, 11}
	if err := h.Err(); err != nil {
		t.Errorf("on 5.11 without CAP_SYS_RESOURCE: %v", err)
	}
}

func TestParseKernelVersion(t *testing.T) {
	for _, c := range []struct {
		release string
		want    [2]int
	}{
		{"6.18.44-fc-v782", [2]int{6, 18}},
		{"5.10.0-28-amd64", [2]int{5, 10}},
		{"5.4.0-100-generic", [2]int{5, 4}},
		{"4.18.0-513.el8.x86_64", [2]int{4, 18}},
		{"6.1", [2]int{6, 1}},
		{"6.12rc1", [2]int{6, 12}},
		{"6", [2]int{}},
		{"", [2]int{}},
		{"x.y.z", [2]int{}},
	} {
		if got := parseKernelVersion(c.release); got != c.want {
			t.Errorf("parseKernelVersion(%q) = %v, want %v", c.release, got, c.want)
		}
	}
}

func TestCapabilityNames(t *testing.T) {
	if got, want := CapabilityNames(all5), "cap_net_admin,cap_sys_ptrace,cap_sys_admin,cap_sys_resource,cap_bpf"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got := CapabilityNames(1 << 45); got != "45" {
		t.Errorf("an unknown capability: %s", got)
	}
	for i, c := range ChartCapabilities {
		if got := CapabilityNames(1 << uint(c.Bit)); got != strings.ToLower(c.Name) {
			t.Errorf("ChartCapabilities[%d]: %s is bit %d, named %s", i, c.Name, c.Bit, got)
		}
	}
}

// TestReadHost compares ReadHost with /proc/self/status.
func TestReadHost(t *testing.T) {
	h, err := ReadHost()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			want, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if h.Effective != want {
				t.Errorf("effective %#x, /proc/self/status %#x", h.Effective, want)
			}
		}
	}
	if h.Kernel == [2]int{} || h.LastCap < unix.CAP_AUDIT_READ {
		t.Errorf("host %+v", h)
	}
	t.Logf("host: %+v (%s); missing: %v", h, CapabilityNames(h.Effective), h.Missing())
}
