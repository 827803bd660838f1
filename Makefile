# autosnap — build, demo and test entry points. `make demo` and `make test` install what
# is missing (Debian packages) and start libvirtd themselves; run them as root.
GO       ?= go
BIN      := bin/autosnap
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/autosnap/autosnap/internal/cli.Version=$(VERSION)
# Integration tests boot real guests under TCG; leave room on slow machines.
TEST_TIMEOUT ?= 30m
CRASHTEST_TIMEOUT ?= 40m

.PHONY: all build install gen deb deps demo demo-clean test test-unit crashtest lint bench fuzz clean

all: build

# A static, cgo-free binary. -buildvcs=auto stamps the git revision, commit time and
# modified flag that `autosnap version` prints (a GOFLAGS=-buildvcs=false is overridden;
# git worktrees and tarballs get no stamp).
build:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/autosnap

# Man pages (gzipped) and bash/zsh/fish completions of bin/autosnap's commands, into
# dist/gen. The environment is emptied: flags take defaults from AUTOSNAP_* variables,
# which must not end up in the pages. SOURCE_DATE_EPOCH, when set, dates the pages.
DIST ?= dist
GEN  ?= $(DIST)/gen
gen: build
	rm -rf $(GEN)
	env -i PATH="$$PATH" $${SOURCE_DATE_EPOCH:+SOURCE_DATE_EPOCH=$$SOURCE_DATE_EPOCH} $(BIN) gen man $(GEN)/man
	gzip -9n $(GEN)/man/*.1
	env -i PATH="$$PATH" $(BIN) gen completion $(GEN)/completions

# The Debian package dist/autosnap_VERSION_ARCH.deb (packaging/nfpm.yaml,
# docs/packaging.md), built with nfpm run as a Go tool (go.mod's tool line).
# BIN, GEN and DIST may point elsewhere (the packaging test builds in a scratch dir).
DEB_VERSION    ?= $(shell sh scripts/deb-version.sh)
DEB_ARCH       ?= $(shell $(GO) env GOARCH)
DEB_MAINTAINER ?= autosnap maintainers <root@localhost>
DEB            := $(DIST)/autosnap_$(DEB_VERSION)_$(DEB_ARCH).deb
deb: gen
	@test -f examples/autosnap.yaml || { echo "examples/autosnap.yaml is missing"; exit 1; }
	mkdir -p $(DIST) && rm -f $(DIST)/autosnap_*.deb
	BIN='$(BIN)' GEN='$(GEN)' VERSION='$(DEB_VERSION)' ARCH='$(DEB_ARCH)' DEB_MAINTAINER='$(DEB_MAINTAINER)' \
		$(GO) tool nfpm package --config packaging/nfpm.yaml --packager deb --target $(DEB)
	@echo "built $(DEB)"

# Installs bin/autosnap as $(DESTDIR)$(BINDIR)/autosnap, its man pages and bash/zsh/fish
# completions under $(PREFIX)/share, and the symlink cv4pve-autosnap
# next to it: run under that name, autosnap behaves and prints as cv4pve-autosnap
# (docs/cv4pve-mode.md). A real cv4pve-autosnap file there is left alone unless
# FORCE=1 (it is then replaced by the symlink).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
SHAREDIR ?= $(PREFIX)/share
install: gen
	install -d -m 0755 $(DESTDIR)$(BINDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/autosnap
	install -d -m 0755 $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(SHAREDIR)/bash-completion/completions \
		$(DESTDIR)$(SHAREDIR)/zsh/site-functions $(DESTDIR)$(SHAREDIR)/fish/vendor_completions.d
	install -m 0644 $(GEN)/man/*.1.gz $(DESTDIR)$(MANDIR)/man1/
	ln -sfn autosnap.1.gz $(DESTDIR)$(MANDIR)/man1/cv4pve-autosnap.1.gz
	install -m 0644 $(GEN)/completions/autosnap $(DESTDIR)$(SHAREDIR)/bash-completion/completions/autosnap
	install -m 0644 $(GEN)/completions/_autosnap $(DESTDIR)$(SHAREDIR)/zsh/site-functions/_autosnap
	install -m 0644 $(GEN)/completions/autosnap.fish $(DESTDIR)$(SHAREDIR)/fish/vendor_completions.d/autosnap.fish
	@link=$(DESTDIR)$(BINDIR)/cv4pve-autosnap; \
	if [ -e "$$link" ] && [ ! -L "$$link" ] && [ "$(FORCE)" != 1 ]; then \
		echo "$$link exists and is not a symlink (cv4pve-autosnap itself?): left alone; make install FORCE=1 replaces it"; exit 1; \
	fi; \
	ln -sfn autosnap "$$link" && echo "installed $(DESTDIR)$(BINDIR)/autosnap and $$link -> autosnap"

deps:
	bash scripts/install-deps.sh
	bash scripts/start-libvirt.sh

demo: deps build
	bash scripts/demo.sh $(BIN)

demo-clean:
	bash scripts/demo.sh --clean

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags crashtest ./internal/crashtest/

# Unit and integration tests against the real libvirtd, QEMU and a real guest, with the
# race detector (which needs cgo; the shipped binary does not).
test: deps lint
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

# The crash matrix (internal/crashtest, docs/crashtest.md): kills autosnap at every crash
# point, restarts libvirtd at several, and checks that the next ordinary run repairs.
# Restarting libvirtd disconnects every libvirt client on the machine: run it alone,
# after `make test` (CI does: .ci/run).
crashtest: deps
	$(GO) test -tags crashtest -count=1 -v -timeout $(CRASHTEST_TIMEOUT) ./internal/crashtest/

# Pure packages only: no root, no libvirt.
test-unit:
	CGO_ENABLED=1 $(GO) test -race -count=1 ./internal/naming/ ./internal/selector/ ./internal/retention/ ./internal/report/ ./internal/hook/ \
		./internal/engine/ ./internal/journal/ ./internal/retry/ ./internal/driver/ ./internal/driver/drivertest/
	CGO_ENABLED=1 $(GO) test -race -count=1 -run '^(TestPlan|TestGraph|TestHostUsers|TestDefinedChains)' ./internal/driver/libvirt/

fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzParse -fuzztime=30s ./internal/selector/
	$(GO) test -run='^$$' -fuzz=FuzzParseFormat -fuzztime=30s ./internal/naming/
	$(GO) test -run='^$$' -fuzz=FuzzFormatParse -fuzztime=30s ./internal/naming/

bench: deps build
	bash bench/fleet.sh $(BIN)
	bash bench/status.sh $(BIN)
	bash bench/freeze.sh $(BIN)

clean:
	rm -rf bin dist

# Proxmox VE demo against the built-in PVE API emulator (no Proxmox needed, no root).
.PHONY: demo-pve
demo-pve: build
	bash scripts/demo-pve.sh $(BIN)
