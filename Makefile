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

export PATH := $(TOOLS):$(PATH)

.PHONY: help deps build test unit fuzz lint generate gen-check e2e bench demo clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z0-9-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install what the tests need (Debian packages, pinned Go tools), idempotently
	@bash hack/install-deps.sh

build: ## build every binary into ./bin
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $$($(GO) list ./... | grep '/cmd/')

test: deps lint unit fuzz ## install deps, lint, run all tests and short fuzzing

unit: ## run all tests (root tiers included when root)
	$(GO) test -count=1 -timeout 20m $(PKGS)

fuzz: ## run every fuzz target for $(FUZZTIME)
	@bash hack/fuzz.sh $(FUZZTIME)

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb].go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

generate: ## regenerate generated code (bpf2go objects, goldens are per-test with -update)
	$(GO) generate ./...

gen-check: generate ## fail when generated code is stale
	@git diff --exit-code --stat || { echo "generated files are stale: run 'make generate' and commit"; exit 1; }

e2e: ## end-to-end tests (local mesh and Kubernetes mode)
	@echo "e2e: no end-to-end suite exists yet (local mode arrives with issue 3)"; exit 1

bench: build ## print throughput/latency/CPU figures against a same-run baseline
	$(GO) run ./e2e/bench

demo: build ## the main job: a CA and two HBONE tunnel endpoints with real traffic
	$(GO) run ./e2e/demo -istiod $(BIN)/istiod

clean: ## remove build output
	rm -rf $(BIN)
