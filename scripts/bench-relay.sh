#!/usr/bin/env bash
# `make bench-relay`: what relaying a GraphQL WebSocket through the edge costs (BENCHMARKS.md, P10).
# bench/workerd/relay.mjs measures messages a second through the keygate worker and through a pass-through
# relay worker (bench/workerd/relay_passthrough.js), both served straight from workerd through the miniflare
# API, against the same socket opened straight to the origin (tests/graphql-node/origin.mjs), in one run.
# Writes the report and the JSON summary to target/bench/relay.md (JSON alone: relay.json) and prints it.
#
# RELAY_BENCH_ROUNDS (3), RELAY_BENCH_SECS (10), RELAY_BENCH_WARMUP (1), RELAY_BENCH_SOCKETS (8),
# RELAY_BENCH_CASES (a comma-separated subset of stream-1,stream-N,ping-1,ping-N,subscribe-1; opt-in:
# subscribe-N), RELAY_BENCH_TARGETS (a subset of direct,passthrough-relay,keygate; opt-in: proxy),
# KEYGATE_BENCH_BIN (a keygate-bench binary to use instead of building one). BENCH_MODE=smoke runs every case
# for a moment on a debug build and judges nothing, so the harness cannot rot. About 10 minutes in full.
#
# The worker is measured as it is in edge-worker/build; it is built only when missing (scripts/build-worker.sh
# rebuilds it). The report names the wasm it measured (size and sha256).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${BENCH_MODE:-full}"
out="${CARGO_TARGET_DIR:-target}/bench"
if [ "$mode" = smoke ]; then
  profile=debug build=()
else
  profile=release build=(--release)
fi
mkdir -p "$out"
target=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)

if [ -z "${KEYGATE_BENCH_BIN:-}" ]; then
  echo "== building keygate-bench ($profile)" >&2
  cargo build --quiet "${build[@]}" -p keygate-bench
  KEYGATE_BENCH_BIN="$target/$profile/keygate-bench"
fi
eval "$(scripts/tools.sh)"
eval "$(scripts/graphql-node.sh)"
if [ ! -f edge-worker/build/index.js ] || [ ! -f edge-worker/build/index_bg.wasm ]; then
  echo "== building the worker" >&2
  scripts/build-worker.sh > /dev/null
elif [ -n "$(find edge-worker/src edge-worker/Cargo.toml shared/src -newer edge-worker/build/index_bg.wasm -print -quit)" ]; then
  echo "== note: edge-worker/build is older than the worker's sources; measuring it as built" >&2
fi

echo "== in workerd" >&2
status=0
BENCH_MODE="$mode" KEYGATE_BENCH_BIN="$KEYGATE_BENCH_BIN" KEYGATE_GRAPHQL_NODE="$KEYGATE_GRAPHQL_NODE" \
  RELAY_BENCH_JSON="$out/relay.json" node bench/workerd/relay.mjs > "$out/relay.md" || status=$?
cat "$out/relay.md"
exit "$status"
