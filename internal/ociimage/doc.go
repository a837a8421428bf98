// Package ociimage builds container images from static binaries, in Go,
// with no registry and no container engine: one gzip layer per image
// holding the given files, a config with the entrypoint and the OCI labels,
// a manifest per platform under an image index, and the lot written as the
// tar of an OCI image layout, which
// `ctr -n k8s.io images import --all-platforms FILE` reads.
//
// It owns two things: the writer (Spec, File, Write), which is generic, and
// the catalogue of this project's images (Images, Ref): the agent image that
// `make image` releases (linux/amd64 and linux/arm64) and the images a real
// node's pods run in the tests (the ztunnel stand-in, the test application,
// the pause sandbox).
//
// Output is deterministic: the same files and specs give the same bytes, so
// the same image digests, on every machine (fixed modification times, the
// commit's time as the creation time, sorted entries, root ownership).
package ociimage
