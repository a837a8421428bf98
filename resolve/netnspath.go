package resolve

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// nsKey identifies a network namespace by its nsfs inode (device and inode
// number, as `stat -L` shows for /proc/<pid>/ns/net). Inode numbers are
// reused once a namespace is destroyed, which is why NetnsPath confirms a
// cached answer before it returns it.
type nsKey struct{ dev, ino uint64 }

// candidate is a path that may refer to a network namespace.
type candidate struct {
	path string
	key  nsKey
}

// NetnsPath returns a path, as this process sees it, to the network
// namespace that has id nsid in the node's netns (Interface.PeerNetnsID):
// first a bind mount in Config.NetnsDirs, else /proc/<pid>/ns/net of a
// process in it, found under Config.ProcDir (the agent runs with hostPID).
// A /proc path lives only as long as its process.
//
// Each candidate's id is read with RTM_GETNSID (NETNSA_FD), and cached by
// the candidate's inode, so that a search costs one stat per process once
// the namespaces are known. An error wrapping ErrNotFound says no candidate
// has the id (yet).
func (r *Resolver) NetnsPath(nsid int) (string, error) {
	if nsid < 0 {
		return "", fmt.Errorf("find netns id %d: not an id", nsid)
	}
	r.pathMu.Lock()
	defer r.pathMu.Unlock()
	if r.isClosed() {
		return "", fmt.Errorf("find netns id %d: resolver closed", nsid)
	}

	cands := r.candidates()
	r.prune(cands)
	var others []candidate // answered from the cache with another id
	for _, c := range cands {
		id, cached := r.nsids[c.key]
		if !cached {
			var err error
			if id, err = r.lookupNsid(c); err != nil {
				continue // gone, or not a netns: not this one
			}
		}
		if id != nsid {
			if cached {
				others = append(others, c)
			}
			continue
		}
		if cached {
			// The inode may be a new namespace's: ask again.
			delete(r.nsids, c.key)
			if id, err := r.lookupNsid(c); err != nil || id != nsid {
				continue
			}
		}
		return c.path, nil
	}
	// The one we want may hide behind a reused inode whose cached id is
	// an older namespace's: a miss asks every namespace again.
	for _, c := range others {
		delete(r.nsids, c.key)
		if id, err := r.lookupNsid(c); err == nil && id == nsid {
			return c.path, nil
		}
	}
	dirs := strings.Join(r.netnsDirs, ", ")
	if dirs == "" {
		dirs = "no directory"
	}
	return "", fmt.Errorf("find netns id %d in %s and %s/*/ns/net: %w", nsid, dirs, r.procDir, ErrNotFound)
}

// Namespaces lists a path to each network namespace that a bind mount in
// netnsDirs or a process under procDir ("" means /proc) is in: bind mounts
// first, then /proc/<pid>/ns/net, one path per namespace (by device and
// inode). Paths that are not namespaces are left for the caller to reject
// (opening one as a netns fails). It is how uninstall and status find the
// pods' namespaces from the kernel alone.
func Namespaces(netnsDirs []string, procDir string) []string {
	if procDir == "" {
		procDir = "/proc"
	}
	var out []string
	for _, c := range listCandidates(netnsDirs, procDir) {
		out = append(out, c.path)
	}
	return out
}

// candidates lists the paths to search, bind mounts first, one per
// namespace.
func (r *Resolver) candidates() []candidate {
	return listCandidates(r.netnsDirs, r.procDir)
}

func listCandidates(netnsDirs []string, procDir string) []candidate {
	var out []candidate
	seen := map[nsKey]bool{}
	add := func(path string) {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return // raced with an unmount or an exit
		}
		k := nsKey{dev: st.Dev, ino: st.Ino}
		if !seen[k] {
			seen[k] = true
			out = append(out, candidate{path: path, key: k})
		}
	}
	for _, dir := range netnsDirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue // most nodes have no /var/run/netns
		}
		for _, e := range entries {
			add(filepath.Join(dir, e.Name()))
		}
	}
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if !isPid(e.Name()) {
			continue
		}
		add(filepath.Join(procDir, e.Name(), "ns", "net"))
	}
	return out
}

// lookupNsid opens c, checks that it is still the namespace c.key names,
// and asks the node's netns for its id, caching an assigned one. Ids that
// are not assigned are not cached: a netns gets one when, say, a veth
// across to it is made.
func (r *Resolver) lookupNsid(c candidate) (int, error) {
	fd, err := unix.Open(c.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	if (nsKey{dev: st.Dev, ino: st.Ino}) != c.key {
		return 0, errors.New("changed since listed")
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return 0, err
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return 0, errors.New("not a namespace")
	}
	id, err := nsidOf(r.conn, fd)
	if err != nil {
		return 0, err
	}
	if id >= 0 {
		r.nsids[c.key] = id
	}
	return id, nil
}

// prune forgets cached namespaces that no candidate refers to any more, so
// that the cache stays the size of the node's set of namespaces.
func (r *Resolver) prune(cands []candidate) {
	all := make(map[nsKey]bool, len(cands))
	for _, c := range cands {
		all[c.key] = true
	}
	for k := range r.nsids {
		if !all[k] {
			delete(r.nsids, k)
		}
	}
}

func isPid(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range name {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
