# keygate's developer commands. `make dev` runs keygate; `make test` installs what is missing and runs every test.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
WASM_TARGET := wasm32-unknown-unknown

.PHONY: help dev test setup lint bench bench-edge bench-relay vectors fuzz

help:
	@echo "make dev      run keygate on embedded defaults"
	@echo "make test     install what is missing, then run every test"
	@echo "make lint     rustfmt and clippy, native and wasm"
	@echo "make bench    every BENCHMARKS.md figure, with its baselines (BENCH_MODE=smoke: a quick check)"
	@echo "make bench-edge     the edge against a pass-through worker in workerd (P1), and the JWT signer (P9)"
	@echo "make bench-relay    GraphQL WebSocket relay: msgs/s through keygate vs a pass-through relay vs direct"
	@echo "make vectors  rewrite shared/testdata after a deliberate key-format change"
	@echo "make fuzz     a short run of every fuzz target (installs cargo-fuzz if missing)"

## Toolchain pieces a fresh machine lacks: the wasm target (the worker and shared's no_std build).
setup:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

dev:
	scripts/dev.sh

test: setup
	# The worker's toolchain (wasm-bindgen, worker-build, wrangler, binaryen, esbuild) and the KMS API
	# server (moto): installed once into the per-user cache, here rather than inside a test.
	scripts/tools.sh > /dev/null
	# The FraiseQL origin of the end-to-end tests: fraiseql-server, fraiseql-cli and PostgreSQL 18, also once.
	scripts/fraiseql.sh > /dev/null
	# The graphql-yoga origin and the graphql-ws clients of the subscription and persisted-query tests.
	scripts/graphql-node.sh > /dev/null
	KEYGATE_KMS_SERVER="$$(scripts/kms-server.sh)" $(CARGO) test --workspace
	# shared must stay no_std: build it (and the worker crate on top of it) for the wasm target.
	$(CARGO) build -p keygate-shared --target $(WASM_TARGET) --no-default-features
	$(CARGO) build -p keygate-edge --target $(WASM_TARGET)
	# The deploy bundle wrangler would upload (offline): a broken bundle fails here, not at deploy time.
	eval "$$(scripts/tools.sh)" && "$$WRANGLER" deploy --dry-run --outdir target/deploy-check > target/deploy-check.log 2>&1 \
	  || { cat target/deploy-check.log; exit 1; }
	@ls -l edge-worker/build/index_bg.wasm | awk '{print "worker wasm: " $$5 " bytes"}'

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p keygate-shared --target $(WASM_TARGET) --no-default-features -- -D warnings
	$(CARGO) clippy -p keygate-edge --target $(WASM_TARGET) -- -D warnings

# P1–P8 and P11 (BENCHMARKS.md): criterion, issuance and rewrap on SQLite/PostgreSQL with both KMS providers,
# the worker bundle, the keygate worker against a pass-through worker in workerd, revocation propagation
# and the verify API, the usage ingest beside it, then the table of medians in target/bench/report.md. Needs PostgreSQL on
# 127.0.0.1:5432 (BENCH_PG); starts everything else itself. BENCH_MODE=smoke runs each step briefly.
bench: setup
	scripts/bench.sh

# P1 and P9: what the edge costs per request in workerd (miniflare API, no wrangler proxy), the keygate worker
# with and without the origin JWT beside a pass-through worker, and the JWT signer beside WebCrypto from plain
# JS, natively too (criterion); target/bench/edge.md. EDGE_BENCH_PROFILE=<dir> adds V8 CPU profiles.
bench-edge: setup
	scripts/bench-edge.sh

# P10: GraphQL WebSockets through the edge's relay in workerd (miniflare API): messages a second through the
# keygate worker and a pass-through relay worker against the same socket straight to the origin (graphql-yoga
# + graphql-ws); target/bench/relay.md. Measures edge-worker/build as it is (built only when missing).
bench-relay: setup
	scripts/bench-relay.sh

vectors:
	KEYGATE_BLESS=1 $(CARGO) test -p keygate-shared --test it vectors

# Downloaded tools live in a per-user cache outside the clone, named by version, so fresh clones reuse them.
TOOLS_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/keygate/tools
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(TOOLS_DIR)/cargo-fuzz-$(CARGO_FUZZ_VERSION)/bin/cargo-fuzz
FUZZ_SECONDS ?= 20

$(CARGO_FUZZ):
	$(CARGO) install cargo-fuzz --version =$(CARGO_FUZZ_VERSION) --locked --root $(TOOLS_DIR)/cargo-fuzz-$(CARGO_FUZZ_VERSION)

# cargo-fuzz wants nightly for its sanitizer flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
fuzz: $(CARGO_FUZZ)
	cd fuzz && for target in $$($(CARGO_FUZZ) list); do \
	  RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run $$target -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 || exit 1; done
