#!/usr/bin/env bash
# Installs the node GraphQL parts of the end-to-end tests (tests/graphql-node/: graphql-yoga with APQ,
# graphql-ws, subscriptions-transport-ws) into a per-user cache folder named by the lock file, unless
# they are already there, and prints `export KEYGATE_GRAPHQL_NODE="<folder>"`. Logs go to stderr.
#
# Node resolves an ES module's imports from the module's own folder upwards, so origin.mjs and
# client.mjs must sit next to that node_modules: they are copied there on every run (cheap, and an
# edit to them counts at once), never the other way round — no node_modules in the clone.
set -euo pipefail
cd "$(dirname "$0")/.."

src=tests/graphql-node
dir="${XDG_CACHE_HOME:-$HOME/.cache}/keygate/tools/graphql-node-$(sha256sum "$src/package-lock.json" | cut -c1-16)"
mkdir -p "$(dirname "$dir")"

# Test binaries may run this at the same time: one installs, the others wait for it.
exec 9>"$dir.lock"
flock 9
if [ ! -f "$dir/.installed" ]; then
  echo "graphql-node: installing into $dir" >&2
  rm -rf "$dir" && mkdir -p "$dir"
  # .npmrc: legacy-peer-deps, as @graphql-yoga/plugin-apq's peer range lags graphql-yoga's.
  cp "$src/package.json" "$src/package-lock.json" "$src/.npmrc" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund >&2)
  touch "$dir/.installed"
fi
for script in "$src"/*.mjs; do
  # Through a temporary name, so a node starting meanwhile never reads half a file.
  cp "$script" "$dir/.$(basename "$script").tmp"
  mv -f "$dir/.$(basename "$script").tmp" "$dir/$(basename "$script")"
done
flock -u 9

echo "export KEYGATE_GRAPHQL_NODE=\"$dir\""
