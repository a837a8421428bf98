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
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Spec describes one image for one platform: a single layer of files on
// nothing (FROM scratch), and the config a runtime starts it with.
type Spec struct {
	// Ref names the image in the archive, with its registry and tag, both
	// required: meshredirect.test/pause:dev. Specs of the same Ref are the
	// platforms of one multi-platform image.
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
	// Created is the config's creation time: the commit's, for a build that
	// gives the same digest from the same checkout; zero (1970) if unset.
	Created time.Time
}

// DefaultPath is the PATH of an image whose Spec sets none, distroless's
// (and Docker's default).
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// createdBy is the history entry of every layer, where docker build would
// write the Dockerfile instruction.
const createdBy = "meshredirect ociimage"

// The annotations of index.json that name an image: the OCI one holds the tag
// alone (image-spec's image layout), containerd's the whole reference, which
// `ctr images import` names the image by (as BuildKit's OCI exporter writes).
const (
	annotationRefName       = "org.opencontainers.image.ref.name"
	annotationContainerName = "io.containerd.image.name"
)

// Write writes the images of specs to one tar archive of an OCI image layout
// at path (oci-layout, index.json, blobs/sha256/...), replacing the file
// atomically, and returns the digest of each Ref's image index: the digest a
// registry gives the image once pushed, whatever its name there (the chart's
// image.digest).
//
// Each Ref is an image index of its specs' platforms; index.json lists the
// indexes, sorted by Ref, named by the annotations `ctr images import` reads.
// Every entry is root-owned at epoch and the blobs are sorted, so the same
// specs give the same bytes.
func Write(path string, specs ...Spec) (map[string]v1.Hash, error) {
	if len(specs) == 0 {
		return nil, fmt.Errorf("write image archive %s: no images", path)
	}
	byRef := map[string][]Spec{}
	for _, s := range specs {
		byRef[s.Ref] = append(byRef[s.Ref], s)
	}
	refs := make([]string, 0, len(byRef))
	for r := range byRef {
		refs = append(refs, r)
	}
	sort.Strings(refs)

	blobs := map[string][]byte{} // digest hex -> content
	top := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	digests := map[string]v1.Hash{}
	for _, r := range refs {
		tag, err := name.NewTag(r, name.StrictValidation)
		if err != nil {
			return nil, fmt.Errorf("build image %s: parse reference: %w", r, err)
		}
		desc, err := buildIndex(byRef[r], blobs)
		if err != nil {
			return nil, fmt.Errorf("build image %s: %w", r, err)
		}
		desc.Annotations = map[string]string{annotationRefName: tag.TagStr(), annotationContainerName: tag.String()}
		top.Manifests = append(top.Manifests, desc)
		digests[r] = desc.Digest
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, fmt.Errorf("write image archive %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if err := writeLayout(tmp, top, blobs); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("write image archive %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("write image archive %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil { // CreateTemp's 0600 would keep other users' ctr out
		return nil, fmt.Errorf("write image archive %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("write image archive %s: %w", path, err)
	}
	return digests, nil
}

// buildIndex builds the image of each spec (one platform each), adds their
// blobs to blobs, and returns the descriptor of the image index of them all.
func buildIndex(specs []Spec, blobs map[string][]byte) (v1.Descriptor, error) {
	var idx v1.ImageIndex = empty.Index
	seen := map[string]bool{}
	for _, s := range specs {
		arch := s.Arch
		if arch == "" {
			arch = "amd64"
		}
		if seen[arch] {
			return v1.Descriptor{}, fmt.Errorf("platform linux/%s given twice", arch)
		}
		seen[arch] = true
		img, err := build(s, arch)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("linux/%s: %w", arch, err)
		}
		if err := addImage(img, blobs); err != nil {
			return v1.Descriptor{}, fmt.Errorf("linux/%s: %w", arch, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
		})
	}
	raw, err := idx.RawManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("encode index: %w", err)
	}
	d, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	blobs[d.Hex] = raw
	return v1.Descriptor{MediaType: types.OCIImageIndex, Size: int64(len(raw)), Digest: d}, nil
}

// addImage adds the manifest, config and layers of img to blobs.
func addImage(img v1.Image, blobs map[string][]byte) error {
	put := func(what string, raw []byte, err error) error {
		if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		d, _, err := v1.SHA256(bytes.NewReader(raw))
		if err != nil {
			return err
		}
		blobs[d.Hex] = raw
		return nil
	}
	m, err := img.RawManifest()
	if err := put("manifest", m, err); err != nil {
		return err
	}
	c, err := img.RawConfigFile()
	if err := put("config", c, err); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("list layers: %w", err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("compress layer: %w", err)
		}
		raw, err := io.ReadAll(rc)
		rc.Close()
		if err := put("layer", raw, err); err != nil {
			return err
		}
	}
	return nil
}

// build returns the image of s for linux/arch: its config on the empty
// image, then its one layer, with OCI media types throughout.
func build(s Spec, arch string) (v1.Image, error) {
	raw, err := layerTar(s.Files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithCompressionLevel(gzip.DefaultCompression), tarball.WithCompressedCaching, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("compress layer: %w", err)
	}

	env := s.Env
	if !hasPath(env) {
		env = append([]string{DefaultPath}, env...)
	}
	cfg := &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		// Created is the commit's time, not the build's: a build time would
		// change the digest on every build.
		Created: v1.Time{Time: s.Created.UTC()},
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
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{CreatedBy: createdBy, Created: v1.Time{Time: s.Created.UTC()}},
		MediaType: types.OCILayer,
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

// writeLayout writes the image layout as a tar: oci-layout, index.json, then
// the blobs sorted by digest.
func writeLayout(w io.Writer, top v1.IndexManifest, blobs map[string][]byte) error {
	index, err := json.Marshal(top)
	if err != nil {
		return fmt.Errorf("encode index.json: %w", err)
	}
	tw := tar.NewWriter(w)
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("write archive entry %s: %w", dir, err)
		}
	}
	if err := writeEntry(tw, "oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := writeEntry(tw, "index.json", index); err != nil {
		return err
	}
	hexes := make([]string, 0, len(blobs))
	for h := range blobs {
		hexes = append(hexes, h)
	}
	sort.Strings(hexes)
	for _, h := range hexes {
		if err := writeEntry(tw, "blobs/sha256/"+h, blobs[h]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("close archive: %w", err)
	}
	return nil
}

func writeEntry(tw *tar.Writer, file string, data []byte) error {
	hdr := &tar.Header{
		Name:     file,
		Typeflag: tar.TypeReg,
		Mode:     0o644,
		Size:     int64(len(data)),
		ModTime:  epoch,
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write archive entry %s: %w", file, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("write archive entry %s: %w", file, err)
	}
	return nil
}
