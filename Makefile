# Atelier build. `make run` and `make test` do all the set-up on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
.DEFAULT_GOAL := build

GO        ?= go
GOTAGS    := sqlite_fts5
# clang builds the cgo parts (GLFW, SQLite) about twice as fast as gcc.
CC        := $(shell command -v clang >/dev/null 2>&1 && echo clang || echo cc)
export CC
export CGO_ENABLED := 1

# The Python venv lives outside the clone, keyed by the requirements' hash, so that
# clean clones and CI reruns reuse it instead of downloading torch again.
REQ_HASH  := $(shell sha256sum python/requirements.txt | cut -c1-12)
VENV      ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/atelier/venv-$(REQ_HASH)
PYTHON    := $(VENV)/bin/python
WORKER_DIR := $(CURDIR)/python

# The binary finds its worker through these defaults; ATELIER_PYTHON and
# ATELIER_WORKER_DIR override them at run time.
LDFLAGS   := -X 'atelier/bridge.DefaultPython=$(PYTHON)' -X 'atelier/bridge.DefaultWorkerDir=$(WORKER_DIR)'
export ATELIER_PYTHON := $(PYTHON)
export ATELIER_WORKER_DIR := $(WORKER_DIR)

GO_SOURCES := $(shell find cmd core bridge ui -name '*.go' 2>/dev/null) go.mod go.sum

.PHONY: build run test deps sysdeps venv go-deps test-go test-python test-fuzz test-window screenshot vet clean print-python

## deps: system packages, Go modules and the Python venv
deps: sysdeps go-deps venv

sysdeps:
	@bash .ci/sysdeps.sh

go-deps: sysdeps
	@$(GO) mod download

venv: $(VENV)/.ready

$(VENV)/.ready: python/requirements.txt
	@bash .ci/venv.sh "$(VENV)" python/requirements.txt

print-python:
	@echo $(PYTHON)

## build: bin/atelier
build: bin/atelier

bin/atelier: sysdeps $(GO_SOURCES)
	@mkdir -p bin
	$(GO) build -tags $(GOTAGS) -ldflags "$(LDFLAGS)" -o bin/atelier ./cmd/atelier

## run: build everything and open the app
run: deps bin/atelier
	./bin/atelier

## test: every test (Go, Python, fuzz smoke, real window under Xvfb)
test: deps bin/atelier vet test-python test-go test-fuzz test-window

vet:
	$(GO) vet -tags $(GOTAGS) ./...

test-go: deps
	$(GO) test -tags $(GOTAGS) -count=1 -timeout 60m ./...

test-python: venv
	cd python && ATELIER_CACHE_DIR=$$(mktemp -d) $(PYTHON) -m pytest -q

test-fuzz: deps
	$(GO) test -tags $(GOTAGS) -run '^$$' -fuzz FuzzDecodeMessage -fuzztime 15s ./core

test-window: deps bin/atelier
	bash .ci/window-test.sh bin/atelier

## screenshot: refresh docs/screenshot.png from the real window under Xvfb
screenshot: deps bin/atelier
	SCREENSHOT_OUT=docs/screenshot.png bash .ci/window-test.sh bin/atelier
	$(GO) test -tags $(GOTAGS) -count=1 -run TestSectionScreenshots ./ui -args -shots $(CURDIR)/docs/sections

clean:
	rm -rf bin
