# usltun — one entry point for building, testing and benchmarking.
# `make test` is the one test command; .ci/run calls it. It needs root (the
# integration tests build hosts from network namespaces).

GO      ?= go
PKGS_RACE := ./usl/... ./flow/... ./gateway/... ./policy/... ./hub/...
export GOFLAGS := -buildvcs=false

.PHONY: all build test test-long vet deps bench fuzz demo clean deb

all: build

# VERSION is what `usltun version` prints: git describe of the checkout.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/usltun ./cmd/usltun

# deb builds bin/usltun_<version>_<arch>.deb with nfpm (tools/mkdeb): the
# binary, the systemd unit, completions, the man page and /etc/usltun/.
deb: build
	$(GO) run ./tools/mkdeb --binary bin/usltun --version '$(VERSION)' --out bin

# deps installs what the tests and benchmarks need on a fresh Debian machine.
# Go modules come through `go mod download`; system tools through apt-get.
APT_PKGS := iproute2 nftables iperf3 sockperf wireguard-go wireguard-tools prometheus systemd iputils-ping curl util-linux passwd openssh-server openssh-client tmux file netcat-openbsd
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(GO) mod download

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	@d="$$($(GO) mod tidy -diff 2>&1)" || { echo "$$d"; echo "go.mod/go.sum are not tidy: run 'go mod tidy'"; exit 1; }
	$(GO) vet ./...

# The session layer (and the gateway on top of it), the policy engine
# (rule sets replaced under concurrent evaluation) and the hub (peer tables
# replaced under concurrent flows) run under the race detector. Everything else, including the namespace-based integration tests
# that need root, runs one package at a time (-p 1): the end-to-end tests
# assert recovery times, and two packages' labs competing for the 2 cores
# would measure each other.
test: deps vet
	$(GO) test -race -count=1 -timeout 10m $(PKGS_RACE)
	$(GO) test -p 1 -count=1 -timeout 30m $$($(GO) list ./... | grep -v -e /usl$$ -e /flow$$ -e /gateway$$ -e /policy$$ -e /hub$$)

test-long:
	USLTUN_LONG=1 $(MAKE) test

# demo shows, on three namespace hosts, a transfer through usltun surviving
# a cut link and TCP resets, next to plain TCP dying with ECONNRESET, nc
# inside usltun exec keeping its line stream while a plain nc dies, and a
# second act with two links and --scheduler mirror, where the same cut of
# one link costs no stall ("longest stall" next to the one-path run's) (root).
demo: build
	$(GO) run ./tools/demo --usltun bin/usltun

# bench runs the micro-benchmarks (session layer, TUN + netstack data path
# on usltun's own device and, as TCPThroughput/*/wgtun, on wireguard-go's
# tun package for comparison, the policy's flow-open cost) and then the A—B—C lab comparison against
# direct routing and wireguard-go (Debian's 2022 build and the current one,
# which tunbench builds once with go install from the module proxy), the
# front ends without root (SOCKS5, HTTP CONNECT, exec) against usl0, and one
# hub with 100 peers × 100 flows.
# Figures and their reading are in docs/performance.md.
bench: deps build
	$(GO) test -run '^$$' -bench 'RawTCP|Session|RecordSeal' -benchmem ./usl/
	$(GO) test -run '^$$' -bench Multipath -benchtime 2000x -count 3 ./usl/
	$(GO) test -run '^$$' -bench 'TCPThroughput|RoundTrip' -benchtime 2000x ./netstack/
	$(GO) test -run '^$$' -bench . -benchmem ./policy/
	$(GO) run ./tools/tunbench
	$(GO) run ./tools/proxybench
	$(GO) run ./tools/hubbench --usltun bin/usltun

# fuzz runs every fuzz target in the tree for FUZZTIME each; the checked-in
# corpus under testdata/fuzz already runs as plain tests in `make test`.
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; \
		done; \
	done

clean:
	rm -rf bin
