package vm

// Where things are in the guest's initramfs.
const (
	GuestPlanPath   = "vm/plan.json" // the Plan, as JSON
	GuestModulesDir = "modules"      // <name>.ko and load.txt, the load order
	GuestPkgDir     = "pkg"          // pkg/<name>/<name>.test and its testdata
	GuestCNIDir     = "opt/cni-ref"  // the reference CNI plugins, if given
	GuestOutput     = "/dev/ttyS1"   // where the tests' output goes
	// GuestModprobe is the kernel's usermode modprobe (the default of
	// /proc/sys/kernel/modprobe), a link to init, which notes each request
	// in GuestModprobeLog.
	GuestModprobe    = "sbin/modprobe"
	GuestModprobeLog = "/run/modprobe-requests"
)

// Plan is what the guest's init runs, written by the host into the
// initramfs.
type Plan struct {
	// Packages run one after the other, each in its own directory (the
	// test binary's working directory, where its testdata is).
	Packages []GuestPackage `json:"packages"`
	// Env is the environment of every test binary, on top of PATH, HOME
	// and TMPDIR.
	Env []string `json:"env"`
	// KillAfterSeconds ends a test binary that outlives its own
	// -test.timeout by this much (a test stuck in the kernel never sees
	// its timeout panic).
	KillAfterSeconds int `json:"kill_after_seconds"`
	// MemlockUnlimited lifts RLIMIT_MEMLOCK for the test binaries. Left
	// off, they get the kernel's default for init (64 KiB before 5.16, 8
	// MiB since), which before 5.11 is also what BPF maps are charged
	// against: the way to see what a program that does not lift it hits.
	MemlockUnlimited bool `json:"memlock_unlimited"`
}

// GuestPackage is one test binary to run.
type GuestPackage struct {
	Name   string   `json:"name"`   // "asm"; the table's package column
	Dir    string   `json:"dir"`    // working directory, /pkg/<name>
	Binary string   `json:"binary"` // /pkg/<name>/<name>.test
	Args   []string `json:"args"`   // -test.v -test.timeout=...
}

// Marker starts every line that the guest's init writes into the output
// stream between the test binaries' own lines:
//
//	@@kernel-matrix kernel <uname -r> <uname -v>
//	@@kernel-matrix module <name> ok|<error>
//	@@kernel-matrix setup <error>
//	@@kernel-matrix begin <package>
//	@@kernel-matrix end <package> exit=<code> seconds=<wall time>
//	@@kernel-matrix modprobe <package> <module or alias>...
//	@@kernel-matrix done
//
// The init starts a marker on a new line if the binary's output did not end
// with one.
const Marker = "@@kernel-matrix "
