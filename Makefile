# berth: `make run` starts it, `make test` tests it. Tools the tests need are
# installed into $(GOBIN) at pinned versions by `make tools`.
SHELL := /bin/bash
GO ?= go
GOBIN ?= $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)
BIN := bin/berth
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# Tool versions are pinned in .ci/install-tools.sh.

.PHONY: run build test unit race fuzz conformance mirror-e2e status-e2e e2e airgap-e2e upstream-auth-e2e tls-e2e auth-e2e gc-e2e cluster-e2e bench bench-cluster bench-smoke lint tools clean diskfull-e2e crash-e2e soak soak-short

run: build
	./$(BIN) serve --addr :5000 --data ./data

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/berth

## test: everything CI runs: vet, unit tests under -race, short fuzzing, the
## OCI conformance suite against a real `berth serve`, the mirror e2e, every
## real client (skipped with a reason where one cannot run; required in CI),
## the status page in headless Chromium, the air-gap bundle workflow.
test: lint race fuzz conformance mirror-e2e status-e2e e2e airgap-e2e upstream-auth-e2e tls-e2e auth-e2e gc-e2e diskfull-e2e crash-e2e cluster-e2e bench-smoke soak-short

unit:
	$(GO) test ./...

race:
	$(GO) test -race -count=1 ./...

# An exec count, not a duration: a duration can end while a worker is busy,
# which `go test -fuzz` reports as a failure on a loaded machine.
FUZZTIME ?= 100000x
fuzz:
	@for f in FuzzParseRequest FuzzParseDigest FuzzParseRange FuzzResolveRange FuzzValidName FuzzValidTag FuzzParse FuzzAccess; do \
	  pkg=$$(grep -rl "func $$f(" --include='*_test.go' . | xargs -n1 dirname | head -1); \
	  echo "fuzz $$f in $$pkg"; \
	  $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

tools:
	@bash .ci/install-tools.sh

conformance: build tools
	@bash .ci/conformance.sh full

mirror-e2e: build tools
	@bash .ci/mirror-e2e.sh

e2e: build tools
	@bash .ci/e2e.sh

# Air-gapped build farms: berth warm/export through an online berth, import
# into an offline one (running, and stopped with --data), tampered and
# incremental bundles; dockerd, ctr, crane, oras, skopeo through or on the
# result (dockerd/containerd skipped with a reason when not root).
airgap-e2e: build tools
	@bash .ci/airgap-e2e.sh

# Three replicas on one S3 bucket (SeaweedFS, built once into ~/.cache by
# make tools) behind a round-robin balancer: one upstream GET for a herd on
# all three, read-after-write across replicas, tag races, conformance through
# the balancer, kill -9 during a fill and a chunked push, dockerd as a client.
cluster-e2e: build tools
	@bash .ci/cluster-e2e.sh

# berth over TLS: a CA made by internal/testutil/mkcert; curl, crane, skopeo,
# regctl, oras (SSL_CERT_FILE), podman and dockerd (certs.d), containerd
# (hosts.toml ca); the conformance suite over TLS; a certificate rotation
# under load; mTLS. Root-only clients SKIP with the reason when not root.
tls-e2e: build tools
	@bash .ci/tls-e2e.sh

# Access rules, LDAP (Debian's slapd, started by the script) and the token
# flow with dockerd, podman, crane and the OCI conformance suite.
auth-e2e: build tools
	@bash .ci/auth-e2e.sh

# A full disk (a 128 MiB tmpfs; root only, else skipped with the reason):
# pushes get 507, pulls go on, no crash, start refused on a full disk,
# pushes work again once space is freed.
diskfull-e2e: build tools
	@bash .ci/diskfull-e2e.sh

# kill -9 at random moments during pushes, fills, eviction (and GC where
# berth has POST /admin/gc), round after round; after each restart every
# acknowledged tag resolves, every blob verifies, no staging file outlives
# its upload. About 90 s: it goes on past a minute so that eviction runs.
CRASH_ROUNDS ?= 12
crash-e2e: build
	$(GO) run ./bench/soak -berth $(BIN) -crash -rounds $(CRASH_ROUNDS)

## soak: the real berth for $(SOAK) under mixed load, a misbehaving upstream
## and three kill -9 restarts; fails on a wrong byte, a lost push or a
## resource that grows. Writes bench/results/soak.{svg,md} and the Soak
## section of docs/benchmarks.md. soak-short is its 3-minute form (make test).
SOAK ?= 30m
soak: build
	$(GO) run ./bench/soak -berth $(BIN) -duration $(SOAK)

soak-short: build
	$(GO) run ./bench/soak -berth $(BIN) -duration 3m -out $${SOAK_OUT:-$$(mktemp -d)} -doc ''

## garbage collection, retention, purge and the operator CLI (.ci/gc-e2e.sh)
gc-e2e: build tools
	@bash .ci/gc-e2e.sh

# The status page at / in headless Chromium (installed with apt-get as root,
# else skipped); the screenshot is kept (its path is printed).
status-e2e: build tools
	@bash .ci/status-e2e.sh

# An upstream over TLS with a private CA and htpasswd (distribution's
# registry), pulled through berth with ca_file and a credential helper;
# without ca_file: 502 naming the upstream and a warn line with the cause; a
# refused token realm (0 connections) and an upstream 429 (one request).
upstream-auth-e2e: build tools
	@bash .ci/upstream-auth-e2e.sh

## bench: berth against distribution's registry (plain and as a proxy) and
## nginx, on loopback; prints the table, writes bench/results/latest.* and
## the latest run into docs/benchmarks.md. ~10 minutes on 2 cores.
bench: build
	$(GO) run ./bench -berth $(BIN)

## bench-cluster: three replicas on SeaweedFS and a single node (bench/cluster.go):
## the herd across replicas, warm reads, first read from the bucket, RSS.
bench-cluster: build
	$(GO) run ./bench -only cluster -berth $(BIN)

bench-smoke: build
	$(GO) test -run '^$$' -bench . -benchtime 1x ./proxy/
	$(GO) run ./bench -smoke -berth $(BIN)

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed (make tools)"; fi

clean:
	rm -rf bin
