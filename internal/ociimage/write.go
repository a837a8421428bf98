package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Spec describes one image: a single layer of files on nothing (FROM
// scratch), and the config a runtime starts it with.
type Spec struct {
	// Ref names the image in the archive, with its registry and tag, both
	// required: meshredirect.test/pause:dev.
	Ref string
	// Files are the image's files. Every image also holds /etc/passwd and
	// /etc/group (root and nobody) unless Files has its own, and /tmp (1777).
	Files []File
	// Entrypoint and Cmd are the image's ENTRYPOINT and CMD.
	Entrypoint, Cmd []string
	// Env is the environment, KEY=value; without a PATH entry the image gets
	// DefaultPath.
	Env []string
	// User is who the process runs as, "uid:gid" or a name in /etc/passwd;
	// empty is root.
	User string
	// Labels are the config's labels (org.opencontainers.image.*).
	Labels map[string]string
	// Arch is the GOARCH the binaries are for; empty means amd64. The OS is
	// always linux.
	Arch string
}

// DefaultPath is the PATH of an image whose Spec sets none, distroless's
// (and Docker's default).
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// createdBy is the history entry of every layer, where docker build would
// write the Dockerfile instruction.
const createdBy = "meshredirect ociimage"

// Write writes the images of specs to one docker-archive tarball at path
// (manifest.json, a config and a gzip layer per image), replacing the file
// atomically.
//
// It lays the archive out itself rather than with tarball.MultiRefWrite,
// which ranges over a map of images, so the order of its entries changes
// between runs; here they follow manifest.json (sorted by tag), each entry
// root-owned at epoch, so the same specs give the same bytes.
func Write(path string, specs ...Spec) error {
	if len(specs) == 0 {
		return fmt.Errorf("write image archive %s: no images", path)
	}
	refs := map[name.Reference]v1.Image{}
	for _, s := range specs {
		ref, err := name.NewTag(s.Ref, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("build image %s: parse reference: %w", s.Ref, err)
		}
		if _, ok := refs[ref]; ok {
			return fmt.Errorf("build image %s: the reference is given twice", s.Ref)
		}
		img, err := build(s)
		if err != nil {
			return fmt.Errorf("build image %s: %w", s.Ref, err)
		}
		refs[ref] = img
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write image archive %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if err := writeArchive(tmp, refs); err != nil {
		tmp.Close()
		return fmt.Errorf("write image archive %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write image archive %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil { // CreateTemp's 0600 would keep other users' ctr out
		return fmt.Errorf("write image archive %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write image archive %s: %w", path, err)
	}
	return nil
}

// build returns the image of s: its config on the empty image, then its one
// layer.
func build(s Spec) (v1.Image, error) {
	raw, err := layerTar(s.Files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithCompressionLevel(gzip.DefaultCompression), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("compress layer: %w", err)
	}

	arch := s.Arch
	if arch == "" {
		arch = "amd64"
	}
	env := s.Env
	if !hasPath(env) {
		env = append([]string{DefaultPath}, env...)
	}
	cfg := &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		// Created stays the zero time, as for the layer's entries: a build
		// time would change the digest on every build.
		Config: v1.Config{
			Entrypoint: s.Entrypoint,
			Cmd:        s.Cmd,
			Env:        env,
			User:       s.User,
			Labels:     s.Labels,
			WorkingDir: "/",
		},
		RootFS: v1.RootFS{Type: "layers"}, // Append adds the layer's diff ID
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{CreatedBy: createdBy},
	})
	if err != nil {
		return nil, fmt.Errorf("add layer: %w", err)
	}
	return img, nil
}

func hasPath(env []string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			return true
		}
	}
	return false
}

// writeArchive writes refs as a docker archive (what `docker save` writes):
// each image's config as <digest hex>.json, each layer once as
// <digest hex>.tar.gz, then manifest.json naming them per image with its
// tags. The file names are the ones tarball.MultiRefWrite uses, so
// tarball.ImageFromPath reads the result.
func writeArchive(w io.Writer, refs map[name.Reference]v1.Image) error {
	manifest, err := tarball.ComputeManifest(refs) // sorted by tag
	if err != nil {
		return fmt.Errorf("compute manifest.json: %w", err)
	}
	byTag := map[string]v1.Image{}
	for ref, img := range refs {
		byTag[ref.String()] = img
	}
	tw := tar.NewWriter(w)
	seen := map[string]bool{}
	for _, m := range manifest {
		img := byTag[m.RepoTags[0]]
		if img == nil {
			return fmt.Errorf("find image of tag %s", m.RepoTags[0])
		}
		cfg, err := img.RawConfigFile()
		if err != nil {
			return fmt.Errorf("read config of %s: %w", m.RepoTags[0], err)
		}
		if err := writeEntry(tw, m.Config, bytes.NewReader(cfg), int64(len(cfg))); err != nil {
			return err
		}
		layers, err := img.Layers()
		if err != nil {
			return fmt.Errorf("list layers of %s: %w", m.RepoTags[0], err)
		}
		for i, l := range layers {
			if seen[m.Layers[i]] {
				continue
			}
			seen[m.Layers[i]] = true
			if err := writeLayer(tw, m.Layers[i], l); err != nil {
				return err
			}
		}
	}
	mj, err := json.Marshal(manifest)
	if err != nil {
		return fmt.Errorf("encode manifest.json: %w", err)
	}
	if err := writeEntry(tw, "manifest.json", bytes.NewReader(mj), int64(len(mj))); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close archive: %w", err)
	}
	return nil
}

func writeLayer(tw *tar.Writer, file string, l v1.Layer) error {
	size, err := l.Size()
	if err != nil {
		return fmt.Errorf("size layer %s: %w", file, err)
	}
	r, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("compress layer %s: %w", file, err)
	}
	defer r.Close()
	return writeEntry(tw, file, r, size)
}

func writeEntry(tw *tar.Writer, file string, r io.Reader, size int64) error {
	hdr := &tar.Header{
		Name:     file,
		Typeflag: tar.TypeReg,
		Mode:     0o644,
		Size:     size,
		ModTime:  epoch,
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write archive entry %s: %w", file, err)
	}
	if _, err := io.Copy(tw, r); err != nil {
		return fmt.Errorf("write archive entry %s: %w", file, err)
	}
	return nil
}
