# meshredirect: the two set-up commands are `make demo` and `make test` (as root).
GO ?= go
GOTEST_FLAGS ?= -count=1 -timeout 30m
# The packages whose tests run under the race detector (the agent's informers, reconcile, CNI and
# ZDS servers; the dataplane; the harness of streams, stand-ins and nodes): about 5 minutes more
# of compiling on a cold machine (cgo: .ci/run installs gcc), and their suites run slower.
RACE_PKGS ?= $(shell $(GO) list ./agent ./cni ./dataplane ./testenv/... | grep -v /testenv/realnode)
# Every other package but the real node's, which `make test` runs on its own after them
# (test-node, also under -race): its control plane, kubelet and containerd would load the 2 cores
# the other suites time on.
PKGS ?= $(filter-out $(RACE_PKGS),$(shell $(GO) list ./... | grep -v /testenv/realnode))
GOTEST_RACE = CGO_ENABLED=1 $(GO) test -race
# Linters, pinned, built from the module proxy into a cache outside the
# repository (a warm run reuses them).
TOOLS ?= $(HOME)/.cache/meshredirect/tools
STATICCHECK_VERSION ?= v0.8.2
XTOOLS_VERSION ?= v0.52.0

.PHONY: all build test test-node lint tools demo fuzz clean check-no-c kube-bins cni-bins test-kernels manifests image test-images bench bench-quick bench-report diagram

all: build

# The version and commit stamped into the agent (internal/version; `meshredirect version`), and the
# image's labels: git's description of the checkout, its commit (-dirty with uncommitted changes).
# Without git (a source tarball), set them: make image VERSION=v0.2.0 COMMIT=<sha>.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell c=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null && echo $$c || echo $$c-dirty; })
VERSION_PKG = github.com/meshredirect/meshredirect/internal/version
VERSION_LDFLAGS = -X $(VERSION_PKG).version=$(VERSION) -X $(VERSION_PKG).commit=$(COMMIT)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(VERSION_LDFLAGS)" -o bin/meshredirect ./cmd/meshredirect
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/meshredirect-cni ./cmd/meshredirect-cni

## test: everything, as root: vet, static build, no C, the privileged suites (the agent, cni,
## dataplane and testenv packages under -race), the real node, every fuzz target.
test: lint check-no-c kube-bins cni-bins
	CGO_ENABLED=0 $(GO) build ./...
	$(GO) test $(GOTEST_FLAGS) $(PKGS)
	$(GOTEST_RACE) $(GOTEST_FLAGS) $(RACE_PKGS)
	cd deploy/tools && $(GO) test $(GOTEST_FLAGS) ./...
	$(MAKE) test-node
	$(call run-fuzz,1)

## test-node: a real single-node cluster (etcd, kube-apiserver, kube-controller-manager,
## kube-scheduler, a kubelet, Debian's containerd and runc) in a network and mount namespace of
## its own, the chart installed on it: in-pod mode on ptp and bridge nodes, node mode, and a pod's
## whole life (testenv/realnode). As root; about 2.5 minutes. Needs containerd and runc
## (apt-get install containerd runc), which .ci/run installs.
test-node: kube-bins cni-bins
	$(GOTEST_RACE) $(GOTEST_FLAGS) -v ./testenv/realnode

## lint: gofmt, go vet, staticcheck and deadcode (nothing unreachable, tests and examples counted).
lint: tools
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd deploy/tools && $(GO) vet ./...
	$(TOOLS)/staticcheck-$(STATICCHECK_VERSION) ./...
	@dead=$$($(TOOLS)/deadcode-$(XTOOLS_VERSION) -test ./...); \
	if [ -n "$$dead" ]; then echo "unreachable code (deadcode -test):"; echo "$$dead"; exit 1; fi

tools: $(TOOLS)/staticcheck-$(STATICCHECK_VERSION) $(TOOLS)/deadcode-$(XTOOLS_VERSION)

$(TOOLS)/staticcheck-$(STATICCHECK_VERSION):
	mkdir -p $(TOOLS)/build
	cd $(TOOLS)/build && GOBIN=$(TOOLS)/build $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(TOOLS)/build/staticcheck $@

$(TOOLS)/deadcode-$(XTOOLS_VERSION):
	mkdir -p $(TOOLS)/build
	cd $(TOOLS)/build && GOBIN=$(TOOLS)/build $(GO) install golang.org/x/tools/cmd/deadcode@$(XTOOLS_VERSION)
	mv $(TOOLS)/build/deadcode $@

## check-no-c: the datapath is generated in Go; no C source or object file may appear.
check-no-c:
	@found=$$(git ls-files '*.c' '*.h' '*.o' '*.elf' 2>/dev/null); \
	if [ -n "$$found" ]; then echo "C sources or objects in the repository: $$found"; exit 1; fi

## demo: a node in a box with meshredirect on it: every flow of the design, its path, the counters.
demo:
	CGO_ENABLED=0 $(GO) build -o bin/demo ./testenv/cmd/demo
	./bin/demo

## fuzz: every fuzz target (the programs, the CNI plugin's input, the conflist editor, the ambient
## decision), FUZZ_SCALE times the executions make test gives it (about 5 s each here, 60 s with fuzz; the
## in-pod targets enter a netns on every execution: fewer executions, about 10 s each).
## Budgets are counts, not durations: with a duration, go1.26's fuzz coordinator can fail a target
## that found nothing ("context deadline exceeded" at the deadline, golang/go#75804, fixed in go1.27).
FUZZ_TARGETS ?= ./asm:FuzzAppOutbound:60000 ./asm:FuzzAppInbound:60000 ./asm:FuzzZtunnelIngress:60000 \
	./asm:FuzzZtunnelEgress:60000 ./asm:FuzzZtunnelAssign:60000 ./asm:FuzzPodEgress:10000 ./asm:FuzzPodLoopback:18000 \
	./asm:FuzzPodIngress:12000 ./cmd/meshredirect-cni:FuzzPluginConfig:100000 ./cni:FuzzConflist:3000 ./agent:FuzzDecide:8000 \
	./zds:FuzzRequest:30000 ./zds:FuzzResponse:10000 ./tc:FuzzParseFilter:40000 ./tc:FuzzParsePinName:40000
FUZZ_SCALE ?= 12
define run-fuzz
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; n=$$(( $${rest##*:} * $(1) )); \
		echo "fuzz $$pkg $$name for $${n} executions"; \
		$(GO) test $$pkg -run '^$$' -fuzz "^$$name$$" -fuzztime $${n}x || exit 1; done
endef
fuzz:
	$(call run-fuzz,$(FUZZ_SCALE))

## bench: the benchmark against Istio's node-level and in-pod rules (iptables, nftables), IPv4 and IPv6, with
## the scale phase (as root, ~35 min on a quiet machine): BENCHMARKS.md and bench/results/. Installs iptables,
## ipset and nftables from Debian if missing; builds the API server and CNI plugins it runs (cached).
bench:
	bench/run.sh $(BENCH_FLAGS)

## bench-quick: the same report in under 10 minutes, fewer rounds and shorter runs.
bench-quick:
	bench/run.sh -quick $(BENCH_FLAGS)

## bench-report: BENCHMARKS.md and the charts drawn again from bench/results/latest.json, without a run
## (after a change to bench/report; no root needed).
bench-report:
	$(GO) run ./bench -render bench/results/latest.json

## manifests: render deploy/meshredirect.yaml from the chart with its default values.
manifests:
	cd deploy/tools && $(GO) run ./render -chart ../charts/meshredirect -o ../meshredirect.yaml

## diagram: the README's pictures of each mode's packet paths (docs/datapath-*.svg) drawn again
## from their Graphviz sources (docs/*.dot; apt-get install graphviz). internal/repocheck fails
## when a committed SVG is not what its source draws.
diagram:
	@for f in docs/*.dot; do echo "dot -Tsvg $$f -o $${f%.dot}.svg"; dot -Tsvg "$$f" -o "$${f%.dot}.svg" || exit 1; done

## image: the release image (the agent and its CNI plugin, static) for linux/amd64 and linux/arm64, as
## the tar of an OCI image layout, built in Go by testenv/cmd/images: no container engine, no
## registry. It prints the image index's digest (the chart's image.digest once pushed). Import it
## with `ctr -n k8s.io images import --all-platforms bin/meshredirect-image.tar`. Reproducible: the
## labels' and config's time is the commit's (SOURCE_DATE_EPOCH), so a checkout gives the same digest.
## The Dockerfile builds the same image on distroless where docker runs (`docker buildx build
## --platform linux/amd64,linux/arm64 .`).
IMAGE_TAG ?= dev
IMAGE_ARCHIVE ?= bin/meshredirect-image.tar
IMAGE_BIN ?= bin/image
IMAGE_ARCHES ?= amd64 arm64
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
# -s -w: no symbol table or DWARF, as in the Dockerfile; panics still name functions.
STATIC_BUILD = CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(VERSION_LDFLAGS)"
IMAGES_CMD = $(GO) run ./testenv/cmd/images -bin $(IMAGE_BIN) -arch $(subst $(space),$(comma),$(strip $(IMAGE_ARCHES))) \
	-tag $(IMAGE_TAG) -version $(VERSION) -revision $(COMMIT) -created $(SOURCE_DATE_EPOCH)
comma := ,
empty :=
space := $(empty) $(empty)
define newline


endef
# One recipe line per arch (no shell loop, whose status would be the last arch's alone): a failed
# build stops make. The images command then checks each binary (a static ELF of its arch) before
# it writes anything, and fails without an archive.
build-arches = $(foreach a,$(IMAGE_ARCHES),GOARCH=$(a) $(STATIC_BUILD) -o $(IMAGE_BIN)/$(a)/ $(1)$(newline))
IMAGE_PKGS = ./cmd/meshredirect ./cmd/meshredirect-cni
image:
	@[ -n "$(VERSION)" ] && [ -n "$(COMMIT)" ] || { echo "no VERSION or COMMIT (not a git checkout?): make image VERSION=... COMMIT=..."; exit 1; }
	@rm -f $(IMAGE_ARCHIVE)
	$(call build-arches,$(IMAGE_PKGS))
	$(IMAGES_CMD) -images agent -o $(IMAGE_ARCHIVE)
	@echo "import it: ctr -n k8s.io images import --all-platforms $(IMAGE_ARCHIVE)"

## test-images: every image (agent, ztunnel stand-in, testapp, pause) in one archive of the same
## format, for a real node's containerd (ctr -n k8s.io images import --all-platforms bin/test-images.tar).
TEST_IMAGES_ARCHIVE ?= bin/test-images.tar
TEST_IMAGE_PKGS = $(IMAGE_PKGS) ./testenv/cmd/ztunnel-standin ./testenv/cmd/testapp ./testenv/cmd/pause
test-images:
	@rm -f $(TEST_IMAGES_ARCHIVE)
	$(call build-arches,$(TEST_IMAGE_PKGS))
	$(IMAGES_CMD) -o $(TEST_IMAGES_ARCHIVE)

## kube-bins: build kube-apiserver and etcd (v1.37.2) from the Go module proxy for the tests that
## need a real API server, cached outside the repo (~/.cache/meshredirect/kube): 6-20 min once, then instant.
kube-bins:
	hack/kubebins/build.sh >/dev/null

## cni-bins: build the reference CNI plugins (ptp, bridge, host-local) that the CNI tests chain
## meshredirect-cni after, from the Go module proxy, cached in ~/.cache/meshredirect/cni.
cni-bins:
	hack/cniplugins/build.sh >/dev/null

## test-kernels: the privileged suites on Debian's 5.10, 6.1 and 6.12 kernels, each booted in qemu
## (software emulation; kernels cached in ~/.cache/meshredirect/debian). As root.
KERNELS ?= bullseye,bookworm,trixie
KERNEL_PKGS ?= ./asm,./maps,./tc,./dataplane,./testenv
KERNEL_SUMMARY ?= bin/kernels.md
# Each package must pass at least this many tests on each kernel (all skipped, dropped or mistyped
# fails); with other KERNELS or KERNEL_PKGS, set KERNEL_FLOOR= (empty) or write one with -write-floor.
KERNEL_FLOOR ?= testenv/cmd/kernel-matrix/floor.txt
# The three guests at once on 2 cores: 15m40s, where two at once and then the third took about 19
# minutes (the last guest ran alone on one core while the other idled).
KERNEL_PARALLEL ?= 3
test-kernels: cni-bins
	@mkdir -p $(dir $(KERNEL_SUMMARY))
	$(GO) run ./testenv/cmd/kernel-matrix -kernels $(KERNELS) -pkgs $(KERNEL_PKGS) -summary $(KERNEL_SUMMARY) \
		-parallel $(KERNEL_PARALLEL) $(if $(KERNEL_FLOOR),-floor $(KERNEL_FLOOR))

clean:
	rm -rf bin
