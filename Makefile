# edgemq build, test and lint. `make help` lists the targets.

# The version: the latest release tag vX.Y.Z (git describe: v1.2.3, or v1.2.3-4-gabc1234 four
# commits later, -dirty with uncommitted changes); before the first tag v0.0.0-N-gHASH, N the
# commit count; outside git v0.0.0-dev.
VERSION ?= $(shell git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null || \
	(h=$$(git rev-parse --short HEAD 2>/dev/null) && echo "v0.0.0-$$(git rev-list --count HEAD)-g$$h$$(git diff --quiet HEAD 2>/dev/null || echo -dirty)") || \
	echo v0.0.0-dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GOBUILD := CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)'
BIN     := bin

.PHONY: help build dist test test-short fuzz lint clean bench-compare bench-quick

help:
	@echo "make build      static binary for this machine: $(BIN)/edgemq"
	@echo "make dist       release: static binaries for linux amd64, arm64, armv7, armv6, a .deb each, SHA256SUMS in $(DIST)/"
	@echo "make test       go test ./... (the README's test command)"
	@echo "make fuzz       fuzz the config loader and the connection state machine, FUZZTIME each (default 60s)"
	@echo "make lint       gofmt, go vet and the import-direction check (docs/ARCHITECTURE.md)"
	@echo "make bench-compare  edgemq beside Mosquitto and plain mochi, 3 rounds, under 10 minutes (BENCHFLAGS=...)"
	@echo "make bench-quick    the same as a one-minute smoke test"

build:
	$(GOBUILD) -o $(BIN)/edgemq ./cmd/edgemq

# Release artifacts (docs/deployment.md): dist/edgemq-VERSION-linux-ARCH, one
# .deb per architecture (armv7 as Debian armhf, armv6 as armel: Raspberry Pi
# Zero and 1), and SHA256SUMS over all of them. .ci/run runs the ARM binaries
# under qemu-user and installs a .deb into a scratch root.
DIST := dist
dist:
	rm -rf $(DIST) && mkdir -p $(DIST)
	GOOS=linux GOARCH=amd64 $(GOBUILD) -o $(DIST)/edgemq-$(VERSION)-linux-amd64 ./cmd/edgemq
	GOOS=linux GOARCH=arm64 $(GOBUILD) -o $(DIST)/edgemq-$(VERSION)-linux-arm64 ./cmd/edgemq
	GOOS=linux GOARCH=arm GOARM=7 $(GOBUILD) -o $(DIST)/edgemq-$(VERSION)-linux-armv7 ./cmd/edgemq
	GOOS=linux GOARCH=arm GOARM=6 $(GOBUILD) -o $(DIST)/edgemq-$(VERSION)-linux-armv6 ./cmd/edgemq
	for a in amd64:amd64 arm64:arm64 armv7:armhf armv6:armel; do \
		deploy/deb/build.sh $(DIST)/edgemq-$(VERSION)-linux-$${a%%:*} $${a#*:} $(VERSION) $(DIST) || exit 1; \
	done
	cd $(DIST) && sha256sum edgemq* > SHA256SUMS
	@ls -l $(DIST)

test:
	go test ./...

FUZZTIME ?= 60s
fuzz:
	go test -run '^$$' -fuzz FuzzParseConfig -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./edge
	go test -run '^$$' -fuzz FuzzSession -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./edge

lint:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt -l: these files need gofmt -w:"; echo "$$out"; exit 1; fi
	go vet ./...
	deploy/lint-imports.sh

clean:
	rm -rf $(BIN) $(DIST)

# Side-by-side benchmark (deploy/bench/README.md). Needs /usr/sbin/mosquitto.
# Example: make bench-compare BENCHFLAGS="-json runs.json -md table.md"
BENCHFLAGS ?=
bench-compare:
	deploy/bench/compare.sh $(BENCHFLAGS)

bench-quick:
	deploy/bench/compare.sh -quick $(BENCHFLAGS)
