# Ambit: run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO        ?= go
BIN       := $(CURDIR)/bin
CACHE     ?= $(HOME)/.cache/ambit
TOOLS     := $(CACHE)/bin
FUZZTIME  ?= 5s
# Test packages: everything; root-only tiers skip themselves locally and fail under CI=true.
PKGS      ?= ./...
CNI_PLUGINS := github.com/containernetworking/plugins/plugins/main/bridge github.com/containernetworking/plugins/plugins/ipam/host-local
CNI_PLUGINS_VERSION = $(shell $(GO) list -m -f '{{.Version}}' github.com/containernetworking/plugins)
# The version the binaries report and the images are tagged with; by default
# pkg/version.Dev (a test in deploy/images checks they agree).
VERSION   ?= 0.1.0-dev
# Registry and path of the image tags <HUB>/<name>:<VERSION>: a placeholder; set your own.
HUB       ?= localhost/ambit
VERSION_LDFLAGS := -X github.com/ambit-mesh/ambit/pkg/version.Version=$(VERSION)

export PATH := $(TOOLS):$(PATH)

.PHONY: help deps build images test unit fuzz lint generate gen-check e2e bench demo demo-tunnel clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z0-9-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install what the tests need (Debian packages, pinned Go tools), idempotently
	@bash hack/install-deps.sh

build: ## build every binary (and the bridge/host-local CNI plugins) into ./bin
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(VERSION_LDFLAGS)' -o $(BIN)/ $$($(GO) list ./... | grep '/cmd/')
	GOBIN=$(BIN) GOFLAGS=-mod=mod GOWORK=off $(GO) install $(addsuffix @$(CNI_PLUGINS_VERSION),$(CNI_PLUGINS))

images: ## build the OCI image tarballs bin/images/<name>.tar (no Docker needed; VERSION, HUB, SOURCE_DATE_EPOCH)
	$(GO) run ./deploy/images/cmd/ambit-images -out $(BIN)/images -hub '$(HUB)' -version '$(VERSION)'

test: deps lint unit fuzz ## install deps, lint, run all tests and short fuzzing

unit: ## run all tests (root tiers included when root)
	$(GO) test -count=1 -timeout 20m $(PKGS)

fuzz: ## run every fuzz target for $(FUZZTIME)
	@bash hack/fuzz.sh $(FUZZTIME)

lint: ## gofmt, go mod tidy, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb].go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit"; exit 1; }
	$(GO) vet ./...
	staticcheck ./...

generate: ## regenerate generated code (bpf2go objects, the chart's CRDs; goldens are per-test with -update)
	$(GO) generate ./...

gen-check: generate ## fail when generated code is stale
	@git diff --exit-code --stat || { echo "generated files are stale: run 'make generate' and commit"; exit 1; }

e2e: ## end-to-end tests only (the local mesh; needs root)
	$(GO) test -count=1 -timeout 15m ./e2e/...

bench: build ## data path (loopback, pod to pod) and control plane (istiod vs pilot-discovery) figures, each against a same-run baseline
	$(GO) run ./e2e/bench -bin $(BIN)
	$(GO) run ./e2e/kube/cpbench -istiod $(BIN)/istiod

demo: build ## the main job: the example local mesh with real traffic (root; stays up: ambitctl local down)
	$(GO) run ./e2e/demo -bin $(BIN)

demo-tunnel: build ## a smaller demo without root: the CA and two HBONE endpoints on loopback
	$(GO) run ./e2e/demo -tunnel -bin $(BIN)

clean: ## remove build output
	rm -rf $(BIN)
