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
# Pinned here rather than in go.mod: a lint tool, not a dependency of the app. S1016
# (convert between struct types of equal fields) is off: Ping and Pong are different messages.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Stamps record set-up steps that are done, so an up-to-date tree rebuilds nothing.
STAMPS    := bin/.stamps

.PHONY: help build run test deps sysdeps venv venv-ray go-deps lint vet test-go test-python test-fuzz test-window screenshot clean print-python package install uninstall deb test-package

## help: this list
help:
	@sed -n 's/^## \([a-z-]*\): \(.*\)/\1\t\2/p' $(MAKEFILE_LIST) | expand -t 16

## deps: system packages, Go modules and the Python venv
deps: sysdeps go-deps venv

## sysdeps: the Debian/Ubuntu packages the build and tests need (installed only when missing)
sysdeps: $(STAMPS)/sysdeps

$(STAMPS)/sysdeps: .ci/sysdeps.sh
	@bash .ci/sysdeps.sh
	@mkdir -p $(STAMPS) && touch $@

## go-deps: the Go modules
go-deps: $(STAMPS)/go-deps

$(STAMPS)/go-deps: go.mod go.sum | $(STAMPS)/sysdeps
	@$(GO) mod download
	@mkdir -p $(STAMPS) && touch $@

## venv: the worker's Python venv (outside the clone, keyed by the requirements' hash)
venv: $(VENV)/.ready

$(VENV)/.ready: python/requirements.txt
	@bash .ci/venv.sh "$(VENV)" python/requirements.txt

## venv-ray: Ray, optional, for `queue run --ray` (python/requirements-ray.txt, into the same venv)
RAY_REQ   := python/requirements-ray.txt
RAY_STAMP := $(VENV)/.ray-$(shell sha256sum $(RAY_REQ) | cut -c1-12)
venv-ray: $(RAY_STAMP)

$(RAY_STAMP): $(RAY_REQ) | $(VENV)/.ready
	@bash .ci/venv-ray.sh "$(VENV)" $(RAY_REQ) python/requirements.txt

print-python:
	@echo $(PYTHON)

## build: bin/atelier (nothing to do when it is up to date)
build: bin/atelier

# The venv's path is linked into the binary, so a requirements change relinks it.
bin/atelier: $(GO_SOURCES) python/requirements.txt | $(STAMPS)/sysdeps $(STAMPS)/go-deps
	@mkdir -p bin
	$(GO) build -tags $(GOTAGS) -ldflags "$(LDFLAGS)" -o bin/atelier ./cmd/atelier

## run: build everything and open the app
run: deps bin/atelier
	./bin/atelier

## test: every test (lint, Go, Python, fuzz smoke, real window under Xvfb, the installed package)
test: deps venv-ray bin/atelier lint test-python test-go test-fuzz test-window test-package

## lint: go vet, staticcheck, gofmt and ruff
lint: vet venv
	$(GO) run $(STATICCHECK) -tags $(GOTAGS) -checks inherit,-S1016 ./...
	$(VENV)/bin/ruff check python
	@out=$$(gofmt -l cmd core bridge ui); if [ -n "$$out" ]; then echo "gofmt: these files need formatting:"; echo "$$out"; exit 1; fi

vet: go-deps
	$(GO) vet -tags $(GOTAGS) ./...

## generate: core/spec/spec_gen.go and python/atelier_worker/spec.py from docs/protocol/spec.json
.PHONY: generate
generate:
	$(GO) generate ./core/spec
	python3 python/scripts/gen_spec.py

## test-go: the Go tests (real worker on the CPU, real SQLite, Fyne test driver)
test-go: deps venv-ray
	$(GO) test -tags $(GOTAGS) -count=1 -timeout 60m ./...

## test-python: the worker's tests on the tiny model
test-python: venv venv-ray
	cd python && ATELIER_CACHE_DIR=$$(mktemp -d) $(PYTHON) -m pytest -q

## test-fuzz: a short fuzzing run of the protocol decoder
test-fuzz: deps
	$(GO) test -tags $(GOTAGS) -run '^$$' -fuzz FuzzDecodeMessage -fuzztime 15s ./core/protocol

## test-window: the real window under Xvfb, generating one image
test-window: deps bin/atelier
	bash .ci/window-test.sh bin/atelier

## screenshot: refresh docs/screenshot.png from the real window under Xvfb
screenshot: deps bin/atelier
	SCREENSHOT_OUT=docs/screenshot.png bash .ci/window-test.sh bin/atelier
	$(GO) test -tags $(GOTAGS) -count=1 -run TestSectionScreenshots ./ui -args -shots $(CURDIR)/docs/sections

# The desktop package. Its binary links in no path of this clone: it carries the
# worker's code and pins (package atelier/python) and builds its venv on first start.
# The fyne tool is pinned here, like staticcheck: a build tool, not a dependency.
FYNE      := fyne.io/tools/cmd/fyne@v1.7.4
APP_ID    := io.atelier.studio
APP_VERSION := $(shell sed -n 's/^ *Version *= *"\(.*\)"/\1/p' FyneApp.toml)
PKG_DIR   := bin/package
PACKAGE   := $(PKG_DIR)/Atelier.tar.xz
PREFIX    ?= $(HOME)/.local
WORKER_FILES := $(shell find python/atelier_worker -type f -not -path '*__pycache__*' 2>/dev/null) python/requirements.txt python/embed.go

## package: bin/package/Atelier.tar.xz, the Linux desktop package (fyne package: binary with its worker, icon, .desktop)
package: $(PACKAGE)

# fyne package runs in a staging folder with a copy of FyneApp.toml, since it
# rewrites the file (it counts builds up) and the tree must stay clean. The binary
# is built with -trimpath, so it names no folder of the machine that built it.
$(PACKAGE): $(GO_SOURCES) $(WORKER_FILES) FyneApp.toml assets/icon.png | $(STAMPS)/sysdeps $(STAMPS)/go-deps
	@rm -rf $(PKG_DIR)/stage && mkdir -p $(PKG_DIR)/stage/assets
	$(GO) build -tags $(GOTAGS) -trimpath -ldflags "-s -w -X main.version=$(APP_VERSION)" -o $(PKG_DIR)/stage/atelier ./cmd/atelier
	@cp FyneApp.toml $(PKG_DIR)/stage/ && cp assets/icon.png $(PKG_DIR)/stage/assets/
	@# fyne package wants Go code in --src even with --exe; it packages the binary above.
	@printf 'package main\n\nfunc main() {}\n' >$(PKG_DIR)/stage/main.go
	cd $(PKG_DIR)/stage && $(GO) run $(FYNE) package --os linux --exe atelier --src . --icon assets/icon.png
	@mv $(PKG_DIR)/stage/Atelier.tar.xz $@ && rm -rf $(PKG_DIR)/stage

## install: install the package under PREFIX (default ~/.local): bin/atelier, its icon and .desktop entry
install: $(PACKAGE)
	@rm -rf $(PKG_DIR)/unpack && mkdir -p $(PKG_DIR)/unpack && tar -xJf $(PACKAGE) -C $(PKG_DIR)/unpack
	install -Dm755 $(PKG_DIR)/unpack/atelier/usr/local/bin/atelier $(DESTDIR)$(PREFIX)/bin/atelier
	install -Dm644 $(PKG_DIR)/unpack/atelier/usr/local/share/pixmaps/$(APP_ID).png $(DESTDIR)$(PREFIX)/share/icons/hicolor/256x256/apps/$(APP_ID).png
	@mkdir -p $(DESTDIR)$(PREFIX)/share/applications
	sed 's|^Exec=.*|Exec=$(PREFIX)/bin/atelier|' $(PKG_DIR)/unpack/atelier/usr/local/share/applications/$(APP_ID).desktop \
		>$(DESTDIR)$(PREFIX)/share/applications/$(APP_ID).desktop
	@rm -rf $(PKG_DIR)/unpack
	@echo "Installed under $(DESTDIR)$(PREFIX). The first start sets up the worker's Python environment (about 3 GB to download)."

## deb: bin/package/atelier_<version>_<arch>.deb, the same files under /usr, for apt install ./FILE
DEB_ARCH  := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB       := $(PKG_DIR)/atelier_$(APP_VERSION)_$(DEB_ARCH).deb
deb: $(DEB)

$(DEB): $(PACKAGE)
	@rm -rf $(PKG_DIR)/deb && mkdir -p $(PKG_DIR)/deb/DEBIAN
	@$(MAKE) -s install DESTDIR=$(CURDIR)/$(PKG_DIR)/deb PREFIX=/usr >/dev/null
	@printf '%s\n' 'Package: atelier' 'Version: $(APP_VERSION)' 'Architecture: $(DEB_ARCH)' \
		'Maintainer: Atelier <atelier@example.invalid>' 'Section: graphics' 'Priority: optional' \
		'Depends: libc6, libgl1, libx11-6, libxcursor1, libxrandr2, libxinerama1, libxi6, libxxf86vm1, python3 (>= 3.10), python3-venv' \
		'Description: Stable Diffusion XL studio for your own GPU' \
		' A desktop app with a Python worker; its first start sets up the worker (about 3 GB).' \
		>$(PKG_DIR)/deb/DEBIAN/control
	dpkg-deb --root-owner-group --build $(PKG_DIR)/deb $@ >/dev/null
	@rm -rf $(PKG_DIR)/deb

## uninstall: remove what install put under PREFIX (the history, images and venv stay)
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/atelier $(DESTDIR)$(PREFIX)/share/icons/hicolor/256x256/apps/$(APP_ID).png \
		$(DESTDIR)$(PREFIX)/share/applications/$(APP_ID).desktop

## test-package: build the package, install it into a temporary prefix and run it from outside the clone
test-package: deps $(PACKAGE) $(DEB)
	bash .ci/package-test.sh "$(PYTHON)" "$(DEB)"

## clean: remove bin/
clean:
	rm -rf bin
