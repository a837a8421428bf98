package agent

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Capability is a Linux capability the agent's container is granted, and
// what the agent does with it.
type Capability struct {
	// Name is the capability as capabilities(7) spells it: CAP_NET_ADMIN.
	Name string
	// Bit is its number: unix.CAP_NET_ADMIN.
	Bit int
	// Why says what it is needed for, for the message when it is missing.
	Why string
}

// ChartCapabilities are the capabilities the chart grants the agent's
// container, in the chart's order; every other one is dropped
// (deploy/README.md, Privileges). CAP_SYS_RESOURCE is granted only with
// the chart value liftMemlock=true, for kernels before 5.11. Host.Missing
// says which of them the agent needs on a given kernel.
var ChartCapabilities = []Capability{
	{"CAP_BPF", unix.CAP_BPF, "needed to load the programs, create and pin the maps and make tcx links"},
	{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN, "needed to attach programs and set sysctls, routes and rules"},
	{"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN, "needed to enter ztunnel's network namespace with setns"},
	{"CAP_SYS_RESOURCE", unix.CAP_SYS_RESOURCE, "needed to lift RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps and programs to: install the chart with liftMemlock=true"},
	{"CAP_SYS_PTRACE", unix.CAP_SYS_PTRACE, "needed to open /proc/<pid>/ns/net of ztunnel and other processes"},
}

// chartGrants is the parenthesis of every message: what to compare the
// container's capabilities with.
const chartGrants = "the chart grants BPF, NET_ADMIN, SYS_ADMIN, SYS_RESOURCE with liftMemlock=true, SYS_PTRACE"

// Host is what decides which capabilities the agent needs on a node, and
// which it holds.
type Host struct {
	// Effective is the process's effective capability set, bit n for
	// capability n.
	Effective uint64
	// LastCap is the highest capability the kernel knows
	// (/proc/sys/kernel/cap_last_cap); CAP_BPF (39) exists from 5.8.
	LastCap int
	// Kernel is the running kernel's major and minor version (uname -r);
	// zero if it could not be read.
	Kernel [2]int
	// MemlockUnlimited says RLIMIT_MEMLOCK's hard limit is already
	// infinite: lifting the soft limit up to it needs no capability.
	MemlockUnlimited bool
}

// Has reports whether c is in the effective set.
func (h Host) Has(c Capability) bool { return h.Effective&(1<<uint(c.Bit)) != 0 }

// Needs reports whether the agent needs c on h, and if not, why not.
//
// Every capability of the chart is needed, with two exceptions that depend
// on the kernel, not on what the agent does:
//   - CAP_BPF only where the kernel has it (5.8+, LastCap >= 39). Before,
//     bpf() is allowed by CAP_SYS_ADMIN, which the agent needs anyway. Where
//     it exists it is required although CAP_SYS_ADMIN would also pass
//     bpf_capable(): the chart promises that bpf() rests on CAP_BPF, and a
//     container that lacks it is not the one the chart describes.
//   - CAP_SYS_RESOURCE only on kernels before 5.11, which charge BPF maps
//     and programs to RLIMIT_MEMLOCK (5.11 moved them to the memory cgroup,
//     where cilium/ebpf's rlimit.RemoveMemlock leaves the limit alone), and
//     only when the hard limit is not infinite already (raising the soft
//     limit up to it needs nothing). A version number is trusted because
//     the error only goes one way: a distribution kernel below 5.11 with
//     memcg accounting backported is asked for a capability the chart
//     grants anyway; a version that cannot be read counts as before 5.11.
//     cilium/ebpf's own probe (a map created under a zero limit) cannot
//     decide it: without CAP_BPF it fails as it does on an old kernel.
func (h Host) Needs(c Capability) (bool, string) {
	switch c.Bit {
	case unix.CAP_BPF:
		if h.LastCap < unix.CAP_BPF {
			return false, "this kernel has no CAP_BPF (before 5.8): CAP_SYS_ADMIN allows bpf()"
		}
	case unix.CAP_SYS_RESOURCE:
		if h.Kernel != [2]int{} && !versionBefore(h.Kernel, [2]int{5, 11}) {
			return false, fmt.Sprintf("kernel %d.%d charges BPF memory to the memory cgroup, not RLIMIT_MEMLOCK", h.Kernel[0], h.Kernel[1])
		}
		if h.MemlockUnlimited {
			return false, "RLIMIT_MEMLOCK is unlimited already"
		}
	}
	return true, ""
}

// Missing returns the capabilities the agent needs on h and does not hold,
// in the chart's order.
func (h Host) Missing() []Capability {
	var out []Capability
	for _, c := range ChartCapabilities {
		if need, _ := h.Needs(c); need && !h.Has(c) {
			out = append(out, c)
		}
	}
	return out
}

// MissingCapabilitiesError names every capability the agent needs and
// lacks, one line each.
type MissingCapabilitiesError struct {
	Missing []Capability
}

func (e *MissingCapabilitiesError) Error() string {
	lines := make([]string, len(e.Missing))
	for i, c := range e.Missing {
		lines[i] = fmt.Sprintf("missing capability %s: %s (%s)", c.Name, c.Why, chartGrants)
	}
	return strings.Join(lines, "\n")
}

// Err returns a *MissingCapabilitiesError if the agent lacks a capability
// it needs on h, else nil.
func (h Host) Err() error {
	if m := h.Missing(); len(m) > 0 {
		return &MissingCapabilitiesError{Missing: m}
	}
	return nil
}

// ReadHost reads the effective capabilities of the calling thread (a Go
// program's threads share them), the kernel's last capability and version,
// and RLIMIT_MEMLOCK. It changes nothing.
func ReadHost() (Host, error) {
	var h Host
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return h, fmt.Errorf("read the capabilities of the agent: %w", err)
	}
	h.Effective = uint64(data[1].Effective)<<32 | uint64(data[0].Effective)

	// Absent before 3.2: such a kernel knows no CAP_BPF either.
	h.LastCap = unix.CAP_BPF - 1
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			h.LastCap = n
		}
	}

	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		h.Kernel = parseKernelVersion(unix.ByteSliceToString(uts.Release[:]))
	}

	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err == nil {
		h.MemlockUnlimited = lim.Max == unix.RLIM_INFINITY
	}
	return h, nil
}

// CheckCapabilities stops the agent before it touches anything when it
// lacks a capability it needs on this node, with an error that names each
// one and what it is for. Without it, a missing capability shows up as an
// EPERM halfway through start (maps created, nothing attached) or, for
// CAP_SYS_PTRACE, as a ztunnel that is never found. It logs what it found.
func CheckCapabilities(log *slog.Logger) error {
	h, err := ReadHost()
	if err != nil {
		return err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var notNeeded []string
	for _, c := range ChartCapabilities {
		if need, why := h.Needs(c); !need && !h.Has(c) {
			notNeeded = append(notNeeded, c.Name+": "+why)
		}
	}
	log.Info("capabilities", "effective", fmt.Sprintf("%#x", h.Effective), "names", CapabilityNames(h.Effective),
		"kernel", fmt.Sprintf("%d.%d", h.Kernel[0], h.Kernel[1]), "notHeldNotNeeded", notNeeded)
	return h.Err()
}

// capNames are the capabilities' names by number (capabilities(7)).
var capNames = [...]string{
	"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
	"setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
	"sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
	"sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
	"mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
	"checkpoint_restore",
}

// CapabilityNames spells a capability set as capsh --decode does
// (cap_net_admin,cap_sys_admin), numbers for capabilities newer than this
// list.
func CapabilityNames(set uint64) string {
	var names []string
	for bit := 0; bit < 64; bit++ {
		if set&(1<<uint(bit)) == 0 {
			continue
		}
		if bit < len(capNames) {
			names = append(names, "cap_"+capNames[bit])
		} else {
			names = append(names, strconv.Itoa(bit))
		}
	}
	return strings.Join(names, ",")
}

// parseKernelVersion reads major and minor from a release such as
// "6.1.0-18-amd64" or "5.10.209"; zero if it has none.
func parseKernelVersion(release string) [2]int {
	var v [2]int
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return [2]int{}
	}
	for i := range v {
		digits := parts[i]
		if end := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); end >= 0 {
			digits = digits[:end]
		}
		n, err := strconv.Atoi(digits)
		if err != nil {
			return [2]int{}
		}
		v[i] = n
	}
	return v
}

func versionBefore(v, than [2]int) bool {
	return v[0] < than[0] || v[0] == than[0] && v[1] < than[1]
}
