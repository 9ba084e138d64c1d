# keygate's developer commands. `make dev` runs keygate; `make test` installs what is missing and runs every test.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
WASM_TARGET := wasm32-unknown-unknown

.PHONY: help dev test setup lint bench bench-control-plane vectors fuzz

help:
	@echo "make dev      run keygate on embedded defaults"
	@echo "make test     install what is missing, then run every test"
	@echo "make lint     rustfmt and clippy, native and wasm"
	@echo "make bench    criterion micro-benchmarks of the key check"
	@echo "make bench-control-plane  issuance rate and rewrap time (SQLite/PostgreSQL, local/aws KMS)"
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

bench:
	$(CARGO) bench -p keygate-shared

# Issuance rate (2,000 keys, 32 in flight) per database and KMS, then a rewrap of 10,000 keys on
# PostgreSQL with the aws provider. Needs PostgreSQL on 127.0.0.1:5432; starts its own KMS API server.
BENCH_PG ?= postgres://postgres@127.0.0.1:5432/test
bench-control-plane:
	$(CARGO) build --release -p keygate-control-plane --example issuance
	@mkdir -p target/bench
	@moto="$$(scripts/kms-server.sh)"; port=$$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'); \
	  "$$moto" -H 127.0.0.1 -p $$port > target/bench/moto.log 2>&1 & moto_pid=$$!; trap "kill $$moto_pid" EXIT; sleep 2; \
	  run() { target/release/examples/issuance "$$@"; }; \
	  run --kms local --keys 2000; \
	  run --kms local --database-url $(BENCH_PG) --keys 2000; \
	  run --kms aws --kms-endpoint http://127.0.0.1:$$port --keys 2000; \
	  run --kms aws --kms-endpoint http://127.0.0.1:$$port --database-url $(BENCH_PG) --keys 2000; \
	  run --kms aws --kms-endpoint http://127.0.0.1:$$port --database-url $(BENCH_PG) --keys 2000 --cache-uses 100; \
	  run --kms aws --kms-endpoint http://127.0.0.1:$$port --database-url $(BENCH_PG) --keys 10000 --rewrap; \
	  run --kms aws --kms-endpoint http://127.0.0.1:$$port --database-url $(BENCH_PG) --keys 10000 --rewrap --cache-uses 100

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
