#!/usr/bin/env bash
# `make bench-edge`: what the edge costs per request in workerd (P1) and what signing the origin's JWT
# costs there and natively (P9): bench/workerd/edge.mjs serves the built worker, a pass-through worker and
# two WebCrypto reference workers through the miniflare API, each beside its baseline in the same run;
# criterion runs `shared/benches/origin_token.rs`.
# Writes the table and the JSON summary to target/bench/edge.md (JSON alone: edge.json) and prints it; then
# the same workers inside one workerd (bench/workerd/inproc.mjs: target/bench/inproc.md, INPROC_* settings).
#
# EDGE_BENCH_ROUNDS (3), EDGE_BENCH_SECS (10), EDGE_BENCH_WARMUP (2), EDGE_BENCH_CONNECTIONS (8),
# EDGE_BENCH_WORKERS (a comma-separated subset), EDGE_BENCH_NATIVE=0 (skip criterion), EDGE_BENCH_PROFILE
# (a folder for V8 CPU profiles of the keygate workers; their figures are then not speeds).
# BENCH_MODE=smoke runs every worker for a moment, judges nothing and skips criterion, so the harness
# cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${BENCH_MODE:-full}"
out="${CARGO_TARGET_DIR:-target}/bench"
if [ "$mode" = smoke ]; then
  profile=debug build=() native=0
else
  profile=release build=(--release) native="${EDGE_BENCH_NATIVE:-1}"
fi
mkdir -p "$out"

echo "== building ($profile)" >&2
cargo build --quiet "${build[@]}" -p keygate-bench
eval "$(scripts/tools.sh)"
scripts/build-worker.sh > /dev/null

target=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)

criterion=()
if [ "$native" = 1 ]; then
  echo "== native: cargo bench -p keygate-shared --bench origin_token" >&2
  cargo bench --quiet -p keygate-shared --bench origin_token -- --noplot 2>&1 | grep -E '^[a-z_0-9]+ +time:' >&2 || true
  criterion=(EDGE_BENCH_CRITERION="$target/criterion")
fi

echo "== in workerd" >&2
status=0
env "${criterion[@]}" BENCH_MODE="$mode" KEYGATE_BENCH_BIN="$target/$profile/keygate-bench" \
  EDGE_BENCH_JSON="$out/edge.json" node bench/workerd/edge.mjs > "$out/edge.md" || status=$?
cat "$out/edge.md"

# P1 inside one workerd, the workers taking turns block by block (bench/workerd/inproc.mjs): the figure that
# judges a before and after (EDGE_BENCH_COMPARE) on a host whose speed moves between seconds.
echo "== in one workerd" >&2
env BENCH_MODE="$mode" KEYGATE_BENCH_BIN="$target/$profile/keygate-bench" INPROC_JSON="$out/inproc.json" \
  node bench/workerd/inproc.mjs > "$out/inproc.md" || status=$?
cat "$out/inproc.md"
exit "$status"
