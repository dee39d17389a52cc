# Turnout: `make demo` and `make test` work on a fresh Debian 12 machine (as root, or with sudo).
SHELL      := /bin/bash
SWIFT      ?= swift
PYTHON     ?= python3
SUDO       := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
# Debian packages the build needs, and those the tests need on top (prometheus: for promtool;
# etcd-server: real etcd members for the cluster-mode tests).
BUILD_PACKAGES := pkg-config libnghttp2-dev libssl-dev libjemalloc-dev
TEST_PACKAGES  := curl iproute2 openssl python3 python3-pip python3-h2 nghttp2-client wrk prometheus etcd-server etcd-client chromium chromium-driver man-db
RELEASE_BIN := .build/release/turnout

.PHONY: all deps test-deps apt-install build build-debug demo install man completions test unit-test integration-test check-config bench bench-deps bench-switch bench-mirror bench-logs bench-h2up-counts bench-rollback bench-cluster bench-discovery bench-idle bench-micro fuzz fuzz-build fuzz-smoke clean

all: build

deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(BUILD_PACKAGES)"
	@command -v $(SWIFT) >/dev/null || { echo "swift 6.1 or newer is required (https://www.swift.org/install/linux/)"; exit 1; }

test-deps: deps
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(TEST_PACKAGES)"
	@$(PYTHON) -c 'import pytest' 2>/dev/null || $(PYTHON) -m pip install -q pytest 2>/dev/null \
	  || { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-pytest; }
	@$(PYTHON) -c 'import h2' 2>/dev/null || $(PYTHON) -m pip install -q h2 2>/dev/null \
	  || { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-h2; }
	@$(PYTHON) -c 'import h11' 2>/dev/null || $(PYTHON) -m pip install -q h11 2>/dev/null \
	  || { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-h11; }
	@$(PYTHON) -c 'import yaml' 2>/dev/null || $(PYTHON) -m pip install -q pyyaml 2>/dev/null \
	  || { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-yaml; }
	@$(PYTHON) -c 'import selenium' 2>/dev/null || $(PYTHON) -m pip install -q selenium 2>/dev/null \
	  || { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-selenium; }
	@$(PYTHON) -c 'import dnslib' 2>/dev/null || $(PYTHON) -m pip install -q dnslib 2>/dev/null \
	  || $(PYTHON) -m pip install -q --break-system-packages dnslib
	@$(PYTHON) -c 'import grpc, grpc_health.v1' 2>/dev/null || $(PYTHON) -m pip install -q grpcio grpcio-health-checking 2>/dev/null \
	  || $(PYTHON) -m pip install -q --break-system-packages grpcio grpcio-health-checking

# Installs the Debian packages in PACKAGES that are missing.
apt-install:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: deps
	$(SWIFT) build -c release --product turnout

build-debug: deps
	$(SWIFT) build

demo: build
	$(RELEASE_BIN) demo

# The manual page, generated from the argument parser: its generate-manual tool (the one behind
# its GenerateManual plugin, built here directly so that the release build is not planned anew)
# reads `turnout --experimental-dump-help`. Blank lines in a discussion become paragraphs.
MANPAGE := .build/man/turnout.1
man: build
	$(SWIFT) build -c release --product generate-manual
	mkdir -p .build/man
	.build/release/generate-manual $(RELEASE_BIN) --authors "The Turnout developers" --output-directory .build/man
	sed -i 's/^$$/.Pp/' $(MANPAGE)

# Shell completions, generated from the argument parser as well.
COMPLETIONS := .build/completions
completions: build
	mkdir -p $(COMPLETIONS)
	for sh in bash zsh fish; do $(RELEASE_BIN) --generate-completion-script $$sh > $(COMPLETIONS)/turnout.$$sh; done

# Installs the binary, its manual page and shell completions, the systemd unit and (unless one
# is there) the example config: PREFIX (default /usr/local) and DESTDIR as usual. See
# docs/operations.md.
PREFIX        ?= /usr/local
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
install: build man completions
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(PREFIX)/bin/turnout
	install -D -m 0644 $(MANPAGE) $(DESTDIR)$(PREFIX)/share/man/man1/turnout.1
	install -D -m 0644 $(COMPLETIONS)/turnout.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/turnout
	install -D -m 0644 $(COMPLETIONS)/turnout.zsh $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_turnout
	install -D -m 0644 $(COMPLETIONS)/turnout.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/turnout.fish
	install -d $(DESTDIR)$(SYSTEMDUNITDIR)
	sed 's|/usr/local/bin/turnout|$(PREFIX)/bin/turnout|' config/turnout.service > $(DESTDIR)$(SYSTEMDUNITDIR)/turnout.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/turnout.service
	@if [ -e $(DESTDIR)/etc/turnout/turnout.yaml ]; then echo "kept the existing $(DESTDIR)/etc/turnout/turnout.yaml"; \
	else install -D -m 0644 config/turnout-systemd.yaml $(DESTDIR)/etc/turnout/turnout.yaml; fi

test: unit-test integration-test fuzz-smoke

unit-test: deps
	$(SWIFT) test

integration-test: build test-deps
	TURNOUT_BIN=$(CURDIR)/$(RELEASE_BIN) $(PYTHON) -m pytest -q -p no:cacheprovider Tests/integration
	@echo "The data-path tests again, with io: dispatch (a Dispatch source per socket):"
	TURNOUT_TEST_IO=dispatch TURNOUT_BIN=$(CURDIR)/$(RELEASE_BIN) $(PYTHON) -m pytest -q -p no:cacheprovider \
	  Tests/integration/test_data_path.py Tests/integration/test_smuggling.py Tests/integration/test_http2.py \
	  Tests/integration/test_tls.py Tests/integration/test_tunnels.py Tests/integration/test_h2_upstream.py

check-config: build
	$(RELEASE_BIN) check-config config/turnout.yaml

clean:
	rm -rf .build Fuzz/.build Benchmarks/.build

# libFuzzer targets (Fuzz/): each runs FUZZ_SECONDS (default 60) from the seed corpus in
# Fuzz/Corpus/TARGET; findings land in Fuzz/findings/. See docs/operations.md, "Hardening".
FUZZ_TARGETS := FuzzRequestHead FuzzResponseHead FuzzChunked FuzzConfig FuzzAdminJSON
FUZZ_SECONDS ?= 60

fuzz-build: deps
	cd Fuzz && $(SWIFT) build -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library

# A short run of every fuzz target, part of `make test`.
fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

fuzz: fuzz-build
	@mkdir -p Fuzz/findings
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p Fuzz/.corpus/$$t; \
	  echo "== $$t: $(FUZZ_SECONDS)s"; \
	  Fuzz/.build/debug/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=Fuzz/findings/$$t- -print_final_stats=1 Fuzz/.corpus/$$t Fuzz/Corpus/$$t 2>&1 \
	    | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY|.*(crash|leak|timeout)-)" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

# Turnout against HAProxy, nginx and nghttpx (one worker each), then idle-connection memory:
# see docs/benchmarks.md.
BENCH_PACKAGES := nginx haproxy nghttp2-proxy nghttp2-client wrk openssl

bench-deps: deps
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(BENCH_PACKAGES)"

bench: build bench-deps
	$(PYTHON) Benchmarks/compare.py --scaling
	$(PYTHON) Benchmarks/idle_connections.py --connections 10000
	$(SWIFT) package --package-path Benchmarks benchmark --no-progress

# Micro-benchmarks (ordo-one/benchmark, nested package in Benchmarks/): time and allocations per
# request head parse, routing decision and head serialisation.
bench-micro: deps
	$(SWIFT) package --package-path Benchmarks benchmark --no-progress

bench-idle: build
	$(PYTHON) Benchmarks/idle_connections.py --connections 10000

# Switch latency under proxy load (median, p90, p99): see docs/benchmarks.md.
bench-switch: build test-deps
	$(PYTHON) Benchmarks/switch_latency.py --switches 500

# Endpoint churn by DNS under load: failed requests, throughput, and how long a DNS change takes
# to reach routing (see docs/health-and-endpoints.md).
bench-discovery: build test-deps bench-deps
	$(PYTHON) Benchmarks/discovery_churn.py

# Cluster mode: convergence from the etcd commit of a switch to every replica routing by it, and
# etcd's load, with 3, 10 and 30 replicas on a three-member etcd: see docs/cluster.md.
bench-cluster: build test-deps
	$(PYTHON) Benchmarks/cluster_convergence.py --replicas 3 --switches 100
	$(PYTHON) Benchmarks/cluster_convergence.py --replicas 10 --switches 100
	$(PYTHON) Benchmarks/cluster_convergence.py --replicas 30 --switches 100

# What mirroring costs the live path with a slow and a dead mirror pool, against mirroring off in
# the same run: see docs/routing-and-ramps.md, "Mirroring".
bench-mirror: build bench-deps
	$(PYTHON) Benchmarks/mirror_overhead.py

# The JSON access log against the text one, in the same run.
bench-logs: build bench-deps
	$(PYTHON) Benchmarks/log_overhead.py

# Work per request on the h2up load, counted (mallocs, retains, releases, syscalls) instead of
# timed, for Turnout and nghttpx: see docs/benchmarks.md.
bench-h2up-counts: build bench-deps
	@$(MAKE) --no-print-directory apt-install PACKAGES="linux-perf"
	$(PYTHON) Benchmarks/h2up_counts.py

# Time from a ramp gate breach becoming measurable to the rollback being in force.
bench-rollback: build test-deps
	$(PYTHON) Benchmarks/ramp_rollback_latency.py --runs 10
