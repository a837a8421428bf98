package ociimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// layerFile is what a test sees of one entry of a layer.
type layerFile struct {
	Mode int64
	Dir  bool
	Data string
}

// twoSpecs returns two images, one with inline data and one with a file
// from the host, as a test archive holds them.
func twoSpecs(t *testing.T) []Spec {
	t.Helper()
	src := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(src, []byte("#!binary"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []Spec{
		{
			Ref:        "meshredirect.test/one:1",
			Files:      []File{{Path: "/usr/local/bin/prog", Mode: 0o755, Source: src}, {Path: "/etc/config", Data: []byte("x=1\n")}},
			Entrypoint: []string{"/usr/local/bin/prog"},
			Cmd:        []string{"serve", "-v"},
			User:       "0:0",
			Labels:     map[string]string{"org.opencontainers.image.title": "one"},
		},
		{
			Ref:        "meshredirect.test/two:2",
			Files:      []File{{Path: "/two", Mode: 0o755, Data: []byte("two")}},
			Entrypoint: []string{"/two"},
			Env:        []string{"A=b"},
		},
	}
}

func mustWrite(t *testing.T, specs ...Spec) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "images.tar")
	if _, err := Write(out, specs...); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return out
}

// mustIndex unpacks the archive at path and returns the image index of ref
// in it, read by go-containerregistry's layout package (another reader than
// the writer), with the digest index.json gives it.
func mustIndex(t *testing.T, path, ref string) (v1.ImageIndex, v1.Hash) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("read the image layout of %s: %v", path, err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		if d.Annotations[annotationContainerName] != ref {
			continue
		}
		if _, tag, _ := strings.Cut(ref, ":"); d.Annotations[annotationRefName] != tag {
			t.Errorf("%s: %s = %q, want the tag %q", ref, annotationRefName, d.Annotations[annotationRefName], tag)
		}
		idx, err := top.ImageIndex(d.Digest)
		if err != nil {
			t.Fatalf("read index of %s: %v", ref, err)
		}
		return idx, d.Digest
	}
	t.Fatalf("no %s in index.json of %s: %+v", ref, path, im.Manifests)
	return nil, v1.Hash{}
}

// mustRead returns the linux/amd64 image of ref in the archive at path, its
// config and its layer's entries by absolute path.
func mustRead(t *testing.T, path, ref string) (*v1.ConfigFile, map[string]layerFile) {
	t.Helper()
	idx, _ := mustIndex(t, path, ref)
	return mustReadArch(t, idx, ref, "amd64")
}

// mustReadArch returns the config and files of the image of idx for
// linux/arch.
func mustReadArch(t *testing.T, idx v1.ImageIndex, ref, arch string) (*v1.ConfigFile, map[string]layerFile) {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var img v1.Image
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == arch {
			if img, err = idx.Image(d.Digest); err != nil {
				t.Fatalf("read %s linux/%s: %v", ref, arch, err)
			}
		}
	}
	if img == nil {
		t.Fatalf("%s has no linux/%s image", ref, arch)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != arch {
		t.Errorf("%s: the linux/%s image's config says %s/%s", ref, arch, cfg.OS, cfg.Architecture)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%s has %d layers, want 1", ref, len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]layerFile{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read layer of %s: %v", ref, err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.ModTime.Unix() != 0 {
			t.Errorf("%s: %s owned by %d:%d at %v, want root at epoch", ref, hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
		data, _ := io.ReadAll(tr)
		files["/"+strings.TrimSuffix(hdr.Name, "/")] = layerFile{Mode: hdr.Mode, Dir: hdr.Typeflag == tar.TypeDir, Data: string(data)}
	}
	return cfg, files
}

func TestWriteReadBack(t *testing.T) {
	out := mustWrite(t, twoSpecs(t)...)

	cfg, files := mustRead(t, out, "meshredirect.test/one:1")
	passwd := files["/etc/passwd"].Data
	want := map[string]layerFile{
		"/etc":                {Mode: 0o755, Dir: true},
		"/etc/config":         {Mode: 0o644, Data: "x=1\n"},
		"/etc/group":          {Mode: 0o644, Data: files["/etc/group"].Data},
		"/etc/passwd":         {Mode: 0o644, Data: passwd},
		"/tmp":                {Mode: 0o1777, Dir: true},
		"/usr":                {Mode: 0o755, Dir: true},
		"/usr/local":          {Mode: 0o755, Dir: true},
		"/usr/local/bin":      {Mode: 0o755, Dir: true},
		"/usr/local/bin/prog": {Mode: 0o755, Data: "#!binary"},
	}
	if diff := cmp.Diff(want, files); diff != "" {
		t.Errorf("files of one (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(passwd, "root:x:0:0:") {
		t.Errorf("/etc/passwd = %q, want root first", passwd)
	}
	wantCfg := v1.Config{
		Entrypoint: []string{"/usr/local/bin/prog"},
		Cmd:        []string{"serve", "-v"},
		Env:        []string{DefaultPath},
		User:       "0:0",
		Labels:     map[string]string{"org.opencontainers.image.title": "one"},
		WorkingDir: "/",
	}
	if diff := cmp.Diff(wantCfg, cfg.Config); diff != "" {
		t.Errorf("config of one (-want +got):\n%s", diff)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("platform of one = %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
	}

	cfg, files = mustRead(t, out, "meshredirect.test/two:2")
	if f := files["/two"]; f.Mode != 0o755 || f.Data != "two" {
		t.Errorf("/two in two = %+v, want mode 0755 and data \"two\"", f)
	}
	if diff := cmp.Diff([]string{DefaultPath, "A=b"}, cfg.Config.Env); diff != "" {
		t.Errorf("env of two (-want +got):\n%s", diff)
	}
	if cfg.Config.User != "" || cfg.Config.Cmd != nil {
		t.Errorf("two: user %q cmd %q, want neither", cfg.Config.User, cfg.Config.Cmd)
	}
}

func TestWriteDeterministic(t *testing.T) {
	specs := twoSpecs(t)
	a, err := os.ReadFile(mustWrite(t, specs...))
	if err != nil {
		t.Fatal(err)
	}
	// The other order too: the archive follows the tags, not the arguments.
	b, err := os.ReadFile(mustWrite(t, specs[1], specs[0]))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("two writes of the same specs differ (%d and %d bytes)", len(a), len(b))
	}
}

func TestWriteRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
	}{
		{"relative path", Spec{Ref: "meshredirect.test/x:1", Files: []File{{Path: "x"}}}},
		{"path twice", Spec{Ref: "meshredirect.test/x:1", Files: []File{{Path: "/x"}, {Path: "/x/"}}}},
		{"file under a file", Spec{Ref: "meshredirect.test/x:1", Files: []File{{Path: "/x"}, {Path: "/x/y"}}}},
		{"no tag", Spec{Ref: "meshredirect.test/x"}},
		{"no registry", Spec{Ref: "x:1"}},
		{"platform twice", Spec{Ref: "meshredirect.test/x:1", Arch: "amd64"}},
		{"missing source", Spec{Ref: "meshredirect.test/x:1", Files: []File{{Path: "/x", Source: "/nonexistent/x"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			specs := []Spec{tc.spec}
			if tc.spec.Arch != "" {
				specs = append(specs, tc.spec)
			}
			if _, err := Write(filepath.Join(t.TempDir(), "x.tar"), specs...); err == nil {
				t.Errorf("Write(%+v) succeeded, want an error", tc.spec)
			}
		})
	}
}

// fakeELF returns the bytes of an ELF executable header for machine: what
// Images checks of a binary (static when interp is false, else with a
// PT_INTERP program header, as a dynamically linked binary has).
func fakeELF(t *testing.T, machine elf.Machine, interp bool) []byte {
	t.Helper()
	h := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Ehsize: 64, Phentsize: 56,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	var b bytes.Buffer
	if interp {
		h.Phoff, h.Phnum = 64, 1
	}
	if err := binary.Write(&b, binary.LittleEndian, h); err != nil {
		t.Fatal(err)
	}
	if interp {
		if err := binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_INTERP)}); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// fakeBin returns a directory with a static ELF header for each binary of
// Images, under amd64/ and arm64/, each for its arch's machine.
func fakeBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for arch, m := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		if err := os.MkdirAll(filepath.Join(dir, arch), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range []string{"meshredirect", "meshredirect-cni", "ztunnel-standin", "testapp", "pause"} {
			if err := os.WriteFile(filepath.Join(dir, arch, b), fakeELF(t, m, false), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func TestImages(t *testing.T) {
	bin := fakeBin(t)
	specs, err := Images(ImagesOptions{Bin: bin, Arches: []string{"amd64"}, Tag: "t1", Revision: "abc"})
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, s := range specs {
		refs = append(refs, s.Ref)
	}
	want := []string{"meshredirect.test/meshredirect:t1", "meshredirect.test/ztunnel-standin:t1", "meshredirect.test/testapp:t1", "meshredirect.test/pause:t1"}
	if diff := cmp.Diff(want, refs); diff != "" {
		t.Errorf("refs (-want +got):\n%s", diff)
	}
	out := mustWrite(t, specs...)
	cfg, files := mustRead(t, out, Ref(Agent, "t1"))
	if f := files["/usr/local/bin/meshredirect-cni"]; f.Mode != 0o755 || f.Data != string(fakeELF(t, elf.EM_X86_64, false)) {
		t.Errorf("agent's CNI plugin = %+v", f)
	}
	if got := cfg.Config.Labels["org.opencontainers.image.revision"]; got != "abc" {
		t.Errorf("agent's revision label = %q, want abc", got)
	}
	if got := cfg.Config.Labels["org.opencontainers.image.version"]; got != "t1" {
		t.Errorf("agent's version label = %q, want t1", got)
	}

	if _, err := Images(ImagesOptions{Bin: bin}, "nginx"); err == nil {
		t.Error("Images(nginx) succeeded, want an error")
	}
	if Ref("nginx", "1") != "" {
		t.Error("Ref(nginx) is not empty")
	}
}

// TestImagesRejectsBadBinaries: a binary that is missing, empty, for another
// arch or dynamically linked fails Images, so that `make image` stops with
// the reason rather than write an image that cannot start.
func TestImagesRejectsBadBinaries(t *testing.T) {
	for _, c := range []struct {
		name string
		data []byte // nil: no file
		want string
	}{
		{"missing", nil, "no such file"},
		{"empty", []byte{}, "read "},
		{"arm64 binary for amd64", fakeELF(t, elf.EM_AARCH64, false), "is for EM_AARCH64, not amd64"},
		{"dynamically linked", fakeELF(t, elf.EM_X86_64, true), "dynamically linked"},
	} {
		t.Run(c.name, func(t *testing.T) {
			bin := fakeBin(t)
			p := filepath.Join(bin, "amd64", "meshredirect")
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if c.data != nil {
				if err := os.WriteFile(p, c.data, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Images(ImagesOptions{Bin: bin}, Agent)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Images: error %v, want %q", err, c.want)
			}
		})
	}
}

// TestReleaseImage: the release image is an index of linux/amd64 and
// linux/arm64, each manifest holding the binaries of its arch (the ELF
// machine of each matches its platform) and the OCI labels; two builds of
// the same inputs give the same index digest and the same bytes, and
// another commit time another digest.
func TestReleaseImage(t *testing.T) {
	bin := fakeBin(t)
	created := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	opts := ImagesOptions{Bin: bin, Tag: "v0.2.0", Revision: "0123abc", Created: created}
	write := func(opts ImagesOptions) (string, v1.Hash) {
		specs, err := Images(opts, Agent)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "image.tar")
		digests, err := Write(out, specs...)
		if err != nil {
			t.Fatal(err)
		}
		return out, digests[Ref(Agent, "v0.2.0")]
	}
	out, digest := write(opts)
	idx, inArchive := mustIndex(t, out, Ref(Agent, "v0.2.0"))
	if inArchive != digest {
		t.Errorf("Write returned %s, index.json says %s", digest, inArchive)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, d := range im.Manifests {
		platforms = append(platforms, d.Platform.String())
	}
	if diff := cmp.Diff([]string{"linux/amd64", "linux/arm64"}, platforms); diff != "" {
		t.Errorf("platforms of the index (-want +got):\n%s", diff)
	}
	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		cfg, files := mustReadArch(t, idx, Ref(Agent, "v0.2.0"), arch)
		for _, p := range []string{"/meshredirect", "/usr/local/bin/meshredirect-cni"} {
			f, err := elf.NewFile(strings.NewReader(files[p].Data))
			if err != nil {
				t.Errorf("linux/%s %s: %v", arch, p, err)
				continue
			}
			if f.Machine != machine {
				t.Errorf("linux/%s %s is for %v, want %v", arch, p, f.Machine, machine)
			}
		}
		wantLabels := map[string]string{
			"org.opencontainers.image.title":       "meshredirect",
			"org.opencontainers.image.description": descriptions[Agent],
			"org.opencontainers.image.source":      Source,
			"org.opencontainers.image.revision":    "0123abc",
			"org.opencontainers.image.version":     "v0.2.0",
			"org.opencontainers.image.licenses":    "Apache-2.0",
			"org.opencontainers.image.created":     "2026-12-01T10:00:00Z",
		}
		if diff := cmp.Diff(wantLabels, cfg.Config.Labels); diff != "" {
			t.Errorf("linux/%s labels (-want +got):\n%s", arch, diff)
		}
		if !cfg.Created.Equal(created) {
			t.Errorf("linux/%s created %v, want %v", arch, cfg.Created, created)
		}
	}

	again, digest2 := write(opts)
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(again)
	if digest2 != digest || !bytes.Equal(a, b) {
		t.Errorf("two builds of the same inputs: digests %s and %s, archives equal %v", digest, digest2, bytes.Equal(a, b))
	}
	opts.Created = created.Add(time.Second)
	if _, digest3 := write(opts); digest3 == digest {
		t.Errorf("another commit time gave the same digest %s", digest)
	}
}

// TestAgentMatchesDockerfile checks that the agent image says what the
// Dockerfile's final stage says: the same files, entrypoint, command and
// user, so `make image` and `docker build` give the same image but for the
// distroless base.
func TestAgentMatchesDockerfile(t *testing.T) {
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var docker Spec
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		cmd, args, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch cmd {
		case "FROM":
			docker = Spec{} // only the final stage counts
		case "COPY":
			fields := strings.Fields(args)
			docker.Files = append(docker.Files, File{Path: fields[len(fields)-1]})
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(args), &docker.Entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s: %v", args, err)
			}
		case "CMD":
			if err := json.Unmarshal([]byte(args), &docker.Cmd); err != nil {
				t.Fatalf("CMD %s: %v", args, err)
			}
		case "USER":
			docker.User = args
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	ours := spec(Agent, "")
	for i := range ours.Files {
		ours.Files[i] = File{Path: ours.Files[i].Path}
	}
	if diff := cmp.Diff(docker, ours); diff != "" {
		t.Errorf("agent image vs the Dockerfile's final stage (-Dockerfile +ours):\n%s", diff)
	}
}
