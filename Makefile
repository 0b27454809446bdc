# Wrenn's entry points. `make run` brings the whole platform up on this
# machine, `make test` runs every test (as root: with real Postgres, Redis,
# runc and the minimal image), `make generate` regenerates protobuf and sqlc
# code with pinned tools.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

export PATH := /usr/local/go/bin:$(CURDIR)/.tools/bin:$(PATH)

GO        ?= go
WRENN_DIR ?= /var/lib/wrenn
BIN       := $(CURDIR)/bin
TOOLS     := $(CURDIR)/.tools/bin
IMAGE_DIR := $(WRENN_DIR)/images/minimal
# The debootstrap tree cache is keyed by content, so stacks may share it.
WRENN_CACHE_DIR ?= $(WRENN_DIR)/cache

# Pinned code generators; `make generate` installs exactly these.
BUF_VERSION                   := v1.75.0
PROTOC_GEN_GO_VERSION         := v1.36.12
PROTOC_GEN_CONNECT_GO_VERSION := v1.21.1
SQLC_VERSION                  := v1.31.1

IS_ROOT := $(filter 0,$(shell id -u))

.PHONY: all build run test test-unit image generate tools bench lint vet fmt-check clean \
	bin/wrenn-cp bin/wrenn-agent bin/wrenn bin/envd bin/wrenn-init bin/wrenn-oomguard

all: build

## build: the binaries into bin/ (envd, wrenn-init and wrenn-oomguard static, no cgo)
build: bin/wrenn-cp bin/wrenn-agent bin/wrenn bin/envd bin/wrenn-init bin/wrenn-oomguard

# The Go build cache makes these cheap when nothing changed, so they are
# phony and always delegate to go build rather than guessing at dependencies.
bin/wrenn-cp:
	$(GO) build -o $@ ./cmd/control-plane
bin/wrenn-agent:
	$(GO) build -o $@ ./cmd/host-agent
bin/wrenn:
	$(GO) build -o $@ ./cmd/wrenn
# Both ship inside every sandbox image: static, and with -trimpath, no VCS
# stamp and no build id, so an unchanged source gives a byte-identical binary
# and the image (whose cache key hashes them) is not rebuilt by a commit that
# did not touch them.
bin/envd:
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags '-s -w -buildid=' -o $@ ./cmd/envd
bin/wrenn-init:
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags '-s -w -buildid=' -o $@ ./cmd/wrenn-init
# The OOM killer gVisor sandboxes lack, bind-mounted into each one; the runsc
# driver finds it beside wrenn-agent.
bin/wrenn-oomguard:
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags '-s -w -buildid=' -o $@ ./internal/runtime/oci/oomguard

## run: install what is missing, build, and run the platform in the foreground
run:
	@if [ -z "$(IS_ROOT)" ]; then echo "make run needs root (the host agent creates namespaces, mounts and cgroups): sudo make run" >&2; exit 1; fi
	scripts/install-deps.sh
	$(MAKE) --no-print-directory build
	exec $(BIN)/wrenn dev --dir $(WRENN_DIR)

## image: the minimal base image (cached; rebuilt when envd, wrenn-init or the recipe change)
image: bin/envd bin/wrenn-init
	WRENN_CACHE_DIR=$(WRENN_CACHE_DIR) scripts/build-image.sh $(IMAGE_DIR) $(BIN)/envd $(BIN)/wrenn-init

## test: every test; as root also installs packages and builds the image the end-to-end tests use
test:
	@if [ -n "$(IS_ROOT)" ]; then scripts/install-deps.sh; else echo "make test: not root: integration tests that need root will skip" >&2; fi
	$(MAKE) --no-print-directory build
	@if [ -n "$(IS_ROOT)" ]; then $(MAKE) --no-print-directory image; fi
	$(MAKE) --no-print-directory lint
	WRENN_TEST_IMAGE=$(IMAGE_DIR)/rootfs.ext4 \
		$(GO) test -race -count=1 -timeout 60m $$($(GO) list ./... | grep -v '/test/e2e')
	@# The end-to-end tests assert that nothing leaked host-wide (sandbox
	@# cgroups and processes, netns, firewall rules), so they run alone, after
	@# packages whose own tests create such things in parallel.
	WRENN_TEST_IMAGE=$(IMAGE_DIR)/rootfs.ext4 \
		$(GO) test -race -count=1 -timeout 30m ./test/e2e/...

## test-unit: the tests without installing packages or building the image
test-unit:
	$(GO) test -race -count=1 -short ./...

## generate: regenerate protobuf/Connect and sqlc code with the pinned tools
generate: tools
	buf generate
	@if [ -f sqlc.yaml ] || [ -f sqlc.yml ] || [ -f sqlc.json ]; then sqlc generate; else echo "no sqlc configuration: skipping sqlc" >&2; fi

# Each tool's stamp names its version, so changing a pin reinstalls it.
tools: $(TOOLS)/.buf-$(BUF_VERSION) $(TOOLS)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
	$(TOOLS)/.protoc-gen-connect-go-$(PROTOC_GEN_CONNECT_GO_VERSION) $(TOOLS)/.sqlc-$(SQLC_VERSION)

$(TOOLS)/.buf-$(BUF_VERSION):
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	rm -f $(TOOLS)/.buf-* && touch $@
$(TOOLS)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	rm -f $(TOOLS)/.protoc-gen-go-* && touch $@
$(TOOLS)/.protoc-gen-connect-go-$(PROTOC_GEN_CONNECT_GO_VERSION):
	GOBIN=$(TOOLS) $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(PROTOC_GEN_CONNECT_GO_VERSION)
	rm -f $(TOOLS)/.protoc-gen-connect-go-* && touch $@
$(TOOLS)/.sqlc-$(SQLC_VERSION):
	GOBIN=$(TOOLS) $(GO) install github.com/sqlc-dev/sqlc/cmd/sqlc@$(SQLC_VERSION)
	rm -f $(TOOLS)/.sqlc-* && touch $@

## bench: benchmarks only
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## lint: go vet and a gofmt check that fails on any unformatted file
lint: vet fmt-check

vet:
	$(GO) vet ./...

fmt-check:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt would change these files (run gofmt -w):" >&2; echo "$$out" >&2; exit 1; fi

## clean: remove build outputs and installed tools (never $(WRENN_DIR))
clean:
	rm -rf $(BIN) $(CURDIR)/.tools
