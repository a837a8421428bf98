package vm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// The newc format (the kernel's Documentation/driver-api/early-userspace/
// buffer-format.rst, and what init/initramfs.c unpacks): each entry is a
// 110-byte ASCII header, "070701" and thirteen 8-digit hex fields, then the
// NUL-terminated name padded to a multiple of 4, then the data padded the
// same way. An entry named TRAILER!!! ends the archive. The kernel accepts
// several archives one after the other, which is how a cached modules
// archive and a fresh workload archive make one initramfs.
const (
	cpioMagic   = "070701"
	cpioTrailer = "TRAILER!!!"

	// Type bits of the mode field (include/uapi/linux/stat.h).
	cpioModeDir     = 0o040000
	cpioModeRegular = 0o100000
	cpioModeSymlink = 0o120000
	cpioModeChar    = 0o020000
)

// CPIOWriter writes a newc cpio archive, the format of an initramfs. Names
// are relative to the archive's root ("init", "pkg/asm/asm.test"); the
// parent directories of every entry are written first, once, as the kernel
// creates no missing directory. Every entry has mtime 0 and is owned by
// root, so that the same inputs give the same bytes.
type CPIOWriter struct {
	w    io.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

// NewCPIOWriter returns a writer of a newc archive to w. Close writes the
// trailer; it does not close w.
func NewCPIOWriter(w io.Writer) *CPIOWriter {
	return &CPIOWriter{w: w, dirs: map[string]bool{".": true, "": true}}
}

// Dir adds a directory, and its parents.
func (c *CPIOWriter) Dir(name string, perm fs.FileMode) error {
	name, err := cleanName(name)
	if err != nil {
		return err
	}
	if c.dirs[name] {
		return nil
	}
	if err := c.parents(name); err != nil {
		return err
	}
	c.dirs[name] = true
	return c.entry(name, cpioModeDir|uint32(perm.Perm()), 2, 0, 0, nil, 0)
}

// File adds a regular file with the given contents.
func (c *CPIOWriter) File(name string, perm fs.FileMode, data []byte) error {
	return c.Reader(name, perm, strings.NewReader(string(data)), int64(len(data)))
}

// Reader adds a regular file of size bytes read from r.
func (c *CPIOWriter) Reader(name string, perm fs.FileMode, r io.Reader, size int64) error {
	name, err := cleanName(name)
	if err != nil {
		return err
	}
	if size > 0xffffffff {
		return fmt.Errorf("add %s to cpio archive: %d bytes is more than newc can hold", name, size)
	}
	if err := c.parents(name); err != nil {
		return err
	}
	return c.entry(name, cpioModeRegular|uint32(perm.Perm()), 1, 0, 0, r, size)
}

// CopyFile adds the file at hostPath as name, keeping its permission bits.
func (c *CPIOWriter) CopyFile(name, hostPath string) error {
	f, err := os.Open(hostPath)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("add %s to cpio archive: %s is not a regular file", name, hostPath)
	}
	return c.Reader(name, st.Mode().Perm(), f, st.Size())
}

// CopyTree adds the regular files and directories under hostDir as dir.
// Symbolic links and special files are left out.
func (c *CPIOWriter) CopyTree(dir, hostDir string) error {
	return fs.WalkDir(os.DirFS(hostDir), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return c.Dir(path.Join(dir, p), 0o755)
		case d.Type().IsRegular():
			return c.CopyFile(path.Join(dir, p), hostDir+"/"+p)
		}
		return nil
	})
}

// Symlink adds a symbolic link name pointing at target.
func (c *CPIOWriter) Symlink(name, target string) error {
	name, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(name); err != nil {
		return err
	}
	return c.entry(name, cpioModeSymlink|0o777, 1, 0, 0, strings.NewReader(target), int64(len(target)))
}

// CharDev adds a character device node, such as dev/console (5, 1): the
// kernel opens /dev/console for init before any devtmpfs is mounted, and
// init starts without standard streams if it is missing.
func (c *CPIOWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	name, err := cleanName(name)
	if err != nil {
		return err
	}
	if err := c.parents(name); err != nil {
		return err
	}
	return c.entry(name, cpioModeChar|uint32(perm.Perm()), 1, major, minor, nil, 0)
}

// Close writes the trailer entry. The writer cannot be used afterwards.
func (c *CPIOWriter) Close() error {
	if c.err != nil {
		return c.err
	}
	err := c.entry(cpioTrailer, 0, 1, 0, 0, nil, 0)
	c.err = errors.New("cpio archive already closed")
	return err
}

func (c *CPIOWriter) parents(name string) error {
	if dir := path.Dir(name); !c.dirs[dir] {
		return c.Dir(dir, 0o755)
	}
	return nil
}

func (c *CPIOWriter) entry(name string, mode, nlink, rmajor, rminor uint32, data io.Reader, size int64) error {
	if c.err != nil {
		return c.err
	}
	c.ino++
	ino := c.ino
	if name == cpioTrailer {
		ino = 0
	}
	hdr := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		cpioMagic, ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+4)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	if _, err := c.w.Write(buf); err != nil {
		c.err = fmt.Errorf("write cpio header of %s: %w", name, err)
		return c.err
	}
	if size > 0 {
		n, err := io.CopyN(c.w, data, size)
		if err != nil {
			c.err = fmt.Errorf("write %s to cpio archive (%d of %d bytes): %w", name, n, size, err)
			return c.err
		}
		if _, err := c.w.Write(make([]byte, pad4(int(size%4)))); err != nil {
			c.err = fmt.Errorf("write cpio padding of %s: %w", name, err)
			return c.err
		}
	}
	return nil
}

// pad4 is how many bytes take n to a multiple of 4.
func pad4(n int) int { return (4 - n%4) % 4 }

// cleanName makes name relative to the archive's root, as the kernel and
// cpio(1) expect, and refuses names that would leave it.
func cleanName(name string) (string, error) {
	clean := path.Clean("/" + name)[1:]
	if clean == "" || clean == cpioTrailer || strings.Contains(name, "\x00") {
		return "", fmt.Errorf("add %q to cpio archive: not a usable name", name)
	}
	return clean, nil
}
