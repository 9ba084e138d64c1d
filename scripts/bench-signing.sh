#!/usr/bin/env bash
# `make bench-signing`: what signing the origin's JWT costs per request, natively (criterion,
# `shared/benches/origin_token.rs`) and in workerd (bench/workerd/signing.mjs: the built worker's signer,
# WebCrypto through web-sys, against WebCrypto from plain JS, each beside its baseline, served through the
# miniflare API).
# Writes the table and the JSON summary to target/bench/signing.md (JSON alone: signing.json) and prints it.
#
# SIGNING_BENCH_ROUNDS (3), SIGNING_BENCH_SECS (10), SIGNING_BENCH_WARMUP (2), SIGNING_BENCH_CONNECTIONS (8),
# SIGNING_BENCH_WORKERS (a comma-separated subset), SIGNING_BENCH_NATIVE=0 (skip criterion).
# BENCH_MODE=smoke runs every worker for a moment on a debug build, judges nothing and skips criterion,
# so the harness cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${BENCH_MODE:-full}"
out="${CARGO_TARGET_DIR:-target}/bench"
if [ "$mode" = smoke ]; then
  profile=debug build=() native=0
else
  profile=release build=(--release) native="${SIGNING_BENCH_NATIVE:-1}"
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
  criterion=(SIGNING_BENCH_CRITERION="$target/criterion")
fi

echo "== in workerd" >&2
status=0
env "${criterion[@]}" BENCH_MODE="$mode" KEYGATE_BENCH_BIN="$target/$profile/keygate-bench" \
  SIGNING_BENCH_JSON="$out/signing.json" node bench/workerd/signing.mjs > "$out/signing.md" || status=$?
cat "$out/signing.md"
exit "$status"
