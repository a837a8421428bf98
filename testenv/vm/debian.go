package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel is a bootable kernel image and the modules built with it.
type Kernel struct {
	// Label names the kernel in reports: "6.1.192 (bookworm)".
	Label string `json:"label"`
	// Release is what uname -r says: "6.1.0-41-amd64".
	Release string `json:"release"`
	// Package and Version say where it came from: a Debian package
	// "linux-image-6.1.0-41-amd64" at "6.1.192-1".
	Package string `json:"package,omitempty"`
	Version string `json:"version,omitempty"`
	// Image is the kernel to boot (boot/vmlinuz-<release>).
	Image string `json:"image"`
	// Modules is its lib/modules/<release>, with depmod's indexes.
	Modules string `json:"modules"`
}

// DebianOptions says where Debian kernels come from and where they are
// kept.
type DebianOptions struct {
	// CacheDir keeps the private apt state and the unpacked kernels, one
	// directory per suite and flavour.
	CacheDir string
	// Mirror is the Debian archive; Security the security archive, which
	// carries a stable release's current kernel.
	Mirror, Security string
	// Flavour picks the image: linux-image-<flavour>, "amd64" or
	// "cloud-amd64".
	Flavour string
	// Refresh asks the archive for the suite's current kernel even when
	// one is cached; without it a cached kernel is used offline.
	Refresh bool
	// Log receives progress messages.
	Log io.Writer
}

// DebianKernel returns the current kernel of a Debian suite ("bookworm",
// "bookworm-backports", "trixie", "bullseye"), downloading and unpacking
// it on first use. It uses an apt configuration of its own, in CacheDir,
// so that the host's sources are never changed and its installed packages
// never matter; the kernel is never installed.
func DebianKernel(ctx context.Context, suite string, o DebianOptions) (*Kernel, error) {
	if !regexp.MustCompile(`^[a-z]+(-[a-z]+)?$`).MatchString(suite) {
		return nil, fmt.Errorf("debian suite %q: not a suite name such as bookworm or bookworm-backports", suite)
	}
	dir := filepath.Join(o.CacheDir, "debian", suite+"-"+o.Flavour)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	current := filepath.Join(dir, "current.json")
	if !o.Refresh {
		if k, err := readKernel(current); err == nil {
			return k, nil
		}
	}

	a := &aptConfig{dir: filepath.Join(dir, "apt"), log: o.Log}
	if err := a.setUp(suite, o.Mirror, o.Security); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Log, "asking the archive for the current linux-image-%s\n", o.Flavour)
	if _, err := a.run(ctx, "apt-get", "update", "-qq"); err != nil {
		return nil, fmt.Errorf("debian suite %s: %w", suite, err)
	}
	pkg, version, err := a.kernelPackage(ctx, "linux-image-"+o.Flavour)
	if err != nil {
		return nil, fmt.Errorf("debian suite %s: %w", suite, err)
	}

	tree := filepath.Join(dir, pkg+"_"+version)
	if _, err := os.Stat(filepath.Join(tree, ".complete")); err != nil {
		if err := a.fetch(ctx, pkg, version, tree); err != nil {
			return nil, fmt.Errorf("debian suite %s: %w", suite, err)
		}
	}
	k, err := kernelInTree(tree)
	if err != nil {
		return nil, err
	}
	k.Package, k.Version = pkg, version
	k.Label = fmt.Sprintf("%s (%s)", upstreamVersion(version), suite)
	b, _ := json.MarshalIndent(k, "", "  ")
	if err := writeFileAtomic(current, b); err != nil {
		return nil, err
	}
	pruneTrees(dir, tree, o.Log)
	return k, nil
}

// LocalKernel is a kernel already unpacked under dir, as dpkg-deb -x leaves
// a linux-image package: boot/vmlinuz-<release> and (usr/)lib/modules/<release>.
func LocalKernel(ctx context.Context, dir string) (*Kernel, error) {
	k, err := kernelInTree(dir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(k.Modules, "modules.dep")); err != nil {
		if err := depmod(ctx, dir); err != nil {
			return nil, err
		}
	}
	k.Label = k.Release + " (" + dir + ")"
	return k, nil
}

func kernelInTree(tree string) (*Kernel, error) {
	modules, err := modulesDir(tree)
	if err != nil {
		return nil, err
	}
	release := filepath.Base(modules)
	image := filepath.Join(tree, "boot", "vmlinuz-"+release)
	if _, err := os.Stat(image); err != nil {
		return nil, fmt.Errorf("kernel tree %s: %w", tree, err)
	}
	return &Kernel{Release: release, Image: image, Modules: modules}, nil
}

// modulesDir finds the one lib/modules/<release> (usr/lib/modules since
// trixie) of an unpacked kernel package.
func modulesDir(tree string) (string, error) {
	var dirs []string
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		m, _ := filepath.Glob(filepath.Join(tree, d, "*", "modules.order"))
		dirs = append(dirs, m...)
	}
	if len(dirs) != 1 {
		return "", fmt.Errorf("kernel tree %s: want one lib/modules/<release>/modules.order, found %d", tree, len(dirs))
	}
	return filepath.Dir(dirs[0]), nil
}

// depmod writes modules.dep and the other indexes of an unpacked kernel
// package, as its postinst would on installation.
func depmod(ctx context.Context, tree string) error {
	modules, err := modulesDir(tree)
	if err != nil {
		return err
	}
	tool, err := depmodPath()
	if err != nil {
		return err
	}
	// depmod -b reads <base>/lib/modules/<release>: base is the tree, or
	// its usr/ when the package has merged /usr (trixie on).
	base := filepath.Dir(filepath.Dir(filepath.Dir(modules)))
	out, err := exec.CommandContext(ctx, tool, "-b", base, filepath.Base(modules)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("depmod %s: %w: %s", modules, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// upstreamVersion turns a Debian version ("6.1.192-1", "6.12.57-1~bpo12+1")
// into the kernel's own ("6.1.192").
func upstreamVersion(v string) string {
	if i := strings.IndexAny(v, "-~+"); i > 0 {
		return v[:i]
	}
	return v
}

// aptConfig runs apt with state of its own: sources, lists, caches and an
// empty dpkg status, all under dir. The host's apt.conf.d still applies
// (proxies, mirrors' validity settings).
type aptConfig struct {
	dir string
	log io.Writer
}

func (a *aptConfig) setUp(suite, mirror, security string) error {
	for _, d := range []string{"sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial", "download"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(a.dir, "status"), nil, 0o644); err != nil {
		return err
	}
	if err := a.setUpParts(); err != nil {
		return err
	}
	const keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
	if _, err := os.Stat(keyring); err != nil {
		return fmt.Errorf("debian archive keyring: %w (apt-get install debian-archive-keyring)", err)
	}
	sources := fmt.Sprintf("Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n", mirror, suite, keyring)
	// A stable release's kernel updates are published in its security
	// suite first; backports and unstable have none.
	if !strings.Contains(suite, "-") && suite != "sid" && suite != "unstable" && suite != "experimental" {
		sources += fmt.Sprintf("\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n", security, suite, keyring)
	}
	return os.WriteFile(filepath.Join(a.dir, "sources.list.d", "kernel.sources"), []byte(sources), 0o644)
}

// setUpParts gives apt the host's apt.conf.d (proxies, the archive's
// validity settings) without its hooks: Debian images' docker-clean hook
// deletes /var/cache/apt/archives/partial/*.deb after every update, which
// would break an apt-get install running at the same time on the host.
// APT_CONFIG, read before any part, points apt at this copy.
func (a *aptConfig) setUpParts() error {
	parts := filepath.Join(a.dir, "apt.conf.d")
	os.RemoveAll(parts)
	if err := os.MkdirAll(parts, 0o755); err != nil {
		return err
	}
	host, _ := filepath.Glob("/etc/apt/apt.conf.d/*")
	for _, f := range host {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(parts, filepath.Base(f)), b, 0o644); err != nil {
			return err
		}
	}
	noHooks := "#clear APT::Update::Pre-Invoke;\n#clear APT::Update::Post-Invoke;\n#clear APT::Update::Post-Invoke-Success;\n#clear DPkg::Pre-Invoke;\n#clear DPkg::Post-Invoke;\n"
	if err := os.WriteFile(filepath.Join(parts, "zzzz-kernel-matrix"), []byte(noHooks), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(a.dir, "apt.conf"), []byte(fmt.Sprintf("Dir::Etc::Parts %q;\n", parts)), 0o644)
}

func (a *aptConfig) options() []string {
	return []string{
		"-o", "Dir::Etc::SourceList=/dev/null",
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(a.dir, "sources.list.d"),
		"-o", "Dir::Etc::Preferences=/dev/null",
		"-o", "Dir::Etc::PreferencesParts=" + filepath.Join(a.dir, "preferences.d"),
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::State::status=" + filepath.Join(a.dir, "status"),
		"-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
		// Only the package lists: no AppStream metadata, no translations.
		"-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
		"-o", "Acquire::Languages=none",
		// apt-get download writes into the cache as root; the _apt
		// sandbox user may not enter it.
		"-o", "APT::Sandbox::User=root",
	}
}

func (a *aptConfig) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, tool, append(a.options(), args...)...)
	cmd.Dir = filepath.Join(a.dir, "download")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C", "APT_CONFIG="+filepath.Join(a.dir, "apt.conf"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", tool, args[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// kernelPackage follows the flavour's metapackage (linux-image-amd64) to
// the versioned package it depends on (linux-image-6.1.0-41-amd64).
func (a *aptConfig) kernelPackage(ctx context.Context, meta string) (pkg, version string, err error) {
	out, err := a.run(ctx, "apt-cache", "show", "--no-all-versions", meta)
	if err != nil {
		return "", "", err
	}
	deps := controlField(out, "Depends")
	for _, d := range strings.Split(deps, ",") {
		name, rest, _ := strings.Cut(strings.TrimSpace(d), " ")
		if strings.HasPrefix(name, "linux-image-") {
			pkg = name
			version = strings.Trim(strings.TrimSpace(rest), "(=) ")
			break
		}
	}
	if pkg == "" {
		return "", "", fmt.Errorf("%s depends on no linux-image package (Depends: %s)", meta, deps)
	}
	if version == "" {
		out, err := a.run(ctx, "apt-cache", "show", "--no-all-versions", pkg)
		if err != nil {
			return "", "", err
		}
		version = controlField(out, "Version")
	}
	return pkg, version, nil
}

// fetch downloads the package and unpacks it to tree with dpkg-deb -x.
// The .deb is deleted afterwards: the unpacked tree is the cache.
func (a *aptConfig) fetch(ctx context.Context, pkg, version, tree string) error {
	fmt.Fprintf(a.log, "downloading %s %s\n", pkg, version)
	download := filepath.Join(a.dir, "download")
	old, _ := filepath.Glob(filepath.Join(download, "*.deb"))
	for _, f := range old {
		os.Remove(f)
	}
	if _, err := a.run(ctx, "apt-get", "download", "-qq", pkg+"="+version); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(download, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files in %s", pkg, len(debs), download)
	}
	defer os.Remove(debs[0])

	fmt.Fprintf(a.log, "unpacking %s\n", filepath.Base(debs[0]))
	tmp := tree + ".partial"
	os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", debs[0], err, strings.TrimSpace(string(out)))
	}
	if err := depmod(ctx, tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return err
	}
	os.RemoveAll(tree)
	return os.Rename(tmp, tree)
}

// controlField returns a field of the first paragraph of apt-cache show.
func controlField(out []byte, field string) string {
	for _, line := range strings.Split(string(out), "\n") {
		if line == "" {
			break
		}
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// pruneTrees removes the unpacked kernels of a suite other than keep: an
// older one the archive no longer offers only takes space.
func pruneTrees(dir, keep string, log io.Writer) {
	trees, _ := filepath.Glob(filepath.Join(dir, "linux-image-*"))
	for _, t := range trees {
		if t != keep {
			fmt.Fprintf(log, "removing %s, superseded by %s\n", t, filepath.Base(keep))
			os.RemoveAll(t)
		}
	}
}

func readKernel(file string) (*Kernel, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var k Kernel
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, err
	}
	for _, p := range []string{k.Image, filepath.Join(k.Modules, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	return &k, nil
}

func writeFileAtomic(file string, data []byte) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// lockDir takes an exclusive lock on dir, so that two runs sharing a cache
// do not download into the same place at once.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
