#!/usr/bin/env bash
# `make bench`: every BENCHMARKS.md figure (P1–P8, P11) from one run, with its baseline measured in the
# same run, then the table of medians (target/bench/report.md).
#
# BENCH_MODE=smoke (what .ci/run uses) runs every step for a moment, on debug builds, so the harness
# cannot rot; its figures mean nothing. Needs PostgreSQL on 127.0.0.1:5432 (BENCH_PG); starts its own
# KMS API server, origin, workers (in workerd, through the miniflare API) and control plane, and stops them
# at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${BENCH_MODE:-full}"
pg="${BENCH_PG:-postgres://postgres@127.0.0.1:5432/test}"
out="${CARGO_TARGET_DIR:-target}/bench"
if [ "$mode" = smoke ]; then
  runs=1 seconds=1 warmup=0.5 keys=40 rewrap_keys=200 revocations=3 profile=debug build=()
else
  runs="${BENCH_RUNS:-3}" seconds="${BENCH_SECONDS:-10}" warmup=2 keys=2000 rewrap_keys=10000 revocations=100
  profile=release build=(--release)
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"
rm -rf "$out" && mkdir -p "$out"
results="$out/results.jsonl"
: > "$results"
# record ID VARIANT RUN JSON: one measurement, tagged for the report.
record() { printf '{"id":"%s","variant":"%s","run":%s,"result":%s}\n' "$1" "$2" "$3" "$4" | tee -a "$results"; }
# free_port: a port below the kernel's ephemeral range (32768-60999), which every bind(0) and outgoing
# connection draws from, so none takes it between this check and its process binding it.
free_port() { python3 -c 'import os, socket
start = os.getpid() * 7 % 12000
for i in range(12000):
    port = 20000 + (start + i) % 12000
    try:
        socket.socket().bind(("127.0.0.1", port))
        print(port)
        break
    except OSError:
        pass'; }
wait_for() { for _ in $(seq 1 600); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; echo "$1 did not come up" >&2; exit 1; }

pids=()
stop_all() { for pid in "${pids[@]}"; do kill -s KILL -- "-$pid" 2>/dev/null || kill -s KILL "$pid" 2>/dev/null || true; done; }
trap stop_all EXIT
# start NAME CMD...: a background service in its own process group (job control on), so stopping it
# stops its children too (miniflare runs workerd as a child).
set -m
start() { local name=$1; shift; "$@" > "$out/$name.log" 2>&1 & pids+=($!); }

echo "== building ($profile)" >&2
cargo build --quiet "${build[@]}" -p keygate-control-plane -p keygate-bench
cargo build --quiet "${build[@]}" -p keygate-control-plane --example issuance
eval "$(scripts/tools.sh)"
scripts/build-worker.sh > /dev/null

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m)" >&2
record machine host 1 "{\"cores\":$(nproc),\"mode\":\"$mode\"}" > /dev/null

echo "== P2, P3: criterion (native key check, SHA-256 baseline, garbage key)" >&2
if [ "$mode" = smoke ]; then
  cargo test --quiet -p keygate-shared --bench key_check > /dev/null
else
  cargo bench --quiet -p keygate-shared --bench key_check -- --noplot 2>&1 | grep -E '^[a-z_]+ +time:' >&2 || true
fi
record P3 reads 1 "$("$bin/keygate-bench" garbage --keys $((keys * 50)))"

echo "== P4, P6: issuance and rewrap" >&2
kms_port=$(free_port)
start moto "$(scripts/kms-server.sh)" -H 127.0.0.1 -p "$kms_port"
wait_for "http://127.0.0.1:$kms_port/"
kms=(--kms aws --kms-endpoint "http://127.0.0.1:$kms_port")
for run in $(seq 1 "$runs"); do
  issue() { "$bin/examples/issuance" --keys "$keys" "$@"; }
  record P4 sqlite-local "$run" "$(issue --kms local --database-url "sqlite://$out/issuance.db")"
  record P4 sqlite-aws "$run" "$(issue "${kms[@]}" --database-url "sqlite://$out/issuance.db")"
  record P4 sqlite-aws-cached "$run" "$(issue "${kms[@]}" --database-url "sqlite://$out/issuance.db" --cache-uses 100)"
  record P4 postgres-local "$run" "$(issue --kms local --database-url "$pg")"
  record P4 postgres-aws "$run" "$(issue "${kms[@]}" --database-url "$pg")"
  record P4 postgres-aws-cached "$run" "$(issue "${kms[@]}" --database-url "$pg" --cache-uses 100)"
  # The KMS API server alone: bare GenerateDataKey calls, 32 in flight.
  record P4 kms-server "$run" "$(issue "${kms[@]}" --kms-only)"
done
record P6 postgres-aws 1 "$("$bin/examples/issuance" "${kms[@]}" --database-url "$pg" --keys "$rewrap_keys" --rewrap)"
record P6 postgres-aws-cached 1 \
  "$("$bin/examples/issuance" "${kms[@]}" --database-url "$pg" --keys "$rewrap_keys" --rewrap --cache-uses 100)"

echo "== P7: worker bundle" >&2
raw=0 gz=0
for file in edge-worker/build/index.js edge-worker/build/index_bg.wasm; do
  raw=$((raw + $(stat -c %s "$file"))) gz=$((gz + $(gzip -9 -c "$file" | wc -c)))
done
record P7 bundle 1 "{\"raw_bytes\":$raw,\"gzip_bytes\":$gz,\"wasm_bytes\":$(stat -c %s edge-worker/build/index_bg.wasm)}"

echo "== P1: the keygate worker against a pass-through worker, in workerd" >&2
# bench/workerd/edge.mjs serves each worker straight from workerd (the miniflare API, not wrangler dev's
# proxy) in front of an origin that answers at once, alternating them, and appends each run to the results.
# keygate is the worker as deployed (ES256 origin JWT, reused per key for 10 s); keygate-no-jwt forwards
# without a token, so the JWT's own cost shows; io-floor does keygate's I/O in JS and checks nothing, so
# what the runtime charges for that shape (read the body, rebuild the headers, wrap the answer) shows.
BENCH_MODE="$mode" EDGE_BENCH_WORKERS=passthrough,io-floor,keygate,keygate-no-jwt EDGE_BENCH_ROUNDS="$runs" \
  EDGE_BENCH_SECS="$seconds" EDGE_BENCH_WARMUP="$warmup" EDGE_BENCH_RESULTS="$results" \
  KEYGATE_BENCH_BIN="$(cd "$bin" && pwd)/keygate-bench" node bench/workerd/edge.mjs > "$out/edge.md"

echo "== P5, P8: origin, edge, control plane" >&2
origin_port=$(free_port) edge_port=$(free_port) control_port=$(free_port)
sync_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
origin_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
start origin "$bin/keygate-bench" origin --listen "127.0.0.1:$origin_port"
# The edge the control plane replicates to, in workerd. The propagation probe sees a 401 per revocation,
# all from one address: no failed-attempt limit here.
start edge node bench/workerd/serve.mjs --port "$edge_port" --var "ORIGIN_URL=http://127.0.0.1:$origin_port" \
  --var "SYNC_SECRET=$sync_secret" --var "ORIGIN_SECRET=$origin_secret" --var FAILED_ATTEMPTS_PER_MINUTE=0
wait_for "http://127.0.0.1:$edge_port/"
export KEYGATE_DATABASE_URL="sqlite://$out/control/keygate.db" KEYGATE_KMS_MASTER_KEY_FILE="$out/control/master.key"
mkdir -p "$out/control"
(umask 077 && "$bin/keygate" admin bootstrap > "$out/control/admin.key")
start control "$bin/keygate" serve --listen "127.0.0.1:$control_port" \
  --edge-url "http://127.0.0.1:$edge_port" --sync-secret "$sync_secret"
control="http://127.0.0.1:$control_port"
wait_for "$control/readyz"
api_key=$(curl -sf -X POST "$control/admin/api-keys" -H "Authorization: Bearer $(cat "$out/control/admin.key")" \
  -H 'content-type: application/json' -d '{"name":"bench","permissions":["query:read"]}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')

load() { "$bin/keygate-bench" load --seconds "$seconds" --warmup "$warmup" "$@"; }
record P5 edge 1 "$("$bin/keygate-bench" propagation --admin-url "$control" --admin-key-file "$out/control/admin.key" \
  --edge-url "http://127.0.0.1:$edge_port/graphql" --count "$revocations")"
for run in $(seq 1 "$runs"); do
  record P8 verify "$run" "$(load --url "$control/v1/keys/verify" --method POST --header 'content-type: application/json' \
    --body "{\"api_key\":\"$api_key\"}" --connections 16 --label verify)"
done

echo "== P11: usage ingest on PostgreSQL, beside key checks" >&2
# A second control plane, on PostgreSQL (a fresh schema, dropped at the end), taking the flushes of a
# modelled edge at 10,000 req/s (1,000 active keys, 20 isolates, a flush every 10 s); P8's verify load
# on the same control plane alone, then with the ingest running at that rate.
usage_schema="kg_bench_usage_$$"
psql -q "$pg" -c "CREATE SCHEMA $usage_schema"
drop_usage_schema() { PGOPTIONS=--client-min-messages=warning psql -q "$pg" -c "DROP SCHEMA IF EXISTS $usage_schema CASCADE" || true; }
usage_port=$(free_port)
mkdir -p "$out/usage"
usage_env=(env "KEYGATE_DATABASE_URL=$pg?options[search_path]=$usage_schema" "KEYGATE_KMS_MASTER_KEY_FILE=$out/usage/master.key")
(umask 077 && "${usage_env[@]}" "$bin/keygate" admin bootstrap > "$out/usage/admin.key")
start usage-control "${usage_env[@]}" "$bin/keygate" serve --listen "127.0.0.1:$usage_port" --sync-secret "$sync_secret"
usage_control="http://127.0.0.1:$usage_port"
wait_for "$usage_control/readyz"
usage_verify_key=$(curl -sf -X POST "$usage_control/admin/api-keys" -H "Authorization: Bearer $(cat "$out/usage/admin.key")" \
  -H 'content-type: application/json' -d '{"name":"bench","permissions":["query:read"]}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')
if [ "$mode" = smoke ]; then usage_keys=50; else usage_keys=1000; fi
ingest() {
  KEYGATE_SYNC_SECRET="$sync_secret" "$bin/keygate-bench" usage --control-url "$usage_control" \
    --admin-key-file "$out/usage/admin.key" --key-ids-file "$out/usage/key-ids" --keys "$usage_keys" "$@"
}
verify_pg() {
  load --url "$usage_control/v1/keys/verify" --method POST --header 'content-type: application/json' \
    --body "{\"api_key\":\"$usage_verify_key\"}" --connections 16 "$@"
}
for run in $(seq 1 "$runs"); do
  record P11 verify-alone "$run" "$(verify_pg --label verify-alone)"
  record P11 capacity "$run" "$(ingest --mode capacity --connections 2 --seconds "$seconds")"
  ingest --mode paced --seconds "$(python3 -c "print($seconds + $warmup)")" > "$out/usage/paced-$run.json" &
  paced=$!
  record P11 verify-with-ingest "$run" "$(verify_pg --label verify-with-ingest)"
  wait "$paced"
  record P11 paced "$run" "$(cat "$out/usage/paced-$run.json")"
done
drop_usage_schema

"$bin/keygate-bench" report --results "$results" --criterion "${CARGO_TARGET_DIR:-target}/criterion" > "$out/report.md"
cat "$out/report.md"
echo
sed '/^```json/,$d' "$out/edge.md"
