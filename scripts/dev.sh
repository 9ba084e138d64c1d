#!/usr/bin/env bash
# `make dev`: keygate on embedded defaults: the control plane (SQLite and the local KMS under data/),
# the edge worker in local workerd with local KV, and a demo GraphQL origin, with an admin key in
# data/dev-admin.key, a demo key, and a request through the edge that returns data. Ctrl-C stops all.
# KEYGATE_ORIGIN_URL sends admitted requests to another origin instead of the demo one.
set -euo pipefail
cd "$(dirname "$0")/.."

control="${KEYGATE_LISTEN:-127.0.0.1:8080}"
edge_port="${KEYGATE_EDGE_PORT:-8787}"
origin_port="${KEYGATE_DEMO_ORIGIN_PORT:-9000}"
edge="http://127.0.0.1:$edge_port"
origin="${KEYGATE_ORIGIN_URL:-http://127.0.0.1:$origin_port}"

echo "building keygate and the edge worker (the first time installs the toolchain: several minutes)..." >&2
cargo build --quiet -p keygate-control-plane
eval "$(scripts/tools.sh)"
scripts/build-worker.sh
keygate="${CARGO_TARGET_DIR:-target}/debug/keygate"
mkdir -p data

# Secrets and the admin key belong to the data folder: made once, kept 0600, reused.
secret() { [ -s "data/$1" ] || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' > "data/$1"); cat "data/$1"; }
sync_secret=$(secret dev-sync.secret)
origin_secret=$(secret dev-origin.secret)
if [ ! -s data/dev-admin.key ] || ! "$keygate" key inspect - < data/dev-admin.key > /dev/null; then
  (umask 077 && "$keygate" admin bootstrap > data/dev-admin.key)
fi
admin=$(cat data/dev-admin.key)

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
if [ -z "${KEYGATE_ORIGIN_URL:-}" ]; then
  KEYGATE_ORIGIN_SECRET="$origin_secret" python3 scripts/demo_origin.py "$origin_port" &
  pids+=($!)
fi
# The worker as built above; wrangler's own build step is skipped (its config is copied without it).
sed -e 's|^command = .*||' -e 's|^\[build\]||' wrangler.toml > data/wrangler.dev.toml
sed -i "s|^main = .*|main = \"$PWD/edge-worker/build/index.js\"|" data/wrangler.dev.toml
(cd data && exec "$WRANGLER" dev --config wrangler.dev.toml --ip 127.0.0.1 --port "$edge_port" \
  --persist-to wrangler-state --var "ORIGIN_URL:$origin" --var "SYNC_SECRET:$sync_secret" \
  --var "ORIGIN_SECRET:$origin_secret" --var "CONTROL_PLANE_URL:http://$control" > wrangler.log 2>&1) &
pids+=($!)
wait_for() { for _ in $(seq 1 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; echo "$1 did not come up" >&2; exit 1; }
wait_for "$edge/"
# The control plane after the edge, so its first pushes find it.
"$keygate" serve --listen "$control" --edge-url "$edge" --sync-secret "$sync_secret" &
pids+=($!)
wait_for "http://$control/readyz"

created=$(curl -sf -X POST "http://$control/admin/api-keys" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d '{"name":"demo","permissions":["query:read","batch:10"]}')
demo=$(printf '%s' "$created" | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')
request="curl -s -X POST $edge/graphql -H 'Content-Type: application/json' -H 'X-API-Key: $demo' -d '{\"query\":\"{ hello }\"}'"
# Replication takes milliseconds; wait until the edge knows the key (fewer tries than the edge's
# failed-attempt limit of 20 a minute).
for _ in $(seq 1 15); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$edge/graphql" -H 'Content-Type: application/json' \
       -H "X-API-Key: $demo" -d '{"query":"{ hello }"}')" != 401 ] && break
  sleep 0.2
done

cat <<TXT

keygate is running:
  control plane  http://$control   (SQLite data/keygate.db; local KMS data/master.key: not for production)
  web console    http://$control/ui/   (sign in with the admin key in data/dev-admin.key)
  edge worker    $edge   (local workerd, local KV in data/wrangler-state)
  origin         $origin
admin key:  data/dev-admin.key
demo key:   $demo

A request through the edge:
  $request
TXT
printf '  -> %s\n' "$(eval "$request")"
cat <<TXT

Every forwarded request carries Authorization: Bearer <JWT> (ES256), verifiable against
  http://$control/.well-known/jwks.json
To put FraiseQL behind the edge, run KEYGATE_ORIGIN_URL=http://127.0.0.1:8000 make dev
and give fraiseql-server this auth section (README: "Putting a GraphQL server behind keygate"):
  [auth]
  jwks_uri = "http://$control/.well-known/jwks.json"
  audience = "graphql"
  allowed_algorithms = ["ES256"]

Ctrl-C stops everything.
TXT
wait
