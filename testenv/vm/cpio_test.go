package vm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshredirect/meshredirect/internal/testutil"
)

// cpioEntry is one entry read back from a newc archive.
type cpioEntry struct {
	Name         string
	Mode         uint32
	RMajor       uint32
	RMinor       uint32
	Data         string
	HeaderOffset int
}

// readCPIO parses a newc archive the way init/initramfs.c does, checking
// the magic, the 4-byte alignment of every header and of every file's
// data, and the trailer; it returns the entries before the trailer.
func readCPIO(tb testing.TB, b []byte) []cpioEntry {
	tb.Helper()
	var out []cpioEntry
	off := 0
	for {
		if off%4 != 0 {
			tb.Fatalf("header at offset %d is not 4-byte aligned", off)
		}
		if len(b)-off < 110 {
			tb.Fatalf("archive ends at %d without a trailer", off)
		}
		hdr := string(b[off : off+110])
		if hdr[:6] != cpioMagic {
			tb.Fatalf("bad magic %q at offset %d", hdr[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(hdr[6+8*i:6+8*(i+1)], 16, 32)
			if err != nil {
				tb.Fatalf("field %d of header at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		mode, size, namesize := field(1), int(field(6)), int(field(11))
		name := string(b[off+110 : off+110+namesize])
		if !strings.HasSuffix(name, "\x00") {
			tb.Fatalf("name at %d is not NUL-terminated: %q", off, name)
		}
		name = strings.TrimSuffix(name, "\x00")
		dataOff := off + 110 + namesize
		dataOff += pad4(dataOff)
		if name == cpioTrailer {
			if rest := b[dataOff:]; len(bytes.Trim(rest, "\x00")) != 0 {
				tb.Fatalf("%d bytes after the trailer", len(rest))
			}
			return out
		}
		out = append(out, cpioEntry{Name: name, Mode: mode, RMajor: field(9), RMinor: field(10), Data: string(b[dataOff : dataOff+size]), HeaderOffset: off})
		off = dataOff + size
		off += pad4(off)
	}
}

func TestCPIORoundTrip(t *testing.T) {
	host := t.TempDir()
	mustWrite(t, filepath.Join(host, "tree", "a.txt"), "alpha")
	mustWrite(t, filepath.Join(host, "tree", "sub", "b.bin"), "\x00\x01\x02")
	if err := os.Chmod(filepath.Join(host, "tree", "sub", "b.bin"), 0o755); err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	for _, step := range []error{
		w.CharDev("dev/console", 0o600, 5, 1),
		// Names of every length modulo 4, and data of every length
		// modulo 4 (0 to 3 padding bytes each).
		w.File("init", 0o755, []byte("#!")),
		w.File("/x/y/zz", 0o644, []byte("abc")),
		w.File("x/y/www", 0o644, []byte("abcd")),
		w.File("empty", 0o644, nil),
		w.Symlink("sbin/modprobe", "/init"),
		w.Dir("x", 0o700), // already made as a parent: not repeated
		w.CopyTree("pkg/testdata", filepath.Join(host, "tree")),
		w.Close(),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}

	var got []cpioEntry
	for _, e := range readCPIO(t, buf.Bytes()) {
		e.HeaderOffset = 0
		got = append(got, e)
	}
	want := []cpioEntry{
		{Name: "dev", Mode: cpioModeDir | 0o755},
		{Name: "dev/console", Mode: cpioModeChar | 0o600, RMajor: 5, RMinor: 1},
		{Name: "init", Mode: cpioModeRegular | 0o755, Data: "#!"},
		{Name: "x", Mode: cpioModeDir | 0o755},
		{Name: "x/y", Mode: cpioModeDir | 0o755},
		{Name: "x/y/zz", Mode: cpioModeRegular | 0o644, Data: "abc"},
		{Name: "x/y/www", Mode: cpioModeRegular | 0o644, Data: "abcd"},
		{Name: "empty", Mode: cpioModeRegular | 0o644},
		{Name: "sbin", Mode: cpioModeDir | 0o755},
		{Name: "sbin/modprobe", Mode: cpioModeSymlink | 0o777, Data: "/init"},
		{Name: "pkg", Mode: cpioModeDir | 0o755},
		{Name: "pkg/testdata", Mode: cpioModeDir | 0o755},
		{Name: "pkg/testdata/a.txt", Mode: cpioModeRegular | 0o644, Data: "alpha"},
		{Name: "pkg/testdata/sub", Mode: cpioModeDir | 0o755},
		{Name: "pkg/testdata/sub/b.bin", Mode: cpioModeRegular | 0o755, Data: "\x00\x01\x02"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("entries read back (-want +got):\n%s", diff)
	}

	// The same inputs give the same bytes: the modules archive is cached
	// by what goes in, and a rebuilt one must not differ.
	var again bytes.Buffer
	w2 := NewCPIOWriter(&again)
	w2.CharDev("dev/console", 0o600, 5, 1)
	w2.File("init", 0o755, []byte("#!"))
	w2.Close()
	var first bytes.Buffer
	w3 := NewCPIOWriter(&first)
	w3.CharDev("dev/console", 0o600, 5, 1)
	w3.File("init", 0o755, []byte("#!"))
	w3.Close()
	if !bytes.Equal(again.Bytes(), first.Bytes()) {
		t.Error("two archives of the same entries differ")
	}

	t.Run("cpio(1) lists it", func(t *testing.T) {
		// The Go reader above could share a misreading with the writer;
		// cpio(1) cannot. .ci/run installs it, so CI never skips this.
		cpio := testutil.RequireTool(t, "cpio", "(apt-get install cpio) to read the archive with another implementation")
		cmd := exec.Command(cpio, "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("cpio -t: %v\n%s", err, out)
		}
		var names []string
		for _, e := range want {
			names = append(names, e.Name)
		}
		if diff := cmp.Diff(names, strings.Fields(string(out))); diff != "" {
			t.Errorf("cpio -t (-want +got):\n%s", diff)
		}

		// And extracts the same contents.
		dir := t.TempDir()
		cmd = exec.Command(cpio, "-i", "-d", "--quiet", "--no-absolute-filenames")
		cmd.Dir = dir
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		if out, err := cmd.CombinedOutput(); err != nil && !bytes.Contains(out, []byte("console")) {
			// Making dev/console needs CAP_MKNOD; everything else must work.
			t.Fatalf("cpio -i: %v\n%s", err, out)
		}
		for _, e := range want {
			if e.Mode&0o170000 != cpioModeRegular {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name))
			if err != nil || string(b) != e.Data {
				t.Errorf("extracted %s = %q, %v; want %q", e.Name, b, err, e.Data)
			}
		}
		if l, err := os.Readlink(filepath.Join(dir, "sbin/modprobe")); err != nil || l != "/init" {
			t.Errorf("extracted sbin/modprobe -> %q, %v; want /init", l, err)
		}
	})
}

// TestCPIOConcatenated checks what the kernel relies on when it unpacks a
// cached modules archive followed by a workload archive: each one is
// complete and ends on a 4-byte boundary.
func TestCPIOConcatenated(t *testing.T) {
	for n := range 4 {
		var buf bytes.Buffer
		w := NewCPIOWriter(&buf)
		w.File(strings.Repeat("n", n+1), 0o644, []byte(strings.Repeat("d", n)))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if buf.Len()%4 != 0 {
			t.Errorf("archive with a %d-byte name and %d bytes of data is %d bytes long, not a multiple of 4", n+1, n, buf.Len())
		}
	}
}

func TestCPIORefusesBadNames(t *testing.T) {
	for _, name := range []string{"", "/", ".", "TRAILER!!!", "a\x00b"} {
		w := NewCPIOWriter(io.Discard)
		if err := w.File(name, 0o644, nil); err == nil {
			t.Errorf("File(%q) = nil, want an error", name)
		}
	}
	w := NewCPIOWriter(io.Discard)
	w.Close()
	if err := w.File("late", 0o644, nil); err == nil {
		t.Error("File after Close = nil, want an error")
	}
	// ".." cannot climb out of the archive's root.
	var buf bytes.Buffer
	w = NewCPIOWriter(&buf)
	w.File("../../etc/passwd", 0o644, []byte("x"))
	w.Close()
	if got := readCPIO(t, buf.Bytes()); got[len(got)-1].Name != "etc/passwd" {
		t.Errorf("../../etc/passwd stored as %q, want etc/passwd", got[len(got)-1].Name)
	}
}

func mustWrite(tb testing.TB, file, data string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		tb.Fatal(fmt.Errorf("write %s: %w", file, err))
	}
}
