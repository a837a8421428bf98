# syntax=docker/dockerfile:1
#
# The meshredirect image: the agent and its CNI plugin, static binaries on
# distroless; the chart's DaemonSet runs `/meshredirect agent ...`.
#
#   docker build -t meshredirect:dev .
#
# `make image` builds the same image without a container engine: the same
# static binaries, the same paths, entrypoint, command and user, written by
# internal/ociimage (Go) as a docker archive, bin/meshredirect-image.tar, on
# no base image (no distroless CA certificates or tzdata, which the agent does
# not read); TestAgentMatchesDockerfile keeps the two in step.
#
# The build stage runs on the builder's own platform and cross-compiles: the
# binary is pure Go (CGO_ENABLED=0, the programs are generated in Go, no C), so
# no C toolchain and no emulation is needed. Only linux/amd64 is supported
# (README: Requirements). deploy/tools/chart/image_test.go runs this file's
# build command and checks that the results are static.

# The Go of go.mod's go line (the test checks that they agree).
ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
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
    go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/meshredirect ./cmd/meshredirect-cni

# static: no libc, no shell, no package manager; CA certificates, tzdata and
# /etc/passwd only. Pin it by digest where you build for production.
FROM gcr.io/distroless/static-debian12
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
