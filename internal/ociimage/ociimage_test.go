package ociimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
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
	if err := Write(out, specs...); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return out
}

// mustRead returns the image tagged ref in the archive at path, its config
// and its layer's entries by absolute path.
func mustRead(t *testing.T, path, ref string) (*v1.ConfigFile, map[string]layerFile) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("read %s from %s: %v", ref, path, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
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
		{"missing source", Spec{Ref: "meshredirect.test/x:1", Files: []File{{Path: "/x", Source: "/nonexistent/x"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Write(filepath.Join(t.TempDir(), "x.tar"), tc.spec); err == nil {
				t.Errorf("Write(%+v) succeeded, want an error", tc.spec)
			}
		})
	}
}

// fakeBin returns a directory with a file for each binary of Images.
func fakeBin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []string{"meshredirect", "meshredirect-cni", "ztunnel-standin", "testapp", "pause"} {
		if err := os.WriteFile(filepath.Join(dir, b), []byte(b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestImages(t *testing.T) {
	bin := fakeBin(t)
	specs, err := Images(ImagesOptions{Bin: bin, Tag: "t1", Revision: "abc"})
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
	if f := files["/usr/local/bin/meshredirect-cni"]; f.Mode != 0o755 || f.Data != "meshredirect-cni" {
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
	if _, err := Images(ImagesOptions{Bin: t.TempDir()}, Pause); err == nil {
		t.Error("Images(pause) with no binary succeeded, want an error")
	}
	if Ref("nginx", "1") != "" {
		t.Error("Ref(nginx) is not empty")
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
