# longlink — `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin/longlink
TOOLS := $(CURDIR)/bin/tools
PROTOC_VERSION := 3.21.12
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/longlink/longlink/internal/buildinfo.Version=$(VERSION)

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

build: ## build bin/longlink
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/longlink

run: build ## run the gateway on its embedded defaults (:7100, admin 127.0.0.1:7101)
	./$(BIN) gateway --encryption required

test: ## go vet + go test -race ./...
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

bench: ## run the benchmarks with -benchmem
	$(GO) test -run '^$$' -bench . -benchmem ./...

FUZZTIME ?= 20s
fuzz: ## run every fuzz target for FUZZTIME each (default 20s)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

lint: ## gofmt check, go vet, staticcheck, and that generated protobuf is current
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.7.0 ./...
	@$(MAKE) --no-print-directory proto-check

proto-check: proto-tools ## check that proto/pb is what the pinned protoc generates from proto/*.proto
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	PATH=$(TOOLS):$$PATH protoc -I proto --go_out=$$tmp --go_opt=paths=source_relative \
	  --go-grpc_out=$$tmp --go-grpc_opt=paths=source_relative proto/*.proto && \
	diff -r $$tmp proto/pb >/dev/null || { echo 'proto/pb is stale: run make proto'; diff -r $$tmp proto/pb | head -20; exit 1; }; \
	echo 'proto/pb is current'

proto-tools: ## install the pinned protoc and protoc-gen-go versions
	@if ! protoc --version 2>/dev/null | grep -q "$(PROTOC_VERSION)"; then \
	  echo "installing protoc $(PROTOC_VERSION) (Debian protobuf-compiler)"; \
	  apt-get install -y protobuf-compiler=$(PROTOC_VERSION)-* >/dev/null || { echo "need protoc $(PROTOC_VERSION)"; exit 1; }; fi
	@protoc --version | grep -q "$(PROTOC_VERSION)" || { echo "protoc is $$(protoc --version), want $(PROTOC_VERSION)"; exit 1; }
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

proto: proto-tools ## regenerate Go code from proto/*.proto
	PATH=$(TOOLS):$$PATH protoc -I proto --go_out=proto/pb --go_opt=paths=source_relative \
	  --go-grpc_out=proto/pb --go-grpc_opt=paths=source_relative proto/*.proto

.PHONY: help build run test bench fuzz lint proto proto-tools proto-check

# Feature areas add their own targets in mk/*.mk (for example loadtest-1m).
-include mk/*.mk
