package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// File is one regular file in an image.
type File struct {
	// Path is where the file is in the image, absolute: /usr/local/bin/x.
	Path string
	// Mode holds the permission bits (0755 for a program); 0 means 0644.
	Mode int64
	// Data is the file's content, unless Source is set.
	Data []byte
	// Source is a file on the host whose content the image file takes
	// (read when the archive is written).
	Source string
}

// epoch is the modification time of every entry: a fixed time makes the
// layer, and the digests, the same on every build (what SOURCE_DATE_EPOCH=0
// gives in reproducible-build tools).
var epoch = time.Unix(0, 0).UTC()

// base is what every image holds besides its own files: programs that look
// up the user (Go's os/user, glibc's getpwuid) or write to the temporary
// directory work, as they do on distroless, which has the same two users.
var base = []File{
	{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
	{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnobody:x:65534:\n")},
}

// dirs are directories every image holds with a mode of their own; other
// directories are the parents of files, 0755.
var dirs = map[string]int64{
	"/tmp": 0o1777, // sticky and world-writable, as on any Linux root
}

// entry is one tar entry of a layer, before it is written.
type entry struct {
	name string // relative, as layers spell it: etc/passwd, usr/local/bin/
	dir  bool
	mode int64
	data []byte
}

// layerTar returns the uncompressed tar of one layer: files (those of base
// the spec does not replace, then its own), the directories of dirs and every
// parent directory, sorted by path, owned by root, all at epoch.
func layerTar(files []File) ([]byte, error) {
	entries := map[string]entry{}
	addDir := func(p string) {
		for ; p != "/"; p = path.Dir(p) {
			name := strings.TrimPrefix(p, "/") + "/"
			if _, ok := entries[name]; ok {
				continue
			}
			mode, ok := dirs[p]
			if !ok {
				mode = 0o755
			}
			entries[name] = entry{name: name, dir: true, mode: mode}
		}
	}
	for p := range dirs {
		addDir(p)
	}
	own := map[string]bool{}
	for _, f := range files {
		own[path.Clean(f.Path)] = true
	}
	for _, f := range base {
		if !own[f.Path] {
			files = append(files, f)
		}
	}
	for _, f := range files {
		p := path.Clean(f.Path)
		if !path.IsAbs(f.Path) || p == "/" {
			return nil, fmt.Errorf("add file %q: the path in the image must be absolute", f.Path)
		}
		name := strings.TrimPrefix(p, "/")
		if _, ok := entries[name]; ok {
			return nil, fmt.Errorf("add file %s: the path is given twice", p)
		}
		data := f.Data
		if f.Source != "" {
			var err error
			if data, err = os.ReadFile(f.Source); err != nil {
				return nil, fmt.Errorf("add file %s: %w", p, err)
			}
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		entries[name] = entry{name: name, mode: mode, data: data}
		addDir(path.Dir(p))
	}
	for name, e := range entries {
		if !e.dir {
			if _, ok := entries[name+"/"]; ok { // a/b is a file, and a/b/c needs it a directory
				return nil, fmt.Errorf("add file /%s: the path is a directory of another file", name)
			}
		}
	}

	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		e := entries[name]
		hdr := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		if e.dir {
			hdr.Typeflag = tar.TypeDir
		} else {
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer: %w", err)
	}
	return buf.Bytes(), nil
}
