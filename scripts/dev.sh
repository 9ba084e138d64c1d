#!/usr/bin/env bash
# `make dev`: keygate on embedded defaults (SQLite under data/, the local KMS), with an admin key in
# data/dev-admin.key and a demo key, and a request that works. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

listen="${KEYGATE_LISTEN:-127.0.0.1:8080}"
base="http://$listen"
cargo build --quiet -p keygate-control-plane
keygate="${CARGO_TARGET_DIR:-target}/debug/keygate"
mkdir -p data

# One admin key per data folder: reuse it while it still works.
if [ ! -s data/dev-admin.key ] || ! "$keygate" key inspect - < data/dev-admin.key > /dev/null; then
  (umask 077 && "$keygate" admin bootstrap > data/dev-admin.key)
fi
admin=$(cat data/dev-admin.key)

"$keygate" serve --listen "$listen" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 100); do
  curl -sf "$base/readyz" > /dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "keygate serve exited" >&2; exit 1; }
  sleep 0.1
done

created=$(curl -sf -X POST "$base/admin/api-keys" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d '{"name":"demo","permissions":["query:read","batch:10"]}')
demo=$(printf '%s' "$created" | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')
request="curl -s -X POST $base/v1/keys/verify -H 'Content-Type: application/json' -d '{\"api_key\":\"$demo\"}'"

cat <<TXT

keygate control plane on $base (SQLite in data/keygate.db, local KMS key in data/master.key: not for production)
admin key:  data/dev-admin.key
demo key:   $demo

A request that works (the edge worker and the demo GraphQL origin arrive with the edge issue):
  $request
TXT
printf '  -> %s\n\nCtrl-C stops it.\n' "$(eval "$request")"
wait "$server"
