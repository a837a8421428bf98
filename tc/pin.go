package tc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Names in the pin directory. bpffs refuses names with a dot
// (kernel/bpf/inode.c:bpf_lookup), hence dashes.
//
//	tcx-<netns>-if<ifindex>-<direction>  a pinned tcx link
//	clsact-<netns>-if<ifindex>           a directory: we created this clsact
//
// <netns> is "nsc<cookie>" (or "nsi<inode>", see netnsRef.id).
const (
	linkPinPrefix = "tcx-"
	markerPrefix  = "clsact-"
)

func (m *Manager) linkPinPath(ifindex int, dir Direction) string {
	return filepath.Join(m.pinDir, fmt.Sprintf("%s%s-if%d-%s", linkPinPrefix, m.ns.id, ifindex, dir))
}

func (m *Manager) markerPath(ifindex int) string {
	return filepath.Join(m.pinDir, fmt.Sprintf("%s%s-if%d", markerPrefix, m.ns.id, ifindex))
}

// pinName is a parsed name from the pin directory.
type pinName struct {
	marker  bool // a clsact marker, not a link pin
	netns   string
	ifindex int
	dir     Direction // link pins only
}

// parsePinName parses a name made by linkPinPath or markerPath; ok is false
// for any other name, which the package leaves alone.
func parsePinName(name string) (p pinName, ok bool) {
	var rest string
	switch {
	case strings.HasPrefix(name, linkPinPrefix):
		rest = strings.TrimPrefix(name, linkPinPrefix)
	case strings.HasPrefix(name, markerPrefix):
		rest = strings.TrimPrefix(name, markerPrefix)
		p.marker = true
	default:
		return pinName{}, false
	}
	parts := strings.Split(rest, "-")
	if p.marker && len(parts) != 2 || !p.marker && len(parts) != 3 {
		return pinName{}, false
	}
	p.netns = parts[0]
	if !validNetnsID(p.netns) {
		return pinName{}, false
	}
	digits, found := strings.CutPrefix(parts[1], "if")
	idx, ok := canonicalUint(digits, 31)
	if !found || !ok || idx == 0 {
		return pinName{}, false
	}
	p.ifindex = int(idx)
	if !p.marker {
		p.dir = Direction(parts[2])
		if !p.dir.valid() {
			return pinName{}, false
		}
	}
	return p, true
}

func validNetnsID(s string) bool {
	for _, prefix := range []string{"nsc", "nsi"} {
		if n, ok := strings.CutPrefix(s, prefix); ok {
			_, ok := canonicalUint(n, 64)
			return ok
		}
	}
	return false
}

// canonicalUint parses a decimal number written the way fmt writes it (no
// sign, no leading zero), so that one number has one name.
func canonicalUint(s string, bits int) (uint64, bool) {
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil || strconv.FormatUint(n, 10) != s {
		return 0, false
	}
	return n, true
}

// pinNames lists the names of the pin directory that are ours.
func (m *Manager) pinNames() ([]pinName, []string, error) {
	entries, err := os.ReadDir(m.pinDir)
	if err != nil {
		return nil, nil, fmt.Errorf("read pin directory %s: %w", m.pinDir, err)
	}
	var (
		names []pinName
		paths []string
	)
	for _, e := range entries {
		if p, ok := parsePinName(e.Name()); ok {
			names = append(names, p)
			paths = append(paths, filepath.Join(m.pinDir, e.Name()))
		}
	}
	return names, paths, nil
}

// createMarker records that we created a clsact qdisc. bpffs holds no
// regular files, so the record is an empty directory; it lives as long as
// the bpffs mount, like the qdisc lives until reboot.
func createMarker(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("record clsact ownership at %s: %w", path, err)
	}
	return nil
}

func markerExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("read clsact ownership record %s: %w", path, err)
}

func removeMarker(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove clsact ownership record %s: %w", path, err)
	}
	return nil
}

// checkBPFFS makes sure dir is on a bpf filesystem: pins need one.
func checkBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("stat pin directory %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin directory %s is not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)", dir)
	}
	return nil
}
