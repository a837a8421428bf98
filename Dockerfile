# syntax=docker/dockerfile:1
#
# The meshredirect image: the agent and its CNI plugin, static binaries on
# distroless; the chart's DaemonSet runs `/meshredirect agent ...`.
#
#   docker build -t meshredirect:dev .
#
# `make image` builds the same image without a container engine: the same
# static binaries, the same paths, entrypoint, command and user, written by
# internal/ociimage (Go) as an OCI archive, bin/meshredirect-image.tar, on
# no base image (no distroless CA certificates or tzdata, which the agent does
# not read); TestAgentMatchesDockerfile keeps the two in step.
#
# The build stage runs on the builder's own platform and cross-compiles: the
# binary is pure Go (CGO_ENABLED=0, the programs are generated in Go, no C), so
# no C toolchain and no emulation is needed. linux/amd64 and linux/arm64:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(git log -1 --format=%cI) -t meshredirect:dev .
#
# deploy/tools/chart/image_test.go runs this file's build command and checks
# that the results are static.

# The Go of go.mod's go line (the test checks that they agree), pinned by the
# digest of its image index (all platforms): bump the two together. The
# digest is the one public Dockerfiles and a BuildKit log pin golang:1.26.8 to;
# check it with `docker buildx imagetools inspect golang:1.26.8` before a release.
ARG GO_VERSION=1.26.8
ARG GO_DIGEST=sha256:6c2a5538f964f1c82f97ad14988bf05de100d922d159d0e398b54c7b0ca0c6c9

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}@${GO_DIGEST} AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
# Stamped into the agent (`meshredirect version`, meshredirect_build_info);
# the Makefile's VERSION and COMMIT.
ARG VERSION=dev
ARG COMMIT=unknown
WORKDIR /src
# The modules first: this layer stays cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The agent and the chained CNI plugin, which the agent copies onto the node
# (--cni-install) where the container runtime runs it: static, it runs on any
# distribution. -trimpath: no path of the build machine in the binaries.
# -s -w: no symbol table or DWARF; panics still name functions (pclntab stays).
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w -X github.com/meshredirect/meshredirect/internal/version.version=${VERSION} -X github.com/meshredirect/meshredirect/internal/version.commit=${COMMIT}" -o /out/ ./cmd/meshredirect ./cmd/meshredirect-cni

# static: no libc, no shell, no package manager; CA certificates, tzdata and
# /etc/passwd only. Pinned by the digest of its image index (the :nonroot tag,
# whose only difference, the default user, USER below overrides): the digest
# many public Dockerfiles pin; check it with
# `docker buildx imagetools inspect gcr.io/distroless/static-debian12:nonroot`.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
ARG VERSION=dev
ARG COMMIT=unknown
ARG CREATED=1970-01-01T00:00:00Z
# The labels `make image` gives its image (internal/ociimage).
LABEL org.opencontainers.image.title="meshredirect" \
      org.opencontainers.image.description="meshredirect: the node agent that redirects ambient pods' traffic into ztunnel with eBPF on TC hooks, and its chained CNI plugin" \
      org.opencontainers.image.source="https://github.com/meshredirect/meshredirect" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /out/meshredirect /meshredirect
# Where the agent's --cni-plugin (and the chart's cni.plugin) expect it.
COPY --from=build /out/meshredirect-cni /usr/local/bin/meshredirect-cni
# Root, on purpose: the agent needs capabilities (BPF, NET_ADMIN, SYS_ADMIN,
# SYS_RESOURCE, SYS_PTRACE), and a non-root user loses them when the runtime
# execs the binary, as Kubernetes cannot grant ambient capabilities. The
# DaemonSet drops every other capability (deploy/README.md).
USER 0:0
ENTRYPOINT ["/meshredirect"]
CMD ["agent"]
